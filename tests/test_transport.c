/*
 * tests/test_transport.c — common/transport.c end to end over 127.0.0.1.
 *
 * The test makes its own PKI with the openssl CLI in a temporary folder (an
 * EC P-256 CA, an aggregator certificate with SAN DNS:localhost,IP:127.0.0.1,
 * site certificates CN=site_1 / CN=site_2, and a rogue CA whose certificate
 * also claims CN=site_1), then forks three servers BEFORE this process
 * initialises gRPC (gRPC does not survive fork): an mTLS server, a plaintext
 * server and an mTLS "victim" that is stopped in the middle of an upload.
 * Each server is a real single-threaded event loop in its own process, so
 * the server's peak RSS (VmHWM, reported by a stats call) is its own.
 *
 * What is asserted:
 *   unary echo (the reply carries the identity the server saw: the client
 *   certificate's CN, none in plaintext); the SSL target-name override;
 *   handler refusals (unary, upload begin, mid-upload chunk, download begin,
 *   download that ends with an error after data) reach the client with their
 *   code and reason; a 400 MiB upload in 256 KiB chunks verified word by word
 *   by the server, with its peak RSS bounded far below the upload; a 100 MiB
 *   download verified by the client; two concurrent uploads; no certificate,
 *   a rogue-CA certificate, plaintext to the TLS port, a wrong server name →
 *   FS_ERR_IO, the server's log names the TLS reason, and the server keeps
 *   serving; a deadline shorter than the call → FS_ERR_IO "DEADLINE" and the
 *   server's upload_end(failed=1); unknown method → UNIMPLEMENTED; an
 *   oversized message → RESOURCE_EXHAUSTED; PEM errors name the file; a port
 *   in use → FS_ERR_IO; server shutdown during an upload → client FS_ERR_IO,
 *   the server exits 0 with every begun handler state ended; tick() runs
 *   about every 100 ms. Skips (77) without the openssl CLI.
 *
 * FS_TRANSPORT_UPLOAD_MIB overrides the big upload's size (default 400).
 */
#include "check.h"
#include "common/log.h"
#include "common/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK ((size_t)256 << 10)
#define SERVER_MAX_MSG (((size_t)1 << 20) + 4096)
#define TLS_FAIL_MS 1500

static char dir[] = "/tmp/fs_transport_XXXXXX";

enum { M_ECHO, M_UPLOAD, M_UPLOAD_REFUSE_AT, M_UPLOAD_REFUSE, M_DOWNLOAD, M_DOWNLOAD_FAIL, M_N };
static const fs_rpc_method methods[M_N] = {
    {"/fedseg.test.T/Echo", FS_CALL_UNARY},
    {"/fedseg.test.T/Upload", FS_CALL_UPLOAD},
    {"/fedseg.test.T/UploadRefuseAt", FS_CALL_UPLOAD},
    {"/fedseg.test.T/UploadRefuse", FS_CALL_UPLOAD},
    {"/fedseg.test.T/Download", FS_CALL_DOWNLOAD},
    {"/fedseg.test.T/DownloadFail", FS_CALL_DOWNLOAD},
};

/* The byte pattern of uploads and downloads: 32-bit word w of the stream. */
static inline uint32_t pat(uint64_t w) { return (uint32_t)(w * 2654435761u) ^ 0x9e3779b9u; }

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long proc_status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl)) { v = atol(line + kl); break; }
    if (f) fclose(f);
    return v;
}

/* ------------------------------------------------------------ the server */

typedef struct {
    long echo, up_begun, up_ok, up_failed, dl_begun, dl_ended, ticks;
    long start_ms;
} srv_stats;

typedef struct {
    uint64_t bytes, chunks, bad;
    int refuse_at;
    char id[64];
} up_state;

typedef struct {
    uint64_t total, chunk, off;
    int fail_after; /* messages before an error status; <0 = never */
    int sent;
} dl_state;

static void reply_text(fs_rpc_reply *out, const char *text)
{
    out->len = strlen(text);
    out->msg = malloc(out->len ? out->len : 1);
    memcpy(out->msg, text, out->len);
}

static void h_unary(void *u, int method, const char *identity, const uint8_t *req, size_t len,
                    fs_rpc_reply *out)
{
    srv_stats *st = u;
    if (len == 5 && !memcmp(req, "stats", 5)) {
        char t[512];
        snprintf(t, sizeof t, "echo=%ld up_begun=%ld up_ok=%ld up_failed=%ld dl_begun=%ld dl_ended=%ld "
                 "ticks=%ld hwm_kb=%ld uptime_ms=%ld", st->echo, st->up_begun, st->up_ok, st->up_failed,
                 st->dl_begun, st->dl_ended, st->ticks, proc_status_kb("VmHWM:"), now_ms() - st->start_ms);
        reply_text(out, t);
        return;
    }
    st->echo++;
    if (len >= 7 && !memcmp(req, "refuse:", 7)) {
        out->code = FS_RPC_PERMISSION_DENIED;
        snprintf(out->reason, sizeof out->reason, "refused %.*s for %s", (int)(len - 7), req + 7,
                 identity ? identity : "-");
        return;
    }
    const char *id = identity ? identity : "-";
    out->len = strlen(id) + 1 + len;
    out->msg = malloc(out->len);
    memcpy(out->msg, id, strlen(id));
    out->msg[strlen(id)] = '|';
    memcpy(out->msg + strlen(id) + 1, req, len);
}

static void *h_up_begin(void *u, int method, const char *identity, fs_rpc_reply *out)
{
    srv_stats *st = u;
    if (method == M_UPLOAD_REFUSE) {
        out->code = FS_RPC_FAILED_PRECONDITION;
        snprintf(out->reason, sizeof out->reason, "no upload open for %s", identity ? identity : "-");
        return NULL;
    }
    up_state *s = calloc(1, sizeof *s);
    s->refuse_at = method == M_UPLOAD_REFUSE_AT ? 3 : -1;
    snprintf(s->id, sizeof s->id, "%s", identity ? identity : "-");
    st->up_begun++;
    return s;
}

static void h_up_chunk(void *u, void *state, const uint8_t *msg, size_t len, fs_rpc_reply *out)
{
    up_state *s = state;
    if ((int64_t)s->chunks == s->refuse_at) {
        out->code = FS_RPC_INVALID_ARGUMENT;
        snprintf(out->reason, sizeof out->reason, "chunk %llu rejected", (unsigned long long)s->chunks);
        return;
    }
    if (len % 4 || s->bytes % 4) s->bad++;
    else {
        uint64_t w0 = s->bytes / 4;
        const uint8_t *p = msg;
        for (size_t i = 0; i < len / 4; i++) {
            uint32_t v;
            memcpy(&v, p + 4 * i, 4);
            if (v != pat(w0 + i)) { s->bad++; break; }
        }
    }
    s->bytes += len;
    s->chunks++;
}

static void h_up_end(void *u, void *state, int failed, fs_rpc_reply *out)
{
    srv_stats *st = u;
    up_state *s = state;
    if (failed) st->up_failed++;
    else {
        st->up_ok++;
        char t[256];
        snprintf(t, sizeof t, "bytes=%llu chunks=%llu bad=%llu id=%s", (unsigned long long)s->bytes,
                 (unsigned long long)s->chunks, (unsigned long long)s->bad, s->id);
        reply_text(out, t);
    }
    free(s);
}

static void *h_dl_begin(void *u, int method, const char *identity, const uint8_t *req, size_t len,
                        fs_rpc_reply *out)
{
    srv_stats *st = u;
    char t[64];
    unsigned long long total = 0, chunk = 0;
    snprintf(t, sizeof t, "%.*s", (int)(len < 63 ? len : 63), (const char *)req);
    if (sscanf(t, "%llu %llu", &total, &chunk) != 2 || chunk == 0 || chunk % 4 || chunk > SERVER_MAX_MSG) {
        out->code = FS_RPC_INVALID_ARGUMENT;
        snprintf(out->reason, sizeof out->reason, "bad download request '%s'", t);
        return NULL;
    }
    dl_state *s = calloc(1, sizeof *s);
    s->total = total;
    s->chunk = chunk;
    s->fail_after = method == M_DOWNLOAD_FAIL ? 2 : -1;
    st->dl_begun++;
    return s;
}

static int h_dl_next(void *u, void *state, fs_rpc_reply *out)
{
    dl_state *s = state;
    if (s->sent == s->fail_after) {
        out->code = FS_RPC_NOT_FOUND;
        snprintf(out->reason, sizeof out->reason, "model vanished after %d chunks", s->sent);
        return 0;
    }
    if (s->off >= s->total) return 0;
    size_t n = s->total - s->off < s->chunk ? (size_t)(s->total - s->off) : (size_t)s->chunk;
    uint32_t *w = malloc(n + 4);
    for (size_t i = 0; i < (n + 3) / 4; i++) w[i] = pat(s->off / 4 + i);
    out->msg = (uint8_t *)w;
    out->len = n;
    s->off += n;
    s->sent++;
    return 1;
}

static void h_dl_end(void *u, void *state)
{
    ((srv_stats *)u)->dl_ended++;
    free(state);
}

static void h_tick(void *u) { ((srv_stats *)u)->ticks++; }

static volatile sig_atomic_t g_stop;
static void on_term(int sig) { (void)sig; g_stop = 1; }

static void path_in(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

/* The body of a server process: serve until SIGTERM; exit 0 only when the
 * loop returned cleanly and every begun handler state was ended. */
static int server_main(int tls, int grace_ms, int port_fd)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char ca[300], cert[300], key[300];
    path_in(ca, sizeof ca, "ca.pem");
    path_in(cert, sizeof cert, "agg.pem");
    path_in(key, sizeof key, "agg.key");
    fs_tls_files files = {ca, cert, key, NULL};
    srv_stats st;
    memset(&st, 0, sizeof st);
    st.start_ms = now_ms();
    fs_tserver_handlers h = {h_unary, h_up_begin, h_up_chunk, h_up_end, h_dl_begin, h_dl_next, h_dl_end, h_tick};
    fs_tserver *s = NULL;
    int port = 0;
    fs_status rc = fs_tserver_start(&s, "127.0.0.1:0", tls ? &files : NULL, methods, M_N, &h, &st,
                                    SERVER_MAX_MSG, &port);
    if (rc != FS_OK) port = -1;
    if (write(port_fd, &port, sizeof port) != (ssize_t)sizeof port) return 2;
    close(port_fd);
    if (rc != FS_OK) return 2;
    rc = fs_tserver_run(s, &g_stop, grace_ms);
    fs_tserver_free(s);
    if (rc != FS_OK) return 2;
    if (st.up_begun != st.up_ok + st.up_failed || st.dl_begun != st.dl_ended) {
        fprintf(stderr, "server: handler states not ended: uploads %ld begun, %ld ok, %ld failed; "
                "downloads %ld begun, %ld ended\n", st.up_begun, st.up_ok, st.up_failed, st.dl_begun, st.dl_ended);
        return 3;
    }
    return 0;
}

/* Forks a server process (stderr to log_name in the test folder when not
 * NULL) and waits for its port. */
static pid_t spawn_server(int tls, int grace_ms, const char *log_name, int *port)
{
    int p[2];
    *port = -1;
    if (pipe(p) != 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (log_name) {
            char lp[300];
            path_in(lp, sizeof lp, log_name);
            int fd = open(lp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0) { dup2(fd, 2); close(fd); }
        }
        exit(server_main(tls, grace_ms, p[1]));
    }
    close(p[1]);
    struct pollfd pf = {p[0], POLLIN, 0};
    if (pid > 0 && poll(&pf, 1, 20000) == 1 && read(p[0], port, sizeof *port) != (ssize_t)sizeof *port) *port = -1;
    close(p[0]);
    return pid;
}

/* Stops a server with SIGTERM and returns its exit code (-1: crashed or hung). */
static int stop_server(pid_t pid)
{
    if (pid <= 0) return -1;
    kill(pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        int ws;
        pid_t r = waitpid(pid, &ws, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(ws)) return WEXITSTATUS(ws);
            fprintf(stderr, "server %d died by signal %d\n", (int)pid, WIFSIGNALED(ws) ? WTERMSIG(ws) : -1);
            return -1;
        }
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fprintf(stderr, "server %d did not stop within 15 s\n", (int)pid);
    return -1;
}

/* ------------------------------------------------------------ the client */

typedef struct {
    uint64_t total, sent;
    int sleep_ms;     /* per chunk, for the deadline test            */
    uint64_t abort_after; /* return -1 after this many chunks (0: never) */
    pid_t kill_pid;   /* SIGTERM this server after kill_after chunks  */
    uint64_t kill_after;
    long first_ms;    /* when the first chunk was produced            */
} up_src;

static int up_next(void *u, uint8_t **msg, size_t *len)
{
    up_src *s = u;
    if (s->sent >= s->total) return 0;
    if (s->abort_after && s->sent / CHUNK == s->abort_after) return -1;
    if (s->sleep_ms) usleep((useconds_t)s->sleep_ms * 1000);
    if (s->kill_pid > 0 && s->sent / CHUNK == s->kill_after) kill(s->kill_pid, SIGTERM);
    if (!s->first_ms) s->first_ms = now_ms();
    size_t n = s->total - s->sent < CHUNK ? (size_t)(s->total - s->sent) : CHUNK;
    uint32_t *w = malloc(CHUNK);
    if (!w) return -1;
    uint64_t w0 = s->sent / 4;
    for (size_t i = 0; i < n / 4; i++) w[i] = pat(w0 + i);
    *msg = (uint8_t *)w;
    *len = n;
    s->sent += n;
    return 1;
}

typedef struct {
    uint64_t bytes, bad;
    int msgs;
} dl_sink_state;

static int dl_sink(void *u, const uint8_t *msg, size_t len)
{
    dl_sink_state *d = u;
    if (len % 4 || d->bytes % 4) d->bad++;
    else {
        uint64_t w0 = d->bytes / 4;
        for (size_t i = 0; i < len / 4; i++) {
            uint32_t v;
            memcpy(&v, msg + 4 * i, 4);
            if (v != pat(w0 + i)) { d->bad++; break; }
        }
    }
    d->bytes += len;
    d->msgs++;
    return 0;
}

static int dl_sink_stop(void *u, const uint8_t *msg, size_t len)
{
    dl_sink(u, msg, len);
    return ((dl_sink_state *)u)->msgs >= 3;
}

typedef struct {
    fs_tls_files site1, site2, site2_as_localhost, no_cert, rogue, wrong_name;
    char s[24][300];
} pki;

static int make_pki(pki *k)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "set -e; cd '%s'\n"
             "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out \"$1\" 2>/dev/null; }\n"
             "ca() { key $1.key; openssl req -x509 -new -key $1.key -subj \"/CN=$2\" -days 2 -out $1.pem "
             "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; }\n"
             "leaf() { key $1.key; openssl req -new -key $1.key -subj \"/CN=$2\" -out $1.csr; "
             "printf '%%s\\n' \"$4\" > $1.ext; "
             "openssl x509 -req -in $1.csr -CA $3.pem -CAkey $3.key -set_serial 0x$(openssl rand -hex 8) "
             "-days 2 -extfile $1.ext -out $1.pem 2>/dev/null; }\n"
             "ca ca test-consortium; ca rogue_ca rogue\n"
             "leaf agg aggregator ca 'subjectAltName=DNS:localhost,IP:127.0.0.1'\n"
             "leaf site_1 site_1 ca 'extendedKeyUsage=clientAuth'\n"
             "leaf site_2 site_2 ca 'extendedKeyUsage=clientAuth'\n"
             "leaf rogue site_1 rogue_ca 'extendedKeyUsage=clientAuth'\n"
             "printf 'not a certificate\\n' > garbage.pem\n",
             dir);
    if (system(cmd) != 0) return -1;
    const char *names[] = {"ca.pem", "site_1.pem", "site_1.key", "site_2.pem", "site_2.key", "rogue.pem", "rogue.key"};
    for (int i = 0; i < 7; i++) path_in(k->s[i], sizeof k->s[i], names[i]);
    k->site1 = (fs_tls_files){k->s[0], k->s[1], k->s[2], NULL};
    k->site2 = (fs_tls_files){k->s[0], k->s[3], k->s[4], NULL};
    k->site2_as_localhost = (fs_tls_files){k->s[0], k->s[3], k->s[4], "localhost"};
    k->no_cert = (fs_tls_files){k->s[0], NULL, NULL, NULL};
    k->rogue = (fs_tls_files){k->s[0], k->s[5], k->s[6], NULL};
    k->wrong_name = (fs_tls_files){k->s[0], k->s[1], k->s[2], "wrong.example"};
    return 0;
}

static void target_of(char *t, size_t n, int port) { snprintf(t, n, "127.0.0.1:%d", port); }

/* One unary call with a fresh client; returns its status, reply in *out. */
static fs_status unary_once(const char *target, const fs_tls_files *tls, const char *path, const char *req,
                            char *out, size_t outn, int timeout_ms, fs_call_result *res)
{
    fs_tclient *c = NULL;
    fs_status st = fs_tclient_connect(&c, target, tls, SERVER_MAX_MSG);
    if (st != FS_OK) return st;
    uint8_t *rep = NULL;
    size_t rl = 0;
    st = fs_tclient_unary(c, path, (const uint8_t *)req, strlen(req), &rep, &rl, timeout_ms, res);
    if (out) snprintf(out, outn, "%.*s", (int)rl, rep ? (const char *)rep : "");
    free(rep);
    fs_tclient_free(c);
    return st;
}

typedef struct {
    long echo, up_begun, up_ok, up_failed, dl_begun, dl_ended, ticks, hwm_kb, uptime_ms;
} stats;

static int get_stats(const char *target, const fs_tls_files *tls, stats *s)
{
    char t[512];
    fs_call_result r;
    if (unary_once(target, tls, methods[M_ECHO].path, "stats", t, sizeof t, 5000, &r) != FS_OK) return -1;
    return sscanf(t, "echo=%ld up_begun=%ld up_ok=%ld up_failed=%ld dl_begun=%ld dl_ended=%ld ticks=%ld "
                  "hwm_kb=%ld uptime_ms=%ld", &s->echo, &s->up_begun, &s->up_ok, &s->up_failed, &s->dl_begun,
                  &s->dl_ended, &s->ticks, &s->hwm_kb, &s->uptime_ms) == 9 ? 0 : -1;
}

/* Upload `bytes` of the pattern; returns the status, the reply in out. */
static fs_status upload(fs_tclient *c, int method, up_src *src, char *out, size_t outn, int timeout_ms,
                        fs_call_result *res)
{
    uint8_t *rep = NULL;
    size_t rl = 0;
    fs_status st = fs_tclient_upload(c, methods[method].path, up_next, src, &rep, &rl, timeout_ms, res);
    if (out) snprintf(out, outn, "%.*s", (int)rl, rep ? (const char *)rep : "");
    free(rep);
    return st;
}

typedef struct {
    const char *target;
    const fs_tls_files *tls;
    uint64_t bytes;
    fs_status st;
    char reply[256];
} par_job;

static void *par_upload(void *arg)
{
    par_job *j = arg;
    fs_tclient *c = NULL;
    j->st = fs_tclient_connect(&c, j->target, j->tls, SERVER_MAX_MSG);
    if (j->st != FS_OK) return NULL;
    up_src src = {.total = j->bytes};
    fs_call_result r;
    j->st = upload(c, M_UPLOAD, &src, j->reply, sizeof j->reply, 60000, &r);
    fs_tclient_free(c);
    return NULL;
}

/* Runs fn's call with stderr captured; returns 1 when the log contains want. */
static int stderr_contains_after(fs_status (*fn)(void *), void *arg, fs_status *st, const char *want)
{
    char lp[300];
    path_in(lp, sizeof lp, "captured.log");
    fflush(stderr);
    int saved = dup(2), fd = open(lp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    *st = fn(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char buf[4096] = {0};
    FILE *f = fopen(lp, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    return strstr(buf, want) != NULL;
}

static fs_status try_connect(void *arg)
{
    fs_tclient *c = NULL;
    fs_status st = fs_tclient_connect(&c, "127.0.0.1:1", arg, 0);
    fs_tclient_free(c);
    return st;
}

static int file_contains(const char *name, const char *want)
{
    char lp[300];
    path_in(lp, sizeof lp, name);
    FILE *f = fopen(lp, "r");
    if (!f) return 0;
    char line[2048];
    int found = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, want)) found = 1;
    fclose(f);
    return found;
}

int main(void)
{
    fs_log_set_level(FS_LOG_WARN);
    if (system("openssl version > /dev/null 2>&1") != 0) {
        fprintf(stderr, "SKIP: the openssl command-line tool is missing\n");
        return 77;
    }
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    pki k;
    if (make_pki(&k) != 0) {
        fprintf(stderr, "FAIL: could not make test certificates with openssl\n");
        return 1;
    }
    long upload_mib = getenv("FS_TRANSPORT_UPLOAD_MIB") ? atol(getenv("FS_TRANSPORT_UPLOAD_MIB")) : 400;
    if (upload_mib < 1) upload_mib = 1;

    /* Servers first: no gRPC in this process before fork. */
    int port_tls, port_plain, port_victim;
    pid_t srv_tls = spawn_server(1, 2000, "server_tls.log", &port_tls);
    pid_t srv_plain = spawn_server(0, 2000, NULL, &port_plain);
    pid_t srv_victim = spawn_server(1, 300, NULL, &port_victim);
    CHECK(port_tls > 0 && port_plain > 0 && port_victim > 0, "servers did not start (%d %d %d)", port_tls,
          port_plain, port_victim);
    if (port_tls <= 0 || port_plain <= 0 || port_victim <= 0) {
        stop_server(srv_tls);
        stop_server(srv_plain);
        stop_server(srv_victim);
        return check_result();
    }
    char tgt[64], tgt_plain[64], tgt_victim[64], tgt_local[64];
    target_of(tgt, sizeof tgt, port_tls);
    target_of(tgt_plain, sizeof tgt_plain, port_plain);
    target_of(tgt_victim, sizeof tgt_victim, port_victim);
    snprintf(tgt_local, sizeof tgt_local, "localhost:%d", port_tls);
    char out[512];
    fs_call_result r;
    fs_status st;

    /* PEM errors name the file; nothing reaches gRPC. */
    {
        char missing[300], garbage[300];
        path_in(missing, sizeof missing, "missing.pem");
        path_in(garbage, sizeof garbage, "garbage.pem");
        fs_tls_files f = {missing, k.s[1], k.s[2], NULL};
        fs_log_set_level(FS_LOG_ERROR);
        CHECK(stderr_contains_after(try_connect, &f, &st, missing) && st == FS_ERR_NOT_FOUND,
              "missing CA: status %s, or the log does not name the file", fs_status_str(st));
        f.ca_cert = garbage;
        CHECK(stderr_contains_after(try_connect, &f, &st, garbage) && st == FS_ERR_FORMAT,
              "garbage CA: status %s, or the log does not name the file", fs_status_str(st));
        fs_tls_files mix = {k.s[0], k.s[1], k.s[4], NULL};
        CHECK(stderr_contains_after(try_connect, &mix, &st, k.s[4]) && st == FS_ERR_MISMATCH,
              "site_1 cert with site_2 key: status %s, or the log does not name the key", fs_status_str(st));
        fs_log_set_level(FS_LOG_WARN);
    }

    /* Unary echo: identity = the client certificate's CN. */
    long t0 = now_ms();
    st = unary_once(tgt, &k.site1, methods[M_ECHO].path, "hello", out, sizeof out, 10000, &r);
    CHECK(st == FS_OK && !strcmp(out, "site_1|hello"), "echo site_1: %s '%s' (%s)", fs_status_str(st), out, r.reason);
    fprintf(stderr, "mTLS echo (new channel, handshake included): %ld ms\n", now_ms() - t0);
    st = unary_once(tgt, &k.site2, methods[M_ECHO].path, "hi", out, sizeof out, 10000, &r);
    CHECK(st == FS_OK && !strcmp(out, "site_2|hi"), "echo site_2: %s '%s' (%s)", fs_status_str(st), out, r.reason);
    st = unary_once(tgt_local, &k.site1, methods[M_ECHO].path, "", out, sizeof out, 10000, &r);
    CHECK(st == FS_OK && !strcmp(out, "site_1|"), "empty echo via localhost: %s '%s' (%s)", fs_status_str(st), out,
          r.reason);
    st = unary_once(tgt, &k.site2_as_localhost, methods[M_ECHO].path, "x", out, sizeof out, 10000, &r);
    CHECK(st == FS_OK && !strcmp(out, "site_2|x"), "server_name override: %s (%s)", fs_status_str(st), r.reason);

    /* Handler refusal: code + reason. */
    st = unary_once(tgt, &k.site1, methods[M_ECHO].path, "refuse:join", out, sizeof out, 10000, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_PERMISSION_DENIED && !strcmp(r.reason, "refused join for site_1"),
          "refusal: %s %s '%s'", fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);

    /* Unknown method. */
    st = unary_once(tgt, &k.site1, "/fedseg.test.T/Nope", "x", out, sizeof out, 10000, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_UNIMPLEMENTED && strstr(r.reason, "/fedseg.test.T/Nope"),
          "unknown method: %s %s '%s'", fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);

    fs_tclient *c1 = NULL;
    CHECK(fs_tclient_connect(&c1, tgt, &k.site1, SERVER_MAX_MSG) == FS_OK, "connect site_1");

    /* A message over the server's limit: RESOURCE_EXHAUSTED. */
    {
        fs_tclient *big = NULL;
        CHECK(fs_tclient_connect(&big, tgt, &k.site1, (size_t)8 << 20) == FS_OK, "connect big");
        size_t n = (size_t)2 << 20;
        uint8_t *m = calloc(1, n);
        st = fs_tclient_unary(big, methods[M_ECHO].path, m, n, NULL, NULL, 10000, &r);
        CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_RESOURCE_EXHAUSTED,
              "oversized message: %s %s '%s'", fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
        free(m);
        fs_tclient_free(big);
    }

    /* Upload refusals: at begin, and mid-stream. */
    {
        up_src src = {.total = 64 * CHUNK};
        st = upload(c1, M_UPLOAD_REFUSE, &src, out, sizeof out, 10000, &r);
        CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_FAILED_PRECONDITION && !strcmp(r.reason, "no upload open for site_1"),
              "upload refused at begin: %s %s '%s'", fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
        up_src empty = {.total = 0};
        st = upload(c1, M_UPLOAD, &empty, out, sizeof out, 10000, &r);
        CHECK(st == FS_OK && !strcmp(out, "bytes=0 chunks=0 bad=0 id=site_1"), "empty upload: %s '%s' (%s)",
              fs_status_str(st), out, r.reason);
        up_src src2 = {.total = 400 * CHUNK};
        st = upload(c1, M_UPLOAD_REFUSE_AT, &src2, out, sizeof out, 10000, &r);
        CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_INVALID_ARGUMENT && !strcmp(r.reason, "chunk 3 rejected"),
              "upload refused mid-stream: %s %s '%s'", fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
        CHECK(src2.sent < src2.total, "the client kept sending after the refusal (%llu of %llu bytes)",
              (unsigned long long)src2.sent, (unsigned long long)src2.total);
    }

    /* Download refusals: bad request at begin; error status after data. */
    {
        dl_sink_state d = {0};
        st = fs_tclient_download(c1, methods[M_DOWNLOAD].path, (const uint8_t *)"x", 1, dl_sink, &d, 10000, &r);
        CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_INVALID_ARGUMENT && strstr(r.reason, "bad download request"),
              "download refused: %s %s '%s'", fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
        memset(&d, 0, sizeof d);
        const char *req = "10485760 65536";
        st = fs_tclient_download(c1, methods[M_DOWNLOAD_FAIL].path, (const uint8_t *)req, strlen(req), dl_sink, &d,
                                 10000, &r);
        CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_NOT_FOUND && !strcmp(r.reason, "model vanished after 2 chunks") &&
              d.msgs == 2 && d.bad == 0, "download failing after 2 chunks: %s %s '%s', %d msgs",
              fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason, d.msgs);
        memset(&d, 0, sizeof d);
        st = fs_tclient_download(c1, methods[M_DOWNLOAD].path, (const uint8_t *)req, strlen(req), dl_sink_stop, &d,
                                 10000, &r);
        CHECK(st == FS_ERR_ARG && d.msgs == 3, "download aborted by the sink: %s, %d msgs", fs_status_str(st), d.msgs);
    }

    /* Refused TLS clients: FS_ERR_IO; the server's log says why. */
    {
        stats before, after;
        CHECK(get_stats(tgt, &k.site1, &before) == 0, "stats");
        t0 = now_ms();
        st = unary_once(tgt, &k.no_cert, methods[M_ECHO].path, "x", out, sizeof out, TLS_FAIL_MS, &r);
        CHECK(st == FS_ERR_IO && r.rpc == FS_RPC_UNAVAILABLE, "no certificate: %s '%s'", fs_status_str(st), r.reason);
        fprintf(stderr, "no certificate -> %s after %ld ms: %s\n", fs_status_str(st), now_ms() - t0, r.reason);
        st = unary_once(tgt, &k.rogue, methods[M_ECHO].path, "x", out, sizeof out, TLS_FAIL_MS, &r);
        CHECK(st == FS_ERR_IO && r.rpc == FS_RPC_UNAVAILABLE, "rogue CA: %s '%s'", fs_status_str(st), r.reason);
        fprintf(stderr, "rogue CA -> %s: %s\n", fs_status_str(st), r.reason);
        st = unary_once(tgt, NULL, methods[M_ECHO].path, "x", out, sizeof out, TLS_FAIL_MS, &r);
        CHECK(st == FS_ERR_IO, "plaintext to the TLS port: %s '%s'", fs_status_str(st), r.reason);
        st = unary_once(tgt, &k.wrong_name, methods[M_ECHO].path, "x", out, sizeof out, TLS_FAIL_MS, &r);
        CHECK(st == FS_ERR_IO, "wrong server name: %s '%s'", fs_status_str(st), r.reason);
        st = unary_once(tgt, &k.site2, methods[M_ECHO].path, "again", out, sizeof out, 10000, &r);
        CHECK(st == FS_OK && !strcmp(out, "site_2|again"), "server down after refused clients: %s (%s)",
              fs_status_str(st), r.reason);
        CHECK(get_stats(tgt, &k.site1, &after) == 0 && after.echo == before.echo + 1,
              "a refused client reached a handler (%ld -> %ld echo calls)", before.echo, after.echo);
    }

    /* Unreachable server: FS_ERR_IO at the deadline. */
    st = unary_once("127.0.0.1:1", NULL, methods[M_ECHO].path, "x", out, sizeof out, 500, &r);
    CHECK(st == FS_ERR_IO && r.rpc == FS_RPC_UNAVAILABLE, "unreachable: %s '%s'", fs_status_str(st), r.reason);
    st = unary_once("127.0.0.1:1", NULL, methods[M_ECHO].path, "x", out, sizeof out, 0, &r);
    CHECK(st == FS_ERR_IO && r.rpc == FS_RPC_UNAVAILABLE, "unreachable, fail fast: %s '%s'", fs_status_str(st),
          r.reason);

    /* A deadline shorter than the call, and an upload aborted by the client:
     * FS_ERR_IO / FS_ERR_ARG, and the server ends the upload as failed — never
     * as complete (gRPC reports both like a half-close on the server).
     * FS_TRANSPORT_REPEAT repeats this section to hunt races. */
    long repeat = getenv("FS_TRANSPORT_REPEAT") ? atol(getenv("FS_TRANSPORT_REPEAT")) : 1;
    for (long rep = 0; rep < repeat; rep++) {
        stats before, after;
        CHECK(get_stats(tgt, &k.site1, &before) == 0, "stats");
        up_src src = {.total = 20 * CHUNK, .sleep_ms = 100};
        t0 = now_ms();
        st = upload(c1, M_UPLOAD, &src, out, sizeof out, 300, &r);
        long ms = now_ms() - t0;
        CHECK(st == FS_ERR_IO && r.rpc == FS_RPC_UNAVAILABLE && strstr(r.reason, "DEADLINE"),
              "deadline: %s '%s'", fs_status_str(st), r.reason);
        CHECK(ms < 1500, "the deadline of 300 ms took %ld ms", ms);
        up_src src2 = {.total = 20 * CHUNK, .abort_after = 5};
        st = upload(c1, M_UPLOAD, &src2, out, sizeof out, 10000, &r);
        CHECK(st == FS_ERR_ARG && r.rpc == FS_RPC_INTERNAL, "upload aborted by next(): %s '%s'", fs_status_str(st),
              r.reason);
        int seen = 0;
        for (int i = 0; i < 40 && !seen; i++) {
            if (get_stats(tgt, &k.site1, &after) == 0 && after.up_failed == before.up_failed + 2) seen = 1;
            else usleep(50000);
        }
        CHECK(seen && after.up_ok == before.up_ok, "the server did not end the timed-out and the aborted upload as "
              "failed (begun %ld->%ld, ok %ld->%ld, failed %ld->%ld)", before.up_begun, after.up_begun, before.up_ok,
              after.up_ok, before.up_failed, after.up_failed);
    }

    /* The big upload over mTLS: verified word by word by the server. */
    {
        stats before, after;
        CHECK(get_stats(tgt, &k.site1, &before) == 0, "stats");
        up_src src = {.total = (uint64_t)upload_mib << 20};
        t0 = now_ms();
        st = upload(c1, M_UPLOAD, &src, out, sizeof out, 300000, &r);
        double s = (now_ms() - t0) / 1000.0;
        unsigned long long bytes = 0, chunks = 0, bad = 1;
        char id[64] = "";
        CHECK(st == FS_OK && sscanf(out, "bytes=%llu chunks=%llu bad=%llu id=%63s", &bytes, &chunks, &bad, id) == 4,
              "big upload: %s '%s' (%s)", fs_status_str(st), out, r.reason);
        CHECK(bytes == src.total && chunks == src.total / CHUNK && bad == 0 && !strcmp(id, "site_1"),
              "big upload arrived wrong: %s", out);
        CHECK(get_stats(tgt, &k.site1, &after) == 0, "stats");
        fprintf(stderr, "upload %ld MiB (mTLS, 256 KiB chunks): %.2f s, %.0f MiB/s; server VmHWM %.1f MiB before, "
                "%.1f MiB after\n", upload_mib, s, upload_mib / s, before.hwm_kb / 1024.0, after.hwm_kb / 1024.0);
#if defined(__SANITIZE_ADDRESS__)
        fprintf(stderr, "(AddressSanitizer build: its quarantine keeps freed memory, the RSS bound is not checked)\n");
#else
        CHECK(after.hwm_kb < 192 * 1024, "server peak RSS %ld KiB: the upload is not streamed with bounded memory",
              after.hwm_kb);
#endif
        CHECK(after.ticks >= after.uptime_ms / 400 && after.ticks <= after.uptime_ms / 100 + 2,
              "tick: %ld calls in %ld ms", after.ticks, after.uptime_ms);
        fprintf(stderr, "tick: %ld calls in %ld ms\n", after.ticks, after.uptime_ms);
    }

    /* The 100 MiB download, verified by the client. */
    {
        dl_sink_state d = {0};
        char req[64];
        snprintf(req, sizeof req, "%llu %zu", 100ull << 20, CHUNK);
        t0 = now_ms();
        st = fs_tclient_download(c1, methods[M_DOWNLOAD].path, (const uint8_t *)req, strlen(req), dl_sink, &d, 120000,
                                 &r);
        double s = (now_ms() - t0) / 1000.0;
        CHECK(st == FS_OK && d.bytes == 100ull << 20 && d.bad == 0 && d.msgs == 400,
              "download: %s %llu bytes, %d msgs, %llu bad (%s)", fs_status_str(st), (unsigned long long)d.bytes, d.msgs,
              (unsigned long long)d.bad, r.reason);
        fprintf(stderr, "download 100 MiB (mTLS, 256 KiB chunks): %.2f s, %.0f MiB/s\n", s, 100 / s);
    }

    /* Two concurrent uploads (two sites). */
    {
        par_job j[2] = {{tgt, &k.site1, 32ull << 20, FS_ERR_IO, ""}, {tgt, &k.site2, 32ull << 20, FS_ERR_IO, ""}};
        pthread_t th[2];
        for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, par_upload, &j[i]);
        for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
        CHECK(j[0].st == FS_OK && !strcmp(j[0].reply, "bytes=33554432 chunks=128 bad=0 id=site_1"),
              "parallel upload 1: %s '%s'", fs_status_str(j[0].st), j[0].reply);
        CHECK(j[1].st == FS_OK && !strcmp(j[1].reply, "bytes=33554432 chunks=128 bad=0 id=site_2"),
              "parallel upload 2: %s '%s'", fs_status_str(j[1].st), j[1].reply);
    }
    fs_tclient_free(c1);

    /* Plaintext: no identity; upload and download work. */
    {
        st = unary_once(tgt_plain, NULL, methods[M_ECHO].path, "plain", out, sizeof out, 10000, &r);
        CHECK(st == FS_OK && !strcmp(out, "-|plain"), "plaintext echo: %s '%s' (%s)", fs_status_str(st), out, r.reason);
        fs_tclient *p = NULL;
        CHECK(fs_tclient_connect(&p, tgt_plain, NULL, SERVER_MAX_MSG) == FS_OK, "connect plaintext");
        up_src src = {.total = 64ull << 20};
        t0 = now_ms();
        st = upload(p, M_UPLOAD, &src, out, sizeof out, 120000, &r);
        double s = (now_ms() - t0) / 1000.0;
        CHECK(st == FS_OK && !strcmp(out, "bytes=67108864 chunks=256 bad=0 id=-"), "plaintext upload: %s '%s' (%s)",
              fs_status_str(st), out, r.reason);
        fprintf(stderr, "upload 64 MiB (plaintext): %.2f s, %.0f MiB/s\n", s, 64 / s);
        dl_sink_state d = {0};
        char req[64];
        snprintf(req, sizeof req, "%llu %d", 16ull << 20, 65536);
        st = fs_tclient_download(p, methods[M_DOWNLOAD].path, (const uint8_t *)req, strlen(req), dl_sink, &d, 60000, &r);
        CHECK(st == FS_OK && d.bytes == 16ull << 20 && d.bad == 0, "plaintext download: %s (%s)", fs_status_str(st),
              r.reason);
        fs_tclient_free(p);
    }

    /* A second server on a port in use fails; a server never run frees cleanly. */
    {
        fs_tserver_handlers h = {h_unary, 0, 0, 0, 0, 0, 0, 0};
        srv_stats sst;
        memset(&sst, 0, sizeof sst);
        fs_tserver *s = NULL;
        int port = 0;
        fs_log_set_level(FS_LOG_QUIET);
        st = fs_tserver_start(&s, tgt_plain, NULL, methods, M_N, &h, &sst, 0, &port);
        fs_log_set_level(FS_LOG_WARN);
        CHECK(st == FS_ERR_IO && s == NULL, "a second server on %s: %s", tgt_plain, fs_status_str(st));
        st = fs_tserver_start(&s, "127.0.0.1:0", NULL, methods, M_N, &h, &sst, 0, &port);
        CHECK(st == FS_OK && port > 0, "start an in-process server: %s", fs_status_str(st));
        fs_tserver_free(s);
    }

    /* Server shutdown while a client streams: the client gets FS_ERR_IO, the
     * server exits 0 with every handler state ended. */
    {
        fs_tclient *v = NULL;
        CHECK(fs_tclient_connect(&v, tgt_victim, &k.site1, SERVER_MAX_MSG) == FS_OK, "connect victim");
        up_src src = {.total = 4ull << 30, .kill_pid = srv_victim, .kill_after = 40};
        t0 = now_ms();
        st = upload(v, M_UPLOAD, &src, out, sizeof out, 60000, &r);
        long ms = now_ms() - t0;
        CHECK(st == FS_ERR_IO && src.sent < src.total, "upload during shutdown: %s '%s'", fs_status_str(st), r.reason);
        fprintf(stderr, "server shutdown during an upload: client got %s after %ld ms (%llu MiB sent): %s\n",
                fs_status_str(st), ms, (unsigned long long)(src.sent >> 20), r.reason);
        int rc = stop_server(srv_victim);
        CHECK(rc == 0, "the stopped server exited with %d", rc);
        st = unary_once(tgt_victim, &k.site1, methods[M_ECHO].path, "x", out, sizeof out, 0, &r);
        CHECK(st == FS_ERR_IO, "the stopped server still answers: %s", fs_status_str(st));
        fs_tclient_free(v);
    }

    int rc_tls = stop_server(srv_tls), rc_plain = stop_server(srv_plain);
    CHECK(rc_tls == 0 && rc_plain == 0, "servers exited with %d and %d", rc_tls, rc_plain);
    CHECK(file_contains("server_tls.log", "peer did not return a certificate"),
          "the server's log lacks gRPC's reason for the client without a certificate");
    CHECK(file_contains("server_tls.log", "certificate verify failed"),
          "the server's log lacks gRPC's reason for the rogue certificate");
    {
        char lp[300];
        path_in(lp, sizeof lp, "server_tls.log");
        FILE *f = fopen(lp, "r");
        char line[1024];
        fprintf(stderr, "--- mTLS server's log ---\n");
        while (f && fgets(line, sizeof line, f)) fputs(line, stderr);
        if (f) fclose(f);
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_result();
}
