/*
 * tests/test_round_dp.c — central differential privacy in the aggregator's
 * round state machine (aggregator/round.h, config field dp; common/dp.h),
 * with a fake clock and no network:
 *   task        Task.dp_clip carries the (float) clip with DP on, 0 with it off
 *   bound       an update whose L2 norm exceeds the clip is refused with a
 *               reason; the same update clipped by fs_dp_clip_l2 is accepted
 *   average     noise multiplier 0: w_1 = w_0 + Σ delta / N, every site
 *               weighing 1 whatever its sample count (sample counts 10, 20,
 *               70 would give another result), the denominator N fixed even
 *               when only 2 of 3 sites report
 *   noise       all deltas zero, σ = 2, C = 0.5, 3 sites: w_1 − w_0 has mean
 *               ≈ 0 and standard deviation σ·C/3 (within 3%), and round 2's
 *               noise is uncorrelated with round 1's (fresh seed per round)
 *   ledger      metrics lines carry dp.epsilon equal to the accountant's ε
 *               after 1 and 2 rounds; with a budget between ε(2) and ε(3)
 *               the federation finishes after round 2 (of 5) and stays
 *               finished when reopened from its folder
 *   adaptive    adaptive clipping (Andrew et al.): three sites whose update
 *               norms are 0.5, 1 and 2 times 0.8, initial clip 4, target
 *               quantile 0.5, count noise σ_b = 0.6; each round's
 *               Task.dp_clip equals the clip in its metrics line, each next
 *               clip equals C·exp(−η(b̄ − γ)) of the published noised
 *               fraction b̄, the noised counts 3·b̄ add up to the sites'
 *               true unclipped counts within 4.5 standard deviations of
 *               their summed noise (a count that ignored the sites' bits
 *               would be 18 away, 12 deviations), the clip falls below 4,
 *               an update above the current clip is refused, and the
 *               aggregator reopened from its folder continues from the last
 *               decided clip
 */
#include "check.h"
#include "round_fixture.h"
#include "aggregator/round.h"
#include "common/dp.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/wire.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *SITES[3] = {"site_1", "site_2", "site_3"};
static const uint64_t SAMPLES[3] = {10, 20, 70};

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}
static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static fs_round_config make_cfg(const char *dir, uint32_t rounds, double sigma, double budget)
{
    fs_round_config c = fs_test_round_config(dir, SITES, 3, rounds, 2);
    c.seed = 3;
    fs_dp_params_default(&c.dp);
    c.dp.mode = FS_DP_CENTRAL;
    c.dp.clip = 0.5;
    c.dp.noise_multiplier = sigma;
    c.dp.delta = 1e-5;
    c.dp.epsilon_budget = budget;
    return c;
}

static fs_round *open_round(const fs_round_config *c, const float *w0, size_t P, double now)
{
    fs_round *a = NULL;
    fs_status st = fs_round_open(&a, c, w0, P, now);
    if (st != FS_OK) {
        fprintf(stderr, "fs_round_open: %s\n", fs_status_str(st));
        exit(1);
    }
    return a;
}

static void join_all(fs_round *a, double now)
{
    for (int s = 0; s < 3; s++) {
        fs_wire_join_request req;
        memset(&req, 0, sizeof req);
        req.protocol_version = FS_PROTOCOL_VERSION;
        strcpy(req.preset, "tiny");
        req.num_samples = SAMPLES[s];
        fs_wire_join_reply rep;
        CHECK(fs_round_join(a, SITES[s], &req, now, &rep) == FS_OK, "join %s", SITES[s]);
    }
}

static int g_unclipped; /* the adaptive-clipping bit push() reports */

/* Streams d in chunks of 333 parameters; *why gets the refusal reason. */
static fs_status push(fs_round *a, int site, uint32_t round, const float *d, size_t P, double now,
                      char *why, size_t whylen)
{
    fs_wire_update_header h;
    memset(&h, 0, sizeof h);
    h.protocol_version = FS_PROTOCOL_VERSION;
    h.round = round;
    h.num_params = P;
    h.num_samples = SAMPLES[site];
    h.train_loss = 0.5f;
    h.global_dice_wt = h.global_dice_tc = h.global_dice_et = NAN;
    h.crc32 = fs_wire_crc32_f32(0, d, P);
    h.dp_unclipped = g_unclipped;
    fs_round_upload *u;
    why[0] = 0;
    fs_status st = fs_round_update_begin(a, SITES[site], &h, now, &u, why, whylen);
    if (st != FS_OK) return st;
    for (size_t off = 0; off < P && st == FS_OK; off += 333) {
        size_t n = P - off < 333 ? P - off : 333;
        st = fs_round_update_chunk(a, u, off, (const uint8_t *)(d + off), n * 4, why, whylen);
    }
    fs_status e = fs_round_update_end(a, u, 0, now, why, whylen);
    return st != FS_OK ? st : e;
}

static void random_delta(float *d, size_t P, uint64_t seed, double scale)
{
    fs_rng r;
    fs_rng_seed(&r, seed, 1);
    for (size_t i = 0; i < P; i++) d[i] = (float)(fs_rng_normal(&r) * scale);
}

/* The dp.epsilon values of the metrics file, in order; returns how many. */
static int read_epsilons(const char *path, double *eps, int max)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[1 << 14];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"dp\":{");
        p = p ? strstr(p, "\"epsilon\":") : NULL;
        if (p) eps[n++] = strtod(p + 10, NULL);
    }
    fclose(f);
    return n;
}

static void test_average(void)
{
    const size_t P = 1000;
    char dir[] = "round_dp_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
    fs_round_config c = make_cfg(dir, 2, 0.0, 0);
    float *w0 = calloc(P, sizeof *w0), *d[3], *big = malloc(P * sizeof *big);
    for (size_t i = 0; i < P; i++) w0[i] = (float)i * 1e-3f;
    fs_round *a = open_round(&c, w0, P, 0);
    join_all(a, 0);

    fs_wire_task t;
    char why[256];
    CHECK(fs_round_task(a, "site_1", 6, &t, why, sizeof why) == FS_OK && t.action == FS_TASK_TRAIN,
          "site_1 trains round 1");
    CHECK(t.dp_clip == 0.5f, "Task.dp_clip = %g, want 0.5", t.dp_clip);

    for (int s = 0; s < 3; s++) {
        d[s] = malloc(P * sizeof *d[s]);
        random_delta(d[s], P, 100 + (uint64_t)s, 0.05); /* norm ≈ 0.05·√1000 ≈ 1.6 > C */
    }
    /* unclipped: refused, with the reason */
    fs_status st = push(a, 0, 1, d[0], P, 6, why, sizeof why);
    CHECK(st == FS_ERR_MISMATCH && strstr(why, "exceeds the privacy clip"),
          "an update above the clip is refused (%s: %s)", fs_status_str(st), why);
    for (int s = 0; s < 3; s++) {
        double norm;
        CHECK(fs_dp_clip_l2(d[s], P, 0.5, &norm) == FS_OK && norm > 0.5, "clip site %d", s);
        CHECK(fs_dp_l2_norm(d[s], P) <= 0.5, "clipped norm");
    }
    memcpy(big, d[0], P * sizeof *big);
    CHECK(push(a, 0, 1, d[0], P, 7, why, sizeof why) == FS_OK, "clipped update accepted: %s", why);
    CHECK(push(a, 1, 1, d[1], P, 7, why, sizeof why) == FS_OK, "site_2: %s", why);
    /* site_3 stays silent: the round closes at its deadline with 2 of 3 */
    fs_round_tick(a, 200);
    fs_round_view v;
    fs_round_view_get(a, &v);
    CHECK(v.completed == 1, "round 1 closed at the deadline (completed %u)", v.completed);
    size_t bad = 0;
    double worst = 0;
    for (size_t i = 0; i < P; i++) {
        /* fixed denominator N = 3, weight 1 each (not 10 and 20 samples) */
        double want = (double)w0[i] + ((double)d[0][i] + (double)d[1][i]) / 3.0;
        double err = fabs((double)v.model[i] - want);
        if (err > worst) worst = err;
        if (err > 1e-6 + 1e-6 * fabs(want)) bad++;
    }
    CHECK(bad == 0, "w_1 = w_0 + (d1 + d2)/3: %zu mismatches, worst %g", bad, worst);
    double wmean = 0;
    for (size_t i = 0; i < P; i++) {
        double fedavg = (double)w0[i] + (10.0 * d[0][i] + 20.0 * d[1][i]) / 30.0;
        wmean = fmax(wmean, fabs((double)v.model[i] - fedavg));
    }
    CHECK(wmean > 1e-4, "the result differs from the sample-weighted mean (max diff %g)", wmean);
    fs_round_free(a);

    /* DP off: Task.dp_clip is 0 */
    char dir2[] = "round_dp_XXXXXX";
    if (!mkdtemp(dir2)) { perror("mkdtemp"); exit(1); }
    fs_round_config c2 = make_cfg(dir2, 1, 1.0, 0);
    c2.dp.mode = FS_DP_OFF;
    a = open_round(&c2, w0, P, 0);
    join_all(a, 0);
    CHECK(fs_round_task(a, "site_2", 6, &t, why, sizeof why) == FS_OK && t.action == FS_TASK_TRAIN &&
              t.dp_clip == 0.0f, "without DP, Task.dp_clip = 0 (got %g)", t.dp_clip);
    CHECK(push(a, 1, 1, d[2], P, 7, why, sizeof why) == FS_OK, "no bound without DP: %s", why);
    fs_round_free(a);

    rm_rf(dir);
    rm_rf(dir2);
    for (int s = 0; s < 3; s++) free(d[s]);
    free(big);
    free(w0);
}

static void test_noise_and_ledger(void)
{
    const size_t P = 40000;
    const double sigma = 2.0, C = 0.5;
    /* ε after 1, 2, 3 rounds from the accountant itself */
    fs_dp_params p;
    fs_dp_params_default(&p);
    p.mode = FS_DP_CENTRAL;
    p.clip = C;
    p.noise_multiplier = sigma;
    p.delta = 1e-5;
    p.sites = 3;
    p.sample_rate = 1.0;
    p.dim = P;
    fs_dp_accountant acc;
    double eps[4] = {0};
    CHECK(fs_dp_accountant_init(&acc, &p) == FS_OK, "accountant");
    for (int k = 1; k <= 3; k++) {
        CHECK(fs_dp_accountant_add_round(&acc, 0) == FS_OK, "add round");
        eps[k] = fs_dp_accountant_epsilon(&acc);
    }
    CHECK(eps[1] > 0 && eps[2] > eps[1] && eps[3] > eps[2], "ε grows: %g %g %g", eps[1], eps[2], eps[3]);

    char dir[] = "round_dp_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
    fs_round_config c = make_cfg(dir, 5, sigma, 0.5 * (eps[2] + eps[3]));
    c.dp.clip = C;
    float *w0 = calloc(P, sizeof *w0), *zero = calloc(P, sizeof *zero), *n1 = malloc(P * sizeof *n1);
    fs_round *a = open_round(&c, w0, P, 0);
    join_all(a, 0);
    char why[256];
    double now = 6;
    for (uint32_t r = 1; r <= 2; r++) {
        fs_round_view v;
        fs_round_view_get(a, &v);
        float *before = malloc(P * sizeof *before);
        memcpy(before, v.model, P * sizeof *before);
        for (int s = 0; s < 3; s++)
            CHECK(push(a, s, r, zero, P, now, why, sizeof why) == FS_OK, "round %u site %d: %s", r, s, why);
        fs_round_view_get(a, &v);
        CHECK(v.completed == r, "round %u closed", r);
        double m = 0, m2 = 0, cross = 0;
        for (size_t i = 0; i < P; i++) {
            double x = (double)v.model[i] - (double)before[i];
            m += x;
            m2 += x * x;
            if (r == 1) n1[i] = (float)x;
            else cross += x * (double)n1[i];
        }
        m /= (double)P;
        double sd = sqrt(m2 / (double)P - m * m), want = sigma * C / 3.0;
        CHECK(fabs(sd - want) < 0.03 * want, "round %u: noise sd %g, want σC/N = %g", r, sd, want);
        CHECK(fabs(m) < 4.0 * want / sqrt((double)P), "round %u: noise mean %g", r, m);
        if (r == 2) {
            double corr = cross / (double)P / (want * want);
            CHECK(fabs(corr) < 0.05, "rounds 1 and 2 share noise (correlation %g)", corr);
        }
        free(before);
        now += 1;
    }
    fs_wire_task t;
    CHECK(fs_round_task(a, "site_1", now, &t, why, sizeof why) == FS_OK && t.action == FS_TASK_FINISHED,
          "budget spent after 2 of 5 rounds: FINISHED (action %d)", (int)t.action);
    fs_round_free(a);

    char path[256];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    double got[8];
    int n = read_epsilons(path, got, 8);
    CHECK(n == 2, "%d metrics lines with dp.epsilon, want 2", n);
    for (int k = 0; k < n && k < 2; k++)
        CHECK(fabs(got[k] - eps[k + 1]) <= 1e-6 * eps[k + 1], "round %d: metrics ε %.9g, accountant %.9g",
              k + 1, got[k], eps[k + 1]);

    /* reopened: the ledger is replayed and the federation stays finished */
    a = open_round(&c, NULL, P, 100);
    join_all(a, 100);
    CHECK(fs_round_task(a, "site_2", 101, &t, why, sizeof why) == FS_OK && t.action == FS_TASK_FINISHED,
          "reopened: still FINISHED (action %d)", (int)t.action);
    fs_round_view v;
    fs_round_view_get(a, &v);
    CHECK(v.completed == 2, "reopened at round %u", v.completed);
    fs_round_free(a);
    rm_rf(dir);
    free(w0);
    free(zero);
    free(n1);
}

/* dp.<key> of every metrics line, in order; returns how many. */
static int read_dp_field(const char *path, const char *key, double *v, int max)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[1 << 14], pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"dp\":{");
        p = p ? strstr(p, pat) : NULL;
        if (p) v[n++] = strtod(p + strlen(pat), NULL);
    }
    fclose(f);
    return n;
}

static void test_adaptive(void)
{
    char dir[] = "round_dp_adaptive_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
    enum { P = 2000, R = 6 };
    static float w0[P], d[P];
    fs_round_config c = make_cfg(dir, R + 2, 1.0, 0);
    c.dp.clip = 4.0;
    c.dp.adaptive = 1;
    c.dp.target_quantile = 0.5;
    c.dp.clip_lr = 0.2;
    c.dp.count_stddev = 0.6;
    fs_round *a = open_round(&c, w0, P, 0);
    join_all(a, 0);
    double now = 6, task_clip[R + 1];
    int true_unclipped = 0;
    const double norms[3] = {0.4, 0.8, 1.6};
    char why[256];
    for (int r = 1; r <= R; r++) {
        for (int s = 0; s < 3; s++) {
            fs_wire_task t;
            CHECK(fs_round_task(a, SITES[s], now, &t, why, sizeof why) == FS_OK && t.action == FS_TASK_TRAIN,
                  "round %d: %s trains", r, SITES[s]);
            if (s == 0) task_clip[r] = t.dp_clip;
            CHECK(t.dp_clip == (float)task_clip[r], "round %d: every site gets the same clip", r);
            random_delta(d, P, 100 * (uint64_t)r + (uint64_t)s, 1.0);
            double norm = fs_dp_l2_norm(d, P);
            for (size_t i = 0; i < P; i++) d[i] = (float)(d[i] * norms[s] / norm);
            if (r == R && s == 2) {
                /* an update of norm 1.01·C (< the initial clip 4) is refused */
                static float big[P];
                for (size_t i = 0; i < P; i++) big[i] = (float)(d[i] / norms[s] * 1.01 * t.dp_clip);
                g_unclipped = 0;
                CHECK(t.dp_clip < 3.9 && push(a, s, (uint32_t)r, big, P, now, why, sizeof why) == FS_ERR_MISMATCH &&
                          strstr(why, "exceeds the privacy clip"),
                      "an update above the current clip %g is refused: %s", t.dp_clip, why);
            }
            double n0 = 0;
            CHECK(fs_dp_clip_l2(d, P, t.dp_clip, &n0) == FS_OK, "clip");
            g_unclipped = n0 <= t.dp_clip;
            true_unclipped += g_unclipped;
            CHECK(push(a, s, (uint32_t)r, d, P, now, why, sizeof why) == FS_OK, "round %d: %s accepted (%s)", r,
                  SITES[s], why);
        }
        fs_round_view v;
        fs_round_view_get(a, &v);
        CHECK(v.completed == (uint32_t)r, "round %d closed (%u)", r, v.completed);
        now += 1;
    }
    char path[300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    double clip[R], next[R], frac[R];
    CHECK(read_dp_field(path, "clip", clip, R) == R && read_dp_field(path, "next_clip", next, R) == R &&
              read_dp_field(path, "unclipped_fraction_noised", frac, R) == R,
          "every metrics line has clip, next_clip and the noised fraction");
    for (int r = 1; r <= R; r++) {
        CHECK(fabs(clip[r - 1] - task_clip[r]) <= 1e-6 * task_clip[r], "round %d: metrics clip %g = task clip %g",
              r, clip[r - 1], task_clip[r]);
        double want = clip[r - 1] * exp(-0.2 * (frac[r - 1] - 0.5));
        CHECK(fabs(next[r - 1] - want) <= 1e-6 * want, "round %d: next clip %g = C·exp(−η(b̄ − γ)) = %g", r,
              next[r - 1], want);
        if (r < R)
            CHECK(fabs(next[r - 1] - clip[r]) <= 1e-6 * clip[r], "round %d's next clip is round %d's clip", r,
                  r + 1);
    }
    double noised = 0;
    for (int r = 0; r < R; r++) noised += 3 * frac[r];
    CHECK(fabs(noised - true_unclipped) <= 4.5 * 0.6 * sqrt((double)R),
          "the noised counts (sum %.3g) match the sites' unclipped bits (%d) within 4.5 deviations", noised,
          true_unclipped);
    CHECK(next[R - 1] < 4.0, "the clip falls from 4 towards the median norm (after %d rounds: %g)", R,
          next[R - 1]);
    fs_round_free(a);
    /* reopened: round R + 1 uses the clip decided by round R's close */
    a = open_round(&c, w0, P, now);
    join_all(a, now);
    now += 6;
    fs_round_tick(a, now);
    fs_wire_task t;
    CHECK(fs_round_task(a, SITES[0], now, &t, why, sizeof why) == FS_OK && t.action == FS_TASK_TRAIN &&
              fabs(t.dp_clip - next[R - 1]) <= 1e-6 * next[R - 1],
          "after a restart the clip continues from %g (task: %g)", next[R - 1], t.dp_clip);
    fs_round_free(a);
    rm_rf(dir);
}

int main(void)
{
    fs_log_set_level(FS_LOG_ERROR);
    test_average();
    test_noise_and_ledger();
    test_adaptive();
    return check_result();
}
