/*
 * common/he.c — the multiparty BFV-style scheme of common/he.h on the CPU:
 * context and common random polynomial, key shares, collective public key,
 * Shamir dealing of key shares, encryption, ciphertext sums, smudged partial
 * decryptions, their combination and decoding, and quantisation.
 *
 * Arithmetic is RNS over q = q0·q1: each polynomial is two residue vectors;
 * small integers (secrets, errors, messages, smudging) are one signed value
 * per coefficient reduced into each residue. Products go through the NTT of
 * common/he_ntt.c; pointwise products with fixed operands (a, b) use Shoup
 * companions. Randomness: secrets, errors and smudging from ChaCha20 keyed by
 * 32 bytes of the OS CSPRNG (libsodium randombytes_buf); the common random
 * polynomial from ChaCha20 keyed by BLAKE2b of the public seed; stochastic
 * rounding from Philox (kernels/philox.h; not secret).
 *
 * Noise (worst case, every draw bounded; see docs/security.md § Encrypted aggregation): a fresh
 * ciphertext decrypts to Δ·m + v with v = e_pk·u + e0 + e1·s, where
 * ‖e_pk‖∞ ≤ n·B_e and ‖s‖∞ ≤ n (sums of n shares), ‖u‖∞ ≤ 1, so
 * ‖v‖∞ ≤ 2·N·n·B_e + B_e. A sum of k ciphertexts has k times that; t partials
 * add at most t·2^S; decoding is exact while the total stays below
 * Δ/2 − t (t here the plaintext modulus).
 *
 * Tested by tests/test_he.c.
 */
#include "common/he.h"
#include "common/log.h"
#include "kernels/philox.h"

#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;

static const uint64_t he_q[FS_HE_L] = { FS_HE_Q0, FS_HE_Q1 };

static u128 q_full(void) { return (u128)FS_HE_Q0 * FS_HE_Q1; }
static u128 delta_full(void) { return q_full() >> FS_HE_PLAIN_BITS; }

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
static inline uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
#endif

/* Signed small value v (|v| < q) as a residue mod q. */
static inline uint64_t to_res(int64_t v, uint64_t q)
{
    return v >= 0 ? (uint64_t)v % q : q - ((uint64_t)(-(v + 1)) % q + 1) % q;
}

/* A small signed value v (|v| < q) as a residue mod q, without a division. */
static inline uint64_t small_res(int64_t v, uint64_t q)
{
    return (uint64_t)v + (q & (uint64_t)-(int64_t)(v < 0));
}

/* Population count of a 21-bit field, branch-free and without a libgcc call
 * (a portable build has no POPCNT instruction to inline). */
static inline uint64_t pop21(uint64_t x)
{
    x = x - ((x >> 1) & 0x55555555ull);
    x = (x & 0x33333333ull) + ((x >> 2) & 0x33333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0full;
    return (x * 0x01010101ull & 0xffffffffull) >> 24;
}

/* a·w mod q in [0, q), wp the Shoup companion of w. */
static inline uint64_t mul_shoup(uint64_t a, uint64_t w, uint64_t wp, uint64_t q)
{
    uint64_t hi = (uint64_t)(((u128)a * wp) >> 64);
    uint64_t r = a * w - hi * q;
    return r >= q ? r - q : r;
}

static uint64_t shoup_of(uint64_t w, uint64_t q) { return (uint64_t)(((u128)w << 64) / q); }

static uint64_t powmod(uint64_t b, uint64_t e, uint64_t q)
{
    uint64_t r = 1;
    b %= q;
    while (e) {
        if (e & 1) r = fs_he_mulmod(r, b, q);
        b = fs_he_mulmod(b, b, q);
        e >>= 1;
    }
    return r;
}

/* nwords 64-bit words of ChaCha20-IETF(key, nonce = le64(nonce) ‖ 0^4),
 * starting at word `first` (a multiple of 8: one 64-byte block). */
static void expand(const uint8_t key[32], uint64_t nonce, uint64_t first, uint64_t *words,
                   size_t nwords)
{
    uint8_t nb[crypto_stream_chacha20_ietf_NONCEBYTES] = { 0 };
    for (int i = 0; i < 8; i++) nb[i] = (uint8_t)(nonce >> (8 * i));
    memset(words, 0, nwords * 8);
    crypto_stream_chacha20_ietf_xor_ic((uint8_t *)words, (const uint8_t *)words, nwords * 8, nb,
                                       (uint32_t)(first / 8), key);
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    for (size_t i = 0; i < nwords; i++) words[i] = le64((const uint8_t *)&words[i]);
#endif
}

/* The samplers shared with kernels/cuda/he_encrypt.cu: a word → ternary or
 * centred binomial (η = 21). The smudging value of a word w is
 * (w >> (63 − S)) − 2^S, reduced per prime in fs_he_partial_decrypt. */
static inline int64_t word_ternary(uint64_t w) { return (int64_t)(w % 3) - 1; }
static inline int64_t word_cbd(uint64_t w)
{
    return (int64_t)pop21(w & 0x1fffffull) - (int64_t)pop21((w >> 21) & 0x1fffffull);
}

/* ---- context ------------------------------------------------------------ */

fs_status fs_he_ctx_init(fs_he_ctx *c, const uint8_t crs_seed[FS_HE_SEED_BYTES])
{
    memset(c, 0, sizeof *c);
    if (sodium_init() < 0) {
        fs_log_error("he: libsodium failed to initialise");
        return FS_ERR_UNSUPPORTED;
    }
    const u128 delta = delta_full();
    for (unsigned j = 0; j < FS_HE_L; j++) {
        c->q[j] = he_q[j];
        fs_status st = fs_he_ntt_init(&c->ntt[j], he_q[j], FS_HE_N);
        if (st != FS_OK) {
            fs_log_error("he: NTT tables for prime %u failed (%s)", j, fs_status_str(st));
            fs_he_ctx_free(c);
            return st;
        }
        c->delta[j] = (uint64_t)(delta % he_q[j]);
    }
    c->plain_mod = 1ull << FS_HE_PLAIN_BITS;
    memcpy(c->crs_seed, crs_seed, FS_HE_SEED_BYTES);
    c->a_hat = malloc(2 * (size_t)FS_HE_POLY_WORDS * sizeof(uint64_t));
    if (!c->a_hat) {
        fs_he_ctx_free(c);
        return FS_ERR_NOMEM;
    }
    c->a_hat_p = c->a_hat + FS_HE_POLY_WORDS;
    /* a is sampled directly in NTT form (the NTT of a uniform polynomial is
     * uniform): rejection sampling of 47-bit words below q_j. */
    uint8_t key[32];
    static const char dom[] = "fedseg-he-crs-v1";
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, NULL, 0, sizeof key);
    crypto_generichash_update(&hs, (const uint8_t *)dom, sizeof dom - 1);
    crypto_generichash_update(&hs, crs_seed, FS_HE_SEED_BYTES);
    crypto_generichash_final(&hs, key, sizeof key);
    uint64_t buf[512];
    for (unsigned j = 0; j < FS_HE_L; j++) {
        uint64_t *dst = c->a_hat + (size_t)j * FS_HE_N;
        size_t got = 0;
        uint64_t word = 0;
        while (got < FS_HE_N) {
            expand(key, j, word, buf, 512);
            word += 512;
            for (size_t i = 0; i < 512 && got < FS_HE_N; i++) {
                uint64_t v = buf[i] & ((1ull << FS_HE_QBITS) - 1);
                if (v < he_q[j]) dst[got++] = v;
            }
        }
        for (size_t i = 0; i < FS_HE_N; i++)
            c->a_hat_p[(size_t)j * FS_HE_N + i] = shoup_of(dst[i], he_q[j]);
    }
    return FS_OK;
}

void fs_he_ctx_free(fs_he_ctx *c)
{
    if (!c) return;
    for (unsigned j = 0; j < FS_HE_L; j++) fs_he_ntt_free(&c->ntt[j]);
    free(c->a_hat);
    memset(c, 0, sizeof *c);
}

size_t fs_he_ct_count(size_t count) { return (count + 1 + FS_HE_N - 1) / FS_HE_N; }

double fs_he_noise_bound(uint32_t n, uint32_t k)
{
    return (double)k * (2.0 * FS_HE_N * (double)n * FS_HE_CBD_ETA + FS_HE_CBD_ETA);
}

double fs_he_noise_budget(void)
{
    return (double)(delta_full() / 2 - ((u128)1 << FS_HE_PLAIN_BITS));
}

/* Largest n with n·(2·N·n·B_e + B_e) + n·2^S ≤ Δ/2 − t, in exact integers:
 * n sites contribute, the key has n shares, up to n partials are summed. */
uint32_t fs_he_max_sites_noise(void)
{
    const u128 budget = delta_full() / 2 - ((u128)1 << FS_HE_PLAIN_BITS);
    uint32_t best = 0;
    for (uint64_t n = 1; n <= FS_HE_MAX_PARTIES; n++) {
        u128 fresh = (u128)n * (2 * (u128)FS_HE_N * n * FS_HE_CBD_ETA + FS_HE_CBD_ETA);
        u128 smudge = (u128)n << FS_HE_SMUDGE_BITS;
        if (fresh + smudge > budget) break;
        best = (uint32_t)n;
    }
    return best;
}

/* Largest |quantised value|: max(⌈C·2^f⌉, 2^f) + 1 (the weight coefficient
 * is at most 2^f + 1 even when C < 1). 0 for an invalid quantiser. */
static uint64_t quant_bound(const fs_he_quant *qz)
{
    if (!qz || !(qz->clip > 0.0f) || !isfinite(qz->clip) || qz->frac_bits > 24) return 0;
    double scaled = ceil((double)qz->clip * ldexp(1.0, (int)qz->frac_bits));
    double one = ldexp(1.0, (int)qz->frac_bits);
    double b = (scaled > one ? scaled : one) + 1.0;
    if (b >= ldexp(1.0, FS_HE_PLAIN_BITS - 1)) return 0;
    return (uint64_t)b;
}

uint32_t fs_he_max_sites(const fs_he_quant *qz)
{
    const uint64_t b = quant_bound(qz);
    if (!b) return 0;
    /* n·b ≤ t/2 − 1: the centred sum never wraps. */
    uint64_t plain = ((1ull << (FS_HE_PLAIN_BITS - 1)) - 1) / b;
    uint32_t noise = fs_he_max_sites_noise();
    return plain < noise ? (uint32_t)plain : noise;
}

/* ---- keys --------------------------------------------------------------- */

/* NTT of a small signed polynomial into both residues: out[j·N + i]. */
static void small_to_ntt(const fs_he_ctx *c, const int64_t *v, uint64_t *out)
{
    for (unsigned j = 0; j < FS_HE_L; j++) {
        uint64_t *o = out + (size_t)j * FS_HE_N;
        for (size_t i = 0; i < FS_HE_N; i++) o[i] = to_res(v[i], c->q[j]);
        fs_he_ntt_fwd(&c->ntt[j], o);
    }
}

fs_status fs_he_keygen(const fs_he_ctx *c, uint32_t site, fs_he_secret *sk, uint64_t *pk_share)
{
    if (!c || !c->a_hat || !sk || !pk_share || site == 0 || site > FS_HE_MAX_PARTIES) {
        fs_log_error("he: keygen: invalid arguments (site %u)", site);
        return FS_ERR_ARG;
    }
    uint8_t seed[32];
    randombytes_buf(seed, sizeof seed);
    uint64_t *w = malloc(2 * (size_t)FS_HE_N * sizeof *w);
    int64_t *v = malloc((size_t)FS_HE_N * sizeof *v);
    uint64_t *e_hat = malloc((size_t)FS_HE_POLY_WORDS * sizeof *e_hat);
    if (!w || !v || !e_hat) {
        free(w); free(v); free(e_hat);
        sodium_memzero(seed, sizeof seed);
        return FS_ERR_NOMEM;
    }
    expand(seed, 0, 0, w, 2 * (size_t)FS_HE_N);
    sk->site = site;
    for (size_t i = 0; i < FS_HE_N; i++) {
        sk->s[i] = (int8_t)word_ternary(w[i]);
        v[i] = sk->s[i];
    }
    small_to_ntt(c, v, sk->s_hat);
    for (size_t i = 0; i < FS_HE_N; i++) v[i] = word_cbd(w[FS_HE_N + i]);
    small_to_ntt(c, v, e_hat);
    /* p = −a·s + e, pointwise in NTT form. */
    for (unsigned j = 0; j < FS_HE_L; j++) {
        const uint64_t q = c->q[j];
        for (size_t i = 0; i < FS_HE_N; i++) {
            size_t x = (size_t)j * FS_HE_N + i;
            uint64_t as = mul_shoup(sk->s_hat[x], c->a_hat[x], c->a_hat_p[x], q);
            uint64_t r = e_hat[x] + (q - as);
            pk_share[x] = r >= q ? r - q : r;
        }
    }
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(w, 2 * (size_t)FS_HE_N * sizeof *w);
    sodium_memzero(v, (size_t)FS_HE_N * sizeof *v);
    sodium_memzero(e_hat, (size_t)FS_HE_POLY_WORDS * sizeof *e_hat);
    free(w); free(v); free(e_hat);
    return FS_OK;
}

void fs_he_secret_free(fs_he_secret *sk)
{
    if (sk) sodium_memzero(sk, sizeof *sk);
}

/* Key id: first 8 bytes of BLAKE2b(seed ‖ b residues as little-endian). */
static void key_id_of(const fs_he_ctx *c, const uint64_t *b_hat, uint8_t out[FS_HE_KEYID_BYTES])
{
    crypto_generichash_state hs;
    uint8_t d[32];
    crypto_generichash_init(&hs, NULL, 0, sizeof d);
    crypto_generichash_update(&hs, c->crs_seed, FS_HE_SEED_BYTES);
    uint8_t le[8];
    for (size_t i = 0; i < FS_HE_POLY_WORDS; i++) {
        for (int k = 0; k < 8; k++) le[k] = (uint8_t)(b_hat[i] >> (8 * k));
        crypto_generichash_update(&hs, le, 8);
    }
    crypto_generichash_final(&hs, d, sizeof d);
    memcpy(out, d, FS_HE_KEYID_BYTES);
}

fs_status fs_he_pk_combine(const fs_he_ctx *c, const uint64_t *const *pk_shares, uint32_t n,
                           fs_he_pubkey *pk)
{
    if (!c || !pk_shares || !pk || n == 0 || n > FS_HE_MAX_PARTIES) {
        fs_log_error("he: pk_combine: invalid arguments (%u shares)", n);
        return FS_ERR_ARG;
    }
    memset(pk, 0, sizeof *pk);
    for (uint32_t s = 0; s < n; s++) {
        if (!pk_shares[s]) {
            fs_log_error("he: pk_combine: share %u missing", s);
            return FS_ERR_ARG;
        }
        for (size_t x = 0; x < FS_HE_POLY_WORDS; x++) {
            const uint64_t q = c->q[x / FS_HE_N];
            if (pk_shares[s][x] >= q) {
                fs_log_error("he: pk_combine: share %u residue %zu out of range", s, x);
                return FS_ERR_ARG;
            }
            uint64_t r = pk->b_hat[x] + pk_shares[s][x];
            pk->b_hat[x] = r >= q ? r - q : r;
        }
    }
    for (size_t x = 0; x < FS_HE_POLY_WORDS; x++)
        pk->b_hat_p[x] = shoup_of(pk->b_hat[x], c->q[x / FS_HE_N]);
    pk->n_sites = n;
    key_id_of(c, pk->b_hat, pk->key_id);
    return FS_OK;
}

/* Uniform residues below q_j from ChaCha20 words (47-bit rejection). */
static void uniform_fill(const uint8_t key[32], uint64_t nonce, uint64_t q, uint64_t *out,
                         size_t count)
{
    uint64_t buf[512], word = 0;
    size_t got = 0;
    while (got < count) {
        expand(key, nonce, word, buf, 512);
        word += 512;
        for (size_t i = 0; i < 512 && got < count; i++) {
            uint64_t v = buf[i] & ((1ull << FS_HE_QBITS) - 1);
            if (v < q) out[got++] = v;
        }
    }
    sodium_memzero(buf, sizeof buf);
}

fs_status fs_he_shamir_deal(const fs_he_ctx *c, const fs_he_secret *sk, uint32_t n, uint32_t t,
                            uint64_t *out)
{
    if (!c || !sk || !out || n > FS_HE_MAX_PARTIES || t < 2 || t > n) {
        fs_log_error("he: shamir_deal: need 2 <= threshold (%u) <= sites (%u) <= %u", t, n,
                     FS_HE_MAX_PARTIES);
        return FS_ERR_ARG;
    }
    const size_t nr = (size_t)(t - 1) * FS_HE_N;
    uint64_t *r = malloc(nr * sizeof *r);
    if (!r) return FS_ERR_NOMEM;
    uint8_t seed[32];
    randombytes_buf(seed, sizeof seed);
    for (unsigned j = 0; j < FS_HE_L; j++) {
        const uint64_t q = c->q[j];
        /* r[d·N + i]: coefficient d+1 of the sharing polynomial of
         * coefficient i, residue j. */
        uniform_fill(seed, j, q, r, nr);
        for (uint32_t k = 1; k <= n; k++) {
            uint64_t *o = out + (size_t)(k - 1) * FS_HE_POLY_WORDS + (size_t)j * FS_HE_N;
            for (size_t i = 0; i < FS_HE_N; i++) {
                /* Horner: acc·k < 2^47·2^16 < 2^63, no 128-bit product. */
                uint64_t acc = 0;
                for (uint32_t d = t - 1; d >= 1; d--) acc = (acc * k + r[(size_t)(d - 1) * FS_HE_N + i]) % q;
                acc = (acc * k + to_res(sk->s[i], q)) % q;
                o[i] = acc;
            }
        }
    }
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(r, nr * sizeof *r);
    free(r);
    return FS_OK;
}

fs_status fs_he_tkey_begin(fs_he_tkey *tk, uint32_t site, uint32_t n, uint32_t t)
{
    if (!tk || site == 0 || site > n || n > FS_HE_MAX_PARTIES || t < 2 || t > n) {
        fs_log_error("he: tkey_begin: invalid site %u, sites %u or threshold %u", site, n, t);
        return FS_ERR_ARG;
    }
    memset(tk, 0, sizeof *tk);
    tk->site = site;
    tk->n_sites = n;
    tk->threshold = t;
    return FS_OK;
}

fs_status fs_he_tkey_add(const fs_he_ctx *c, fs_he_tkey *tk, uint32_t from, const uint64_t *share)
{
    if (!c || !tk || !share || tk->ready || from == 0 || from > tk->n_sites) {
        fs_log_error("he: tkey_add: share from site %u refused (unknown dealer or key closed)",
                     from);
        return FS_ERR_ARG;
    }
    if (tk->got[from / 8] & (1u << (from % 8))) {
        fs_log_error("he: tkey_add: a second share from site %u refused", from);
        return FS_ERR_ARG;
    }
    for (size_t x = 0; x < FS_HE_POLY_WORDS; x++)
        if (share[x] >= c->q[x / FS_HE_N]) {
            fs_log_error("he: tkey_add: share from site %u has residue %zu out of range", from, x);
            return FS_ERR_ARG;
        }
    for (size_t x = 0; x < FS_HE_POLY_WORDS; x++) {
        const uint64_t q = c->q[x / FS_HE_N];
        uint64_t r = tk->f_hat[x] + share[x];
        tk->f_hat[x] = r >= q ? r - q : r;
    }
    tk->got[from / 8] |= (uint8_t)(1u << (from % 8));
    tk->received++;
    return FS_OK;
}

fs_status fs_he_tkey_end(const fs_he_ctx *c, fs_he_tkey *tk)
{
    if (!c || !tk || tk->ready || tk->received != tk->n_sites || tk->n_sites == 0) {
        fs_log_error("he: tkey_end: %u of %u shares received", tk ? tk->received : 0,
                     tk ? tk->n_sites : 0);
        return FS_ERR_ARG;
    }
    for (unsigned j = 0; j < FS_HE_L; j++) fs_he_ntt_fwd(&c->ntt[j], tk->f_hat + (size_t)j * FS_HE_N);
    tk->ready = 1;
    return FS_OK;
}

void fs_he_tkey_free(fs_he_tkey *tk)
{
    if (tk) sodium_memzero(tk, sizeof *tk);
}

/* ---- quantisation --------------------------------------------------------- */

fs_status fs_he_quantise(const fs_he_quant *qz, const float *x, size_t count, float wfrac,
                         uint64_t seed, int64_t *out)
{
    if (!quant_bound(qz) || (count && !x) || !out) {
        fs_log_error("he: quantise: invalid quantiser (clip must be > 0, frac_bits <= 24 and "
                     "small enough for t = 2^%u) or NULL buffer", FS_HE_PLAIN_BITS);
        return FS_ERR_ARG;
    }
    if (!(wfrac >= 0.0f && wfrac <= 1.0f)) {
        fs_log_error("he: quantise: weight fraction w/w_cap = %g outside [0, 1]", (double)wfrac);
        return FS_ERR_ARG;
    }
    const double scale = ldexp(1.0, (int)qz->frac_bits), C = qz->clip;
    for (size_t i = 0; i < count; i++)
        if (!isfinite(x[i])) {
            fs_log_error("he: quantise: value %zu is not finite", i);
            return FS_ERR_NUMERIC;
        }
    /* Value i rounds with word i % 4 of Philox block i / 4 (counter
     * (i/4, i/4 >> 32, 0x4845, 1)). v·scale + u is below 2^25 in magnitude:
     * its floor is the truncation, one less for negative non-integers. */
    const uint32_t key[2] = { (uint32_t)seed, (uint32_t)(seed >> 32) };
    uint32_t r[4] = { 0, 0, 0, 0 };
    for (size_t i = 0; i <= count; i++) {
        double v;
        if (i < count) {
            v = x[i] < -C ? -C : x[i] > C ? C : (double)x[i];
            v *= (double)wfrac;
        } else {
            v = (double)wfrac;
        }
        if (i % 4 == 0) {
            const uint64_t b = i / 4;
            uint32_t ctr[4] = { (uint32_t)b, (uint32_t)(b >> 32), 0x4845u, 1 };
            fs_philox4x32_10(ctr, key, r);
        }
        const double y = v * scale + fs_philox_u01(r[i % 4]);
        const int64_t k = (int64_t)y;
        out[i] = k - (int64_t)((double)k > y);
    }
    return FS_OK;
}

fs_status fs_he_dequantise(const fs_he_quant *qz, const int64_t *sum, size_t count, float *out,
                           double *wsum)
{
    if (!quant_bound(qz) || !sum || (count && !out)) {
        fs_log_error("he: dequantise: invalid quantiser or NULL buffer");
        return FS_ERR_ARG;
    }
    const double inv = ldexp(1.0, -(int)qz->frac_bits);
    for (size_t i = 0; i < count; i++) out[i] = (float)((double)sum[i] * inv);
    if (wsum) *wsum = (double)sum[count] * inv;
    return FS_OK;
}

/* ---- encryption ------------------------------------------------------------ */

/* One ciphertext from its 3N sampling words and N message values:
 * c0 = b·u + e0 + Δ·m, c1 = a·u + e1. scratch: POLY_WORDS + 2N words. The
 * small values (u, e0 + Δ·m's m, e1) are drawn once and reduced per prime. */
static void encrypt_one(const fs_he_ctx *c, const fs_he_pubkey *pk, const uint64_t *words,
                        const int64_t *m, size_t mcount, uint64_t *ct, uint64_t *scratch)
{
    uint64_t *u_hat = scratch;
    int64_t *e0 = (int64_t *)(scratch + FS_HE_POLY_WORDS), *e1 = e0 + FS_HE_N;
    for (size_t i = 0; i < FS_HE_N; i++) {
        e0[i] = word_cbd(words[FS_HE_N + i]);
        e1[i] = word_cbd(words[2 * FS_HE_N + i]);
    }
    for (unsigned j = 0; j < FS_HE_L; j++) {
        const uint64_t q = c->q[j], dl = c->delta[j], dlp = shoup_of(dl, q);
        uint64_t *uh = u_hat + (size_t)j * FS_HE_N;
        for (size_t i = 0; i < FS_HE_N; i++) uh[i] = small_res(word_ternary(words[i]), q);
        fs_he_ntt_fwd(&c->ntt[j], uh);
        uint64_t *c0 = ct + (size_t)j * FS_HE_N, *c1 = ct + FS_HE_POLY_WORDS + (size_t)j * FS_HE_N;
        const uint64_t *b = pk->b_hat + (size_t)j * FS_HE_N, *bp = pk->b_hat_p + (size_t)j * FS_HE_N;
        const uint64_t *a = c->a_hat + (size_t)j * FS_HE_N, *ap = c->a_hat_p + (size_t)j * FS_HE_N;
        for (size_t i = 0; i < FS_HE_N; i++) {
            c0[i] = mul_shoup(uh[i], b[i], bp[i], q);
            c1[i] = mul_shoup(uh[i], a[i], ap[i], q);
        }
        fs_he_ntt_inv(&c->ntt[j], c0);
        fs_he_ntt_inv(&c->ntt[j], c1);
        /* |m| < 2^25 and |e| ≤ 21 are far below q: small_res applies. */
        for (size_t i = 0; i < mcount; i++) {
            uint64_t v0 = c0[i] + small_res(e0[i], q);
            v0 = v0 >= q ? v0 - q : v0;
            v0 += mul_shoup(small_res(m[i], q), dl, dlp, q);
            c0[i] = v0 >= q ? v0 - q : v0;
        }
        for (size_t i = mcount; i < FS_HE_N; i++) {
            uint64_t v0 = c0[i] + small_res(e0[i], q);
            c0[i] = v0 >= q ? v0 - q : v0;
        }
        for (size_t i = 0; i < FS_HE_N; i++) {
            uint64_t v1 = c1[i] + small_res(e1[i], q);
            c1[i] = v1 >= q ? v1 - q : v1;
        }
    }
}

fs_status fs_he_encrypt_seeded(const fs_he_ctx *c, const fs_he_pubkey *pk, const int64_t *m,
                               size_t count, const uint8_t seed[FS_HE_SEED_BYTES],
                               uint64_t *cts)
{
    if (!c || !c->a_hat || !pk || (count && !m) || !seed || !cts) {
        fs_log_error("he: encrypt: NULL argument");
        return FS_ERR_ARG;
    }
    const int64_t half = (int64_t)1 << (FS_HE_PLAIN_BITS - 1);
    for (size_t i = 0; i < count; i++)
        if (m[i] <= -half || m[i] >= half) {
            fs_log_error("he: encrypt: value %zu = %lld outside the plaintext range (-2^%u, 2^%u)",
                         i, (long long)m[i], FS_HE_PLAIN_BITS - 1, FS_HE_PLAIN_BITS - 1);
            return FS_ERR_ARG;
        }
    const size_t nct = (count + FS_HE_N - 1) / FS_HE_N;
    fs_status st = FS_OK;
#pragma omp parallel
    {
        const size_t scratch_words = (size_t)FS_HE_POLY_WORDS + 2 * (size_t)FS_HE_N;
        uint64_t *words = malloc(3 * (size_t)FS_HE_N * sizeof *words);
        uint64_t *scratch = malloc(scratch_words * sizeof *scratch);
        if (!words || !scratch) {
#pragma omp atomic write
            st = FS_ERR_NOMEM;
        } else {
#pragma omp for schedule(static)
            for (size_t k = 0; k < nct; k++) {
                expand(seed, k, 0, words, 3 * (size_t)FS_HE_N);
                size_t off = k * FS_HE_N, mc = count - off < FS_HE_N ? count - off : FS_HE_N;
                encrypt_one(c, pk, words, m + off, mc, cts + k * FS_HE_CT_WORDS, scratch);
            }
        }
        if (words) sodium_memzero(words, 3 * (size_t)FS_HE_N * sizeof *words);
        if (scratch) sodium_memzero(scratch, scratch_words * sizeof *scratch);
        free(words);
        free(scratch);
    }
    return st;
}

fs_status fs_he_encrypt(const fs_he_ctx *c, const fs_he_pubkey *pk, const int64_t *m,
                        size_t count, uint64_t *cts)
{
    uint8_t seed[FS_HE_SEED_BYTES];
    randombytes_buf(seed, sizeof seed);
    fs_status st = fs_he_encrypt_seeded(c, pk, m, count, seed, cts);
    sodium_memzero(seed, sizeof seed);
    return st;
}

/* a = (a + b) mod q over one residue vector of N words; on x86-64 also
 * compiled for AVX-512 (unsigned 64-bit compares, which SSE2 lacks), the
 * version chosen at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "default")))
#endif
static void add_vec(uint64_t *restrict a, const uint64_t *restrict b, uint64_t q)
{
    for (size_t i = 0; i < FS_HE_N; i++) {
        uint64_t r = a[i] + b[i];
        a[i] = r >= q ? r - q : r;
    }
}

void fs_he_ct_add(uint64_t *acc, const uint64_t *ct, size_t nct)
{
    /* 2·L residue vectors of N words per ciphertext, vector v mod q_{v % L}. */
    const size_t vecs = nct * 2 * FS_HE_L;
#pragma omp parallel for schedule(static) if (nct > 4)
    for (size_t v = 0; v < vecs; v++) add_vec(acc + v * FS_HE_N, ct + v * FS_HE_N, he_q[v % FS_HE_L]);
}

/* ---- threshold decryption ----------------------------------------------- */

uint64_t fs_he_lagrange0(const uint32_t *set, uint32_t size, uint32_t k_pos, uint64_t q)
{
    uint64_t num = 1, den = 1;
    const uint64_t xk = set[k_pos];
    for (uint32_t m = 0; m < size; m++) {
        if (m == k_pos) continue;
        const uint64_t xm = set[m];
        if (xm == xk) return 0;
        num = fs_he_mulmod(num, xm % q, q);
        den = fs_he_mulmod(den, (xm + q - xk % q) % q, q);
    }
    return fs_he_mulmod(num, powmod(den, q - 2, q), q);
}

/* The set must be strictly increasing site numbers ≥ 1. */
static int set_ok(const uint32_t *set, uint32_t size, uint32_t n)
{
    if (!set || size == 0) return 0;
    for (uint32_t i = 0; i < size; i++) {
        if (set[i] == 0 || (n && set[i] > n)) return 0;
        if (i && set[i] <= set[i - 1]) return 0;
    }
    return 1;
}

fs_status fs_he_partial_decrypt(const fs_he_ctx *c, const fs_he_tkey *tk, const uint32_t *set,
                                uint32_t set_size, const uint64_t *cts, size_t nct,
                                uint64_t *partials)
{
    if (!c || !tk || !cts || !partials || !tk->ready) {
        fs_log_error("he: partial_decrypt: NULL argument or unfinished threshold key");
        return FS_ERR_ARG;
    }
    if (!set_ok(set, set_size, tk->n_sites)) {
        fs_log_error("he: partial_decrypt: the decryption set must be increasing site numbers "
                     "in 1..%u", tk->n_sites);
        return FS_ERR_ARG;
    }
    if (set_size < tk->threshold) {
        fs_log_error("he: partial_decrypt: a set of %u sites is below the threshold %u", set_size,
                     tk->threshold);
        return FS_ERR_ARG;
    }
    uint32_t pos = set_size;
    for (uint32_t i = 0; i < set_size; i++)
        if (set[i] == tk->site) pos = i;
    if (pos == set_size) {
        fs_log_error("he: partial_decrypt: site %u is not in the decryption set", tk->site);
        return FS_ERR_ARG;
    }
    /* λ_k·F(k) in NTT form with Shoup companions. WARNING: secret. */
    uint64_t *key = malloc(2 * (size_t)FS_HE_POLY_WORDS * sizeof *key);
    if (!key) return FS_ERR_NOMEM;
    uint64_t *keyp = key + FS_HE_POLY_WORDS;
    for (unsigned j = 0; j < FS_HE_L; j++) {
        const uint64_t q = c->q[j], lam = fs_he_lagrange0(set, set_size, pos, q);
        for (size_t i = 0; i < FS_HE_N; i++) {
            size_t x = (size_t)j * FS_HE_N + i;
            key[x] = fs_he_mulmod(lam, tk->f_hat[x], q);
            keyp[x] = shoup_of(key[x], q);
        }
    }
    uint8_t seed[32];
    randombytes_buf(seed, sizeof seed);
    fs_status st = FS_OK;
#pragma omp parallel
    {
        uint64_t *words = malloc((size_t)FS_HE_N * sizeof *words);
        if (!words) {
#pragma omp atomic write
            st = FS_ERR_NOMEM;
        } else {
#pragma omp for schedule(static)
            for (size_t k = 0; k < nct; k++) {
                expand(seed, k, 0, words, FS_HE_N);
                uint64_t *h = partials + k * FS_HE_POLY_WORDS;
                memcpy(h, cts + k * FS_HE_CT_WORDS + FS_HE_POLY_WORDS,
                       (size_t)FS_HE_POLY_WORDS * sizeof *h);
                for (unsigned j = 0; j < FS_HE_L; j++) {
                    const uint64_t q = c->q[j];
                    uint64_t *hj = h + (size_t)j * FS_HE_N;
                    const uint64_t *kj = key + (size_t)j * FS_HE_N, *kp = keyp + (size_t)j * FS_HE_N;
                    fs_he_ntt_fwd(&c->ntt[j], hj);
                    for (size_t i = 0; i < FS_HE_N; i++) hj[i] = mul_shoup(hj[i], kj[i], kp[i], q);
                    fs_he_ntt_inv(&c->ntt[j], hj);
                    /* E = x − 2^S with x = w >> (63 − S) in [0, 2^(S+1)): E mod q
                     * = (x mod q − 2^S mod q) mod q, x mod q by Shoup's method
                     * (|E| > q_j: small_res does not apply). */
                    const uint64_t one_p = shoup_of(1, q);
                    const uint64_t off = ((uint64_t)1 << FS_HE_SMUDGE_BITS) % q;
                    for (size_t i = 0; i < FS_HE_N; i++) {
                        const uint64_t x = words[i] >> (63 - FS_HE_SMUDGE_BITS);
                        uint64_t e = mul_shoup(x, 1, one_p, q);
                        e = e >= off ? e - off : e + q - off;
                        uint64_t r = hj[i] + e;
                        hj[i] = r >= q ? r - q : r;
                    }
                }
            }
            sodium_memzero(words, (size_t)FS_HE_N * sizeof *words);
            free(words);
        }
    }
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(key, 2 * (size_t)FS_HE_POLY_WORDS * sizeof *key);
    free(key);
    return st;
}

/* CRT of residues (x0 mod q0, x1 mod q1) → x in [0, q) (Garner); inv =
 * q0^{-1} mod q1 and invp its Shoup companion. */
static inline u128 crt(uint64_t x0, uint64_t x1, uint64_t inv, uint64_t invp)
{
    const uint64_t r0 = x0 % FS_HE_Q1;
    const uint64_t d = x1 >= r0 ? x1 - r0 : x1 + FS_HE_Q1 - r0;
    return (u128)x0 + (u128)FS_HE_Q0 * mul_shoup(d, inv, invp, FS_HE_Q1);
}

void fs_he_decode(const fs_he_ctx *c, const uint64_t *x, int64_t *m, size_t count)
{
    const uint64_t inv = powmod(FS_HE_Q0 % FS_HE_Q1, FS_HE_Q1 - 2, FS_HE_Q1);
    const uint64_t invp = shoup_of(inv, FS_HE_Q1);
    const u128 q = q_full();
    const uint64_t t = c->plain_mod;
    /* ⌊X/q⌋ for X = t·v + ⌊q/2⌋ < 2^121 without a 128-bit division: with
     * μ = ⌊2^128/q⌋ (< 2^35), r = ⌊(X >> 64)·μ / 2^64⌋ is ⌊X/q⌋ or one less
     * (the two truncations lose less than 2^−7 + 2^−29), fixed by one compare. */
    const u128 mu = (~(u128)0) / q; /* ⌊(2^128 − 1)/q⌋ = ⌊2^128/q⌋: q is not a power of 2 */
    for (size_t i = 0; i < count && i < FS_HE_N; i++) {
        const u128 v = crt(x[i], x[FS_HE_N + i], inv, invp);
        /* round(t·v/q) mod t, centred. */
        const u128 X = (u128)t * v + q / 2;
        uint64_t r = (uint64_t)(((X >> 64) * mu) >> 64);
        if (X - (u128)r * q >= q) r++;
        r &= t - 1;
        m[i] = r >= t / 2 ? (int64_t)r - (int64_t)t : (int64_t)r;
    }
}

double fs_he_noise_of(const fs_he_ctx *c, const uint64_t *x, const int64_t *m, size_t i)
{
    const uint64_t inv = powmod(FS_HE_Q0 % FS_HE_Q1, FS_HE_Q1 - 2, FS_HE_Q1);
    const u128 q = q_full(), d = delta_full();
    u128 v = crt(x[i], x[FS_HE_N + i], inv, shoup_of(inv, FS_HE_Q1));
    u128 dm = m[i] >= 0 ? (d * (u128)m[i]) % q : (q - (d * (u128)(-m[i])) % q) % q;
    u128 r = v >= dm ? v - dm : v + q - dm;
    return r > q / 2 ? -(double)(q - r) : (double)r;
}

fs_status fs_he_combine(const fs_he_ctx *c, uint32_t threshold, const uint32_t *set,
                        uint32_t set_size, const uint64_t *cts, size_t nct,
                        const uint64_t *const *partials, int64_t *m, size_t count)
{
    if (!c || !cts || !partials || (count && !m)) {
        fs_log_error("he: combine: NULL argument");
        return FS_ERR_ARG;
    }
    if (threshold < 2 || !set_ok(set, set_size, 0)) {
        fs_log_error("he: combine: the decryption set must be increasing site numbers >= 1 and "
                     "the threshold at least 2");
        return FS_ERR_ARG;
    }
    if (set_size < threshold) {
        fs_log_error("he: combine: %u partial decryptions, the threshold is %u: refusing",
                     set_size, threshold);
        return FS_ERR_ARG;
    }
    if (count > nct * FS_HE_N) {
        fs_log_error("he: combine: %zu values asked of %zu ciphertexts", count, nct);
        return FS_ERR_ARG;
    }
    for (uint32_t p = 0; p < set_size; p++)
        if (!partials[p]) {
            fs_log_error("he: combine: the partial decryption of site %u is missing", set[p]);
            return FS_ERR_ARG;
        }
    fs_status st = FS_OK;
#pragma omp parallel
    {
        uint64_t *x = malloc((size_t)FS_HE_POLY_WORDS * sizeof *x);
        if (!x) {
#pragma omp atomic write
            st = FS_ERR_NOMEM;
        } else {
#pragma omp for schedule(static)
            for (size_t k = 0; k < nct; k++) {
                memcpy(x, cts + k * FS_HE_CT_WORDS, (size_t)FS_HE_POLY_WORDS * sizeof *x);
                for (uint32_t p = 0; p < set_size; p++) {
                    const uint64_t *h = partials[p] + k * FS_HE_POLY_WORDS;
                    for (unsigned j = 0; j < FS_HE_L; j++)
                        add_vec(x + (size_t)j * FS_HE_N, h + (size_t)j * FS_HE_N, he_q[j]);
                }
                size_t off = k * FS_HE_N;
                if (off < count)
                    fs_he_decode(c, x, m + off, count - off < FS_HE_N ? count - off : FS_HE_N);
            }
            free(x);
        }
    }
    return st;
}
