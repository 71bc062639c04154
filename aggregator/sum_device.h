/*
 * aggregator/sum_device.h — where the aggregator keeps and folds a round's
 * sum (aggregator/round_sum.h): on the CPU, or on a GPU through the backend
 * table's fold op (kernels/backend.h). The choice is process-wide and made
 * once at start-up, before fs_round_open, like the trainer's backend; a
 * process that never chooses folds on the CPU.
 *
 * On the GPU the sum lives in device memory: every verified chunk is
 * uploaded into a chunk-sized device buffer and folded there; closing a
 * round downloads the sum once. The CPU backend folds in place in host
 * memory. Both use the same rounded multiply-then-add per element, so a
 * round gives the same bits on either device (a federation may resume on
 * another device). While a round is open on the GPU, fs_round_view's `sum`
 * is the host copy as of the last download (stale until the round closes).
 *
 * Tested by tests/test_agg_fold.c (CPU) and tests/test_cuda_parity.c (GPU).
 */
#ifndef FS_SUM_DEVICE_H
#define FS_SUM_DEVICE_H

#include <stddef.h>
#include "kernels/status.h"

/* "cpu", "cuda" or "auto" (the GPU when one is present, else the CPU).
 * FS_ERR_UNSUPPORTED with why (a sentence) when CUDA was asked for but is
 * not built or no device is present; FS_ERR_ARG for another name;
 * FS_ERR_DEVICE when the GPU context cannot be created. Call before any
 * round sum is created (FS_ERR_ARG afterwards, while one is alive). */
fs_status fs_sum_device_select(const char *name, char *why, size_t whylen);
/* The backend the sums use now: "cpu" or "cuda". */
const char *fs_sum_device_name(void);

#endif
