/*
 * node/client.h — the site node's federation loop (`fedseg node`): it talks
 * to the aggregator over the transport (common/transport.h) in the messages
 * of common/wire.h, and trains with a local session (node/session.h).
 *
 * The loop (docs/protocol.md § Rounds):
 *   Join        protocol version, preset, training slices (the FedAvg weight).
 *               A refusal (another protocol version, an identity not on the
 *               aggregator's list, another model) is fatal and printed with
 *               the aggregator's reason. With preset "auto" the node adopts
 *               the aggregator's preset when the first Join is refused for a
 *               different one (the data are reloaded at that size).
 *   GetTask     WAIT      sleep retry_after_ms, ask again;
 *               TRAIN r   DownloadModel(r) streamed straight into the global
 *                         parameter buffer (every chunk: round, length, offset
 *                         order, finite values; at the end: total length and
 *                         CRC-32 against the chunks' and the task's CRC);
 *                         Dice of that global model on the held-out cases;
 *                         local training (Task's epochs, steps, lr, mu; Adam
 *                         restarted; sampler stream fs_node_round_seed(seed, r));
 *                         PushUpdate of delta = w_local - w_global in
 *                         FS_CHUNK_PARAMS chunks, the UpdateHeader on the first;
 *               FINISHED  download the final global model (the one round
 *                         `round + 1` would train on), evaluate it, save it,
 *                         then (finetune_epochs > 0) fine-tune it locally,
 *                         evaluate and save that personalised model
 *                         (STATE_DIR/personal.ckpt), return FS_OK.
 *               TRAIN r with secure_agg: the secure-aggregation stages over
 *                         SecAgg calls (common/secagg.h): advertise keys, get
 *                         the keys, send encrypted shares, get the relayed
 *                         shares; then download + train as above; the update
 *                         clipped, weighted, quantised and masked (P + 1
 *                         uint32 words) and pushed; then the unmasking
 *                         request answered. WAIT answers are polled; an
 *                         ABANDONED answer ends this site's part in the
 *                         attempt (back to GetTask).
 *   Non-IID tasks (node/noniid.h): with Task.scaffold the download is [w | c]
 *   and the update [delta | Δc_i] (2·P values), c_i kept in memory from round
 *   to round (it starts at 0 again when the node restarts); with
 *   Task.local_norm (FedBN) the normalisation parameters are this site's own
 *   (kept in memory; the first round uses the global ones) and their deltas
 *   are sent as zeros.
 *   One line per round on stdout: round, the global model's Dice (WT TC ET),
 *   training loss, training and round seconds, MB sent and received.
 *
 * Failures:
 *   - the aggregator unreachable, a call timing out or reset, a damaged model
 *     download (FS_ERR_IO and friends): the channel is rebuilt and the step
 *     retried after an exponential backoff with jitter (backoff_initial_s
 *     doubling to backoff_max_s, each delay drawn uniformly in [d/2, d]),
 *     logged per retry, reset after the next success. The node never gives up
 *     while *stop is 0. A trained update that could not be delivered is kept:
 *     if GetTask still says TRAIN for the same round and model CRC it is pushed
 *     again without retraining; if the round moved on it is dropped.
 *   - GetTask refused with FAILED_PRECONDITION (e.g. an aggregator restarted
 *     since this site joined): Join again (with backoff).
 *   - the aggregator refuses an update (FS_ERR_MISMATCH: stale round, not
 *     selected, ...): logged, the update dropped, back to GetTask.
 *   - *stop becoming non-zero (SIGINT/SIGTERM in `fedseg node`): the loop ends
 *     at the next check (between steps, chunks or calls; an RPC in flight ends
 *     within its timeout) and fs_node_run returns FS_OK.
 *
 * Files: with state_dir set, the last global model received is checkpointed
 * atomically to STATE_DIR/global.ckpt (meta.epoch = the rounds it completes)
 * and the final one to STATE_DIR/final.ckpt.
 *
 * Tested by tests/test_node_fake.c (a fake aggregator over mutual TLS: retry,
 * WAIT, a refused update, one full round compared bit for bit with a local
 * session, FINISHED; the CLI against the same fake; fatal Join refusals).
 */
#ifndef FS_CLIENT_H
#define FS_CLIENT_H

#include <signal.h>
#include <stdint.h>
#include "kernels/status.h"

typedef struct {
    int rounds_trained;       /* updates trained (including retrained ones)   */
    int updates_accepted;
    int updates_refused;
    int retries;              /* backoff sleeps taken                         */
    int finished;             /* 1 when the aggregator said FINISHED          */
    uint32_t last_round_done; /* last round whose update was accepted         */
    double final_dice[3];     /* of the final global model (NaN when none)    */
    double personal_dice[3];  /* after personalised fine-tuning (NaN when none) */
} fs_node_report;

typedef struct {
    const char *aggregator;      /* HOST:PORT                                          */
    const char *server_name;     /* name in the aggregator's certificate (NULL = host)  */
    const char *ca, *cert, *key; /* PEM files: consortium CA, this site's cert and key  */
    int plaintext;               /* WARNING: tests only — no TLS, no identity;
                                    `fedseg node` never sets it                         */
    const char *site;            /* expected identity (NULL = do not check); a
                                    different site_id in the JoinReply is a warning     */
    const char *const *data;     /* site folder(s)                                      */
    int ndata;
    const char *preset;          /* "tiny" | "small" | "ref" | "auto" (NULL = auto)     */
    const char *device;          /* "cpu" | "cuda" | "auto" (NULL = auto)               */
    int batch, threads;          /* 0 = defaults (node/session.h)                       */
    uint64_t seed;               /* model init (unused: the global model replaces it)
                                    and the per-round sampler streams                   */
    const char *state_dir;       /* NULL = keep no files                                */
    int rpc_timeout_ms;          /* unary calls; 0 = 10000. Transfers get this plus
                                    4 µs per byte (≥ 256 KB/s)                          */
    double backoff_initial_s;    /* 0 = 0.5 */
    double backoff_max_s;        /* 0 = 30  */
    fs_node_report *report;      /* optional: filled when fs_node_run returns           */
    /* Demonstrating secure aggregation's dropout recovery: in round
     * secagg_drop_round (first attempt only) the node silently leaves the
     * protocol at stage secagg_drop_stage (0 before advertising its keys,
     * 1 before sending its shares, 2 before sending its masked update, 3
     * before answering the unmasking request); -1 = never. */
    int secagg_drop_stage;
    uint32_t secagg_drop_round;
    int finetune_epochs;         /* personalisation: local epochs on the final model (0 = none) */
    float finetune_lr;           /* 0 = the last task's lr                              */
} fs_node_config;

/* Runs the node until the federation finishes (FS_OK), *stop becomes non-zero
 * (FS_OK), or a fatal error: FS_ERR_MISMATCH (Join refused, protocol version,
 * model size), FS_ERR_NOT_FOUND / FS_ERR_FORMAT / FS_ERR_IO for unreadable
 * PEM files or site data, FS_ERR_NUMERIC for diverged training. Every fatal
 * error is logged with its reason. */
fs_status fs_node_run(const fs_node_config *cfg, volatile sig_atomic_t *stop);

/* The sampler seed a node uses for round r (so a round is reproducible from
 * the global model, the task and the node's seed). */
uint64_t fs_node_round_seed(uint64_t seed, uint32_t round);

#endif
