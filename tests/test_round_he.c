/*
 * tests/test_round_he.c — encrypted aggregation in the aggregator's round
 * state machine (aggregator/round.h, encrypted; common/he_proto.h), with a
 * fake clock, no network, and four in-process sites that follow the protocol
 * like `fedseg node` does (Task → KEYS → broadcast → SHARES → relay →
 * ciphertext upload → decryption requests → partial decryptions):
 *   exact       no dropout: w_1 = w_0 + Σ w_s·d_s / Σ w_s (w_s = samples /
 *               cap) within the quantisation step; the metrics line holds the
 *               attempt's counts (4 contributed, 3 decrypted)
 *   upload      one site leaves before its upload: the stage ends at the
 *               round's deadline and w_2 is the mean of the other three
 *   decrypt     a member of the decryption set leaves before answering: at
 *               the stage deadline another set (generation 2) decrypts and
 *               w_3 is still the mean of all four
 *   abandoned   two of four leave before uploading (threshold 3): the
 *               attempt is abandoned, the model is unchanged, a new attempt
 *               (new id) starts and completes with everyone
 *   dp          distributed DP (dp.mode FS_DP_DISTRIBUTED, t = 3 of 4): the
 *               Task carries the grid and σ; sites add discrete Gaussian
 *               shares of stddev σ·C·2^f/√t steps to zero updates before
 *               encrypting; the new model moves by noise of stddev
 *               σ·C·√(4/3)/4 per coordinate (within 5%), unweighted;
 *               dp.epsilon in the metrics equals the accountant's after one
 *               round with 4 shares
 *   silent      a site that never answers the key stage (a frozen process
 *               within its timeout): the attempt is abandoned at the stage
 *               deadline, the site is left out of the next attempt, which
 *               completes with the other three; once it calls again it is in
 *               the next round
 *   refusals    a ciphertext with one flipped byte is refused (and the same
 *               site's correct upload then counts: the sum was untouched), a
 *               plain update, a masked update, a secure-aggregation stage, an
 *               unknown identity, a config with secure_agg and encrypted
 */
#include "check.h"
#include "round_fixture.h"
#include "aggregator/round.h"
#include "common/dp.h"
#include "common/he_proto.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/wire.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NS 4
#define P 5000 /* two ciphertexts with the weight */
static const char *SITES[NS] = {"site_1", "site_2", "site_3", "site_4"};
static const uint64_t SAMPLES[NS] = {40, 10, 25, 5};

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static fs_round_config he_config(const char *dir)
{
    fs_round_config c = fs_test_round_config(dir, SITES, NS, 5, 3);
    c.seed = 5;
    c.encrypted = 1;
    c.he_clip = 10;
    c.secagg_stage_s = 10;
    return c;
}

static fs_round *open_round(const char *dir, const float *w0)
{
    fs_round_config c = he_config(dir);
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
    free(payload);
    return (int)rep.status;
}

static int call_at(fs_round *a, int s, const fs_wire_task *t, fs_secagg_stage stage, uint32_t start,
                   double now, uint8_t **out, size_t *olen)
{
    uint8_t b[4] = {(uint8_t)start, (uint8_t)(start >> 8), (uint8_t)(start >> 16), (uint8_t)(start >> 24)};
    return call(a, s, t, stage, b, 4, now, out, olen);
}

/* Pushes bytes[0..len) as an encrypted update. */
static fs_status push_ct(fs_round *a, int s, const fs_wire_task *t, const uint8_t *bytes, size_t len,
                         double now, char *why, size_t wl)
{
    fs_wire_update_header h;
    memset(&h, 0, sizeof h);
    h.protocol_version = FS_PROTOCOL_VERSION;
    h.round = t->round;
    h.num_params = len / 4;
    h.num_samples = 1;
    h.global_dice_wt = h.global_dice_tc = h.global_dice_et = NAN;
    h.encrypted = 1;
    h.secagg_attempt = t->secagg_attempt;
    h.crc32 = fs_wire_crc32_bytes(0, bytes, len);
    fs_round_upload *u;
    fs_status st = fs_round_update_begin(a, SITES[s], &h, now, &u, why, wl);
    if (st != FS_OK) return st;
    for (size_t off = 0; off < len && st == FS_OK; off += 65536) {
        size_t n = len - off < 65536 ? len - off : 65536;
        st = fs_round_update_chunk(a, u, off / 4, bytes + off, n, why, wl);
    }
    fs_status e = fs_round_update_end(a, u, 0, now, why, wl);
    return st != FS_OK ? st : e;
}

typedef struct {
    fs_wire_task t;
    fs_he_params p;
    fs_he_site *hs;
    int gone;
} site_state;

/* Site s answers every decryption request it gets until told to wait or
 * that the attempt is over; returns the number of batches it answered. */
static int decrypt_all(fs_round *a, int s, site_state *st, double now)
{
    int batches = 0;
    for (uint32_t start = 0;;) {
        uint8_t *req = NULL, *part = NULL, *ack = NULL;
        size_t rl = 0, pl = 0, al = 0;
        int rs = call_at(a, s, &st->t, FS_HE_GET_DECRYPT, start, now, &req, &rl);
        if (rs != FS_SA_OK) {
            free(req);
            return batches;
        }
        uint32_t gen = 0, next = 0;
        fs_status e = fs_he_site_partials(st->hs, req, rl, &part, &pl, &gen, &next);
        free(req);
        CHECK(e == FS_OK, "%s: partials (%s)", SITES[s], fs_status_str(e));
        if (e != FS_OK) return batches;
        rs = call(a, s, &st->t, FS_HE_PARTIALS, part, pl, now, &ack, &al);
        free(part);
        free(ack);
        CHECK(rs == FS_SA_OK, "%s: PARTIALS accepted (%d)", SITES[s], rs);
        batches++;
        start = al ? 0 : next;
        if (rs != FS_SA_OK) return batches;
    }
}

/* One round: every site not in `drop_up` uploads; those in `drop_dec` do not
 * answer decryption requests. Returns the attempt id the sites saw. */
static uint32_t run_round_of(fs_round *a, float d[NS][P], unsigned present, unsigned drop_up,
                             unsigned drop_dec, double *clock, int corrupt_first)
{
    double now = *clock;
    site_state st[NS];
    memset(st, 0, sizeof st);
    char why[256];
    for (int s = 0; s < NS; s++) {
        if (!(present & (1u << s))) {
            st[s].gone = 2; /* never calls */
            continue;
        }
        CHECK(fs_round_task(a, SITES[s], now, &st[s].t, why, sizeof why) == FS_OK &&
                  st[s].t.action == FS_TASK_TRAIN && st[s].t.encrypted && !st[s].t.secure_agg,
              "%s gets an encrypted TRAIN task (action %d)", SITES[s], (int)st[s].t.action);
        fs_he_params *p = &st[s].p;
        p->round = st[s].t.round;
        p->attempt = st[s].t.secagg_attempt;
        p->n_sites = st[s].t.secagg_sites;
        p->threshold = st[s].t.secagg_threshold;
        memcpy(p->crs_seed, st[s].t.secagg_round_seed, 32);
        p->n_values = P;
        p->qz.clip = (float)st[s].t.secagg_clip;
        p->qz.frac_bits = (unsigned)st[s].t.secagg_quant_bits;
        CHECK(fs_he_site_new(p, st[s].t.secagg_index + 1, &st[s].hs) == FS_OK, "site_new");
        uint8_t *m = NULL;
        size_t ml = 0;
        CHECK(fs_he_site_keys(st[s].hs, &m, &ml) == FS_OK, "keys");
        CHECK(call(a, s, &st[s].t, FS_HE_KEYS, m, ml, now, NULL, NULL) == FS_SA_OK, "KEYS ok");
        free(m);
    }
    for (int s = 0; s < NS; s++) {
        if (st[s].gone == 2) continue;
        uint8_t *b = NULL, **parts = NULL;
        size_t bl = 0, *lens = NULL, np = 0;
        CHECK(call(a, s, &st[s].t, FS_HE_GET_BCAST, NULL, 0, now, &b, &bl) == FS_SA_OK, "broadcast");
        CHECK(fs_he_site_shares(st[s].hs, b, bl, &parts, &lens, &np) == FS_OK, "shares");
        for (size_t i = 0; i < np; i++)
            CHECK(call(a, s, &st[s].t, FS_HE_SHARES, parts[i], lens[i], now, NULL, NULL) == FS_SA_OK,
                  "SHARES ok");
        fs_he_site_free_parts(parts, lens, np);
        free(b);
    }
    int first = 0;
    while (st[first].gone == 2) first++;
    const size_t nct = fs_he_params_nct(&st[first].p), ob = fs_he_wire_bytes(FS_HE_OBJ_CT);
    int64_t *q = malloc(nct * FS_HE_N * sizeof *q);
    uint8_t *cts = malloc(nct * ob);
    for (int s = 0; s < NS; s++) {
        if (st[s].gone == 2) continue;
        for (uint32_t start = 1; start;) {
            uint8_t *r = NULL;
            size_t rl = 0;
            CHECK(call_at(a, s, &st[s].t, FS_HE_GET_RELAY, start, now, &r, &rl) == FS_SA_OK, "relay");
            CHECK(fs_he_site_recv_relay(st[s].hs, r, rl, &start) == FS_OK, "recv_relay");
            free(r);
        }
        CHECK(fs_he_site_ready(st[s].hs), "%s: threshold key built", SITES[s]);
        if (drop_up & (1u << s)) {
            st[s].gone = 1;
            continue;
        }
        uint64_t cap = st[s].t.secagg_weight_cap, m = SAMPLES[s] < cap ? SAMPLES[s] : cap;
        CHECK(fs_he_quantise(&st[s].p.qz, d[s], P, (float)((double)m / (double)cap), 1000 + (uint64_t)s, q) ==
                  FS_OK, "quantise");
        if (st[s].t.dp_distributed) {
            /* the noise share, as `fedseg node` adds it */
            double sd = (double)st[s].t.dp_noise_multiplier * st[s].t.secagg_clip *
                        ldexp(1.0, st[s].t.secagg_quant_bits) / sqrt((double)st[s].t.secagg_threshold);
            fs_dp_dgauss g;
            CHECK(fs_dp_dgauss_init(&g, sd) == FS_OK, "dgauss init (stddev %g)", sd);
            uint8_t key[32] = {(uint8_t)(s + 1)};
            int64_t *nz = malloc(P * sizeof *nz);
            fs_dp_dgauss_sample(&g, key, 0, nz, P);
            for (size_t i = 0; i < P; i++) q[i] += nz[i];
            free(nz);
        }
        for (uint32_t j = 0; j < nct; j++)
            CHECK(fs_he_site_encrypt_ct(st[s].hs, q, P + 1, j, cts + j * ob, ob) == FS_OK, "encrypt");
        if (corrupt_first && s == 0) {
            cts[ob + 1000] ^= 0x10; /* one bit of the second ciphertext */
            fs_status e = push_ct(a, s, &st[s].t, cts, nct * ob, now, why, sizeof why);
            CHECK(e != FS_OK && strstr(why, "ciphertext"), "a flipped byte is refused (%s): %s",
                  fs_status_str(e), why);
            cts[ob + 1000] ^= 0x10;
        }
        CHECK(push_ct(a, s, &st[s].t, cts, nct * ob, now, why, sizeof why) == FS_OK,
              "%s: encrypted upload accepted (%s)", SITES[s], why);
    }
    free(q);
    free(cts);
    if (drop_up) {
        now += 101; /* the round's deadline: the upload stage ends */
        fs_round_tick(a, now);
    }
    for (int s = 0; s < NS; s++)
        if (!st[s].gone && !(drop_dec & (1u << s))) decrypt_all(a, s, &st[s], now);
    if (drop_dec) {
        now += 11; /* the decryption stage's deadline: another set */
        fs_round_tick(a, now);
        for (int s = 0; s < NS; s++)
            if (!st[s].gone && !(drop_dec & (1u << s))) decrypt_all(a, s, &st[s], now);
    }
    for (int s = 0; s < NS; s++) fs_he_site_free(st[s].hs);
    *clock = now + 1;
    return st[first].t.secagg_attempt;
}

static uint32_t run_round(fs_round *a, float d[NS][P], unsigned drop_up, unsigned drop_dec, double *clock,
                          int corrupt_first)
{
    return run_round_of(a, d, 0xf, drop_up, drop_dec, clock, corrupt_first);
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

static int metrics_line_has(const char *dir, int round, const char *needle)
{
    char path[256], line[8192], head[32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    snprintf(head, sizeof head, "{\"round\":%d,", round);
    FILE *f = fopen(path, "r");
    int ok = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, head, strlen(head)) && strstr(line, needle)) ok = 1;
    if (f) fclose(f);
    return ok;
}

/* A site silent in the key stage is left out until it calls again. */
static void test_silent(void)
{
    char dir[] = "round_he_silent_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
    static float w0[P], before[P], d[NS][P];
    fs_round *a = open_round(dir, w0);
    double now = 6;
    char why[256];
    fs_round_tick(a, now);
    /* round 1, attempt 1: sites 1..3 send their keys, site_4 is frozen */
    fs_wire_task t[NS];
    fs_he_site *hs[NS] = {0};
    for (int s = 0; s < 3; s++) {
        CHECK(fs_round_task(a, SITES[s], now, &t[s], why, sizeof why) == FS_OK && t[s].encrypted &&
                  t[s].secagg_sites == 4, "%s: an encrypted task among 4 sites", SITES[s]);
        fs_he_params p;
        memset(&p, 0, sizeof p);
        p.round = t[s].round;
        p.attempt = t[s].secagg_attempt;
        p.n_sites = t[s].secagg_sites;
        p.threshold = t[s].secagg_threshold;
        memcpy(p.crs_seed, t[s].secagg_round_seed, 32);
        p.n_values = P;
        p.qz.clip = (float)t[s].secagg_clip;
        p.qz.frac_bits = (unsigned)t[s].secagg_quant_bits;
        uint8_t *m = NULL;
        size_t ml = 0;
        CHECK(fs_he_site_new(&p, t[s].secagg_index + 1, &hs[s]) == FS_OK && fs_he_site_keys(hs[s], &m, &ml) == FS_OK,
              "keys");
        CHECK(call(a, s, &t[s], FS_HE_KEYS, m, ml, now, NULL, NULL) == FS_SA_OK, "KEYS ok");
        free(m);
        fs_he_site_free(hs[s]);
    }
    now += 11; /* the key stage's deadline */
    fs_round_tick(a, now);
    CHECK(call(a, 0, &t[0], FS_HE_GET_BCAST, NULL, 0, now, NULL, NULL) == FS_SA_ABANDONED,
          "the attempt without site_4's key is abandoned");
    now += 6; /* join wait: the round reopens without site_4 */
    fs_round_tick(a, now);
    now += 6;
    fs_round_tick(a, now);
    make_deltas(d, 7);
    memcpy(before, w0, sizeof before);
    run_round_of(a, d, 0x7, 0, 0, &now, 0);
    fs_round_view v;
    fs_round_view_get(a, &v);
    CHECK(v.completed == 1, "round 1 completed without the silent site (%u)", v.completed);
    double err = mean_error(v.model, before, d, 0x7);
    CHECK(err < 1e-5, "round 1: the mean of the three others, worst error %g", err);
    /* site_4 calls again: round 2 has all four */
    fs_wire_task t4;
    CHECK(fs_round_task(a, SITES[3], now, &t4, why, sizeof why) == FS_OK, "site_4 asks for a task");
    now += 6;
    fs_round_tick(a, now);
    make_deltas(d, 8);
    memcpy(before, v.model, sizeof before);
    run_round(a, d, 0, 0, &now, 0);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 2, "round 2 completed (%u)", v.completed);
    err = mean_error(v.model, before, d, 0xf);
    CHECK(err < 1e-5, "round 2: site_4 is back, the mean of all four, worst error %g", err);
    fs_round_free(a);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Distributed DP: one round, four sites with zero updates adding noise. */
static void test_distributed_dp(void)
{
    char dir[] = "round_he_dp_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
    static float w0[P];
    fs_round_config c = he_config(dir);
    c.rounds = 2;
    c.min_sites = 4;
    c.he_threshold = 3;
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
    CHECK(fs_round_task(a, "site_1", now, &t, why, sizeof why) == FS_OK && t.encrypted && t.dp_distributed &&
              t.dp_noise_multiplier == 2.0f && t.secagg_clip == 0.5 && t.secagg_weight_cap == 1 &&
              t.secagg_threshold == 3,
          "a distributed-DP encrypted task (clip %g, cap %llu, t %u)", t.secagg_clip,
          (unsigned long long)t.secagg_weight_cap, t.secagg_threshold);
    int f = t.secagg_quant_bits;
    static float zero[NS][P];
    run_round(a, zero, 0, 0, &now, 0);
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
    char dir[] = "round_he_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    static float w0[P], before[P], d[NS][P];
    for (size_t i = 0; i < P; i++) w0[i] = (float)i * 1e-4f;

    /* a config with both private modes is refused */
    {
        fs_round_config c = he_config(dir);
        c.secure_agg = 1;
        c.secagg_clip = 10;
        fs_round *x = NULL;
        CHECK(fs_round_open(&x, &c, w0, P, 0) == FS_ERR_ARG, "secure_agg with encrypted is refused");
        fs_round_free(x);
        c = he_config(dir);
        c.he_threshold = 4; /* above min_sites 3 */
        CHECK(fs_round_open(&x, &c, w0, P, 0) == FS_ERR_ARG, "he_threshold above min_sites is refused");
        fs_round_free(x);
    }

    fs_round *a = open_round(dir, w0);
    double now = 6;
    fs_round_view v;

    /* exact: round 1, everyone; site_1's first upload has a flipped byte */
    make_deltas(d, 1);
    memcpy(before, w0, sizeof before);
    run_round(a, d, 0, 0, &now, 1);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 1, "round 1 completed (%u)", v.completed);
    double err = mean_error(v.model, before, d, 0xf);
    CHECK(err < 1e-5, "round 1: w_1 = w_0 + weighted mean, worst error %g", err);
    CHECK(metrics_line_has(dir, 1, "\"contributed\":4,\"decrypted_by\":3,\"generations\":1"),
          "round 1's metrics: 4 contributed, 3 decrypted, 1 generation");

    /* a dropout before the upload: round 2 with three sites */
    make_deltas(d, 2);
    memcpy(before, v.model, sizeof before);
    run_round(a, d, 1u << 3, 0, &now, 0);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 2, "round 2 completed with a dropout (%u)", v.completed);
    err = mean_error(v.model, before, d, 0x7);
    CHECK(err < 1e-5, "round 2: the mean of the three contributors, worst error %g", err);
    CHECK(metrics_line_has(dir, 2, "\"contributed\":3"), "round 2's metrics: 3 contributed");

    /* a member of the decryption set leaves: another set decrypts */
    make_deltas(d, 3);
    memcpy(before, v.model, sizeof before);
    run_round(a, d, 0, 1u << 0, &now, 0);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 3, "round 3 completed after a decryptor left (%u)", v.completed);
    err = mean_error(v.model, before, d, 0xf);
    CHECK(err < 1e-5, "round 3: the mean of all four, worst error %g", err);
    CHECK(metrics_line_has(dir, 3, "\"generations\":2"), "round 3's metrics: a second decryption set");

    /* two of four leave before uploading: abandoned, unchanged, new attempt */
    make_deltas(d, 4);
    memcpy(before, v.model, sizeof before);
    uint32_t att1 = run_round(a, d, (1u << 2) | (1u << 3), 0, &now, 0);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 3, "round 4 not completed by the abandoned attempt (%u)", v.completed);
    CHECK(memcmp(v.model, before, sizeof before) == 0, "the model is unchanged after the abandoned attempt");
    now += 6; /* the round reopens (join wait) */
    fs_round_tick(a, now);
    uint32_t att2 = run_round(a, d, 0, 0, &now, 0);
    CHECK(att2 != att1, "a new attempt id (%u after %u)", att2, att1);
    fs_round_view_get(a, &v);
    CHECK(v.completed == 4, "round 4 completed by the second attempt (%u)", v.completed);
    err = mean_error(v.model, before, d, 0xf);
    CHECK(err < 1e-5, "round 4: the mean of all four, worst error %g", err);

    /* refusals in round 5 */
    fs_wire_task t;
    char why[256];
    CHECK(fs_round_task(a, "site_1", now, &t, why, sizeof why) == FS_OK && t.action == FS_TASK_TRAIN &&
              t.encrypted, "task");
    fs_wire_update_header h;
    memset(&h, 0, sizeof h);
    h.protocol_version = FS_PROTOCOL_VERSION;
    h.round = 5;
    h.num_params = P;
    h.num_samples = 3;
    h.global_dice_wt = h.global_dice_tc = h.global_dice_et = NAN;
    fs_round_upload *u = NULL;
    CHECK(fs_round_update_begin(a, "site_1", &h, now, &u, why, sizeof why) == FS_ERR_MISMATCH &&
              strstr(why, "encrypted updates only"), "a plain update is refused: %s", why);
    h.masked = 1;
    h.num_params = P + 1;
    CHECK(fs_round_update_begin(a, "site_1", &h, now, &u, why, sizeof why) == FS_ERR_MISMATCH &&
              strstr(why, "encrypted updates only"), "a masked update is refused: %s", why);
    fs_wire_secagg_request rq = {FS_PROTOCOL_VERSION, 5, t.secagg_attempt, FS_SA_ADVERTISE, NULL, 0};
    fs_wire_secagg_reply rep;
    uint8_t *pl = NULL;
    CHECK(fs_round_secagg(a, "site_1", &rq, now, &rep, &pl, why, sizeof why) == FS_ERR_MISMATCH &&
              strstr(why, "belongs to secure aggregation"), "a secure-aggregation stage is refused: %s", why);
    rq.stage = FS_HE_GET_BCAST;
    CHECK(fs_round_secagg(a, "site_9", &rq, now, &rep, &pl, why, sizeof why) == FS_ERR_NOT_FOUND,
          "an unknown identity is refused");

    fs_round_free(a);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    test_distributed_dp();
    test_silent();
    return check_result();
}
