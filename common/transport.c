/*
 * common/transport.c — the gRPC C-core implementation of common/transport.h.
 * This is the only file in fedseg that calls grpc_* / gpr_*; everything above
 * it sees opaque byte messages, fs_status codes and certificate identities.
 *
 * Layout:
 *   1. shared helpers: gRPC init/version check, PEM loading (checked with
 *      OpenSSL so a bad file is named before gRPC sees it), byte-buffer
 *      copies, status-code mapping;
 *   2. server: one `next` completion queue drained by fs_tserver_run on the
 *      caller's thread; every call has a context (srv_call) whose outstanding
 *      batches are counted, with one tag per operation kind (NEW, RECV, SEND,
 *      CLOSE). Shutdown follows the only safe order: shutdown_and_notify,
 *      cancel_all_calls after the grace period, CQ shutdown only once the
 *      server's shutdown tag has arrived AND no call context is alive;
 *   3. client: one channel and one pluck completion queue per fs_tclient;
 *      unary, upload (receive side posted first, one SEND_MESSAGE in flight)
 *      and download, all with wait-for-ready bounded by the call's deadline.
 *
 * gRPC's own log lines (TLS handshake failures such as "peer did not return a
 * certificate") go to stderr unchanged: they are the only place where a
 * refused site's real reason appears.
 *
 * Tested by tests/test_transport.c (server and clients in separate
 * processes: every call shape, mTLS accept/refuse, deadlines, unknown method,
 * 400 MB upload with the server's peak RSS, shutdown during a stream).
 */
#include "common/transport.h"
#include "common/log.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_MAX_MSG ((size_t)4 << 20)
#define TICK_MS 100
#define MAX_PEM_BYTES ((long)1 << 20)

/* ---------------------------------------------------------------- helpers */

const char *fs_rpc_code_str(fs_rpc_code c)
{
    switch (c) {
    case FS_RPC_OK: return "OK";
    case FS_RPC_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case FS_RPC_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case FS_RPC_PERMISSION_DENIED: return "PERMISSION_DENIED";
    case FS_RPC_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case FS_RPC_NOT_FOUND: return "NOT_FOUND";
    case FS_RPC_UNAVAILABLE: return "UNAVAILABLE";
    case FS_RPC_INTERNAL: return "INTERNAL";
    case FS_RPC_UNIMPLEMENTED: return "UNIMPLEMENTED";
    }
    return "UNKNOWN";
}

static const char *grpc_status_name(grpc_status_code s)
{
    static const char *names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                  "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                  "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                  "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
    return (s >= 0 && s < (int)(sizeof names / sizeof names[0])) ? names[s] : "UNKNOWN";
}

/* A handler's code → the gRPC status sent to the client. */
static grpc_status_code to_grpc(fs_rpc_code c)
{
    switch (c) {
    case FS_RPC_OK: return GRPC_STATUS_OK;
    case FS_RPC_INVALID_ARGUMENT: return GRPC_STATUS_INVALID_ARGUMENT;
    case FS_RPC_FAILED_PRECONDITION: return GRPC_STATUS_FAILED_PRECONDITION;
    case FS_RPC_PERMISSION_DENIED: return GRPC_STATUS_PERMISSION_DENIED;
    case FS_RPC_RESOURCE_EXHAUSTED: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case FS_RPC_NOT_FOUND: return GRPC_STATUS_NOT_FOUND;
    case FS_RPC_UNAVAILABLE: return GRPC_STATUS_UNAVAILABLE;
    case FS_RPC_INTERNAL: return GRPC_STATUS_INTERNAL;
    case FS_RPC_UNIMPLEMENTED: return GRPC_STATUS_UNIMPLEMENTED;
    }
    return GRPC_STATUS_INTERNAL;
}

/* A gRPC status received by a client → (fs_status, fs_rpc_code). Statuses
 * that a retry may cure (unreachable, TLS refused, deadline, cancelled by a
 * server shutdown) are transport failures: FS_ERR_IO + FS_RPC_UNAVAILABLE. */
static fs_status from_grpc(grpc_status_code s, fs_rpc_code *rpc)
{
    switch (s) {
    case GRPC_STATUS_OK: *rpc = FS_RPC_OK; return FS_OK;
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_CANCELLED:
    case GRPC_STATUS_ABORTED: *rpc = FS_RPC_UNAVAILABLE; return FS_ERR_IO;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_OUT_OF_RANGE: *rpc = FS_RPC_INVALID_ARGUMENT; return FS_ERR_MISMATCH;
    case GRPC_STATUS_FAILED_PRECONDITION: *rpc = FS_RPC_FAILED_PRECONDITION; return FS_ERR_MISMATCH;
    case GRPC_STATUS_PERMISSION_DENIED:
    case GRPC_STATUS_UNAUTHENTICATED: *rpc = FS_RPC_PERMISSION_DENIED; return FS_ERR_MISMATCH;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: *rpc = FS_RPC_RESOURCE_EXHAUSTED; return FS_ERR_MISMATCH;
    case GRPC_STATUS_NOT_FOUND: *rpc = FS_RPC_NOT_FOUND; return FS_ERR_MISMATCH;
    case GRPC_STATUS_UNIMPLEMENTED: *rpc = FS_RPC_UNIMPLEMENTED; return FS_ERR_MISMATCH;
    default: *rpc = FS_RPC_INTERNAL; return FS_ERR_MISMATCH;
    }
}

/* grpc_init plus, once per process, the check that the core library is the
 * ABI this file was written against (Debian's 1.51 reports core "29.x"). */
static void check_version(void)
{
    const char *v = grpc_version_string();
    if (strncmp(v, "29.", 3) != 0)
        fs_log_warn("gRPC core %s: fedseg's transport was written and tested against core 29.x "
                    "(gRPC 1.51); calls may misbehave", v);
}

static void grpc_up(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    grpc_init();
    pthread_once(&once, check_version);
}

static long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static gpr_timespec after_ms(long ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static int clamp_int(size_t v)
{
    return v > (size_t)INT_MAX ? INT_MAX : (int)v;
}

/* Reads a whole PEM file into a NUL-terminated malloc'ed string and checks
 * with OpenSSL that it holds what it should (what = "certificate" or
 * "private key"). Errors name the file. */
static fs_status read_pem(const char *path, const char *role, int is_key, char **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        fs_log_error("%s (%s): %s", path, role, strerror(e));
        return e == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO;
    }
    char *buf = malloc((size_t)MAX_PEM_BYTES + 1);
    if (!buf) { fclose(f); return FS_ERR_NOMEM; }
    size_t n = fread(buf, 1, (size_t)MAX_PEM_BYTES + 1, f);
    int err = ferror(f);
    fclose(f);
    if (err) {
        fs_log_error("%s (%s): read error", path, role);
        free(buf);
        return FS_ERR_IO;
    }
    if (n > (size_t)MAX_PEM_BYTES) {
        fs_log_error("%s (%s): larger than %ld bytes, not a PEM file", path, role, MAX_PEM_BYTES);
        free(buf);
        return FS_ERR_FORMAT;
    }
    buf[n] = 0;
    BIO *bio = BIO_new_mem_buf(buf, (int)n);
    void *obj = NULL;
    if (bio) obj = is_key ? (void *)PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
                          : (void *)PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    ERR_clear_error();
    if (!obj) {
        fs_log_error("%s (%s): no PEM %s in the file", path, role, is_key ? "private key" : "certificate");
        free(buf);
        return FS_ERR_FORMAT;
    }
    if (is_key) EVP_PKEY_free(obj);
    else X509_free(obj);
    *out = buf;
    return FS_OK;
}

/* Loads ca (optional when want_ca is 0), cert and key, and checks that the
 * key belongs to the certificate. On error nothing is returned. */
static fs_status load_tls(const fs_tls_files *t, char **ca, char **cert, char **key)
{
    *ca = *cert = *key = NULL;
    fs_status st = FS_OK;
    if (!t->ca_cert) {
        fs_log_error("TLS: no CA certificate file given");
        return FS_ERR_ARG;
    }
    if ((t->cert == NULL) != (t->key == NULL)) {
        fs_log_error("TLS: a certificate needs its key and a key its certificate (%s / %s)",
                     t->cert ? t->cert : "none", t->key ? t->key : "none");
        return FS_ERR_ARG;
    }
    st = read_pem(t->ca_cert, "CA certificate", 0, ca);
    if (st == FS_OK && t->cert) st = read_pem(t->cert, "certificate", 0, cert);
    if (st == FS_OK && t->key) st = read_pem(t->key, "private key", 1, key);
    if (st == FS_OK && *cert) {
        BIO *bc = BIO_new_mem_buf(*cert, -1), *bk = BIO_new_mem_buf(*key, -1);
        X509 *x = bc ? PEM_read_bio_X509(bc, NULL, NULL, NULL) : NULL;
        EVP_PKEY *k = bk ? PEM_read_bio_PrivateKey(bk, NULL, NULL, NULL) : NULL;
        if (!x || !k || X509_check_private_key(x, k) != 1) {
            fs_log_error("%s: this private key does not belong to the certificate %s", t->key, t->cert);
            st = FS_ERR_MISMATCH;
        }
        X509_free(x);
        EVP_PKEY_free(k);
        BIO_free(bc);
        BIO_free(bk);
        ERR_clear_error();
    }
    if (st != FS_OK) {
        free(*ca);
        free(*cert);
        free(*key);
        *ca = *cert = *key = NULL;
    }
    return st;
}

/* Copies a received message into *buf (grown as needed, capacity in *cap;
 * never left NULL so handlers always get a valid pointer). Returns 0 on
 * success, -1 when memory or decompression fails. */
static int bb_copy(grpc_byte_buffer *bb, uint8_t **buf, size_t *cap, size_t *len)
{
    grpc_byte_buffer_reader r;
    size_t want = grpc_byte_buffer_length(bb);
    *len = 0;
    if (!grpc_byte_buffer_reader_init(&r, bb)) return -1;
    grpc_slice s;
    int rc = 0;
    while (grpc_byte_buffer_reader_next(&r, &s)) {
        size_t n = GRPC_SLICE_LENGTH(s);
        if (*len + n > *cap || !*buf) {
            size_t nc = *cap ? *cap : 1;
            while (nc < *len + n || nc < want) nc *= 2;
            uint8_t *nb = realloc(*buf, nc);
            if (!nb) { rc = -1; grpc_slice_unref(s); break; }
            *buf = nb;
            *cap = nc;
        }
        memcpy(*buf + *len, GRPC_SLICE_START_PTR(s), n);
        *len += n;
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&r);
    if (rc == 0 && !*buf) {
        *buf = malloc(1);
        *cap = *buf ? 1 : 0;
        if (!*buf) rc = -1;
    }
    return rc;
}

/* Wraps a handler's malloc'ed message into a byte buffer without copying:
 * gRPC frees it with free() once it is on the wire. Takes ownership of msg. */
static grpc_byte_buffer *bb_take(uint8_t *msg, size_t len)
{
    grpc_slice s;
    if (msg && len) {
        s = grpc_slice_new(msg, len, free);
    } else {
        free(msg);
        s = grpc_empty_slice();
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* ----------------------------------------------------------------- server */

enum { T_NEW, T_RECV, T_SEND, T_CLOSE, T_SHUTDOWN };

struct srv_call;
typedef struct {
    struct srv_call *c;
    int kind;
} tag_rec;

/* One server call. `pending` counts its outstanding batches (the request_call
 * counts as one); the context is freed when it drops to 0, which happens only
 * after RECV_CLOSE_ON_SERVER completed, i.e. when gRPC is done with the call. */
typedef struct srv_call {
    struct fs_tserver *s;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array req_md;
    tag_rec t_new, t_recv, t_send, t_close;
    int pending;
    int method;
    fs_call_shape shape;
    char *identity;            /* client certificate CN, or NULL            */
    grpc_byte_buffer *recv_bb; /* filled by RECV_MESSAGE                    */
    grpc_byte_buffer *send_bb; /* owned until its SEND batch completes      */
    int cancelled;             /* filled by RECV_CLOSE_ON_SERVER            */
    int md_sent;               /* initial metadata has been sent            */
    int done;                  /* final status posted or call broken        */
    int probing;               /* upload: half-close seen, probe in flight  */
    void *state;               /* handler state of an upload / download     */
    int state_live;            /* begin returned it and end not yet called  */
    uint8_t *buf;              /* reusable copy of the last message         */
    size_t cap;
} srv_call;

struct fs_tserver {
    grpc_server *server;
    grpc_completion_queue *cq;
    const fs_rpc_method *methods;
    int nmethods;
    fs_tserver_handlers h;
    void *u;
    int tls;
    int live;          /* srv_call contexts alive (armed requests included) */
    int shutting_down; /* shutdown_and_notify has been called               */
    int cancelled_all;
    int shutdown_seen; /* the server's shutdown tag has arrived             */
    int ran;
    tag_rec t_shutdown;
};

static void srv_arm(fs_tserver *s);

/* Starts a batch for c under tag t; on failure nothing was started, the call
 * is cancelled (so its CLOSE tag arrives) and 0 is returned. */
static int srv_batch(srv_call *c, const grpc_op *ops, size_t n, tag_rec *t)
{
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        fs_log_error("transport: server batch failed: %s", grpc_call_error_to_string(e));
        grpc_call_cancel(c->call, NULL);
        c->done = 1;
        return 0;
    }
    c->pending++;
    return 1;
}

/* Releases handler state that was begun but not ended (the call failed). */
static void srv_release_state(srv_call *c)
{
    if (!c->state_live) return;
    c->state_live = 0;
    fs_tserver *s = c->s;
    if (c->shape == FS_CALL_UPLOAD) {
        fs_rpc_reply r;
        memset(&r, 0, sizeof r);
        s->h.upload_end(s->u, c->state, 1, &r);
        free(r.msg);
    } else if (c->shape == FS_CALL_DOWNLOAD) {
        s->h.download_end(s->u, c->state);
    }
    c->state = NULL;
}

static void srv_free(srv_call *c)
{
    srv_release_state(c);
    if (c->call) grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->req_md);
    if (c->recv_bb) grpc_byte_buffer_destroy(c->recv_bb);
    if (c->send_bb) grpc_byte_buffer_destroy(c->send_bb);
    free(c->identity);
    free(c->buf);
    c->s->live--;
    free(c);
}

/* Sends the final status (with initial metadata if not yet sent, and the
 * reply message when code is OK). Takes ownership of msg. */
static void srv_finish(srv_call *c, fs_rpc_code code, const char *reason, uint8_t *msg, size_t len)
{
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    if (!c->md_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->md_sent = 1;
    }
    if (code == FS_RPC_OK && msg) {
        c->send_bb = bb_take(msg, len);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->send_bb;
    } else {
        free(msg);
    }
    if (code != FS_RPC_OK && (!reason || !reason[0])) reason = fs_rpc_code_str(code);
    grpc_slice details = grpc_slice_from_copied_string(reason ? reason : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = to_grpc(code);
    ops[n++].data.send_status_from_server.status_details = code == FS_RPC_OK ? NULL : &details;
    if (code != FS_RPC_OK)
        fs_log_debug("transport: %s from %s: %s %s", c->method >= 0 ? c->s->methods[c->method].path : "?",
                     c->identity ? c->identity : "(no identity)", fs_rpc_code_str(code), reason);
    c->done = 1;
    if (!srv_batch(c, ops, n, &c->t_send) && c->send_bb) {
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
    }
    grpc_slice_unref(details);
}

static void srv_reply(srv_call *c, fs_rpc_reply *r)
{
    if (r->code == FS_RPC_UNIMPLEMENTED) r->code = FS_RPC_INTERNAL; /* not a handler's answer */
    srv_finish(c, r->code, r->reason, r->msg, r->len);
    r->msg = NULL;
}

static void srv_recv(srv_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_bb;
    srv_batch(c, &op, 1, &c->t_recv);
}

/* Asks the download handler for its next message and sends it, or ends the
 * stream with the handler's status. */
static void srv_download_step(srv_call *c)
{
    fs_tserver *s = c->s;
    fs_rpc_reply r;
    memset(&r, 0, sizeof r);
    if (s->h.download_next(s->u, c->state, &r)) {
        grpc_op ops[2];
        size_t n = 0;
        memset(ops, 0, sizeof ops);
        if (!c->md_sent) {
            ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
            c->md_sent = 1;
        }
        c->send_bb = bb_take(r.msg, r.len);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->send_bb;
        if (!srv_batch(c, ops, n, &c->t_send)) {
            grpc_byte_buffer_destroy(c->send_bb);
            c->send_bb = NULL;
        }
        return;
    }
    c->state_live = 0;
    s->h.download_end(s->u, c->state);
    c->state = NULL;
    free(r.msg);
    r.msg = NULL;
    srv_reply(c, &r);
}

/* Reads the client certificate's common name from the call's auth context;
 * NULL when the connection is not authenticated (plaintext). */
static char *peer_cn(grpc_call *call)
{
    grpc_auth_context *ac = grpc_call_auth_context(call);
    char *cn = NULL;
    if (ac && grpc_auth_context_peer_is_authenticated(ac)) {
        grpc_auth_property_iterator it = grpc_auth_context_find_properties_by_name(ac, GRPC_X509_CN_PROPERTY_NAME);
        const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
        if (p && p->value_length > 0) {
            cn = malloc(p->value_length + 1);
            if (cn) {
                memcpy(cn, p->value, p->value_length);
                cn[p->value_length] = 0;
            }
        }
    }
    if (ac) grpc_auth_context_release(ac);
    return cn;
}

/* A new call arrived (or, with !success, an armed request was returned by
 * shutdown). Re-arms first, then dispatches by method path. */
static void srv_on_new(srv_call *c, int success)
{
    fs_tserver *s = c->s;
    if (!success) return; /* pending drops to 0: freed by the caller */
    if (!s->shutting_down) srv_arm(s);

    c->method = -1;
    for (int i = 0; i < s->nmethods; i++)
        if (grpc_slice_str_cmp(c->details.method, s->methods[i].path) == 0) { c->method = i; break; }
    c->identity = peer_cn(c->call);
    if (s->tls && !c->identity) {
        /* WARNING: never serve an mTLS call without a certificate identity. */
        c->method = -2;
    }

    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    if (!srv_batch(c, &op, 1, &c->t_close)) return;

    if (c->method == -2) {
        srv_finish(c, FS_RPC_PERMISSION_DENIED, "the client certificate has no common name", NULL, 0);
        return;
    }
    if (c->method < 0) {
        char *m = grpc_slice_to_c_string(c->details.method);
        char *peer = grpc_call_get_peer(c->call);
        char reason[256];
        snprintf(reason, sizeof reason, "unknown method %s", m);
        fs_log_warn("transport: %s from %s (%s)", reason, c->identity ? c->identity : "(no identity)", peer);
        gpr_free(m);
        gpr_free(peer);
        srv_finish(c, FS_RPC_UNIMPLEMENTED, reason, NULL, 0);
        return;
    }
    c->shape = s->methods[c->method].shape;
    int have = (c->shape == FS_CALL_UNARY && s->h.unary) ||
               (c->shape == FS_CALL_UPLOAD && s->h.upload_begin && s->h.upload_chunk && s->h.upload_end) ||
               (c->shape == FS_CALL_DOWNLOAD && s->h.download_begin && s->h.download_next && s->h.download_end);
    if (!have) {
        srv_finish(c, FS_RPC_UNIMPLEMENTED, "no handler for this call shape", NULL, 0);
        return;
    }
    if (c->shape == FS_CALL_UPLOAD) {
        fs_rpc_reply r;
        memset(&r, 0, sizeof r);
        c->state = s->h.upload_begin(s->u, c->method, c->identity, &r);
        if (!c->state) {
            if (r.code == FS_RPC_OK) r.code = FS_RPC_INTERNAL;
            srv_reply(c, &r);
            return;
        }
        c->state_live = 1;
        free(r.msg);
    }
    srv_recv(c);
}

/* A RECV_MESSAGE completed: a request, an upload chunk, or (NULL message
 * with success) the client's half-close. */
static void srv_on_recv(srv_call *c, int success)
{
    fs_tserver *s = c->s;
    grpc_byte_buffer *bb = c->recv_bb;
    c->recv_bb = NULL;
    if (!success || c->done) {
        if (bb) grpc_byte_buffer_destroy(bb);
        c->done = 1;
        srv_release_state(c);
        return;
    }
    size_t len = 0;
    int copied = bb ? bb_copy(bb, &c->buf, &c->cap, &len) : 0;
    if (bb) grpc_byte_buffer_destroy(bb);
    if (copied != 0) {
        srv_release_state(c);
        srv_finish(c, FS_RPC_RESOURCE_EXHAUSTED, "server out of memory for the message", NULL, 0);
        return;
    }
    fs_rpc_reply r;
    memset(&r, 0, sizeof r);
    switch (c->shape) {
    case FS_CALL_UNARY:
        if (!bb) { srv_finish(c, FS_RPC_INVALID_ARGUMENT, "no request message", NULL, 0); return; }
        s->h.unary(s->u, c->method, c->identity, c->buf, len, &r);
        srv_reply(c, &r);
        return;
    case FS_CALL_DOWNLOAD:
        if (!bb) { srv_finish(c, FS_RPC_INVALID_ARGUMENT, "no request message", NULL, 0); return; }
        c->state = s->h.download_begin(s->u, c->method, c->identity, c->buf, len, &r);
        if (!c->state) {
            if (r.code == FS_RPC_OK) r.code = FS_RPC_INTERNAL;
            srv_reply(c, &r);
            return;
        }
        free(r.msg);
        c->state_live = 1;
        srv_download_step(c);
        return;
    case FS_CALL_UPLOAD:
        if (!bb) {
            /* The end of the stream. gRPC reports a cancelled call (deadline,
             * client gone) the same way as a half-close, so before the
             * handler may accept the upload, probe the call with a batch of
             * its own: on a cancelled call it fails (srv_on_send). */
            grpc_op op;
            memset(&op, 0, sizeof op);
            op.op = GRPC_OP_SEND_INITIAL_METADATA;
            c->md_sent = 1;
            c->probing = 1;
            if (!srv_batch(c, &op, 1, &c->t_send)) {
                c->probing = 0;
                srv_release_state(c);
            }
            return;
        }
        s->h.upload_chunk(s->u, c->state, c->buf, len, &r);
        if (r.code != FS_RPC_OK) {
            free(r.msg);
            r.msg = NULL;
            srv_release_state(c);
            srv_reply(c, &r);
            return;
        }
        free(r.msg);
        srv_recv(c);
        return;
    }
}

static void srv_on_send(srv_call *c, int success)
{
    if (c->send_bb) {
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
    }
    if (!success) {
        c->probing = 0;
        c->done = 1;
        srv_release_state(c);
        return;
    }
    if (c->probing) {
        c->probing = 0;
        if (c->done || !c->state_live) return;
        fs_tserver *s = c->s;
        fs_rpc_reply r;
        memset(&r, 0, sizeof r);
        c->state_live = 0;
        s->h.upload_end(s->u, c->state, 0, &r);
        c->state = NULL;
        srv_reply(c, &r);
        return;
    }
    if (!c->done && c->shape == FS_CALL_DOWNLOAD && c->state_live) srv_download_step(c);
}

static void srv_on_close(srv_call *c)
{
    c->done = 1;
    srv_release_state(c);
}

/* Arms one grpc_server_request_call with a fresh context. */
static void srv_arm(fs_tserver *s)
{
    srv_call *c = calloc(1, sizeof *c);
    if (!c) {
        fs_log_error("transport: out of memory arming a call (no new calls until one ends)");
        return;
    }
    c->s = s;
    c->method = -1;
    c->t_new = (tag_rec){c, T_NEW};
    c->t_recv = (tag_rec){c, T_RECV};
    c->t_send = (tag_rec){c, T_SEND};
    c->t_close = (tag_rec){c, T_CLOSE};
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->req_md);
    s->live++;
    grpc_call_error e = grpc_server_request_call(s->server, &c->call, &c->details, &c->req_md, s->cq, s->cq, &c->t_new);
    if (e != GRPC_CALL_OK) {
        fs_log_error("transport: request_call failed: %s", grpc_call_error_to_string(e));
        srv_free(c);
        return;
    }
    c->pending = 1;
}

/* Destroys what start created, in the order gRPC requires. */
static void srv_destroy(fs_tserver *s)
{
    if (s->server) grpc_server_destroy(s->server);
    if (s->cq) {
        grpc_completion_queue_shutdown(s->cq);
        while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(s->cq);
    }
    free(s);
    grpc_shutdown();
}

fs_status fs_tserver_start(fs_tserver **out, const char *addr, const fs_tls_files *tls,
                           const fs_rpc_method *methods, int nmethods,
                           const fs_tserver_handlers *h, void *u, size_t max_msg_bytes,
                           int *bound_port)
{
    if (out) *out = NULL;
    if (!out || !addr || !methods || nmethods <= 0 || !h) return FS_ERR_ARG;
    char *ca = NULL, *cert = NULL, *key = NULL;
    if (tls) {
        if (!tls->cert || !tls->key) {
            fs_log_error("transport: a TLS server needs its certificate and key");
            return FS_ERR_ARG;
        }
        FS_TRY(load_tls(tls, &ca, &cert, &key));
    }
    fs_tserver *s = calloc(1, sizeof *s);
    if (!s) { free(ca); free(cert); free(key); return FS_ERR_NOMEM; }
    s->methods = methods;
    s->nmethods = nmethods;
    s->h = *h;
    s->u = u;
    s->tls = tls != NULL;
    s->t_shutdown = (tag_rec){NULL, T_SHUTDOWN};

    grpc_up();
    size_t max_msg = max_msg_bytes ? max_msg_bytes : DEFAULT_MAX_MSG;
    size_t quota_bytes = FS_TSERVER_QUOTA_BYTES;
    if (quota_bytes < 8 * max_msg) quota_bytes = 8 * max_msg;
    grpc_resource_quota *quota = grpc_resource_quota_create("fedseg-server");
    grpc_resource_quota_resize(quota, quota_bytes);
    grpc_arg a[4];
    memset(a, 0, sizeof a);
    a[0].type = GRPC_ARG_INTEGER;
    a[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    a[0].value.integer = clamp_int(max_msg);
    a[1].type = GRPC_ARG_INTEGER;
    a[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    a[1].value.integer = clamp_int(max_msg);
    a[2].type = GRPC_ARG_POINTER;
    a[2].key = (char *)GRPC_ARG_RESOURCE_QUOTA;
    a[2].value.pointer.p = quota;
    a[2].value.pointer.vtable = grpc_resource_quota_arg_vtable();
    a[3].type = GRPC_ARG_INTEGER;
    a[3].key = (char *)GRPC_ARG_ALLOW_REUSEPORT; /* a second server on the port must fail */
    a[3].value.integer = 0;
    grpc_channel_args args = {4, a};
    s->server = grpc_server_create(&args, NULL);
    grpc_resource_quota_unref(quota);
    s->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);

    grpc_server_credentials *creds;
    if (tls) {
        grpc_ssl_pem_key_cert_pair pair = {key, cert};
        /* WARNING: mutual TLS — a client without a certificate signed by the
         * consortium CA is refused during the handshake. */
        creds = grpc_ssl_server_credentials_create_ex(ca, &pair, 1,
                                                      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, NULL);
    } else {
        creds = grpc_insecure_server_credentials_create();
    }
    free(ca);
    free(cert);
    free(key);
    int port = creds ? grpc_server_add_http2_port(s->server, addr, creds) : 0;
    if (creds) grpc_server_credentials_release(creds);
    if (port == 0) {
        fs_log_error("transport: cannot listen on %s (address in use, not local, or malformed)", addr);
        srv_destroy(s);
        return FS_ERR_IO;
    }
    grpc_server_start(s->server);
    srv_arm(s);
    if (s->live == 0) {
        fs_tserver_free(s);
        return FS_ERR_NOMEM;
    }
    if (bound_port) *bound_port = port;
    *out = s;
    return FS_OK;
}

static void srv_dispatch(fs_tserver *s, grpc_event ev)
{
    tag_rec *t = ev.tag;
    if (t->kind == T_SHUTDOWN) {
        s->shutdown_seen = 1;
        return;
    }
    srv_call *c = t->c;
    switch (t->kind) {
    case T_NEW: srv_on_new(c, ev.success); break;
    case T_RECV: srv_on_recv(c, ev.success); break;
    case T_SEND: srv_on_send(c, ev.success); break;
    case T_CLOSE: srv_on_close(c); break;
    }
    if (--c->pending == 0) srv_free(c);
}

/* The event loop: serve until *stop, then shut down gracefully (see the
 * file comment for the order). stop may be NULL only when already stopping. */
static void srv_loop(fs_tserver *s, volatile sig_atomic_t *stop, int grace_ms)
{
    long last_tick = mono_ms(), cancel_at = 0;
    for (;;) {
        long now = mono_ms();
        if (!s->shutting_down && (!stop || *stop)) {
            s->shutting_down = 1;
            cancel_at = now + (grace_ms > 0 ? grace_ms : 0);
            grpc_server_shutdown_and_notify(s->server, s->cq, &s->t_shutdown);
        }
        if (s->shutting_down && !s->cancelled_all && now >= cancel_at) {
            s->cancelled_all = 1;
            grpc_server_cancel_all_calls(s->server);
        }
        if (s->shutting_down && s->shutdown_seen && s->live == 0) break;
        if (now - last_tick >= TICK_MS) {
            last_tick = now;
            if (s->h.tick) s->h.tick(s->u);
        }
        long wait = TICK_MS - (mono_ms() - last_tick);
        if (wait < 1) wait = 1;
        grpc_event ev = grpc_completion_queue_next(s->cq, after_ms(wait), NULL);
        if (ev.type == GRPC_OP_COMPLETE) srv_dispatch(s, ev);
        else if (ev.type == GRPC_QUEUE_SHUTDOWN) break; /* cannot happen: only we shut it down */
    }
}

fs_status fs_tserver_run(fs_tserver *s, volatile sig_atomic_t *stop, int grace_ms)
{
    if (!s || !stop) return FS_ERR_ARG;
    if (s->ran) {
        fs_log_error("transport: fs_tserver_run called twice");
        return FS_ERR_ARG;
    }
    s->ran = 1;
    srv_loop(s, stop, grace_ms);
    return FS_OK;
}

void fs_tserver_free(fs_tserver *s)
{
    if (!s) return;
    if (!s->ran) {
        s->ran = 1;
        srv_loop(s, NULL, 0); /* never served: stop at once, cancel any call */
    }
    srv_destroy(s);
}

/* ----------------------------------------------------------------- client */

struct fs_tclient {
    grpc_channel *ch;
    grpc_completion_queue *cq;
    char target[256];
};

fs_status fs_tclient_connect(fs_tclient **out, const char *target, const fs_tls_files *tls,
                             size_t max_msg_bytes)
{
    if (out) *out = NULL;
    if (!out || !target) return FS_ERR_ARG;
    char *ca = NULL, *cert = NULL, *key = NULL;
    if (tls) FS_TRY(load_tls(tls, &ca, &cert, &key));
    fs_tclient *c = calloc(1, sizeof *c);
    if (!c) { free(ca); free(cert); free(key); return FS_ERR_NOMEM; }
    snprintf(c->target, sizeof c->target, "%s", target);

    grpc_up();
    size_t max_msg = max_msg_bytes ? max_msg_bytes : DEFAULT_MAX_MSG;
    grpc_arg a[4];
    memset(a, 0, sizeof a);
    size_t n = 0;
    a[n].type = GRPC_ARG_INTEGER;
    a[n].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    a[n++].value.integer = clamp_int(max_msg);
    a[n].type = GRPC_ARG_INTEGER;
    a[n].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    a[n++].value.integer = clamp_int(max_msg);
    /* A node outlives aggregator restarts: reconnect within seconds, not the
     * default two minutes of backoff. */
    a[n].type = GRPC_ARG_INTEGER;
    a[n].key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    a[n++].value.integer = 5000;
    if (tls && tls->server_name) {
        a[n].type = GRPC_ARG_STRING;
        a[n].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        a[n++].value.string = (char *)tls->server_name;
    }
    grpc_channel_args args = {n, a};

    grpc_channel_credentials *creds;
    if (tls) {
        grpc_ssl_pem_key_cert_pair pair = {key, cert};
        creds = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
    } else {
        /* WARNING: plaintext — tests and loopback benchmarks only. */
        creds = grpc_insecure_credentials_create();
    }
    free(ca);
    free(cert);
    free(key);
    c->ch = grpc_channel_create(target, creds, &args);
    grpc_channel_credentials_release(creds);
    c->cq = grpc_completion_queue_create_for_pluck(NULL);
    if (!c->ch || !c->cq) {
        fs_log_error("transport: cannot create a channel to %s", target);
        fs_tclient_free(c);
        return FS_ERR_IO;
    }
    *out = c;
    return FS_OK;
}

void fs_tclient_free(fs_tclient *c)
{
    if (!c) return;
    if (c->ch) grpc_channel_destroy(c->ch);
    if (c->cq) {
        grpc_completion_queue_shutdown(c->cq);
        while (grpc_completion_queue_pluck(c->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
               GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(c->cq);
    }
    free(c);
    grpc_shutdown();
}

/* Everything one client call needs; lives on the caller's stack. */
typedef struct {
    fs_tclient *cl;
    grpc_call *call;
    grpc_metadata_array md, trailing;
    grpc_status_code status;
    grpc_slice details;
    const char *error_string;
    grpc_byte_buffer *reply;
    int timeout_ms;
    int tag_s; /* the tags are addresses of these members */
    int tag_x;
} cli_call;

static int cli_open(cli_call *k, fs_tclient *cl, const char *path, int timeout_ms)
{
    memset(k, 0, sizeof *k);
    k->cl = cl;
    k->timeout_ms = timeout_ms;
    k->status = GRPC_STATUS_UNKNOWN;
    k->details = grpc_empty_slice();
    grpc_metadata_array_init(&k->md);
    grpc_metadata_array_init(&k->trailing);
    gpr_timespec dl = timeout_ms > 0 ? after_ms(timeout_ms) : gpr_inf_future(GPR_CLOCK_REALTIME);
    grpc_slice m = grpc_slice_from_copied_string(path);
    k->call = grpc_channel_create_call(cl->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cl->cq, m, NULL, dl, NULL);
    grpc_slice_unref(m);
    return k->call != NULL;
}

/* Waits for the batch with tag t; returns its success flag. */
static int cli_wait(cli_call *k, void *t)
{
    grpc_event ev = grpc_completion_queue_pluck(k->cl->cq, t, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Starts a batch; on failure logs it and cancels the call. */
static int cli_batch(cli_call *k, const grpc_op *ops, size_t n, void *t)
{
    grpc_call_error e = grpc_call_start_batch(k->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        fs_log_error("transport: client batch failed: %s", grpc_call_error_to_string(e));
        grpc_call_cancel(k->call, NULL);
        return 0;
    }
    return 1;
}

static void cli_send_md(grpc_op *op, int timeout_ms)
{
    op->op = GRPC_OP_SEND_INITIAL_METADATA;
    if (timeout_ms > 0)
        op->flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY | GRPC_INITIAL_METADATA_WAIT_FOR_READY_EXPLICITLY_SET;
}

static void cli_recv_status(grpc_op *op, cli_call *k)
{
    op->op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op->data.recv_status_on_client.trailing_metadata = &k->trailing;
    op->data.recv_status_on_client.status = &k->status;
    op->data.recv_status_on_client.status_details = &k->details;
    op->data.recv_status_on_client.error_string = &k->error_string;
}

/* Turns the received status into the result and return code. aborted: the
 * caller's callback stopped the call. */
static fs_status cli_result(cli_call *k, int aborted, fs_call_result *res)
{
    fs_call_result local;
    if (!res) res = &local;
    if (aborted) {
        res->rpc = FS_RPC_INTERNAL;
        snprintf(res->reason, sizeof res->reason, "aborted by the caller");
        return FS_ERR_ARG;
    }
    fs_status st = from_grpc(k->status, &res->rpc);
    char *d = grpc_slice_to_c_string(k->details);
    if (k->status == GRPC_STATUS_RESOURCE_EXHAUSTED && strstr(d, "RST_STREAM")) {
        /* The server's gRPC reset the stream because its memory quota ran
         * out under load — not a handler's verdict: worth a retry. */
        res->rpc = FS_RPC_UNAVAILABLE;
        st = FS_ERR_IO;
    }
    const char *hint = "";
    if (k->status == GRPC_STATUS_DEADLINE_EXCEEDED &&
        grpc_channel_check_connectivity_state(k->cl->ch, 0) == GRPC_CHANNEL_TRANSIENT_FAILURE)
        hint = " (the channel cannot connect: server down, or TLS refused; the server's log tells why)";
    if (k->status == GRPC_STATUS_OK) res->reason[0] = 0;
    else if (st == FS_ERR_MISMATCH && d[0]) snprintf(res->reason, sizeof res->reason, "%s", d);
    else snprintf(res->reason, sizeof res->reason, "%s: %s%s", grpc_status_name(k->status), d, hint);
    gpr_free(d);
    return st;
}

static void cli_close(cli_call *k)
{
    if (k->reply) grpc_byte_buffer_destroy(k->reply);
    grpc_slice_unref(k->details);
    gpr_free((void *)k->error_string);
    grpc_metadata_array_destroy(&k->md);
    grpc_metadata_array_destroy(&k->trailing);
    if (k->call) grpc_call_unref(k->call);
}

/* Copies the final reply (if any) into a fresh malloc'ed buffer. */
static fs_status cli_take_reply(cli_call *k, uint8_t **reply, size_t *reply_len)
{
    if (!reply) return FS_OK;
    if (!k->reply) return FS_OK;
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0;
    if (bb_copy(k->reply, &buf, &cap, &len) != 0) {
        free(buf);
        return FS_ERR_NOMEM;
    }
    *reply = buf;
    if (reply_len) *reply_len = len;
    return FS_OK;
}

static fs_status cli_no_call(fs_tclient *c, const char *path, fs_call_result *res)
{
    fs_log_error("transport: cannot create a call %s on %s", path, c->target);
    if (res) {
        res->rpc = FS_RPC_INTERNAL;
        snprintf(res->reason, sizeof res->reason, "cannot create the call");
    }
    return FS_ERR_IO;
}

fs_status fs_tclient_unary(fs_tclient *c, const char *path, const uint8_t *req, size_t len,
                           uint8_t **reply, size_t *reply_len, int timeout_ms, fs_call_result *res)
{
    if (reply) *reply = NULL;
    if (reply_len) *reply_len = 0;
    if (!c || !path || (!req && len)) return FS_ERR_ARG;
    cli_call k;
    if (!cli_open(&k, c, path, timeout_ms)) {
        cli_close(&k);
        return cli_no_call(c, path, res);
    }
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)req, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    cli_send_md(&ops[0], timeout_ms);
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &k.md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &k.reply;
    cli_recv_status(&ops[5], &k);
    if (cli_batch(&k, ops, 6, &k.tag_s)) cli_wait(&k, &k.tag_s);
    else k.status = GRPC_STATUS_INTERNAL;
    grpc_byte_buffer_destroy(bb);
    fs_status st = cli_result(&k, 0, res);
    if (st == FS_OK) st = cli_take_reply(&k, reply, reply_len);
    cli_close(&k);
    return st;
}

fs_status fs_tclient_upload(fs_tclient *c, const char *path,
                            int (*next)(void *u, uint8_t **msg, size_t *len), void *u,
                            uint8_t **reply, size_t *reply_len, int timeout_ms, fs_call_result *res)
{
    if (reply) *reply = NULL;
    if (reply_len) *reply_len = 0;
    if (!c || !path || !next) return FS_ERR_ARG;
    cli_call k;
    if (!cli_open(&k, c, path, timeout_ms)) {
        cli_close(&k);
        return cli_no_call(c, path, res);
    }
    /* The receive side first: if the server ends the call mid-stream, the
     * pending send fails at once and this batch says why. */
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[0].data.recv_initial_metadata.recv_initial_metadata = &k.md;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &k.reply;
    cli_recv_status(&ops[2], &k);
    if (!cli_batch(&k, ops, 3, &k.tag_s)) {
        k.status = GRPC_STATUS_INTERNAL;
        fs_status st = cli_result(&k, 0, res);
        cli_close(&k);
        return st;
    }
    int md_sent = 0, aborted = 0;
    for (;;) {
        uint8_t *msg = NULL;
        size_t len = 0;
        int more = next(u, &msg, &len);
        memset(ops, 0, sizeof ops);
        size_t n = 0;
        if (!md_sent) cli_send_md(&ops[n++], timeout_ms);
        md_sent = 1;
        if (more < 0) {
            free(msg);
            aborted = 1;
            grpc_call_cancel(k.call, NULL);
            break;
        }
        grpc_byte_buffer *bb = NULL;
        if (more > 0) {
            bb = bb_take(msg, len);
            ops[n].op = GRPC_OP_SEND_MESSAGE;
            ops[n++].data.send_message.send_message = bb;
        } else {
            free(msg);
            ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        }
        int ok = cli_batch(&k, ops, n, &k.tag_x) && cli_wait(&k, &k.tag_x);
        if (bb) grpc_byte_buffer_destroy(bb);
        if (!ok || more == 0) break; /* on failure the status batch says why */
    }
    cli_wait(&k, &k.tag_s);
    fs_status st = cli_result(&k, aborted, res);
    if (st == FS_OK) st = cli_take_reply(&k, reply, reply_len);
    cli_close(&k);
    return st;
}

fs_status fs_tclient_download(fs_tclient *c, const char *path, const uint8_t *req, size_t len,
                              int (*sink)(void *u, const uint8_t *msg, size_t len), void *u,
                              int timeout_ms, fs_call_result *res)
{
    if (!c || !path || !sink || (!req && len)) return FS_ERR_ARG;
    cli_call k;
    if (!cli_open(&k, c, path, timeout_ms)) {
        cli_close(&k);
        return cli_no_call(c, path, res);
    }
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)req, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    cli_send_md(&ops[0], timeout_ms);
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &k.md;
    int ok = cli_batch(&k, ops, 4, &k.tag_x) && cli_wait(&k, &k.tag_x);
    grpc_byte_buffer_destroy(bb);
    int aborted = 0;
    uint8_t *buf = NULL;
    size_t cap = 0;
    fs_status mem = FS_OK;
    while (ok) {
        grpc_byte_buffer *m = NULL;
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_RECV_MESSAGE;
        ops[0].data.recv_message.recv_message = &m;
        if (!cli_batch(&k, ops, 1, &k.tag_x) || !cli_wait(&k, &k.tag_x) || !m) {
            if (m) grpc_byte_buffer_destroy(m);
            break; /* end of stream or failure: the status tells */
        }
        size_t n = 0;
        int cp = bb_copy(m, &buf, &cap, &n);
        grpc_byte_buffer_destroy(m);
        if (cp != 0) {
            mem = FS_ERR_NOMEM;
            grpc_call_cancel(k.call, NULL);
            break;
        }
        if (sink(u, buf, n) != 0) {
            aborted = 1;
            grpc_call_cancel(k.call, NULL);
            break;
        }
    }
    free(buf);
    memset(ops, 0, sizeof ops);
    cli_recv_status(&ops[0], &k);
    if (cli_batch(&k, ops, 1, &k.tag_s)) cli_wait(&k, &k.tag_s);
    else k.status = GRPC_STATUS_INTERNAL;
    fs_status st = cli_result(&k, aborted, res);
    if (mem != FS_OK) st = mem;
    cli_close(&k);
    return st;
}
