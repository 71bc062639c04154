#!/usr/bin/env python3
"""bench/torch_aggops.py — PyTorch's side of bench_aggops: the same sizes, the
same device, the same byte accounting, timed the same way (one warm-up call,
then the mean of --reps calls between two synchronisations).

  python3 bench/torch_aggops.py [--device cuda|cpu] [--n N] [--k K] [--reps R]
                                [--threads T]

Ops (those of shared/anchors/torch_unet_anchor.py's aggregation section):
  int32_sum  ups.sum(0, dtype=torch.int64) over a K×N int32 tensor
             (moved: K·4N read + 8N written)
  fp32_wsum  torch.matmul(w, ups, out=out), the fp32 weighted sum
             (moved: K·4N read + 4N written)
  copy       b.copy_(a) of K·N floats (moved: 2·K·4N)
One JSON line per op with ms, GBps (moved / time), read_GBps (K·4N / time)
and, for the first two, frac_of_copy against the copy measured in this run.
"""
import argparse
import json
import sys
import time
import warnings

# PyTorch 1.x resizes matmul's out= from [1, N] with a deprecation warning; harmless here.
warnings.filterwarnings("ignore", message="An output with one or more elements was resized")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=7766372)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        print(json.dumps(dict(side="torch", skipped="PyTorch is not installed")))
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps(dict(side="torch", device="cuda", skipped="PyTorch sees no CUDA device")))
        return 0
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    n, k, reps = a.n, a.k, a.reps
    kn4 = k * n * 4

    def timed(fn):
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t0) / reps

    def line(op, sec, moved, read, copy_gbps=None):
        r = dict(side="torch", device=a.device, op=op, n=n, k=k, ms=round(sec * 1e3, 4),
                 GBps=round(moved / sec / 1e9, 1), read_GBps=round(read / sec / 1e9, 1),
                 torch=torch.__version__)
        if copy_gbps:
            r["copy_GBps"] = round(copy_gbps, 1)
            r["frac_of_copy"] = round(moved / sec / 1e9 / copy_gbps, 3)
        print(json.dumps(r), flush=True)

    src = torch.empty(k * n, device=dev).uniform_(-1, 1)
    dst = torch.empty_like(src)
    tc = timed(lambda: dst.copy_(src))
    copy_gbps = 2 * kn4 / tc / 1e9
    line("copy", tc, 2 * kn4, kn4, copy_gbps)
    del dst

    ups = src.view(k, n)
    w = torch.rand(k, device=dev)
    out = torch.empty(n, device=dev)
    t = timed(lambda: torch.matmul(w, ups, out=out))
    line("fp32_wsum", t, kn4 + 4 * n, kn4, copy_gbps)

    iups = ups.view(torch.int32)  # the same bits as int32: K×N masked words
    t = timed(lambda: iups.sum(0, dtype=torch.int64))
    line("int32_sum", t, kn4 + 8 * n, kn4, copy_gbps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
