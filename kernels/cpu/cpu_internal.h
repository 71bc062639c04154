/*
 * kernels/cpu/cpu_internal.h — private declarations shared by the CPU backend's
 * files (cpu_backend.c: context, memory and the table; cpu_conv.c: convolutions;
 * cpu_norm.c: instance norm, pooling, concatenation; cpu_loss.c: loss and Adam).
 *
 * Threading: each context fixes its thread count T at ctx_init (from
 * fs_backend_cpu_set_threads, 0 = all cores). Ops split work with OpenMP over
 * images, planes or channels and call OpenBLAS single-threaded inside.
 * Reductions across threads (conv backward-filter partial sums) are reduced in
 * thread order, so results are bit-identical from run to run for a given T.
 *
 * Tested by tests/test_kernels_fd.c (finite differences and naive references).
 */
#ifndef FS_CPU_INTERNAL_H
#define FS_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/backend.h"

typedef struct {
    int nthreads; /* OpenMP threads used by every op on this context */
} fs_cpu_ctx;

/* The thread count requested through fs_backend_cpu_set_threads (0 = all). */
int fs_cpu_requested_threads(void);

/* Rounds a float count up to a multiple of 16 (64 bytes) so that every
 * per-thread region of a workspace starts 64-byte aligned. */
static inline size_t fs_cpu_pad16(size_t floats) { return (floats + 15) & ~(size_t)15; }

/* Threads worth starting for `tasks` independent pieces of work. */
static inline int fs_cpu_team(const fs_cpu_ctx *c, long tasks)
{
    long t = c->nthreads;
    if (tasks < t) t = tasks;
    return t < 1 ? 1 : (int)t;
}

size_t fs_cpu_conv_ws_bytes(void *ctx, const fs_conv_shape *s);
fs_status fs_cpu_conv_fwd(void *ctx, const fs_conv_shape *s, const float *x, const float *w,
                          const float *b, float *y, void *ws);
fs_status fs_cpu_conv_bwd_data(void *ctx, const fs_conv_shape *s, const float *dy,
                               const float *w, float *dx, void *ws);
fs_status fs_cpu_conv_bwd_filter(void *ctx, const fs_conv_shape *s, const float *x,
                                 const float *dy, float *dw, float *db, void *ws);
size_t fs_cpu_convt_ws_bytes(void *ctx, const fs_convt_shape *s);
fs_status fs_cpu_convt_fwd(void *ctx, const fs_convt_shape *s, const float *x, const float *w,
                           const float *b, float *y, void *ws);
fs_status fs_cpu_convt_bwd_data(void *ctx, const fs_convt_shape *s, const float *dy,
                                const float *w, float *dx, void *ws);
fs_status fs_cpu_convt_bwd_filter(void *ctx, const fs_convt_shape *s, const float *x,
                                  const float *dy, float *dw, float *db, void *ws);

fs_status fs_cpu_norm_act_fwd(void *ctx, int n, int c, int hw, const float *x,
                              const float *gamma, const float *beta, float eps, float slope,
                              float *y, float *mean, float *rstd);
size_t fs_cpu_norm_ws_bytes(void *ctx, int n, int c, int hw);
fs_status fs_cpu_norm_act_bwd(void *ctx, int n, int c, int hw, const float *x,
                              const float *gamma, const float *beta, float slope,
                              const float *mean, const float *rstd, const float *dy,
                              float *dx, float *dgamma, float *dbeta, void *ws);
fs_status fs_cpu_maxpool_fwd(void *ctx, int n, int c, int h, int w, const float *x, float *y);
fs_status fs_cpu_maxpool_bwd(void *ctx, int n, int c, int h, int w, const float *x,
                             const float *dy, float *dx);
fs_status fs_cpu_concat_fwd(void *ctx, int n, int ca, int cb, int hw, const float *a,
                            const float *b, float *y);
fs_status fs_cpu_concat_bwd(void *ctx, int n, int ca, int cb, int hw, const float *dy,
                            float *da, float *db);

size_t fs_cpu_loss_ws_bytes(void *ctx, int n, int k, int hw);
fs_status fs_cpu_loss_fwd_bwd(void *ctx, int n, int k, int hw, const float *logits,
                              const uint8_t *labels, float smooth, float *loss,
                              float *dlogits, void *ws);
fs_status fs_cpu_adam_step(void *ctx, size_t count, float *w, const float *g, float *m,
                           float *v, const float *w_ref, fs_adam_hp hp, float *state);
/* cpu_fold.c: the FedAvg fold sum += w·chunk (kernels/backend.h). */
fs_status fs_cpu_fold(void *ctx, size_t count, float *sum, const float *chunk, float w);
/* cpu_aggops.c: the aggregator arithmetic (kernels/backend.h). */
fs_status fs_cpu_fold_many(void *ctx, size_t count, float *sum, const float *const *chunks,
                           const float *w, int k);
fs_status fs_cpu_u32_sum(void *ctx, size_t count, uint32_t *acc, const uint32_t *const *xs, int k);
fs_status fs_cpu_chacha_mask(void *ctx, size_t count, uint32_t *acc, uint64_t offset,
                             const fs_mask_key *keys, int k);
fs_status fs_cpu_dequant(void *ctx, size_t count, float *out, const uint32_t *sum, float scale,
                         float inv_w);
size_t fs_cpu_l2_ws_bytes(void *ctx, size_t count, int k);
fs_status fs_cpu_l2_norm_sq(void *ctx, size_t count, const float *const *xs, int k, double *out,
                            void *ws);
fs_status fs_cpu_scale(void *ctx, size_t count, float *const *xs, const float *s, int k);
fs_status fs_cpu_gauss_add(void *ctx, size_t count, float *acc, uint64_t offset, double stddev,
                           uint64_t seed, uint64_t stream);

#endif
