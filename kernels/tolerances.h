/*
 * kernels/tolerances.h — how closely the CUDA backend must match the CPU
 * reference, per op: |gpu − cpu| ≤ atol + rtol·|cpu| element by element.
 *
 * Why these numbers: the CPU sums in a fixed order in fp32 (OpenBLAS GEMMs
 * block the K dimension); the GPU sums in another order (cuBLAS, tree
 * reductions), and its GEMMs may use TF32 (10-bit mantissa) when enabled, so
 * GEMM-based ops get a looser bound than elementwise ones. Reductions over a
 * whole plane (instance norm, loss) lose about log2(n) bits more than a single
 * dot product. The parity test runs with TF32 OFF (it clears FS_CUDA_TF32);
 * see docs/kernels.md. Loss gradients are compared after multiplying by N·HW
 * (the per-pixel gradient), so FS_TOL_LOSS means the same at every size.
 */
#ifndef FS_TOLERANCES_H
#define FS_TOLERANCES_H

typedef struct { float atol, rtol; } fs_tol;

#define FS_TOL_CONV      ((fs_tol){1e-4f, 1e-3f})
/* dw sums N·H·W products: the parity test's 3×128×128 case sums 49152 terms
 * (|dw| up to ~300) and fp32 alone is then 1.7e-3 away from the exact value
 * (measured: PyTorch fp32 vs fp64 on that shape), so two fp32 orders may differ
 * by twice that; atol 5e-3 leaves headroom without hiding indexing errors
 * (those are O(1)). */
#define FS_TOL_CONV_BWDW ((fs_tol){5e-3f, 2e-3f})
#define FS_TOL_CONVT     ((fs_tol){1e-4f, 1e-3f})
#define FS_TOL_NORM      ((fs_tol){1e-4f, 1e-3f})
#define FS_TOL_NORM_BWD  ((fs_tol){1e-4f, 2e-3f})
#define FS_TOL_POOL      ((fs_tol){0.0f, 0.0f})   /* exact: selection only   */
#define FS_TOL_CONCAT    ((fs_tol){0.0f, 0.0f})   /* exact: copies only      */
#define FS_TOL_LOSS      ((fs_tol){1e-5f, 1e-4f})
#define FS_TOL_ADAM      ((fs_tol){1e-6f, 1e-5f})

/* Aggregator ops (kernels/backend.h, kernels/cuda/cuda_aggops.cu).
 * fold_many, u32_sum, chacha_mask, dequant and scale: exact — integer
 * arithmetic, or fp32 with every rounding spelled out on both sides.
 * l2_norm_sq: exact as well — squares of floats are exact in double, and
 * every backend adds them over the same fixed tree (kernels/aggops.h) in
 * double, so CPU and GPU give the same bits (tests/test_aggops_cuda.c
 * compares bits, not within a bound). */
#define FS_TOL_AGG_EXACT ((fs_tol){0.0f, 0.0f})
#define FS_TOL_L2_NORM   ((fs_tol){0.0f, 0.0f})
/* gauss_add: the Philox integers are identical, but the double normal may
 * differ by FS_TOL_PHILOX_GAUSS (relative; glibc vs libdevice log / sin /
 * cos), which can move the fp32 rounding of stddev·g by one ulp, and the
 * sum's rounding then by about one ulp of the result; 2 leaves headroom at
 * binade edges: |gpu − cpu| ≤ FS_TOL_GAUSS_ADD_ULPS · FLT_EPSILON · (|out| + |stddev·g|). */
#define FS_TOL_GAUSS_ADD_ULPS 2.0

#endif
