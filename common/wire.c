/*
 * common/wire.c — see wire.h. Layout: the method table; a strict,
 * allocation-free protobuf reader (scan) driven by the descriptors protoc-c
 * generated, which records where each known field of one message lies; value
 * checks shared by the messages; then per message an encoder (protobuf-c
 * pack) and a decoder (scan, copy the recorded fields out, check them);
 * finally the float helpers (finite scan, CRC-32).
 *
 * Why not protobuf_c_message_unpack: it copies every bytes field (a chunk's
 * 256 KiB payload) into fresh memory, silently truncates strings at an
 * embedded NUL, merges repeated fields and accepts over-long values; the scan
 * below refuses those and lets chunk payloads stay where they arrived. The
 * fuzz target checks that every message this reader accepts is read the same
 * way by protobuf-c.
 *
 * Tested by tests/test_wire.c and tests/fuzz/fuzz_wire.c.
 */
#include "common/wire.h"
#include "proto/fedseg.pb-c.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <isa-l/crc.h>

const fs_rpc_method fs_federation_methods[FS_M_COUNT] = {
    [FS_M_JOIN] = {"/fedseg.v1.Federation/Join", FS_CALL_UNARY},
    [FS_M_GET_TASK] = {"/fedseg.v1.Federation/GetTask", FS_CALL_UNARY},
    [FS_M_DOWNLOAD_MODEL] = {"/fedseg.v1.Federation/DownloadModel", FS_CALL_DOWNLOAD},
    [FS_M_PUSH_UPDATE] = {"/fedseg.v1.Federation/PushUpdate", FS_CALL_UPLOAD},
    [FS_M_SECAGG] = {"/fedseg.v1.Federation/SecAgg", FS_CALL_UNARY},
};

/* ---- the strict reader ------------------------------------------------- */

#define MAX_FIELD 33 /* highest field number any message in the .proto may use */

typedef struct {
    int seen;
    uint64_t u;          /* varint, or the bits of a fixed32 / fixed64 */
    const uint8_t *p;    /* length-delimited: the bytes, inside the input */
    size_t len;
} field_val;

typedef struct {
    const ProtobufCMessageDescriptor *desc;
    field_val f[MAX_FIELD + 1]; /* indexed by field number */
} scan_result;

static void say(char *why, size_t whylen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Writes one line into why (when given). */
static void say(char *why, size_t whylen, const char *fmt, ...)
{
    if (!why || whylen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

/* Reads a base-128 varint of at most max_bytes (10 for values, 5 for field
 * tags, as protobuf-c reads them) whose value fits 64 bits. */
static int read_varint(const uint8_t *b, size_t n, size_t *pos, uint64_t *v, int max_bytes)
{
    uint64_t x = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (*pos >= n) return 0;
        uint8_t c = b[(*pos)++];
        if (i == 9 && c > 1) return 0;
        x |= (uint64_t)(c & 0x7f) << (7 * i);
        if (!(c & 0x80)) { *v = x; return 1; }
    }
    return 0;
}

static uint64_t get_le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* The wire type protobuf uses for a field type (proto3, not packed). */
static int wire_type_of(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_FLOAT: case PROTOBUF_C_TYPE_FIXED32: case PROTOBUF_C_TYPE_SFIXED32:
        return 5;
    case PROTOBUF_C_TYPE_DOUBLE: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_SFIXED64:
        return 1;
    case PROTOBUF_C_TYPE_STRING: case PROTOBUF_C_TYPE_BYTES: case PROTOBUF_C_TYPE_MESSAGE:
        return 2;
    default:
        return 0;
    }
}

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs, surrogates or code
 * points above U+10FFFF) with no C0 control characters and no DEL. */
static int text_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x20 || c == 0x7f) return 0;
        if (c < 0x80) { i++; continue; }
        int more;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) { more = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { more = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { more = 3; cp = c & 0x07; }
        else return 0;
        if (n - i <= (size_t)more) return 0;
        for (int k = 1; k <= more; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((more == 2 && cp < 0x800) || (more == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += (size_t)more + 1;
    }
    return 1;
}

/* Walks every field of one message (not descending into sub-messages) and
 * records the known ones in r. Refuses malformed framing, known fields with a
 * wrong wire type or seen twice, tags longer than 5 bytes, uint32/enum
 * varints above 2^32-1, bools
 * other than 0/1, and strings that are not clean UTF-8 text. */
static fs_status scan(const ProtobufCMessageDescriptor *desc, const uint8_t *b, size_t n,
                      scan_result *r, char *why, size_t whylen)
{
    memset(r, 0, sizeof *r);
    r->desc = desc;
    const char *msg = desc->short_name;
    if (n > FS_MAX_MSG_BYTES) {
        say(why, whylen, "%s: %zu bytes exceed the limit of %u", msg, n, (unsigned)FS_MAX_MSG_BYTES);
        return FS_ERR_FORMAT;
    }
    size_t pos = 0;
    while (pos < n) {
        size_t at = pos;
        uint64_t tag, v = 0;
        if (!read_varint(b, n, &pos, &tag, 5) || tag >> 3 == 0 || tag >> 3 > 0x1fffffff) {
            say(why, whylen, "%s: bad field tag at byte %zu", msg, at);
            return FS_ERR_FORMAT;
        }
        uint32_t num = (uint32_t)(tag >> 3);
        int wt = (int)(tag & 7);
        const uint8_t *p = NULL;
        size_t plen = 0;
        switch (wt) {
        case 0:
            if (!read_varint(b, n, &pos, &v, 10)) {
                say(why, whylen, "%s: field %u: truncated or over-long varint", msg, num);
                return FS_ERR_FORMAT;
            }
            break;
        case 1: case 5: {
            size_t w = wt == 1 ? 8 : 4;
            if (n - pos < w) {
                say(why, whylen, "%s: field %u: truncated", msg, num);
                return FS_ERR_FORMAT;
            }
            v = get_le(b + pos, (int)w);
            pos += w;
            break;
        }
        case 2:
            if (!read_varint(b, n, &pos, &v, 10) || v > n - pos) {
                say(why, whylen, "%s: field %u: length runs past the end of the message", msg, num);
                return FS_ERR_FORMAT;
            }
            p = b + pos;
            plen = (size_t)v;
            pos += plen;
            break;
        default:
            say(why, whylen, "%s: field %u: unsupported wire type %d", msg, num, wt);
            return FS_ERR_FORMAT;
        }
        const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field(desc, num);
        if (!fd) continue; /* unknown field: skipped */
        if (fd->id > MAX_FIELD || fd->label == PROTOBUF_C_LABEL_REPEATED) {
            say(why, whylen, "%s: field %s: not supported by this reader", msg, fd->name);
            return FS_ERR_FORMAT;
        }
        if (wire_type_of(fd->type) != wt) {
            say(why, whylen, "%s: field %s: wrong wire type %d", msg, fd->name, wt);
            return FS_ERR_FORMAT;
        }
        if (r->f[num].seen) {
            say(why, whylen, "%s: field %s appears twice", msg, fd->name);
            return FS_ERR_FORMAT;
        }
        if ((fd->type == PROTOBUF_C_TYPE_UINT32 || fd->type == PROTOBUF_C_TYPE_ENUM ||
             fd->type == PROTOBUF_C_TYPE_SINT32) && v > 0xffffffffu) {
            say(why, whylen, "%s: field %s: %llu does not fit 32 bits", msg, fd->name,
                (unsigned long long)v);
            return FS_ERR_FORMAT;
        }
        if (fd->type == PROTOBUF_C_TYPE_BOOL && v > 1) {
            say(why, whylen, "%s: field %s: bool value %llu", msg, fd->name, (unsigned long long)v);
            return FS_ERR_FORMAT;
        }
        if (fd->type == PROTOBUF_C_TYPE_STRING && !text_ok(p, plen)) {
            say(why, whylen, "%s: field %s: not clean UTF-8 text", msg, fd->name);
            return FS_ERR_FORMAT;
        }
        r->f[num] = (field_val){1, v, p, plen};
    }
    return FS_OK;
}

/* The recorded value of the named field (all zero when absent). A name that
 * is not in the message is a programming error caught by the round-trip
 * tests: it reads as absent. */
static const field_val *fld(const scan_result *r, const char *name)
{
    static const field_val none;
    const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(r->desc, name);
    if (!fd || fd->id > MAX_FIELD) return &none;
    return &r->f[fd->id];
}

static uint32_t get_u32(const scan_result *r, const char *name) { return (uint32_t)fld(r, name)->u; }
static uint64_t get_u64(const scan_result *r, const char *name) { return fld(r, name)->u; }

static float get_f32(const scan_result *r, const char *name)
{
    uint32_t bits = (uint32_t)fld(r, name)->u;
    float f;
    memcpy(&f, &bits, 4);
    return f == 0.0f ? 0.0f : f; /* -0 reads as +0: protobuf-c never sends -0 back */
}

static double get_f64(const scan_result *r, const char *name)
{
    uint64_t bits = fld(r, name)->u;
    double d;
    memcpy(&d, &bits, 8);
    return d == 0.0 ? 0.0 : d;
}

/* Copies a string field into dst[cap] (NUL-terminated); FS_ERR_FORMAT when it
 * does not fit. The scan already checked it is clean text. */
static fs_status get_str(const scan_result *r, const char *name, char *dst, size_t cap, char *why,
                         size_t whylen)
{
    const field_val *v = fld(r, name);
    if (v->len >= cap) {
        say(why, whylen, "%s: %s is %zu bytes long (at most %zu)", r->desc->short_name, name, v->len,
            cap - 1);
        return FS_ERR_FORMAT;
    }
    if (v->len) memcpy(dst, v->p, v->len);
    dst[v->len] = '\0';
    return FS_OK;
}

/* ---- value checks ------------------------------------------------------- */

static fs_status check_version(uint32_t v, char *why, size_t whylen)
{
    if (v == FS_PROTOCOL_VERSION) return FS_OK;
    say(why, whylen, "protocol version %u, this fedseg speaks %u", v, (unsigned)FS_PROTOCOL_VERSION);
    return FS_ERR_MISMATCH;
}

/* Identifiers (presets, site names): non-empty, [A-Za-z0-9._-] only. */
static fs_status check_ident(const char *msg, const char *field, const char *s, char *why, size_t whylen)
{
    if (!s[0]) {
        say(why, whylen, "%s: %s is empty", msg, field);
        return FS_ERR_FORMAT;
    }
    for (const char *c = s; *c; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '.' || *c == '_' || *c == '-')) {
            say(why, whylen, "%s: %s \"%s\" has a character other than A-Z a-z 0-9 . _ -", msg, field, s);
            return FS_ERR_FORMAT;
        }
    }
    return FS_OK;
}

static fs_status check_range_u64(const char *msg, const char *field, uint64_t v, uint64_t lo,
                                 uint64_t hi, char *why, size_t whylen)
{
    if (v >= lo && v <= hi) return FS_OK;
    say(why, whylen, "%s: %s = %llu is outside [%llu, %llu]", msg, field, (unsigned long long)v,
        (unsigned long long)lo, (unsigned long long)hi);
    return FS_ERR_FORMAT;
}

/* A finite value >= lo (or > lo when strict). */
static fs_status check_finite_min(const char *msg, const char *field, double v, double lo, int strict,
                                  char *why, size_t whylen)
{
    if (isfinite(v) && (strict ? v > lo : v >= lo)) return FS_OK;
    say(why, whylen, "%s: %s = %g must be finite and %s %g", msg, field, v, strict ? ">" : ">=", lo);
    return FS_ERR_FORMAT;
}

static fs_status check_dice(const char *msg, const char *field, float v, char *why, size_t whylen)
{
    if (isnan(v) || (v >= 0.0f && v <= 1.0f)) return FS_OK;
    say(why, whylen, "%s: %s = %g is outside [0, 1] (NaN means not evaluated)", msg, field, v);
    return FS_ERR_FORMAT;
}

/* Chunk payload: a multiple of 4 bytes, at most FS_CHUNK_BYTES, non-empty
 * unless allow_empty, and offset + len/4 <= limit. */
static fs_status check_chunk(const char *msg, uint64_t offset, size_t len, uint64_t limit,
                             int allow_empty, char *why, size_t whylen)
{
    if (len % 4) {
        say(why, whylen, "%s: data length %zu is not a multiple of 4", msg, len);
        return FS_ERR_FORMAT;
    }
    if (len > FS_CHUNK_BYTES || (len == 0 && !allow_empty)) {
        say(why, whylen, "%s: data length %zu is outside [4, %u]", msg, len, (unsigned)FS_CHUNK_BYTES);
        return FS_ERR_FORMAT;
    }
    if (offset > limit || len / 4 > limit - offset) {
        say(why, whylen, "%s: chunk at offset %llu with %zu parameters runs past %llu parameters", msg,
            (unsigned long long)offset, len / 4, (unsigned long long)limit);
        return FS_ERR_FORMAT;
    }
    return FS_OK;
}

/* ---- packing ------------------------------------------------------------ */

/* Packs a filled protobuf-c message into a malloc'ed buffer. */
static fs_status pack(const ProtobufCMessage *pm, uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(pm);
    uint8_t *b = malloc(n ? n : 1);
    if (!b) return FS_ERR_NOMEM;
    size_t w = protobuf_c_message_pack(pm, b);
    if (w != n) { free(b); return FS_ERR_ARG; }
    *out = b;
    *len = n;
    return FS_OK;
}

/* protobuf-c wants char * for strings it will only read. */
#define STR(s) ((char *)(s))

#define ENC_PROLOGUE() do { if (!m || !out || !len) return FS_ERR_ARG; *out = NULL; *len = 0; } while (0)
#define DEC_PROLOGUE() do { \
        if (why && whylen) why[0] = '\0'; \
        if (!out || (!buf && len)) { say(why, whylen, "no message"); return FS_ERR_ARG; } \
        memset(out, 0, sizeof *out); } while (0)
/* On failure, leave *out zeroed and return the status. */
#define DEC_TRY(expr) do { fs_status s_ = (expr); if (s_ != FS_OK) { memset(out, 0, sizeof *out); return s_; } } while (0)

/* ---- JoinRequest -------------------------------------------------------- */

fs_status fs_wire_encode_join_request(const fs_wire_join_request *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    Fedseg__V1__JoinRequest pm = FEDSEG__V1__JOIN_REQUEST__INIT;
    pm.protocol_version = m->protocol_version;
    pm.preset = STR(m->preset);
    pm.num_samples = m->num_samples;
    pm.software = STR(m->software);
    return pack(&pm.base, out, len);
}

fs_status fs_wire_decode_join_request(const uint8_t *buf, size_t len, fs_wire_join_request *out,
                                      char *why, size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    const char *msg = "JoinRequest";
    DEC_TRY(scan(&fedseg__v1__join_request__descriptor, buf, len, &r, why, whylen));
    out->protocol_version = get_u32(&r, "protocol_version");
    DEC_TRY(check_version(out->protocol_version, why, whylen));
    DEC_TRY(get_str(&r, "preset", out->preset, sizeof out->preset, why, whylen));
    DEC_TRY(get_str(&r, "software", out->software, sizeof out->software, why, whylen));
    out->num_samples = get_u64(&r, "num_samples");
    DEC_TRY(check_ident(msg, "preset", out->preset, why, whylen));
    DEC_TRY(check_range_u64(msg, "num_samples", out->num_samples, 1, FS_WIRE_MAX_SAMPLES, why, whylen));
    return FS_OK;
}

/* ---- JoinReply ---------------------------------------------------------- */

fs_status fs_wire_encode_join_reply(const fs_wire_join_reply *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    Fedseg__V1__JoinReply pm = FEDSEG__V1__JOIN_REPLY__INIT;
    pm.protocol_version = m->protocol_version;
    pm.accepted = m->accepted ? 1 : 0;
    pm.reason = STR(m->reason);
    pm.site_id = STR(m->site_id);
    pm.preset = STR(m->preset);
    pm.num_params = m->num_params;
    pm.round = m->round;
    return pack(&pm.base, out, len);
}

fs_status fs_wire_decode_join_reply(const uint8_t *buf, size_t len, fs_wire_join_reply *out,
                                    char *why, size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    const char *msg = "JoinReply";
    DEC_TRY(scan(&fedseg__v1__join_reply__descriptor, buf, len, &r, why, whylen));
    out->protocol_version = get_u32(&r, "protocol_version");
    DEC_TRY(check_version(out->protocol_version, why, whylen));
    out->accepted = get_u64(&r, "accepted") != 0;
    DEC_TRY(get_str(&r, "reason", out->reason, sizeof out->reason, why, whylen));
    DEC_TRY(get_str(&r, "site_id", out->site_id, sizeof out->site_id, why, whylen));
    DEC_TRY(get_str(&r, "preset", out->preset, sizeof out->preset, why, whylen));
    out->num_params = get_u64(&r, "num_params");
    out->round = get_u32(&r, "round");
    if (out->accepted) {
        DEC_TRY(check_ident(msg, "site_id", out->site_id, why, whylen));
        DEC_TRY(check_ident(msg, "preset", out->preset, why, whylen));
        DEC_TRY(check_range_u64(msg, "num_params", out->num_params, 1, FS_WIRE_MAX_PARAMS, why, whylen));
    } else {
        DEC_TRY(check_range_u64(msg, "num_params", out->num_params, 0, FS_WIRE_MAX_PARAMS, why, whylen));
    }
    return FS_OK;
}

/* ---- TaskRequest -------------------------------------------------------- */

fs_status fs_wire_encode_task_request(const fs_wire_task_request *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    Fedseg__V1__TaskRequest pm = FEDSEG__V1__TASK_REQUEST__INIT;
    pm.protocol_version = m->protocol_version;
    pm.last_round_done = m->last_round_done;
    return pack(&pm.base, out, len);
}

fs_status fs_wire_decode_task_request(const uint8_t *buf, size_t len, fs_wire_task_request *out,
                                      char *why, size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    DEC_TRY(scan(&fedseg__v1__task_request__descriptor, buf, len, &r, why, whylen));
    out->protocol_version = get_u32(&r, "protocol_version");
    DEC_TRY(check_version(out->protocol_version, why, whylen));
    out->last_round_done = get_u32(&r, "last_round_done");
    return FS_OK;
}

/* ---- Task --------------------------------------------------------------- */

fs_status fs_wire_encode_task(const fs_wire_task *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    Fedseg__V1__Task pm = FEDSEG__V1__TASK__INIT;
    pm.action = (Fedseg__V1__Task__Action)m->action;
    pm.round = m->round;
    pm.local_epochs = m->local_epochs;
    pm.steps_per_epoch = m->steps_per_epoch;
    pm.lr = m->lr;
    pm.prox_mu = m->prox_mu;
    pm.num_params = m->num_params;
    pm.seconds_left = m->seconds_left;
    pm.retry_after_ms = m->retry_after_ms;
    pm.model_crc32 = m->model_crc32;
    pm.dp_clip = m->dp_clip;
    pm.secure_agg = m->secure_agg ? 1 : 0;
    pm.secagg_attempt = m->secagg_attempt;
    pm.secagg_index = m->secagg_index;
    pm.secagg_sites = m->secagg_sites;
    pm.secagg_threshold = m->secagg_threshold;
    pm.secagg_neighbours = m->secagg_neighbours;
    pm.encrypted = m->encrypted ? 1 : 0;
    if (m->secure_agg || m->encrypted) {
        pm.secagg_round_seed.data = (uint8_t *)m->secagg_round_seed;
        pm.secagg_round_seed.len = sizeof m->secagg_round_seed;
    }
    pm.secagg_clip = m->secagg_clip;
    pm.secagg_weight_cap = m->secagg_weight_cap;
    pm.dp_distributed = m->dp_distributed ? 1 : 0;
    pm.dp_noise_multiplier = m->dp_noise_multiplier;
    pm.secagg_quant_bits = m->secagg_quant_bits;
    pm.scaffold = m->scaffold ? 1 : 0;
    pm.local_norm = m->local_norm ? 1 : 0;
    return pack(&pm.base, out, len);
}

fs_status fs_wire_decode_task(const uint8_t *buf, size_t len, fs_wire_task *out, char *why,
                              size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    const char *msg = "Task";
    DEC_TRY(scan(&fedseg__v1__task__descriptor, buf, len, &r, why, whylen));
    uint32_t action = get_u32(&r, "action");
    out->round = get_u32(&r, "round");
    out->local_epochs = get_u32(&r, "local_epochs");
    out->steps_per_epoch = get_u32(&r, "steps_per_epoch");
    out->lr = get_f32(&r, "lr");
    out->prox_mu = get_f32(&r, "prox_mu");
    out->num_params = get_u64(&r, "num_params");
    out->seconds_left = get_u32(&r, "seconds_left");
    out->retry_after_ms = get_u32(&r, "retry_after_ms");
    out->model_crc32 = get_u32(&r, "model_crc32");
    out->dp_clip = get_f32(&r, "dp_clip");
    out->secure_agg = get_u64(&r, "secure_agg") != 0;
    out->secagg_attempt = get_u32(&r, "secagg_attempt");
    out->secagg_index = get_u32(&r, "secagg_index");
    out->secagg_sites = get_u32(&r, "secagg_sites");
    out->secagg_threshold = get_u32(&r, "secagg_threshold");
    out->secagg_neighbours = get_u32(&r, "secagg_neighbours");
    const field_val *seed = fld(&r, "secagg_round_seed");
    out->secagg_clip = get_f64(&r, "secagg_clip");
    out->secagg_weight_cap = get_u64(&r, "secagg_weight_cap");
    out->dp_distributed = get_u64(&r, "dp_distributed") != 0;
    out->dp_noise_multiplier = get_f32(&r, "dp_noise_multiplier");
    {
        uint64_t zz = get_u64(&r, "secagg_quant_bits"); /* zigzag (sint32) */
        out->secagg_quant_bits = (int32_t)((zz >> 1) ^ (~(zz & 1) + 1));
    }
    out->scaffold = get_u64(&r, "scaffold") != 0;
    out->local_norm = get_u64(&r, "local_norm") != 0;
    out->encrypted = get_u64(&r, "encrypted") != 0;
    if (action > FS_TASK_FINISHED) {
        say(why, whylen, "%s: unknown action %u", msg, action);
        DEC_TRY(FS_ERR_FORMAT);
    }
    out->action = (fs_task_action)action;
    if (!isfinite(out->lr) || !isfinite(out->prox_mu)) {
        say(why, whylen, "%s: lr = %g, prox_mu = %g must be finite", msg, out->lr, out->prox_mu);
        DEC_TRY(FS_ERR_FORMAT);
    }
    DEC_TRY(check_range_u64(msg, "retry_after_ms", out->retry_after_ms, 0, 86400000u, why, whylen));
    DEC_TRY(check_finite_min(msg, "dp_clip", out->dp_clip, 0.0, 0, why, whylen));
    if (out->encrypted) {
        if (out->secure_agg || out->secagg_neighbours) {
            say(why, whylen, "%s: encrypted with secure_agg or neighbour fields set", msg);
            DEC_TRY(FS_ERR_FORMAT);
        }
        if (out->dp_distributed)
            DEC_TRY(check_finite_min(msg, "dp_noise_multiplier", out->dp_noise_multiplier, 0.0, 1, why,
                                     whylen));
        else if (out->dp_noise_multiplier != 0) {
            say(why, whylen, "%s: distributed-DP fields set but dp_distributed is false", msg);
            DEC_TRY(FS_ERR_FORMAT);
        }
        DEC_TRY(check_range_u64(msg, "secagg_sites", out->secagg_sites, 2, 255, why, whylen));
        DEC_TRY(check_range_u64(msg, "secagg_index", out->secagg_index, 0, out->secagg_sites - 1, why,
                                whylen));
        DEC_TRY(check_range_u64(msg, "secagg_threshold", out->secagg_threshold, 2,
                                out->secagg_sites, why, whylen));
        if (seed->len != sizeof out->secagg_round_seed) {
            say(why, whylen, "%s: secagg_round_seed has %zu bytes, expected 32", msg, seed->len);
            DEC_TRY(FS_ERR_FORMAT);
        }
        memcpy(out->secagg_round_seed, seed->p, sizeof out->secagg_round_seed);
        DEC_TRY(check_finite_min(msg, "secagg_clip", out->secagg_clip, 0.0, 1, why, whylen));
        DEC_TRY(check_range_u64(msg, "secagg_weight_cap", out->secagg_weight_cap, 1,
                                FS_WIRE_MAX_SAMPLES, why, whylen));
        if (out->secagg_quant_bits < 0 || out->secagg_quant_bits > 24) {
            say(why, whylen, "%s: secagg_quant_bits = %d is outside [0, 24]", msg,
                (int)out->secagg_quant_bits);
            DEC_TRY(FS_ERR_FORMAT);
        }
    } else if (out->secure_agg) {
        DEC_TRY(check_range_u64(msg, "secagg_sites", out->secagg_sites, 3, 255, why, whylen));
        DEC_TRY(check_range_u64(msg, "secagg_index", out->secagg_index, 0, out->secagg_sites - 1, why,
                                whylen));
        DEC_TRY(check_range_u64(msg, "secagg_neighbours", out->secagg_neighbours, 2,
                                out->secagg_sites - 1, why, whylen));
        DEC_TRY(check_range_u64(msg, "secagg_threshold", out->secagg_threshold, 2,
                                out->secagg_neighbours, why, whylen));
        if (seed->len != sizeof out->secagg_round_seed) {
            say(why, whylen, "%s: secagg_round_seed has %zu bytes, expected 32", msg, seed->len);
            DEC_TRY(FS_ERR_FORMAT);
        }
        memcpy(out->secagg_round_seed, seed->p, sizeof out->secagg_round_seed);
        DEC_TRY(check_finite_min(msg, "secagg_clip", out->secagg_clip, 0.0, 1, why, whylen));
        DEC_TRY(check_range_u64(msg, "secagg_weight_cap", out->secagg_weight_cap, 1,
                                FS_WIRE_MAX_SAMPLES, why, whylen));
        if (out->dp_distributed) {
            DEC_TRY(check_finite_min(msg, "dp_noise_multiplier", out->dp_noise_multiplier, 0.0, 1, why,
                                     whylen));
            if (out->secagg_quant_bits < -60 || out->secagg_quant_bits > 60) {
                say(why, whylen, "%s: secagg_quant_bits = %d is outside [-60, 60]", msg,
                    (int)out->secagg_quant_bits);
                DEC_TRY(FS_ERR_FORMAT);
            }
        } else if (out->dp_noise_multiplier != 0 || out->secagg_quant_bits != 0) {
            say(why, whylen, "%s: distributed-DP fields set but dp_distributed is false", msg);
            DEC_TRY(FS_ERR_FORMAT);
        }
    } else if (out->dp_distributed || out->dp_noise_multiplier != 0 || out->secagg_quant_bits != 0 ||
               out->secagg_sites || out->secagg_threshold || out->secagg_neighbours || seed->len ||
               out->secagg_clip != 0 || out->secagg_weight_cap || out->secagg_index ||
               out->secagg_attempt) {
        say(why, whylen, "%s: secagg fields set but secure_agg and encrypted are false", msg);
        DEC_TRY(FS_ERR_FORMAT);
    }
    if (out->action == FS_TASK_TRAIN) {
        DEC_TRY(check_range_u64(msg, "round", out->round, 1, UINT32_MAX, why, whylen));
        DEC_TRY(check_range_u64(msg, "local_epochs", out->local_epochs, 1, 10000, why, whylen));
        DEC_TRY(check_finite_min(msg, "lr", out->lr, 0.0, 1, why, whylen));
        DEC_TRY(check_finite_min(msg, "prox_mu", out->prox_mu, 0.0, 0, why, whylen));
        DEC_TRY(check_range_u64(msg, "num_params", out->num_params, 1, FS_WIRE_MAX_PARAMS, why, whylen));
    }
    return FS_OK;
}

/* ---- ModelRequest ------------------------------------------------------- */

fs_status fs_wire_encode_model_request(const fs_wire_model_request *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    Fedseg__V1__ModelRequest pm = FEDSEG__V1__MODEL_REQUEST__INIT;
    pm.protocol_version = m->protocol_version;
    pm.round = m->round;
    return pack(&pm.base, out, len);
}

fs_status fs_wire_decode_model_request(const uint8_t *buf, size_t len, fs_wire_model_request *out,
                                       char *why, size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    DEC_TRY(scan(&fedseg__v1__model_request__descriptor, buf, len, &r, why, whylen));
    out->protocol_version = get_u32(&r, "protocol_version");
    DEC_TRY(check_version(out->protocol_version, why, whylen));
    out->round = get_u32(&r, "round");
    return FS_OK;
}

/* ---- ModelChunk --------------------------------------------------------- */

fs_status fs_wire_encode_model_chunk(const fs_wire_model_chunk *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    if (!m->data && m->len) return FS_ERR_ARG;
    Fedseg__V1__ModelChunk pm = FEDSEG__V1__MODEL_CHUNK__INIT;
    pm.round = m->round;
    pm.num_params = m->num_params;
    pm.offset = m->offset;
    pm.data.data = (uint8_t *)m->data;
    pm.data.len = m->len;
    pm.crc32 = m->crc32;
    return pack(&pm.base, out, len);
}

fs_status fs_wire_decode_model_chunk(const uint8_t *buf, size_t len, fs_wire_model_chunk *out,
                                     char *why, size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    const char *msg = "ModelChunk";
    DEC_TRY(scan(&fedseg__v1__model_chunk__descriptor, buf, len, &r, why, whylen));
    out->round = get_u32(&r, "round");
    out->num_params = get_u64(&r, "num_params");
    out->offset = get_u64(&r, "offset");
    out->data = fld(&r, "data")->p;
    out->len = fld(&r, "data")->len;
    out->crc32 = get_u32(&r, "crc32");
    DEC_TRY(check_range_u64(msg, "num_params", out->num_params, 1, FS_WIRE_MAX_PARAMS, why, whylen));
    DEC_TRY(check_chunk(msg, out->offset, out->len, out->num_params, 0, why, whylen));
    return FS_OK;
}

/* ---- UpdateChunk (with its UpdateHeader) -------------------------------- */

fs_status fs_wire_encode_update_chunk(const fs_wire_update_chunk *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    if (!m->data && m->len) return FS_ERR_ARG;
    Fedseg__V1__UpdateHeader ph = FEDSEG__V1__UPDATE_HEADER__INIT;
    Fedseg__V1__UpdateChunk pm = FEDSEG__V1__UPDATE_CHUNK__INIT;
    if (m->has_header) {
        const fs_wire_update_header *h = &m->header;
        ph.protocol_version = h->protocol_version;
        ph.round = h->round;
        ph.num_params = h->num_params;
        ph.num_samples = h->num_samples;
        ph.train_loss = h->train_loss;
        ph.global_dice_wt = h->global_dice_wt;
        ph.global_dice_tc = h->global_dice_tc;
        ph.global_dice_et = h->global_dice_et;
        ph.train_seconds = h->train_seconds;
        ph.crc32 = h->crc32;
        ph.masked = h->masked ? 1 : 0;
        ph.secagg_attempt = h->secagg_attempt;
        ph.encrypted = h->encrypted ? 1 : 0;
        ph.dp_unclipped = h->dp_unclipped ? 1 : 0;
        pm.header = &ph;
    }
    pm.offset = m->offset;
    pm.data.data = (uint8_t *)m->data;
    pm.data.len = m->len;
    return pack(&pm.base, out, len);
}

/* Reads and checks the header sub-message of an UpdateChunk. */
static fs_status decode_update_header(const uint8_t *b, size_t n, fs_wire_update_header *h, char *why,
                                      size_t whylen)
{
    scan_result r;
    const char *msg = "UpdateHeader";
    FS_TRY(scan(&fedseg__v1__update_header__descriptor, b, n, &r, why, whylen));
    h->protocol_version = get_u32(&r, "protocol_version");
    FS_TRY(check_version(h->protocol_version, why, whylen));
    h->round = get_u32(&r, "round");
    h->num_params = get_u64(&r, "num_params");
    h->num_samples = get_u64(&r, "num_samples");
    h->train_loss = get_f32(&r, "train_loss");
    h->global_dice_wt = get_f32(&r, "global_dice_wt");
    h->global_dice_tc = get_f32(&r, "global_dice_tc");
    h->global_dice_et = get_f32(&r, "global_dice_et");
    h->train_seconds = get_f64(&r, "train_seconds");
    h->crc32 = get_u32(&r, "crc32");
    h->masked = get_u64(&r, "masked") != 0;
    h->secagg_attempt = get_u32(&r, "secagg_attempt");
    h->encrypted = get_u64(&r, "encrypted") != 0;
    h->dp_unclipped = get_u64(&r, "dp_unclipped") != 0;
    if (h->masked && h->encrypted) {
        say(why, whylen, "%s: both masked and encrypted", msg);
        return FS_ERR_FORMAT;
    }
    FS_TRY(check_range_u64(msg, "round", h->round, 1, UINT32_MAX, why, whylen));
    FS_TRY(check_range_u64(msg, "num_params", h->num_params, 1, FS_WIRE_MAX_PARAMS, why, whylen));
    FS_TRY(check_range_u64(msg, "num_samples", h->num_samples, 1, FS_WIRE_MAX_SAMPLES, why, whylen));
    FS_TRY(check_finite_min(msg, "train_loss", h->train_loss, 0.0, 0, why, whylen));
    FS_TRY(check_finite_min(msg, "train_seconds", h->train_seconds, 0.0, 0, why, whylen));
    FS_TRY(check_dice(msg, "global_dice_wt", h->global_dice_wt, why, whylen));
    FS_TRY(check_dice(msg, "global_dice_tc", h->global_dice_tc, why, whylen));
    FS_TRY(check_dice(msg, "global_dice_et", h->global_dice_et, why, whylen));
    return FS_OK;
}

fs_status fs_wire_decode_update_chunk(const uint8_t *buf, size_t len, fs_wire_update_chunk *out,
                                      char *why, size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    DEC_TRY(scan(&fedseg__v1__update_chunk__descriptor, buf, len, &r, why, whylen));
    const field_val *hdr = fld(&r, "header");
    if (hdr->seen) {
        out->has_header = 1;
        DEC_TRY(decode_update_header(hdr->p, hdr->len, &out->header, why, whylen));
    }
    out->offset = get_u64(&r, "offset");
    out->data = fld(&r, "data")->p;
    out->len = fld(&r, "data")->len;
    uint64_t limit = out->has_header ? out->header.num_params : FS_WIRE_MAX_PARAMS;
    DEC_TRY(check_chunk("UpdateChunk", out->offset, out->len, limit, out->has_header, why, whylen));
    return FS_OK;
}

/* ---- UpdateAck ---------------------------------------------------------- */

fs_status fs_wire_encode_update_ack(const fs_wire_update_ack *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    Fedseg__V1__UpdateAck pm = FEDSEG__V1__UPDATE_ACK__INIT;
    pm.accepted = m->accepted ? 1 : 0;
    pm.reason = STR(m->reason);
    return pack(&pm.base, out, len);
}

fs_status fs_wire_decode_update_ack(const uint8_t *buf, size_t len, fs_wire_update_ack *out,
                                    char *why, size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    DEC_TRY(scan(&fedseg__v1__update_ack__descriptor, buf, len, &r, why, whylen));
    out->accepted = get_u64(&r, "accepted") != 0;
    DEC_TRY(get_str(&r, "reason", out->reason, sizeof out->reason, why, whylen));
    return FS_OK;
}

/* ---- SecAgg ------------------------------------------------------------ */

fs_status fs_wire_encode_secagg_request(const fs_wire_secagg_request *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    if (!m->payload && m->len) return FS_ERR_ARG;
    Fedseg__V1__SecAggRequest pm = FEDSEG__V1__SEC_AGG_REQUEST__INIT;
    pm.protocol_version = m->protocol_version;
    pm.round = m->round;
    pm.attempt = m->attempt;
    pm.stage = (uint32_t)m->stage;
    pm.payload.data = (uint8_t *)m->payload;
    pm.payload.len = m->len;
    return pack(&pm.base, out, len);
}

fs_status fs_wire_decode_secagg_request(const uint8_t *buf, size_t len, fs_wire_secagg_request *out,
                                        char *why, size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    const char *msg = "SecAggRequest";
    DEC_TRY(scan(&fedseg__v1__sec_agg_request__descriptor, buf, len, &r, why, whylen));
    out->protocol_version = get_u32(&r, "protocol_version");
    DEC_TRY(check_version(out->protocol_version, why, whylen));
    out->round = get_u32(&r, "round");
    out->attempt = get_u32(&r, "attempt");
    uint32_t stage = get_u32(&r, "stage");
    out->payload = fld(&r, "payload")->p;
    out->len = fld(&r, "payload")->len;
    DEC_TRY(check_range_u64(msg, "round", out->round, 1, UINT32_MAX, why, whylen));
    DEC_TRY(check_range_u64(msg, "stage", stage, 0, FS_SA_STAGE_MAX, why, whylen));
    DEC_TRY(check_range_u64(msg, "payload length", out->len, 0, FS_SECAGG_MAX_PAYLOAD, why, whylen));
    out->stage = (fs_secagg_stage)stage;
    return FS_OK;
}

fs_status fs_wire_encode_secagg_reply(const fs_wire_secagg_reply *m, uint8_t **out, size_t *len)
{
    ENC_PROLOGUE();
    if (!m->payload && m->len) return FS_ERR_ARG;
    Fedseg__V1__SecAggReply pm = FEDSEG__V1__SEC_AGG_REPLY__INIT;
    pm.status = (uint32_t)m->status;
    pm.stage = (uint32_t)m->stage;
    pm.payload.data = (uint8_t *)m->payload;
    pm.payload.len = m->len;
    pm.retry_after_ms = m->retry_after_ms;
    pm.reason = (char *)m->reason;
    return pack(&pm.base, out, len);
}

fs_status fs_wire_decode_secagg_reply(const uint8_t *buf, size_t len, fs_wire_secagg_reply *out,
                                      char *why, size_t whylen)
{
    DEC_PROLOGUE();
    scan_result r;
    const char *msg = "SecAggReply";
    DEC_TRY(scan(&fedseg__v1__sec_agg_reply__descriptor, buf, len, &r, why, whylen));
    uint32_t status = get_u32(&r, "status"), stage = get_u32(&r, "stage");
    out->payload = fld(&r, "payload")->p;
    out->len = fld(&r, "payload")->len;
    out->retry_after_ms = get_u32(&r, "retry_after_ms");
    DEC_TRY(get_str(&r, "reason", out->reason, sizeof out->reason, why, whylen));
    DEC_TRY(check_range_u64(msg, "status", status, 0, FS_SA_ABANDONED, why, whylen));
    DEC_TRY(check_range_u64(msg, "stage", stage, 0, FS_SA_STAGE_MAX, why, whylen));
    DEC_TRY(check_range_u64(msg, "payload length", out->len, 0, FS_SECAGG_MAX_PAYLOAD, why, whylen));
    DEC_TRY(check_range_u64(msg, "retry_after_ms", out->retry_after_ms, 0, 86400000u, why, whylen));
    out->status = (fs_secagg_reply_status)status;
    out->stage = (fs_secagg_stage)stage;
    return FS_OK;
}

/* ---- float helpers ------------------------------------------------------ */

fs_status fs_wire_check_finite(const uint8_t *data, size_t len, size_t *bad_index)
{
    if (len % 4 || (!data && len)) return FS_ERR_ARG;
    size_t n = len / 4;
    /* Blocks of 1024 values: an OR of "exponent all ones" flags with no
     * branch inside, so the compiler vectorises it; a hit is then located
     * within its block. */
    for (size_t b0 = 0; b0 < n; b0 += 1024) {
        size_t b1 = n - b0 < 1024 ? n : b0 + 1024;
        uint32_t any = 0;
        for (size_t i = b0; i < b1; i++) {
            const uint8_t *p = data + 4 * i;
            uint32_t bits = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                            (uint32_t)p[3] << 24;
            any |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
        }
        if (!any) continue;
        for (size_t i = b0; i < b1; i++) {
            if ((data[4 * i + 3] & 0x7f) == 0x7f && (data[4 * i + 2] & 0x80)) {
                if (bad_index) *bad_index = i;
                return FS_ERR_NUMERIC;
            }
        }
    }
    return FS_OK;
}

uint32_t fs_wire_crc32_bytes(uint32_t crc, const uint8_t *data, size_t len)
{
    /* ISA-L's carry-less-multiply CRC-32 (gzip polynomial, reflected): the same
     * value as zlib's crc32(), chained the same way, several times faster. */
    return crc32_gzip_refl(crc, data, (uint64_t)len);
}

static int host_is_le(void)
{
    uint16_t x = 1;
    return *(uint8_t *)&x == 1;
}

uint32_t fs_wire_crc32_f32(uint32_t crc, const float *v, size_t n)
{
    if (host_is_le()) return fs_wire_crc32_bytes(crc, (const uint8_t *)v, n * 4);
    uint8_t tmp[4096];
    for (size_t i = 0; i < n;) {
        size_t k = 0;
        for (; k < sizeof tmp / 4 && i < n; k++, i++) {
            uint32_t bits;
            memcpy(&bits, &v[i], 4);
            for (int j = 0; j < 4; j++) tmp[4 * k + j] = (uint8_t)(bits >> (8 * j));
        }
        crc = fs_wire_crc32_bytes(crc, tmp, 4 * k);
    }
    return crc;
}

void fs_wire_copy_f32(float *dst, const uint8_t *src, size_t len)
{
    if (host_is_le()) {
        if (len) memcpy(dst, src, len);
        return;
    }
    for (size_t i = 0; i < len / 4; i++) {
        uint32_t bits = (uint32_t)get_le(src + 4 * i, 4);
        memcpy(&dst[i], &bits, 4);
    }
}

fs_rpc_code fs_wire_rpc_code(fs_status s)
{
    return s == FS_ERR_MISMATCH ? FS_RPC_FAILED_PRECONDITION : FS_RPC_INVALID_ARGUMENT;
}

const char *fs_task_action_str(fs_task_action a)
{
    switch (a) {
    case FS_TASK_WAIT: return "wait";
    case FS_TASK_TRAIN: return "train";
    case FS_TASK_FINISHED: return "finished";
    }
    return "unknown";
}
