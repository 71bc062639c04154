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
 * On x86-64 CPUs with AVX-512 IFMA (52-bit multiply-add) the butterflies
 * run 8 at a time (4 at span 4; spans 2 and 1 through lane permutations;
 * transforms of n ≥ 16 points, the portable code below that) with the same algorithm at 52-bit precision: companions w' = ⌊w·2^52/q⌋, a·w mod q =
 * (lo52(a·w) − lo52(hi52(a·w')·q)) mod 2^52 in [0, 2q) for any a < 2^52,
 * which needs 4q < 2^52: q < 2^50 (fs_he_ntt_init keeps the portable code
 * for larger primes). The code is chosen at run time.
 *
 * Tested by tests/test_he.c against schoolbook negacyclic multiplication for
 * n = 1 .. 4096 and three primes (random, all-zero, all q−1 inputs), and the
 * IFMA code against the portable code word for word.
 */
#include "common/he.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__NVCC__)
#define HE_IFMA 1
#include <immintrin.h>
#endif

static int simd_allowed = 1;

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
    t->w = malloc(6 * (size_t)n * sizeof(uint64_t));
    if (!t->w) return FS_ERR_NOMEM;
    t->wp = t->w + n;
    t->iw = t->w + 2 * (size_t)n;
    t->iwp = t->w + 3 * (size_t)n;
    t->wp52 = t->w + 4 * (size_t)n;
    t->iwp52 = t->w + 5 * (size_t)n;
    const uint64_t psi_inv = powmod(psi, q - 2, q);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t r = bitrev(i, logn);
        t->w[i] = powmod(psi, r, q);
        t->wp[i] = shoup(t->w[i], q);
        t->iw[i] = powmod(psi_inv, r, q);
        t->iwp[i] = shoup(t->iw[i], q);
        t->wp52[i] = shoup(t->w[i], q) >> 12;
        t->iwp52[i] = shoup(t->iw[i], q) >> 12;
    }
    t->ninv = powmod(n, q - 2, q);
    t->ninvp = shoup(t->ninv, q);
    t->ninvp52 = t->ninvp >> 12;
    return FS_OK;
}

void fs_he_ntt_free(fs_he_ntt *t)
{
    if (!t) return;
    free(t->w);
    memset(t, 0, sizeof *t);
}

#ifdef HE_IFMA
#define IFMA_TARGET __attribute__((target("avx512f,avx512vl,avx512ifma")))
#define M52 0xfffffffffffffull

/* y·w mod q in [0, 2q), 8 lanes; y < 2^52, wp = ⌊w·2^52/q⌋. */
IFMA_TARGET static inline __m512i mul52_z(__m512i y, __m512i w, __m512i wp, __m512i q)
{
    const __m512i z = _mm512_setzero_si512();
    const __m512i hi = _mm512_madd52hi_epu64(z, y, wp);
    const __m512i lo = _mm512_madd52lo_epu64(z, y, w);
    const __m512i hq = _mm512_madd52lo_epu64(z, hi, q);
    return _mm512_and_si512(_mm512_sub_epi64(lo, hq), _mm512_set1_epi64((long long)M52));
}
IFMA_TARGET static inline __m256i mul52_y(__m256i y, __m256i w, __m256i wp, __m256i q)
{
    const __m256i z = _mm256_setzero_si256();
    const __m256i hi = _mm256_madd52hi_epu64(z, y, wp);
    const __m256i lo = _mm256_madd52lo_epu64(z, y, w);
    const __m256i hq = _mm256_madd52lo_epu64(z, hi, q);
    return _mm256_and_si256(_mm256_sub_epi64(lo, hq), _mm256_set1_epi64x((long long)M52));
}
/* x − m where x ≥ m, else x (unsigned lanes). */
IFMA_TARGET static inline __m512i csub_z(__m512i x, __m512i m)
{
    return _mm512_min_epu64(x, _mm512_sub_epi64(x, m));
}
IFMA_TARGET static inline __m256i csub_y(__m256i x, __m256i m)
{
    return _mm256_min_epu64(x, _mm256_sub_epi64(x, m));
}

/* Spans 2 and 1 work on 16 words at a time (4 or 8 butterflies): the x and
 * y halves are gathered into two vectors, transformed, and put back. */
IFMA_TARGET static inline void gather_xy(const uint64_t *a, uint32_t len, __m512i *x, __m512i *y)
{
    const __m512i v0 = _mm512_loadu_si512(a), v1 = _mm512_loadu_si512(a + 8);
    const __m512i ix = len == 2 ? _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13)
                                : _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    const __m512i iy = len == 2 ? _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15)
                                : _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    *x = _mm512_permutex2var_epi64(v0, ix, v1);
    *y = _mm512_permutex2var_epi64(v0, iy, v1);
}
IFMA_TARGET static inline void scatter_xy(uint64_t *a, uint32_t len, __m512i x, __m512i y)
{
    const __m512i i0 = len == 2 ? _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11)
                                : _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    const __m512i i1 = len == 2 ? _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15)
                                : _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    _mm512_storeu_si512(a, _mm512_permutex2var_epi64(x, i0, y));
    _mm512_storeu_si512(a + 8, _mm512_permutex2var_epi64(x, i1, y));
}
/* The twiddles of the butterflies of 16 words from tw (4 for span 2, each
 * used twice; 8 for span 1). */
IFMA_TARGET static inline __m512i twiddles(const uint64_t *tw, uint32_t len)
{
    if (len == 1) return _mm512_loadu_si512(tw);
    const __m512i w4 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)tw));
    return _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3), w4);
}

/* The forward transform of fs_he_ntt_fwd below, in vectors. */
IFMA_TARGET static void ntt_fwd_ifma(const fs_he_ntt *t, uint64_t *a)
{
    const uint64_t q = t->q, q2 = 2 * q;
    const uint32_t n = t->n;
    const __m512i vq = _mm512_set1_epi64((long long)q), vq2 = _mm512_set1_epi64((long long)q2);
    const __m256i yq = _mm256_set1_epi64x((long long)q), yq2 = _mm256_set1_epi64x((long long)q2);
    uint32_t len = n;
    for (uint32_t m = 1; m < n; m <<= 1) {
        len >>= 1;
        if (len >= 8) {
            for (uint32_t i = 0; i < m; i++) {
                const __m512i w = _mm512_set1_epi64((long long)t->w[m + i]);
                const __m512i wp = _mm512_set1_epi64((long long)t->wp52[m + i]);
                uint64_t *x = a + 2 * (size_t)i * len, *y = x + len;
                for (uint32_t j = 0; j < len; j += 8) {
                    __m512i u = csub_z(_mm512_loadu_si512(x + j), vq2);
                    __m512i v = mul52_z(_mm512_loadu_si512(y + j), w, wp, vq);
                    _mm512_storeu_si512(x + j, _mm512_add_epi64(u, v));
                    _mm512_storeu_si512(y + j, _mm512_add_epi64(_mm512_sub_epi64(u, v), vq2));
                }
            }
        } else if (len == 4) {
            for (uint32_t i = 0; i < m; i++) {
                const __m256i w = _mm256_set1_epi64x((long long)t->w[m + i]);
                const __m256i wp = _mm256_set1_epi64x((long long)t->wp52[m + i]);
                uint64_t *x = a + 8 * (size_t)i, *y = x + 4;
                __m256i u = csub_y(_mm256_loadu_si256((const __m256i *)x), yq2);
                __m256i v = mul52_y(_mm256_loadu_si256((const __m256i *)y), w, wp, yq);
                _mm256_storeu_si256((__m256i *)x, _mm256_add_epi64(u, v));
                _mm256_storeu_si256((__m256i *)y, _mm256_add_epi64(_mm256_sub_epi64(u, v), yq2));
            }
        } else { /* spans 2 and 1: 16 words hold 16 / (2·len) butterflies */
            const uint32_t per = 8 / len;
            for (uint32_t i = 0; i < m; i += per) {
                __m512i u, y;
                gather_xy(a + 2 * (size_t)i * len, len, &u, &y);
                const __m512i w = twiddles(t->w + m + i, len), wp = twiddles(t->wp52 + m + i, len);
                u = csub_z(u, vq2);
                const __m512i v = mul52_z(y, w, wp, vq);
                scatter_xy(a + 2 * (size_t)i * len, len, _mm512_add_epi64(u, v),
                           _mm512_add_epi64(_mm512_sub_epi64(u, v), vq2));
            }
        }
    }
    for (uint32_t j = 0; j < n; j += 8) {
        __m512i v = _mm512_loadu_si512(a + j);
        _mm512_storeu_si512(a + j, csub_z(csub_z(v, vq2), vq));
    }
}

/* The inverse transform of fs_he_ntt_inv below, in vectors. */
IFMA_TARGET static void ntt_inv_ifma(const fs_he_ntt *t, uint64_t *a)
{
    const uint64_t q = t->q, q2 = 2 * q;
    const uint32_t n = t->n;
    const __m512i vq = _mm512_set1_epi64((long long)q), vq2 = _mm512_set1_epi64((long long)q2);
    const __m256i yq = _mm256_set1_epi64x((long long)q), yq2 = _mm256_set1_epi64x((long long)q2);
    uint32_t len = 1;
    for (uint32_t m = n; m > 1; m >>= 1) {
        const uint32_t h = m >> 1;
        if (len >= 8) {
            for (uint32_t i = 0; i < h; i++) {
                const __m512i w = _mm512_set1_epi64((long long)t->iw[h + i]);
                const __m512i wp = _mm512_set1_epi64((long long)t->iwp52[h + i]);
                uint64_t *x = a + 2 * (size_t)i * len, *y = x + len;
                for (uint32_t j = 0; j < len; j += 8) {
                    const __m512i u = _mm512_loadu_si512(x + j), v = _mm512_loadu_si512(y + j);
                    _mm512_storeu_si512(x + j, csub_z(_mm512_add_epi64(u, v), vq2));
                    _mm512_storeu_si512(
                        y + j, mul52_z(_mm512_add_epi64(_mm512_sub_epi64(u, v), vq2), w, wp, vq));
                }
            }
        } else if (len == 4) {
            for (uint32_t i = 0; i < h; i++) {
                const __m256i w = _mm256_set1_epi64x((long long)t->iw[h + i]);
                const __m256i wp = _mm256_set1_epi64x((long long)t->iwp52[h + i]);
                uint64_t *x = a + 8 * (size_t)i, *y = x + 4;
                const __m256i u = _mm256_loadu_si256((const __m256i *)x);
                const __m256i v = _mm256_loadu_si256((const __m256i *)y);
                _mm256_storeu_si256((__m256i *)x, csub_y(_mm256_add_epi64(u, v), yq2));
                _mm256_storeu_si256((__m256i *)y,
                                    mul52_y(_mm256_add_epi64(_mm256_sub_epi64(u, v), yq2), w, wp, yq));
            }
        } else { /* spans 1 and 2 */
            const uint32_t per = 8 / len;
            for (uint32_t i = 0; i < h; i += per) {
                __m512i u, v;
                gather_xy(a + 2 * (size_t)i * len, len, &u, &v);
                const __m512i w = twiddles(t->iw + h + i, len), wp = twiddles(t->iwp52 + h + i, len);
                scatter_xy(a + 2 * (size_t)i * len, len, csub_z(_mm512_add_epi64(u, v), vq2),
                           mul52_z(_mm512_add_epi64(_mm512_sub_epi64(u, v), vq2), w, wp, vq));
            }
        }
        len <<= 1;
    }
    const __m512i ni = _mm512_set1_epi64((long long)t->ninv);
    const __m512i nip = _mm512_set1_epi64((long long)t->ninvp52);
    for (uint32_t j = 0; j < n; j += 8)
        _mm512_storeu_si512(a + j, csub_z(mul52_z(_mm512_loadu_si512(a + j), ni, nip, vq), vq));
}

static int cpu_has_ifma(void)
{
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512ifma");
}

/* n ≥ 16: every stage fills whole vectors. */
static int ifma_usable(const fs_he_ntt *t)
{
    return simd_allowed && t->n >= 16 && t->q < (1ull << 50) && cpu_has_ifma();
}
#endif

int fs_he_ntt_simd(int allow)
{
    simd_allowed = allow != 0;
#ifdef HE_IFMA
    return simd_allowed && cpu_has_ifma();
#else
    return 0;
#endif
}

/* Forward transform: m = 1, 2, 4, … butterflies of span len = n/(2m); the
 * pair (a[j], a[j+len]) becomes (U + V, U − V) with V = a[j+len]·w[m+i].
 * Values enter each stage in [0, 4q) and leave in [0, 4q). */
void fs_he_ntt_fwd(const fs_he_ntt *t, uint64_t *a)
{
#ifdef HE_IFMA
    if (ifma_usable(t)) {
        ntt_fwd_ifma(t, a);
        return;
    }
#endif
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
#ifdef HE_IFMA
    if (ifma_usable(t)) {
        ntt_inv_ifma(t, a);
        return;
    }
#endif
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
