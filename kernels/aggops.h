/*
 * kernels/aggops.h — constants shared by the CPU and CUDA versions of the
 * aggregator ops (kernels/backend.h: fold_many, u32_sum, chacha_mask,
 * dequant, l2_norm_sq, scale, gauss_add), so that both follow one definition.
 *
 * The l2_norm_sq reduction tree (the same on every backend, hence the same
 * bits): with q(i) = (double)x[i] · (double)x[i] (exact in double),
 *   1. the vector is cut into segments of FS_L2_SEG elements;
 *   2. in a segment, lane t (0 ≤ t < FS_L2_LANES) adds, starting from 0.0 and
 *      in this order, q of the elements at segment offsets
 *      FS_L2_STEP·j + 4t + e for j = 0, 1, ... and e = 0..3 (elements past
 *      the end are skipped);
 *   3. the lanes are combined by halving: for h = FS_L2_LANES/2, ..., 2, 1,
 *      lane t < h adds lane t + h (lane[t] = lane[t] + lane[t+h]);
 *      lane 0 is the segment's partial sum;
 *   4. the partial sums, as a vector of doubles, are reduced by steps 2–3
 *      once more (one segment of any length: lane t adds partials
 *      t, t + FS_L2_LANES, t + 2·FS_L2_LANES, ... in order) — that is the result.
 * Step 2's order (4 consecutive elements per lane) is what lets the GPU read
 * the vector with 16-byte loads.
 *
 * Tested by tests/test_aggops.c (against a double loop and known answers) and
 * tests/test_aggops_cuda.c (CUDA == CPU, bit for bit).
 */
#ifndef FS_AGGOPS_H
#define FS_AGGOPS_H

#define FS_L2_LANES 256                  /* lanes per segment (one CUDA block)  */
#define FS_L2_STEP (4 * FS_L2_LANES)     /* elements one pass of the lanes covers */
#define FS_L2_SEG (8 * FS_L2_STEP)       /* elements per segment: 8192          */

/* Number of segments of a vector of `count` elements. */
#define FS_L2_NSEG(count) (((count) + FS_L2_SEG - 1) / FS_L2_SEG)

#endif
