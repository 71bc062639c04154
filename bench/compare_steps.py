#!/usr/bin/env python3
"""bench/compare_steps.py — side-by-side table of fedseg and PyTorch training steps.

  compare_steps.py --fedseg FEDSEG.jsonl --torch TORCH.jsonl [--out RESULTS.json]
                   [--targets cpu|gpu] [--machine MACHINE.json]

Reads the JSON lines written by `bench_step --json` and `torch_step.py` in the
same run, pairs each fedseg result with every PyTorch result of the same preset,
device and batch (one per PyTorch mode: fp32, tf32, compiled), and prints

  preset  batch  fedseg ms  fedseg img/s  PyTorch (mode) ms  PyTorch img/s  ratio

where ratio = fedseg img/s ÷ PyTorch img/s (> 1: fedseg is faster). Then it
states the project's targets as met / not met from these numbers only:
  cpu: tiny, fedseg ≥ 1.5× PyTorch img/s (same threads)
  gpu: ref at batch 32, fedseg ms/step ≤ PyTorch eager TF32; tiny at batch 32 ≤ 3 ms/step
--out writes everything (machine, raw results, pairs, targets) as one JSON file.
Needs only the Python standard library. Exit 1 when an input is missing or empty.
"""
import argparse
import json
import sys


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def torch_label(r):
    return r.get("mode", "fp32") + (" compile" if r.get("compile") else "")


def main():
    ap = argparse.ArgumentParser(description="fedseg vs PyTorch training-step table")
    ap.add_argument("--fedseg", required=True)
    ap.add_argument("--torch", required=True)
    ap.add_argument("--out")
    ap.add_argument("--targets", choices=["cpu", "gpu"])
    ap.add_argument("--machine")
    a = ap.parse_args()
    try:
        fs_rows, th_rows = read_jsonl(a.fedseg), read_jsonl(a.torch)
    except OSError as e:
        print(f"compare_steps: {e}", file=sys.stderr)
        return 1
    for r in fs_rows + th_rows:
        if "skipped" in r:
            print(f"{r.get('impl')} {r.get('device')}: skipped — {r['skipped']}")
    fs_ok = [r for r in fs_rows if "skipped" not in r]
    th_ok = [r for r in th_rows if "skipped" not in r]
    if not fs_ok:
        print("compare_steps: no fedseg results", file=sys.stderr)
        return 1

    pairs = []
    hdr = (f"{'preset':<6} {'dev':<4} {'batch':>5} {'fedseg ms':>10} {'fedseg img/s':>13} "
           f"{'PyTorch':<13} {'PyTorch ms':>10} {'PyTorch img/s':>14} {'ratio':>6}")
    print(hdr)
    print("-" * len(hdr))
    for f in fs_ok:
        match = [t for t in th_ok if (t["model"], t["device"], t["batch"]) ==
                 (f["model"], f["device"], f["batch"])]
        if not match:
            print(f"{f['model']:<6} {f['device']:<4} {f['batch']:>5} {f['median_ms']:>10.2f} "
                  f"{f['img_per_s']:>13.1f} {'(none)':<13}")
        for t in match:
            ratio = f["img_per_s"] / t["img_per_s"]
            pairs.append(dict(model=f["model"], device=f["device"], batch=f["batch"],
                              fedseg_ms=f["median_ms"], fedseg_img_per_s=f["img_per_s"],
                              torch_variant=torch_label(t), torch_ms=t["median_ms"],
                              torch_img_per_s=t["img_per_s"], ratio=round(ratio, 3)))
            print(f"{f['model']:<6} {f['device']:<4} {f['batch']:>5} {f['median_ms']:>10.2f} "
                  f"{f['img_per_s']:>13.1f} {torch_label(t):<13} {t['median_ms']:>10.2f} "
                  f"{t['img_per_s']:>14.1f} {ratio:>6.2f}")

    targets = []

    def target(text, value, met):
        targets.append(dict(target=text, measured=value, met=met))
        state = "not measured" if met is None else ("met" if met else "NOT met")
        print(f"target: {text}: {value} -> {state}")

    print()
    if a.targets == "cpu":
        p = [x for x in pairs if x["model"] == "tiny" and x["device"] == "cpu"]
        if p:
            target("cpu tiny fedseg >= 1.5x PyTorch img/s", f"{p[0]['ratio']:.2f}x", p[0]["ratio"] >= 1.5)
        else:
            target("cpu tiny fedseg >= 1.5x PyTorch img/s", "no pair", None)
    elif a.targets == "gpu":
        p = [x for x in pairs if x["model"] == "ref" and x["batch"] == 32 and x["torch_variant"] == "tf32"]
        if p:
            target("gpu ref batch 32 fedseg ms <= PyTorch eager TF32 ms",
                   f"{p[0]['fedseg_ms']:.2f} vs {p[0]['torch_ms']:.2f} ms", p[0]["fedseg_ms"] <= p[0]["torch_ms"])
        else:
            target("gpu ref batch 32 fedseg ms <= PyTorch eager TF32 ms", "no pair", None)
        t = [x for x in fs_ok if x["model"] == "tiny" and x["batch"] == 32 and x["device"] == "cuda"]
        if t:
            target("gpu tiny batch 32 <= 3 ms/step", f"{t[0]['median_ms']:.2f} ms", t[0]["median_ms"] <= 3.0)
        else:
            target("gpu tiny batch 32 <= 3 ms/step", "no result", None)

    if a.out:
        machine = {}
        if a.machine:
            try:
                with open(a.machine) as f:
                    machine = json.load(f)
            except (OSError, ValueError) as e:
                print(f"compare_steps: {a.machine}: {e}", file=sys.stderr)
        with open(a.out, "w") as f:
            json.dump(dict(machine=machine, fedseg=fs_rows, pytorch=th_rows, pairs=pairs,
                           targets=targets), f, indent=1)
        print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
