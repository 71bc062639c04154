/*
 * bench/bench_aggops.c — program `bench_aggops`: the aggregator's arithmetic
 * ops (kernels/backend.h: u32_sum, fold_many, fold, chacha_mask, dequant,
 * l2_norm_sq, scale, gauss_add) timed through the backend table — the entry
 * points the product calls — on K updates of N parameters (default 100 ×
 * 7,766,372, the `ref` model's update), next to the device's copy bandwidth
 * measured in the same run (cudaMemcpy device to device on CUDA, memcpy on
 * the CPU).
 *
 *   bench_aggops [--device cpu|cuda|all] [--n N] [--k K] [--reps R]
 *                [--threads T] [--json]
 *
 * Every op is first run once on the full data and checked against a naive
 * loop written here (libsodium's crypto_stream_chacha20_ietf for the masks,
 * fs_philox_gauss for the noise, a long double sum for the norm); an op that
 * fails its check is reported and not timed, and the program exits 1.
 *
 * Bytes counted per timed call ("moved": what the op must read and write at
 * least), and GB/s = moved / time, compared with the copy's read + write
 * GB/s:
 *   copy        2·K·4N (K·N floats read and written)
 *   u32_sum     (K+2)·4N: K updates read, the accumulator read and written
 *   fold_many   (K+2)·4N, the same for the fp32 weighted sum
 *   fold ×K     K·12N: K single folds (the accumulator moved K times)
 *   chacha_mask (K+2)·4N for K keys: the K masks counted as if they were read
 *               from memory (they are computed: the op is compute-bound)
 *   dequant ×K  K·8N    l2_norm_sq K·4N    scale K·8N    gauss_add ×K K·8N
 * read_GBps is K·4N / time for the sums, as PyTorch's anchor reports it.
 * Data: update j is the window [j, j+N) of one random host vector, so no
 * K·N host copy is needed.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off") /* the naive checks round like the ops */
#endif

#include <float.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "kernels/backend.h"
#include "kernels/philox.h"
#include "kernels/tolerances.h"
#ifdef FS_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct {
    size_t n;
    int k, reps, threads, json;
} opts;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_aggops: out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* One device's state: the backend, its context and its buffers. */
typedef struct {
    const fs_backend *be;
    void *ctx;
    const char *dev;
    const opts *o;
    const float *host;   /* N + K random floats: update j = host + j   */
    float *upd;          /* K·N floats on the device, update j at j·N   */
    float *copy_dst;     /* K·N floats                                  */
    float *acc;          /* N words: fp32 sum or uint32 accumulator     */
    float *out;          /* N floats                                    */
    double *l2_out;      /* K doubles                                   */
    void *ws;            /* l2 workspace                                */
    double copy_gbps;
    int failed;
} dev_state;

static size_t ua(const dev_state *s, int j) { return (size_t)j * s->o->n; }

/* Prints one result line (table or JSON). */
static void report(dev_state *s, const char *op, double sec, double moved, double read, const char *note)
{
    const double gbps = moved / sec / 1e9;
    if (s->o->json) {
        printf("{\"side\":\"fedseg\",\"device\":\"%s\",\"op\":\"%s\",\"n\":%zu,\"k\":%d,\"ms\":%.4f,"
               "\"GBps\":%.1f,\"read_GBps\":%.1f,\"copy_GBps\":%.1f,\"frac_of_copy\":%.3f}\n",
               s->dev, op, s->o->n, s->o->k, sec * 1e3, gbps, read > 0 ? read / sec / 1e9 : 0.0,
               s->copy_gbps, gbps / s->copy_gbps);
    } else {
        printf("%-6s %-12s %10.3f ms %9.1f GB/s  (copy %7.1f GB/s)  %5.1f%% of copy  %s\n", s->dev, op,
               sec * 1e3, gbps, s->copy_gbps, 100.0 * gbps / s->copy_gbps, note ? note : "");
    }
    fflush(stdout);
}

static int sync_ok(dev_state *s)
{
    fs_status st = s->be->sync(s->ctx);
    if (st != FS_OK) fprintf(stderr, "bench_aggops: %s sync: %s\n", s->dev, fs_status_str(st));
    return st == FS_OK;
}

static void fail(dev_state *s, const char *op, const char *why)
{
    fprintf(stderr, "bench_aggops: %s %s: CHECK FAILED: %s — not timed\n", s->dev, op, why);
    s->failed = 1;
}

/* Copy bandwidth, read + write, of K·N floats. */
static void measure_copy(dev_state *s)
{
    const size_t bytes = (size_t)s->o->k * s->o->n * 4;
    const int reps = s->o->reps;
    double t0 = 0, t1 = 0;
#ifdef FS_HAVE_CUDA
    if (!strcmp(s->be->name, "cuda")) {
        for (int r = 0; r <= reps; r++) {
            if (r == 1) {
                cudaDeviceSynchronize();
                t0 = now_s();
            }
            cudaMemcpy(s->copy_dst, s->upd, bytes, cudaMemcpyDeviceToDevice);
        }
        cudaError_t e = cudaDeviceSynchronize();
        t1 = now_s();
        if (e != cudaSuccess) fprintf(stderr, "bench_aggops: cudaMemcpy: %s\n", cudaGetErrorString(e));
    } else
#endif
    {
        for (int r = 0; r <= reps; r++) {
            if (r == 1) t0 = now_s();
            memcpy(s->copy_dst, s->upd, bytes);
        }
        t1 = now_s();
    }
    const double sec = (t1 - t0) / reps;
    s->copy_gbps = 2.0 * (double)bytes / sec / 1e9;
    report(s, "copy", sec, 2.0 * (double)bytes, (double)bytes, "cudaMemcpy D2D / memcpy");
}

/* Downloads N words of a device buffer into a new host array. */
static uint32_t *fetch(dev_state *s, const void *d, size_t words)
{
    uint32_t *h = xmalloc(words * 4);
    if (s->be->download(s->ctx, h, d, words * 4) != FS_OK) {
        fprintf(stderr, "bench_aggops: download failed\n");
        exit(1);
    }
    return h;
}

static uint32_t *acc_init(dev_state *s)
{
    const size_t n = s->o->n;
    uint32_t *a = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) a[i] = fbits(s->host[i] * 0.5f);
    if (s->be->upload(s->ctx, s->acc, a, n * 4) != FS_OK) exit(1);
    return a;
}

/* The integer and fp32 sums of the K updates. */
static void bench_sums(dev_state *s)
{
    const size_t n = s->o->n;
    const int k = s->o->k, reps = s->o->reps;
    const void **ptrs = xmalloc((size_t)k * sizeof *ptrs);
    float *w = xmalloc((size_t)k * sizeof *w);
    for (int j = 0; j < k; j++) {
        ptrs[j] = s->upd + ua(s, j);
        w[j] = 0.5f + (float)j / (float)k;
    }
    const double kn4 = (double)k * (double)n * 4.0;

    /* u32_sum */
    uint32_t *a0 = acc_init(s);
    fs_status st = s->be->u32_sum(s->ctx, n, (uint32_t *)s->acc, (const uint32_t *const *)ptrs, k);
    if (st != FS_OK || !sync_ok(s)) {
        fail(s, "u32_sum", fs_status_str(st));
    } else {
        uint32_t *got = fetch(s, s->acc, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t v = a0[i];
            for (int j = 0; j < k; j++) v += fbits(s->host[i + (size_t)j]);
            bad += got[i] != v;
        }
        free(got);
        if (bad) fail(s, "u32_sum", "differs from the naive wrapping sum");
        else {
            double t0 = now_s();
            for (int r = 0; r < reps; r++)
                s->be->u32_sum(s->ctx, n, (uint32_t *)s->acc, (const uint32_t *const *)ptrs, k);
            sync_ok(s);
            report(s, "u32_sum", (now_s() - t0) / reps, kn4 + 8.0 * n, kn4, "K updates, one pass");
        }
    }
    free(a0);

    /* fold_many, then K single folds */
    a0 = acc_init(s);
    st = s->be->fold_many(s->ctx, n, s->acc, (const float *const *)ptrs, w, k);
    if (st != FS_OK || !sync_ok(s)) {
        fail(s, "fold_many", fs_status_str(st));
    } else {
        uint32_t *got = fetch(s, s->acc, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            float v;
            memcpy(&v, &a0[i], 4);
            for (int j = 0; j < k; j++) {
                float p = w[j] * s->host[i + (size_t)j]; /* rounded product, then rounded sum */
                v = v + p;
            }
            bad += got[i] != fbits(v);
        }
        free(got);
        if (bad) fail(s, "fold_many", "differs from the sequential fp32 loop");
        else {
            double t0 = now_s();
            for (int r = 0; r < reps; r++)
                s->be->fold_many(s->ctx, n, s->acc, (const float *const *)ptrs, w, k);
            sync_ok(s);
            report(s, "fold_many", (now_s() - t0) / reps, kn4 + 8.0 * n, kn4, "fp32 weighted sum, one pass");
            t0 = now_s();
            for (int r = 0; r < reps; r++)
                for (int j = 0; j < k; j++) s->be->fold(s->ctx, n, s->acc, ptrs[j], w[j]);
            sync_ok(s);
            report(s, "fold x K", (now_s() - t0) / reps, 3.0 * kn4, kn4, "K single folds (existing op)");
        }
    }
    free(a0);
    free(ptrs);
    free(w);
}

/* Mask expansion with K keys over the accumulator. */
static void bench_chacha(dev_state *s)
{
    const size_t n = s->o->n;
    const int k = s->o->k, reps = s->o->reps;
    fs_mask_key *keys = xmalloc((size_t)k * sizeof *keys);
    for (int j = 0; j < k; j++) {
        randombytes_buf(keys[j].key, 32);
        randombytes_buf(keys[j].nonce, 12);
        keys[j].sign = (j & 1) ? -1 : 1;
    }
    uint32_t *a0 = acc_init(s);
    fs_status st = s->be->chacha_mask(s->ctx, n, (uint32_t *)s->acc, 0, keys, k);
    if (st != FS_OK || !sync_ok(s)) {
        fail(s, "chacha_mask", fs_status_str(st));
    } else {
        uint32_t *got = fetch(s, s->acc, n);
        uint8_t *ks = xmalloc(n * 4);
        for (int j = 0; j < k; j++) {
            crypto_stream_chacha20_ietf(ks, n * 4, keys[j].nonce, keys[j].key);
            for (size_t i = 0; i < n; i++) {
                uint32_t m = (uint32_t)ks[4 * i] | (uint32_t)ks[4 * i + 1] << 8 |
                             (uint32_t)ks[4 * i + 2] << 16 | (uint32_t)ks[4 * i + 3] << 24;
                a0[i] = keys[j].sign > 0 ? a0[i] + m : a0[i] - m;
            }
        }
        sodium_memzero(ks, n * 4);
        free(ks);
        const int bad = memcmp(got, a0, n * 4) != 0;
        free(got);
        if (bad) fail(s, "chacha_mask", "differs from libsodium's crypto_stream_chacha20_ietf");
        else {
            double t0 = now_s();
            for (int r = 0; r < reps; r++) s->be->chacha_mask(s->ctx, n, (uint32_t *)s->acc, 0, keys, k);
            sync_ok(s);
            const double kn4 = (double)k * (double)n * 4.0;
            report(s, "chacha_mask", (now_s() - t0) / reps, kn4 + 8.0 * n, kn4,
                   "K keys; masks counted as if read");
        }
    }
    sodium_memzero(keys, (size_t)k * sizeof *keys);
    free(keys);
    free(a0);
}

/* dequant, l2_norm_sq, scale and gauss_add over the K updates. */
static void bench_elementwise(dev_state *s)
{
    const size_t n = s->o->n;
    const int k = s->o->k, reps = s->o->reps;
    const double kn = (double)k * (double)n;

    /* dequant: update j's words as a quantised sum, K calls */
    const float scale = 0x1p-24f, inv_w = 1.0f / 3.0f;
    fs_status st = s->be->dequant(s->ctx, n, s->out, (const uint32_t *)s->upd, scale, inv_w);
    if (st != FS_OK || !sync_ok(s)) {
        fail(s, "dequant", fs_status_str(st));
    } else {
        uint32_t *got = fetch(s, s->out, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            int64_t v = (int64_t)fbits(s->host[i]);
            if (v > INT32_MAX) v -= (int64_t)1 << 32;
            float f = (float)v; /* round to nearest */
            f = f * scale;
            f = f * inv_w;
            bad += got[i] != fbits(f);
        }
        free(got);
        if (bad) fail(s, "dequant", "differs from (float)(int32)x·scale·inv_w");
        else {
            double t0 = now_s();
            for (int r = 0; r < reps; r++)
                for (int j = 0; j < k; j++)
                    s->be->dequant(s->ctx, n, s->out, (const uint32_t *)(s->upd + ua(s, j)), scale, inv_w);
            sync_ok(s);
            report(s, "dequant x K", (now_s() - t0) / reps, 8.0 * kn, 4.0 * kn, "");
        }
    }

    /* l2_norm_sq of the K updates in one call */
    const float **xs = xmalloc((size_t)k * sizeof *xs);
    float **mx = xmalloc((size_t)k * sizeof *mx);
    float *sf = xmalloc((size_t)k * sizeof *sf);
    for (int j = 0; j < k; j++) {
        xs[j] = mx[j] = s->upd + ua(s, j);
        sf[j] = 1.0f; /* leaves the data as it is, so every repetition does the same work */
    }
    st = s->be->l2_norm_sq(s->ctx, n, xs, k, s->l2_out, s->ws);
    if (st != FS_OK || !sync_ok(s)) {
        fail(s, "l2_norm_sq", fs_status_str(st));
    } else {
        double *got = xmalloc((size_t)k * sizeof *got);
        if (s->be->download(s->ctx, got, s->l2_out, (size_t)k * sizeof *got) != FS_OK) exit(1);
        int bad = 0;
        for (int j = 0; j < k && j < 4; j++) { /* four vectors: enough to catch an indexing error */
            long double ref = 0;
            for (size_t i = 0; i < n; i++) ref += (long double)s->host[i + (size_t)j] * s->host[i + (size_t)j];
            bad |= !(fabsl((long double)got[j] - ref) <= 1e-12L * ref);
        }
        free(got);
        if (bad) fail(s, "l2_norm_sq", "differs from the long double sum by more than 1e-12");
        else {
            double t0 = now_s();
            for (int r = 0; r < reps; r++) s->be->l2_norm_sq(s->ctx, n, xs, k, s->l2_out, s->ws);
            sync_ok(s);
            report(s, "l2_norm_sq", (now_s() - t0) / reps, 4.0 * kn, 4.0 * kn, "K vectors, one call");
        }
    }

    /* scale: checked with a factor of 2 on update 0, timed with 1 */
    {
        float two = 2.0f;
        st = s->be->scale(s->ctx, n, mx, &two, 1);
        uint32_t *got = st == FS_OK && sync_ok(s) ? fetch(s, s->upd, n) : NULL;
        size_t bad = got ? 0 : 1;
        for (size_t i = 0; got && i < n; i++) bad += got[i] != fbits(s->host[i] * 2.0f);
        free(got);
        if (s->be->upload(s->ctx, s->upd, s->host, n * 4) != FS_OK) exit(1); /* restore update 0 */
        if (bad) fail(s, "scale", "differs from x·s");
        else {
            double t0 = now_s();
            for (int r = 0; r < reps; r++) s->be->scale(s->ctx, n, mx, sf, k);
            sync_ok(s);
            report(s, "scale", (now_s() - t0) / reps, 8.0 * kn, 4.0 * kn, "K vectors, one call");
        }
    }

    /* gauss_add: stream j on update j; checked on the output buffer */
    const double sd = 0.01;
    if (s->be->upload(s->ctx, s->out, s->host, n * 4) != FS_OK) exit(1);
    st = s->be->gauss_add(s->ctx, n, s->out, 0, sd, 42, 7);
    if (st != FS_OK || !sync_ok(s)) {
        fail(s, "gauss_add", fs_status_str(st));
    } else {
        float *got = (float *)fetch(s, s->out, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            const float noise = (float)(sd * fs_philox_gauss(42, 7, i));
            const float want = s->host[i] + noise;
            bad += !(fabs((double)got[i] - want) <=
                     FS_TOL_GAUSS_ADD_ULPS * FLT_EPSILON * (fabs(want) + fabs(noise)));
        }
        free(got);
        if (bad) fail(s, "gauss_add", "differs from fs_philox_gauss beyond FS_TOL_GAUSS_ADD_ULPS");
        else {
            double t0 = now_s();
            for (int r = 0; r < reps; r++)
                for (int j = 0; j < k; j++) s->be->gauss_add(s->ctx, n, s->upd + ua(s, j), 0, sd, 42, (uint64_t)j);
            sync_ok(s);
            report(s, "gauss_add x K", (now_s() - t0) / reps, 8.0 * kn, 4.0 * kn, "Philox + Box-Muller");
        }
    }
    free(xs);
    free(mx);
    free(sf);
}

/* Runs every op on one device; returns 0, or 1 when a check failed. */
static int run_device(const char *dev, const opts *o, const float *host)
{
    const char *why = NULL;
    const fs_backend *be = fs_backend_get(dev, &why);
    if (!be) {
        printf(o->json ? "{\"side\":\"fedseg\",\"device\":\"%s\",\"skipped\":\"%s\"}\n"
                       : "%s: skipped (%s)\n",
               dev, why);
        return 0;
    }
    dev_state s;
    memset(&s, 0, sizeof s);
    s.be = be;
    s.dev = dev;
    s.o = o;
    s.host = host;
    if (be->ctx_init(&s.ctx, 0) != FS_OK) {
        fprintf(stderr, "bench_aggops: %s context failed\n", dev);
        return 1;
    }
    const size_t n = o->n, kn = (size_t)o->k * n;
    void *p[6] = {0};
    const size_t wsb = be->l2_ws_bytes(s.ctx, n, o->k);
    if (be->alloc(s.ctx, &p[0], kn * 4) != FS_OK || be->alloc(s.ctx, &p[1], kn * 4) != FS_OK ||
        be->alloc(s.ctx, &p[2], n * 4) != FS_OK || be->alloc(s.ctx, &p[3], n * 4) != FS_OK ||
        be->alloc(s.ctx, &p[4], (size_t)o->k * 8) != FS_OK || be->alloc(s.ctx, &p[5], wsb) != FS_OK) {
        fprintf(stderr, "bench_aggops: %s: cannot allocate %.2f GB (use a smaller --n or --k)\n", dev,
                (2.0 * kn * 4 + 8.0 * n) / 1e9);
        for (int i = 0; i < 6; i++) be->free(s.ctx, p[i]);
        be->ctx_free(s.ctx);
        return 1;
    }
    s.upd = p[0];
    s.copy_dst = p[1];
    s.acc = p[2];
    s.out = p[3];
    s.l2_out = p[4];
    s.ws = p[5];
    for (int j = 0; j < o->k; j++)
        if (be->upload(s.ctx, s.upd + ua(&s, j), host + j, n * 4) != FS_OK) exit(1);
    sync_ok(&s);
    if (!o->json)
        printf("%s: %d updates x %zu parameters (%.2f GB), %d repetitions\n", dev, o->k, n,
               kn * 4 / 1e9, o->reps);
    measure_copy(&s);
    bench_sums(&s);
    bench_chacha(&s);
    bench_elementwise(&s);
    for (int i = 0; i < 6; i++) be->free(s.ctx, p[i]);
    be->ctx_free(s.ctx);
    return s.failed;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_aggops [--device cpu|cuda|all] [--n PARAMS] [--k UPDATES] [--reps R]\n"
               "                    [--threads T] [--json]\n"
               "  defaults: --device all --n 7766372 (the ref model) --k 100 --reps 10;\n"
               "  on a small machine use e.g. --device cpu --n 200000 --k 20\n");
}

int main(int argc, char **argv)
{
    opts o = {.n = 7766372, .k = 100, .reps = 10, .threads = 0, .json = 0};
    const char *device = "all";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "--json")) { o.json = 1; continue; }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        if (!v) { usage(stderr); return 2; }
        i++;
        if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--n")) o.n = strtoull(v, &end, 10);
        else if (!strcmp(a, "--k")) o.k = (int)strtol(v, &end, 10);
        else if (!strcmp(a, "--reps")) o.reps = (int)strtol(v, &end, 10);
        else if (!strcmp(a, "--threads")) o.threads = (int)strtol(v, &end, 10);
        else { fprintf(stderr, "bench_aggops: unknown option '%s'\n", a); usage(stderr); return 2; }
        if (end && *end) { fprintf(stderr, "bench_aggops: '%s' is not a number for %s\n", v, a); return 2; }
    }
    if (o.n < 1 || o.k < 1 || o.k > 100000 || o.reps < 1 || o.threads < 0) {
        fprintf(stderr, "bench_aggops: --n, --k and --reps must be positive\n");
        return 2;
    }
    if (strcmp(device, "cpu") && strcmp(device, "cuda") && strcmp(device, "all")) {
        fprintf(stderr, "bench_aggops: unknown device '%s' (cpu, cuda or all)\n", device);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "bench_aggops: libsodium failed to initialise\n");
        return 1;
    }
    fs_backend_cpu_set_threads(o.threads);
    /* N + K random floats in [-1, 1) (xorshift64*); update j = window [j, j+N). */
    const size_t hn = o.n + (size_t)o.k;
    float *host = xmalloc(hn * 4);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < hn; i++) {
        x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
        host[i] = (float)((double)((x * 0x2545f4914f6cdd1dull) >> 40) / 8388608.0 - 1.0);
    }
    int rc = 0;
    if (!strcmp(device, "cuda") || !strcmp(device, "all")) rc |= run_device("cuda", &o, host);
    if (!strcmp(device, "cpu") || !strcmp(device, "all")) rc |= run_device("cpu", &o, host);
    free(host);
    if (rc) fprintf(stderr, "bench_aggops: a correctness check failed (see above)\n");
    return rc;
}
