/*
 * common/secagg_msg.c — see secagg_msg.h. Layout: a bounds-checked byte
 * writer and reader, the header, then per message an encoder and a decoder.
 * A decoder reads with the reader (which never moves past the end), checks
 * each value as it goes, and finally refuses any byte left over.
 * Tested by tests/test_secagg.c and tests/fuzz/fuzz_secagg.c.
 */
#include "common/secagg_msg.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t MAGIC[4] = {'F', 'S', 'S', 'A'};

static const char *const TYPE_NAME[7] = {"?", "ADVERTISE", "KEYS", "SHARES", "RELAY",
                                         "UNMASK_REQ", "UNMASK_RSP"};

/* ---- writer ---------------------------------------------------------------- */

typedef struct { uint8_t *p; size_t n, cap; } wbuf;

static void put(wbuf *w, const void *src, size_t n)
{
    memcpy(w->p + w->n, src, n);
    w->n += n;
}
static void put_u8(wbuf *w, uint8_t v) { put(w, &v, 1); }
static void put_u32(wbuf *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}
static void put_u64(wbuf *w, uint64_t v)
{
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}

/* Allocates the exact size (header + body) and writes the header. */
static fs_status begin(wbuf *w, size_t body, int type, uint64_t round, uint32_t n, uint32_t from)
{
    w->cap = FS_SECAGG_HDR_BYTES + body;
    w->n = 0;
    w->p = malloc(w->cap);
    if (!w->p) return FS_ERR_NOMEM;
    put(w, MAGIC, 4);
    put_u8(w, FS_SECAGG_VERSION);
    put_u8(w, (uint8_t)type);
    put_u8(w, 0);
    put_u8(w, 0);
    put_u64(w, round);
    put_u32(w, n);
    put_u32(w, from);
    return FS_OK;
}

/* Hands the finished buffer to the caller. */
static fs_status finish(wbuf *w, uint8_t **buf, size_t *len)
{
    if (w->n != w->cap) { /* a size computation bug, never input-driven */
        sodium_memzero(w->p, w->cap);
        free(w->p);
        return FS_ERR_ARG;
    }
    *buf = w->p;
    *len = w->n;
    return FS_OK;
}

/* ---- reader ------------------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t n, pos;
    int type;
    char *why;
    size_t whylen;
} rbuf;

static void say(char *why, size_t whylen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t whylen, const char *fmt, ...)
{
    if (!why || !whylen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

/* Takes n bytes; 0 (with why) when fewer remain. */
static int get(rbuf *r, void *dst, size_t n, const char *field)
{
    if (r->n - r->pos < n) {
        say(r->why, r->whylen, "secagg %s: truncated at %s (%zu of %zu bytes present)",
            TYPE_NAME[r->type], field, r->n - r->pos, n);
        return 0;
    }
    memcpy(dst, r->p + r->pos, n);
    r->pos += n;
    return 1;
}
static int get_u32(rbuf *r, uint32_t *v, const char *field)
{
    uint8_t b[4];
    if (!get(r, b, 4, field)) return 0;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return 1;
}

/* A count field, at most max, whose entries of entry_bytes each still fit
 * in what is left (so a huge count is refused before any loop). */
static int get_count(rbuf *r, uint32_t *c, uint32_t max, size_t entry_bytes, const char *field)
{
    if (!get_u32(r, c, field)) return 0;
    if (*c > max) {
        say(r->why, r->whylen, "secagg %s: %s %u exceeds %u", TYPE_NAME[r->type], field, *c, max);
        return 0;
    }
    if ((size_t)*c * entry_bytes > r->n - r->pos) {
        say(r->why, r->whylen, "secagg %s: truncated: %s %u needs %zu bytes, %zu present",
            TYPE_NAME[r->type], field, *c, (size_t)*c * entry_bytes, r->n - r->pos);
        return 0;
    }
    return 1;
}

/* A site index below n, above prev (strictly ascending lists; prev = -1
 * for the first). */
static int get_site(rbuf *r, uint32_t *v, uint32_t n, int64_t prev, const char *field)
{
    if (!get_u32(r, v, field)) return 0;
    if (*v >= n) {
        say(r->why, r->whylen, "secagg %s: %s %u is not a site (n = %u)", TYPE_NAME[r->type], field,
            *v, n);
        return 0;
    }
    if ((int64_t)*v <= prev) {
        say(r->why, r->whylen, "secagg %s: %s %u out of order or repeated", TYPE_NAME[r->type],
            field, *v);
        return 0;
    }
    return 1;
}

/* Reads and checks the header; *from receives the sender. from_server: the
 * sender must be FS_SECAGG_SERVER, else a site index below n. */
static fs_status header(rbuf *r, const uint8_t *b, size_t len, int type, uint64_t round, uint32_t n,
                        int from_server, uint32_t *from, char *why, size_t whylen)
{
    r->p = b;
    r->n = len;
    r->pos = 0;
    r->type = type;
    r->why = why;
    r->whylen = whylen;
    if (why && whylen) why[0] = '\0';
    if ((!b && len) || n == 0 || n > FS_SECAGG_MAX_SITES) return FS_ERR_ARG;
    uint8_t h[FS_SECAGG_HDR_BYTES];
    if (!get(r, h, sizeof h, "header")) return FS_ERR_FORMAT;
    if (memcmp(h, MAGIC, 4) != 0) {
        say(why, whylen, "secagg %s: not a secure-aggregation message (bad magic)", TYPE_NAME[type]);
        return FS_ERR_FORMAT;
    }
    if (h[4] != FS_SECAGG_VERSION) {
        say(why, whylen, "secagg %s: protocol version %u, this fedseg speaks %u", TYPE_NAME[type],
            h[4], FS_SECAGG_VERSION);
        return FS_ERR_MISMATCH;
    }
    if (h[5] != type) {
        say(why, whylen, "secagg: expected a %s message, got type %u", TYPE_NAME[type], h[5]);
        return FS_ERR_FORMAT;
    }
    if (h[6] || h[7]) {
        say(why, whylen, "secagg %s: reserved bytes are not zero", TYPE_NAME[type]);
        return FS_ERR_FORMAT;
    }
    uint64_t rr = 0;
    for (int i = 7; i >= 0; i--) rr = rr << 8 | h[8 + i];
    uint32_t nn = (uint32_t)h[16] | (uint32_t)h[17] << 8 | (uint32_t)h[18] << 16 | (uint32_t)h[19] << 24;
    uint32_t fr = (uint32_t)h[20] | (uint32_t)h[21] << 8 | (uint32_t)h[22] << 16 | (uint32_t)h[23] << 24;
    if (rr != round) {
        say(why, whylen, "secagg %s: round %llu, expected %llu", TYPE_NAME[type],
            (unsigned long long)rr, (unsigned long long)round);
        return FS_ERR_MISMATCH;
    }
    if (nn != n) {
        say(why, whylen, "secagg %s: %u sites, expected %u", TYPE_NAME[type], nn, n);
        return FS_ERR_MISMATCH;
    }
    if (from_server ? fr != FS_SECAGG_SERVER : fr >= n) {
        say(why, whylen, "secagg %s: sender %u is not %s", TYPE_NAME[type], fr,
            from_server ? "the server" : "a site");
        return FS_ERR_FORMAT;
    }
    *from = fr;
    return FS_OK;
}

/* FS_OK when every byte was read, else FS_ERR_FORMAT (trailing bytes). */
static fs_status end(rbuf *r)
{
    if (r->pos != r->n) {
        say(r->why, r->whylen, "secagg %s: %zu trailing byte(s) after the message",
            TYPE_NAME[r->type], r->n - r->pos);
        return FS_ERR_FORMAT;
    }
    return FS_OK;
}

#define KEYENT_BYTES (4 + 3 * FS_SECAGG_KEY_BYTES)
#define CTENT_BYTES (4 + FS_SECAGG_AEAD_NONCE + FS_SECAGG_SHARE_CT)
#define SHAREENT_BYTES (4 + 1 + FS_SECAGG_KEY_BYTES)

/* ---- ADVERTISE ------------------------------------------------------------------ */

fs_status fs_secagg_enc_advertise(uint64_t round, uint32_t n, const fs_secagg_msg_advertise *m,
                                  uint8_t **buf, size_t *len)
{
    wbuf w;
    FS_TRY(begin(&w, 3 * FS_SECAGG_KEY_BYTES, FS_SECAGG_MSG_ADVERTISE, round, n, m->from));
    put(&w, m->k.c_pk, 32);
    put(&w, m->k.s_pk, 32);
    put(&w, m->k.commit, 32);
    return finish(&w, buf, len);
}

fs_status fs_secagg_dec_advertise(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                                  fs_secagg_msg_advertise *m, char *why, size_t whylen)
{
    rbuf r;
    if (!m) return FS_ERR_ARG;
    FS_TRY(header(&r, b, len, FS_SECAGG_MSG_ADVERTISE, round, n, 0, &m->from, why, whylen));
    m->k.site = m->from;
    if (!get(&r, m->k.c_pk, 32, "c_pk") || !get(&r, m->k.s_pk, 32, "s_pk") ||
        !get(&r, m->k.commit, 32, "commit"))
        return FS_ERR_FORMAT;
    return end(&r);
}

/* ---- KEYS ------------------------------------------------------------------------ */

fs_status fs_secagg_enc_keys(uint64_t round, uint32_t n, const fs_secagg_msg_keys *m, uint8_t **buf,
                             size_t *len)
{
    if (m->count > FS_SECAGG_MAX_SITES) return FS_ERR_ARG;
    wbuf w;
    FS_TRY(begin(&w, 4 + (size_t)m->count * KEYENT_BYTES, FS_SECAGG_MSG_KEYS, round, n,
                 FS_SECAGG_SERVER));
    put_u32(&w, m->count);
    for (uint32_t i = 0; i < m->count; i++) {
        put_u32(&w, m->e[i].site);
        put(&w, m->e[i].c_pk, 32);
        put(&w, m->e[i].s_pk, 32);
        put(&w, m->e[i].commit, 32);
    }
    return finish(&w, buf, len);
}

fs_status fs_secagg_dec_keys(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                             fs_secagg_msg_keys *m, char *why, size_t whylen)
{
    rbuf r;
    uint32_t from;
    if (!m) return FS_ERR_ARG;
    FS_TRY(header(&r, b, len, FS_SECAGG_MSG_KEYS, round, n, 1, &from, why, whylen));
    if (!get_count(&r, &m->count, n, KEYENT_BYTES, "count")) return FS_ERR_FORMAT;
    for (uint32_t i = 0; i < m->count; i++) {
        fs_secagg_keyent *e = &m->e[i];
        if (!get_site(&r, &e->site, n, i ? (int64_t)m->e[i - 1].site : -1, "site") ||
            !get(&r, e->c_pk, 32, "c_pk") || !get(&r, e->s_pk, 32, "s_pk") ||
            !get(&r, e->commit, 32, "commit"))
            return FS_ERR_FORMAT;
    }
    return end(&r);
}

/* ---- SHARES and RELAY (same entries; peer = receiver resp. sender) ---------------- */

static void put_ctents(wbuf *w, const fs_secagg_ctent *e, uint32_t count)
{
    put_u32(w, count);
    for (uint32_t i = 0; i < count; i++) {
        put_u32(w, e[i].peer);
        put(w, e[i].nonce, FS_SECAGG_AEAD_NONCE);
        put(w, e[i].ct, FS_SECAGG_SHARE_CT);
    }
}

/* Reads count and the entries; peers ascending, below n, never `self`. */
static int get_ctents(rbuf *r, fs_secagg_ctent *e, uint32_t *count, uint32_t n, uint32_t self,
                      const char *peer_name)
{
    if (!get_count(r, count, n - 1, CTENT_BYTES, "count")) return 0;
    for (uint32_t i = 0; i < *count; i++) {
        if (!get_site(r, &e[i].peer, n, i ? (int64_t)e[i - 1].peer : -1, peer_name)) return 0;
        if (e[i].peer == self) {
            say(r->why, r->whylen, "secagg %s: site %u sends a share to itself", TYPE_NAME[r->type],
                self);
            return 0;
        }
        if (!get(r, e[i].nonce, FS_SECAGG_AEAD_NONCE, "nonce") ||
            !get(r, e[i].ct, FS_SECAGG_SHARE_CT, "ciphertext"))
            return 0;
    }
    return 1;
}

fs_status fs_secagg_enc_shares(uint64_t round, uint32_t n, const fs_secagg_msg_shares *m,
                               uint8_t **buf, size_t *len)
{
    if (m->count > FS_SECAGG_MAX_SITES) return FS_ERR_ARG;
    wbuf w;
    FS_TRY(begin(&w, 4 + (size_t)m->count * CTENT_BYTES, FS_SECAGG_MSG_SHARES, round, n, m->from));
    put_ctents(&w, m->e, m->count);
    return finish(&w, buf, len);
}

fs_status fs_secagg_dec_shares(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                               fs_secagg_msg_shares *m, char *why, size_t whylen)
{
    rbuf r;
    if (!m) return FS_ERR_ARG;
    FS_TRY(header(&r, b, len, FS_SECAGG_MSG_SHARES, round, n, 0, &m->from, why, whylen));
    if (!get_ctents(&r, m->e, &m->count, n, m->from, "receiver")) return FS_ERR_FORMAT;
    return end(&r);
}

fs_status fs_secagg_enc_relay(uint64_t round, uint32_t n, const fs_secagg_msg_relay *m,
                              uint8_t **buf, size_t *len)
{
    if (m->count > FS_SECAGG_MAX_SITES) return FS_ERR_ARG;
    wbuf w;
    FS_TRY(begin(&w, 8 + (size_t)m->count * CTENT_BYTES, FS_SECAGG_MSG_RELAY, round, n,
                 FS_SECAGG_SERVER));
    put_u32(&w, m->to);
    put_ctents(&w, m->e, m->count);
    return finish(&w, buf, len);
}

fs_status fs_secagg_dec_relay(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                              fs_secagg_msg_relay *m, char *why, size_t whylen)
{
    rbuf r;
    uint32_t from;
    if (!m) return FS_ERR_ARG;
    FS_TRY(header(&r, b, len, FS_SECAGG_MSG_RELAY, round, n, 1, &from, why, whylen));
    if (!get_site(&r, &m->to, n, -1, "receiver")) return FS_ERR_FORMAT;
    if (!get_ctents(&r, m->e, &m->count, n, m->to, "sender")) return FS_ERR_FORMAT;
    return end(&r);
}

/* ---- UNMASK_REQ ------------------------------------------------------------------ */

fs_status fs_secagg_enc_unmask_req(uint64_t round, uint32_t n, const fs_secagg_msg_unmask_req *m,
                                   uint8_t **buf, size_t *len)
{
    if (m->n_alive > FS_SECAGG_MAX_SITES || m->n_dropped > FS_SECAGG_MAX_SITES) return FS_ERR_ARG;
    wbuf w;
    FS_TRY(begin(&w, 8 + 4 * ((size_t)m->n_alive + m->n_dropped), FS_SECAGG_MSG_UNMASK_REQ, round,
                 n, FS_SECAGG_SERVER));
    put_u32(&w, m->n_alive);
    for (uint32_t i = 0; i < m->n_alive; i++) put_u32(&w, m->alive[i]);
    put_u32(&w, m->n_dropped);
    for (uint32_t i = 0; i < m->n_dropped; i++) put_u32(&w, m->dropped[i]);
    return finish(&w, buf, len);
}

fs_status fs_secagg_dec_unmask_req(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                                   fs_secagg_msg_unmask_req *m, char *why, size_t whylen)
{
    rbuf r;
    uint32_t from;
    if (!m) return FS_ERR_ARG;
    FS_TRY(header(&r, b, len, FS_SECAGG_MSG_UNMASK_REQ, round, n, 1, &from, why, whylen));
    uint8_t alive[FS_SECAGG_MAX_SITES] = {0};
    if (!get_count(&r, &m->n_alive, n, 4, "n_alive")) return FS_ERR_FORMAT;
    for (uint32_t i = 0; i < m->n_alive; i++) {
        if (!get_site(&r, &m->alive[i], n, i ? (int64_t)m->alive[i - 1] : -1, "alive site"))
            return FS_ERR_FORMAT;
        alive[m->alive[i]] = 1;
    }
    if (!get_count(&r, &m->n_dropped, n, 4, "n_dropped")) return FS_ERR_FORMAT;
    for (uint32_t i = 0; i < m->n_dropped; i++) {
        if (!get_site(&r, &m->dropped[i], n, i ? (int64_t)m->dropped[i - 1] : -1, "dropped site"))
            return FS_ERR_FORMAT;
        if (alive[m->dropped[i]]) {
            say(why, whylen, "secagg UNMASK_REQ: site %u is listed both alive and dropped",
                m->dropped[i]);
            return FS_ERR_FORMAT;
        }
    }
    return end(&r);
}

/* ---- UNMASK_RSP ------------------------------------------------------------------ */

fs_status fs_secagg_enc_unmask_rsp(uint64_t round, uint32_t n, const fs_secagg_msg_unmask_rsp *m,
                                   uint8_t **buf, size_t *len)
{
    if (m->count > FS_SECAGG_MAX_SITES) return FS_ERR_ARG;
    wbuf w;
    FS_TRY(begin(&w, 4 + (size_t)m->count * SHAREENT_BYTES, FS_SECAGG_MSG_UNMASK_RSP, round, n,
                 m->from));
    put_u32(&w, m->count);
    for (uint32_t i = 0; i < m->count; i++) {
        put_u32(&w, m->e[i].owner);
        put_u8(&w, m->e[i].kind);
        put(&w, m->e[i].share, FS_SECAGG_KEY_BYTES);
    }
    return finish(&w, buf, len);
}

fs_status fs_secagg_dec_unmask_rsp(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                                   fs_secagg_msg_unmask_rsp *m, char *why, size_t whylen)
{
    rbuf r;
    if (!m) return FS_ERR_ARG;
    FS_TRY(header(&r, b, len, FS_SECAGG_MSG_UNMASK_RSP, round, n, 0, &m->from, why, whylen));
    if (!get_count(&r, &m->count, n, SHAREENT_BYTES, "count")) return FS_ERR_FORMAT;
    for (uint32_t i = 0; i < m->count; i++) {
        fs_secagg_shareent *e = &m->e[i];
        if (!get_site(&r, &e->owner, n, i ? (int64_t)m->e[i - 1].owner : -1, "owner") ||
            !get(&r, &e->kind, 1, "kind"))
            return FS_ERR_FORMAT;
        if (e->kind > 1) {
            say(why, whylen, "secagg UNMASK_RSP: share kind %u is neither 0 (b) nor 1 (s)", e->kind);
            return FS_ERR_FORMAT;
        }
        if (!get(&r, e->share, FS_SECAGG_KEY_BYTES, "share")) return FS_ERR_FORMAT;
    }
    return end(&r);
}
