/*
 * kernels/cuda/cuda_internal.h — what the CUDA backend's .cu files share: the
 * context (one stream, one cuBLAS handle, the captured graph), error checking
 * that turns CUDA / cuBLAS failures into FS_ERR_DEVICE with file:line on
 * stderr, a row-major GEMM wrapper over cuBLAS, launch-size helpers, block
 * reductions, and the declarations of every op (defined in cuda_conv.cu,
 * cuda_norm.cu, cuda_misc.cu, cuda_loss.cu; the table is in cuda_backend.cu).
 *
 * Layout conventions are those of kernels/backend.h: NCHW fp32, N images,
 * C channels, H×W planes (hw = H·W). Pointers named d_* or passed to ops are
 * device memory. Element counts of any one tensor must stay below 2^31 (the
 * ops check and answer FS_ERR_ARG), so kernels index with 32-bit integers.
 *
 * Tested by tests/test_cuda_parity.c (every op against the CPU backend).
 */
#ifndef FS_CUDA_INTERNAL_H
#define FS_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "kernels/backend.h"
}

/* One CUDA context: everything runs in order on `stream`. */
typedef struct fs_cuda_ctx {
    int device;
    cudaStream_t stream;      /* non-blocking stream owned by the context      */
    cublasHandle_t blas;      /* bound to stream, workspace below              */
    void *blas_ws;            /* explicit cuBLAS workspace (same kernels when  */
    size_t blas_ws_bytes;     /* eager and when captured)                      */
    int capturing;            /* between graph_capture_begin and _end          */
    cudaGraph_t graph;        /* last captured graph (NULL before any)         */
    cudaGraphExec_t exec;     /* its instantiation, replayed by graph_replay   */
} fs_cuda_ctx;

/* Error reporting at the boundary: one line on stderr naming file:line, the
 * failed call and CUDA's / cuBLAS's own message; returns FS_ERR_DEVICE. */
fs_status fs_cuda_fail(cudaError_t e, const char *call, const char *file, int line);
fs_status fs_cublas_fail(cublasStatus_t s, const char *call, const char *file, int line);
/* One line on stderr for a caller error (bad shape, misuse); returns st. */
fs_status fs_cuda_complain(fs_status st, const char *file, int line, const char *msg);

#define FS_CU(call) do { cudaError_t fs_e_ = (call); \
    if (fs_e_ != cudaSuccess) return fs_cuda_fail(fs_e_, #call, __FILE__, __LINE__); } while (0)
#define FS_CUBLAS(call) do { cublasStatus_t fs_b_ = (call); \
    if (fs_b_ != CUBLAS_STATUS_SUCCESS) return fs_cublas_fail(fs_b_, #call, __FILE__, __LINE__); } while (0)
/* Checks the launch that precedes it (bad configuration, missing kernel image). */
#define FS_LAUNCHED() FS_CU(cudaGetLastError())
#define FS_BAD(st, msg) fs_cuda_complain((st), __FILE__, __LINE__, (msg))

/* Largest element count of one tensor (kernels use 32-bit indices). */
#define FS_CUDA_MAX_ELEMS ((size_t)0x7fffffff)

/* Makes ctx's device current for this thread (cheap when it already is). */
fs_status fs_cuda_enter(fs_cuda_ctx *c);

/* Row-major strided-batched GEMM on the context stream:
 *   C_i = alpha · op(A_i) · op(B_i) + beta · C_i,  i = 0 .. batch−1,
 *   op(A_i) is M×K, op(B_i) is K×N, C_i is M×N; X_i = X + i·strideX;
 *   lda/ldb/ldc are row strides of the matrices as stored.
 * Implemented as the column-major product Cᵀ = op(B)ᵀ·op(A)ᵀ. */
fs_status fs_cuda_gemm(fs_cuda_ctx *c, bool ta, bool tb, int M, int N, int K, float alpha,
                       const float *A, int lda, long long strideA, const float *B, int ldb,
                       long long strideB, float beta, float *C, int ldc, long long strideC,
                       int batch);

/* Blocks for a grid-stride loop over `count` items with `threads` per block. */
static inline unsigned fs_cuda_blocks(size_t count, int threads)
{
    size_t b = (count + (size_t)threads - 1) / (size_t)threads;
    if (b < 1) b = 1;
    if (b > ((size_t)1 << 20)) b = (size_t)1 << 20;
    return (unsigned)b;
}

static inline bool fs_cuda_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* Sum over a warp; every lane gets the total. */
__device__ __forceinline__ float fs_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block; every thread gets the total. All threads of the block
 * must call it (blockDim.x a multiple of 32, at most 1024); sh is a shared
 * array of 33 floats that may be reused by the next call. Fixed summation
 * order for a given blockDim, so results are run-to-run deterministic. */
__device__ __forceinline__ float fs_block_sum(float v, float *sh)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int nw = (int)(blockDim.x >> 5);
    v = fs_warp_sum(v);
    __syncthreads(); /* earlier readers of sh are done */
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float t = lane < nw ? sh[lane] : 0.0f;
        t = fs_warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

/* Channel sums for bias gradients: out[c] = Σ_n Σ_{i<plane} x[(n·C + c)·plane + i]
 * (one block per channel, fixed order). */
fs_status fs_cuda_channel_sum(fs_cuda_ctx *c, int n, int ch, size_t plane, const float *x,
                              float *out);

/* Layout change [G][C][plane] → [C][G][plane] (G images starting at src). */
fs_status fs_cuda_nchw_to_cnhw(fs_cuda_ctx *c, int g, int ch, size_t plane, const float *src,
                               float *dst);

/* ---- ops (signatures as in kernels/backend.h) -------------------------- */
size_t fs_cuda_conv_ws_bytes(void *ctx, const fs_conv_shape *s);
fs_status fs_cuda_conv_fwd(void *ctx, const fs_conv_shape *s, const float *x, const float *w,
                           const float *b, float *y, void *ws);
fs_status fs_cuda_conv_bwd_data(void *ctx, const fs_conv_shape *s, const float *dy,
                                const float *w, float *dx, void *ws);
fs_status fs_cuda_conv_bwd_filter(void *ctx, const fs_conv_shape *s, const float *x,
                                  const float *dy, float *dw, float *db, void *ws);
size_t fs_cuda_convt_ws_bytes(void *ctx, const fs_convt_shape *s);
fs_status fs_cuda_convt_fwd(void *ctx, const fs_convt_shape *s, const float *x, const float *w,
                            const float *b, float *y, void *ws);
fs_status fs_cuda_convt_bwd_data(void *ctx, const fs_convt_shape *s, const float *dy,
                                 const float *w, float *dx, void *ws);
fs_status fs_cuda_convt_bwd_filter(void *ctx, const fs_convt_shape *s, const float *x,
                                   const float *dy, float *dw, float *db, void *ws);
fs_status fs_cuda_norm_act_fwd(void *ctx, int n, int c, int hw, const float *x,
                               const float *gamma, const float *beta, float eps, float slope,
                               float *y, float *mean, float *rstd);
size_t fs_cuda_norm_ws_bytes(void *ctx, int n, int c, int hw);
fs_status fs_cuda_norm_act_bwd(void *ctx, int n, int c, int hw, const float *x,
                               const float *gamma, const float *beta, float slope,
                               const float *mean, const float *rstd, const float *dy,
                               float *dx, float *dgamma, float *dbeta, void *ws);
fs_status fs_cuda_maxpool_fwd(void *ctx, int n, int c, int h, int w, const float *x, float *y);
fs_status fs_cuda_maxpool_bwd(void *ctx, int n, int c, int h, int w, const float *x,
                              const float *dy, float *dx);
fs_status fs_cuda_concat_fwd(void *ctx, int n, int ca, int cb, int hw, const float *a,
                             const float *b, float *y);
fs_status fs_cuda_concat_bwd(void *ctx, int n, int ca, int cb, int hw, const float *dy,
                             float *da, float *db);
size_t fs_cuda_loss_ws_bytes(void *ctx, int n, int k, int hw);
fs_status fs_cuda_loss_fwd_bwd(void *ctx, int n, int k, int hw, const float *logits,
                               const uint8_t *labels, float smooth, float *loss,
                               float *dlogits, void *ws);
fs_status fs_cuda_adam_step(void *ctx, size_t count, float *w, const float *g, float *m,
                            float *v, const float *w_ref, fs_adam_hp hp, float *state);
/* cuda_fold.cu: the FedAvg fold sum += w·chunk (kernels/backend.h). */
fs_status fs_cuda_fold(void *ctx, size_t count, float *sum, const float *chunk, float w);
/* cuda_aggops.cu: the aggregator arithmetic (kernels/backend.h). */
fs_status fs_cuda_fold_many(void *ctx, size_t count, float *sum, const float *const *chunks,
                            const float *w, int k);
fs_status fs_cuda_u32_sum(void *ctx, size_t count, uint32_t *acc, const uint32_t *const *xs,
                          int k);
fs_status fs_cuda_chacha_mask(void *ctx, size_t count, uint32_t *acc, uint64_t offset,
                              const fs_mask_key *keys, int k);
fs_status fs_cuda_dequant(void *ctx, size_t count, float *out, const uint32_t *sum, float scale,
                          float inv_w);
size_t fs_cuda_l2_ws_bytes(void *ctx, size_t count, int k);
fs_status fs_cuda_l2_norm_sq(void *ctx, size_t count, const float *const *xs, int k,
                             double *out, void *ws);
fs_status fs_cuda_scale(void *ctx, size_t count, float *const *xs, const float *s, int k);
fs_status fs_cuda_gauss_add(void *ctx, size_t count, float *acc, uint64_t offset, double stddev,
                            uint64_t seed, uint64_t stream);

#endif
