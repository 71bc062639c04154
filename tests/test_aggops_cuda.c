/*
 * tests/test_aggops_cuda.c — the CUDA versions of the aggregator ops
 * (kernels/cuda/cuda_aggops.cu) against the CPU reference
 * (kernels/cpu/cpu_aggops.c): fold_many, u32_sum, chacha_mask, dequant,
 * l2_norm_sq and scale must give the same bits; gauss_add must agree within
 * FS_TOL_GAUSS_ADD_ULPS (kernels/tolerances.h).
 *
 * Odd sizes (1, 3, 5, 17, 4099, 8193, 1000003), chunk offsets that are not
 * multiples of 4 or 16, input counts above one launch's batch (130 inputs,
 * 70 keys), and device buffers both 16-byte aligned and shifted by one word
 * (the scalar paths). Every device buffer sits between bands of PAD
 * sentinel words that must come back untouched; inputs must come back
 * unchanged.
 *
 * Exits 77 (skip) when fedseg was built without CUDA or no device is present.
 */
#include "check.h"
#include "kernels/backend.h"
#include "kernels/philox.h"
#include "kernels/tolerances.h"

#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PAD 16
#define SENT 0x7fa33333u /* a NaN payload no op writes */

static const fs_backend *cpu, *gpu;
static void *gctx;

static uint64_t rs = 0x13198a2e03707344ull;
static uint64_t rnd64(void)
{
    uint64_t z = (rs += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static uint32_t rnd32(void) { return (uint32_t)(rnd64() >> 32); }
static float rndf(void) { return (float)((double)(rnd64() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static void die(const char *msg)
{
    fprintf(stderr, "FATAL: %s\n", msg);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 4);
    if (!p) die("out of host memory");
    return p;
}

/* A device buffer of n 32-bit words at body = base + PAD + shift, surrounded
 * by sentinels; the body is `init` (or sentinels when init is NULL). */
typedef struct {
    uint32_t *base, *body;
    size_t n, tot;
    int shift;
} dbuf;

static dbuf dnew(const void *init, size_t n, int shift)
{
    dbuf b = {0};
    b.n = n;
    b.shift = shift;
    b.tot = n + 2 * PAD + (size_t)shift;
    uint32_t *h = xmalloc(b.tot * 4);
    for (size_t i = 0; i < b.tot; i++) h[i] = SENT;
    if (init && n) memcpy(h + PAD + shift, init, n * 4);
    void *p = NULL;
    if (gpu->alloc(gctx, &p, b.tot * 4) != FS_OK || !p) die("device alloc failed");
    if (gpu->upload(gctx, p, h, b.tot * 4) != FS_OK) die("upload failed");
    free(h);
    b.base = p;
    b.body = b.base + PAD + shift;
    return b;
}

/* Downloads the body into `out` (n words), checks the sentinels, frees. */
static void dtake(dbuf *b, void *out, const char *what)
{
    uint32_t *h = xmalloc(b->tot * 4);
    CHECK(gpu->sync(gctx) == FS_OK, "%s: sync", what);
    CHECK(gpu->download(gctx, h, b->base, b->tot * 4) == FS_OK, "%s: download", what);
    size_t bad = 0;
    for (size_t i = 0; i < b->tot; i++)
        if (i < PAD + (size_t)b->shift || i >= PAD + (size_t)b->shift + b->n) bad += h[i] != SENT;
    CHECK(bad == 0, "%s: %zu sentinel words around the buffer were overwritten", what, bad);
    if (out && b->n) memcpy(out, h + PAD + b->shift, b->n * 4);
    free(h);
    gpu->free(gctx, b->base);
    b->base = b->body = NULL;
}

/* Counts words that differ and reports the first few. */
static size_t diff_words(const char *what, const uint32_t *got, const uint32_t *want, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            if (bad < 3) fprintf(stderr, "  %s[%zu]: got %08x want %08x\n", what, i, got[i], want[i]);
            bad++;
        }
    CHECK(bad == 0, "%s: %zu of %zu words differ from the CPU", what, bad, n);
    return bad;
}

static uint32_t *rand_words(size_t n)
{
    uint32_t *p = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) p[i] = rnd32();
    return p;
}
static float *rand_floats(size_t n, float s)
{
    float *p = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) p[i] = s * rndf();
    return p;
}

/* u32_sum (floats = 0) or fold_many (floats = 1) of k inputs of n words. */
static void sums(int floats, size_t n, int k, int shift)
{
    char what[96];
    snprintf(what, sizeof what, "%s n=%zu k=%d shift=%d", floats ? "fold_many" : "u32_sum", n, k, shift);
    uint32_t **x = xmalloc((size_t)k * sizeof *x);
    dbuf *dx = xmalloc((size_t)k * sizeof *dx);
    const void **dp = xmalloc((size_t)k * sizeof *dp);
    float *w = rand_floats((size_t)k, 4.0f);
    for (int j = 0; j < k; j++) {
        x[j] = floats ? (uint32_t *)rand_floats(n, 1.0f) : rand_words(n);
        dx[j] = dnew(x[j], n, shift);
        dp[j] = dx[j].body;
    }
    uint32_t *acc = floats ? (uint32_t *)rand_floats(n, 2.0f) : rand_words(n);
    dbuf da = dnew(acc, n, shift);
    fs_status sc, sg;
    if (floats) {
        sc = cpu->fold_many(NULL, n, (float *)acc, (const float *const *)x, w, k);
        sg = gpu->fold_many(gctx, n, (float *)da.body, (const float *const *)dp, w, k);
    } else {
        sc = cpu->u32_sum(NULL, n, acc, (const uint32_t *const *)x, k);
        sg = gpu->u32_sum(gctx, n, da.body, (const uint32_t *const *)dp, k);
    }
    CHECK(sc == FS_OK && sg == FS_OK, "%s: cpu %s, cuda %s", what, fs_status_str(sc), fs_status_str(sg));
    uint32_t *got = xmalloc(n * 4);
    dtake(&da, got, what);
    diff_words(what, got, acc, n);
    for (int j = 0; j < k; j++) {
        dtake(&dx[j], got, what);
        CHECK(!memcmp(got, x[j], n * 4), "%s: input %d changed", what, j);
        free(x[j]);
    }
    free(got); free(acc); free(x); free(dx); free(dp); free(w);
}

static void chacha(size_t n, uint64_t off, int nk, int shift)
{
    char what[96];
    snprintf(what, sizeof what, "chacha_mask n=%zu offset=%llu keys=%d shift=%d", n,
             (unsigned long long)off, nk, shift);
    fs_mask_key *keys = xmalloc((size_t)nk * sizeof *keys);
    for (int j = 0; j < nk; j++) {
        for (int i = 0; i < 32; i++) keys[j].key[i] = (uint8_t)rnd32();
        for (int i = 0; i < 12; i++) keys[j].nonce[i] = (uint8_t)rnd32();
        keys[j].sign = (rnd32() & 1) ? 1 : -1;
    }
    uint32_t *acc = rand_words(n), *got = xmalloc(n * 4);
    dbuf da = dnew(acc, n, shift);
    fs_status sc = cpu->chacha_mask(NULL, n, acc, off, keys, nk);
    fs_status sg = gpu->chacha_mask(gctx, n, da.body, off, keys, nk);
    CHECK(sc == FS_OK && sg == FS_OK, "%s: cpu %s, cuda %s", what, fs_status_str(sc), fs_status_str(sg));
    dtake(&da, got, what);
    diff_words(what, got, acc, n);
    free(acc); free(got); free(keys);
}

static void dequant(size_t n, int shift)
{
    char what[64];
    snprintf(what, sizeof what, "dequant n=%zu shift=%d", n, shift);
    uint32_t *s = rand_words(n), *want = xmalloc(n * 4), *got = xmalloc(n * 4);
    s[0] = 0x80000000u;
    if (n > 1) s[1] = 0x7fffffffu;
    if (n > 2) s[2] = 0xffffffffu;
    dbuf ds = dnew(s, n, shift), dout = dnew(NULL, n, shift);
    const float scale = 0x1p-20f, inv_w = 1.0f / 7.0f;
    CHECK(cpu->dequant(NULL, n, (float *)want, s, scale, inv_w) == FS_OK, "cpu dequant");
    CHECK(gpu->dequant(gctx, n, (float *)dout.body, ds.body, scale, inv_w) == FS_OK, "cuda dequant");
    dtake(&dout, got, what);
    diff_words(what, got, want, n);
    dtake(&ds, got, what);
    CHECK(!memcmp(got, s, n * 4), "%s: input changed", what);
    free(s); free(want); free(got);
}

/* l2_norm_sq of 3 vectors, then scale of the same 3. */
static void l2_scale(size_t n, int shift)
{
    enum { K = 3 };
    char what[64];
    snprintf(what, sizeof what, "l2_norm_sq n=%zu shift=%d", n, shift);
    float *x[K];
    dbuf dx[K];
    const float *dp[K];
    float *mp[K];
    const float sf[K] = {0.25f, 0.7f, -3.0f};
    for (int j = 0; j < K; j++) {
        x[j] = rand_floats(n, j == 1 ? 1e3f : 1.0f);
        dx[j] = dnew(x[j], n, shift);
        dp[j] = (const float *)dx[j].body;
        mp[j] = (float *)dx[j].body;
    }
    double want[K];
    void *hws = xmalloc(cpu->l2_ws_bytes(NULL, n, K));
    CHECK(cpu->l2_norm_sq(NULL, n, (const float *const *)x, K, want, hws) == FS_OK, "cpu l2");
    free(hws);
    const size_t wsb = gpu->l2_ws_bytes(gctx, n, K);
    dbuf dws = dnew(NULL, (wsb + 3) / 4, 0), dout = dnew(NULL, 2 * K, 0); /* doubles: 8-aligned */
    CHECK(gpu->l2_norm_sq(gctx, n, dp, K, (double *)dout.body, dws.body) == FS_OK, "cuda l2");
    double got[K];
    dtake(&dout, got, what);
    dtake(&dws, NULL, what);
    CHECK(!memcmp(got, want, sizeof got), "%s: cuda %.17g %.17g %.17g, cpu %.17g %.17g %.17g", what,
          got[0], got[1], got[2], want[0], want[1], want[2]);

    snprintf(what, sizeof what, "scale n=%zu shift=%d", n, shift);
    CHECK(cpu->scale(NULL, n, x, sf, K) == FS_OK, "cpu scale");
    CHECK(gpu->scale(gctx, n, mp, sf, K) == FS_OK, "cuda scale");
    uint32_t *g = xmalloc(n * 4);
    for (int j = 0; j < K; j++) {
        dtake(&dx[j], g, what);
        diff_words(what, g, (const uint32_t *)x[j], n);
        free(x[j]);
    }
    free(g);
}

/* gauss_add: |cuda − cpu| ≤ FS_TOL_GAUSS_ADD_ULPS·FLT_EPSILON·(|out| + |noise|). */
static void gauss(size_t n, uint64_t off, int shift)
{
    char what[80];
    snprintf(what, sizeof what, "gauss_add n=%zu offset=%llu shift=%d", n, (unsigned long long)off, shift);
    const uint64_t seed = 0xfeedfacecafebeefull, stream = 0x100000003ull;
    const double sd = 2.5;
    float *a = rand_floats(n, 1.0f), *got = xmalloc(n * 4);
    dbuf da = dnew(a, n, shift);
    CHECK(cpu->gauss_add(NULL, n, a, off, sd, seed, stream) == FS_OK, "cpu gauss_add");
    CHECK(gpu->gauss_add(gctx, n, (float *)da.body, off, sd, seed, stream) == FS_OK, "cuda gauss_add");
    dtake(&da, got, what);
    size_t bad = 0, differ = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        const double noise = fabs(sd * fs_philox_gauss(seed, stream, off + i));
        const double lim = FS_TOL_GAUSS_ADD_ULPS * FLT_EPSILON * (fabs((double)a[i]) + noise);
        const double d = fabs((double)got[i] - (double)a[i]);
        differ += got[i] != a[i];
        if (!(d <= lim)) {
            if (bad < 3) fprintf(stderr, "  %s[%zu]: got %.9g want %.9g\n", what, i, got[i], a[i]);
            bad++;
        }
        if (d > worst) worst = d;
    }
    CHECK(bad == 0, "%s: %zu elements outside the tolerance (worst |diff| %g)", what, bad, worst);
    if (n > 1000) printf("%s: %zu of %zu elements not bit-identical (allowed within tolerance)\n", what, differ, n);
    free(a); free(got);
}

int main(void)
{
    cpu = fs_backend_cpu();
    gpu = fs_backend_cuda();
    if (!gpu || !fs_backend_cuda_available()) {
        printf("SKIP: %s\n", gpu ? "no CUDA device is present" : "fedseg was built without CUDA");
        return 77;
    }
    if (gpu->ctx_init(&gctx, 0) != FS_OK) die("cuda context");
    const size_t ns[] = {1, 3, 5, 17, 4099, 1000003};
    for (int shift = 0; shift <= 1; shift++) {
        for (size_t a = 0; a < sizeof ns / sizeof *ns; a++) {
            sums(0, ns[a], 7, shift);
            sums(1, ns[a], 7, shift);
            dequant(ns[a], shift);
            gauss(ns[a], 0, shift);
            gauss(ns[a], 3, shift);
        }
        sums(0, 4099, 130, shift);
        sums(1, 4099, 130, shift);
        sums(0, 1000003, 1, shift);
        sums(1, 1000003, 1, shift);
        const uint64_t offs[] = {0, 1, 15, 16, 17, 123457};
        const size_t cn[] = {1, 15, 16, 17, 100003};
        for (size_t a = 0; a < sizeof offs / sizeof *offs; a++)
            for (size_t b = 0; b < sizeof cn / sizeof *cn; b++) chacha(cn[b], offs[a], 3, shift);
        chacha(100003, 5, 70, shift);
        chacha(1000003, 16, 2, shift);
        chacha(3, ((uint64_t)1 << 36) - 3, 1, shift); /* the last block counter */
        const size_t ln[] = {1, 5, 8191, 8192, 8193, 1000003};
        for (size_t a = 0; a < sizeof ln / sizeof *ln; a++) l2_scale(ln[a], shift);
        gauss(1000003, ((uint64_t)1 << 33) + 5, shift);
    }
    printf("aggregator ops: CUDA vs CPU compared (%s)\n", check_failures_ ? "FAILURES" : "all equal");
    gpu->ctx_free(gctx);
    return check_result();
}
