#!/usr/bin/env python3
"""bench/torch_step.py — the PyTorch side of the training-step benchmark.

The reference 2D U-Net of DESIGN.md §4 and its loss, written out here, timed the
same way bench_step times fedseg: full training steps (forward, loss, backward,
Adam lr 1e-3) on one fixed random batch, per preset, printing one JSON object per
line with the same fields as `bench_step --json` (plus PyTorch's version, the
precision mode and whether torch.compile was used).

  torch_step.py [--model tiny|small|ref|all|LIST] [--device cpu|cuda]
                [--batch B] [--steps N] [--warmup W] [--threads T]
                [--mode fp32|tf32|all] [--check-params]

Model: channels base·2^i (i = 0..depth); each block is two × [3×3 conv (bias)
-> InstanceNorm2d (affine, eps 1e-5) -> LeakyReLU(0.01)]; encoder: block, keep
the skip, 2×2 max-pool; bottom block "mid"; decoder: 2×2 stride-2 transposed
conv, concatenate [up ; skip], block; head: 1×1 conv to 4 classes. Module names
(down, mid, up, dec, head) and their order follow fedseg's flat parameter
layout, so `named_parameters()` flattened in order is a fedseg parameter vector.
Loss: cross-entropy + 1 − mean over the 4 classes of the soft Dice
(2·Σp·y + 1e-5) / (Σp + Σy + 1e-5), sums over the batch and pixels.

Batch: inputs N(0,1), labels = argmax over the 4 input channels per pixel (the
rule bench_step uses). The warm-up losses must be finite and fall, as in
bench_step, before anything is timed. Each timed step ends with loss.item(),
which waits for the device — fedseg's step also returns its loss to the host —
so the per-step median is comparable between the two.

CPU: torch.set_num_threads(T), fp32. CUDA: eager fp32 (TF32 off), eager TF32
(cuBLAS and cuDNN TF32 on), and with FS_TORCH_COMPILE=1 in the environment also
torch.compile of the model in TF32 mode. Adam is the fused implementation on
CUDA when this PyTorch has it.

--check-params builds each preset and compares its parameter count with DESIGN.md
(487,388 / 1,944,244 / 7,766,372); exit 1 on a mismatch. Exit 77 when PyTorch is
not installed (the test suite's "skipped"), 1 when a check fails.
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("torch_step: PyTorch is not installed for this Python (Debian: python3-torch)",
          file=sys.stderr)
    sys.exit(77)

# name: (base, depth, input size, parameters per DESIGN.md §4)
PRESETS = {
    "tiny": (8, 4, 64, 487388),
    "small": (16, 4, 128, 1944244),
    "ref": (32, 4, 128, 7766372),
}
IN_CH, CLASSES = 4, 4


def conv_block(cin, cout):
    """Two conv -> instance norm -> leaky ReLU stages (indices 0..5)."""
    layers = []
    for c_in in (cin, cout):
        layers += [nn.Conv2d(c_in, cout, 3, padding=1),
                   nn.InstanceNorm2d(cout, eps=1e-5, affine=True),
                   nn.LeakyReLU(0.01)]
    return nn.Sequential(*layers)


class UNet2D(nn.Module):
    """The reference U-Net. up[k] and dec[k] serve level depth-1-k (deepest first)."""

    def __init__(self, base, depth, in_ch=IN_CH, classes=CLASSES):
        super().__init__()
        ch = [base << i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            conv_block(in_ch if i == 0 else ch[i - 1], ch[i]) for i in range(depth))
        self.mid = conv_block(ch[depth - 1], ch[depth])
        levels = list(range(depth - 1, -1, -1))
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in levels)
        self.dec = nn.ModuleList(conv_block(2 * ch[i], ch[i]) for i in levels)
        self.head = nn.Conv2d(ch[0], classes, 1)

    def forward(self, x):
        skips = []
        for blk in self.down:
            x = blk(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.mid(x)
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def ce_dice_loss(logits, labels, smooth=1e-5):
    """Cross-entropy + 1 − mean soft Dice over the classes (batch-wide sums)."""
    ce = F.cross_entropy(logits, labels)
    prob = logits.softmax(dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + smooth) / (denom + smooth)
    return ce + 1 - dice.mean()


def forward_flops(base, depth, size):
    """Convolution FLOPs of one forward pass of one image (same count as bench_step)."""
    ch = [base << i for i in range(depth + 1)]
    f = 0.0
    for i in range(depth + 1):
        px = (size >> i) ** 2
        cin = IN_CH if i == 0 else ch[i - 1]
        f += 2.0 * 9 * (cin * ch[i] + ch[i] * ch[i]) * px
        if i < depth:
            f += 2.0 * ch[i + 1] * ch[i] * px
            f += 2.0 * 9 * (2 * ch[i] * ch[i] + ch[i] * ch[i]) * px
    f += 2.0 * ch[0] * CLASSES * size * size
    return f


def nparams(model):
    return sum(p.numel() for p in model.parameters())


def check_params():
    """Compares every preset's parameter count with DESIGN.md; returns True when all match."""
    ok = True
    for name, (base, depth, _, want) in PRESETS.items():
        got = nparams(UNet2D(base, depth))
        print(f"{name}: {got} parameters (expected {want}) {'ok' if got == want else 'MISMATCH'}")
        ok &= got == want
    return ok


def make_adam(params, device):
    """Adam lr 1e-3; fused on CUDA when available. Returns (optimizer, kind)."""
    if device == "cuda":
        try:
            return torch.optim.Adam(params, lr=1e-3, fused=True), "fused"
        except (TypeError, RuntimeError):
            pass
    return torch.optim.Adam(params, lr=1e-3), "default"


def run_one(name, device, batch, mode, use_compile, args):
    """Times one preset in one mode; returns the result dict, or None after an error."""
    base, depth, size, want = PRESETS[name]
    cuda = device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        base_used = total - free
    torch.manual_seed(1)
    model = UNet2D(base, depth).to(device)
    if nparams(model) != want:
        print(f"torch_step: {name} has {nparams(model)} parameters, expected {want}", file=sys.stderr)
        return None
    opt, adam_kind = make_adam(model.parameters(), device)
    fwd = torch.compile(model) if use_compile else model
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(batch, IN_CH, size, size, generator=gen)
    y = x.argmax(dim=1)
    x, y = x.to(device), y.to(device)
    mem_model = None
    if cuda:
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        mem_model = (total - free - base_used) / 2**20

    def step():
        opt.zero_grad(set_to_none=True)
        loss = ce_dice_loss(fwd(x), y)
        loss.backward()
        opt.step()
        return loss.item()  # waits for the device

    warm = [step() for _ in range(args.warmup)]
    tag = f"{name} {device} {mode}{' compile' if use_compile else ''}"
    if not all(math.isfinite(v) for v in warm):
        print(f"torch_step: error: {tag}: non-finite warm-up loss {warm}", file=sys.stderr)
        return None
    if not warm[-1] < warm[0]:
        print(f"torch_step: error: {tag}: the loss did not fall over {args.warmup} warm-up steps "
              f"({warm[0]:.6f} -> {warm[-1]:.6f})", file=sys.stderr)
        return None
    times, loss = [], float("nan")
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append((time.perf_counter() - t0) * 1e3)
        if not math.isfinite(loss):
            print(f"torch_step: error: {tag}: non-finite loss in a timed step", file=sys.stderr)
            return None
    med = statistics.median(times)
    res = dict(impl="pytorch", model=name, device=device,
               device_name=torch.cuda.get_device_name(0) if cuda else f"{torch.get_num_threads()} threads",
               threads=0 if cuda else torch.get_num_threads(), batch=batch, size=size,
               params=nparams(model), steps=args.steps, warmup=args.warmup,
               median_ms=round(med, 3), mean_ms=round(statistics.fmean(times), 3),
               min_ms=round(min(times), 3), img_per_s=round(batch / (med * 1e-3), 2),
               gflop_per_s=round(3 * forward_flops(base, depth, size) * batch / (med * 1e-3) * 1e-9, 1),
               loss_first=round(warm[0], 6), loss_after_warmup=round(warm[-1], 6),
               loss_last=round(loss, 6), torch=torch.__version__, mode=mode,
               compile=use_compile, adam=adam_kind)
    if cuda:
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        res.update(mem_kind="device_in_use", mem_model_mib=round(mem_model, 1),
                   mem_mib=round((total - free - base_used) / 2**20, 1),
                   torch_max_allocated_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1))
    else:
        res.update(mem_kind="process_peak_rss",
                   mem_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    del fwd, model, opt
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all", help="presets, comma-separated, or all")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=0, help="0 = cpu tiny 16, small/ref 8; cuda 32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default)")
    ap.add_argument("--mode", default="all", choices=["fp32", "tf32", "all"],
                    help="CUDA precision (the CPU is always fp32)")
    ap.add_argument("--check-params", action="store_true")
    args = ap.parse_args()

    if args.check_params:
        return 0 if check_params() else 1
    if args.warmup < 2 or args.steps < 1 or args.batch < 0:
        ap.error("--warmup must be >= 2, --steps >= 1, --batch >= 0")
    names = list(PRESETS) if args.model == "all" else args.model.split(",")
    for n in names:
        if n not in PRESETS:
            ap.error(f"unknown preset '{n}' (use tiny, small, ref or all)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps(dict(impl="pytorch", device="cuda", skipped="no CUDA device visible to PyTorch")))
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    runs = [("fp32", False)]
    if args.device == "cuda":
        runs = [(m, False) for m in (["fp32", "tf32"] if args.mode == "all" else [args.mode])]
        if os.environ.get("FS_TORCH_COMPILE") == "1":
            if not hasattr(torch, "compile"):
                print(f"torch_step: FS_TORCH_COMPILE=1 but PyTorch {torch.__version__} has no "
                      "torch.compile", file=sys.stderr)
                return 1
            runs.append(("tf32", True))
    failed = False
    for name in names:
        for mode, use_compile in runs:
            batch = args.batch or (32 if args.device == "cuda" else (16 if name == "tiny" else 8))
            res = run_one(name, args.device, batch, mode, use_compile, args)
            if res is None:
                failed = True
                continue
            print(json.dumps(res), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
