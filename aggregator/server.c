/*
 * aggregator/server.c — see server.h. Layout: status mapping and logging
 * helpers; the unary handlers (Join, GetTask); the model download stream;
 * the update upload stream; the tick (clock, round lines from the metrics
 * file, linger after the last round); start / run / free.
 *
 * Every handler runs on the transport's single event loop, so the round
 * state machine (not thread-safe) needs no lock. Times given to the state
 * machine are CLOCK_MONOTONIC seconds.
 *
 * Tested by tests/test_agg_server.c.
 */
#include "aggregator/server.h"
#include "common/log.h"
#include "common/wire.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the model is streamed from host floats as little-endian fp32: port server.c to this host"
#endif

struct fs_server {
    const fs_server_config *cfg;
    fs_round *agg;
    fs_tserver *ts;
    int port;
    volatile sig_atomic_t stop;    /* handed to the transport's loop          */
    volatile sig_atomic_t *ext;    /* the caller's stop flag (signals)        */
    uint32_t reported;             /* last completed round already reported   */
    double finished_at;            /* when the last round closed (< 0: not yet) */
    char metrics[4096];            /* the metrics file's path                 */
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static const char *who(const char *identity) { return identity ? identity : "(no certificate)"; }

/* The gRPC status for a refusal of the state machine (round.h's list). */
static fs_rpc_code round_code(fs_status st)
{
    switch (st) {
    case FS_OK: return FS_RPC_OK;
    case FS_ERR_NOT_FOUND: return FS_RPC_PERMISSION_DENIED;
    case FS_ERR_MISMATCH: return FS_RPC_FAILED_PRECONDITION;
    case FS_ERR_FORMAT:
    case FS_ERR_NUMERIC:
    case FS_ERR_CHECKSUM:
    case FS_ERR_ARG: return FS_RPC_INVALID_ARGUMENT;
    case FS_ERR_IO: return FS_RPC_UNAVAILABLE; /* our disk: worth a retry */
    default: return FS_RPC_INTERNAL;
    }
}

static void set_reply(fs_rpc_reply *out, fs_rpc_code code, const char *reason)
{
    out->code = code;
    snprintf(out->reason, sizeof out->reason, "%s", reason ? reason : "");
}

/* A message that did not decode: logged with the caller's identity, answered
 * with the decoder's reason (FAILED_PRECONDITION for a protocol version). */
static void refuse_decode(fs_rpc_reply *out, const char *identity, const char *what, fs_status st,
                          const char *why)
{
    fs_log_warn("site %s: %s refused: %s", who(identity), what, why[0] ? why : fs_status_str(st));
    set_reply(out, fs_wire_rpc_code(st), why[0] ? why : fs_status_str(st));
}

/* Calls made without a client certificate never reach the state machine
 * (the transport already refuses them under TLS; this is a second lock). */
static int refuse_anonymous(fs_rpc_reply *out, const char *identity, const char *what)
{
    if (identity && identity[0]) return 0;
    fs_log_warn("%s refused: the caller presented no client certificate", what);
    set_reply(out, FS_RPC_PERMISSION_DENIED, "a client certificate is required");
    return 1;
}

/* Reads the last line of the metrics file (round.c wrote and fsync'ed it)
 * and sums what the operator's round line shows. Returns 0 when the line of
 * `round` is not there. */
static int metrics_info(const fs_server *s, uint32_t round, fs_server_round_info *info)
{
    FILE *f = fopen(s->metrics, "rb");
    if (!f) return 0;
    static char buf[1 << 16];
    long size = 0;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    long from = size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0;
    size_t n = 0;
    if (fseek(f, from, SEEK_SET) == 0) n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = 0;
    char *line = strrchr(buf, '\n');
    line = line ? line + 1 : buf;
    char key[32];
    snprintf(key, sizeof key, "{\"round\":%u,", round);
    if (strncmp(line, key, strlen(key)) != 0) return 0;
    const char *p;
    if ((p = strstr(line, "\"wall_seconds\":"))) info->seconds = strtod(p + 15, NULL);
    if ((p = strstr(line, "\"sites_reported\":"))) info->sites_reported = strtoul(p + 17, NULL, 10);
    if ((p = strstr(line, "\"num_samples\":"))) info->samples = strtod(p + 14, NULL);
    double loss = 0, dice = 0;
    int nl = 0, nd = 0;
    const char *sites = strstr(line, "\"sites\":[");
    for (p = sites; p && (p = strstr(p, "\"train_loss\":")); p++) {
        char *e;
        double v = strtod(p + 13, &e);
        if (e != p + 13 && isfinite(v)) loss += v, nl++;
    }
    for (p = sites; p && (p = strstr(p, "\"global_dice_wt\":")); p++) {
        char *e;
        double v = strtod(p + 17, &e);
        if (e != p + 17 && isfinite(v)) dice += v, nd++;
    }
    for (p = sites; p && (p = strstr(p, "\"bytes_received\":")); p++)
        info->bytes_in += strtoull(p + 17, NULL, 10);
    for (p = sites; p && (p = strstr(p, "\"bytes_sent\":")); p++)
        info->bytes_out += strtoull(p + 13, NULL, 10);
    info->mean_loss = nl ? loss / nl : NAN;
    info->mean_dice_wt = nd ? dice / nd : NAN;
    return 1;
}

/* After any call that may have closed rounds: one report per newly completed
 * round, and the start of the linger period once the federation finished. */
static void progress(fs_server *s, double now)
{
    fs_round_view v;
    fs_round_view_get(s->agg, &v);
    while (s->reported < v.completed) {
        uint32_t r = ++s->reported;
        fs_server_round_info info = {.round = r, .rounds = v.rounds, .mean_loss = NAN,
                                     .mean_dice_wt = NAN, .finished = r == v.rounds};
        metrics_info(s, r, &info);
        if (s->cfg->on_round) s->cfg->on_round(s->cfg->u, &info);
    }
    if (v.finished && s->finished_at < 0) {
        s->finished_at = now;
        fs_log_info("all %u rounds done; serving the final model for %.0f s more", v.rounds,
                    s->cfg->linger_s);
    }
}

/* ---- unary: Join, GetTask ---------------------------------------------- */

static void on_join(fs_server *s, const char *identity, const uint8_t *req, size_t len,
                    fs_rpc_reply *out)
{
    fs_wire_join_request rq;
    char why[FS_WIRE_REASON_LEN] = "";
    fs_status st = fs_wire_decode_join_request(req, len, &rq, why, sizeof why);
    if (st != FS_OK) return refuse_decode(out, identity, "Join", st, why);
    double now = now_s();
    fs_wire_join_reply rep;
    st = fs_round_join(s->agg, identity, &rq, now, &rep);
    progress(s, now);
    if (st == FS_ERR_NOT_FOUND) {
        char r[FS_WIRE_REASON_LEN];
        snprintf(r, sizeof r, "identity '%.100s' is not on the site list", who(identity));
        return set_reply(out, FS_RPC_PERMISSION_DENIED, r);
    }
    /* Another preset is answered in the message (the node may adopt it);
     * other refusals as statuses. */
    if (st != FS_OK && st != FS_ERR_MISMATCH) return set_reply(out, round_code(st), rep.reason);
    st = fs_wire_encode_join_reply(&rep, &out->msg, &out->len);
    if (st != FS_OK) set_reply(out, FS_RPC_INTERNAL, "cannot encode the JoinReply");
}

static void on_task(fs_server *s, const char *identity, const uint8_t *req, size_t len,
                    fs_rpc_reply *out)
{
    fs_wire_task_request rq;
    char why[FS_WIRE_REASON_LEN] = "";
    fs_status st = fs_wire_decode_task_request(req, len, &rq, why, sizeof why);
    if (st != FS_OK) return refuse_decode(out, identity, "GetTask", st, why);
    double now = now_s();
    fs_wire_task t;
    st = fs_round_task(s->agg, identity, now, &t, why, sizeof why);
    progress(s, now);
    if (st != FS_OK) return set_reply(out, round_code(st), why);
    st = fs_wire_encode_task(&t, &out->msg, &out->len);
    if (st != FS_OK) set_reply(out, FS_RPC_INTERNAL, "cannot encode the Task");
}

/* SecAgg: one step of the secure-aggregation protocol (round.h). */
static void on_secagg(fs_server *s, const char *identity, const uint8_t *req, size_t len,
                      fs_rpc_reply *out)
{
    fs_wire_secagg_request rq;
    char why[FS_WIRE_REASON_LEN] = "";
    fs_status st = fs_wire_decode_secagg_request(req, len, &rq, why, sizeof why);
    if (st != FS_OK) return refuse_decode(out, identity, "SecAgg", st, why);
    double now = now_s();
    fs_wire_secagg_reply rep;
    uint8_t *payload = NULL;
    st = fs_round_secagg(s->agg, identity, &rq, now, &rep, &payload, why, sizeof why);
    progress(s, now);
    if (st != FS_OK) return set_reply(out, round_code(st), why);
    st = fs_wire_encode_secagg_reply(&rep, &out->msg, &out->len);
    fs_secagg_msg_free(payload, rep.len);
    if (st != FS_OK) set_reply(out, FS_RPC_INTERNAL, "cannot encode the SecAggReply");
}

static void h_unary(void *u, int method, const char *identity, const uint8_t *req, size_t len,
                    fs_rpc_reply *out)
{
    fs_server *s = u;
    if (refuse_anonymous(out, identity,
                         method == FS_M_JOIN ? "Join" : method == FS_M_SECAGG ? "SecAgg" : "GetTask"))
        return;
    if (method == FS_M_JOIN) return on_join(s, identity, req, len, out);
    if (method == FS_M_GET_TASK) return on_task(s, identity, req, len, out);
    if (method == FS_M_SECAGG) return on_secagg(s, identity, req, len, out);
    set_reply(out, FS_RPC_INVALID_ARGUMENT, "not a unary method");
}

/* ---- DownloadModel: the global model in FS_CHUNK_PARAMS chunks ---------- */

typedef struct {
    char identity[FS_WIRE_NAME_LEN];
    uint32_t round;           /* the round the model is trained in */
    const float *params;      /* borrowed from the state machine   */
    size_t P, off;
    uint32_t crc;
} down_state;

static void *h_down_begin(void *u, int method, const char *identity, const uint8_t *req,
                          size_t len, fs_rpc_reply *out)
{
    fs_server *s = u;
    if (refuse_anonymous(out, identity, "DownloadModel")) return NULL;
    if (method != FS_M_DOWNLOAD_MODEL) {
        set_reply(out, FS_RPC_INVALID_ARGUMENT, "not a download method");
        return NULL;
    }
    fs_wire_model_request rq;
    char why[FS_WIRE_REASON_LEN] = "";
    fs_status st = fs_wire_decode_model_request(req, len, &rq, why, sizeof why);
    if (st != FS_OK) {
        refuse_decode(out, identity, "DownloadModel", st, why);
        return NULL;
    }
    down_state *d = calloc(1, sizeof *d);
    if (!d) {
        set_reply(out, FS_RPC_UNAVAILABLE, "the aggregator is out of memory");
        return NULL;
    }
    st = fs_round_model(s->agg, identity, rq.round, &d->params, &d->P, &d->crc, why, sizeof why);
    if (st != FS_OK) {
        set_reply(out, round_code(st), why);
        free(d);
        return NULL;
    }
    snprintf(d->identity, sizeof d->identity, "%s", identity);
    d->round = rq.round;
    return d;
}

static int h_down_next(void *u, void *state, fs_rpc_reply *out)
{
    fs_server *s = u;
    down_state *d = state;
    if (fs_round_current(s->agg) != d->round) {
        char r[128];
        snprintf(r, sizeof r, "round %u closed while its model was being sent; ask for a new task",
                 d->round);
        fs_log_warn("site %s: model download stopped: %s", d->identity, r);
        set_reply(out, FS_RPC_FAILED_PRECONDITION, r);
        return 0;
    }
    if (d->off >= d->P) {
        out->code = FS_RPC_OK;
        return 0;
    }
    size_t n = d->P - d->off < FS_CHUNK_PARAMS ? d->P - d->off : FS_CHUNK_PARAMS;
    fs_wire_model_chunk c = {.round = d->round, .num_params = d->P, .offset = d->off,
                             .data = (const uint8_t *)(d->params + d->off), .len = n * 4,
                             .crc32 = d->crc};
    if (fs_wire_encode_model_chunk(&c, &out->msg, &out->len) != FS_OK) {
        set_reply(out, FS_RPC_UNAVAILABLE, "the aggregator cannot encode a model chunk");
        return 0;
    }
    fs_round_note_sent(s->agg, d->identity, out->len);
    d->off += n;
    return 1;
}

static void h_down_end(void *u, void *state)
{
    (void)u;
    free(state);
}

/* ---- PushUpdate: header, chunks, commit ---------------------------------- */

typedef struct {
    char identity[FS_WIRE_NAME_LEN];
    fs_round_upload *up;      /* NULL until the header was accepted */
    uint32_t round;
} up_state;

static void *h_up_begin(void *u, int method, const char *identity, fs_rpc_reply *out)
{
    (void)u;
    if (refuse_anonymous(out, identity, "PushUpdate")) return NULL;
    if (method != FS_M_PUSH_UPDATE) {
        set_reply(out, FS_RPC_INVALID_ARGUMENT, "not an upload method");
        return NULL;
    }
    up_state *p = calloc(1, sizeof *p);
    if (!p) {
        set_reply(out, FS_RPC_UNAVAILABLE, "the aggregator is out of memory");
        return NULL;
    }
    snprintf(p->identity, sizeof p->identity, "%s", identity);
    return p;
}

static void h_up_chunk(void *u, void *state, const uint8_t *msg, size_t len, fs_rpc_reply *out)
{
    fs_server *s = u;
    up_state *p = state;
    fs_wire_update_chunk c;
    char why[FS_WIRE_REASON_LEN] = "";
    fs_status st = fs_wire_decode_update_chunk(msg, len, &c, why, sizeof why);
    if (st != FS_OK) return refuse_decode(out, p->identity, "PushUpdate chunk", st, why);
    double now = now_s();
    if (!p->up) {
        if (!c.has_header) {
            snprintf(why, sizeof why, "the first UpdateChunk carries no header");
            return refuse_decode(out, p->identity, "PushUpdate", FS_ERR_FORMAT, why);
        }
        st = fs_round_update_begin(s->agg, p->identity, &c.header, now, &p->up, why, sizeof why);
        if (st != FS_OK) {
            p->up = NULL;
            return set_reply(out, round_code(st), why);
        }
        p->round = c.header.round;
    } else if (c.has_header) {
        snprintf(why, sizeof why, "a second UpdateChunk carries a header");
        return refuse_decode(out, p->identity, "PushUpdate", FS_ERR_FORMAT, why);
    }
    if (c.len == 0) return;
    st = fs_round_update_chunk(s->agg, p->up, c.offset, c.data, c.len, why, sizeof why);
    if (st == FS_OK) return;
    fs_round_view v;
    fs_round_view_get(s->agg, &v);
    fs_rpc_code code = round_code(st);
    if (st == FS_ERR_FORMAT && c.offset + c.len / 4 > v.update_params) code = FS_RPC_RESOURCE_EXHAUSTED;
    set_reply(out, code, why);
}

static void h_up_end(void *u, void *state, int failed, fs_rpc_reply *out)
{
    fs_server *s = u;
    up_state *p = state;
    char why[FS_WIRE_REASON_LEN] = "";
    double now = now_s();
    if (!p->up) {
        if (!failed) {
            snprintf(why, sizeof why, "empty update stream (no UpdateChunk)");
            refuse_decode(out, p->identity, "PushUpdate", FS_ERR_FORMAT, why);
        }
        free(p);
        return;
    }
    fs_status st = fs_round_update_end(s->agg, p->up, failed, now, why, sizeof why);
    if (!failed) {
        fs_wire_update_ack ack = {.accepted = st == FS_OK};
        if (st == FS_OK) {
            if (fs_wire_encode_update_ack(&ack, &out->msg, &out->len) != FS_OK)
                set_reply(out, FS_RPC_INTERNAL, "cannot encode the UpdateAck");
        } else {
            set_reply(out, round_code(st), why);
        }
    }
    progress(s, now);
    free(p);
}

/* ---- tick -------------------------------------------------------------- */

static void h_tick(void *u)
{
    fs_server *s = u;
    double now = now_s();
    if (s->ext && *s->ext) s->stop = 1;
    fs_round_tick(s->agg, now);
    progress(s, now);
    if (s->finished_at >= 0 && now - s->finished_at >= s->cfg->linger_s) {
        if (!s->stop) fs_log_info("linger period over: the aggregator stops");
        s->stop = 1;
    }
}

static const fs_tserver_handlers handlers = {
    .unary = h_unary,
    .upload_begin = h_up_begin,
    .upload_chunk = h_up_chunk,
    .upload_end = h_up_end,
    .download_begin = h_down_begin,
    .download_next = h_down_next,
    .download_end = h_down_end,
    .tick = h_tick,
};

/* ---- life ---------------------------------------------------------------- */

fs_status fs_server_start(fs_server **out, const fs_server_config *cfg)
{
    if (!out || !cfg) return FS_ERR_ARG;
    *out = NULL;
    if (!cfg->tls.ca_cert || !cfg->tls.cert || !cfg->tls.key || !cfg->tls.ca_cert[0] ||
        !cfg->tls.cert[0] || !cfg->tls.key[0]) {
        fs_log_error("aggregator: mutual TLS is required: set ca, cert and key (the consortium CA "
                     "certificate, the aggregator's certificate and its private key)");
        return FS_ERR_ARG;
    }
    if (!cfg->listen || !cfg->listen[0]) {
        fs_log_error("aggregator: no listen address");
        return FS_ERR_ARG;
    }
    if (!(cfg->linger_s >= 0) || !isfinite(cfg->linger_s)) {
        fs_log_error("aggregator: linger_s must be a finite number ≥ 0");
        return FS_ERR_ARG;
    }
    fs_server *s = calloc(1, sizeof *s);
    if (!s) return FS_ERR_NOMEM;
    s->cfg = cfg;
    s->finished_at = -1;
    if (cfg->round.metrics_path)
        snprintf(s->metrics, sizeof s->metrics, "%s", cfg->round.metrics_path);
    else
        snprintf(s->metrics, sizeof s->metrics, "%s/metrics.jsonl", cfg->round.state_dir);
    double now = now_s();
    fs_status st = fs_round_open(&s->agg, &cfg->round, cfg->w0, cfg->num_params, now);
    if (st != FS_OK) {
        free(s);
        return st;
    }
    fs_round_view v;
    fs_round_view_get(s->agg, &v);
    s->reported = v.completed; /* closed before this start: reported by an earlier run */
    st = fs_tserver_start(&s->ts, cfg->listen, &cfg->tls, fs_federation_methods, FS_M_COUNT,
                          &handlers, s, FS_MAX_MSG_BYTES, &s->port);
    if (st != FS_OK) {
        fs_log_error("aggregator: cannot serve on %s: %s", cfg->listen, fs_status_str(st));
        fs_round_free(s->agg);
        free(s);
        return st;
    }
    progress(s, now); /* a finished federation starts its linger period now */
    *out = s;
    return FS_OK;
}

int fs_server_port(const fs_server *s) { return s ? s->port : 0; }

const fs_round *fs_server_round(const fs_server *s) { return s ? s->agg : NULL; }

fs_status fs_server_run(fs_server *s, volatile sig_atomic_t *stop)
{
    if (!s) return FS_ERR_ARG;
    s->ext = stop;
    return fs_tserver_run(s->ts, &s->stop, s->cfg->grace_ms > 0 ? s->cfg->grace_ms : 2000);
}

void fs_server_free(fs_server *s)
{
    if (!s) return;
    fs_tserver_free(s->ts);
    fs_round_free(s->agg);
    free(s);
}
