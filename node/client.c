/*
 * node/client.c — see client.h. Layout: the node's state and small helpers
 * (sleep, backoff, channel), then one function per RPC (Join, GetTask,
 * DownloadModel with its chunk sink, PushUpdate with its chunk source), then
 * the TRAIN and FINISHED steps and the loop that ties them together.
 *
 * Status conventions inside this file: a step returns FS_OK; FS_ERR_IO when
 * it is worth retrying after a backoff (the aggregator unreachable, a call
 * reset or timed out, a damaged download); FS_ERR_MISMATCH when the
 * aggregator refused with a reason (n->why holds it); anything else is fatal.
 *
 * Tested by tests/test_node_fake.c.
 */
#include "node/client.h"
#include "node/session.h"
#include "node/noniid.h"
#include "node/unet.h"
#include "common/ckpt.h"
#include "common/fsutil.h"
#include "common/dp.h"
#include "common/log.h"
#include "common/secagg.h"
#include "common/he_proto.h"
#include "common/rng.h"
#include "common/transport.h"
#include "common/wire.h"
#include "kernels/backend.h"

#include <errno.h>
#include <sodium.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian fp32 and this client sends host floats as they are"
#endif

#define SOFTWARE "fedseg 0.1.0"

typedef struct {
    const fs_node_config *cfg;
    volatile sig_atomic_t *stop;
    fs_tls_files tls;
    fs_tclient *cl;
    fs_session *ses;
    char preset[FS_WIRE_PRESET_LEN];
    int preset_auto;
    size_t P;
    size_t U;       /* download / update length: P, or 2P with SCAFFOLD */
    float *wg;      /* the global model last downloaded ([w | c]: 2P) */
    float *delta;   /* w_local - w_global of the update being sent ([· | Δc_i]: 2P) */
    /* non-IID state kept across rounds (node/noniid.h), allocated on first use */
    float *ci;      /* SCAFFOLD: this site's control variate c_i   */
    float *corr;    /* SCAFFOLD: c - c_i for the round             */
    float *local;   /* FedBN: this site's normalisation parameters */
    uint8_t *mask;  /* FedBN: which parameters those are           */
    int have_local; /* local holds trained values                  */
    float last_lr;  /* of the last TRAIN task (personalisation's default) */
    int joined;
    char site_id[FS_WIRE_NAME_LEN];
    /* an update trained but not yet delivered */
    int pending;
    uint32_t pend_model_crc;
    fs_wire_update_header pend_hdr;
    double pend_t0;           /* when the round started on this node */
    uint64_t pend_recv;       /* bytes received for it               */
    /* retry state */
    int nfail;
    fs_rng rng;
    int unary_ms;
    long transfer_ms;
    fs_rpc_code rpc;          /* status of the last refused call */
    uint32_t *qbuf;           /* secure aggregation: the masked vector (P + 1 words) */
    int dropped;              /* the configured secure-aggregation dropout happened */
    uint32_t drop_attempt;    /* ... in this attempt, which the site then stays out of */
    char why[FS_WIRE_REASON_LEN + 64];
    fs_node_report rep;
} node;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

uint64_t fs_node_round_seed(uint64_t seed, uint32_t round)
{
    uint64_t x = seed ^ ((uint64_t)round * 0xd1342543de82ef95ULL);
    return fs_splitmix64(&x);
}

/* Sleeps `seconds` in slices of at most 100 ms, returning early once *stop is set. */
static void nap(node *n, double seconds)
{
    double end = now_s() + seconds;
    while (!*n->stop) {
        double left = end - now_s();
        if (left <= 0) break;
        if (left > 0.1) left = 0.1;
        struct timespec ts = {0, (long)(left * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* (Re)creates the channel. A failure here is a local problem (a PEM file
 * missing or invalid: logged by the transport) and is fatal. */
static fs_status reconnect(node *n)
{
    fs_tclient_free(n->cl);
    n->cl = NULL;
    return fs_tclient_connect(&n->cl, n->cfg->aggregator, n->cfg->plaintext ? NULL : &n->tls,
                              FS_MAX_MSG_BYTES);
}

/* One failure: logs what failed and why, rebuilds the channel, and sleeps the
 * next backoff delay: d = initial·2^(k-1) capped at max, drawn in [d/2, d]. */
static fs_status backoff(node *n, const char *what)
{
    double init = n->cfg->backoff_initial_s > 0 ? n->cfg->backoff_initial_s : 0.5;
    double cap = n->cfg->backoff_max_s > 0 ? n->cfg->backoff_max_s : 30.0;
    double d = init;
    for (int i = 1; i < n->nfail + 1 && d < cap; i++) d *= 2;
    if (d > cap) d = cap;
    d = d / 2 + fs_rng_uniform(&n->rng) * d / 2;
    n->nfail++;
    n->rep.retries++;
    fs_log_warn("%s: %s; retry %d in %.1f s", what, n->why, n->nfail, d);
    FS_TRY(reconnect(n));
    nap(n, d);
    return FS_OK;
}

/* Copies a call's outcome into n->rpc and n->why ("CODE: reason"). */
static void note_call(node *n, const fs_call_result *r)
{
    const char *code = fs_rpc_code_str(r->rpc);
    n->rpc = r->rpc;
    if (!strncmp(r->reason, code, strlen(code))) snprintf(n->why, sizeof n->why, "%s", r->reason);
    else snprintf(n->why, sizeof n->why, "%s: %s", code, r->reason[0] ? r->reason : "(no reason)");
}

static void free_noniid(node *n)
{
    free(n->ci);
    free(n->corr);
    free(n->local);
    free(n->mask);
    n->ci = n->corr = n->local = NULL;
    n->mask = NULL;
    n->have_local = 0;
}

/* Sets the payload length for task t and allocates what its algorithms
 * keep at the site (once). */
static fs_status prepare_noniid(node *n, const fs_wire_task *t)
{
    n->U = t->scaffold ? 2 * n->P : n->P;
    if (t->scaffold && !n->ci) {
        n->ci = calloc(n->P, sizeof(float)); /* c_i starts at 0 */
        n->corr = malloc(n->P * sizeof(float));
        if (!n->ci || !n->corr) return FS_ERR_NOMEM;
    }
    if (t->local_norm && !n->mask) {
        int base, depth;
        fs_session_arch(n->ses, &base, &depth);
        n->mask = malloc(n->P);
        n->local = malloc(n->P * sizeof(float));
        if (!n->mask || !n->local) return FS_ERR_NOMEM;
        if (fs_fedbn_mask(base, depth, n->mask, n->P) == 0) return FS_ERR_ARG;
    }
    return FS_OK;
}

/* Opens (or reopens, for another preset) the training session. */
static fs_status open_session(node *n, const char *preset)
{
    const fs_node_config *c = n->cfg;
    fs_session_free(n->ses);
    n->ses = NULL;
    free(n->wg);
    free(n->delta);
    free(n->qbuf);
    n->qbuf = NULL;
    n->wg = n->delta = NULL;
    free_noniid(n);
    FS_TRY(fs_session_open(&n->ses, c->data, c->ndata, preset, c->device ? c->device : "auto", c->batch,
                           c->seed, c->threads));
    fs_session_set_stop(n->ses, n->stop);
    snprintf(n->preset, sizeof n->preset, "%s", preset);
    n->P = fs_session_nparams(n->ses);
    n->U = n->P;
    n->wg = malloc(2 * n->P * sizeof(float));
    n->delta = malloc(2 * n->P * sizeof(float));
    if (!n->wg || !n->delta) return FS_ERR_NOMEM;
    n->transfer_ms = n->unary_ms + (long)((double)n->P * 4 * 0.004);
    return FS_OK;
}

/* ---- Join ---------------------------------------------------------------- */

static fs_status join(node *n)
{
    fs_wire_join_request rq = {FS_PROTOCOL_VERSION, {0}, fs_session_nsamples(n->ses), SOFTWARE};
    snprintf(rq.preset, sizeof rq.preset, "%s", n->preset);
    uint8_t *msg = NULL, *rep = NULL;
    size_t len = 0, rlen = 0;
    FS_TRY(fs_wire_encode_join_request(&rq, &msg, &len));
    fs_call_result r;
    fs_status st = fs_tclient_unary(n->cl, fs_federation_methods[FS_M_JOIN].path, msg, len, &rep, &rlen,
                                    n->unary_ms, &r);
    free(msg);
    if (st != FS_OK) {
        free(rep);
        note_call(n, &r);
        if (st == FS_ERR_MISMATCH)
            fs_log_error("the aggregator %s refused this site: %s", n->cfg->aggregator, n->why);
        return st;
    }
    fs_wire_join_reply jr;
    char why[256] = "";
    st = fs_wire_decode_join_reply(rep, rlen, &jr, why, sizeof why);
    free(rep);
    if (st != FS_OK) {
        fs_log_error("the aggregator %s answered Join with a message this node cannot use: %s",
                     n->cfg->aggregator, why);
        return st == FS_ERR_MISMATCH ? st : FS_ERR_FORMAT;
    }
    if (!jr.accepted) {
        if (n->preset_auto && jr.preset[0] && strcmp(jr.preset, n->preset) && fs_preset_find(jr.preset)) {
            fs_log_info("the aggregator trains model '%s'; reloading the data for it", jr.preset);
            n->preset_auto = 0;
            FS_TRY(open_session(n, jr.preset));
            return join(n);
        }
        fs_log_error("the aggregator %s refused this site: %s", n->cfg->aggregator,
                     jr.reason[0] ? jr.reason : "(no reason given)");
        return FS_ERR_MISMATCH;
    }
    if (jr.num_params != n->P) {
        fs_log_error("the aggregator's model '%s' has %llu parameters, this site's '%s' has %zu",
                     jr.preset, (unsigned long long)jr.num_params, n->preset, n->P);
        return FS_ERR_MISMATCH;
    }
    if (n->cfg->site && n->cfg->site[0] && strcmp(n->cfg->site, jr.site_id))
        fs_log_warn("the aggregator knows this site as '%s' (its certificate's name), the config says '%s'",
                    jr.site_id, n->cfg->site);
    snprintf(n->site_id, sizeof n->site_id, "%s", jr.site_id);
    fs_log_info("joined the federation at %s as '%s' (model %s, %zu parameters, %llu training slices; "
                "round %u)", n->cfg->aggregator, jr.site_id, n->preset, n->P,
                (unsigned long long)rq.num_samples, jr.round);
    n->joined = 1;
    return FS_OK;
}

/* ---- GetTask ------------------------------------------------------------- */

static fs_status get_task(node *n, fs_wire_task *t)
{
    fs_wire_task_request rq = {FS_PROTOCOL_VERSION, n->rep.last_round_done};
    uint8_t *msg = NULL, *rep = NULL;
    size_t len = 0, rlen = 0;
    FS_TRY(fs_wire_encode_task_request(&rq, &msg, &len));
    fs_call_result r;
    fs_status st = fs_tclient_unary(n->cl, fs_federation_methods[FS_M_GET_TASK].path, msg, len, &rep,
                                    &rlen, n->unary_ms, &r);
    free(msg);
    if (st != FS_OK) {
        free(rep);
        note_call(n, &r);
        return st;
    }
    char why[256] = "";
    st = fs_wire_decode_task(rep, rlen, t, why, sizeof why);
    free(rep);
    if (st != FS_OK) {
        snprintf(n->why, sizeof n->why, "malformed Task from the aggregator: %s", why);
        n->rpc = FS_RPC_INVALID_ARGUMENT; /* another protocol version: fatal */
        return st == FS_ERR_MISMATCH ? FS_ERR_MISMATCH : FS_ERR_IO;
    }
    return FS_OK;
}

/* ---- DownloadModel ------------------------------------------------------- */

typedef struct {
    uint32_t round;
    size_t P;
    float *dst;
    uint64_t next;        /* parameters received */
    uint32_t crc_run, crc_msg;
    int have_crc;
    uint64_t bytes;
    char err[256];
} dl_state;

/* Checks one ModelChunk and copies it into place; non-zero cancels the call. */
static int dl_sink(void *u, const uint8_t *msg, size_t len)
{
    dl_state *d = u;
    fs_wire_model_chunk c;
    char why[256] = "";
    size_t bad = 0;
    d->bytes += len;
    if (fs_wire_decode_model_chunk(msg, len, &c, why, sizeof why) != FS_OK) {
        snprintf(d->err, sizeof d->err, "malformed model chunk: %s", why);
        return 1;
    }
    if (c.round != d->round || c.num_params != d->P || c.offset != d->next || c.len / 4 > d->P - d->next ||
        (d->have_crc && c.crc32 != d->crc_msg)) {
        snprintf(d->err, sizeof d->err,
                 "model chunk for round %u, %llu parameters, offset %llu, CRC %08x does not continue "
                 "round %u's model of %zu parameters at offset %llu",
                 c.round, (unsigned long long)c.num_params, (unsigned long long)c.offset, c.crc32, d->round,
                 d->P, (unsigned long long)d->next);
        return 1;
    }
    if (fs_wire_check_finite(c.data, c.len, &bad) != FS_OK) {
        snprintf(d->err, sizeof d->err, "the global model holds NaN or Inf at parameter %llu",
                 (unsigned long long)(d->next + bad));
        return 1;
    }
    d->crc_msg = c.crc32;
    d->have_crc = 1;
    d->crc_run = fs_wire_crc32_bytes(d->crc_run, c.data, c.len);
    fs_wire_copy_f32(d->dst + d->next, c.data, c.len);
    d->next += c.len / 4;
    return 0;
}

/* Downloads the model that round `round` trains on into n->wg; want_crc
 * (0 = unknown) is the Task's CRC of it. *bytes receives the bytes received. */
static fs_status download(node *n, uint32_t round, uint32_t want_crc, uint64_t *bytes)
{
    fs_wire_model_request rq = {FS_PROTOCOL_VERSION, round};
    uint8_t *msg = NULL;
    size_t len = 0;
    FS_TRY(fs_wire_encode_model_request(&rq, &msg, &len));
    dl_state d = {round, n->U, n->wg, 0, 0, 0, 0, 0, ""};
    fs_call_result r;
    fs_status st = fs_tclient_download(n->cl, fs_federation_methods[FS_M_DOWNLOAD_MODEL].path, msg, len,
                                       dl_sink, &d, (int)n->transfer_ms, &r);
    free(msg);
    *bytes = d.bytes;
    if (st != FS_OK && d.err[0]) {
        snprintf(n->why, sizeof n->why, "%s", d.err);
        return FS_ERR_IO;
    }
    if (st != FS_OK) {
        note_call(n, &r);
        return st == FS_ERR_MISMATCH ? FS_ERR_MISMATCH : st == FS_ERR_NOMEM ? st : FS_ERR_IO;
    }
    if (d.next != n->U) {
        snprintf(n->why, sizeof n->why, "model stream of round %u ended after %llu of %zu parameters", round,
                 (unsigned long long)d.next, n->U);
        return FS_ERR_IO;
    }
    if (d.crc_run != d.crc_msg || (want_crc && d.crc_run != want_crc)) {
        snprintf(n->why, sizeof n->why, "model of round %u: CRC-32 %08x, the stream says %08x, the task %08x",
                 round, d.crc_run, d.crc_msg, want_crc);
        return FS_ERR_IO;
    }
    return FS_OK;
}

/* ---- PushUpdate ---------------------------------------------------------- */

typedef struct {
    const void *data;         /* little-endian 4-byte words (fp32 or masked uint32) */
    size_t P;                 /* words */
    uint64_t off;
    const fs_wire_update_header *hdr;
    uint64_t bytes;
    volatile sig_atomic_t *stop;
} up_state;

/* Produces the next UpdateChunk (the header on the first); 0 at the end. */
static int up_next(void *u, uint8_t **msg, size_t *len)
{
    up_state *s = u;
    if (*s->stop) return -1;
    if (s->off >= s->P) return 0;
    size_t cnt = s->P - s->off < FS_CHUNK_PARAMS ? s->P - s->off : FS_CHUNK_PARAMS;
    fs_wire_update_chunk c;
    memset(&c, 0, sizeof c);
    c.has_header = s->off == 0;
    if (c.has_header) c.header = *s->hdr;
    c.offset = s->off;
    c.data = (const uint8_t *)s->data + 4 * s->off;
    c.len = cnt * 4;
    if (fs_wire_encode_update_chunk(&c, msg, len) != FS_OK) return -1;
    s->off += cnt;
    s->bytes += *len;
    return 1;
}

/* Streams the W words at data with header hdr. FS_OK = accepted. */
static fs_status push_words(node *n, const void *data, size_t W, const fs_wire_update_header *hdr,
                            uint64_t *bytes)
{
    up_state s = {data, W, 0, hdr, 0, n->stop};
    uint8_t *rep = NULL;
    size_t rlen = 0;
    fs_call_result r;
    fs_status st = fs_tclient_upload(n->cl, fs_federation_methods[FS_M_PUSH_UPDATE].path, up_next, &s, &rep,
                                     &rlen, (int)n->transfer_ms, &r);
    *bytes = s.bytes;
    if (st != FS_OK) {
        free(rep);
        note_call(n, &r);
        if (st == FS_ERR_ARG && *n->stop) return FS_OK; /* we cancelled it: stopping */
        return st == FS_ERR_MISMATCH ? FS_ERR_MISMATCH : st == FS_ERR_NOMEM ? st : FS_ERR_IO;
    }
    fs_wire_update_ack ack;
    char why[256] = "";
    st = fs_wire_decode_update_ack(rep, rlen, &ack, why, sizeof why);
    free(rep);
    if (st != FS_OK) {
        snprintf(n->why, sizeof n->why, "malformed UpdateAck: %s", why);
        return FS_ERR_IO;
    }
    if (!ack.accepted) {
        snprintf(n->why, sizeof n->why, "%s", ack.reason[0] ? ack.reason : "(no reason given)");
        return FS_ERR_MISMATCH;
    }
    return FS_OK;
}

/* Streams n->delta with header n->pend_hdr. FS_OK = accepted. */
static fs_status push(node *n, uint64_t *bytes)
{
    return push_words(n, n->delta, n->U, &n->pend_hdr, bytes);
}

/* ---- rounds -------------------------------------------------------------- */

/* Atomically checkpoints n->wg (the global model after `completed` rounds)
 * as STATE_DIR/name; a failure is only a warning. */
static void save_global(node *n, const char *name, uint32_t completed)
{
    if (!n->cfg->state_dir) return;
    const fs_preset *pr = fs_preset_find(n->preset);
    char path[4096];
    if (!pr || snprintf(path, sizeof path, "%s/%s", n->cfg->state_dir, name) >= (int)sizeof path) return;
    fs_ckpt_meta meta;
    memset(&meta, 0, sizeof meta);
    snprintf(meta.preset, sizeof meta.preset, "%s", pr->name);
    meta.base = (uint32_t)pr->base;
    meta.depth = (uint32_t)pr->depth;
    meta.size = (uint32_t)pr->size;
    meta.nparams = n->P;
    meta.epoch = completed;
    if (fs_mkdir_p(n->cfg->state_dir) != FS_OK || fs_ckpt_write(path, &meta, n->wg, NULL, NULL, 0) != FS_OK)
        fs_log_warn("%s: could not save the global model (training goes on)", path);
}

/* TRAIN(t->round): download, evaluate, train, form the delta, push it (or
 * re-push a pending update of the same round and model). */
/* Downloads the global model of round t->round, evaluates it (dice), trains
 * locally and leaves delta = w_local − w_global in n->delta. */
static fs_status local_train(node *n, const fs_wire_task *t, double *loss, double dice[3], double *ts,
                             uint64_t *recv)
{
    uint32_t r = t->round;
    FS_TRY(prepare_noniid(n, t));
    n->last_lr = t->lr;
    FS_TRY(download(n, r, t->model_crc32, recv));
    save_global(n, "global.ckpt", r - 1);
    /* FedBN: this site's normalisation parameters replace the global ones */
    if (t->local_norm && n->have_local) fs_fedbn_restore(n->mask, n->local, n->wg, n->P);
    FS_TRY(fs_session_set_params(n->ses, n->wg));
    FS_TRY(fs_session_eval(n->ses, dice));
    fs_session_seed(n->ses, fs_node_round_seed(n->cfg->seed, r));
    if (t->scaffold) fs_scaffold_correction(n->wg + n->P, n->ci, n->corr, n->P);
    FS_TRY(fs_session_set_correction(n->ses, t->scaffold ? n->corr : NULL));
    double t0 = now_s();
    FS_TRY(fs_session_train(n->ses, (int)t->local_epochs, (int)t->steps_per_epoch, t->lr, t->prox_mu,
                            loss));
    *ts = now_s() - t0;
    if (*n->stop) return FS_OK;
    FS_TRY(fs_session_get_params(n->ses, n->delta));
    if (t->local_norm) {
        fs_fedbn_keep(n->mask, n->delta, n->local, n->P);
        n->have_local = 1;
    }
    for (size_t i = 0; i < n->P; i++) n->delta[i] -= n->wg[i];
    if (t->local_norm) fs_fedbn_zero(n->mask, n->delta, n->P);
    if (t->scaffold)
        FS_TRY(fs_scaffold_update(n->ci, n->wg + n->P, n->delta, fs_session_last_steps(n->ses), t->lr,
                                  n->delta + n->P, n->P));
    return FS_OK;
}

/* ---- secure aggregation ---------------------------------------------------- */

/* One SecAgg call; on FS_OK *rep is the decoded reply, its payload inside
 * *raw (the caller frees *raw). Refusals and transport failures as for the
 * other calls (n->why). */
static fs_status secagg_call(node *n, const fs_wire_task *t, fs_secagg_stage stage,
                             const uint8_t *payload, size_t plen, fs_wire_secagg_reply *rep,
                             uint8_t **raw)
{
    fs_wire_secagg_request rq = {FS_PROTOCOL_VERSION, t->round, t->secagg_attempt, stage, payload, plen};
    uint8_t *msg = NULL;
    size_t len = 0, rlen = 0;
    *raw = NULL;
    FS_TRY(fs_wire_encode_secagg_request(&rq, &msg, &len));
    fs_call_result r;
    fs_status st = fs_tclient_unary(n->cl, fs_federation_methods[FS_M_SECAGG].path, msg, len, raw, &rlen,
                                    n->unary_ms, &r);
    free(msg);
    if (st != FS_OK) {
        free(*raw);
        *raw = NULL;
        note_call(n, &r);
        return st;
    }
    char why[256] = "";
    st = fs_wire_decode_secagg_reply(*raw, rlen, rep, why, sizeof why);
    if (st != FS_OK) {
        free(*raw);
        *raw = NULL;
        snprintf(n->why, sizeof n->why, "malformed SecAggReply: %s", why);
        return FS_ERR_IO;
    }
    return FS_OK;
}

/* A stage step: sends the message (or asks for the server's), asking again
 * while told WAIT, until the round's deadline (plus a minute). FS_OK with an
 * OK reply; FS_ERR_ABANDONED when the attempt is over for this site. */
static fs_status secagg_step(node *n, const fs_wire_task *t, fs_secagg_stage stage,
                             const uint8_t *payload, size_t plen, fs_wire_secagg_reply *rep,
                             uint8_t **raw)
{
    double give_up = now_s() + (double)t->seconds_left + 60.0;
    for (;;) {
        if (*n->stop) return FS_ERR_ABANDONED;
        FS_TRY(secagg_call(n, t, stage, payload, plen, rep, raw));
        if (rep->status == FS_SA_OK) return FS_OK;
        free(*raw);
        *raw = NULL;
        if (rep->status == FS_SA_ABANDONED) {
            if (stage == FS_HE_GET_DECRYPT) /* the normal end of an encrypted round */
                fs_log_info("round %u: decryption is over for this site (%s)", t->round,
                            rep->reason[0] ? rep->reason : "no reason given");
            else
                fs_log_warn("round %u: %s aggregation over for this site: %s", t->round,
                            t->encrypted ? "encrypted" : "secure",
                            rep->reason[0] ? rep->reason : "(no reason)");
            return FS_ERR_ABANDONED;
        }
        if (now_s() > give_up) {
            fs_log_warn("round %u: secure aggregation stage %d did not end by the deadline", t->round,
                        (int)stage);
            return FS_ERR_ABANDONED;
        }
        nap(n, (rep->retry_after_ms ? rep->retry_after_ms : 250) / 1000.0);
    }
}

/* The configured dropout (fs_node_config.secagg_drop_*) at this stage? */
static int drop_here(node *n, const fs_wire_task *t, int stage)
{
    if (n->dropped || n->cfg->secagg_drop_stage != stage || t->round != n->cfg->secagg_drop_round)
        return 0;
    static const char *const names[] = {"before advertising its keys", "before sending its shares",
                                         "before sending its masked update",
                                         "before answering the unmasking request"};
    static const char *const he_names[] = {"before sending its key share", "before sending its shares",
                                            "before sending its encrypted update",
                                            "before decrypting"};
    fs_log_warn("round %u: leaving %s aggregation %s (configured dropout)", t->round,
                t->encrypted ? "encrypted" : "secure", t->encrypted ? he_names[stage] : names[stage]);
    n->dropped = 1;
    n->drop_attempt = t->secagg_attempt;
    return 1;
}

/* The start of a secure or encrypted round: a task for another model size
 * (FS_ERR_MISMATCH: join again), or an attempt this site left on purpose
 * (it naps and stays out) leave *go at 0; else *go = 1. */
static fs_status private_round_start(node *n, const fs_wire_task *t, int *go)
{
    *go = 0;
    if (t->num_params && t->num_params != n->P) {
        snprintf(n->why, sizeof n->why, "the task is for a model of %llu parameters, this site's has %zu",
                 (unsigned long long)t->num_params, n->P);
        n->joined = 0;
        return FS_ERR_MISMATCH;
    }
    n->pending = 0;
    if (n->dropped && t->round == n->cfg->secagg_drop_round && t->secagg_attempt == n->drop_attempt) {
        nap(n, 0.5); /* stays out of the attempt it left (a dropped site) */
        return FS_OK;
    }
    *go = 1;
    return FS_OK;
}

/* A securely aggregated round (client.h). */

/* Adds this site's masks to qbuf (P + 1 words): on the GPU with the CUDA
 * backend's chacha_mask when the site trains there (the same words as
 * libsodium's stream on the CPU: test_secagg checks the exported keys, and
 * test_aggops_cuda the op), else with libsodium on the CPU. A GPU failure
 * before the masked words come back falls back to the CPU; after that the
 * round fails (qbuf may be half-written). */
static fs_status mask_update(node *n, fs_secagg_site *sa)
{
    const size_t W = n->P + 1;
    const fs_backend *be = fs_backend_cuda();
    if (be && !strcmp(fs_session_backend(n->ses), "cuda")) {
        fs_mask_key *keys = NULL;
        int k = 0;
        void *ctx = NULL;
        uint32_t *d = NULL;
        fs_status st = fs_secagg_site_mask_keys(sa, &keys, &k);
        if (st == FS_OK) st = be->ctx_init(&ctx, 0);
        if (st == FS_OK) st = be->alloc(ctx, (void **)&d, W * sizeof *d);
        if (st == FS_OK) st = be->upload(ctx, d, n->qbuf, W * sizeof *d);
        if (st == FS_OK) st = be->chacha_mask(ctx, W, d, 0, keys, k);
        fs_secagg_unmask_keys_free(keys, k);
        int fetched = 0;
        if (st == FS_OK) {
            fetched = 1;
            st = be->download(ctx, n->qbuf, d, W * sizeof *d);
        }
        if (d) be->free(ctx, d);
        if (ctx) be->ctx_free(ctx);
        if (st == FS_OK) return FS_OK;
        if (fetched) {
            fs_log_error("masking on the GPU: the masked update could not be read back (%s)",
                         fs_status_str(st));
            return st;
        }
        fs_log_warn("masking on the GPU failed (%s): masking on the CPU", fs_status_str(st));
    }
    return fs_secagg_site_mask(sa, n->qbuf, 0, W, n->qbuf);
}

static fs_status train_round_secure(node *n, const fs_wire_task *t)
{
    uint32_t r = t->round;
    int go = 0;
    fs_status st0 = private_round_start(n, t, &go);
    if (!go) return st0;
    fs_secagg_params p;
    memset(&p, 0, sizeof p);
    p.round = r;
    p.n_sites = t->secagg_sites;
    p.threshold = t->secagg_threshold;
    p.neighbours = t->secagg_neighbours;
    p.n_words = (uint64_t)n->P + 1;
    memcpy(p.round_seed, t->secagg_round_seed, sizeof p.round_seed);
    int f = 0;
    fs_secagg_site *sa = NULL;
    uint8_t *out = NULL, *raw = NULL;
    size_t olen = 0;
    fs_wire_secagg_reply rep;
    double t0 = now_s(), loss = NAN, ts = 0, dice[3];
    uint64_t recv = 0, sent = 0;
    fs_status st = fs_secagg_params_check(&p);
    if (st == FS_OK && t->dp_distributed) f = (int)t->secagg_quant_bits; /* the aggregator's grid */
    else if (st == FS_OK) st = fs_secagg_quant_bits(t->secagg_clip, t->secagg_sites, &f);
    fs_dp_dgauss g;
    double local_sd = t->dp_distributed ? (double)t->dp_noise_multiplier * t->secagg_clip * ldexp(1.0, f) /
                                              sqrt((double)t->secagg_threshold)
                                        : 0;
    if (st == FS_OK && t->dp_distributed) st = fs_dp_dgauss_init(&g, local_sd);
    if (st == FS_OK) st = fs_secagg_site_new(&p, t->secagg_index, &sa);
    if (st != FS_OK) {
        snprintf(n->why, sizeof n->why, "round %u: cannot take part in secure aggregation: %s", r,
                 fs_status_str(st));
        fs_log_warn("%s", n->why);
        return FS_OK; /* this round goes on without us */
    }
    if (!n->qbuf && !(n->qbuf = malloc((n->P + 1) * sizeof *n->qbuf))) {
        fs_secagg_site_free(sa);
        return FS_ERR_NOMEM;
    }
#define SA_TRY(expr) do { st = (expr); if (st != FS_OK) goto done; } while (0)
    if (drop_here(n, t, 0)) goto done;
    SA_TRY(fs_secagg_site_advertise(sa, &out, &olen));
    SA_TRY(secagg_step(n, t, FS_SA_ADVERTISE, out, olen, &rep, &raw));
    fs_secagg_msg_free(out, olen), out = NULL, free(raw), raw = NULL;
    if (drop_here(n, t, 1)) goto done;
    SA_TRY(secagg_step(n, t, FS_SA_GET_KEYS, NULL, 0, &rep, &raw));
    SA_TRY(fs_secagg_site_share_keys(sa, rep.payload, rep.len, &out, &olen));
    free(raw), raw = NULL;
    SA_TRY(secagg_step(n, t, FS_SA_SHARES, out, olen, &rep, &raw));
    fs_secagg_msg_free(out, olen), out = NULL, free(raw), raw = NULL;
    SA_TRY(secagg_step(n, t, FS_SA_GET_RELAY, NULL, 0, &rep, &raw));
    SA_TRY(fs_secagg_site_recv_shares(sa, rep.payload, rep.len));
    free(raw), raw = NULL;

    SA_TRY(local_train(n, t, &loss, dice, &ts, &recv));
    if (*n->stop) goto done;
    if (drop_here(n, t, 2)) goto done;
    uint64_t m = fs_session_nsamples(n->ses);
    if (m > t->secagg_weight_cap && !t->dp_distributed) {
        fs_log_warn("round %u: %llu training slices exceed the weight cap %llu; counted as the cap", r,
                    (unsigned long long)m, (unsigned long long)t->secagg_weight_cap);
        m = t->secagg_weight_cap;
    }
    double scale = 1;
    SA_TRY(fs_secagg_l2_scale(n->delta, n->P, t->secagg_clip, &scale));
    fs_log_info("round %u: update L2 norm %s clip %.4g%s", r, scale < 1 ? "above" : "within",
                t->secagg_clip, scale < 1 ? " (scaled down)" : "");
    uint64_t sr_seed;
    randombytes_buf(&sr_seed, sizeof sr_seed);
    if (m > t->secagg_weight_cap) m = t->secagg_weight_cap; /* DP: every site weighs 1 */
    SA_TRY(fs_secagg_encode_update(n->delta, n->P, m, t->secagg_weight_cap, t->secagg_clip, f, sr_seed,
                                   n->qbuf));
    if (t->dp_distributed) {
        /* WARNING: this site's share of the privacy noise (Kairouz et al.
         * 2021): a discrete Gaussian of stddev σ·C·2^f/√t integer steps on
         * every update word, from a fresh secret key, added before masking so
         * that the aggregator only ever sees it inside the masked sum. */
        uint8_t nkey[32];
        randombytes_buf(nkey, sizeof nkey);
        fs_dp_dgauss_add_u32(&g, nkey, 0, n->qbuf, n->P);
        sodium_memzero(nkey, sizeof nkey);
        fs_log_info("round %u: noise share added (discrete Gaussian, stddev %.4g steps of 2^-%d)", r,
                    local_sd, f);
    }
    SA_TRY(mask_update(n, sa));
    fs_wire_update_header h;
    memset(&h, 0, sizeof h);
    h.protocol_version = FS_PROTOCOL_VERSION;
    h.round = r;
    h.num_params = n->P + 1;
    h.num_samples = 1; /* the real weight travels masked */
    h.train_loss = (float)loss;
    h.global_dice_wt = (float)dice[0];
    h.global_dice_tc = (float)dice[1];
    h.global_dice_et = (float)dice[2];
    h.train_seconds = ts;
    h.masked = 1;
    h.secagg_attempt = t->secagg_attempt;
    h.crc32 = fs_wire_crc32_bytes(0, (const uint8_t *)n->qbuf, (n->P + 1) * 4);
    n->rep.rounds_trained++;
    st = push_words(n, n->qbuf, n->P + 1, &h, &sent);
    if (st == FS_ERR_MISMATCH) {
        fs_log_warn("the aggregator refused this site's masked update for round %u: %s", r, n->why);
        n->rep.updates_refused++;
        st = FS_OK;
        goto done;
    }
    if (st != FS_OK) goto done;
    n->rep.updates_accepted++;
    n->rep.last_round_done = r;
    if (drop_here(n, t, 3)) goto done;
    SA_TRY(secagg_step(n, t, FS_SA_GET_UNMASK, NULL, 0, &rep, &raw));
    SA_TRY(fs_secagg_site_unmask(sa, rep.payload, rep.len, &out, &olen));
    free(raw), raw = NULL;
    SA_TRY(secagg_step(n, t, FS_SA_UNMASK, out, olen, &rep, &raw));
    printf("round %u  global Dice WT %.3f TC %.3f ET %.3f  loss %.4f  train %.1f s  round %.1f s  "
           "sent %.2f MB  received %.2f MB  (secure aggregation)\n",
           r, dice[0], dice[1], dice[2], loss, ts, now_s() - t0, sent / 1e6, recv / 1e6);
    fflush(stdout);
done:
#undef SA_TRY
    fs_secagg_msg_free(out, olen);
    free(raw);
    fs_secagg_site_free(sa);
    if (st == FS_ERR_ABANDONED) st = FS_OK; /* the round goes on (or restarts) without us */
    if (st == FS_ERR_MISMATCH && n->rpc != FS_RPC_FAILED_PRECONDITION) st = FS_ERR_IO;
    return st;
}

/* ---- encrypted aggregation --------------------------------------------------- */

/* A stage step whose request payload is a 4-byte start index. */
static fs_status he_step_at(node *n, const fs_wire_task *t, fs_secagg_stage stage, uint32_t start,
                            fs_wire_secagg_reply *rep, uint8_t **raw)
{
    uint8_t b[4] = {(uint8_t)start, (uint8_t)(start >> 8), (uint8_t)(start >> 16), (uint8_t)(start >> 24)};
    return secagg_step(n, t, stage, b, sizeof b, rep, raw);
}

/* An encrypted round (client.h): key setup, local training, the update as
 * BFV ciphertexts under the round's collective key, then — when chosen —
 * partial decryptions of the sum. */
static fs_status train_round_encrypted(node *n, const fs_wire_task *t)
{
    uint32_t r = t->round;
    int go = 0;
    fs_status st0 = private_round_start(n, t, &go);
    if (!go) return st0;
    fs_he_params p;
    memset(&p, 0, sizeof p);
    p.round = r;
    p.attempt = t->secagg_attempt;
    p.n_sites = t->secagg_sites;
    p.threshold = t->secagg_threshold;
    memcpy(p.crs_seed, t->secagg_round_seed, sizeof p.crs_seed);
    p.n_values = n->P;
    p.qz.clip = (float)t->secagg_clip;
    p.qz.frac_bits = (unsigned)t->secagg_quant_bits;
    fs_he_site *hs = NULL;
    uint8_t *out = NULL, *raw = NULL, **parts = NULL, *cts = NULL;
    size_t olen = 0, *plens = NULL, nparts = 0;
    int64_t *q = NULL;
    fs_wire_secagg_reply rep;
    double t0 = now_s(), loss = NAN, ts = 0, dice[3] = {NAN, NAN, NAN};
    uint64_t recv = 0, sent = 0;
    unsigned answered = 0;
    fs_status st = fs_he_params_check(&p);
    if (st == FS_OK) st = fs_he_site_new(&p, t->secagg_index + 1, &hs);
    if (st != FS_OK) {
        snprintf(n->why, sizeof n->why, "round %u: cannot take part in encrypted aggregation: %s", r,
                 fs_status_str(st));
        fs_log_warn("%s", n->why);
        return FS_OK; /* this round goes on without us */
    }
#define HE_TRY(expr) do { st = (expr); if (st != FS_OK) goto done; } while (0)
    if (drop_here(n, t, 0)) goto done;
    HE_TRY(fs_he_site_keys(hs, &out, &olen));
    HE_TRY(secagg_step(n, t, FS_HE_KEYS, out, olen, &rep, &raw));
    free(out), out = NULL, free(raw), raw = NULL;
    HE_TRY(secagg_step(n, t, FS_HE_GET_BCAST, NULL, 0, &rep, &raw));
    if (drop_here(n, t, 1)) goto done;
    HE_TRY(fs_he_site_shares(hs, rep.payload, rep.len, &parts, &plens, &nparts));
    free(raw), raw = NULL;
    for (size_t i = 0; i < nparts; i++) {
        HE_TRY(secagg_step(n, t, FS_HE_SHARES, parts[i], plens[i], &rep, &raw));
        free(raw), raw = NULL;
    }
    fs_he_site_free_parts(parts, plens, nparts);
    parts = NULL, plens = NULL, nparts = 0;
    for (uint32_t start = 1; start;) {
        HE_TRY(he_step_at(n, t, FS_HE_GET_RELAY, start, &rep, &raw));
        HE_TRY(fs_he_site_recv_relay(hs, rep.payload, rep.len, &start));
        free(raw), raw = NULL;
    }

    HE_TRY(local_train(n, t, &loss, dice, &ts, &recv));
    if (*n->stop) goto done;
    if (drop_here(n, t, 2)) goto done;
    uint64_t m = fs_session_nsamples(n->ses);
    if (m > t->secagg_weight_cap && !t->dp_distributed) {
        fs_log_warn("round %u: %llu training slices exceed the weight cap %llu; counted as the cap", r,
                    (unsigned long long)m, (unsigned long long)t->secagg_weight_cap);
    }
    if (m > t->secagg_weight_cap) m = t->secagg_weight_cap; /* DP: every site weighs 1 */
    if (t->dp_distributed) {
        double norm = 0;
        HE_TRY(fs_dp_clip_l2(n->delta, n->P, t->secagg_clip, &norm));
        fs_log_info("round %u: update L2 norm %.4g %s the privacy clip %.4g", r, norm,
                    norm > t->secagg_clip ? "clipped to" : "within", t->secagg_clip);
    }
    const size_t nct = fs_he_params_nct(&p), ob = fs_he_wire_bytes(FS_HE_OBJ_CT);
    q = malloc(nct * FS_HE_N * sizeof *q);
    cts = malloc(nct * ob);
    if (!q || !cts) {
        st = FS_ERR_NOMEM;
        goto done;
    }
    uint64_t sr_seed;
    randombytes_buf(&sr_seed, sizeof sr_seed);
    HE_TRY(fs_he_quantise(&p.qz, n->delta, n->P, (float)((double)m / (double)t->secagg_weight_cap), sr_seed,
                          q));
    if (t->dp_distributed) {
        /* WARNING: this site's share of the privacy noise (Kairouz et al.
         * 2021): a discrete Gaussian of stddev σ·C·2^f/√t integer steps on
         * every update value, from a fresh secret key, added before
         * encryption so that only the decrypted sum ever holds it. */
        double local_sd = (double)t->dp_noise_multiplier * t->secagg_clip * ldexp(1.0, (int)p.qz.frac_bits) /
                          sqrt((double)t->secagg_threshold);
        fs_dp_dgauss g;
        int64_t *noise = malloc(FS_HE_N * sizeof *noise);
        uint8_t nkey[32];
        st = noise ? fs_dp_dgauss_init(&g, local_sd) : FS_ERR_NOMEM;
        randombytes_buf(nkey, sizeof nkey);
        for (size_t off = 0; off < n->P && st == FS_OK; off += FS_HE_N) {
            size_t k = n->P - off < FS_HE_N ? n->P - off : FS_HE_N;
            fs_dp_dgauss_sample(&g, nkey, off, noise, k);
            for (size_t i = 0; i < k; i++) q[off + i] += noise[i];
        }
        sodium_memzero(nkey, sizeof nkey);
        if (noise) sodium_memzero(noise, FS_HE_N * sizeof *noise);
        free(noise);
        if (st != FS_OK) goto done;
        fs_log_info("round %u: noise share added (discrete Gaussian, stddev %.4g steps of 2^-%u)", r, local_sd,
                    p.qz.frac_bits);
    }
    double te = now_s();
    /* on the GPU when this site trains there (bit-identical to the CPU) */
    int he_gpu = 0;
    HE_TRY(fs_he_site_encrypt(hs, q, n->P + 1, !strcmp(fs_session_backend(n->ses), "cuda"), cts,
                              nct * ob, &he_gpu));
    fs_log_info("round %u: update encrypted on the %s: %zu ciphertext(s), %.2f MB, %.2f s", r,
                he_gpu ? "GPU" : "CPU", nct, (double)(nct * ob) / 1e6, now_s() - te);
    fs_wire_update_header h;
    memset(&h, 0, sizeof h);
    h.protocol_version = FS_PROTOCOL_VERSION;
    h.round = r;
    h.num_params = nct * ob / 4;
    h.num_samples = 1; /* the real weight travels encrypted */
    h.train_loss = (float)loss;
    h.global_dice_wt = (float)dice[0];
    h.global_dice_tc = (float)dice[1];
    h.global_dice_et = (float)dice[2];
    h.train_seconds = ts;
    h.encrypted = 1;
    h.secagg_attempt = t->secagg_attempt;
    h.crc32 = fs_wire_crc32_bytes(0, cts, nct * ob);
    n->rep.rounds_trained++;
    st = push_words(n, cts, nct * ob / 4, &h, &sent);
    free(cts), cts = NULL;
    if (st == FS_ERR_MISMATCH) {
        fs_log_warn("the aggregator refused this site's encrypted update for round %u: %s", r, n->why);
        n->rep.updates_refused++;
        st = FS_OK;
        goto done;
    }
    if (st != FS_OK) goto done;
    n->rep.updates_accepted++;
    n->rep.last_round_done = r;
    if (drop_here(n, t, 3)) goto done;
    /* Decryption: asked while the aggregator wants this site's partials
     * (it answers WAIT while it does not, and ABANDONED once the round is
     * over, which ends the loop through HE_TRY). */
    for (uint32_t start = 0;;) {
        HE_TRY(he_step_at(n, t, FS_HE_GET_DECRYPT, start, &rep, &raw));
        uint32_t gen = 0, next = 0;
        HE_TRY(fs_he_site_partials(hs, rep.payload, rep.len, &out, &olen, &gen, &next));
        free(raw), raw = NULL;
        HE_TRY(secagg_step(n, t, FS_HE_PARTIALS, out, olen, &rep, &raw));
        free(out), out = NULL;
        if (rep.len) {
            fs_log_warn("round %u: the decryption set changed; answering again", r);
            start = 0;
        } else {
            start = next;
            if (!next) answered++;
        }
        free(raw), raw = NULL;
    }
done:
#undef HE_TRY
    if (n->rep.last_round_done == r && sent) {
        printf("round %u  global Dice WT %.3f TC %.3f ET %.3f  loss %.4f  train %.1f s  round %.1f s  "
               "sent %.2f MB  received %.2f MB  (encrypted aggregation%s)\n",
               r, dice[0], dice[1], dice[2], loss, ts, now_s() - t0, sent / 1e6, recv / 1e6,
               answered ? ", took part in decryption" : "");
        fflush(stdout);
    }
    free(out);
    free(raw);
    free(q);
    free(cts);
    fs_he_site_free_parts(parts, plens, nparts);
    fs_he_site_free(hs);
    if (st == FS_ERR_ABANDONED) st = FS_OK; /* the round goes on (or restarts) without us */
    if (st == FS_ERR_MISMATCH && n->rpc != FS_RPC_FAILED_PRECONDITION) st = FS_ERR_IO;
    return st;
}

static fs_status train_round(node *n, const fs_wire_task *t)
{
    if (t->secure_agg) return train_round_secure(n, t);
    if (t->encrypted) return train_round_encrypted(n, t);
    uint32_t r = t->round;
    if (t->num_params && t->num_params != n->P) {
        /* the aggregator changed its model: Join again, which refuses clearly */
        snprintf(n->why, sizeof n->why, "the task is for a model of %llu parameters, this site's has %zu",
                 (unsigned long long)t->num_params, n->P);
        n->joined = 0;
        return FS_ERR_MISMATCH;
    }
    if (n->pending && (n->pend_hdr.round != r || n->pend_model_crc != t->model_crc32)) {
        fs_log_info("dropping the undelivered update of round %u (the aggregator is at round %u)",
                    n->pend_hdr.round, r);
        n->pending = 0;
    }
    if (n->pending && n->U != (t->scaffold ? 2 * n->P : n->P)) n->pending = 0;
    if (!n->pending) {
        double t0 = now_s(), loss = NAN, ts = 0, dice[3];
        uint64_t recv = 0;
        fs_status st = local_train(n, t, &loss, dice, &ts, &recv);
        if (st != FS_OK || *n->stop) return st;
        double norm = 0;
        if (t->dp_clip > 0) {
            /* WARNING: differential privacy rests on this bound: no site's
             * update may weigh more than dp_clip in the aggregator's sum. */
            fs_status cs = fs_dp_clip_l2(n->delta, n->P, (double)t->dp_clip, &norm);
            if (cs != FS_OK) {
                snprintf(n->why, sizeof n->why, "cannot clip the update of round %u: %s", r,
                         fs_status_str(cs));
                return cs;
            }
            fs_log_info("round %u: update L2 norm %.4g%s %.4g (differential privacy)", r, norm,
                        norm > t->dp_clip ? ", clipped to" : " <= clip", (double)t->dp_clip);
        }
        n->rep.rounds_trained++;
        fs_wire_update_header *h = &n->pend_hdr;
        memset(h, 0, sizeof *h);
        h->protocol_version = FS_PROTOCOL_VERSION;
        h->round = r;
        h->num_params = n->U;
        h->num_samples = fs_session_nsamples(n->ses);
        h->train_loss = (float)loss;
        h->global_dice_wt = (float)dice[0];
        h->global_dice_tc = (float)dice[1];
        h->global_dice_et = (float)dice[2];
        h->train_seconds = ts;
        h->crc32 = fs_wire_crc32_f32(0, n->delta, n->U);
        /* adaptive clipping's bit (the aggregator noises the count) */
        h->dp_unclipped = t->dp_clip > 0 && norm <= (double)t->dp_clip;
        n->pending = 1;
        n->pend_model_crc = t->model_crc32;
        n->pend_t0 = t0;
        n->pend_recv = recv;
    } else {
        fs_log_info("sending the update of round %u again (already trained)", r);
    }
    uint64_t sent = 0;
    fs_status st = push(n, &sent);
    if (*n->stop) return FS_OK;
    if (st == FS_ERR_MISMATCH) {
        fs_log_warn("the aggregator refused this site's update for round %u: %s", r, n->why);
        n->pending = 0;
        n->rep.updates_refused++;
        return FS_OK;
    }
    if (st != FS_OK) return st;
    const fs_wire_update_header *h = &n->pend_hdr;
    n->pending = 0;
    n->rep.updates_accepted++;
    n->rep.last_round_done = r;
    printf("round %u  global Dice WT %.3f TC %.3f ET %.3f  loss %.4f  train %.1f s  round %.1f s  "
           "sent %.2f MB  received %.2f MB\n",
           r, h->global_dice_wt, h->global_dice_tc, h->global_dice_et, h->train_loss, h->train_seconds,
           now_s() - n->pend_t0, sent / 1e6, n->pend_recv / 1e6);
    fflush(stdout);
    return FS_OK;
}

/* Personalised fine-tuning (cfg->finetune_epochs > 0): K local epochs of
 * Adam from the final model (in the session), plain (no proximal term, no
 * SCAFFOLD correction), evaluated on the site's held-out cases and saved as
 * STATE_DIR/personal.ckpt. Failures are warnings: the federation is over. */
static void personalise(node *n, uint32_t rounds)
{
    const fs_node_config *c = n->cfg;
    if (c->finetune_epochs <= 0 || *n->stop) return;
    float lr = c->finetune_lr > 0 ? c->finetune_lr : n->last_lr > 0 ? n->last_lr : 1e-3f;
    double dice[3], loss = NAN;
    fs_session_seed(n->ses, fs_node_round_seed(c->seed, rounds + 1));
    if (fs_session_set_correction(n->ses, NULL) != FS_OK ||
        fs_session_train(n->ses, c->finetune_epochs, 0, lr, 0.0f, &loss) != FS_OK || *n->stop ||
        fs_session_eval(n->ses, dice) != FS_OK || fs_session_get_params(n->ses, n->wg) != FS_OK) {
        fs_log_warn("personalised fine-tuning failed; the final model is the federated one");
        return;
    }
    memcpy(n->rep.personal_dice, dice, sizeof dice);
    save_global(n, "personal.ckpt", rounds);
    printf("personalised model (%d local epochs, lr %g): held-out Dice WT %.3f TC %.3f ET %.3f (federated "
           "model: WT %.3f TC %.3f ET %.3f)\n", c->finetune_epochs, lr, dice[0], dice[1], dice[2],
           n->rep.final_dice[0], n->rep.final_dice[1], n->rep.final_dice[2]);
    fflush(stdout);
}

/* FINISHED after round t->round: fetch, evaluate and save the final model
 * (a few tries; the federation is over either way). */
static void finish(node *n, const fs_wire_task *t)
{
    n->rep.finished = 1;
    fs_status st = prepare_noniid(n, t) == FS_OK ? FS_ERR_IO : FS_ERR_NOMEM;
    uint64_t recv = 0;
    for (int tries = 0; tries < 3 && !*n->stop && st == FS_ERR_IO; tries++) {
        st = download(n, t->round + 1, t->model_crc32, &recv);
        if (st != FS_ERR_IO) break;
        if (tries < 2 && backoff(n, "downloading the final model") != FS_OK) break;
    }
    if (st != FS_OK) {
        fs_log_warn("federation finished after round %u, but the final model could not be fetched: %s",
                    t->round, n->why);
        return;
    }
    double dice[3];
    save_global(n, "global.ckpt", t->round);
    /* FedBN: the site's model is the global one with its own normalisation */
    if (t->local_norm && n->have_local) fs_fedbn_restore(n->mask, n->local, n->wg, n->P);
    if (fs_session_set_params(n->ses, n->wg) != FS_OK || fs_session_eval(n->ses, dice) != FS_OK) return;
    memcpy(n->rep.final_dice, dice, sizeof dice);
    save_global(n, "final.ckpt", t->round);
    printf("federation finished after round %u: final global model, held-out Dice WT %.3f TC %.3f ET %.3f "
           "(received %.2f MB)%s\n", t->round, dice[0], dice[1], dice[2], recv / 1e6,
           t->local_norm && n->have_local ? " [FedBN: with this site's normalisation parameters]" : "");
    fflush(stdout);
    personalise(n, t->round);
}

/* The loop of client.h. Returns FS_OK when finished or stopped, else the
 * fatal status (already logged). */
static fs_status loop(node *n)
{
    while (!*n->stop) {
        fs_status st;
        if (!n->joined) {
            st = join(n);
            if (st == FS_ERR_IO) {
                FS_TRY(backoff(n, "joining the federation"));
                continue;
            }
            if (st != FS_OK) return st;
        }
        fs_wire_task t;
        st = get_task(n, &t);
        if (st == FS_ERR_IO) {
            FS_TRY(backoff(n, "asking for a task"));
            continue;
        }
        if (st == FS_ERR_MISMATCH) {
            /* refused: fatal for identity / protocol problems, else join again */
            if (n->rpc == FS_RPC_PERMISSION_DENIED || n->rpc == FS_RPC_NOT_FOUND ||
                n->rpc == FS_RPC_UNIMPLEMENTED || n->rpc == FS_RPC_INVALID_ARGUMENT) {
                fs_log_error("the aggregator %s refused this site's task request: %s", n->cfg->aggregator,
                             n->why);
                return FS_ERR_MISMATCH;
            }
            n->joined = 0;
            FS_TRY(backoff(n, "asking for a task (joining again)"));
            continue;
        }
        if (st != FS_OK) return st;
        n->nfail = 0;
        if (t.action == FS_TASK_WAIT) {
            nap(n, (t.retry_after_ms ? t.retry_after_ms : 1000) / 1000.0);
        } else if (t.action == FS_TASK_TRAIN) {
            st = train_round(n, &t);
            if (st == FS_ERR_IO || st == FS_ERR_MISMATCH) {
                char what[64];
                snprintf(what, sizeof what, "round %u", t.round);
                FS_TRY(backoff(n, what));
            } else if (st != FS_OK) {
                return st;
            } else {
                n->nfail = 0;
            }
        } else {
            finish(n, &t);
            return FS_OK;
        }
    }
    fs_log_info("stopping");
    return FS_OK;
}

fs_status fs_node_run(const fs_node_config *cfg, volatile sig_atomic_t *stop)
{
    static volatile sig_atomic_t never = 0;
    if (!cfg || !cfg->aggregator || !cfg->data || cfg->ndata <= 0) return FS_ERR_ARG;
    if (!cfg->plaintext && (!cfg->ca || !cfg->cert || !cfg->key)) {
        fs_log_error("node: the CA certificate, this site's certificate and its key are all required "
                     "(mutual TLS)");
        return FS_ERR_ARG;
    }
    node *n = calloc(1, sizeof *n);
    if (!n) return FS_ERR_NOMEM;
    n->cfg = cfg;
    n->stop = stop ? stop : &never;
    n->tls = (fs_tls_files){cfg->ca, cfg->cert, cfg->key, cfg->server_name};
    n->unary_ms = cfg->rpc_timeout_ms > 0 ? cfg->rpc_timeout_ms : 10000;
    n->rep.final_dice[0] = n->rep.final_dice[1] = n->rep.final_dice[2] = NAN;
    n->rep.personal_dice[0] = n->rep.personal_dice[1] = n->rep.personal_dice[2] = NAN;
    fs_rng_seed(&n->rng, (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32), 0x6e6f6465ULL);
    const char *preset = cfg->preset && strcmp(cfg->preset, "auto") ? cfg->preset : "tiny";
    n->preset_auto = !cfg->preset || !strcmp(cfg->preset, "auto");
    fs_status st = open_session(n, preset);
    if (st == FS_OK) st = reconnect(n);
    if (st == FS_OK) st = loop(n);
    if (cfg->report) *cfg->report = n->rep;
    fs_tclient_free(n->cl);
    fs_session_free(n->ses);
    free(n->wg);
    free(n->delta);
    free(n->qbuf);
    free_noniid(n);
    free(n);
    return st;
}
