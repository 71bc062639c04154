/*
 * aggregator/server_opt.h — server optimisers on flat parameter vectors
 * (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2),
 * and the file that carries their state (and SCAFFOLD's server control
 * variate) from one round to the next. Pure functions on arrays plus one
 * atomic file format: no network, no round logic.
 *
 * Each round the aggregator forms the pseudo-gradient Δ_t (the weighted mean
 * of the sites' updates w_local − w_global, or a robust estimate of it) and
 * steps the global model x with one of:
 *   fedavg     x += η·Δ                                   (η = 1: plain FedAvg)
 *   fedavgm    m = β·m + Δ;             x += η·m          (Hsu et al. 2019)
 *   fedadagrad m = β1·m + (1−β1)·Δ;     v = v + Δ²;               x += η·m/(√v + τ)
 *   fedadam    m = β1·m + (1−β1)·Δ;     v = β2·v + (1−β2)·Δ²;     x += η·m/(√v + τ)
 *   fedyogi    m = β1·m + (1−β1)·Δ;     v = v − (1−β2)·Δ²·sign(v − Δ²); x += η·m/(√v + τ)
 * with m starting at 0 and v at τ² (Algorithm 2: v_{-1} ≥ τ²), and no bias
 * correction (as in the paper). Every element is computed in double and
 * rounded once to float, so the result does not depend on how the vector is
 * cut into chunks: fs_server_opt_step may be called on any sub-range.
 *
 * State file (STATE_DIR/server.r<R>.state, the state after round R):
 *   "FSSOPT01" | u32 version=1 | u32 kind | u32 round | u32 nvec | u64 n |
 *   nvec × (u32 tag, n little-endian fp32) | u32 CRC-32 of everything before
 * tags: 'm', 'v', 'c' (SCAFFOLD's server control variate). Written atomically
 * (temporary file, fsync, rename). The aggregator writes it before it commits
 * round R's global model and loads the one matching the checkpoint's round
 * on resume, so a restarted aggregator continues with the same bits.
 *
 * Tested by tests/test_server_opt.c (hand-computed steps of every kind,
 * chunk invariance, the state file's round trip and its refusals).
 */
#ifndef FS_SERVER_OPT_H
#define FS_SERVER_OPT_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/status.h"

typedef enum {
    FS_SOPT_FEDAVG = 0,
    FS_SOPT_FEDAVGM,
    FS_SOPT_FEDADAGRAD,
    FS_SOPT_FEDADAM,
    FS_SOPT_FEDYOGI,
    FS_SOPT_COUNT
} fs_server_opt_kind;

typedef struct {
    fs_server_opt_kind kind;
    float lr;        /* η, > 0 */
    float momentum;  /* β of fedavgm, [0, 1) */
    float beta1;     /* [0, 1) */
    float beta2;     /* [0, 1) */
    float tau;       /* > 0: adaptivity (and √ of v's start) */
} fs_server_opt_hp;

/* Defaults of kind (fedavg: η 1; fedavgm: η 1, β 0.9; adaptive: η 0.01,
 * β1 0.9, β2 0.99, τ 1e-3 — the paper's defaults). */
fs_server_opt_hp fs_server_opt_defaults(fs_server_opt_kind kind);
/* "fedavg" | "fedavgm" | "fedadagrad" | "fedadam" | "fedyogi". FS_ERR_ARG
 * for any other name. */
fs_status fs_server_opt_parse(const char *name, fs_server_opt_kind *out);
const char *fs_server_opt_name(fs_server_opt_kind kind);
/* FS_ERR_ARG (logged, naming the value) when a hyper-parameter is out of range. */
fs_status fs_server_opt_check(const fs_server_opt_hp *hp);
/* Whether the kind keeps m / v between rounds. */
int fs_server_opt_has_m(fs_server_opt_kind kind);
int fs_server_opt_has_v(fs_server_opt_kind kind);

/* The initial state for n parameters: m = 0, v = τ² (only the vectors the
 * kind uses: m and v may be NULL otherwise). */
void fs_server_opt_init_state(const fs_server_opt_hp *hp, size_t n, float *m, float *v);

/* One step on elements [0, n) of the caller's arrays (a chunk: any range of
 * the whole vector, the same offsets in every array): updates m and v (as the
 * kind uses them) and x in place. delta is the pseudo-gradient. FS_ERR_ARG
 * for NULL arrays the kind needs; FS_ERR_NUMERIC (and x untouched from the
 * first bad element on) when a result is not finite. */
fs_status fs_server_opt_step(const fs_server_opt_hp *hp, size_t n, float *x, const float *delta,
                             float *m, float *v);

/* ---- the state file -------------------------------------------------------- */

enum { FS_SOPT_TAG_M = 'm', FS_SOPT_TAG_V = 'v', FS_SOPT_TAG_C = 'c' };

typedef struct {
    uint32_t tag;
    float *data;     /* n floats (write: read from; read: filled, caller-owned) */
} fs_sopt_vec;

/* Writes the state after `round` to path atomically. FS_ERR_IO (logged). */
fs_status fs_server_state_write(const char *path, fs_server_opt_kind kind, uint32_t round, size_t n,
                                const fs_sopt_vec *vecs, uint32_t nvec);
/* Reads path into the caller's vectors: the file must be of this kind and
 * round, hold n parameters and exactly the tags asked for (any order).
 * FS_ERR_NOT_FOUND when missing, FS_ERR_FORMAT / FS_ERR_CHECKSUM /
 * FS_ERR_MISMATCH otherwise (each logged naming the file). */
fs_status fs_server_state_read(const char *path, fs_server_opt_kind kind, uint32_t round, size_t n,
                               fs_sopt_vec *vecs, uint32_t nvec)
    __attribute__((warn_unused_result));

#endif
