/*
 * aggregator/server.h — the aggregator's network glue: the federation's four
 * RPCs (common/wire.h) served over mutual TLS (common/transport.h) and mapped
 * onto the round state machine (aggregator/round.h). No math and no protobuf
 * here: wire.c decodes, round.c decides, transport.c moves bytes.
 *
 *   Join           decode JoinRequest → fs_round_join → JoinReply. An identity
 *                  not on the site list: PERMISSION_DENIED; another model
 *                  preset: OK with accepted = false and the federation's
 *                  preset (a node with preset "auto" adopts it).
 *   GetTask        decode TaskRequest → fs_round_task → Task. Not listed:
 *                  PERMISSION_DENIED; listed but not joined (e.g. after an
 *                  aggregator restart): FAILED_PRECONDITION (the node joins
 *                  again).
 *   DownloadModel  decode ModelRequest → fs_round_model; streams the global
 *                  model in FS_CHUNK_PARAMS chunks, checking before each chunk
 *                  that the round has not moved on (FAILED_PRECONDITION if it
 *                  has) and recording the bytes for the round's metrics.
 *   PushUpdate     the first chunk's header → fs_round_update_begin; every
 *                  chunk → fs_round_update_chunk (straight to the spool); the
 *                  client's half-close → fs_round_update_end (validated,
 *                  committed, folded) → UpdateAck accepted. A broken stream →
 *                  update_end(failed) (the upload is dropped).
 *   tick           fs_round_tick every ~100 ms (deadlines, round opening).
 *
 * Every decode failure answers INVALID_ARGUMENT with the decoder's reason,
 * or FAILED_PRECONDITION "protocol version X, this fedseg speaks Y" for
 * another protocol version; every refusal (these, and the state machine's)
 * is logged once with the caller's certificate identity. A refused update
 * never disturbs the round. Status codes for the state machine's refusals:
 * not on the site list → PERMISSION_DENIED; wrong round / not selected /
 * already submitted / finished → FAILED_PRECONDITION; malformed stream, NaN
 * or Inf, CRC mismatch → INVALID_ARGUMENT; a stream longer than the model →
 * RESOURCE_EXHAUSTED; the aggregator's own disk → UNAVAILABLE (retry).
 *
 * WARNING: mutual TLS is mandatory: fs_server_start refuses a config without
 * the CA certificate, the aggregator's certificate and its key, and the
 * transport admits only clients whose certificate chains to that CA; the
 * state machine then admits only identities (certificate CNs) on its list.
 *
 * Lifetime: start (binds, opens or resumes the state dir) → run (event loop
 * on the caller's thread until *stop, or until the federation finished and
 * linger_s passed) → free. Everything committed is on disk at every moment,
 * so stopping at any time — or SIGKILL — loses no accepted update.
 *
 * Tested by tests/test_agg_server.c (a fake site client over mutual TLS
 * against `fedseg aggregator`: refusals, a full round checked against
 * FedAvg, malformed updates, SIGKILL and resume).
 */
#ifndef FS_SERVER_H
#define FS_SERVER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include "aggregator/round.h"
#include "common/transport.h"
#include "kernels/status.h"

/* What the server saw of one completed round (for the operator's line). */
typedef struct {
    uint32_t round, rounds;
    size_t sites_reported;      /* accepted updates that went into the round */
    double samples;             /* Σ n_s */
    double seconds;             /* since the round opened (this process)    */
    double mean_loss;           /* over the updates seen by this process (NaN if none) */
    double mean_dice_wt;        /* Dice WT of the previous global model, mean over
                                   the updates seen that evaluated it (NaN if none) */
    uint64_t bytes_in, bytes_out; /* update and model bytes moved this round */
    int finished;               /* 1 when this was the last round            */
} fs_server_round_info;

typedef struct {
    const char *listen;            /* "0.0.0.0:50051", "127.0.0.1:0" = any free port */
    fs_tls_files tls;              /* ca_cert, cert, key: all required        */
    fs_round_config round;         /* the state machine (state_dir, sites, ...) */
    const float *w0;               /* initial model (used for a fresh state dir;
                                      may be NULL when resuming)             */
    size_t num_params;
    double linger_s;               /* after the last round, keep answering
                                      FINISHED (and the final model) this long */
    int grace_ms;                  /* in-flight calls at shutdown (0 = 2000)  */
    /* Optional: called on the event loop when a round closes. */
    void (*on_round)(void *u, const fs_server_round_info *info);
    void *u;
} fs_server_config;

typedef struct fs_server fs_server;

/* Opens (or resumes) the state dir and binds the port. FS_ERR_ARG (logged)
 * without TLS files; otherwise the statuses of fs_round_open and
 * fs_tserver_start (each logged naming the file or address). *out is NULL on
 * failure. cfg and everything it points to must outlive the server. */
fs_status fs_server_start(fs_server **out, const fs_server_config *cfg);
/* The port actually bound (useful with port 0). */
int fs_server_port(const fs_server *s);
/* The state machine, read-only (fs_round_view_get) for the startup line. */
const fs_round *fs_server_round(const fs_server *s);
/* Serves until *stop becomes non-zero (returns FS_OK), or the federation has
 * finished and linger_s seconds have passed since (FS_OK). */
fs_status fs_server_run(fs_server *s, volatile sig_atomic_t *stop);
void fs_server_free(fs_server *s); /* NULL-safe */

#endif
