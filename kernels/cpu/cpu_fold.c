/*
 * kernels/cpu/cpu_fold.c — the CPU reference of the FedAvg fold op
 * (kernels/backend.h: sum[i] += w·chunk[i]), the aggregator's inner loop.
 *
 * Arithmetic: per element one fp32 product, rounded, then one fp32 sum,
 * rounded — the same as aggregator/fedavg.c — so the CPU, the CUDA kernel
 * (kernels/cuda/cuda_fold.cu, which spells the roundings out with
 * __fmul_rn / __fadd_rn) and the host FedAvg all give the same bits. The
 * pragmas below forbid the compiler from contracting the two into one fused
 * multiply-add on targets that have one. One thread: the loop is bound by
 * memory bandwidth, and the aggregator folds one chunk (256 KiB) at a time.
 *
 * Tested by tests/test_agg_fold.c (against fs_fedavg_fold, bit for bit) and
 * tests/test_cuda_parity.c (CUDA against this).
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "cpu_internal.h"

fs_status fs_cpu_fold(void *ctx, size_t count, float *sum, const float *chunk, float w)
{
    (void)ctx;
    if (count == 0) return FS_OK;
    if (!sum || !chunk) return FS_ERR_ARG;
    for (size_t i = 0; i < count; i++) sum[i] += w * chunk[i];
    return FS_OK;
}
