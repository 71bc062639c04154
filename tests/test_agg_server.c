/*
 * tests/test_agg_server.c — `fedseg aggregator` end to end over 127.0.0.1
 * with mutual TLS, driven by fake sites written with the transport and the
 * wire codec (so every byte they send is chosen by the test).
 *
 * Setup: a fresh consortium (common/provision.h: sites site_1, site_2), plus
 * "mallory", a certificate from the same CA whose CN is not on the site list
 * (common/pki.h). The aggregator runs as a child process (`$FS_FEDSEG
 * aggregator --config <provisioned aggregator.conf> --listen 127.0.0.1:0
 * --port-file ...`), its stdout and stderr in agg.log.
 *
 * Asserted:
 *   - no ca/cert/key in the config → refuses to start (exit 1, "mutual TLS");
 *   - the startup line "aggregator listening on 127.0.0.1:PORT, round 1/2";
 *   - mallory's Join → PERMISSION_DENIED, and the log names "mallory" and
 *     "not on the site list"; a JoinRequest of protocol version 2 →
 *     FAILED_PRECONDITION "protocol version 2, this fedseg speaks 1" (logged
 *     with the identity); garbage bytes → INVALID_ARGUMENT (logged);
 *   - both sites join, get TRAIN 1, download w0 (CRC = the Task's, equal to
 *     the state dir's global.ckpt);
 *   - hostile updates from site_2 are refused and the round goes on: a
 *     malformed first message, NaN values, a stale round id, a stream longer
 *     than the model (RESOURCE_EXHAUSTED), a wrong CRC;
 *   - site_1's update is accepted; the aggregator is SIGKILLed; restarted with
 *     the same command it resumes round 1: site_1 gets WAIT (its update is
 *     counted), site_2 (joined again) trains, pushes → the round closes and
 *     global.ckpt is exactly w0 + (30·d1 + 10·d2)/40 in FedAvg's fp32
 *     arithmetic, with the round's metrics line naming each site once;
 *   - round 2 with zero updates; then Task FINISHED, the final model
 *     downloadable; the aggregator prints a line per closed round and exits 0
 *     by itself after linger_s; restarted, a finished federation says so,
 *     answers FINISHED, and SIGTERM stops it with exit 0.
 * Skips (77) when FS_FEDSEG is not set. About 10-20 s.
 */
#include "check.h"
#include "common/ckpt.h"
#include "common/pki.h"
#include "common/provision.h"
#include "common/transport.h"
#include "common/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define WORK "agg_server_work"
#define CONS WORK "/cons"
#define LOG WORK "/agg.log"
#define PORTF WORK "/port"
#define P_TINY 487388u
#define UNARY_MS 5000
#define STREAM_MS 30000

static const char *fedseg;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = calloc(1, (size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) b[0] = 0;
    fclose(f);
    return b;
}

static int log_has(const char *a, const char *b)
{
    char *t = slurp(LOG);
    int ok = 0;
    for (char *line = strtok(t, "\n"); line && !ok; line = strtok(NULL, "\n"))
        ok = strstr(line, a) && (!b || strstr(line, b));
    free(t);
    return ok;
}

/* Starts the aggregator with the standard flags plus `extra` (NULL-ended),
 * output appended to LOG. */
static pid_t spawn_agg(const char *config, const char *const *extra)
{
    const char *argv[40] = {fedseg, "aggregator", "--config", config, "--listen", "127.0.0.1:0",
                            "--port-file", PORTF, "--rounds", "2", "--min-sites", "2",
                            "--join-wait-s", "0", "--round-deadline-s", "120", "--linger-s", "2",
                            "--device", "cpu", "--seed", "7", "--poll-ms", "100"};
    int n = 24;
    for (int i = 0; extra && extra[i]; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, LOG, O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = -1;
    int e = posix_spawn(&pid, fedseg, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e) {
        fprintf(stderr, "cannot start %s: %s\n", fedseg, strerror(e));
        exit(1);
    }
    return pid;
}

/* Waits for the port file; 0 when the process died or time ran out. */
static int wait_port(pid_t pid)
{
    for (double t0 = now_s(); now_s() - t0 < 60;) {
        FILE *f = fopen(PORTF, "r");
        int port = 0;
        if (f) {
            if (fscanf(f, "%d", &port) != 1) port = 0;
            fclose(f);
            if (port > 0) return port;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return 0;
        usleep(50000);
    }
    return 0;
}

/* Exit status of pid within secs (-1 = still running, then killed). */
static int wait_exit(pid_t pid, double secs)
{
    for (double t0 = now_s(); now_s() - t0 < secs;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static fs_tclient *site_client(int port, const char *name, const char *dir)
{
    char target[64], ca[512], cert[512], key[512];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    snprintf(ca, sizeof ca, "%s/ca.crt", dir);
    snprintf(cert, sizeof cert, "%s/%s.crt", dir, name);
    snprintf(key, sizeof key, "%s/%s.key", dir, name);
    fs_tls_files tls = {ca, cert, key, NULL};
    fs_tclient *c = NULL;
    if (fs_tclient_connect(&c, target, &tls, FS_MAX_MSG_BYTES) != FS_OK) {
        fprintf(stderr, "cannot make a client for %s\n", name);
        exit(1);
    }
    return c;
}

/* ---- calls --------------------------------------------------------------- */

static fs_status join(fs_tclient *c, uint32_t version, uint64_t samples, fs_wire_join_reply *rep,
                      fs_call_result *res)
{
    fs_wire_join_request rq = {version, "tiny", samples, "fedseg test"};
    uint8_t *msg, *out = NULL;
    size_t len, olen = 0;
    if (fs_wire_encode_join_request(&rq, &msg, &len) != FS_OK) exit(1);
    fs_status st = fs_tclient_unary(c, fs_federation_methods[FS_M_JOIN].path, msg, len, &out, &olen,
                                    UNARY_MS, res);
    free(msg);
    memset(rep, 0, sizeof *rep);
    if (st == FS_OK && fs_wire_decode_join_reply(out, olen, rep, NULL, 0) != FS_OK) st = FS_ERR_FORMAT;
    free(out);
    return st;
}

static fs_status task(fs_tclient *c, fs_wire_task *t, fs_call_result *res)
{
    fs_wire_task_request rq = {FS_PROTOCOL_VERSION, 0};
    uint8_t *msg, *out = NULL;
    size_t len, olen = 0;
    if (fs_wire_encode_task_request(&rq, &msg, &len) != FS_OK) exit(1);
    fs_status st = fs_tclient_unary(c, fs_federation_methods[FS_M_GET_TASK].path, msg, len, &out,
                                    &olen, UNARY_MS, res);
    free(msg);
    memset(t, 0, sizeof *t);
    if (st == FS_OK && fs_wire_decode_task(out, olen, t, NULL, 0) != FS_OK) st = FS_ERR_FORMAT;
    free(out);
    return st;
}

/* Asks for tasks until the action is `want` (10 s at most). */
static int task_until(fs_tclient *c, fs_task_action want, fs_wire_task *t)
{
    fs_call_result r;
    for (double t0 = now_s(); now_s() - t0 < 10;) {
        if (task(c, t, &r) == FS_OK && t->action == want) return 1;
        usleep(100000);
    }
    return 0;
}

typedef struct {
    float *w;
    size_t P, got;
    uint32_t crc;
    int bad;
} dl;

static int dl_sink(void *u, const uint8_t *msg, size_t len)
{
    dl *d = u;
    fs_wire_model_chunk c;
    if (fs_wire_decode_model_chunk(msg, len, &c, NULL, 0) != FS_OK || c.offset != d->got ||
        c.num_params != d->P) {
        d->bad = 1;
        return 1;
    }
    fs_wire_copy_f32(d->w + d->got, c.data, c.len);
    d->got += c.len / 4;
    d->crc = c.crc32;
    return 0;
}

static fs_status download(fs_tclient *c, uint32_t round, float *w, size_t P, uint32_t *crc)
{
    fs_wire_model_request rq = {FS_PROTOCOL_VERSION, round};
    uint8_t *msg;
    size_t len;
    if (fs_wire_encode_model_request(&rq, &msg, &len) != FS_OK) exit(1);
    dl d = {w, P, 0, 0, 0};
    fs_call_result r;
    fs_status st = fs_tclient_download(c, fs_federation_methods[FS_M_DOWNLOAD_MODEL].path, msg, len,
                                       dl_sink, &d, STREAM_MS, &r);
    free(msg);
    if (st == FS_OK && (d.bad || d.got != P)) st = FS_ERR_FORMAT;
    *crc = d.crc;
    return st;
}

typedef enum { UP_OK, UP_GARBAGE, UP_NAN, UP_LONG, UP_BADCRC } up_mode;

typedef struct {
    const float *delta;
    size_t P, off;
    fs_wire_update_header hdr;
    up_mode mode;
    int sent_header, done;
} up;

static int up_next(void *u, uint8_t **msg, size_t *len)
{
    up *s = u;
    if (s->done) return 0;
    if (s->mode == UP_GARBAGE) {
        static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x34};
        *msg = malloc(sizeof junk);
        memcpy(*msg, junk, sizeof junk);
        *len = sizeof junk;
        s->done = 1;
        return 1;
    }
    size_t limit = s->P + (s->mode == UP_LONG ? FS_CHUNK_PARAMS : 0);
    if (s->off >= limit) return 0;
    size_t n = limit - s->off < FS_CHUNK_PARAMS ? limit - s->off : FS_CHUNK_PARAMS;
    static float buf[FS_CHUNK_PARAMS];
    for (size_t i = 0; i < n; i++) buf[i] = s->off + i < s->P ? s->delta[s->off + i] : 1.0f;
    if (s->mode == UP_NAN && s->off == 0) buf[n / 2] = NAN;
    fs_wire_update_chunk c = {.has_header = !s->sent_header, .offset = s->off,
                              .data = (const uint8_t *)buf, .len = n * 4};
    if (c.has_header) c.header = s->hdr;
    s->sent_header = 1;
    s->off += n;
    return fs_wire_encode_update_chunk(&c, msg, len) == FS_OK ? 1 : -1;
}

static fs_status push(fs_tclient *c, uint32_t round, uint64_t samples, const float *delta, size_t P,
                      up_mode mode, fs_call_result *res)
{
    up s = {delta, P, 0, {0}, mode, 0, 0};
    s.hdr = (fs_wire_update_header){FS_PROTOCOL_VERSION, round, P, samples, 0.5f, 0.25f, NAN, NAN,
                                    1.0, fs_wire_crc32_f32(0, delta, P), 0, 0, 0, 0};
    if (mode == UP_BADCRC) s.hdr.crc32 ^= 1;
    uint8_t *out = NULL;
    size_t olen = 0;
    fs_status st = fs_tclient_upload(c, fs_federation_methods[FS_M_PUSH_UPDATE].path, up_next, &s,
                                     &out, &olen, STREAM_MS, res);
    fs_wire_update_ack ack;
    if (st == FS_OK && (fs_wire_decode_update_ack(out, olen, &ack, NULL, 0) != FS_OK || !ack.accepted))
        st = FS_ERR_FORMAT;
    free(out);
    return st;
}

/* ---- the test ------------------------------------------------------------ */

static void must(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "FATAL: %s\n--- aggregator log ---\n", what);
        char *t = slurp(LOG);
        fprintf(stderr, "%s\n", t);
        free(t);
        exit(1);
    }
}

int main(void)
{
    fedseg = getenv("FS_FEDSEG");
    if (!fedseg || access(fedseg, X_OK) != 0) {
        fprintf(stderr, "SKIP: FS_FEDSEG (the fedseg binary) is not set\n");
        return 77;
    }
    if (system("rm -rf " WORK) != 0 || mkdir(WORK, 0755) != 0) return 1;
    const char *names[] = {"site_1", "site_2"};
    fs_provision_opts po = {"aggtest", "127.0.0.1", names, 2, CONS};
    must(fs_provision_create(&po) == FS_OK, "provision");
    fs_pki_ca *ca = NULL;
    must(fs_pki_ca_load(CONS "/ca/ca.crt", CONS "/ca/ca.key", &ca) == FS_OK, "load the CA");
    must(mkdir(WORK "/mallory", 0700) == 0, "mkdir");
    fs_pki_leaf leaf = {.role = FS_PKI_CLIENT, .cn = "mallory", .org = "aggtest"};
    must(fs_pki_issue(ca, &leaf, WORK "/mallory/mallory.crt", WORK "/mallory/mallory.key", NULL) == FS_OK,
         "issue mallory");
    fs_pki_ca_free(ca);
    if (system("cp " CONS "/ca/ca.crt " WORK "/mallory/ca.crt") != 0) return 1;
    const char *conf = CONS "/aggregator/aggregator.conf";

    /* no TLS files → refuses to start */
    FILE *f = fopen(WORK "/notls.conf", "w");
    fprintf(f, "sites = site_1, site_2\nstate_dir = notls_state\n");
    fclose(f);
    pid_t pid = spawn_agg(WORK "/notls.conf", NULL);
    int rc = wait_exit(pid, 30);
    CHECK(rc == 1, "aggregator without TLS files: exit %d, want 1", rc);
    CHECK(log_has("mutual TLS", NULL), "the refusal to start without TLS names mutual TLS");

    /* start */
    pid = spawn_agg(conf, NULL);
    int port = wait_port(pid);
    must(port > 0, "the aggregator did not start");
    char line[128];
    snprintf(line, sizeof line, "aggregator listening on 127.0.0.1:%d, round 1/2", port);
    CHECK(log_has(line, "site_1,site_2"), "startup line '%s'", line);
    const char *k1 = CONS "/sites/site_1", *k2 = CONS "/sites/site_2";
    fs_tclient *c1 = site_client(port, "site_1", k1), *c2 = site_client(port, "site_2", k2);
    fs_tclient *cm = site_client(port, "mallory", WORK "/mallory");

    /* refusals at Join */
    fs_wire_join_reply jr;
    fs_call_result r;
    fs_status st = join(cm, FS_PROTOCOL_VERSION, 5, &jr, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_PERMISSION_DENIED,
          "mallory's Join: %s rpc %s '%s'", fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
    CHECK(log_has("mallory", "not on the site list"), "the log names mallory and the reason");
    st = join(c1, 2, 30, &jr, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_FAILED_PRECONDITION &&
              strstr(r.reason, "protocol version 2, this fedseg speaks 1"),
          "version 2 Join: %s rpc %s '%s'", fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
    CHECK(log_has("site_1", "protocol version 2"), "the log names the version mismatch and the site");
    static const uint8_t junk[] = {0x0a, 0x7f, 0x01};
    st = fs_tclient_unary(c2, fs_federation_methods[FS_M_JOIN].path, junk, sizeof junk, NULL, NULL,
                          UNARY_MS, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_INVALID_ARGUMENT, "garbage Join: %s rpc %s '%s'",
          fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
    CHECK(log_has("site_2", "Join refused"), "the log names the malformed Join and its site");
    fs_wire_task t;
    st = task(c1, &t, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_FAILED_PRECONDITION,
          "GetTask before Join: %s rpc %s", fs_status_str(st), fs_rpc_code_str(r.rpc));

    /* both join; round 1 opens */
    must(join(c1, FS_PROTOCOL_VERSION, 30, &jr, &r) == FS_OK && jr.accepted && jr.num_params == P_TINY,
         "site_1 join");
    CHECK(!strcmp(jr.site_id, "site_1") && jr.round == 1, "JoinReply site %s round %u", jr.site_id, jr.round);
    must(join(c2, FS_PROTOCOL_VERSION, 10, &jr, &r) == FS_OK && jr.accepted, "site_2 join");
    must(task_until(c1, FS_TASK_TRAIN, &t) && t.round == 1, "site_1 gets TRAIN 1");
    uint32_t task_crc = t.model_crc32;
    must(task_until(c2, FS_TASK_TRAIN, &t) && t.round == 1, "site_2 gets TRAIN 1");

    const size_t P = P_TINY;
    float *w0 = malloc(P * 4), *d1 = malloc(P * 4), *d2 = malloc(P * 4), *zero = calloc(P, 4),
          *tmp = malloc(P * 4);
    uint32_t crc;
    must(download(c1, 1, w0, P, &crc) == FS_OK, "download w0");
    CHECK(crc == task_crc && crc == fs_wire_crc32_f32(0, w0, P), "model CRC %08x task %08x", crc, task_crc);
    fs_ckpt_meta meta;
    float *ck = NULL;
    must(fs_ckpt_read(CONS "/aggregator/state/global.ckpt", &meta, &ck, NULL, NULL, NULL) == FS_OK, "ckpt");
    CHECK(meta.epoch == 0 && meta.nparams == P && !memcmp(ck, w0, P * 4), "downloaded w0 = global.ckpt");
    free(ck);
    for (size_t i = 0; i < P; i++) {
        d1[i] = (float)(1e-3 * sin(0.001 * (double)i));
        d2[i] = (float)(-2e-3 * cos(0.0007 * (double)i));
    }

    /* hostile updates from site_2: each refused, the round goes on */
    st = push(c2, 1, 10, d2, P, UP_GARBAGE, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_INVALID_ARGUMENT, "malformed update: %s rpc %s '%s'",
          fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
    CHECK(log_has("site_2", "PushUpdate chunk refused"), "the malformed update is logged with its site");
    st = push(c2, 1, 10, d2, P, UP_NAN, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_INVALID_ARGUMENT, "NaN update: %s rpc %s '%s'",
          fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
    st = push(c2, 5, 10, d2, P, UP_OK, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_FAILED_PRECONDITION, "stale round: %s rpc %s '%s'",
          fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
    st = push(c2, 1, 10, d2, P, UP_LONG, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_RESOURCE_EXHAUSTED, "oversized: %s rpc %s '%s'",
          fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
    st = push(c2, 1, 10, d2, P, UP_BADCRC, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_INVALID_ARGUMENT, "bad CRC: %s rpc %s '%s'",
          fs_status_str(st), fs_rpc_code_str(r.rpc), r.reason);
    st = push(cm, 1, 10, d2, P, UP_OK, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_PERMISSION_DENIED, "mallory's update: %s rpc %s",
          fs_status_str(st), fs_rpc_code_str(r.rpc));

    /* site_1's update is accepted, then the aggregator is killed */
    st = push(c1, 1, 30, d1, P, UP_OK, &r);
    must(st == FS_OK, "site_1's update accepted");
    st = push(c1, 1, 30, d1, P, UP_OK, &r);
    CHECK(st == FS_ERR_MISMATCH && r.rpc == FS_RPC_FAILED_PRECONDITION, "a second update (replay): %s rpc %s",
          fs_status_str(st), fs_rpc_code_str(r.rpc));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fs_tclient_free(c1);
    fs_tclient_free(c2);
    fs_tclient_free(cm);
    unlink(PORTF);

    /* restart: resumes round 1 with site_1's update counted */
    pid = spawn_agg(conf, NULL);
    port = wait_port(pid);
    must(port > 0, "the aggregator did not restart");
    c1 = site_client(port, "site_1", k1);
    c2 = site_client(port, "site_2", k2);
    must(join(c1, FS_PROTOCOL_VERSION, 30, &jr, &r) == FS_OK && jr.round == 1, "site_1 rejoins round 1");
    must(join(c2, FS_PROTOCOL_VERSION, 10, &jr, &r) == FS_OK, "site_2 rejoins");
    must(task(c1, &t, &r) == FS_OK, "site_1 task");
    CHECK(t.action == FS_TASK_WAIT, "site_1's update survived the crash: task %s round %u",
          fs_task_action_str(t.action), t.round);
    must(task_until(c2, FS_TASK_TRAIN, &t) && t.round == 1, "site_2 gets TRAIN 1 again");
    must(download(c2, 1, tmp, P, &crc) == FS_OK && !memcmp(tmp, w0, P * 4), "the same w0 after restart");
    must(push(c2, 1, 10, d2, P, UP_OK, &r) == FS_OK, "site_2's update accepted");

    /* round 1 closed: global.ckpt = w0 + (30·d1 + 10·d2) / 40, FedAvg's fp32 order */
    must(task_until(c1, FS_TASK_TRAIN, &t) && t.round == 2, "round 2 opens");
    must(fs_ckpt_read(CONS "/aggregator/state/global.ckpt", &meta, &ck, NULL, NULL, NULL) == FS_OK, "ckpt 1");
    float inv = (float)(1.0 / 40.0);
    size_t diff = 0;
    double worst = 0;
    for (size_t i = 0; i < P; i++) {
        float s = 0.0f;
        s += 30.0f * d1[i];
        s += 10.0f * d2[i];
        float want = w0[i] + s * inv;
        diff += memcmp(&want, &ck[i], 4) != 0;
        double e = fabs((double)ck[i] - ((double)w0[i] + (30.0 * d1[i] + 10.0 * d2[i]) / 40.0));
        if (e > worst) worst = e;
    }
    CHECK(meta.epoch == 1 && diff == 0, "round 1 model: epoch %u, %zu of %zu parameters differ from "
          "w0 + weighted mean", meta.epoch, diff, P);
    CHECK(worst < 1e-6, "round 1 model vs exact FedAvg: worst error %g", worst);
    printf("round 1 after SIGKILL + resume: %zu parameters differ from w0 + FedAvg (worst |error| vs "
           "double %.2g)\n", diff, worst);
    must(download(c1, 2, tmp, P, &crc) == FS_OK && !memcmp(tmp, ck, P * 4), "w1 served for round 2");
    free(ck);
    char *mt = slurp(CONS "/aggregator/state/metrics.jsonl");
    char *l1 = strstr(mt, "{\"round\":1,");
    CHECK(l1 && strstr(l1, "\"sites_reported\":2") && strstr(l1, "\"num_samples\":40"),
          "metrics line of round 1: %.300s", l1 ? l1 : mt);
    if (l1) {
        char *end = strchr(l1, '\n');
        if (end) *end = 0;
        char *a = strstr(l1, "\"site\":\"site_1\"");
        CHECK(a && !strstr(a + 1, "\"site\":\"site_1\""), "site_1 appears once in round 1's metrics");
        CHECK(strstr(l1, "\"train_loss\":") && strstr(l1, "\"global_dice_wt\":") &&
                  strstr(l1, "\"bytes_received\":") && strstr(l1, "\"bytes_sent\":") &&
                  strstr(l1, "\"train_seconds\":"),
              "metrics carry loss, Dice, bytes and seconds per site");
    }
    free(mt);

    /* round 2 (zero updates), then FINISHED and the final model */
    must(task_until(c2, FS_TASK_TRAIN, &t) && t.round == 2, "site_2 TRAIN 2");
    must(push(c1, 2, 30, zero, P, UP_OK, &r) == FS_OK, "round 2 site_1");
    must(push(c2, 2, 10, zero, P, UP_OK, &r) == FS_OK, "round 2 site_2");
    must(task_until(c1, FS_TASK_FINISHED, &t), "FINISHED after 2 rounds");
    st = download(c1, 3, tmp, P, &crc);
    CHECK(st == FS_OK, "final model download: %s", fs_status_str(st));
    CHECK(log_has("round 1/2 closed", NULL) && log_has("round 2/2 closed", "finished"),
          "one line per closed round");
    fs_tclient_free(c1);
    fs_tclient_free(c2);
    rc = wait_exit(pid, 20);
    CHECK(rc == 0, "the aggregator exits 0 after linger_s (got %d)", rc);

    /* a finished federation restarted: says so, serves, and SIGTERM stops it (exit 0) */
    unlink(PORTF);
    const char *long_linger[] = {"--linger-s", "300", NULL};
    pid = spawn_agg(conf, long_linger);
    port = wait_port(pid);
    must(port > 0, "the aggregator did not restart on a finished federation");
    snprintf(line, sizeof line, "aggregator listening on 127.0.0.1:%d, federation finished (2/2 rounds)", port);
    CHECK(log_has(line, NULL), "startup line '%s'", line);
    c1 = site_client(port, "site_1", k1);
    must(join(c1, FS_PROTOCOL_VERSION, 30, &jr, &r) == FS_OK, "join a finished federation");
    CHECK(task(c1, &t, &r) == FS_OK && t.action == FS_TASK_FINISHED, "FINISHED after a restart");
    fs_tclient_free(c1);
    kill(pid, SIGTERM);
    rc = wait_exit(pid, 20);
    CHECK(rc == 0, "SIGTERM stops the aggregator with exit 0 (got %d)", rc);
    free(w0); free(d1); free(d2); free(zero); free(tmp);
    return check_result();
}
