/*
 * tests/test_he_cuda.c — the homomorphic-encryption kernels on the GPU
 * (kernels/cuda/he_ntt.cu through common/he_cuda.c) against the CPU code,
 * bit for bit:
 *   - NTT and INTT of 7 random polynomials per prime, plus all-(q−1) input;
 *   - encryption under the same seed of 300·4096 − 5 values (crossing the
 *     kernels' batch of 256 ciphertexts and ending mid-ciphertext) and of 17
 *     values: every word of every ciphertext equal;
 *   - ciphertext modular add of 5 ciphertexts (with all-(q−1) operands);
 *   - GPU-encrypted ciphertexts of 3 sites summed and threshold-decrypted on
 *     the CPU give the exact sum.
 * Exits 77 (skip) when fedseg has no CUDA backend or no device is present.
 */
#include "check.h"
#include "common/he.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rs = 0x9e3779b97f4a7c15ull;
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

/* Index of the first differing word, or n. */
static size_t first_diff(const uint64_t *a, const uint64_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) return i;
    return n;
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    uint8_t crs[32] = { 7, 7, 7 };
    fs_he_ctx ctx;
    if (fs_he_ctx_init(&ctx, crs) != FS_OK) return 1;
    void *dev = NULL;
    fs_status st = fs_he_cuda_open(&dev, &ctx);
    if (st == FS_ERR_UNSUPPORTED || st == FS_ERR_DEVICE) {
        printf("no CUDA backend or no device (%s): skipped\n", fs_status_str(st));
        fs_he_ctx_free(&ctx);
        return 77;
    }
    CHECK(st == FS_OK, "cuda open: %s", fs_status_str(st));
    if (st != FS_OK) return check_result();

    /* NTT / INTT */
    const size_t np = 8, w = np * FS_HE_N;
    uint64_t *cpu = xcalloc(w, 8), *gpu = xcalloc(w, 8);
    for (unsigned j = 0; j < FS_HE_L; j++)
        for (int inv = 0; inv < 2; inv++) {
            for (size_t i = 0; i < w; i++) cpu[i] = rnd() % ctx.q[j];
            for (size_t i = 7 * FS_HE_N; i < w; i++) cpu[i] = ctx.q[j] - 1;
            memcpy(gpu, cpu, w * 8);
            for (size_t p = 0; p < np; p++)
                (inv ? fs_he_ntt_inv : fs_he_ntt_fwd)(&ctx.ntt[j], cpu + p * FS_HE_N);
            CHECK(fs_he_cuda_ntt(dev, j, inv, gpu, np) == FS_OK, "cuda ntt");
            size_t d = first_diff(cpu, gpu, w);
            CHECK(d == w, "%s prime %u: first difference at word %zu (cpu %llu gpu %llu)",
                  inv ? "INTT" : "NTT", j, d, d < w ? (unsigned long long)cpu[d] : 0ull,
                  d < w ? (unsigned long long)gpu[d] : 0ull);
        }
    free(cpu); free(gpu);

    /* A 3-site key with threshold 2 for the encryption and end-to-end checks. */
    const uint32_t n = 3, t = 2;
    fs_he_secret sk[3];
    uint64_t *pks = xcalloc(n * FS_HE_POLY_WORDS, 8);
    const uint64_t *pp[3];
    for (uint32_t i = 0; i < n; i++) {
        pp[i] = pks + i * FS_HE_POLY_WORDS;
        CHECK(fs_he_keygen(&ctx, i + 1, &sk[i], (uint64_t *)pp[i]) == FS_OK, "keygen");
    }
    fs_he_pubkey *pk = xcalloc(1, sizeof *pk);
    CHECK(fs_he_pk_combine(&ctx, pp, n, pk) == FS_OK, "pk");
    fs_he_tkey *tk = xcalloc(n, sizeof *tk);
    uint64_t *deal = xcalloc(n * FS_HE_POLY_WORDS, 8);
    for (uint32_t k = 0; k < n; k++) CHECK(fs_he_tkey_begin(&tk[k], k + 1, n, t) == FS_OK, "begin");
    for (uint32_t i = 0; i < n; i++) {
        CHECK(fs_he_shamir_deal(&ctx, &sk[i], n, t, deal) == FS_OK, "deal");
        for (uint32_t k = 0; k < n; k++)
            CHECK(fs_he_tkey_add(&ctx, &tk[k], i + 1, deal + k * FS_HE_POLY_WORDS) == FS_OK, "add");
        fs_he_secret_free(&sk[i]);
    }
    for (uint32_t k = 0; k < n; k++) CHECK(fs_he_tkey_end(&ctx, &tk[k]) == FS_OK, "end");
    free(deal);

    /* Encryption parity. */
    const size_t counts[2] = { 300 * (size_t)FS_HE_N - 5, 17 };
    for (int c = 0; c < 2; c++) {
        const size_t count = counts[c], nct = (count + FS_HE_N - 1) / FS_HE_N;
        int64_t *m = xcalloc(count, 8);
        for (size_t i = 0; i < count; i++) m[i] = (int64_t)(rnd() % ((1u << 26) - 1)) - ((1 << 25) - 1);
        uint8_t seed[32];
        for (int i = 0; i < 32; i++) seed[i] = (uint8_t)rnd();
        uint64_t *a = xcalloc(nct * FS_HE_CT_WORDS, 8), *b = xcalloc(nct * FS_HE_CT_WORDS, 8);
        CHECK(fs_he_encrypt_seeded(&ctx, pk, m, count, seed, a) == FS_OK, "cpu encrypt");
        CHECK(fs_he_cuda_encrypt_seeded(dev, &ctx, pk, m, count, seed, b) == FS_OK, "gpu encrypt");
        size_t d = first_diff(a, b, nct * FS_HE_CT_WORDS);
        CHECK(d == nct * FS_HE_CT_WORDS, "encrypt %zu values: first difference at word %zu of %zu",
              count, d, nct * FS_HE_CT_WORDS);
        free(m); free(a); free(b);
    }

    /* Modular add parity. */
    const size_t nadd = 5, aw = nadd * FS_HE_CT_WORDS;
    uint64_t *acc = xcalloc(aw, 8), *acc2 = xcalloc(aw, 8), *ct = xcalloc(aw, 8);
    for (size_t i = 0; i < aw; i++) {
        uint64_t q = ctx.q[(i / FS_HE_N) % FS_HE_L];
        acc[i] = i < FS_HE_N ? q - 1 : rnd() % q;
        ct[i] = i < FS_HE_N ? q - 1 : rnd() % q;
    }
    memcpy(acc2, acc, aw * 8);
    fs_he_ct_add(acc, ct, nadd);
    CHECK(fs_he_cuda_ct_add(dev, acc2, ct, nadd) == FS_OK, "gpu add");
    CHECK(first_diff(acc, acc2, aw) == aw, "ct add differs at word %zu", first_diff(acc, acc2, aw));
    free(acc); free(acc2); free(ct);

    /* End to end: GPU-encrypted, CPU-summed, threshold-decrypted. */
    const size_t count = 6000, nct = fs_he_ct_count(count);
    int64_t *m = xcalloc(nct * FS_HE_N, 8), *sum = xcalloc(nct * FS_HE_N, 8), *got = xcalloc(count, 8);
    uint64_t *c1 = xcalloc(nct * FS_HE_CT_WORDS, 8), *sumct = xcalloc(nct * FS_HE_CT_WORDS, 8);
    for (uint32_t s = 0; s < n; s++) {
        for (size_t i = 0; i < count; i++) {
            m[i] = (int64_t)(rnd() % 2000001) - 1000000;
            sum[i] += m[i];
        }
        CHECK(fs_he_cuda_encrypt(dev, &ctx, pk, m, count, c1) == FS_OK, "gpu encrypt");
        fs_he_ct_add(sumct, c1, nct);
    }
    const uint32_t set[2] = { 1, 3 };
    uint64_t *parts = xcalloc(2 * nct * FS_HE_POLY_WORDS, 8);
    const uint64_t *pr[2] = { parts, parts + nct * FS_HE_POLY_WORDS };
    for (int i = 0; i < 2; i++)
        CHECK(fs_he_partial_decrypt(&ctx, &tk[set[i] - 1], set, 2, sumct, nct, (uint64_t *)pr[i]) ==
              FS_OK, "partial");
    CHECK(fs_he_combine(&ctx, t, set, 2, sumct, nct, pr, got, count) == FS_OK, "combine");
    size_t bad = 0;
    for (size_t i = 0; i < count; i++) bad += got[i] != sum[i];
    CHECK(bad == 0, "GPU-encrypted sum of 3 sites: %zu of %zu values wrong", bad, count);
    printf("CUDA HE kernels bit-identical to the CPU (NTT, INTT, encrypt, add); GPU-encrypted "
           "sum decrypts exactly\n");
    free(m); free(sum); free(got); free(c1); free(sumct); free(parts);
    for (uint32_t k = 0; k < n; k++) fs_he_tkey_free(&tk[k]);
    free(tk); free(pks); free(pk);
    fs_he_cuda_close(dev);
    fs_he_ctx_free(&ctx);
    return check_result();
}
