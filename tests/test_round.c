/*
 * tests/test_round.c — the aggregator's round state machine (aggregator/round.h)
 * with a fake clock and no network, in fresh folders under the test's working
 * directory:
 *   fedavg      3 sites, uneven chunks: w_1 − w_0 equals the sample-weighted
 *               mean of the deltas computed in double; checkpoint, state file
 *               and metrics line written; spools deleted
 *   refusals    unknown site, wrong preset, wrong num_params, future round,
 *               double submission, concurrent upload, chunks out of order,
 *               repeated, oversized, misaligned, NaN, Inf, short stream, bad
 *               CRC, broken stream: each refused, the sum and the round
 *               untouched, and the final model is the mean of the valid ones
 *   deadline    a silent site: the round closes at its deadline with the
 *               others; the silent site trains again in the next round;
 *               a replayed update of a finished round is refused
 *   min_sites   too few reports by the deadline: not closed, deadline
 *               extended, selection topped up with an active site
 *   partial     fraction 0.5 of 10 sites: 5 per round, not the same every
 *               round, the same for the same seed; unselected sites WAIT and
 *               are refused
 *   crash       a simulated crash at every step of an upload and of a round
 *               close (plus a torn journal record each time), reopened from
 *               the folder: the final model equals the crash-free run's bit
 *               for bit, metrics hold each round once, a resent update is
 *               accepted only if it had not been committed
 *   memory      P = 2,000,000, 20 sites: the peak RSS grows by O(P), not by
 *               sites × P, and the mean is right at sampled indices
 */
#include "check.h"
#include "aggregator/round.h"
#include "common/ckpt.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/wire.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- fixtures ------------------------------------------------------------ */

static const char *SITES[20] = {"site_1",  "site_2",  "site_3",  "site_4",  "site_5",
                                "site_6",  "site_7",  "site_8",  "site_9",  "site_10",
                                "site_11", "site_12", "site_13", "site_14", "site_15",
                                "site_16", "site_17", "site_18", "site_19", "site_20"};

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}
static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static char *make_dir(void)
{
    char *d = strdup("round_test_XXXXXX");
    if (!mkdtemp(d)) { perror("mkdtemp"); exit(1); }
    return d;
}

static fs_round_config make_cfg(const char *dir, size_t n_sites, uint32_t rounds, uint32_t min_sites,
                                double fraction)
{
    fs_round_config c;
    memset(&c, 0, sizeof c);
    c.sites = SITES;
    c.n_sites = n_sites;
    c.rounds = rounds;
    c.min_sites = min_sites;
    c.fraction = fraction;
    c.deadline_s = 100;
    c.join_wait_s = 5; /* sites joining at the same time all get into round 1 */
    c.local_epochs = 2;
    c.lr = 1e-3f;
    c.state_dir = dir;
    c.seed = 7;
    strcpy(c.model.preset, "tiny");
    c.model.base = 8;
    c.model.depth = 4;
    c.model.size = 64;
    return c;
}

/* A site's "training result" for a round: deterministic pseudo-random values
 * in [-0.01, 0.01] minus a tenth of the model, so each round depends on the
 * previous global model. */
static float delta_val(unsigned site, unsigned round, size_t i, float w)
{
    uint64_t x = ((uint64_t)site << 48) ^ ((uint64_t)round << 32) ^ (uint64_t)i;
    uint64_t h = fs_splitmix64(&x);
    return (float)(((double)(h >> 11) * 0x1.0p-53 * 2.0 - 1.0) * 0.01) - 0.1f * w;
}

static void make_delta(float *d, unsigned site, unsigned round, const float *w, size_t P)
{
    for (size_t i = 0; i < P; i++) d[i] = delta_val(site, round, i, w[i]);
}

static float *make_w0(size_t P)
{
    float *w = malloc(P * sizeof *w);
    fs_rng r;
    fs_rng_seed(&r, 11, 0);
    for (size_t i = 0; i < P; i++) w[i] = (float)fs_rng_normal(&r) * 0.1f;
    return w;
}

static fs_wire_update_header make_hdr(uint32_t round, const float *d, size_t P, uint64_t n)
{
    fs_wire_update_header h;
    memset(&h, 0, sizeof h);
    h.protocol_version = FS_PROTOCOL_VERSION;
    h.round = round;
    h.num_params = P;
    h.num_samples = n;
    h.train_loss = 0.5f;
    h.global_dice_wt = 0.8f;
    h.global_dice_tc = 0.6f;
    h.global_dice_et = NAN;
    h.train_seconds = 3.25;
    h.crc32 = fs_wire_crc32_f32(0, d, P);
    return h;
}

static fs_status join(fs_round *a, const char *site, uint64_t n, double now)
{
    fs_wire_join_request req;
    memset(&req, 0, sizeof req);
    req.protocol_version = FS_PROTOCOL_VERSION;
    strcpy(req.preset, "tiny");
    req.num_samples = n;
    fs_wire_join_reply rep;
    return fs_round_join(a, site, &req, now, &rep);
}

/* Streams d (P floats) in chunks of `chunk` parameters: begin, chunks, end.
 * Returns the first non-OK status (the upload is always ended). */
static fs_status push(fs_round *a, const char *site, const fs_wire_update_header *h, const float *d,
                      size_t P, size_t chunk, double now)
{
    fs_round_upload *u;
    char why[256];
    fs_status st = fs_round_update_begin(a, site, h, now, &u, why, sizeof why);
    if (st != FS_OK) return st;
    for (size_t off = 0; off < P && st == FS_OK; off += chunk) {
        size_t n = P - off < chunk ? P - off : chunk;
        st = fs_round_update_chunk(a, u, off, (const uint8_t *)(d + off), n * 4, why, sizeof why);
    }
    if (st != FS_OK && fs_round_test_crashed(a)) return st;
    fs_status e = fs_round_update_end(a, u, 0, now, why, sizeof why);
    return st != FS_OK ? st : e;
}

static fs_round *open_or_die(const fs_round_config *c, const float *w0, size_t P, double now)
{
    fs_round *a = NULL;
    fs_status st = fs_round_open(&a, c, w0, P, now);
    if (st != FS_OK) {
        fprintf(stderr, "fs_round_open: %s\n", fs_status_str(st));
        exit(1);
    }
    return a;
}

/* ---- a small JSON checker (one value, nothing after it) ------------------- */

static const char *js_ws(const char *p) { while (*p == ' ' || *p == '\t') p++; return p; }
static const char *js_value(const char *p, int depth);
static const char *js_string(const char *p)
{
    if (*p != '"') return NULL;
    for (p++; *p && *p != '"'; p++) {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p == '\\' && !*++p) return NULL;
    }
    return *p == '"' ? p + 1 : NULL;
}
static const char *js_value(const char *p, int depth)
{
    if (depth > 32) return NULL;
    p = js_ws(p);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        int obj = *p == '{';
        p = js_ws(p + 1);
        if (*p == close) return p + 1;
        for (;;) {
            if (obj) {
                p = js_string(js_ws(p));
                if (!p) return NULL;
                p = js_ws(p);
                if (*p++ != ':') return NULL;
            }
            p = js_value(p, depth + 1);
            if (!p) return NULL;
            p = js_ws(p);
            if (*p == close) return p + 1;
            if (*p++ != ',') return NULL;
        }
    }
    if (*p == '"') return js_string(p);
    if (!strncmp(p, "null", 4) || !strncmp(p, "true", 4)) return p + 4;
    if (!strncmp(p, "false", 5)) return p + 5;
    char *end;
    strtod(p, &end);
    if (end == p || !strncmp(p, "nan", 3) || !strncmp(p, "inf", 3)) return NULL;
    return end;
}

/* Checks the metrics file: `want` lines, each well-formed JSON starting with
 * {"round":k for k = 1..want in order. Returns the number of good lines. */
static int check_metrics(const char *path, int want)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "%s: missing", path);
    if (!f) return 0;
    char line[65536];
    int k = 0, good = 0;
    while (fgets(line, sizeof line, f)) {
        k++;
        size_t n = strlen(line);
        CHECK(n > 0 && line[n - 1] == '\n', "metrics line %d has no newline", k);
        line[n - 1] = 0;
        const char *end = js_value(line, 0);
        CHECK(end && *js_ws(end) == 0, "metrics line %d is not one JSON value: %s", k, line);
        char head[32];
        snprintf(head, sizeof head, "{\"round\":%d,", k);
        CHECK(strncmp(line, head, strlen(head)) == 0, "metrics line %d is not round %d: %.60s", k, k,
              line);
        good += end && strncmp(line, head, strlen(head)) == 0;
    }
    fclose(f);
    CHECK(k == want, "%s: %d lines, want %d", path, k, want);
    return good;
}

static size_t count_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_fedavg(void)
{
    enum { P = 1000 };
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 3, 2, 2, 1.0);
    float *w0 = make_w0(P);
    fs_round *a = open_or_die(&c, w0, P, 0);
    const uint64_t n[3] = {30, 20, 7};
    for (int s = 0; s < 3; s++) CHECK(join(a, SITES[s], n[s], 1) == FS_OK, "join %s", SITES[s]);
    fs_round_view v;
    fs_round_view_get(a, &v);
    CHECK(v.open && v.round == 1 && v.n_selected == 3, "round 1 open with 3 sites (open %d, %zu)",
          v.open, v.n_selected);

    static float d[3][P];
    const size_t chunks[3] = {128, 333, 1000};
    double want[P] = {0};
    for (int s = 0; s < 3; s++) {
        fs_wire_task t;
        CHECK(fs_round_task(a, SITES[s], 2, &t, NULL, 0) == FS_OK && t.action == FS_TASK_TRAIN &&
              t.round == 1 && t.local_epochs == 2 && t.num_params == P,
              "%s gets TRAIN(1)", SITES[s]);
        const float *m;
        size_t mp;
        uint32_t crc;
        CHECK(fs_round_model(a, SITES[s], 1, &m, &mp, &crc, NULL, 0) == FS_OK && mp == P &&
              crc == t.model_crc32 && memcmp(m, w0, sizeof(float) * P) == 0,
              "model for round 1 is w0");
        make_delta(d[s], (unsigned)s, 1, w0, P);
        fs_wire_update_header h = make_hdr(1, d[s], P, n[s]);
        CHECK(push(a, SITES[s], &h, d[s], P, chunks[s], 3 + s) == FS_OK, "update of %s", SITES[s]);
        if (s == 1) { /* the running sum after two sites is n1 d1 + n2 d2 */
            fs_round_view_get(a, &v);
            float ws[P];
            for (int i = 0; i < P; i++) ws[i] = (float)((double)n[0] * d[0][i] + (double)n[1] * d[1][i]);
            check_close("sum after 2 sites", v.sum, ws, P, 1e-6f, 1e-5f);
            CHECK(v.weight == 50 && v.n_submitted == 2, "weight %g after 2 sites", v.weight);
        }
    }
    for (int i = 0; i < P; i++) {
        double acc = 0;
        for (int s = 0; s < 3; s++) acc += (double)n[s] * d[s][i];
        want[i] = acc / (double)(n[0] + n[1] + n[2]);
    }
    fs_round_view_get(a, &v);
    CHECK(v.completed == 1 && v.round == 2, "round 1 closed (completed %u)", v.completed);
    float got[P], wantf[P];
    for (int i = 0; i < P; i++) {
        got[i] = v.model[i] - w0[i];
        wantf[i] = (float)want[i];
    }
    check_close("w1 - w0 vs weighted mean", got, wantf, P, 2e-7f, 1e-4f);

    fs_ckpt_meta meta;
    float *ck = NULL;
    char path[512];
    snprintf(path, sizeof path, "%s/global.ckpt", dir);
    CHECK(fs_ckpt_read(path, &meta, &ck, NULL, NULL, NULL) == FS_OK, "read %s", path);
    if (ck) {
        CHECK(meta.epoch == 1 && meta.nparams == P && !strcmp(meta.preset, "tiny") && meta.base == 8,
              "checkpoint meta: epoch %u preset %s", meta.epoch, meta.preset);
        CHECK(memcmp(ck, v.model, sizeof(float) * P) == 0, "checkpoint holds w1");
        free(ck);
    }
    snprintf(path, sizeof path, "%s/round.state", dir);
    FILE *f = fopen(path, "r");
    char buf[512] = "";
    if (f) { size_t k = fread(buf, 1, sizeof buf - 1, f); buf[k] = 0; fclose(f); }
    CHECK(strstr(buf, "completed_round 1\n") != NULL, "state file says round 1: %s", buf);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    check_metrics(path, 1);
    f = fopen(path, "r");
    char line[4096] = "";
    if (f) { if (!fgets(line, sizeof line, f)) line[0] = 0; fclose(f); }
    CHECK(strstr(line, "\"sites_reported\":3") && strstr(line, "\"site\":\"site_2\"") &&
          strstr(line, "\"global_dice_et\":null") && strstr(line, "\"bytes_received\":4000") &&
          strstr(line, "\"num_samples\":57"), "metrics content: %s", line);
    snprintf(path, sizeof path, "%s/spool", dir);
    CHECK(count_files(path) == 0, "spools deleted after the close");
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
}

/* Sends stderr to a file until stop_capture, which returns its text
 * (malloc'ed) and echoes it to the real stderr. */
static int saved_fd = -1;
static void start_capture(const char *path)
{
    fflush(stderr);
    saved_fd = dup(2);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    dup2(fd, 2);
    close(fd);
}
static char *stop_capture(const char *path)
{
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    FILE *f = fopen(path, "rb");
    char *text = calloc(1, 1 << 20);
    if (f) {
        size_t n = fread(text, 1, (1 << 20) - 1, f);
        text[n] = 0;
        fclose(f);
    }
    fputs(text, stderr);
    unlink(path);
    return text;
}

static void test_refusals(void)
{
    enum { P = 1000 };
    char *dir = make_dir();
    char logpath[512];
    snprintf(logpath, sizeof logpath, "%s.log", dir);
    fs_log_level level = fs_log_get_level();
    fs_log_set_level(FS_LOG_WARN);
    start_capture(logpath);
    fs_round_config c = make_cfg(dir, 3, 1, 2, 1.0);
    float *w0 = make_w0(P);
    fs_round *a = open_or_die(&c, w0, P, 0);
    const uint64_t n[3] = {5, 9, 13};
    CHECK(join(a, "site_9", 5, 1) == FS_ERR_NOT_FOUND, "unknown site joined");
    CHECK(join(a, "evil\n\x1b[2J", 5, 1) == FS_ERR_NOT_FOUND, "unknown site joined");
    fs_wire_join_request jr;
    memset(&jr, 0, sizeof jr);
    strcpy(jr.preset, "ref");
    jr.num_samples = 5;
    fs_wire_join_reply rep;
    CHECK(fs_round_join(a, "site_1", &jr, 1, &rep) == FS_ERR_MISMATCH && !rep.accepted &&
          strstr(rep.reason, "preset"), "wrong preset joined (%s)", rep.reason);
    for (int s = 0; s < 3; s++) join(a, SITES[s], n[s], 1);

    static float d[3][P];
    for (int s = 0; s < 3; s++) make_delta(d[s], (unsigned)s, 1, w0, P);
    fs_wire_update_header h1 = make_hdr(1, d[0], P, n[0]);
    CHECK(push(a, "site_1", &h1, d[0], P, 100, 2) == FS_OK, "valid update refused");

    fs_round_view v;
    fs_round_view_get(a, &v);
    float *sum0 = malloc(sizeof(float) * P);
    memcpy(sum0, v.sum, sizeof(float) * P);
    double weight0 = v.weight;
    char why[256];
    fs_wire_task t;
    const float *m;
    size_t mp;
    uint32_t mcrc;
    fs_round_upload *u;
    fs_status st;
    fs_wire_update_header h2 = make_hdr(1, d[1], P, n[1]);

#define EXPECT(expr, code, what) do { st = (expr); \
        CHECK(st == (code), "%s: got %s, want %s", what, fs_status_str(st), fs_status_str(code)); \
        fs_round_view_get(a, &v); \
        CHECK(memcmp(v.sum, sum0, sizeof(float) * P) == 0 && v.weight == weight0, "%s changed the sum", what); \
        CHECK(v.open && v.round == 1 && v.n_submitted == 1, "%s disturbed the round", what); } while (0)

    EXPECT(fs_round_task(a, "mallory", 3, &t, why, sizeof why), FS_ERR_NOT_FOUND, "task from unknown");
    CHECK(strstr(why, "not on the site list") != NULL, "reason: %s", why);
    EXPECT(fs_round_model(a, "mallory", 1, &m, &mp, &mcrc, why, sizeof why), FS_ERR_NOT_FOUND, "model to unknown");
    EXPECT(fs_round_model(a, "site_2", 2, &m, &mp, &mcrc, why, sizeof why), FS_ERR_MISMATCH, "model of a future round");
    EXPECT(push(a, "mallory", &h2, d[1], P, 100, 3), FS_ERR_NOT_FOUND, "update from unknown");
    EXPECT(push(a, "site_1", &h1, d[0], P, 100, 3), FS_ERR_MISMATCH, "second submission");
    fs_wire_update_header hb = h2;
    hb.num_params = P + 1;
    EXPECT(push(a, "site_2", &hb, d[1], P, 100, 3), FS_ERR_MISMATCH, "wrong num_params");
    hb = h2;
    hb.round = 2;
    EXPECT(push(a, "site_2", &hb, d[1], P, 100, 3), FS_ERR_MISMATCH, "future round");
    hb = h2;
    hb.crc32 ^= 1;
    EXPECT(push(a, "site_2", &hb, d[1], P, 100, 3), FS_ERR_CHECKSUM, "bad CRC");

    /* chunk-level refusals: each kills the upload; later chunks and end refuse too */
    struct { uint64_t off; size_t len; int poison; fs_status want; const char *what; } bad[] = {
        {200, 400, 0, FS_ERR_FORMAT, "chunk skipping ahead"},
        {0, 400, 0, FS_ERR_FORMAT, "chunk repeated"},
        {100, 6, 0, FS_ERR_FORMAT, "chunk not a multiple of 4"},
        {100, 0, 0, FS_ERR_FORMAT, "empty chunk"},
        {100, 4 * (P - 100) + 4, 0, FS_ERR_FORMAT, "oversized stream"},
        {100, 400, 1, FS_ERR_NUMERIC, "NaN"},
        {100, 400, 2, FS_ERR_NUMERIC, "Inf"},
    };
    float *tmp = malloc(sizeof(float) * (P + 1));
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        memcpy(tmp, d[1], sizeof(float) * P);
        tmp[P] = 0.5f;
        if (bad[k].poison == 1) tmp[150] = NAN;
        if (bad[k].poison == 2) tmp[199] = -INFINITY;
        EXPECT(fs_round_update_begin(a, "site_2", &h2, 3, &u, why, sizeof why), FS_OK, "begin");
        EXPECT(fs_round_update_chunk(a, u, 0, (const uint8_t *)tmp, 400, why, sizeof why), FS_OK, "first chunk");
        EXPECT(fs_round_update_chunk(a, u, bad[k].off, (const uint8_t *)(tmp + bad[k].off), bad[k].len,
                                     why, sizeof why), bad[k].want, bad[k].what);
        EXPECT(fs_round_update_chunk(a, u, 100, (const uint8_t *)(tmp + 100), 400, why, sizeof why),
               bad[k].want, "chunk after a refusal");
        EXPECT(fs_round_update_end(a, u, 0, 3, why, sizeof why), bad[k].want, "end after a refusal");
    }
    /* an extra chunk after the full model */
    memcpy(tmp, d[1], sizeof(float) * P);
    EXPECT(fs_round_update_begin(a, "site_2", &h2, 3, &u, why, sizeof why), FS_OK, "begin");
    for (size_t off = 0; off < P; off += 250)
        EXPECT(fs_round_update_chunk(a, u, off, (const uint8_t *)(tmp + off), 1000, why, sizeof why),
               FS_OK, "chunk");
    EXPECT(fs_round_update_chunk(a, u, P, (const uint8_t *)tmp, 4, why, sizeof why), FS_ERR_FORMAT, "chunk past the end");
    EXPECT(fs_round_update_end(a, u, 0, 3, why, sizeof why), FS_ERR_FORMAT, "end after the extra chunk");
    /* a short stream */
    EXPECT(fs_round_update_begin(a, "site_2", &h2, 3, &u, why, sizeof why), FS_OK, "begin");
    EXPECT(fs_round_update_chunk(a, u, 0, (const uint8_t *)d[1], 4 * (P - 10), why, sizeof why), FS_OK, "chunk");
    EXPECT(fs_round_update_end(a, u, 0, 3, why, sizeof why), FS_ERR_FORMAT, "short stream");
    CHECK(strstr(why, "990 of 1000") != NULL, "reason: %s", why);
    /* two uploads of one site at once; then the stream breaks */
    EXPECT(fs_round_update_begin(a, "site_2", &h2, 3, &u, why, sizeof why), FS_OK, "begin");
    fs_round_upload *u2;
    EXPECT(fs_round_update_begin(a, "site_2", &h2, 3, &u2, why, sizeof why), FS_ERR_MISMATCH, "concurrent upload");
    EXPECT(fs_round_task(a, "site_2", 3, &t, why, sizeof why), FS_OK, "task during upload");
    CHECK(t.action == FS_TASK_WAIT, "TRAIN during an upload");
    EXPECT(fs_round_update_chunk(a, u, 0, (const uint8_t *)d[1], 400, why, sizeof why), FS_OK, "chunk");
    EXPECT(fs_round_update_end(a, u, 1, 3, why, sizeof why), FS_ERR_FORMAT, "broken stream");
    /* a replayed chunk of garbage data announced with a wrong round id */
    hb = h2;
    hb.round = 0;
    EXPECT(push(a, "site_2", &hb, d[1], P, 100, 3), FS_ERR_MISMATCH, "round 0");
#undef EXPECT
    char spool[512];
    snprintf(spool, sizeof spool, "%s/spool", dir);
    CHECK(count_files(spool) == 1, "refused uploads left %zu spool files (want only site_1's)",
          count_files(spool));

    /* the refused site can still send its valid update; the round completes */
    CHECK(push(a, "site_2", &h2, d[1], P, 256, 4) == FS_OK, "valid update of site_2 after refusals");
    fs_wire_update_header h3 = make_hdr(1, d[2], P, n[2]);
    CHECK(push(a, "site_3", &h3, d[2], P, 1000, 5) == FS_OK, "valid update of site_3");
    fs_round_view_get(a, &v);
    CHECK(v.finished && v.completed == 1, "federation finished after its one round");
    float got[P], want[P];
    for (int i = 0; i < P; i++) {
        double acc = 0;
        for (int s = 0; s < 3; s++) acc += (double)n[s] * d[s][i];
        want[i] = (float)(acc / (double)(n[0] + n[1] + n[2]));
        got[i] = v.model[i] - w0[i];
    }
    check_close("model after refusals", got, want, P, 2e-7f, 1e-4f);
    CHECK(fs_round_task(a, "site_1", 6, &t, NULL, 0) == FS_OK && t.action == FS_TASK_FINISHED,
          "FINISHED after the last round");
    CHECK(push(a, "site_1", &h1, d[0], P, 100, 6) == FS_ERR_MISMATCH, "update after the end");
    CHECK(count_files(spool) == 0, "spools left after the close");
    char *log = stop_capture(logpath);
    fs_log_set_level(level);
    static const char *lines[] = {
        "site site_9 refused: not on the site list",
        "site evil??[2J refused: not on the site list",
        "site site_1 refused: model preset 'ref' differs",
        "site mallory refused: not on the site list",
        "site site_2 refused: the model for round 2 is not available",
        "site site_1 refused: already submitted its update for round 1",
        "site site_2 refused: num_params 1001 differs",
        "site site_2 refused: update for round 2: that round has not started",
        "site site_2 refused: update for round 1: CRC-32",
        "site site_2 refused: update for round 1: chunk at parameter 200, expected 100",
        "site site_2 refused: update for round 1: chunk of 6 bytes",
        "site site_2 refused: update for round 1: stream larger than the announced 1000 parameters",
        "site site_2 refused: update for round 1: parameter 150 is NaN or Inf",
        "site site_2 refused: update for round 1: parameter 199 is NaN or Inf",
        "site site_2 refused: update for round 1: already refused",
        "site site_2 refused: update for round 1: the stream ended after 990 of 1000",
        "site site_2 refused: another upload of this site for round 1 is in progress",
        "site site_2 refused: update for round 1: the stream broke after 100 of 1000",
        "site site_2 refused: update for round 0: that round is over (current round 1); stale or replayed",
        "site site_1 refused: update for round 1: the federation finished after round 1",
    };
    for (size_t k = 0; k < sizeof lines / sizeof lines[0]; k++)
        CHECK(strstr(log, lines[k]) != NULL, "not logged: %s", lines[k]);
    CHECK(strchr(log, 0x1b) == NULL, "a control character from an identity reached the log");
    free(log);
    free(tmp);
    free(sum0);
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
}

static void test_deadline(void)
{
    enum { P = 1000 };
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 3, 2, 2, 1.0);
    float *w0 = make_w0(P);
    fs_round *a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < 3; s++) join(a, SITES[s], 10 + (uint64_t)s, 0);
    static float d[2][P];
    for (int s = 0; s < 2; s++) {
        make_delta(d[s], (unsigned)s, 1, w0, P);
        fs_wire_update_header h = make_hdr(1, d[s], P, 10 + (uint64_t)s);
        CHECK(push(a, SITES[s], &h, d[s], P, 300, 10) == FS_OK, "update of %s", SITES[s]);
    }
    fs_round_view v;
    CHECK(fs_round_tick(a, 50) == FS_OK, "tick");
    fs_round_view_get(a, &v);
    CHECK(v.completed == 0 && v.open, "closed before the deadline");
    CHECK(fs_round_tick(a, 100.5) == FS_OK, "tick");
    fs_round_view_get(a, &v);
    CHECK(v.completed == 1, "not closed at the deadline with 2 of 3 (min 2)");
    float got[P], want[P];
    for (int i = 0; i < P; i++) {
        want[i] = (float)((10.0 * d[0][i] + 11.0 * d[1][i]) / 21.0);
        got[i] = v.model[i] - w0[i];
    }
    check_close("deadline mean of 2 sites", got, want, P, 2e-7f, 1e-4f);
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    check_metrics(path, 1);
    FILE *f = fopen(path, "r");
    char line[4096] = "";
    if (f) { if (!fgets(line, sizeof line, f)) line[0] = 0; fclose(f); }
    CHECK(strstr(line, "\"closed_by\":\"deadline\"") && strstr(line, "\"missing\":[{\"site\":\"site_3\""),
          "metrics name the deadline and the missing site: %s", line);

    /* round 2: the silent site is back and trains; a replay of round 1 is refused */
    fs_wire_task t;
    CHECK(fs_round_task(a, "site_3", 101, &t, NULL, 0) == FS_OK && t.action == FS_TASK_TRAIN &&
          t.round == 2, "silent site trains in round 2 (action %d round %u)", t.action, t.round);
    fs_round_view_get(a, &v);
    float *sum0 = malloc(sizeof(float) * P);
    memcpy(sum0, v.sum, sizeof(float) * P);
    fs_wire_update_header old = make_hdr(1, d[0], P, 10);
    char why[256];
    fs_round_upload *u;
    CHECK(fs_round_update_begin(a, "site_1", &old, 102, &u, why, sizeof why) == FS_ERR_MISMATCH &&
          strstr(why, "replayed"), "replayed round-1 update: %s", why);
    fs_round_view_get(a, &v);
    CHECK(memcmp(v.sum, sum0, sizeof(float) * P) == 0 && v.open && v.round == 2, "replay disturbed round 2");
    free(sum0);
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
}

static void test_min_sites(void)
{
    enum { P = 1000 };
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 3, 1, 2, 1.0);
    float *w0 = make_w0(P);
    fs_round *a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < 3; s++) join(a, SITES[s], 10, 0);
    static float d[P];
    make_delta(d, 0, 1, w0, P);
    fs_wire_update_header h = make_hdr(1, d, P, 10);
    CHECK(push(a, "site_1", &h, d, P, 500, 10) == FS_OK, "update");
    fs_round_view v;
    fs_round_tick(a, 101);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 0 && v.open && v.n_submitted == 1, "closed with 1 < min_sites 2");
    CHECK(v.deadline > 101, "deadline not extended (%g)", v.deadline);
    make_delta(d, 1, 1, w0, P);
    h = make_hdr(1, d, P, 10);
    CHECK(push(a, "site_2", &h, d, P, 500, 150) == FS_OK, "update");
    fs_round_tick(a, 199);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 0, "closed before the extended deadline");
    fs_round_tick(a, 202);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 1, "not closed at the extended deadline with 2 reports");
    fs_round_free(a);
    rm_rf(dir);

    /* top-up: 4 sites, fraction 0.5 → 2 selected; one of them goes silent;
     * at the deadline an active unselected site is added. */
    c = make_cfg(dir, 4, 1, 2, 0.5);
    c.site_timeout_s = 30;
    mkdir(dir, 0755);
    a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < 4; s++) join(a, SITES[s], 10, 0);
    fs_round_view_get(a, &v);
    CHECK(v.open && v.n_selected == 2, "fraction 0.5 of 4 selects %zu", v.n_selected);
    int sel[4], first_sel = -1;
    for (int s = 0; s < 4; s++) {
        sel[s] = fs_round_is_selected(a, SITES[s]);
        if (sel[s] && first_sel < 0) first_sel = s;
    }
    make_delta(d, (unsigned)first_sel, 1, w0, P);
    h = make_hdr(1, d, P, 10);
    CHECK(push(a, SITES[first_sel], &h, d, P, 500, 80) == FS_OK, "update of the first selected");
    fs_wire_task t;
    for (int s = 0; s < 4; s++)
        if (!sel[s]) fs_round_task(a, SITES[s], 90, &t, NULL, 0); /* the unselected stay active */
    fs_round_tick(a, 101);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 0 && v.n_selected == 3, "top-up: %zu selected after the deadline", v.n_selected);
    int added = -1;
    for (int s = 0; s < 4; s++)
        if (!sel[s] && fs_round_is_selected(a, SITES[s])) added = s;
    CHECK(added >= 0 && fs_round_task(a, SITES[added], 102, &t, NULL, 0) == FS_OK &&
          t.action == FS_TASK_TRAIN, "the added site gets TRAIN");
    if (added >= 0) {
        make_delta(d, (unsigned)added, 1, w0, P);
        h = make_hdr(1, d, P, 10);
        CHECK(push(a, SITES[added], &h, d, P, 500, 110) == FS_OK, "update of the added site");
        fs_round_tick(a, 202);
        fs_round_view_get(a, &v);
        CHECK(v.completed == 1, "round with the topped-up site did not close");
    }
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
}

/* The selection of round 1 as a bit mask, for a fresh aggregator. */
static unsigned selection_mask(uint64_t seed)
{
    enum { P = 16 };
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 10, 1, 2, 0.5);
    c.seed = seed;
    float w0[P] = {0};
    fs_round *a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < 10; s++) join(a, SITES[s], 10, 0);
    unsigned mask = 0;
    for (int s = 0; s < 10; s++) mask |= (unsigned)fs_round_is_selected(a, SITES[s]) << s;
    fs_round_free(a);
    rm_rf(dir);
    free(dir);
    return mask;
}

static void test_partial(void)
{
    enum { P = 1000, R = 4 };
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 10, R, 2, 0.5);
    float *w0 = make_w0(P);
    fs_round *a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < 10; s++) join(a, SITES[s], 10 + (uint64_t)s, 0);
    static float d[P];
    unsigned masks[R];
    double now = 1;
    for (int r = 1; r <= R; r++) {
        fs_round_view v;
        fs_round_view_get(a, &v);
        CHECK(v.open && v.round == (uint32_t)r && v.n_selected == 5, "round %d selects %zu of 10", r,
              v.n_selected);
        masks[r - 1] = 0;
        for (int s = 0; s < 10; s++) masks[r - 1] |= (unsigned)fs_round_is_selected(a, SITES[s]) << s;
        CHECK(__builtin_popcount(masks[r - 1]) == 5, "mask has %d sites", __builtin_popcount(masks[r - 1]));
        for (int s = 0; s < 10; s++) {
            fs_wire_task t;
            fs_round_task(a, SITES[s], now, &t, NULL, 0);
            int selected = (masks[r - 1] >> s) & 1;
            CHECK(t.action == (selected ? FS_TASK_TRAIN : FS_TASK_WAIT), "round %d %s: action %d", r,
                  SITES[s], t.action);
            make_delta(d, (unsigned)s, (unsigned)r, v.model, P);
            fs_wire_update_header h = make_hdr((uint32_t)r, d, P, 10 + (uint64_t)s);
            if (!selected) {
                CHECK(push(a, SITES[s], &h, d, P, 1000, now) == FS_ERR_MISMATCH,
                      "unselected %s accepted in round %d", SITES[s], r);
            }
        }
        for (int s = 0; s < 10; s++) {
            if (!((masks[r - 1] >> s) & 1)) continue;
            make_delta(d, (unsigned)s, (unsigned)r, v.model, P);
            fs_wire_update_header h = make_hdr((uint32_t)r, d, P, 10 + (uint64_t)s);
            CHECK(push(a, SITES[s], &h, d, P, 1000, now) == FS_OK, "round %d %s", r, SITES[s]);
            now += 1;
        }
    }
    int distinct = 0;
    for (int r = 1; r < R; r++) distinct += masks[r] != masks[0];
    CHECK(distinct > 0, "the same 5 sites in every round");
    CHECK(masks[0] == selection_mask(7), "the selection is not reproducible for the same seed");
    CHECK(selection_mask(7) != selection_mask(8) || selection_mask(7) != selection_mask(9),
          "the seed has no effect on the selection");
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    check_metrics(path, R);
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
}

/* ---- crash simulation ------------------------------------------------------ */

enum { CP = 1000, CR = 3 };
static const uint64_t CN[3] = {17, 5, 29};

/* Damages the journal the way a crash could, and worse: repeats its last
 * `accept` record (a replay must never count an update twice), then appends
 * an unfinished record (what a kill in the middle of an append leaves). */
static void tear_journal(const char *dir)
{
    char path[512], line[1024], last[1024] = "";
    snprintf(path, sizeof path, "%s/journal", dir);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, " accept ")) strcpy(last, line);
    if (f) fclose(f);
    f = fopen(path, "a");
    if (f) {
        fputs(last, f);
        fputs("J 1234abcd accept 9 site_2 1", f);
        fclose(f);
    }
}

/* Runs the scripted federation (3 sites, 3 rounds; site_3 silent in round 2,
 * which closes at its deadline), with a crash armed at (point, nth); after
 * each crash the object is abandoned, the journal torn, and the federation
 * reopened from its folder. The final model goes to out. Returns the number
 * of crashes that happened. */
static int run_federation(fs_round_crash point, unsigned nth, float *out, const char *tag)
{
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 3, CR, 2, 1.0);
    float *w0 = make_w0(CP);
    double now = 0;
    fs_round *a = open_or_die(&c, w0, CP, now);
    if (point) fs_round_test_crash(a, point, nth);
    for (int s = 0; s < 3; s++) join(a, SITES[s], CN[s], now);
    static float d[CP];
    int crashes = 0, guard = 0;
    fs_round_view v;
    for (;;) {
        fs_round_view_get(a, &v);
        if (v.finished || ++guard > 100) break;
        int progressed = 0;
        for (int s = 0; s < 3 && !progressed; s++) {
            if (v.round == 2 && s == 2) continue;
            fs_wire_task t;
            now += 1;
            if (fs_round_task(a, SITES[s], now, &t, NULL, 0) != FS_OK || t.action != FS_TASK_TRAIN)
                continue;
            const float *m;
            size_t mp;
            uint32_t crc;
            CHECK(fs_round_model(a, SITES[s], t.round, &m, &mp, &crc, NULL, 0) == FS_OK,
                  "%s: model for round %u", tag, t.round);
            make_delta(d, (unsigned)s, t.round, m, CP);
            fs_wire_update_header h = make_hdr(t.round, d, CP, CN[s]);
            fs_status st = push(a, SITES[s], &h, d, CP, 300, now);
            progressed = 1;
            if (st == FS_OK) continue;
            CHECK(fs_round_test_crashed(a), "%s: update of %s refused: %s", tag, SITES[s],
                  fs_status_str(st));
            crashes++;
            fs_round_abandon(a);
            tear_journal(dir);
            a = open_or_die(&c, NULL, CP, now);
            /* Resend the same update: accepted only if it was not committed. */
            int committed = point != FS_CRASH_MID_UPLOAD && point != FS_CRASH_AFTER_SPOOL;
            st = push(a, SITES[s], &h, d, CP, 300, now);
            CHECK(st == (committed ? FS_ERR_MISMATCH : FS_OK), "%s: resent update of %s: %s", tag,
                  SITES[s], fs_status_str(st));
        }
        if (progressed) continue;
        now += 101; /* past the deadline */
        if (fs_round_tick(a, now) != FS_OK && fs_round_test_crashed(a)) {
            crashes++;
            fs_round_abandon(a);
            tear_journal(dir);
            a = open_or_die(&c, NULL, CP, now);
        }
    }
    fs_round_view_get(a, &v);
    CHECK(v.finished && v.completed == CR, "%s: finished %d after %u rounds", tag, v.finished, v.completed);
    memcpy(out, v.model, sizeof(float) * CP);
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    check_metrics(path, CR);
    snprintf(path, sizeof path, "%s/spool", dir);
    CHECK(count_files(path) == 0, "%s: %zu spool files left", tag, count_files(path));
    /* no temporary checkpoint left, and the checkpoint holds the final model */
    DIR *dd = opendir(dir);
    struct dirent *e;
    while (dd && (e = readdir(dd)))
        CHECK(strncmp(e->d_name, ".global.ckpt.tmp", 16) != 0, "%s: %s left behind", tag, e->d_name);
    if (dd) closedir(dd);
    snprintf(path, sizeof path, "%s/global.ckpt", dir);
    fs_ckpt_meta meta;
    float *ck = NULL;
    if (fs_ckpt_read(path, &meta, &ck, NULL, NULL, NULL) == FS_OK) {
        CHECK(meta.epoch == CR && memcmp(ck, out, sizeof(float) * CP) == 0,
              "%s: checkpoint differs from the final model", tag);
        free(ck);
    } else {
        CHECK(0, "%s: cannot read the final checkpoint", tag);
    }
    /* a fresh open of the finished federation says finished, same model */
    fs_round_free(a);
    a = open_or_die(&c, NULL, CP, now + 1);
    fs_round_view_get(a, &v);
    CHECK(v.finished && memcmp(v.model, out, sizeof(float) * CP) == 0, "%s: reopened state differs", tag);
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
    return crashes;
}

static void test_crash(void)
{
    static float ref[CP], got[CP];
    CHECK(run_federation(FS_CRASH_NONE, 0, ref, "reference") == 0, "reference run crashed");
    static const struct { fs_round_crash p; const char *name; } pts[] = {
        {FS_CRASH_MID_UPLOAD, "mid-upload"},        {FS_CRASH_AFTER_SPOOL, "after spool"},
        {FS_CRASH_AFTER_JOURNAL, "after journal"},  {FS_CRASH_AFTER_CLOSE_RECORD, "after close record"},
        {FS_CRASH_IN_CKPT, "during checkpoint"},    {FS_CRASH_AFTER_CKPT, "after checkpoint"},
        {FS_CRASH_AFTER_STATE, "after state"},      {FS_CRASH_AFTER_METRICS, "after metrics"},
    };
    /* nth: for upload points 1 = round 1 site_1, 3 = round 1 site_3 (the
     * closing one), 5 = round 2 site_2; for close points 1 = round 1 (closed
     * by the last update), 2 = round 2 (closed at its deadline by a tick),
     * 3 = round 3 (the last). */
    for (size_t k = 0; k < sizeof pts / sizeof pts[0]; k++) {
        int close_point = pts[k].p >= FS_CRASH_AFTER_CLOSE_RECORD;
        const unsigned nths_upload[] = {1, 3, 5}, nths_close[] = {1, 2, 3};
        const unsigned *nths = close_point ? nths_close : nths_upload;
        for (int j = 0; j < 3; j++) {
            unsigned nth = nths[j];
            if (pts[k].p == FS_CRASH_MID_UPLOAD) nth = nth * 4 - 2; /* 4 chunks per upload: the 2nd */
            char tag[96];
            snprintf(tag, sizeof tag, "crash %s #%u", pts[k].name, nth);
            memset(got, 0, sizeof got);
            int crashes = run_federation(pts[k].p, nth, got, tag);
            CHECK(crashes == 1, "%s: %d crashes happened, want 1", tag, crashes);
            CHECK(memcmp(got, ref, sizeof got) == 0, "%s: final model differs from the crash-free run", tag);
        }
    }
}

/* ---- memory ----------------------------------------------------------------- */

static long peak_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void test_memory(void)
{
    const size_t P = 2000000, CH = FS_CHUNK_PARAMS;
    const int S = 20;
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, (size_t)S, 1, (uint32_t)S, 1.0);
    float *w0 = calloc(P, sizeof *w0);
    float *chunk = malloc(CH * sizeof *chunk);
    for (size_t i = 0; i < P; i++) w0[i] = (float)(i % 97) * 1e-3f;
    for (size_t i = 0; i < CH; i++) chunk[i] = 0;
    long base = peak_rss_kb();
    fs_round *a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < S; s++) join(a, SITES[s], 100 + (uint64_t)s, 0);
    char why[256];
    for (int s = 0; s < S; s++) {
        uint32_t crc = 0;
        for (size_t off = 0; off < P; off += CH) {
            size_t n = P - off < CH ? P - off : CH;
            for (size_t i = 0; i < n; i++) chunk[i] = delta_val((unsigned)s, 1, off + i, w0[off + i]);
            crc = fs_wire_crc32_f32(crc, chunk, n);
        }
        fs_wire_update_header h = make_hdr(1, chunk, 1, 100 + (uint64_t)s);
        h.num_params = P;
        h.crc32 = crc;
        fs_round_upload *u;
        fs_status st = fs_round_update_begin(a, SITES[s], &h, 1, &u, why, sizeof why);
        CHECK(st == FS_OK, "begin %s: %s", SITES[s], why);
        if (st != FS_OK) continue;
        for (size_t off = 0; off < P && st == FS_OK; off += CH) {
            size_t n = P - off < CH ? P - off : CH;
            for (size_t i = 0; i < n; i++) chunk[i] = delta_val((unsigned)s, 1, off + i, w0[off + i]);
            st = fs_round_update_chunk(a, u, off, (const uint8_t *)chunk, n * 4, why, sizeof why);
        }
        CHECK(fs_round_update_end(a, u, 0, 2, why, sizeof why) == FS_OK && st == FS_OK,
              "update of %s: %s", SITES[s], why);
    }
    fs_round_view v;
    fs_round_view_get(a, &v);
    long grown = peak_rss_kb() - base;
    long model_kb = (long)(P * 4 / 1024);
    fprintf(stderr, "memory: P = %zu, %d sites: peak RSS grew by %ld KiB (%.2f × the model's %ld KiB; "
            "all updates would be %ld KiB)\n", P, S, grown, (double)grown / (double)model_kb, model_kb,
            model_kb * S);
    CHECK(v.completed == 1, "the 20-site round did not close");
    CHECK(grown < 3 * model_kb + 4096, "peak RSS grew by %ld KiB > 3 models + 4 MiB", grown);
    /* spot-check the mean at sampled indices, in double */
    double wsum = 0;
    for (int s = 0; s < S; s++) wsum += 100 + s;
    size_t bad = 0;
    for (size_t i = 0; i < P; i += 9973) {
        double acc = 0;
        for (int s = 0; s < S; s++) acc += (100.0 + s) * delta_val((unsigned)s, 1, i, w0[i]);
        double want = w0[i] + acc / wsum, got = v.model[i];
        if (fabs(got - want) > 1e-6 + 1e-4 * fabs(want)) {
            if (bad++ < 3) fprintf(stderr, "  model[%zu] = %.9g, want %.9g\n", i, got, want);
        }
    }
    CHECK(bad == 0, "%zu sampled parameters off the weighted mean", bad);
    fs_round_free(a);
    free(w0);
    free(chunk);
    rm_rf(dir);
    free(dir);
}

int main(int argc, char **argv)
{
    fs_log_set_level(getenv("FS_TEST_VERBOSE") ? FS_LOG_INFO : FS_LOG_ERROR);
    const char *only = argc > 1 ? argv[1] : NULL;
    static const struct { const char *name; void (*fn)(void); } tests[] = {
        /* memory first: its baseline is the process's peak RSS so far */
        {"memory", test_memory},   {"fedavg", test_fedavg},       {"refusals", test_refusals},
        {"deadline", test_deadline}, {"min_sites", test_min_sites}, {"partial", test_partial},
        {"crash", test_crash},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (only && strcmp(only, tests[i].name) != 0) continue;
        int before = check_failures_;
        tests[i].fn();
        fprintf(stderr, "%-10s %s\n", tests[i].name, check_failures_ == before ? "ok" : "FAILED");
    }
    return check_result();
}
