/*
 * aggregator/round_sum.h — the storage and arithmetic of a round's weighted
 * sum Σ_s n_s·delta_s, behind one small interface so that the host arrays and
 * the fold can later be replaced by a backend-table op (GPU fold) without
 * touching the round state machine. Every addition into the sum happens in
 * fs_round_sum_fold; nothing else writes the sum.
 *
 * Determinism: folding the same chunks in the same order gives the same bits,
 * which is what lets a resumed aggregator rebuild a round's sum from its
 * journal exactly.
 *
 * Tested through tests/test_round.c.
 */
#ifndef FS_ROUND_SUM_H
#define FS_ROUND_SUM_H

#include <stddef.h>
#include <stdint.h>
#include "aggregator/fedavg.h"
#include "kernels/status.h"

typedef struct {
    float *sum;          /* n floats, owned */
    fs_fedavg_acc acc;   /* the running FedAvg over sum */
} fs_round_sum;

/* Allocates a zeroed sum of n floats. FS_ERR_NOMEM. */
fs_status fs_round_sum_init(fs_round_sum *s, size_t n);
void fs_round_sum_free(fs_round_sum *s);
/* Zeroes the sum and its weight. */
void fs_round_sum_reset(fs_round_sum *s);
/* sum[off + i] += w·chunk[i]. Refuses (and folds nothing) a chunk with NaN
 * or Inf (FS_ERR_NUMERIC) or out of range (FS_ERR_ARG). */
fs_status fs_round_sum_fold(fs_round_sum *s, size_t off, const float *chunk, size_t len, double w);
/* Adds one site's weight once its whole update has been folded. */
fs_status fs_round_sum_add_weight(fs_round_sum *s, double w);
/* Differential privacy (common/dp.h): sum[i] += stddev·N(0,1) drawn with
 * fs_dp_add_gaussian(seed, stream), then Σ w := denominator (the fixed
 * denominator q·N of DP-FedAvg), so that fs_round_sum_apply divides by it.
 * On the GPU the backend's gauss_add op noises the device sum in place. FS_ERR_ARG for
 * a negative stddev or a denominator that is not > 0. */
fs_status fs_round_sum_privatise(fs_round_sum *s, double stddev, uint64_t seed, uint64_t stream,
                                 double denominator);
/* Replaces the sum by host[0..n) (on the GPU: uploads it) and Σ w by
 * weight > 0: how an average computed elsewhere (secure aggregation's
 * unmasked mean, weight 1) enters fs_round_sum_apply. host may be s->sum. */
fs_status fs_round_sum_set(fs_round_sum *s, const float *host, double weight);
/* out[i] = model[i] + sum[i] / Σ w, element by element, so out may alias
 * model or the sum itself (the sum is then consumed: reset it before folding
 * again). FS_ERR_ARG when no weight was added. */
fs_status fs_round_sum_apply(const fs_round_sum *s, const float *model, float *out);

/* ---- the masked sum of a secure-aggregation attempt -------------------- */

/* Σ of masked vectors mod 2^32 (words = P + 1), kept where the round sums
 * live (sum_device.h): host memory on the CPU, device memory on the GPU, with
 * the backend table's u32_sum for every added chunk and its chacha_mask for
 * the unmasking — the same ops, bit for bit, on either device. */
typedef struct fs_masked_sum fs_masked_sum;
struct fs_mask_key;
/* A zeroed sum of `words` words. FS_ERR_NOMEM / FS_ERR_DEVICE. */
fs_status fs_masked_sum_new(size_t words, fs_masked_sum **out);
void fs_masked_sum_free(fs_masked_sum *m); /* NULL-safe */
fs_status fs_masked_sum_zero(fs_masked_sum *m);
/* sum[off + i] += host[i] mod 2^32, i < n. FS_ERR_ARG out of range. */
fs_status fs_masked_sum_add(fs_masked_sum *m, size_t off, const uint32_t *host, size_t n);
/* For each key: sum[i] ± ChaCha20 mask word i (fs_backend chacha_mask over
 * the whole vector). WARNING: the keys are secrets (see kernels/backend.h). */
fs_status fs_masked_sum_unmask(fs_masked_sum *m, const struct fs_mask_key *keys, int k);
/* The sum's host memory on the CPU (to unmask in place), NULL on the GPU. */
uint32_t *fs_masked_sum_host(fs_masked_sum *m);
/* Copies the sum out (words words). */
fs_status fs_masked_sum_get(const fs_masked_sum *m, uint32_t *host);

#endif
