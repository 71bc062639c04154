/*
 * common/dp_dgauss.c — an exact sampler of the discrete Gaussian N_Z(0, s²),
 * P[X = k] ∝ exp(−k²/(2s²)) on the integers (Canonne, Kamath, Steinke, "The
 * Discrete Gaussian for Differential Privacy", NeurIPS 2020): each site's
 * noise share in the distributed discrete Gaussian mechanism (common/dp.h).
 *
 * Layout, bottom up, all in integers (no floating point touches a random
 * decision):
 *   rng          ChaCha20 keystream (libsodium) for one sample index: 64-bit
 *                nonce = index, block counter from 0, consumed 32 bits at a time;
 *   uniform      uniform integer in [0, m) by masked rejection (64 and 128 bit);
 *   bern_exp     Bernoulli(exp(−num/den)) for a rational num/den >= 0
 *                (CKS Algorithm 1; Bernoulli(γ/K) drawn as Bernoulli(γ) and
 *                Bernoulli(1/K) together);
 *   laplace      discrete Laplace with integer scale t (CKS Algorithm 2);
 *   dgauss       rejection from the Laplace with acceptance
 *                exp(−(|Y| − s²/t)²/(2s²)) (CKS Algorithm 3), the exponent an
 *                exact rational with s² = num/2^shift, in 128-bit integers.
 *
 * Tested by tests/test_dp.c: mean, variance against the exact discrete
 * Gaussian variance, chi-square against the exact pmf, chunking and fixed
 * seeds.
 */
#include "common/dp.h"

#include <math.h>
#include <string.h>

#include <sodium.h>

#include "common/log.h"

typedef unsigned __int128 u128;

/* Random words for one sample: ChaCha20(key, nonce = sample index). */
typedef struct {
    const uint8_t *key;
    uint8_t nonce[8];
    uint64_t block;        /* next ChaCha20 block to generate */
    uint32_t buf[32];
    int pos;
} dg_rng;

static void rng_init(dg_rng *r, const uint8_t key[32], uint64_t index)
{
    r->key = key;
    for (int i = 0; i < 8; i++) r->nonce[i] = (uint8_t)(index >> (8 * i));
    r->block = 0;
    r->pos = 32;
}

static uint32_t rng_u32(dg_rng *r)
{
    if (r->pos == 32) {
        static const uint8_t zeros[sizeof r->buf];
        uint8_t bytes[sizeof r->buf];
        crypto_stream_chacha20_xor_ic(bytes, zeros, sizeof bytes, r->nonce, r->block, r->key);
        for (int i = 0; i < 32; i++)
            r->buf[i] = (uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 |
                        (uint32_t)bytes[4 * i + 2] << 16 | (uint32_t)bytes[4 * i + 3] << 24;
        sodium_memzero(bytes, sizeof bytes);
        r->block += sizeof r->buf / 64;
        r->pos = 0;
    }
    return r->buf[r->pos++];
}

/* Uniform in [0, m), m >= 1: draw bits under the smallest power-of-two mask
 * covering m - 1 and reject values >= m (fewer than 2 draws on average). */
static uint64_t uniform64(dg_rng *r, uint64_t m)
{
    if (m <= 1) return 0;
    uint64_t mask = m - 1;
    mask |= mask >> 1; mask |= mask >> 2; mask |= mask >> 4;
    mask |= mask >> 8; mask |= mask >> 16; mask |= mask >> 32;
    for (;;) {
        uint64_t v = (uint64_t)rng_u32(r) | (uint64_t)rng_u32(r) << 32;
        v &= mask;
        if (v < m) return v;
    }
}

static u128 uniform128(dg_rng *r, u128 m)
{
    if (m >> 64 == 0) return uniform64(r, (uint64_t)m);
    uint64_t hi = (uint64_t)((m - 1) >> 64);
    hi |= hi >> 1; hi |= hi >> 2; hi |= hi >> 4;
    hi |= hi >> 8; hi |= hi >> 16; hi |= hi >> 32;
    for (;;) {
        uint64_t lo_w = (uint64_t)rng_u32(r) | (uint64_t)rng_u32(r) << 32;
        uint64_t hi_w = (uint64_t)rng_u32(r) | (uint64_t)rng_u32(r) << 32;
        u128 v = (u128)(hi_w & hi) << 64 | lo_w;
        if (v < m) return v;
    }
}

/* Bernoulli(exp(−num/den)) for 0 <= num <= den, den >= 1 (CKS Algorithm 1,
 * case γ <= 1): K = 1, 2, ... while Bernoulli(γ/K) succeeds; 1 iff the first
 * failure comes at an odd K. */
static int bern_exp_le1(dg_rng *r, u128 num, u128 den)
{
    uint64_t k = 1;
    for (;;) {
        int a = uniform128(r, den) < num && uniform64(r, k) == 0;
        if (!a) break;
        k++;
    }
    return (int)(k & 1);
}

/* Bernoulli(exp(−num/den)) for any num >= 0, den >= 1 (CKS Algorithm 1): one
 * Bernoulli(exp(−1)) per whole unit of γ, stopping at the first failure, then
 * the fractional part. */
static int bern_exp(dg_rng *r, u128 num, u128 den)
{
    while (num >= den) {
        if (!bern_exp_le1(r, 1, 1)) return 0;
        num -= den;
    }
    return bern_exp_le1(r, num, den);
}

/* Discrete Laplace, P[X = x] ∝ exp(−|x|/t), integer t >= 1 (CKS Algorithm 2). */
static int64_t laplace(dg_rng *r, uint64_t t)
{
    for (;;) {
        uint64_t u = uniform64(r, t);
        if (!bern_exp(r, u, t)) continue;
        uint64_t v = 0;
        while (bern_exp_le1(r, 1, 1)) v++;
        uint64_t x = u + t * v;
        int neg = (int)(rng_u32(r) & 1);
        if (neg && x == 0) continue;
        return neg ? -(int64_t)x : (int64_t)x;
    }
}

/* One N_Z(0, s²) sample (CKS Algorithm 3). With s² = N/D (D = 2^shift), the
 * acceptance exponent (|Y| − s²/t)²/(2s²) is M²/L with M = |Y|·t·D − N and
 * L = 2·N·D·t², both exact in 128 bits as long as |M| < 2^64; a candidate
 * beyond that has exponent >= 2^128/L > 2^30 and is rejected. */
static int64_t dgauss_one(const fs_dp_dgauss *g, dg_rng *r)
{
    u128 n = g->num, d = (u128)1 << g->shift, t = g->t;
    u128 l = 2 * n * d * t * t;
    for (;;) {
        int64_t y = laplace(r, g->t);
        u128 a = (u128)(y < 0 ? -(uint64_t)y : (uint64_t)y), atd;
        if (__builtin_mul_overflow(a, t * d, &atd)) continue;
        u128 m = atd >= n ? atd - n : n - atd;
        if (m >> 64) continue;
        if (bern_exp(r, m * m, l)) return y;
    }
}

fs_status fs_dp_dgauss_init(fs_dp_dgauss *g, double s)
{
    if (!(s >= FS_DP_DGAUSS_MIN_SIGMA && s <= FS_DP_DGAUSS_MAX_SIGMA)) {
        fs_log_error("dp: discrete Gaussian stddev must be in [%g, %g] integer steps, got %g",
                     FS_DP_DGAUSS_MIN_SIGMA, FS_DP_DGAUSS_MAX_SIGMA, s);
        return FS_ERR_ARG;
    }
    double sq = s * s;
    double err = fma(s, s, -sq);   /* s² = sq + err exactly */
    unsigned shift = 0;
    double scaled = sq;
    while (scaled < 0x1p39) { scaled *= 2.0; shift++; }
    double c = ceil(scaled);
    uint64_t num = (uint64_t)c;
    if (c == scaled && err > 0) num++;   /* never below the requested s² */
    g->num = num;
    g->shift = shift;
    g->t = (uint64_t)floor(s) + 1;
    g->sigma2 = ldexp((double)num, -(int)shift);
    return FS_OK;
}

void fs_dp_dgauss_sample(const fs_dp_dgauss *g, const uint8_t key[32], uint64_t offset,
                         int64_t *out, size_t n)
{
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        dg_rng r;
        rng_init(&r, key, offset + i);
        out[i] = dgauss_one(g, &r);
        sodium_memzero(&r, sizeof r);
    }
}

void fs_dp_dgauss_add_u32(const fs_dp_dgauss *g, const uint8_t key[32], uint64_t offset,
                          uint32_t *x, size_t n)
{
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        dg_rng r;
        rng_init(&r, key, offset + i);
        x[i] += (uint32_t)(uint64_t)dgauss_one(g, &r);   /* two's complement: mod 2^32 */
        sodium_memzero(&r, sizeof r);
    }
}

/* Σ_k w(k) f(k) over |k| <= K for w(k) = exp(−k²/(2s²)); K covers 40 s. */
static double dg_sum(double sigma2, int moment)
{
    double s = sqrt(sigma2);
    int64_t kmax = (int64_t)ceil(40.0 * s) + 1;
    double acc = moment == 0 ? 1.0 : 0.0;
    for (int64_t k = kmax; k >= 1; k--) {
        double w = exp(-(double)k * (double)k / (2.0 * sigma2));
        acc += 2.0 * w * (moment == 0 ? 1.0 : (double)k * (double)k);
    }
    return acc;
}

double fs_dp_dgauss_variance(double sigma2)
{
    if (sigma2 > 1e4) return sigma2;   /* differs by < exp(−2π²·1e4) relative */
    return dg_sum(sigma2, 2) / dg_sum(sigma2, 0);
}

double fs_dp_dgauss_pmf(double sigma2, int64_t k)
{
    double z = sigma2 > 1e4 ? sqrt(2.0 * 3.14159265358979323846 * sigma2) : dg_sum(sigma2, 0);
    return exp(-(double)k * (double)k / (2.0 * sigma2)) / z;
}
