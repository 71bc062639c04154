/*
 * kernels/cpu/cpu_norm.c — fused instance norm (affine) + LeakyReLU, 2×2
 * max-pool and channel concatenation on the CPU.
 *
 * Layout: NCHW; a "plane" is the hw = H·W contiguous values of one (n, c).
 * Instance norm works plane by plane: mean and biased variance in two passes
 * (float SIMD sums over blocks of 512, blocks added in double), then z = γ·(x − mean)·rstd + β and
 * y = z > 0 ? z : slope·z. Backward recomputes z from x and the saved mean and
 * rstd, and uses dx = γ·rstd·(dz − mean(dz) − x̂·mean(dz·x̂)) with
 * dz = dy·(z > 0 ? 1 : slope); dγ, dβ are summed over images in image order
 * (the loop is split over channels), so they do not depend on the thread count.
 *
 * Tested by tests/test_kernels_fd.c (finite differences; the max-pool tie
 * rule; concat_bwd accumulating into db).
 */
#include <math.h>
#include <string.h>
#include "cpu_internal.h"

/* Σ x and Σ (x − mu)² over one plane: float SIMD sums over blocks of
 * FS_NORM_BLOCK values, added up in double (accurate and vectorisable). */
#define FS_NORM_BLOCK 512

static double plane_sum(const float *restrict x, int hw)
{
    double s = 0.0;
    for (int k0 = 0; k0 < hw; k0 += FS_NORM_BLOCK) {
        const int k1 = k0 + FS_NORM_BLOCK < hw ? k0 + FS_NORM_BLOCK : hw;
        float b = 0.0f;
#pragma omp simd reduction(+ : b)
        for (int k = k0; k < k1; k++) b += x[k];
        s += b;
    }
    return s;
}

static double plane_sqdev(const float *restrict x, int hw, float mu)
{
    double s = 0.0;
    for (int k0 = 0; k0 < hw; k0 += FS_NORM_BLOCK) {
        const int k1 = k0 + FS_NORM_BLOCK < hw ? k0 + FS_NORM_BLOCK : hw;
        float b = 0.0f;
#pragma omp simd reduction(+ : b)
        for (int k = k0; k < k1; k++) {
            float d = x[k] - mu;
            b += d * d;
        }
        s += b;
    }
    return s;
}

/* Per plane: mean, rstd, then y. Planes are split between threads. */
fs_status fs_cpu_norm_act_fwd(void *ctx, int n, int c, int hw, const float *x,
                              const float *gamma, const float *beta, float eps, float slope,
                              float *y, float *mean, float *rstd)
{
    fs_cpu_ctx *cx = ctx;
    if (!cx || n <= 0 || c <= 0 || hw <= 0 || !x || !gamma || !beta || !y || !mean || !rstd ||
        !(eps >= 0.0f))
        return FS_ERR_ARG;
    const long planes = (long)n * c;
#pragma omp parallel for schedule(static) num_threads(fs_cpu_team(cx, planes))
    for (long pl = 0; pl < planes; pl++) {
        const float *restrict xp = x + (size_t)pl * hw;
        float *restrict yp = y + (size_t)pl * hw;
        const double mu = plane_sum(xp, hw) / hw;
        /* deviations from the float mean: the value backward will use */
        const float muf = (float)mu;
        const double var = plane_sqdev(xp, hw, muf) / hw;
        const float rsf = (float)(1.0 / sqrt(var + (double)eps));
        mean[pl] = muf;
        rstd[pl] = rsf;
        const int ch = (int)(pl % c);
        const float g = gamma[ch], bt = beta[ch];
        /* LeakyReLU written as a max (slope ≤ 1) or min (slope > 1) of z and
         * slope·z: the same value as z > 0 ? z : slope·z (NaN propagates), in
         * a form GCC vectorises without -fno-trapping-math. */
        if (slope <= 1.0f) {
            for (int i = 0; i < hw; i++) {
                float z = g * ((xp[i] - muf) * rsf) + bt, zn = slope * z;
                yp[i] = z > zn ? z : zn;
            }
        } else {
            for (int i = 0; i < hw; i++) {
                float z = g * ((xp[i] - muf) * rsf) + bt, zn = slope * z;
                yp[i] = z < zn ? z : zn;
            }
        }
    }
    return FS_OK;
}

/* The CPU backward keeps its sums in registers and dx: no workspace. */
size_t fs_cpu_norm_ws_bytes(void *ctx, int n, int c, int hw)
{
    (void)ctx; (void)n; (void)c; (void)hw;
    return 0;
}

/* dx, dγ, dβ for the fused op; threads split the channels. Pass 1 stores
 * dz in dx and sums dz and dz·x̂ (blocked like plane_sum); pass 2 turns dx
 * into the input gradient in place. ws is unused (its size is 0). */
fs_status fs_cpu_norm_act_bwd(void *ctx, int n, int c, int hw, const float *x,
                              const float *gamma, const float *beta, float slope,
                              const float *mean, const float *rstd, const float *dy,
                              float *dx, float *dgamma, float *dbeta, void *ws)
{
    (void)ws;
    fs_cpu_ctx *cx = ctx;
    if (!cx || n <= 0 || c <= 0 || hw <= 0 || !x || !gamma || !beta || !mean || !rstd || !dy ||
        !dx || !dgamma || !dbeta)
        return FS_ERR_ARG;
#pragma omp parallel for schedule(static) num_threads(fs_cpu_team(cx, c))
    for (int ch = 0; ch < c; ch++) {
        double sum_dg = 0.0, sum_db = 0.0;
        for (int i = 0; i < n; i++) {
            const size_t pl = (size_t)i * c + ch;
            const float *restrict xp = x + pl * hw;
            const float *restrict dyp = dy + pl * hw;
            float *restrict dxp = dx + pl * hw;
            const float mu = mean[pl], rs = rstd[pl], g = gamma[ch], bt = beta[ch];
            double s_dz = 0.0, s_dzx = 0.0;
            for (int k0 = 0; k0 < hw; k0 += FS_NORM_BLOCK) {
                const int k1 = k0 + FS_NORM_BLOCK < hw ? k0 + FS_NORM_BLOCK : hw;
                float b_dz = 0.0f, b_dzx = 0.0f;
#pragma omp simd reduction(+ : b_dz, b_dzx)
                for (int k = k0; k < k1; k++) {
                    float xh = (xp[k] - mu) * rs;
                    float z = g * xh + bt;
                    float dz = (z > 0.0f ? 1.0f : slope) * dyp[k];
                    dxp[k] = dz;
                    b_dz += dz;
                    b_dzx += dz * xh;
                }
                s_dz += b_dz;
                s_dzx += b_dzx;
            }
            sum_db += s_dz;
            sum_dg += s_dzx;
            const float m_dz = (float)(s_dz / hw), m_dzx = (float)(s_dzx / hw);
            const float k0 = g * rs;
            for (int k = 0; k < hw; k++) {
                float xh = (xp[k] - mu) * rs;
                dxp[k] = k0 * (dxp[k] - m_dz - xh * m_dzx);
            }
        }
        dgamma[ch] = (float)sum_dg;
        dbeta[ch] = (float)sum_db;
    }
    return FS_OK;
}

/* y = max over each 2×2 window. */
fs_status fs_cpu_maxpool_fwd(void *ctx, int n, int c, int h, int w, const float *x, float *y)
{
    fs_cpu_ctx *cx = ctx;
    if (!cx || n <= 0 || c <= 0 || h <= 0 || w <= 0 || (h & 1) || (w & 1) || !x || !y)
        return FS_ERR_ARG;
    const long planes = (long)n * c;
    const int oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static) num_threads(fs_cpu_team(cx, planes))
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * h * w;
        float *yp = y + (size_t)pl * oh * ow;
        for (int i = 0; i < oh; i++) {
            const float *restrict r0 = xp + (size_t)(2 * i) * w;
            const float *restrict r1 = r0 + w;
            float *restrict o = yp + (size_t)i * ow;
            for (int j = 0; j < ow; j++) {
                float m = r0[2 * j];
                if (r0[2 * j + 1] > m) m = r0[2 * j + 1];
                if (r1[2 * j] > m) m = r1[2 * j];
                if (r1[2 * j + 1] > m) m = r1[2 * j + 1];
                o[j] = m;
            }
        }
    }
    return FS_OK;
}

/* dx: each window's dy to its first maximum in row-major order, 0 elsewhere. */
fs_status fs_cpu_maxpool_bwd(void *ctx, int n, int c, int h, int w, const float *x,
                             const float *dy, float *dx)
{
    fs_cpu_ctx *cx = ctx;
    if (!cx || n <= 0 || c <= 0 || h <= 0 || w <= 0 || (h & 1) || (w & 1) || !x || !dy || !dx)
        return FS_ERR_ARG;
    const long planes = (long)n * c;
    const int oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static) num_threads(fs_cpu_team(cx, planes))
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * h * w;
        const float *dyp = dy + (size_t)pl * oh * ow;
        float *dxp = dx + (size_t)pl * h * w;
        for (int i = 0; i < oh; i++) {
            const float *restrict r0 = xp + (size_t)(2 * i) * w;
            const float *restrict r1 = r0 + w;
            float *restrict d0 = dxp + (size_t)(2 * i) * w;
            float *restrict d1 = d0 + w;
            for (int j = 0; j < ow; j++) {
                float m = r0[2 * j];
                int arg = 0;
                if (r0[2 * j + 1] > m) { m = r0[2 * j + 1]; arg = 1; }
                if (r1[2 * j] > m) { m = r1[2 * j]; arg = 2; }
                if (r1[2 * j + 1] > m) arg = 3;
                const float g = dyp[(size_t)i * ow + j];
                d0[2 * j] = arg == 0 ? g : 0.0f;
                d0[2 * j + 1] = arg == 1 ? g : 0.0f;
                d1[2 * j] = arg == 2 ? g : 0.0f;
                d1[2 * j + 1] = arg == 3 ? g : 0.0f;
            }
        }
    }
    return FS_OK;
}

/* y = [a ; b] along channels, image by image. */
fs_status fs_cpu_concat_fwd(void *ctx, int n, int ca, int cb, int hw, const float *a,
                            const float *b, float *y)
{
    fs_cpu_ctx *cx = ctx;
    if (!cx || n <= 0 || ca <= 0 || cb <= 0 || hw <= 0 || !a || !b || !y) return FS_ERR_ARG;
    const size_t sa = (size_t)ca * hw, sb = (size_t)cb * hw;
#pragma omp parallel for schedule(static) num_threads(fs_cpu_team(cx, n))
    for (int i = 0; i < n; i++) {
        float *yi = y + (size_t)i * (sa + sb);
        memcpy(yi, a + (size_t)i * sa, sa * sizeof(float));
        memcpy(yi + sa, b + (size_t)i * sb, sb * sizeof(float));
    }
    return FS_OK;
}

/* da = dy[:, :ca] (overwritten); db += dy[:, ca:] (accumulated). */
fs_status fs_cpu_concat_bwd(void *ctx, int n, int ca, int cb, int hw, const float *dy,
                            float *da, float *db)
{
    fs_cpu_ctx *cx = ctx;
    if (!cx || n <= 0 || ca <= 0 || cb <= 0 || hw <= 0 || !dy || !da || !db) return FS_ERR_ARG;
    const size_t sa = (size_t)ca * hw, sb = (size_t)cb * hw;
#pragma omp parallel for schedule(static) num_threads(fs_cpu_team(cx, n))
    for (int i = 0; i < n; i++) {
        const float *restrict src = dy + (size_t)i * (sa + sb);
        memcpy(da + (size_t)i * sa, src, sa * sizeof(float));
        float *restrict d = db + (size_t)i * sb;
        const float *restrict s2 = src + sa;
        for (size_t k = 0; k < sb; k++) d[k] += s2[k];
    }
    return FS_OK;
}
