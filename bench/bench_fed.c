/*
 * bench/bench_fed.c — program `bench_fed`: the federation's network
 * benchmarks on 127.0.0.1 (bench/run_fed.sh runs them all, with Flower, and
 * prints the table; docs/benchmarks.md § Federation holds the figures).
 *
 *   bench_fed tcp    [--mib M] [--conns K] [--reps N]
 *       Raw loopback TCP, the ceiling: K client threads each write M/K MiB in
 *       1 MiB write() calls to a server thread per connection that read()s
 *       into a 1 MiB buffer and answers one byte at EOF. Time from the start
 *       barrier to the last answer; the median of N runs.
 *
 *   bench_fed ingest [--tls 0|1] [--sites S] [--params P] [--reps N]
 *       The aggregator's ingest path in isolation, plaintext or mutual TLS:
 *       a forked server process built from the real pieces — the transport
 *       (common/transport.h), the wire codec and the round state machine
 *       (aggregator/round.h: every chunk checked, CRC'd and written to the
 *       site's spool file; at the end fsync, journal, fold into the sum) —
 *       with the same upload handling as aggregator/server.c. `fedseg
 *       aggregator` itself always uses mutual TLS and names sites by their
 *       certificate, so in plaintext this harness hands each upload the next
 *       site name of the round (every site uploads once per round). S client
 *       threads wait at a barrier, then each pushes one P-parameter update
 *       in FS_CHUNK_PARAMS chunks; rate = S·4P bytes / (first byte → last
 *       ack). N rounds, the median.
 *
 *   bench_fed fed    --fedseg PATH [--sites S] [--rounds R] [--poll-ms MS]
 *                    [--barrier]
 *       The real thing: `fedseg aggregator --model ref` (mutual TLS, a fresh
 *       consortium from common/provision.h) and S fake sites on threads that
 *       follow the protocol like `fedseg node` with zero training time:
 *       Join; per round GetTask (asking again after the Task's retry_after_ms
 *       while told WAIT), DownloadModel, delta = (w + d_s) − w, CRC,
 *       PushUpdate. Round wall time (client side) = last ack of the round −
 *       last ack of the round before (round 1: from the first TRAIN task);
 *       since training takes 0 s this is the round overhead. The
 *       aggregator's own wall_seconds per round (metrics.jsonl) and its peak
 *       memory (VmHWM, read before it exits) are reported too, and when the
 *       last site had its model (last_download_done_s, from the round's
 *       start). With
 *       --barrier every site waits until all have computed their delta, and
 *       the push phase (first chunk of the first site → last ack) gives the
 *       ingest rate of the real aggregator process.
 *
 * Every mode prints one JSON object per line (mode, figures, machine load);
 * rates are in MB/s (10^6 bytes). Exit 1 when anything was refused or
 * failed: a figure is printed only for work that was accepted.
 */
#include "aggregator/round.h"
#include "common/log.h"
#include "common/provision.h"
#include "common/secagg.h"
#include "common/he_proto.h"
#include "common/transport.h"
#include "common/wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define P_REF 7766372u
#define MAX_SITES 64
#define UNARY_MS 20000
#define STREAM_MS 600000

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double load1(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = -1;
        fclose(f);
    }
    return l;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
    double t[256];
    if (n <= 0 || n > 256) return NAN;
    memcpy(t, v, (size_t)n * sizeof *t);
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void print_list(const char *key, const double *v, int n)
{
    printf(",\"%s\":[", key);
    for (int i = 0; i < n; i++) printf("%s%.4f", i ? "," : "", v[i]);
    printf("]");
}

/* VmHWM of a process in KiB (0 when unknown). */
static unsigned long vm_hwm_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    unsigned long v = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) v = strtoul(line + 6, NULL, 10);
    fclose(f);
    return v;
}

/* The fixed update of site s: small values, distinct per site. */
static void make_delta(float *d, size_t P, int s)
{
    for (size_t i = 0; i < P; i++) d[i] = 1e-4f * (float)(s + 1) * (float)((int)(i % 2001) - 1000) * 1e-3f;
}

/* ---- tcp ------------------------------------------------------------------ */

typedef struct {
    int fd;
    size_t bytes;
    pthread_barrier_t *bar;
    double t_done;
    int err;
} tcp_side;

static void *tcp_reader(void *arg)
{
    tcp_side *t = arg;
    char *buf = malloc(1 << 20);
    size_t got = 0;
    for (;;) {
        ssize_t n = read(t->fd, buf, 1 << 20);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    char ack = 1;
    t->err = got != t->bytes || write(t->fd, &ack, 1) != 1;
    free(buf);
    return NULL;
}

static void *tcp_writer(void *arg)
{
    tcp_side *t = arg;
    char *buf = malloc(1 << 20);
    memset(buf, 0x5a, 1 << 20);
    pthread_barrier_wait(t->bar);
    for (size_t sent = 0; sent < t->bytes && !t->err;) {
        size_t n = t->bytes - sent < (1u << 20) ? t->bytes - sent : (1u << 20);
        ssize_t w = write(t->fd, buf, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) t->err = 1;
        else sent += (size_t)w;
    }
    shutdown(t->fd, SHUT_WR);
    char ack;
    if (read(t->fd, &ack, 1) != 1) t->err = 1;
    t->t_done = now_s();
    free(buf);
    return NULL;
}

/* One run: K connections, total bytes; returns seconds or -1. */
static double tcp_run(int conns, size_t total)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 64) ||
        getsockname(ls, (struct sockaddr *)&a, &al))
        return -1;
    tcp_side cl[MAX_SITES] = {0}, sv[MAX_SITES] = {0};
    pthread_t tc[MAX_SITES], ts[MAX_SITES];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)conns + 1);
    size_t per = total / (size_t)conns;
    for (int i = 0; i < conns; i++) {
        cl[i].fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(cl[i].fd, (struct sockaddr *)&a, sizeof a)) return -1;
        sv[i].fd = accept(ls, NULL, NULL);
        cl[i].bytes = sv[i].bytes = per;
        cl[i].bar = &bar;
        pthread_create(&ts[i], NULL, tcp_reader, &sv[i]);
        pthread_create(&tc[i], NULL, tcp_writer, &cl[i]);
    }
    pthread_barrier_wait(&bar);
    double t0 = now_s(), t1 = t0;
    int err = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(tc[i], NULL);
        pthread_join(ts[i], NULL);
        err |= cl[i].err | sv[i].err;
        if (cl[i].t_done > t1) t1 = cl[i].t_done;
        close(cl[i].fd);
        close(sv[i].fd);
    }
    close(ls);
    pthread_barrier_destroy(&bar);
    return err ? -1 : t1 - t0;
}

static int mode_tcp(int mib, int conns, int reps)
{
    size_t total = (size_t)mib << 20;
    total -= total % (size_t)conns;
    double sec[256];
    for (int r = 0; r < reps; r++)
        if ((sec[r] = tcp_run(conns, total)) <= 0) {
            fprintf(stderr, "bench_fed tcp: a transfer failed\n");
            return 1;
        }
    double med = median(sec, reps), rate[256];
    for (int r = 0; r < reps; r++) rate[r] = (double)total / sec[r] / 1e6;
    printf("{\"mode\":\"tcp\",\"conns\":%d,\"bytes\":%zu,\"write_bytes\":%d,\"reps\":%d", conns, total,
           1 << 20, reps);
    print_list("mb_per_s_runs", rate, reps);
    printf(",\"mb_per_s\":%.1f,\"load1\":%.2f}\n", (double)total / med / 1e6, load1());
    return 0;
}

/* ---- clients: connect, join, task, download, push -------------------------- */

typedef struct {
    int idx;
    char name[32];
    fs_tclient *c;
    const float *delta;
    size_t P, off;
    int sent_header;
    fs_wire_update_header hdr;
    float *w;          /* downloaded model */
    size_t got;
    int bad;
    double t_first;    /* first chunk handed to the transport */
} site_io;

static int up_next(void *u, uint8_t **msg, size_t *len)
{
    site_io *s = u;
    if (s->off >= s->P) return 0;
    if (!s->sent_header) s->t_first = now_s();
    size_t n = s->P - s->off < FS_CHUNK_PARAMS ? s->P - s->off : FS_CHUNK_PARAMS;
    fs_wire_update_chunk c = {.has_header = !s->sent_header, .offset = s->off,
                              .data = (const uint8_t *)(s->delta + s->off), .len = n * 4};
    if (c.has_header) c.header = s->hdr;
    s->sent_header = 1;
    s->off += n;
    return fs_wire_encode_update_chunk(&c, msg, len) == FS_OK ? 1 : -1;
}

/* Pushes s->delta as the update of `round`; FS_OK when acknowledged. */
static fs_status push(site_io *s, uint32_t round, uint64_t samples, fs_call_result *r)
{
    s->off = 0;
    s->sent_header = 0;
    s->hdr = (fs_wire_update_header){FS_PROTOCOL_VERSION, round, s->P, samples, 0.5f, NAN, NAN, NAN,
                                     0.0, fs_wire_crc32_f32(0, s->delta, s->P), 0, 0, 0, 0};
    uint8_t *out = NULL;
    size_t olen = 0;
    fs_status st = fs_tclient_upload(s->c, fs_federation_methods[FS_M_PUSH_UPDATE].path, up_next, s,
                                     &out, &olen, STREAM_MS, r);
    fs_wire_update_ack ack;
    if (st == FS_OK && (fs_wire_decode_update_ack(out, olen, &ack, NULL, 0) != FS_OK || !ack.accepted))
        st = FS_ERR_FORMAT;
    free(out);
    return st;
}

static fs_status join(site_io *s, uint64_t samples, fs_call_result *r)
{
    fs_wire_join_request rq = {FS_PROTOCOL_VERSION, "ref", samples, "fedseg bench"};
    uint8_t *msg, *out = NULL;
    size_t len, olen = 0;
    if (fs_wire_encode_join_request(&rq, &msg, &len) != FS_OK) return FS_ERR_NOMEM;
    fs_status st = fs_tclient_unary(s->c, fs_federation_methods[FS_M_JOIN].path, msg, len, &out,
                                    &olen, UNARY_MS, r);
    free(msg);
    fs_wire_join_reply rep;
    if (st == FS_OK && (fs_wire_decode_join_reply(out, olen, &rep, NULL, 0) != FS_OK || !rep.accepted ||
                        rep.num_params != s->P))
        st = FS_ERR_FORMAT;
    free(out);
    return st;
}

static fs_status get_task(site_io *s, fs_wire_task *t, fs_call_result *r)
{
    fs_wire_task_request rq = {FS_PROTOCOL_VERSION, 0};
    uint8_t *msg, *out = NULL;
    size_t len, olen = 0;
    if (fs_wire_encode_task_request(&rq, &msg, &len) != FS_OK) return FS_ERR_NOMEM;
    fs_status st = fs_tclient_unary(s->c, fs_federation_methods[FS_M_GET_TASK].path, msg, len, &out,
                                    &olen, UNARY_MS, r);
    free(msg);
    if (st == FS_OK && fs_wire_decode_task(out, olen, t, NULL, 0) != FS_OK) st = FS_ERR_FORMAT;
    free(out);
    return st;
}

static int dl_sink(void *u, const uint8_t *msg, size_t len)
{
    site_io *s = u;
    fs_wire_model_chunk c;
    if (fs_wire_decode_model_chunk(msg, len, &c, NULL, 0) != FS_OK || c.offset != s->got ||
        c.num_params != s->P) {
        s->bad = 1;
        return 1;
    }
    fs_wire_copy_f32(s->w + s->got, c.data, c.len);
    s->got += c.len / 4;
    return 0;
}

static fs_status download(site_io *s, uint32_t round, fs_call_result *r)
{
    fs_wire_model_request rq = {FS_PROTOCOL_VERSION, round};
    uint8_t *msg;
    size_t len;
    if (fs_wire_encode_model_request(&rq, &msg, &len) != FS_OK) return FS_ERR_NOMEM;
    s->got = 0;
    s->bad = 0;
    fs_status st = fs_tclient_download(s->c, fs_federation_methods[FS_M_DOWNLOAD_MODEL].path, msg, len,
                                       dl_sink, s, STREAM_MS, r);
    free(msg);
    if (st == FS_OK && (s->bad || s->got != s->P)) st = FS_ERR_FORMAT;
    return st;
}

static fs_tclient *connect_site(int port, const char *kit, const char *name, int tls)
{
    char target[64], ca[1024], cert[1024], key[1024];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    snprintf(ca, sizeof ca, "%s/ca.crt", kit);
    snprintf(cert, sizeof cert, "%s/%s.crt", kit, name);
    snprintf(key, sizeof key, "%s/%s.key", kit, name);
    fs_tls_files files = {ca, cert, key, NULL};
    fs_tclient *c = NULL;
    if (fs_tclient_connect(&c, target, tls ? &files : NULL, FS_MAX_MSG_BYTES) != FS_OK) return NULL;
    return c;
}

/* ---- ingest: the harness server (child process) ---------------------------- */

typedef struct {
    fs_round *agg;
    const char *const *names;
    size_t n_sites, next_name;
    int tls, sink;             /* sink: decode and drop (no round state machine) */
    size_t sunk, sink_target;  /* sink: uploads completed, uploads to serve */
    volatile sig_atomic_t stop;
    double t_chunk, t_end;     /* seconds spent in the chunk and end handlers */
} harness;

typedef struct {
    char identity[FS_WIRE_NAME_LEN];
    fs_round_upload *up;
} h_up;

/* As aggregator/server.c's h_up_begin, except that without TLS the caller is
 * named by the harness (the next site of the round). */
static void *h_begin(void *u, int method, const char *identity, fs_rpc_reply *out)
{
    harness *h = u;
    if (method != FS_M_PUSH_UPDATE) {
        out->code = FS_RPC_INVALID_ARGUMENT;
        return NULL;
    }
    h_up *p = calloc(1, sizeof *p);
    if (!p) {
        out->code = FS_RPC_UNAVAILABLE;
        return NULL;
    }
    if (h->tls) snprintf(p->identity, sizeof p->identity, "%s", identity ? identity : "");
    else snprintf(p->identity, sizeof p->identity, "%s", h->names[h->next_name++ % h->n_sites]);
    return p;
}

/* As aggregator/server.c's h_up_chunk: decode, header → begin, chunk → spool. */
static void h_chunk(void *u, void *state, const uint8_t *msg, size_t len, fs_rpc_reply *out)
{
    harness *h = u;
    h_up *p = state;
    double t0 = now_s();
    fs_wire_update_chunk c;
    char why[FS_WIRE_REASON_LEN] = "";
    fs_status st = fs_wire_decode_update_chunk(msg, len, &c, why, sizeof why);
    if (h->sink) {
        if (st != FS_OK) out->code = FS_RPC_INVALID_ARGUMENT;
        h->t_chunk += now_s() - t0;
        return;
    }
    if (st == FS_OK && !p->up) {
        if (!c.has_header) st = FS_ERR_FORMAT;
        else st = fs_round_update_begin(h->agg, p->identity, &c.header, now_s(), &p->up, why, sizeof why);
        if (st != FS_OK) p->up = NULL;
    }
    if (st == FS_OK && c.len) st = fs_round_update_chunk(h->agg, p->up, c.offset, c.data, c.len, why, sizeof why);
    if (st != FS_OK) {
        out->code = FS_RPC_INVALID_ARGUMENT;
        snprintf(out->reason, sizeof out->reason, "%s", why);
    }
    h->t_chunk += now_s() - t0;
}

static void h_end(void *u, void *state, int failed, fs_rpc_reply *out)
{
    harness *h = u;
    h_up *p = state;
    double t0 = now_s();
    char why[FS_WIRE_REASON_LEN] = "";
    if (h->sink) {
        fs_wire_update_ack ack = {.accepted = 1};
        if (!failed && fs_wire_encode_update_ack(&ack, &out->msg, &out->len) != FS_OK)
            out->code = FS_RPC_INTERNAL;
        if (!failed && ++h->sunk >= h->sink_target) h->stop = 1;
        free(p);
        h->t_end += now_s() - t0;
        return;
    }
    if (p->up) {
        fs_status st = fs_round_update_end(h->agg, p->up, failed, now_s(), why, sizeof why);
        if (!failed) {
            fs_wire_update_ack ack = {.accepted = st == FS_OK};
            if (st != FS_OK) {
                out->code = FS_RPC_INVALID_ARGUMENT;
                snprintf(out->reason, sizeof out->reason, "%s", why);
            } else if (fs_wire_encode_update_ack(&ack, &out->msg, &out->len) != FS_OK) {
                out->code = FS_RPC_INTERNAL;
            }
        }
    } else if (!failed) {
        out->code = FS_RPC_INVALID_ARGUMENT;
    }
    fs_round_view v;
    fs_round_view_get(h->agg, &v);
    if (v.finished) h->stop = 1;
    free(p);
    h->t_end += now_s() - t0;
}

static void h_tick(void *u)
{
    harness *h = u;
    fs_round_tick(h->agg, now_s());
}

static const fs_tserver_handlers harness_handlers = {
    .upload_begin = h_begin, .upload_chunk = h_chunk, .upload_end = h_end, .tick = h_tick};

/* The harness server: a fresh round state (all sites joined, round 1 open)
 * serving PushUpdate until `reps` rounds closed. Writes the port to fd, then
 * "completed_rounds vmhwm_kib" to result. */
static int harness_main(int fd, const char *work, const char *cons, const char *const *names,
                        size_t nsites, size_t P, int reps, int tls, int sink, const char *result)
{
    fs_log_set_level(FS_LOG_WARN);
    char state[1100], ca[1100], cert[1100], key[1100];
    snprintf(state, sizeof state, "%s/ingest_state_%s", work, tls ? "tls" : "plain");
    snprintf(ca, sizeof ca, "%s/aggregator/ca.crt", cons);
    snprintf(cert, sizeof cert, "%s/aggregator/aggregator.crt", cons);
    snprintf(key, sizeof key, "%s/aggregator/aggregator.key", cons);
    float *w0 = calloc(P, sizeof *w0);
    fs_round_config rc = {.sites = names, .n_sites = nsites, .rounds = (uint32_t)reps,
                          .min_sites = (uint32_t)nsites, .fraction = 1.0, .deadline_s = 3600,
                          .join_wait_s = 0, .local_epochs = 1, .lr = 1e-3f, .poll_ms = 100,
                          .state_dir = state, .seed = 1, .model = {.preset = "ref"}};
    harness h = {.names = names, .n_sites = nsites, .tls = tls, .sink = sink,
                 .sink_target = nsites * (size_t)reps};
    int port = 0;
    fs_tserver *ts = NULL;
    double now = now_s();
    if (w0 && fs_round_open(&h.agg, &rc, w0, P, now) == FS_OK) {
        for (size_t i = 0; i < nsites; i++) {
            fs_wire_join_request jq = {FS_PROTOCOL_VERSION, "ref", 10 * (i + 1), "bench"};
            fs_wire_join_reply jr;
            fs_round_join(h.agg, names[i], &jq, now, &jr);
        }
        fs_round_tick(h.agg, now);
        fs_tls_files files = {ca, cert, key, NULL};
        if (fs_tserver_start(&ts, "127.0.0.1:0", tls ? &files : NULL, fs_federation_methods, FS_M_COUNT,
                             &harness_handlers, &h, FS_MAX_MSG_BYTES, &port) != FS_OK)
            port = 0;
    }
    free(w0);
    if (write(fd, &port, sizeof port) != (ssize_t)sizeof port || !port) return 1;
    close(fd);
    fs_tserver_run(ts, &h.stop, 2000);
    fs_round_view v;
    fs_round_view_get(h.agg, &v);
    FILE *f = fopen(result, "w");
    if (f) {
        fprintf(f, "%u %lu %.4f %.4f\n", sink ? (unsigned)(h.sunk / nsites) : v.completed, vm_hwm_kib(getpid()), h.t_chunk, h.t_end);
        fclose(f);
    }
    fs_tserver_free(ts);
    fs_round_free(h.agg);
    return 0;
}

typedef struct {
    site_io io;
    int port, tls, reps;
    const char *kit;
    pthread_barrier_t *bar;
    double t_first[256], t_ack[256];
    int err;
    char why[320];
} ingest_site;

static void *ingest_thread(void *arg)
{
    ingest_site *s = arg;
    s->io.c = connect_site(s->port, s->kit, s->io.name, s->tls);
    for (int r = 0; r < s->reps; r++) {
        pthread_barrier_wait(s->bar);
        fs_call_result res = {0};
        fs_status st = s->io.c && !s->err ? push(&s->io, (uint32_t)r + 1, 10 * ((uint64_t)s->io.idx + 1), &res)
                                          : FS_ERR_IO;
        s->t_first[r] = s->io.t_first;
        s->t_ack[r] = now_s();
        if (st != FS_OK && !s->err) {
            s->err = 1;
            snprintf(s->why, sizeof s->why, "%s: %s", fs_status_str(st), res.reason);
        }
        pthread_barrier_wait(s->bar);
    }
    fs_tclient_free(s->io.c);
    return NULL;
}

static char site_names_buf[MAX_SITES][16];
static const char *site_names[MAX_SITES];

static int make_consortium(const char *work, int nsites, char *cons, size_t cap)
{
    for (int i = 0; i < nsites; i++) {
        snprintf(site_names_buf[i], sizeof site_names_buf[i], "site_%d", i + 1);
        site_names[i] = site_names_buf[i];
    }
    snprintf(cons, cap, "%s/cons", work);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
    if (system(cmd) != 0 || mkdir(work, 0755) != 0) return -1;
    fs_provision_opts po = {"benchfed", "127.0.0.1", site_names, nsites, cons};
    return fs_provision_create(&po) == FS_OK ? 0 : -1;
}

static int mode_ingest(const char *work, int tls, int sink, int nsites, size_t P, int reps)
{
    char cons[1024], result[1100];
    if (make_consortium(work, nsites, cons, sizeof cons)) return 1;
    snprintf(result, sizeof result, "%s/ingest_result", work);
    int pfd[2];
    if (pipe(pfd)) return 1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        _exit(harness_main(pfd[1], work, cons, site_names, (size_t)nsites, P, reps, tls, sink, result));
    }
    close(pfd[1]);
    int port = 0;
    if (read(pfd[0], &port, sizeof port) != (ssize_t)sizeof port || port <= 0) {
        fprintf(stderr, "bench_fed ingest: the harness server did not start\n");
        return 1;
    }
    close(pfd[0]);
    ingest_site *s = calloc((size_t)nsites, sizeof *s);
    float *deltas = malloc((size_t)nsites * P * sizeof *deltas);
    pthread_t th[MAX_SITES];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)nsites);
    for (int i = 0; i < nsites; i++) {
        make_delta(deltas + (size_t)i * P, P, i);
        s[i].io = (site_io){.idx = i, .delta = deltas + (size_t)i * P, .P = P};
        snprintf(s[i].io.name, sizeof s[i].io.name, "%s", site_names[i]);
        char kit[1100];
        snprintf(kit, sizeof kit, "%s/sites/%s", cons, site_names[i]);
        s[i].kit = strdup(kit);
        s[i].port = port;
        s[i].tls = tls;
        s[i].reps = reps;
        s[i].bar = &bar;
        pthread_create(&th[i], NULL, ingest_thread, &s[i]);
    }
    int err = 0;
    for (int i = 0; i < nsites; i++) {
        pthread_join(th[i], NULL);
        if (s[i].err) {
            fprintf(stderr, "bench_fed ingest: %s: %s\n", site_names[i], s[i].why);
            err = 1;
        }
    }
    int wst = 0;
    waitpid(pid, &wst, 0);
    unsigned completed = 0;
    unsigned long hwm = 0;
    double t_chunk = 0, t_end = 0;
    FILE *f = fopen(result, "r");
    if (!f || fscanf(f, "%u %lu %lf %lf", &completed, &hwm, &t_chunk, &t_end) != 4) completed = 0;
    if (f) fclose(f);
    if (completed != (unsigned)reps) {
        fprintf(stderr, "bench_fed ingest: the harness completed %u of %d rounds\n", completed, reps);
        err = 1;
    }
    double rate[256], sec[256];
    for (int r = 0; r < reps; r++) {
        double t0 = 1e300, t1 = 0;
        for (int i = 0; i < nsites; i++) {
            if (s[i].t_first[r] < t0) t0 = s[i].t_first[r];
            if (s[i].t_ack[r] > t1) t1 = s[i].t_ack[r];
        }
        sec[r] = t1 - t0;
        rate[r] = (double)nsites * (double)P * 4 / sec[r] / 1e6;
    }
    if (!err) {
        printf("{\"mode\":\"ingest\",\"server\":\"%s\",\"tls\":%d,"
               "\"sites\":%d,\"params\":%zu,\"update_bytes\":%zu,\"reps\":%d",
               sink ? "sink (transport + wire decode, updates dropped)"
                    : "harness (transport + wire + round.c)", tls, nsites, P, P * 4, reps);
        print_list("seconds_runs", sec, reps);
        print_list("mb_per_s_runs", rate, reps);
        printf(",\"mb_per_s\":%.1f,\"server_chunk_handler_s_per_round\":%.4f,"
               "\"server_commit_s_per_round\":%.4f,\"server_vmhwm_mib\":%.0f,\"load1\":%.2f}\n",
               median(rate, reps), t_chunk / reps, t_end / reps, (double)hwm / 1024.0, load1());
    }
    free(deltas);
    for (int i = 0; i < nsites; i++) free((void *)s[i].kit);
    free(s);
    pthread_barrier_destroy(&bar);
    return err;
}

/* ---- fed: the real `fedseg aggregator` -------------------------------------- */

typedef struct {
    site_io io;
    int port, rounds, barrier;
    const char *kit;
    pthread_barrier_t *bar;
    float *d;                          /* the site's fixed change      */
    float *delta;                      /* computed per round           */
    uint32_t *q;                       /* --secure: the masked vector  */
    int secure, drop;                  /* 1 --secure, 2 --encrypted; drop: this site drops out */
    double t_task[256], t_dl[256], t_first[256], t_ack[256];
    int err;
    char why[400];
} fed_site;

static void sa_round(fed_site *s, const fs_wire_task *t, int r, uint64_t samples, int drop);
static void he_round(fed_site *s, const fs_wire_task *t, int r, uint64_t samples, int drop);

static void fed_fail(fed_site *s, const char *what, fs_status st, const fs_call_result *r)
{
    if (s->err) return;
    s->err = 1;
    snprintf(s->why, sizeof s->why, "%s: %s (%s)", what, fs_status_str(st), r ? r->reason : "");
}

static void *fed_thread(void *arg)
{
    fed_site *s = arg;
    fs_call_result res = {0};
    uint64_t samples = 10 * ((uint64_t)s->io.idx + 1);
    s->io.c = connect_site(s->port, s->kit, s->io.name, 1);
    fs_status st = s->io.c ? join(&s->io, samples, &res) : FS_ERR_IO;
    if (st != FS_OK) fed_fail(s, "Join", st, &res);
    for (int r = 1; r <= s->rounds; r++) {
        fs_wire_task t = {0};
        for (double t0 = now_s(); !s->err && now_s() - t0 < 600;) {
            st = get_task(&s->io, &t, &res);
            if (st != FS_OK) {
                fed_fail(s, "GetTask", st, &res);
                break;
            }
            if (t.action == FS_TASK_TRAIN && t.round == (uint32_t)r) break;
            if (t.action == FS_TASK_FINISHED) {
                fed_fail(s, "GetTask: FINISHED too early", FS_ERR_MISMATCH, NULL);
                break;
            }
            usleep(t.retry_after_ms ? t.retry_after_ms * 1000u : 100000u);
        }
        s->t_task[r - 1] = now_s();
        if (s->secure) {
            if (!s->err && s->secure == 2) he_round(s, &t, r, samples, s->drop && r == 1);
            else if (!s->err) sa_round(s, &t, r, samples, s->drop && r == 1);
            if (s->drop && r == 1) s->t_ack[0] = s->t_first[0] = 0;
            if (s->err) break;
            continue;
        }
        if (!s->err && (st = download(&s->io, (uint32_t)r, &res)) != FS_OK) fed_fail(s, "DownloadModel", st, &res);
        s->t_dl[r - 1] = now_s();
        if (!s->err)
            for (size_t i = 0; i < s->io.P; i++) s->delta[i] = (s->io.w[i] + s->d[i]) - s->io.w[i];
        if (s->barrier) pthread_barrier_wait(s->bar);
        if (!s->err && (st = push(&s->io, (uint32_t)r, samples, &res)) != FS_OK) fed_fail(s, "PushUpdate", st, &res);
        s->t_ack[r - 1] = now_s();
        s->t_first[r - 1] = s->io.t_first;
        if (s->err && !s->barrier) break;
    }
    fs_tclient_free(s->io.c);
    return NULL;
}

/* ---- fed --secure: a site's part in secure aggregation ------------------------ */

/* One SecAgg call, asked again while told WAIT; 0 with an OK reply (payload
 * copied into *out when wanted), 1 with ABANDONED when `over_ok` (the end of
 * an encrypted round's decryption), -1 otherwise. */
static int sa_step_x(fed_site *s, const fs_wire_task *t, fs_secagg_stage stage, const uint8_t *pl,
                     size_t len, uint8_t **out, size_t *olen, int over_ok)
{
    fs_wire_secagg_request rq = {FS_PROTOCOL_VERSION, t->round, t->secagg_attempt, stage, pl, len};
    uint8_t *msg;
    size_t mlen;
    if (fs_wire_encode_secagg_request(&rq, &msg, &mlen) != FS_OK) return -1;
    int rc = -1;
    for (double t0 = now_s(); now_s() - t0 < 600;) {
        uint8_t *raw = NULL;
        size_t rlen = 0;
        fs_call_result res = {0};
        fs_status st = fs_tclient_unary(s->io.c, fs_federation_methods[FS_M_SECAGG].path, msg, mlen, &raw,
                                        &rlen, UNARY_MS, &res);
        fs_wire_secagg_reply rep;
        if (st == FS_OK && fs_wire_decode_secagg_reply(raw, rlen, &rep, NULL, 0) != FS_OK) st = FS_ERR_FORMAT;
        if (st == FS_OK && rep.status == FS_SA_ABANDONED && over_ok) {
            free(raw);
            rc = 1;
            break;
        }
        if (st != FS_OK || rep.status == FS_SA_ABANDONED) {
            fed_fail(s, "SecAgg", st != FS_OK ? st : FS_ERR_MISMATCH, st != FS_OK ? &res : NULL);
            free(raw);
            break;
        }
        if (rep.status == FS_SA_OK) {
            if (out) {
                *out = malloc(rep.len ? rep.len : 1);
                if (*out) memcpy(*out, rep.payload, rep.len);
                *olen = rep.len;
            }
            free(raw);
            rc = 0;
            break;
        }
        free(raw);
        usleep(rep.retry_after_ms ? rep.retry_after_ms * 1000u : 50000u);
    }
    free(msg);
    return rc;
}

static int sa_step(fed_site *s, const fs_wire_task *t, fs_secagg_stage stage, const uint8_t *pl,
                   size_t len, uint8_t **out, size_t *olen)
{
    return sa_step_x(s, t, stage, pl, len, out, olen, 0);
}

/* The secure round r of site s (task t): stages, download, masked push,
 * unmasking; with drop the site leaves after sending its shares. */
static void sa_round(fed_site *s, const fs_wire_task *t, int r, uint64_t samples, int drop)
{
    fs_call_result res = {0};
    fs_secagg_params p = {t->round, t->secagg_sites, t->secagg_threshold, t->secagg_neighbours,
                          (uint64_t)s->io.P + 1, {0}};
    memcpy(p.round_seed, t->secagg_round_seed, 32);
    int f = 0;
    fs_secagg_site *sa = NULL;
    uint8_t *m = NULL, *in = NULL;
    size_t ml = 0, il = 0;
    if (fs_secagg_quant_bits(t->secagg_clip, t->secagg_sites, &f) != FS_OK ||
        fs_secagg_site_new(&p, t->secagg_index, &sa) != FS_OK || fs_secagg_site_advertise(sa, &m, &ml) != FS_OK) {
        fed_fail(s, "secure aggregation set-up", FS_ERR_ARG, NULL);
        goto out;
    }
    if (sa_step(s, t, FS_SA_ADVERTISE, m, ml, NULL, NULL)) goto out;
    fs_secagg_msg_free(m, ml), m = NULL;
    if (sa_step(s, t, FS_SA_GET_KEYS, NULL, 0, &in, &il) || fs_secagg_site_share_keys(sa, in, il, &m, &ml) != FS_OK)
        goto out;
    free(in), in = NULL;
    if (sa_step(s, t, FS_SA_SHARES, m, ml, NULL, NULL)) goto out;
    fs_secagg_msg_free(m, ml), m = NULL;
    if (sa_step(s, t, FS_SA_GET_RELAY, NULL, 0, &in, &il) || fs_secagg_site_recv_shares(sa, in, il) != FS_OK)
        goto out;
    free(in), in = NULL;
    fs_status st = download(&s->io, (uint32_t)r, &res);
    s->t_dl[r - 1] = now_s();
    if (st != FS_OK) {
        fed_fail(s, "DownloadModel", st, &res);
        goto out;
    }
    if (drop) goto out; /* gone before its masked upload */
    for (size_t i = 0; i < s->io.P; i++) s->delta[i] = (s->io.w[i] + s->d[i]) - s->io.w[i];
    if (fs_secagg_encode_update(s->delta, s->io.P, samples, t->secagg_weight_cap, t->secagg_clip, f,
                                (uint64_t)s->io.idx * 7919 + (uint64_t)r, s->q) != FS_OK ||
        fs_secagg_site_mask(sa, s->q, 0, s->io.P + 1, s->q) != FS_OK) {
        fed_fail(s, "masking", FS_ERR_ARG, NULL);
        goto out;
    }
    if (s->barrier) pthread_barrier_wait(s->bar);
    /* the masked words go through the float pusher byte for byte */
    site_io io = s->io;
    io.delta = (const float *)(const void *)s->q;
    io.P = s->io.P + 1;
    io.off = 0;
    io.sent_header = 0;
    io.hdr = (fs_wire_update_header){FS_PROTOCOL_VERSION, (uint32_t)r, io.P, 1, 0.5f, NAN, NAN, NAN, 0.0,
                                     fs_wire_crc32_bytes(0, (const uint8_t *)s->q, io.P * 4), 1,
                                     t->secagg_attempt, 0, 0};
    uint8_t *ack = NULL;
    size_t al = 0;
    st = fs_tclient_upload(io.c, fs_federation_methods[FS_M_PUSH_UPDATE].path, up_next, &io, &ack, &al,
                           STREAM_MS, &res);
    free(ack);
    s->t_first[r - 1] = io.t_first;
    if (st != FS_OK) {
        fed_fail(s, "PushUpdate (masked)", st, &res);
        goto out;
    }
    s->t_ack[r - 1] = now_s();
    if (sa_step(s, t, FS_SA_GET_UNMASK, NULL, 0, &in, &il) || fs_secagg_site_unmask(sa, in, il, &m, &ml) != FS_OK)
        goto out;
    sa_step(s, t, FS_SA_UNMASK, m, ml, NULL, NULL);
out:
    fs_secagg_msg_free(m, ml);
    free(in);
    fs_secagg_site_free(sa);
}

/* ---- fed --encrypted: a site's part in encrypted aggregation ------------------- */

static int he_step_at(fed_site *s, const fs_wire_task *t, fs_secagg_stage stage, uint32_t start,
                      uint8_t **out, size_t *olen, int over_ok)
{
    uint8_t b[4] = {(uint8_t)start, (uint8_t)(start >> 8), (uint8_t)(start >> 16), (uint8_t)(start >> 24)};
    return sa_step_x(s, t, stage, b, 4, out, olen, over_ok);
}

/* The encrypted round r of site s (task t): keys, key shares, download,
 * encrypted push, partial decryptions while asked; with drop the site
 * leaves after its key shares. */
static void he_round(fed_site *s, const fs_wire_task *t, int r, uint64_t samples, int drop)
{
    fs_call_result res = {0};
    fs_he_params p;
    memset(&p, 0, sizeof p);
    p.round = t->round;
    p.attempt = t->secagg_attempt;
    p.n_sites = t->secagg_sites;
    p.threshold = t->secagg_threshold;
    memcpy(p.crs_seed, t->secagg_round_seed, 32);
    p.n_values = s->io.P;
    p.qz.clip = (float)t->secagg_clip;
    p.qz.frac_bits = (unsigned)t->secagg_quant_bits;
    fs_he_site *hs = NULL;
    uint8_t *m = NULL, *in = NULL, **parts = NULL, *cts = NULL;
    size_t ml = 0, il = 0, *lens = NULL, np = 0;
    int64_t *q = NULL;
    if (fs_he_site_new(&p, t->secagg_index + 1, &hs) != FS_OK || fs_he_site_keys(hs, &m, &ml) != FS_OK) {
        fed_fail(s, "encrypted aggregation set-up", FS_ERR_ARG, NULL);
        goto out;
    }
    if (sa_step(s, t, FS_HE_KEYS, m, ml, NULL, NULL)) goto out;
    free(m), m = NULL;
    if (sa_step(s, t, FS_HE_GET_BCAST, NULL, 0, &in, &il) ||
        fs_he_site_shares(hs, in, il, &parts, &lens, &np) != FS_OK)
        goto out;
    free(in), in = NULL;
    for (size_t i = 0; i < np; i++)
        if (sa_step(s, t, FS_HE_SHARES, parts[i], lens[i], NULL, NULL)) goto out;
    for (uint32_t start = 1; start;) {
        if (he_step_at(s, t, FS_HE_GET_RELAY, start, &in, &il, 0) ||
            fs_he_site_recv_relay(hs, in, il, &start) != FS_OK)
            goto out;
        free(in), in = NULL;
    }
    fs_status st = download(&s->io, (uint32_t)r, &res);
    s->t_dl[r - 1] = now_s();
    if (st != FS_OK) {
        fed_fail(s, "DownloadModel", st, &res);
        goto out;
    }
    if (drop) goto out; /* gone before its encrypted upload */
    for (size_t i = 0; i < s->io.P; i++) s->delta[i] = (s->io.w[i] + s->d[i]) - s->io.w[i];
    const size_t nct = fs_he_params_nct(&p), ob = fs_he_wire_bytes(FS_HE_OBJ_CT);
    q = malloc(nct * FS_HE_N * sizeof *q);
    cts = malloc(nct * ob);
    uint64_t cap = t->secagg_weight_cap, w = samples < cap ? samples : cap;
    st = q && cts ? fs_he_quantise(&p.qz, s->delta, s->io.P, (float)((double)w / (double)cap),
                                   (uint64_t)s->io.idx * 7919 + (uint64_t)r, q)
                  : FS_ERR_NOMEM;
    if (st == FS_OK) st = fs_he_site_encrypt(hs, q, s->io.P + 1, 0, cts, nct * ob, NULL);
    if (st != FS_OK) {
        fed_fail(s, "encryption", st, NULL);
        goto out;
    }
    if (s->barrier) pthread_barrier_wait(s->bar);
    site_io io = s->io;
    io.delta = (const float *)(const void *)cts;
    io.P = nct * ob / 4;
    io.off = 0;
    io.sent_header = 0;
    io.hdr = (fs_wire_update_header){FS_PROTOCOL_VERSION, (uint32_t)r, io.P, 1, 0.5f, NAN, NAN, NAN, 0.0,
                                     fs_wire_crc32_bytes(0, cts, nct * ob), 0, t->secagg_attempt, 1, 0};
    uint8_t *ack = NULL;
    size_t al = 0;
    st = fs_tclient_upload(io.c, fs_federation_methods[FS_M_PUSH_UPDATE].path, up_next, &io, &ack, &al,
                           STREAM_MS, &res);
    free(ack);
    s->t_first[r - 1] = io.t_first;
    if (st != FS_OK) {
        fed_fail(s, "PushUpdate (encrypted)", st, &res);
        goto out;
    }
    s->t_ack[r - 1] = now_s();
    free(cts), cts = NULL;
    for (uint32_t start = 0;;) {
        int rc = he_step_at(s, t, FS_HE_GET_DECRYPT, start, &in, &il, 1);
        if (rc) break; /* 1: the round is over (decrypted); -1: failed */
        uint32_t gen = 0, next = 0;
        if (fs_he_site_partials(hs, in, il, &m, &ml, &gen, &next) != FS_OK) {
            fed_fail(s, "partial decryption", FS_ERR_ARG, NULL);
            break;
        }
        free(in), in = NULL;
        if (sa_step(s, t, FS_HE_PARTIALS, m, ml, &in, &il)) break;
        free(m), m = NULL;
        start = il ? 0 : next;
        free(in), in = NULL;
    }
out:
    free(m);
    free(in);
    free(q);
    free(cts);
    fs_he_site_free_parts(parts, lens, np);
    fs_he_site_free(hs);
}

static int read_port(const char *path, pid_t pid)
{
    for (double t0 = now_s(); now_s() - t0 < 120;) {
        FILE *f = fopen(path, "r");
        int port = 0;
        if (f) {
            if (fscanf(f, "%d", &port) != 1) port = 0;
            fclose(f);
            if (port > 0) return port;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) return 0;
        usleep(50000);
    }
    return 0;
}

/* wall_seconds of each round from metrics.jsonl (n filled). */
static int read_walls(const char *path, double *w, int max)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[1 << 15];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"wall_seconds\":");
        if (p) w[n++] = strtod(p + 15, NULL);
    }
    fclose(f);
    return n;
}

static int mode_fed(const char *work, const char *fedseg, int nsites, int rounds, int poll_ms,
                    int barrier, int secure, int drop, double deadline, int neighbours)
{
    char cons[1024];
    if (make_consortium(work, nsites, cons, sizeof cons)) return 1;
    char conf[1100], portf[1100], logf[1100], metrics[1100], rs[16], ms[16], ps[16];
    snprintf(conf, sizeof conf, "%s/aggregator/aggregator.conf", cons);
    snprintf(portf, sizeof portf, "%s/port", work);
    snprintf(logf, sizeof logf, "%s/aggregator.log", work);
    snprintf(metrics, sizeof metrics, "%s/aggregator/state/metrics.jsonl", cons);
    snprintf(rs, sizeof rs, "%d", rounds);
    snprintf(ms, sizeof ms, "%d", nsites);
    snprintf(ps, sizeof ps, "%d", poll_ms);
    char ds[32], ks[16];
    snprintf(ds, sizeof ds, "%g", deadline);
    snprintf(ks, sizeof ks, "%d", neighbours);
    /* with a dropout fewer sites report: the round may close with nsites - 1 */
    if (drop) snprintf(ms, sizeof ms, "%d", nsites - 1);
    const char *argv[] = {fedseg, "aggregator", "--config", conf, "--listen", "127.0.0.1:0",
                          "--port-file", portf, "--model", "ref", "--rounds", rs, "--min-sites", ms,
                          "--join-wait-s", drop ? "60" : "0", "--round-deadline-s", ds, "--linger-s", "3",
                          "--device", "cpu", "--poll-ms", ps, "--seed", "1",
                          secure == 2 ? "--encrypted" : secure ? "--secure-agg" : NULL, "true",
                          "--secagg-stage-s", ds,
                          neighbours ? "--secagg-neighbours" : NULL, ks, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, logf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    int e = posix_spawn(&pid, fedseg, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e) {
        fprintf(stderr, "bench_fed fed: cannot start %s: %s\n", fedseg, strerror(e));
        return 1;
    }
    int port = read_port(portf, pid);
    if (port <= 0) {
        fprintf(stderr, "bench_fed fed: the aggregator did not start (see %s)\n", logf);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 1;
    }
    const size_t P = P_REF;
    fed_site *s = calloc((size_t)nsites, sizeof *s);
    pthread_t th[MAX_SITES];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)(drop ? nsites - 1 : nsites));
    for (int i = 0; i < nsites; i++) {
        s[i].d = malloc(P * sizeof(float));
        s[i].delta = malloc(P * sizeof(float));
        s[i].io = (site_io){.idx = i, .delta = s[i].delta, .P = P, .w = malloc(P * sizeof(float))};
        if (!s[i].d || !s[i].delta || !s[i].io.w) return 1;
        make_delta(s[i].d, P, i);
        snprintf(s[i].io.name, sizeof s[i].io.name, "%s", site_names[i]);
        char kit[1100];
        snprintf(kit, sizeof kit, "%s/sites/%s", cons, site_names[i]);
        s[i].kit = strdup(kit);
        s[i].port = port;
        s[i].rounds = rounds;
        s[i].barrier = barrier;
        s[i].bar = &bar;
        s[i].secure = secure;
        s[i].drop = drop && i == nsites - 1;
        if (secure && !(s[i].q = malloc((P + 1) * sizeof *s[i].q))) return 1;
    }
    for (int i = 0; i < nsites; i++) pthread_create(&th[i], NULL, fed_thread, &s[i]);
    int err = 0;
    for (int i = 0; i < nsites; i++) {
        pthread_join(th[i], NULL);
        if (s[i].err) {
            fprintf(stderr, "bench_fed fed: %s: %s\n", site_names[i], s[i].why);
            err = 1;
        }
    }
    unsigned long hwm = vm_hwm_kib(pid);
    int wst = 0;
    for (double t0 = now_s(); now_s() - t0 < 60;) {
        if (waitpid(pid, &wst, WNOHANG) == pid) break;
        usleep(100000);
        if (now_s() - t0 >= 59) {
            kill(pid, SIGKILL);
            waitpid(pid, &wst, 0);
        }
    }
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0) {
        fprintf(stderr, "bench_fed fed: the aggregator did not exit 0 (see %s)\n", logf);
        err = 1;
    }
    double wall[256], agg_wall[256], ingest[256], ingest_s[256], dl_s[256];
    int nagg = read_walls(metrics, agg_wall, 256);
    if (nagg != rounds) {
        fprintf(stderr, "bench_fed fed: %d metrics lines, want %d\n", nagg, rounds);
        err = 1;
    }
    for (int r = 0; r < rounds; r++) {
        double start = r == 0 ? 1e300 : 0, end = 0, push0 = 1e300, dl_end = 0;
        for (int i = 0; i < nsites; i++) {
            if (s[i].drop && r == 0) continue; /* it never pushed in round 1 */
            if (r == 0 && s[i].t_task[0] < start) start = s[i].t_task[0];
            if (r > 0 && s[i].t_ack[r - 1] > start) start = s[i].t_ack[r - 1];
            if (s[i].t_ack[r] > end) end = s[i].t_ack[r];
            if (s[i].t_first[r] < push0) push0 = s[i].t_first[r];
            if (s[i].t_dl[r] > dl_end) dl_end = s[i].t_dl[r];
        }
        dl_s[r] = dl_end - start;
        wall[r] = end - start;
        ingest_s[r] = end - push0;
        ingest[r] = (double)(r == 0 && drop ? nsites - 1 : nsites) * (double)P * 4 / ingest_s[r] / 1e6;
    }
    if (!err) {
        printf("{\"mode\":\"fed\",\"server\":\"fedseg aggregator (mTLS)\",\"private\":\"%s\","
               "\"dropout_round1\":%d,\"neighbours\":%d,\"barrier\":%d,\"sites\":%d,"
               "\"params\":%zu,\"update_bytes\":%zu,\"rounds\":%d,\"poll_ms\":%d,\"deadline_s\":%g",
               secure == 2 ? "encrypted" : secure ? "secure_agg" : "plain", drop, neighbours, barrier, nsites, P,
               P * 4, rounds, poll_ms, deadline);
        print_list("round_seconds", wall, rounds);
        print_list("aggregator_round_seconds", agg_wall, rounds);
        print_list("last_download_done_s", dl_s, rounds);
        printf(",\"median_round_s\":%.4f,\"median_aggregator_round_s\":%.4f", median(wall, rounds),
               median(agg_wall, rounds));
        if (barrier) {
            print_list("push_seconds", ingest_s, rounds);
            print_list("ingest_mb_per_s_runs", ingest, rounds);
            printf(",\"ingest_mb_per_s\":%.1f", median(ingest, rounds));
        }
        printf(",\"aggregator_vmhwm_mib\":%.0f,\"load1\":%.2f}\n", (double)hwm / 1024.0, load1());
    }
    for (int i = 0; i < nsites; i++) {
        free(s[i].d);
        free(s[i].delta);
        free(s[i].q);
        free(s[i].io.w);
        free((void *)s[i].kit);
    }
    free(s);
    pthread_barrier_destroy(&bar);
    return err;
}

/* ---- main ------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_fed tcp    [--mib M] [--conns K] [--reps N]\n"
               "       bench_fed ingest [--tls 0|1] [--sink] [--sites S] [--params P] [--reps N] [--work DIR]\n"
               "       bench_fed fed    --fedseg PATH [--sites S] [--rounds R] [--poll-ms MS] "
               "[--barrier] [--secure [--neighbours K] | --encrypted] [--drop] [--deadline S] [--work DIR]\n"
               "Federation network benchmarks on 127.0.0.1 (see the top of bench/bench_fed.c).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *mode = argv[1], *work = NULL, *fedseg = NULL;
    long mib = 2048, conns = 1, reps = 3, tls = 1, sites = 10, rounds = 3, poll_ms = 100;
    long params = P_REF;
    int barrier = 0, sink = 0, secure = 0, drop = 0;
    long deadline = 900, neighbours = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long *dst = !strcmp(a, "--mib") ? &mib : !strcmp(a, "--conns") ? &conns
                  : !strcmp(a, "--reps") ? &reps : !strcmp(a, "--tls") ? &tls
                  : !strcmp(a, "--sites") ? &sites : !strcmp(a, "--rounds") ? &rounds
                  : !strcmp(a, "--poll-ms") ? &poll_ms : !strcmp(a, "--params") ? &params
                  : !strcmp(a, "--deadline") ? &deadline : !strcmp(a, "--neighbours") ? &neighbours : NULL;
        if (!strcmp(a, "--barrier")) barrier = 1;
        else if (!strcmp(a, "--secure")) secure = 1;
        else if (!strcmp(a, "--encrypted")) secure = 2;
        else if (!strcmp(a, "--drop")) drop = 1;
        else if (!strcmp(a, "--sink")) sink = 1;
        else if (!strcmp(a, "--work") && v) work = argv[++i];
        else if (!strcmp(a, "--fedseg") && v) fedseg = argv[++i];
        else if (dst && v) {
            char *e;
            *dst = strtol(v, &e, 10);
            if (*e || *dst < 0) {
                fprintf(stderr, "bench_fed: %s needs a non-negative integer, got '%s'\n", a, v);
                return 2;
            }
            i++;
        } else {
            fprintf(stderr, "bench_fed: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (conns < 1 || conns > MAX_SITES || sites < 1 || sites > MAX_SITES || reps < 1 || reps > 256 ||
        rounds < 1 || rounds > 256 || mib < 1 || params < 1 || tls > 1) {
        fprintf(stderr, "bench_fed: need 1 <= conns, sites <= %d, 1 <= reps, rounds <= 256\n", MAX_SITES);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    char wbuf[256];
    if (!work) {
        snprintf(wbuf, sizeof wbuf, "bench_fed_work_%s", mode);
        work = wbuf;
    }
    if (!strcmp(mode, "tcp")) return mode_tcp((int)mib, (int)conns, (int)reps);
    if (!strcmp(mode, "ingest")) return mode_ingest(work, (int)tls, sink, (int)sites, (size_t)params, (int)reps);
    if (!strcmp(mode, "fed")) {
        if (!fedseg) {
            fprintf(stderr, "bench_fed fed: --fedseg PATH (the fedseg binary) is required\n");
            return 2;
        }
        if (drop && (sites < 4 || barrier)) {
            fprintf(stderr, "bench_fed fed: --drop needs 4 or more sites and no --barrier\n");
            return 2;
        }
        return mode_fed(work, fedseg, (int)sites, (int)rounds, (int)poll_ms, barrier, secure, drop,
                        (double)(deadline ? deadline : 1), (int)neighbours);
    }
    fprintf(stderr, "bench_fed: unknown mode '%s'\n", mode);
    usage(stderr);
    return 2;
}
