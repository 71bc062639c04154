/*
 * common/he_wire.c — the bytes of every homomorphic-encryption object that
 * crosses the network (public-key shares, the collective key, Shamir shares,
 * ciphertexts, partial decryptions, the c1 halves of the summed ciphertext
 * sent with a decryption request), written and strictly parsed here.
 *
 * Layout (little-endian; the packing code assumes a little-endian host), 40-byte header, packed residues, digest:
 *   0  "FSHE"        4  version (1)    5  kind        6  primes (2)  7  bits (47)
 *   8  N (u32)       12 from (u32)     16 to (u32)    20 index (u32)
 *   24 key id (8)    32 set id (8)
 *   40 residues: polys × primes × N values of 47 bits each, packed LSB first
 *      (a polynomial is 48,128 bytes)
 *   end−32 BLAKE2b-256 (libsodium crypto_generichash) over everything before it
 * The length is fixed by the kind; every residue must be below its prime.
 * The digest catches truncation and corruption (not an active attacker, whom
 * mutual TLS keeps out).
 *
 * Tested by tests/test_he.c (round trips, every truncation length class, a
 * flipped bit in each region, residues ≥ q with a valid digest, wrong kind).
 */
#include "common/he.h"
#include "common/log.h"

#include <sodium.h>
#include <string.h>

#define HDR_BYTES 40u
#define DIGEST_BYTES 32u
#define POLY_BYTES ((size_t)FS_HE_POLY_WORDS * FS_HE_QBITS / 8u)
#define WIRE_VERSION 1u

static const uint64_t wire_q[FS_HE_L] = { FS_HE_Q0, FS_HE_Q1 };

static unsigned polys_of(fs_he_obj_kind kind)
{
    switch (kind) {
    case FS_HE_OBJ_PK_SHARE: case FS_HE_OBJ_PUBKEY: case FS_HE_OBJ_SHAMIR:
    case FS_HE_OBJ_PARTIAL: case FS_HE_OBJ_C1: return 1;
    case FS_HE_OBJ_CT: return 2;
    }
    return 0;
}

static const char *kind_name(unsigned kind)
{
    switch (kind) {
    case FS_HE_OBJ_PK_SHARE: return "public-key share";
    case FS_HE_OBJ_PUBKEY: return "collective public key";
    case FS_HE_OBJ_SHAMIR: return "key-share share";
    case FS_HE_OBJ_CT: return "ciphertext";
    case FS_HE_OBJ_PARTIAL: return "partial decryption";
    case FS_HE_OBJ_C1: return "decryption request (c1)";
    }
    return "unknown object";
}

size_t fs_he_wire_bytes(fs_he_obj_kind kind)
{
    unsigned p = polys_of(kind);
    return p ? HDR_BYTES + p * POLY_BYTES + DIGEST_BYTES : 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

fs_status fs_he_write(const fs_he_hdr *h, const uint64_t *polys, uint8_t *out, size_t cap)
{
    const unsigned np = h ? polys_of(h->kind) : 0;
    if (!np || !polys || !out) {
        fs_log_error("he: write: unknown object kind or NULL buffer");
        return FS_ERR_ARG;
    }
    const size_t total = fs_he_wire_bytes(h->kind);
    if (cap < total) {
        fs_log_error("he: write: %s needs %zu bytes, buffer has %zu", kind_name(h->kind), total, cap);
        return FS_ERR_ARG;
    }
    const size_t nres = (size_t)np * FS_HE_POLY_WORDS;
    for (size_t i = 0; i < nres; i++)
        if (polys[i] >= wire_q[(i / FS_HE_N) % FS_HE_L]) {
            fs_log_error("he: write: %s residue %zu is not reduced", kind_name(h->kind), i);
            return FS_ERR_ARG;
        }
    memcpy(out, "FSHE", 4);
    out[4] = WIRE_VERSION;
    out[5] = (uint8_t)h->kind;
    out[6] = FS_HE_L;
    out[7] = FS_HE_QBITS;
    put32(out + 8, FS_HE_N);
    put32(out + 12, h->from);
    put32(out + 16, h->to);
    put32(out + 20, h->index);
    memcpy(out + 24, h->key_id, FS_HE_KEYID_BYTES);
    memcpy(out + 32, h->set_id, FS_HE_KEYID_BYTES);
    /* Value i occupies bits [47·i, 47·i + 47) of the payload: one unaligned
     * 8-byte read-modify-write at byte 47·i/8 (shift ≤ 7, so 54 bits). The
     * last store may reach into the digest area, which is written after. */
    uint8_t *p = out + HDR_BYTES;
    memset(p, 0, total - HDR_BYTES);
    for (size_t i = 0; i < nres; i++) {
        const size_t bit = i * FS_HE_QBITS;
        uint64_t word;
        memcpy(&word, p + bit / 8, 8);
        word |= polys[i] << (bit % 8);
        memcpy(p + bit / 8, &word, 8);
    }
    crypto_generichash(out + total - DIGEST_BYTES, DIGEST_BYTES, out, total - DIGEST_BYTES, NULL, 0);
    return FS_OK;
}

fs_status fs_he_read(const uint8_t *in, size_t len, fs_he_obj_kind want, fs_he_hdr *h,
                     uint64_t *polys)
{
    if (!in || !h || !polys || !polys_of(want)) {
        fs_log_error("he: read: NULL buffer or unknown expected kind");
        return FS_ERR_ARG;
    }
    if (len < HDR_BYTES) {
        fs_log_error("he: read: %zu bytes is shorter than the %u-byte header (truncated)", len,
                     HDR_BYTES);
        return FS_ERR_FORMAT;
    }
    if (memcmp(in, "FSHE", 4)) {
        fs_log_error("he: read: not a fedseg HE object (bad magic)");
        return FS_ERR_FORMAT;
    }
    if (in[4] != WIRE_VERSION) {
        fs_log_error("he: read: wire version %u, this build reads version %u", in[4], WIRE_VERSION);
        return FS_ERR_FORMAT;
    }
    if (!polys_of((fs_he_obj_kind)in[5])) {
        fs_log_error("he: read: unknown object kind %u", in[5]);
        return FS_ERR_FORMAT;
    }
    if (in[6] != FS_HE_L || in[7] != FS_HE_QBITS || get32(in + 8) != FS_HE_N) {
        fs_log_error("he: read: parameters (primes %u, bits %u, N %u) differ from this build's "
                     "(%u, %u, %u)", in[6], in[7], get32(in + 8), FS_HE_L, FS_HE_QBITS, FS_HE_N);
        return FS_ERR_MISMATCH;
    }
    const size_t total = fs_he_wire_bytes((fs_he_obj_kind)in[5]);
    if (len != total) {
        fs_log_error("he: read: %s of %zu bytes, expected %zu (%s)", kind_name(in[5]), len, total,
                     len < total ? "truncated" : "trailing bytes");
        return FS_ERR_FORMAT;
    }
    uint8_t d[DIGEST_BYTES];
    crypto_generichash(d, sizeof d, in, total - DIGEST_BYTES, NULL, 0);
    if (sodium_memcmp(d, in + total - DIGEST_BYTES, DIGEST_BYTES) != 0) {
        fs_log_error("he: read: %s digest mismatch (corrupted or tampered)", kind_name(in[5]));
        return FS_ERR_CHECKSUM;
    }
    if (in[5] != (uint8_t)want) {
        fs_log_error("he: read: got a %s where a %s was expected", kind_name(in[5]),
                     kind_name(want));
        return FS_ERR_MISMATCH;
    }
    const size_t nres = (size_t)polys_of(want) * FS_HE_POLY_WORDS;
    const uint8_t *p = in + HDR_BYTES;
    const uint64_t mask = (1ull << FS_HE_QBITS) - 1;
    for (size_t i = 0; i < nres; i++) {
        /* An 8-byte read at byte 47·i/8 holds the whole value; the last one
         * reads into the digest, inside the buffer. */
        const size_t bit = i * FS_HE_QBITS;
        uint64_t word;
        memcpy(&word, p + bit / 8, 8);
        const uint64_t v = (word >> (bit % 8)) & mask;
        if (v >= wire_q[(i / FS_HE_N) % FS_HE_L]) {
            fs_log_error("he: read: %s residue %zu = %llu is not below its prime", kind_name(want),
                         i, (unsigned long long)v);
            return FS_ERR_FORMAT;
        }
        polys[i] = v;
    }
    h->kind = want;
    h->from = get32(in + 12);
    h->to = get32(in + 16);
    h->index = get32(in + 20);
    memcpy(h->key_id, in + 24, FS_HE_KEYID_BYTES);
    memcpy(h->set_id, in + 32, FS_HE_KEYID_BYTES);
    return FS_OK;
}

void fs_he_set_id(const uint32_t *set, uint32_t size, uint8_t out[FS_HE_KEYID_BYTES])
{
    crypto_generichash_state hs;
    uint8_t d[32], le[4];
    crypto_generichash_init(&hs, NULL, 0, sizeof d);
    for (uint32_t i = 0; i < size; i++) {
        put32(le, set[i]);
        crypto_generichash_update(&hs, le, 4);
    }
    crypto_generichash_final(&hs, d, sizeof d);
    memcpy(out, d, FS_HE_KEYID_BYTES);
}
