/*
 * tests/test_secagg.c — secure aggregation (common/secagg.h, secagg_msg.h,
 * shamir.h), all in one process, no network.
 *
 *   expand      fs_secagg_expand against RFC 8439 (A.1 test vectors 1-2 and
 *               the §2.4.2 ciphertext), against libsodium's
 *               crypto_stream_chacha20_ietf over a long stream at offsets
 *               0, 1, 15, 16, 17, ... and lengths 0, 1, odd, and against
 *               OpenSSL's independent ChaCha20 near the end of the 2^32-block
 *               counter; out-of-range refused.
 *   shamir      FIPS-197 GF(2^8) products; every t-subset reconstructs;
 *               t-1 shares are refused and do not give the secret.
 *   quantise    the exponent f (hand-computed cases), exact dequantised
 *               values, clipping, unbiased stochastic rounding (10^6 draws),
 *               no wrap-around with n_max sites at ±C, weighted averages.
 *   rounds      5 sites, t = 3: every way of 0, 1 or 2 sites dropping at
 *               stages 0, 1, 2, 4 gives exactly the survivors' sum (uint32,
 *               bit for bit); every way of 3 dropping abandons the round and
 *               leaves the sum untouched. SecAgg+ (n = 10, k = 4 / 6): random
 *               dropouts up to k+1-t always recover; more either recover
 *               exactly or abandon, never a wrong sum.
 *   uniform     a site's masked vector passes chi-square tests on bytes and
 *               on 12-bit buckets and does not correlate with the input; the
 *               same tests reject the unmasked vector (they can fail).
 *   tampering   relayed ciphertexts with a flipped byte, a swapped sender,
 *               or forged by the server are refused; a wrong share at
 *               unmasking is outvoted, or abandons the round when only t
 *               shares exist; inconsistent requests and responses refused.
 *   decoders    every message: round trip, every truncation, trailing byte,
 *               wrong magic/version/type/round/n/reserved/sender, huge counts.
 * FS_SECAGG_CORPUS=DIR also writes one honest message of each type there
 * (the fuzzing seeds of tests/fuzz/corpus/secagg).
 * All randomness that matters for a verdict is seeded, so it is deterministic
 * except the protocol's own key and coefficient draws (which no check depends on).
 */
#include "common/secagg.h"
#include "common/secagg_msg.h"
#include "common/shamir.h"
#include "common/log.h"
#include "common/rng.h"
#include "check.h"
#include "kernels/backend.h"

#include <math.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* ---- expand ------------------------------------------------------------------ */

static int hex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (sscanf(s + 2 * i, "%2hhx", &out[i]) != 1) return 0;
    return 1;
}

/* ChaCha20 keystream bytes of OpenSSL (iv = 32-bit LE counter ‖ 12-byte nonce). */
static void openssl_stream(const uint8_t key[32], const uint8_t nonce[12], uint32_t ctr, uint8_t *out,
                           size_t n)
{
    uint8_t iv[16];
    for (int i = 0; i < 4; i++) iv[i] = (uint8_t)(ctr >> (8 * i));
    memcpy(iv + 4, nonce, 12);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint8_t *zero = calloc(n, 1);
    int len = 0;
    EVP_EncryptInit_ex(c, EVP_chacha20(), NULL, key, iv);
    EVP_EncryptUpdate(c, out, &len, zero, (int)n);
    EVP_CIPHER_CTX_free(c);
    free(zero);
}

static void test_expand(void)
{
    /* RFC 8439 A.1 test vectors #1 and #2: all-zero key and nonce, block
     * counters 0 and 1 (the values printed in the RFC; also what
     * `openssl enc -chacha20` gives). */
    static const char *a1 =
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
        "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
        "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f";
    uint8_t key[32] = {0}, nonce[12] = {0}, want[128];
    uint32_t got[32];
    CHECK(hex(a1, want, 128), "hex");
    CHECK(fs_secagg_expand(key, nonce, 0, 32, got) == FS_OK, "expand A.1");
    CHECK(memcmp(got, want, 128) == 0, "RFC 8439 A.1 vectors 1-2 differ");
    CHECK(fs_secagg_expand(key, nonce, 16, 16, got) == FS_OK && memcmp(got, want + 64, 64) == 0,
          "RFC 8439 A.1 vector 2 at word offset 16 differs");

    /* RFC 8439 §2.4.2: key 00..1f, nonce 00 00 00 00 00 00 00 4a 00 00 00 00,
     * counter 1, the "sunscreen" plaintext and its published ciphertext. */
    static const char pt[] = "Ladies and Gentlemen of the class of '99: If I could offer you only one "
                             "tip for the future, sunscreen would be it.";
    static const char *ct_hex =
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dab"
        "cd62b3571639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806"
        "818ce91ab77937365af90bbf74a35be6b40b8eedf2785e42874d";
    uint8_t ct[114], ks[29 * 4];
    for (int i = 0; i < 32; i++) key[i] = (uint8_t)i;
    memset(nonce, 0, 12);
    nonce[7] = 0x4a;
    CHECK(hex(ct_hex, ct, 114) && sizeof pt - 1 == 114, "§2.4.2 vector");
    CHECK(fs_secagg_expand(key, nonce, 16, 29, (uint32_t *)ks) == FS_OK, "expand §2.4.2");
    int bad = 0;
    for (int i = 0; i < 114; i++) bad += (uint8_t)(pt[i] ^ ks[i]) != ct[i];
    CHECK(bad == 0, "RFC 8439 §2.4.2 ciphertext: %d byte(s) differ", bad);

    /* Against libsodium's own stream over 1024 words, at many offsets and lengths. */
    enum { W = 1024 };
    uint8_t ref[W * 4];
    uint32_t out[W + 2];
    randombytes_buf_deterministic(key, 32, (const uint8_t *)"fedseg test key of 32 bytes.....");
    for (int i = 0; i < 12; i++) nonce[i] = (uint8_t)(0xa0 + i);
    crypto_stream_chacha20_ietf(ref, sizeof ref, nonce, key);
    static const uint64_t offs[] = {0, 1, 2, 15, 16, 17, 31, 32, 33, 100, 511, 1000};
    static const size_t lens[] = {0, 1, 2, 3, 15, 16, 17, 31, 33, 47, 64, 255, 1023};
    int tried = 0;
    for (size_t a = 0; a < sizeof offs / sizeof *offs; a++)
        for (size_t b = 0; b < sizeof lens / sizeof *lens; b++) {
            if (offs[a] + lens[b] > W) continue;
            out[lens[b]] = 0xdeadbeef; /* sentinel: nothing written past n */
            CHECK(fs_secagg_expand(key, nonce, offs[a], lens[b], out) == FS_OK, "expand");
            CHECK(lens[b] == 0 || memcmp(out, ref + 4 * offs[a], 4 * lens[b]) == 0,
                  "expand offset %llu length %zu differs from libsodium", (unsigned long long)offs[a],
                  lens[b]);
            CHECK(out[lens[b]] == 0xdeadbeef, "expand wrote past its end (offset %llu length %zu)",
                  (unsigned long long)offs[a], lens[b]);
            tried++;
        }
    CHECK(tried > 100, "only %d offset/length pairs", tried);
    CHECK(fs_secagg_expand(key, nonce, 5, 0, NULL) == FS_OK, "length 0 with no buffer");

    /* Against OpenSSL near the end of the 32-bit block counter. */
    uint64_t off = (0xfffffffeull << 4) + 5;
    uint8_t ossl[64 * 2];
    openssl_stream(key, nonce, 0xfffffffeu, ossl, sizeof ossl);
    CHECK(fs_secagg_expand(key, nonce, off, 20, out) == FS_OK, "expand near 2^36");
    CHECK(memcmp(out, ossl + 20, 80) == 0, "expand at word %llu differs from OpenSSL",
          (unsigned long long)off);
    openssl_stream(key, nonce, 77, ossl, sizeof ossl);
    CHECK(fs_secagg_expand(key, nonce, 77 * 16 + 3, 29, out) == FS_OK &&
              memcmp(out, ossl + 12, 29 * 4) == 0, "expand at block 77 differs from OpenSSL");
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(fs_secagg_expand(key, nonce, FS_SECAGG_MAX_WORDS - 5, 6, out) == FS_ERR_ARG,
          "expand past 2^36 words accepted");
    fs_log_set_level(FS_LOG_INFO);
}

/* ---- shamir ------------------------------------------------------------------- */

static void test_shamir(void)
{
    /* FIPS-197 §4.2: {57}·{83} = {c1}, {57}·{13} = {fe}; §5.1.1 table: {53}^-1 = {ca}. */
    CHECK(fs_gf256_mul(0x57, 0x83) == 0xc1, "57·83 = %02x", fs_gf256_mul(0x57, 0x83));
    CHECK(fs_gf256_mul(0x57, 0x13) == 0xfe, "57·13 = %02x", fs_gf256_mul(0x57, 0x13));
    CHECK(fs_gf256_inv(0x53) == 0xca, "53^-1 = %02x", fs_gf256_inv(0x53));
    int bad = 0;
    for (int a = 1; a < 256; a++) bad += fs_gf256_mul((uint8_t)a, fs_gf256_inv((uint8_t)a)) != 1;
    CHECK(bad == 0, "%d inverses wrong", bad);

    uint8_t secret[32], rec[32];
    randombytes_buf(secret, 32);
    static const unsigned cases[][2] = {{5, 3}, {7, 4}, {6, 2}, {4, 4}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        unsigned n = cases[c][0], t = cases[c][1];
        uint8_t xs[8];
        fs_shamir_share sh[8], pick[8];
        for (unsigned i = 0; i < n; i++) xs[i] = (uint8_t)(3 * i + 7); /* any distinct nonzero x */
        CHECK(fs_shamir_split(secret, t, xs, n, sh) == FS_OK, "split %u of %u", t, n);
        int subsets = 0, wrong = 0, leak = 0;
        for (unsigned mask = 0; mask < (1u << n); mask++) {
            unsigned k = (unsigned)__builtin_popcount(mask), m = 0;
            for (unsigned i = 0; i < n; i++)
                if (mask >> i & 1) pick[m++] = sh[i];
            if (k == t) {
                subsets++;
                wrong += fs_shamir_combine(pick, t, t, rec) != FS_OK || memcmp(rec, secret, 32) != 0;
            } else if (k == t - 1 && k > 0) {
                fs_log_set_level(FS_LOG_QUIET);
                CHECK(fs_shamir_combine(pick, k, t, rec) == FS_ERR_ARG, "t-1 shares accepted");
                fs_log_set_level(FS_LOG_INFO);
                /* interpolating t-1 shares as if t-1 were enough gives another value */
                if (k >= 1 && fs_shamir_combine(pick, k, k, rec) == FS_OK) leak += !memcmp(rec, secret, 32);
            }
        }
        CHECK(wrong == 0, "n=%u t=%u: %d of %d t-subsets do not reconstruct", n, t, wrong, subsets);
        CHECK(leak == 0, "n=%u t=%u: t-1 shares gave the secret", n, t);
        sodium_memzero(sh, sizeof sh);
    }
    fs_shamir_share sh[3];
    uint8_t dup[3] = {1, 2, 2};
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(fs_shamir_split(secret, 2, dup, 3, sh) == FS_ERR_ARG, "repeated x accepted");
    uint8_t zero[3] = {0, 1, 2};
    CHECK(fs_shamir_split(secret, 2, zero, 3, sh) == FS_ERR_ARG, "x = 0 accepted");
    CHECK(fs_shamir_split(secret, 4, zero + 1, 2, sh) == FS_ERR_ARG, "t > n accepted");
    fs_log_set_level(FS_LOG_INFO);
}

/* ---- quantisation ----------------------------------------------------------------- */

static void test_quantise(void)
{
    int f;
    /* Hand-computed: C = 1, n_max = 5: 5·2^f + 5 < 2^31 ⇔ 2^f < 429496728.6 → f = 28.
     * C = 3, n_max = 10: 30·2^f + 10 < 2^31 ⇔ 2^f < 71582788.2 → f = 26.
     * C = 0.25 uses bound 1 (the weight word): n_max = 100 → 2^f < 21474835.5 → f = 24. */
    CHECK(fs_secagg_quant_bits(1.0, 5, &f) == FS_OK && f == 28, "f(C=1, n=5) = %d", f);
    CHECK(fs_secagg_quant_bits(3.0, 10, &f) == FS_OK && f == 26, "f(C=3, n=10) = %d", f);
    CHECK(fs_secagg_quant_bits(0.25, 100, &f) == FS_OK && f == 24, "f(C=0.25, n=100) = %d", f);

    /* Exact values (no fractional part, so the rounding draw cannot matter). */
    const float x[5] = {0.5f, -0.25f, 3.0f * 0x1p-28f, -0x1p-28f, 0.0f};
    uint32_t q[5];
    float back[5];
    CHECK(fs_secagg_quantise(x, 5, 1.0, 1.0, 28, 99, 0, q) == FS_OK, "quantise");
    CHECK(q[0] == 1u << 27 && q[1] == 0xfc000000u && q[2] == 3 && q[3] == 0xffffffffu && q[4] == 0,
          "quantised %08x %08x %08x %08x %08x", q[0], q[1], q[2], q[3], q[4]);
    fs_secagg_dequantise(q, 5, 28, back);
    CHECK(memcmp(back, x, sizeof x) == 0, "dequantised %g %g %g %g", back[0], back[1], back[2], back[3]);
    /* The spec's float conversion: (float)(int32_t)s rounds to 24 bits first. */
    uint32_t big = 0x7fffffffu;
    fs_secagg_dequantise(&big, 1, 0, back);
    CHECK(back[0] == 2147483648.0f, "(float)(int32) rounding: %g", back[0]);

    /* Clipping: (3, 4) has norm 5; C = 1 scales to (0.6, 0.8). */
    const float y[2] = {3.0f, 4.0f};
    double scale;
    CHECK(fs_secagg_l2_scale(y, 2, 1.0, &scale) == FS_OK && fabs(scale - 0.2) < 1e-15, "scale %g", scale);
    CHECK(fs_secagg_quantise(y, 2, scale, 1.0, 28, 5, 0, q) == FS_OK, "quantise clipped");
    double v0 = 3.0 * scale * 0x1p28, v1 = 4.0 * scale * 0x1p28;
    CHECK(q[0] - (uint32_t)floor(v0) <= 1 && q[1] - (uint32_t)floor(v1) <= 1, "clipped %u %u", q[0], q[1]);
    const float nanv[2] = {1.0f, NAN};
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(fs_secagg_l2_scale(nanv, 2, 1.0, &scale) == FS_ERR_NUMERIC, "NaN accepted");
    fs_log_set_level(FS_LOG_INFO);

    /* Unbiased rounding: 333.25 and -333.25 at f = 28, 10^6 draws each;
     * standard error sqrt(0.25·0.75/10^6) = 4.3e-4, bound 6 standard errors. */
    const int N = 1000000;
    float pv = 333.25f * 0x1p-28f, nv = -333.25f * 0x1p-28f;
    double sp = 0, sn = 0;
    for (int i = 0; i < N; i++) {
        uint32_t a, b;
        if (fs_secagg_quantise(&pv, 1, 1.0, 1.0, 28, 1234, (uint64_t)i, &a) != FS_OK ||
            fs_secagg_quantise(&nv, 1, 1.0, 1.0, 28, 1234, (uint64_t)i, &b) != FS_OK) { CHECK(0, "quantise"); break; }
        CHECK((int32_t)a == 333 || (int32_t)a == 334, "rounded 333.25 to %d", (int32_t)a);
        sp += (int32_t)a;
        sn += (int32_t)b;
    }
    double se = sqrt(0.25 * 0.75 / N);
    CHECK(fabs(sp / N - 333.25) < 6 * se, "mean of rounded 333.25: %.6f", sp / N);
    CHECK(fabs(sn / N + 333.25) < 6 * se, "mean of rounded -333.25: %.6f", sn / N);

    /* Headroom: 255 sites, each at +C (or -C) with full weight, C = 2.5. */
    const uint32_t nmax = 255;
    const double C = 2.5;
    CHECK(fs_secagg_quant_bits(C, nmax, &f) == FS_OK, "f");
    CHECK(nmax * C * ldexp(1, f) + nmax < 2147483648.0 && nmax * C * ldexp(1, f + 1) + nmax >= 2147483648.0,
          "f = %d is not the largest that fits", f);
    for (int sign = -1; sign <= 1; sign += 2) {
        float xs = (float)(sign * C);
        uint32_t sum[2] = {0, 0}, qq[2];
        for (uint32_t s = 0; s < nmax; s++) {
            CHECK(fs_secagg_encode_update(&xs, 1, 10, 10, C, f, 1000 + s, qq) == FS_OK, "encode");
            sum[0] += qq[0];
            sum[1] += qq[1];
        }
        float avg, w;
        CHECK(fs_secagg_average(sum, 1, f, &avg, &w) == FS_OK, "average");
        CHECK(fabsf(w - (float)nmax) <= 1e-3f, "total weight %g", w);
        CHECK(fabs(avg - sign * C) < 1e-4, "sign %d: average %g of %u sites at ±C wrapped or drifted",
              sign, avg, nmax);
    }

    /* Weighted average: three sites, samples 10, 30, 60 of cap 100. */
    enum { P = 64 };
    float upd[3][P], want[P], avg[P];
    uint32_t sum[P + 1] = {0}, qq[P + 1];
    const uint64_t m[3] = {10, 30, 60};
    fs_rng r;
    fs_rng_seed(&r, 42, 0);
    CHECK(fs_secagg_quant_bits(1.0, 3, &f) == FS_OK, "f");
    for (int i = 0; i < P; i++) want[i] = 0;
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < P; i++) upd[s][i] = (float)(0.05 * fs_rng_normal(&r));
        double sc;
        CHECK(fs_secagg_l2_scale(upd[s], P, 1.0, &sc) == FS_OK, "scale");
        for (int i = 0; i < P; i++) want[i] += (float)(m[s] * sc * upd[s][i] / 100.0);
        CHECK(fs_secagg_encode_update(upd[s], P, m[s], 100, 1.0, f, 7 + s, qq) == FS_OK, "encode");
        for (int i = 0; i <= P; i++) sum[i] += qq[i];
    }
    float w;
    CHECK(fs_secagg_average(sum, P, f, avg, &w) == FS_OK, "average");
    CHECK(fabsf(w - 1.0f) < 1e-6f, "weight %g", w);
    /* each element: 3 roundings of at most 2^-f, divided by Σw = 1 */
    check_close("weighted average", avg, want, P, (float)(4 * ldexp(1, -f)), 1e-6f);
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(fs_secagg_encode_update(upd[0], P, 101, 100, 1.0, f, 1, qq) == FS_ERR_ARG, "count above cap");
    uint32_t zero[2] = {0, 0};
    CHECK(fs_secagg_average(zero, 1, f, avg, NULL) == FS_ERR_NUMERIC, "zero weight accepted");
    fs_log_set_level(FS_LOG_INFO);
}

/* ---- whole rounds --------------------------------------------------------------------- */

#define NS 16
enum { DROP_NONE = -1 };

typedef struct {
    uint32_t n, t, k;
    uint64_t words;
    uint64_t seed;
    int drop[NS];            /* stage at which site u stops: 0, 1, 2, 4, or DROP_NONE */
    int corrupt_rsp;         /* site whose unmasking response gets one share byte flipped, or -1 */
    /* results */
    fs_status st;            /* FS_OK or the first failing status */
    int exact;               /* unmasked sum == Σ q of U3, bit for bit, both by
                                fs_secagg_server_unmask and by the exported
                                mask keys through the backend's chacha_mask */
    int keys_exact;
    int untouched;           /* abandoned: the sum was left as it was */
    uint32_t n_masked;
    uint8_t *msg[7];         /* one copy of each message type, for the decoder tests */
    size_t msg_len[7];
} round_cfg;

static void keep(round_cfg *c, int type, const uint8_t *b, size_t n)
{
    if (c->msg[type]) return;
    c->msg[type] = malloc(n);
    memcpy(c->msg[type], b, n);
    c->msg_len[type] = n;
}

static void params_of(const round_cfg *c, fs_secagg_params *p)
{
    memset(p, 0, sizeof *p);
    p->round = 7;
    p->n_sites = c->n;
    p->threshold = c->t;
    p->neighbours = c->k;
    p->n_words = c->words;
    fs_rng r;
    fs_rng_seed(&r, c->seed, 99);
    for (int i = 0; i < 32; i++) p->round_seed[i] = (uint8_t)fs_rng_next(&r);
}

/* Runs one round with the configured dropouts and checks the result. */
static void run_round(round_cfg *c)
{
    fs_secagg_params p;
    params_of(c, &p);
    fs_secagg_site *site[NS] = {0};
    fs_secagg_server *srv = NULL;
    uint32_t *sum = calloc(c->words, 4), *expect = calloc(c->words, 4), *q = malloc(c->words * 4),
             *y = malloc(c->words * 4);
    uint8_t *m = NULL, *keys = NULL, *req = NULL;
    size_t ml, kl, rl;
    fs_rng r;
    fs_rng_seed(&r, c->seed, 1);
    c->exact = c->untouched = c->keys_exact = 0;
    c->n_masked = 0;
    fs_status st = fs_secagg_server_new(&p, &srv);
    for (uint32_t u = 0; u < c->n && st == FS_OK; u++) st = fs_secagg_site_new(&p, u, &site[u]);
    if (st != FS_OK) goto done;
    /* stage 0 */
    for (uint32_t u = 0; u < c->n; u++) {
        if (c->drop[u] == 0) continue;
        if (fs_secagg_site_advertise(site[u], &m, &ml) != FS_OK) { st = FS_ERR_ARG; goto done; }
        keep(c, FS_SECAGG_MSG_ADVERTISE, m, ml);
        if (fs_secagg_server_recv_advertise(srv, u, m, ml) != FS_OK) { st = FS_ERR_ARG; goto done; }
        fs_secagg_msg_free(m, ml);
        m = NULL;
    }
    if ((st = fs_secagg_server_close_advertise(srv, &keys, &kl)) != FS_OK) goto done;
    keep(c, FS_SECAGG_MSG_KEYS, keys, kl);
    /* stage 1 */
    for (uint32_t u = 0; u < c->n; u++) {
        if (c->drop[u] == 0 || c->drop[u] == 1) continue;
        fs_status s1 = fs_secagg_site_share_keys(site[u], keys, kl, &m, &ml);
        if (s1 == FS_ERR_ABANDONED) continue; /* too few neighbours: the site drops out */
        if (s1 != FS_OK) { st = s1; goto done; }
        keep(c, FS_SECAGG_MSG_SHARES, m, ml);
        if ((st = fs_secagg_server_recv_shares(srv, u, m, ml)) != FS_OK) goto done;
        fs_secagg_msg_free(m, ml);
        m = NULL;
    }
    if ((st = fs_secagg_server_close_shares(srv)) != FS_OK) goto done;
    /* stage 2: masked inputs, in chunks of 7 words (odd offsets) */
    for (uint32_t u = 0; u < c->n; u++) {
        if (!fs_secagg_server_has(srv, FS_SECAGG_SHARED, u)) continue;
        if ((st = fs_secagg_server_relay(srv, u, &m, &ml)) != FS_OK) goto done;
        keep(c, FS_SECAGG_MSG_RELAY, m, ml);
        fs_status s2 = fs_secagg_site_recv_shares(site[u], m, ml);
        fs_secagg_msg_free(m, ml);
        m = NULL;
        if (s2 == FS_ERR_ABANDONED) continue;
        if (s2 != FS_OK) { st = s2; goto done; }
        if (c->drop[u] == 2) continue;
        for (uint64_t i = 0; i < c->words; i++) q[i] = (uint32_t)fs_rng_next(&r);
        for (uint64_t off = 0; off < c->words; off += 7) {
            size_t len = c->words - off < 7 ? (size_t)(c->words - off) : 7;
            if ((st = fs_secagg_site_mask(site[u], q + off, off, len, y + off)) != FS_OK) goto done;
        }
        for (uint64_t i = 0; i < c->words; i++) { sum[i] += y[i]; expect[i] += q[i]; }
        if ((st = fs_secagg_server_masked_received(srv, u)) != FS_OK) goto done;
        c->n_masked++;
    }
    memcpy(y, sum, c->words * 4); /* the masked sum, to see that an abandon leaves it */
    if ((st = fs_secagg_server_close_masked(srv, &req, &rl)) != FS_OK) goto done;
    keep(c, FS_SECAGG_MSG_UNMASK_REQ, req, rl);
    /* stage 4 */
    for (uint32_t u = 0; u < c->n; u++) {
        if (!fs_secagg_server_has(srv, FS_SECAGG_MASKED, u) || c->drop[u] == 4) continue;
        if ((st = fs_secagg_site_unmask(site[u], req, rl, &m, &ml)) != FS_OK) goto done;
        keep(c, FS_SECAGG_MSG_UNMASK_RSP, m, ml);
        if ((int)u == c->corrupt_rsp) m[FS_SECAGG_HDR_BYTES + 4 + 5 + 3] ^= 0x10; /* first share */
        if ((st = fs_secagg_server_recv_unmask(srv, u, m, ml)) != FS_OK) goto done;
        fs_secagg_msg_free(m, ml);
        m = NULL;
    }
    st = fs_secagg_server_close_unmask(srv);
done:
    if (st == FS_ERR_ABANDONED && srv) {
        memcpy(y, sum, c->words * 4);
        fs_status su = fs_secagg_server_unmask(srv, sum, 0, c->words);
        c->untouched = su == FS_ERR_ABANDONED && memcmp(y, sum, c->words * 4) == 0 &&
                       fs_secagg_server_reason(srv)[0] != '\0';
    }
    if (st == FS_OK) {
        /* the corrections as mask keys, applied by the backend op a GPU sum
         * uses (here the CPU's: the CUDA one equals it, test_aggops_cuda) */
        fs_mask_key *mk = NULL;
        int nk = -1;
        memcpy(y, sum, c->words * 4);
        fs_status ks = fs_secagg_server_unmask_keys(srv, &mk, &nk);
        if (ks == FS_OK) ks = fs_backend_cpu()->chacha_mask(NULL, c->words, y, 0, mk, nk);
        fs_secagg_unmask_keys_free(mk, nk);
        c->keys_exact = ks == FS_OK && memcmp(y, expect, c->words * 4) == 0;
        /* unmask in uneven chunks, last chunk first */
        uint64_t cut = c->words * 2 / 3;
        st = fs_secagg_server_unmask(srv, sum + cut, cut, (size_t)(c->words - cut));
        for (uint64_t off = 0; off < cut && st == FS_OK; off += 13)
            st = fs_secagg_server_unmask(srv, sum + off, off, (size_t)(cut - off < 13 ? cut - off : 13));
        c->exact = st == FS_OK && memcmp(sum, expect, c->words * 4) == 0 && c->keys_exact;
    }
    c->st = st;
    fs_secagg_msg_free(m, ml);
    fs_secagg_msg_free(keys, kl);
    fs_secagg_msg_free(req, rl);
    for (uint32_t u = 0; u < c->n; u++) fs_secagg_site_free(site[u]);
    fs_secagg_server_free(srv);
    free(sum); free(expect); free(q); free(y);
}

static void cfg_init(round_cfg *c, uint32_t n, uint32_t t, uint32_t k, uint64_t words, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->n = n; c->t = t; c->k = k; c->words = words; c->seed = seed;
    c->corrupt_rsp = -1;
    for (int i = 0; i < NS; i++) c->drop[i] = DROP_NONE;
}

static void cfg_free(round_cfg *c)
{
    for (int i = 0; i < 7; i++) free(c->msg[i]);
}

static const int STAGES[5] = {DROP_NONE, 0, 1, 2, 4};

static void test_rounds_full(void)
{
    /* 5 sites, t = 3, full graph: all 5^5 assignments of a drop stage. */
    int ok = 0, abandoned = 0, total = 0;
    fs_log_set_level(FS_LOG_QUIET);
    for (int code = 0; code < 3125; code++) {
        round_cfg c;
        cfg_init(&c, 5, 3, 4, 37, 1000 + (uint64_t)code);
        int drops = 0;
        for (int u = 0, x = code; u < 5; u++, x /= 5) {
            c.drop[u] = STAGES[x % 5];
            drops += c.drop[u] != DROP_NONE;
        }
        run_round(&c);
        total++;
        if (drops <= 2) {
            CHECK(c.st == FS_OK && c.exact && c.n_masked >= 3,
                  "drops %d%d%d%d%d: status %s, exact %d", c.drop[0], c.drop[1], c.drop[2], c.drop[3],
                  c.drop[4], fs_status_str(c.st), c.exact);
            ok += c.st == FS_OK && c.exact;
        } else {
            CHECK(c.st == FS_ERR_ABANDONED && c.untouched, "drops %d%d%d%d%d (%d sites): status %s, "
                  "sum untouched %d", c.drop[0], c.drop[1], c.drop[2], c.drop[3], c.drop[4], drops,
                  fs_status_str(c.st), c.untouched);
            abandoned += c.st == FS_ERR_ABANDONED && c.untouched;
        }
        cfg_free(&c);
    }
    fs_log_set_level(FS_LOG_INFO);
    fprintf(stderr, "full SecAgg n=5 t=3: %d exact sums, %d abandoned, of %d rounds\n", ok, abandoned, total);
    CHECK(ok == 181 && abandoned == 3125 - 181, "expected 181 recoveries and 2944 abandons");
}

static void test_rounds_sparse(uint32_t n, uint32_t k, uint32_t t, int trials)
{
    fs_secagg_params p;
    round_cfg c;
    cfg_init(&c, n, t, k, 50, 5);
    params_of(&c, &p);
    /* the graph: k-regular and symmetric */
    uint32_t nb[NS], cnt, nb2[NS], cnt2;
    int irregular = 0;
    for (uint32_t u = 0; u < n; u++) {
        CHECK(fs_secagg_neighbours(&p, u, nb, &cnt) == FS_OK, "neighbours");
        irregular += cnt != k;
        for (uint32_t i = 0; i < cnt; i++) {
            CHECK(fs_secagg_neighbours(&p, nb[i], nb2, &cnt2) == FS_OK, "neighbours");
            int back = 0;
            for (uint32_t j = 0; j < cnt2; j++) back |= nb2[j] == u;
            irregular += !back;
        }
    }
    CHECK(irregular == 0, "n=%u k=%u: graph not %u-regular and symmetric", n, k, k);

    fs_rng r;
    fs_rng_seed(&r, 77, n * 100 + k);
    int ok = 0, ok_extra = 0, ab_extra = 0;
    uint32_t safe = k + 1 - t;
    fs_log_set_level(FS_LOG_QUIET);
    for (int trial = 0; trial < trials; trial++) {
        cfg_init(&c, n, t, k, 41, 3000 + (uint64_t)trial);
        uint32_t drops = (uint32_t)fs_rng_below(&r, trial < trials / 2 ? safe + 1 : n - 1);
        for (uint32_t d = 0; d < drops; d++) {
            uint32_t u = (uint32_t)fs_rng_below(&r, n);
            c.drop[u] = STAGES[1 + fs_rng_below(&r, 4)];
        }
        uint32_t nd = 0;
        for (uint32_t u = 0; u < n; u++) nd += c.drop[u] != DROP_NONE;
        run_round(&c);
        if (nd <= safe) {
            CHECK(c.st == FS_OK && c.exact, "n=%u k=%u t=%u trial %d, %u drop(s): status %s exact %d",
                  n, k, t, trial, nd, fs_status_str(c.st), c.exact);
            ok += c.st == FS_OK && c.exact;
        } else {
            CHECK((c.st == FS_OK && c.exact) || (c.st == FS_ERR_ABANDONED && c.untouched),
                  "n=%u k=%u trial %d, %u drops: status %s exact %d (a wrong sum?)", n, k, trial, nd,
                  fs_status_str(c.st), c.exact);
            ok_extra += c.st == FS_OK && c.exact;
            ab_extra += c.st == FS_ERR_ABANDONED;
        }
        cfg_free(&c);
    }
    fs_log_set_level(FS_LOG_INFO);
    fprintf(stderr, "SecAgg+ n=%u k=%u t=%u: %d recoveries within k+1-t drops; beyond: %d exact, %d abandoned\n",
            n, k, t, ok, ok_extra, ab_extra);
    CHECK(ok_extra > 0 && ab_extra > 0, "the beyond-k+1-t trials did not exercise both outcomes");
}

/* ---- masked input looks uniform ----------------------------------------------------- */

/* Sets up n = 5 sites through stage 1 and returns site 0 ready to mask. */
static fs_secagg_site *ready_site(const fs_secagg_params *p, fs_secagg_server **srv_out,
                                  fs_secagg_site **all)
{
    fs_secagg_server *srv;
    uint8_t *m, *keys;
    size_t ml, kl;
    if (fs_secagg_server_new(p, &srv) != FS_OK) return NULL;
    for (uint32_t u = 0; u < p->n_sites; u++) {
        if (fs_secagg_site_new(p, u, &all[u]) != FS_OK || fs_secagg_site_advertise(all[u], &m, &ml) != FS_OK ||
            fs_secagg_server_recv_advertise(srv, u, m, ml) != FS_OK)
            return NULL;
        fs_secagg_msg_free(m, ml);
    }
    if (fs_secagg_server_close_advertise(srv, &keys, &kl) != FS_OK) return NULL;
    for (uint32_t u = 0; u < p->n_sites; u++) {
        if (fs_secagg_site_share_keys(all[u], keys, kl, &m, &ml) != FS_OK ||
            fs_secagg_server_recv_shares(srv, u, m, ml) != FS_OK)
            return NULL;
        fs_secagg_msg_free(m, ml);
    }
    fs_secagg_msg_free(keys, kl);
    if (fs_secagg_server_close_shares(srv) != FS_OK) return NULL;
    for (uint32_t u = 0; u < p->n_sites; u++) {
        if (fs_secagg_server_relay(srv, u, &m, &ml) != FS_OK ||
            fs_secagg_site_recv_shares(all[u], m, ml) != FS_OK)
            return NULL;
        fs_secagg_msg_free(m, ml);
    }
    *srv_out = srv;
    return all[0];
}

/* Chi-square of the byte histogram and of the top-12-bit histogram of
 * v[0..n), and Pearson's r between (int32) a and (int32) b. */
static void stats(const uint32_t *v, size_t n, double *chi_b, double *chi_12)
{
    static double hb[256], h12[4096];
    memset(hb, 0, sizeof hb);
    memset(h12, 0, sizeof h12);
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < 4; k++) hb[(v[i] >> (8 * k)) & 255]++;
        h12[v[i] >> 20]++;
    }
    double eb = 4.0 * n / 256, e12 = (double)n / 4096;
    *chi_b = *chi_12 = 0;
    for (int i = 0; i < 256; i++) *chi_b += (hb[i] - eb) * (hb[i] - eb) / eb;
    for (int i = 0; i < 4096; i++) *chi_12 += (h12[i] - e12) * (h12[i] - e12) / e12;
}

static double pearson(const uint32_t *a, const uint32_t *b, size_t n)
{
    double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
    for (size_t i = 0; i < n; i++) {
        double x = (int32_t)a[i], y = (int32_t)b[i];
        sa += x; sb += y; saa += x * x; sbb += y * y; sab += x * y;
    }
    double cov = sab / n - sa / n * sb / n, va = saa / n - sa / n * sa / n, vb = sbb / n - sb / n * sb / n;
    return cov / sqrt(va * vb);
}

static void test_uniform(void)
{
    enum { P = 65535 };
    fs_secagg_params p;
    round_cfg c;
    cfg_init(&c, 5, 3, 4, P + 1, 11);
    params_of(&c, &p);
    fs_secagg_site *all[5] = {0};
    fs_secagg_server *srv = NULL;
    fs_secagg_site *s = ready_site(&p, &srv, all);
    CHECK(s != NULL, "set-up failed");
    if (!s) return;
    /* A realistic update: Gaussian, σ = 0.01, quantised for 5 sites, C = 1. */
    float *x = malloc(P * sizeof *x);
    uint32_t *q = malloc((P + 1) * 4), *y = malloc((P + 1) * 4), *y2 = malloc((P + 1) * 4);
    fs_rng r;
    fs_rng_seed(&r, 2024, 0);
    for (int i = 0; i < P; i++) x[i] = (float)(0.01 * fs_rng_normal(&r));
    int f;
    CHECK(fs_secagg_quant_bits(1.0, 5, &f) == FS_OK, "f");
    CHECK(fs_secagg_encode_update(x, P, 50, 100, 1.0, f, 3, q) == FS_OK, "encode");
    CHECK(fs_secagg_site_mask(s, q, 0, P + 1, y) == FS_OK, "mask");
    /* aliasing: masking in place gives the same words */
    memcpy(y2, q, (P + 1) * 4);
    CHECK(fs_secagg_site_mask(s, y2, 0, P + 1, y2) == FS_OK && memcmp(y, y2, (P + 1) * 4) == 0,
          "masking in place differs");
    /* the same masks as keys for the backend op a GPU site uses (CPU op
     * here; the CUDA op equals it, test_aggops_cuda) */
    {
        fs_mask_key *mk = NULL;
        int nk = 0;
        memcpy(y2, q, (P + 1) * 4);
        CHECK(fs_secagg_site_mask_keys(s, &mk, &nk) == FS_OK && nk >= 2, "site mask keys (%d)", nk);
        CHECK(mk && fs_backend_cpu()->chacha_mask(NULL, P + 1, y2, 0, mk, nk) == FS_OK &&
                  memcmp(y, y2, (P + 1) * 4) == 0,
              "the exported mask keys give the same masked vector");
        fs_secagg_unmask_keys_free(mk, nk);
    }
    /* Thresholds for a false failure probability near 1e-9 (z = 6), from the
     * Wilson–Hilferty approximation k(1 - 2/(9k) + z·sqrt(2/(9k)))^3:
     * k = 255 → 415; k = 4095 → 4662. |r| < 6/sqrt(N). */
    double chib, chi12;
    stats(y, P + 1, &chib, &chi12);
    double rq = pearson(q, y, P + 1);
    fprintf(stderr, "masked: chi2 bytes %.1f (< 415), chi2 12-bit %.1f (< 4662), r(q, y) %.5f (|r| < %.4f)\n",
            chib, chi12, rq, 6 / sqrt(P + 1.0));
    CHECK(chib < 415, "masked bytes not uniform: chi2 %.1f", chib);
    CHECK(chi12 < 4662, "masked 12-bit buckets not uniform: chi2 %.1f", chi12);
    CHECK(fabs(rq) < 6 / sqrt(P + 1.0), "masked input correlates with the update: r = %g", rq);
    /* The same statistics reject the unmasked update (the test has power). */
    double qb, q12;
    stats(q, P + 1, &qb, &q12);
    fprintf(stderr, "unmasked: chi2 bytes %.0f, chi2 12-bit %.0f\n", qb, q12);
    CHECK(qb > 415 && q12 > 4662, "the uniformity test cannot tell the update from noise");
    /* Another input under the same masks: the difference of masked vectors is
     * the difference of inputs (masks are input-independent)... */
    for (int i = 0; i <= P; i++) y2[i] = q[i] + 12345u;
    CHECK(fs_secagg_site_mask(s, y2, 0, P + 1, y2) == FS_OK, "mask");
    int diff = 0;
    for (int i = 0; i <= P; i++) diff += y2[i] - y[i] != 12345u;
    CHECK(diff == 0, "mask depends on the input");
    free(x); free(q); free(y); free(y2);
    for (int u = 0; u < 5; u++) fs_secagg_site_free(all[u]);
    fs_secagg_server_free(srv);
}

/* ---- tampering ------------------------------------------------------------------------ */

static void test_tampering(void)
{
    fs_secagg_params p;
    round_cfg c;
    cfg_init(&c, 5, 3, 4, 8, 21);
    params_of(&c, &p);
    fs_log_set_level(FS_LOG_QUIET);

    /* Relays for site 1, tampered in five ways; each fresh set-up. */
    for (int how = 0; how < 5; how++) {
        fs_secagg_site *all[5] = {0};
        fs_secagg_server *srv = NULL;
        uint8_t *m, *keys;
        size_t ml, kl;
        int setup = fs_secagg_server_new(&p, &srv) == FS_OK;
        for (uint32_t u = 0; u < 5 && setup; u++) {
            setup = fs_secagg_site_new(&p, u, &all[u]) == FS_OK && fs_secagg_site_advertise(all[u], &m, &ml) == FS_OK &&
                    fs_secagg_server_recv_advertise(srv, u, m, ml) == FS_OK;
            if (setup) fs_secagg_msg_free(m, ml);
        }
        setup = setup && fs_secagg_server_close_advertise(srv, &keys, &kl) == FS_OK;
        for (uint32_t u = 0; u < 5 && setup; u++) {
            setup = fs_secagg_site_share_keys(all[u], keys, kl, &m, &ml) == FS_OK &&
                    fs_secagg_server_recv_shares(srv, u, m, ml) == FS_OK;
            if (setup) fs_secagg_msg_free(m, ml);
        }
        setup = setup && fs_secagg_server_close_shares(srv) == FS_OK &&
                fs_secagg_server_relay(srv, 1, &m, &ml) == FS_OK;
        CHECK(setup, "set-up %d failed", how);
        if (!setup) return;
        fs_secagg_msg_relay rm;
        char why[256];
        CHECK(fs_secagg_dec_relay(m, ml, p.round, p.n_sites, &rm, why, sizeof why) == FS_OK, "%s", why);
        const char *what = "";
        if (how == 0) { rm.e[1].ct[17] ^= 1; what = "a flipped ciphertext byte"; }
        if (how == 1) { rm.e[2].nonce[0] ^= 0x80; what = "a flipped nonce byte"; }
        if (how == 2) { /* site 2's ciphertext presented as site 3's */
            fs_secagg_ctent t = rm.e[1];
            memcpy(rm.e[1].ct, rm.e[2].ct, sizeof t.ct); memcpy(rm.e[1].nonce, rm.e[2].nonce, 24);
            memcpy(rm.e[2].ct, t.ct, sizeof t.ct); memcpy(rm.e[2].nonce, t.nonce, 24);
            what = "swapped senders";
        }
        if (how == 3) { /* the server seals a share of its own under a made-up key */
            uint8_t k[32], pt[64] = {0}, ad[25];
            randombytes_buf(k, 32);
            memcpy(ad, "FSSA", 4); ad[4] = FS_SECAGG_VERSION;
            for (int i = 0; i < 8; i++) ad[5 + i] = (uint8_t)(p.round >> (8 * i));
            for (int i = 0; i < 4; i++) ad[13 + i] = (uint8_t)(p.n_sites >> (8 * i));
            for (int i = 0; i < 4; i++) ad[17 + i] = (uint8_t)(rm.e[0].peer >> (8 * i));
            for (int i = 0; i < 4; i++) ad[21 + i] = (uint8_t)(1u >> (8 * i));
            randombytes_buf(rm.e[0].nonce, 24);
            crypto_aead_xchacha20poly1305_ietf_encrypt(rm.e[0].ct, NULL, pt, 64, ad, 25, NULL, rm.e[0].nonce, k);
            what = "a share forged under a made-up key";
        }
        if (how == 4) { /* ... under a key from its own X25519 pair and site 1's c_pk */
            uint8_t sk[32], pk[32], shared[32], k[32], pt[64] = {0};
            fs_secagg_msg_keys *km = malloc(sizeof *km);
            CHECK(fs_secagg_dec_keys(keys, kl, p.round, p.n_sites, km, why, sizeof why) == FS_OK, "keys");
            crypto_box_keypair(pk, sk);
            CHECK(crypto_scalarmult(shared, sk, km->e[1].c_pk) == 0, "dh");
            crypto_generichash(k, 32, shared, 32, NULL, 0);
            randombytes_buf(rm.e[3].nonce, 24);
            crypto_aead_xchacha20poly1305_ietf_encrypt(rm.e[3].ct, NULL, pt, 64, NULL, 0, NULL, rm.e[3].nonce, k);
            free(km);
            what = "a share forged with the server's own key pair";
        }
        uint8_t *bad;
        size_t bl;
        CHECK(fs_secagg_enc_relay(p.round, p.n_sites, &rm, &bad, &bl) == FS_OK, "encode");
        fs_status st = fs_secagg_site_recv_shares(all[1], bad, bl);
        CHECK(st == FS_ERR_CHECKSUM, "%s: accepted (%s)", what, fs_status_str(st));
        uint32_t qq[8] = {0}, yy[8];
        CHECK(fs_secagg_site_mask(all[1], qq, 0, 8, yy) == FS_ERR_ABANDONED, "%s: site still masks", what);
        /* the untouched relay is still fine for another site */
        fs_secagg_msg_free(m, ml);
        CHECK(fs_secagg_server_relay(srv, 2, &m, &ml) == FS_OK && fs_secagg_site_recv_shares(all[2], m, ml) == FS_OK,
              "an honest relay refused");
        fs_secagg_msg_free(m, ml);
        fs_secagg_msg_free(bad, bl);
        fs_secagg_msg_free(keys, kl);
        for (int u = 0; u < 5; u++) fs_secagg_site_free(all[u]);
        fs_secagg_server_free(srv);
    }

    /* A wrong share at unmasking: outvoted with 5 holders; fatal with exactly t. */
    cfg_init(&c, 5, 3, 4, 30, 31);
    c.corrupt_rsp = 2;
    run_round(&c);
    CHECK(c.st == FS_OK && c.exact, "one corrupt share among 5 not outvoted: %s", fs_status_str(c.st));
    cfg_free(&c);
    cfg_init(&c, 5, 3, 4, 30, 32);
    c.corrupt_rsp = 2;
    c.drop[3] = c.drop[4] = 4; /* only 3 responses: exactly t shares of each secret */
    run_round(&c);
    CHECK(c.st == FS_ERR_ABANDONED && c.untouched, "a corrupt share with exactly t shares: %s",
          fs_status_str(c.st));
    cfg_free(&c);
    fs_log_set_level(FS_LOG_INFO);
}

/* Inconsistent requests and responses, and calls out of order. */
static void test_protocol_refusals(void)
{
    fs_secagg_params p;
    round_cfg c;
    cfg_init(&c, 5, 3, 4, 8, 41);
    params_of(&c, &p);
    fs_log_set_level(FS_LOG_QUIET);
    fs_secagg_site *all[5] = {0};
    fs_secagg_server *srv = NULL;
    fs_secagg_site *s = ready_site(&p, &srv, all);
    CHECK(s != NULL, "set-up");
    if (!s) return;
    uint8_t *m, *req;
    size_t ml, rl;
    uint32_t qv[8] = {1, 2, 3, 4, 5, 6, 7, 8}, yv[8];
    CHECK(fs_secagg_site_mask(s, qv, 4, 5, yv) == FS_ERR_ARG, "mask past n_words accepted");
    CHECK(fs_secagg_site_advertise(s, &m, &ml) == FS_ERR_ARG, "advertise out of order accepted");
    CHECK(fs_secagg_server_close_masked(srv, &req, &rl) == FS_ERR_ABANDONED, "0 masked inputs closed");
    CHECK(fs_secagg_server_masked_received(srv, 0) == FS_ERR_ABANDONED, "abandoned server took input");
    fs_secagg_server_free(srv);
    srv = NULL;
    /* requests the honest site must refuse */
    fs_secagg_msg_unmask_req rq;
    const struct { uint32_t na, a[5], nd, d[5]; const char *what; } bad[] = {
        {2, {0, 1}, 3, {2, 3, 4}, "fewer than t survivors"},
        {3, {1, 2, 3}, 2, {0, 4}, "this site listed as dropped"},
        {3, {0, 1, 2}, 1, {3}, "a neighbour that shared omitted"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        fs_secagg_site *t[5] = {0};
        fs_secagg_server *sv = NULL;
        fs_secagg_site *si = ready_site(&p, &sv, t);
        rq.n_alive = bad[i].na;
        rq.n_dropped = bad[i].nd;
        memcpy(rq.alive, bad[i].a, sizeof bad[i].a);
        memcpy(rq.dropped, bad[i].d, sizeof bad[i].d);
        CHECK(fs_secagg_enc_unmask_req(p.round, p.n_sites, &rq, &req, &rl) == FS_OK, "encode");
        CHECK(si && fs_secagg_site_unmask(si, req, rl, &m, &ml) == FS_ERR_MISMATCH, "request with %s answered",
              bad[i].what);
        fs_secagg_msg_free(req, rl);
        for (int u = 0; u < 5; u++) fs_secagg_site_free(t[u]);
        fs_secagg_server_free(sv);
    }
    /* a spoofed sender, and keys the server altered */
    fs_secagg_server *sv;
    fs_secagg_site *a;
    CHECK(fs_secagg_server_new(&p, &sv) == FS_OK && fs_secagg_site_new(&p, 1, &a) == FS_OK, "new");
    CHECK(fs_secagg_site_advertise(a, &m, &ml) == FS_OK, "advertise");
    CHECK(fs_secagg_server_recv_advertise(sv, 2, m, ml) == FS_ERR_MISMATCH, "site 2 sent site 1's keys");
    CHECK(fs_secagg_server_recv_advertise(sv, 1, m, ml) == FS_OK, "advertise refused");
    CHECK(fs_secagg_server_recv_advertise(sv, 1, m, ml) == FS_ERR_ARG, "keys accepted twice");
    fs_secagg_msg_keys km;
    km.count = 1;
    fs_secagg_msg_advertise adv;
    char why[256];
    CHECK(fs_secagg_dec_advertise(m, ml, p.round, p.n_sites, &adv, why, sizeof why) == FS_OK, "%s", why);
    km.e[0] = adv.k;
    km.e[0].s_pk[0] ^= 1;
    uint8_t *kb;
    size_t kbl;
    CHECK(fs_secagg_enc_keys(p.round, p.n_sites, &km, &kb, &kbl) == FS_OK, "encode");
    CHECK(fs_secagg_site_share_keys(a, kb, kbl, &m, &ml) == FS_ERR_MISMATCH, "altered own keys accepted");
    fs_secagg_msg_free(kb, kbl);
    fs_secagg_msg_free(m, ml);
    fs_secagg_site_free(a);
    fs_secagg_server_free(sv);
    for (int u = 0; u < 5; u++) fs_secagg_site_free(all[u]);
    /* bad parameters */
    fs_secagg_params bp = p;
    bp.threshold = 5;
    CHECK(fs_secagg_params_check(&bp) == FS_ERR_ARG, "t > k accepted");
    bp = p; bp.n_sites = 10; bp.neighbours = 5;
    CHECK(fs_secagg_params_check(&bp) == FS_ERR_ARG, "odd sparse k accepted");
    bp = p; bp.n_sites = 256; bp.neighbours = 255;
    CHECK(fs_secagg_params_check(&bp) == FS_ERR_ARG, "256 sites accepted");
    bp = p; bp.round = 0;
    CHECK(fs_secagg_params_check(&bp) == FS_ERR_ARG, "round 0 accepted");
    fs_log_set_level(FS_LOG_INFO);
}

/* ---- decoders ---------------------------------------------------------------------------- */

static fs_status decode_any(int type, const uint8_t *b, size_t n, uint64_t round, uint32_t ns, char *why)
{
    static union {
        fs_secagg_msg_advertise a; fs_secagg_msg_keys k; fs_secagg_msg_shares s;
        fs_secagg_msg_relay r; fs_secagg_msg_unmask_req q; fs_secagg_msg_unmask_rsp p;
    } u;
    switch (type) {
    case FS_SECAGG_MSG_ADVERTISE: return fs_secagg_dec_advertise(b, n, round, ns, &u.a, why, 256);
    case FS_SECAGG_MSG_KEYS: return fs_secagg_dec_keys(b, n, round, ns, &u.k, why, 256);
    case FS_SECAGG_MSG_SHARES: return fs_secagg_dec_shares(b, n, round, ns, &u.s, why, 256);
    case FS_SECAGG_MSG_RELAY: return fs_secagg_dec_relay(b, n, round, ns, &u.r, why, 256);
    case FS_SECAGG_MSG_UNMASK_REQ: return fs_secagg_dec_unmask_req(b, n, round, ns, &u.q, why, 256);
    default: return fs_secagg_dec_unmask_rsp(b, n, round, ns, &u.p, why, 256);
    }
}

static void test_decoders(void)
{
    round_cfg c;
    cfg_init(&c, 5, 3, 4, 8, 51);
    run_round(&c);
    CHECK(c.st == FS_OK, "honest round for the decoder tests: %s", fs_status_str(c.st));
    for (int type = 1; type <= 6; type++) {
        uint8_t *b = c.msg[type];
        size_t n = c.msg_len[type];
        char why[256];
        CHECK(b != NULL, "no message of type %d kept", type);
        if (!b) continue;
        uint8_t *w = malloc(n + 1);
        CHECK(decode_any(type, b, n, 7, 5, why) == FS_OK, "type %d: honest message refused: %s", type, why);
        int trunc = 0, silent = 0;
        for (size_t k = 0; k < n; k++) {
            why[0] = '\0';
            trunc += decode_any(type, b, k, 7, 5, why) != FS_ERR_FORMAT;
            silent += !why[0];
        }
        CHECK(trunc == 0 && silent == 0, "type %d: %d truncation(s) not refused as malformed, %d without a reason",
              type, trunc, silent);
        memcpy(w, b, n);
        w[n] = 0;
        CHECK(decode_any(type, w, n + 1, 7, 5, why) == FS_ERR_FORMAT && strstr(why, "trailing"),
              "type %d: trailing byte accepted", type);
        struct { size_t at; uint8_t x; fs_status want; const char *what; } flips[] = {
            {0, 0x01, FS_ERR_FORMAT, "magic"}, {4, 0x03, FS_ERR_MISMATCH, "version"},
            {5, 0x07, FS_ERR_FORMAT, "type"}, {6, 0x01, FS_ERR_FORMAT, "reserved"},
            {8, 0x01, FS_ERR_MISMATCH, "round"}, {15, 0x80, FS_ERR_MISMATCH, "round high byte"},
            {16, 0x02, FS_ERR_MISMATCH, "n_sites"}, {20, 0x40, FS_ERR_FORMAT, "sender"},
        };
        for (size_t i = 0; i < sizeof flips / sizeof *flips; i++) {
            memcpy(w, b, n);
            w[flips[i].at] ^= flips[i].x;
            fs_status st = decode_any(type, w, n, 7, 5, why);
            CHECK(st == flips[i].want, "type %d: changed %s gives %s", type, flips[i].what, fs_status_str(st));
        }
        CHECK(decode_any(type, b, n, 8, 5, why) == FS_ERR_MISMATCH && strstr(why, "round"),
              "type %d: another round accepted", type);
        if (type != FS_SECAGG_MSG_ADVERTISE) { /* a count of 2^32-1 */
            size_t at = FS_SECAGG_HDR_BYTES + (type == FS_SECAGG_MSG_RELAY ? 4 : 0);
            memcpy(w, b, n);
            memset(w + at, 0xff, 4);
            CHECK(decode_any(type, w, n, 7, 5, why) == FS_ERR_FORMAT, "type %d: huge count accepted", type);
        }
        free(w);
    }
    /* round trips: decode then encode gives the same bytes */
    {
        fs_secagg_msg_relay rm;
        fs_secagg_msg_unmask_req rq;
        uint8_t *o;
        size_t ol;
        char why[256];
        CHECK(fs_secagg_dec_relay(c.msg[4], c.msg_len[4], 7, 5, &rm, why, sizeof why) == FS_OK &&
                  fs_secagg_enc_relay(7, 5, &rm, &o, &ol) == FS_OK && ol == c.msg_len[4] &&
                  memcmp(o, c.msg[4], ol) == 0, "relay round trip");
        free(o);
        CHECK(fs_secagg_dec_unmask_req(c.msg[5], c.msg_len[5], 7, 5, &rq, why, sizeof why) == FS_OK, "req");
        rq.dropped[rq.n_dropped++] = rq.alive[0]; /* both alive and dropped */
        CHECK(fs_secagg_enc_unmask_req(7, 5, &rq, &o, &ol) == FS_OK, "encode");
        CHECK(fs_secagg_dec_unmask_req(o, ol, 7, 5, &rq, why, sizeof why) == FS_ERR_FORMAT,
              "a site both alive and dropped accepted");
        free(o);
    }
    /* FS_SECAGG_CORPUS=DIR writes these messages as fuzzing seeds
     * (tests/fuzz/corpus/secagg: first byte = type - 1, as fuzz_secagg reads). */
    const char *dir = getenv("FS_SECAGG_CORPUS");
    for (int type = 1; dir && type <= 6; type++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/seed_type%d", dir, type);
        FILE *fp = fopen(path, "wb");
        if (!fp) continue;
        fputc(type - 1, fp);
        fwrite(c.msg[type], 1, c.msg_len[type], fp);
        fclose(fp);
    }
    cfg_free(&c);
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    test_expand();
    test_shamir();
    test_quantise();
    test_decoders();
    test_tampering();
    test_protocol_refusals();
    test_uniform();
    test_rounds_full();
    test_rounds_sparse(10, 4, 3, 200);
    test_rounds_sparse(10, 6, 4, 200);
    return check_result();
}
