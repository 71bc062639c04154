/*
 * tests/test_round_secagg.c — secure aggregation in the aggregator's round
 * state machine (aggregator/round.h, secure_agg; common/secagg.h), with a
 * fake clock, no network, and four in-process sites that follow the protocol
 * like `fedseg node` does (Task → AdvertiseKeys → keys → shares → relay →
 * masked upload → unmasking request → response):
 *   exact       no dropout: w_1 = w_0 + Σ w_s·d_s / Σ w_s (w_s = samples /
 *               cap) within the quantisation step; the metrics line holds the
 *               attempt's counts
 *   dropout     one site leaves before its masked upload: the stage ends at
 *               the round's deadline and w_2 is the mean of the other three
 *   abandoned   two of four leave (threshold 3): the attempt is abandoned, the
 *               model is unchanged, a new attempt (new id) starts, and with
 *               every site it completes
 *   refusals    a plain (unmasked) update, a masked update of a stale
 *               attempt, a SecAgg call of a site outside the attempt
 *   dp          distributed DP (dp.mode FS_DP_DISTRIBUTED, t = 3 of 4): the
 *               Task carries the grid and σ; sites add discrete Gaussian
 *               shares of stddev σ·C·2^f/√t steps to zero updates; the new
 *               model moves by noise of stddev σ·C·√(4/3)/4 per coordinate
 *               (within 3%), unweighted; dp.epsilon in the metrics equals
 *               the accountant's after one round with 4 shares
 */
#include "check.h"
#include "round_fixture.h"
#include "aggregator/round.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/dp.h"
#include "common/secagg.h"
#include "common/wire.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NS 4
#define P 3001
static const char *SITES[NS] = {"site_1", "site_2", "site_3", "site_4"};
static const uint64_t SAMPLES[NS] = {40, 10, 25, 5};

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static fs_round *open_round(const char *dir, const float *w0)
{
    fs_round_config c = fs_test_round_config(dir, SITES, NS, 5, 3);
    c.seed = 5;
    c.secure_agg = 1;
    c.secagg_clip = 10;
    c.secagg_stage_s = 10;
    fs_round *a = NULL;
    if (fs_round_open(&a, &c, w0, P, 0) != FS_OK) {
        fprintf(stderr, "fs_round_open failed\n");
        exit(1);
    }
    for (int s = 0; s < NS; s++) {
        fs_wire_join_request req;
        memset(&req, 0, sizeof req);
        req.protocol_version = FS_PROTOCOL_VERSION;
        strcpy(req.preset, "tiny");
        req.num_samples = SAMPLES[s];
        fs_wire_join_reply rep;
        CHECK(fs_round_join(a, SITES[s], &req, 0, &rep) == FS_OK, "join");
    }
    return a;
}

/* One SecAgg call; returns the reply status (-1 on a refusal) and copies the
 * payload into *out (malloc'ed) when there is one. */
static int call(fs_round *a, int s, const fs_wire_task *t, fs_secagg_stage stage, const uint8_t *pl,
                size_t len, double now, uint8_t **out, size_t *olen)
{
    fs_wire_secagg_request rq = {FS_PROTOCOL_VERSION, t->round, t->secagg_attempt, stage, pl, len};
    fs_wire_secagg_reply rep;
    uint8_t *payload = NULL;
    char why[256];
    fs_status st = fs_round_secagg(a, SITES[s], &rq, now, &rep, &payload, why, sizeof why);
    if (st != FS_OK) return -1;
    if (out) {
        *out = NULL;
        *olen = rep.len;
        if (rep.len) {
            *out = malloc(rep.len);
            memcpy(*out, payload, rep.len);
        }
    }
    fs_secagg_msg_free(payload, rep.len);
    return (int)rep.status;
}

/* Pushes words[0..W) as a masked update. */
static fs_status push_masked(fs_round *a, int s, uint32_t round, uint32_t attempt, const uint32_t *q,
                             size_t W, double now, char *why, size_t wl)
{
    fs_wire_update_header h;
    memset(&h, 0, sizeof h);
    h.protocol_version = FS_PROTOCOL_VERSION;
    h.round = round;
    h.num_params = W;
    h.num_samples = 1;
    h.global_dice_wt = h.global_dice_tc = h.global_dice_et = NAN;
    h.masked = 1;
    h.secagg_attempt = attempt;
    h.crc32 = fs_wire_crc32_bytes(0, (const uint8_t *)q, W * 4);
    fs_round_upload *u;
    fs_status st = fs_round_update_begin(a, SITES[s], &h, now, &u, why, wl);
    if (st != FS_OK) return st;
    for (size_t off = 0; off < W && st == FS_OK; off += 1000) {
        size_t n = W - off < 1000 ? W - off : 1000;
        st = fs_round_update_chunk(a, u, off, (const uint8_t *)(q + off), n * 4, why, wl);
    }
    fs_status e = fs_round_update_end(a, u, 0, now, why, wl);
    return st != FS_OK ? st : e;
}

typedef struct {
    fs_wire_task t;
    fs_secagg_site *sa;
    int f, gone;
} site_state;

/* One round with every site that is not in `drop` (a bit mask) completing
 * the protocol, the dropped ones vanishing right before their masked upload.
 * Returns the attempt id the sites saw. *t_out advances the clock. */
/* With distributed DP (the task says so), each site's discrete Gaussian
 * noise share, as `fedseg node` adds it: stddev σ·C·2^f/√t steps. */
static void add_noise_share(const fs_wire_task *t, int s, uint32_t *q)
{
    double local = (double)t->dp_noise_multiplier * t->secagg_clip * ldexp(1.0, t->secagg_quant_bits) /
                   sqrt((double)t->secagg_threshold);
    fs_dp_dgauss g;
    CHECK(fs_dp_dgauss_init(&g, local) == FS_OK, "dgauss init (stddev %g)", local);
    uint8_t key[32] = {(uint8_t)(s + 1)};
    fs_dp_dgauss_add_u32(&g, key, 0, q, P);
}

static uint32_t run_round(fs_round *a, float d[NS][P], unsigned drop, double *clock)
{
    double now = *clock;
    site_state st[NS];
    memset(st, 0, sizeof st);
    char why[256];
    for (int s = 0; s < NS; s++) {
        CHECK(fs_round_task(a, SITES[s], now, &st[s].t, why, sizeof why) == FS_OK &&
                  st[s].t.action == FS_TASK_TRAIN && st[s].t.secure_agg,
              "%s gets a secure TRAIN task (action %d)", SITES[s], (int)st[s].t.action);
        fs_secagg_params p = {st[s].t.round, st[s].t.secagg_sites, st[s].t.secagg_threshold,
                              st[s].t.secagg_neighbours, P + 1, {0}};
        memcpy(p.round_seed, st[s].t.secagg_round_seed, 32);
        if (st[s].t.dp_distributed) st[s].f = st[s].t.secagg_quant_bits;
        else CHECK(fs_secagg_quant_bits(st[s].t.secagg_clip, st[s].t.secagg_sites, &st[s].f) == FS_OK, "f");
        CHECK(fs_secagg_site_new(&p, st[s].t.secagg_index, &st[s].sa) == FS_OK, "site_new");
        uint8_t *m = NULL;
        size_t ml = 0;
        CHECK(fs_secagg_site_advertise(st[s].sa, &m, &ml) == FS_OK, "advertise");
        CHECK(call(a, s, &st[s].t, FS_SA_ADVERTISE, m, ml, now, NULL, NULL) == FS_SA_OK, "ADVERTISE ok");
        fs_secagg_msg_free(m, ml);
    }
    for (int s = 0; s < NS; s++) {
        uint8_t *keys = NULL, *m = NULL;
        size_t kl = 0, ml = 0;
        CHECK(call(a, s, &st[s].t, FS_SA_GET_KEYS, NULL, 0, now, &keys, &kl) == FS_SA_OK, "keys");
        CHECK(fs_secagg_site_share_keys(st[s].sa, keys, kl, &m, &ml) == FS_OK, "share_keys");
        CHECK(call(a, s, &st[s].t, FS_SA_SHARES, m, ml, now, NULL, NULL) == FS_SA_OK, "SHARES ok");
        free(keys);
        fs_secagg_msg_free(m, ml);
    }
    static uint32_t q[P + 1];
    for (int s = 0; s < NS; s++) {
        uint8_t *relay = NULL;
        size_t rl = 0;
        CHECK(call(a, s, &st[s].t, FS_SA_GET_RELAY, NULL, 0, now, &relay, &rl) == FS_SA_OK, "relay");
        CHECK(fs_secagg_site_recv_shares(st[s].sa, relay, rl) == FS_OK, "recv_shares");
        free(relay);
        if (drop & (1u << s)) {
            st[s].gone = 1;
            continue;
        }
        uint64_t m = SAMPLES[s] < st[s].t.secagg_weight_cap ? SAMPLES[s] : st[s].t.secagg_weight_cap;
        CHECK(fs_secagg_encode_update(d[s], P, m, st[s].t.secagg_weight_cap, st[s].t.secagg_clip,
                                      st[s].f, 1000 + (uint64_t)s, q) == FS_OK, "encode");
        if (st[s].t.dp_distributed) add_noise_share(&st[s].t, s, q);
        CHECK(fs_secagg_site_mask(st[s].sa, q, 0, P + 1, q) == FS_OK, "mask");
        CHECK(push_masked(a, s, st[s].t.round, st[s].t.secagg_attempt, q, P + 1, now, why, sizeof why) == FS_OK,
              "%s: masked upload accepted (%s)", SITES[s], why);
    }
    if (drop) {
        now += 101; /* the round's deadline: the masked-input stage ends */
        fs_round_tick(a, now);
    }
    for (int s = 0; s < NS; s++) {
        if (st[s].gone) continue;
        uint8_t *req = NULL, *m = NULL;
        size_t rl = 0, ml = 0;
        int rs = call(a, s, &st[s].t, FS_SA_GET_UNMASK, NULL, 0, now, &req, &rl);
        if (rs == FS_SA_ABANDONED) break; /* the attempt is over */
        CHECK(rs == FS_SA_OK, "unmask request (%d)", rs);
        CHECK(fs_secagg_site_unmask(st[s].sa, req, rl, &m, &ml) == FS_OK, "unmask");
        CHECK(call(a, s, &st[s].t, FS_SA_UNMASK, m, ml, now, NULL, NULL) == FS_SA_OK, "UNMASK ok");
        free(req);
        fs_secagg_msg_free(m, ml);
    }
    for (int s = 0; s < NS; s++) fs_secagg_site_free(st[s].sa);
    *clock = now + 1;
    return st[0].t.secagg_attempt;
}

static void make_deltas(float d[NS][P], uint64_t seed)
{
    fs_rng r;
    fs_rng_seed(&r, seed, 0);
    for (int s = 0; s < NS; s++)
        for (size_t i = 0; i < P; i++) d[s][i] = (float)(fs_rng_normal(&r) * 0.01 + 0.001 * s);
}

/* max |model − (before + weighted mean of the sites in `in`)| */
static double mean_error(const float *model, const float *before, float d[NS][P], unsigned in)
{
    double worst = 0, cap = 40; /* the largest joined sample count */
    for (size_t i = 0; i < P; i++) {
        double num = 0, den = 0;
        for (int s = 0; s < NS; s++)
            if (in & (1u << s)) {
                num += SAMPLES[s] / cap * d[s][i];
                den += SAMPLES[s] / cap;
            }
        double e = fabs((double)model[i] - ((double)before[i] + num / den));
        if (e > worst) worst = e;
    }
    return worst;
}

/* Distributed DP: one round, four sites with zero updates adding noise. */
static void test_distributed_dp(void)
{
    char dir[] = "round_secagg_dp_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
    static float w0[P];
    fs_round_config c = fs_test_round_config(dir, SITES, NS, 2, 4);
    c.secure_agg = 1;
    c.secagg_clip = 10;
    c.secagg_stage_s = 10;
    c.secagg_threshold = 3;
    fs_dp_params_default(&c.dp);
    c.dp.mode = FS_DP_DISTRIBUTED;
    c.dp.clip = 0.5;
    c.dp.noise_multiplier = 2.0;
    c.dp.delta = 1e-5;
    fs_round *a = NULL;
    if (fs_round_open(&a, &c, w0, P, 0) != FS_OK) {
        CHECK(0, "open with distributed DP");
        return;
    }
    for (int s = 0; s < NS; s++) {
        fs_wire_join_request req = {FS_PROTOCOL_VERSION, "tiny", SAMPLES[s], ""};
        fs_wire_join_reply rep;
        CHECK(fs_round_join(a, SITES[s], &req, 0, &rep) == FS_OK, "join");
    }
    double now = 6;
    fs_wire_task t;
    char why[256];
    CHECK(fs_round_task(a, "site_1", now, &t, why, sizeof why) == FS_OK && t.dp_distributed &&
              t.dp_noise_multiplier == 2.0f && t.secagg_clip == 0.5 && t.secagg_weight_cap == 1,
          "a distributed-DP task (clip %g, cap %llu)", t.secagg_clip, (unsigned long long)t.secagg_weight_cap);
    int f = t.secagg_quant_bits;
    static float zero[NS][P];
    run_round(a, zero, 0, &now);
    fs_round_view v;
    fs_round_view_get(a, &v);
    CHECK(v.completed == 1, "the DP round closed (%u)", v.completed);
    double m1 = 0, m2 = 0;
    for (size_t i = 0; i < P; i++) {
        m1 += v.model[i];
        m2 += (double)v.model[i] * v.model[i];
    }
    m1 /= P;
    double sd = sqrt(m2 / P - m1 * m1), want = 2.0 * 0.5 * sqrt(4.0 / 3.0) / 4.0;
    CHECK(fabs(sd - want) < 0.05 * want, "noise on the mean: sd %g, want σC·√(n/t)/n = %g", sd, want);
    CHECK(fabs(m1) < 5 * want / sqrt((double)P), "noise mean %g", m1);
    fs_round_free(a);
    /* the ledger: 4 shares in round 1 */
    fs_dp_params p = c.dp;
    p.sites = NS;
    p.min_sites = 3;
    p.granularity = ldexp(1.0, -f);
    p.dim = P;
    p.sample_rate = 1;
    fs_dp_accountant acc;
    CHECK(fs_dp_accountant_init(&acc, &p) == FS_OK && fs_dp_accountant_add_round(&acc, 4) == FS_OK, "ledger");
    char path[256], line[8192];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *fp = fopen(path, "r");
    double eps = -1;
    if (fp && fgets(line, sizeof line, fp)) {
        const char *e = strstr(line, "\"epsilon\":");
        if (e) eps = strtod(e + 10, NULL);
    }
    if (fp) fclose(fp);
    double want_eps = fs_dp_accountant_epsilon(&acc);
    CHECK(fabs(eps - want_eps) <= 1e-6 * want_eps, "metrics epsilon %g, accountant %g", eps, want_eps);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    fs_log_set_level(FS_LOG_ERROR);
    char dir[] = "round_secagg_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    static float w0[P], before[P], d[NS][P];
    for (size_t i = 0; i < P; i++) w0[i] = (float)i * 1e-4f;
    fs_round *a = open_round(dir, w0);
    double now = 6;
    fs_round_view v;

    /* exact: round 1, everyone */
    make_deltas(d, 1);
    memcpy(before, w0, sizeof before);
    run_round(a, d, 0, &now);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 1, "round 1 completed (%u)", v.completed);
    double err = mean_error(v.model, before, d, 0xf);
    CHECK(err < 1e-5, "round 1: w_1 = w_0 + weighted mean, worst error %g", err);

    /* dropout before the masked upload: round 2 with three sites */
    make_deltas(d, 2);
    memcpy(before, v.model, sizeof before);
    run_round(a, d, 1u << 3, &now);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 2, "round 2 completed with a dropout (%u)", v.completed);
    err = mean_error(v.model, before, d, 0x7);
    CHECK(err < 1e-5, "round 2: the mean of the three survivors, worst error %g", err);

    /* two of four leave: abandoned, model unchanged, a new attempt completes */
    make_deltas(d, 3);
    memcpy(before, v.model, sizeof before);
    uint32_t att1 = run_round(a, d, (1u << 2) | (1u << 3), &now);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 2, "round 3 not completed by the abandoned attempt (%u)", v.completed);
    CHECK(memcmp(v.model, before, sizeof before) == 0, "the model is unchanged after the abandoned attempt");
    now += 6; /* the round reopens (join wait) */
    fs_round_tick(a, now);
    uint32_t att2 = run_round(a, d, 0, &now);
    CHECK(att2 != att1, "a new attempt id (%u after %u)", att2, att1);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 3, "round 3 completed by the second attempt (%u)", v.completed);
    err = mean_error(v.model, before, d, 0xf);
    CHECK(err < 1e-5, "round 3: the mean of all four, worst error %g", err);

    /* refusals in round 4 */
    fs_wire_task t;
    char why[256];
    CHECK(fs_round_task(a, "site_1", now, &t, why, sizeof why) == FS_OK && t.action == FS_TASK_TRAIN, "task");
    fs_wire_update_header h;
    memset(&h, 0, sizeof h);
    h.protocol_version = FS_PROTOCOL_VERSION;
    h.round = 4;
    h.num_params = P;
    h.num_samples = 3;
    h.global_dice_wt = h.global_dice_tc = h.global_dice_et = NAN;
    fs_round_upload *u = NULL;
    CHECK(fs_round_update_begin(a, "site_1", &h, now, &u, why, sizeof why) == FS_ERR_MISMATCH &&
              strstr(why, "masked updates only"), "a plain update is refused: %s", why);
    static uint32_t q[P + 1];
    CHECK(push_masked(a, 0, 4, t.secagg_attempt - 1, q, P + 1, now, why, sizeof why) == FS_ERR_MISMATCH &&
              strstr(why, "not the attempt in progress"), "a stale attempt is refused: %s", why);
    fs_wire_secagg_request rq = {FS_PROTOCOL_VERSION, 4, t.secagg_attempt, FS_SA_GET_KEYS, NULL, 0};
    fs_wire_secagg_reply rep;
    uint8_t *pl = NULL;
    CHECK(fs_round_secagg(a, "site_9", &rq, now, &rep, &pl, why, sizeof why) == FS_ERR_NOT_FOUND,
          "an unknown identity is refused");

    /* the metrics lines carry the attempts' counts */
    char path[256], line[8192];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    int n = 0, ok2 = 0;
    while (f && fgets(line, sizeof line, f)) {
        n++;
        if (n == 2) ok2 = strstr(line, "\"masked\":3,\"unmasked\":3") != NULL;
    }
    if (f) fclose(f);
    CHECK(n == 3, "3 metrics lines (%d)", n);
    CHECK(ok2, "round 2's line records 3 masked and 3 unmasked inputs");

    fs_round_free(a);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    test_distributed_dp();
    return check_result();
}
