/*
 * tests/test_aggops.c — the CPU backend's aggregator ops (kernels/backend.h,
 * kernels/cpu/cpu_aggops.c), each against an independent answer:
 *   - fold_many: bit for bit the same as k successive fold calls;
 *   - u32_sum: a naive wrapping loop, and 0xffffffff + 2 = 1;
 *   - chacha_mask: the RFC 8439 §2.3.2 block and §2.4.2 encryption vectors
 *     (bytes copied from the RFC), then libsodium's
 *     crypto_stream_chacha20_ietf / _xor_ic at offsets 0, 1, 15, 16, 17 and
 *     beyond, lengths 0, 1 and odd ones, several keys with mixed signs,
 *     add-then-subtract restoring the input, chunked == whole, the result
 *     independent of the thread count, bad signs and ranges refused;
 *   - dequant: INT32_MIN / INT32_MAX / −1 known answers, and a double
 *     reference where every step but the last is exact;
 *   - l2_norm_sq: known answers (all ones, 3-4-5), random vectors against a
 *     long double sum, the same bits on every call, a batch == single calls;
 *   - scale: a naive loop;
 *   - gauss_add: a naive loop over fs_philox_gauss, chunked at odd offsets ==
 *     one call, independent of threads, sample mean and variance, refusals.
 * tests/test_aggops_cuda.c compares the CUDA versions with these.
 */
#include "check.h"
#include "kernels/backend.h"
#include "kernels/aggops.h"
#include "kernels/chacha20.h"
#include "kernels/philox.h"

#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rs = 0x243f6a8885a308d3ull;

/* splitmix64: deterministic test data. */
static uint64_t rnd64(void)
{
    uint64_t z = (rs += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static uint32_t rnd32(void) { return (uint32_t)(rnd64() >> 32); }
static float rndf(void) { return (float)((double)(rnd64() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* ---- fold_many and u32_sum ---------------------------------------------- */

static void test_sums(const fs_backend *be)
{
    enum { N = 100003, K = 7 };
    float *x[K], *want = xmalloc(N * 4), *got = xmalloc(N * 4);
    uint32_t *u[K], *uwant = xmalloc(N * 4), *ugot = xmalloc(N * 4);
    float w[K];
    for (int j = 0; j < K; j++) {
        x[j] = xmalloc(N * 4);
        u[j] = xmalloc(N * 4);
        w[j] = rndf() * 10.0f;
        for (size_t i = 0; i < N; i++) {
            x[j][i] = rndf();
            u[j][i] = rnd32();
        }
    }
    for (size_t i = 0; i < N; i++) {
        want[i] = got[i] = rndf() * 3.0f;
        uwant[i] = ugot[i] = rnd32();
    }
    /* fold_many == K folds */
    for (int j = 0; j < K; j++) CHECK(be->fold(NULL, N, want, x[j], w[j]) == FS_OK, "fold");
    CHECK(be->fold_many(NULL, N, got, (const float *const *)x, w, K) == FS_OK, "fold_many");
    size_t d = 0;
    for (size_t i = 0; i < N; i++) d += fbits(got[i]) != fbits(want[i]);
    CHECK(d == 0, "fold_many differs from %d folds in %zu of %d elements", K, d, N);
    printf("fold_many == %d successive folds: %zu of %d differ\n", K, d, N);

    /* u32_sum vs a wrapping loop */
    for (size_t i = 0; i < N; i++)
        for (int j = 0; j < K; j++) uwant[i] = (uint32_t)((uint64_t)uwant[i] + u[j][i]);
    CHECK(be->u32_sum(NULL, N, ugot, (const uint32_t *const *)u, K) == FS_OK, "u32_sum");
    d = 0;
    for (size_t i = 0; i < N; i++) d += ugot[i] != uwant[i];
    CHECK(d == 0, "u32_sum differs from the naive sum in %zu elements", d);
    uint32_t a[2] = {0xffffffffu, 5}, b[2] = {2, 0xfffffffbu};
    const uint32_t *bp[1] = {b};
    CHECK(be->u32_sum(NULL, 2, a, bp, 1) == FS_OK && a[0] == 1 && a[1] == 0,
          "u32_sum wraps mod 2^32: %u %u", a[0], a[1]);
    CHECK(be->u32_sum(NULL, 0, NULL, NULL, 3) == FS_OK, "empty u32_sum");
    CHECK(be->u32_sum(NULL, 2, a, NULL, 1) == FS_ERR_ARG, "NULL inputs refused");
    CHECK(be->u32_sum(NULL, 2, a, bp, -1) == FS_ERR_ARG, "negative k refused");
    for (int j = 0; j < K; j++) {
        free(x[j]);
        free(u[j]);
    }
    free(want); free(got); free(uwant); free(ugot);
}

/* ---- chacha_mask -------------------------------------------------------- */

/* RFC 8439 §2.3.2: the block for key 00..1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00,
 * counter 1 (the serialized state, as words). */
static const uint32_t rfc_232[16] = {
    0xe4e7f110, 0x15593bd1, 0x1fdd0f50, 0xc47120a3, 0xc7f4d1c7, 0x0368c033, 0x9aaa2204, 0x4e6cd4c3,
    0x466482d2, 0x09aa9f07, 0x05d7c214, 0xa2028bd9, 0xd19c12b5, 0xb94e16de, 0xe883d0cb, 0x4e3c50a2};

/* RFC 8439 §2.4.2: "Ladies and Gentlemen..." encrypted with key 00..1f, nonce
 * 00:00:00:00:00:00:00:4a:00:00:00:00, initial counter 1 (first 112 bytes). */
static const uint8_t rfc_242_ct[112] = {
    0x6e, 0x2e, 0x35, 0x9a, 0x25, 0x68, 0xf9, 0x80, 0x41, 0xba, 0x07, 0x28, 0xdd, 0x0d, 0x69, 0x81,
    0xe9, 0x7e, 0x7a, 0xec, 0x1d, 0x43, 0x60, 0xc2, 0x0a, 0x27, 0xaf, 0xcc, 0xfd, 0x9f, 0xae, 0x0b,
    0xf9, 0x1b, 0x65, 0xc5, 0x52, 0x47, 0x33, 0xab, 0x8f, 0x59, 0x3d, 0xab, 0xcd, 0x62, 0xb3, 0x57,
    0x16, 0x39, 0xd6, 0x24, 0xe6, 0x51, 0x52, 0xab, 0x8f, 0x53, 0x0c, 0x35, 0x9f, 0x08, 0x61, 0xd8,
    0x07, 0xca, 0x0d, 0xbf, 0x50, 0x0d, 0x6a, 0x61, 0x56, 0xa3, 0x8e, 0x08, 0x8a, 0x22, 0xb6, 0x5e,
    0x52, 0xbc, 0x51, 0x4d, 0x16, 0xcc, 0xf8, 0x06, 0x81, 0x8c, 0xe9, 0x1a, 0xb7, 0x79, 0x37, 0x36,
    0x5a, 0xf9, 0x0b, 0xbf, 0x74, 0xa3, 0x5b, 0xe6, 0xb4, 0x0b, 0x8e, 0xed, 0xf2, 0x78, 0x5e, 0x42};
static const char rfc_242_pt[] =
    "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    "sunscreen would be it.";

static void rfc_vectors(const fs_backend *be)
{
    fs_mask_key k;
    memset(&k, 0, sizeof k);
    for (int i = 0; i < 32; i++) k.key[i] = (uint8_t)i;
    k.nonce[3] = 0x09;
    k.nonce[7] = 0x4a;
    k.sign = 1;
    uint32_t kw[8], nw[3], blk[16];
    fs_chacha20_load_key(k.key, k.nonce, kw, nw);
    fs_chacha20_block(kw, 1, nw, blk);
    CHECK(!memcmp(blk, rfc_232, sizeof blk), "RFC 8439 2.3.2 block vector");
    /* the same block through the op: words 16..31 of the stream added to 0 */
    uint32_t acc[16] = {0};
    CHECK(be->chacha_mask(NULL, 16, acc, 16, &k, 1) == FS_OK, "chacha_mask");
    CHECK(!memcmp(acc, rfc_232, sizeof acc), "chacha_mask reproduces the RFC 8439 2.3.2 block");

    /* 2.4.2: keystream from counter 1 = words from offset 16; ct = pt XOR ks */
    k.nonce[3] = 0;
    uint32_t ks[28] = {0};
    CHECK(be->chacha_mask(NULL, 28, ks, 16, &k, 1) == FS_OK, "chacha_mask");
    size_t bad = 0;
    for (int i = 0; i < 112; i++) {
        uint8_t kb = (uint8_t)(ks[i / 4] >> (8 * (i % 4))); /* little-endian words */
        bad += (uint8_t)(rfc_242_pt[i] ^ kb) != rfc_242_ct[i];
    }
    CHECK(bad == 0, "RFC 8439 2.4.2 encryption vector: %zu of 112 bytes differ", bad);
    printf("RFC 8439 2.3.2 block and 2.4.2 encryption vectors: %s\n", bad ? "FAIL" : "ok");
}

/* The keystream words [0, n) of (key, nonce) from libsodium. */
static uint32_t *sodium_words(const fs_mask_key *k, size_t n)
{
    uint8_t *bytes = xmalloc(n * 4);
    crypto_stream_chacha20_ietf(bytes, n * 4, k->nonce, k->key);
    uint32_t *w = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++)
        w[i] = (uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 |
               (uint32_t)bytes[4 * i + 2] << 16 | (uint32_t)bytes[4 * i + 3] << 24;
    free(bytes);
    return w;
}

static void chacha_vs_sodium(const fs_backend *be, void *ctx)
{
    enum { NK = 5 };
    fs_mask_key keys[NK];
    for (int j = 0; j < NK; j++) {
        randombytes_buf(keys[j].key, 32);
        randombytes_buf(keys[j].nonce, 12);
        keys[j].sign = (j % 3 == 1) ? -1 : 1;
    }
    const uint64_t offs[] = {0, 1, 15, 16, 17, 31, 1000003};
    const size_t lens[] = {0, 1, 2, 15, 16, 17, 33, 1001, 65537};
    const size_t maxw = 1000003 + 65537;
    uint32_t *ks[NK];
    for (int j = 0; j < NK; j++) ks[j] = sodium_words(&keys[j], maxw);
    size_t cases = 0, bad_cases = 0;
    for (size_t a = 0; a < sizeof offs / sizeof *offs; a++)
        for (size_t b = 0; b < sizeof lens / sizeof *lens; b++)
            for (int nk = 1; nk <= NK; nk += NK - 1) {
                const uint64_t off = offs[a];
                const size_t n = lens[b];
                uint32_t *acc = xmalloc(n * 4 + 8), *want = xmalloc(n * 4 + 8);
                for (size_t i = 0; i < n + 2; i++) acc[i] = want[i] = rnd32();
                for (int j = 0; j < nk; j++)
                    for (size_t i = 0; i < n; i++)
                        want[i] += keys[j].sign > 0 ? ks[j][off + i] : 0u - ks[j][off + i];
                fs_status st = be->chacha_mask(ctx, n, acc, off, keys, nk);
                int ok = st == FS_OK && !memcmp(acc, want, (n + 2) * 4); /* +2: untouched after */
                cases++;
                if (!ok) {
                    bad_cases++;
                    CHECK(0, "chacha_mask vs libsodium: offset %llu, %zu words, %d keys: %s",
                          (unsigned long long)off, n, nk, fs_status_str(st));
                }
                free(acc);
                free(want);
            }
    printf("chacha_mask vs libsodium crypto_stream_chacha20_ietf: %zu of %zu cases differ\n",
           bad_cases, cases);

    /* _xor_ic at a block-aligned offset: mask words from block ic on */
    {
        const uint32_t ic = 40;
        const size_t n = 37;
        uint8_t zero[37 * 4] = {0}, bytes[37 * 4];
        crypto_stream_chacha20_ietf_xor_ic(bytes, zero, sizeof zero, keys[0].nonce, ic, keys[0].key);
        uint32_t acc[37] = {0};
        fs_mask_key k0 = keys[0];
        k0.sign = 1;
        CHECK(be->chacha_mask(ctx, n, acc, (uint64_t)ic * 16, &k0, 1) == FS_OK, "mask");
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += acc[i] != ((uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 |
                              (uint32_t)bytes[4 * i + 2] << 16 | (uint32_t)bytes[4 * i + 3] << 24);
        CHECK(bad == 0, "chacha_mask vs crypto_stream_chacha20_ietf_xor_ic(ic=40): %zu words differ", bad);
    }

    /* add then subtract restores; chunked == whole; threads do not matter */
    enum { M = 70001 };
    uint32_t *orig = xmalloc(M * 4), *x = xmalloc(M * 4), *y = xmalloc(M * 4);
    for (size_t i = 0; i < M; i++) orig[i] = x[i] = y[i] = rnd32();
    CHECK(be->chacha_mask(ctx, M, x, 5, keys, NK) == FS_OK, "mask");
    CHECK(memcmp(x, orig, M * 4) != 0, "the mask changed the vector");
    const size_t cut[] = {0, 1, 17, 4099, 4100, 65536, M};
    for (size_t c = 0; c + 1 < sizeof cut / sizeof *cut; c++)
        CHECK(be->chacha_mask(NULL, cut[c + 1] - cut[c], y + cut[c], 5 + cut[c], keys, NK) == FS_OK,
              "chunk");
    CHECK(!memcmp(x, y, M * 4), "chacha_mask in chunks (one thread) == one call (all threads)");
    fs_mask_key neg[NK];
    memcpy(neg, keys, sizeof neg);
    for (int j = 0; j < NK; j++) neg[j].sign = -keys[j].sign;
    CHECK(be->chacha_mask(ctx, M, x, 5, neg, NK) == FS_OK, "unmask");
    CHECK(!memcmp(x, orig, M * 4), "subtracting the masks restores the vector");

    /* refusals */
    fs_mask_key bad = keys[0];
    bad.sign = 0;
    CHECK(be->chacha_mask(ctx, 4, x, 0, &bad, 1) == FS_ERR_ARG, "sign 0 refused");
    CHECK(be->chacha_mask(ctx, 4, x, ((uint64_t)1 << 36) - 3, keys, 1) == FS_ERR_ARG,
          "a range past the 32-bit block counter is refused");
    CHECK(be->chacha_mask(ctx, 3, x, ((uint64_t)1 << 36) - 3, keys, 1) == FS_OK,
          "the last words of the stream are allowed");
    CHECK(be->chacha_mask(ctx, 0, NULL, 0, keys, 1) == FS_OK, "empty mask");
    for (int j = 0; j < NK; j++) free(ks[j]);
    free(orig); free(x); free(y);
    sodium_memzero(keys, sizeof keys);
    sodium_memzero(neg, sizeof neg);
}

/* ---- dequant ------------------------------------------------------------ */

static void test_dequant(const fs_backend *be)
{
    const uint32_t s[5] = {0x80000000u, 0x7fffffffu, 0xffffffffu, 0, 65536u * 3};
    float out[5];
    const float scale = 0x1p-16f;
    CHECK(be->dequant(NULL, 5, out, s, scale, 1.0f) == FS_OK, "dequant");
    /* INT32_MIN = -2^31 exactly; INT32_MAX rounds to 2^31 in fp32 */
    CHECK(out[0] == -32768.0f && out[1] == 32768.0f && out[2] == -0x1p-16f && out[3] == 0.0f &&
              out[4] == 3.0f,
          "dequant known answers: %a %a %a %a %a", out[0], out[1], out[2], out[3], out[4]);
    enum { N = 4099 };
    uint32_t *u = xmalloc(N * 4);
    float *o = xmalloc(N * 4);
    for (size_t i = 0; i < N; i++) u[i] = (uint32_t)(int32_t)((int32_t)(rnd32() >> 8) - (1 << 23));
    const float inv_w = 1.0f / 3.0f;
    CHECK(be->dequant(NULL, N, o, u, scale, inv_w) == FS_OK, "dequant");
    size_t bad = 0;
    for (size_t i = 0; i < N; i++) {
        int32_t v = (int32_t)u[i]; /* |v| < 2^23: the conversion and ·2^-16 are exact */
        float want = (float)((double)v * 0x1p-16 * (double)inv_w);
        bad += fbits(o[i]) != fbits(want);
    }
    CHECK(bad == 0, "dequant with 1/w differs from the double reference in %zu elements", bad);
    free(u);
    free(o);
}

/* ---- l2_norm_sq and scale ----------------------------------------------- */

static void test_l2(const fs_backend *be)
{
    enum { N = 100003 };
    float *ones = xmalloc(N * 4), *r = xmalloc(N * 4), *r2 = xmalloc(N * 4);
    for (size_t i = 0; i < N; i++) {
        ones[i] = 1.0f;
        r[i] = rndf() * 1e-2f;
        r2[i] = rndf() * 50.0f;
    }
    double *ws = xmalloc(be->l2_ws_bytes(NULL, N, 3) + 8);
    double out[3];
    const float *one[1] = {ones};
    CHECK(be->l2_norm_sq(NULL, N, one, 1, out, ws) == FS_OK && out[0] == (double)N,
          "l2 of %d ones: %.17g", N, out[0]);
    const float v345[2] = {3.0f, 4.0f};
    const float *p345[1] = {v345};
    CHECK(be->l2_norm_sq(NULL, 2, p345, 1, out, ws) == FS_OK && out[0] == 25.0, "l2 of (3,4): %g", out[0]);
    CHECK(be->l2_norm_sq(NULL, 0, p345, 1, out, ws) == FS_OK && out[0] == 0.0, "l2 of nothing");

    const float *xs[3] = {r, r2, ones};
    CHECK(be->l2_norm_sq(NULL, N, xs, 3, out, ws) == FS_OK, "l2 batch");
    const float *vs[2] = {r, r2};
    for (int j = 0; j < 2; j++) {
        long double ref = 0;
        for (size_t i = 0; i < N; i++) ref += (long double)vs[j][i] * vs[j][i];
        double rel = fabs((double)(((long double)out[j] - ref) / ref));
        CHECK(rel < 1e-14, "l2 vs long double: relative error %g", rel);
        printf("l2_norm_sq vs long double sum (vector %d): relative error %.2g\n", j, rel);
        double again;
        const float *one_v[1] = {vs[j]};
        CHECK(be->l2_norm_sq(NULL, N, one_v, 1, &again, ws) == FS_OK, "l2");
        CHECK(memcmp(&again, &out[j], sizeof again) == 0, "l2 batch == single call, same bits");
    }
    CHECK(out[2] == (double)N, "third vector of the batch");

    /* scale */
    float *y = xmalloc(N * 4), *z = xmalloc(N * 4);
    memcpy(y, r2, N * 4);
    memcpy(z, r, N * 4);
    float *sx[2] = {y, z};
    const float sf[2] = {0.3f, -7.0f};
    CHECK(be->scale(NULL, N, sx, sf, 2) == FS_OK, "scale");
    size_t bad = 0;
    for (size_t i = 0; i < N; i++)
        bad += fbits(y[i]) != fbits(r2[i] * 0.3f) || fbits(z[i]) != fbits(r[i] * -7.0f);
    CHECK(bad == 0, "scale differs from x·s in %zu elements", bad);
    free(ones); free(r); free(r2); free(ws); free(y); free(z);
}

/* ---- gauss_add ---------------------------------------------------------- */

static void test_gauss(const fs_backend *be, void *ctx)
{
    enum { N = 200003 };
    const uint64_t seed = 0x0123456789abcdefull, stream = 77, off = 13;
    const double sd = 0.75;
    float *a = xmalloc(N * 4), *b = xmalloc(N * 4), *base = xmalloc(N * 4);
    for (size_t i = 0; i < N; i++) base[i] = a[i] = b[i] = rndf();
    CHECK(be->gauss_add(ctx, N, a, off, sd, seed, stream) == FS_OK, "gauss_add");
    size_t bad = 0;
    double m = 0, v = 0;
    for (size_t i = 0; i < N; i++) {
        const double g = fs_philox_gauss(seed, stream, off + i);
        const float want = base[i] + (float)(sd * g);
        bad += fbits(a[i]) != fbits(want);
        m += g;
        v += g * g;
    }
    CHECK(bad == 0, "gauss_add differs from the naive loop in %zu elements", bad);
    m /= N;
    v = v / N - m * m;
    CHECK(fabs(m) < 5.0 / sqrt((double)N) && fabs(v - 1.0) < 5.0 * sqrt(2.0 / N),
          "noise moments: mean %g variance %g", m, v);
    printf("gauss_add: noise mean %.4f, variance %.4f over %d draws\n", m, v, N);
    const size_t cut[] = {0, 1, 2, 7, 4098, 100001, N};
    for (size_t c = 0; c + 1 < sizeof cut / sizeof *cut; c++)
        CHECK(be->gauss_add(NULL, cut[c + 1] - cut[c], b + cut[c], off + cut[c], sd, seed, stream) ==
                  FS_OK,
              "chunk");
    CHECK(!memcmp(a, b, N * 4), "gauss_add in chunks (one thread) == one call (all threads)");
    CHECK(be->gauss_add(ctx, 3, a, 0, -1.0, seed, stream) == FS_ERR_ARG, "negative stddev refused");
    CHECK(be->gauss_add(ctx, 3, a, 0, NAN, seed, stream) == FS_ERR_ARG, "NaN stddev refused");
    CHECK(be->gauss_add(ctx, 3, a, UINT64_MAX - 1, 1.0, seed, stream) == FS_ERR_ARG,
          "an offset that overflows is refused");
    free(a); free(b); free(base);
}

int main(void)
{
    if (sodium_init() < 0) {
        fprintf(stderr, "libsodium failed to initialise\n");
        return 1;
    }
    const fs_backend *be = fs_backend_cpu();
    CHECK(be->fold_many && be->u32_sum && be->chacha_mask && be->dequant && be->l2_norm_sq &&
              be->scale && be->gauss_add && be->l2_ws_bytes,
          "the CPU backend has every aggregator op");
    fs_backend_cpu_set_threads(3);
    void *ctx = NULL;
    CHECK(be->ctx_init(&ctx, 0) == FS_OK, "cpu context");
    test_sums(be);
    rfc_vectors(be);
    chacha_vs_sodium(be, ctx);
    test_dequant(be);
    test_l2(be);
    test_gauss(be, ctx);
    be->ctx_free(ctx);
    return check_result();
}
