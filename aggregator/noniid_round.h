/*
 * aggregator/noniid_round.h — what a round's close does beyond plain FedAvg
 * (aggregator/round.h § Server optimisers and robust rules): the robust or
 * weighted pseudo-gradient, the server optimiser's step, SCAFFOLD's server
 * control variate, and the per-round state file that makes them survive a
 * crash. Kept out of round.c so the state machine stays about rounds; round.c
 * calls these at fixed points of its commit sequence:
 *
 *   open      fs_noniid_server_init   moments allocated, m = 0, v = τ²
 *   resume    fs_noniid_resume        moments and c of the checkpoint's round
 *   close     fs_noniid_close         Δ → new [w | c] in the sum buffer, next
 *                                     moments aside, server.r<R>.state written
 *   commit    fs_noniid_committed     (after global.ckpt is renamed) the next
 *                                     moments become current; server.r<R-1>
 *                                     .state deleted
 *
 * Memory: m, v and their next values (4·P floats at most), whatever the
 * number of sites; robust rules add one chunk per accepted site.
 * Tested by tests/test_noniid_round.c.
 */
#ifndef FS_NONIID_ROUND_H
#define FS_NONIID_ROUND_H

#include <stddef.h>
#include <stdint.h>
#include "aggregator/round.h"
#include "aggregator/round_sum.h"

typedef struct {
    fs_server_opt_hp hp;        /* cfg->server_opt with defaults filled in */
    float *m, *v;               /* current moments (NULL when the kind has none) */
    float *m_next, *v_next;     /* those of the round being closed */
    size_t P;
} fs_noniid_server;

/* 1 when the configuration is plain FedAvg (w + weighted mean delta): round.c
 * then keeps its original arithmetic. */
int fs_noniid_is_plain(const fs_round_config *cfg);
/* Checks the algorithm settings (logged) and allocates the moments. */
fs_status fs_noniid_server_init(fs_noniid_server *s, const fs_round_config *cfg, size_t P);
void fs_noniid_server_free(fs_noniid_server *s);
/* Restores the state after round `completed` (nothing to read for round 0:
 * fresh moments, c = 0). c: P floats (SCAFFOLD only; may be NULL otherwise). */
fs_status fs_noniid_resume(fs_noniid_server *s, const fs_round_config *cfg, const char *state_dir,
                           uint32_t completed, size_t P, float *c);
/* Closes round r: model holds [w_{r-1} | c] (U floats); sum the round's
 * weighted sum (consumed: it receives [w_r | c_r]); paths the accepted
 * spools (robust rules read them back); buf one chunk of scratch
 * (FS_CHUNK_PARAMS floats). FS_ERR_ARG when nothing was accepted. */
fs_status fs_noniid_close(fs_noniid_server *s, const fs_round_config *cfg, const char *state_dir,
                          uint32_t r, size_t P, size_t U, size_t n_sites, const float *model,
                          fs_round_sum *sum, const char *const *paths, size_t n_paths, float *buf);
/* FedBN: FS_OK when every value of the chunk (len bytes of little-endian
 * fp32 starting at parameter offset) that falls on a masked parameter
 * (offset < P; the mask has P entries) is ±0; else FS_ERR_FORMAT with the
 * first such parameter in *bad. */
fs_status fs_noniid_check_local(const uint8_t *mask, size_t P, uint64_t offset, const uint8_t *data,
                                size_t len, size_t *bad);
/* Round r is committed: the moments computed by fs_noniid_close become current. */
void fs_noniid_committed(fs_noniid_server *s, const fs_round_config *cfg, const char *state_dir,
                         uint32_t r);

#endif
