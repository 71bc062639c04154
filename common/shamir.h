/*
 * common/shamir.h — Shamir t-of-n secret sharing of 32-byte secrets over
 * GF(2^8), for secure aggregation (common/secagg.h shares each site's
 * self-mask seed and pairwise secret key with it).
 *
 * Field: GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B),
 * applied byte by byte: byte i of every share lies on its own random
 * polynomial of degree t-1 whose constant term is byte i of the secret. Why
 * this field rather than a prime field:
 *   - the secrets are uniformly random 32-byte strings (a ChaCha20 seed, an
 *     X25519 scalar); byte-wise sharing is exact for every byte value, with no
 *     encoding of 256-bit values into a field element and no modular bias;
 *   - each byte is perfectly hidden by any t-1 shares (Shamir's
 *     information-theoretic secrecy holds in any field);
 *   - arithmetic is a few shifts and XORs, written here without tables or
 *     branches on secret data (constant time);
 *   - the only limit is the number of x-coordinates: 1..255, so at most 255
 *     share holders — secure aggregation uses x = site index + 1 and so
 *     supports at most 255 sites per round (consortia have tens).
 * A share is (x, y[32]); x = 0 would be the secret itself and is refused.
 *
 * Corrupt shares are not detected here: any t shares define some secret.
 * The caller checks the result against a commitment (secagg.c does) and may
 * try other subsets of its shares.
 *
 * Tested by tests/test_secagg.c (FIPS-197 multiplication examples, every
 * t-subset reconstructs, t-1 shares refused and uninformative).
 */
#ifndef FS_SHAMIR_H
#define FS_SHAMIR_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/status.h"

#define FS_SHAMIR_SECRET_BYTES 32
#define FS_SHAMIR_MAX_SHARES 255

typedef struct {
    uint8_t x;                          /* 1..255, distinct among shares */
    uint8_t y[FS_SHAMIR_SECRET_BYTES];
} fs_shamir_share;

/* a·b in GF(2^8) mod 0x11B, constant time. */
uint8_t fs_gf256_mul(uint8_t a, uint8_t b);
/* a^-1 in GF(2^8) (a^254), constant time; 0 maps to 0. */
uint8_t fs_gf256_inv(uint8_t a);

/*
 * Splits secret into n shares at the x-coordinates xs[0..n) (distinct,
 * nonzero), any t of which reconstruct it (1 <= t <= n <= 255). Randomness
 * from libsodium's randombytes_buf. out[0..n) receives the shares.
 * WARNING: out holds secret material; the caller wipes it (sodium_memzero).
 * Returns FS_ERR_ARG (logged) on bad t, n or x-coordinates.
 */
fs_status fs_shamir_split(const uint8_t secret[FS_SHAMIR_SECRET_BYTES], unsigned t,
                          const uint8_t *xs, unsigned n, fs_shamir_share *out)
    __attribute__((warn_unused_result));

/*
 * Reconstructs the secret from the first t of shares[0..count) by Lagrange
 * interpolation at 0. Refuses (FS_ERR_ARG, logged) count < t, t = 0, a zero
 * or repeated x among the t used. Whether the result is the right secret is
 * not knowable here (see the file comment).
 */
fs_status fs_shamir_combine(const fs_shamir_share *shares, unsigned count, unsigned t,
                            uint8_t secret[FS_SHAMIR_SECRET_BYTES])
    __attribute__((warn_unused_result));

#endif
