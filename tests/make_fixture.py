#!/usr/bin/env python3
"""Writes tests/data/unet_tiny_fixture.bin: one training step of the `tiny` U-Net
(DESIGN.md §4) in PyTorch — the loss and every parameter gradient — which
tests/test_unet.c must reproduce with fedseg's CPU kernels.

Parameters, input and labels are not stored: both sides generate them from the
same counter-based hash (splitmix64 of seed + index), so the committed file only
holds the loss and the gradients (~1.9 MB). Run with a Python that has torch
(Debian: python3-torch):  python3 tests/make_fixture.py [OUT]

File layout (little-endian): char[8] "FSFIX001"; u32 base, depth, size, batch;
u64 seed; u64 P; f64 loss; f32 grads[P] (PyTorch named_parameters order).
"""
import struct, sys
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F

BASE, DEPTH, SIZE, BATCH, SEED = 8, 4, 64, 2, 20261128
M64 = (1 << 64) - 1


def hash_uniform(start, count):
    """splitmix64(seed + start + i) for i < count, mapped to [-1, 1) with 24 bits."""
    with np.errstate(over="ignore"):
        z = (np.uint64(SEED) + np.uint64(start) + np.arange(count, dtype=np.uint64)) * np.uint64(1)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / float(1 << 24) * 2.0 - 1.0)


def block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.01),
        nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.01))


class UNet(nn.Module):
    def __init__(self, cin=4, ncls=4, base=32, depth=4):
        super().__init__()
        ch = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([block(cin if i == 0 else ch[i - 1], ch[i]) for i in range(depth)])
        self.mid = block(ch[depth - 1], ch[depth])
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in reversed(range(depth))])
        self.dec = nn.ModuleList([block(2 * ch[i], ch[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(ch[0], ncls, 1)

    def forward(self, x):
        skips = []
        for d in self.down:
            x = d(x); skips.append(x); x = F.max_pool2d(x, 2)
        x = self.mid(x)
        for u, d in zip(self.up, self.dec):
            x = u(x); x = d(torch.cat([x, skips.pop()], 1))
        return self.head(x)


def loss_fn(logits, y, ncls=4):
    ce = F.cross_entropy(logits, y)
    p = logits.softmax(1)
    oh = F.one_hot(y, ncls).permute(0, 3, 1, 2).to(p.dtype)
    inter = (p * oh).sum((0, 2, 3)); den = p.sum((0, 2, 3)) + oh.sum((0, 2, 3))
    return ce + 1 - ((2 * inter + 1e-5) / (den + 1e-5)).mean()


def fill_params(model):
    """Same rule as tests/test_unet.c: weights and biases bound·u with PyTorch's
    default bound 1/sqrt(fan_in); norm gamma 1 + 0.1·u, beta 0.1·u."""
    off = 0
    for name, p in model.named_parameters():
        n = p.numel()
        u = hash_uniform(off, n)
        is_norm = p.dim() == 1 and not name.startswith(("up.", "head.")) and name.split(".")[-2] in ("1", "4")
        if is_norm:
            v = 1.0 + 0.1 * u if name.endswith("weight") else 0.1 * u
        else:
            w = p if p.dim() == 4 else dict(model.named_parameters())[name[:-4] + "weight"]
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            v = u / np.sqrt(fan_in)
        with torch.no_grad():
            p.copy_(torch.from_numpy(v.reshape(p.shape)))
        off += n
    return off


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/unet_tiny_fixture.bin"
    torch.set_num_threads(2)
    model = UNet(base=BASE, depth=DEPTH).double()  # float64: the fixture is the exact answer
    P = fill_params(model)
    x = torch.from_numpy(hash_uniform(1 << 40, BATCH * 4 * SIZE * SIZE).reshape(BATCH, 4, SIZE, SIZE) * 2.0)
    u = hash_uniform(1 << 41, BATCH * SIZE * SIZE)
    y = torch.from_numpy(np.floor((u + 1.0) * 2.0).clip(0, 3).astype(np.int64).reshape(BATCH, SIZE, SIZE))
    loss = loss_fn(model(x), y)
    loss.backward()
    grads = np.concatenate([p.grad.detach().numpy().ravel() for _, p in model.named_parameters()]).astype(np.float32)
    assert grads.size == P
    with open(out, "wb") as f:
        f.write(b"FSFIX001")
        f.write(struct.pack("<4I2Qd", BASE, DEPTH, SIZE, BATCH, SEED, P, float(loss)))
        f.write(grads.astype("<f4").tobytes())
    print(f"wrote {out}: P={P} loss={float(loss):.10f} |g|={np.linalg.norm(grads):.6g}")


if __name__ == "__main__":
    main()
