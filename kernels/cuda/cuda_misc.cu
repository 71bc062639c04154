/*
 * kernels/cuda/cuda_misc.cu — the memory-bound ops on the GPU: 2×2 max-pool
 * forward / backward, channel concatenation forward / backward, and Adam.
 *
 * Layout: NCHW (N images, C channels, H×W planes, hw = H·W). Every kernel is a
 * grid-stride loop with one thread per output item, so each output element is
 * written by exactly one thread (no races, no atomics).
 *   max-pool: one thread per 2×2 window; the maximum is found with strict '>'
 *     in the order top-left, top-right, bottom-left, bottom-right, so the
 *     backward pass sends dy to the FIRST maximum, as the CPU does, and writes
 *     all four dx entries of its window (full overwrite).
 *   concat: copies; when hw % 4 == 0 and all pointers are 16-byte aligned the
 *     copies move float4s (channel boundaries then fall on float4 boundaries).
 *   Adam: element-wise, float4 when aligned. The step count lives in device
 *     memory (state[0]); the update kernel reads t, a one-thread kernel queued
 *     after it increments state[0], so no thread can see a half-updated t and
 *     the host never reads it (the step can be captured in a CUDA graph).
 *
 * Tested by tests/test_cuda_parity.c.
 */
#include "cuda_internal.h"

/* ---- max-pool ------------------------------------------------------------ */

/* Index (0..3) of the first maximum of a window, and the maximum. */
__device__ __forceinline__ int window_argmax(const float *r0, const float *r1, float *mx)
{
    float m = r0[0];
    int arg = 0;
    if (r0[1] > m) { m = r0[1]; arg = 1; }
    if (r1[0] > m) { m = r1[0]; arg = 2; }
    if (r1[1] > m) { m = r1[1]; arg = 3; }
    *mx = m;
    return arg;
}

__global__ void maxpool_fwd_kernel(unsigned total, int h, int w, const float *__restrict__ x,
                                   float *__restrict__ y)
{
    const unsigned oh = (unsigned)h / 2u, ow = (unsigned)w / 2u;
    for (unsigned o = blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += gridDim.x * blockDim.x) {
        const unsigned j = o % ow;
        const unsigned t = o / ow;
        const unsigned i = t % oh, plane = t / oh;
        const float *r0 = x + (size_t)plane * h * w + (size_t)(2u * i) * w + 2u * j;
        float m;
        window_argmax(r0, r0 + w, &m);
        y[o] = m;
    }
}

__global__ void maxpool_bwd_kernel(unsigned total, int h, int w, const float *__restrict__ x,
                                   const float *__restrict__ dy, float *__restrict__ dx)
{
    const unsigned oh = (unsigned)h / 2u, ow = (unsigned)w / 2u;
    for (unsigned o = blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += gridDim.x * blockDim.x) {
        const unsigned j = o % ow;
        const unsigned t = o / ow;
        const unsigned i = t % oh, plane = t / oh;
        const size_t base = (size_t)plane * h * w + (size_t)(2u * i) * w + 2u * j;
        float m;
        const int arg = window_argmax(x + base, x + base + w, &m);
        const float g = dy[o];
        dx[base] = arg == 0 ? g : 0.0f;
        dx[base + 1] = arg == 1 ? g : 0.0f;
        dx[base + w] = arg == 2 ? g : 0.0f;
        dx[base + w + 1] = arg == 3 ? g : 0.0f;
    }
}

static fs_status pool_check(fs_cuda_ctx *c, int n, int ch, int h, int w, const char *what)
{
    if (!c || n <= 0 || ch <= 0 || h <= 0 || w <= 0 || (h & 1) || (w & 1) ||
        (size_t)n * ch * h * w > FS_CUDA_MAX_ELEMS)
        return FS_BAD(FS_ERR_ARG, what);
    return fs_cuda_enter(c);
}

fs_status fs_cuda_maxpool_fwd(void *ctx, int n, int c, int h, int w, const float *x, float *y)
{
    fs_cuda_ctx *cx = (fs_cuda_ctx *)ctx;
    FS_TRY(pool_check(cx, n, c, h, w, "maxpool_fwd: bad shape (h and w must be even)"));
    if (!x || !y) return FS_BAD(FS_ERR_ARG, "maxpool_fwd: NULL buffer");
    const size_t total = (size_t)n * c * (h / 2) * (w / 2);
    maxpool_fwd_kernel<<<fs_cuda_blocks(total, 256), 256, 0, cx->stream>>>((unsigned)total, h, w,
                                                                            x, y);
    FS_LAUNCHED();
    return FS_OK;
}

fs_status fs_cuda_maxpool_bwd(void *ctx, int n, int c, int h, int w, const float *x,
                              const float *dy, float *dx)
{
    fs_cuda_ctx *cx = (fs_cuda_ctx *)ctx;
    FS_TRY(pool_check(cx, n, c, h, w, "maxpool_bwd: bad shape (h and w must be even)"));
    if (!x || !dy || !dx) return FS_BAD(FS_ERR_ARG, "maxpool_bwd: NULL buffer");
    const size_t total = (size_t)n * c * (h / 2) * (w / 2);
    maxpool_bwd_kernel<<<fs_cuda_blocks(total, 256), 256, 0, cx->stream>>>((unsigned)total, h, w,
                                                                            x, dy, dx);
    FS_LAUNCHED();
    return FS_OK;
}

/* ---- concat -------------------------------------------------------------- */

__device__ __forceinline__ float add_item(float a, float b) { return a + b; }
__device__ __forceinline__ float4 add_item(float4 a, float4 b)
{
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

/* y[n] = [a[n] ; b[n]]; sa, sb = items per image of a and b (T = float or float4). */
template <typename T>
__global__ void concat_fwd_kernel(unsigned total, unsigned sa, unsigned sb,
                                  const T *__restrict__ a, const T *__restrict__ b,
                                  T *__restrict__ y)
{
    const unsigned s = sa + sb;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        const unsigned n = i / s, r = i - n * s;
        y[i] = r < sa ? a[(size_t)n * sa + r] : b[(size_t)n * sb + (r - sa)];
    }
}

/* da[n] = dy[n][:sa]; db[n] += dy[n][sa:]. */
template <typename T>
__global__ void concat_bwd_kernel(unsigned total, unsigned sa, unsigned sb,
                                  const T *__restrict__ dy, T *__restrict__ da,
                                  T *__restrict__ db)
{
    const unsigned s = sa + sb;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        const unsigned n = i / s, r = i - n * s;
        if (r < sa) {
            da[(size_t)n * sa + r] = dy[i];
        } else {
            const size_t k = (size_t)n * sb + (r - sa);
            db[k] = add_item(db[k], dy[i]);
        }
    }
}

static fs_status concat_check(fs_cuda_ctx *c, int n, int ca, int cb, int hw, const char *what)
{
    if (!c || n <= 0 || ca <= 0 || cb <= 0 || hw <= 0 ||
        (size_t)n * ((size_t)ca + cb) * hw > FS_CUDA_MAX_ELEMS)
        return FS_BAD(FS_ERR_ARG, what);
    return fs_cuda_enter(c);
}

fs_status fs_cuda_concat_fwd(void *ctx, int n, int ca, int cb, int hw, const float *a,
                             const float *b, float *y)
{
    fs_cuda_ctx *cx = (fs_cuda_ctx *)ctx;
    FS_TRY(concat_check(cx, n, ca, cb, hw, "concat_fwd: bad shape"));
    if (!a || !b || !y) return FS_BAD(FS_ERR_ARG, "concat_fwd: NULL buffer");
    const bool vec = hw % 4 == 0 && fs_cuda_aligned16(a) && fs_cuda_aligned16(b) &&
                     fs_cuda_aligned16(y);
    const unsigned v = vec ? 4u : 1u;
    const unsigned sa = (unsigned)ca * (unsigned)hw / v, sb = (unsigned)cb * (unsigned)hw / v;
    const unsigned total = (unsigned)n * (sa + sb);
    const unsigned blocks = fs_cuda_blocks(total, 256);
    if (vec)
        concat_fwd_kernel<float4><<<blocks, 256, 0, cx->stream>>>(
            total, sa, sb, (const float4 *)a, (const float4 *)b, (float4 *)y);
    else
        concat_fwd_kernel<float><<<blocks, 256, 0, cx->stream>>>(total, sa, sb, a, b, y);
    FS_LAUNCHED();
    return FS_OK;
}

fs_status fs_cuda_concat_bwd(void *ctx, int n, int ca, int cb, int hw, const float *dy,
                             float *da, float *db)
{
    fs_cuda_ctx *cx = (fs_cuda_ctx *)ctx;
    FS_TRY(concat_check(cx, n, ca, cb, hw, "concat_bwd: bad shape"));
    if (!dy || !da || !db) return FS_BAD(FS_ERR_ARG, "concat_bwd: NULL buffer");
    const bool vec = hw % 4 == 0 && fs_cuda_aligned16(dy) && fs_cuda_aligned16(da) &&
                     fs_cuda_aligned16(db);
    const unsigned v = vec ? 4u : 1u;
    const unsigned sa = (unsigned)ca * (unsigned)hw / v, sb = (unsigned)cb * (unsigned)hw / v;
    const unsigned total = (unsigned)n * (sa + sb);
    const unsigned blocks = fs_cuda_blocks(total, 256);
    if (vec)
        concat_bwd_kernel<float4><<<blocks, 256, 0, cx->stream>>>(
            total, sa, sb, (const float4 *)dy, (float4 *)da, (float4 *)db);
    else
        concat_bwd_kernel<float><<<blocks, 256, 0, cx->stream>>>(total, sa, sb, dy, da, db);
    FS_LAUNCHED();
    return FS_OK;
}

/* ---- Adam ---------------------------------------------------------------- */

/* Bias-corrected step constants for step t' (PyTorch's formulation, as the
 * CPU computes them): step = lr / (1 − b1^t'), c2 = sqrt(1 − b2^t'). */
struct adam_k {
    float b1, b2, eps, mu, step, c2;
};

/* One element: g' = g + mu·(w − w_ref); m, v moments; w −= step·m / (sqrt(v)/c2 + eps). */
__device__ __forceinline__ void adam_one(const adam_k &k, float &w, float g, float &m, float &v,
                                         const float *wr)
{
    if (wr) g += k.mu * (w - *wr);
    m = k.b1 * m + (1.0f - k.b1) * g;
    v = k.b2 * v + (1.0f - k.b2) * g * g;
    w -= k.step * m / (sqrtf(v) / k.c2 + k.eps);
}

__device__ __forceinline__ adam_k adam_consts(float lr, float b1, float b2, float eps, float mu,
                                              const float *state)
{
    /* In double, like the CPU: 1 − b2^t loses most of a float's digits. */
    const double t = (double)(state[0] + 1.0f);
    adam_k k;
    k.b1 = b1;
    k.b2 = b2;
    k.eps = eps;
    k.mu = mu;
    k.step = (float)((double)lr / (1.0 - pow((double)b1, t)));
    k.c2 = (float)sqrt(1.0 - pow((double)b2, t));
    return k;
}

/* Scalar version over [0, count). wr may be NULL (no proximal term). */
__global__ void adam_kernel(unsigned long long count, float *__restrict__ w,
                            const float *__restrict__ g, float *__restrict__ m,
                            float *__restrict__ v, const float *__restrict__ wr, float lr,
                            float b1, float b2, float eps, float mu, const float *state)
{
    const adam_k k = adam_consts(lr, b1, b2, eps, mu, state);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < count; i += (unsigned long long)gridDim.x * blockDim.x) {
        float wi = w[i], mi = m[i], vi = v[i];
        adam_one(k, wi, g[i], mi, vi, wr ? wr + i : NULL);
        w[i] = wi;
        m[i] = mi;
        v[i] = vi;
    }
}

/* float4 version over [0, count4·4); the caller runs the scalar kernel on the tail. */
__global__ void adam4_kernel(unsigned long long count4, float4 *__restrict__ w,
                             const float4 *__restrict__ g, float4 *__restrict__ m,
                             float4 *__restrict__ v, const float4 *__restrict__ wr, float lr,
                             float b1, float b2, float eps, float mu, const float *state)
{
    const adam_k k = adam_consts(lr, b1, b2, eps, mu, state);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < count4; i += (unsigned long long)gridDim.x * blockDim.x) {
        float4 wi = w[i], mi = m[i], vi = v[i];
        const float4 gi = g[i];
        float4 ri = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (wr) ri = wr[i];
        adam_one(k, wi.x, gi.x, mi.x, vi.x, wr ? &ri.x : NULL);
        adam_one(k, wi.y, gi.y, mi.y, vi.y, wr ? &ri.y : NULL);
        adam_one(k, wi.z, gi.z, mi.z, vi.z, wr ? &ri.z : NULL);
        adam_one(k, wi.w, gi.w, mi.w, vi.w, wr ? &ri.w : NULL);
        w[i] = wi;
        m[i] = mi;
        v[i] = vi;
    }
}

__global__ void adam_bump_kernel(float *state) { state[0] += 1.0f; }

fs_status fs_cuda_adam_step(void *ctx, size_t count, float *w, const float *g, float *m,
                            float *v, const float *w_ref, fs_adam_hp hp, float *state)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || !state) return FS_BAD(FS_ERR_ARG, "adam_step: NULL context or state");
    if (count && (!w || !g || !m || !v)) return FS_BAD(FS_ERR_ARG, "adam_step: NULL buffer");
    if (hp.mu != 0.0f && !w_ref) return FS_BAD(FS_ERR_ARG, "adam_step: mu != 0 needs w_ref");
    FS_TRY(fs_cuda_enter(c));
    const float *wr = hp.mu != 0.0f ? w_ref : NULL;
    if (count) {
        const bool vec = fs_cuda_aligned16(w) && fs_cuda_aligned16(g) && fs_cuda_aligned16(m) &&
                         fs_cuda_aligned16(v) && (!wr || fs_cuda_aligned16(wr));
        size_t done = 0;
        if (vec && count >= 4) {
            const size_t c4 = count / 4;
            adam4_kernel<<<fs_cuda_blocks(c4, 256), 256, 0, c->stream>>>(
                c4, (float4 *)w, (const float4 *)g, (float4 *)m, (float4 *)v,
                (const float4 *)wr, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.mu, state);
            FS_LAUNCHED();
            done = c4 * 4;
        }
        if (done < count) {
            const size_t rest = count - done;
            adam_kernel<<<fs_cuda_blocks(rest, 256), 256, 0, c->stream>>>(
                rest, w + done, g + done, m + done, v + done, wr ? wr + done : NULL, hp.lr,
                hp.beta1, hp.beta2, hp.eps, hp.mu, state);
            FS_LAUNCHED();
        }
    }
    adam_bump_kernel<<<1, 1, 0, c->stream>>>(state);
    FS_LAUNCHED();
    return FS_OK;
}
