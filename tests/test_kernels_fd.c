/*
 * tests/test_kernels_fd.c — the CPU backend (the specification) checked op by op.
 *
 * Every backward op is compared with central finite differences of its own
 * forward op on small odd shapes, through a random projection L = Σ r·y
 * accumulated in double. Forward ops are compared with naive double-precision
 * loops; the max-pool tie rule, concat_bwd's accumulation, the loss value,
 * Adam (two steps, with the proximal term), label validation, workspace bounds
 * (sentinels after the workspace), full overwrite of outputs (outputs are
 * pre-filled with NaN) and run-to-run determinism are checked directly.
 * Tolerances are stated beside each check with the reason for them.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "common/rng.h"
#include "kernels/backend.h"

static const fs_backend *be;
static void *ctx;  /* 2 threads: images split unevenly (n = 3) */
static void *ctx1; /* 1 thread, for thread-count comparisons */
static fs_rng rng;

/* ---- helpers --------------------------------------------------------------- */

static float *fbuf(size_t count)
{
    void *p = NULL;
    if (be->alloc(ctx, &p, count * sizeof(float) + 64) != FS_OK) {
        fprintf(stderr, "allocation of %zu floats failed\n", count);
        exit(2);
    }
    return p;
}

static void fill_normal(float *p, size_t count, double scale)
{
    for (size_t i = 0; i < count; i++) p[i] = (float)(scale * fs_rng_normal(&rng));
}

static void fill_nan(float *p, size_t count)
{
    for (size_t i = 0; i < count; i++) p[i] = NAN;
}

static double dot(const float *r, const float *y, size_t count)
{
    double s = 0.0;
    for (size_t i = 0; i < count; i++) s += (double)r[i] * y[i];
    return s;
}

static size_t count_nonfinite(const float *p, size_t count)
{
    size_t bad = 0;
    for (size_t i = 0; i < count; i++) bad += !isfinite(p[i]);
    return bad;
}

/* A workspace of `bytes` followed by 64 sentinel floats; ws_intact() checks
 * that no op wrote past the size it asked for. */
#define WS_GUARD 64
static float *ws_alloc(size_t bytes)
{
    size_t nf = (bytes + sizeof(float) - 1) / sizeof(float);
    float *w = fbuf(nf + WS_GUARD);
    for (size_t i = 0; i < WS_GUARD; i++) w[nf + i] = 12345.0f;
    return w;
}
static int ws_intact(const float *w, size_t bytes)
{
    size_t nf = (bytes + sizeof(float) - 1) / sizeof(float);
    for (size_t i = 0; i < WS_GUARD; i++)
        if (w[nf + i] != 12345.0f) return 0;
    return 1;
}

/* Signature of the piecewise-linear branch an evaluation took (LeakyReLU sign
 * pattern, max-pool argmaxes); a finite difference whose ± evaluations took a
 * different branch than the base point straddles a kink and is skipped. */
static uint64_t g_sig;

/* Central differences of f with respect to param[0..count): fd[i] =
 * (f(p+e) − f(p−e)) / (actual float step). Entries straddling a kink get the
 * analytic value (so they are not compared) and are counted in *skipped. */
static void fd_grad(double (*f)(void *), void *u, float *param, size_t count, double eps,
                    const float *analytic, float *fd, size_t *skipped)
{
    f(u);
    uint64_t base = g_sig;
    for (size_t i = 0; i < count; i++) {
        float save = param[i];
        float hp = (float)(save + eps), hm = (float)(save - eps);
        param[i] = hp;
        double lp = f(u);
        uint64_t sp = g_sig;
        param[i] = hm;
        double lm = f(u);
        uint64_t sm = g_sig;
        param[i] = save;
        if (sp != base || sm != base) {
            fd[i] = analytic[i];
            if (skipped) (*skipped)++;
        } else {
            fd[i] = (float)((lp - lm) / ((double)hp - (double)hm));
        }
    }
}

/* ---- convolution ------------------------------------------------------------ */

typedef struct {
    fs_conv_shape s;
    float *x, *w, *b, *y, *r, *ws;
} conv_case;

static double conv_L(void *u)
{
    conv_case *c = u;
    fs_status st = be->conv_fwd(ctx, &c->s, c->x, c->w, c->b, c->y, c->ws);
    if (st != FS_OK) return NAN;
    return dot(c->r, c->y, (size_t)c->s.n * c->s.cout * c->s.h * c->s.w);
}

/* Naive direct convolution in double. */
static void conv_naive(const fs_conv_shape *s, const float *x, const float *w, const float *b,
                       double *y)
{
    int p = s->k / 2;
    for (int n = 0; n < s->n; n++)
        for (int co = 0; co < s->cout; co++)
            for (int yy = 0; yy < s->h; yy++)
                for (int xx = 0; xx < s->w; xx++) {
                    double acc = b[co];
                    for (int ci = 0; ci < s->cin; ci++)
                        for (int i = 0; i < s->k; i++)
                            for (int j = 0; j < s->k; j++) {
                                int ys = yy + i - p, xs = xx + j - p;
                                if (ys < 0 || ys >= s->h || xs < 0 || xs >= s->w) continue;
                                acc += (double)w[((co * s->cin + ci) * s->k + i) * s->k + j] *
                                       x[((n * s->cin + ci) * s->h + ys) * s->w + xs];
                            }
                    y[((n * s->cout + co) * s->h + yy) * s->w + xx] = acc;
                }
}

static void test_conv(int k)
{
    char what[64];
    conv_case c = {.s = {.n = 3, .cin = 3, .cout = 5, .h = 7, .w = 5, .k = k}};
    const fs_conv_shape *s = &c.s;
    size_t nx = (size_t)s->n * s->cin * s->h * s->w, ny = (size_t)s->n * s->cout * s->h * s->w;
    size_t nw = (size_t)s->cout * s->cin * k * k, wsb = be->conv_ws_bytes(ctx, s);
    c.x = fbuf(nx); c.w = fbuf(nw); c.b = fbuf(s->cout); c.y = fbuf(ny); c.r = fbuf(ny);
    c.ws = ws_alloc(wsb);
    fill_normal(c.x, nx, 1.0); fill_normal(c.w, nw, 0.5); fill_normal(c.b, s->cout, 0.5);
    fill_normal(c.r, ny, 1.0);

    /* forward vs naive: fp32 dot products of ≤ 27 O(1) terms; the rounding
     * error is a few ulps of Σ|terms| ≈ 1e-6 */
    fill_nan(c.y, ny);
    CHECK(be->conv_fwd(ctx, s, c.x, c.w, c.b, c.y, c.ws) == FS_OK, "conv_fwd k=%d", k);
    double *ref = calloc(ny, sizeof(double));
    float *reff = fbuf(ny);
    conv_naive(s, c.x, c.w, c.b, ref);
    for (size_t i = 0; i < ny; i++) reff[i] = (float)ref[i];
    snprintf(what, sizeof what, "conv%d fwd vs naive", k);
    check_close(what, c.y, reff, ny, 2e-5f, 1e-5f);
    CHECK(ws_intact(c.ws, wsb), "conv%d fwd wrote past its workspace", k);

    /* backward with dy = r (so dL/dx etc. are the analytic gradients of L) */
    float *dx = fbuf(nx), *dw = fbuf(nw), *db = fbuf(s->cout), *fd = fbuf(nx > nw ? nx : nw);
    fill_nan(dx, nx); fill_nan(dw, nw); fill_nan(db, s->cout);
    CHECK(be->conv_bwd_data(ctx, s, c.r, c.w, dx, c.ws) == FS_OK, "conv_bwd_data");
    CHECK(be->conv_bwd_filter(ctx, s, c.x, c.r, dw, db, c.ws) == FS_OK, "conv_bwd_filter");
    CHECK(count_nonfinite(dx, nx) == 0 && count_nonfinite(dw, nw) == 0 &&
              count_nonfinite(db, s->cout) == 0, "conv%d backward left outputs unwritten", k);
    CHECK(ws_intact(c.ws, wsb), "conv%d backward wrote past its workspace", k);

    /* L is linear in x, w and b, so central differences are exact up to the
     * fp32 rounding of L (≈ 1e-5 over ≤ 525 terms); a step of 0.25 divides
     * that by 0.5. Gradients are O(1..10). */
    fd_grad(conv_L, &c, c.x, nx, 0.25, dx, fd, NULL);
    snprintf(what, sizeof what, "conv%d dx vs FD", k);
    check_close(what, dx, fd, nx, 5e-4f, 1e-3f);
    fd_grad(conv_L, &c, c.w, nw, 0.25, dw, fd, NULL);
    snprintf(what, sizeof what, "conv%d dw vs FD", k);
    check_close(what, dw, fd, nw, 5e-4f, 1e-3f);
    fd_grad(conv_L, &c, c.b, s->cout, 0.25, db, fd, NULL);
    snprintf(what, sizeof what, "conv%d db vs FD", k);
    check_close(what, db, fd, s->cout, 5e-4f, 1e-3f);

    /* determinism: the same call twice gives the same bits; one thread gives
     * the same values within fp32 reordering (sums over ≤ 3·35 terms) */
    float *dw2 = fbuf(nw), *db2 = fbuf(s->cout), *ws1 = ws_alloc(be->conv_ws_bytes(ctx1, s));
    be->conv_bwd_filter(ctx, s, c.x, c.r, dw2, db2, c.ws);
    CHECK(memcmp(dw, dw2, nw * sizeof(float)) == 0, "conv%d bwd_filter not deterministic", k);
    be->conv_bwd_filter(ctx1, s, c.x, c.r, dw2, db2, ws1);
    snprintf(what, sizeof what, "conv%d dw 1 thread vs 2", k);
    check_close(what, dw2, dw, nw, 1e-5f, 1e-5f);
    free(ref);
}

static void to_float(const double *d, float *f, size_t count)
{
    for (size_t i = 0; i < count; i++) f[i] = (float)d[i];
}

/* Naive conv backward in double: dx = convᵀ(dy), dw = Σ dy·x, db = Σ dy. */
static void conv_naive_bwd(const fs_conv_shape *s, const float *x, const float *w, const float *dy,
                           double *dx, double *dw, double *db)
{
    int p = s->k / 2;
    memset(dx, 0, sizeof(double) * s->n * s->cin * s->h * s->w);
    memset(dw, 0, sizeof(double) * s->cout * s->cin * s->k * s->k);
    memset(db, 0, sizeof(double) * s->cout);
    for (int n = 0; n < s->n; n++)
        for (int co = 0; co < s->cout; co++)
            for (int yy = 0; yy < s->h; yy++)
                for (int xx = 0; xx < s->w; xx++) {
                    double g = dy[((n * s->cout + co) * s->h + yy) * s->w + xx];
                    db[co] += g;
                    for (int ci = 0; ci < s->cin; ci++)
                        for (int i = 0; i < s->k; i++)
                            for (int j = 0; j < s->k; j++) {
                                int ys = yy + i - p, xs = xx + j - p;
                                if (ys < 0 || ys >= s->h || xs < 0 || xs >= s->w) continue;
                                size_t wi = ((size_t)(co * s->cin + ci) * s->k + i) * s->k + j;
                                size_t xi = ((size_t)(n * s->cin + ci) * s->h + ys) * s->w + xs;
                                dx[xi] += g * w[wi];
                                dw[wi] += g * x[xi];
                            }
                }
}

/* Many input channels: the column matrix is built in bands of rows (here 4
 * rows, then 3), so band edges, the partial last band and col2im's
 * accumulation across bands are exercised. Compared with naive loops. */
static void test_conv_bands(void)
{
    fs_conv_shape s = {.n = 3, .cin = 300, .cout = 3, .h = 7, .w = 5, .k = 3};
    size_t nx = (size_t)s.n * s.cin * s.h * s.w, ny = (size_t)s.n * s.cout * s.h * s.w;
    size_t nw = (size_t)s.cout * s.cin * 9, wsb = be->conv_ws_bytes(ctx, &s);
    float *x = fbuf(nx), *w = fbuf(nw), *b = fbuf(s.cout), *y = fbuf(ny), *dy = fbuf(ny);
    float *dx = fbuf(nx), *dw = fbuf(nw), *db = fbuf(s.cout), *ws = ws_alloc(wsb);
    float *f = fbuf(nx > nw ? nx : nw);
    double *ry = calloc(ny, 8), *rdx = calloc(nx, 8), *rdw = calloc(nw, 8), *rdb = calloc(s.cout, 8);
    fill_normal(x, nx, 1.0); fill_normal(w, nw, 0.1); fill_normal(b, s.cout, 0.5);
    fill_normal(dy, ny, 1.0);
    fill_nan(y, ny); fill_nan(dx, nx); fill_nan(dw, nw);
    CHECK(be->conv_fwd(ctx, &s, x, w, b, y, ws) == FS_OK, "conv_fwd (bands)");
    CHECK(be->conv_bwd_data(ctx, &s, dy, w, dx, ws) == FS_OK, "conv_bwd_data (bands)");
    CHECK(be->conv_bwd_filter(ctx, &s, x, dy, dw, db, ws) == FS_OK, "conv_bwd_filter (bands)");
    CHECK(ws_intact(ws, wsb), "banded conv wrote past its workspace");
    conv_naive(&s, x, w, b, ry);
    conv_naive_bwd(&s, x, w, dy, rdx, rdw, rdb);
    /* y sums 2700 products of size ≈ 0.1 (|y| ≈ 5): fp32 error ≈ 1e-5;
     * dx sums ≤ 27, dw ≤ 105 products: a few ulps of Σ|terms| */
    to_float(ry, f, ny);
    check_close("conv (bands) fwd vs naive", y, f, ny, 1e-4f, 1e-5f);
    to_float(rdx, f, nx);
    check_close("conv (bands) dx vs naive", dx, f, nx, 1e-5f, 1e-5f);
    to_float(rdw, f, nw);
    check_close("conv (bands) dw vs naive", dw, f, nw, 2e-5f, 1e-5f);
    to_float(rdb, f, s.cout);
    check_close("conv (bands) db vs naive", db, f, s.cout, 2e-5f, 1e-5f);
    free(ry); free(rdx); free(rdw); free(rdb);
}

/* ---- transposed convolution ------------------------------------------------- */

typedef struct {
    fs_convt_shape s;
    float *x, *w, *b, *y, *r, *ws;
} convt_case;

static double convt_L(void *u)
{
    convt_case *c = u;
    if (be->convt_fwd(ctx, &c->s, c->x, c->w, c->b, c->y, c->ws) != FS_OK) return NAN;
    return dot(c->r, c->y, (size_t)c->s.n * c->s.cout * 4 * c->s.h * c->s.w);
}

/* Naive transposed conv forward, and its two backward products, in double. */
static void convt_naive(const fs_convt_shape *s, const float *x, const float *w, const float *b,
                        const float *dy, double *y, double *dx, double *dw, double *db)
{
    int H = 2 * s->h, W = 2 * s->w;
    size_t nw = (size_t)s->cin * s->cout * 4, nx = (size_t)s->n * s->cin * s->h * s->w;
    for (size_t i = 0; i < nw; i++) dw[i] = 0;
    for (size_t i = 0; i < nx; i++) dx[i] = 0;
    for (int co = 0; co < s->cout; co++) db[co] = 0;
    for (int n = 0; n < s->n; n++)
        for (int co = 0; co < s->cout; co++)
            for (int yy = 0; yy < H; yy++)
                for (int xx = 0; xx < W; xx++) {
                    int i = yy / 2, a = yy % 2, j = xx / 2, e = xx % 2;
                    size_t o = ((size_t)(n * s->cout + co) * H + yy) * W + xx;
                    double acc = b[co];
                    for (int ci = 0; ci < s->cin; ci++) {
                        size_t xi = ((size_t)(n * s->cin + ci) * s->h + i) * s->w + j;
                        size_t wi = ((size_t)(ci * s->cout + co) * 2 + a) * 2 + e;
                        acc += (double)x[xi] * w[wi];
                        dx[xi] += (double)dy[o] * w[wi];
                        dw[wi] += (double)dy[o] * x[xi];
                    }
                    y[o] = acc;
                    db[co] += dy[o];
                }
}

/* Forward and both backward ops against the naive loops; with cout large the
 * pixel chunking (several chunks per image, a partial last chunk; above
 * 16384 channels one pixel per chunk) is used. */
static void test_convt_naive(int cout)
{
    char what[64];
    fs_convt_shape s = {.n = 3, .cin = 3, .cout = cout, .h = 3, .w = 5};
    size_t nx = (size_t)s.n * s.cin * s.h * s.w, ny = (size_t)s.n * cout * 4 * s.h * s.w;
    size_t nw = (size_t)s.cin * cout * 4, wsb = be->convt_ws_bytes(ctx, &s);
    CHECK(wsb > 0, "convt_ws_bytes is 0 for cout=%d", cout);
    float *x = fbuf(nx), *w = fbuf(nw), *b = fbuf(cout), *y = fbuf(ny), *dy = fbuf(ny);
    float *dx = fbuf(nx), *dw = fbuf(nw), *db = fbuf(cout), *f = fbuf(ny), *ws = ws_alloc(wsb);
    double *ry = calloc(ny, 8), *rdx = calloc(nx, 8), *rdw = calloc(nw, 8), *rdb = calloc(cout, 8);
    fill_normal(x, nx, 1.0); fill_normal(w, nw, 0.5); fill_normal(b, cout, 0.5);
    fill_normal(dy, ny, 1.0);
    fill_nan(y, ny); fill_nan(dx, nx); fill_nan(dw, nw); fill_nan(db, cout);
    CHECK(be->convt_fwd(ctx, &s, x, w, b, y, ws) == FS_OK, "convt_fwd cout=%d", cout);
    CHECK(ws_intact(ws, wsb), "convt_fwd cout=%d wrote past its workspace", cout);
    CHECK(be->convt_bwd_data(ctx, &s, dy, w, dx, ws) == FS_OK, "convt_bwd_data cout=%d", cout);
    CHECK(ws_intact(ws, wsb), "convt_bwd_data cout=%d wrote past its workspace", cout);
    CHECK(be->convt_bwd_filter(ctx, &s, x, dy, dw, db, ws) == FS_OK, "convt_bwd_filter cout=%d",
          cout);
    CHECK(ws_intact(ws, wsb), "convt_bwd_filter cout=%d wrote past its workspace", cout);
    convt_naive(&s, x, w, b, dy, ry, rdx, rdw, rdb);
    /* forward: sums of 3 products (fp32 rounding ≈ 1e-7); dw and db sum
     * n·h·w = 45 terms: a few ulps of Σ|terms|. dx sums K = cout·4 products
     * of size ≈ 0.4 whose partial sums grow like √K·0.5, so the fp32 error
     * grows about like K·3e-8 (4.6e-4 measured at K = 66000); an indexing
     * error would be a whole term, ≈ 0.4. */
    const float dx_atol = fmaxf(1e-4f, 3e-8f * 4.0f * (float)cout);
    to_float(ry, f, ny);
    snprintf(what, sizeof what, "convt(cout=%d) fwd vs naive", cout);
    check_close(what, y, f, ny, 1e-5f, 1e-5f);
    to_float(rdx, f, nx);
    snprintf(what, sizeof what, "convt(cout=%d) dx vs naive", cout);
    check_close(what, dx, f, nx, dx_atol, 1e-4f);
    to_float(rdw, f, nw);
    snprintf(what, sizeof what, "convt(cout=%d) dw vs naive", cout);
    check_close(what, dw, f, nw, 2e-5f, 1e-5f);
    to_float(rdb, f, cout);
    snprintf(what, sizeof what, "convt(cout=%d) db vs naive", cout);
    check_close(what, db, f, cout, 2e-5f, 1e-5f);
    free(ry); free(rdx); free(rdw); free(rdb);
    be->free(ctx, x); be->free(ctx, w); be->free(ctx, b); be->free(ctx, y); be->free(ctx, dy);
    be->free(ctx, dx); be->free(ctx, dw); be->free(ctx, db); be->free(ctx, f);
    be->free(ctx, ws);
}

static void test_convt_fd(void)
{
    convt_case c = {.s = {.n = 3, .cin = 3, .cout = 5, .h = 3, .w = 5}};
    const fs_convt_shape *s = &c.s;
    size_t nx = (size_t)s->n * s->cin * s->h * s->w, ny = (size_t)s->n * s->cout * 4 * s->h * s->w;
    size_t nw = (size_t)s->cin * s->cout * 4;
    c.x = fbuf(nx); c.w = fbuf(nw); c.b = fbuf(s->cout); c.y = fbuf(ny); c.r = fbuf(ny);
    c.ws = ws_alloc(be->convt_ws_bytes(ctx, s));
    fill_normal(c.x, nx, 1.0); fill_normal(c.w, nw, 0.5); fill_normal(c.b, s->cout, 0.5);
    fill_normal(c.r, ny, 1.0);
    float *dx = fbuf(nx), *dw = fbuf(nw), *db = fbuf(s->cout), *fd = fbuf(nx > nw ? nx : nw);
    CHECK(be->convt_bwd_data(ctx, s, c.r, c.w, dx, c.ws) == FS_OK, "convt_bwd_data");
    CHECK(be->convt_bwd_filter(ctx, s, c.x, c.r, dw, db, c.ws) == FS_OK, "convt_bwd_filter");
    /* linear in x, w, b: exact differences up to fp32 rounding of L (≈ 1e-5
     * over 900 terms), step 0.25 */
    fd_grad(convt_L, &c, c.x, nx, 0.25, dx, fd, NULL);
    check_close("convt dx vs FD", dx, fd, nx, 5e-4f, 1e-3f);
    fd_grad(convt_L, &c, c.w, nw, 0.25, dw, fd, NULL);
    check_close("convt dw vs FD", dw, fd, nw, 5e-4f, 1e-3f);
    fd_grad(convt_L, &c, c.b, s->cout, 0.25, db, fd, NULL);
    check_close("convt db vs FD", db, fd, s->cout, 5e-4f, 1e-3f);
}

/* ---- instance norm + LeakyReLU ---------------------------------------------- */

typedef struct {
    int n, c, hw;
    float eps, slope;
    float *x, *g, *bt, *y, *mean, *rstd, *r;
} norm_case;

static double norm_L(void *u)
{
    norm_case *c = u;
    if (be->norm_act_fwd(ctx, c->n, c->c, c->hw, c->x, c->g, c->bt, c->eps, c->slope, c->y,
                         c->mean, c->rstd) != FS_OK)
        return NAN;
    size_t ny = (size_t)c->n * c->c * c->hw;
    uint64_t sig = 1469598103934665603ULL;
    for (size_t i = 0; i < ny; i++) sig = (sig ^ (uint64_t)(c->y[i] > 0.0f)) * 1099511628211ULL;
    g_sig = sig;
    return dot(c->r, c->y, ny);
}

/* Instance norm + LeakyReLU forward in double, from the definition. */
static void norm_ref(const norm_case *c, const float *x, float *y, float *mean, float *rstd)
{
    size_t np = (size_t)c->n * c->c;
    for (size_t p = 0; p < np; p++) {
        const float *xp = x + p * c->hw;
        double mu = 0, var = 0;
        for (int i = 0; i < c->hw; i++) mu += xp[i];
        mu /= c->hw;
        for (int i = 0; i < c->hw; i++) var += (xp[i] - mu) * (xp[i] - mu);
        var /= c->hw;
        double rs = 1.0 / sqrt(var + c->eps);
        mean[p] = (float)mu;
        rstd[p] = (float)rs;
        int ch = (int)(p % c->c);
        for (int i = 0; i < c->hw; i++) {
            double z = c->g[ch] * (xp[i] - mu) * rs + c->bt[ch];
            y[p * c->hw + i] = (float)(z > 0 ? z : c->slope * z);
        }
    }
}

static void test_norm(void)
{
    norm_case c = {.n = 2, .c = 3, .hw = 35, .eps = 1e-5f, .slope = 0.2f};
    size_t ny = (size_t)c.n * c.c * c.hw, np = (size_t)c.n * c.c;
    c.x = fbuf(ny); c.g = fbuf(c.c); c.bt = fbuf(c.c); c.y = fbuf(ny); c.r = fbuf(ny);
    c.mean = fbuf(np); c.rstd = fbuf(np);
    for (size_t i = 0; i < ny; i++) c.x[i] = (float)(2.0 * fs_rng_normal(&rng) + 0.7);
    const float gam[3] = {1.3f, -0.6f, 0.9f}, bet[3] = {0.2f, -0.1f, 0.4f};
    memcpy(c.g, gam, sizeof gam); memcpy(c.bt, bet, sizeof bet);
    fill_normal(c.r, ny, 1.0);
    fill_nan(c.y, ny); fill_nan(c.mean, np); fill_nan(c.rstd, np);
    CHECK(be->norm_act_fwd(ctx, c.n, c.c, c.hw, c.x, c.g, c.bt, c.eps, c.slope, c.y, c.mean,
                           c.rstd) == FS_OK, "norm_act_fwd");

    /* forward against a double reference: float output of O(1) values after
     * one subtraction, one scale: a few ulps */
    float *ref = fbuf(ny), *rm = fbuf(np), *rr = fbuf(np);
    norm_ref(&c, c.x, ref, rm, rr);
    check_close("norm fwd y vs double", c.y, ref, ny, 1e-5f, 1e-5f);
    check_close("norm fwd mean vs double", c.mean, rm, np, 1e-6f, 1e-6f);
    check_close("norm fwd rstd vs double", c.rstd, rr, np, 1e-6f, 1e-6f);
    /* planes with variance ≈ eps, where eps matters; rstd ≈ 300 here */
    float *xs = fbuf(ny), *ys = fbuf(ny);
    for (size_t i = 0; i < ny; i++) xs[i] = 1.5e-3f * c.x[i];
    CHECK(be->norm_act_fwd(ctx, c.n, c.c, c.hw, xs, c.g, c.bt, c.eps, c.slope, ys, c.mean,
                           c.rstd) == FS_OK, "norm_act_fwd (small variance)");
    norm_ref(&c, xs, ref, rm, rr);
    check_close("norm fwd y vs double (variance ~ eps)", ys, ref, ny, 1e-5f, 1e-5f);
    check_close("norm fwd rstd vs double (variance ~ eps)", c.rstd, rr, np, 1e-6f, 1e-5f);
    /* a slope above 1 (the LeakyReLU is then a min, not a max, of z and slope·z) */
    c.slope = 1.5f;
    CHECK(be->norm_act_fwd(ctx, c.n, c.c, c.hw, c.x, c.g, c.bt, c.eps, c.slope, ys, c.mean,
                           c.rstd) == FS_OK, "norm_act_fwd (slope 1.5)");
    norm_ref(&c, c.x, ref, rm, rr);
    check_close("norm fwd y vs double (slope 1.5)", ys, ref, ny, 1e-5f, 1e-5f);
    c.slope = 0.2f;
    be->norm_act_fwd(ctx, c.n, c.c, c.hw, c.x, c.g, c.bt, c.eps, c.slope, c.y, c.mean, c.rstd);

    float *dx = fbuf(ny), *dg = fbuf(c.c), *dbt = fbuf(c.c), *fd = fbuf(ny);
    const size_t wsb = be->norm_ws_bytes(ctx, c.n, c.c, c.hw);
    float *ws = ws_alloc(wsb);
    fill_nan(dx, ny); fill_nan(dg, c.c); fill_nan(dbt, c.c);
    CHECK(be->norm_act_bwd(ctx, c.n, c.c, c.hw, c.x, c.g, c.bt, c.slope, c.mean, c.rstd, c.r, dx,
                           dg, dbt, ws) == FS_OK, "norm_act_bwd");
    CHECK(count_nonfinite(dx, ny) == 0, "norm bwd left dx unwritten");
    CHECK(ws_intact(ws, wsb), "norm_act_bwd wrote past its workspace");
    /* Nonlinear: step 1e-2 keeps the truncation error (≈ step²·|f'''|) near
     * 1e-4 while the fp32 rounding of L (≈ 2e-6 over 210 terms) adds ≈ 1e-4;
     * gradients are O(0.1..3). Steps that flip a LeakyReLU sign are skipped
     * (they straddle the kink); at most a tenth may be. */
    size_t skipped = 0;
    fd_grad(norm_L, &c, c.x, ny, 1e-2, dx, fd, &skipped);
    check_close("norm dx vs FD", dx, fd, ny, 1e-3f, 1e-2f);
    fd_grad(norm_L, &c, c.g, c.c, 1e-2, dg, fd, &skipped);
    check_close("norm dgamma vs FD", dg, fd, c.c, 1e-3f, 1e-2f);
    fd_grad(norm_L, &c, c.bt, c.c, 1e-2, dbt, fd, &skipped);
    check_close("norm dbeta vs FD", dbt, fd, c.c, 1e-3f, 1e-2f);
    CHECK(skipped <= (ny + 6) / 10, "norm FD skipped %zu of %zu points at kinks", skipped, ny + 6);
    fprintf(stderr, "norm FD: %zu of %zu points skipped at LeakyReLU kinks\n", skipped, ny + 6);
}

/* ---- max-pool ----------------------------------------------------------------- */

typedef struct {
    int n, c, h, w;
    float *x, *y, *r;
} pool_case;

static double pool_L(void *u)
{
    pool_case *p = u;
    if (be->maxpool_fwd(ctx, p->n, p->c, p->h, p->w, p->x, p->y) != FS_OK) return NAN;
    return dot(p->r, p->y, (size_t)p->n * p->c * p->h * p->w / 4);
}

static void test_maxpool(void)
{
    /* FD: distinct values on a 0.01 grid, step 1e-3 < half the smallest gap,
     * so no step changes a window's argmax; the pool is then linear and the
     * differences exact up to rounding of L. */
    pool_case p = {.n = 2, .c = 3, .h = 6, .w = 4};
    size_t nx = (size_t)p.n * p.c * p.h * p.w, ny = nx / 4;
    p.x = fbuf(nx); p.y = fbuf(ny); p.r = fbuf(ny);
    for (size_t i = 0; i < nx; i++) p.x[i] = (float)(0.01 * (double)i);
    for (size_t i = nx - 1; i > 0; i--) { /* shuffle */
        size_t j = fs_rng_below(&rng, i + 1);
        float t = p.x[i]; p.x[i] = p.x[j]; p.x[j] = t;
    }
    fill_normal(p.r, ny, 1.0);
    float *dx = fbuf(nx), *fd = fbuf(nx);
    fill_nan(dx, nx);
    CHECK(be->maxpool_bwd(ctx, p.n, p.c, p.h, p.w, p.x, p.r, dx) == FS_OK, "maxpool_bwd");
    for (size_t i = 0; i < nx; i++) {
        float save = p.x[i];
        p.x[i] = save + 1e-3f; double lp = pool_L(&p);
        p.x[i] = save - 1e-3f; double lm = pool_L(&p);
        fd[i] = (float)((lp - lm) / ((double)(save + 1e-3f) - (double)(save - 1e-3f)));
        p.x[i] = save;
    }
    check_close("maxpool dx vs FD", dx, fd, nx, 1e-3f, 1e-3f);

    /* tie rule: one window per case, 1×1 channel of 2×2 */
    const float win[5][4] = {
        {1, 1, 1, 1},  /* all equal -> top-left */
        {0, 2, 1, 2},  /* top-right ties bottom-right -> top-right */
        {0, 1, 3, 3},  /* bottom-left ties bottom-right -> bottom-left */
        {5, 1, 5, 2},  /* top-left ties bottom-left -> top-left */
        {-3, -2, -1, -1}, /* negative values, tie at the bottom -> bottom-left */
    };
    const int want[5] = {0, 1, 2, 0, 2};
    float x4[4], y1, g1 = 7.0f, d4[4];
    for (int t = 0; t < 5; t++) {
        memcpy(x4, win[t], sizeof x4);
        CHECK(be->maxpool_fwd(ctx, 1, 1, 2, 2, x4, &y1) == FS_OK, "maxpool_fwd tie %d", t);
        CHECK(y1 == win[t][want[t]], "maxpool tie case %d: max %g, want %g", t, y1, win[t][want[t]]);
        for (int i = 0; i < 4; i++) d4[i] = NAN;
        CHECK(be->maxpool_bwd(ctx, 1, 1, 2, 2, x4, &g1, d4) == FS_OK, "maxpool_bwd tie %d", t);
        for (int i = 0; i < 4; i++)
            CHECK(d4[i] == (i == want[t] ? g1 : 0.0f), "maxpool tie case %d: dx[%d] = %g", t, i,
                  d4[i]);
    }
    CHECK(be->maxpool_fwd(ctx, 1, 1, 3, 2, x4, &y1) == FS_ERR_ARG, "maxpool with odd h accepted");
}

/* ---- concatenation ---------------------------------------------------------- */

static void test_concat(void)
{
    const int n = 2, ca = 3, cb = 2, hw = 35;
    size_t na = (size_t)n * ca * hw, nb = (size_t)n * cb * hw, ny = na + nb;
    float *a = fbuf(na), *b = fbuf(nb), *y = fbuf(ny), *dy = fbuf(ny), *da = fbuf(na);
    float *db = fbuf(nb), *db0 = fbuf(nb), *want = fbuf(ny);
    fill_normal(a, na, 1.0); fill_normal(b, nb, 1.0); fill_normal(dy, ny, 1.0);
    fill_normal(db0, nb, 1.0);
    fill_nan(y, ny);
    CHECK(be->concat_fwd(ctx, n, ca, cb, hw, a, b, y) == FS_OK, "concat_fwd");
    for (int i = 0; i < n; i++) {
        memcpy(want + (size_t)i * (ca + cb) * hw, a + (size_t)i * ca * hw, ca * hw * sizeof(float));
        memcpy(want + ((size_t)i * (ca + cb) + ca) * hw, b + (size_t)i * cb * hw,
               cb * hw * sizeof(float));
    }
    check_close("concat fwd", y, want, ny, 0.0f, 0.0f);

    /* backward: da overwritten with dy's first ca channels; db accumulates
     * (it starts non-zero, as the max-pool's gradient would) */
    memcpy(db, db0, nb * sizeof(float));
    fill_nan(da, na);
    CHECK(be->concat_bwd(ctx, n, ca, cb, hw, dy, da, db) == FS_OK, "concat_bwd");
    for (int i = 0; i < n; i++) {
        for (size_t k = 0; k < (size_t)ca * hw; k++)
            want[(size_t)i * ca * hw + k] = dy[(size_t)i * (ca + cb) * hw + k];
    }
    check_close("concat_bwd da", da, want, na, 0.0f, 0.0f);
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < (size_t)cb * hw; k++)
            want[(size_t)i * cb * hw + k] =
                db0[(size_t)i * cb * hw + k] + dy[((size_t)i * (ca + cb) + ca) * hw + k];
    check_close("concat_bwd db accumulates", db, want, nb, 0.0f, 0.0f);
}

/* ---- loss ------------------------------------------------------------------- */

typedef struct {
    int n, k, hw;
    float smooth;
    float *logits, *loss, *dl;
    uint8_t *lab;
    float *ws;
} loss_case;

/* The loss in double, straight from the definition in backend.h. */
static double loss_ref(const loss_case *c, const float *logits)
{
    double inter[8] = {0}, den[8] = {0}, ce = 0;
    for (int n = 0; n < c->n; n++)
        for (int q = 0; q < c->hw; q++) {
            double m = -INFINITY, s = 0, p[8];
            for (int k = 0; k < c->k; k++) m = fmax(m, logits[((size_t)n * c->k + k) * c->hw + q]);
            for (int k = 0; k < c->k; k++) s += p[k] = exp(logits[((size_t)n * c->k + k) * c->hw + q] - m);
            int y = c->lab[(size_t)n * c->hw + q];
            for (int k = 0; k < c->k; k++) {
                p[k] /= s;
                den[k] += p[k] + (k == y);
                inter[k] += p[k] * (k == y);
            }
            ce -= log(p[y]);
        }
    double dice = 0;
    for (int k = 0; k < c->k; k++) dice += (2 * inter[k] + c->smooth) / (den[k] + c->smooth);
    return ce / ((double)c->n * c->hw) + 1.0 - dice / c->k;
}

static double loss_L_op(void *u)
{
    loss_case *c = u;
    if (be->loss_fwd_bwd(ctx, c->n, c->k, c->hw, c->logits, c->lab, c->smooth, c->loss, c->dl,
                         c->ws) != FS_OK)
        return NAN;
    return c->loss[0];
}

static double loss_L_ref(void *u)
{
    loss_case *c = u;
    return loss_ref(c, c->logits);
}

static void test_loss(void)
{
    loss_case c = {.n = 2, .k = 5, .hw = 35, .smooth = 1e-5f};
    size_t nl = (size_t)c.n * c.k * c.hw, np = (size_t)c.n * c.hw;
    size_t wsb = be->loss_ws_bytes(ctx, c.n, c.k, c.hw);
    c.logits = fbuf(nl); c.loss = fbuf(1); c.dl = fbuf(nl); c.ws = ws_alloc(wsb);
    c.lab = (uint8_t *)fbuf(np);
    fill_normal(c.logits, nl, 2.0);
    for (size_t i = 0; i < np; i++) c.lab[i] = (uint8_t)(i % c.k); /* every class present */
    for (size_t i = np - 1; i > 0; i--) {
        size_t j = fs_rng_below(&rng, i + 1);
        uint8_t t = c.lab[i]; c.lab[i] = c.lab[j]; c.lab[j] = t;
    }
    fill_nan(c.dl, nl);
    c.loss[0] = NAN;
    CHECK(be->loss_fwd_bwd(ctx, c.n, c.k, c.hw, c.logits, c.lab, c.smooth, c.loss, c.dl, c.ws) ==
              FS_OK, "loss_fwd_bwd");
    CHECK(ws_intact(c.ws, wsb), "loss wrote past its workspace");
    CHECK(count_nonfinite(c.dl, nl) == 0, "loss left dlogits unwritten");
    /* value: sums kept in double inside the op; fp32 softmax ≈ 1e-7 relative */
    double want = loss_ref(&c, c.logits);
    CHECK(fabs(c.loss[0] - want) <= 1e-5 + 1e-5 * fabs(want), "loss %.9g, double reference %.9g",
          c.loss[0], want);

    float *an = fbuf(nl), *fd = fbuf(nl);
    memcpy(an, c.dl, nl * sizeof(float));
    /* (a) against differences of the double reference (validated above):
     * step 1e-4, truncation ≈ 1e-8·|f'''|, no rounding to speak of;
     * gradients are O(1/(N·HW)) ≈ 0.01, fp32 in the op */
    fd_grad(loss_L_ref, &c, c.logits, nl, 1e-4, an, fd, NULL);
    check_close("loss dlogits vs FD (double loss)", an, fd, nl, 2e-6f, 1e-4f);
    /* (b) against differences of the op's own fp32 loss: step 1e-2 so that
     * its rounding (≈ 1e-7 of ~2) is ≈ 1e-5 of the quotient */
    fd_grad(loss_L_op, &c, c.logits, nl, 1e-2, an, fd, NULL);
    check_close("loss dlogits vs FD (op's loss)", an, fd, nl, 3e-5f, 1e-2f);

    /* labels ≥ k are refused, outputs untouched */
    c.lab[np / 2] = (uint8_t)c.k;
    c.loss[0] = -1.0f;
    CHECK(be->loss_fwd_bwd(ctx, c.n, c.k, c.hw, c.logits, c.lab, c.smooth, c.loss, c.dl, c.ws) ==
              FS_ERR_ARG, "label == k accepted");
    c.lab[np / 2] = 255;
    CHECK(be->loss_fwd_bwd(ctx, c.n, c.k, c.hw, c.logits, c.lab, c.smooth, c.loss, c.dl, c.ws) ==
              FS_ERR_ARG, "label 255 accepted");
    CHECK(c.loss[0] == -1.0f, "refused call wrote the loss");
}

/* ---- Adam ------------------------------------------------------------------- */

static void test_adam(void)
{
    enum { N = 1000 };
    fs_adam_hp hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .mu = 0.1f};
    float *w = fbuf(N), *g = fbuf(N), *m = fbuf(N), *v = fbuf(N), *ref = fbuf(N), *st = fbuf(1);
    float *want = fbuf(N);
    fill_normal(w, N, 1.0); fill_normal(ref, N, 1.0);
    double dw[N], dm[N] = {0}, dv[N] = {0};
    for (int i = 0; i < N; i++) dw[i] = w[i];
    for (int t = 1; t <= 2; t++) {
        fill_normal(g, N, 1.0);
        /* hand-computed reference in double: the formulas of backend.h */
        double b1 = hp.beta1, b2 = hp.beta2;
        for (int i = 0; i < N; i++) {
            double gp = g[i] + (double)hp.mu * ((double)w[i] - ref[i]);
            dm[i] = b1 * dm[i] + (1 - b1) * gp;
            dv[i] = b2 * dv[i] + (1 - b2) * gp * gp;
            double mh = dm[i] / (1 - pow(b1, t)), vh = dv[i] / (1 - pow(b2, t));
            dw[i] -= hp.lr * mh / (sqrt(vh) + hp.eps);
            want[i] = (float)dw[i];
        }
        if (t == 1) {
            /* step 1 in closed form: m̂ = g', v̂ = g'², so w moves by
             * lr·g'/(|g'| + eps) — about lr in the direction of −g' */
            for (int i = 0; i < N; i++) {
                double gp = g[i] + (double)hp.mu * ((double)w[i] - ref[i]);
                double closed = w[i] - hp.lr * gp / (fabs(gp) + hp.eps);
                CHECK(fabs(closed - dw[i]) < 1e-9, "Adam reference disagrees at %d", i);
            }
        }
        CHECK(be->adam_step(ctx, N, w, g, m, v, ref, hp, st) == FS_OK, "adam_step %d", t);
        CHECK(st[0] == (float)t, "Adam step count %g after %d steps", st[0], t);
        /* fp32 arithmetic of a handful of operations on O(1) values */
        check_close(t == 1 ? "adam w step 1" : "adam w step 2", w, want, N, 1e-6f, 1e-5f);
    }
    /* mu = 0 ignores (and accepts a NULL) w_ref */
    hp.mu = 0.0f;
    CHECK(be->adam_step(ctx, N, w, g, m, v, NULL, hp, st) == FS_OK, "adam_step without w_ref");
    hp.mu = 0.1f;
    CHECK(be->adam_step(ctx, N, w, g, m, v, NULL, hp, st) == FS_ERR_ARG,
          "adam_step with mu > 0 and no w_ref accepted");
}

/* ---- table and memory --------------------------------------------------------- */

static void test_table(void)
{
    const char *why = NULL;
    CHECK(fs_backend_get("cpu", &why) == fs_backend_cpu(), "get(cpu)");
    CHECK(fs_backend_get("auto", &why) != NULL, "get(auto)");
    why = NULL;
    CHECK(fs_backend_get("tpu", &why) == NULL && why && *why, "get(tpu) not refused with a reason");
    why = NULL;
    const fs_backend *cu = fs_backend_get("cuda", &why);
    CHECK(cu ? fs_backend_cuda_available() : (why != NULL), "get(cuda) without a reason");
    CHECK(strcmp(be->name, "cpu") == 0, "name %s", be->name);
    CHECK(be->graph_capture_begin(ctx) == FS_ERR_UNSUPPORTED, "graph capture on the CPU");
    CHECK(be->graph_replay(ctx) == FS_ERR_UNSUPPORTED, "graph replay on the CPU");
    void *p = NULL;
    CHECK(be->alloc(ctx, &p, 1000) == FS_OK && p, "alloc");
    CHECK(((uintptr_t)p & 63) == 0, "alloc not 64-byte aligned");
    int nonzero = 0;
    for (int i = 0; i < 1000; i++) nonzero |= ((unsigned char *)p)[i];
    CHECK(!nonzero, "alloc not zero-filled");
    be->free(ctx, p);
    be->free(ctx, NULL);
    be->ctx_free(NULL);
    fs_conv_shape bad = {.n = 1, .cin = 1, .cout = 1, .h = 4, .w = 4, .k = 5};
    float z[16] = {0};
    CHECK(be->conv_fwd(ctx, &bad, z, z, z, z, z) == FS_ERR_ARG, "conv with k = 5 accepted");
    fs_convt_shape ts = {.n = 1, .cin = 1, .cout = 1, .h = 2, .w = 2};
    CHECK(be->convt_fwd(ctx, &ts, z, z, z, z, NULL) == FS_ERR_ARG,
          "convt_fwd without a workspace accepted");
}

int main(void)
{
    be = fs_backend_cpu();
    fs_rng_seed(&rng, 20240607, 1);
    fs_backend_cpu_set_threads(2);
    if (be->ctx_init(&ctx, 0) != FS_OK) return 2;
    fs_backend_cpu_set_threads(1);
    if (be->ctx_init(&ctx1, 0) != FS_OK) return 2;
    test_table();
    test_conv(3);
    test_conv(1);
    test_conv_bands();
    test_convt_naive(5);
    test_convt_naive(4096);  /* 4 pixels per chunk: several chunks per image */
    test_convt_naive(16500); /* above the old 16384-channel limit: 1 pixel per chunk */
    test_convt_fd();
    test_norm();
    test_maxpool();
    test_concat();
    test_loss();
    test_adam();
    be->ctx_free(ctx);
    be->ctx_free(ctx1);
    return check_result();
}
