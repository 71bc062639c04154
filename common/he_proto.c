/*
 * common/he_proto.c — the encrypted-aggregation protocol of one round attempt
 * (common/he_proto.h): message building and strict parsing, the server's and
 * the site's state machines, and the sealing of key shares.
 *
 * Layout: byte helpers and the message header; parameters; share sealing
 * (X25519, BLAKE2b, XChaCha20-Poly1305); the server (stages K, S, U, D); the
 * site. Every parser reads the whole message and checks it before any state
 * changes, so a refused message leaves the server or site as it was.
 *
 * Statuses: bytes that do not parse → FS_ERR_FORMAT; well-formed bytes of
 * another round, attempt, type, site, key or decryption set →
 * FS_ERR_MISMATCH; a corrupted object or a sealed share that fails
 * authentication → FS_ERR_CHECKSUM; a call in the wrong stage or with an
 * invalid site number (the integrator's error) → FS_ERR_ARG; too few sites
 * left → FS_ERR_ABANDONED. Each refusal logs one line naming what is wrong.
 *
 * Tested by tests/test_he_proto.c; the parsers are fuzzed by
 * tests/fuzz/fuzz_he.c.
 */
#include "common/he_proto.h"
#include "common/log.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HDR_BYTES 16u
#define PROTO_VERSION 1u
#define XPK_BYTES 32u
#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define AD_BYTES 21u
#define BATCH FS_HE_PROTO_BATCH

static const uint8_t magic[4] = { 'F', 'S', 'H', 'P' };
static const char share_label[] = "fedseg-he-proto-share-key-v1";

/* ---- bytes and the message header ------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static const char *msg_name(unsigned type)
{
    switch (type) {
    case FS_HE_MSG_KEYS: return "KEYS";
    case FS_HE_MSG_BCAST: return "BCAST";
    case FS_HE_MSG_SHARES: return "SHARES";
    case FS_HE_MSG_RELAY: return "RELAY";
    case FS_HE_MSG_REQ: return "REQ";
    case FS_HE_MSG_PART: return "PART";
    }
    return "unknown";
}

static size_t obj_bytes(fs_he_obj_kind k) { return fs_he_wire_bytes(k); }
static size_t sealed_bytes(void) { return NONCE_BYTES + obj_bytes(FS_HE_OBJ_SHAMIR) + TAG_BYTES; }

static void put_hdr(uint8_t *m, const fs_he_params *p, fs_he_msg_type type)
{
    memcpy(m, magic, 4);
    m[4] = PROTO_VERSION;
    m[5] = (uint8_t)type;
    m[6] = m[7] = 0;
    put32(m + 8, p->round);
    put32(m + 12, p->attempt);
}

/* Checks the 16-byte header of msg (len ≥ 16 is checked here) against the
 * attempt and the expected type; `who` names the message in the log. */
static fs_status check_hdr(const fs_he_params *p, const uint8_t *m, size_t len,
                           fs_he_msg_type type, const char *who)
{
    if (!m || len < HDR_BYTES) {
        fs_log_error("he_proto: %s: %zu bytes, shorter than the %u-byte header (truncated)", who,
                     m ? len : 0, HDR_BYTES);
        return FS_ERR_FORMAT;
    }
    if (memcmp(m, magic, 4)) {
        fs_log_error("he_proto: %s: not an encrypted-aggregation message (bad magic)", who);
        return FS_ERR_FORMAT;
    }
    if (m[4] != PROTO_VERSION) {
        fs_log_error("he_proto: %s: version %u, this build speaks version %u", who, m[4],
                     PROTO_VERSION);
        return FS_ERR_FORMAT;
    }
    if (m[5] != (uint8_t)type) {
        fs_log_error("he_proto: %s: got a %s message (type %u)", who, msg_name(m[5]), m[5]);
        return FS_ERR_MISMATCH;
    }
    if (m[6] || m[7]) {
        fs_log_error("he_proto: %s: reserved header bytes are not zero", who);
        return FS_ERR_FORMAT;
    }
    if (get32(m + 8) != p->round || get32(m + 12) != p->attempt) {
        fs_log_error("he_proto: %s: of round %u attempt %u, this is round %u attempt %u", who,
                     get32(m + 8), get32(m + 12), p->round, p->attempt);
        return FS_ERR_MISMATCH;
    }
    return FS_OK;
}

/* Refuses a message whose length is not exactly `want`. */
static fs_status check_len(size_t len, size_t want, const char *who)
{
    if (len == want) return FS_OK;
    fs_log_error("he_proto: %s: %zu bytes, expected %zu (%s)", who, len, want,
                 len < want ? "truncated" : "trailing bytes");
    return FS_ERR_FORMAT;
}

static int all_zero(const uint8_t *b, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++) acc |= b[i];
    return acc == 0;
}

/* Reads one object of `kind` and checks the fields beside its polynomials:
 * from, to, index, and key id / set id (NULL: must be zero). */
static fs_status read_obj(const uint8_t *in, size_t len, fs_he_obj_kind kind, uint32_t from,
                          uint32_t to, uint32_t index, const uint8_t *key_id,
                          const uint8_t *set_id, uint64_t *polys, const char *who)
{
    fs_he_hdr h;
    fs_status st = fs_he_read(in, len, kind, &h, polys);
    if (st != FS_OK) {
        fs_log_error("he_proto: %s: object refused (%s)", who, fs_status_str(st));
        return st;
    }
    if (h.from != from || h.to != to) {
        fs_log_error("he_proto: %s: object from site %u to %u, expected from %u to %u", who,
                     h.from, h.to, from, to);
        return FS_ERR_MISMATCH;
    }
    if (h.index != index) {
        fs_log_error("he_proto: %s: object index %u, expected %u", who, h.index, index);
        return FS_ERR_MISMATCH;
    }
    if (key_id ? memcmp(h.key_id, key_id, FS_HE_KEYID_BYTES) != 0
               : !all_zero(h.key_id, FS_HE_KEYID_BYTES)) {
        fs_log_error("he_proto: %s: object under another key id", who);
        return FS_ERR_MISMATCH;
    }
    if (set_id ? memcmp(h.set_id, set_id, FS_HE_KEYID_BYTES) != 0
               : !all_zero(h.set_id, FS_HE_KEYID_BYTES)) {
        fs_log_error("he_proto: %s: object for another decryption set", who);
        return FS_ERR_MISMATCH;
    }
    return FS_OK;
}

/* ---- parameters ----------------------------------------------------------------- */

fs_status fs_he_params_check(const fs_he_params *p)
{
    if (!p) {
        fs_log_error("he_proto: no parameters");
        return FS_ERR_ARG;
    }
    const char *bad = NULL;
    uint32_t maxn = fs_he_max_sites(&p->qz);
    if (p->round < 1) bad = "round must be >= 1";
    else if (p->n_sites < 2 || p->n_sites > FS_HE_PROTO_MAX_SITES) bad = "n_sites must be in 2..255";
    else if (p->threshold < 2 || p->threshold > p->n_sites) bad = "threshold must be in 2..n_sites";
    else if (p->n_values < 1 || p->n_values > (1ull << 31)) bad = "n_values must be in 1..2^31";
    else if (maxn == 0) bad = "invalid quantiser (clip must be finite and > 0, frac_bits <= 24)";
    if (bad) {
        fs_log_error("he_proto: bad parameters (round %u, %u sites, threshold %u, %llu values, "
                     "clip %g, %u fraction bits): %s", p->round, p->n_sites, p->threshold,
                     (unsigned long long)p->n_values, (double)p->qz.clip, p->qz.frac_bits, bad);
        return FS_ERR_ARG;
    }
    if (maxn < p->n_sites) {
        fs_log_error("he_proto: clip %g with %u fraction bits allows at most %u sites, not %u "
                     "(fewer fraction bits: fs_he_frac_bits)", (double)p->qz.clip,
                     p->qz.frac_bits, maxn, p->n_sites);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

fs_status fs_he_frac_bits(double clip, uint32_t n, unsigned *f)
{
    if (!f || !(clip > 0.0) || !(clip <= 3.0e38) || n < 1) {
        fs_log_error("he_proto: frac_bits: clip %g must be finite and > 0, sites (%u) >= 1", clip,
                     n);
        return FS_ERR_ARG;
    }
    /* Fewer fraction bits never lower the bound (the largest quantised
     * value shrinks), so the first f from the top that fits is the answer. */
    for (int b = 24; b >= 0; b--) {
        const fs_he_quant qz = { .clip = (float)clip, .frac_bits = (unsigned)b };
        if (fs_he_max_sites(&qz) >= n) {
            *f = (unsigned)b;
            return FS_OK;
        }
    }
    const fs_he_quant q0 = { .clip = (float)clip, .frac_bits = 0 };
    fs_log_error("he_proto: frac_bits: no fraction bits allow %u sites with clip %g (at most %u "
                 "sites even with 0 bits)", n, clip, fs_he_max_sites(&q0));
    return FS_ERR_ARG;
}

size_t fs_he_params_nct(const fs_he_params *p) { return p ? fs_he_ct_count(p->n_values) : 0; }

/* ---- sealing of key shares ------------------------------------------------------- */

/* The key of the share dealer → receiver: BLAKE2b-256 over a label, the
 * dealer's and the receiver's X25519 keys, and the shared point of my_sk
 * with peer_pk (either side's view). 0 when the point is degenerate. */
static int share_key(const uint8_t my_sk[XPK_BYTES], const uint8_t peer_pk[XPK_BYTES],
                     const uint8_t dealer_pk[XPK_BYTES], const uint8_t recv_pk[XPK_BYTES],
                     uint8_t key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES])
{
    uint8_t pt[crypto_scalarmult_BYTES];
    if (crypto_scalarmult(pt, my_sk, peer_pk) != 0) {
        sodium_memzero(pt, sizeof pt);
        return 0;
    }
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, NULL, 0, crypto_aead_xchacha20poly1305_ietf_KEYBYTES);
    crypto_generichash_update(&hs, (const uint8_t *)share_label, sizeof share_label - 1);
    crypto_generichash_update(&hs, dealer_pk, XPK_BYTES);
    crypto_generichash_update(&hs, recv_pk, XPK_BYTES);
    crypto_generichash_update(&hs, pt, sizeof pt);
    crypto_generichash_final(&hs, key, crypto_aead_xchacha20poly1305_ietf_KEYBYTES);
    sodium_memzero(pt, sizeof pt);
    sodium_memzero(&hs, sizeof hs);
    return 1;
}

/* Associated data: magic, version, round, attempt, dealer, receiver. */
static void share_ad(const fs_he_params *p, uint32_t dealer, uint32_t recv, uint8_t ad[AD_BYTES])
{
    memcpy(ad, magic, 4);
    ad[4] = PROTO_VERSION;
    put32(ad + 5, p->round);
    put32(ad + 9, p->attempt);
    put32(ad + 13, dealer);
    put32(ad + 17, recv);
}

/* ---- server ------------------------------------------------------------------------ */

enum { SV_K, SV_S, SV_U, SV_D, SV_DONE, SV_ABANDONED };

static const char *sv_stage_name(int st)
{
    static const char *names[] = { "K (keys)", "S (shares)", "U (upload)", "D (decryption)",
                                   "done", "abandoned" };
    return names[st];
}

struct fs_he_server {
    fs_he_params p;
    uint32_t n, t;
    size_t nct;
    int stage;
    char reason[256];
    fs_he_ctx ctx;
    /* K */
    uint8_t *keyed;                   /* [n + 1]                                  */
    uint8_t (*xpk)[XPK_BYTES];        /* [n + 1]                                  */
    uint64_t *pk_shares;              /* n × POLY_WORDS until close_keys          */
    fs_he_pubkey *pk;
    /* S */
    uint8_t **sealed;                 /* [(dealer−1)·n + receiver−1], until close_input */
    uint32_t *nsealed;                /* [n + 1]: receivers stored per dealer    */
    /* U */
    uint64_t *sum;                    /* nct × CT_WORDS                           */
    uint32_t *verify_next, *fold_next; /* [n + 1]                                 */
    uint8_t *contrib, *excluded;      /* [n + 1]                                  */
    uint64_t *scratch;                /* BATCH × POLY_WORDS (≥ one ciphertext)    */
    void *gdev;                       /* fs_he_cuda_open handle, or NULL          */
    fs_he_cuda_sum *gsum;             /* the sum on the GPU during U, or NULL     */
    /* D */
    uint32_t gen;
    uint32_t *set;                    /* [t], the current T                      */
    uint8_t set_id[FS_HE_KEYID_BYTES];
    uint64_t *acc;                    /* nct × POLY_WORDS: c0 + partials so far   */
    uint32_t *part_next;              /* [n + 1]                                  */
    int64_t *result;                  /* n_values + 1                             */
    int decoded;
};

static void free_sealed(fs_he_server *s)
{
    if (!s->sealed) return;
    for (size_t i = 0; i < (size_t)s->n * s->n; i++) free(s->sealed[i]);
    free(s->sealed);
    s->sealed = NULL;
}

/* Ends the attempt: logs and keeps the reason; every later call refuses. */
static fs_status abandon(fs_he_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static fs_status abandon(fs_he_server *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->reason, sizeof s->reason, fmt, ap);
    va_end(ap);
    if (!s->reason[0]) snprintf(s->reason, sizeof s->reason, "abandoned");
    s->stage = SV_ABANDONED;
    free_sealed(s);
    fs_log_error("he_proto: round %u attempt %u abandoned: %s", s->p.round, s->p.attempt,
                 s->reason);
    return FS_ERR_ABANDONED;
}

/* FS_OK when s is in stage `want`; FS_ERR_ABANDONED after abandonment;
 * FS_ERR_ARG (the integrator called out of order) otherwise. */
static fs_status sv_stage(const fs_he_server *s, int want, const char *fn)
{
    if (!s) {
        fs_log_error("he_proto: %s: no server", fn);
        return FS_ERR_ARG;
    }
    if (s->stage == SV_ABANDONED) {
        fs_log_error("he_proto: %s: round %u attempt %u was abandoned (%s)", fn, s->p.round,
                     s->p.attempt, s->reason);
        return FS_ERR_ABANDONED;
    }
    if (s->stage != want) {
        fs_log_error("he_proto: %s: called in stage %s, belongs to stage %s", fn,
                     sv_stage_name(s->stage), sv_stage_name(want));
        return FS_ERR_ARG;
    }
    return FS_OK;
}

static fs_status sv_site(const fs_he_server *s, uint32_t site, const char *fn)
{
    if (site >= 1 && site <= s->n) return FS_OK;
    fs_log_error("he_proto: %s: site %u is not in 1..%u", fn, site, s->n);
    return FS_ERR_ARG;
}

/* Lists up to 8 sites that `pick` selects into buf ("1, 4, 7 and 2 more"). */
static const char *site_list(char *buf, size_t cap, const fs_he_server *s,
                             int (*pick)(const fs_he_server *, uint32_t))
{
    size_t off = 0, shown = 0, total = 0;
    buf[0] = '\0';
    for (uint32_t i = 1; i <= s->n; i++) {
        if (!pick(s, i)) continue;
        total++;
        if (shown < 8 && off < cap) {
            int w = snprintf(buf + off, cap - off, "%s%u", shown ? ", " : "", i);
            if (w > 0) off += (size_t)w;
            shown++;
        }
    }
    if (total > shown && off < cap) snprintf(buf + off, cap - off, " and %zu more", total - shown);
    return buf;
}

static int not_keyed(const fs_he_server *s, uint32_t i) { return !s->keyed[i]; }
static int not_shared(const fs_he_server *s, uint32_t i) { return s->nsealed[i] != s->n - 1; }

fs_status fs_he_server_new(const fs_he_params *p, fs_he_server **out)
{
    if (!out) return FS_ERR_ARG;
    *out = NULL;
    FS_TRY(fs_he_params_check(p));
    fs_he_server *s = calloc(1, sizeof *s);
    if (!s) return FS_ERR_NOMEM;
    s->p = *p;
    s->n = p->n_sites;
    s->t = p->threshold;
    s->nct = fs_he_params_nct(p);
    s->stage = SV_K;
    const size_t n1 = (size_t)s->n + 1;
    s->keyed = calloc(n1, 1);
    s->xpk = calloc(n1, XPK_BYTES);
    s->pk_shares = malloc((size_t)s->n * FS_HE_POLY_WORDS * sizeof(uint64_t));
    s->pk = calloc(1, sizeof *s->pk);
    s->nsealed = calloc(n1, sizeof *s->nsealed);
    s->verify_next = calloc(n1, sizeof *s->verify_next);
    s->fold_next = calloc(n1, sizeof *s->fold_next);
    s->contrib = calloc(n1, 1);
    s->excluded = calloc(n1, 1);
    s->part_next = calloc(n1, sizeof *s->part_next);
    s->set = calloc(s->t, sizeof *s->set);
    s->scratch = malloc((size_t)BATCH * FS_HE_POLY_WORDS * sizeof(uint64_t));
    if (!s->keyed || !s->xpk || !s->pk_shares || !s->pk || !s->nsealed || !s->verify_next ||
        !s->fold_next || !s->contrib || !s->excluded || !s->part_next || !s->set || !s->scratch) {
        fs_he_server_free(s);
        return FS_ERR_NOMEM;
    }
    fs_status st = fs_he_ctx_init(&s->ctx, p->crs_seed);
    if (st != FS_OK) {
        fs_he_server_free(s);
        return st;
    }
    *out = s;
    return FS_OK;
}

void fs_he_server_free(fs_he_server *s)
{
    if (!s) return;
    free_sealed(s);
    fs_he_ctx_free(&s->ctx);
    free(s->keyed); free(s->xpk); free(s->pk_shares); free(s->pk); free(s->nsealed);
    free(s->verify_next); free(s->fold_next); free(s->contrib); free(s->excluded);
    free(s->part_next); free(s->set); free(s->scratch); free(s->sum); free(s->acc);
    free(s->result);
    fs_he_cuda_sum_free(s->gsum);
    if (s->gdev) fs_he_cuda_close(s->gdev);
    free(s);
}

fs_status fs_he_server_use_gpu(fs_he_server *s)
{
    FS_TRY(sv_stage(s, SV_K, "server_use_gpu"));
    if (s->gdev) return FS_OK;
    return fs_he_cuda_open(&s->gdev, &s->ctx);
}

int fs_he_server_on_gpu(const fs_he_server *s) { return s && s->gdev != NULL; }

/* Leaves the GPU: the sum continues (or starts) on the CPU. */
static void drop_gpu(fs_he_server *s)
{
    fs_he_cuda_sum_free(s->gsum);
    s->gsum = NULL;
    if (s->gdev) fs_he_cuda_close(s->gdev);
    s->gdev = NULL;
}

/* ---- stage K ---- */

fs_status fs_he_server_recv_keys(fs_he_server *s, uint32_t site, const uint8_t *msg, size_t len)
{
    FS_TRY(sv_stage(s, SV_K, "server_recv_keys"));
    FS_TRY(sv_site(s, site, "server_recv_keys"));
    char who[64];
    snprintf(who, sizeof who, "KEYS from site %u", site);
    if (s->keyed[site]) {
        fs_log_error("he_proto: %s: a second KEYS message refused", who);
        return FS_ERR_MISMATCH;
    }
    FS_TRY(check_hdr(&s->p, msg, len, FS_HE_MSG_KEYS, who));
    FS_TRY(check_len(len, HDR_BYTES + XPK_BYTES + obj_bytes(FS_HE_OBJ_PK_SHARE), who));
    const uint8_t *xpk = msg + HDR_BYTES;
    if (all_zero(xpk, XPK_BYTES)) {
        fs_log_error("he_proto: %s: the X25519 key is zero", who);
        return FS_ERR_FORMAT;
    }
    for (uint32_t i = 1; i <= s->n; i++)
        if (s->keyed[i] && !memcmp(s->xpk[i], xpk, XPK_BYTES)) {
            fs_log_error("he_proto: %s: the X25519 key of site %u again", who, i);
            return FS_ERR_MISMATCH;
        }
    /* The slot is unused until keyed[site] is set, so a refusal half-way
     * through the read leaves nothing behind. */
    uint64_t *slot = s->pk_shares + (size_t)(site - 1) * FS_HE_POLY_WORDS;
    FS_TRY(read_obj(xpk + XPK_BYTES, obj_bytes(FS_HE_OBJ_PK_SHARE), FS_HE_OBJ_PK_SHARE, site, 0, 0,
                    NULL, NULL, slot, who));
    memcpy(s->xpk[site], xpk, XPK_BYTES);
    s->keyed[site] = 1;
    return FS_OK;
}

fs_status fs_he_server_close_keys(fs_he_server *s, uint8_t **out, size_t *len)
{
    FS_TRY(sv_stage(s, SV_K, "server_close_keys"));
    if (!out || !len) return FS_ERR_ARG;
    *out = NULL;
    *len = 0;
    char buf[128];
    if (fs_he_server_count(s, FS_HE_KEYED) < s->n)
        return abandon(s, "stage K: %u of %u sites sent keys (missing: %s)",
                       fs_he_server_count(s, FS_HE_KEYED), s->n,
                       site_list(buf, sizeof buf, s, not_keyed));
    const uint64_t **pp = malloc(s->n * sizeof *pp);
    s->sealed = calloc((size_t)s->n * s->n, sizeof *s->sealed);
    const size_t total = HDR_BYTES + 4 + obj_bytes(FS_HE_OBJ_PUBKEY) + (size_t)XPK_BYTES * s->n;
    uint8_t *m = malloc(total);
    if (!pp || !s->sealed || !m) {
        free(pp); free(m); free(s->sealed);
        s->sealed = NULL;
        return FS_ERR_NOMEM;
    }
    for (uint32_t i = 0; i < s->n; i++) pp[i] = s->pk_shares + (size_t)i * FS_HE_POLY_WORDS;
    fs_status st = fs_he_pk_combine(&s->ctx, pp, s->n, s->pk);
    free(pp);
    if (st == FS_OK) {
        put_hdr(m, &s->p, FS_HE_MSG_BCAST);
        put32(m + HDR_BYTES, s->n);
        fs_he_hdr h = { .kind = FS_HE_OBJ_PUBKEY };
        memcpy(h.key_id, s->pk->key_id, FS_HE_KEYID_BYTES);
        st = fs_he_write(&h, s->pk->b_hat, m + HDR_BYTES + 4, obj_bytes(FS_HE_OBJ_PUBKEY));
    }
    if (st != FS_OK) {
        free(m); free(s->sealed);
        s->sealed = NULL;
        return st;
    }
    uint8_t *keys = m + HDR_BYTES + 4 + obj_bytes(FS_HE_OBJ_PUBKEY);
    for (uint32_t i = 1; i <= s->n; i++)
        memcpy(keys + (size_t)(i - 1) * XPK_BYTES, s->xpk[i], XPK_BYTES);
    free(s->pk_shares);
    s->pk_shares = NULL;
    s->stage = SV_S;
    *out = m;
    *len = total;
    return FS_OK;
}

/* ---- stage S ---- */

fs_status fs_he_server_recv_shares(fs_he_server *s, uint32_t site, const uint8_t *msg, size_t len)
{
    FS_TRY(sv_stage(s, SV_S, "server_recv_shares"));
    FS_TRY(sv_site(s, site, "server_recv_shares"));
    char who[64];
    snprintf(who, sizeof who, "SHARES from site %u", site);
    FS_TRY(check_hdr(&s->p, msg, len, FS_HE_MSG_SHARES, who));
    if (len < HDR_BYTES + 4) return check_len(len, HDR_BYTES + 4, who);
    const uint32_t count = get32(msg + HDR_BYTES);
    if (count < 1 || count > BATCH) {
        fs_log_error("he_proto: %s: %u shares in one part, expected 1..%u", who, count, BATCH);
        return FS_ERR_FORMAT;
    }
    const size_t entry = 4 + sealed_bytes();
    FS_TRY(check_len(len, HDR_BYTES + 4 + (size_t)count * entry, who));
    const uint8_t *e = msg + HDR_BYTES + 4;
    for (uint32_t k = 0; k < count; k++) {
        const uint32_t r = get32(e + (size_t)k * entry);
        if (r < 1 || r > s->n || r == site) {
            fs_log_error("he_proto: %s: receiver %u is not another site in 1..%u", who, r, s->n);
            return FS_ERR_FORMAT;
        }
        for (uint32_t j = 0; j < k; j++)
            if (get32(e + (size_t)j * entry) == r) {
                fs_log_error("he_proto: %s: two shares for site %u in one part", who, r);
                return FS_ERR_FORMAT;
            }
        if (s->sealed[(size_t)(site - 1) * s->n + (r - 1)]) {
            fs_log_error("he_proto: %s: a second share for site %u refused", who, r);
            return FS_ERR_MISMATCH;
        }
    }
    uint8_t *copies[BATCH];
    for (uint32_t k = 0; k < count; k++) {
        copies[k] = malloc(sealed_bytes());
        if (!copies[k]) {
            for (uint32_t j = 0; j < k; j++) free(copies[j]);
            return FS_ERR_NOMEM;
        }
        memcpy(copies[k], e + (size_t)k * entry + 4, sealed_bytes());
    }
    for (uint32_t k = 0; k < count; k++) {
        const uint32_t r = get32(e + (size_t)k * entry);
        s->sealed[(size_t)(site - 1) * s->n + (r - 1)] = copies[k];
    }
    s->nsealed[site] += count;
    return FS_OK;
}

int fs_he_server_shares_done(const fs_he_server *s, uint32_t site)
{
    if (!s || site < 1 || site > s->n) return 0;
    return s->nsealed[site] == s->n - 1;
}

fs_status fs_he_server_close_shares(fs_he_server *s)
{
    FS_TRY(sv_stage(s, SV_S, "server_close_shares"));
    char buf[128];
    if (fs_he_server_count(s, FS_HE_SHARED) < s->n)
        return abandon(s, "stage S: %u of %u sites sent all their shares (missing: %s)",
                       fs_he_server_count(s, FS_HE_SHARED), s->n,
                       site_list(buf, sizeof buf, s, not_shared));
    s->sum = calloc(s->nct * FS_HE_CT_WORDS, sizeof *s->sum);
    if (!s->sum) return FS_ERR_NOMEM;
    if (s->gdev) {
        fs_status gs = fs_he_cuda_sum_new(s->gdev, s->nct, &s->gsum);
        if (gs != FS_OK) {
            fs_log_warn("he_proto: the ciphertext sum does not fit on the GPU (%s): summing on "
                        "the CPU", fs_status_str(gs));
            drop_gpu(s);
        }
    }
    s->stage = SV_U;
    return FS_OK;
}

fs_status fs_he_server_relay(fs_he_server *s, uint32_t site, uint32_t start, uint8_t **out,
                             size_t *len)
{
    FS_TRY(sv_stage(s, SV_U, "server_relay"));
    FS_TRY(sv_site(s, site, "server_relay"));
    if (!out || !len) return FS_ERR_ARG;
    *out = NULL;
    *len = 0;
    uint32_t dealers[BATCH], count = 0, d = start, next = 0;
    for (; d >= 1 && d <= s->n && count < BATCH; d++)
        if (d != site) dealers[count++] = d;
    for (; d >= 1 && d <= s->n; d++)
        if (d != site) {
            next = d;
            break;
        }
    if (count == 0) {
        fs_log_error("he_proto: server_relay: no shares for site %u from dealer %u on (dealers "
                     "are 1..%u)", site, start, s->n);
        return FS_ERR_ARG;
    }
    const size_t entry = 4 + sealed_bytes(), total = HDR_BYTES + 8 + (size_t)count * entry;
    uint8_t *m = malloc(total);
    if (!m) return FS_ERR_NOMEM;
    put_hdr(m, &s->p, FS_HE_MSG_RELAY);
    put32(m + HDR_BYTES, count);
    put32(m + HDR_BYTES + 4, next);
    for (uint32_t k = 0; k < count; k++) {
        uint8_t *e = m + HDR_BYTES + 8 + (size_t)k * entry;
        put32(e, dealers[k]);
        memcpy(e + 4, s->sealed[(size_t)(dealers[k] - 1) * s->n + (site - 1)], sealed_bytes());
    }
    *out = m;
    *len = total;
    return FS_OK;
}

/* ---- stage U ---- */

fs_status fs_he_server_ct(fs_he_server *s, uint32_t site, const uint8_t *obj, size_t len, int commit)
{
    FS_TRY(sv_stage(s, SV_U, "server_ct"));
    FS_TRY(sv_site(s, site, "server_ct"));
    char who[80];
    snprintf(who, sizeof who, "ciphertext from site %u (%s)", site, commit ? "commit" : "verify");
    const uint32_t want = commit ? s->fold_next[site] : s->verify_next[site];
    if (s->contrib[site] || want >= s->nct) {
        fs_log_error("he_proto: %s: all %zu ciphertexts of this site already arrived", who, s->nct);
        return FS_ERR_MISMATCH;
    }
    fs_status st = read_obj(obj, len, FS_HE_OBJ_CT, site, 0, want, s->pk->key_id, NULL,
                            s->scratch, who);
    if (st != FS_OK) {
        if (commit && want > 0)
            return abandon(s, "site %u's upload was refused at ciphertext %u after %u were "
                           "added to the sum", site, want, want);
        return st;
    }
    if (commit) {
        if (s->gsum) {
            st = fs_he_cuda_sum_add(s->gsum, want, s->scratch);
            if (st != FS_OK)
                return abandon(s, "the GPU failed while adding site %u's ciphertext %u (%s)", site,
                               want, fs_status_str(st));
        } else {
            fs_he_ct_add(s->sum + (size_t)want * FS_HE_CT_WORDS, s->scratch, 1);
        }
        s->fold_next[site]++;
    } else {
        s->verify_next[site]++;
    }
    return FS_OK;
}

void fs_he_server_ct_reset(fs_he_server *s, uint32_t site)
{
    if (s && s->stage == SV_U && site >= 1 && site <= s->n) s->verify_next[site] = 0;
}

fs_status fs_he_server_ct_done(fs_he_server *s, uint32_t site)
{
    FS_TRY(sv_stage(s, SV_U, "server_ct_done"));
    FS_TRY(sv_site(s, site, "server_ct_done"));
    if (s->fold_next[site] != s->nct) {
        fs_log_error("he_proto: server_ct_done: site %u committed %u of %zu ciphertexts", site,
                     s->fold_next[site], s->nct);
        return FS_ERR_FORMAT;
    }
    s->contrib[site] = 1;
    return FS_OK;
}

/* The eligible contributors with the smallest indices become T; the
 * accumulator restarts at the summed c0. */
static fs_status new_generation(fs_he_server *s)
{
    uint32_t k = 0;
    for (uint32_t i = 1; i <= s->n && k < s->t; i++)
        if (s->contrib[i] && !s->excluded[i]) s->set[k++] = i;
    if (k < s->t)
        return abandon(s, "stage D: %u contributors can still decrypt, the threshold is %u", k,
                       s->t);
    if (!s->acc) {
        s->acc = malloc(s->nct * FS_HE_POLY_WORDS * sizeof *s->acc);
        if (!s->acc) return FS_ERR_NOMEM;
    }
    for (size_t c = 0; c < s->nct; c++)
        memcpy(s->acc + c * FS_HE_POLY_WORDS, s->sum + c * FS_HE_CT_WORDS,
               FS_HE_POLY_WORDS * sizeof *s->acc);
    memset(s->part_next, 0, ((size_t)s->n + 1) * sizeof *s->part_next);
    fs_he_set_id(s->set, s->t, s->set_id);
    s->gen++;
    s->decoded = 0;
    s->stage = SV_D;
    return FS_OK;
}

fs_status fs_he_server_close_input(fs_he_server *s)
{
    FS_TRY(sv_stage(s, SV_U, "server_close_input"));
    if (s->gsum) { /* decryption works on the host copy */
        fs_status gs = fs_he_cuda_sum_get(s->gsum, s->sum);
        drop_gpu(s);
        if (gs != FS_OK)
            return abandon(s, "the ciphertext sum could not be read back from the GPU (%s)",
                           fs_status_str(gs));
    }
    uint32_t count = 0;
    for (uint32_t i = 1; i <= s->n; i++) {
        if (s->fold_next[i] > 0 && s->fold_next[i] < s->nct)
            return abandon(s, "site %u's upload is in the sum only in part (%u of %zu "
                           "ciphertexts)", i, s->fold_next[i], s->nct);
        if (s->fold_next[i] == s->nct) s->contrib[i] = 1;
        count += s->contrib[i];
    }
    if (count < s->t)
        return abandon(s, "stage U: %u sites contributed, the threshold is %u", count, s->t);
    s->result = malloc((s->p.n_values + 1) * sizeof *s->result);
    if (!s->result) return FS_ERR_NOMEM;
    free_sealed(s);
    return new_generation(s);
}

/* ---- stage D ---- */

int fs_he_server_in_set(const fs_he_server *s, uint32_t site)
{
    if (!s || (s->stage != SV_D && s->stage != SV_DONE) || site == 0) return 0;
    for (uint32_t i = 0; i < s->t; i++)
        if (s->set[i] == site) return 1;
    return 0;
}

fs_status fs_he_server_decrypt_req(fs_he_server *s, uint32_t site, uint32_t start, uint8_t **out,
                                   size_t *len)
{
    FS_TRY(sv_stage(s, SV_D, "server_decrypt_req"));
    if (!out || !len) return FS_ERR_ARG;
    *out = NULL;
    *len = 0;
    if (!fs_he_server_in_set(s, site) || start >= s->nct) {
        fs_log_error("he_proto: server_decrypt_req: site %u is not in the decryption set or "
                     "start %u is not below %zu", site, start, s->nct);
        return FS_ERR_ARG;
    }
    const uint32_t count = s->nct - start < BATCH ? (uint32_t)(s->nct - start) : BATCH;
    const size_t ob = obj_bytes(FS_HE_OBJ_C1);
    const size_t total = HDR_BYTES + 8 + 4 * (size_t)s->t + 12 + (size_t)count * ob;
    uint8_t *m = malloc(total);
    if (!m) return FS_ERR_NOMEM;
    put_hdr(m, &s->p, FS_HE_MSG_REQ);
    uint8_t *w = m + HDR_BYTES;
    put32(w, s->gen);
    put32(w + 4, s->t);
    w += 8;
    for (uint32_t i = 0; i < s->t; i++, w += 4) put32(w, s->set[i]);
    put32(w, (uint32_t)s->nct);
    put32(w + 4, start);
    put32(w + 8, count);
    w += 12;
    for (uint32_t j = 0; j < count; j++, w += ob) {
        fs_he_hdr h = { .kind = FS_HE_OBJ_C1, .index = start + j };
        memcpy(h.key_id, s->pk->key_id, FS_HE_KEYID_BYTES);
        memcpy(h.set_id, s->set_id, FS_HE_KEYID_BYTES);
        fs_status st = fs_he_write(&h, s->sum + (size_t)(start + j) * FS_HE_CT_WORDS + FS_HE_POLY_WORDS,
                                   w, ob);
        if (st != FS_OK) {
            free(m);
            return st;
        }
    }
    *out = m;
    *len = total;
    return FS_OK;
}

fs_status fs_he_server_recv_partials(fs_he_server *s, uint32_t site, const uint8_t *msg, size_t len)
{
    if (s && s->stage == SV_DONE) {
        fs_log_error("he_proto: PART from site %u: the result is already decoded", site);
        return FS_ERR_MISMATCH;
    }
    FS_TRY(sv_stage(s, SV_D, "server_recv_partials"));
    FS_TRY(sv_site(s, site, "server_recv_partials"));
    char who[64];
    snprintf(who, sizeof who, "PART from site %u", site);
    FS_TRY(check_hdr(&s->p, msg, len, FS_HE_MSG_PART, who));
    if (len < HDR_BYTES + 12) return check_len(len, HDR_BYTES + 12, who);
    const uint32_t gen = get32(msg + HDR_BYTES), start = get32(msg + HDR_BYTES + 4),
                   count = get32(msg + HDR_BYTES + 8);
    if (gen < s->gen) {
        fs_log_error("he_proto: %s: of decryption generation %u, superseded by generation %u",
                     who, gen, s->gen);
        return FS_ERR_ABANDONED;
    }
    if (gen > s->gen) {
        fs_log_error("he_proto: %s: of decryption generation %u, the current one is %u", who, gen,
                     s->gen);
        return FS_ERR_MISMATCH;
    }
    if (!fs_he_server_in_set(s, site)) {
        fs_log_error("he_proto: %s: the site is not in the decryption set", who);
        return FS_ERR_MISMATCH;
    }
    if (start != s->part_next[site]) {
        fs_log_error("he_proto: %s: batch from ciphertext %u, expected %u", who, start,
                     s->part_next[site]);
        return FS_ERR_MISMATCH;
    }
    if (count < 1 || count > BATCH || count > s->nct - start) {
        fs_log_error("he_proto: %s: %u partials from ciphertext %u (of %zu; at most %u a batch)",
                     who, count, start, s->nct, BATCH);
        return FS_ERR_FORMAT;
    }
    const size_t ob = obj_bytes(FS_HE_OBJ_PARTIAL);
    FS_TRY(check_len(len, HDR_BYTES + 12 + (size_t)count * ob, who));
    const uint8_t *o = msg + HDR_BYTES + 12;
    for (uint32_t j = 0; j < count; j++)
        FS_TRY(read_obj(o + (size_t)j * ob, ob, FS_HE_OBJ_PARTIAL, site, 0, start + j,
                        s->pk->key_id, s->set_id, s->scratch + (size_t)j * FS_HE_POLY_WORDS, who));
    for (uint32_t j = 0; j < count; j++) {
        uint64_t *a = s->acc + (size_t)(start + j) * FS_HE_POLY_WORDS;
        const uint64_t *h = s->scratch + (size_t)j * FS_HE_POLY_WORDS;
        for (size_t w = 0; w < FS_HE_POLY_WORDS; w++) {
            const uint64_t q = s->ctx.q[w / FS_HE_N];
            uint64_t r = a[w] + h[w];
            a[w] = r >= q ? r - q : r;
        }
    }
    s->part_next[site] = start + count;
    for (uint32_t i = 0; i < s->t; i++)
        if (s->part_next[s->set[i]] != s->nct) return FS_OK;
    /* Every member answered: c0 + Σ h_k decodes to the sum. */
    const size_t total = s->p.n_values + 1;
    for (size_t c = 0; c < s->nct; c++) {
        const size_t off = c * FS_HE_N;
        fs_he_decode(&s->ctx, s->acc + c * FS_HE_POLY_WORDS, s->result + off,
                     total - off < FS_HE_N ? total - off : FS_HE_N);
    }
    s->decoded = 1;
    return FS_OK;
}

int fs_he_server_decrypt_done(const fs_he_server *s)
{
    return s && (s->stage == SV_D || s->stage == SV_DONE) && s->decoded;
}

fs_status fs_he_server_close_decrypt(fs_he_server *s, int *again)
{
    FS_TRY(sv_stage(s, SV_D, "server_close_decrypt"));
    if (!again) return FS_ERR_ARG;
    *again = 0;
    if (s->decoded) {
        s->stage = SV_DONE;
        return FS_OK;
    }
    uint32_t dropped = 0;
    for (uint32_t i = 0; i < s->t; i++)
        if (s->part_next[s->set[i]] != s->nct) {
            s->excluded[s->set[i]] = 1;
            dropped++;
        }
    fs_log_warn("he_proto: decryption generation %u: %u of %u members did not answer and may "
                "no longer decrypt", s->gen, dropped, s->t);
    FS_TRY(new_generation(s));
    *again = 1;
    return FS_OK;
}

fs_status fs_he_server_result(fs_he_server *s, int64_t *sum)
{
    if (s && s->stage == SV_D) {
        fs_log_error("he_proto: server_result: decryption is not closed");
        return FS_ERR_ARG;
    }
    FS_TRY(sv_stage(s, SV_DONE, "server_result"));
    if (!sum) return FS_ERR_ARG;
    memcpy(sum, s->result, (s->p.n_values + 1) * sizeof *sum);
    return FS_OK;
}

uint32_t fs_he_server_count(const fs_he_server *s, fs_he_server_state st)
{
    uint32_t c = 0;
    for (uint32_t i = 1; s && i <= s->n; i++) c += (uint32_t)fs_he_server_has(s, st, i);
    return c;
}

int fs_he_server_has(const fs_he_server *s, fs_he_server_state st, uint32_t site)
{
    if (!s || site < 1 || site > s->n) return 0;
    switch (st) {
    case FS_HE_KEYED: return s->keyed[site];
    case FS_HE_SHARED: return s->nsealed[site] == s->n - 1;
    case FS_HE_CONTRIBUTED: return s->contrib[site];
    case FS_HE_DECRYPTED:
        return (s->stage == SV_D || s->stage == SV_DONE) && fs_he_server_in_set(s, site) &&
               s->part_next[site] == s->nct;
    }
    return 0;
}

uint32_t fs_he_server_generation(const fs_he_server *s) { return s ? s->gen : 0; }

const char *fs_he_server_reason(const fs_he_server *s)
{
    return s && s->stage == SV_ABANDONED ? s->reason : "";
}

/* ---- site -------------------------------------------------------------------------- */

enum { ST_NEW, ST_KEYED, ST_SHARED, ST_READY };

struct fs_he_site {
    fs_he_params p;
    uint32_t idx, n, t;
    size_t nct;
    int stage;
    fs_he_ctx ctx;
    fs_he_secret *sk;                 /* until the shares are dealt              */
    uint8_t xsk[XPK_BYTES], xpk[XPK_BYTES]; /* X25519; xsk until READY       */
    uint8_t (*peer)[XPK_BYTES];       /* [n + 1], from BCAST                     */
    fs_he_pubkey *pk;
    fs_he_tkey *tk;
    /* stage D: the generation answered last and the next batch expected */
    int d_active;
    uint32_t d_gen, d_next;
    uint8_t d_set_id[FS_HE_KEYID_BYTES];
};

static fs_status st_stage(const fs_he_site *s, int want, const char *fn)
{
    static const char *names[] = { "new", "keyed", "shared", "ready" };
    if (!s) {
        fs_log_error("he_proto: %s: no site", fn);
        return FS_ERR_ARG;
    }
    if (s->stage != want) {
        fs_log_error("he_proto: %s: site %u is %s, expected %s", fn, s->idx, names[s->stage],
                     names[want]);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

fs_status fs_he_site_new(const fs_he_params *p, uint32_t index, fs_he_site **out)
{
    if (!out) return FS_ERR_ARG;
    *out = NULL;
    FS_TRY(fs_he_params_check(p));
    if (index < 1 || index > p->n_sites) {
        fs_log_error("he_proto: site_new: index %u is not in 1..%u", index, p->n_sites);
        return FS_ERR_ARG;
    }
    fs_he_site *s = calloc(1, sizeof *s);
    if (!s) return FS_ERR_NOMEM;
    s->p = *p;
    s->idx = index;
    s->n = p->n_sites;
    s->t = p->threshold;
    s->nct = fs_he_params_nct(p);
    s->stage = ST_NEW;
    s->sk = calloc(1, sizeof *s->sk);
    s->peer = calloc((size_t)s->n + 1, XPK_BYTES);
    s->pk = calloc(1, sizeof *s->pk);
    s->tk = calloc(1, sizeof *s->tk);
    if (!s->sk || !s->peer || !s->pk || !s->tk) {
        fs_he_site_free(s);
        return FS_ERR_NOMEM;
    }
    fs_status st = fs_he_ctx_init(&s->ctx, p->crs_seed);
    if (st != FS_OK) {
        fs_he_site_free(s);
        return st;
    }
    *out = s;
    return FS_OK;
}

void fs_he_site_free(fs_he_site *s)
{
    if (!s) return;
    if (s->sk) fs_he_secret_free(s->sk);
    if (s->tk) fs_he_tkey_free(s->tk);
    free(s->sk);
    free(s->tk);
    free(s->peer);
    free(s->pk);
    fs_he_ctx_free(&s->ctx);
    sodium_memzero(s, sizeof *s);
    free(s);
}

int fs_he_site_ready(const fs_he_site *s) { return s && s->stage == ST_READY; }
const fs_he_ctx *fs_he_site_ctx(const fs_he_site *s) { return s ? &s->ctx : NULL; }

fs_status fs_he_site_keys(fs_he_site *s, uint8_t **out, size_t *len)
{
    FS_TRY(st_stage(s, ST_NEW, "site_keys"));
    if (!out || !len) return FS_ERR_ARG;
    *out = NULL;
    *len = 0;
    const size_t ob = obj_bytes(FS_HE_OBJ_PK_SHARE), total = HDR_BYTES + XPK_BYTES + ob;
    uint64_t *share = malloc(FS_HE_POLY_WORDS * sizeof *share);
    uint8_t *m = malloc(total);
    if (!share || !m) {
        free(share); free(m);
        return FS_ERR_NOMEM;
    }
    fs_status st = fs_he_keygen(&s->ctx, s->idx, s->sk, share);
    if (st == FS_OK) {
        randombytes_buf(s->xsk, sizeof s->xsk);
        if (crypto_scalarmult_base(s->xpk, s->xsk) != 0) {
            fs_log_error("he_proto: site_keys: X25519 key generation failed");
            st = FS_ERR_UNSUPPORTED;
        }
    }
    if (st == FS_OK) {
        put_hdr(m, &s->p, FS_HE_MSG_KEYS);
        memcpy(m + HDR_BYTES, s->xpk, XPK_BYTES);
        fs_he_hdr h = { .kind = FS_HE_OBJ_PK_SHARE, .from = s->idx };
        st = fs_he_write(&h, share, m + HDR_BYTES + XPK_BYTES, ob);
    }
    free(share);
    if (st != FS_OK) {
        fs_he_secret_free(s->sk);
        sodium_memzero(s->xsk, sizeof s->xsk);
        free(m);
        return st;
    }
    s->stage = ST_KEYED;
    *out = m;
    *len = total;
    return FS_OK;
}

void fs_he_site_free_parts(uint8_t **parts, size_t *lens, size_t nparts)
{
    if (parts)
        for (size_t i = 0; i < nparts; i++) free(parts[i]);
    free(parts);
    free(lens);
}

fs_status fs_he_site_shares(fs_he_site *s, const uint8_t *bcast, size_t len, uint8_t ***out,
                            size_t **lens, size_t *nparts)
{
    FS_TRY(st_stage(s, ST_KEYED, "site_shares"));
    if (!out || !lens || !nparts) return FS_ERR_ARG;
    *out = NULL;
    *lens = NULL;
    *nparts = 0;
    char who[64];
    snprintf(who, sizeof who, "BCAST at site %u", s->idx);
    FS_TRY(check_hdr(&s->p, bcast, len, FS_HE_MSG_BCAST, who));
    if (len < HDR_BYTES + 4) return check_len(len, HDR_BYTES + 4, who);
    const uint32_t n = get32(bcast + HDR_BYTES);
    if (n != s->n) {
        fs_log_error("he_proto: %s: for %u sites, this attempt has %u", who, n, s->n);
        return FS_ERR_MISMATCH;
    }
    const size_t pob = obj_bytes(FS_HE_OBJ_PUBKEY);
    FS_TRY(check_len(len, HDR_BYTES + 4 + pob + (size_t)XPK_BYTES * n, who));
    const uint8_t *keys = bcast + HDR_BYTES + 4 + pob;

    fs_status st = FS_OK;
    const size_t sob = obj_bytes(FS_HE_OBJ_SHAMIR), entry = 4 + sealed_bytes();
    const size_t nrecv = n - 1, np = (nrecv + BATCH - 1) / BATCH;
    uint64_t *b = malloc(FS_HE_POLY_WORDS * sizeof *b);
    fs_he_pubkey *pk = calloc(1, sizeof *pk);
    uint64_t *deal = malloc((size_t)n * FS_HE_POLY_WORDS * sizeof *deal);
    uint8_t *plain = malloc(sob);
    uint8_t **parts = calloc(np, sizeof *parts);
    size_t *plens = calloc(np, sizeof *plens);
    fs_he_hdr h;
    if (!b || !pk || !deal || !plain || !parts || !plens) {
        st = FS_ERR_NOMEM;
        goto done;
    }
    /* The collective key; its id must be the one recomputed from b. */
    st = fs_he_read(bcast + HDR_BYTES + 4, pob, FS_HE_OBJ_PUBKEY, &h, b);
    if (st != FS_OK) {
        fs_log_error("he_proto: %s: collective key refused (%s)", who, fs_status_str(st));
        goto done;
    }
    if (h.from || h.to || h.index || !all_zero(h.set_id, FS_HE_KEYID_BYTES)) {
        fs_log_error("he_proto: %s: collective key object with unexpected fields", who);
        st = FS_ERR_FORMAT;
        goto done;
    }
    const uint64_t *bp = b;
    st = fs_he_pk_combine(&s->ctx, &bp, 1, pk);
    if (st != FS_OK) goto done;
    pk->n_sites = n;
    if (memcmp(pk->key_id, h.key_id, FS_HE_KEYID_BYTES)) {
        fs_log_error("he_proto: %s: the key id does not match the collective key", who);
        st = FS_ERR_MISMATCH;
        goto done;
    }
    if (memcmp(keys + (size_t)(s->idx - 1) * XPK_BYTES, s->xpk, XPK_BYTES)) {
        fs_log_error("he_proto: %s: carries another X25519 key for this site", who);
        st = FS_ERR_MISMATCH;
        goto done;
    }
    st = fs_he_shamir_deal(&s->ctx, s->sk, n, s->t, deal);
    if (st != FS_OK) goto done;
    for (size_t k = 0; k < np; k++) {
        const size_t cnt = nrecv - k * BATCH < BATCH ? nrecv - k * BATCH : BATCH;
        plens[k] = HDR_BYTES + 4 + cnt * entry;
        if (!(parts[k] = malloc(plens[k]))) {
            st = FS_ERR_NOMEM;
            goto done;
        }
        put_hdr(parts[k], &s->p, FS_HE_MSG_SHARES);
        put32(parts[k] + HDR_BYTES, (uint32_t)cnt);
    }
    for (uint32_t r = 1; r <= n; r++) {
        if (r == s->idx) continue;
        const size_t r_no = r < s->idx ? r - 1 : r - 2; /* place among the receivers */
        const uint8_t *rpk = keys + (size_t)(r - 1) * XPK_BYTES;
        uint8_t key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES], ad[AD_BYTES];
        if (!share_key(s->xsk, rpk, s->xpk, rpk, key)) {
            fs_log_error("he_proto: %s: site %u's X25519 key is a degenerate point", who, r);
            st = FS_ERR_FORMAT;
            goto done;
        }
        fs_he_hdr sh = { .kind = FS_HE_OBJ_SHAMIR, .from = s->idx, .to = r };
        memcpy(sh.key_id, pk->key_id, FS_HE_KEYID_BYTES);
        st = fs_he_write(&sh, deal + (size_t)(r - 1) * FS_HE_POLY_WORDS, plain, sob);
        if (st != FS_OK) {
            sodium_memzero(key, sizeof key);
            goto done;
        }
        uint8_t *e = parts[r_no / BATCH] + HDR_BYTES + 4 + (r_no % BATCH) * entry;
        put32(e, r);
        randombytes_buf(e + 4, NONCE_BYTES);
        share_ad(&s->p, s->idx, r, ad);
        unsigned long long clen = 0;
        crypto_aead_xchacha20poly1305_ietf_encrypt(e + 4 + NONCE_BYTES, &clen, plain, sob, ad,
                                                   AD_BYTES, NULL, e + 4, key);
        sodium_memzero(key, sizeof key);
    }
    /* Our own share goes straight into the threshold key. */
    st = fs_he_tkey_begin(s->tk, s->idx, n, s->t);
    if (st == FS_OK)
        st = fs_he_tkey_add(&s->ctx, s->tk, s->idx, deal + (size_t)(s->idx - 1) * FS_HE_POLY_WORDS);
    if (st != FS_OK) {
        fs_he_tkey_free(s->tk);
        goto done;
    }
    *s->pk = *pk;
    memcpy(s->peer[1], keys, (size_t)XPK_BYTES * n);
    fs_he_secret_free(s->sk); /* dealt: the threshold key replaces it */
    s->stage = ST_SHARED;
    *out = parts;
    *lens = plens;
    *nparts = np;
    parts = NULL;
    plens = NULL;
done:
    if (deal) sodium_memzero(deal, (size_t)n * FS_HE_POLY_WORDS * sizeof *deal);
    if (plain) sodium_memzero(plain, sob);
    free(deal); free(plain); free(b); free(pk);
    fs_he_site_free_parts(parts, plens, np);
    return st;
}

fs_status fs_he_site_recv_relay(fs_he_site *s, const uint8_t *msg, size_t len, uint32_t *next)
{
    FS_TRY(st_stage(s, ST_SHARED, "site_recv_relay"));
    if (!next) return FS_ERR_ARG;
    char who[64];
    snprintf(who, sizeof who, "RELAY at site %u", s->idx);
    FS_TRY(check_hdr(&s->p, msg, len, FS_HE_MSG_RELAY, who));
    if (len < HDR_BYTES + 8) return check_len(len, HDR_BYTES + 8, who);
    const uint32_t count = get32(msg + HDR_BYTES), nx = get32(msg + HDR_BYTES + 4);
    if (count < 1 || count > BATCH) {
        fs_log_error("he_proto: %s: %u shares, expected 1..%u", who, count, BATCH);
        return FS_ERR_FORMAT;
    }
    const size_t entry = 4 + sealed_bytes(), sob = obj_bytes(FS_HE_OBJ_SHAMIR);
    FS_TRY(check_len(len, HDR_BYTES + 8 + (size_t)count * entry, who));
    const uint8_t *e0 = msg + HDR_BYTES + 8;
    uint8_t got[FS_HE_PROTO_MAX_SITES + 1];
    memset(got, 0, sizeof got);
    for (uint32_t d = 1; d <= s->n; d++)
        got[d] = (s->tk->got[d / 8] >> (d % 8)) & 1;
    uint32_t last = 0;
    for (uint32_t k = 0; k < count; k++) {
        const uint32_t d = get32(e0 + (size_t)k * entry);
        if (d < 1 || d > s->n || d == s->idx || d <= last) {
            fs_log_error("he_proto: %s: dealer %u is not another site in 1..%u in increasing "
                         "order", who, d, s->n);
            return FS_ERR_FORMAT;
        }
        if (got[d]) {
            fs_log_error("he_proto: %s: a second share from site %u refused", who, d);
            return FS_ERR_MISMATCH;
        }
        got[d] = 1;
        last = d;
    }
    /* next: 0 once every dealer's share is in; else past this batch, with
     * no dealer before it left out. */
    uint32_t missing = 0, first_missing = 0;
    for (uint32_t d = 1; d <= s->n; d++)
        if (!got[d]) {
            if (!missing) first_missing = d;
            missing++;
        }
    if ((missing == 0) != (nx == 0) || (nx && (nx <= last || first_missing != nx))) {
        fs_log_error("he_proto: %s: next batch %u is inconsistent (last dealer %u, %u shares "
                     "still missing)", who, nx, last, missing);
        return FS_ERR_FORMAT;
    }
    fs_status st = FS_OK;
    uint64_t *polys = malloc((size_t)count * FS_HE_POLY_WORDS * sizeof *polys);
    uint8_t *plain = malloc(sob);
    if (!polys || !plain) {
        st = FS_ERR_NOMEM;
        goto done;
    }
    for (uint32_t k = 0; k < count && st == FS_OK; k++) {
        const uint8_t *e = e0 + (size_t)k * entry;
        const uint32_t d = get32(e);
        uint8_t key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES], ad[AD_BYTES];
        if (!share_key(s->xsk, s->peer[d], s->peer[d], s->xpk, key)) {
            fs_log_error("he_proto: %s: site %u's X25519 key is a degenerate point", who, d);
            st = FS_ERR_FORMAT;
            break;
        }
        share_ad(&s->p, d, s->idx, ad);
        unsigned long long plen = 0;
        int bad = crypto_aead_xchacha20poly1305_ietf_decrypt(plain, &plen, NULL, e + 4 + NONCE_BYTES,
                                                             sob + TAG_BYTES, ad, AD_BYTES, e + 4, key);
        sodium_memzero(key, sizeof key);
        if (bad || plen != sob) {
            fs_log_error("he_proto: %s: the share from site %u fails authentication (tampered, "
                         "or sealed for another site, round or attempt)", who, d);
            st = FS_ERR_CHECKSUM;
            break;
        }
        char w2[96];
        snprintf(w2, sizeof w2, "%s, share from site %u", who, d);
        st = read_obj(plain, sob, FS_HE_OBJ_SHAMIR, d, s->idx, 0, s->pk->key_id, NULL,
                      polys + (size_t)k * FS_HE_POLY_WORDS, w2);
    }
    for (uint32_t k = 0; k < count && st == FS_OK; k++)
        st = fs_he_tkey_add(&s->ctx, s->tk, get32(e0 + (size_t)k * entry),
                            polys + (size_t)k * FS_HE_POLY_WORDS);
    if (st == FS_OK && missing == 0) {
        st = fs_he_tkey_end(&s->ctx, s->tk);
        if (st == FS_OK) {
            s->stage = ST_READY;
            sodium_memzero(s->xsk, sizeof s->xsk);
        }
    }
    if (st == FS_OK) *next = nx;
done:
    if (polys) sodium_memzero(polys, (size_t)count * FS_HE_POLY_WORDS * sizeof *polys);
    if (plain) sodium_memzero(plain, sob);
    free(polys);
    free(plain);
    return st;
}

fs_status fs_he_site_encrypt_ct(fs_he_site *s, const int64_t *q, size_t count, uint32_t j,
                                uint8_t *obj, size_t cap)
{
    FS_TRY(st_stage(s, ST_READY, "site_encrypt_ct"));
    const size_t ob = obj_bytes(FS_HE_OBJ_CT);
    if ((count && !q) || !obj || j >= s->nct || count > s->nct * FS_HE_N || cap < ob) {
        fs_log_error("he_proto: site_encrypt_ct: ciphertext %u of %zu, %zu values, buffer of %zu "
                     "bytes (needs %zu)", j, s->nct, count, cap, ob);
        return FS_ERR_ARG;
    }
    uint64_t *ct = malloc(FS_HE_CT_WORDS * sizeof *ct);
    if (!ct) return FS_ERR_NOMEM;
    static const int64_t zero = 0;
    const size_t off = (size_t)j * FS_HE_N;
    const size_t mc = off < count ? (count - off < FS_HE_N ? count - off : FS_HE_N) : 0;
    fs_status st = fs_he_encrypt(&s->ctx, s->pk, mc ? q + off : &zero, mc ? mc : 1, ct);
    if (st == FS_OK) {
        fs_he_hdr h = { .kind = FS_HE_OBJ_CT, .from = s->idx, .index = j };
        memcpy(h.key_id, s->pk->key_id, FS_HE_KEYID_BYTES);
        st = fs_he_write(&h, ct, obj, cap);
    }
    free(ct);
    return st;
}

fs_status fs_he_site_encrypt(fs_he_site *s, const int64_t *q, size_t count, int gpu, uint8_t *objs,
                             size_t cap, int *on_gpu)
{
    if (on_gpu) *on_gpu = 0;
    FS_TRY(st_stage(s, ST_READY, "site_encrypt"));
    const size_t ob = obj_bytes(FS_HE_OBJ_CT), batch = 64;
    if ((count && !q) || !objs || count > s->nct * FS_HE_N || cap / ob < s->nct) {
        fs_log_error("he_proto: site_encrypt: %zu values for %zu ciphertexts, buffer of %zu bytes "
                     "(needs %zu)", count, s->nct, cap, s->nct * ob);
        return FS_ERR_ARG;
    }
    void *dev = NULL;
    if (gpu) {
        fs_status gs = fs_he_cuda_open(&dev, &s->ctx);
        if (gs != FS_OK) {
            fs_log_warn("he_proto: no GPU for encryption (%s): encrypting on the CPU",
                        fs_status_str(gs));
            dev = NULL;
        }
    }
    uint64_t *ct = malloc(batch * FS_HE_CT_WORDS * sizeof *ct);
    int64_t *pad = malloc(batch * FS_HE_N * sizeof *pad);
    fs_status st = ct && pad ? FS_OK : FS_ERR_NOMEM;
    for (size_t k0 = 0; k0 < s->nct && st == FS_OK; k0 += batch) {
        const size_t kn = s->nct - k0 < batch ? s->nct - k0 : batch, off = k0 * FS_HE_N;
        const size_t vn = kn * FS_HE_N;
        const int64_t *m = q + off;
        if (off + vn > count) { /* the last batch: zeros beyond the update */
            const size_t have = off < count ? count - off : 0;
            if (have) memcpy(pad, q + off, have * sizeof *pad);
            memset(pad + have, 0, (vn - have) * sizeof *pad);
            m = pad;
        }
        st = dev ? fs_he_cuda_encrypt(dev, &s->ctx, s->pk, m, vn, ct)
                 : fs_he_encrypt(&s->ctx, s->pk, m, vn, ct);
        for (size_t k = 0; k < kn && st == FS_OK; k++) {
            fs_he_hdr h = { .kind = FS_HE_OBJ_CT, .from = s->idx, .index = (uint32_t)(k0 + k) };
            memcpy(h.key_id, s->pk->key_id, FS_HE_KEYID_BYTES);
            st = fs_he_write(&h, ct + k * FS_HE_CT_WORDS, objs + (k0 + k) * ob, ob);
        }
    }
    if (pad) sodium_memzero(pad, batch * FS_HE_N * sizeof *pad);
    free(pad);
    free(ct);
    if (dev) fs_he_cuda_close(dev);
    if (on_gpu) *on_gpu = dev != NULL;
    return st;
}

fs_status fs_he_site_partials(fs_he_site *s, const uint8_t *req, size_t len, uint8_t **out,
                              size_t *olen, uint32_t *gen, uint32_t *next)
{
    FS_TRY(st_stage(s, ST_READY, "site_partials"));
    if (!out || !olen || !gen || !next) return FS_ERR_ARG;
    *out = NULL;
    *olen = 0;
    char who[64];
    snprintf(who, sizeof who, "REQ at site %u", s->idx);
    FS_TRY(check_hdr(&s->p, req, len, FS_HE_MSG_REQ, who));
    if (len < HDR_BYTES + 8) return check_len(len, HDR_BYTES + 8, who);
    const uint32_t g = get32(req + HDR_BYTES), tsize = get32(req + HDR_BYTES + 4);
    if (g == 0 || tsize < s->t || tsize > s->n) {
        fs_log_error("he_proto: %s: generation %u, a set of %u sites (needs generation >= 1, "
                     "%u..%u sites)", who, g, tsize, s->t, s->n);
        return FS_ERR_FORMAT;
    }
    const size_t fixed = HDR_BYTES + 8 + 4 * (size_t)tsize + 12;
    if (len < fixed) return check_len(len, fixed, who);
    uint32_t set[FS_HE_PROTO_MAX_SITES];
    int member = 0;
    for (uint32_t i = 0; i < tsize; i++) {
        set[i] = get32(req + HDR_BYTES + 8 + 4 * (size_t)i);
        if (set[i] < 1 || set[i] > s->n || (i && set[i] <= set[i - 1])) {
            fs_log_error("he_proto: %s: the decryption set is not increasing sites in 1..%u", who,
                         s->n);
            return FS_ERR_FORMAT;
        }
        member |= set[i] == s->idx;
    }
    if (!member) {
        fs_log_error("he_proto: %s: this site is not in the decryption set", who);
        return FS_ERR_MISMATCH;
    }
    const uint8_t *f = req + fixed - 12;
    const uint32_t nct = get32(f), start = get32(f + 4), count = get32(f + 8);
    if (nct != s->nct) {
        fs_log_error("he_proto: %s: %u ciphertexts, this attempt has %zu", who, nct, s->nct);
        return FS_ERR_MISMATCH;
    }
    if (start >= nct || count < 1 || count > BATCH || count > nct - start) {
        fs_log_error("he_proto: %s: %u ciphertexts from %u (of %u; at most %u a batch)", who,
                     count, start, nct, BATCH);
        return FS_ERR_FORMAT;
    }
    const size_t cob = obj_bytes(FS_HE_OBJ_C1), pob = obj_bytes(FS_HE_OBJ_PARTIAL);
    FS_TRY(check_len(len, fixed + (size_t)count * cob, who));
    uint8_t sid[FS_HE_KEYID_BYTES];
    fs_he_set_id(set, tsize, sid);
    /* WARNING: each (generation, batch) is answered once, in order; a
     * repeat would release a second smudged partial of the same ciphertext. */
    if (s->d_active && g < s->d_gen) {
        fs_log_error("he_proto: %s: of generation %u, generation %u has begun", who, g, s->d_gen);
        return FS_ERR_MISMATCH;
    }
    if (s->d_active && g == s->d_gen) {
        if (memcmp(sid, s->d_set_id, FS_HE_KEYID_BYTES)) {
            fs_log_error("he_proto: %s: another decryption set for generation %u", who, g);
            return FS_ERR_MISMATCH;
        }
        if (start != s->d_next) {
            fs_log_error("he_proto: %s: batch from ciphertext %u of generation %u repeated or out "
                         "of order (expected %u)", who, start, g, s->d_next);
            return FS_ERR_MISMATCH;
        }
    } else if (start != 0) {
        fs_log_error("he_proto: %s: generation %u must start at ciphertext 0, not %u", who, g,
                     start);
        return FS_ERR_MISMATCH;
    }
    fs_status st = FS_OK;
    const size_t total = HDR_BYTES + 12 + (size_t)count * pob;
    uint64_t *cts = calloc((size_t)count * FS_HE_CT_WORDS, sizeof *cts);
    uint64_t *parts = malloc((size_t)count * FS_HE_POLY_WORDS * sizeof *parts);
    uint8_t *m = malloc(total);
    if (!cts || !parts || !m) {
        st = FS_ERR_NOMEM;
        goto done;
    }
    for (uint32_t j = 0; j < count && st == FS_OK; j++)
        st = read_obj(req + fixed + (size_t)j * cob, cob, FS_HE_OBJ_C1, 0, 0, start + j,
                      s->pk->key_id, sid, cts + (size_t)j * FS_HE_CT_WORDS + FS_HE_POLY_WORDS, who);
    if (st != FS_OK) goto done;
    st = fs_he_partial_decrypt(&s->ctx, s->tk, set, tsize, cts, count, parts);
    if (st != FS_OK) goto done;
    put_hdr(m, &s->p, FS_HE_MSG_PART);
    put32(m + HDR_BYTES, g);
    put32(m + HDR_BYTES + 4, start);
    put32(m + HDR_BYTES + 8, count);
    for (uint32_t j = 0; j < count && st == FS_OK; j++) {
        fs_he_hdr h = { .kind = FS_HE_OBJ_PARTIAL, .from = s->idx, .index = start + j };
        memcpy(h.key_id, s->pk->key_id, FS_HE_KEYID_BYTES);
        memcpy(h.set_id, sid, FS_HE_KEYID_BYTES);
        st = fs_he_write(&h, parts + (size_t)j * FS_HE_POLY_WORDS, m + HDR_BYTES + 12 + (size_t)j * pob,
                         pob);
    }
    if (st != FS_OK) goto done;
    s->d_active = 1;
    s->d_gen = g;
    s->d_next = start + count;
    memcpy(s->d_set_id, sid, FS_HE_KEYID_BYTES);
    *out = m;
    *olen = total;
    *gen = g;
    *next = start + count < nct ? start + count : 0;
    m = NULL;
done:
    free(cts);
    free(parts);
    free(m);
    return st;
}
