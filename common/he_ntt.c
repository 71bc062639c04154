/*
 * common/he_ntt.c — modular arithmetic and the negacyclic number-theoretic
 * transform for common/he.c (the CPU reference; kernels/cuda/he_ntt.cu is
 * its CUDA twin and must agree bit for bit).
 *
 * The NTT evaluates a ∈ Z_q[X]/(X^n + 1) at the odd powers of a primitive
 * 2n-th root of unity psi, so that a negacyclic product is a pointwise product:
 * a·b = INTT(NTT(a) ⊙ NTT(b)). The "merged" form (Longa and Naehrig, "Speeding
 * up the Number Theoretic Transform for Faster Ideal Lattice-Based
 * Cryptography", 2016) folds the psi^i pre-twist into the butterflies'
 * twiddles: forward Cooley–Tukey with twiddles psi^{bitrev(i)}, natural order
 * in, bit-reversed order out; inverse Gentleman–Sande with psi^{−bitrev(i)},
 * bit-reversed in, natural out, then a scaling by n^{-1}.
 *
 * Multiplications by the fixed twiddles use Shoup's method (a precomputed
 * companion w' = ⌊w·2^64/q⌋ turns a·w mod q into two multiplications and one
 * subtraction, result in [0, 2q)); values stay lazily reduced in [0, 4q)
 * between stages (Harvey, "Faster arithmetic for number-theoretic
 * transforms", 2014), which needs 4q < 2^64: q < 2^62. Outputs are reduced to
 * [0, q), so any correct implementation gives the same words.
 *
 * Tested by tests/test_he.c against schoolbook negacyclic multiplication for
 * n = 1 .. 4096 and three primes (random, all-zero, all q−1 inputs).
 */
#include "common/he.h"

#include <stdlib.h>
#include <string.h>

uint64_t fs_he_mulmod(uint64_t a, uint64_t b, uint64_t q)
{
    return (uint64_t)(((unsigned __int128)a * b) % q);
}

/* base^e mod q. */
static uint64_t powmod(uint64_t base, uint64_t e, uint64_t q)
{
    uint64_t r = 1 % q;
    base %= q;
    while (e) {
        if (e & 1) r = fs_he_mulmod(r, base, q);
        base = fs_he_mulmod(base, base, q);
        e >>= 1;
    }
    return r;
}

/* Shoup companion of w < q: ⌊w·2^64 / q⌋. */
static uint64_t shoup(uint64_t w, uint64_t q)
{
    return (uint64_t)(((unsigned __int128)w << 64) / q);
}

/* a·w mod q in [0, 2q) for any a < 2^64, w < q, wp = shoup(w). */
static inline uint64_t mul_shoup_lazy(uint64_t a, uint64_t w, uint64_t wp, uint64_t q)
{
    uint64_t hi = (uint64_t)(((unsigned __int128)a * wp) >> 64);
    return a * w - hi * q;
}

static uint32_t bitrev(uint32_t x, uint32_t bits)
{
    uint32_t r = 0;
    for (uint32_t i = 0; i < bits; i++) r |= ((x >> i) & 1u) << (bits - 1 - i);
    return r;
}

/* Builds the tables for prime q (q ≡ 1 mod 2n, q < 2^62) and n a power of two
 * ≤ 4096. psi is g^((q−1)/2n) for the smallest g ≥ 2 with psi^n = −1, which
 * makes its order exactly 2n. FS_ERR_ARG when q or n do not qualify. */
fs_status fs_he_ntt_init(fs_he_ntt *t, uint64_t q, uint32_t n)
{
    memset(t, 0, sizeof *t);
    if (n == 0 || n > 4096 || (n & (n - 1)) || q < 3 || q >= (1ull << 62) ||
        (q - 1) % (2ull * n))
        return FS_ERR_ARG;
    uint32_t logn = 0;
    while ((1u << logn) < n) logn++;
    uint64_t psi = 0;
    for (uint64_t g = 2; g < 1000 && !psi; g++) {
        uint64_t c = powmod(g, (q - 1) / (2ull * n), q);
        if (powmod(c, n, q) == q - 1) psi = c;
    }
    if (!psi) return FS_ERR_ARG; /* q is not prime or has no such root */
    t->q = q;
    t->n = n;
    t->logn = logn;
    t->psi = psi;
    t->w = malloc(4 * (size_t)n * sizeof(uint64_t));
    if (!t->w) return FS_ERR_NOMEM;
    t->wp = t->w + n;
    t->iw = t->w + 2 * (size_t)n;
    t->iwp = t->w + 3 * (size_t)n;
    const uint64_t psi_inv = powmod(psi, q - 2, q);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t r = bitrev(i, logn);
        t->w[i] = powmod(psi, r, q);
        t->wp[i] = shoup(t->w[i], q);
        t->iw[i] = powmod(psi_inv, r, q);
        t->iwp[i] = shoup(t->iw[i], q);
    }
    t->ninv = powmod(n, q - 2, q);
    t->ninvp = shoup(t->ninv, q);
    return FS_OK;
}

void fs_he_ntt_free(fs_he_ntt *t)
{
    if (!t) return;
    free(t->w);
    memset(t, 0, sizeof *t);
}

/* Forward transform: m = 1, 2, 4, … butterflies of span len = n/(2m); the
 * pair (a[j], a[j+len]) becomes (U + V, U − V) with V = a[j+len]·w[m+i].
 * Values enter each stage in [0, 4q) and leave in [0, 4q). */
void fs_he_ntt_fwd(const fs_he_ntt *t, uint64_t *a)
{
    const uint64_t q = t->q, q2 = 2 * q;
    const uint32_t n = t->n;
    uint32_t len = n;
    for (uint32_t m = 1; m < n; m <<= 1) {
        len >>= 1;
        for (uint32_t i = 0; i < m; i++) {
            const uint64_t w = t->w[m + i], wp = t->wp[m + i];
            uint64_t *x = a + 2 * (size_t)i * len, *y = x + len;
            for (uint32_t j = 0; j < len; j++) {
                uint64_t u = x[j];
                if (u >= q2) u -= q2;
                uint64_t v = mul_shoup_lazy(y[j], w, wp, q);
                x[j] = u + v;
                y[j] = u - v + q2;
            }
        }
    }
    for (uint32_t j = 0; j < n; j++) {
        uint64_t v = a[j];
        if (v >= q2) v -= q2;
        if (v >= q) v -= q;
        a[j] = v;
    }
}

/* Inverse transform: m = n, n/2, …, 2 with span len = n/m; (U, V) becomes
 * (U + V, (U − V)·iw[m/2 + i]); values stay in [0, 2q); then ×n^{-1}. */
void fs_he_ntt_inv(const fs_he_ntt *t, uint64_t *a)
{
    const uint64_t q = t->q, q2 = 2 * q;
    const uint32_t n = t->n;
    uint32_t len = 1;
    for (uint32_t m = n; m > 1; m >>= 1) {
        const uint32_t h = m >> 1;
        for (uint32_t i = 0; i < h; i++) {
            const uint64_t w = t->iw[h + i], wp = t->iwp[h + i];
            uint64_t *x = a + 2 * (size_t)i * len, *y = x + len;
            for (uint32_t j = 0; j < len; j++) {
                uint64_t u = x[j], v = y[j];
                uint64_t s = u + v;
                if (s >= q2) s -= q2;
                x[j] = s;
                y[j] = mul_shoup_lazy(u - v + q2, w, wp, q);
            }
        }
        len <<= 1;
    }
    for (uint32_t j = 0; j < n; j++) {
        uint64_t v = mul_shoup_lazy(a[j], t->ninv, t->ninvp, q);
        if (v >= q) v -= q;
        a[j] = v;
    }
}
