/*
 * bench/bench_he.c — encrypted aggregation of one update at S sites with the
 * multiparty scheme of common/he.h, through the product's own entry points:
 * per site quantise → encrypt → serialise (the bytes that travel); at the
 * aggregator parse → sum; then t sites' partial decryptions, their
 * combination and dequantisation. Ciphertexts are encrypted in chunks of 64
 * (about 6 MB of wire bytes); the aggregator side parses each object into
 * one ciphertext's scratch and adds it to the sum, as fs_he_server_ct does.
 *
 * Correctness is checked before any figure is printed: the decrypted sum must
 * equal the exact sum of the quantised updates, value for value, or the
 * program exits 1. Prints the wire bytes per parameter (and the multiple of
 * fp32) and the seconds of each phase, then one JSON line (--json).
 *
 *   bench_he [--params P] [--sites S] [--threshold T] [--device cpu|cuda] [--json]
 *
 * Defaults: P = 7,766,372 (the `ref` U-Net), S = 10, T = 6. bench/run_he.sh
 * runs it beside TenSEAL's CKKS (bench/tenseal_he.py).
 */
#include "common/he.h"
#ifdef FS_HAVE_CUDA
#include "kernels/cuda/he_cuda.h"
#include <cuda_runtime.h>
#endif

#include <omp.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xmalloc(size_t b)
{
    void *p = malloc(b ? b : 1);
    if (!p) { fprintf(stderr, "bench_he: out of memory (%zu bytes)\n", b); exit(1); }
    return p;
}

int main(int argc, char **argv)
{
    size_t P = 7766372;
    uint32_t S = 10, T = 6;
    int json = 0, cuda = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--params") && i + 1 < argc) P = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--sites") && i + 1 < argc) S = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threshold") && i + 1 < argc) T = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) cuda = !strcmp(argv[++i], "cuda");
        else if (!strcmp(argv[i], "--json")) json = 1;
        else {
            fprintf(stderr, "usage: bench_he [--params P] [--sites S] [--threshold T] "
                            "[--device cpu|cuda] [--json]\n");
            return 2;
        }
    }
    const fs_he_quant qz = { .clip = 1.0f, .frac_bits = 16 };
    if (P == 0 || S < 2 || T < 2 || T > S || S > fs_he_max_sites(&qz)) {
        fprintf(stderr, "bench_he: need P > 0 and 2 <= threshold <= sites <= %u\n",
                fs_he_max_sites(&qz));
        return 2;
    }
    if (sodium_init() < 0) return 1;
    /* ---- setup (not timed): keys, collective key, threshold keys ---- */
    fs_he_ctx ctx;
    uint8_t crs[32];
    randombytes_buf(crs, sizeof crs);
    if (fs_he_ctx_init(&ctx, crs) != FS_OK) return 1;
    void *dev = NULL;
    if (cuda) {
        if (fs_he_cuda_open(&dev, &ctx) != FS_OK) {
            fprintf(stderr, "bench_he: no CUDA device or no CUDA build\n");
            return 77;
        }
    }
    fs_he_secret *sk = xmalloc(S * sizeof *sk);
    uint64_t *pks = xmalloc((size_t)S * FS_HE_POLY_WORDS * 8);
    const uint64_t **pp = xmalloc(S * sizeof *pp);
    for (uint32_t i = 0; i < S; i++) {
        pp[i] = pks + (size_t)i * FS_HE_POLY_WORDS;
        if (fs_he_keygen(&ctx, i + 1, &sk[i], (uint64_t *)pp[i]) != FS_OK) return 1;
    }
    fs_he_pubkey *pk = xmalloc(sizeof *pk);
    if (fs_he_pk_combine(&ctx, pp, S, pk) != FS_OK) return 1;
    fs_he_tkey *tk = xmalloc(S * sizeof *tk);
    uint64_t *deal = xmalloc((size_t)S * FS_HE_POLY_WORDS * 8);
    for (uint32_t k = 0; k < S; k++)
        if (fs_he_tkey_begin(&tk[k], k + 1, S, T) != FS_OK) return 1;
    for (uint32_t i = 0; i < S; i++) {
        if (fs_he_shamir_deal(&ctx, &sk[i], S, T, deal) != FS_OK) return 1;
        for (uint32_t k = 0; k < S; k++)
            if (fs_he_tkey_add(&ctx, &tk[k], i + 1, deal + (size_t)k * FS_HE_POLY_WORDS) != FS_OK)
                return 1;
        fs_he_secret_free(&sk[i]);
    }
    for (uint32_t k = 0; k < S; k++)
        if (fs_he_tkey_end(&ctx, &tk[k]) != FS_OK) return 1;
    sodium_memzero(deal, (size_t)S * FS_HE_POLY_WORDS * 8);
    free(deal);

    /* ---- the round ---- */
    const size_t nct = fs_he_ct_count(P), wb = fs_he_wire_bytes(FS_HE_OBJ_CT);
    float *x = xmalloc(P * sizeof *x);
    int64_t *qv = xmalloc((P + 1) * 8), *want = calloc(P + 1, 8), *got = xmalloc((P + 1) * 8);
    uint64_t *acc = calloc(nct * FS_HE_CT_WORDS, 8);
    uint64_t *ct = xmalloc((size_t)CHUNK * FS_HE_CT_WORDS * 8);
    uint8_t *wire = xmalloc((size_t)CHUNK * wb);
    uint64_t *one = xmalloc((size_t)FS_HE_CT_WORDS * 8);
    if (!want || !acc) { fprintf(stderr, "bench_he: out of memory\n"); return 1; }
    double t_quant = 0, t_enc = 0, t_ser = 0, t_parse = 0, t_add = 0;
    uint64_t rs = 88172645463325252ull;
    for (uint32_t s = 0; s < S; s++) {
        for (size_t i = 0; i < P; i++) { /* update-sized values, ~N(0, 0.01) */
            rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
            x[i] = (float)(((double)(rs >> 11) * 0x1.0p-53 - 0.5) * 0.035);
        }
        float wfrac = (float)(s + 1) / (float)S;
        double t0 = now();
        if (fs_he_quantise(&qz, x, P, wfrac, rs, qv) != FS_OK) return 1;
        t_quant += now() - t0;
        for (size_t i = 0; i <= P; i++) want[i] += qv[i];
        for (size_t k0 = 0; k0 < nct; k0 += CHUNK) {
            size_t kn = nct - k0 < CHUNK ? nct - k0 : CHUNK;
            size_t v0 = k0 * FS_HE_N, vn = (P + 1) - v0 < kn * FS_HE_N ? (P + 1) - v0 : kn * FS_HE_N;
            t0 = now();
            fs_status st = cuda ? fs_he_cuda_encrypt(dev, &ctx, pk, qv + v0, vn, ct)
                                : fs_he_encrypt(&ctx, pk, qv + v0, vn, ct);
            if (st != FS_OK) return 1;
            double t1 = now();
            t_enc += t1 - t0;
            for (size_t k = 0; k < kn; k++) {
                fs_he_hdr h = { .kind = FS_HE_OBJ_CT, .from = s + 1, .index = (uint32_t)(k0 + k) };
                memcpy(h.key_id, pk->key_id, FS_HE_KEYID_BYTES);
                if (fs_he_write(&h, ct + k * FS_HE_CT_WORDS, wire + k * wb, wb) != FS_OK) return 1;
            }
            double t2 = now();
            t_ser += t2 - t1;
            /* aggregator side, as fs_he_server_ct does it: each object
             * parsed into one ciphertext's scratch, then added */
            for (size_t k = 0; k < kn; k++) {
                fs_he_hdr h;
                double t3 = now();
                if (fs_he_read(wire + k * wb, wb, FS_HE_OBJ_CT, &h, one) != FS_OK) return 1;
                double t4 = now();
                fs_he_ct_add(acc + (k0 + k) * FS_HE_CT_WORDS, one, 1);
                t_add += now() - t4;
                t_parse += t4 - t3;
            }
        }
    }
    /* Decryption by sites 1..T (the others may have left). */
    uint32_t *set = xmalloc(T * sizeof *set);
    for (uint32_t i = 0; i < T; i++) set[i] = i + 1;
    uint64_t *parts = xmalloc((size_t)T * CHUNK * FS_HE_POLY_WORDS * 8);
    const uint64_t **ppart = xmalloc(T * sizeof *ppart);
    double t_part = 0, t_comb = 0;
    for (size_t k0 = 0; k0 < nct; k0 += CHUNK) {
        size_t kn = nct - k0 < CHUNK ? nct - k0 : CHUNK;
        size_t v0 = k0 * FS_HE_N, vn = (P + 1) - v0 < kn * FS_HE_N ? (P + 1) - v0 : kn * FS_HE_N;
        for (uint32_t i = 0; i < T; i++) {
            ppart[i] = parts + (size_t)i * CHUNK * FS_HE_POLY_WORDS;
            double t0 = now();
            if (fs_he_partial_decrypt(&ctx, &tk[i], set, T, acc + k0 * FS_HE_CT_WORDS, kn,
                                      (uint64_t *)ppart[i]) != FS_OK) return 1;
            t_part += now() - t0;
        }
        double t0 = now();
        if (fs_he_combine(&ctx, T, set, T, acc + k0 * FS_HE_CT_WORDS, kn, ppart, got + v0, vn) != FS_OK)
            return 1;
        t_comb += now() - t0;
    }
    size_t bad = 0;
    for (size_t i = 0; i <= P; i++) bad += got[i] != want[i];
    if (bad) {
        fprintf(stderr, "bench_he: decrypted sum differs from the exact sum in %zu of %zu values: "
                        "no timing reported\n", bad, P + 1);
        return 1;
    }
    double t0 = now(), wsum = 0;
    if (fs_he_dequantise(&qz, got, P, x, &wsum) != FS_OK) return 1;
    double t_deq = now() - t0;

    /* GPU aggregation: the device-resident sum's modular add against a
     * device-to-device copy of the same bytes (the bandwidth ceiling). */
    double gpu_add_gbs = 0, gpu_copy_gbs = 0;
#ifdef FS_HAVE_CUDA
    if (cuda) {
        fs_he_dev *hd = fs_he_cuda_device(dev);
        const size_t bytes = nct * FS_HE_CT_WORDS * 8;
        void *da = NULL, *dc = NULL;
        if (fs_he_dev_alloc(hd, &da, bytes) != FS_OK || fs_he_dev_alloc(hd, &dc, bytes) != FS_OK ||
            fs_he_dev_copy(hd, da, acc, bytes, 1) != FS_OK ||
            fs_he_dev_copy(hd, dc, acc, bytes, 1) != FS_OK || fs_he_dev_sync(hd) != FS_OK)
            return 1;
        const int reps = 10;
        if (fs_he_dev_ct_add(hd, (uint64_t *)da, (const uint64_t *)dc, nct) != FS_OK) return 1;
        fs_he_dev_sync(hd);
        double g0 = now();
        for (int r = 0; r < reps; r++)
            if (fs_he_dev_ct_add(hd, (uint64_t *)da, (const uint64_t *)dc, nct) != FS_OK) return 1;
        fs_he_dev_sync(hd);
        double g1 = now();
        for (int r = 0; r < reps; r++) cudaMemcpy(da, dc, bytes, cudaMemcpyDeviceToDevice);
        cudaDeviceSynchronize();
        double g2 = now();
        gpu_add_gbs = 3.0 * bytes * reps / (g1 - g0) / 1e9;   /* read acc, read ct, write acc */
        gpu_copy_gbs = 2.0 * bytes * reps / (g2 - g1) / 1e9;  /* read + write */
        fs_he_dev_free(hd, da);
        fs_he_dev_free(hd, dc);
    }
#endif
    const double bytes_per_param = (double)(nct * wb) / (double)P;
    const double enc_site = (t_quant + t_enc + t_ser) / S;
    const double agg = t_parse + t_add;
    const double dec = t_part / T + t_comb + t_deq;
    printf("fedseg HE (N=%u, log q=94, t=2^%u), %zu params, %u sites, threshold %u, %s, %d threads\n",
           FS_HE_N, FS_HE_PLAIN_BITS, P, S, T, cuda ? "encrypt on CUDA" : "CPU", omp_get_max_threads());
    printf("  correctness: decrypted sum == exact sum of quantised updates (%zu values)\n", P + 1);
    printf("  wire: %zu ciphertexts x %zu B = %.1f MB per site; %.2f B/param = %.2fx fp32\n", nct, wb,
           nct * wb / 1e6, bytes_per_param, bytes_per_param / 4.0);
    printf("  encrypt per site: %.3f s (quantise %.3f, encrypt %.3f, serialise %.3f)\n", enc_site,
           t_quant / S, t_enc / S, t_ser / S);
    printf("  aggregate %u sites: %.3f s (parse+verify %.3f, modular add %.3f)\n", S, agg, t_parse,
           t_add);
    printf("  decrypt: %.3f s (partial per site %.3f, combine+decode %.3f, dequantise %.3f)\n", dec,
           t_part / T, t_comb, t_deq);
    if (gpu_add_gbs > 0)
        printf("  GPU modular add of a device-resident sum: %.0f GB/s = %.0f%% of a device copy "
               "(%.0f GB/s)\n", gpu_add_gbs, 100.0 * gpu_add_gbs / gpu_copy_gbs, gpu_copy_gbs);
    printf("  end to end (one site's encrypt + aggregate + decrypt): %.3f s\n", enc_site + agg + dec);
    if (json)
        printf("{\"impl\":\"fedseg\",\"device\":\"%s\",\"params\":%zu,\"sites\":%u,\"threshold\":%u,"
               "\"bytes_per_param\":%.4f,\"x_fp32\":%.4f,\"encrypt_s\":%.4f,\"aggregate_s\":%.4f,"
               "\"decrypt_s\":%.4f,\"end_to_end_s\":%.4f,\"gpu_add_gbs\":%.1f,\"gpu_copy_gbs\":%.1f}\n",
               cuda ? "cuda" : "cpu", P, S, T, bytes_per_param, bytes_per_param / 4.0, enc_site, agg,
               dec, enc_site + agg + dec, gpu_add_gbs, gpu_copy_gbs);
    for (uint32_t k = 0; k < S; k++) fs_he_tkey_free(&tk[k]);
    fs_he_cuda_close(dev);
    free(tk); free(sk); free(pks); free(pp); free(pk); free(x); free(qv); free(want); free(got);
    free(acc); free(ct); free(one); free(wire); free(set); free(parts); free(ppart);
    fs_he_ctx_free(&ctx);
    return 0;
}
