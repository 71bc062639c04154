/*
 * common/he_wire.c — the bytes of every homomorphic-encryption object that
 * crosses the network (public-key shares, the collective key, Shamir shares,
 * ciphertexts, partial decryptions, the c1 halves of the summed ciphertext
 * sent with a decryption request), written and strictly parsed here.
 *
 * Layout (little-endian; the packing code assumes a little-endian host), 40-byte header, packed residues, check:
 *   0  "FSHE"        4  version (2)    5  kind        6  primes (2)  7  bits (47)
 *   8  N (u32)       12 from (u32)     16 to (u32)    20 index (u32)
 *   24 key id (8)    32 set id (8)
 *   40 residues: polys × primes × N values of 47 bits each, packed LSB first
 *      (a polynomial is 48,128 bytes)
 *   end−8  CRC-64 (ECMA-182 polynomial, reflected, initial value 0: ISA-L's
 *          crc64_ecma_refl(0, ·)) over everything before it, little-endian
 * The length is fixed by the kind; every residue must be below its prime.
 * The check catches truncation and corruption — every burst of up to 64 bits,
 * any other corruption with probability 1 − 2^−64 — not an active attacker,
 * whom mutual TLS keeps out (an unkeyed cryptographic digest would not stop
 * one either: it can be recomputed). Version 1 carried an unkeyed BLAKE2b-256
 * digest; at about 1 GB/s it was most of the aggregator's work per
 * ciphertext, where ISA-L's carry-less-multiply CRC runs near memory speed.
 *
 * Tested by tests/test_he.c (round trips, every truncation length class, a
 * flipped bit in each region, residues ≥ q with a valid check, wrong kind,
 * the CRC-64 against a known answer).
 */
#include "common/he.h"
#include "common/log.h"

#include <isa-l/crc64.h>
#include <sodium.h>
#include <string.h>

#define HDR_BYTES 40u
#define DIGEST_BYTES 8u
#define POLY_BYTES ((size_t)FS_HE_POLY_WORDS * FS_HE_QBITS / 8u)
#define WIRE_VERSION 2u

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

void fs_he_wire_put_check(uint8_t *obj, size_t len)
{
    const uint64_t c = crc64_ecma_refl(0, obj, len - DIGEST_BYTES);
    for (unsigned i = 0; i < DIGEST_BYTES; i++) obj[len - DIGEST_BYTES + i] = (uint8_t)(c >> (8 * i));
}

int fs_he_wire_check_ok(const uint8_t *obj, size_t len)
{
    const uint64_t c = crc64_ecma_refl(0, obj, len - DIGEST_BYTES);
    uint64_t got = 0;
    for (unsigned i = 0; i < DIGEST_BYTES; i++) got |= (uint64_t)obj[len - DIGEST_BYTES + i] << (8 * i);
    return got == c;
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
    /* Value i occupies bits [47·i, 47·i + 47) of the payload: eight values
     * fill exactly 47 bytes, written from a 128-bit accumulator (residue
     * vectors are N = 4096 values long, a multiple of 8). */
    uint8_t *p = out + HDR_BYTES;
    for (size_t g = 0; g < nres; g += 8, p += FS_HE_QBITS) {
        unsigned __int128 acc = 0;
        unsigned nb = 0, at = 0;
        for (unsigned k = 0; k < 8; k++) {
            acc |= (unsigned __int128)polys[g + k] << nb;
            nb += FS_HE_QBITS;
            if (nb >= 64) {
                const uint64_t lo = (uint64_t)acc;
                memcpy(p + at, &lo, 8);
                at += 8;
                acc >>= 64;
                nb -= 64;
            }
        }
        for (unsigned b = 0; b < nb / 8; b++) p[at + b] = (uint8_t)(acc >> (8 * b));
    }
    fs_he_wire_put_check(out, total);
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
    if (!fs_he_wire_check_ok(in, total)) {
        fs_log_error("he: read: %s fails its CRC-64 check (corrupted or truncated in transit "
                     "or storage)", kind_name(in[5]));
        return FS_ERR_CHECKSUM;
    }
    if (in[5] != (uint8_t)want) {
        fs_log_error("he: read: got a %s where a %s was expected", kind_name(in[5]),
                     kind_name(want));
        return FS_ERR_MISMATCH;
    }
    /* Per residue vector (N values below one prime): eight values in 47
     * bytes, each read with one unaligned 8-byte load at byte ⌊47k/8⌋ (the
     * last load of the payload reads into the check, inside the buffer);
     * out-of-range values are looked for after the vector. */
    const size_t nvec = (size_t)polys_of(want) * FS_HE_L;
    const uint8_t *p = in + HDR_BYTES;
    const uint64_t mask = (1ull << FS_HE_QBITS) - 1;
    for (size_t vi = 0; vi < nvec; vi++) {
        const uint64_t q = wire_q[vi % FS_HE_L];
        uint64_t *out = polys + vi * FS_HE_N, over = 0;
        for (size_t g = 0; g < FS_HE_N; g += 8, p += FS_HE_QBITS) {
            for (unsigned k = 0; k < 8; k++) {
                uint64_t word;
                memcpy(&word, p + (FS_HE_QBITS * k) / 8, 8);
                const uint64_t v = (word >> ((FS_HE_QBITS * k) % 8)) & mask;
                over |= (uint64_t)(v >= q);
                out[g + k] = v;
            }
        }
        if (over)
            for (size_t i = 0; i < FS_HE_N; i++)
                if (out[i] >= q) {
                    fs_log_error("he: read: %s residue %zu = %llu is not below its prime",
                                 kind_name(want), vi * FS_HE_N + i, (unsigned long long)out[i]);
                    return FS_ERR_FORMAT;
                }
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
