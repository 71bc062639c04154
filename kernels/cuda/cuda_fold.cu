/*
 * kernels/cuda/cuda_fold.cu — the FedAvg fold on the GPU (kernels/backend.h:
 * sum[i] += w·chunk[i]), so an aggregator with a GPU keeps the round's sum in
 * device memory and folds each verified chunk there.
 *
 * Arithmetic: __fmul_rn then __fadd_rn — a rounded product and a rounded sum,
 * never contracted into an FMA — exactly the CPU reference
 * (kernels/cpu/cpu_fold.c) and aggregator/fedavg.c, so the results agree bit
 * for bit. Launch: grid-stride loops, a float4 kernel over the 16-byte
 * aligned bulk and a scalar kernel for the tail (or for unaligned pointers).
 * Memory-bound: 12 bytes moved per element.
 *
 * Tested by tests/test_cuda_parity.c (odd lengths, unaligned offsets, exact
 * equality with the CPU).
 */
#include "cuda_internal.h"

/* Scalar grid-stride fold over [0, count). */
__global__ void fold_kernel(unsigned long long count, float *__restrict__ sum,
                            const float *__restrict__ chunk, float w)
{
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < count; i += (unsigned long long)gridDim.x * blockDim.x)
        sum[i] = __fadd_rn(sum[i], __fmul_rn(w, chunk[i]));
}

/* float4 grid-stride fold over [0, count4·4). */
__global__ void fold4_kernel(unsigned long long count4, float4 *__restrict__ sum,
                             const float4 *__restrict__ chunk, float w)
{
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < count4; i += (unsigned long long)gridDim.x * blockDim.x) {
        float4 s = sum[i];
        const float4 c = chunk[i];
        s.x = __fadd_rn(s.x, __fmul_rn(w, c.x));
        s.y = __fadd_rn(s.y, __fmul_rn(w, c.y));
        s.z = __fadd_rn(s.z, __fmul_rn(w, c.z));
        s.w = __fadd_rn(s.w, __fmul_rn(w, c.w));
        sum[i] = s;
    }
}

/* Queues the fold on the context's stream (asynchronous like every op;
 * results are visible after sync or download). */
fs_status fs_cuda_fold(void *ctx, size_t count, float *sum, const float *chunk, float w)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c) return FS_BAD(FS_ERR_ARG, "fold: NULL context");
    if (count == 0) return FS_OK;
    if (!sum || !chunk) return FS_BAD(FS_ERR_ARG, "fold: NULL buffer");
    FS_TRY(fs_cuda_enter(c));
    size_t done = 0;
    if (fs_cuda_aligned16(sum) && fs_cuda_aligned16(chunk) && count >= 4) {
        const size_t c4 = count / 4;
        fold4_kernel<<<fs_cuda_blocks(c4, 256), 256, 0, c->stream>>>(c4, (float4 *)sum,
                                                                     (const float4 *)chunk, w);
        FS_LAUNCHED();
        done = c4 * 4;
    }
    if (done < count) {
        const size_t rest = count - done;
        fold_kernel<<<fs_cuda_blocks(rest, 256), 256, 0, c->stream>>>(rest, sum + done,
                                                                      chunk + done, w);
        FS_LAUNCHED();
    }
    return FS_OK;
}
