/*
 * kernels/cuda/cuda_norm.cu — fused instance norm (affine) + LeakyReLU on the
 * GPU, forward and backward.
 *
 * Layout: NCHW; a plane is the hw contiguous values of one (n, c). One thread
 * block per plane, its size chosen from hw (≈ 8 values per thread, 32 … 1024
 * threads), so both 128×128 planes (16384 values) and 2×2 planes (4 values)
 * keep the block busy without idle warps beyond the first. Reductions are
 * warp shuffles then one shared-memory step (fs_block_sum: fixed order, so
 * results are deterministic). When hw is a multiple of 4 and the buffers are
 * 16-byte aligned the loops use float4 loads and stores.
 *
 * Forward: mean, then the biased variance as a second pass over (x − mean)²
 * (the plane is re-read from L1/L2, not DRAM), rstd = 1/sqrt(var + eps),
 * z = γ·((x − mean)·rstd) + β exactly as the CPU writes it, y = LeakyReLU(z).
 * Backward: per plane Σdz and Σdz·x̂ (dz = dy·(z > 0 ? 1 : slope), z recomputed
 * from the saved mean / rstd), dx = γ·rstd·(dz − mean(dz) − x̂·mean(dz·x̂));
 * the per-plane sums go to the caller's workspace (2 floats per plane,
 * fs_cuda_norm_ws_bytes) and a second kernel adds them over images in image
 * order for dγ, dβ (no atomics: deterministic).
 *
 * Tested by tests/test_cuda_parity.c.
 */
#include "cuda_internal.h"

/* Threads per block for a plane of hw values: ~8 values each, a multiple of
 * 32 between 32 and 1024. */
static int plane_threads(int hw)
{
    int t = (hw + 7) / 8;
    t = (t + 31) / 32 * 32;
    if (t < 32) t = 32;
    if (t > 1024) t = 1024;
    return t;
}

/* Loads four consecutive values (VEC) or one; the count `m` of items is hw/4
 * or hw respectively. */
template <bool VEC>
__device__ __forceinline__ float4 load_item(const float *p, int i)
{
    if (VEC) return reinterpret_cast<const float4 *>(p)[i];
    return make_float4(p[i], 0.0f, 0.0f, 0.0f);
}

template <bool VEC>
__device__ __forceinline__ void store_item(float *p, int i, float4 v)
{
    if (VEC)
        reinterpret_cast<float4 *>(p)[i] = v;
    else
        p[i] = v.x;
}

/* Per-plane forward; see the file comment. */
template <bool VEC>
__global__ void norm_act_fwd_kernel(int c, int hw, const float *__restrict__ x,
                                    const float *__restrict__ gamma,
                                    const float *__restrict__ beta, float eps, float slope,
                                    float *__restrict__ y, float *__restrict__ mean_out,
                                    float *__restrict__ rstd_out)
{
    __shared__ float sh[33];
    const size_t plane = blockIdx.x;
    const int ch = (int)(plane % (size_t)c);
    const float *xp = x + plane * (size_t)hw;
    float *yp = y + plane * (size_t)hw;
    const int m = VEC ? hw / 4 : hw;

    float s = 0.0f;
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const float4 v = load_item<VEC>(xp, i);
        s += VEC ? (v.x + v.y) + (v.z + v.w) : v.x;
    }
    const float mu = fs_block_sum(s, sh) / (float)hw;

    float q = 0.0f;
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const float4 v = load_item<VEC>(xp, i);
        const float a = v.x - mu;
        q += a * a;
        if (VEC) {
            const float b = v.y - mu, d = v.z - mu, e = v.w - mu;
            q += b * b + d * d + e * e;
        }
    }
    const float var = fs_block_sum(q, sh) / (float)hw;
    const float rs = 1.0f / sqrtf(var + eps);

    const float g = gamma[ch], bt = beta[ch];
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        float4 v = load_item<VEC>(xp, i);
        float z;
        z = g * ((v.x - mu) * rs) + bt; v.x = z > 0.0f ? z : slope * z;
        if (VEC) {
            z = g * ((v.y - mu) * rs) + bt; v.y = z > 0.0f ? z : slope * z;
            z = g * ((v.z - mu) * rs) + bt; v.z = z > 0.0f ? z : slope * z;
            z = g * ((v.w - mu) * rs) + bt; v.w = z > 0.0f ? z : slope * z;
        }
        store_item<VEC>(yp, i, v);
    }
    if (threadIdx.x == 0) {
        mean_out[plane] = mu;
        rstd_out[plane] = rs;
    }
}

fs_status fs_cuda_norm_act_fwd(void *ctx, int n, int c, int hw, const float *x,
                               const float *gamma, const float *beta, float eps, float slope,
                               float *y, float *mean, float *rstd)
{
    fs_cuda_ctx *cx = (fs_cuda_ctx *)ctx;
    if (!cx || n <= 0 || c <= 0 || hw <= 0 || !(eps >= 0.0f) ||
        (size_t)n * c * hw > FS_CUDA_MAX_ELEMS)
        return FS_BAD(FS_ERR_ARG, "norm_act_fwd: bad shape");
    if (!x || !gamma || !beta || !y || !mean || !rstd)
        return FS_BAD(FS_ERR_ARG, "norm_act_fwd: NULL buffer");
    FS_TRY(fs_cuda_enter(cx));
    const bool vec = hw % 4 == 0 && fs_cuda_aligned16(x) && fs_cuda_aligned16(y);
    const int threads = plane_threads(hw);
    const unsigned planes = (unsigned)n * (unsigned)c;
    if (vec)
        norm_act_fwd_kernel<true><<<planes, threads, 0, cx->stream>>>(c, hw, x, gamma, beta, eps,
                                                                      slope, y, mean, rstd);
    else
        norm_act_fwd_kernel<false><<<planes, threads, 0, cx->stream>>>(c, hw, x, gamma, beta, eps,
                                                                       slope, y, mean, rstd);
    FS_LAUNCHED();
    return FS_OK;
}

/* Per-plane backward: dx, and the plane's (Σdz, Σdz·x̂) into part[2·plane]. */
template <bool VEC>
__global__ void norm_act_bwd_kernel(int c, int hw, const float *__restrict__ x,
                                    const float *__restrict__ gamma,
                                    const float *__restrict__ beta, float slope,
                                    const float *__restrict__ mean,
                                    const float *__restrict__ rstd,
                                    const float *__restrict__ dy, float *__restrict__ dx,
                                    float *__restrict__ part)
{
    __shared__ float sh[33];
    const size_t plane = blockIdx.x;
    const int ch = (int)(plane % (size_t)c);
    const size_t off = plane * (size_t)hw;
    const float *xp = x + off, *dyp = dy + off;
    float *dxp = dx + off;
    const int m = VEC ? hw / 4 : hw;
    const float mu = mean[plane], rs = rstd[plane], g = gamma[ch], bt = beta[ch];

    float s_dz = 0.0f, s_dzx = 0.0f;
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const float4 xv = load_item<VEC>(xp, i), dv = load_item<VEC>(dyp, i);
        const int lanes = VEC ? 4 : 1;
        const float xs[4] = {xv.x, xv.y, xv.z, xv.w}, ds[4] = {dv.x, dv.y, dv.z, dv.w};
#pragma unroll
        for (int l = 0; l < 4; l++) {
            if (l < lanes) {
                const float xh = (xs[l] - mu) * rs;
                const float z = g * xh + bt;
                const float dz = z > 0.0f ? ds[l] : slope * ds[l];
                s_dz += dz;
                s_dzx += dz * xh;
            }
        }
    }
    s_dz = fs_block_sum(s_dz, sh);
    s_dzx = fs_block_sum(s_dzx, sh);
    const float m_dz = s_dz / (float)hw, m_dzx = s_dzx / (float)hw, k0 = g * rs;

    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const float4 xv = load_item<VEC>(xp, i), dv = load_item<VEC>(dyp, i);
        const int lanes = VEC ? 4 : 1;
        const float xs[4] = {xv.x, xv.y, xv.z, xv.w}, ds[4] = {dv.x, dv.y, dv.z, dv.w};
        float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int l = 0; l < 4; l++) {
            if (l < lanes) {
                const float xh = (xs[l] - mu) * rs;
                const float z = g * xh + bt;
                const float dz = z > 0.0f ? ds[l] : slope * ds[l];
                o[l] = k0 * (dz - m_dz - xh * m_dzx);
            }
        }
        store_item<VEC>(dxp, i, make_float4(o[0], o[1], o[2], o[3]));
    }
    if (threadIdx.x == 0) {
        part[2 * plane] = s_dz;
        part[2 * plane + 1] = s_dzx;
    }
}

/* dβ[ch] = Σ_n part[2(n·C+ch)], dγ[ch] = Σ_n part[2(n·C+ch)+1], in image order. */
__global__ void norm_param_grad_kernel(int n, int c, const float *__restrict__ part,
                                       float *__restrict__ dgamma, float *__restrict__ dbeta)
{
    for (int ch = blockIdx.x * blockDim.x + threadIdx.x; ch < c; ch += gridDim.x * blockDim.x) {
        float sb = 0.0f, sg = 0.0f;
        for (int i = 0; i < n; i++) {
            const size_t pl = (size_t)i * c + ch;
            sb += part[2 * pl];
            sg += part[2 * pl + 1];
        }
        dbeta[ch] = sb;
        dgamma[ch] = sg;
    }
}

/* Workspace: (Σdz, Σdz·x̂) for each of the n·c planes. */
size_t fs_cuda_norm_ws_bytes(void *ctx, int n, int c, int hw)
{
    (void)ctx;
    if (n <= 0 || c <= 0 || hw <= 0) return 0;
    return (size_t)n * c * 2 * sizeof(float);
}

fs_status fs_cuda_norm_act_bwd(void *ctx, int n, int c, int hw, const float *x,
                               const float *gamma, const float *beta, float slope,
                               const float *mean, const float *rstd, const float *dy,
                               float *dx, float *dgamma, float *dbeta, void *ws)
{
    fs_cuda_ctx *cx = (fs_cuda_ctx *)ctx;
    if (!cx || n <= 0 || c <= 0 || hw <= 0 || (size_t)n * c * hw > FS_CUDA_MAX_ELEMS)
        return FS_BAD(FS_ERR_ARG, "norm_act_bwd: bad shape");
    if (!x || !gamma || !beta || !mean || !rstd || !dy || !dx || !dgamma || !dbeta || !ws)
        return FS_BAD(FS_ERR_ARG, "norm_act_bwd: NULL buffer");
    FS_TRY(fs_cuda_enter(cx));
    const unsigned planes = (unsigned)n * (unsigned)c;
    float *part = (float *)ws;
    const bool vec = hw % 4 == 0 && fs_cuda_aligned16(x) && fs_cuda_aligned16(dy) &&
                     fs_cuda_aligned16(dx);
    const int threads = plane_threads(hw);
    if (vec)
        norm_act_bwd_kernel<true><<<planes, threads, 0, cx->stream>>>(
            c, hw, x, gamma, beta, slope, mean, rstd, dy, dx, part);
    else
        norm_act_bwd_kernel<false><<<planes, threads, 0, cx->stream>>>(
            c, hw, x, gamma, beta, slope, mean, rstd, dy, dx, part);
    FS_LAUNCHED();
    norm_param_grad_kernel<<<fs_cuda_blocks((size_t)c, 128), 128, 0, cx->stream>>>(
        n, c, part, dgamma, dbeta);
    FS_LAUNCHED();
    return FS_OK;
}
