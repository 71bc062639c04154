/*
 * tests/test_noniid_round.c — the round state machine (aggregator/round.c)
 * with the non-IID algorithms, with a fake clock and no network:
 *   fedadam    3 sites, 3 rounds: each w_r equals FedAdam's step (Reddi et
 *              al. Algorithm 2, computed here in double from the deltas) of
 *              w_{r-1} with the sample-weighted mean delta
 *   crash      FedAdam and FedYogi killed at every commit step of round 2's
 *              close, reopened from the folder: the final model equals the
 *              crash-free run's bit for bit (the moments were restored)
 *   switch     a FedAdam state folder reopened as FedYogi is refused
 *   median     an outlier site (updates 10^4 times larger): with the median
 *              rule the new model stays within the honest sites' range; with
 *              the mean it does not
 *   partial    fraction 0.5 of 6 sites: w_1 − w_0 is the sample-weighted mean
 *              over the selected sites only
 *   scaffold   downloads are [w | c] (2P), updates of P values refused, c_1 =
 *              (|S|/N)·weighted mean of the Δc_i; the task says scaffold and
 *              local_norm and the wire carries both flags
 *   fedbn      with a local mask, an update with a non-zero delta on a masked
 *              parameter is refused (FS_ERR_FORMAT), one with zeros there
 *              (−0 included) accepted, and the masked parameters keep w_0
 */
#include "check.h"
#include "round_fixture.h"
#include "aggregator/round.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/wire.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *SITES[6] = {"site_1", "site_2", "site_3", "site_4", "site_5", "site_6"};
static const uint64_t NS[6] = {17, 5, 29, 11, 8, 23};

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}
static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static char *make_dir(void)
{
    char *d = strdup("noniid_test_XXXXXX");
    if (!mkdtemp(d)) { perror("mkdtemp"); exit(1); }
    return d;
}

static fs_round_config make_cfg(const char *dir, size_t n_sites, uint32_t rounds, double fraction)
{
    fs_round_config c = fs_test_round_config(dir, SITES, n_sites, rounds, 1);
    c.fraction = fraction;
    c.seed = 3;
    return c;
}

/* Deterministic delta of site s for round r (depends on the model too). */
static void make_delta(float *d, unsigned s, unsigned r, const float *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t x = ((uint64_t)s << 48) ^ ((uint64_t)r << 32) ^ (uint64_t)i;
        uint64_t h = fs_splitmix64(&x);
        d[i] = (float)(((double)(h >> 11) * 0x1.0p-53 * 2.0 - 1.0) * 0.01) - 0.05f * w[i];
    }
}

static float *make_w0(size_t P)
{
    float *w = malloc(P * sizeof *w);
    fs_rng r;
    fs_rng_seed(&r, 11, 0);
    for (size_t i = 0; i < P; i++) w[i] = (float)fs_rng_normal(&r) * 0.1f;
    return w;
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

static fs_status push(fs_round *a, const char *site, uint32_t round, const float *d, size_t n,
                      uint64_t samples, double now)
{
    fs_wire_update_header h;
    memset(&h, 0, sizeof h);
    h.protocol_version = FS_PROTOCOL_VERSION;
    h.round = round;
    h.num_params = n;
    h.num_samples = samples;
    h.global_dice_wt = h.global_dice_tc = h.global_dice_et = NAN;
    h.crc32 = fs_wire_crc32_f32(0, d, n);
    fs_round_upload *u;
    char why[256];
    fs_status st = fs_round_update_begin(a, site, &h, now, &u, why, sizeof why);
    if (st != FS_OK) return st;
    for (size_t off = 0; off < n && st == FS_OK; off += 700) {
        size_t k = n - off < 700 ? n - off : 700;
        st = fs_round_update_chunk(a, u, off, (const uint8_t *)(d + off), k * 4, why, sizeof why);
    }
    if (st != FS_OK && fs_round_test_crashed(a)) return st;
    fs_status e = fs_round_update_end(a, u, 0, now, why, sizeof why);
    return st != FS_OK ? st : e;
}

static fs_round *open_or_die(const fs_round_config *c, const float *w0, size_t P, double now)
{
    fs_round *a = NULL;
    if (fs_round_open(&a, c, w0, P, now) != FS_OK) {
        fprintf(stderr, "fs_round_open failed\n");
        exit(1);
    }
    return a;
}

/* ---- FedAdam against Algorithm 2 in double ------------------------------------ */

enum { P = 2000, R = 3 };

static void test_fedadam(void)
{
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 3, R, 1.0);
    c.server_opt = (fs_server_opt_hp){FS_SOPT_FEDADAM, 0.05f, 0, 0.9f, 0.99f, 1e-3f};
    float *w0 = make_w0(P);
    fs_round *a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < 3; s++) join(a, SITES[s], NS[s], 0);
    static double x[P], m[P], v[P];
    static float d[3][P];
    for (int i = 0; i < P; i++) { x[i] = w0[i]; m[i] = 0; v[i] = 1e-6; }
    double now = 1;
    for (int r = 1; r <= R; r++) {
        fs_round_view view;
        fs_round_view_get(a, &view);
        CHECK(view.open && view.round == (uint32_t)r, "round %d not open", r);
        for (int s = 0; s < 3; s++) {
            make_delta(d[s], (unsigned)s, (unsigned)r, view.model, P);
            CHECK(push(a, SITES[s], (uint32_t)r, d[s], P, NS[s], now += 1) == FS_OK, "push r%d s%d", r, s);
        }
        double W = (double)(NS[0] + NS[1] + NS[2]);
        for (int i = 0; i < P; i++) {
            double dl = (NS[0] * (double)d[0][i] + NS[1] * (double)d[1][i] + NS[2] * (double)d[2][i]) / W;
            m[i] = 0.9 * m[i] + 0.1 * dl;
            v[i] = 0.99 * v[i] + 0.01 * dl * dl;
            x[i] = x[i] + 0.05 * m[i] / (sqrt(v[i]) + 1e-3);
        }
        fs_round_view_get(a, &view);
        CHECK(view.completed == (uint32_t)r, "round %d did not close", r);
        size_t bad = 0;
        for (int i = 0; i < P; i++) bad += fabs(view.model[i] - x[i]) > 1e-5 + 1e-4 * fabs(x[i]);
        CHECK(bad == 0, "round %d: %zu parameters differ from FedAdam in double", r, bad);
        /* the step really differs from FedAvg's (else the test says nothing) */
        if (r == 1) {
            double dl0 = (NS[0] * (double)d[0][0] + NS[1] * (double)d[1][0] + NS[2] * (double)d[2][0]) / W;
            CHECK(fabs((view.model[0] - w0[0]) - dl0) > 1e-4, "FedAdam made FedAvg's step");
        }
    }
    char path[512];
    snprintf(path, sizeof path, "%s/server.r%u.state", dir, R);
    CHECK(access(path, F_OK) == 0, "no server state file for round %d", R);
    snprintf(path, sizeof path, "%s/server.r%u.state", dir, R - 1);
    CHECK(access(path, F_OK) != 0, "the state file of round %d was not deleted", R - 1);
    fs_round_free(a);

    /* switch: the same folder as FedYogi is refused (after the moments of
     * round 3 exist); as FedAdam it reopens */
    c.server_opt.kind = FS_SOPT_FEDYOGI;
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(fs_round_open(&a, &c, NULL, P, 0) != FS_OK, "resumed FedAdam state as FedYogi");
    fs_log_set_level(FS_LOG_WARN);
    c.server_opt.kind = FS_SOPT_FEDADAM;
    CHECK(fs_round_open(&a, &c, NULL, P, 0) == FS_OK, "FedAdam state not reopened");
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
}

/* ---- crash at each commit step of a close ---------------------------------------- */

static int run_fed(fs_server_opt_kind kind, fs_round_crash point, float *out)
{
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 3, R, 1.0);
    c.server_opt = fs_server_opt_defaults(kind);
    c.server_opt.lr = 0.03f;
    float *w0 = make_w0(P);
    double now = 0;
    fs_round *a = open_or_die(&c, w0, P, now);
    for (int s = 0; s < 3; s++) join(a, SITES[s], NS[s], now);
    static float d[P];
    int crashes = 0;
    for (int r = 1; r <= R; r++) {
        for (int s = 0; s < 3; s++) {
            fs_round_view view;
            fs_round_view_get(a, &view);
            make_delta(d, (unsigned)s, (unsigned)r, view.model, P);
            if (r == 2 && s == 2 && point) fs_round_test_crash(a, point, 1);
            fs_status st = push(a, SITES[s], (uint32_t)r, d, P, NS[s], now += 1);
            if (st != FS_OK && fs_round_test_crashed(a)) {
                crashes++;
                fs_round_abandon(a);
                a = open_or_die(&c, NULL, P, now);
                for (int k = 0; k < 3; k++) join(a, SITES[k], NS[k], now);
                fs_round_tick(a, now + 10);
            }
        }
    }
    fs_round_view view;
    fs_round_view_get(a, &view);
    CHECK(view.finished, "%s crash %d: not finished (completed %u)", fs_server_opt_name(kind), (int)point,
          view.completed);
    memcpy(out, view.model, P * sizeof *out);
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
    return crashes;
}

static void test_crash(void)
{
    static float ref[P], got[P];
    const fs_round_crash pts[] = {FS_CRASH_AFTER_JOURNAL, FS_CRASH_AFTER_CLOSE_RECORD, FS_CRASH_IN_CKPT,
                                  FS_CRASH_AFTER_CKPT, FS_CRASH_AFTER_STATE, FS_CRASH_AFTER_METRICS};
    const fs_server_opt_kind kinds[] = {FS_SOPT_FEDADAM, FS_SOPT_FEDYOGI, FS_SOPT_FEDAVGM};
    fs_log_set_level(FS_LOG_QUIET);
    for (size_t k = 0; k < 3; k++) {
        run_fed(kinds[k], FS_CRASH_NONE, ref);
        for (size_t p = 0; p < sizeof pts / sizeof *pts; p++) {
            int n = run_fed(kinds[k], pts[p], got);
            CHECK(n == 1, "%s: crash point %d did not fire", fs_server_opt_name(kinds[k]), (int)pts[p]);
            CHECK(!memcmp(ref, got, sizeof ref), "%s: crash at point %d changed the final model",
                  fs_server_opt_name(kinds[k]), (int)pts[p]);
        }
    }
    fs_log_set_level(FS_LOG_WARN);
}

/* ---- median with an outlier site ------------------------------------------------- */

static void test_median(void)
{
    static float d[5][P], wm[P], wa[P];
    for (int rule = 0; rule < 2; rule++) {
        char *dir = make_dir();
        fs_round_config c = make_cfg(dir, 5, 1, 1.0);
        c.agg_rule = rule ? FS_AGG_MEDIAN : FS_AGG_MEAN;
        float *w0 = make_w0(P);
        fs_round *a = open_or_die(&c, w0, P, 0);
        for (int s = 0; s < 5; s++) join(a, SITES[s], NS[s], 0);
        for (int s = 0; s < 5; s++) {
            make_delta(d[s], (unsigned)s, 1, w0, P);
            if (s == 3)
                for (int i = 0; i < P; i++) d[s][i] *= 1e4f;
            CHECK(push(a, SITES[s], 1, d[s], P, NS[s], 1 + s) == FS_OK, "push %d", s);
        }
        fs_round_view view;
        fs_round_view_get(a, &view);
        CHECK(view.finished, "median round not closed");
        memcpy(rule ? wm : wa, view.model, sizeof wm);
        fs_round_free(a);
        free(w0);
        rm_rf(dir);
        free(dir);
    }
    float *w0 = make_w0(P);
    size_t out_med = 0, out_mean = 0;
    for (int i = 0; i < P; i++) {
        float lo = INFINITY, hi = -INFINITY;
        for (int s = 0; s < 5; s++)
            if (s != 3) { lo = fminf(lo, d[s][i]); hi = fmaxf(hi, d[s][i]); }
        float dm = wm[i] - w0[i], da = wa[i] - w0[i];
        out_med += !(dm >= lo - 1e-6f && dm <= hi + 1e-6f);
        out_mean += !(da >= lo - 1e-6f && da <= hi + 1e-6f);
    }
    CHECK(out_med == 0, "median: %zu coordinates outside the honest sites' range", out_med);
    CHECK(out_mean > P / 2, "mean: the outlier moved only %zu coordinates (test vacuous)", out_mean);
    free(w0);
}

/* ---- partial participation weighting ------------------------------------------- */

static void test_partial(void)
{
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 6, 1, 0.5);
    c.min_sites = 2;
    float *w0 = make_w0(P);
    fs_round *a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < 6; s++) join(a, SITES[s], NS[s], 0);
    static float d[6][P];
    int sel[6], nsel = 0;
    for (int s = 0; s < 6; s++) {
        sel[s] = fs_round_is_selected(a, SITES[s]);
        nsel += sel[s];
        make_delta(d[s], (unsigned)s, 1, w0, P);
    }
    CHECK(nsel == 3, "fraction 0.5 of 6 selected %d", nsel);
    for (int s = 0; s < 6; s++) {
        fs_status st = push(a, SITES[s], 1, d[s], P, NS[s], 1 + s);
        CHECK(st == (sel[s] ? FS_OK : FS_ERR_MISMATCH), "site %d: %s", s, fs_status_str(st));
    }
    fs_round_view view;
    fs_round_view_get(a, &view);
    CHECK(view.finished, "partial round not closed");
    double W = 0;
    for (int s = 0; s < 6; s++) W += sel[s] ? (double)NS[s] : 0;
    size_t bad = 0;
    for (int i = 0; i < P; i++) {
        double acc = 0;
        for (int s = 0; s < 6; s++) acc += sel[s] ? (double)NS[s] * d[s][i] : 0;
        double want = w0[i] + acc / W;
        bad += fabs(view.model[i] - want) > 1e-6 + 1e-5 * fabs(want);
    }
    CHECK(bad == 0, "partial: %zu parameters differ from the weighted mean over the selected sites", bad);
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
}

/* ---- SCAFFOLD ------------------------------------------------------------------ */

static void test_scaffold(void)
{
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 3, 2, 1.0);
    c.scaffold = 1;
    c.local_norm = 1;
    c.min_sites = 2;
    float *w0 = make_w0(P);
    fs_round *a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < 3; s++) join(a, SITES[s], NS[s], 0);
    fs_wire_task t;
    CHECK(fs_round_task(a, SITES[0], 1, &t, NULL, 0) == FS_OK && t.action == FS_TASK_TRAIN, "task");
    CHECK(t.scaffold && t.local_norm && t.num_params == P, "task flags %d %d, num_params %llu", t.scaffold,
          t.local_norm, (unsigned long long)t.num_params);
    uint8_t *buf;
    size_t len;
    fs_wire_task t2;
    CHECK(fs_wire_encode_task(&t, &buf, &len) == FS_OK, "encode");
    CHECK(fs_wire_decode_task(buf, len, &t2, NULL, 0) == FS_OK && t2.scaffold && t2.local_norm,
          "flags lost on the wire");
    free(buf);
    const float *m;
    size_t mp;
    uint32_t crc;
    CHECK(fs_round_model(a, SITES[0], 1, &m, &mp, &crc, NULL, 0) == FS_OK && mp == 2 * P, "download %zu", mp);
    CHECK(crc == t.model_crc32 && crc == fs_wire_crc32_f32(0, m, 2 * P), "download CRC");
    int zero = 1;
    for (size_t i = P; i < 2 * P; i++) zero &= m[i] == 0;
    CHECK(zero, "c does not start at 0");
    static float d[3][2 * P];
    for (int s = 0; s < 3; s++) make_delta(d[s], (unsigned)s, 1, m, 2 * P);
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(push(a, SITES[0], 1, d[0], P, NS[0], 2) == FS_ERR_MISMATCH, "a P-length SCAFFOLD update accepted");
    fs_log_set_level(FS_LOG_WARN);
    /* two of three sites report, the round closes at the deadline */
    for (int s = 0; s < 2; s++) CHECK(push(a, SITES[s], 1, d[s], 2 * P, NS[s], 3 + s) == FS_OK, "push %d", s);
    fs_round_tick(a, 200);
    fs_round_view view;
    fs_round_view_get(a, &view);
    CHECK(view.completed == 1, "scaffold round not closed");
    CHECK(fs_round_model(a, SITES[0], 2, &m, &mp, &crc, NULL, 0) == FS_OK && mp == 2 * P, "download 2");
    double W = (double)(NS[0] + NS[1]);
    size_t bad_w = 0, bad_c = 0;
    for (int i = 0; i < P; i++) {
        double dw = (NS[0] * (double)d[0][i] + NS[1] * (double)d[1][i]) / W;
        double dc = (NS[0] * (double)d[0][P + i] + NS[1] * (double)d[1][P + i]) / W;
        bad_w += fabs(m[i] - (w0[i] + dw)) > 1e-6 + 1e-5 * fabs(w0[i] + dw);
        bad_c += fabs(m[P + i] - (2.0 / 3.0) * dc) > 1e-7 + 1e-5 * fabs(dc);
    }
    CHECK(bad_w == 0, "scaffold: %zu model parameters wrong", bad_w);
    CHECK(bad_c == 0, "scaffold: %zu control variates wrong (want (|S|/N)·mean Δc)", bad_c);
    /* resume restores c */
    static float before[2 * P];
    memcpy(before, m, sizeof before);
    fs_round_free(a);
    a = open_or_die(&c, NULL, P, 300);
    CHECK(fs_round_model(a, SITES[0], 2, &m, &mp, &crc, NULL, 0) == FS_OK && mp == 2 * P &&
          !memcmp(m, before, sizeof before), "c not restored on resume");
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
}

/* ---- FedBN: the aggregator refuses non-zero deltas of local parameters ----------- */

static void test_fedbn_mask(void)
{
    char *dir = make_dir();
    fs_round_config c = make_cfg(dir, 2, 1, 1.0);
    c.local_norm = 1;
    c.min_sites = 2;
    static uint8_t mask[P];
    for (int i = 0; i < P; i++) mask[i] = (i % 97) == 5; /* spread over several chunks of 700 */
    c.local_mask = mask;
    float *w0 = make_w0(P);
    fs_round *a = open_or_die(&c, w0, P, 0);
    for (int s = 0; s < 2; s++) join(a, SITES[s], NS[s], 0);
    static float d[P];
    make_delta(d, 0, 1, w0, P);
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(push(a, SITES[0], 1, d, P, NS[0], 1) == FS_ERR_FORMAT, "non-zero local deltas accepted");
    fs_log_set_level(FS_LOG_WARN);
    for (int i = 0; i < P; i++)
        if (mask[i]) d[i] = (i % 2) ? -0.0f : 0.0f;
    CHECK(push(a, SITES[0], 1, d, P, NS[0], 2) == FS_OK, "zero local deltas refused");
    CHECK(push(a, SITES[1], 1, d, P, NS[1], 3) == FS_OK, "second site refused");
    fs_round_view view;
    fs_round_view_get(a, &view);
    size_t moved = 0;
    for (int i = 0; i < P; i++) moved += mask[i] && view.model[i] != w0[i];
    CHECK(view.finished && moved == 0, "%zu local parameters moved", moved);
    fs_round_free(a);
    free(w0);
    rm_rf(dir);
    free(dir);
}

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    fs_log_set_level(FS_LOG_WARN);
    if (!only || !strcmp(only, "fedadam")) test_fedadam();
    if (!only || !strcmp(only, "crash")) test_crash();
    if (!only || !strcmp(only, "median")) test_median();
    if (!only || !strcmp(only, "partial")) test_partial();
    if (!only || !strcmp(only, "scaffold")) test_scaffold();
    if (!only || !strcmp(only, "fedbn")) test_fedbn_mask();
    return check_result();
}
