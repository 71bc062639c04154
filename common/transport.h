/*
 * common/transport.h — the only door to gRPC. Every gRPC C-core call in fedseg
 * lives in common/transport.c behind this small interface (the core API is not
 * stable across releases; DESIGN.md §6). The transport moves opaque byte
 * messages — it never parses protobuf and never does math — over three call
 * shapes: unary, client stream (upload), server stream (download).
 *
 * Security: with tls != NULL both sides use mutual TLS (the server requires and
 * verifies a client certificate from the consortium CA); the server hands each
 * handler the client's certificate identity (its subject common name). With
 * tls == NULL the channel is plaintext — WARNING: for tests and benchmarks on
 * loopback only; `fedseg aggregator` and `fedseg node` always use TLS.
 *
 * Threads: the server runs one event loop (fs_tserver_run) on the caller's
 * thread; every handler is called on it, so handlers need no locks but must
 * not block for long. A client is used by one thread at a time.
 *
 * Tested by tests/test_transport.c (all call shapes, mTLS accept / refuse,
 * deadlines, a 400 MB upload with bounded server memory).
 */
#ifndef FS_TRANSPORT_H
#define FS_TRANSPORT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include "kernels/status.h"

/* PEM files of one party. The server needs all three; a client may leave
 * cert and key NULL (it then presents no certificate, and a server requiring
 * one refuses it — useful only to test that refusal). */
typedef struct {
    const char *ca_cert;   /* consortium CA certificate (verifies the peer)  */
    const char *cert;      /* this party's certificate                       */
    const char *key;       /* this party's private key (PEM, PKCS#8 or SEC1) */
    const char *server_name; /* client only: name to check in the server's
                                certificate instead of the dialled host (NULL
                                = the dialled host)                          */
} fs_tls_files;

/* Outcome of a handler, sent to the client as the gRPC status. */
typedef enum {
    FS_RPC_OK = 0,
    FS_RPC_INVALID_ARGUMENT,   /* malformed or inconsistent message          */
    FS_RPC_FAILED_PRECONDITION,/* wrong protocol version, wrong round, ...   */
    FS_RPC_PERMISSION_DENIED,  /* identity not allowed                       */
    FS_RPC_RESOURCE_EXHAUSTED, /* oversized stream                           */
    FS_RPC_NOT_FOUND,
    FS_RPC_UNAVAILABLE,        /* try again later                            */
    FS_RPC_INTERNAL,
    FS_RPC_UNIMPLEMENTED       /* client side only: the server does not know
                                  the method (handlers never return it)      */
} fs_rpc_code;

typedef enum { FS_CALL_UNARY, FS_CALL_UPLOAD, FS_CALL_DOWNLOAD } fs_call_shape;

typedef struct {
    const char *path; /* "/fedseg.v1.Federation/Join" */
    fs_call_shape shape;
} fs_rpc_method;

/* A handler's reply: bytes malloc'ed by the handler (the transport frees them),
 * plus the status and, when not OK, a reason for the client. */
typedef struct {
    fs_rpc_code code;
    char reason[256];
    uint8_t *msg;
    size_t len;
} fs_rpc_reply;

/* Server callbacks. `method` indexes the method table given at start;
 * `identity` is the client certificate's common name (NULL in plaintext; a TLS
 * client whose certificate has no CN is refused before any handler runs).
 * Request and chunk bytes are borrowed for the duration of the callback. */
typedef struct {
    /* unary: one request in, one reply out */
    void (*unary)(void *u, int method, const char *identity, const uint8_t *req, size_t len,
                  fs_rpc_reply *out);
    /* client stream: begin returns the per-call state (NULL refuses the call
     * with out->code); chunk is called per message in order and may refuse
     * (the call then ends with that status, and end is called with failed=1);
     * end is called exactly once per begun call: after the client half-closed
     * (failed=0; fill out), or on failure/cancellation/deadline (failed=1; out
     * is ignored), and must release the state. failed=0 is given only once the
     * call is known to be alive after the last message (a cancelled call is
     * never reported as complete). */
    void *(*upload_begin)(void *u, int method, const char *identity, fs_rpc_reply *out);
    void (*upload_chunk)(void *u, void *state, const uint8_t *msg, size_t len, fs_rpc_reply *out);
    void (*upload_end)(void *u, void *state, int failed, fs_rpc_reply *out);
    /* server stream: begin parses the request and returns state (NULL refuses);
     * next produces the next message into out->msg (return 1), ends the stream
     * (return 0, out->code = status), and end releases the state (always called
     * once per begun call). */
    void *(*download_begin)(void *u, int method, const char *identity, const uint8_t *req,
                            size_t len, fs_rpc_reply *out);
    int (*download_next)(void *u, void *state, fs_rpc_reply *out);
    void (*download_end)(void *u, void *state);
    /* called about every 100 ms from the event loop (round deadlines) */
    void (*tick)(void *u);
} fs_tserver_handlers;

typedef struct fs_tserver fs_tserver;

/* Binds addr ("0.0.0.0:50051", "127.0.0.1:0" for a free port) and starts the
 * server; *bound_port receives the port. max_msg_bytes caps one message
 * (chunk) in both directions (0 = 4 MiB); a resource quota bounds the memory
 * gRPC itself may hold for all connections (FS_TSERVER_QUOTA_BYTES or 8
 * messages, whichever is larger). The method table and handlers are borrowed
 * and must outlive the server. FS_ERR_IO when the port cannot be bound
 * (another process holds it: no SO_REUSEPORT sharing), FS_ERR_NOT_FOUND when a
 * PEM file is missing, FS_ERR_IO when it cannot be read, FS_ERR_FORMAT when it
 * holds no valid certificate / key, FS_ERR_MISMATCH when the key does not
 * belong to the certificate; each logs the file's name. */
/* 256 MiB: with 64 MiB, about one 400 MiB mTLS upload in four was reset by
 * gRPC ("RST_STREAM with error code 11") on two busy cores although the
 * server's RSS stayed under 100 MiB; the quota counts reservations, not use. */
#define FS_TSERVER_QUOTA_BYTES ((size_t)256 << 20)
fs_status fs_tserver_start(fs_tserver **out, const char *addr, const fs_tls_files *tls,
                           const fs_rpc_method *methods, int nmethods,
                           const fs_tserver_handlers *h, void *u, size_t max_msg_bytes,
                           int *bound_port);
/* Runs the event loop until *stop becomes non-zero (set it from a signal
 * handler), then shuts down gracefully: in-flight calls get up to grace_ms,
 * then are cancelled. */
fs_status fs_tserver_run(fs_tserver *s, volatile sig_atomic_t *stop, int grace_ms);
void fs_tserver_free(fs_tserver *s); /* NULL-safe; after run returned */

typedef struct fs_tclient fs_tclient;

/* A channel to target ("host:port"). Connection happens lazily on the first
 * call; calls wait for the server to be ready up to their timeout (a server
 * that is down, or refuses this client's certificate, therefore costs the
 * whole timeout). max_msg_bytes caps one message in both directions (0 =
 * 4 MiB). PEM errors as for fs_tserver_start. */
fs_status fs_tclient_connect(fs_tclient **out, const char *target, const fs_tls_files *tls,
                             size_t max_msg_bytes);
void fs_tclient_free(fs_tclient *c); /* NULL-safe */

/* Result of a client call: the server's (or transport's) status and reason.
 * Functions return FS_OK only when the call completed with FS_RPC_OK; on
 * FS_ERR_IO the call failed in transport (unreachable, TLS refused, deadline,
 * cancelled by a server shutdown, a stream reset by the server's memory
 * quota, or a handler's FS_RPC_UNAVAILABLE — all worth a retry: `rpc` =
 * FS_RPC_UNAVAILABLE and `reason` tells, starting with gRPC's status name,
 * e.g. "DEADLINE_EXCEEDED: Deadline Exceeded"), otherwise
 * FS_ERR_MISMATCH with the server's code in `rpc` and its reason verbatim
 * (FS_RPC_UNIMPLEMENTED for an unknown method). A call that the caller's own
 * callback aborted (next() < 0, sink() != 0) is cancelled and returns
 * FS_ERR_ARG with rpc = FS_RPC_INTERNAL.
 * FS_ERR_NOMEM when a reply cannot be allocated. `res` may be NULL.
 * timeout_ms <= 0 means no deadline and no waiting for the server (fail fast). */
typedef struct {
    fs_rpc_code rpc;
    char reason[256];
} fs_call_result;

/* Unary call; *reply is malloc'ed (caller frees; NULL when the server sent no
 * message). reply may be NULL to discard the answer. */
fs_status fs_tclient_unary(fs_tclient *c, const char *path, const uint8_t *req, size_t len,
                           uint8_t **reply, size_t *reply_len, int timeout_ms, fs_call_result *res);

/* Client stream: next() fills *msg and *len with the next message (malloc'ed; the
 * transport frees it) and returns 1, or returns 0 at the end (or <0 to abort).
 * One message is in flight at a time (HTTP/2 flow control is the
 * back-pressure). *reply is the server's final message (caller frees). */
fs_status fs_tclient_upload(fs_tclient *c, const char *path,
                            int (*next)(void *u, uint8_t **msg, size_t *len), void *u,
                            uint8_t **reply, size_t *reply_len, int timeout_ms, fs_call_result *res);

/* Server stream: sink() receives each message (borrowed for the call; return
 * non-zero to cancel the call). */
fs_status fs_tclient_download(fs_tclient *c, const char *path, const uint8_t *req, size_t len,
                              int (*sink)(void *u, const uint8_t *msg, size_t len), void *u,
                              int timeout_ms, fs_call_result *res);

const char *fs_rpc_code_str(fs_rpc_code c);

#endif
