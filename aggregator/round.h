/*
 * aggregator/round.h — the aggregator's round state machine and crash-safe
 * FedAvg aggregation. Pure logic on files: no network, no threads, no clock.
 * The gRPC glue calls it from one event loop; every call is given the
 * current time (`now`, seconds on any monotonic scale) and the caller's
 * identity (its certificate CN), and nothing here ever blocks on a peer.
 *
 * A federation runs rounds 1..R. Round r trains on the global model w_{r-1}
 * (w_0 = the initial parameters) and closes with
 *     w_r = w_{r-1} + Σ_s n_s·delta_s / Σ_s n_s
 * over the sites s whose update for round r was accepted (n_s = the update's
 * num_samples). docs/protocol.md § Rounds describes the whole machine; in short:
 *
 *   join      a site on the site list announces itself (preset must match).
 *   open      round r opens once ≥ min_sites joined sites are active (seen
 *             within site_timeout_s) — right away when every listed site is
 *             active, else after join_wait_s more; it selects
 *             max(min_sites, ceil(fraction·active)) of them, drawn with a
 *             generator seeded by (seed, r).
 *   task      a selected site that has not submitted gets TRAIN(r); everyone
 *             else WAIT; after round R everyone gets FINISHED.
 *   update    begin(header) → chunk… → end. Each chunk is checked (in order,
 *             contiguous, within num_params, finite) and written straight to
 *             the site's spool file (nothing is buffered here); end checks the
 *             total and the CRC-32, fsyncs the spool, appends an `accept`
 *             record to the journal (fsync'ed: this is the commit point, the
 *             ack may follow) and folds the spool into the round's sum. A
 *             refused update leaves the sum and the journal untouched.
 *   close     when every selected site submitted, or at the deadline with
 *             ≥ min_sites submitted (fewer: logged, deadline extended by
 *             deadline_s and the selection topped up with other active
 *             sites). Close = journal `close` record → w_r checkpointed
 *             atomically (STATE_DIR/global.ckpt, meta.epoch = r) → state file
 *             → one metrics JSON line → the round's spools deleted.
 *   resume    fs_round_open on a state_dir left by a crash at any point
 *             restores w_c from global.ckpt (c = last completed round) and
 *             round c+1's selection and accepted updates from the journal,
 *             rebuilding the sum from their spools in journal order — so the
 *             result is bit-identical to a run without the crash; no accepted
 *             update is lost and none is counted twice.
 *
 * Files in state_dir:
 *   global.ckpt         w_c (common/ckpt.h), epoch = c; the commit point of a round
 *   round.state         text: format, completed round, num_params, preset, seed, model CRC
 *   journal             append-only text records, one per line, each with a CRC-32
 *   spool/r<R>_<SITE>.upd   raw little-endian fp32 update of SITE for round R
 *   metrics.jsonl       one JSON line per completed round (unless metrics_path is set)
 *
 * Memory: the global model, the sum (P floats each) and two chunk-sized
 * buffers for reading spools back, whatever the number of sites; an upload
 * holds only its file descriptor and counters.
 *
 * Refusals (status ≠ FS_OK with a reason in why) are each logged once with
 * fs_log_warn naming the site and the reason, and never disturb the round:
 *   FS_ERR_NOT_FOUND  identity not on the site list
 *   FS_ERR_MISMATCH   wrong preset or num_params, not the current round (stale,
 *                     replayed or future), site not selected, already
 *                     submitted, an upload of this site already in progress,
 *                     federation finished, no round open
 *   FS_ERR_FORMAT     chunk out of order / not contiguous / oversized / empty /
 *                     not a multiple of 4 bytes; stream ended short
 *   FS_ERR_NUMERIC    NaN or Inf in the update
 *   FS_ERR_CHECKSUM   the CRC-32 of the received bytes differs from the header's
 *   FS_ERR_IO         the aggregator's own disk failed (logged as an error)
 *   FS_ERR_ARG        API misuse (NULL pointers, unknown handle)
 *
 * Tested by tests/test_round.c (fake clock, crash simulation at every step
 * of an update and of a round close, memory growth at P = 2,000,000).
 */
#ifndef FS_ROUND_H
#define FS_ROUND_H

#include <stddef.h>
#include <stdint.h>
#include "common/ckpt.h"
#include "common/dp.h"
#include "common/secagg.h"
#include "common/wire.h"
#include "aggregator/robust.h"
#include "aggregator/server_opt.h"
#include "kernels/status.h"

typedef struct {
    const char *const *sites;   /* the site list: identities ([A-Za-z0-9._-], ≤ 63) */
    size_t n_sites;
    uint32_t rounds;            /* R ≥ 1 */
    uint32_t min_sites;         /* 1 .. n_sites */
    double fraction;            /* (0, 1]: share of active sites selected per round */
    double deadline_s;          /* > 0: seconds from a round's opening to its deadline */
    double join_wait_s;         /* ≥ 0: wait this long after min_sites joined for the rest */
    double site_timeout_s;      /* ≥ 0: a site not seen for this long is not sampled (0 = never) */
    uint32_t local_epochs;      /* given to sites in Task TRAIN */
    uint32_t steps_per_epoch;   /* 0 = the site's default */
    float lr, prox_mu;
    uint32_t poll_ms;           /* retry_after_ms in Task WAIT (0 → 1000) */
    const char *state_dir;      /* created if missing */
    const char *metrics_path;   /* NULL → STATE_DIR/metrics.jsonl */
    uint64_t seed;              /* site sampling */
    fs_ckpt_meta model;         /* preset, base, depth, size for checkpoints (nparams, epoch ignored) */
    /* Differential privacy (common/dp.h), mode FS_DP_OFF by default. With
     * FS_DP_CENTRAL (client-level DP-FedAvg, McMahan et al. 2018) sites clip
     * their update to dp.clip (Task.dp_clip), every reporting site weighs 1,
     * the aggregator adds N(0, (σ·C)²) to every coordinate of the sum with a
     * fresh secret seed per round and divides by the fixed denominator q·N
     * (q = 1: DP needs fraction = 1, N = sites on the list); the RDP accountant's ε after
     * each round goes into the metrics line, and a round that would take ε
     * past dp.epsilon_budget is not started (the federation finishes).
     * sites, sample_rate and dim are filled in by fs_round_open. */
    fs_dp_params dp;
    /* Secure aggregation (common/secagg.h; docs/security.md). With
     * secure_agg set every round runs the masking protocol among its
     * selected sites (at least 3: min_sites must be ≥ 3): the stages
     * advertise and share keys (each waits up to secagg_stage_s), masked
     * uploads until the round's deadline, unmasking (secagg_stage_s). The
     * aggregator only ever holds the running uint32 sum of masked vectors
     * and learns Σ w·clip(delta) and Σ w (w = samples / weight cap): the
     * FedAvg mean. Too few sites at any stage abandon the attempt (logged;
     * the model is unchanged) and the round starts again with fresh keys.
     * Secure rounds are not resumed mid-round: after a crash the open round
     * starts a new attempt (no accepted update is kept). */
    int secure_agg;
    uint32_t secagg_threshold;  /* t; 0 = ⌊2n/3⌋ + 1 (at least 2, at most k) */
    uint32_t secagg_neighbours; /* k; 0 = n − 1 (full SecAgg), else even      */
    double secagg_clip;         /* L2 clip C before quantisation (> 0)       */
    uint64_t secagg_weight_cap; /* public cap on a site's sample count; 0 = the
                                 * largest count the selected sites joined with */
    double secagg_stage_s;      /* seconds a key or unmasking stage waits (also
                                 * the key and decryption stages of encrypted
                                 * aggregation)                              */
    /* Encrypted aggregation (common/he_proto.h; docs/security.md). With
     * encrypted set every round runs the multiparty-HE protocol among its
     * selected sites (at least 2): a fresh collective public key from the
     * sites' key shares and Shamir shares of those among the sites (both
     * stages need every selected site), BFV ciphertext uploads until the
     * round's deadline (the aggregator adds them up, holding no key), then
     * threshold decryption of the sum by he_threshold of the sites that
     * contributed. Values are clipped to ±he_clip and quantised on the
     * finest grid that the plaintext space allows for the number of sites;
     * the FedAvg weight (samples / weight cap, secagg_weight_cap) travels
     * encrypted beside them. Not resumed mid-round (as secure_agg). */
    int encrypted;
    uint32_t he_threshold;      /* t; 0 = ⌊2n/3⌋ + 1 (2 ≤ t ≤ min_sites)     */
    double he_clip;             /* each value is clipped to [−he_clip, he_clip] */
    /* Non-IID algorithms (all zero = plain FedAvg, bit for bit as above):
     * see "Server optimisers and robust rules" below. */
    fs_server_opt_hp server_opt;/* kind fedavg with lr 0 or 1 = w + mean delta */
    fs_agg_rule agg_rule;       /* mean (weighted) | median | trimmed_mean (unweighted) */
    double trim;                /* trimmed_mean: share dropped at each end, [0, 0.5) */
    int scaffold;               /* SCAFFOLD control variates travel with models and updates */
    int local_norm;             /* FedBN: told to sites in Task (they keep normalisation local) */
    const uint8_t *local_mask;  /* FedBN: P bytes (copied), 1 = a site-local parameter whose
                                   delta must be exactly 0 (else the update is refused:
                                   FS_ERR_FORMAT); NULL = no check */
} fs_round_config;

/*
 * Server optimisers and robust rules. At a round's close the pseudo-gradient
 * Δ is the weighted mean Σ n_s·delta_s / Σ n_s (agg_rule mean) or the
 * coordinate-wise median / trimmed mean of the accepted spools, read back
 * chunk by chunk (aggregator/robust.h); then w_r = server step of w_{r-1}
 * with Δ (aggregator/server_opt.h). Optimiser moments live in memory and in
 * STATE_DIR/server.r<R>.state, written atomically BEFORE global.ckpt is
 * renamed (the commit point) and read back for the checkpoint's round on
 * resume, so a restarted aggregator continues with the same bits. A state
 * file of another round, kind or size is refused (FS_ERR_MISMATCH).
 *
 * SCAFFOLD (Karimireddy et al. 2020): with scaffold set, the model a site
 * downloads is [w | c] (2·P floats: the global model, then the server
 * control variate c) and its update is [w_local − w | Δc_i] (2·P floats);
 * Task.num_params stays P. At the close, Δ = the mean of both halves; the
 * first half steps w as above, and c += (|S| / N)·Δc (N = sites on the
 * list, |S| = sites that reported). c starts at 0 and is kept in the state
 * file with the moments.
 */

typedef struct fs_round fs_round;
typedef struct fs_round_upload fs_round_upload;

/* Opens the aggregator on cfg->state_dir. With no global.ckpt there, starts
 * a fresh federation from w0 (P floats, copied; checkpointed as round 0).
 * Otherwise resumes (w0 may then be NULL; P and the preset must match the
 * checkpoint, else FS_ERR_MISMATCH): see the top of this file. Every problem
 * is logged naming the file. *out is NULL on failure. */
fs_status fs_round_open(fs_round **out, const fs_round_config *cfg, const float *w0, size_t P,
                        double now);
/* Closes files and frees everything (NULL-safe); writes nothing, so it is
 * safe at any moment (everything committed is already on disk). In-flight
 * uploads are dropped (their spools are deleted on the next open). Not
 * thread-safe: one object belongs to one event loop. */
void fs_round_free(fs_round *agg);

/* Join: identity from the certificate; req->preset must equal the
 * configuration's. Fills reply (accepted, reason, site_id, preset,
 * num_params, round) whatever the outcome; returns FS_OK when accepted. */
fs_status fs_round_join(fs_round *agg, const char *identity, const fs_wire_join_request *req,
                        double now, fs_wire_join_reply *reply);

/* GetTask: fills task (TRAIN / WAIT / FINISHED). FS_ERR_NOT_FOUND for an
 * identity not on the list, FS_ERR_MISMATCH for a listed site that has not
 * joined (it should Join again); why then holds the reason. Also drives
 * the clock like fs_round_tick. */
fs_status fs_round_task(fs_round *agg, const char *identity, double now, fs_wire_task *task,
                        char *why, size_t whylen);

/* DownloadModel: the global model that round train_round trains on
 * (w_{train_round-1}; with scaffold [w | c], *P = 2·num_params); only the current round (or R+1 = the final model once
 * finished). *params points into agg: the pointer stays valid until
 * fs_round_free, but its contents change when the round closes — a streamer
 * must check fs_round_current(agg) == train_round before each chunk.
 * *crc is the CRC-32 of the model's bytes. */
fs_status fs_round_model(fs_round *agg, const char *identity, uint32_t train_round,
                         const float **params, size_t *P, uint32_t *crc, char *why, size_t whylen);
/* Records bytes sent to a site (model downloads) for this round's metrics. */
void fs_round_note_sent(fs_round *agg, const char *identity, uint64_t bytes);

/* PushUpdate. begin checks the header (identity listed and selected, round
 * current, not yet submitted, num_params == P, no other upload of this site
 * in flight) and opens the spool; on FS_OK *up is a handle that MUST be
 * passed to fs_round_update_end exactly once, whatever happens in between.
 * chunk: data/len are the chunk's little-endian fp32 bytes (borrowed),
 * offset in parameters. After a refused chunk the upload is dead: later
 * chunks are refused and end frees it. end(failed = 1) drops the upload (the
 * stream broke); end(failed = 0) validates and commits it; if the round
 * becomes complete it closes inside this call. */
fs_status fs_round_update_begin(fs_round *agg, const char *identity,
                                const fs_wire_update_header *hdr, double now, fs_round_upload **up,
                                char *why, size_t whylen);
fs_status fs_round_update_chunk(fs_round *agg, fs_round_upload *up, uint64_t offset,
                                const uint8_t *data, size_t len, char *why, size_t whylen);
fs_status fs_round_update_end(fs_round *agg, fs_round_upload *up, int failed, double now, char *why,
                              size_t whylen);

/* SecAgg: one step of the secure-aggregation protocol for the site
 * `identity` (docs/protocol.md § Secure aggregation). Fills reply (status
 * OK / WAIT / ABANDONED, the server's payload for GET stages — *payload is
 * then a malloc'ed buffer the caller frees with fs_secagg_msg_free, else
 * NULL). Returns FS_OK when a reply was made; a refusal (not on the list,
 * not in this attempt, a message the protocol refuses) returns its status
 * with the reason in why, like the update calls. */
fs_status fs_round_secagg(fs_round *agg, const char *identity, const fs_wire_secagg_request *req,
                          double now, fs_wire_secagg_reply *reply, uint8_t **payload, char *why,
                          size_t whylen);

/* Advances the clock: opens a round when enough sites are active, closes or
 * extends one at its deadline. Returns FS_OK, or FS_ERR_IO when the state
 * could not be written (logged; retried at the next tick). */
fs_status fs_round_tick(fs_round *agg, double now);

/* Read-only view for the glue, monitoring and tests. */
typedef struct {
    uint32_t round;             /* current round (completed + 1; R + 1 when finished) */
    uint32_t completed;         /* last completed round (0 = none) */
    uint32_t rounds;            /* R */
    int open;                   /* round `round` is open (selection made) */
    int finished;               /* completed == R */
    size_t n_selected, n_submitted, n_joined;
    double weight;              /* Σ n_s of the accepted updates of this round */
    double deadline;            /* of the open round; else the time a round may open (or -1) */
    const float *model;         /* w_completed, P floats */
    const float *sum;           /* this round's Σ n_s·delta_s, P floats */
    size_t num_params;
    size_t update_params;       /* values per update and download: num_params, 2x with SCAFFOLD */
    uint32_t model_crc;
} fs_round_view;
void fs_round_view_get(const fs_round *agg, fs_round_view *v);
uint32_t fs_round_current(const fs_round *agg);
/* 1 when site is selected for the open round (0 for unknown names). */
int fs_round_is_selected(const fs_round *agg, const char *site);

/* ---- testing: crash simulation -------------------------------------------
 * fs_round_test_crash arms a crash at the nth (1-based) time execution
 * reaches point: the call in progress stops right there — nothing more is
 * written — and returns FS_ERR_IO; afterwards every call returns FS_ERR_IO.
 * fs_round_abandon then frees the object without writing anything (the same
 * as fs_round_free; named for what it simulates): what the files hold is
 * what a SIGKILL at that point would leave. */
typedef enum {
    FS_CRASH_NONE = 0,
    FS_CRASH_MID_UPLOAD,        /* after a chunk reached the spool          */
    FS_CRASH_AFTER_SPOOL,       /* spool complete and fsync'ed, no journal  */
    FS_CRASH_AFTER_JOURNAL,     /* accept record written, not yet folded    */
    FS_CRASH_AFTER_CLOSE_RECORD,/* close record written, no checkpoint      */
    FS_CRASH_IN_CKPT,           /* new checkpoint written, not yet renamed  */
    FS_CRASH_AFTER_CKPT,        /* checkpoint renamed, state file old       */
    FS_CRASH_AFTER_STATE,       /* state file written, no metrics line      */
    FS_CRASH_AFTER_METRICS,     /* metrics written, spools not yet deleted  */
    FS_CRASH_COUNT
} fs_round_crash;
void fs_round_test_crash(fs_round *agg, fs_round_crash point, unsigned nth);
int fs_round_test_crashed(const fs_round *agg);
void fs_round_abandon(fs_round *agg);

#endif
