#!/usr/bin/env python3
"""bench/tenseal_he.py — the anchor for bench/bench_he.c: TenSEAL's CKKS at
NVFlare's default HE context (poly_modulus_degree 8192, coeff_mod_bit_sizes
[60, 40, 40], global scale 2^40; NVFlare's tenseal_context provisioning
defaults) doing the same job: one site's update encrypted (4096 values per
ciphertext) and serialised, the aggregator deserialising and summing S sites,
and the sum decrypted (TenSEAL/NVFlare: every site holds the same secret key,
so decryption is one party's operation; there is no threshold step).

The S sites' serialised ciphertexts are the same bytes (encrypting S distinct
updates would cost S times the measured encryption and nothing else); the
decrypted sum is checked against S·x before any figure is printed.

    tenseal_he.py [--params P] [--sites S] [--json]

Needs `pip install tenseal numpy` (bench/run_he.sh installs them in a venv).
"""
import argparse
import json
import sys
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=7766372)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        import tenseal as ts
    except ImportError:
        print("tenseal_he: tenseal is not installed for this Python", file=sys.stderr)
        return 77
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192,
                     coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2 ** 40
    slots = 4096
    rng = np.random.default_rng(1)
    x = ((rng.random(a.params) - 0.5) * 0.035).astype(np.float32)
    nct = (a.params + slots - 1) // slots

    t0 = time.perf_counter()
    cts = [ts.ckks_vector(ctx, x[i * slots:(i + 1) * slots].astype(np.float64))
           for i in range(nct)]
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    wire = [c.serialize() for c in cts]
    t_ser = time.perf_counter() - t0
    nbytes = sum(len(b) for b in wire)
    del cts

    t0 = time.perf_counter()
    acc = [ts.ckks_vector_from(ctx, b) for b in wire]
    for _ in range(a.sites - 1):
        for i, b in enumerate(wire):
            acc[i] += ts.ckks_vector_from(ctx, b)
    t_agg = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = np.concatenate([np.array(c.decrypt()) for c in acc])[:a.params]
    t_dec = time.perf_counter() - t0
    err = float(np.max(np.abs(out - a.sites * x.astype(np.float64))))
    if not err < 1e-4:
        print(f"tenseal_he: decrypted sum off by {err:.3g}: no timing reported", file=sys.stderr)
        return 1
    bpp = nbytes / a.params
    enc = t_enc + t_ser
    print(f"TenSEAL CKKS (N=8192, [60,40,40], scale 2^40), {a.params} params, {a.sites} sites, "
          f"CPU, tenseal {ts.__version__}")
    print(f"  correctness: decrypted sum within {err:.2g} of the exact sum")
    print(f"  wire: {nct} ciphertexts, {nbytes / 1e6:.1f} MB per site; {bpp:.2f} B/param = "
          f"{bpp / 4:.2f}x fp32")
    print(f"  encrypt per site: {enc:.3f} s (encrypt {t_enc:.3f}, serialise {t_ser:.3f})")
    print(f"  aggregate {a.sites} sites: {t_agg:.3f} s (deserialise + add)")
    print(f"  decrypt: {t_dec:.3f} s")
    print(f"  end to end (one site's encrypt + aggregate + decrypt): {enc + t_agg + t_dec:.3f} s")
    if a.json:
        print(json.dumps({"impl": "tenseal", "device": "cpu", "params": a.params,
                          "sites": a.sites, "bytes_per_param": round(bpp, 4),
                          "x_fp32": round(bpp / 4, 4), "encrypt_s": round(enc, 4),
                          "aggregate_s": round(t_agg, 4), "decrypt_s": round(t_dec, 4),
                          "end_to_end_s": round(enc + t_agg + t_dec, 4)}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
