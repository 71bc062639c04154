/*
 * tests/test_he_proto.c — the encrypted-aggregation protocol of one round
 * attempt (common/he_proto.h), run in process: one server and n sites pass
 * every message through the real parsers.
 *
 *  1. Parameters: fs_he_frac_bits for clip 10 and 1..max sites gives the
 *     largest fitting f (f + 1 does not fit, or f = 24) and refuses the
 *     impossible; fs_he_params_check refuses each bad field.
 *  2. Full run, 5 sites, t = 3: the decrypted sum equals exactly the sum of
 *     the sites' quantised vectors (weight word included) and dequantises to
 *     the weighted mean within the quantisation step. Along the way every
 *     message type is refused when truncated, extended, of another magic,
 *     version, type, round or attempt, with non-zero reserved bytes, or with
 *     garbage after the header, and the valid message is taken afterwards
 *     (refusals change no state). Refused too: a tampered sealed share, a
 *     share relayed to another receiver or under another dealer, ciphertext
 *     objects with a flipped byte, another index, another sender or another
 *     key id, a repeated KEYS / SHARES / REQ / PART, malformed counts and sets.
 *     The server holds no key material: from the PART messages and the sum,
 *     c0 with t − 1 partials (or none) decodes to values unrelated to the sum.
 *  3. Two sites drop before upload: the sum of the 3 contributors is exact.
 *  4. A member of T drops during decryption (after its first batch, 18
 *     ciphertexts in 2 batches): close_decrypt starts generation 2 with the
 *     4th contributor; the old generation's PART is refused (ABANDONED), its
 *     REQ refused by the site; the result is still exact.
 *  5. Abandonment: a site missing at K or S; t − 1 contributors; too many
 *     members lost in decryption; a commit pass refused half-way.
 *  6. Batches: 20 sites (SHARES in 2 parts, RELAY in 2 batches), exact sum,
 *     every message under 1 MiB.
 * FS_HE_CORPUS=DIR also writes a handful of valid messages and objects of a
 * small run there (the seeds of tests/fuzz/corpus/he; the first byte selects
 * the fuzz_he target, see tests/fuzz/fuzz_he.c).
 */
#include "check.h"
#include "common/he_proto.h"
#include "common/log.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define MAXN 32
#define HDR 16u
#define MIB (1u << 20)

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return rs;
}

static void *xmalloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);
    if (!p) { fprintf(stderr, "FATAL: out of memory\n"); exit(1); }
    return p;
}

static uint8_t *dup_bytes(const uint8_t *b, size_t n)
{
    uint8_t *c = xmalloc(n + 1);
    memcpy(c, b, n);
    return c;
}

static int is_refusal(fs_status st)
{
    return st == FS_ERR_FORMAT || st == FS_ERR_MISMATCH || st == FS_ERR_CHECKSUM;
}

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- a receiver under test: a function of (context, bytes) ------------------- */

typedef fs_status (*recv_fn)(void *ctx, const uint8_t *m, size_t len);

/* Feeds the generic mutants of a valid message: each must be refused with
 * the status named (0: any refusal). The caller then feeds the valid
 * message, which must still be taken. */
static void refuse_mutants(const char *name, const uint8_t *msg, size_t len, recv_fn fn, void *ctx)
{
    uint8_t *b = xmalloc(len + 1);
    fs_log_level lvl = fs_log_get_level();
    fs_log_set_level(FS_LOG_QUIET);
    struct { const char *what; size_t len; int at; uint8_t val; fs_status want; } cases[] = {
        { "empty", 0, -1, 0, FS_ERR_FORMAT },
        { "header cut", HDR - 1, -1, 0, FS_ERR_FORMAT },
        { "header only", HDR, -1, 0, FS_ERR_FORMAT },
        { "one byte short", len - 1, -1, 0, FS_ERR_FORMAT },
        { "one byte more", len + 1, -1, 0, FS_ERR_FORMAT },
        { "magic", len, 0, 'X', FS_ERR_FORMAT },
        { "version", len, 4, 2, FS_ERR_FORMAT },
        { "type", len, 5, (uint8_t)(msg[5] % 6 + 1), FS_ERR_MISMATCH },
        { "reserved", len, 6, 1, FS_ERR_FORMAT },
        { "round", len, 8, (uint8_t)(msg[8] + 1), FS_ERR_MISMATCH },
        { "attempt", len, 12, (uint8_t)(msg[12] + 1), FS_ERR_MISMATCH },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        memcpy(b, msg, len);
        b[len] = 0;
        if (cases[c].at >= 0) b[cases[c].at] = cases[c].val;
        fs_status st = fn(ctx, b, cases[c].len);
        CHECK(st == cases[c].want, "%s: mutant '%s' gave %s, expected %s", name, cases[c].what,
              fs_status_str(st), fs_status_str(cases[c].want));
    }
    /* Garbage: random bytes of the same length, then a valid header
     * followed by random bytes, then random 4-byte words in the body. */
    for (int g = 0; g < 3; g++) {
        memcpy(b, msg, len);
        for (size_t i = g ? HDR : 0; i < len; i++)
            if (g < 2 || i < HDR + 64) b[i] = (uint8_t)rnd();
        fs_status st = fn(ctx, b, len);
        CHECK(is_refusal(st), "%s: garbage %d gave %s", name, g, fs_status_str(st));
    }
    fs_log_set_level(lvl);
    free(b);
}

/* ---- a federation run ---------------------------------------------------------- */

typedef struct {
    fs_he_params p;
    uint32_t n;
    size_t nct;
    fs_he_server *srv;
    fs_he_site *site[MAXN + 1];
    int64_t *q[MAXN + 1];         /* quantised values, n_values + 1      */
    float *x[MAXN + 1];
    float w[MAXN + 1];
    uint8_t *bcast;
    size_t bcast_len;
    uint64_t *mysum;              /* the sum recomputed here from the CT objects */
    size_t max_msg;               /* largest message seen                 */
} run;

static void seen(run *r, size_t len) { if (len > r->max_msg) r->max_msg = len; }

static void run_init(run *r, uint32_t n, uint32_t t, uint64_t n_values, uint32_t round,
                     uint32_t attempt)
{
    memset(r, 0, sizeof *r);
    r->n = n;
    r->p.round = round;
    r->p.attempt = attempt;
    r->p.n_sites = n;
    r->p.threshold = t;
    r->p.n_values = n_values;
    for (unsigned i = 0; i < FS_HE_SEED_BYTES; i++) r->p.crs_seed[i] = (uint8_t)(rnd() >> 11);
    r->p.qz.clip = 1.0f;
    unsigned f = 0;
    CHECK(fs_he_frac_bits(1.0, n, &f) == FS_OK, "frac bits for %u sites", n);
    r->p.qz.frac_bits = f;
    r->nct = fs_he_params_nct(&r->p);
    CHECK(fs_he_server_new(&r->p, &r->srv) == FS_OK, "server_new");
    if (r->srv && attempt % 2) {
        /* runs of odd attempts keep the server's sum on the GPU where there
         * is one (exact sums are checked all the same); elsewhere the
         * request is refused and the sum stays on the CPU */
        fs_status g = fs_he_server_use_gpu(r->srv);
        CHECK((g == FS_OK) == fs_he_server_on_gpu(r->srv) &&
                  (g == FS_OK || g == FS_ERR_UNSUPPORTED || g == FS_ERR_DEVICE),
              "server_use_gpu: %s", fs_status_str(g));
        fprintf(stderr, "(attempt %u: ciphertext sum on the %s)\n", attempt,
                g == FS_OK ? "GPU" : "CPU, no device");
    }
    for (uint32_t i = 1; i <= n; i++)
        CHECK(fs_he_site_new(&r->p, i, &r->site[i]) == FS_OK, "site_new %u", i);
    r->mysum = xmalloc(r->nct * FS_HE_CT_WORDS * 8);
    if (!r->srv) { fprintf(stderr, "FATAL: server_new\n"); exit(1); }
}

static void run_free(run *r)
{
    fs_he_server_free(r->srv);
    for (uint32_t i = 1; i <= r->n; i++) {
        fs_he_site_free(r->site[i]);
        free(r->q[i]);
        free(r->x[i]);
    }
    free(r->bcast);
    free(r->mysum);
}

/* Stage K for the sites not in `skip` (bit i = site i). */
static void run_keys(run *r, uint64_t skip)
{
    for (uint32_t i = 1; i <= r->n; i++) {
        if (skip >> i & 1) continue;
        uint8_t *m = NULL;
        size_t len = 0;
        CHECK(fs_he_site_keys(r->site[i], &m, &len) == FS_OK, "site_keys %u", i);
        seen(r, len);
        CHECK(fs_he_server_recv_keys(r->srv, i, m, len) == FS_OK, "recv_keys %u", i);
        free(m);
    }
}

static fs_status run_close_keys(run *r)
{
    fs_status st = fs_he_server_close_keys(r->srv, &r->bcast, &r->bcast_len);
    if (st == FS_OK) seen(r, r->bcast_len);
    return st;
}

static void run_shares(run *r, uint64_t skip)
{
    for (uint32_t i = 1; i <= r->n; i++) {
        if (skip >> i & 1) continue;
        uint8_t **parts = NULL;
        size_t *lens = NULL, np = 0;
        CHECK(fs_he_site_shares(r->site[i], r->bcast, r->bcast_len, &parts, &lens, &np) == FS_OK,
              "site_shares %u", i);
        CHECK(np == (r->n - 1 + FS_HE_PROTO_BATCH - 1) / FS_HE_PROTO_BATCH, "site %u: %zu parts",
              i, np);
        for (size_t k = 0; k < np; k++) {
            seen(r, lens[k]);
            CHECK(!fs_he_server_shares_done(r->srv, i), "shares not done before the last part");
            CHECK(fs_he_server_recv_shares(r->srv, i, parts[k], lens[k]) == FS_OK,
                  "recv_shares %u part %zu", i, k);
        }
        CHECK(fs_he_server_shares_done(r->srv, i), "site %u shares done", i);
        fs_he_site_free_parts(parts, lens, np);
    }
}

/* All RELAY batches for site i; returns the number of batches. */
static int run_relay_site(run *r, uint32_t i)
{
    uint32_t start = 1;
    int batches = 0;
    do {
        uint8_t *m = NULL;
        size_t len = 0;
        uint32_t next = 0;
        CHECK(fs_he_server_relay(r->srv, i, start, &m, &len) == FS_OK, "relay %u from %u", i, start);
        seen(r, len);
        CHECK(fs_he_site_recv_relay(r->site[i], m, len, &next) == FS_OK, "recv_relay %u", i);
        free(m);
        batches++;
        if (next && next <= start) { CHECK(0, "relay next %u after %u", next, start); break; }
        start = next;
    } while (start && batches < 100);
    CHECK(fs_he_site_ready(r->site[i]), "site %u has its threshold key", i);
    return batches;
}

/* Site i's update: values in about [-1.5, 1.5] (some clipped), its weight. */
static void make_update(run *r, uint32_t i)
{
    const size_t P = r->p.n_values;
    r->x[i] = xmalloc(P * sizeof(float));
    r->q[i] = xmalloc((P + 1) * sizeof(int64_t));
    for (size_t k = 0; k < P; k++) r->x[i][k] = (float)((double)(int64_t)rnd() / 6.1e18);
    r->w[i] = (float)(i + 1) / (float)(r->n + 2);
    CHECK(fs_he_quantise(&r->p.qz, r->x[i], P, r->w[i], 0x5eed0000ull + i, r->q[i]) == FS_OK,
          "quantise %u", i);
}

/* Encrypts site i's update into nct CT objects (caller frees objs[j]): odd
 * sites with the whole-update call (sites 1, 5, … asking for the GPU, which
 * falls back to the CPU without one), even sites object by object. */
static uint8_t **encrypt_site(run *r, uint32_t i)
{
    const size_t ob = fs_he_wire_bytes(FS_HE_OBJ_CT);
    uint8_t **objs = xmalloc(r->nct * sizeof *objs);
    uint64_t *ct = xmalloc(FS_HE_CT_WORDS * 8);
    uint8_t *all = NULL;
    if (i % 2) {
        all = xmalloc(r->nct * ob);
        int on_gpu = -1;
        CHECK(fs_he_site_encrypt(r->site[i], r->q[i], r->p.n_values + 1, i % 4 == 1, all,
                                 r->nct * ob, &on_gpu) == FS_OK &&
                  (on_gpu == 0 || (on_gpu == 1 && i % 4 == 1)),
              "encrypt site %u whole (on the GPU: %d)", i, on_gpu);
        CHECK(fs_he_site_encrypt(r->site[i], r->q[i], r->p.n_values + 1, 0, all,
                                 r->nct * ob - 1, NULL) == FS_ERR_ARG,
              "whole-update encryption refuses a short buffer");
    }
    for (size_t j = 0; j < r->nct; j++) {
        objs[j] = xmalloc(ob + 1);
        if (all)
            memcpy(objs[j], all + j * ob, ob);
        else
            CHECK(fs_he_site_encrypt_ct(r->site[i], r->q[i], r->p.n_values + 1, (uint32_t)j,
                                        objs[j], ob) == FS_OK, "encrypt site %u ct %zu", i, j);
        fs_he_hdr h;
        CHECK(fs_he_read(objs[j], ob, FS_HE_OBJ_CT, &h, ct) == FS_OK, "own ct readable");
        fs_he_ct_add(r->mysum + j * FS_HE_CT_WORDS, ct, 1);
    }
    free(all);
    free(ct);
    return objs;
}

static void free_objs(uint8_t **objs, size_t nct)
{
    for (size_t j = 0; j < nct; j++) free(objs[j]);
    free(objs);
}

/* Upload of site i: verify pass, reset, commit pass, done. */
static void upload(run *r, uint32_t i, uint8_t **objs)
{
    const size_t ob = fs_he_wire_bytes(FS_HE_OBJ_CT);
    for (size_t j = 0; j < r->nct; j++)
        CHECK(fs_he_server_ct(r->srv, i, objs[j], ob, 0) == FS_OK, "verify %u/%zu", i, j);
    fs_he_server_ct_reset(r->srv, i);
    for (size_t j = 0; j < r->nct; j++)
        CHECK(fs_he_server_ct(r->srv, i, objs[j], ob, 1) == FS_OK, "commit %u/%zu", i, j);
    CHECK(fs_he_server_ct_done(r->srv, i) == FS_OK, "ct_done %u", i);
}

static void run_upload(run *r, uint64_t contrib)
{
    for (uint32_t i = 1; i <= r->n; i++) {
        if (!(contrib >> i & 1)) continue;
        make_update(r, i);
        uint8_t **objs = encrypt_site(r, i);
        upload(r, i, objs);
        free_objs(objs, r->nct);
    }
}

/* Member i answers every batch of the current generation (at most
 * max_batches); keeps the PART messages in parts[] when given. */
static void answer(run *r, uint32_t i, int max_batches, uint8_t **parts, size_t *plens, int *nparts)
{
    uint32_t start = 0;
    int b = 0;
    do {
        uint8_t *req = NULL, *part = NULL;
        size_t rlen = 0, plen = 0;
        uint32_t gen = 0, next = 0;
        CHECK(fs_he_server_decrypt_req(r->srv, i, start, &req, &rlen) == FS_OK, "req %u", i);
        seen(r, rlen);
        CHECK(fs_he_site_partials(r->site[i], req, rlen, &part, &plen, &gen, &next) == FS_OK,
              "partials %u", i);
        CHECK(gen == fs_he_server_generation(r->srv), "site answers generation %u", gen);
        seen(r, plen);
        CHECK(fs_he_server_recv_partials(r->srv, i, part, plen) == FS_OK, "recv_partials %u", i);
        if (parts && *nparts < 64) { parts[*nparts] = part; plens[*nparts] = plen; (*nparts)++; }
        else free(part);
        free(req);
        start = next;
        b++;
    } while (start && b < max_batches);
}

/* The exact integer sum of the contributors' quantised vectors. */
static int64_t *want_sum(run *r, uint64_t contrib)
{
    int64_t *s = xmalloc((r->p.n_values + 1) * 8);
    for (uint32_t i = 1; i <= r->n; i++)
        if (contrib >> i & 1)
            for (size_t k = 0; k <= r->p.n_values; k++) s[k] += r->q[i][k];
    return s;
}

static size_t matches(const int64_t *a, const int64_t *b, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += a[i] == b[i];
    return k;
}

/* Closes decryption, fetches the result and compares it with the exact sum. */
static void check_result_exact(run *r, uint64_t contrib, const char *what)
{
    int again = -1;
    CHECK(fs_he_server_decrypt_done(r->srv), "%s: decrypt done", what);
    CHECK(fs_he_server_close_decrypt(r->srv, &again) == FS_OK && again == 0,
          "%s: close_decrypt with every member answered", what);
    int64_t *got = xmalloc((r->p.n_values + 1) * 8), *want = want_sum(r, contrib);
    CHECK(fs_he_server_result(r->srv, got) == FS_OK, "%s: result", what);
    size_t m = matches(got, want, r->p.n_values + 1);
    CHECK(m == r->p.n_values + 1, "%s: decrypted sum exact in %zu of %llu values", what, m,
          (unsigned long long)r->p.n_values + 1);
    printf("%s: decrypted sum exact in %zu of %llu values (weight word %lld)\n", what, m,
           (unsigned long long)r->p.n_values + 1, (long long)got[r->p.n_values]);
    free(got);
    free(want);
}

static uint64_t mask_all(uint32_t n) { return ((1ull << (n + 1)) - 1) & ~1ull; }

/* ---- receivers as recv_fn ------------------------------------------------------ */

typedef struct { run *r; uint32_t site; } rctx;

static fs_status f_recv_keys(void *c, const uint8_t *m, size_t l)
{ rctx *x = c; return fs_he_server_recv_keys(x->r->srv, x->site, m, l); }
static fs_status f_recv_shares(void *c, const uint8_t *m, size_t l)
{ rctx *x = c; return fs_he_server_recv_shares(x->r->srv, x->site, m, l); }
static fs_status f_recv_partials(void *c, const uint8_t *m, size_t l)
{ rctx *x = c; return fs_he_server_recv_partials(x->r->srv, x->site, m, l); }
static fs_status f_ct_verify(void *c, const uint8_t *m, size_t l)
{ rctx *x = c; return fs_he_server_ct(x->r->srv, x->site, m, l, 0); }
static fs_status f_site_shares(void *c, const uint8_t *m, size_t l)
{
    rctx *x = c;
    uint8_t **parts = NULL;
    size_t *lens = NULL, np = 0;
    fs_status st = fs_he_site_shares(x->r->site[x->site], m, l, &parts, &lens, &np);
    fs_he_site_free_parts(parts, lens, np);
    return st;
}
static fs_status f_site_relay(void *c, const uint8_t *m, size_t l)
{ rctx *x = c; uint32_t nx; return fs_he_site_recv_relay(x->r->site[x->site], m, l, &nx); }
static fs_status f_site_partials(void *c, const uint8_t *m, size_t l)
{
    rctx *x = c;
    uint8_t *out = NULL;
    size_t ol = 0;
    uint32_t g, nx;
    fs_status st = fs_he_site_partials(x->r->site[x->site], m, l, &out, &ol, &g, &nx);
    free(out);
    return st;
}

/* Applies patch(b) to a copy of msg and expects `want` from fn. */
#define REFUSE_PATCHED(fn, c, msg, len, want, what, ...) do { \
    uint8_t *b_ = dup_bytes(msg, len); uint8_t *b = b_; (void)b; __VA_ARGS__; \
    fs_status st_ = fn(c, b_, len); \
    CHECK(st_ == (want), "%s: gave %s, expected %s", what, fs_status_str(st_), fs_status_str(want)); \
    free(b_); } while (0)

/* ---- 1. parameters --------------------------------------------------------------- */

static void test_params(void)
{
    const uint32_t noise_max = fs_he_max_sites_noise();
    const uint32_t ns[] = { 1, 2, 3, 5, 10, 50, 100, 255 };
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        unsigned f = 99;
        fs_status st = fs_he_frac_bits(10.0, ns[k], &f);
        if (ns[k] > noise_max) {
            CHECK(st == FS_ERR_ARG, "clip 10, %u sites beyond the noise bound %u: refused", ns[k],
                  noise_max);
            continue;
        }
        const fs_he_quant a = { .clip = 10.0f, .frac_bits = f },
                          b = { .clip = 10.0f, .frac_bits = f + 1 };
        CHECK(st == FS_OK && f <= 24 && fs_he_max_sites(&a) >= ns[k] &&
              (f == 24 || fs_he_max_sites(&b) < ns[k]),
              "frac_bits(10, %u) = %u: max_sites %u, at f+1 %u", ns[k], f, fs_he_max_sites(&a),
              fs_he_max_sites(&b));
        printf("clip 10, %3u sites: %u fraction bits (max sites %u, at %u bits %u)\n", ns[k], f,
               fs_he_max_sites(&a), f + 1, f < 24 ? fs_he_max_sites(&b) : 0);
    }
    unsigned f = 99;
    fprintf(stderr, "(refusals expected next)\n");
    CHECK(fs_he_frac_bits(10.0, noise_max + 1, &f) == FS_ERR_ARG, "one site past the noise bound");
    CHECK(fs_he_frac_bits(1e9, 2, &f) == FS_ERR_ARG, "clip 1e9 leaves no plaintext room");
    CHECK(fs_he_frac_bits(0.0, 2, &f) == FS_ERR_ARG, "clip 0 refused");
    CHECK(fs_he_frac_bits(10.0, 0, &f) == FS_ERR_ARG, "0 sites refused");
    CHECK(fs_he_frac_bits(1.0 / 0.0, 2, &f) == FS_ERR_ARG, "infinite clip refused");

    fs_he_params ok = { .round = 1, .n_sites = 5, .threshold = 3, .n_values = 100,
                        .qz = { .clip = 1.0f, .frac_bits = 16 } };
    CHECK(fs_he_params_check(&ok) == FS_OK, "valid parameters accepted");
    fs_he_params p;
    p = ok; p.round = 0; CHECK(fs_he_params_check(&p) == FS_ERR_ARG, "round 0");
    p = ok; p.n_sites = 1; p.threshold = 1; CHECK(fs_he_params_check(&p) == FS_ERR_ARG, "1 site");
    p = ok; p.n_sites = 256; CHECK(fs_he_params_check(&p) == FS_ERR_ARG, "256 sites");
    p = ok; p.threshold = 1; CHECK(fs_he_params_check(&p) == FS_ERR_ARG, "threshold 1");
    p = ok; p.threshold = 6; CHECK(fs_he_params_check(&p) == FS_ERR_ARG, "threshold > n");
    p = ok; p.n_values = 0; CHECK(fs_he_params_check(&p) == FS_ERR_ARG, "0 values");
    p = ok; p.n_values = (1ull << 31) + 1; CHECK(fs_he_params_check(&p) == FS_ERR_ARG, "2^31+1 values");
    p = ok; p.qz.frac_bits = 25; CHECK(fs_he_params_check(&p) == FS_ERR_ARG, "25 fraction bits");
    p = ok; p.qz.frac_bits = 23; CHECK(fs_he_params_check(&p) == FS_ERR_ARG,
                                       "5 sites do not fit 23 fraction bits at clip 1");
}

/* ---- 2. full run with refusals and the server's view ----------------------------- */

static void test_full(void)
{
    run r;
    run_init(&r, 5, 3, 6000, 3, 2);
    const uint64_t all = mask_all(5);
    const size_t ob = fs_he_wire_bytes(FS_HE_OBJ_CT);
    CHECK(r.nct == 2, "6000 values + weight: 2 ciphertexts, got %zu", r.nct);
    fprintf(stderr, "(refusals expected in this test)\n");

    /* K: mutants of site 1's KEYS, then the real thing, a repeat, another
     * site's KEYS under a wrong name. */
    uint8_t *keys[6] = { 0 };
    size_t klen[6] = { 0 };
    for (uint32_t i = 1; i <= 5; i++)
        CHECK(fs_he_site_keys(r.site[i], &keys[i], &klen[i]) == FS_OK, "site_keys %u", i);
    CHECK(fs_he_site_keys(r.site[1], &keys[0], &klen[0]) == FS_ERR_ARG, "keys twice refused");
    rctx c1 = { &r, 1 }, c2 = { &r, 2 };
    refuse_mutants("KEYS", keys[1], klen[1], f_recv_keys, &c1);
    CHECK(fs_he_server_recv_keys(r.srv, 2, keys[1], klen[1]) == FS_ERR_MISMATCH,
          "site 1's KEYS presented as site 2's refused");
    REFUSE_PATCHED(f_recv_keys, &c1, keys[1], klen[1], FS_ERR_CHECKSUM, "KEYS with a flipped byte",
                   b[HDR + 32 + 100] ^= 4);
    REFUSE_PATCHED(f_recv_keys, &c1, keys[1], klen[1], FS_ERR_FORMAT, "KEYS with a zero X25519 key",
                   memset(b + HDR, 0, 32));
    CHECK(fs_he_server_recv_keys(r.srv, 6, keys[1], klen[1]) == FS_ERR_ARG, "site 6 of 5 refused");
    for (uint32_t i = 1; i <= 5; i++)
        CHECK(fs_he_server_recv_keys(r.srv, i, keys[i], klen[i]) == FS_OK, "recv_keys %u", i);
    CHECK(fs_he_server_recv_keys(r.srv, 1, keys[1], klen[1]) == FS_ERR_MISMATCH, "repeated KEYS");
    CHECK(fs_he_server_count(r.srv, FS_HE_KEYED) == 5, "5 keyed");
    CHECK(run_close_keys(&r) == FS_OK, "close_keys");
    CHECK(fs_he_server_recv_keys(r.srv, 1, keys[1], klen[1]) == FS_ERR_ARG, "KEYS after close");

    /* S: BCAST mutants at site 1; SHARES mutants at the server. */
    refuse_mutants("BCAST", r.bcast, r.bcast_len, f_site_shares, &c1);
    REFUSE_PATCHED(f_site_shares, &c1, r.bcast, r.bcast_len, FS_ERR_MISMATCH, "BCAST for 4 sites",
                   put32(b + HDR, 4));
    REFUSE_PATCHED(f_site_shares, &c1, r.bcast, r.bcast_len, FS_ERR_CHECKSUM,
                   "BCAST with a flipped key byte", b[HDR + 4 + 1000] ^= 1);
    REFUSE_PATCHED(f_site_shares, &c1, r.bcast, r.bcast_len, FS_ERR_MISMATCH,
                   "BCAST with another X25519 key for site 1", b[r.bcast_len - 5 * 32] ^= 1);
    REFUSE_PATCHED(f_site_shares, &c2, r.bcast, r.bcast_len, FS_ERR_FORMAT,
                   "BCAST with a degenerate X25519 key for site 1",
                   memset(b + r.bcast_len - 5 * 32, 0, 32));
    {
        /* A key id that is not the key's: rewrite the object with another id. */
        const size_t pob = fs_he_wire_bytes(FS_HE_OBJ_PUBKEY);
        uint64_t *poly = xmalloc(FS_HE_POLY_WORDS * 8);
        fs_he_hdr h;
        uint8_t *b = dup_bytes(r.bcast, r.bcast_len);
        CHECK(fs_he_read(b + HDR + 4, pob, FS_HE_OBJ_PUBKEY, &h, poly) == FS_OK, "read pubkey");
        h.key_id[0] ^= 1;
        CHECK(fs_he_write(&h, poly, b + HDR + 4, pob) == FS_OK, "rewrite pubkey");
        CHECK(f_site_shares(&c1, b, r.bcast_len) == FS_ERR_MISMATCH, "BCAST with a false key id");
        free(b);
        free(poly);
    }
    uint8_t **parts[6] = { 0 };
    size_t *plens[6] = { 0 }, np[6] = { 0 };
    for (uint32_t i = 1; i <= 5; i++)
        CHECK(fs_he_site_shares(r.site[i], r.bcast, r.bcast_len, &parts[i], &plens[i], &np[i]) ==
              FS_OK && np[i] == 1, "site_shares %u", i);
    CHECK(f_site_shares(&c1, r.bcast, r.bcast_len) == FS_ERR_ARG, "BCAST twice refused");
    refuse_mutants("SHARES", parts[1][0], plens[1][0], f_recv_shares, &c1);
    const size_t entry = 4 + 24 + fs_he_wire_bytes(FS_HE_OBJ_SHAMIR) + 16;
    CHECK(plens[1][0] == HDR + 4 + 4 * entry, "SHARES of 4 receivers: %zu bytes", plens[1][0]);
    REFUSE_PATCHED(f_recv_shares, &c1, parts[1][0], plens[1][0], FS_ERR_FORMAT, "SHARES count 0",
                   put32(b + HDR, 0));
    REFUSE_PATCHED(f_recv_shares, &c1, parts[1][0], plens[1][0], FS_ERR_FORMAT, "SHARES count 17",
                   put32(b + HDR, 17));
    REFUSE_PATCHED(f_recv_shares, &c1, parts[1][0], plens[1][0], FS_ERR_FORMAT, "SHARES count 3",
                   put32(b + HDR, 3));
    REFUSE_PATCHED(f_recv_shares, &c1, parts[1][0], plens[1][0], FS_ERR_FORMAT,
                   "SHARES for the dealer itself", put32(b + HDR + 4, 1));
    REFUSE_PATCHED(f_recv_shares, &c1, parts[1][0], plens[1][0], FS_ERR_FORMAT,
                   "SHARES for site 6 of 5", put32(b + HDR + 4, 6));
    REFUSE_PATCHED(f_recv_shares, &c1, parts[1][0], plens[1][0], FS_ERR_FORMAT,
                   "SHARES for site 0", put32(b + HDR + 4, 0));
    REFUSE_PATCHED(f_recv_shares, &c1, parts[1][0], plens[1][0], FS_ERR_FORMAT,
                   "SHARES with one receiver twice", put32(b + HDR + 4 + entry, get32(b + HDR + 4)));
    CHECK(fs_he_server_count(r.srv, FS_HE_SHARED) == 0, "no refused part counted");
    for (uint32_t i = 1; i <= 5; i++)
        CHECK(fs_he_server_recv_shares(r.srv, i, parts[i][0], plens[i][0]) == FS_OK,
              "recv_shares %u", i);
    CHECK(fs_he_server_recv_shares(r.srv, 1, parts[1][0], plens[1][0]) == FS_ERR_MISMATCH,
          "a second share per receiver refused");
    CHECK(fs_he_server_count(r.srv, FS_HE_SHARED) == 5, "5 shared");
    uint8_t *relay_before = NULL;
    size_t rb_len = 0;
    CHECK(fs_he_server_relay(r.srv, 1, 1, &relay_before, &rb_len) == FS_ERR_ARG,
          "relay before close_shares refused");
    CHECK(fs_he_server_close_shares(r.srv) == FS_OK, "close_shares");
    for (uint32_t i = 1; i <= 5; i++) fs_he_site_free_parts(parts[i], plens[i], np[i]);

    /* Relays: site 1's RELAY is mutated; a share moved to site 3, a
     * relabelled dealer, a tampered byte, an inconsistent next. */
    uint8_t *rel1 = NULL, *rel3 = NULL;
    size_t rl1 = 0, rl3 = 0;
    CHECK(fs_he_server_relay(r.srv, 1, 1, &rel1, &rl1) == FS_OK, "relay for 1");
    CHECK(fs_he_server_relay(r.srv, 3, 1, &rel3, &rl3) == FS_OK, "relay for 3");
    CHECK(rl1 == HDR + 8 + 4 * entry && get32(rel1 + HDR) == 4 && get32(rel1 + HDR + 4) == 0,
          "RELAY for site 1: 4 shares, next 0");
    CHECK(get32(rel1 + HDR + 8) == 2 && get32(rel3 + HDR + 8) == 1, "dealers in order");
    refuse_mutants("RELAY", rel1, rl1, f_site_relay, &c1);
    rctx c3 = { &r, 3 };
    REFUSE_PATCHED(f_site_relay, &c1, rel1, rl1, FS_ERR_CHECKSUM, "RELAY with a tampered share",
                   b[HDR + 8 + 4 + 24 + 5000] ^= 0x40);
    REFUSE_PATCHED(f_site_relay, &c1, rel1, rl1, FS_ERR_CHECKSUM, "RELAY with a tampered tag",
                   b[HDR + 8 + entry - 1] ^= 1);
    REFUSE_PATCHED(f_site_relay, &c1, rel1, rl1, FS_ERR_CHECKSUM, "RELAY with a tampered nonce",
                   b[HDR + 8 + 4] ^= 1);
    /* Site 3's RELAY (dealers 1, 2, 4, 5) with dealer 2's share for site 1
     * in place of dealer 2's share for site 3: same dealer, other receiver. */
    REFUSE_PATCHED(f_site_relay, &c3, rel3, rl3, FS_ERR_CHECKSUM,
                   "the share dealer 2 sealed for site 1 relayed to site 3",
                   memcpy(b + HDR + 8 + entry + 4, rel1 + HDR + 8 + 4, entry - 4));
    REFUSE_PATCHED(f_site_relay, &c1, rel1, rl1, FS_ERR_CHECKSUM,
                   "dealer 3's share under dealer 2's name (sealed shares swapped)",
                   memcpy(b + HDR + 8 + 4, rel1 + HDR + 8 + entry + 4, entry - 4);
                   memcpy(b + HDR + 8 + entry + 4, rel1 + HDR + 8 + 4, entry - 4));
    REFUSE_PATCHED(f_site_relay, &c1, rel1, rl1, FS_ERR_FORMAT, "RELAY dealers out of order",
                   put32(b + HDR + 8 + entry, 2));
    REFUSE_PATCHED(f_site_relay, &c1, rel1, rl1, FS_ERR_FORMAT, "RELAY from the receiver itself",
                   put32(b + HDR + 8, 1));
    REFUSE_PATCHED(f_site_relay, &c1, rel1, rl1, FS_ERR_FORMAT, "RELAY with next 3 after the last",
                   put32(b + HDR + 4, 3));
    {
        /* A RELAY of the first two shares only, carrying dealers 2 and 4
         * (dealer 3 skipped) with next = 5: refused; under its real names
         * (2, 3; next 4) it is taken. Dealer 4's sealed share under name 3
         * fails authentication. */
        size_t l2 = HDR + 8 + 2 * entry;
        uint8_t *b = dup_bytes(rel1, l2);
        put32(b + HDR, 2);
        put32(b + HDR + 4, 5);
        put32(b + HDR + 8 + entry, 4);
        uint32_t nx = 99;
        CHECK(fs_he_site_recv_relay(r.site[1], b, l2, &nx) == FS_ERR_FORMAT, "skipped dealer refused");
        put32(b + HDR + 4, 4);
        put32(b + HDR + 8 + entry, 3);
        memcpy(b + HDR + 8 + entry + 4, rel1 + HDR + 8 + 2 * entry + 4, entry - 4);
        CHECK(fs_he_site_recv_relay(r.site[1], b, l2, &nx) == FS_ERR_CHECKSUM,
              "dealer 4's share under dealer 3's name refused");
        memcpy(b, rel1, l2);
        put32(b + HDR, 2);
        put32(b + HDR + 4, 4);
        CHECK(fs_he_site_recv_relay(r.site[1], b, l2, &nx) == FS_OK && nx == 4 &&
              !fs_he_site_ready(r.site[1]), "first two shares taken, next 4");
        CHECK(fs_he_site_recv_relay(r.site[1], b, l2, &nx) == FS_ERR_MISMATCH,
              "the same shares again refused");
        free(b);
        b = dup_bytes(rel1, rl1);
        size_t l3 = HDR + 8 + 2 * entry;
        memmove(b + HDR + 8, b + HDR + 8 + 2 * entry, 2 * entry);
        put32(b + HDR, 2);
        put32(b + HDR + 4, 0);
        CHECK(fs_he_site_recv_relay(r.site[1], b, l3, &nx) == FS_OK && nx == 0 &&
              fs_he_site_ready(r.site[1]), "last two shares taken, key built");
        free(b);
    }
    free(rel1);
    CHECK(fs_he_site_recv_relay(r.site[3], rel3, rl3, &(uint32_t){ 0 }) == FS_OK, "relay 3 taken");
    free(rel3);
    for (uint32_t i = 2; i <= 5; i++)
        if (i != 3) run_relay_site(&r, i);

    /* U: CT refusals against site 1's objects, then every site uploads. */
    for (uint32_t i = 1; i <= 5; i++) make_update(&r, i);
    uint8_t **objs[6] = { 0 };
    for (uint32_t i = 1; i <= 5; i++) objs[i] = encrypt_site(&r, i);
    CHECK(fs_he_site_encrypt_ct(r.site[1], r.q[1], r.p.n_values + 1, 2, objs[1][0], ob) == FS_ERR_ARG,
          "ciphertext 2 of 2 refused");
    CHECK(fs_he_site_encrypt_ct(r.site[1], r.q[1], r.p.n_values + 1, 0, objs[1][0], ob - 1) ==
          FS_ERR_ARG, "short buffer refused");
    REFUSE_PATCHED(f_ct_verify, &c1, objs[1][0], ob, FS_ERR_CHECKSUM, "CT with a flipped byte",
                   b[ob / 2] ^= 0x08);
    CHECK(f_ct_verify(&c1, objs[1][0], ob - 1) == FS_ERR_FORMAT, "CT one byte short");
    CHECK(f_ct_verify(&c1, objs[1][1], ob) == FS_ERR_MISMATCH, "CT index 1 first refused");
    CHECK(f_ct_verify(&c1, objs[2][0], ob) == FS_ERR_MISMATCH, "site 2's CT as site 1's refused");
    {
        uint64_t *ct = xmalloc(FS_HE_CT_WORDS * 8);
        fs_he_hdr h;
        uint8_t *b = dup_bytes(objs[1][0], ob);
        CHECK(fs_he_read(b, ob, FS_HE_OBJ_CT, &h, ct) == FS_OK, "read own ct");
        h.key_id[3] ^= 0x80;
        CHECK(fs_he_write(&h, ct, b, ob) == FS_OK, "rewrite");
        CHECK(f_ct_verify(&c1, b, ob) == FS_ERR_MISMATCH, "CT under another key id refused");
        h.key_id[3] ^= 0x80;
        h.kind = FS_HE_OBJ_C1; /* c0 alone as a C1 object */
        CHECK(fs_he_write(&h, ct, b, ob) == FS_OK, "write c1");
        CHECK(f_ct_verify(&c1, b, fs_he_wire_bytes(FS_HE_OBJ_C1)) == FS_ERR_MISMATCH,
              "a C1 object where a CT is expected refused");
        free(b);
        free(ct);
    }
    for (uint32_t i = 1; i <= 5; i++) upload(&r, i, objs[i]);
    CHECK(fs_he_server_ct(r.srv, 1, objs[1][0], ob, 1) == FS_ERR_MISMATCH, "a 3rd object refused");
    CHECK(fs_he_server_count(r.srv, FS_HE_CONTRIBUTED) == 5, "5 contributors");
    CHECK(fs_he_server_close_input(r.srv) == FS_OK, "close_input");
    CHECK(fs_he_server_generation(r.srv) == 1 && fs_he_server_in_set(r.srv, 1) &&
          fs_he_server_in_set(r.srv, 2) && fs_he_server_in_set(r.srv, 3) &&
          !fs_he_server_in_set(r.srv, 4), "T = {1, 2, 3}");

    /* D: REQ refusals at site 1, PART refusals at the server. */
    uint8_t *req = NULL;
    size_t rql = 0;
    CHECK(fs_he_server_decrypt_req(r.srv, 4, 0, &req, &rql) == FS_ERR_ARG, "REQ for a non-member");
    CHECK(fs_he_server_decrypt_req(r.srv, 1, 2, &req, &rql) == FS_ERR_ARG, "REQ past the end");
    CHECK(fs_he_server_decrypt_req(r.srv, 1, 0, &req, &rql) == FS_OK, "REQ for 1");
    const size_t tq = HDR + 8; /* T starts here */
    refuse_mutants("REQ", req, rql, f_site_partials, &c1);
    rctx c4 = { &r, 4 };
    CHECK(f_site_partials(&c4, req, rql) == FS_ERR_MISMATCH, "site 4 not in T refuses");
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_FORMAT, "REQ with T unsorted",
                   put32(b + tq, 2); put32(b + tq + 4, 1));
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_FORMAT, "REQ with T = {1, 1, 3}",
                   put32(b + tq + 4, 1));
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_FORMAT, "REQ with a site 9 in T",
                   put32(b + tq + 8, 9));
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_FORMAT, "REQ with |T| = 2 < t",
                   put32(b + HDR + 4, 2));
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_MISMATCH, "REQ with T = {2, 3, 4}",
                   put32(b + tq, 2); put32(b + tq + 4, 3); put32(b + tq + 8, 4));
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_MISMATCH,
                   "REQ with T = {1, 3, 4} (set id of {1, 2, 3})", put32(b + tq + 4, 3);
                   put32(b + tq + 8, 4));
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_MISMATCH, "REQ for 3 ciphertexts",
                   put32(b + tq + 12, 3));
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_FORMAT, "REQ count 3",
                   put32(b + tq + 20, 3));
    {
        /* A first REQ of a generation that does not start at ciphertext 0. */
        uint8_t *b = dup_bytes(req, rql);
        put32(b + tq + 16, 1);
        put32(b + tq + 20, 1);
        CHECK(f_site_partials(&c1, b, rql - fs_he_wire_bytes(FS_HE_OBJ_C1)) == FS_ERR_MISMATCH,
              "a generation starting at ciphertext 1 refused");
        free(b);
    }
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_FORMAT, "REQ of generation 0",
                   put32(b + HDR, 0));
    REFUSE_PATCHED(f_site_partials, &c1, req, rql, FS_ERR_CHECKSUM, "REQ with a flipped c1 byte",
                   b[rql - 100] ^= 2);
    /* The members answer; site 1's REQ again is refused (no second partial). */
    uint8_t *pk_parts[64];
    size_t pk_lens[64];
    int npk = 0;
    uint8_t *part1 = NULL;
    size_t pl1 = 0;
    uint32_t g = 0, nx = 0;
    CHECK(fs_he_site_partials(r.site[1], req, rql, &part1, &pl1, &g, &nx) == FS_OK && g == 1 &&
          nx == 0, "site 1 answers");
    CHECK(f_site_partials(&c1, req, rql) == FS_ERR_MISMATCH, "repeated (generation, start) refused");
    rctx s1 = { &r, 1 }, s2 = { &r, 2 };
    refuse_mutants("PART", part1, pl1, f_recv_partials, &s1);
    CHECK(f_recv_partials(&s2, part1, pl1) == FS_ERR_MISMATCH, "site 1's PART as site 2's refused");
    rctx s4 = { &r, 4 };
    CHECK(f_recv_partials(&s4, part1, pl1) == FS_ERR_MISMATCH, "PART from a non-member refused");
    REFUSE_PATCHED(f_recv_partials, &s1, part1, pl1, FS_ERR_CHECKSUM, "PART with a flipped byte",
                   b[pl1 / 2] ^= 1);
    REFUSE_PATCHED(f_recv_partials, &s1, part1, pl1, FS_ERR_MISMATCH, "PART of generation 2",
                   put32(b + HDR, 2));
    REFUSE_PATCHED(f_recv_partials, &s1, part1, pl1, FS_ERR_MISMATCH, "PART from ciphertext 1",
                   put32(b + HDR + 4, 1));
    REFUSE_PATCHED(f_recv_partials, &s1, part1, pl1, FS_ERR_FORMAT, "PART count 3",
                   put32(b + HDR + 8, 3));
    CHECK(fs_he_server_recv_partials(r.srv, 1, part1, pl1) == FS_OK, "PART of site 1 taken");
    CHECK(fs_he_server_recv_partials(r.srv, 1, part1, pl1) == FS_ERR_MISMATCH, "repeated PART");
    CHECK(fs_he_server_has(r.srv, FS_HE_DECRYPTED, 1) && !fs_he_server_decrypt_done(r.srv),
          "site 1 decrypted, not done");
    pk_parts[npk] = part1; pk_lens[npk++] = pl1;
    free(req);
    answer(&r, 2, 100, pk_parts, pk_lens, &npk);
    answer(&r, 3, 100, pk_parts, pk_lens, &npk);
    CHECK(fs_he_server_count(r.srv, FS_HE_DECRYPTED) == 3, "3 decrypted");
    check_result_exact(&r, all, "5 sites, t = 3");

    /* Dequantised: the weighted sum within n quantisation steps, the mean
     * within the bound that follows. */
    const size_t P = r.p.n_values;
    int64_t *sum = xmalloc((P + 1) * 8);
    float *out = xmalloc(P * sizeof(float));
    double wsum = 0, W = 0, worst = 0, worst_mean = 0;
    CHECK(fs_he_server_result(r.srv, sum) == FS_OK, "result again");
    CHECK(fs_he_dequantise(&r.p.qz, sum, P, out, &wsum) == FS_OK, "dequantise");
    const double step = ldexp(1.0, -(int)r.p.qz.frac_bits), tol = 5 * step;
    for (uint32_t i = 1; i <= 5; i++) W += r.w[i];
    int mean_ok = 1;
    for (size_t k = 0; k < P; k++) {
        double ws = 0;
        for (uint32_t i = 1; i <= 5; i++) {
            double v = r.x[i][k] < -1.0f ? -1.0 : r.x[i][k] > 1.0f ? 1.0 : r.x[i][k];
            ws += (double)(float)(v * r.w[i]);
        }
        double d = fabs(out[k] - ws);
        if (d > worst) worst = d;
        double mean = ws / W, got = out[k] / wsum, dm = fabs(got - mean);
        double bound = (tol + fabs(mean) * tol) / wsum + 1e-6;
        if (dm > worst_mean) worst_mean = dm;
        if (dm > bound) mean_ok = 0;
    }
    CHECK(worst <= tol + 1e-6, "weighted sum off by %.3g > %.3g", worst, tol);
    CHECK(fabs(wsum - W) <= tol + 1e-6, "weight sum %.8f, want %.8f", wsum, W);
    CHECK(mean_ok, "weighted mean outside the quantisation bound (worst %.3g)", worst_mean);
    printf("5 sites, f = %u: weighted sum within %.3g (5 steps %.3g), mean within %.3g\n",
           r.p.qz.frac_bits, worst, tol, worst_mean);

    /* The server's view: c0 and the partials. t − 1 of them (or none) do not
     * decode to the sum; all t do (control). */
    int64_t *want = want_sum(&r, all), *dec = xmalloc((P + 1) * 8);
    uint64_t *x = xmalloc(FS_HE_POLY_WORDS * 8), *h = xmalloc(FS_HE_POLY_WORDS * 8);
    const fs_he_ctx *ctx = fs_he_site_ctx(r.site[1]);
    const size_t pob = fs_he_wire_bytes(FS_HE_OBJ_PARTIAL);
    CHECK(npk == 3, "3 PART messages kept (%d)", npk);
    size_t m_lacking[3] = { 0 }, m_none = 0, m_all = 0;
    for (int use = -1; use <= 3; use++) { /* -1: none, 0..2: all but member use, 3: all */
        for (size_t c = 0; c < r.nct; c++) {
            memcpy(x, r.mysum + c * FS_HE_CT_WORDS, FS_HE_POLY_WORDS * 8);
            for (int k = 0; k < npk && use >= 0; k++) {
                if (k == use) continue;
                fs_he_hdr hh;
                CHECK(fs_he_read(pk_parts[k] + HDR + 12 + c * pob, pob, FS_HE_OBJ_PARTIAL, &hh, h) ==
                      FS_OK, "read partial");
                for (size_t w = 0; w < FS_HE_POLY_WORDS; w++) {
                    uint64_t q = ctx->q[w / FS_HE_N];
                    x[w] = (x[w] + h[w]) % q;
                }
            }
            size_t off = c * FS_HE_N, cnt = P + 1 - off < FS_HE_N ? P + 1 - off : FS_HE_N;
            fs_he_decode(ctx, x, dec + off, cnt);
        }
        size_t m = matches(dec, want, P + 1);
        if (use < 0) m_none = m;
        else if (use < 3) m_lacking[use] = m;
        else m_all = m;
    }
    CHECK(m_all == P + 1, "control: all 3 partials decode (%zu of %zu)", m_all, P + 1);
    CHECK(m_none <= 2 && m_lacking[0] <= 2 && m_lacking[1] <= 2 && m_lacking[2] <= 2,
          "without every member's partial the sum must not decode: none %zu, lacking one "
          "%zu/%zu/%zu of %zu", m_none, m_lacking[0], m_lacking[1], m_lacking[2], P + 1);
    printf("server's view: c0 alone matches %zu, c0 + 2 of 3 partials match %zu/%zu/%zu, all 3 "
           "match %zu of %zu values\n", m_none, m_lacking[0], m_lacking[1], m_lacking[2], m_all,
           P + 1);
    for (int k = 0; k < npk; k++) free(pk_parts[k]);
    for (uint32_t i = 1; i <= 5; i++) free_objs(objs[i], r.nct);
    for (uint32_t i = 0; i <= 5; i++) free(keys[i]);
    free(want); free(dec); free(x); free(h); free(sum); free(out);
    run_free(&r);
}

/* ---- 3. dropouts before upload ------------------------------------------------------ */

static void test_drop_upload(void)
{
    run r;
    run_init(&r, 5, 3, 5000, 4, 0);
    run_keys(&r, 0);
    CHECK(run_close_keys(&r) == FS_OK, "close_keys");
    run_shares(&r, 0);
    CHECK(fs_he_server_close_shares(r.srv) == FS_OK, "close_shares");
    for (uint32_t i = 1; i <= 5; i++) run_relay_site(&r, i);
    const uint64_t contrib = (1u << 1) | (1u << 3) | (1u << 5);
    run_upload(&r, contrib);
    CHECK(fs_he_server_ct_done(r.srv, 2) == FS_ERR_FORMAT, "ct_done without objects refused");
    CHECK(fs_he_server_close_input(r.srv) == FS_OK, "close_input with 3 of 5");
    CHECK(fs_he_server_count(r.srv, FS_HE_CONTRIBUTED) == 3, "3 contributors");
    CHECK(fs_he_server_in_set(r.srv, 1) && fs_he_server_in_set(r.srv, 3) &&
          fs_he_server_in_set(r.srv, 5) && !fs_he_server_in_set(r.srv, 2), "T = {1, 3, 5}");
    for (uint32_t i = 1; i <= 5; i++)
        if (fs_he_server_in_set(r.srv, i)) answer(&r, i, 100, NULL, NULL, NULL);
    check_result_exact(&r, contrib, "2 of 5 dropped before upload");
    run_free(&r);
}

/* ---- 4. a member drops during decryption ------------------------------------------ */

static void test_drop_decrypt(void)
{
    run r;
    /* 18 ciphertexts: REQ and PART in two batches (16 + 2). */
    run_init(&r, 5, 3, (uint64_t)FS_HE_PROTO_BATCH * FS_HE_N + 2 * FS_HE_N - 10, 5, 1);
    CHECK(r.nct == FS_HE_PROTO_BATCH + 2, "%zu ciphertexts", r.nct);
    run_keys(&r, 0);
    CHECK(run_close_keys(&r) == FS_OK, "close_keys");
    run_shares(&r, 0);
    CHECK(fs_he_server_close_shares(r.srv) == FS_OK, "close_shares");
    for (uint32_t i = 1; i <= 5; i++) run_relay_site(&r, i);
    const uint64_t contrib = mask_all(4); /* sites 1..4; 5 does not upload */
    run_upload(&r, contrib);
    CHECK(fs_he_server_close_input(r.srv) == FS_OK, "close_input");
    /* Site 1 answers fully; site 2 answers its first batch, then drops;
     * site 3 answers. Keep site 1's first REQ and PART of generation 1. */
    uint8_t *req1 = NULL, *part1 = NULL;
    size_t rl = 0, pl = 0;
    uint32_t g = 0, nx = 0;
    CHECK(fs_he_server_decrypt_req(r.srv, 1, 0, &req1, &rl) == FS_OK, "req");
    CHECK(fs_he_site_partials(r.site[1], req1, rl, &part1, &pl, &g, &nx) == FS_OK &&
          nx == FS_HE_PROTO_BATCH && g == 1, "first batch of site 1, next %u", nx);
    CHECK(rl < MIB && pl < MIB, "a batch of 16 stays under 1 MiB (REQ %zu, PART %zu)", rl, pl);
    CHECK(fs_he_server_recv_partials(r.srv, 1, part1, pl) == FS_OK, "part 1 batch 0");
    {
        uint8_t *rq = NULL, *pt = NULL;
        size_t a = 0, b = 0;
        CHECK(fs_he_server_decrypt_req(r.srv, 1, nx, &rq, &a) == FS_OK, "req batch 2");
        {
            /* The same generation under another T ({1, 3, 4}), its C1
             * objects re-stamped with that set's id: refused. */
            const size_t cob = fs_he_wire_bytes(FS_HE_OBJ_C1), objs_at = HDR + 8 + 12 + 12;
            const uint32_t other[3] = { 1, 3, 4 };
            uint8_t *b = dup_bytes(rq, a);
            uint64_t *poly = xmalloc(FS_HE_POLY_WORDS * 8);
            put32(b + HDR + 12, 3);
            put32(b + HDR + 16, 4);
            for (uint32_t j = 0; j < 2; j++) {
                fs_he_hdr h;
                CHECK(fs_he_read(b + objs_at + j * cob, cob, FS_HE_OBJ_C1, &h, poly) == FS_OK, "c1");
                fs_he_set_id(other, 3, h.set_id);
                CHECK(fs_he_write(&h, poly, b + objs_at + j * cob, cob) == FS_OK, "c1 rewrite");
            }
            uint8_t *o = NULL;
            size_t ol = 0;
            uint32_t g2, n2;
            fprintf(stderr, "(refusal expected next)\n");
            CHECK(fs_he_site_partials(r.site[1], b, a, &o, &ol, &g2, &n2) == FS_ERR_MISMATCH,
                  "another decryption set within generation 1 refused");
            free(o); free(b); free(poly);
        }
        CHECK(fs_he_site_partials(r.site[1], rq, a, &pt, &b, &g, &nx) == FS_OK && nx == 0,
              "second batch of site 1, last");
        CHECK(get32(rq + HDR + 8 + 12 + 8) == 2, "the last REQ holds 2 ciphertexts");
        CHECK(fs_he_server_recv_partials(r.srv, 1, pt, b) == FS_OK, "part 1 batch 1");
        free(rq); free(pt);
    }
    answer(&r, 2, 1, NULL, NULL, NULL);
    answer(&r, 3, 100, NULL, NULL, NULL);
    CHECK(!fs_he_server_decrypt_done(r.srv) && !fs_he_server_has(r.srv, FS_HE_DECRYPTED, 2),
          "site 2 answered half");
    int again = -1;
    CHECK(fs_he_server_close_decrypt(r.srv, &again) == FS_OK && again == 1, "close_decrypt: again");
    CHECK(fs_he_server_generation(r.srv) == 2, "generation 2");
    CHECK(fs_he_server_in_set(r.srv, 1) && !fs_he_server_in_set(r.srv, 2) &&
          fs_he_server_in_set(r.srv, 3) && fs_he_server_in_set(r.srv, 4), "T = {1, 3, 4}");
    fprintf(stderr, "(refusals expected next)\n");
    CHECK(fs_he_server_recv_partials(r.srv, 1, part1, pl) == FS_ERR_ABANDONED,
          "a PART of generation 1 refused as superseded");
    CHECK(fs_he_server_count(r.srv, FS_HE_DECRYPTED) == 0, "generation 2 starts empty");
    for (uint32_t i = 1; i <= 5; i++)
        if (fs_he_server_in_set(r.srv, i)) answer(&r, i, 100, NULL, NULL, NULL);
    uint8_t *o = NULL;
    size_t ol = 0;
    CHECK(fs_he_site_partials(r.site[1], req1, rl, &o, &ol, &g, &nx) == FS_ERR_MISMATCH,
          "site 1, in generation 2, refuses a REQ of generation 1");
    free(o);
    check_result_exact(&r, contrib, "member 2 lost in decryption, generation 2");
    free(req1); free(part1);
    run_free(&r);
}

/* ---- 5. abandonment ----------------------------------------------------------------- */

static void test_abandon(void)
{
    fprintf(stderr, "(abandonments expected next)\n");
    /* K: site 3 silent. */
    run r;
    run_init(&r, 3, 2, 100, 6, 0);
    run_keys(&r, 1u << 3);
    CHECK(run_close_keys(&r) == FS_ERR_ABANDONED, "close_keys with 2 of 3");
    CHECK(strstr(fs_he_server_reason(r.srv), "missing: 3") != NULL, "reason names site 3: %s",
          fs_he_server_reason(r.srv));
    CHECK(fs_he_server_close_shares(r.srv) == FS_ERR_ABANDONED, "later calls refused too");
    run_free(&r);

    /* S: site 2 sends no shares. */
    run_init(&r, 3, 2, 100, 6, 1);
    run_keys(&r, 0);
    CHECK(run_close_keys(&r) == FS_OK, "close_keys");
    CHECK(strcmp(fs_he_server_reason(r.srv), "") == 0, "no reason while running");
    run_shares(&r, 1u << 2);
    CHECK(!fs_he_server_shares_done(r.srv, 2), "site 2 not done");
    CHECK(fs_he_server_close_shares(r.srv) == FS_ERR_ABANDONED, "close_shares with 2 of 3");
    CHECK(strstr(fs_he_server_reason(r.srv), "missing: 2") != NULL, "reason: %s",
          fs_he_server_reason(r.srv));
    run_free(&r);

    /* U: t − 1 contributors. Then D: too many members lost. */
    for (int stage = 0; stage < 2; stage++) {
        run_init(&r, 4, 3, 100, 6, 2 + stage);
        run_keys(&r, 0);
        CHECK(run_close_keys(&r) == FS_OK, "close_keys");
        run_shares(&r, 0);
        CHECK(fs_he_server_close_shares(r.srv) == FS_OK, "close_shares");
        for (uint32_t i = 1; i <= 4; i++) run_relay_site(&r, i);
        if (stage == 0) {
            run_upload(&r, (1u << 1) | (1u << 4));
            CHECK(fs_he_server_close_input(r.srv) == FS_ERR_ABANDONED, "2 contributors, t = 3");
            uint8_t *m = NULL;
            size_t l = 0;
            CHECK(fs_he_server_decrypt_req(r.srv, 1, 0, &m, &l) == FS_ERR_ABANDONED,
                  "no decryption after abandonment");
        } else {
            run_upload(&r, mask_all(4));
            CHECK(fs_he_server_close_input(r.srv) == FS_OK, "close_input");
            answer(&r, 1, 100, NULL, NULL, NULL); /* 2 and 3 silent: {1, 4} remain */
            int again = -1;
            CHECK(fs_he_server_close_decrypt(r.srv, &again) == FS_ERR_ABANDONED,
                  "2 eligible left, t = 3");
        }
        CHECK(fs_he_server_reason(r.srv)[0] != '\0', "reason: %s", fs_he_server_reason(r.srv));
        run_free(&r);
    }

    /* A commit pass refused half-way: the sum is lost. */
    run_init(&r, 3, 2, 5000, 6, 4);
    run_keys(&r, 0);
    CHECK(run_close_keys(&r) == FS_OK, "close_keys");
    run_shares(&r, 0);
    CHECK(fs_he_server_close_shares(r.srv) == FS_OK, "close_shares");
    for (uint32_t i = 1; i <= 3; i++) run_relay_site(&r, i);
    make_update(&r, 1);
    uint8_t **objs = encrypt_site(&r, 1);
    const size_t ob = fs_he_wire_bytes(FS_HE_OBJ_CT);
    CHECK(fs_he_server_ct(r.srv, 1, objs[1], ob, 1) == FS_ERR_MISMATCH &&
          fs_he_server_reason(r.srv)[0] == '\0', "a refused first commit harms nothing");
    CHECK(fs_he_server_ct(r.srv, 1, objs[0], ob, 1) == FS_OK, "commit 0");
    objs[1][500] ^= 1;
    CHECK(fs_he_server_ct(r.srv, 1, objs[1], ob, 1) == FS_ERR_ABANDONED,
          "commit refused after one object was added: abandoned");
    CHECK(fs_he_server_reason(r.srv)[0] != '\0', "reason: %s", fs_he_server_reason(r.srv));
    free_objs(objs, r.nct);
    run_free(&r);

    /* A partly committed upload at close_input. */
    run_init(&r, 3, 2, 5000, 6, 5);
    run_keys(&r, 0);
    CHECK(run_close_keys(&r) == FS_OK, "close_keys");
    run_shares(&r, 0);
    CHECK(fs_he_server_close_shares(r.srv) == FS_OK, "close_shares");
    for (uint32_t i = 1; i <= 3; i++) run_relay_site(&r, i);
    run_upload(&r, (1u << 2) | (1u << 3));
    make_update(&r, 1);
    objs = encrypt_site(&r, 1);
    CHECK(fs_he_server_ct(r.srv, 1, objs[0], ob, 1) == FS_OK, "commit 0 only");
    CHECK(fs_he_server_close_input(r.srv) == FS_ERR_ABANDONED, "half an upload in the sum");
    free_objs(objs, r.nct);
    run_free(&r);
}

/* ---- 6. batches: 20 sites ------------------------------------------------------------ */

static void test_batches(void)
{
    run r;
    run_init(&r, 20, 11, 100, 9, 3);
    run_keys(&r, 0);
    CHECK(run_close_keys(&r) == FS_OK, "close_keys");
    run_shares(&r, 0); /* checks 2 parts each */
    CHECK(fs_he_server_close_shares(r.srv) == FS_OK, "close_shares");
    int two = 0;
    for (uint32_t i = 1; i <= 20; i++) two += run_relay_site(&r, i) == 2;
    CHECK(two == 20, "every site got its 19 shares in 2 RELAY batches (%d did)", two);
    run_upload(&r, mask_all(20) & ~(1ull << 7));
    CHECK(fs_he_server_close_input(r.srv) == FS_OK, "close_input");
    for (uint32_t i = 1; i <= 20; i++)
        if (fs_he_server_in_set(r.srv, i)) answer(&r, i, 100, NULL, NULL, NULL);
    check_result_exact(&r, mask_all(20) & ~(1ull << 7), "20 sites (one silent), t = 11");
    CHECK(r.max_msg < MIB, "largest message %zu bytes < 1 MiB", r.max_msg);
    printf("20 sites: largest message %zu bytes\n", r.max_msg);
    run_free(&r);
}

/* ---- fuzzing seeds ------------------------------------------------------------------ */

/* The run fuzz_he.c rebuilds: round 7, attempt 1, 3 sites, t = 2, 10 values,
 * CRS seed 0x42…; the first byte selects the target (fuzz_he.c). */
static void write_seed(const char *dir, const char *name, uint8_t sel, const uint8_t *b, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/seed_%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", path); return; }
    fputc(sel, f);
    fwrite(b, 1, n, f);
    fclose(f);
}

static void write_corpus(const char *dir)
{
    run r;
    memset(&r, 0, sizeof r);
    r.n = 3;
    r.p = (fs_he_params){ .round = 7, .attempt = 1, .n_sites = 3, .threshold = 2, .n_values = 10,
                          .qz = { .clip = 1.0f, .frac_bits = 16 } };
    memset(r.p.crs_seed, 0x42, FS_HE_SEED_BYTES);
    r.nct = 1;
    r.mysum = xmalloc(FS_HE_CT_WORDS * 8);
    CHECK(fs_he_server_new(&r.p, &r.srv) == FS_OK, "corpus server");
    for (uint32_t i = 1; i <= 3; i++) CHECK(fs_he_site_new(&r.p, i, &r.site[i]) == FS_OK, "site");
    uint8_t *keys = NULL;
    size_t kl = 0;
    CHECK(fs_he_site_keys(r.site[1], &keys, &kl) == FS_OK, "keys");
    CHECK(fs_he_server_recv_keys(r.srv, 1, keys, kl) == FS_OK, "keys in");
    write_seed(dir, "keys", 6, keys, kl);
    write_seed(dir, "obj_pk_share", 0, keys + HDR + 32, kl - HDR - 32);
    free(keys);
    run_keys(&r, 1u << 1);
    CHECK(run_close_keys(&r) == FS_OK, "close_keys");
    write_seed(dir, "bcast", 10, r.bcast, r.bcast_len);
    for (uint32_t i = 1; i <= 3; i++) {
        uint8_t **parts = NULL;
        size_t *lens = NULL, np = 0;
        CHECK(fs_he_site_shares(r.site[i], r.bcast, r.bcast_len, &parts, &lens, &np) == FS_OK, "sh");
        if (i == 1) write_seed(dir, "shares", 7, parts[0], lens[0]);
        CHECK(fs_he_server_recv_shares(r.srv, i, parts[0], lens[0]) == FS_OK, "shares in");
        fs_he_site_free_parts(parts, lens, np);
    }
    CHECK(fs_he_server_close_shares(r.srv) == FS_OK, "close_shares");
    uint8_t *rel = NULL;
    size_t rll = 0;
    CHECK(fs_he_server_relay(r.srv, 3, 1, &rel, &rll) == FS_OK, "relay");
    write_seed(dir, "relay", 11, rel, rll);
    free(rel);
    for (uint32_t i = 1; i <= 3; i++) run_relay_site(&r, i);
    for (uint32_t i = 1; i <= 3; i++) make_update(&r, i);
    uint8_t **objs = encrypt_site(&r, 1);
    write_seed(dir, "ct", 8, objs[0], fs_he_wire_bytes(FS_HE_OBJ_CT));
    upload(&r, 1, objs);
    free_objs(objs, 1);
    objs = encrypt_site(&r, 2);
    upload(&r, 2, objs);
    free_objs(objs, 1);
    CHECK(fs_he_server_close_input(r.srv) == FS_OK, "close_input");
    uint8_t *req = NULL, *part = NULL;
    size_t rl = 0, pl = 0;
    uint32_t g, nx;
    CHECK(fs_he_server_decrypt_req(r.srv, 2, 0, &req, &rl) == FS_OK, "req");
    CHECK(fs_he_site_partials(r.site[2], req, rl, &part, &pl, &g, &nx) == FS_OK, "part");
    write_seed(dir, "req", 12, req, rl);
    write_seed(dir, "part", 9, part, pl);
    write_seed(dir, "obj_c1", 5, req + rl - fs_he_wire_bytes(FS_HE_OBJ_C1),
               fs_he_wire_bytes(FS_HE_OBJ_C1));
    free(req); free(part);
    run_free(&r);
    printf("fuzzing seeds written to %s\n", dir);
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    test_params();
    test_full();
    test_drop_upload();
    test_drop_decrypt();
    test_abandon();
    test_batches();
    const char *dir = getenv("FS_HE_CORPUS");
    if (dir) write_corpus(dir);
    return check_result();
}
