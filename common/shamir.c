/*
 * common/shamir.c — see shamir.h. Layout: GF(2^8) arithmetic (bitwise,
 * constant time), split (Horner evaluation of one random polynomial per
 * secret byte), combine (Lagrange interpolation at x = 0).
 * Tested by tests/test_secagg.c.
 */
#include "common/shamir.h"
#include "common/log.h"

#include <sodium.h>
#include <string.h>

uint8_t fs_gf256_mul(uint8_t a, uint8_t b)
{
    uint8_t r = 0;
    for (int i = 0; i < 8; i++) {
        r ^= (uint8_t)(-(b & 1) & a);
        uint8_t hi = (uint8_t)-(a >> 7);
        a = (uint8_t)((a << 1) ^ (hi & 0x1b));
        b >>= 1;
    }
    return r;
}

uint8_t fs_gf256_inv(uint8_t a)
{
    /* a^254 = a^-1 (the multiplicative group has order 255); 0^254 = 0. */
    uint8_t r = 1, p = a;
    for (int e = 254, i = 0; i < 8; i++, e >>= 1) {
        uint8_t m = fs_gf256_mul(r, p);
        uint8_t take = (uint8_t)-(e & 1);
        r = (uint8_t)((m & take) | (r & ~take));
        p = fs_gf256_mul(p, p);
    }
    return r;
}

/* 1 when xs[0..n) are nonzero and pairwise distinct. */
static int xs_ok(const uint8_t *xs, unsigned n, size_t stride)
{
    for (unsigned i = 0; i < n; i++) {
        uint8_t xi = xs[i * stride];
        if (xi == 0) return 0;
        for (unsigned j = 0; j < i; j++)
            if (xs[j * stride] == xi) return 0;
    }
    return 1;
}

fs_status fs_shamir_split(const uint8_t secret[FS_SHAMIR_SECRET_BYTES], unsigned t,
                          const uint8_t *xs, unsigned n, fs_shamir_share *out)
{
    if (!secret || !xs || !out || t < 1 || t > n || n > FS_SHAMIR_MAX_SHARES) {
        fs_log_error("shamir: cannot split into %u shares with threshold %u (need 1 <= t <= n <= %d)",
                     n, t, FS_SHAMIR_MAX_SHARES);
        return FS_ERR_ARG;
    }
    if (!xs_ok(xs, n, 1)) {
        fs_log_error("shamir: share x-coordinates must be nonzero and distinct");
        return FS_ERR_ARG;
    }
    /* coef[k][i]: coefficient of x^(k+1) for secret byte i. */
    uint8_t coef[FS_SHAMIR_MAX_SHARES - 1][FS_SHAMIR_SECRET_BYTES];
    size_t cbytes = (size_t)(t - 1) * FS_SHAMIR_SECRET_BYTES;
    if (cbytes) randombytes_buf(coef, cbytes);
    for (unsigned s = 0; s < n; s++) {
        uint8_t x = xs[s];
        out[s].x = x;
        for (int i = 0; i < FS_SHAMIR_SECRET_BYTES; i++) {
            uint8_t acc = 0; /* Horner from the highest coefficient down */
            for (unsigned k = t - 1; k >= 1; k--) acc = fs_gf256_mul(acc, x) ^ coef[k - 1][i];
            out[s].y[i] = fs_gf256_mul(acc, x) ^ secret[i];
        }
    }
    sodium_memzero(coef, cbytes);
    return FS_OK;
}

fs_status fs_shamir_combine(const fs_shamir_share *shares, unsigned count, unsigned t,
                            uint8_t secret[FS_SHAMIR_SECRET_BYTES])
{
    if (!shares || !secret || t < 1 || count < t || t > FS_SHAMIR_MAX_SHARES) {
        fs_log_error("shamir: %u share(s) cannot reconstruct a secret of threshold %u", count, t);
        return FS_ERR_ARG;
    }
    if (!xs_ok(&shares[0].x, t, sizeof shares[0])) {
        fs_log_error("shamir: share x-coordinates must be nonzero and distinct");
        return FS_ERR_ARG;
    }
    uint8_t acc[FS_SHAMIR_SECRET_BYTES] = {0};
    for (unsigned i = 0; i < t; i++) {
        /* Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i); minus is XOR. */
        uint8_t num = 1, den = 1;
        for (unsigned j = 0; j < t; j++) {
            if (j == i) continue;
            num = fs_gf256_mul(num, shares[j].x);
            den = fs_gf256_mul(den, shares[j].x ^ shares[i].x);
        }
        uint8_t l = fs_gf256_mul(num, fs_gf256_inv(den));
        for (int b = 0; b < FS_SHAMIR_SECRET_BYTES; b++) acc[b] ^= fs_gf256_mul(l, shares[i].y[b]);
    }
    memcpy(secret, acc, sizeof acc);
    sodium_memzero(acc, sizeof acc);
    return FS_OK;
}
