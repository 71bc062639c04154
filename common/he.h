/*
 * common/he.h — multiparty homomorphic encryption for encrypted aggregation:
 * an additively homomorphic BFV-style RLWE scheme with a collective public key
 * and threshold (t-of-n) decryption, after Mouchet, Troncoso-Pastoriza,
 * Bossuat and Hubaux, "Multiparty Homomorphic Encryption from
 * Ring-Learning-with-Errors" (PETS 2021), with the secret-key shares
 * Shamir-shared among the sites.
 *
 * Parameters (one fixed set; docs/security.md § Encrypted aggregation argues each choice):
 *   ring        R_q = Z_q[X]/(X^N + 1), N = 4096
 *   modulus     q = q0·q1, two NTT-friendly primes q_j ≡ 1 (mod 2N) just under
 *               2^47 (RNS: every polynomial is held as its two residues), so
 *               log2 q = 94. HomomorphicEncryption.org security standard
 *               (Albrecht et al., 2018), table of 128-bit classical security for
 *               ternary secrets: row N = 4096, log q ≤ 109 — our 94 bits are
 *               inside it.
 *   secrets     ternary (uniform in {−1, 0, 1}) per site;
 *   errors      centred binomial with η = 21 (σ = √10.5 ≈ 3.24, |e| ≤ 21),
 *               the standard's σ ≈ 3.2;
 *   plaintext   coefficient encoding, one quantised value per coefficient,
 *               t = 2^FS_HE_PLAIN_BITS; Δ = ⌊q/t⌋;
 *   smudging    each partial decryption adds noise uniform in
 *               [−2^S, 2^S), S = FS_HE_SMUDGE_BITS.
 *   wire        a ciphertext is 2 polynomials × 2 residues × 47 bits per
 *               coefficient = 188 bits per value = 5.875× the fp32 size.
 *
 * Protocol (who computes what):
 *   setup   all n sites: fs_he_keygen (secret share s_i, public-key share
 *           p_i = −a·s_i + e_i, a the common random polynomial from a public
 *           seed); the aggregator: fs_he_pk_combine (pk = (Σ p_i, a));
 *           each site i: fs_he_shamir_deal (one share f_i(k) of s_i for every
 *           site k, sent to k over a confidential channel); each site k:
 *           fs_he_tkey_begin/_add/_end (its threshold key F(k) = Σ_i f_i(k), a Shamir
 *           share of s = Σ s_i). WARNING: the dealt shares are secret; whoever
 *           sees t of them for every dealer can decrypt everything.
 *   round   each site: fs_he_quantise then fs_he_encrypt; the aggregator
 *           (no key material): fs_he_ct_add; it picks a set T of at least t
 *           sites still present and sends them T and the sum; each site of T:
 *           fs_he_partial_decrypt; the aggregator: fs_he_combine then
 *           fs_he_dequantise.
 *
 * Objects that cross the network are serialised and strictly parsed by
 * common/he_wire.c (fs_he_write / fs_he_read): versioned, length-checked,
 * residues range-checked, a CRC-64 over header and payload.
 *
 * Layout: a polynomial is uint64_t[FS_HE_L·N], residue j of coefficient i at
 * [j·N + i], each in [0, q_j). A ciphertext is two polynomials (c0 then c1),
 * uint64_t[FS_HE_CT_WORDS], in coefficient (not NTT) form.
 *
 * Tested by tests/test_he.c (NTT against schoolbook multiplication, sums for
 * 2..100 sites, the site bound, threshold and dropouts, refusals of tampered
 * bytes) and tests/test_he_cuda.c (CUDA against this CPU code, bit for bit).
 */
#ifndef FS_HE_H
#define FS_HE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/status.h"

#define FS_HE_N 4096u                 /* ring dimension                          */
#define FS_HE_LOGN 12u
#define FS_HE_L 2u                    /* RNS primes                              */
#define FS_HE_Q0 0x7ffffffec001ull    /* 140737488273409, ≡ 1 mod 8192, prime    */
#define FS_HE_Q1 0x7ffffffc8001ull    /* 140737488125953, ≡ 1 mod 8192, prime    */
#define FS_HE_QBITS 47u               /* bits per packed residue                 */
#define FS_HE_PLAIN_BITS 26u          /* t = 2^26                                */
#define FS_HE_SMUDGE_BITS 58u         /* partial-decryption noise in [−2^58, 2^58) */
#define FS_HE_CBD_ETA 21u             /* error bound B_e                         */
#define FS_HE_POLY_WORDS (FS_HE_L * FS_HE_N)
#define FS_HE_CT_WORDS (2u * FS_HE_POLY_WORDS)
#define FS_HE_SEED_BYTES 32u
#define FS_HE_KEYID_BYTES 8u
#define FS_HE_MAX_PARTIES 65535u      /* site indices are 1..n, n ≤ this         */

#define FS_HE_CHECK __attribute__((warn_unused_result))

/* NTT tables for one prime q < 2^62 and one power-of-two n ≤ 4096
 * (negacyclic: psi is a primitive 2n-th root of unity mod q). Twiddles are
 * powers of psi in bit-reversed order, each with its Shoup companion
 * ⌊w·2^64/q⌋. */
typedef struct {
    uint64_t q;
    uint32_t n, logn;
    uint64_t psi;
    uint64_t *w, *wp;       /* forward twiddles and Shoup companions, n each  */
    uint64_t *iw, *iwp;     /* inverse twiddles and companions, n each        */
    uint64_t ninv, ninvp;   /* n^{-1} mod q and companion                     */
    uint64_t *wp52, *iwp52; /* 52-bit Shoup companions ⌊w·2^52/q⌋ (AVX-512 IFMA) */
    uint64_t ninvp52;
} fs_he_ntt;

/* Whether the transforms use the AVX-512 IFMA code (x86-64 CPUs that have it,
 * chosen at run time; the results are the same words as the portable code's).
 * fs_he_ntt_simd(0) forces the portable code, fs_he_ntt_simd(1) restores the
 * choice; returns whether the IFMA code is in use afterwards. Not thread-safe:
 * for tests and benchmarks, before any transform runs. */
int fs_he_ntt_simd(int allow);

/* The consortium's context: parameters, NTT tables and the common random
 * polynomial a (NTT form) expanded from the public seed. */
typedef struct {
    uint64_t q[FS_HE_L];
    fs_he_ntt ntt[FS_HE_L];
    uint64_t delta[FS_HE_L];          /* Δ = ⌊q/t⌋ mod q_j                       */
    uint64_t plain_mod;               /* t                                       */
    uint8_t crs_seed[FS_HE_SEED_BYTES];
    uint64_t *a_hat;                  /* FS_HE_POLY_WORDS, NTT form              */
    uint64_t *a_hat_p;                /* its Shoup companions (same allocation)  */
} fs_he_ctx;

/* A site's secret-key share s_i (ternary) in NTT form. WARNING: secret;
 * fs_he_secret_free wipes it. */
typedef struct {
    uint32_t site;                    /* 1..n                                    */
    int8_t s[FS_HE_N];
    uint64_t s_hat[FS_HE_POLY_WORDS];
} fs_he_secret;

/* The collective public key pk = (b, a), b = Σ p_i (NTT form), and its id
 * (first 8 bytes of BLAKE2b over seed and b), stamped on every ciphertext. */
typedef struct {
    uint64_t b_hat[FS_HE_POLY_WORDS];
    uint64_t b_hat_p[FS_HE_POLY_WORDS]; /* Shoup companions of b_hat            */
    uint8_t key_id[FS_HE_KEYID_BYTES];
    uint32_t n_sites;                 /* n, the number of shares combined        */
} fs_he_pubkey;

/* Site k's threshold key: F(k) = Σ_i f_i(k), a degree-(t−1) Shamir share of
 * the collective secret s, NTT form. WARNING: secret; wiped by _free. */
typedef struct {
    uint32_t site, n_sites, threshold;
    uint32_t received;                /* dealers added so far                    */
    int ready;                        /* _end done: f_hat is in NTT form         */
    uint8_t got[FS_HE_MAX_PARTIES / 8 + 1];
    uint64_t f_hat[FS_HE_POLY_WORDS];
} fs_he_tkey;

/* Quantisation, the convention of secure aggregation: x clipped to [−C, C],
 * multiplied by the FedAvg weight fraction w/w_cap ∈ [0, 1], then
 * q = ⌊x·2^f + u⌋ with u uniform in [0, 1) (stochastic rounding, unbiased).
 * One extra coefficient after the update carries ⌊(w/w_cap)·2^f + u⌋. */
typedef struct {
    float clip;                       /* C > 0                                   */
    unsigned frac_bits;               /* f, 0..24                                */
} fs_he_quant;

/* ---- context ----------------------------------------------------------- */

/* Builds the tables and expands a from the public seed (ChaCha20 keyed by
 * BLAKE2b(seed), rejection sampling per prime). Free with fs_he_ctx_free. */
fs_status fs_he_ctx_init(fs_he_ctx *c, const uint8_t crs_seed[FS_HE_SEED_BYTES]);
void fs_he_ctx_free(fs_he_ctx *c);

/* Ciphertexts needed for an update of `count` values (plus the weight). */
size_t fs_he_ct_count(size_t count);

/* Largest number of sites n for which decryption of the sum of up to n
 * ciphertexts, under a key of n shares with up to n partials, is guaranteed
 * (worst-case noise bound, see fs_he_noise_bound) and the sum of n quantised
 * values of `qz` cannot wrap mod t. 0 when qz is invalid. */
uint32_t fs_he_max_sites(const fs_he_quant *qz);
/* The same with the noise budget alone (no plaintext limit). */
uint32_t fs_he_max_sites_noise(void);
/* Worst-case |noise| of a sum of k fresh ciphertexts under a key of n
 * shares, before smudging: k·(2·N·n·B_e + B_e). */
double fs_he_noise_bound(uint32_t n, uint32_t k);
/* Decryption is correct while |noise + smudging| stays below this: Δ/2 − t. */
double fs_he_noise_budget(void);

/* ---- keys --------------------------------------------------------------- */

/* Site `site` (1..FS_HE_MAX_PARTIES) draws its secret share (OS CSPRNG) and
 * writes its public-key share p_i = −a·s_i + e_i (NTT form, POLY_WORDS). */
fs_status fs_he_keygen(const fs_he_ctx *c, uint32_t site, fs_he_secret *sk, uint64_t *pk_share);
void fs_he_secret_free(fs_he_secret *sk);

/* pk = (Σ p_i, a) from n public-key shares. */
fs_status fs_he_pk_combine(const fs_he_ctx *c, const uint64_t *const *pk_shares, uint32_t n,
                           fs_he_pubkey *pk);

/* Site i deals Shamir shares of s_i for sites 1..n with threshold t
 * (2 ≤ t ≤ n): out[(k−1)·POLY_WORDS ..] = f_i(k), coefficient form, where f_i
 * is a random polynomial of degree t−1 over Z_q (per residue) with f_i(0) = s_i.
 * WARNING: out is secret material; wipe it after sending. */
fs_status fs_he_shamir_deal(const fs_he_ctx *c, const fs_he_secret *sk, uint32_t n, uint32_t t,
                            uint64_t *out);

/* Site k builds its threshold key from the n shares it receives, one per
 * dealer: _begin, then _add for each dealer (any order; a repeated or
 * out-of-range dealer or residue is refused), then _end (refuses unless all n
 * arrived) computes the NTT form. */
fs_status fs_he_tkey_begin(fs_he_tkey *tk, uint32_t site, uint32_t n, uint32_t t);
fs_status fs_he_tkey_add(const fs_he_ctx *c, fs_he_tkey *tk, uint32_t from, const uint64_t *share);
fs_status fs_he_tkey_end(const fs_he_ctx *c, fs_he_tkey *tk);
void fs_he_tkey_free(fs_he_tkey *tk);

/* ---- data path ---------------------------------------------------------- */

/* Quantises count values and the weight fraction wfrac = w/w_cap ∈ [0, 1]
 * into out[count + 1] (centred integers); the rounding draws use Philox keyed
 * by `seed`. FS_ERR_NUMERIC for a non-finite x, FS_ERR_ARG for a bad wfrac. */
fs_status fs_he_quantise(const fs_he_quant *qz, const float *x, size_t count, float wfrac,
                         uint64_t seed, int64_t *out);
/* Sum of quantised values (count + 1 entries) → Σ(w_j/w_cap)·x_j in out and
 * Σ w_j/w_cap in *wsum; the FedAvg mean is out[i] / *wsum. */
fs_status fs_he_dequantise(const fs_he_quant *qz, const int64_t *sum, size_t count, float *out,
                           double *wsum);

/* Encrypts m[0 .. count) (centred integers, |m| < t/2) under pk into
 * ceil(count / N) ciphertexts (zero padding). Randomness: one 32-byte seed per
 * call from the OS CSPRNG, expanded with ChaCha20 (fs_he_encrypt_seeded). */
fs_status fs_he_encrypt(const fs_he_ctx *c, const fs_he_pubkey *pk, const int64_t *m,
                        size_t count, uint64_t *cts);
/* The same with a caller-chosen seed: ciphertext j uses ChaCha20 (IETF) with
 * key = seed, nonce = j (little-endian, 12 bytes); its 64-bit words
 * 0..N−1 give u (word mod 3 − 1), N..2N−1 give e0, 2N..3N−1 give e1
 * (centred binomial: popcount of bits 0..20 minus popcount of bits 21..41).
 * WARNING: a seed must never be reused; tests and the CUDA parity use this. */
fs_status fs_he_encrypt_seeded(const fs_he_ctx *c, const fs_he_pubkey *pk, const int64_t *m,
                               size_t count, const uint8_t seed[FS_HE_SEED_BYTES],
                               uint64_t *cts);

/* acc += ct (mod q), nct ciphertexts; in place, acc may alias nothing else. */
void fs_he_ct_add(uint64_t *acc, const uint64_t *ct, size_t nct);

/* Site tk.site, member of the decryption set T (sorted, distinct, |T| ≥ t),
 * writes for each of nct ciphertexts h = λ_k·F(k)·c1 + E, E uniform in
 * [−2^S, 2^S) from the OS CSPRNG, λ_k the Lagrange coefficient of k in T at 0.
 * WARNING: answer each (ciphertext, T) once; the smudging hides the key share
 * only if fresh noise is drawn for every partial released. */
fs_status fs_he_partial_decrypt(const fs_he_ctx *c, const fs_he_tkey *tk, const uint32_t *set,
                                uint32_t set_size, const uint64_t *cts, size_t nct,
                                uint64_t *partials);
/* Aggregator: m = decode(c0 + Σ h_k) for nct ciphertexts from the partials of
 * every member of T (partials[i] from set[i]); writes `count` centred values.
 * Refuses (FS_ERR_ARG, with a message) fewer than t partials. */
fs_status fs_he_combine(const fs_he_ctx *c, uint32_t threshold, const uint32_t *set,
                        uint32_t set_size, const uint64_t *cts, size_t nct,
                        const uint64_t *const *partials, int64_t *m, size_t count);

/* ---- GPU path (common/he_cuda.c; FS_ERR_UNSUPPORTED without CUDA) ------- */

/* Opens the device and uploads the context's tables: *dev for the calls
 * below. FS_ERR_DEVICE when no device is present. */
fs_status fs_he_cuda_open(void **dev, const fs_he_ctx *c);
void fs_he_cuda_close(void *dev);
/* As fs_he_encrypt / fs_he_encrypt_seeded, on the GPU, bit-identical. */
fs_status fs_he_cuda_encrypt(void *dev, const fs_he_ctx *c, const fs_he_pubkey *pk,
                             const int64_t *m, size_t count, uint64_t *cts);
fs_status fs_he_cuda_encrypt_seeded(void *dev, const fs_he_ctx *c, const fs_he_pubkey *pk,
                                    const int64_t *m, size_t count,
                                    const uint8_t seed[FS_HE_SEED_BYTES], uint64_t *cts);
/* As fs_he_ct_add with host arrays (copies in and out); an aggregator that
 * keeps its sum on the device uses kernels/cuda/he_cuda.h's fs_he_dev_ct_add
 * on the handle fs_he_cuda_device returns. */
fs_status fs_he_cuda_ct_add(void *dev, uint64_t *acc, const uint64_t *ct, size_t nct);
void *fs_he_cuda_device(void *dev);
/* A ciphertext sum kept in device memory (the aggregator's, between the
 * first upload and decryption): new zeroes nct ciphertexts on the device of
 * a fs_he_cuda_open handle; add copies one host ciphertext in and adds it at
 * index (mod q; the copy returns once the host buffer may be reused); get
 * downloads the whole sum (nct · FS_HE_CT_WORDS words) and waits. */
typedef struct fs_he_cuda_sum fs_he_cuda_sum;
fs_status fs_he_cuda_sum_new(void *dev, size_t nct, fs_he_cuda_sum **out);
fs_status fs_he_cuda_sum_add(fs_he_cuda_sum *u, size_t index, const uint64_t *ct);
fs_status fs_he_cuda_sum_get(fs_he_cuda_sum *u, uint64_t *host);
void fs_he_cuda_sum_free(fs_he_cuda_sum *u);
/* NTT (inverse = 0) or INTT of npolys vectors of prime `prime`, in place. */
fs_status fs_he_cuda_ntt(void *dev, unsigned prime, int inverse, uint64_t *polys, size_t npolys);

/* ---- building blocks (tests, benchmarks, the CUDA parity) --------------- */

fs_status fs_he_ntt_init(fs_he_ntt *t, uint64_t q, uint32_t n);
void fs_he_ntt_free(fs_he_ntt *t);
/* In place; input and output in [0, q). Forward: natural order in,
 * bit-reversed out; inverse: the reverse, scaled by n^{-1}. */
void fs_he_ntt_fwd(const fs_he_ntt *t, uint64_t *a);
void fs_he_ntt_inv(const fs_he_ntt *t, uint64_t *a);
/* a·b mod q (q < 2^63). */
uint64_t fs_he_mulmod(uint64_t a, uint64_t b, uint64_t q);
/* Lagrange coefficient at 0 of point x_k = set[k_pos] among set[0..size),
 * mod q. 0 on a repeated point. */
uint64_t fs_he_lagrange0(const uint32_t *set, uint32_t size, uint32_t k_pos, uint64_t q);
/* x = c0 + c1·s residues (coefficient form) → centred plaintext m (count ≤ N). */
void fs_he_decode(const fs_he_ctx *c, const uint64_t *x, int64_t *m, size_t count);
/* Centred noise of x against the plaintext m: x − Δ·m as a signed value,
 * coefficient i, for tests that measure noise. */
double fs_he_noise_of(const fs_he_ctx *c, const uint64_t *x, const int64_t *m, size_t i);

/* ---- wire (common/he_wire.c) -------------------------------------------- */

typedef enum {
    FS_HE_OBJ_PK_SHARE = 1,           /* 1 poly, NTT form                        */
    FS_HE_OBJ_PUBKEY = 2,             /* 1 poly (b), NTT form                    */
    FS_HE_OBJ_SHAMIR = 3,             /* 1 poly: f_i(k); WARNING: secret         */
    FS_HE_OBJ_CT = 4,                 /* 2 polys (c0, c1)                        */
    FS_HE_OBJ_PARTIAL = 5,            /* 1 poly                                  */
    FS_HE_OBJ_C1 = 6                  /* 1 poly: c1 of a summed ciphertext (the
                                         decryption request, common/he_proto.h) */
} fs_he_obj_kind;

/* What travels beside the polynomials, all covered by the check:
 * the sender's site (0 for the aggregator), the receiver (Shamir shares; else
 * 0), an index (ciphertext number in the update), the key id (zeros before the
 * collective key exists), and for partials and decryption requests (C1) a
 * digest of the set T. */
typedef struct {
    fs_he_obj_kind kind;
    uint32_t from, to;
    uint32_t index;
    uint8_t key_id[FS_HE_KEYID_BYTES];
    uint8_t set_id[FS_HE_KEYID_BYTES];
} fs_he_hdr;

/* Bytes of one serialised object of this kind: header + packed residues
 * (47 bits each) + 8-byte CRC-64 check. */
size_t fs_he_wire_bytes(fs_he_obj_kind kind);
/* Serialises polys (1 or 2 by kind, POLY_WORDS each, residues in range) into
 * out[fs_he_wire_bytes(kind)]. FS_ERR_ARG if a residue is out of range. */
fs_status fs_he_write(const fs_he_hdr *h, const uint64_t *polys, uint8_t *out, size_t cap);
/* Parses and verifies (magic, version, kind, length, check, every residue
 * < q_j) into *h and polys; logs what is wrong and returns FS_ERR_FORMAT,
 * FS_ERR_CHECKSUM or FS_ERR_MISMATCH (expected kind). */
FS_HE_CHECK fs_status fs_he_read(const uint8_t *in, size_t len, fs_he_obj_kind want,
                                 fs_he_hdr *h, uint64_t *polys);
/* The object's last 8 bytes: CRC-64 (ECMA-182, reflected, ISA-L's
 * crc64_ecma_refl(0, ·)) of the len − 8 bytes before, little-endian. put
 * writes it; check_ok is 1 when it matches. len ≥ 8. */
void fs_he_wire_put_check(uint8_t *obj, size_t len);
int fs_he_wire_check_ok(const uint8_t *obj, size_t len);
/* Digest of a decryption set (first 8 bytes of BLAKE2b over the sorted ids). */
void fs_he_set_id(const uint32_t *set, uint32_t size, uint8_t out[FS_HE_KEYID_BYTES]);

#endif
