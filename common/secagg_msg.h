/*
 * common/secagg_msg.h — the secure-aggregation messages (common/secagg.h) as
 * C structs, and their byte format. The state machines in secagg.c use these;
 * they are public so that tests and the fuzzer reach the decoders directly.
 *
 * Format: every integer little-endian, no padding, no optional fields; the
 * encoding of a struct is unique, so a decoder that accepts bytes re-encodes
 * them to exactly the same bytes (the fuzzer checks this). Header (24 bytes):
 *     0  magic "FSSA"        4  version (u8) = FS_SECAGG_VERSION
 *     5  type (u8)           6  reserved (u16) = 0
 *     8  round (u64)        16  n_sites (u32)
 *    20  from (u32): the sending site's index, FS_SECAGG_SERVER for the server
 * Bodies (count fields are u32; lists of site indices strictly ascending):
 *  1 ADVERTISE  site → server   c_pk[32] s_pk[32] commit[32]
 *  2 KEYS       server → sites  count, count × {site, c_pk[32], s_pk[32], commit[32]}
 *  3 SHARES     site → server   count, count × {to, nonce[24], ct[80]}
 *  4 RELAY      server → site   to, count, count × {from, nonce[24], ct[80]}
 *  5 UNMASK_REQ server → sites  n_alive, alive[n_alive], n_dropped, dropped[n_dropped]
 *  6 UNMASK_RSP site → server   count, count × {owner, kind (u8: 0 b, 1 s), share[32]}
 * ct = XChaCha20-Poly1305 of (share of b[32] ‖ share of s_sk[32]).
 *
 * Decoders take the expected round and n_sites and return
 *   FS_OK            every check passed (values in range, lists ascending and
 *                    below n_sites, sender/receiver plausible, exact length);
 *   FS_ERR_MISMATCH  well-formed but another version, round or n_sites;
 *   FS_ERR_FORMAT    wrong magic or type, nonzero reserved bits, truncated,
 *                    trailing bytes, or a value out of range;
 *   FS_ERR_ARG       NULL arguments.
 * why (may be NULL) receives one line for a person; decoders never log.
 * Whether a well-formed message makes sense in the protocol state (a site
 * that is not a neighbour, keys that were not advertised) is secagg.c's job.
 *
 * Tested by tests/test_secagg.c (round trips, truncation at every length,
 * trailing bytes, wrong version/round/type) and tests/fuzz/fuzz_secagg.c.
 */
#ifndef FS_SECAGG_MSG_H
#define FS_SECAGG_MSG_H

#include <stddef.h>
#include <stdint.h>
#include "common/secagg.h"

#define FS_SECAGG_HDR_BYTES 24
#define FS_SECAGG_KEY_BYTES 32
#define FS_SECAGG_AEAD_NONCE 24
#define FS_SECAGG_SHARE_PT 64                      /* b share ‖ s share   */
#define FS_SECAGG_SHARE_CT (FS_SECAGG_SHARE_PT + 16) /* + Poly1305 tag      */

enum {
    FS_SECAGG_MSG_ADVERTISE = 1,
    FS_SECAGG_MSG_KEYS = 2,
    FS_SECAGG_MSG_SHARES = 3,
    FS_SECAGG_MSG_RELAY = 4,
    FS_SECAGG_MSG_UNMASK_REQ = 5,
    FS_SECAGG_MSG_UNMASK_RSP = 6,
};

typedef struct {
    uint32_t site;
    uint8_t c_pk[FS_SECAGG_KEY_BYTES], s_pk[FS_SECAGG_KEY_BYTES], commit[FS_SECAGG_KEY_BYTES];
} fs_secagg_keyent;

typedef struct {
    uint32_t peer; /* SHARES: the receiver; RELAY: the sender */
    uint8_t nonce[FS_SECAGG_AEAD_NONCE];
    uint8_t ct[FS_SECAGG_SHARE_CT];
} fs_secagg_ctent;

typedef struct {
    uint32_t owner;
    uint8_t kind; /* 0: share of b_owner, 1: share of s_sk of owner */
    uint8_t share[FS_SECAGG_KEY_BYTES];
} fs_secagg_shareent;

typedef struct { uint32_t from; fs_secagg_keyent k; } fs_secagg_msg_advertise; /* k.site = from */
typedef struct { uint32_t count; fs_secagg_keyent e[FS_SECAGG_MAX_SITES]; } fs_secagg_msg_keys;
typedef struct { uint32_t from, count; fs_secagg_ctent e[FS_SECAGG_MAX_SITES]; } fs_secagg_msg_shares;
typedef struct { uint32_t to, count; fs_secagg_ctent e[FS_SECAGG_MAX_SITES]; } fs_secagg_msg_relay;
typedef struct {
    uint32_t n_alive, n_dropped;
    uint32_t alive[FS_SECAGG_MAX_SITES], dropped[FS_SECAGG_MAX_SITES];
} fs_secagg_msg_unmask_req;
/* WARNING: holds secret shares; wipe it (sodium_memzero) after use. */
typedef struct { uint32_t from, count; fs_secagg_shareent e[FS_SECAGG_MAX_SITES]; } fs_secagg_msg_unmask_rsp;

/* Encoders: a malloc'ed buffer (*buf, *len) holding the message for the
 * given round and n_sites. They write what they are given (the state
 * machines build valid structs); FS_ERR_ARG for a count above the maximum,
 * FS_ERR_NOMEM. */
fs_status fs_secagg_enc_advertise(uint64_t round, uint32_t n, const fs_secagg_msg_advertise *m,
                                  uint8_t **buf, size_t *len);
fs_status fs_secagg_enc_keys(uint64_t round, uint32_t n, const fs_secagg_msg_keys *m,
                             uint8_t **buf, size_t *len);
fs_status fs_secagg_enc_shares(uint64_t round, uint32_t n, const fs_secagg_msg_shares *m,
                               uint8_t **buf, size_t *len);
fs_status fs_secagg_enc_relay(uint64_t round, uint32_t n, const fs_secagg_msg_relay *m,
                              uint8_t **buf, size_t *len);
fs_status fs_secagg_enc_unmask_req(uint64_t round, uint32_t n, const fs_secagg_msg_unmask_req *m,
                                   uint8_t **buf, size_t *len);
fs_status fs_secagg_enc_unmask_rsp(uint64_t round, uint32_t n, const fs_secagg_msg_unmask_rsp *m,
                                   uint8_t **buf, size_t *len);

/* Decoders (see the file comment). */
fs_status fs_secagg_dec_advertise(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                                  fs_secagg_msg_advertise *m, char *why, size_t whylen)
    __attribute__((warn_unused_result));
fs_status fs_secagg_dec_keys(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                             fs_secagg_msg_keys *m, char *why, size_t whylen)
    __attribute__((warn_unused_result));
fs_status fs_secagg_dec_shares(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                               fs_secagg_msg_shares *m, char *why, size_t whylen)
    __attribute__((warn_unused_result));
fs_status fs_secagg_dec_relay(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                              fs_secagg_msg_relay *m, char *why, size_t whylen)
    __attribute__((warn_unused_result));
fs_status fs_secagg_dec_unmask_req(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                                   fs_secagg_msg_unmask_req *m, char *why, size_t whylen)
    __attribute__((warn_unused_result));
fs_status fs_secagg_dec_unmask_rsp(const uint8_t *b, size_t len, uint64_t round, uint32_t n,
                                   fs_secagg_msg_unmask_rsp *m, char *why, size_t whylen)
    __attribute__((warn_unused_result));

#endif
