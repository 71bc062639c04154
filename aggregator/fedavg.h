/*
 * aggregator/fedavg.h — FedAvg on flat parameter vectors: the sample-weighted
 * mean of the sites' updates. Pure functions on arrays: no I/O, no network.
 *
 * The running form folds one chunk of one site's update at a time into a sum,
 * so an aggregator can fold updates as their chunks arrive and never hold every
 * site's whole update:
 *     fs_fedavg_init(&acc, sum, n);
 *     for each site s, for each chunk [off, off+len): fs_fedavg_fold(&acc, off, chunk, len, w_s)
 *     for each site s (once):                          fs_fedavg_add_weight(&acc, w_s)
 *     fs_fedavg_finish(&acc, mean)                      // mean = sum / Σ w_s
 * Tested by tests/test_fedavg.c.
 */
#ifndef FS_FEDAVG_H
#define FS_FEDAVG_H

#include <stddef.h>
#include "kernels/status.h"

typedef struct {
    float *sum;      /* caller-owned, n floats, zeroed by init */
    size_t n;
    double weight;   /* Σ of the weights of the sites folded in */
} fs_fedavg_acc;

void fs_fedavg_init(fs_fedavg_acc *a, float *sum, size_t n);

/* sum[off + i] += w · chunk[i] for i < len. FS_ERR_ARG when the chunk runs
 * past n or w is not a positive finite number; FS_ERR_NUMERIC (and nothing
 * folded) when the chunk holds NaN or Inf. */
fs_status fs_fedavg_fold(fs_fedavg_acc *a, size_t off, const float *chunk, size_t len, double w);

/* Records one site's weight (its sample count) once its update is complete. */
fs_status fs_fedavg_add_weight(fs_fedavg_acc *a, double w);

/* out[i] = sum[i] / Σ w (out may alias sum). FS_ERR_ARG when no weight. */
fs_status fs_fedavg_finish(const fs_fedavg_acc *a, float *out);

#endif
