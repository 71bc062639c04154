/*
 * tests/test_he.c — the multiparty homomorphic encryption of common/he.h.
 *
 *  1. NTT: negacyclic products through the NTT against schoolbook
 *     multiplication mod X^n + 1 (n = 1 .. 4096, the two scheme primes and a
 *     61-bit prime; random, all-zero, all-(q−1) and X^(n−1)·X inputs), and
 *     INTT(NTT(a)) = a.
 *  2. Sums: n = 2, 3, 10, 100 sites each quantise and encrypt a random update
 *     of 5,000 values (two ciphertexts) with a FedAvg weight; the aggregator
 *     sums; t sites decrypt; the result equals the exact integer sum of the
 *     quantised values (computed here in the clear) and dequantises to the
 *     weighted sum. The real noise before smudging (the key rebuilt here from
 *     t shares) stays within fs_he_noise_bound.
 *  3. The site bound: fs_he_max_sites is checked against the inequalities it
 *     solves (n fits, n + 1 does not); 127 sites (the bound for C = 4,
 *     f = 16) all sending the largest value decode exactly, a 128th wraps;
 *     noise injected up to the decoding budget decodes, just past it does not.
 *  4. Threshold: 7 sites, t = 4: any 4 (3 dropouts) and 5 decode; the API
 *     refuses 3 partials; a key rebuilt from 3 shares, one site's share, or no
 *     key at all (the aggregator's view c0) gives values unrelated to the sum.
 *  5. Wire: round trips of every kind; truncations, trailing bytes, a flipped
 *     bit in header, payload and digest, residues ≥ q under a valid digest,
 *     wrong kind and version: all refused with the matching status.
 *  6. Quantisation: clipping, weights, unbiased stochastic rounding, refusals.
 */
#include "check.h"
#include "common/he.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;

static uint64_t rs = 0x243f6a8885a308d3ull;
static uint64_t rnd(void)
{
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return rs;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) { fprintf(stderr, "FATAL: out of memory\n"); exit(1); }
    return p;
}

/* ---- 1. NTT ------------------------------------------------------------- */

static void schoolbook(const uint64_t *a, const uint64_t *b, uint64_t *c, uint32_t n, uint64_t q)
{
    for (uint32_t i = 0; i < n; i++) c[i] = 0;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < n; j++) {
            uint64_t p = fs_he_mulmod(a[i], b[j], q);
            uint32_t k = i + j;
            if (k < n) c[k] = (c[k] + p) % q;
            else c[k - n] = (c[k - n] + q - p) % q;
        }
}

static void ntt_product(const fs_he_ntt *t, const uint64_t *a, const uint64_t *b, uint64_t *c)
{
    uint32_t n = t->n;
    uint64_t *x = xcalloc(n, 8), *y = xcalloc(n, 8);
    memcpy(x, a, n * 8); memcpy(y, b, n * 8);
    fs_he_ntt_fwd(t, x); fs_he_ntt_fwd(t, y);
    for (uint32_t i = 0; i < n; i++) c[i] = fs_he_mulmod(x[i], y[i], t->q);
    fs_he_ntt_inv(t, c);
    free(x); free(y);
}

/* The IFMA transforms against the portable ones, word for word (random
 * inputs, zeros, all q − 1), for both primes at N = 4096 and at n = 16, 32
 * (the smallest transforms the IFMA code takes). */
static void test_ntt_simd(void)
{
    if (!fs_he_ntt_simd(1)) {
        fprintf(stderr, "note: no AVX-512 IFMA on this CPU: the portable NTT alone is tested\n");
        return;
    }
    const uint64_t primes[2] = { FS_HE_Q0, FS_HE_Q1 };
    const uint32_t sizes[3] = { 16, 32, 4096 };
    size_t bad = 0, runs = 0;
    for (int pi = 0; pi < 2; pi++)
        for (int si = 0; si < 3; si++) {
            const uint32_t n = sizes[si];
            const uint64_t q = primes[pi];
            fs_he_ntt t;
            CHECK(fs_he_ntt_init(&t, q, n) == FS_OK, "ntt init");
            uint64_t *a = xcalloc(n, 8), *b = xcalloc(n, 8);
            for (int r = 0; r < 60; r++) {
                for (uint32_t i = 0; i < n; i++)
                    a[i] = r == 0 ? 0 : r == 1 ? q - 1 : rnd() % q;
                for (int dir = 0; dir < 2; dir++) {
                    memcpy(b, a, n * 8);
                    fs_he_ntt_simd(1);
                    if (dir) fs_he_ntt_inv(&t, a); else fs_he_ntt_fwd(&t, a);
                    fs_he_ntt_simd(0);
                    if (dir) fs_he_ntt_inv(&t, b); else fs_he_ntt_fwd(&t, b);
                    for (uint32_t i = 0; i < n; i++) bad += a[i] != b[i] || a[i] >= q;
                    runs++;
                }
            }
            free(a); free(b);
            fs_he_ntt_free(&t);
        }
    fs_he_ntt_simd(1);
    CHECK(bad == 0, "IFMA NTT == portable NTT word for word (%zu transforms, %zu words differ)",
          runs, bad);
}

/* NTT products against schoolbook multiplication, with the transforms the
 * CPU chose (fs_he_ntt_simd). */
static void test_ntt_schoolbook(void)
{
    const uint64_t primes[3] = { FS_HE_Q0, FS_HE_Q1, 0x1ffffffffffde001ull };
    for (int pi = 0; pi < 3; pi++)
        for (uint32_t n = 1; n <= 4096; n *= 2) {
            if (n == 4096 && pi == 2) continue; /* schoolbook at 4096: two primes suffice */
            fs_he_ntt t;
            CHECK(fs_he_ntt_init(&t, primes[pi], n) == FS_OK, "ntt init q=%llx n=%u",
                  (unsigned long long)primes[pi], n);
            const uint64_t q = primes[pi];
            uint64_t *a = xcalloc(n, 8), *b = xcalloc(n, 8), *c = xcalloc(n, 8), *d = xcalloc(n, 8);
            for (int kind = 0; kind < 4; kind++) {
                for (uint32_t i = 0; i < n; i++) {
                    switch (kind) {
                    case 0: a[i] = rnd() % q; b[i] = rnd() % q; break;
                    case 1: a[i] = 0; b[i] = rnd() % q; break;
                    case 2: a[i] = q - 1; b[i] = q - 1; break;
                    default: a[i] = (i == n - 1); b[i] = (n > 1 ? i == 1 : 1); break;
                    }
                }
                schoolbook(a, b, c, n, q);
                ntt_product(&t, a, b, d);
                size_t bad = 0;
                for (uint32_t i = 0; i < n; i++) bad += c[i] != d[i];
                CHECK(bad == 0, "NTT product != schoolbook: q=%llx n=%u input %d (%zu coeffs)",
                      (unsigned long long)q, n, kind, bad);
                if (kind == 3 && n > 1) CHECK(d[0] == q - 1, "X^(n-1)·X = -1 mod X^n+1 (n=%u)", n);
                memcpy(d, a, n * 8);
                fs_he_ntt_fwd(&t, d);
                fs_he_ntt_inv(&t, d);
                CHECK(!memcmp(a, d, n * 8), "INTT(NTT(a)) != a (n=%u input %d)", n, kind);
            }
            free(a); free(b); free(c); free(d);
            fs_he_ntt_free(&t);
        }
}

static void test_ntt(void)
{
    if (fs_he_ntt_simd(1)) test_ntt_schoolbook(); /* the IFMA transforms */
    fs_he_ntt_simd(0);
    test_ntt_schoolbook();                        /* the portable ones */
    fs_he_ntt_simd(1);
    test_ntt_simd();
    fs_he_ntt t;
    CHECK(fs_he_ntt_init(&t, 101, 4) == FS_ERR_ARG, "q = 101 is not 1 mod 8: refused");
    CHECK(fs_he_ntt_init(&t, FS_HE_Q0, 8192) == FS_ERR_ARG, "n > 4096 refused");
    CHECK(fs_he_ntt_init(&t, (1ull << 62) + 1, 4) == FS_ERR_ARG, "q >= 2^62 refused");
}

/* ---- a federation -------------------------------------------------------- */

typedef struct {
    uint32_t n, t;
    fs_he_ctx ctx;
    fs_he_pubkey pk;
    fs_he_tkey *tk;       /* n threshold keys */
} fed;

/* Key generation, collective key, dealing and threshold keys for n sites. */
static void fed_init(fed *f, uint32_t n, uint32_t t)
{
    memset(f, 0, sizeof *f);
    f->n = n; f->t = t;
    uint8_t seed[FS_HE_SEED_BYTES];
    for (unsigned i = 0; i < sizeof seed; i++) seed[i] = (uint8_t)(rnd() >> 7);
    if (fs_he_ctx_init(&f->ctx, seed) != FS_OK) { fprintf(stderr, "FATAL: ctx\n"); exit(1); }
    fs_he_secret *sk = xcalloc(n, sizeof *sk);
    uint64_t *pks = xcalloc((size_t)n * FS_HE_POLY_WORDS, 8);
    const uint64_t **pp = xcalloc(n, sizeof *pp);
    for (uint32_t i = 0; i < n; i++) {
        CHECK(fs_he_keygen(&f->ctx, i + 1, &sk[i], pks + (size_t)i * FS_HE_POLY_WORDS) == FS_OK,
              "keygen %u", i + 1);
        pp[i] = pks + (size_t)i * FS_HE_POLY_WORDS;
    }
    CHECK(fs_he_pk_combine(&f->ctx, pp, n, &f->pk) == FS_OK, "pk combine");
    f->tk = xcalloc(n, sizeof *f->tk);
    for (uint32_t k = 0; k < n; k++)
        CHECK(fs_he_tkey_begin(&f->tk[k], k + 1, n, t) == FS_OK, "tkey begin");
    uint64_t *deal = xcalloc((size_t)n * FS_HE_POLY_WORDS, 8);
    for (uint32_t i = 0; i < n; i++) {
        CHECK(fs_he_shamir_deal(&f->ctx, &sk[i], n, t, deal) == FS_OK, "deal %u", i + 1);
        for (uint32_t k = 0; k < n; k++)
            CHECK(fs_he_tkey_add(&f->ctx, &f->tk[k], i + 1, deal + (size_t)k * FS_HE_POLY_WORDS) ==
                  FS_OK, "tkey add");
        fs_he_secret_free(&sk[i]);
    }
    for (uint32_t k = 0; k < n; k++) CHECK(fs_he_tkey_end(&f->ctx, &f->tk[k]) == FS_OK, "tkey end");
    sodium_memzero(deal, (size_t)n * FS_HE_POLY_WORDS * 8);
    free(deal); free(sk); free(pks); free(pp);
}

static void fed_free(fed *f)
{
    for (uint32_t k = 0; k < f->n; k++) fs_he_tkey_free(&f->tk[k]);
    free(f->tk);
    fs_he_ctx_free(&f->ctx);
}

/* Partial decryptions of `sum` (nct ciphertexts) by the sites of `set`, then
 * combination into m[count]. Returns the combine status. */
static fs_status fed_decrypt(fed *f, const uint32_t *set, uint32_t size, const uint64_t *sum,
                             size_t nct, int64_t *m, size_t count)
{
    uint64_t *parts = xcalloc((size_t)size * nct * FS_HE_POLY_WORDS, 8);
    const uint64_t **pp = xcalloc(size, sizeof *pp);
    for (uint32_t i = 0; i < size; i++) {
        pp[i] = parts + (size_t)i * nct * FS_HE_POLY_WORDS;
        CHECK(fs_he_partial_decrypt(&f->ctx, &f->tk[set[i] - 1], set, size, sum, nct,
                                    (uint64_t *)pp[i]) == FS_OK, "partial by site %u", set[i]);
    }
    fs_status st = fs_he_combine(&f->ctx, f->t, set, size, sum, nct, pp, m, count);
    free(parts); free(pp);
    return st;
}

/* Secret s (NTT form, per residue) rebuilt from the threshold keys of `set`
 * with Lagrange coefficients for that set: what t colluders could do, and
 * what fewer than t cannot. */
static void rebuild_key(fed *f, const uint32_t *set, uint32_t size, uint64_t *s_hat)
{
    memset(s_hat, 0, FS_HE_POLY_WORDS * 8);
    for (uint32_t p = 0; p < size; p++)
        for (unsigned j = 0; j < FS_HE_L; j++) {
            uint64_t q = f->ctx.q[j], lam = fs_he_lagrange0(set, size, p, q);
            for (size_t i = 0; i < FS_HE_N; i++) {
                size_t x = j * FS_HE_N + i;
                s_hat[x] = (s_hat[x] + fs_he_mulmod(lam, f->tk[set[p] - 1].f_hat[x], q)) % q;
            }
        }
}

/* x = c0 + c1·s for ciphertext ct (coefficient form) with s_hat in NTT form. */
static void raw_decrypt(fed *f, const uint64_t *ct, const uint64_t *s_hat, uint64_t *x)
{
    uint64_t *c1 = xcalloc(FS_HE_N, 8);
    for (unsigned j = 0; j < FS_HE_L; j++) {
        uint64_t q = f->ctx.q[j];
        memcpy(c1, ct + FS_HE_POLY_WORDS + j * FS_HE_N, FS_HE_N * 8);
        fs_he_ntt_fwd(&f->ctx.ntt[j], c1);
        for (size_t i = 0; i < FS_HE_N; i++) c1[i] = fs_he_mulmod(c1[i], s_hat[j * FS_HE_N + i], q);
        fs_he_ntt_inv(&f->ctx.ntt[j], c1);
        for (size_t i = 0; i < FS_HE_N; i++) x[j * FS_HE_N + i] = (ct[j * FS_HE_N + i] + c1[i]) % q;
    }
    free(c1);
}

/* ---- 2. sums of 2..100 sites --------------------------------------------- */

static void test_sums(uint32_t n, uint32_t t)
{
    fed f;
    fed_init(&f, n, t);
    const size_t count = 5000, nct = fs_he_ct_count(count);
    const fs_he_quant qz = { .clip = 0.5f, .frac_bits = 16 };
    CHECK(nct == 2, "5000 values + weight need 2 ciphertexts, got %zu", nct);
    float *x = xcalloc(count, sizeof *x), *got = xcalloc(count, sizeof *got);
    double *want_f = xcalloc(count, sizeof *want_f), wsum_want = 0;
    int64_t *qv = xcalloc(count + 1, 8), *sum = xcalloc(count + 1, 8), *m = xcalloc(count + 1, 8);
    uint64_t *ct = xcalloc(nct * FS_HE_CT_WORDS, 8), *acc = xcalloc(nct * FS_HE_CT_WORDS, 8);
    for (uint32_t s = 0; s < n; s++) {
        for (size_t i = 0; i < count; i++) x[i] = (float)((double)(int64_t)rnd() / 9.2e18);
        x[0] = 3.0f; x[1] = -3.0f; /* clipped to ±C */
        float wfrac = (float)((rnd() % 1000) + 1) / 1000.0f;
        CHECK(fs_he_quantise(&qz, x, count, wfrac, rnd(), qv) == FS_OK, "quantise");
        for (size_t i = 0; i <= count; i++) sum[i] += qv[i];
        for (size_t i = 0; i < count; i++) {
            double c = x[i] < -0.5f ? -0.5 : x[i] > 0.5f ? 0.5 : x[i];
            want_f[i] += c * wfrac;
        }
        wsum_want += wfrac;
        CHECK(fs_he_encrypt(&f.ctx, &f.pk, qv, count + 1, ct) == FS_OK, "encrypt site %u", s + 1);
        if (s == 0) memcpy(acc, ct, nct * FS_HE_CT_WORDS * 8);
        else fs_he_ct_add(acc, ct, nct);
    }
    /* Decryption set: the last t sites (the others "dropped"). */
    uint32_t *set = xcalloc(t, sizeof *set);
    for (uint32_t i = 0; i < t; i++) set[i] = n - t + 1 + i;
    CHECK(fed_decrypt(&f, set, t, acc, nct, m, count + 1) == FS_OK, "combine n=%u", n);
    size_t bad = 0;
    for (size_t i = 0; i <= count; i++) bad += m[i] != sum[i];
    CHECK(bad == 0, "n=%u: decrypt(sum) differs from the exact sum in %zu of %zu values", n, bad,
          count + 1);
    double wsum = 0;
    CHECK(fs_he_dequantise(&qz, m, count, got, &wsum) == FS_OK, "dequantise");
    /* Each stochastic rounding errs by < 2^-16; n of them per value. */
    double tol = n * ldexp(1.0, -16) + 1e-6, worst = 0;
    for (size_t i = 0; i < count; i++) {
        double d = fabs(got[i] - want_f[i]);
        if (d > worst) worst = d;
    }
    CHECK(worst <= tol, "n=%u: dequantised weighted sum off by %.3g > %.3g", n, worst, tol);
    CHECK(fabs(wsum - wsum_want) <= tol, "n=%u: weight sum %.6f want %.6f", n, wsum, wsum_want);
    /* Real noise before smudging, against the worst-case bound. */
    uint64_t *s_hat = xcalloc(FS_HE_POLY_WORDS, 8), *xr = xcalloc(FS_HE_POLY_WORDS, 8);
    rebuild_key(&f, set, t, s_hat);
    double vmax = 0;
    /* Noise per coefficient: decode the offset x − Δ·m for every coefficient. */
    int64_t *mm = xcalloc(FS_HE_N, 8);
    for (size_t k = 0; k < nct; k++) {
        raw_decrypt(&f, acc + k * FS_HE_CT_WORDS, s_hat, xr);
        for (size_t i = 0; i < FS_HE_N; i++) {
            size_t gi = k * FS_HE_N + i;
            mm[i] = gi <= count ? sum[gi] : 0;
        }
        for (size_t i = 0; i < FS_HE_N; i++) {
            double v = fabs(fs_he_noise_of(&f.ctx, xr, mm, i));
            if (v > vmax) vmax = v;
        }
    }
    double bound = fs_he_noise_bound(n, n);
    CHECK(vmax > 0 && vmax <= bound, "n=%u: noise %.4g outside (0, bound %.4g]", n, vmax, bound);
    printf("sum of %3u sites, t=%u: exact (%zu values); noise %.3g = 2^%.1f, worst-case bound "
           "2^%.1f, budget 2^%.1f\n", n, t, count + 1, vmax, log2(vmax), log2(bound),
           log2(fs_he_noise_budget()));
    free(mm); free(s_hat); free(xr); free(set);
    free(x); free(got); free(want_f); free(qv); free(sum); free(m); free(ct); free(acc);
    fed_free(&f);
}

/* ---- 3. the site bound ---------------------------------------------------- */

/* Adds the signed value d (|d| < q/2) to coefficient i of residues x. */
static void add_signed(uint64_t *x, size_t i, __int128 d)
{
    const uint64_t q[2] = { FS_HE_Q0, FS_HE_Q1 };
    for (unsigned j = 0; j < 2; j++) {
        __int128 r = ((__int128)x[j * FS_HE_N + i] + d % (__int128)q[j]) % (__int128)q[j];
        if (r < 0) r += q[j];
        x[j * FS_HE_N + i] = (uint64_t)r;
    }
}

static void test_bound(void)
{
    const fs_he_quant qz = { .clip = 4.0f, .frac_bits = 16 };
    const uint64_t Q = 4 * 65536 + 1; /* max(⌈C·2^f⌉, 2^f) + 1 */
    const uint32_t nmax = fs_he_max_sites(&qz), nnoise = fs_he_max_sites_noise();
    /* The inequalities, re-evaluated here in long double. */
    const long double budget = (long double)fs_he_noise_budget();
    for (uint32_t d = 0; d < 2; d++) {
        long double n = nnoise + d;
        long double need = n * (2.0L * FS_HE_N * n * FS_HE_CBD_ETA + FS_HE_CBD_ETA) +
                           n * ldexpl(1.0L, FS_HE_SMUDGE_BITS);
        CHECK((need <= budget) == (d == 0), "noise bound: n=%Lg %s the budget", n,
              d ? "should exceed" : "should fit");
    }
    CHECK(nmax == 127 && nmax <= nnoise && (uint64_t)nmax * Q <= (1u << 25) - 1 &&
          (uint64_t)(nmax + 1) * Q > (1u << 25) - 1, "plaintext bound: max sites %u", nmax);
    printf("site bound: %u sites for C=4, f=16 (plaintext); %u by the noise budget alone\n",
           nmax, nnoise);
    const fs_he_quant qd = { .clip = 1.0f, .frac_bits = 16 };
    printf("site bound: %u sites for the default C=1, f=16\n", fs_he_max_sites(&qd));

    fed f;
    fed_init(&f, nmax, 2);
    int64_t *m = xcalloc(FS_HE_N, 8), *got = xcalloc(FS_HE_N, 8);
    for (size_t i = 0; i < FS_HE_N; i++) m[i] = (i & 1) ? -(int64_t)Q : (int64_t)Q;
    uint64_t *ct = xcalloc(FS_HE_CT_WORDS, 8), *acc = xcalloc(FS_HE_CT_WORDS, 8);
    for (uint32_t s = 0; s < nmax; s++) {
        CHECK(fs_he_encrypt(&f.ctx, &f.pk, m, FS_HE_N, ct) == FS_OK, "encrypt");
        if (s == 0) memcpy(acc, ct, sizeof(uint64_t) * FS_HE_CT_WORDS);
        else fs_he_ct_add(acc, ct, 1);
    }
    const uint32_t set[2] = { 5, nmax };
    CHECK(fed_decrypt(&f, set, 2, acc, 1, got, FS_HE_N) == FS_OK, "combine at the bound");
    size_t bad = 0;
    for (size_t i = 0; i < FS_HE_N; i++) bad += got[i] != (int64_t)nmax * m[i];
    CHECK(bad == 0, "%u sites at the extreme value: %zu coefficients wrong", nmax, bad);
    /* One more site: the sum leaves (−t/2, t/2) and wraps. */
    fs_he_ct_add(acc, ct, 1);
    CHECK(fed_decrypt(&f, set, 2, acc, 1, got, FS_HE_N) == FS_OK, "combine past the bound");
    bad = 0;
    for (size_t i = 0; i < FS_HE_N; i++) bad += got[i] != (int64_t)(nmax + 1) * m[i];
    CHECK(bad == FS_HE_N, "%u sites: every coefficient should wrap, %zu did", nmax + 1,
          bad);

    /* Decoding threshold: move the total noise to the budget (decodes) and
     * to Δ/2 + t (decodes to m + 1). */
    uint64_t *s_hat = xcalloc(FS_HE_POLY_WORDS, 8), *x = xcalloc(FS_HE_POLY_WORDS, 8);
    rebuild_key(&f, set, 2, s_hat);
    raw_decrypt(&f, ct, s_hat, x); /* one fresh ciphertext of m */
    const u128 q = (u128)FS_HE_Q0 * FS_HE_Q1;
    const __int128 half_delta = (__int128)((q >> FS_HE_PLAIN_BITS) / 2);
    const __int128 inside = half_delta - ((__int128)1 << FS_HE_PLAIN_BITS);
    const __int128 outside = half_delta + ((__int128)1 << FS_HE_PLAIN_BITS);
    uint64_t *y = xcalloc(FS_HE_POLY_WORDS, 8);
    size_t ok_in = 0, wrong_out = 0;
    for (int sign = -1; sign <= 1; sign += 2) {
        for (int which = 0; which < 2; which++) {
            memcpy(y, x, FS_HE_POLY_WORDS * 8);
            for (size_t i = 0; i < FS_HE_N; i++) {
                __int128 v = (__int128)fs_he_noise_of(&f.ctx, x, m, i);
                add_signed(y, i, sign * (which ? outside : inside) - v);
            }
            fs_he_decode(&f.ctx, y, got, FS_HE_N);
            for (size_t i = 0; i < FS_HE_N; i++) {
                if (!which) ok_in += got[i] == m[i];
                else wrong_out += got[i] == m[i] + sign;
            }
        }
    }
    CHECK(ok_in == 2 * FS_HE_N, "noise ±(Δ/2 − t) must decode: %zu of %u", ok_in, 2 * FS_HE_N);
    CHECK(wrong_out == 2 * FS_HE_N, "noise ±(Δ/2 + t) must decode to m ± 1: %zu of %u", wrong_out,
          2 * FS_HE_N);
    free(y); free(s_hat); free(x);
    free(m); free(got); free(ct); free(acc);
    fed_free(&f);
}

/* ---- 4. threshold, dropouts, fewer than t -------------------------------- */

static size_t matches(const int64_t *a, const int64_t *b, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += a[i] == b[i];
    return k;
}

static void test_threshold(void)
{
    fed f;
    fed_init(&f, 7, 4);
    const size_t count = FS_HE_N;
    int64_t *sum = xcalloc(count, 8), *m = xcalloc(count, 8), *got = xcalloc(count, 8);
    uint64_t *ct = xcalloc(FS_HE_CT_WORDS, 8), *acc = xcalloc(FS_HE_CT_WORDS, 8);
    for (uint32_t s = 0; s < 7; s++) {
        for (size_t i = 0; i < count; i++) {
            m[i] = (int64_t)(rnd() % 200001) - 100000;
            sum[i] += m[i];
        }
        CHECK(fs_he_encrypt(&f.ctx, &f.pk, m, count, ct) == FS_OK, "encrypt");
        if (s == 0) memcpy(acc, ct, sizeof(uint64_t) * FS_HE_CT_WORDS);
        else fs_he_ct_add(acc, ct, 1);
    }
    const uint32_t sets[4][5] = { { 1, 2, 3, 4 }, { 4, 5, 6, 7 }, { 1, 3, 4, 7 }, { 2, 3, 5, 6, 7 } };
    const uint32_t sizes[4] = { 4, 4, 4, 5 };
    for (int k = 0; k < 4; k++) {
        memset(got, 0, count * 8);
        CHECK(fed_decrypt(&f, sets[k], sizes[k], acc, 1, got, count) == FS_OK, "set %d", k);
        CHECK(matches(got, sum, count) == count, "decryption set %d (%u sites, %u dropped): "
              "%zu of %zu exact", k, sizes[k], 7 - sizes[k], matches(got, sum, count), count);
    }
    /* Fewer than t: refused by both sides. */
    const uint32_t three[3] = { 2, 4, 6 };
    uint64_t *part = xcalloc(FS_HE_POLY_WORDS, 8);
    fprintf(stderr, "(two refusals expected next)\n");
    CHECK(fs_he_partial_decrypt(&f.ctx, &f.tk[1], three, 3, acc, 1, part) == FS_ERR_ARG,
          "a site refuses a decryption set below the threshold");
    const uint64_t *pp[3] = { part, part, part };
    CHECK(fs_he_combine(&f.ctx, 4, three, 3, acc, 1, pp, got, count) == FS_ERR_ARG,
          "combine refuses 3 partials with t = 4");
    const uint32_t outsider[4] = { 1, 2, 3, 4 };
    CHECK(fs_he_partial_decrypt(&f.ctx, &f.tk[6], outsider, 4, acc, 1, part) == FS_ERR_ARG,
          "site 7 refuses a set it is not in");
    /* …and cryptographically: keys rebuilt from too little. */
    uint64_t *s_hat = xcalloc(FS_HE_POLY_WORDS, 8), *x = xcalloc(FS_HE_POLY_WORDS, 8);
    rebuild_key(&f, sets[2], 4, s_hat);
    raw_decrypt(&f, acc, s_hat, x);
    fs_he_decode(&f.ctx, x, got, count);
    CHECK(matches(got, sum, count) == count, "control: a key from 4 shares decrypts");
    rebuild_key(&f, three, 3, s_hat);
    raw_decrypt(&f, acc, s_hat, x);
    fs_he_decode(&f.ctx, x, got, count);
    size_t m3 = matches(got, sum, count);
    const uint32_t one[1] = { 3 };
    rebuild_key(&f, one, 1, s_hat); /* one site's share as if it were the key */
    raw_decrypt(&f, acc, s_hat, x);
    fs_he_decode(&f.ctx, x, got, count);
    size_t m1 = matches(got, sum, count);
    fs_he_decode(&f.ctx, acc, got, count); /* the aggregator's view: c0 alone */
    size_t m0 = matches(got, sum, count);
    /* A random value mod 2^26 hits the sum with probability 2^-26. */
    CHECK(m3 <= 2 && m1 <= 2 && m0 <= 2, "too little key recovered values: 3 shares %zu, "
          "1 share %zu, no key %zu of %zu", m3, m1, m0, count);
    printf("threshold 4 of 7: every tested set of >= 4 decodes; 3 shares / 1 share / the "
           "aggregator alone match %zu / %zu / %zu of %zu values\n", m3, m1, m0, count);
    /* Smudging is fresh for every partial and within ±2^S. */
    const uint32_t four[4] = { 1, 2, 3, 4 };
    uint64_t *part2 = xcalloc(FS_HE_POLY_WORDS, 8);
    CHECK(fs_he_partial_decrypt(&f.ctx, &f.tk[0], four, 4, acc, 1, part) == FS_OK, "partial");
    CHECK(fs_he_partial_decrypt(&f.ctx, &f.tk[0], four, 4, acc, 1, part2) == FS_OK, "partial");
    /* E1 − E2 = part − part2 (mod q), read as a centred integer. */
    uint64_t *diff = xcalloc(FS_HE_POLY_WORDS, 8);
    const uint64_t qq[2] = { FS_HE_Q0, FS_HE_Q1 };
    for (size_t w = 0; w < FS_HE_POLY_WORDS; w++)
        diff[w] = (part[w] + qq[w / FS_HE_N] - part2[w]) % qq[w / FS_HE_N];
    int64_t zero[FS_HE_N] = { 0 };
    size_t zeros = 0, outside = 0, wide = 0;
    for (size_t i = 0; i < FS_HE_N; i++) {
        double d = fs_he_noise_of(&f.ctx, diff, zero, i);
        zeros += d == 0;
        outside += fabs(d) > ldexp(1.0, FS_HE_SMUDGE_BITS + 1);
        wide += fabs(d) > ldexp(1.0, FS_HE_SMUDGE_BITS - 4);
    }
    /* Uniform E1 − E2 is triangular on (−2^(S+1), 2^(S+1)): |d| > 2^(S−4)
     * with probability (1 − 2^-5)^2 ≈ 0.94. */
    CHECK(zeros < 4 && outside == 0 && wide > FS_HE_N * 9 / 10,
          "two partials differ by fresh smudging within 2^(S+1): %zu equal, %zu outside, %zu wide",
          zeros, outside, wide);
    free(diff);
    free(part2); free(part); free(s_hat); free(x);
    free(sum); free(m); free(got); free(ct); free(acc);
    fed_free(&f);
}

/* ---- 5. wire ---------------------------------------------------------------- */

static void test_wire(void)
{
    const fs_he_obj_kind kinds[5] = { FS_HE_OBJ_PK_SHARE, FS_HE_OBJ_PUBKEY, FS_HE_OBJ_SHAMIR,
                                      FS_HE_OBJ_CT, FS_HE_OBJ_PARTIAL };
    const uint64_t q[2] = { FS_HE_Q0, FS_HE_Q1 };
    CHECK(fs_he_wire_bytes(FS_HE_OBJ_CT) == 40 + 2 * 48128 + 8, "ct wire size %zu",
          fs_he_wire_bytes(FS_HE_OBJ_CT));
    /* The check is CRC-64/XZ: "123456789" → 0x995dc9bbdf1939fa (the CRC
     * catalogue's check value), stored little-endian. */
    uint8_t kat[17] = "123456789";
    fs_he_wire_put_check(kat, sizeof kat);
    const uint8_t want_kat[8] = { 0xfa, 0x39, 0x19, 0xdf, 0xbb, 0xc9, 0x5d, 0x99 };
    CHECK(!memcmp(kat + 9, want_kat, 8) && fs_he_wire_check_ok(kat, sizeof kat),
          "CRC-64 known answer");
    kat[3] ^= 1;
    CHECK(!fs_he_wire_check_ok(kat, sizeof kat), "CRC-64 sees a flipped bit");
    {
        /* Layout: value i at bits [47i, 47i + 47) of the payload, LSB first,
         * read back bit by bit here, independently of fs_he_read. */
        uint64_t *p = xcalloc(FS_HE_POLY_WORDS, 8);
        for (size_t i = 0; i < FS_HE_POLY_WORDS; i++)
            p[i] = (0x5a5a5a5a5a5ull * (i + 1) + i) % q[i / FS_HE_N];
        fs_he_hdr h = { .kind = FS_HE_OBJ_PARTIAL };
        const size_t len = fs_he_wire_bytes(FS_HE_OBJ_PARTIAL);
        uint8_t *b = xcalloc(len, 1);
        CHECK(fs_he_write(&h, p, b, len) == FS_OK, "write for the layout check");
        size_t bad = 0;
        for (size_t i = 0; i < FS_HE_POLY_WORDS; i++) {
            uint64_t v = 0;
            for (unsigned k = 0; k < 47; k++) {
                const size_t bit = 47 * i + k;
                v |= (uint64_t)((b[40 + bit / 8] >> (bit % 8)) & 1u) << k;
            }
            bad += v != p[i];
        }
        CHECK(bad == 0 && len == 40 + 48128 + 8, "packed layout: %zu of %d values misplaced", bad,
              FS_HE_POLY_WORDS);
        free(p); free(b);
    }
    for (int k = 0; k < 5; k++) {
        size_t np = kinds[k] == FS_HE_OBJ_CT ? 2 : 1, nw = np * FS_HE_POLY_WORDS;
        uint64_t *p = xcalloc(nw, 8), *r = xcalloc(nw, 8);
        for (size_t i = 0; i < nw; i++) p[i] = rnd() % q[(i / FS_HE_N) % 2];
        p[0] = 0; p[1] = q[0] - 1; p[FS_HE_N] = q[1] - 1;
        fs_he_hdr h = { .kind = kinds[k], .from = 3, .to = 5, .index = 1234 };
        memcpy(h.key_id, "keyid-01", 8);
        fs_he_set_id((const uint32_t[]){ 1, 2, 3 }, 3, h.set_id);
        size_t len = fs_he_wire_bytes(kinds[k]);
        uint8_t *b = xcalloc(len + 1, 1);
        CHECK(fs_he_write(&h, p, b, len) == FS_OK, "write kind %d", k);
        fs_he_hdr g;
        CHECK(fs_he_read(b, len, kinds[k], &g, r) == FS_OK && !memcmp(p, r, nw * 8) &&
              g.from == 3 && g.to == 5 && g.index == 1234 && !memcmp(g.key_id, h.key_id, 8) &&
              !memcmp(g.set_id, h.set_id, 8), "round trip kind %d", k);
        if (kinds[k] != FS_HE_OBJ_CT) {
            free(p); free(r); free(b);
            continue;
        }
        fprintf(stderr, "(refusals expected next)\n");
        const size_t cuts[6] = { 0, 1, 39, 40, len / 2, len - 1 };
        for (int c = 0; c < 6; c++)
            CHECK(fs_he_read(b, cuts[c], FS_HE_OBJ_CT, &g, r) == FS_ERR_FORMAT,
                  "truncated to %zu bytes refused", cuts[c]);
        CHECK(fs_he_read(b, len + 1, FS_HE_OBJ_CT, &g, r) == FS_ERR_FORMAT, "trailing byte refused");
        const size_t flips[5] = { 13, 25, 40, len / 2, len - 1 };
        for (int c = 0; c < 5; c++) {
            b[flips[c]] ^= 0x10;
            CHECK(fs_he_read(b, len, FS_HE_OBJ_CT, &g, r) == FS_ERR_CHECKSUM,
                  "flipped bit at byte %zu refused", flips[c]);
            b[flips[c]] ^= 0x10;
        }
        b[5] ^= 1; /* kind 4 -> 5: length check */
        CHECK(fs_he_read(b, len, FS_HE_OBJ_CT, &g, r) == FS_ERR_FORMAT, "altered kind refused");
        b[5] ^= 1;
        CHECK(fs_he_read(b, len, FS_HE_OBJ_PARTIAL, &g, r) == FS_ERR_MISMATCH,
              "a ciphertext where a partial is expected refused");
        b[4] = 1;
        CHECK(fs_he_read(b, len, FS_HE_OBJ_CT, &g, r) == FS_ERR_FORMAT,
              "version 1 (BLAKE2b digest) refused");
        b[4] = 3;
        CHECK(fs_he_read(b, len, FS_HE_OBJ_CT, &g, r) == FS_ERR_FORMAT, "version 3 refused");
        b[4] = 2;
        b[0] = 'X';
        CHECK(fs_he_read(b, len, FS_HE_OBJ_CT, &g, r) == FS_ERR_FORMAT, "bad magic refused");
        b[0] = 'F';
        /* A residue ≥ q under a valid check: set residue 1 (bits 47..93) to
         * all ones, then re-seal. */
        for (size_t bit = 47; bit < 94; bit++) b[40 + bit / 8] |= (uint8_t)(1u << (bit % 8));
        fs_he_wire_put_check(b, len);
        CHECK(fs_he_read(b, len, FS_HE_OBJ_CT, &g, r) == FS_ERR_FORMAT,
              "residue >= q refused even with a valid check");
        p[7] = q[0];
        CHECK(fs_he_write(&h, p, b, len) == FS_ERR_ARG, "write refuses an unreduced residue");
        CHECK(fs_he_write(&h, p, b, len - 1) == FS_ERR_ARG, "write refuses a short buffer");
        free(p); free(r); free(b);
    }
}

/* ---- 6. quantisation ------------------------------------------------------- */

static void test_quant(void)
{
    const fs_he_quant qz = { .clip = 1.0f, .frac_bits = 8 };
    const size_t n = 20000;
    float *x = xcalloc(n, sizeof *x);
    int64_t *q = xcalloc(n + 1, 8);
    for (size_t i = 0; i < n; i++) x[i] = 0.3f + 1.0f / 1024; /* 76.8·… between two steps */
    CHECK(fs_he_quantise(&qz, x, n, 1.0f, 42, q) == FS_OK, "quantise");
    double mean = 0;
    for (size_t i = 0; i < n; i++) {
        mean += (double)q[i];
        CHECK(q[i] == 77 || q[i] == 78, "value between its two neighbours (%lld)", (long long)q[i]);
        if (q[i] != 77 && q[i] != 78) break;
    }
    mean /= n;
    const double want = (0.3 + 1.0 / 1024) * 256; /* 77.05 (as float: close) */
    CHECK(fabs(mean - want) < 0.02, "stochastic rounding unbiased: mean %.4f want %.4f", mean, want);
    CHECK(q[n] == 256, "weight coefficient 1.0·2^8 = 256, got %lld", (long long)q[n]);
    float y[3] = { 5.0f, -5.0f, 0.0f };
    int64_t z[4];
    CHECK(fs_he_quantise(&qz, y, 3, 0.5f, 7, z) == FS_OK && z[0] == 128 && z[1] == -128 &&
          z[2] == 0 && z[3] == 128, "clip to ±C then ×w/w_cap: %lld %lld %lld %lld",
          (long long)z[0], (long long)z[1], (long long)z[2], (long long)z[3]);
    fprintf(stderr, "(refusals expected next)\n");
    y[1] = NAN;
    CHECK(fs_he_quantise(&qz, y, 3, 0.5f, 7, z) == FS_ERR_NUMERIC, "NaN refused");
    y[1] = 0;
    CHECK(fs_he_quantise(&qz, y, 3, 1.5f, 7, z) == FS_ERR_ARG, "w/w_cap > 1 refused");
    const fs_he_quant bad = { .clip = 0.0f, .frac_bits = 8 };
    CHECK(fs_he_quantise(&bad, y, 3, 1.0f, 7, z) == FS_ERR_ARG && fs_he_max_sites(&bad) == 0,
          "clip 0 refused");
    free(x); free(q);
}

/* Deterministic encryption under a seed; refusals of the data path. */
static void test_encrypt_api(void)
{
    fed f;
    fed_init(&f, 2, 2);
    int64_t m[3] = { 1, -2, 3 };
    uint8_t seed[32] = { 1 };
    uint64_t *a = xcalloc(FS_HE_CT_WORDS, 8), *b = xcalloc(FS_HE_CT_WORDS, 8);
    CHECK(fs_he_encrypt_seeded(&f.ctx, &f.pk, m, 3, seed, a) == FS_OK &&
          fs_he_encrypt_seeded(&f.ctx, &f.pk, m, 3, seed, b) == FS_OK &&
          !memcmp(a, b, FS_HE_CT_WORDS * 8), "same seed, same ciphertext");
    seed[0] = 2;
    CHECK(fs_he_encrypt_seeded(&f.ctx, &f.pk, m, 3, seed, b) == FS_OK &&
          memcmp(a, b, FS_HE_CT_WORDS * 8), "another seed, another ciphertext");
    fprintf(stderr, "(refusal expected next)\n");
    m[1] = (int64_t)1 << 25;
    CHECK(fs_he_encrypt(&f.ctx, &f.pk, m, 3, a) == FS_ERR_ARG, "|m| >= t/2 refused");
    free(a); free(b);
    fed_free(&f);
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    test_ntt();
    test_wire();
    test_quant();
    test_encrypt_api();
    test_threshold();
    test_sums(2, 2);
    test_sums(3, 2);
    test_sums(10, 6);
    test_sums(100, 3);
    test_bound();
    return check_result();
}
