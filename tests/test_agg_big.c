/*
 * tests/test_agg_big.c — two updates of 400 MiB each (104,857,600 fp32
 * parameters) through the real aggregator: aggregator/server.h (the glue
 * behind `fedseg aggregator`) over mutual TLS on 127.0.0.1, the round state
 * machine (aggregator/round.h: spool to disk, fsync, journal, fold) and the
 * wire codec, with two fake sites written with the transport. The command
 * line aggregator only knows the model presets, so the server is started
 * in-process with a model of the test's own size.
 *
 * Layout: the aggregator runs in a forked child (so that its peak memory is
 * its own); it reports its port through a pipe and, when it has finished,
 * its VmRSS after start-up and its VmHWM in a file. The parent runs the two
 * sites on two threads, concurrently: Join, GetTask (TRAIN 1), site 1 also
 * downloads the global model and checks every value and the CRC as it
 * streams in (nothing is held), then each pushes its update, generated chunk
 * by chunk from a formula (the parent never holds an update either).
 *
 * Asserted:
 *   - both updates are accepted, the round closes, the aggregator exits 0;
 *   - global.ckpt of round 1 is, bit for bit, w0 + (n1·d1 + n2·d2)/(n1 + n2)
 *     in FedAvg's fp32 arithmetic (and within 1e-6 of the exact value);
 *   - the metrics line names both sites with 4·P bytes received each;
 *   - the aggregator's peak memory (VmHWM) stays O(P), independent of the
 *     number of sites: below the initial-model copy handed to the server +
 *     the global model + the sum (3 × 4·P) + 384 MiB for the transport (its
 *     memory quota is 256 MiB) — holding both updates at once would need
 *     5 × 4·P. The figure is printed.
 * Skips (77) with less than 6 GiB of available memory or of free disk in the
 * working folder. About 10-20 s on two cores with a fast disk, longer on a
 * slow one (ctest label "big", timeout 900 s).
 */
#include "check.h"
#include "aggregator/server.h"
#include "common/ckpt.h"
#include "common/log.h"
#include "common/provision.h"
#include "common/transport.h"
#include "common/wire.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORK "agg_big_work"
#define CONS WORK "/cons"
#define STATE WORK "/state"
#define MEMF WORK "/agg_mem"
#define P_BIG ((size_t)104857600) /* 400 MiB of fp32 */
#define UNARY_MS 10000
#define STREAM_MS 600000
#define GIB ((uint64_t)1 << 30)
#define MIB (1024.0 * 1024.0)

static const char *const site_names[2] = {"big_1", "big_2"};
static const uint64_t site_samples[2] = {30, 10};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- the data: exactly representable values from a hash ----------------- */

static uint32_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

/* w0[i] in [-0.5, 0.5), multiples of 2^-16. */
static float w0_at(size_t i) { return (float)((int32_t)(mix(i) & 0xffff) - 32768) * (1.0f / 65536.0f); }

/* delta of site s at i in [-2^-6, 2^-6), multiples of 2^-21. */
static float delta_at(int s, size_t i)
{
    return (float)((int32_t)(mix(i * 2 + 1 + (uint64_t)s * 0x9e3779b97f4a7c15ull) & 0xffff) - 32768) *
           (1.0f / 2097152.0f);
}

/* /proc/self/status field in KiB (0 when absent). */
static uint64_t status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    uint64_t v = 0;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') {
            v = strtoull(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

static uint64_t mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    uint64_t v = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "MemAvailable:", 13)) v = strtoull(line + 13, NULL, 10) * 1024;
    fclose(f);
    return v;
}

/* ---- the aggregator (child process) ------------------------------------- */

static volatile sig_atomic_t agg_stop = 0;

static void on_term(int sig)
{
    (void)sig;
    agg_stop = 1;
}

/* Runs the server for one round of P_BIG parameters; writes its port to fd
 * and its memory figures to MEMF. Returns the process's exit status. */
static int aggregator_main(int fd)
{
    signal(SIGTERM, on_term);
    fs_log_set_level(FS_LOG_WARN);
    float *w0 = malloc(P_BIG * sizeof *w0);
    if (!w0) return 3;
    for (size_t i = 0; i < P_BIG; i++) w0[i] = w0_at(i);
    fs_server_config cfg = {
        .listen = "127.0.0.1:0",
        .tls = {CONS "/aggregator/ca.crt", CONS "/aggregator/aggregator.crt",
                CONS "/aggregator/aggregator.key", NULL},
        .round = {.sites = site_names, .n_sites = 2, .rounds = 1, .min_sites = 2, .fraction = 1.0,
                  .deadline_s = 900, .join_wait_s = 0, .site_timeout_s = 0, .local_epochs = 1,
                  .lr = 1e-3f, .poll_ms = 100, .state_dir = STATE, .seed = 1,
                  .model = {.preset = "big", .base = 0, .depth = 0, .size = 0}},
        .w0 = w0,
        .num_params = P_BIG,
        .linger_s = 1,
    };
    fs_server *s = NULL;
    int port = 0;
    if (fs_server_start(&s, &cfg) == FS_OK) port = fs_server_port(s);
    uint64_t rss_start = status_kib("VmRSS");
    if (write(fd, &port, sizeof port) != (ssize_t)sizeof port || !s) return 4;
    close(fd);
    fs_status st = fs_server_run(s, &agg_stop);
    fs_server_free(s);
    free(w0);
    FILE *f = fopen(MEMF, "w");
    if (!f) return 5;
    fprintf(f, "%" PRIu64 " %" PRIu64 "\n", rss_start, status_kib("VmHWM"));
    fclose(f);
    return st == FS_OK ? 0 : 6;
}

/* ---- the sites (parent, one thread each) --------------------------------- */

typedef struct {
    int idx, port;
    fs_status st;
    char what[512];
    double upload_s, download_s;
    /* download check */
    size_t got;
    uint32_t crc, sent_crc;
    int bad;
    /* upload generator */
    size_t off;
    int sent_header;
    fs_wire_update_header hdr;
    float buf[FS_CHUNK_PARAMS];
} site;

static int fail(site *s, fs_status st, const char *what, const fs_call_result *r)
{
    s->st = st == FS_OK ? FS_ERR_FORMAT : st;
    snprintf(s->what, sizeof s->what, "%s: %s (%s: %s)", what, fs_status_str(st),
             r ? fs_rpc_code_str(r->rpc) : "-", r ? r->reason : "");
    return -1;
}

static int dl_sink(void *u, const uint8_t *msg, size_t len)
{
    site *s = u;
    fs_wire_model_chunk c;
    if (fs_wire_decode_model_chunk(msg, len, &c, NULL, 0) != FS_OK || c.offset != s->got ||
        c.num_params != P_BIG) {
        s->bad = 1;
        return 1;
    }
    for (size_t i = 0; i < c.len / 4; i++) {
        float v;
        memcpy(&v, c.data + 4 * i, 4);
        float want = w0_at(s->got + i);
        if (memcmp(&v, &want, 4)) s->bad = 1;
    }
    s->crc = fs_wire_crc32_bytes(s->crc, c.data, c.len);
    s->sent_crc = c.crc32;
    s->got += c.len / 4;
    return s->bad;
}

static int up_next(void *u, uint8_t **msg, size_t *len)
{
    site *s = u;
    if (s->off >= P_BIG) return 0;
    size_t n = P_BIG - s->off < FS_CHUNK_PARAMS ? P_BIG - s->off : FS_CHUNK_PARAMS;
    for (size_t i = 0; i < n; i++) s->buf[i] = delta_at(s->idx, s->off + i);
    fs_wire_update_chunk c = {.has_header = !s->sent_header, .offset = s->off,
                              .data = (const uint8_t *)s->buf, .len = n * 4};
    if (c.has_header) c.header = s->hdr;
    s->sent_header = 1;
    s->off += n;
    return fs_wire_encode_update_chunk(&c, msg, len) == FS_OK ? 1 : -1;
}

static void *site_main(void *arg)
{
    site *s = arg;
    const char *name = site_names[s->idx];
    char target[64], ca[256], cert[256], key[256];
    snprintf(target, sizeof target, "127.0.0.1:%d", s->port);
    snprintf(ca, sizeof ca, CONS "/sites/%s/ca.crt", name);
    snprintf(cert, sizeof cert, CONS "/sites/%s/%s.crt", name, name);
    snprintf(key, sizeof key, CONS "/sites/%s/%s.key", name, name);
    fs_tls_files tls = {ca, cert, key, NULL};
    fs_tclient *c = NULL;
    fs_call_result r = {0};
    fs_status st = fs_tclient_connect(&c, target, &tls, FS_MAX_MSG_BYTES);
    if (st != FS_OK) return fail(s, st, "connect", NULL), NULL;

    fs_wire_join_request jq = {FS_PROTOCOL_VERSION, "big", site_samples[s->idx], "fedseg test"};
    uint8_t *msg = NULL, *out = NULL;
    size_t len, olen = 0;
    fs_wire_join_reply jr;
    if (fs_wire_encode_join_request(&jq, &msg, &len) != FS_OK) abort();
    st = fs_tclient_unary(c, fs_federation_methods[FS_M_JOIN].path, msg, len, &out, &olen, UNARY_MS, &r);
    free(msg);
    if (st == FS_OK && (fs_wire_decode_join_reply(out, olen, &jr, NULL, 0) != FS_OK || !jr.accepted ||
                        jr.num_params != P_BIG))
        st = FS_ERR_FORMAT;
    free(out);
    if (st != FS_OK) goto bad_join;

    fs_wire_task t = {0};
    for (double t0 = now_s(); now_s() - t0 < 60;) {
        fs_wire_task_request tq = {FS_PROTOCOL_VERSION, 0};
        if (fs_wire_encode_task_request(&tq, &msg, &len) != FS_OK) abort();
        out = NULL;
        st = fs_tclient_unary(c, fs_federation_methods[FS_M_GET_TASK].path, msg, len, &out, &olen,
                              UNARY_MS, &r);
        free(msg);
        if (st == FS_OK && fs_wire_decode_task(out, olen, &t, NULL, 0) != FS_OK) st = FS_ERR_FORMAT;
        free(out);
        if (st != FS_OK || t.action == FS_TASK_TRAIN) break;
        usleep(100000);
    }
    if (st != FS_OK || t.action != FS_TASK_TRAIN || t.round != 1) {
        fail(s, st, "GetTask did not give TRAIN 1", &r);
        goto done;
    }

    if (s->idx == 0) {
        fs_wire_model_request mq = {FS_PROTOCOL_VERSION, 1};
        if (fs_wire_encode_model_request(&mq, &msg, &len) != FS_OK) abort();
        double t0 = now_s();
        st = fs_tclient_download(c, fs_federation_methods[FS_M_DOWNLOAD_MODEL].path, msg, len,
                                 dl_sink, s, STREAM_MS, &r);
        s->download_s = now_s() - t0;
        free(msg);
        if (st != FS_OK || s->bad || s->got != P_BIG || s->crc != s->sent_crc ||
            s->crc != t.model_crc32) {
            fail(s, st, "download of the global model (values, length or CRC wrong)", &r);
            goto done;
        }
    }

    uint32_t crc = 0;
    for (size_t off = 0; off < P_BIG; off += FS_CHUNK_PARAMS) {
        size_t n = P_BIG - off < FS_CHUNK_PARAMS ? P_BIG - off : FS_CHUNK_PARAMS;
        for (size_t i = 0; i < n; i++) s->buf[i] = delta_at(s->idx, off + i);
        crc = fs_wire_crc32_f32(crc, s->buf, n);
    }
    s->hdr = (fs_wire_update_header){FS_PROTOCOL_VERSION, 1, P_BIG, site_samples[s->idx], 0.5f,
                                     NAN, NAN, NAN, 1.0, crc, 0, 0, 0, 0};
    double t0 = now_s();
    out = NULL;
    olen = 0;
    st = fs_tclient_upload(c, fs_federation_methods[FS_M_PUSH_UPDATE].path, up_next, s, &out, &olen,
                           STREAM_MS, &r);
    s->upload_s = now_s() - t0;
    fs_wire_update_ack ack;
    if (st == FS_OK && (fs_wire_decode_update_ack(out, olen, &ack, NULL, 0) != FS_OK || !ack.accepted))
        st = FS_ERR_FORMAT;
    free(out);
    if (st != FS_OK) fail(s, st, "PushUpdate", &r);
    goto done;
bad_join:
    fail(s, st, "Join", &r);
done:
    fs_tclient_free(c);
    return NULL;
}

/* ---- the test ------------------------------------------------------------ */

int main(void)
{
    uint64_t avail = mem_available();
    struct statvfs vfs;
    uint64_t disk = statvfs(".", &vfs) == 0 ? (uint64_t)vfs.f_bavail * vfs.f_frsize : 0;
    if (avail < 6 * GIB || disk < 6 * GIB) {
        fprintf(stderr, "SKIP: needs 6 GiB of available memory and of free disk (have %.1f and %.1f GiB)\n",
                (double)avail / GIB, (double)disk / GIB);
        return 77;
    }
    if (system("rm -rf " WORK) != 0 || mkdir(WORK, 0755) != 0) return 1;
    fs_provision_opts po = {"bigtest", "127.0.0.1", site_names, 2, CONS};
    if (fs_provision_create(&po) != FS_OK) {
        fprintf(stderr, "FATAL: provisioning failed\n");
        return 1;
    }

    int pfd[2];
    if (pipe(pfd) != 0) return 1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        close(pfd[0]);
        _exit(aggregator_main(pfd[1]));
    }
    close(pfd[1]);
    int port = 0;
    ssize_t got = read(pfd[0], &port, sizeof port);
    close(pfd[0]);
    if (got != (ssize_t)sizeof port || port <= 0) {
        fprintf(stderr, "FATAL: the aggregator did not start\n");
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 1;
    }

    double t0 = now_s();
    static site sites[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        sites[i].idx = i;
        sites[i].port = port;
        sites[i].st = FS_OK;
        if (pthread_create(&th[i], NULL, site_main, &sites[i]) != 0) return 1;
    }
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    double wall = now_s() - t0;
    for (int i = 0; i < 2; i++)
        CHECK(sites[i].st == FS_OK, "site %s: %s", site_names[i], sites[i].what);

    int wst = 0;
    int exited = 0;
    for (double w0 = now_s(); now_s() - w0 < 120;) {
        if (waitpid(pid, &wst, WNOHANG) == pid) {
            exited = 1;
            break;
        }
        usleep(100000);
    }
    if (!exited) {
        kill(pid, SIGTERM);
        waitpid(pid, &wst, 0);
    }
    CHECK(exited && WIFEXITED(wst) && WEXITSTATUS(wst) == 0,
          "the aggregator ends by itself after the last round with exit 0 (status %d)", wst);

    /* the round's result, bit for bit */
    fs_ckpt_meta meta;
    float *ck = NULL;
    fs_status st = fs_ckpt_read(STATE "/global.ckpt", &meta, &ck, NULL, NULL, NULL);
    CHECK(st == FS_OK && meta.epoch == 1 && meta.nparams == P_BIG, "global.ckpt of round 1: %s epoch %u",
          fs_status_str(st), st == FS_OK ? meta.epoch : 0);
    if (st == FS_OK && meta.nparams == P_BIG) {
        float n1 = (float)site_samples[0], n2 = (float)site_samples[1];
        float inv = (float)(1.0 / (double)(site_samples[0] + site_samples[1]));
        size_t diff = 0;
        double worst = 0;
        for (size_t i = 0; i < P_BIG; i++) {
            float d1 = delta_at(0, i), d2 = delta_at(1, i), s = 0.0f;
            s += n1 * d1;
            s += n2 * d2;
            float want = w0_at(i) + s * inv;
            diff += memcmp(&want, &ck[i], 4) != 0;
            double exact = (double)w0_at(i) + ((double)n1 * d1 + (double)n2 * d2) / ((double)n1 + n2);
            double e = fabs((double)ck[i] - exact);
            if (e > worst) worst = e;
        }
        CHECK(diff == 0, "%zu of %zu parameters differ from w0 + FedAvg in fp32", diff, P_BIG);
        CHECK(worst < 1e-6, "worst |error| against the exact FedAvg: %g", worst);
        printf("round 1 of %zu parameters: %zu differ from w0 + (n1·d1 + n2·d2)/(n1+n2) "
               "(worst |error| vs double %.2g)\n", P_BIG, diff, worst);
    }
    free(ck);

    FILE *mf = fopen(STATE "/metrics.jsonl", "r");
    char line[4096] = "";
    if (mf) {
        if (!fgets(line, sizeof line, mf)) line[0] = 0;
        fclose(mf);
    }
    char want_bytes[64];
    snprintf(want_bytes, sizeof want_bytes, "\"bytes_received\":%zu", P_BIG * 4);
    CHECK(strstr(line, "\"sites_reported\":2") && strstr(line, "\"site\":\"big_1\"") &&
              strstr(line, "\"site\":\"big_2\"") && strstr(line, want_bytes) &&
              strstr(strstr(line, want_bytes) + 1, want_bytes),
          "metrics line with both sites and %zu bytes each: %.300s", P_BIG * 4, line);

    /* the aggregator's memory */
    uint64_t rss_start = 0, hwm = 0;
    mf = fopen(MEMF, "r");
    if (mf) {
        if (fscanf(mf, "%" SCNu64 " %" SCNu64, &rss_start, &hwm) != 2) hwm = 0;
        fclose(mf);
    }
    double upd_mib = (double)P_BIG * 4 / MIB;
    double hwm_mib = (double)hwm / 1024.0, limit_mib = 3 * upd_mib + 384;
    CHECK(hwm > 0, "the aggregator reported its peak memory");
    CHECK(hwm_mib < limit_mib,
          "aggregator peak memory %.0f MiB, limit 3 x %.0f MiB + 384 MiB = %.0f MiB", hwm_mib,
          upd_mib, limit_mib);
    printf("two sites x %.0f MiB updates (P = %zu) over mutual TLS: %.1f s in all (upload %.1f s and "
           "%.1f s, concurrent; site 1's download %.1f s)\n",
           upd_mib, P_BIG, wall, sites[0].upload_s, sites[1].upload_s, sites[0].download_s);
    printf("aggregator memory: VmRSS %.0f MiB after start-up (the initial model handed to the server, the "
           "global model and the zeroed sum), "
           "peak VmHWM %.0f MiB = %.2f x one update; bound for O(P) %.0f MiB; holding both updates "
           "would need about %.0f MiB\n",
           (double)rss_start / 1024.0, hwm_mib, hwm_mib / upd_mib, limit_mib, 5 * upd_mib);
    if (check_failures_ == 0 && system("rm -rf " WORK) != 0) return 1;
    return check_result();
}
