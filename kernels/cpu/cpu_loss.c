/*
 * kernels/cpu/cpu_loss.c — softmax + cross-entropy + soft Dice loss (forward
 * and backward in one op) and the Adam step (with FedProx's proximal term).
 *
 * Layout: logits and dlogits N×K×HW (NCHW with K class channels), labels N×HW
 * uint8. The loss runs in two passes. Pass 1, per image: softmax p (stored in
 * dlogits), −log p[label], I_k = Σ p·y and D_k = Σ p + Σ y as per-image
 * partial sums in double in the workspace (n × (2K+1) doubles); the partials
 * are then added in image order, so the loss does not depend on the thread
 * count. Pass 2 overwrites dlogits with the gradient
 *   ∂loss/∂l_j = p_j·(G_j − Σ_c p_c·G_c) + (p_j − y_j)/(N·HW),
 *   G_c = ∂(1 − dice)/∂p_c = (d_c − 2·y_c) / (K·(D_c + smooth)),
 * where d_c = (2 I_c + smooth)/(D_c + smooth).
 *
 * Adam follows torch.optim.Adam: bias corrections in double, then
 * w −= (lr/bc1) · m / (sqrt(v)/sqrt(bc2) + eps).
 *
 * Tested by tests/test_kernels_fd.c (finite differences, a double-precision
 * loss reference, a hand-computed two-step Adam reference, label checks).
 */
#include <math.h>
#include <string.h>
#include "cpu_internal.h"

#define FS_CPU_MAX_CLASSES 256

size_t fs_cpu_loss_ws_bytes(void *ctx, int n, int k, int hw)
{
    if (n <= 0 || k <= 0) return 0;
    return (size_t)n * (2 * (size_t)k + 1) * sizeof(double);
}

/* Loss value and gradient; FS_ERR_ARG (nothing written) when a label ≥ k. */
fs_status fs_cpu_loss_fwd_bwd(void *ctx, int n, int k, int hw, const float *logits,
                              const uint8_t *labels, float smooth, float *loss,
                              float *dlogits, void *ws)
{
    fs_cpu_ctx *cx = ctx;
    if (!cx || n <= 0 || k <= 0 || k > FS_CPU_MAX_CLASSES || hw <= 0 || !logits || !labels ||
        !loss || !dlogits || !ws)
        return FS_ERR_ARG;
    const size_t total = (size_t)n * hw;
    int bad = 0;
    for (size_t i = 0; i < total; i++) bad |= labels[i] >= k;
    if (bad) return FS_ERR_ARG;

    double *part = ws; /* per image: I[k], D[k], ce */
    const size_t stride = 2 * (size_t)k + 1;
#pragma omp parallel for schedule(static) num_threads(fs_cpu_team(cx, n))
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * k * hw;
        const uint8_t *lab = labels + (size_t)i * hw;
        float *p = dlogits + (size_t)i * k * hw;
        double *ip = part + (size_t)i * stride, *dp = ip + k, ce = 0.0;
        float e[FS_CPU_MAX_CLASSES];
        for (int c = 0; c < k; c++) ip[c] = dp[c] = 0.0;
        for (int q = 0; q < hw; q++) {
            float m = l[q];
            for (int c = 1; c < k; c++) m = fmaxf(m, l[(size_t)c * hw + q]);
            float s = 0.0f;
            for (int c = 0; c < k; c++) {
                e[c] = expf(l[(size_t)c * hw + q] - m);
                s += e[c];
            }
            const float inv = 1.0f / s;
            for (int c = 0; c < k; c++) {
                float pc = e[c] * inv;
                p[(size_t)c * hw + q] = pc;
                dp[c] += pc;
            }
            const int y = lab[q];
            ip[y] += p[(size_t)y * hw + q];
            dp[y] += 1.0;
            ce += (double)m + log((double)s) - (double)l[(size_t)y * hw + q];
        }
        ip[2 * k] = ce;
    }

    /* Reduce the per-image partials in image order. */
    double inter[FS_CPU_MAX_CLASSES], den[FS_CPU_MAX_CLASSES], ce = 0.0;
    for (int c = 0; c < k; c++) inter[c] = den[c] = 0.0;
    for (int i = 0; i < n; i++) {
        const double *ip = part + (size_t)i * stride;
        for (int c = 0; c < k; c++) {
            inter[c] += ip[c];
            den[c] += ip[k + c];
        }
        ce += ip[2 * k];
    }
    float ga[FS_CPU_MAX_CLASSES], gb[FS_CPU_MAX_CLASSES]; /* G_c = ga[c] − gb[c]·y_c */
    double dice = 0.0;
    for (int c = 0; c < k; c++) {
        const double dd = den[c] + smooth, dc = (2.0 * inter[c] + smooth) / dd;
        dice += dc;
        ga[c] = (float)(dc / (k * dd));
        gb[c] = (float)(2.0 / (k * dd));
    }
    dice /= k;
    loss[0] = (float)(ce / (double)total + 1.0 - dice);

    const float inv_total = (float)(1.0 / (double)total);
#pragma omp parallel for schedule(static) num_threads(fs_cpu_team(cx, n))
    for (int i = 0; i < n; i++) {
        const uint8_t *lab = labels + (size_t)i * hw;
        float *p = dlogits + (size_t)i * k * hw;
        for (int q = 0; q < hw; q++) {
            const int y = lab[q];
            float spg = 0.0f;
            for (int c = 0; c < k; c++) spg += p[(size_t)c * hw + q] * ga[c];
            spg -= p[(size_t)y * hw + q] * gb[y];
            for (int c = 0; c < k; c++) {
                const float pc = p[(size_t)c * hw + q], yc = c == y ? 1.0f : 0.0f;
                const float g = ga[c] - gb[c] * yc;
                p[(size_t)c * hw + q] = pc * (g - spg) + (pc - yc) * inv_total;
            }
        }
    }
    return FS_OK;
}

/* One Adam step over count floats; increments state[0] (the step count). */
fs_status fs_cpu_adam_step(void *ctx, size_t count, float *w, const float *g, float *m,
                           float *v, const float *w_ref, fs_adam_hp hp, float *state)
{
    fs_cpu_ctx *cx = ctx;
    if (!cx || !state || (count > 0 && (!w || !g || !m || !v)) ||
        (hp.mu != 0.0f && count > 0 && !w_ref))
        return FS_ERR_ARG;
    const float t = state[0] + 1.0f;
    state[0] = t;
    const double bc1 = 1.0 - pow((double)hp.beta1, (double)t);
    const double bc2 = 1.0 - pow((double)hp.beta2, (double)t);
    const float step = (float)((double)hp.lr / bc1), bc2s = (float)sqrt(bc2);
    const float b1 = hp.beta1, b2 = hp.beta2, eps = hp.eps, mu = hp.mu;
    const float a1 = 1.0f - b1, a2 = 1.0f - b2;
    float *restrict wr = w, *restrict mr = m, *restrict vr = v;
    const float *restrict gr = g, *restrict ref = w_ref;
    const long tasks = (long)((count + 65535) / 65536);
#pragma omp parallel for simd schedule(static) num_threads(fs_cpu_team(cx, tasks))
    for (size_t i = 0; i < count; i++) {
        float gi = gr[i];
        if (mu != 0.0f) gi += mu * (wr[i] - ref[i]);
        const float mi = b1 * mr[i] + a1 * gi;
        const float vi = b2 * vr[i] + a2 * gi * gi;
        mr[i] = mi;
        vr[i] = vi;
        wr[i] -= step * mi / (sqrtf(vi) / bc2s + eps);
    }
    return FS_OK;
}
