/*
 * kernels/cpu/cpu_conv.c — 3×3 (pad 1) / 1×1 (pad 0) convolutions and 2×2
 * stride-2 transposed convolutions on the CPU, forward and backward.
 *
 * Layout: activations NCHW (N images, C channels, H rows, W columns), weights in
 * PyTorch's layouts (conv w[Cout][Cin][k][k]; transposed conv w[Cin][Cout][2][2]).
 * With HW = H·W and K = Cin·k·k, per image:
 *   conv forward       Y[Cout×HW]  = W[Cout×K] · col(X)[K×HW] + b
 *   conv backward data dX          = col2im(Wᵀ[K×Cout] · dY[Cout×HW])
 *   conv backward filt dW[Cout×K] += dY[Cout×HW] · col(X)ᵀ
 * where col() is im2col (for 1×1, col(X) is X itself and no copy is made).
 * Transposed conv, per chunk of input pixels P:
 *   forward   T[Cout·4×P] = Wᵀ · X[Cin×P], scattered to the 2×2 output blocks
 *   bwd data  dX[Cin×P]   = W[Cin×Cout·4] · gather(dY)[Cout·4×P]
 *   bwd filt  dW          += X[Cin×P] · gather(dY)ᵀ
 * A chunk holds as many pixels as fit Cout·4 floats each in about
 * FS_CONVT_CHUNK_FLOATS (at least one pixel, so any Cout works); T or
 * gather(dY) for one chunk is each thread's share of the workspace.
 * For 3×3 the column matrix is built for a band of whole rows at a time
 * (about FS_CONV_CHUNK_FLOATS floats, so it stays in cache while the GEMM packs
 * and reads it), and the GEMMs above run per band. GEMMs go to OpenBLAS
 * (single-threaded); OpenMP splits images between threads. Workspace: T
 * per-thread column buffers of K × (band pixels) floats plus, for
 * backward-filter, T per-thread partial dW (reduced in thread order, so the
 * result is the same on every run with the same thread count).
 *
 * Tested by tests/test_kernels_fd.c: forward against a naive double-precision
 * loop, backward against central finite differences, and a shape with many
 * input channels (several bands per image) against naive loops both ways.
 */
#include <limits.h>
#include <omp.h>
#include <string.h>
#include <cblas.h>
#include "cpu_internal.h"

/* Rejects shapes the ops do not handle. */
static int conv_shape_ok(const fs_conv_shape *s)
{
    return s && s->n > 0 && s->cin > 0 && s->cout > 0 && s->h > 0 && s->w > 0 &&
           (s->k == 3 || s->k == 1);
}

/* 4·cout and h·w are GEMM dimensions (int for BLAS). */
static int convt_shape_ok(const fs_convt_shape *s)
{
    return s && s->n > 0 && s->cin > 0 && s->cout > 0 && s->h > 0 && s->w > 0 &&
           s->cout <= INT_MAX / 4 && (size_t)s->h * s->w <= INT_MAX;
}

/* Target size of one band of the column matrix, in floats (256 KiB). */
#define FS_CONV_CHUNK_FLOATS ((size_t)1 << 16)

/* Rows of the image per band for a 3×3 conv: as many as fit the target, at
 * least one, at most the image. */
static int conv_band_rows(const fs_conv_shape *s)
{
    size_t per_row = (size_t)s->cin * 9 * s->w;
    size_t rows = FS_CONV_CHUNK_FLOATS / per_row;
    if (rows < 1) rows = 1;
    return rows < (size_t)s->h ? (int)rows : s->h;
}

/* Floats in one thread's column buffer (0 for 1×1, which needs none). */
static size_t conv_col_floats(const fs_conv_shape *s)
{
    if (s->k == 1) return 0;
    return fs_cpu_pad16((size_t)s->cin * 9 * conv_band_rows(s) * s->w);
}

static size_t conv_dw_floats(const fs_conv_shape *s)
{
    return fs_cpu_pad16((size_t)s->cout * s->cin * s->k * s->k);
}

/* Workspace: the largest need of the three conv ops for this shape. */
size_t fs_cpu_conv_ws_bytes(void *ctx, const fs_conv_shape *s)
{
    const fs_cpu_ctx *c = ctx;
    if (!c || !conv_shape_ok(s)) return 0;
    size_t t = (size_t)fs_cpu_team(c, s->n);
    size_t col = conv_col_floats(s);
    size_t fwd = t * col;
    size_t filt = t * (col + conv_dw_floats(s));
    return (fwd > filt ? fwd : filt) * sizeof(float);
}

/* im2col for a 3×3 pad-1 kernel on one image x[Cin][H][W], output rows
 * [y0, y1): row (ci,i,j) of col[K][(y1−y0)·W] holds x[ci][y+i−1][x+j−1]
 * (0 outside the image) at column (y−y0)·W + x. */
static void im2col3(int cin, int h, int w, const float *restrict x, int y0, int y1,
                    float *restrict col)
{
    const size_t hw = (size_t)h * w, np = (size_t)(y1 - y0) * w;
    for (int ci = 0; ci < cin; ci++) {
        const float *xp = x + ci * hw;
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < 3; j++) {
                float *restrict row = col + ((size_t)(ci * 3 + i) * 3 + j) * np;
                for (int y = y0; y < y1; y++) {
                    int ys = y + i - 1;
                    float *restrict d = row + (size_t)(y - y0) * w;
                    if (ys < 0 || ys >= h) {
                        memset(d, 0, (size_t)w * sizeof(float));
                        continue;
                    }
                    const float *restrict sr = xp + (size_t)ys * w;
                    if (j == 1) {
                        memcpy(d, sr, (size_t)w * sizeof(float));
                    } else if (j == 0) {
                        d[0] = 0.0f;
                        memcpy(d + 1, sr, (size_t)(w - 1) * sizeof(float));
                    } else {
                        memcpy(d, sr + 1, (size_t)(w - 1) * sizeof(float));
                        d[w - 1] = 0.0f;
                    }
                }
            }
        }
    }
}

/* col2im for a 3×3 pad-1 kernel, output rows [y0, y1): the adjoint of
 * im2col3, dx += Σ rows shifted back (ACCUMULATES; bands overlap by a row). */
static void col2im3(int cin, int h, int w, const float *restrict col, int y0, int y1,
                    float *restrict dx)
{
    const size_t hw = (size_t)h * w, np = (size_t)(y1 - y0) * w;
    for (int ci = 0; ci < cin; ci++) {
        float *dp = dx + ci * hw;
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < 3; j++) {
                const float *restrict row = col + ((size_t)(ci * 3 + i) * 3 + j) * np;
                for (int y = y0; y < y1; y++) {
                    int ys = y + i - 1;
                    if (ys < 0 || ys >= h) continue;
                    const float *restrict sr = row + (size_t)(y - y0) * w;
                    float *restrict d = dp + (size_t)ys * w;
                    if (j == 1) {
                        for (int x = 0; x < w; x++) d[x] += sr[x];
                    } else if (j == 0) {
                        for (int x = 0; x < w - 1; x++) d[x] += sr[x + 1];
                    } else {
                        for (int x = 0; x < w - 1; x++) d[x + 1] += sr[x];
                    }
                }
            }
        }
    }
}

/* y = conv(x, w) + b, one image per OpenMP iteration. */
fs_status fs_cpu_conv_fwd(void *ctx, const fs_conv_shape *s, const float *x, const float *w,
                          const float *b, float *y, void *ws)
{
    fs_cpu_ctx *c = ctx;
    if (!c || !conv_shape_ok(s) || !x || !w || !b || !y || (s->k == 3 && !ws))
        return FS_ERR_ARG;
    const int n = s->n, cin = s->cin, cout = s->cout, kk = cin * s->k * s->k;
    const size_t hw = (size_t)s->h * s->w, colf = conv_col_floats(s);
    const int band = s->k == 3 ? conv_band_rows(s) : s->h;
#pragma omp parallel num_threads(fs_cpu_team(c, n))
    {
        float *col = s->k == 3 ? (float *)ws + (size_t)omp_get_thread_num() * colf : NULL;
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * cin * hw;
            float *yi = y + (size_t)i * cout * hw;
            for (int co = 0; co < cout; co++) {
                float *restrict yr = yi + co * hw;
                const float bv = b[co];
                for (size_t p = 0; p < hw; p++) yr[p] = bv;
            }
            if (s->k == 1) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, (int)hw, kk, 1.0f,
                            w, kk, xi, (int)hw, 1.0f, yi, (int)hw);
                continue;
            }
            for (int y0 = 0; y0 < s->h; y0 += band) {
                const int y1 = y0 + band < s->h ? y0 + band : s->h, np = (y1 - y0) * s->w;
                im2col3(cin, s->h, s->w, xi, y0, y1, col);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, np, kk, 1.0f, w, kk,
                            col, np, 1.0f, yi + (size_t)y0 * s->w, (int)hw);
            }
        }
    }
    return FS_OK;
}

/* dx = convᵀ(dy, w): per band a GEMM into the column buffer, then col2im
 * (for 1×1 the GEMM writes dx directly). */
fs_status fs_cpu_conv_bwd_data(void *ctx, const fs_conv_shape *s, const float *dy,
                               const float *w, float *dx, void *ws)
{
    fs_cpu_ctx *c = ctx;
    if (!c || !conv_shape_ok(s) || !dy || !w || !dx || (s->k == 3 && !ws)) return FS_ERR_ARG;
    const int n = s->n, cin = s->cin, cout = s->cout, kk = cin * s->k * s->k;
    const size_t hw = (size_t)s->h * s->w, colf = conv_col_floats(s);
    const int band = s->k == 3 ? conv_band_rows(s) : s->h;
#pragma omp parallel num_threads(fs_cpu_team(c, n))
    {
        float *col = s->k == 3 ? (float *)ws + (size_t)omp_get_thread_num() * colf : NULL;
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            const float *dyi = dy + (size_t)i * cout * hw;
            float *dxi = dx + (size_t)i * cin * hw;
            if (s->k == 1) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kk, (int)hw, cout, 1.0f, w,
                            kk, dyi, (int)hw, 0.0f, dxi, (int)hw);
                continue;
            }
            memset(dxi, 0, (size_t)cin * hw * sizeof(float));
            for (int y0 = 0; y0 < s->h; y0 += band) {
                const int y1 = y0 + band < s->h ? y0 + band : s->h, np = (y1 - y0) * s->w;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kk, np, cout, 1.0f, w, kk,
                            dyi + (size_t)y0 * s->w, (int)hw, 0.0f, col, np);
                col2im3(cin, s->h, s->w, col, y0, y1, dxi);
            }
        }
    }
    return FS_OK;
}

/* db[co] = Σ_{n,p} dy[n,co,p], parallel over channels (each sum in image
 * order, independent of the thread count). Shared with the transposed conv. */
static void bias_grad(fs_cpu_ctx *c, int n, int cout, size_t hw, const float *dy, float *db)
{
#pragma omp parallel for schedule(static) num_threads(fs_cpu_team(c, cout))
    for (int co = 0; co < cout; co++) {
        double acc = 0.0;
        for (int i = 0; i < n; i++) {
            const float *restrict r = dy + ((size_t)i * cout + co) * hw;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (size_t p = 0; p < hw; p++) sum += r[p];
            acc += sum;
        }
        db[co] = (float)acc;
    }
}

/* dw = Σ_n dy_n · col(x_n)ᵀ, db = Σ dy. Thread t accumulates its images into
 * its own partial dw; the partials are then added in thread order. */
fs_status fs_cpu_conv_bwd_filter(void *ctx, const fs_conv_shape *s, const float *x,
                                 const float *dy, float *dw, float *db, void *ws)
{
    fs_cpu_ctx *c = ctx;
    if (!c || !conv_shape_ok(s) || !x || !dy || !dw || !db || !ws) return FS_ERR_ARG;
    const int n = s->n, cin = s->cin, cout = s->cout, kk = cin * s->k * s->k;
    const size_t hw = (size_t)s->h * s->w, colf = conv_col_floats(s);
    const size_t dwf = conv_dw_floats(s), nw = (size_t)cout * kk;
    const int team = fs_cpu_team(c, n), band = s->k == 3 ? conv_band_rows(s) : s->h;
    float *parts = (float *)ws + (size_t)team * colf;
#pragma omp parallel num_threads(team)
    {
        const int t = omp_get_thread_num();
        float *col = s->k == 3 ? (float *)ws + (size_t)t * colf : NULL;
        float *part = parts + (size_t)t * dwf;
        float beta = 0.0f;
        memset(part, 0, nw * sizeof(float));
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * cin * hw;
            const float *dyi = dy + (size_t)i * cout * hw;
            if (s->k == 1) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, cout, kk, (int)hw, 1.0f, dyi,
                            (int)hw, xi, (int)hw, beta, part, kk);
                beta = 1.0f;
                continue;
            }
            for (int y0 = 0; y0 < s->h; y0 += band) {
                const int y1 = y0 + band < s->h ? y0 + band : s->h, np = (y1 - y0) * s->w;
                im2col3(cin, s->h, s->w, xi, y0, y1, col);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, cout, kk, np, 1.0f,
                            dyi + (size_t)y0 * s->w, (int)hw, col, np, beta, part, kk);
                beta = 1.0f;
            }
        }
        /* implicit barrier: every partial is complete */
#pragma omp for schedule(static)
        for (size_t e = 0; e < nw; e++) {
            float acc = parts[e];
            for (int u = 1; u < team; u++) acc += parts[(size_t)u * dwf + e];
            dw[e] = acc;
        }
    }
    bias_grad(c, n, cout, hw, dy, db);
    return FS_OK;
}

/* Target size of one thread's transposed-conv buffer, in floats (256 KiB). */
#define FS_CONVT_CHUNK_FLOATS ((size_t)1 << 16)

/* Pixels per transposed-conv chunk: as many as fit cout·4 floats each in the
 * target, at least one, at most the image. */
static size_t convt_chunk(const fs_convt_shape *s)
{
    size_t hw = (size_t)s->h * s->w, p = FS_CONVT_CHUNK_FLOATS / ((size_t)s->cout * 4);
    if (p < 1) p = 1;
    return p < hw ? p : hw;
}

/* Floats of one thread's buffer (T or gather(dy) for one chunk). */
static size_t convt_buf_floats(const fs_convt_shape *s)
{
    return fs_cpu_pad16((size_t)s->cout * 4 * convt_chunk(s));
}

/* Threads the transposed-conv ops start: forward and backward data split
 * (image, chunk) pairs, backward filter splits input channels. */
static int convt_team(const fs_cpu_ctx *c, const fs_convt_shape *s)
{
    const size_t hw = (size_t)s->h * s->w, chunk = convt_chunk(s);
    const long tasks = (long)s->n * (long)((hw + chunk - 1) / chunk);
    const int a = fs_cpu_team(c, tasks), b = fs_cpu_team(c, s->cin);
    return a > b ? a : b;
}

/* Workspace: one chunk buffer per thread, shared by the three ops. */
size_t fs_cpu_convt_ws_bytes(void *ctx, const fs_convt_shape *s)
{
    const fs_cpu_ctx *c = ctx;
    if (!c || !convt_shape_ok(s)) return 0;
    return (size_t)convt_team(c, s) * convt_buf_floats(s) * sizeof(float);
}

/* gather(dy) for pixels [p0, p0+np) of input-sized grid: g[(co·4+a·2+e)][q] =
 * dy[co][2i+a][2j+e] for pixel p0+q = (i, j). */
static void convt_gather(const fs_convt_shape *s, const float *restrict dyi, size_t p0, size_t np,
                         float *restrict g)
{
    const int w = s->w, w2 = 2 * s->w;
    const size_t ohw = (size_t)4 * s->h * s->w;
    for (int co = 0; co < s->cout; co++) {
        const float *dc = dyi + co * ohw;
        float *g0 = g + (size_t)co * 4 * np;
        for (size_t q = 0; q < np;) {
            size_t p = p0 + q;
            int i = (int)(p / w), j0 = (int)(p % w);
            int len = w - j0;
            if ((size_t)len > np - q) len = (int)(np - q);
            for (int a = 0; a < 2; a++) {
                const float *restrict src = dc + (size_t)(2 * i + a) * w2 + 2 * j0;
                float *restrict e0 = g0 + (size_t)(a * 2) * np + q;
                float *restrict e1 = g0 + (size_t)(a * 2 + 1) * np + q;
                for (int j = 0; j < len; j++) {
                    e0[j] = src[2 * j];
                    e1[j] = src[2 * j + 1];
                }
            }
            q += (size_t)len;
        }
    }
}

/* y = convt(x, w) + b. Work items are (image, pixel chunk) pairs. */
fs_status fs_cpu_convt_fwd(void *ctx, const fs_convt_shape *s, const float *x, const float *w,
                           const float *b, float *y, void *ws)
{
    fs_cpu_ctx *c = ctx;
    if (!c || !convt_shape_ok(s) || !x || !w || !b || !y || !ws) return FS_ERR_ARG;
    const int cin = s->cin, cout = s->cout, c4 = 4 * s->cout, wd = s->w, w2 = 2 * s->w;
    const size_t hw = (size_t)s->h * s->w, ohw = 4 * hw, chunk = convt_chunk(s);
    const size_t bufn = convt_buf_floats(s);
    const long nchunks = (long)((hw + chunk - 1) / chunk), tasks = (long)s->n * nchunks;
#pragma omp parallel num_threads(fs_cpu_team(c, tasks))
    {
        float *tbuf = (float *)ws + (size_t)omp_get_thread_num() * bufn;
#pragma omp for schedule(static)
        for (long task = 0; task < tasks; task++) {
            const int i = (int)(task / nchunks);
            const size_t p0 = (size_t)(task % nchunks) * chunk;
            const size_t np = p0 + chunk <= hw ? chunk : hw - p0;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c4, (int)np, cin, 1.0f, w, c4,
                        x + (size_t)i * cin * hw + p0, (int)hw, 0.0f, tbuf, (int)np);
            float *yi = y + (size_t)i * cout * ohw;
            for (int co = 0; co < cout; co++) {
                const float bv = b[co];
                for (size_t q = 0; q < np;) {
                    size_t p = p0 + q;
                    int r = (int)(p / wd), j0 = (int)(p % wd);
                    int len = wd - j0;
                    if ((size_t)len > np - q) len = (int)(np - q);
                    for (int a = 0; a < 2; a++) {
                        const float *restrict t0 = tbuf + (size_t)(co * 4 + a * 2) * np + q;
                        const float *restrict t1 = t0 + np;
                        float *restrict dst = yi + co * ohw + (size_t)(2 * r + a) * w2 + 2 * j0;
                        for (int j = 0; j < len; j++) {
                            dst[2 * j] = t0[j] + bv;
                            dst[2 * j + 1] = t1[j] + bv;
                        }
                    }
                    q += (size_t)len;
                }
            }
        }
    }
    return FS_OK;
}

/* dx = W · gather(dy), per (image, pixel chunk). */
fs_status fs_cpu_convt_bwd_data(void *ctx, const fs_convt_shape *s, const float *dy,
                                const float *w, float *dx, void *ws)
{
    fs_cpu_ctx *c = ctx;
    if (!c || !convt_shape_ok(s) || !dy || !w || !dx || !ws) return FS_ERR_ARG;
    const int cin = s->cin, c4 = 4 * s->cout;
    const size_t hw = (size_t)s->h * s->w, ohw = 4 * hw, chunk = convt_chunk(s);
    const size_t bufn = convt_buf_floats(s);
    const long nchunks = (long)((hw + chunk - 1) / chunk), tasks = (long)s->n * nchunks;
#pragma omp parallel num_threads(fs_cpu_team(c, tasks))
    {
        float *g = (float *)ws + (size_t)omp_get_thread_num() * bufn;
#pragma omp for schedule(static)
        for (long task = 0; task < tasks; task++) {
            const int i = (int)(task / nchunks);
            const size_t p0 = (size_t)(task % nchunks) * chunk;
            const size_t np = p0 + chunk <= hw ? chunk : hw - p0;
            convt_gather(s, dy + (size_t)i * s->cout * ohw, p0, np, g);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cin, (int)np, c4, 1.0f, w, c4,
                        g, (int)np, 0.0f, dx + (size_t)i * cin * hw + p0, (int)hw);
        }
    }
    return FS_OK;
}

/* dw = Σ_n x_n · gather(dy_n)ᵀ, split over rows of dw (input channels): every
 * thread walks all images and chunks in order for its rows, so the result
 * needs no cross-thread reduction. db = Σ dy. */
fs_status fs_cpu_convt_bwd_filter(void *ctx, const fs_convt_shape *s, const float *x,
                                  const float *dy, float *dw, float *db, void *ws)
{
    fs_cpu_ctx *c = ctx;
    if (!c || !convt_shape_ok(s) || !x || !dy || !dw || !db || !ws) return FS_ERR_ARG;
    const int cin = s->cin, c4 = 4 * s->cout;
    const size_t hw = (size_t)s->h * s->w, ohw = 4 * hw, chunk = convt_chunk(s);
    const size_t bufn = convt_buf_floats(s);
    const int team = fs_cpu_team(c, cin);
#pragma omp parallel num_threads(team)
    {
        const int t = omp_get_thread_num();
        const int r0 = (int)((long)cin * t / team), r1 = (int)((long)cin * (t + 1) / team);
        float *g = (float *)ws + (size_t)t * bufn;
        float beta = 0.0f;
        for (int i = 0; i < s->n && r1 > r0; i++) {
            for (size_t p0 = 0; p0 < hw; p0 += chunk) {
                const size_t np = p0 + chunk <= hw ? chunk : hw - p0;
                convt_gather(s, dy + (size_t)i * s->cout * ohw, p0, np, g);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, c4, (int)np, 1.0f,
                            x + ((size_t)i * cin + r0) * hw + p0, (int)hw, g, (int)np, beta,
                            dw + (size_t)r0 * c4, c4);
                beta = 1.0f;
            }
        }
    }
    bias_grad(c, s->n, s->cout, ohw, dy, db);
    return FS_OK;
}
