/*
 * kernels/cuda/cuda_loss.cu — softmax + cross-entropy + soft Dice loss, value
 * and gradient in one op, on the GPU.
 *
 * Layout: logits / dlogits N×K×HW (class channels of one image are hw apart),
 * labels N×HW uint8. Three kernels, all on the context stream, none waiting
 * for the host (the loss stays in device memory, so it can be captured):
 *   1. partial: a fixed grid of B blocks (B depends only on N·HW) strides over
 *      pixels; per pixel a stable softmax, log p[label], and per class
 *      I_k += p·y, P_k += p, Y_k += y. Each block reduces its 3K + 1 sums
 *      (warp shuffles, then shared memory) into part[block][3K + 1].
 *   2. finalize: one block adds the B partials per quantity in block order, in
 *      double, then writes loss[0] = CE + 1 − dice and the per-class gradient
 *      coefficients G_c = ga[c] − gb[c]·y_c with ga = dice_c / (K·(D_c + s)),
 *      gb = 2 / (K·(D_c + s)), D_c = P_c + Y_c (the CPU's formulation).
 *   3. gradient: per pixel, dlogit_j = p_j·(G_j − Σ_c p_c·G_c) + (p_j − y_j)/(N·HW).
 * No atomics: the result is the same on every run.
 *
 * Classes: at most FS_LOSS_MAXK (per-thread accumulators live in registers).
 * Labels ≥ K are not checked (they are validated on upload); they only ever
 * meet equality tests, so they cannot cause out-of-bounds accesses.
 *
 * Workspace (loss_ws_bytes): B·(3K + 1) partial floats + 2K coefficients.
 * Tested by tests/test_cuda_parity.c.
 */
#include <math.h>
#include "cuda_internal.h"

#define FS_LOSS_MAXK 16
#define FS_LOSS_THREADS 256
#define FS_LOSS_MAX_BLOCKS 1024

/* Partial-sum blocks for N·HW pixels (about two pixels per thread). */
static int loss_blocks(size_t pixels)
{
    size_t b = (pixels + 2 * FS_LOSS_THREADS - 1) / (2 * FS_LOSS_THREADS);
    if (b < 1) b = 1;
    if (b > FS_LOSS_MAX_BLOCKS) b = FS_LOSS_MAX_BLOCKS;
    return (int)b;
}

size_t fs_cuda_loss_ws_bytes(void *ctx, int n, int k, int hw)
{
    (void)ctx;
    if (n <= 0 || k <= 0 || hw <= 0) return 0;
    const size_t b = (size_t)loss_blocks((size_t)n * hw);
    return (b * (3 * (size_t)k + 1) + 2 * (size_t)k) * sizeof(float);
}

/* Softmax of one pixel's K logits (stride hw) into e[] (unnormalised) with
 * max mx and sum se; zl = the label's logit (0 if the label is out of range). */
__device__ __forceinline__ void pixel_softmax(const float *z, int hw, int K, int lab,
                                              float (&e)[FS_LOSS_MAXK], float &mx, float &se,
                                              float &zl)
{
    mx = z[0];
#pragma unroll
    for (int k = 1; k < FS_LOSS_MAXK; k++)
        if (k < K) mx = fmaxf(mx, z[(size_t)k * hw]);
    se = 0.0f;
    zl = 0.0f;
#pragma unroll
    for (int k = 0; k < FS_LOSS_MAXK; k++) {
        e[k] = 0.0f;
        if (k < K) {
            const float zk = z[(size_t)k * hw];
            e[k] = expf(zk - mx);
            se += e[k];
            if (k == lab) zl = zk;
        }
    }
}

/* Kernel 1: per-block sums I[K], P[K], Y[K], CE into part[blockIdx.x]. */
__global__ void loss_partial_kernel(int n, int K, int hw, const float *__restrict__ logits,
                                    const uint8_t *__restrict__ labels, float *__restrict__ part)
{
    __shared__ float sh[33];
    float accI[FS_LOSS_MAXK], accP[FS_LOSS_MAXK], accY[FS_LOSS_MAXK];
#pragma unroll
    for (int k = 0; k < FS_LOSS_MAXK; k++) accI[k] = accP[k] = accY[k] = 0.0f;
    float ce = 0.0f;
    const unsigned total = (unsigned)n * (unsigned)hw;
    for (unsigned q = blockIdx.x * blockDim.x + threadIdx.x; q < total;
         q += gridDim.x * blockDim.x) {
        const unsigned img = q / (unsigned)hw, i = q - img * (unsigned)hw;
        const float *z = logits + (size_t)img * K * hw + i;
        const int lab = labels[q];
        float e[FS_LOSS_MAXK], mx, se, zl;
        pixel_softmax(z, hw, K, lab, e, mx, se, zl);
        const float inv = 1.0f / se;
        ce += mx + logf(se) - zl; /* −log p[label] */
#pragma unroll
        for (int k = 0; k < FS_LOSS_MAXK; k++) {
            if (k < K) {
                const float p = e[k] * inv;
                accP[k] += p;
                if (k == lab) {
                    accI[k] += p;
                    accY[k] += 1.0f;
                }
            }
        }
    }
    float *out = part + (size_t)blockIdx.x * (3 * K + 1);
#pragma unroll
    for (int k = 0; k < FS_LOSS_MAXK; k++) {
        if (k < K) { /* K is the same for the whole block: no divergent barriers */
            const float si = fs_block_sum(accI[k], sh);
            const float sp = fs_block_sum(accP[k], sh);
            const float sy = fs_block_sum(accY[k], sh);
            if (threadIdx.x == 0) {
                out[k] = si;
                out[K + k] = sp;
                out[2 * K + k] = sy;
            }
        }
    }
    const float sc = fs_block_sum(ce, sh);
    if (threadIdx.x == 0) out[3 * K] = sc;
}

/* Kernel 2 (one block of 64 threads): totals, loss, gradient coefficients. */
__global__ void loss_finalize_kernel(int nblocks, int K, double pixels, float smooth,
                                     const float *__restrict__ part, float *__restrict__ loss,
                                     float *__restrict__ coef)
{
    __shared__ double tot[3 * FS_LOSS_MAXK + 1];
    const int nq = 3 * K + 1;
    for (int j = threadIdx.x; j < nq; j += blockDim.x) {
        double s = 0.0;
        for (int b = 0; b < nblocks; b++) s += (double)part[(size_t)b * nq + j];
        tot[j] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double dice = 0.0;
        for (int k = 0; k < K; k++) {
            const double dd = tot[K + k] + tot[2 * K + k] + (double)smooth;
            const double dc = (2.0 * tot[k] + (double)smooth) / dd;
            dice += dc;
            coef[k] = (float)(dc / (K * dd));      /* ga */
            coef[K + k] = (float)(2.0 / (K * dd)); /* gb */
        }
        dice /= K;
        loss[0] = (float)(tot[3 * K] / pixels + 1.0 - dice);
    }
}

/* Kernel 3: dlogits, one thread per pixel. */
__global__ void loss_grad_kernel(int n, int K, int hw, const float *__restrict__ logits,
                                 const uint8_t *__restrict__ labels,
                                 const float *__restrict__ coef, float inv_total,
                                 float *__restrict__ dlogits)
{
    const unsigned total = (unsigned)n * (unsigned)hw;
    for (unsigned q = blockIdx.x * blockDim.x + threadIdx.x; q < total;
         q += gridDim.x * blockDim.x) {
        const unsigned img = q / (unsigned)hw, i = q - img * (unsigned)hw;
        const size_t off = (size_t)img * K * hw + i;
        const int lab = labels[q];
        float e[FS_LOSS_MAXK], mx, se, zl;
        pixel_softmax(logits + off, hw, K, lab, e, mx, se, zl);
        const float inv = 1.0f / se;
        float spg = 0.0f;
#pragma unroll
        for (int k = 0; k < FS_LOSS_MAXK; k++) {
            if (k < K) {
                e[k] *= inv; /* now p_k */
                spg += e[k] * (coef[k] - (k == lab ? coef[K + k] : 0.0f));
            }
        }
#pragma unroll
        for (int k = 0; k < FS_LOSS_MAXK; k++) {
            if (k < K) {
                const float yk = k == lab ? 1.0f : 0.0f;
                const float g = coef[k] - coef[K + k] * yk;
                dlogits[off + (size_t)k * hw] = e[k] * (g - spg) + (e[k] - yk) * inv_total;
            }
        }
    }
}

fs_status fs_cuda_loss_fwd_bwd(void *ctx, int n, int k, int hw, const float *logits,
                               const uint8_t *labels, float smooth, float *loss,
                               float *dlogits, void *ws)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || n <= 0 || hw <= 0 || k <= 0 || (size_t)n * k * hw > FS_CUDA_MAX_ELEMS)
        return FS_BAD(FS_ERR_ARG, "loss: bad shape");
    if (k > FS_LOSS_MAXK)
        return FS_BAD(FS_ERR_UNSUPPORTED, "loss: more than 16 classes on the CUDA backend");
    if (!logits || !labels || !loss || !dlogits || !ws)
        return FS_BAD(FS_ERR_ARG, "loss: NULL buffer");
    FS_TRY(fs_cuda_enter(c));
    const size_t pixels = (size_t)n * hw;
    const int nb = loss_blocks(pixels);
    float *part = (float *)ws;
    float *coef = part + (size_t)nb * (3 * k + 1);
    loss_partial_kernel<<<nb, FS_LOSS_THREADS, 0, c->stream>>>(n, k, hw, logits, labels, part);
    FS_LAUNCHED();
    loss_finalize_kernel<<<1, 64, 0, c->stream>>>(nb, k, (double)pixels, smooth, part, loss,
                                                  coef);
    FS_LAUNCHED();
    const float inv_total = (float)(1.0 / (double)pixels);
    loss_grad_kernel<<<fs_cuda_blocks(pixels, 256), 256, 0, c->stream>>>(
        n, k, hw, logits, labels, coef, inv_total, dlogits);
    FS_LAUNCHED();
    return FS_OK;
}
