/*
 * tests/test_cuda_parity.c — every op of the CUDA backend against the CPU
 * backend (the specification), element by element within the tolerances of
 * kernels/tolerances.h (|cuda − cpu| ≤ atol + rtol·|cpu|; first mismatches
 * printed by check_close).
 *
 * Inputs are random with odd shapes (n = 3, c = 5 / 7, 9×9 and 13×11 planes,
 * a 128×128 norm plane, 2×2 planes, a conv large enough to be split into
 * image chunks, a transposed conv with 16500 output channels). Every buffer,
 * workspaces included, is allocated with PAD sentinel floats on each
 * side (inputs and outputs with different bit patterns) that must come back
 * untouched; outputs the op must overwrite start as NaN, so an element the op
 * forgets shows up as a mismatch; inputs must come back bit-identical.
 * Adam runs 3 steps with and without the proximal term. A sequence conv_fwd →
 * norm_act_fwd → adam (whose gradient is the norm output, so each step feeds
 * the next) is captured in a CUDA graph: capturing must not run it, and two
 * replays must equal two eager runs, with the device step counter at 2.
 *
 * Exits 77 (skip) when fedseg was built without CUDA or no device is present.
 */
#include "check.h"
#include "kernels/backend.h"
#include "kernels/tolerances.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PAD 16                 /* sentinel floats on each side of a buffer  */
#define SENT_IN 0x7fa11111u    /* NaN payloads no kernel produces           */
#define SENT_OUT 0x7fa22222u
#define FILL_NAN 0x7fc00000u   /* initial content of overwritten outputs    */

typedef struct {
    const fs_backend *be;
    void *ctx;
    const char *name;
} bk;

static uint32_t rng_s = 0x9e3779b9u;

/* Uniform in [-1, 1) (xorshift32; deterministic). */
static float frand(void)
{
    rng_s ^= rng_s << 13;
    rng_s ^= rng_s >> 17;
    rng_s ^= rng_s << 5;
    return (float)((double)(rng_s >> 8) / (double)(1u << 23) - 1.0);
}

static void die(const char *msg)
{
    fprintf(stderr, "FATAL: %s\n", msg);
    exit(1);
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) die("out of host memory");
    return p;
}

static float *host_rand(size_t n, float scale)
{
    float *p = xmalloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = scale * frand();
    return p;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* A backend buffer of n floats between two bands of PAD sentinel floats; the
 * body is `init` (when non-NULL) or `fill` bits. Returns the body pointer. */
static float *buf_new(bk *k, size_t n, const float *init, uint32_t fill, uint32_t sent)
{
    const size_t tot = n + 2 * PAD;
    uint32_t *h = xmalloc(tot * sizeof *h);
    for (size_t i = 0; i < tot; i++) h[i] = (i < PAD || i >= PAD + n) ? sent : fill;
    if (init) memcpy(h + PAD, init, n * sizeof(float));
    void *p = NULL;
    if (k->be->alloc(k->ctx, &p, tot * sizeof(float)) != FS_OK || !p) die("backend alloc failed");
    if (k->be->upload(k->ctx, p, h, tot * sizeof(float)) != FS_OK) die("backend upload failed");
    free(h);
    return (float *)p + PAD;
}

#define IN(k, n, host) buf_new((k), (n), (host), 0u, SENT_IN)
#define OUT(k, n) buf_new((k), (n), NULL, FILL_NAN, SENT_OUT)

static void buf_free(bk *k, float *p)
{
    if (p) k->be->free(k->ctx, p - PAD);
}

/* Downloads the body (malloc'ed result) and checks the sentinel bands. */
static float *buf_get(bk *k, const float *p, size_t n, uint32_t sent, const char *what)
{
    const size_t tot = n + 2 * PAD;
    uint32_t *h = xmalloc(tot * sizeof *h);
    fs_status st = k->be->download(k->ctx, h, p - PAD, tot * sizeof(float));
    CHECK(st == FS_OK, "%s %s: download: %s", k->name, what, fs_status_str(st));
    size_t bad = 0;
    for (size_t i = 0; i < PAD; i++) bad += (h[i] != sent) + (h[PAD + n + i] != sent);
    CHECK(bad == 0, "%s %s: %zu sentinel floats around the buffer were overwritten", k->name,
          what, bad);
    float *out = xmalloc(n * sizeof *out);
    memcpy(out, h + PAD, n * sizeof(float));
    free(h);
    return out;
}

/* Output: download, check sentinels, free the device buffer. */
static float *take_out(bk *k, float *p, size_t n, const char *what)
{
    float *h = buf_get(k, p, n, SENT_OUT, what);
    buf_free(k, p);
    return h;
}

/* Input: must be bit-identical to what was uploaded; then freed. */
static void drop_in(bk *k, float *p, size_t n, const float *host, const char *what)
{
    float *h = buf_get(k, p, n, SENT_IN, what);
    size_t changed = 0;
    for (size_t i = 0; i < n; i++) changed += bits_of(h[i]) != bits_of(host[i]);
    CHECK(changed == 0, "%s %s: input modified (%zu elements)", k->name, what, changed);
    free(h);
    buf_free(k, p);
}

#define ST(k, call, what) do { fs_status st_ = (call); \
    CHECK(st_ == FS_OK, "%s %s: %s", (k)->name, (what), fs_status_str(st_)); } while (0)

/* Compares the CUDA result with the CPU's; prints the worst difference. */
static void cmp(const char *what, const float *gpu, const float *cpu, size_t n, fs_tol tol)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)gpu[i] - (double)cpu[i]);
        if (d > worst || d != d) worst = d;
    }
    size_t bad = check_close(what, gpu, cpu, n, tol.atol, tol.rtol);
    fprintf(stderr, "%-44s %8zu values, max |diff| %.3g%s\n", what, n, worst, bad ? "  FAIL" : "");
}

/* ---- convolution --------------------------------------------------------- */

typedef struct { float *y, *dx, *dw, *db; } conv_out;

static conv_out run_conv(bk *k, const fs_conv_shape *s, const float *x, const float *w,
                         const float *b, const float *dy)
{
    const size_t hw = (size_t)s->h * s->w, nx = (size_t)s->n * s->cin * hw,
                 ny = (size_t)s->n * s->cout * hw, nw = (size_t)s->cout * s->cin * s->k * s->k;
    const size_t wsb = k->be->conv_ws_bytes(k->ctx, s), wsf = (wsb + 3) / 4 + 1;
    float *ws = buf_new(k, wsf, NULL, 0u, SENT_OUT);
    float *dx_ = IN(k, nx, x), *dw_ = IN(k, nw, w), *db_ = IN(k, (size_t)s->cout, b),
          *ddy = IN(k, ny, dy);
    float *oy = OUT(k, ny), *odx = OUT(k, nx), *odw = OUT(k, nw), *odb = OUT(k, (size_t)s->cout);
    ST(k, k->be->conv_fwd(k->ctx, s, dx_, dw_, db_, oy, ws), "conv_fwd");
    ST(k, k->be->conv_bwd_data(k->ctx, s, ddy, dw_, odx, ws), "conv_bwd_data");
    ST(k, k->be->conv_bwd_filter(k->ctx, s, dx_, ddy, odw, odb, ws), "conv_bwd_filter");
    conv_out o;
    o.y = take_out(k, oy, ny, "conv y");
    o.dx = take_out(k, odx, nx, "conv dx");
    o.dw = take_out(k, odw, nw, "conv dw");
    o.db = take_out(k, odb, (size_t)s->cout, "conv db");
    free(buf_get(k, ws, wsf, SENT_OUT, "conv workspace"));
    buf_free(k, ws);
    drop_in(k, dx_, nx, x, "conv x");
    drop_in(k, dw_, nw, w, "conv w");
    drop_in(k, db_, (size_t)s->cout, b, "conv b");
    drop_in(k, ddy, ny, dy, "conv dy");
    return o;
}

static void test_conv(bk *cpu, bk *gpu, fs_conv_shape s)
{
    const size_t hw = (size_t)s.h * s.w, nx = (size_t)s.n * s.cin * hw,
                 ny = (size_t)s.n * s.cout * hw, nw = (size_t)s.cout * s.cin * s.k * s.k;
    float *x = host_rand(nx, 1.0f), *w = host_rand(nw, 1.0f), *b = host_rand((size_t)s.cout, 1.0f),
          *dy = host_rand(ny, 1.0f);
    conv_out c = run_conv(cpu, &s, x, w, b, dy), g = run_conv(gpu, &s, x, w, b, dy);
    char name[128];
    const char *tag[4] = {"fwd y", "bwd_data dx", "bwd_filter dw", "bwd_filter db"};
    float *gv[4] = {g.y, g.dx, g.dw, g.db}, *cv[4] = {c.y, c.dx, c.dw, c.db};
    size_t nv[4] = {ny, nx, nw, (size_t)s.cout};
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "conv%d n%d %d->%d %dx%d %s", s.k, s.n, s.cin, s.cout, s.h,
                 s.w, tag[i]);
        cmp(name, gv[i], cv[i], nv[i], i >= 2 ? FS_TOL_CONV_BWDW : FS_TOL_CONV);
        free(gv[i]);
        free(cv[i]);
    }
    free(x); free(w); free(b); free(dy);
}

/* ---- transposed convolution ---------------------------------------------- */

static void run_convt(bk *k, const fs_convt_shape *s, const float *x, const float *w,
                      const float *b, const float *dy, float **out)
{
    const size_t hw = (size_t)s->h * s->w, nx = (size_t)s->n * s->cin * hw,
                 ny = (size_t)s->n * s->cout * 4 * hw, nw = (size_t)s->cin * s->cout * 4;
    const size_t wsb = k->be->convt_ws_bytes(k->ctx, s), wsf = (wsb + 3) / 4 + 1;
    CHECK(wsb > 0, "%s convt_ws_bytes is 0", k->name);
    float *ws = buf_new(k, wsf, NULL, 0u, SENT_OUT);
    float *dx_ = IN(k, nx, x), *dw_ = IN(k, nw, w), *db_ = IN(k, (size_t)s->cout, b),
          *ddy = IN(k, ny, dy);
    float *oy = OUT(k, ny), *odx = OUT(k, nx), *odw = OUT(k, nw), *odb = OUT(k, (size_t)s->cout);
    ST(k, k->be->convt_fwd(k->ctx, s, dx_, dw_, db_, oy, ws), "convt_fwd");
    ST(k, k->be->convt_bwd_data(k->ctx, s, ddy, dw_, odx, ws), "convt_bwd_data");
    ST(k, k->be->convt_bwd_filter(k->ctx, s, dx_, ddy, odw, odb, ws), "convt_bwd_filter");
    out[0] = take_out(k, oy, ny, "convt y");
    out[1] = take_out(k, odx, nx, "convt dx");
    out[2] = take_out(k, odw, nw, "convt dw");
    out[3] = take_out(k, odb, (size_t)s->cout, "convt db");
    free(buf_get(k, ws, wsf, SENT_OUT, "convt workspace"));
    buf_free(k, ws);
    drop_in(k, dx_, nx, x, "convt x");
    drop_in(k, dw_, nw, w, "convt w");
    drop_in(k, db_, (size_t)s->cout, b, "convt b");
    drop_in(k, ddy, ny, dy, "convt dy");
}

static void test_convt(bk *cpu, bk *gpu, fs_convt_shape s)
{
    const size_t hw = (size_t)s.h * s.w, nx = (size_t)s.n * s.cin * hw,
                 ny = (size_t)s.n * s.cout * 4 * hw, nw = (size_t)s.cin * s.cout * 4;
    float *x = host_rand(nx, 1.0f), *w = host_rand(nw, 1.0f), *b = host_rand((size_t)s.cout, 1.0f),
          *dy = host_rand(ny, 1.0f);
    float *c[4], *g[4];
    run_convt(cpu, &s, x, w, b, dy, c);
    run_convt(gpu, &s, x, w, b, dy, g);
    const char *tag[4] = {"fwd y", "bwd_data dx", "bwd_filter dw", "bwd_filter db"};
    size_t nv[4] = {ny, nx, nw, (size_t)s.cout};
    char name[128];
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "convt n%d %d->%d %dx%d %s", s.n, s.cin, s.cout, s.h, s.w,
                 tag[i]);
        cmp(name, g[i], c[i], nv[i], i >= 2 ? FS_TOL_CONV_BWDW : FS_TOL_CONVT);
        free(g[i]);
        free(c[i]);
    }
    free(x); free(w); free(b); free(dy);
}

/* ---- instance norm + LeakyReLU ------------------------------------------- */

static const float NORM_EPS = 1e-5f, SLOPE = 0.01f;

/* Forward: y, mean, rstd into out[0..2]. */
static void run_norm_fwd(bk *k, int n, int c, int hw, const float *x, const float *gm,
                         const float *bt, float **out)
{
    const size_t nx = (size_t)n * c * hw, np = (size_t)n * c;
    float *dx_ = IN(k, nx, x), *dg = IN(k, (size_t)c, gm), *db = IN(k, (size_t)c, bt);
    float *oy = OUT(k, nx), *om = OUT(k, np), *orr = OUT(k, np);
    ST(k, k->be->norm_act_fwd(k->ctx, n, c, hw, dx_, dg, db, NORM_EPS, SLOPE, oy, om, orr),
       "norm_act_fwd");
    out[0] = take_out(k, oy, nx, "norm y");
    out[1] = take_out(k, om, np, "norm mean");
    out[2] = take_out(k, orr, np, "norm rstd");
    drop_in(k, dx_, nx, x, "norm x");
    drop_in(k, dg, (size_t)c, gm, "norm gamma");
    drop_in(k, db, (size_t)c, bt, "norm beta");
}

/* Backward from given mean / rstd: dx, dgamma, dbeta into out[0..2]. */
static void run_norm_bwd(bk *k, int n, int c, int hw, const float *x, const float *gm,
                         const float *bt, const float *mean, const float *rstd, const float *dy,
                         float **out)
{
    const size_t nx = (size_t)n * c * hw, np = (size_t)n * c;
    float *dx_ = IN(k, nx, x), *dg = IN(k, (size_t)c, gm), *db = IN(k, (size_t)c, bt),
          *dm = IN(k, np, mean), *dr = IN(k, np, rstd), *ddy = IN(k, nx, dy);
    float *odx = OUT(k, nx), *odg = OUT(k, (size_t)c), *odb = OUT(k, (size_t)c);
    const size_t wsb = k->be->norm_ws_bytes(k->ctx, n, c, hw), wsf = (wsb + 3) / 4 + 1;
    float *ws = buf_new(k, wsf, NULL, 0u, SENT_OUT);
    ST(k, k->be->norm_act_bwd(k->ctx, n, c, hw, dx_, dg, db, SLOPE, dm, dr, ddy, odx, odg, odb,
                              ws),
       "norm_act_bwd");
    out[0] = take_out(k, odx, nx, "norm dx");
    out[1] = take_out(k, odg, (size_t)c, "norm dgamma");
    out[2] = take_out(k, odb, (size_t)c, "norm dbeta");
    free(buf_get(k, ws, wsf, SENT_OUT, "norm workspace"));
    buf_free(k, ws);
    drop_in(k, dx_, nx, x, "norm x");
    drop_in(k, dg, (size_t)c, gm, "norm gamma");
    drop_in(k, db, (size_t)c, bt, "norm beta");
    drop_in(k, dm, np, mean, "norm mean");
    drop_in(k, dr, np, rstd, "norm rstd");
    drop_in(k, ddy, nx, dy, "norm dy");
}

static void test_norm(bk *cpu, bk *gpu, int n, int c, int h, int w)
{
    const int hw = h * w;
    const size_t nx = (size_t)n * c * hw, np = (size_t)n * c;
    float *x = host_rand(nx, 2.0f), *dy = host_rand(nx, 1.0f);
    for (size_t i = 0; i < nx; i++) x[i] += 0.5f; /* a non-zero mean */
    float *gm = host_rand((size_t)c, 0.5f), *bt = host_rand((size_t)c, 0.5f);
    for (int i = 0; i < c; i++) gm[i] += 1.0f;
    float *cf[3], *gf[3], *cb[3], *gb[3];
    run_norm_fwd(cpu, n, c, hw, x, gm, bt, cf);
    run_norm_fwd(gpu, n, c, hw, x, gm, bt, gf);
    /* both backwards start from the CPU's saved statistics */
    run_norm_bwd(cpu, n, c, hw, x, gm, bt, cf[1], cf[2], dy, cb);
    run_norm_bwd(gpu, n, c, hw, x, gm, bt, cf[1], cf[2], dy, gb);
    char name[128];
    const char *ft[3] = {"y", "mean", "rstd"}, *bt_[3] = {"dx", "dgamma", "dbeta"};
    size_t fn[3] = {nx, np, np}, bn[3] = {nx, (size_t)c, (size_t)c};
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "norm_act_fwd n%d c%d %dx%d %s", n, c, h, w, ft[i]);
        cmp(name, gf[i], cf[i], fn[i], FS_TOL_NORM);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "norm_act_bwd n%d c%d %dx%d %s", n, c, h, w, bt_[i]);
        cmp(name, gb[i], cb[i], bn[i], FS_TOL_NORM_BWD);
    }
    for (int i = 0; i < 3; i++) { free(cf[i]); free(gf[i]); free(cb[i]); free(gb[i]); }
    free(x); free(dy); free(gm); free(bt);
}

/* ---- max-pool ------------------------------------------------------------ */

static void run_pool(bk *k, int n, int c, int h, int w, const float *x, const float *dy,
                     float **out)
{
    const size_t nx = (size_t)n * c * h * w, ny = nx / 4;
    float *dx_ = IN(k, nx, x), *ddy = IN(k, ny, dy);
    float *oy = OUT(k, ny), *odx = OUT(k, nx);
    ST(k, k->be->maxpool_fwd(k->ctx, n, c, h, w, dx_, oy), "maxpool_fwd");
    ST(k, k->be->maxpool_bwd(k->ctx, n, c, h, w, dx_, ddy, odx), "maxpool_bwd");
    out[0] = take_out(k, oy, ny, "pool y");
    out[1] = take_out(k, odx, nx, "pool dx");
    drop_in(k, dx_, nx, x, "pool x");
    drop_in(k, ddy, ny, dy, "pool dy");
}

/* Values from {-1, 0, 1} so that most windows hold ties. */
static void test_pool(bk *cpu, bk *gpu, int n, int c, int h, int w)
{
    const size_t nx = (size_t)n * c * h * w, ny = nx / 4;
    float *x = xmalloc(nx * sizeof *x), *dy = host_rand(ny, 1.0f);
    for (size_t i = 0; i < nx; i++) x[i] = (float)((int)((frand() + 1.0f) * 1.5f) - 1);
    float *co[2], *go[2];
    run_pool(cpu, n, c, h, w, x, dy, co);
    run_pool(gpu, n, c, h, w, x, dy, go);
    char name[128];
    snprintf(name, sizeof name, "maxpool n%d c%d %dx%d fwd y", n, c, h, w);
    cmp(name, go[0], co[0], ny, FS_TOL_POOL);
    snprintf(name, sizeof name, "maxpool n%d c%d %dx%d bwd dx (ties)", n, c, h, w);
    cmp(name, go[1], co[1], nx, FS_TOL_POOL);
    for (int i = 0; i < 2; i++) { free(co[i]); free(go[i]); }
    free(x); free(dy);
}

/* ---- concat -------------------------------------------------------------- */

static void run_concat(bk *k, int n, int ca, int cb, int hw, const float *a, const float *b,
                       const float *dy, const float *db0, float **out)
{
    const size_t na = (size_t)n * ca * hw, nb = (size_t)n * cb * hw, ny = na + nb;
    float *da_ = IN(k, na, a), *db_ = IN(k, nb, b), *ddy = IN(k, ny, dy);
    float *oy = OUT(k, ny), *oda = OUT(k, na), *odb = buf_new(k, nb, db0, 0u, SENT_OUT);
    ST(k, k->be->concat_fwd(k->ctx, n, ca, cb, hw, da_, db_, oy), "concat_fwd");
    ST(k, k->be->concat_bwd(k->ctx, n, ca, cb, hw, ddy, oda, odb), "concat_bwd");
    out[0] = take_out(k, oy, ny, "concat y");
    out[1] = take_out(k, oda, na, "concat da");
    out[2] = take_out(k, odb, nb, "concat db");
    drop_in(k, da_, na, a, "concat a");
    drop_in(k, db_, nb, b, "concat b");
    drop_in(k, ddy, ny, dy, "concat dy");
}

static void test_concat(bk *cpu, bk *gpu, int n, int ca, int cb, int hw)
{
    const size_t na = (size_t)n * ca * hw, nb = (size_t)n * cb * hw, ny = na + nb;
    float *a = host_rand(na, 1.0f), *b = host_rand(nb, 1.0f), *dy = host_rand(ny, 1.0f),
          *db0 = host_rand(nb, 1.0f);
    float *co[3], *go[3];
    run_concat(cpu, n, ca, cb, hw, a, b, dy, db0, co);
    run_concat(gpu, n, ca, cb, hw, a, b, dy, db0, go);
    /* the CPU is the reference, but also pin the meaning of "db accumulates" */
    size_t wrong = 0;
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < (size_t)cb * hw; j++) {
            const size_t k = (size_t)i * cb * hw + j;
            wrong += go[2][k] != db0[k] + dy[(size_t)i * (ca + cb) * hw + (size_t)ca * hw + j];
        }
    CHECK(wrong == 0, "concat_bwd: db is not db0 + dy[:, ca:] (%zu elements)", wrong);
    char name[128];
    const char *tag[3] = {"fwd y", "bwd da", "bwd db (+=)"};
    size_t nv[3] = {ny, na, nb};
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "concat n%d %d+%d hw%d %s", n, ca, cb, hw, tag[i]);
        cmp(name, go[i], co[i], nv[i], FS_TOL_CONCAT);
        free(co[i]);
        free(go[i]);
    }
    free(a); free(b); free(dy); free(db0);
}

/* ---- loss ---------------------------------------------------------------- */

static void run_loss(bk *k, int n, int kc, int hw, const float *logits, const uint8_t *labels,
                     float **out)
{
    const size_t nl = (size_t)n * kc * hw, np = (size_t)n * hw;
    float *dl = IN(k, nl, logits);
    /* labels: bytes with their own sentinel bands */
    uint8_t *hl = xmalloc(np + 2 * PAD);
    memset(hl, 0xEE, np + 2 * PAD);
    memcpy(hl + PAD, labels, np);
    void *dlab = NULL;
    if (k->be->alloc(k->ctx, &dlab, np + 2 * PAD) != FS_OK) die("backend alloc failed");
    if (k->be->upload(k->ctx, dlab, hl, np + 2 * PAD) != FS_OK) die("backend upload failed");
    const size_t wsb = k->be->loss_ws_bytes(k->ctx, n, kc, hw), wsf = (wsb + 3) / 4 + 1;
    float *ws = buf_new(k, wsf, NULL, 0u, SENT_OUT);
    float *oloss = OUT(k, 1), *odl = OUT(k, nl);
    ST(k, k->be->loss_fwd_bwd(k->ctx, n, kc, hw, dl, (const uint8_t *)dlab + PAD, 1e-5f, oloss,
                              odl, ws),
       "loss_fwd_bwd");
    out[0] = take_out(k, oloss, 1, "loss value");
    out[1] = take_out(k, odl, nl, "loss dlogits");
    free(buf_get(k, ws, wsf, SENT_OUT, "loss workspace"));
    buf_free(k, ws);
    drop_in(k, dl, nl, logits, "loss logits");
    uint8_t *back = xmalloc(np + 2 * PAD);
    ST(k, k->be->download(k->ctx, back, dlab, np + 2 * PAD), "download labels");
    CHECK(memcmp(back, hl, np + 2 * PAD) == 0, "%s loss: labels or their sentinels modified",
          k->name);
    free(back);
    free(hl);
    k->be->free(k->ctx, dlab);
}

/* present_classes < kc leaves the last classes absent (Dice's smooth term). */
static void test_loss(bk *cpu, bk *gpu, int n, int kc, int hw, int present_classes)
{
    const size_t nl = (size_t)n * kc * hw, np = (size_t)n * hw;
    float *logits = host_rand(nl, 3.0f);
    uint8_t *labels = xmalloc(np);
    for (size_t i = 0; i < np; i++) {
        int v = (int)((frand() + 1.0f) * 0.5f * present_classes);
        labels[i] = (uint8_t)(v >= present_classes ? present_classes - 1 : v);
    }
    float *co[2], *go[2];
    run_loss(cpu, n, kc, hw, logits, labels, co);
    run_loss(gpu, n, kc, hw, logits, labels, go);
    char name[128];
    snprintf(name, sizeof name, "loss n%d k%d hw%d (%d present) value", n, kc, hw,
             present_classes);
    cmp(name, go[0], co[0], 1, FS_TOL_LOSS);
    /* dlogits carry the factor 1/(N·HW) of the mean; compared per pixel
     * (times N·HW) so the tolerance means the same at every size */
    for (size_t i = 0; i < nl; i++) {
        go[1][i] *= (float)np;
        co[1][i] *= (float)np;
    }
    snprintf(name, sizeof name, "loss n%d k%d hw%d (%d present) dlogits*N*HW", n, kc, hw,
             present_classes);
    cmp(name, go[1], co[1], nl, FS_TOL_LOSS);
    for (int i = 0; i < 2; i++) { free(co[i]); free(go[i]); }
    free(logits); free(labels);
}

/* ---- Adam ---------------------------------------------------------------- */

static void run_adam(bk *k, size_t count, const float *w0, float *const *g, const float *wref,
                     fs_adam_hp hp, int steps, float **out)
{
    float *dw = buf_new(k, count, w0, 0u, SENT_OUT), *dm = buf_new(k, count, NULL, 0u, SENT_OUT),
          *dv = buf_new(k, count, NULL, 0u, SENT_OUT), *dst = buf_new(k, 1, NULL, 0u, SENT_OUT);
    float *dref = wref ? IN(k, count, wref) : NULL;
    for (int s = 0; s < steps; s++) {
        float *dg = IN(k, count, g[s]);
        ST(k, k->be->adam_step(k->ctx, count, dw, dg, dm, dv, dref, hp, dst), "adam_step");
        drop_in(k, dg, count, g[s], "adam g");
    }
    out[0] = take_out(k, dw, count, "adam w");
    out[1] = take_out(k, dm, count, "adam m");
    out[2] = take_out(k, dv, count, "adam v");
    out[3] = take_out(k, dst, 1, "adam state");
    if (dref) drop_in(k, dref, count, wref, "adam w_ref");
}

static void test_adam(bk *cpu, bk *gpu, size_t count, float mu)
{
    enum { STEPS = 3 };
    fs_adam_hp hp = {1e-3f, 0.9f, 0.999f, 1e-8f, mu};
    float *w0 = host_rand(count, 1.0f), *wref = mu != 0.0f ? host_rand(count, 1.0f) : NULL;
    float *g[STEPS];
    for (int s = 0; s < STEPS; s++) g[s] = host_rand(count, 0.1f);
    float *co[4], *go[4];
    run_adam(cpu, count, w0, g, wref, hp, STEPS, co);
    run_adam(gpu, count, w0, g, wref, hp, STEPS, go);
    CHECK(go[3][0] == (float)STEPS && co[3][0] == (float)STEPS,
          "adam: step counter cuda %g cpu %g, want %d", go[3][0], co[3][0], STEPS);
    char name[128];
    const char *tag[3] = {"w", "m", "v"};
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "adam %zu mu=%g 3 steps %s", count, mu, tag[i]);
        cmp(name, go[i], co[i], count, FS_TOL_ADAM);
    }
    for (int i = 0; i < 4; i++) { free(co[i]); free(go[i]); }
    for (int s = 0; s < STEPS; s++) free(g[s]);
    free(w0); free(wref);
}

/* ---- CUDA graph ---------------------------------------------------------- */

typedef struct {
    fs_conv_shape s;
    float *x, *w, *b, *y, *ws, *gamma, *beta, *z, *mean, *rstd, *m, *v, *state;
    size_t nw, nz;
} seq_bufs;

/* conv_fwd → norm_act_fwd → adam on w with the first nw values of z as the
 * gradient: a stateful chain (each run changes w, m, v and the step count). */
static fs_status run_seq(bk *k, seq_bufs *q)
{
    const fs_adam_hp hp = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f};
    const int hw = q->s.h * q->s.w;
    FS_TRY(k->be->conv_fwd(k->ctx, &q->s, q->x, q->w, q->b, q->y, q->ws));
    FS_TRY(k->be->norm_act_fwd(k->ctx, q->s.n, q->s.cout, hw, q->y, q->gamma, q->beta, NORM_EPS,
                               SLOPE, q->z, q->mean, q->rstd));
    return k->be->adam_step(k->ctx, q->nw, q->w, q->z, q->m, q->v, NULL, hp, q->state);
}

/* Puts w, m, v and the step count back to their starting values. */
static void seq_reset(bk *k, seq_bufs *q, const float *w0)
{
    ST(k, k->be->upload(k->ctx, q->w, w0, q->nw * sizeof(float)), "reset w");
    ST(k, k->be->memzero(k->ctx, q->m, q->nw * sizeof(float)), "reset m");
    ST(k, k->be->memzero(k->ctx, q->v, q->nw * sizeof(float)), "reset v");
    ST(k, k->be->memzero(k->ctx, q->state, sizeof(float)), "reset state");
    ST(k, k->be->sync(k->ctx), "sync");
}

/* w, z, state after the runs (malloc'ed, w then z then state). */
static float *seq_result(bk *k, seq_bufs *q)
{
    float *r = xmalloc((q->nw + q->nz + 1) * sizeof *r);
    float *w = buf_get(k, q->w, q->nw, SENT_OUT, "graph w");
    float *z = buf_get(k, q->z, q->nz, SENT_OUT, "graph z");
    float *st = buf_get(k, q->state, 1, SENT_OUT, "graph state");
    memcpy(r, w, q->nw * sizeof *r);
    memcpy(r + q->nw, z, q->nz * sizeof *r);
    r[q->nw + q->nz] = st[0];
    free(w); free(z); free(st);
    return r;
}

static void test_graph(bk *gpu)
{
    seq_bufs q;
    memset(&q, 0, sizeof q);
    q.s = (fs_conv_shape){3, 5, 7, 9, 9, 3};
    const size_t hw = 81, nx = 3 * 5 * hw;
    q.nw = 7 * 5 * 9;
    q.nz = 3 * 7 * hw;
    float *hx = host_rand(nx, 1.0f), *hw0 = host_rand(q.nw, 0.3f), *hb = host_rand(7, 0.1f),
          *hg = host_rand(7, 0.2f), *hbt = host_rand(7, 0.2f);
    for (int i = 0; i < 7; i++) hg[i] += 1.0f;
    const size_t wsf = (gpu->be->conv_ws_bytes(gpu->ctx, &q.s) + 3) / 4 + 1;
    q.x = IN(gpu, nx, hx);
    q.b = IN(gpu, 7, hb);
    q.gamma = IN(gpu, 7, hg);
    q.beta = IN(gpu, 7, hbt);
    q.w = buf_new(gpu, q.nw, hw0, 0u, SENT_OUT);
    q.ws = buf_new(gpu, wsf, NULL, 0u, SENT_OUT);
    q.y = OUT(gpu, q.nz);
    q.z = OUT(gpu, q.nz);
    q.mean = OUT(gpu, 21);
    q.rstd = OUT(gpu, 21);
    q.m = buf_new(gpu, q.nw, NULL, 0u, SENT_OUT);
    q.v = buf_new(gpu, q.nw, NULL, 0u, SENT_OUT);
    q.state = buf_new(gpu, 1, NULL, 0u, SENT_OUT);

    /* eager: two runs */
    seq_reset(gpu, &q, hw0);
    ST(gpu, run_seq(gpu, &q), "eager sequence 1");
    ST(gpu, run_seq(gpu, &q), "eager sequence 2");
    float *eager = seq_result(gpu, &q);

    /* captured once, replayed twice */
    seq_reset(gpu, &q, hw0);
    ST(gpu, gpu->be->graph_capture_begin(gpu->ctx), "graph_capture_begin");
    ST(gpu, run_seq(gpu, &q), "captured sequence");
    ST(gpu, gpu->be->graph_capture_end(gpu->ctx), "graph_capture_end");
    float *w_after_capture = buf_get(gpu, q.w, q.nw, SENT_OUT, "graph w");
    CHECK(memcmp(w_after_capture, hw0, q.nw * sizeof(float)) == 0,
          "graph: capturing ran the ops (w changed before any replay)");
    free(w_after_capture);
    ST(gpu, gpu->be->graph_replay(gpu->ctx), "graph_replay 1");
    ST(gpu, gpu->be->graph_replay(gpu->ctx), "graph_replay 2");
    float *rep1 = seq_result(gpu, &q);
    const size_t nr = q.nw + q.nz + 1;
    CHECK(rep1[nr - 1] == 2.0f, "graph: device step counter is %g after two replays, want 2",
          rep1[nr - 1]);
    cmp("graph (conv+norm+adam) x2 vs eager x2", rep1, eager, nr, (fs_tol){1e-6f, 1e-6f});

    /* the same graph again from the same start: bit-identical */
    seq_reset(gpu, &q, hw0);
    ST(gpu, gpu->be->graph_replay(gpu->ctx), "graph_replay 3");
    ST(gpu, gpu->be->graph_replay(gpu->ctx), "graph_replay 4");
    float *rep2 = seq_result(gpu, &q);
    cmp("graph replayed again (bitwise)", rep2, rep1, nr, (fs_tol){0.0f, 0.0f});

    /* host-side calls that cannot be captured are refused, not run */
    ST(gpu, gpu->be->graph_capture_begin(gpu->ctx), "graph_capture_begin (misuse check)");
    CHECK(gpu->be->sync(gpu->ctx) != FS_OK, "graph: sync during capture was accepted");
    ST(gpu, gpu->be->graph_capture_end(gpu->ctx), "graph_capture_end (empty)");

    free(eager); free(rep1); free(rep2);
    drop_in(gpu, q.x, nx, hx, "graph x");
    drop_in(gpu, q.b, 7, hb, "graph b");
    drop_in(gpu, q.gamma, 7, hg, "graph gamma");
    drop_in(gpu, q.beta, 7, hbt, "graph beta");
    float *outs[] = {q.w, q.ws, q.y, q.z, q.mean, q.rstd, q.m, q.v, q.state};
    for (size_t i = 0; i < sizeof outs / sizeof *outs; i++) buf_free(gpu, outs[i]);
    free(hx); free(hw0); free(hb); free(hg); free(hbt);
}

/* ---- FedAvg fold --------------------------------------------------------- */

/* sum += w_s·chunk_s for several "sites" (weights like sample counts), at an
 * offset `off` into the buffer (off = 1 defeats the float4 path's alignment).
 * The op is specified as a rounded multiply then a rounded add, so the GPU
 * must equal the CPU bit for bit (tolerance: exact). */
static void test_fold(bk *cpu, bk *gpu, size_t count, size_t off)
{
    enum { SITES = 3 };
    const float w[SITES] = {37.0f, 1.0f, 1234.5f};
    float *sum0 = host_rand(off + count, 10.0f), *chunk[SITES];
    for (int s = 0; s < SITES; s++) chunk[s] = host_rand(count, 0.01f);
    float *res[2];
    bk *ks[2] = {cpu, gpu};
    for (int b = 0; b < 2; b++) {
        bk *k = ks[b];
        float *dsum = buf_new(k, off + count, sum0, 0u, SENT_OUT);
        for (int s = 0; s < SITES; s++) {
            float *dc = IN(k, count, chunk[s]);
            ST(k, k->be->fold(k->ctx, count, dsum + off, dc, w[s]), "fold");
            drop_in(k, dc, count, chunk[s], "fold chunk");
        }
        res[b] = take_out(k, dsum, off + count, "fold sum");
    }
    size_t diff = 0, first = 0;
    for (size_t i = 0; i < off + count; i++)
        if (bits_of(res[0][i]) != bits_of(res[1][i]) && diff++ == 0) first = i;
    CHECK(diff == 0, "fold %zu at offset %zu: %zu elements differ from the CPU (first at %zu: cuda %.9g cpu %.9g)",
          count, off, diff, first, diff ? res[1][first] : 0.0f, diff ? res[0][first] : 0.0f);
    for (size_t i = 0; i < off; i++)
        CHECK(bits_of(res[1][i]) == bits_of(sum0[i]), "fold: element %zu before the offset changed", i);
    printf("fold %zu at offset %zu: cuda == cpu bit for bit (%s)\n", count, off, diff ? "NO" : "yes");
    free(res[0]); free(res[1]); free(sum0);
    for (int s = 0; s < SITES; s++) free(chunk[s]);
}

int main(void)
{
    const fs_backend *cuda = fs_backend_cuda();
    if (!cuda) {
        fprintf(stderr, "SKIP: fedseg was built without the CUDA backend\n");
        return 77;
    }
    if (!fs_backend_cuda_available()) {
        fprintf(stderr, "SKIP: no CUDA device present\n");
        return 77;
    }
    /* the tolerances assume fp32 GEMMs: TF32 stays off for this test */
    unsetenv("FS_CUDA_TF32");
    bk cpu = {fs_backend_cpu(), NULL, "cpu"}, gpu = {cuda, NULL, "cuda"};
    if (cpu.be->ctx_init(&cpu.ctx, 0) != FS_OK) die("CPU ctx_init failed");
    if (gpu.be->ctx_init(&gpu.ctx, 0) != FS_OK) die("CUDA ctx_init failed");

    const fs_conv_shape convs[] = {
        {3, 5, 7, 9, 9, 3},   {3, 7, 5, 13, 11, 3}, {3, 5, 7, 13, 11, 1},
        {3, 7, 5, 9, 9, 1},   {2, 4, 8, 2, 2, 3},
        {3, 48, 16, 128, 128, 3}, /* big enough to be split into image chunks */
    };
    for (size_t i = 0; i < sizeof convs / sizeof *convs; i++) test_conv(&cpu, &gpu, convs[i]);

    const fs_convt_shape convts[] = {
        {3, 7, 5, 5, 6}, {3, 5, 7, 13, 11}, {2, 16, 8, 1, 1},
        {2, 3, 16500, 2, 3}, /* more output channels than the CPU once allowed */
    };
    for (size_t i = 0; i < sizeof convts / sizeof *convts; i++) test_convt(&cpu, &gpu, convts[i]);

    test_norm(&cpu, &gpu, 3, 5, 9, 9);
    test_norm(&cpu, &gpu, 3, 7, 13, 11);
    test_norm(&cpu, &gpu, 2, 3, 128, 128);
    test_norm(&cpu, &gpu, 3, 5, 2, 2);
    test_norm(&cpu, &gpu, 3, 5, 4, 4);
    test_norm(&cpu, &gpu, 2, 4, 8, 8);

    test_pool(&cpu, &gpu, 3, 5, 10, 12);
    test_pool(&cpu, &gpu, 3, 7, 2, 2);
    test_pool(&cpu, &gpu, 2, 3, 14, 6);

    test_concat(&cpu, &gpu, 3, 5, 7, 81);
    test_concat(&cpu, &gpu, 3, 5, 7, 143);
    test_concat(&cpu, &gpu, 3, 4, 8, 64);
    test_concat(&cpu, &gpu, 2, 3, 2, 4);

    test_loss(&cpu, &gpu, 3, 4, 81, 4);
    test_loss(&cpu, &gpu, 3, 5, 143, 4);
    test_loss(&cpu, &gpu, 2, 4, 16384, 4);
    test_loss(&cpu, &gpu, 1, 2, 4, 2);

    test_adam(&cpu, &gpu, 1003, 0.0f);
    test_adam(&cpu, &gpu, 4097, 0.01f);
    test_adam(&cpu, &gpu, 3, 0.0f);

    test_fold(&cpu, &gpu, 65536, 0);
    test_fold(&cpu, &gpu, 1003, 1);
    test_fold(&cpu, &gpu, 3, 0);
    test_fold(&cpu, &gpu, (1u << 20) + 7, 0);

    test_graph(&gpu);

    gpu.be->ctx_free(gpu.ctx);
    cpu.be->ctx_free(cpu.ctx);
    return check_result();
}
