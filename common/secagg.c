/*
 * common/secagg.c — see secagg.h (protocol, mask and quantisation specs).
 * Layout: parameters and the neighbour graph; mask expansion; key
 * derivation; quantisation; the site's state machine; the server's state
 * machine. Messages are built and parsed by secagg_msg.c.
 *
 * Why the server never holds one site's unmasked update (honest-but-curious
 * server following the protocol; the stages are Bonawitz et al.'s):
 *   stage 0  it sees public keys and a hash commitment of b_u only;
 *   stage 1  it relays shares it cannot read: each is sealed with a key only
 *            the two sites can derive (X25519), and a share alone is
 *            uniformly random (Shamir, t >= 2);
 *   stage 2  it sees y_u = q_u + PRG(b_u) ± pairwise masks: uniform in
 *            Z_2^32 without b_u (tests/test_secagg.c measures this);
 *   stage 4  for every site it learns b_u (u survived) or s_sk of u (u
 *            dropped before its masked input arrived) — never both, because
 *            an honest site answers one unmasking request, with one kind per
 *            owner, and the request's two lists are disjoint. With b_u of a
 *            survivor u, y_u − PRG(b_u) is still masked by PRG(s_uw) for each
 *            surviving neighbour w; the server refuses to unmask (and sites
 *            refuse to answer) unless the surviving sites form one connected
 *            graph, so the only combination of the y_u free of unknown masks
 *            is their total sum.
 *
 * Tested by tests/test_secagg.c.
 */
#include "common/secagg.h"
#include "common/secagg_msg.h"
#include "common/shamir.h"
#include "common/log.h"
#include "kernels/backend.h"
#include "kernels/philox.h"

#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXN FS_SECAGG_MAX_SITES
/* Subsets of shares tried per secret before giving up on corrupt shares. */
#define MAX_SUBSET_TRIES 4096
/* Words of mask expanded per step of masking/unmasking (stack scratch). */
#define BLOCK_WORDS 2048

static int sodium_ready(void)
{
    if (sodium_init() < 0) {
        fs_log_error("secagg: libsodium failed to initialise");
        return 0;
    }
    return 1;
}

/* ---- parameters and graph ----------------------------------------------------- */

fs_status fs_secagg_params_check(const fs_secagg_params *p)
{
    if (!p) return FS_ERR_ARG;
    const char *bad = NULL;
    if (p->round < 1) bad = "round must be >= 1";
    else if (p->n_sites < 3 || p->n_sites > MAXN) bad = "n_sites must be in 3..255";
    else if (p->neighbours != p->n_sites - 1 &&
             (p->neighbours < 2 || p->neighbours > p->n_sites - 2 || p->neighbours % 2))
        bad = "neighbours must be n_sites-1, or even in 2..n_sites-2";
    else if (p->threshold < 2 || p->threshold > p->neighbours)
        bad = "threshold must be in 2..neighbours";
    else if (p->n_words < 1 || p->n_words > FS_SECAGG_MAX_WORDS) bad = "n_words must be in 1..2^36";
    if (bad) {
        fs_log_error("secagg: bad parameters (n=%u t=%u k=%u words=%llu round=%llu): %s",
                     p->n_sites, p->threshold, p->neighbours, (unsigned long long)p->n_words,
                     (unsigned long long)p->round, bad);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

void fs_secagg_nonce(uint32_t tag, uint64_t round, uint8_t nonce[FS_SECAGG_NONCE_BYTES])
{
    for (int i = 0; i < 4; i++) nonce[i] = (uint8_t)(tag >> (8 * i));
    for (int i = 0; i < 8; i++) nonce[4 + i] = (uint8_t)(round >> (8 * i));
}

static void le32(uint8_t *b, uint32_t v) { for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i)); }
static void le64(uint8_t *b, uint64_t v) { for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i)); }

/* Ring positions of the sites: pos[u] = place of u on a ring that is a
 * uniformly random permutation (Fisher–Yates, rejection sampling) driven by
 * PRG(H(label, round, n, k, round_seed), N_graph). Complete graph: identity. */
static void graph_positions(const fs_secagg_params *p, uint32_t pos[MAXN])
{
    uint32_t n = p->n_sites, perm[MAXN];
    for (uint32_t i = 0; i < n; i++) perm[i] = i;
    if (p->neighbours != n - 1) {
        static const char label[] = "fedseg-secagg-v1 graph";
        uint8_t hdr[16], key[32], nonce[12];
        le64(hdr, p->round);
        le32(hdr + 8, n);
        le32(hdr + 12, p->neighbours);
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, sizeof key);
        crypto_generichash_update(&st, (const uint8_t *)label, sizeof label);
        crypto_generichash_update(&st, hdr, sizeof hdr);
        crypto_generichash_update(&st, p->round_seed, sizeof p->round_seed);
        crypto_generichash_final(&st, key, sizeof key);
        fs_secagg_nonce(FS_SECAGG_TAG_GRAPH, p->round, nonce);
        uint32_t rnd[64];
        uint64_t off = 0;
        size_t used = 64;
        for (uint32_t i = n - 1; i >= 1; i--) {
            uint32_t span = i + 1, limit = (uint32_t)(0x100000000ull - 0x100000000ull % span - 1);
            uint32_t r;
            do {
                if (used == 64) {
                    (void)fs_secagg_expand(key, nonce, off, 64, rnd);
                    off += 64;
                    used = 0;
                }
                r = rnd[used++];
            } while (r > limit);
            uint32_t j = r % span, t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
    }
    for (uint32_t i = 0; i < n; i++) pos[perm[i]] = i;
}

/* 1 when u and v (distinct) are neighbours: ring distance at most k/2, or
 * any pair in the complete graph. */
static int adjacent(const fs_secagg_params *p, const uint32_t *pos, uint32_t u, uint32_t v)
{
    if (u == v) return 0;
    if (p->neighbours == p->n_sites - 1) return 1;
    uint32_t d = pos[u] > pos[v] ? pos[u] - pos[v] : pos[v] - pos[u];
    if (p->n_sites - d < d) d = p->n_sites - d;
    return d <= p->neighbours / 2;
}

/* 1 when the sites with in[u] set form a connected subgraph (at least one). */
static int connected(const fs_secagg_params *p, const uint32_t *pos, const uint8_t *in)
{
    uint32_t n = p->n_sites, queue[MAXN], head = 0, tail = 0, total = 0;
    uint8_t seen[MAXN] = {0};
    for (uint32_t u = 0; u < n; u++) total += in[u] != 0;
    for (uint32_t u = 0; u < n && !tail; u++)
        if (in[u]) { seen[u] = 1; queue[tail++] = u; }
    while (head < tail) {
        uint32_t u = queue[head++];
        for (uint32_t v = 0; v < n; v++)
            if (in[v] && !seen[v] && adjacent(p, pos, u, v)) { seen[v] = 1; queue[tail++] = v; }
    }
    return total > 0 && tail == total;
}

fs_status fs_secagg_neighbours(const fs_secagg_params *p, uint32_t u, uint32_t *out, uint32_t *count)
{
    FS_TRY(fs_secagg_params_check(p));
    if (u >= p->n_sites || !out || !count) return FS_ERR_ARG;
    if (!sodium_ready()) return FS_ERR_UNSUPPORTED;
    uint32_t pos[MAXN];
    graph_positions(p, pos);
    *count = 0;
    for (uint32_t v = 0; v < p->n_sites; v++)
        if (adjacent(p, pos, u, v)) out[(*count)++] = v;
    return FS_OK;
}

/* ---- mask expansion ------------------------------------------------------------ */

/* Little-endian bytes → host words, in place (a no-op on little-endian hosts). */
static void words_from_le(uint32_t *w, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        const uint8_t *b = (const uint8_t *)&w[i];
        w[i] = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    }
#else
    (void)w;
    (void)n;
#endif
}

fs_status fs_secagg_expand(const uint8_t key[32], const uint8_t nonce[12], uint64_t word_offset,
                           size_t n_words, uint32_t *out)
{
    if (n_words == 0) return FS_OK;
    if (!key || !nonce || !out || word_offset > FS_SECAGG_MAX_WORDS ||
        n_words > FS_SECAGG_MAX_WORDS - word_offset) {
        fs_log_error("secagg: mask words %llu..+%zu lie outside the 2^36-word ChaCha20 stream",
                     (unsigned long long)word_offset, n_words);
        return FS_ERR_ARG;
    }
    uint64_t blk = word_offset / 16;
    size_t skip = (size_t)(word_offset % 16), done = 0;
    if (skip) { /* the tail of a block that starts before word_offset */
        uint32_t tmp[16] = {0};
        crypto_stream_chacha20_ietf_xor_ic((uint8_t *)tmp, (const uint8_t *)tmp, sizeof tmp, nonce,
                                           (uint32_t)blk, key);
        words_from_le(tmp, 16);
        size_t take = 16 - skip < n_words ? 16 - skip : n_words;
        memcpy(out, tmp + skip, take * 4);
        done = take;
        blk++;
    }
    size_t whole = (n_words - done) / 16 * 16;
    if (whole) { /* whole blocks straight into out */
        memset(out + done, 0, whole * 4);
        crypto_stream_chacha20_ietf_xor_ic((uint8_t *)(out + done), (const uint8_t *)(out + done),
                                           whole * 4, nonce, (uint32_t)blk, key);
        words_from_le(out + done, whole);
        done += whole;
        blk += whole / 16;
    }
    if (done < n_words) { /* the head of the last block */
        uint32_t tmp[16] = {0};
        crypto_stream_chacha20_ietf_xor_ic((uint8_t *)tmp, (const uint8_t *)tmp, sizeof tmp, nonce,
                                           (uint32_t)blk, key);
        words_from_le(tmp, 16);
        memcpy(out + done, tmp, (n_words - done) * 4);
    }
    return FS_OK;
}

/* v[i] += sign·PRG(seed, nonce)[offset+i] for i < n (sign = +1 or -1), in
 * stack-sized blocks. */
static fs_status apply_mask(uint32_t *v, const uint8_t seed[32], const uint8_t nonce[12],
                            uint64_t offset, size_t n, int negate)
{
    uint32_t tmp[BLOCK_WORDS];
    for (size_t i = 0; i < n; i += BLOCK_WORDS) {
        size_t m = n - i < BLOCK_WORDS ? n - i : BLOCK_WORDS;
        fs_status st = fs_secagg_expand(seed, nonce, offset + i, m, tmp);
        if (st != FS_OK) { sodium_memzero(tmp, sizeof tmp); return st; }
        if (negate) for (size_t j = 0; j < m; j++) v[i + j] -= tmp[j];
        else for (size_t j = 0; j < m; j++) v[i + j] += tmp[j];
    }
    sodium_memzero(tmp, sizeof tmp);
    return FS_OK;
}

/* ---- key derivation -------------------------------------------------------------- */

/*
 * out = BLAKE2b-256(label ‖ round ‖ n ‖ lo ‖ hi ‖ pk_lo ‖ pk_hi ‖ X25519(sk, peer_pk))
 * for the pair of sites a, b (lo < hi their indices, pk_* their public keys of
 * the kind used). sk is the private key of one of them, peer_pk the other's
 * public key. Returns 0 when the peer's key is a low-order point (shared
 * secret all zero), else 1.
 */
static int derive_pair(uint8_t out[32], const char *label, size_t label_len,
                       const fs_secagg_params *p, uint32_t a, const uint8_t pk_a[32], uint32_t b,
                       const uint8_t pk_b[32], const uint8_t sk[32], const uint8_t peer_pk[32])
{
    uint8_t dh[crypto_scalarmult_BYTES], hdr[20];
    if (crypto_scalarmult(dh, sk, peer_pk) != 0) {
        sodium_memzero(dh, sizeof dh);
        return 0;
    }
    uint32_t lo = a < b ? a : b, hi = a < b ? b : a;
    le64(hdr, p->round);
    le32(hdr + 8, p->n_sites);
    le32(hdr + 12, lo);
    le32(hdr + 16, hi);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)label, label_len);
    crypto_generichash_update(&st, hdr, sizeof hdr);
    crypto_generichash_update(&st, a < b ? pk_a : pk_b, 32);
    crypto_generichash_update(&st, a < b ? pk_b : pk_a, 32);
    crypto_generichash_update(&st, dh, sizeof dh);
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(dh, sizeof dh);
    sodium_memzero(&st, sizeof st);
    return 1;
}

static const char LABEL_SHARE[] = "fedseg-secagg-v1 share-key";
static const char LABEL_MASK[] = "fedseg-secagg-v1 mask-seed";
static const char LABEL_COMMIT[] = "fedseg-secagg-v1 commit-b";

/* The stage-0 commitment to b_u: BLAKE2b-256(label ‖ round ‖ n ‖ u ‖ b). */
static void commit_b(uint8_t out[32], const fs_secagg_params *p, uint32_t u, const uint8_t b[32])
{
    uint8_t hdr[16];
    le64(hdr, p->round);
    le32(hdr + 8, p->n_sites);
    le32(hdr + 12, u);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)LABEL_COMMIT, sizeof LABEL_COMMIT);
    crypto_generichash_update(&st, hdr, sizeof hdr);
    crypto_generichash_update(&st, b, 32);
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(&st, sizeof st);
}

/* Associated data of the share ciphertext from → to. */
#define AD_BYTES 25
static void share_ad(uint8_t ad[AD_BYTES], const fs_secagg_params *p, uint32_t from, uint32_t to)
{
    memcpy(ad, "FSSA", 4);
    ad[4] = FS_SECAGG_VERSION;
    le64(ad + 5, p->round);
    le32(ad + 13, p->n_sites);
    le32(ad + 17, from);
    le32(ad + 21, to);
}

/* ---- quantisation ------------------------------------------------------------------ */

fs_status fs_secagg_quant_bits(double clip, uint32_t n_max, int *f)
{
    if (!f || !(clip > 0) || !isfinite(clip) || n_max < 1) {
        fs_log_error("secagg: quantisation needs a finite clip norm > 0 and n_max >= 1 (got %g, %u)",
                     clip, n_max);
        return FS_ERR_ARG;
    }
    double bound = clip > 1.0 ? clip : 1.0;
    for (int e = 60; e >= -60; e--) /* both sides exact in double up to rounding of the product */
        if ((double)n_max * bound * ldexp(1.0, e) + (double)n_max < 2147483648.0) {
            *f = e;
            return FS_OK;
        }
    fs_log_error("secagg: no fixed-point exponent fits clip %g for %u sites", clip, n_max);
    return FS_ERR_ARG;
}

fs_status fs_secagg_l2_scale(const float *x, size_t n, double clip, double *scale)
{
    if ((!x && n) || !scale || !(clip > 0) || !isfinite(clip)) return FS_ERR_ARG;
    double ss = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            fs_log_error("secagg: update element %zu is not finite", i);
            return FS_ERR_NUMERIC;
        }
        ss += (double)x[i] * (double)x[i];
    }
    double norm = sqrt(ss);
    *scale = norm > clip ? clip / norm : 1.0;
    return FS_OK;
}

/* The stochastic-rounding draws of seed (spec in secagg.h): Philox block
 * ⌊i/2⌋ gives words 2b and 2b + 1, each uniform in [0, 1) with 53 bits. */
static void sr_block(uint64_t seed, uint64_t b, double u[2])
{
    uint32_t ctr[4] = {(uint32_t)b, (uint32_t)(b >> 32), 0x41474553u, 1};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t o[4];
    fs_philox4x32_10(ctr, key, o);
    u[0] = (double)((((uint64_t)o[0] << 32) | o[1]) >> 11) * 0x1p-53;
    u[1] = (double)((((uint64_t)o[2] << 32) | o[3]) >> 11) * 0x1p-53;
}

fs_status fs_secagg_quantise(const float *x, size_t n, double scale, double bound, int f,
                             uint64_t sr_seed, uint64_t offset, uint32_t *q)
{
    if ((!x || !q) && n) return FS_ERR_ARG;
    if (!(bound >= 0) || f < -60 || f > 60 || !(ldexp(bound, f) < 2147483648.0) || !isfinite(scale)) {
        fs_log_error("secagg: quantisation bound %g at 2^%d does not fit 31 bits", bound, f);
        return FS_ERR_ARG;
    }
    double s = ldexp(1.0, f), u[2] = {0, 0};
    uint64_t have = UINT64_MAX; /* the block in u */
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            fs_log_error("secagg: update element %llu is not finite", (unsigned long long)(offset + i));
            return FS_ERR_NUMERIC;
        }
        const uint64_t w = offset + i;
        if (w / 2 != have) {
            have = w / 2;
            sr_block(sr_seed, have, u);
        }
        double v = scale * (double)x[i];
        v = v > bound ? bound : v < -bound ? -bound : v;
        v *= s;
        /* floor by truncation (|v| < 2^31), frac exact */
        int64_t fl = (int64_t)v;
        fl -= (double)fl > v;
        const double frac = v - (double)fl;
        q[i] = (uint32_t)(fl + (u[w & 1] < frac));
    }
    return FS_OK;
}

fs_status fs_secagg_encode_update(const float *delta, size_t n_params, uint64_t num_samples,
                                  uint64_t w_cap, double clip, int f, uint64_t sr_seed, uint32_t *q)
{
    if ((!delta && n_params) || !q) return FS_ERR_ARG;
    if (num_samples < 1 || w_cap < 1 || num_samples > w_cap) {
        fs_log_error("secagg: sample count %llu outside 1..%llu (the public weight cap)",
                     (unsigned long long)num_samples, (unsigned long long)w_cap);
        return FS_ERR_ARG;
    }
    double scale, w = (double)num_samples / (double)w_cap;
    FS_TRY(fs_secagg_l2_scale(delta, n_params, clip, &scale));
    double bound = clip > 1.0 ? clip : 1.0;
    /* w <= 1, so |w·scale·x_i| <= C <= bound; the clamp only absorbs rounding. */
    FS_TRY(fs_secagg_quantise(delta, n_params, w * scale, bound, f, sr_seed, 0, q));
    float one = 1.0f;
    return fs_secagg_quantise(&one, 1, w, bound, f, sr_seed, n_params, q + n_params);
}

void fs_secagg_dequantise(const uint32_t *sum, size_t n, int f, float *out)
{
    float s = ldexpf(1.0f, -f);
    for (size_t i = 0; i < n; i++) out[i] = (float)(int32_t)sum[i] * s;
}

fs_status fs_secagg_average(const uint32_t *sum, size_t n_params, int f, float *avg,
                            float *total_weight)
{
    if (!sum || (!avg && n_params)) return FS_ERR_ARG;
    float w;
    fs_secagg_dequantise(sum + n_params, 1, f, &w);
    if (total_weight) *total_weight = w;
    if (!(w > 0)) {
        fs_log_error("secagg: the summed weight is %g, not positive: the sum is corrupt or empty", w);
        return FS_ERR_NUMERIC;
    }
    fs_secagg_dequantise(sum, n_params, f, avg);
    for (size_t i = 0; i < n_params; i++) avg[i] /= w;
    return FS_OK;
}

void fs_secagg_msg_free(uint8_t *msg, size_t len)
{
    if (!msg) return;
    sodium_memzero(msg, len);
    free(msg);
}

/* ---- the site ---------------------------------------------------------------------- */

enum { SITE_NEW, SITE_ADVERTISED, SITE_SHARED, SITE_MASKING, SITE_DONE, SITE_DEAD };

struct fs_secagg_site {
    fs_secagg_params p;
    uint32_t self;
    int stage;
    uint32_t pos[MAXN];
    /* WARNING: secrets below; wiped on every exit path by site_die / free. */
    uint8_t c_pk[32], c_sk[32], s_pk[32], s_sk[32], b[32], commit[32];
    uint8_t in_u1[MAXN];                 /* neighbour advertised (KEYS)  */
    uint8_t peer_c_pk[MAXN][32], peer_s_pk[MAXN][32];
    uint8_t own_b_share[32];             /* this site's share of its b  */
    uint8_t held[MAXN];                  /* owner's shares received     */
    uint8_t held_b[MAXN][32], held_s[MAXN][32];
    uint8_t pair_seed[MAXN][32];         /* s_uv for held owners v      */
};

/* Wipes every secret and leaves the round. */
static void site_die(fs_secagg_site *s)
{
    uint32_t self = s->self;
    fs_secagg_params p = s->p;
    sodium_memzero(s, sizeof *s);
    s->p = p;
    s->self = self;
    s->stage = SITE_DEAD;
}

/* FS_OK when the site is at `want`; FS_ERR_ABANDONED (dead) or FS_ERR_ARG. */
static fs_status site_at(const fs_secagg_site *s, int want, const char *what)
{
    if (!s) return FS_ERR_ARG;
    if (s->stage == SITE_DEAD) {
        fs_log_error("secagg site %u: %s: this site has left round %llu", s->self, what,
                     (unsigned long long)s->p.round);
        return FS_ERR_ABANDONED;
    }
    if (s->stage != want) {
        fs_log_error("secagg site %u: %s called out of order", s->self, what);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

fs_status fs_secagg_site_new(const fs_secagg_params *p, uint32_t self, fs_secagg_site **out)
{
    if (!out) return FS_ERR_ARG;
    *out = NULL;
    FS_TRY(fs_secagg_params_check(p));
    if (self >= p->n_sites) {
        fs_log_error("secagg: site index %u outside 0..%u", self, p->n_sites - 1);
        return FS_ERR_ARG;
    }
    if (!sodium_ready()) return FS_ERR_UNSUPPORTED;
    fs_secagg_site *s = calloc(1, sizeof *s);
    if (!s) return FS_ERR_NOMEM;
    s->p = *p;
    s->self = self;
    graph_positions(p, s->pos);
    randombytes_buf(s->c_sk, 32);
    randombytes_buf(s->s_sk, 32);
    randombytes_buf(s->b, 32);
    crypto_scalarmult_base(s->c_pk, s->c_sk);
    crypto_scalarmult_base(s->s_pk, s->s_sk);
    commit_b(s->commit, p, self, s->b);
    *out = s;
    return FS_OK;
}

void fs_secagg_site_free(fs_secagg_site *s)
{
    if (!s) return;
    sodium_memzero(s, sizeof *s);
    free(s);
}

fs_status fs_secagg_site_advertise(fs_secagg_site *s, uint8_t **msg, size_t *len)
{
    FS_TRY(site_at(s, SITE_NEW, "advertise"));
    if (!msg || !len) return FS_ERR_ARG;
    fs_secagg_msg_advertise m;
    m.from = s->self;
    m.k.site = s->self;
    memcpy(m.k.c_pk, s->c_pk, 32);
    memcpy(m.k.s_pk, s->s_pk, 32);
    memcpy(m.k.commit, s->commit, 32);
    FS_TRY(fs_secagg_enc_advertise(s->p.round, s->p.n_sites, &m, msg, len));
    s->stage = SITE_ADVERTISED;
    return FS_OK;
}

fs_status fs_secagg_site_share_keys(fs_secagg_site *s, const uint8_t *keys, size_t keys_len,
                                    uint8_t **msg, size_t *len)
{
    FS_TRY(site_at(s, SITE_ADVERTISED, "share keys"));
    if (!msg || !len) return FS_ERR_ARG;
    fs_secagg_msg_keys *km = malloc(sizeof *km);
    fs_secagg_msg_shares *sm = malloc(sizeof *sm);
    fs_shamir_share *sb = malloc(sizeof(fs_shamir_share) * MAXN);
    fs_shamir_share *ss = malloc(sizeof(fs_shamir_share) * MAXN);
    uint8_t xs[MAXN], key[32], pt[FS_SECAGG_SHARE_PT], ad[AD_BYTES];
    uint32_t holder[MAXN], nh = 0;
    fs_status st = FS_OK;
    char why[256];
    if (!km || !sm || !sb || !ss) { st = FS_ERR_NOMEM; goto out; }
    st = fs_secagg_dec_keys(keys, keys_len, s->p.round, s->p.n_sites, km, why, sizeof why);
    if (st != FS_OK) {
        fs_log_error("secagg site %u: refusing the server's keys: %s", s->self, why);
        goto out;
    }
    int seen_self = 0;
    for (uint32_t i = 0; i < km->count; i++) {
        const fs_secagg_keyent *e = &km->e[i];
        if (e->site == s->self) {
            seen_self = 1;
            if (memcmp(e->c_pk, s->c_pk, 32) || memcmp(e->s_pk, s->s_pk, 32) ||
                memcmp(e->commit, s->commit, 32)) {
                fs_log_error("secagg site %u: the server's keys list other keys for this site", s->self);
                st = FS_ERR_MISMATCH;
                goto out;
            }
        } else if (adjacent(&s->p, s->pos, s->self, e->site)) {
            s->in_u1[e->site] = 1;
            memcpy(s->peer_c_pk[e->site], e->c_pk, 32);
            memcpy(s->peer_s_pk[e->site], e->s_pk, 32);
            holder[nh++] = e->site;
        }
    }
    if (!seen_self) {
        fs_log_error("secagg site %u: the server's keys do not list this site", s->self);
        st = FS_ERR_MISMATCH;
        goto out;
    }
    if (nh + 1 < s->p.threshold) {
        fs_log_error("secagg site %u: only %u neighbour(s) advertised keys, threshold %u needs %u",
                     s->self, nh, s->p.threshold, s->p.threshold - 1);
        st = FS_ERR_ABANDONED;
        goto out;
    }
    /* Holders: the neighbours in U1 (x = index + 1), then this site. */
    for (uint32_t i = 0; i < nh; i++) xs[i] = (uint8_t)(holder[i] + 1);
    xs[nh] = (uint8_t)(s->self + 1);
    st = fs_shamir_split(s->b, s->p.threshold, xs, nh + 1, sb);
    if (st == FS_OK) st = fs_shamir_split(s->s_sk, s->p.threshold, xs, nh + 1, ss);
    if (st != FS_OK) goto out;
    memcpy(s->own_b_share, sb[nh].y, 32);
    sm->from = s->self;
    sm->count = nh;
    for (uint32_t i = 0; i < nh; i++) {
        uint32_t v = holder[i];
        if (!derive_pair(key, LABEL_SHARE, sizeof LABEL_SHARE, &s->p, s->self, s->c_pk, v,
                         s->peer_c_pk[v], s->c_sk, s->peer_c_pk[v])) {
            fs_log_error("secagg site %u: site %u advertised an invalid encryption key", s->self, v);
            st = FS_ERR_MISMATCH;
            goto out;
        }
        memcpy(pt, sb[i].y, 32);
        memcpy(pt + 32, ss[i].y, 32);
        share_ad(ad, &s->p, s->self, v);
        sm->e[i].peer = v;
        randombytes_buf(sm->e[i].nonce, sizeof sm->e[i].nonce);
        crypto_aead_xchacha20poly1305_ietf_encrypt(sm->e[i].ct, NULL, pt, sizeof pt, ad, sizeof ad,
                                                   NULL, sm->e[i].nonce, key);
    }
    st = fs_secagg_enc_shares(s->p.round, s->p.n_sites, sm, msg, len);
out:
    sodium_memzero(key, sizeof key);
    sodium_memzero(pt, sizeof pt);
    if (sb) sodium_memzero(sb, sizeof(fs_shamir_share) * MAXN);
    if (ss) sodium_memzero(ss, sizeof(fs_shamir_share) * MAXN);
    free(sb);
    free(ss);
    free(km);
    free(sm);
    if (st == FS_OK) s->stage = SITE_SHARED;
    else if (st != FS_ERR_NOMEM) site_die(s);
    return st;
}

fs_status fs_secagg_site_recv_shares(fs_secagg_site *s, const uint8_t *relay, size_t relay_len)
{
    FS_TRY(site_at(s, SITE_SHARED, "receive shares"));
    fs_secagg_msg_relay *rm = malloc(sizeof *rm);
    uint8_t key[32], pt[FS_SECAGG_SHARE_PT], ad[AD_BYTES];
    char why[256];
    fs_status st = FS_OK;
    if (!rm) return FS_ERR_NOMEM;
    st = fs_secagg_dec_relay(relay, relay_len, s->p.round, s->p.n_sites, rm, why, sizeof why);
    if (st != FS_OK) {
        fs_log_error("secagg site %u: refusing the relayed shares: %s", s->self, why);
        goto out;
    }
    if (rm->to != s->self) {
        fs_log_error("secagg site %u: relayed shares are addressed to site %u", s->self, rm->to);
        st = FS_ERR_MISMATCH;
        goto out;
    }
    if (rm->count + 1 < s->p.threshold) {
        fs_log_error("secagg site %u: only %u neighbour(s) shared keys, threshold %u", s->self,
                     rm->count, s->p.threshold);
        st = FS_ERR_ABANDONED;
        goto out;
    }
    for (uint32_t i = 0; i < rm->count; i++) {
        uint32_t v = rm->e[i].peer;
        if (!s->in_u1[v]) {
            fs_log_error("secagg site %u: relayed share from site %u, which is not a neighbour "
                         "that advertised keys", s->self, v);
            st = FS_ERR_MISMATCH;
            goto out;
        }
        share_ad(ad, &s->p, v, s->self);
        /* WARNING: authentication binds the share to (version, round, n,
         * sender, receiver) and to the key only v and this site can derive:
         * a share changed in relay or forged by the server is refused. */
        if (!derive_pair(key, LABEL_SHARE, sizeof LABEL_SHARE, &s->p, v, s->peer_c_pk[v], s->self,
                         s->c_pk, s->c_sk, s->peer_c_pk[v]) ||
            crypto_aead_xchacha20poly1305_ietf_decrypt(pt, NULL, NULL, rm->e[i].ct,
                                                       sizeof rm->e[i].ct, ad, sizeof ad,
                                                       rm->e[i].nonce, key) != 0) {
            fs_log_error("secagg site %u: the share from site %u fails authentication (changed in "
                         "relay or forged); leaving round %llu", s->self, v,
                         (unsigned long long)s->p.round);
            st = FS_ERR_CHECKSUM;
            goto out;
        }
        if (!derive_pair(s->pair_seed[v], LABEL_MASK, sizeof LABEL_MASK, &s->p, s->self, s->s_pk, v,
                         s->peer_s_pk[v], s->s_sk, s->peer_s_pk[v])) {
            fs_log_error("secagg site %u: site %u advertised an invalid mask key", s->self, v);
            st = FS_ERR_MISMATCH;
            goto out;
        }
        s->held[v] = 1;
        memcpy(s->held_b[v], pt, 32);
        memcpy(s->held_s[v], pt + 32, 32);
    }
    /* The private keys are no longer needed: the pairwise seeds are derived. */
    sodium_memzero(s->c_sk, 32);
    sodium_memzero(s->s_sk, 32);
out:
    sodium_memzero(key, sizeof key);
    sodium_memzero(pt, sizeof pt);
    free(rm);
    if (st == FS_OK) s->stage = SITE_MASKING;
    else site_die(s);
    return st;
}

fs_status fs_secagg_site_mask(fs_secagg_site *s, const uint32_t *q, uint64_t offset, size_t n,
                              uint32_t *out)
{
    FS_TRY(site_at(s, SITE_MASKING, "mask"));
    if (n == 0) return FS_OK;
    if (!q || !out || offset > s->p.n_words || n > s->p.n_words - offset) {
        fs_log_error("secagg site %u: mask words %llu..+%zu outside the %llu-word vector", s->self,
                     (unsigned long long)offset, n, (unsigned long long)s->p.n_words);
        return FS_ERR_ARG;
    }
    uint8_t nself[12], npair[12];
    fs_secagg_nonce(FS_SECAGG_TAG_SELF, s->p.round, nself);
    fs_secagg_nonce(FS_SECAGG_TAG_PAIR, s->p.round, npair);
    if (out != q) memmove(out, q, n * sizeof *out);
    FS_TRY(apply_mask(out, s->b, nself, offset, n, 0));
    for (uint32_t v = 0; v < s->p.n_sites; v++)
        if (s->held[v]) FS_TRY(apply_mask(out, s->pair_seed[v], npair, offset, n, v < s->self));
    return FS_OK;
}

fs_status fs_secagg_site_mask_keys(fs_secagg_site *s, fs_mask_key **keys, int *k)
{
    if (!keys || !k) return FS_ERR_ARG;
    *keys = NULL;
    *k = 0;
    FS_TRY(site_at(s, SITE_MASKING, "mask_keys"));
    fs_mask_key *out = calloc((size_t)s->p.n_sites + 1, sizeof *out);
    if (!out) return FS_ERR_NOMEM;
    int n = 0;
    fs_secagg_nonce(FS_SECAGG_TAG_SELF, s->p.round, out[n].nonce);
    memcpy(out[n].key, s->b, 32);
    out[n++].sign = 1;
    for (uint32_t v = 0; v < s->p.n_sites; v++) {
        if (!s->held[v]) continue;
        fs_secagg_nonce(FS_SECAGG_TAG_PAIR, s->p.round, out[n].nonce);
        memcpy(out[n].key, s->pair_seed[v], 32);
        out[n++].sign = v < s->self ? -1 : 1;
    }
    *keys = out;
    *k = n;
    return FS_OK;
}

fs_status fs_secagg_site_unmask(fs_secagg_site *s, const uint8_t *req, size_t req_len,
                                uint8_t **msg, size_t *len)
{
    FS_TRY(site_at(s, SITE_MASKING, "unmask"));
    if (!msg || !len) return FS_ERR_ARG;
    fs_secagg_msg_unmask_req *rq = malloc(sizeof *rq);
    fs_secagg_msg_unmask_rsp *rp = malloc(sizeof *rp);
    uint8_t alive[MAXN] = {0}, dropped[MAXN] = {0};
    char why[256];
    fs_status st;
    if (!rq || !rp) { st = FS_ERR_NOMEM; goto out; }
    st = fs_secagg_dec_unmask_req(req, req_len, s->p.round, s->p.n_sites, rq, why, sizeof why);
    if (st != FS_OK) {
        fs_log_error("secagg site %u: refusing the unmasking request: %s", s->self, why);
        goto out;
    }
    for (uint32_t i = 0; i < rq->n_alive; i++) alive[rq->alive[i]] = 1;
    for (uint32_t i = 0; i < rq->n_dropped; i++) dropped[rq->dropped[i]] = 1;
    st = FS_ERR_MISMATCH;
    if (rq->n_alive < s->p.threshold) {
        fs_log_error("secagg site %u: unmasking request names %u survivor(s), threshold %u", s->self,
                     rq->n_alive, s->p.threshold);
        goto out;
    }
    if (!alive[s->self]) {
        fs_log_error("secagg site %u: unmasking request does not list this site as a survivor", s->self);
        goto out;
    }
    /* WARNING: with survivors in two groups the server could unmask each
     * group's sum, a partial sum of fewer sites than agreed: refuse. */
    if (!connected(&s->p, s->pos, alive)) {
        fs_log_error("secagg site %u: the survivors do not form a connected graph; answering would "
                     "reveal partial sums", s->self);
        goto out;
    }
    /* The sets must match the shares received: a neighbour that shared with
     * this site is alive or dropped, and one listed must have shared. */
    for (uint32_t v = 0; v < s->p.n_sites; v++) {
        if (v == s->self || !adjacent(&s->p, s->pos, s->self, v)) continue;
        if (s->held[v] != (alive[v] || dropped[v])) {
            fs_log_error("secagg site %u: unmasking request %s neighbour %u, which %s", s->self,
                         s->held[v] ? "omits" : "lists", v,
                         s->held[v] ? "shared keys with this site" : "never shared keys with it");
            goto out;
        }
    }
    /* WARNING: one kind per owner (the lists are disjoint, checked by the
     * decoder) and one answer per round: the server never gets both b_v and
     * s_v of a site. This site's own s share is never sent. */
    rp->from = s->self;
    rp->count = 0;
    for (uint32_t v = 0; v < s->p.n_sites; v++) {
        fs_secagg_shareent *e = &rp->e[rp->count];
        if (v == s->self) {
            e->owner = v; e->kind = 0; memcpy(e->share, s->own_b_share, 32); rp->count++;
        } else if (s->held[v] && alive[v]) {
            e->owner = v; e->kind = 0; memcpy(e->share, s->held_b[v], 32); rp->count++;
        } else if (s->held[v] && dropped[v]) {
            e->owner = v; e->kind = 1; memcpy(e->share, s->held_s[v], 32); rp->count++;
        }
    }
    st = fs_secagg_enc_unmask_rsp(s->p.round, s->p.n_sites, rp, msg, len);
out:
    if (rp) sodium_memzero(rp, sizeof *rp);
    free(rp);
    free(rq);
    if (st == FS_ERR_NOMEM) return st;
    if (st == FS_OK) {
        /* Answered: the shares are spent. Masking stays impossible too. */
        sodium_memzero(s->own_b_share, 32);
        sodium_memzero(s->held_b, sizeof s->held_b);
        sodium_memzero(s->held_s, sizeof s->held_s);
        sodium_memzero(s->b, 32);
        sodium_memzero(s->pair_seed, sizeof s->pair_seed);
        s->stage = SITE_DONE;
    } else {
        site_die(s);
    }
    return st;
}

/* ---- the server -------------------------------------------------------------------- */

enum { SRV_ADVERTISE, SRV_SHARES, SRV_MASKED, SRV_UNMASK, SRV_READY, SRV_ABANDONED };

typedef struct {
    uint8_t seed[32];
    uint8_t nonce[12];
    int negate;
} correction;

struct fs_secagg_server {
    fs_secagg_params p;
    int stage;
    char reason[256];
    uint32_t pos[MAXN];
    uint8_t in[4][MAXN];
    uint32_t count[4];
    fs_secagg_keyent keys[MAXN];
    fs_secagg_ctent *cts[MAXN];   /* SHARES of each site in U2, by receiver ascending */
    uint32_t n_cts[MAXN];
    uint8_t need[MAXN];           /* stage 4: 0 nothing, 1 b (survivor), 2 s (dropped) */
    fs_shamir_share *got[MAXN];   /* WARNING: shares, wiped on free */
    uint32_t n_got[MAXN];
    correction *corr;             /* WARNING: seeds, wiped on free */
    uint32_t n_corr;
};

static fs_status abandon(fs_secagg_server *srv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Marks the round abandoned with a reason (logged). */
static fs_status abandon(fs_secagg_server *srv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(srv->reason, sizeof srv->reason, fmt, ap);
    va_end(ap);
    srv->stage = SRV_ABANDONED;
    fs_log_error("secagg round %llu abandoned: %s", (unsigned long long)srv->p.round, srv->reason);
    return FS_ERR_ABANDONED;
}

/* FS_OK when the server is at `want`. */
static fs_status srv_at(const fs_secagg_server *srv, int want, const char *what)
{
    if (!srv) return FS_ERR_ARG;
    if (srv->stage == SRV_ABANDONED) return FS_ERR_ABANDONED;
    if (srv->stage != want) {
        fs_log_error("secagg server: %s called out of order", what);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

static void srv_add(fs_secagg_server *srv, fs_secagg_set set, uint32_t u)
{
    srv->in[set][u] = 1;
    srv->count[set]++;
}

fs_status fs_secagg_server_new(const fs_secagg_params *p, fs_secagg_server **out)
{
    if (!out) return FS_ERR_ARG;
    *out = NULL;
    FS_TRY(fs_secagg_params_check(p));
    if (!sodium_ready()) return FS_ERR_UNSUPPORTED;
    fs_secagg_server *srv = calloc(1, sizeof *srv);
    if (!srv) return FS_ERR_NOMEM;
    srv->p = *p;
    graph_positions(p, srv->pos);
    *out = srv;
    return FS_OK;
}

void fs_secagg_server_free(fs_secagg_server *srv)
{
    if (!srv) return;
    for (uint32_t u = 0; u < MAXN; u++) {
        free(srv->cts[u]);
        if (srv->got[u]) sodium_memzero(srv->got[u], sizeof(fs_shamir_share) * MAXN);
        free(srv->got[u]);
    }
    if (srv->corr) sodium_memzero(srv->corr, sizeof(correction) * srv->n_corr);
    free(srv->corr);
    sodium_memzero(srv, sizeof *srv);
    free(srv);
}

int fs_secagg_server_has(const fs_secagg_server *srv, fs_secagg_set set, uint32_t site)
{
    return srv && (unsigned)set < 4 && site < srv->p.n_sites && srv->in[set][site];
}

uint32_t fs_secagg_server_count(const fs_secagg_server *srv, fs_secagg_set set)
{
    return srv && (unsigned)set < 4 ? srv->count[set] : 0;
}

const char *fs_secagg_server_reason(const fs_secagg_server *srv)
{
    return srv ? srv->reason : "";
}

/* Common checks of a recv call: the site index and that the message's
 * sender is the authenticated site. */
static fs_status from_ok(const fs_secagg_server *srv, uint32_t site, uint32_t from, const char *what)
{
    if (from != site) {
        fs_log_error("secagg server: %s from site %u claims to come from site %u", what, site, from);
        return FS_ERR_MISMATCH;
    }
    return FS_OK;
}

fs_status fs_secagg_server_recv_advertise(fs_secagg_server *srv, uint32_t site, const uint8_t *msg,
                                          size_t len)
{
    FS_TRY(srv_at(srv, SRV_ADVERTISE, "receive keys"));
    if (site >= srv->p.n_sites) return FS_ERR_ARG;
    fs_secagg_msg_advertise m;
    char why[256];
    fs_status st = fs_secagg_dec_advertise(msg, len, srv->p.round, srv->p.n_sites, &m, why, sizeof why);
    if (st != FS_OK) {
        fs_log_error("secagg server: refusing keys of site %u: %s", site, why);
        return st;
    }
    FS_TRY(from_ok(srv, site, m.from, "keys"));
    if (srv->in[FS_SECAGG_ADVERTISED][site]) {
        fs_log_error("secagg server: site %u sent its keys twice", site);
        return FS_ERR_ARG;
    }
    srv->keys[site] = m.k;
    srv_add(srv, FS_SECAGG_ADVERTISED, site);
    return FS_OK;
}

fs_status fs_secagg_server_close_advertise(fs_secagg_server *srv, uint8_t **keys, size_t *len)
{
    FS_TRY(srv_at(srv, SRV_ADVERTISE, "close stage 0"));
    if (!keys || !len) return FS_ERR_ARG;
    if (srv->count[FS_SECAGG_ADVERTISED] < srv->p.threshold)
        return abandon(srv, "stage 0: %u site(s) advertised keys, threshold %u",
                       srv->count[FS_SECAGG_ADVERTISED], srv->p.threshold);
    fs_secagg_msg_keys *km = malloc(sizeof *km);
    if (!km) return FS_ERR_NOMEM;
    km->count = 0;
    for (uint32_t u = 0; u < srv->p.n_sites; u++)
        if (srv->in[FS_SECAGG_ADVERTISED][u]) km->e[km->count++] = srv->keys[u];
    fs_status st = fs_secagg_enc_keys(srv->p.round, srv->p.n_sites, km, keys, len);
    free(km);
    if (st == FS_OK) srv->stage = SRV_SHARES;
    return st;
}

fs_status fs_secagg_server_recv_shares(fs_secagg_server *srv, uint32_t site, const uint8_t *msg,
                                       size_t len)
{
    FS_TRY(srv_at(srv, SRV_SHARES, "receive shares"));
    if (site >= srv->p.n_sites) return FS_ERR_ARG;
    if (!srv->in[FS_SECAGG_ADVERTISED][site] || srv->in[FS_SECAGG_SHARED][site]) {
        fs_log_error("secagg server: shares from site %u, which %s", site,
                     srv->in[FS_SECAGG_SHARED][site] ? "already sent them" : "advertised no keys");
        return FS_ERR_ARG;
    }
    fs_secagg_msg_shares *m = malloc(sizeof *m);
    if (!m) return FS_ERR_NOMEM;
    char why[256];
    fs_status st = fs_secagg_dec_shares(msg, len, srv->p.round, srv->p.n_sites, m, why, sizeof why);
    if (st != FS_OK) {
        fs_log_error("secagg server: refusing shares of site %u: %s", site, why);
        goto out;
    }
    if ((st = from_ok(srv, site, m->from, "shares")) != FS_OK) goto out;
    /* Exactly one ciphertext for each neighbour in U1, ascending. */
    uint32_t j = 0;
    for (uint32_t v = 0; v < srv->p.n_sites; v++) {
        if (!srv->in[FS_SECAGG_ADVERTISED][v] || !adjacent(&srv->p, srv->pos, site, v)) continue;
        if (j >= m->count || m->e[j].peer != v) {
            fs_log_error("secagg server: shares of site %u lack one for neighbour %u", site, v);
            st = FS_ERR_MISMATCH;
            goto out;
        }
        j++;
    }
    if (j != m->count) {
        fs_log_error("secagg server: shares of site %u include %u for non-neighbours", site, m->count - j);
        st = FS_ERR_MISMATCH;
        goto out;
    }
    srv->cts[site] = malloc(sizeof(fs_secagg_ctent) * (m->count ? m->count : 1));
    if (!srv->cts[site]) { st = FS_ERR_NOMEM; goto out; }
    memcpy(srv->cts[site], m->e, sizeof(fs_secagg_ctent) * m->count);
    srv->n_cts[site] = m->count;
    srv_add(srv, FS_SECAGG_SHARED, site);
out:
    free(m);
    return st;
}

fs_status fs_secagg_server_close_shares(fs_secagg_server *srv)
{
    FS_TRY(srv_at(srv, SRV_SHARES, "close stage 1"));
    if (srv->count[FS_SECAGG_SHARED] < srv->p.threshold)
        return abandon(srv, "stage 1: %u site(s) shared keys, threshold %u",
                       srv->count[FS_SECAGG_SHARED], srv->p.threshold);
    srv->stage = SRV_MASKED;
    return FS_OK;
}

fs_status fs_secagg_server_relay(fs_secagg_server *srv, uint32_t site, uint8_t **msg, size_t *len)
{
    FS_TRY(srv_at(srv, SRV_MASKED, "relay"));
    if (!msg || !len || site >= srv->p.n_sites) return FS_ERR_ARG;
    if (!srv->in[FS_SECAGG_SHARED][site]) {
        fs_log_error("secagg server: no relay for site %u, which did not share keys", site);
        return FS_ERR_ARG;
    }
    fs_secagg_msg_relay *m = malloc(sizeof *m);
    if (!m) return FS_ERR_NOMEM;
    m->to = site;
    m->count = 0;
    for (uint32_t v = 0; v < srv->p.n_sites; v++) {
        if (!srv->in[FS_SECAGG_SHARED][v] || !adjacent(&srv->p, srv->pos, site, v)) continue;
        for (uint32_t i = 0; i < srv->n_cts[v]; i++)
            if (srv->cts[v][i].peer == site) {
                m->e[m->count] = srv->cts[v][i];
                m->e[m->count++].peer = v;
            }
    }
    fs_status st = fs_secagg_enc_relay(srv->p.round, srv->p.n_sites, m, msg, len);
    free(m);
    return st;
}

fs_status fs_secagg_server_masked_received(fs_secagg_server *srv, uint32_t site)
{
    FS_TRY(srv_at(srv, SRV_MASKED, "masked input"));
    if (site >= srv->p.n_sites || !srv->in[FS_SECAGG_SHARED][site] || srv->in[FS_SECAGG_MASKED][site]) {
        fs_log_error("secagg server: masked input of site %u not expected (%s)", site,
                     site < srv->p.n_sites && srv->in[FS_SECAGG_MASKED][site]
                         ? "already counted" : "it did not share keys");
        return FS_ERR_ARG;
    }
    srv_add(srv, FS_SECAGG_MASKED, site);
    return FS_OK;
}

fs_status fs_secagg_server_close_masked(fs_secagg_server *srv, uint8_t **req, size_t *len)
{
    FS_TRY(srv_at(srv, SRV_MASKED, "close stage 2"));
    if (!req || !len) return FS_ERR_ARG;
    if (srv->count[FS_SECAGG_MASKED] < srv->p.threshold)
        return abandon(srv, "stage 2: %u masked input(s) arrived, threshold %u",
                       srv->count[FS_SECAGG_MASKED], srv->p.threshold);
    /* WARNING: survivors in several groups would let the server unmask each
     * group's sum separately; refuse (sites refuse too). */
    if (!connected(&srv->p, srv->pos, srv->in[FS_SECAGG_MASKED]))
        return abandon(srv, "stage 2: the %u surviving sites do not form a connected graph "
                       "(too many dropouts for k = %u)", srv->count[FS_SECAGG_MASKED],
                       srv->p.neighbours);
    fs_secagg_msg_unmask_req *m = malloc(sizeof *m);
    if (!m) return FS_ERR_NOMEM;
    m->n_alive = m->n_dropped = 0;
    for (uint32_t u = 0; u < srv->p.n_sites; u++) {
        if (srv->in[FS_SECAGG_MASKED][u]) { m->alive[m->n_alive++] = u; srv->need[u] = 1; }
        else if (srv->in[FS_SECAGG_SHARED][u]) { m->dropped[m->n_dropped++] = u; srv->need[u] = 2; }
    }
    fs_status st = fs_secagg_enc_unmask_req(srv->p.round, srv->p.n_sites, m, req, len);
    free(m);
    if (st == FS_OK) srv->stage = SRV_UNMASK;
    return st;
}

fs_status fs_secagg_server_recv_unmask(fs_secagg_server *srv, uint32_t site, const uint8_t *msg,
                                       size_t len)
{
    FS_TRY(srv_at(srv, SRV_UNMASK, "receive unmasking response"));
    if (site >= srv->p.n_sites) return FS_ERR_ARG;
    if (!srv->in[FS_SECAGG_MASKED][site] || srv->in[FS_SECAGG_UNMASKED][site]) {
        fs_log_error("secagg server: unmasking response from site %u not expected (%s)", site,
                     srv->in[FS_SECAGG_UNMASKED][site] ? "already answered" : "not a survivor");
        return FS_ERR_ARG;
    }
    fs_secagg_msg_unmask_rsp *m = malloc(sizeof *m);
    if (!m) return FS_ERR_NOMEM;
    char why[256];
    fs_status st = fs_secagg_dec_unmask_rsp(msg, len, srv->p.round, srv->p.n_sites, m, why, sizeof why);
    if (st != FS_OK) {
        fs_log_error("secagg server: refusing unmasking response of site %u: %s", site, why);
        goto out;
    }
    if ((st = from_ok(srv, site, m->from, "unmasking response")) != FS_OK) goto out;
    /* Exactly the shares this site holds: its own b, and for each neighbour in
     * U2 the kind the request asked for. */
    uint32_t j = 0;
    st = FS_ERR_MISMATCH;
    for (uint32_t w = 0; w < srv->p.n_sites; w++) {
        if (!srv->need[w] || (w != site && !adjacent(&srv->p, srv->pos, site, w))) continue;
        if (j >= m->count || m->e[j].owner != w || m->e[j].kind != srv->need[w] - 1) {
            fs_log_error("secagg server: unmasking response of site %u lacks the share of site %u "
                         "or has the wrong kind", site, w);
            goto out;
        }
        j++;
    }
    if (j != m->count) {
        fs_log_error("secagg server: unmasking response of site %u has %u unexpected share(s)", site,
                     m->count - j);
        goto out;
    }
    for (uint32_t i = 0; i < m->count; i++) {
        uint32_t w = m->e[i].owner;
        if (!srv->got[w] && !(srv->got[w] = calloc(MAXN, sizeof(fs_shamir_share)))) {
            st = FS_ERR_NOMEM;
            goto out;
        }
    }
    for (uint32_t i = 0; i < m->count; i++) {
        uint32_t w = m->e[i].owner;
        fs_shamir_share *sh = &srv->got[w][srv->n_got[w]++];
        sh->x = (uint8_t)(site + 1);
        memcpy(sh->y, m->e[i].share, 32);
    }
    srv_add(srv, FS_SECAGG_UNMASKED, site);
    st = FS_OK;
out:
    sodium_memzero(m, sizeof *m);
    free(m);
    return st;
}

/* 1 when secret matches what site w advertised: H(b_w) for kind 1 (b), the
 * public key s_pk for kind 2 (s_sk). */
static int secret_ok(const fs_secagg_server *srv, uint32_t w, int kind, const uint8_t secret[32])
{
    uint8_t chk[32];
    int ok;
    if (kind == 1) {
        commit_b(chk, &srv->p, w, secret);
        ok = sodium_memcmp(chk, srv->keys[w].commit, 32) == 0;
    } else {
        ok = crypto_scalarmult_base(chk, secret) == 0 && sodium_memcmp(chk, srv->keys[w].s_pk, 32) == 0;
    }
    return ok;
}

/*
 * Reconstructs site w's secret from its m collected shares: the first t,
 * then other t-subsets in lexicographic order (at most MAX_SUBSET_TRIES)
 * until one matches the stage-0 commitment. Returns 1 with the secret, or 0
 * (why filled in). Names the holders whose shares disagree (logged).
 */
static int recover(fs_secagg_server *srv, uint32_t w, uint8_t secret[32], char *why, size_t whylen)
{
    uint32_t t = srv->p.threshold, m = srv->n_got[w], idx[MAXN];
    int kind = srv->need[w];
    if (m < t) {
        snprintf(why, whylen, "site %u's %s cannot be recovered: %u share(s) arrived, threshold %u",
                 w, kind == 1 ? "self-mask seed" : "mask key", m, t);
        return 0;
    }
    fs_shamir_share pick[MAXN];
    int found = 0;
    for (uint32_t i = 0; i < t; i++) idx[i] = i;
    for (int tries = 0; tries < MAX_SUBSET_TRIES; tries++) {
        for (uint32_t i = 0; i < t; i++) pick[i] = srv->got[w][idx[i]];
        if (fs_shamir_combine(pick, t, t, secret) == FS_OK && secret_ok(srv, w, kind, secret)) {
            found = 1;
            break;
        }
        int i = (int)t - 1; /* next combination */
        while (i >= 0 && idx[i] == m - t + (uint32_t)i) i--;
        if (i < 0) break;
        idx[i]++;
        for (uint32_t k = (uint32_t)i + 1; k < t; k++) idx[k] = idx[k - 1] + 1;
    }
    if (found && m > t) { /* name the holders whose share is off the polynomial */
        uint8_t alt[32];
        for (uint32_t j = 0; j < m; j++) {
            int in_pick = 0;
            for (uint32_t i = 0; i < t; i++) in_pick |= idx[i] == j;
            if (in_pick) continue;
            pick[t - 1] = srv->got[w][j];
            if (fs_shamir_combine(pick, t, t, alt) != FS_OK || sodium_memcmp(alt, secret, 32) != 0)
                fs_log_warn("secagg server: site %u sent a corrupt share of site %u's secret; "
                            "outvoted by the others", srv->got[w][j].x - 1, w);
        }
        sodium_memzero(alt, sizeof alt);
    }
    sodium_memzero(pick, sizeof pick);
    if (!found) {
        sodium_memzero(secret, 32);
        snprintf(why, whylen, "site %u's %s: no %u of the %u shares match its stage-0 commitment "
                 "(corrupt shares)", w, kind == 1 ? "self-mask seed" : "mask key", t, m);
    }
    return found;
}

fs_status fs_secagg_server_close_unmask(fs_secagg_server *srv)
{
    FS_TRY(srv_at(srv, SRV_UNMASK, "close stage 4"));
    uint32_t n = srv->p.n_sites;
    if (srv->count[FS_SECAGG_UNMASKED] < srv->p.threshold)
        return abandon(srv, "stage 4: %u site(s) answered the unmasking request, threshold %u",
                       srv->count[FS_SECAGG_UNMASKED], srv->p.threshold);
    /* One correction per survivor (its self mask) and per (dropped, surviving
     * neighbour) pair (their pairwise mask). */
    uint32_t ncorr = 0;
    for (uint32_t u = 0; u < n; u++) {
        if (srv->need[u] == 1) ncorr++;
        if (srv->need[u] == 2)
            for (uint32_t w = 0; w < n; w++) ncorr += srv->need[w] == 1 && adjacent(&srv->p, srv->pos, u, w);
    }
    srv->corr = calloc(ncorr ? ncorr : 1, sizeof(correction));
    if (!srv->corr) return FS_ERR_NOMEM;
    uint8_t secret[32], nself[12], npair[12];
    char why[256];
    fs_secagg_nonce(FS_SECAGG_TAG_SELF, srv->p.round, nself);
    fs_secagg_nonce(FS_SECAGG_TAG_PAIR, srv->p.round, npair);
    for (uint32_t u = 0; u < n; u++) {
        if (!srv->need[u]) continue;
        if (!recover(srv, u, secret, why, sizeof why)) return abandon(srv, "stage 4: %s", why);
        if (srv->need[u] == 1) { /* y_u carries +PRG(b_u): subtract it */
            correction *c = &srv->corr[srv->n_corr++];
            memcpy(c->seed, secret, 32);
            memcpy(c->nonce, nself, 12);
            c->negate = 1;
        } else { /* u dropped: remove the masks its surviving neighbours added */
            for (uint32_t w = 0; w < n; w++) {
                if (srv->need[w] != 1 || !adjacent(&srv->p, srv->pos, u, w)) continue;
                correction *c = &srv->corr[srv->n_corr++];
                if (!derive_pair(c->seed, LABEL_MASK, sizeof LABEL_MASK, &srv->p, u,
                                 srv->keys[u].s_pk, w, srv->keys[w].s_pk, secret, srv->keys[w].s_pk)) {
                    sodium_memzero(secret, 32);
                    return abandon(srv, "stage 4: site %u's mask key is invalid", w);
                }
                memcpy(c->nonce, npair, 12);
                c->negate = u > w; /* y_w added PRG(s_wu) when u > w */
            }
        }
        sodium_memzero(secret, 32);
    }
    for (uint32_t u = 0; u < MAXN; u++) { /* the shares are spent */
        if (srv->got[u]) sodium_memzero(srv->got[u], sizeof(fs_shamir_share) * MAXN);
    }
    srv->stage = SRV_READY;
    return FS_OK;
}

fs_status fs_secagg_server_unmask_keys(const fs_secagg_server *srv, fs_mask_key **keys, int *k)
{
    if (!keys || !k) return FS_ERR_ARG;
    *keys = NULL;
    *k = 0;
    if (srv && srv->stage == SRV_ABANDONED) return FS_ERR_ABANDONED;
    FS_TRY(srv_at(srv, SRV_READY, "unmask_keys"));
    fs_mask_key *out = calloc(srv->n_corr ? srv->n_corr : 1, sizeof *out);
    if (!out) return FS_ERR_NOMEM;
    for (uint32_t i = 0; i < srv->n_corr; i++) {
        memcpy(out[i].key, srv->corr[i].seed, 32);
        memcpy(out[i].nonce, srv->corr[i].nonce, 12);
        out[i].sign = srv->corr[i].negate ? -1 : 1;
    }
    *keys = out;
    *k = (int)srv->n_corr;
    return FS_OK;
}

void fs_secagg_unmask_keys_free(fs_mask_key *keys, int k)
{
    if (!keys) return;
    sodium_memzero(keys, (size_t)(k > 0 ? k : 1) * sizeof *keys);
    free(keys);
}

fs_status fs_secagg_server_unmask(fs_secagg_server *srv, uint32_t *sum, uint64_t offset, size_t n)
{
    if (srv && srv->stage == SRV_ABANDONED) {
        fs_log_error("secagg server: round %llu was abandoned (%s); the sum is left untouched",
                     (unsigned long long)srv->p.round, srv->reason);
        return FS_ERR_ABANDONED;
    }
    FS_TRY(srv_at(srv, SRV_READY, "unmask"));
    if (n == 0) return FS_OK;
    if (!sum || offset > srv->p.n_words || n > srv->p.n_words - offset) {
        fs_log_error("secagg server: unmask words %llu..+%zu outside the %llu-word vector",
                     (unsigned long long)offset, n, (unsigned long long)srv->p.n_words);
        return FS_ERR_ARG;
    }
    for (uint32_t i = 0; i < srv->n_corr; i++)
        FS_TRY(apply_mask(sum, srv->corr[i].seed, srv->corr[i].nonce, offset, n, srv->corr[i].negate));
    return FS_OK;
}
