/*
 * tests/test_wire.c — the message codec (common/wire.h): every message round
 * trips with edge values (chunk payloads decoded in place, not copied); every
 * refusal the header lists returns the right status and a reason naming the
 * field (version mismatch: the exact sentence); hand-made malformed framings
 * are refused; every truncation and every single-bit flip of valid encodings,
 * plus seeded random mutations, decode to an error or to a message that
 * re-encodes to itself; the finite scan and CRC-32 helpers.
 */
#include "check.h"
#include "common/wire.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---- a tiny protobuf writer for hand-made (malformed) messages ---------- */

typedef struct { uint8_t b[512]; size_t n; } raw;

static void put_varint(raw *r, uint64_t v)
{
    do {
        uint8_t c = v & 0x7f;
        v >>= 7;
        r->b[r->n++] = c | (v ? 0x80 : 0);
    } while (v);
}
static void put_tag(raw *r, unsigned field, unsigned wt) { put_varint(r, (uint64_t)field << 3 | wt); }
static void put_vfield(raw *r, unsigned field, uint64_t v) { put_tag(r, field, 0); put_varint(r, v); }
static void put_bytes(raw *r, unsigned field, const void *p, size_t n)
{
    put_tag(r, field, 2);
    put_varint(r, n);
    memcpy(r->b + r->n, p, n);
    r->n += n;
}

/* ---- one generic "decode, and if accepted, re-encode to the same" ------- */

typedef enum { M_JOIN_REQ, M_JOIN_REP, M_TASK_REQ, M_TASK, M_MODEL_REQ, M_MODEL_CHUNK, M_UPDATE_CHUNK,
               M_UPDATE_ACK, M_SA_REQ, M_SA_REP, M_N } msg_kind;

typedef union {
    fs_wire_join_request jq;
    fs_wire_join_reply jr;
    fs_wire_task_request tq;
    fs_wire_task t;
    fs_wire_model_request mq;
    fs_wire_model_chunk mc;
    fs_wire_update_chunk uc;
    fs_wire_update_ack ua;
    fs_wire_secagg_request sq;
    fs_wire_secagg_reply sr;
} any_msg;

static fs_status decode_any(msg_kind k, const uint8_t *b, size_t n, any_msg *m, char *why, size_t wl)
{
    switch (k) {
    case M_JOIN_REQ: return fs_wire_decode_join_request(b, n, &m->jq, why, wl);
    case M_JOIN_REP: return fs_wire_decode_join_reply(b, n, &m->jr, why, wl);
    case M_TASK_REQ: return fs_wire_decode_task_request(b, n, &m->tq, why, wl);
    case M_TASK: return fs_wire_decode_task(b, n, &m->t, why, wl);
    case M_MODEL_REQ: return fs_wire_decode_model_request(b, n, &m->mq, why, wl);
    case M_MODEL_CHUNK: return fs_wire_decode_model_chunk(b, n, &m->mc, why, wl);
    case M_UPDATE_CHUNK: return fs_wire_decode_update_chunk(b, n, &m->uc, why, wl);
    case M_SA_REQ: return fs_wire_decode_secagg_request(b, n, &m->sq, why, wl);
    case M_SA_REP: return fs_wire_decode_secagg_reply(b, n, &m->sr, why, wl);
    default: return fs_wire_decode_update_ack(b, n, &m->ua, why, wl);
    }
}

static fs_status encode_any(msg_kind k, const any_msg *m, uint8_t **out, size_t *len)
{
    switch (k) {
    case M_JOIN_REQ: return fs_wire_encode_join_request(&m->jq, out, len);
    case M_JOIN_REP: return fs_wire_encode_join_reply(&m->jr, out, len);
    case M_TASK_REQ: return fs_wire_encode_task_request(&m->tq, out, len);
    case M_TASK: return fs_wire_encode_task(&m->t, out, len);
    case M_MODEL_REQ: return fs_wire_encode_model_request(&m->mq, out, len);
    case M_MODEL_CHUNK: return fs_wire_encode_model_chunk(&m->mc, out, len);
    case M_UPDATE_CHUNK: return fs_wire_encode_update_chunk(&m->uc, out, len);
    case M_SA_REQ: return fs_wire_encode_secagg_request(&m->sq, out, len);
    case M_SA_REP: return fs_wire_encode_secagg_reply(&m->sr, out, len);
    default: return fs_wire_encode_update_ack(&m->ua, out, len);
    }
}

/* Equal as decoded structs: the bytes of the struct with the payload pointer
 * blanked (decode zeroes padding), then the payload bytes. */
static int same_msg(msg_kind k, const any_msg *a, const any_msg *b)
{
    any_msg x = *a, y = *b;
    const uint8_t *pa = NULL, *pb = NULL;
    size_t la = 0;
    if (k == M_MODEL_CHUNK) { pa = x.mc.data; pb = y.mc.data; la = x.mc.len; x.mc.data = y.mc.data = NULL; }
    if (k == M_UPDATE_CHUNK) { pa = x.uc.data; pb = y.uc.data; la = x.uc.len; x.uc.data = y.uc.data = NULL; }
    if (k == M_SA_REQ) { pa = x.sq.payload; pb = y.sq.payload; la = x.sq.len; x.sq.payload = y.sq.payload = NULL; }
    if (k == M_SA_REP) { pa = x.sr.payload; pb = y.sr.payload; la = x.sr.len; x.sr.payload = y.sr.payload = NULL; }
    if (memcmp(&x, &y, sizeof x) != 0) return 0;
    return la == 0 || memcmp(pa, pb, la) == 0;
}

/* Decodes b[0..n); an accepted message must keep its payload inside b and
 * re-encode to a message that decodes to the same struct. Returns the status. */
static fs_status decode_checked(msg_kind k, const uint8_t *b, size_t n, const char *what)
{
    any_msg m, m2;
    memset(&m, 0, sizeof m);
    memset(&m2, 0, sizeof m2);
    char why[256];
    fs_status st = decode_any(k, b, n, &m, why, sizeof why);
    if (st != FS_OK) {
        CHECK(why[0] != '\0', "%s: kind %d refused without a reason", what, (int)k);
        return st;
    }
    const uint8_t *d = k == M_MODEL_CHUNK ? m.mc.data : k == M_UPDATE_CHUNK ? m.uc.data : NULL;
    size_t dl = k == M_MODEL_CHUNK ? m.mc.len : k == M_UPDATE_CHUNK ? m.uc.len : 0;
    if (dl) CHECK(d >= b && d + dl <= b + n, "%s: payload outside the input", what);
    uint8_t *e = NULL;
    size_t el = 0;
    CHECK(encode_any(k, &m, &e, &el) == FS_OK, "%s: re-encode", what);
    fs_status st2 = decode_any(k, e, el, &m2, why, sizeof why);
    CHECK(st2 == FS_OK, "%s: re-encoded message refused: %s", what, why);
    CHECK(st2 != FS_OK || same_msg(k, &m, &m2), "%s: kind %d changed on re-encode", what, (int)k);
    free(e);
    return st;
}

/* Every prefix and every single-bit flip of b, then seeded random mutations:
 * no crash, and accepted results are consistent (decode_checked). */
static void abuse(msg_kind k, const uint8_t *b, size_t n, unsigned seed)
{
    uint8_t *c = malloc(n + 8);
    for (size_t len = 0; len < n; len++) {
        memcpy(c, b, len);
        decode_checked(k, c, len, "truncated");
    }
    for (size_t i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(c, b, n);
            c[i] ^= (uint8_t)(1u << bit);
            decode_checked(k, c, n, "bit flip");
        }
    }
    srand(seed);
    for (int it = 0; it < 3000; it++) {
        memcpy(c, b, n);
        int flips = 1 + rand() % 4;
        for (int f = 0; f < flips; f++) c[(size_t)rand() % n] = (uint8_t)rand();
        decode_checked(k, c, n, "random bytes");
    }
    free(c);
}

/* Encodes m, decodes it (checked), and returns the decoded struct in *back. */
static fs_status round_trip(msg_kind k, const any_msg *m, any_msg *back, uint8_t **enc, size_t *elen,
                            char *why, size_t wl)
{
    CHECK(encode_any(k, m, enc, elen) == FS_OK, "encode kind %d", (int)k);
    memset(back, 0, sizeof *back);
    return decode_any(k, *enc, *elen, back, why, wl);
}

/* Encodes m and expects decode to refuse it with `want`, the reason
 * containing `needle`. */
static void expect_refused(msg_kind k, const any_msg *m, fs_status want, const char *needle, const char *what)
{
    uint8_t *e = NULL;
    size_t el = 0;
    any_msg back;
    char why[256] = "";
    fs_status st = round_trip(k, m, &back, &e, &el, why, sizeof why);
    CHECK(st == want, "%s: status %s, want %s (%s)", what, fs_status_str(st), fs_status_str(want), why);
    CHECK(strstr(why, needle) != NULL, "%s: reason \"%s\" lacks \"%s\"", what, why, needle);
    any_msg zero;
    memset(&zero, 0, sizeof zero);
    CHECK(memcmp(&back, &zero, sizeof zero) == 0, "%s: refused message left data in *out", what);
    free(e);
}

static void fill_str(char *dst, size_t n, char c) { memset(dst, c, n); dst[n] = '\0'; }

/* ---- valid messages used as round-trip cases and as mutation seeds ------ */

static float payload[FS_CHUNK_PARAMS + 16]; /* + room for the oversized-chunk refusals */

static any_msg valid(msg_kind k, int variant)
{
    any_msg m;
    memset(&m, 0, sizeof m);
    switch (k) {
    case M_JOIN_REQ:
        m.jq.protocol_version = FS_PROTOCOL_VERSION;
        if (variant) {
            fill_str(m.jq.preset, FS_WIRE_PRESET_LEN - 1, 'p');
            m.jq.num_samples = FS_WIRE_MAX_SAMPLES;
            fill_str(m.jq.software, FS_WIRE_NAME_LEN - 1, 's');
        } else {
            strcpy(m.jq.preset, "tiny");
            m.jq.num_samples = 1;
            strcpy(m.jq.software, "fedseg 0.1.0 \xc3\xa9\xe2\x82\xac\xf0\x9f\xa7\xa0"); /* é € 🧠 */
        }
        break;
    case M_JOIN_REP:
        m.jr.protocol_version = FS_PROTOCOL_VERSION;
        if (variant) {
            m.jr.accepted = 0;
            fill_str(m.jr.reason, FS_WIRE_REASON_LEN - 1, 'r');
        } else {
            m.jr.accepted = 1;
            strcpy(m.jr.site_id, "site_1");
            strcpy(m.jr.preset, "ref");
            m.jr.num_params = FS_WIRE_MAX_PARAMS;
            m.jr.round = UINT32_MAX;
        }
        break;
    case M_TASK_REQ:
        m.tq.protocol_version = FS_PROTOCOL_VERSION;
        m.tq.last_round_done = variant ? UINT32_MAX : 0;
        break;
    case M_TASK:
        if (variant == 0) {
            m.t.action = FS_TASK_TRAIN;
            m.t.round = 1;
            m.t.local_epochs = 10000;
            m.t.steps_per_epoch = UINT32_MAX;
            m.t.lr = FLT_TRUE_MIN;
            m.t.prox_mu = FLT_MAX;
            m.t.num_params = 487388;
            m.t.seconds_left = 600;
            m.t.retry_after_ms = 86400000u;
            m.t.model_crc32 = 0xffffffffu;
            m.t.dp_clip = 0.75f;
        } else if (variant == 3) {
            m.t.action = FS_TASK_TRAIN;
            m.t.round = 2;
            m.t.local_epochs = 1;
            m.t.lr = 1e-3f;
            m.t.num_params = 1000;
            m.t.secure_agg = 1;
            m.t.secagg_attempt = 3;
            m.t.secagg_index = 254;
            m.t.secagg_sites = 255;
            m.t.secagg_threshold = 100;
            m.t.secagg_neighbours = 254;
            for (int i = 0; i < 32; i++) m.t.secagg_round_seed[i] = (uint8_t)(7 * i + 1);
            m.t.secagg_clip = 2.5;
            m.t.secagg_weight_cap = 1000;
            m.t.dp_distributed = 1;
            m.t.dp_noise_multiplier = 1.5f;
            m.t.secagg_quant_bits = -7;
        } else if (variant == 4) {
            m.t.action = FS_TASK_TRAIN;
            m.t.round = 3;
            m.t.local_epochs = 1;
            m.t.lr = 1e-3f;
            m.t.num_params = 1000;
            m.t.encrypted = 1;
            m.t.secagg_attempt = 5;
            m.t.secagg_index = 1;
            m.t.secagg_sites = 2;
            m.t.secagg_threshold = 2;
            for (int i = 0; i < 32; i++) m.t.secagg_round_seed[i] = (uint8_t)(5 * i + 3);
            m.t.secagg_clip = 10;
            m.t.secagg_weight_cap = 1;
            m.t.dp_distributed = 1;
            m.t.dp_noise_multiplier = 0.8f;
            m.t.secagg_quant_bits = 24;
        } else {
            m.t.action = variant == 1 ? FS_TASK_WAIT : FS_TASK_FINISHED;
            m.t.retry_after_ms = 250;
            m.t.round = 7;
        }
        break;
    case M_MODEL_REQ:
        m.mq.protocol_version = FS_PROTOCOL_VERSION;
        m.mq.round = 3;
        break;
    case M_MODEL_CHUNK:
        m.mc.round = 2;
        m.mc.num_params = variant ? FS_WIRE_MAX_PARAMS : 100;
        m.mc.len = variant ? FS_CHUNK_BYTES : 24;
        m.mc.offset = m.mc.num_params - m.mc.len / 4; /* the last chunk, exactly */
        m.mc.data = (const uint8_t *)payload;
        m.mc.crc32 = 0x12345678u;
        break;
    case M_UPDATE_CHUNK:
        if (variant != 2) {
            fs_wire_update_header *h = &m.uc.header;
            m.uc.has_header = 1;
            h->protocol_version = FS_PROTOCOL_VERSION;
            h->round = 4;
            h->num_params = 487388;
            h->num_samples = FS_WIRE_MAX_SAMPLES;
            h->train_loss = 0.75f;
            h->global_dice_wt = NAN;
            h->global_dice_tc = 0.0f;
            h->global_dice_et = 1.0f;
            h->train_seconds = 12.5;
            h->crc32 = 0xdeadbeefu;
            if (variant == 3) {
                h->encrypted = 1;
                h->secagg_attempt = 77;
            }
            h->dp_unclipped = variant == 0;
        }
        m.uc.offset = variant == 2 ? FS_WIRE_MAX_PARAMS - 8 : 0;
        m.uc.len = variant == 1 ? 0 : 32;
        m.uc.data = (const uint8_t *)payload;
        break;
    case M_SA_REQ:
        m.sq.protocol_version = FS_PROTOCOL_VERSION;
        m.sq.round = 9;
        m.sq.attempt = variant ? UINT32_MAX : 0;
        m.sq.stage = variant == 2 ? FS_HE_PARTIALS : variant ? FS_SA_UNMASK : FS_SA_GET_KEYS;
        m.sq.payload = variant ? (const uint8_t *)payload : NULL;
        m.sq.len = variant ? 1000 : 0;
        break;
    case M_SA_REP:
        m.sr.status = variant == 0 ? FS_SA_OK : variant == 1 ? FS_SA_WAIT : FS_SA_ABANDONED;
        m.sr.stage = FS_SA_GET_RELAY;
        m.sr.payload = variant == 0 ? (const uint8_t *)payload : NULL;
        m.sr.len = variant == 0 ? 4096 : 0;
        m.sr.retry_after_ms = variant == 1 ? 250 : 0;
        if (variant == 2) strcpy(m.sr.reason, "only 2 sites sent their shares, threshold 3");
        break;
    default:
        m.ua.accepted = variant == 0;
        strcpy(m.ua.reason, variant ? "round 3 is over (now 4)" : "");
        break;
    }
    return m;
}

static const int n_variants[M_N] = {2, 2, 2, 5, 1, 2, 4, 2, 3, 3};

static void test_round_trips(void)
{
    for (size_t i = 0; i < FS_CHUNK_PARAMS; i++) payload[i] = (float)i * 0.5f - 7.25f;
    payload[1] = NAN; /* the codec carries any bits; finiteness is fs_wire_check_finite's job */
    payload[2] = -INFINITY;
    for (int k = 0; k < M_N; k++) {
        for (int v = 0; v < n_variants[k]; v++) {
            any_msg m = valid((msg_kind)k, v), back;
            uint8_t *e = NULL;
            size_t el = 0;
            char why[256] = "";
            fs_status st = round_trip((msg_kind)k, &m, &back, &e, &el, why, sizeof why);
            CHECK(st == FS_OK, "round trip kind %d variant %d: %s (%s)", k, v, fs_status_str(st), why);
            CHECK(el <= FS_MAX_MSG_BYTES, "kind %d variant %d: %zu bytes", k, v, el);
            if (st == FS_OK) {
                CHECK(same_msg((msg_kind)k, &m, &back), "round trip kind %d variant %d changed the message", k, v);
                if (k == M_MODEL_CHUNK && back.mc.len)
                    CHECK(back.mc.data > e && back.mc.data + back.mc.len <= e + el,
                          "ModelChunk payload was copied instead of borrowed");
                if (k == M_UPDATE_CHUNK && back.uc.len)
                    CHECK(back.uc.data > e && back.uc.data + back.uc.len <= e + el,
                          "UpdateChunk payload was copied instead of borrowed");
            }
            free(e);
        }
    }
    /* a full-size chunk is within the transport's message limit */
    any_msg big = valid(M_MODEL_CHUNK, 1);
    uint8_t *e = NULL;
    size_t el = 0;
    CHECK(fs_wire_encode_model_chunk(&big.mc, &e, &el) == FS_OK && el > FS_CHUNK_BYTES &&
          el <= FS_MAX_MSG_BYTES, "full chunk encodes to %zu bytes", el);
    free(e);
}

static void test_version(void)
{
    const char *want = "protocol version 2, this fedseg speaks 1";
    any_msg m = valid(M_JOIN_REQ, 0);
    m.jq.protocol_version = 2;
    expect_refused(M_JOIN_REQ, &m, FS_ERR_MISMATCH, want, "JoinRequest v2");
    m = valid(M_JOIN_REP, 0);
    m.jr.protocol_version = 2;
    expect_refused(M_JOIN_REP, &m, FS_ERR_MISMATCH, want, "JoinReply v2");
    m = valid(M_TASK_REQ, 0);
    m.tq.protocol_version = 2;
    expect_refused(M_TASK_REQ, &m, FS_ERR_MISMATCH, want, "TaskRequest v2");
    m = valid(M_MODEL_REQ, 0);
    m.mq.protocol_version = 2;
    expect_refused(M_MODEL_REQ, &m, FS_ERR_MISMATCH, want, "ModelRequest v2");
    m = valid(M_UPDATE_CHUNK, 0);
    m.uc.header.protocol_version = 2;
    expect_refused(M_UPDATE_CHUNK, &m, FS_ERR_MISMATCH, want, "UpdateHeader v2");
    /* a version-2 peer whose message is otherwise unreadable to us still gets
     * the version sentence, not a complaint about its fields */
    m = valid(M_JOIN_REQ, 0);
    m.jq.protocol_version = 2;
    m.jq.preset[0] = '\0';
    m.jq.num_samples = 0;
    expect_refused(M_JOIN_REQ, &m, FS_ERR_MISMATCH, want, "JoinRequest v2 with odd fields");
    /* no version at all reads as 0 */
    m = valid(M_TASK_REQ, 0);
    m.tq.protocol_version = 0;
    expect_refused(M_TASK_REQ, &m, FS_ERR_MISMATCH, "protocol version 0, this fedseg speaks 1", "TaskRequest v0");
    CHECK(fs_wire_rpc_code(FS_ERR_MISMATCH) == FS_RPC_FAILED_PRECONDITION, "mismatch -> FAILED_PRECONDITION");
    CHECK(fs_wire_rpc_code(FS_ERR_FORMAT) == FS_RPC_INVALID_ARGUMENT, "format -> INVALID_ARGUMENT");
}

static void test_refusals(void)
{
    any_msg m;
#define REFUSE(kind, var, edit, needle) do { m = valid(kind, var); edit; \
        expect_refused(kind, &m, FS_ERR_FORMAT, needle, #kind ": " #edit); } while (0)
    /* JoinRequest */
    REFUSE(M_JOIN_REQ, 0, m.jq.preset[0] = '\0', "preset is empty");
    REFUSE(M_JOIN_REQ, 0, strcpy(m.jq.preset, "ti ny"), "preset");
    REFUSE(M_JOIN_REQ, 0, strcpy(m.jq.preset, "../x"), "preset");
    REFUSE(M_JOIN_REQ, 0, m.jq.num_samples = 0, "num_samples");
    REFUSE(M_JOIN_REQ, 0, m.jq.num_samples = FS_WIRE_MAX_SAMPLES + 1, "num_samples");
    REFUSE(M_JOIN_REQ, 0, strcpy(m.jq.software, "evil\nfedseg: error: forged"), "software: not clean UTF-8 text");
    REFUSE(M_JOIN_REQ, 0, strcpy(m.jq.software, "x\x1b[2J"), "software");
    REFUSE(M_JOIN_REQ, 0, strcpy(m.jq.software, "bad \xff utf8"), "software");
    REFUSE(M_JOIN_REQ, 0, strcpy(m.jq.software, "overlong \xc0\xaf"), "software");
    REFUSE(M_JOIN_REQ, 0, strcpy(m.jq.software, "surrogate \xed\xa0\x80"), "software");
    REFUSE(M_JOIN_REQ, 0, strcpy(m.jq.software, "cut \xe2\x82"), "software");
    /* JoinReply */
    REFUSE(M_JOIN_REP, 0, m.jr.num_params = 0, "num_params");
    REFUSE(M_JOIN_REP, 0, m.jr.num_params = FS_WIRE_MAX_PARAMS + 1, "num_params");
    REFUSE(M_JOIN_REP, 0, m.jr.site_id[0] = '\0', "site_id is empty");
    REFUSE(M_JOIN_REP, 0, strcpy(m.jr.site_id, "site 1"), "site_id");
    REFUSE(M_JOIN_REP, 1, m.jr.num_params = FS_WIRE_MAX_PARAMS + 1, "num_params");
    /* Task */
    REFUSE(M_TASK, 0, m.t.lr = 0.0f, "lr");
    REFUSE(M_TASK, 0, m.t.lr = -1e-3f, "lr");
    REFUSE(M_TASK, 0, m.t.lr = NAN, "lr");
    REFUSE(M_TASK, 0, m.t.lr = INFINITY, "lr");
    REFUSE(M_TASK, 0, m.t.prox_mu = -0.5f, "prox_mu");
    REFUSE(M_TASK, 0, m.t.prox_mu = INFINITY, "prox_mu");
    REFUSE(M_TASK, 3, m.t.secagg_sites = 2, "secagg_sites");
    REFUSE(M_TASK, 3, m.t.secagg_sites = 256, "secagg_sites");
    REFUSE(M_TASK, 3, m.t.secagg_index = 255, "secagg_index");
    REFUSE(M_TASK, 3, m.t.secagg_threshold = 1, "secagg_threshold");
    REFUSE(M_TASK, 3, m.t.secagg_threshold = 255, "secagg_threshold");
    REFUSE(M_TASK, 3, m.t.secagg_neighbours = 1, "secagg_neighbours");
    REFUSE(M_TASK, 3, m.t.secagg_clip = 0, "secagg_clip");
    REFUSE(M_TASK, 3, m.t.secagg_clip = NAN, "secagg_clip");
    REFUSE(M_TASK, 3, m.t.secagg_weight_cap = 0, "secagg_weight_cap");
    REFUSE(M_TASK, 0, m.t.secagg_threshold = 3, "secure_agg and encrypted are false");
    REFUSE(M_TASK, 3, m.t.dp_noise_multiplier = 0, "dp_noise_multiplier");
    REFUSE(M_TASK, 3, m.t.secagg_quant_bits = 61, "secagg_quant_bits");
    REFUSE(M_TASK, 3, m.t.dp_distributed = 0, "dp_distributed is false");
    REFUSE(M_SA_REQ, 0, m.sq.round = 0, "round");
    REFUSE(M_SA_REQ, 0, m.sq.stage = (fs_secagg_stage)12, "stage");
    REFUSE(M_TASK, 4, m.t.secagg_sites = 1, "secagg_sites");
    REFUSE(M_TASK, 4, m.t.secagg_threshold = 3, "secagg_threshold");
    REFUSE(M_TASK, 4, m.t.secure_agg = 1, "encrypted with secure_agg");
    REFUSE(M_TASK, 4, m.t.secagg_neighbours = 1, "encrypted with secure_agg or neighbour");
    REFUSE(M_TASK, 4, m.t.secagg_quant_bits = 25, "secagg_quant_bits");
    REFUSE(M_TASK, 4, m.t.secagg_quant_bits = -1, "secagg_quant_bits");
    REFUSE(M_TASK, 4, m.t.dp_noise_multiplier = 0, "dp_noise_multiplier");
    REFUSE(M_TASK, 4, m.t.dp_distributed = 0, "dp_distributed is false");
    REFUSE(M_UPDATE_CHUNK, 3, m.uc.header.masked = 1, "both masked and encrypted");
    m = valid(M_SA_REQ, 1);
    m.sq.protocol_version = 2;
    expect_refused(M_SA_REQ, &m, FS_ERR_MISMATCH, "protocol version 2, this fedseg speaks 1", "SecAgg version");
    REFUSE(M_SA_REP, 0, m.sr.status = (fs_secagg_reply_status)3, "status");
    REFUSE(M_SA_REP, 1, m.sr.retry_after_ms = 86400001u, "retry_after_ms");
    REFUSE(M_TASK, 0, m.t.dp_clip = -1.0f, "dp_clip");
    REFUSE(M_TASK, 0, m.t.dp_clip = NAN, "dp_clip");
    REFUSE(M_TASK, 1, m.t.dp_clip = INFINITY, "dp_clip");
    REFUSE(M_TASK, 0, m.t.local_epochs = 0, "local_epochs");
    REFUSE(M_TASK, 0, m.t.local_epochs = 10001, "local_epochs");
    REFUSE(M_TASK, 0, m.t.round = 0, "round");
    REFUSE(M_TASK, 0, m.t.num_params = 0, "num_params");
    REFUSE(M_TASK, 0, m.t.num_params = FS_WIRE_MAX_PARAMS + 1, "num_params");
    REFUSE(M_TASK, 0, m.t.action = (fs_task_action)3, "unknown action 3");
    REFUSE(M_TASK, 1, m.t.lr = NAN, "must be finite");
    REFUSE(M_TASK, 1, m.t.retry_after_ms = 86400001u, "retry_after_ms");
    /* ModelChunk */
    REFUSE(M_MODEL_CHUNK, 0, m.mc.len = 6, "not a multiple of 4");
    REFUSE(M_MODEL_CHUNK, 0, m.mc.len = 0, "data length 0");
    REFUSE(M_MODEL_CHUNK, 0, (m.mc.len = FS_CHUNK_BYTES + 4, m.mc.num_params = 1u << 20, m.mc.offset = 0),
           "data length 262148");
    REFUSE(M_MODEL_CHUNK, 0, m.mc.offset += 1, "runs past 100 parameters");
    REFUSE(M_MODEL_CHUNK, 0, m.mc.offset = UINT64_MAX, "runs past");
    REFUSE(M_MODEL_CHUNK, 0, m.mc.offset = UINT64_MAX - 2, "runs past");
    REFUSE(M_MODEL_CHUNK, 0, m.mc.num_params = 0, "num_params");
    REFUSE(M_MODEL_CHUNK, 1, (m.mc.num_params = FS_WIRE_MAX_PARAMS + 1, m.mc.offset = 0), "num_params");
    /* UpdateChunk and its header */
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.global_dice_wt = 1.5f, "global_dice_wt");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.global_dice_tc = -0.1f, "global_dice_tc");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.global_dice_et = INFINITY, "global_dice_et");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.train_loss = NAN, "train_loss");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.train_loss = -1.0f, "train_loss");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.train_seconds = INFINITY, "train_seconds");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.train_seconds = -2.0, "train_seconds");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.num_samples = 0, "num_samples");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.num_params = 0, "num_params");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.num_params = FS_WIRE_MAX_PARAMS + 1, "num_params");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.header.round = 0, "round");
    REFUSE(M_UPDATE_CHUNK, 0, m.uc.len = 30, "not a multiple of 4");
    REFUSE(M_UPDATE_CHUNK, 0, (m.uc.header.num_params = 10, m.uc.offset = 3), "runs past 10 parameters");
    REFUSE(M_UPDATE_CHUNK, 2, m.uc.len = 0, "data length 0");
    REFUSE(M_UPDATE_CHUNK, 2, m.uc.offset = FS_WIRE_MAX_PARAMS - 7, "runs past 2147483648");
    REFUSE(M_UPDATE_CHUNK, 2, m.uc.len = FS_CHUNK_BYTES + 4, "data length");
    /* UpdateAck: a reason that would not fit */
    {
        uint8_t r256[FS_WIRE_REASON_LEN];
        memset(r256, 'x', sizeof r256);
        raw r = {.n = 0};
        put_vfield(&r, 1, 0);
        put_bytes(&r, 2, r256, sizeof r256);
        fs_wire_update_ack a;
        char why[256];
        CHECK(fs_wire_decode_update_ack(r.b, r.n, &a, why, sizeof why) == FS_ERR_FORMAT &&
              strstr(why, "reason is 256 bytes long (at most 255)"), "long reason: %s", why);
    }
#undef REFUSE
}

/* Hand-made framings a protobuf encoder would not produce. */
static void test_malformed(void)
{
    char why[256];
    fs_wire_task_request tq;
    fs_wire_join_request jq;
    fs_wire_join_reply jr;
    fs_wire_model_chunk mc;
    raw r;

    r.n = 0; put_vfield(&r, 1, 1); put_vfield(&r, 2, 5);
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_OK && tq.last_round_done == 5,
          "hand-made TaskRequest: %s", why);
    /* an unknown field (number 99, each wire type) is skipped */
    r.n = 0; put_vfield(&r, 1, 1); put_vfield(&r, 99, 7); put_bytes(&r, 98, "zz", 2);
    put_tag(&r, 97, 5); memcpy(r.b + r.n, "abcd", 4); r.n += 4;
    put_tag(&r, 96, 1); memcpy(r.b + r.n, "abcdefgh", 8); r.n += 8;
    put_vfield(&r, 2, 9);
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_OK && tq.last_round_done == 9,
          "unknown fields should be skipped: %s", why);
    /* a known field twice */
    r.n = 0; put_vfield(&r, 1, 1); put_vfield(&r, 2, 5); put_vfield(&r, 2, 6);
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "last_round_done appears twice"), "duplicate field: %s", why);
    /* wrong wire type for a known field */
    r.n = 0; put_vfield(&r, 1, 1); put_bytes(&r, 2, "ab", 2);
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "wrong wire type"), "wire type: %s", why);
    /* uint32 over 32 bits */
    r.n = 0; put_vfield(&r, 1, 1); put_vfield(&r, 2, 1ull << 32);
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "does not fit 32 bits"), "u32 range: %s", why);
    /* protocol_version 2^32 + 1 must not wrap to 1 */
    r.n = 0; put_vfield(&r, 1, (1ull << 32) + 1);
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_ERR_FORMAT, "version wrap: %s", why);
    /* an 11-byte varint */
    r.n = 0; put_tag(&r, 1, 0);
    for (int i = 0; i < 10; i++) r.b[r.n++] = 0x80;
    r.b[r.n++] = 0;
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "over-long varint"), "long varint: %s", why);
    /* a 10-byte varint above 2^64 */
    r.n = 0; put_tag(&r, 1, 0);
    for (int i = 0; i < 9; i++) r.b[r.n++] = 0xff;
    r.b[r.n++] = 0x02;
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_ERR_FORMAT, "varint > 2^64");
    /* a field tag longer than 5 bytes (non-minimal; protobuf-c refuses it) */
    r.n = 0; put_vfield(&r, 1, 1);
    for (int i = 0; i < 5; i++) r.b[r.n++] = 0x89;
    r.b[r.n++] = 0x00;
    memcpy(r.b + r.n, "abcdefgh", 8); r.n += 8;
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "bad field tag"), "6-byte tag: %s", why);
    /* a 10-byte varint whose last byte would wrap a uint64 to 1 */
    r.n = 0; put_vfield(&r, 1, 1); put_bytes(&r, 2, "tiny", 4); put_tag(&r, 3, 0);
    r.b[r.n++] = 0x81;
    for (int i = 0; i < 8; i++) r.b[r.n++] = 0x80;
    r.b[r.n++] = 0x02;
    CHECK(fs_wire_decode_join_request(r.b, r.n, &jq, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "over-long varint"), "wrapping varint: %s", why);
    /* -0.0 reads as +0.0 (protobuf-c never encodes -0, so the decoded struct
     * re-encodes to the same message) */
    {
        fs_wire_task t;
        uint32_t one = 0x3f800000u, negzero = 0x80000000u;
        r.n = 0; put_vfield(&r, 1, 1); put_vfield(&r, 2, 1); put_vfield(&r, 3, 1);
        put_tag(&r, 5, 5); memcpy(r.b + r.n, &one, 4); r.n += 4;
        put_tag(&r, 6, 5); memcpy(r.b + r.n, &negzero, 4); r.n += 4;
        put_vfield(&r, 7, 10);
        CHECK(fs_wire_decode_task(r.b, r.n, &t, why, sizeof why) == FS_OK && t.lr == 1.0f &&
              t.prox_mu == 0.0f && !signbit(t.prox_mu), "-0 prox_mu: %s", why);
        CHECK(decode_checked(M_TASK, r.b, r.n, "-0") == FS_OK, "-0 re-encodes");
    }
    /* bool other than 0/1 */
    r.n = 0; put_vfield(&r, 1, 1); put_vfield(&r, 2, 2);
    CHECK(fs_wire_decode_join_reply(r.b, r.n, &jr, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "bool"), "bool 2: %s", why);
    /* groups (wire types 3, 4) and 6, 7; field number 0 */
    for (unsigned wt = 3; wt <= 7; wt++) {
        if (wt == 5) continue;
        r.n = 0; put_vfield(&r, 1, 1); put_tag(&r, 50, wt); r.b[r.n++] = 0;
        CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_ERR_FORMAT,
              "wire type %u accepted", wt);
    }
    r.n = 0; put_vfield(&r, 0, 1);
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "bad field tag"), "field 0: %s", why);
    /* a length running past the end */
    r.n = 0; put_vfield(&r, 1, 1); put_tag(&r, 2, 2); put_varint(&r, 100); r.b[r.n++] = 't';
    CHECK(fs_wire_decode_join_request(r.b, r.n, &jq, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "runs past the end"), "long length: %s", why);
    /* a length near 2^64 must not wrap the bounds check */
    r.n = 0; put_vfield(&r, 1, 1); put_tag(&r, 4, 2); put_varint(&r, UINT64_MAX - 1); r.b[r.n++] = 'x';
    CHECK(fs_wire_decode_model_chunk(r.b, r.n, &mc, why, sizeof why) == FS_ERR_FORMAT, "huge length");
    /* a NUL inside a string is refused, not truncated */
    r.n = 0; put_vfield(&r, 1, 1); put_bytes(&r, 2, "tiny\0big", 8); put_vfield(&r, 3, 5);
    CHECK(fs_wire_decode_join_request(r.b, r.n, &jq, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "preset"), "embedded NUL: %s", why);
    /* a message over the limit */
    size_t big = FS_MAX_MSG_BYTES + 1;
    uint8_t *b = calloc(big, 1);
    CHECK(fs_wire_decode_model_chunk(b, big, &mc, why, sizeof why) == FS_ERR_FORMAT &&
          strstr(why, "exceed the limit"), "oversized: %s", why);
    free(b);
    /* empty input: a message with every field at its default */
    CHECK(fs_wire_decode_update_ack((const uint8_t *)"", 0, &(fs_wire_update_ack){0}, why, sizeof why) == FS_OK,
          "empty UpdateAck: %s", why);
    CHECK(fs_wire_decode_task_request(NULL, 0, &tq, why, sizeof why) == FS_ERR_MISMATCH, "empty TaskRequest");
    CHECK(fs_wire_decode_task_request(NULL, 4, &tq, why, sizeof why) == FS_ERR_ARG, "NULL buffer");
    CHECK(fs_wire_decode_task_request(r.b, r.n, NULL, NULL, 0) == FS_ERR_ARG, "NULL out");
    /* why may be NULL */
    r.n = 0; put_vfield(&r, 1, 2);
    CHECK(fs_wire_decode_task_request(r.b, r.n, &tq, NULL, 0) == FS_ERR_MISMATCH, "why NULL");
}

static void test_abuse(void)
{
    for (int k = 0; k < M_N; k++) {
        for (int v = 0; v < n_variants[k]; v++) {
            any_msg m = valid((msg_kind)k, v);
            if (k == M_MODEL_CHUNK && v == 1) continue; /* 256 KiB: covered by the small one */
            uint8_t *e = NULL;
            size_t el = 0;
            CHECK(encode_any((msg_kind)k, &m, &e, &el) == FS_OK, "encode");
            abuse((msg_kind)k, e, el, 1000u * (unsigned)k + (unsigned)v);
            free(e);
        }
    }
}

static void test_methods(void)
{
    CHECK(strcmp(fs_federation_methods[FS_M_JOIN].path, "/fedseg.v1.Federation/Join") == 0 &&
          fs_federation_methods[FS_M_JOIN].shape == FS_CALL_UNARY, "Join");
    CHECK(strcmp(fs_federation_methods[FS_M_GET_TASK].path, "/fedseg.v1.Federation/GetTask") == 0 &&
          fs_federation_methods[FS_M_GET_TASK].shape == FS_CALL_UNARY, "GetTask");
    CHECK(strcmp(fs_federation_methods[FS_M_DOWNLOAD_MODEL].path, "/fedseg.v1.Federation/DownloadModel") == 0 &&
          fs_federation_methods[FS_M_DOWNLOAD_MODEL].shape == FS_CALL_DOWNLOAD, "DownloadModel");
    CHECK(strcmp(fs_federation_methods[FS_M_PUSH_UPDATE].path, "/fedseg.v1.Federation/PushUpdate") == 0 &&
          fs_federation_methods[FS_M_PUSH_UPDATE].shape == FS_CALL_UPLOAD, "PushUpdate");
    CHECK(strcmp(fs_task_action_str(FS_TASK_TRAIN), "train") == 0, "action name");
}

static void test_finite_and_crc(void)
{
    enum { N = 5000 };
    static float v[N];
    for (int i = 0; i < N; i++) v[i] = (float)(i - 2500) * 1e-3f;
    v[10] = FLT_MAX;
    v[11] = -FLT_MAX;
    v[12] = FLT_TRUE_MIN; /* denormal */
    v[13] = -0.0f;
    size_t bad = 12345;
    CHECK(fs_wire_check_finite((const uint8_t *)v, sizeof v, &bad) == FS_OK && bad == 12345, "finite vector");
    const size_t at[] = {0, 1, 1023, 1024, 1025, 4096, N - 1};
    const float poison[] = {NAN, -NAN, INFINITY, -INFINITY};
    for (size_t a = 0; a < sizeof at / sizeof at[0]; a++) {
        for (size_t p = 0; p < 4; p++) {
            float keep = v[at[a]];
            v[at[a]] = poison[p];
            bad = 0;
            CHECK(fs_wire_check_finite((const uint8_t *)v, sizeof v, &bad) == FS_ERR_NUMERIC && bad == at[a],
                  "poison %zu at %zu: found at %zu", p, at[a], bad);
            v[at[a]] = keep;
        }
    }
    /* a signalling NaN and the smallest-mantissa NaN */
    uint32_t snan = 0x7f800001u;
    memcpy(&v[N / 2], &snan, 4);
    CHECK(fs_wire_check_finite((const uint8_t *)v, sizeof v, &bad) == FS_ERR_NUMERIC && bad == N / 2, "sNaN");
    v[N / 2] = 0.0f;
    /* unaligned start: the bytes of v shifted by one */
    uint8_t *shift = malloc(sizeof v + 1);
    memcpy(shift + 1, v, sizeof v);
    CHECK(fs_wire_check_finite(shift + 1, sizeof v, NULL) == FS_OK, "unaligned finite");
    float inf = INFINITY;
    memcpy(shift + 1 + 4 * 777, &inf, 4);
    CHECK(fs_wire_check_finite(shift + 1, sizeof v, &bad) == FS_ERR_NUMERIC && bad == 777, "unaligned Inf");
    free(shift);
    CHECK(fs_wire_check_finite((const uint8_t *)v, 6, NULL) == FS_ERR_ARG, "length not a multiple of 4");
    CHECK(fs_wire_check_finite(NULL, 0, NULL) == FS_OK, "empty");

    /* CRC-32: the standard check value, float vs bytes, chunked vs whole */
    CHECK(fs_wire_crc32_bytes(0, (const uint8_t *)"123456789", 9) == 0xCBF43926u, "CRC-32 check value");
    uint32_t whole = fs_wire_crc32_f32(0, v, N);
    CHECK(whole == (uint32_t)crc32(0L, (const Bytef *)v, sizeof v), "crc of floats = zlib crc of bytes");
    /* every short length and misalignment against zlib's table code (the
     * carry-less-multiply path has separate tails for lengths under 64+) */
    for (size_t off = 0; off < 8; off++)
        for (size_t len = 0; len <= 300; len++) {
            const uint8_t *p = (const uint8_t *)v + off;
            uint32_t want = (uint32_t)crc32(crc32(0L, Z_NULL, 0), p, (uInt)len);
            if (fs_wire_crc32_bytes(0, p, len) != want) {
                CHECK(0, "CRC-32 of %zu bytes at offset %zu differs from zlib's", len, off);
                off = 8;
                break;
            }
        }
    uint32_t c = 0;
    for (size_t o = 0; o < N; o += 999) c = fs_wire_crc32_bytes(c, (const uint8_t *)(v + o), 4 * (N - o < 999 ? N - o : 999));
    CHECK(c == whole, "chunked CRC %08x != whole %08x", c, whole);
    v[4321] += 1.0f;
    CHECK(fs_wire_crc32_f32(0, v, N) != whole, "CRC sees a changed value");

    float back[N];
    fs_wire_copy_f32(back, (const uint8_t *)v, sizeof v);
    CHECK(memcmp(back, v, sizeof v) == 0, "copy_f32");
}

int main(void)
{
    test_methods();
    test_round_trips();
    test_version();
    test_refusals();
    test_malformed();
    test_abuse();
    test_finite_and_crc();
    return check_result();
}
