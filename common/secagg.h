/*
 * common/secagg.h — secure aggregation: the aggregator learns the sum of the
 * surviving sites' quantised updates and nothing about any one of them.
 *
 * Protocol: Bonawitz et al., "Practical Secure Aggregation for
 * Privacy-Preserving Machine Learning" (CCS 2017), honest-but-curious server
 * variant (stages 0 AdvertiseKeys, 1 ShareKeys, 2 MaskedInputCollection,
 * 4 Unmasking; the malicious-only ConsistencyCheck is not built), with the
 * sparse neighbour graph of SecAgg+ (Bell et al., CCS 2020): each site has k
 * neighbours in a graph derived from a public round seed, and pairwise masks
 * and secret shares exist only between neighbours; k = n-1 is full SecAgg.
 * docs/security.md § Secure aggregation is the user's view (threat model,
 * guarantees, choosing t and k, cost).
 *
 * This module is pure logic: it never touches the network or files. Every
 * message between parties is an opaque byte buffer that this module produces
 * and strictly parses (common/secagg_msg.h); the integrator moves the bytes
 * over its own transport and says which authenticated site sent them.
 *
 * ---- One round -------------------------------------------------------------
 * The n sites selected for the round are numbered 0..n-1 (e.g. the selected
 * site names sorted); everyone gets the same fs_secagg_params. U1 ⊇ U2 ⊇ U3
 * ⊇ U5 are the sites that completed stages 0, 1, 2 and 4.
 *
 *  site u (fs_secagg_site)                    server (fs_secagg_server)
 *  stage 0  site_new, site_advertise  ──ADV──► server_recv_advertise(u, ...)
 *                                              server_close_advertise  (U1)
 *  stage 1  site_share_keys(KEYS)   ◄──KEYS──  (one message, to every u ∈ U1)
 *                                   ──SHARES─► server_recv_shares(u, ...)
 *                                              server_close_shares     (U2)
 *  stage 2  site_recv_shares(RELAY) ◄─RELAY──  server_relay(u) for u ∈ U2
 *           q = fs_secagg_encode_update(...)
 *           y = site_mask(q) chunk by chunk ─► integrator folds y into a
 *                                              running uint32 sum (mod 2^32),
 *                                              then server_masked_received(u)
 *                                              server_close_masked     (U3)
 *  stage 4  site_unmask(REQ)        ◄──REQ───  (one message, to every u ∈ U3)
 *                                   ──RSP────► server_recv_unmask(u, ...)
 *                                              server_close_unmask     (U5)
 *                                              server_unmask(sum) chunk-wise
 *                                              fs_secagg_average(sum) → Δ
 * A server_close_* call ends a stage (the integrator's deadline, or everyone
 * answered). If fewer than t sites remain at any stage, or a needed secret
 * cannot be reconstructed, it returns FS_ERR_ABANDONED (logged, reason in
 * fs_secagg_server_reason): the round is abandoned, every later call returns
 * FS_ERR_ABANDONED, server_unmask never touches the sum, and the integrator
 * must leave the global model unchanged.
 *
 * ---- Cryptography ------------------------------------------------------------
 * Each site draws two X25519 key pairs per round, (c_pk, c_sk) to encrypt
 * shares and (s_pk, s_sk) for pairwise masks, and a 32-byte self-mask seed
 * b_u; it advertises c_pk, s_pk and a commitment H(b_u) (BLAKE2b with a
 * domain label, round and site index). Keys are derived with
 * crypto_scalarmult + crypto_generichash over a label, the round, the two site
 * indices (smaller first), both public keys and the shared point.
 * Shares of b_u and s_sk (Shamir t-of-(k+1) over GF(2^8), common/shamir.h,
 * x = site index + 1; holders: u's neighbours in U1 and u itself) travel
 * site → server → site under XChaCha20-Poly1305 with associated data
 * (magic, protocol version, round, n, sender, receiver): a ciphertext changed
 * in relay, or one the server made under any key but the pair's, fails
 * authentication and the receiving site refuses the whole relay
 * (FS_ERR_CHECKSUM) and leaves the round.
 *
 * ---- Masks (fixed spec, a GPU kernel reproduces it bit for bit) -------------
 * PRG(K, N) is the ChaCha20-IETF (RFC 8439) keystream for key K and 12-byte
 * nonce N from block counter 0, read as little-endian uint32 words: word j is
 * keystream bytes 4j..4j+3 (fs_secagg_expand). The nonce is
 *     N[0..4) = purpose tag (uint32 LE): 1 self mask, 2 pairwise mask,
 *                                       3 neighbour graph
 *     N[4..12) = round id (uint64 LE).
 * Site u sends, word by word mod 2^32,
 *     y_u = q_u + PRG(b_u, N_self) + Σ_{v ∈ P(u), v > u} PRG(s_uv, N_pair)
 *                                  − Σ_{v ∈ P(u), v < u} PRG(s_uv, N_pair)
 * where P(u) = the neighbours that sent u a share (U2 ∩ N(u)) and s_uv is
 * the pairwise seed both u and v derive from their s keys. A vector has at
 * most 2^36 words (the 32-bit block counter).
 *
 * ---- Quantisation and weighting (fixed spec) --------------------------------
 * The masked vector has n_params + 1 words. A site with update x, sample
 * count m and the public cap w_cap (m <= w_cap) sends
 *     words 0..n_params-1:  Q(w · clip_C(x)_i),   w = m / w_cap ∈ (0, 1]
 *     word n_params:        Q(w)
 * clip_C scales x to L2 norm at most C; Q(v) = floor(v·2^f + u) mod 2^32
 * (two's complement) with u uniform in [0,1) from Philox4x32-10
 * (kernels/philox.h; key = the site's 64-bit rounding seed, counter =
 * {b low, b high, 0x41474553 "SEGA", 1} for block b = ⌊i/2⌋, u = the top 53
 * bits of out[0]:out[1] for even i, of out[2]:out[3] for odd i): stochastic
 * rounding, unbiased. Every value is at most
 * B = max(C, 1) in magnitude (the weight word is at most 1), and f is the
 * largest integer with n_max·B·2^f + n_max < 2^31, so the sum of up to n_max
 * sites never wraps as a signed 32-bit integer. The server dequantises
 * (float)(int32_t)sum_i · 2^-f and divides words 0..n_params-1 by word
 * n_params: Σ w_u·x_u / Σ w_u, the FedAvg mean weighted by sample counts,
 * without learning any site's count.
 *
 * ---- Limits ------------------------------------------------------------------
 * 3 <= n <= 255 (GF(2^8) x-coordinates); k = n-1, or k even with 2 <= k <
 * n-1 (a ring lattice on a seeded random permutation of the sites: each site
 * is joined to the k/2 nearest on either side); 2 <= t <= k. Any d <= k+1-t
 * dropouts in a neighbourhood are recovered.
 *
 * Tested by tests/test_secagg.c; the message decoders are fuzzed by
 * tests/fuzz/fuzz_secagg.c.
 */
#ifndef FS_SECAGG_H
#define FS_SECAGG_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/status.h"

struct fs_mask_key; /* kernels/backend.h */

#define FS_SECAGG_VERSION 1u
#define FS_SECAGG_MAX_SITES 255u
#define FS_SECAGG_MAX_WORDS (1ull << 36)
#define FS_SECAGG_SEED_BYTES 32
#define FS_SECAGG_NONCE_BYTES 12
#define FS_SECAGG_SERVER 0xffffffffu /* the "from" of server messages */

/* Purpose tags (nonce bytes 0..3). */
#define FS_SECAGG_TAG_SELF 1u
#define FS_SECAGG_TAG_PAIR 2u
#define FS_SECAGG_TAG_GRAPH 3u

/* The public parameters of one round; identical at the server and every
 * site (the integrator sends them in the round's task). */
typedef struct {
    uint64_t round;        /* round id, >= 1; bound into keys, nonces, messages */
    uint32_t n_sites;      /* n: sites selected for the round, 3..255          */
    uint32_t threshold;    /* t: shares that reconstruct a secret, 2..k        */
    uint32_t neighbours;   /* k: n-1 for full SecAgg, else even, 2..n-2        */
    uint64_t n_words;      /* length of the masked vector: n_params + 1        */
    uint8_t round_seed[32];/* public, fresh per round, drawn by the server     */
} fs_secagg_params;

/* Checks p (FS_ERR_ARG, logged, naming the field). */
fs_status fs_secagg_params_check(const fs_secagg_params *p) __attribute__((warn_unused_result));

/* The neighbours of site u in the round's graph, ascending, into
 * out[0..*count) (out holds n_sites entries). */
fs_status fs_secagg_neighbours(const fs_secagg_params *p, uint32_t u, uint32_t *out,
                               uint32_t *count);

/* The nonce of a purpose tag in round `round` (layout above). */
void fs_secagg_nonce(uint32_t tag, uint64_t round, uint8_t nonce[FS_SECAGG_NONCE_BYTES]);

/*
 * Mask expansion: out[0..n_words) = words word_offset .. word_offset+n_words-1
 * of PRG(key, nonce) (spec above). Any offset; n_words = 0 does nothing.
 * FS_ERR_ARG when word_offset + n_words > FS_SECAGG_MAX_WORDS.
 */
fs_status fs_secagg_expand(const uint8_t key[32], const uint8_t nonce[12], uint64_t word_offset,
                           size_t n_words, uint32_t *out);

/* ---- quantisation ---------------------------------------------------------- */

/* The fixed-point exponent f for clip norm C > 0 and at most n_max >= 1
 * sites (spec above); FS_ERR_ARG when C is not finite and positive, or no f
 * in [-60, 60] fits. */
fs_status fs_secagg_quant_bits(double clip, uint32_t n_max, int *f)
    __attribute__((warn_unused_result));

/* *scale = min(1, C / ||x||_2) (1 for x = 0). FS_ERR_NUMERIC (logged) when x
 * holds NaN or Inf. */
fs_status fs_secagg_l2_scale(const float *x, size_t n, double clip, double *scale)
    __attribute__((warn_unused_result));

/* q[i] = Q(clamp(scale·x[i], -bound, bound)) with rounding draw number
 * offset+i of sr_seed: element-wise, so it may run chunk by chunk.
 * FS_ERR_NUMERIC for a non-finite x[i]; FS_ERR_ARG when bound·2^f >= 2^31. */
fs_status fs_secagg_quantise(const float *x, size_t n, double scale, double bound, int f,
                             uint64_t sr_seed, uint64_t offset, uint32_t *q);

/* The whole site vector (spec above): q[0..n_params] from the update
 * delta[0..n_params), its sample count m (1..w_cap) and the public cap,
 * clip C and exponent f (from fs_secagg_quant_bits). */
fs_status fs_secagg_encode_update(const float *delta, size_t n_params, uint64_t num_samples,
                                  uint64_t w_cap, double clip, int f, uint64_t sr_seed,
                                  uint32_t *q) __attribute__((warn_unused_result));

/* out[i] = (float)(int32_t)sum[i] · 2^-f (spec above; exact power of two). */
void fs_secagg_dequantise(const uint32_t *sum, size_t n, int f, float *out);

/* The weighted mean from an unmasked sum of n_params + 1 words:
 * avg[i] = deq(sum[i]) / deq(sum[n_params]); *total_weight (may be NULL)
 * receives deq(sum[n_params]) = Σ m_u / w_cap. FS_ERR_NUMERIC (logged) when
 * the weight is not positive (a corrupt or empty sum). */
fs_status fs_secagg_average(const uint32_t *sum, size_t n_params, int f, float *avg,
                            float *total_weight) __attribute__((warn_unused_result));

/* ---- the site ----------------------------------------------------------------
 * Messages are returned in malloc'ed buffers the caller owns; release them
 * with fs_secagg_msg_free (wipes them: an unmasking response holds shares).
 * A site that refuses a message (bad bytes, failed authentication, an
 * inconsistent request) wipes its secrets and leaves the round: every later
 * call returns FS_ERR_ABANDONED. */
typedef struct fs_secagg_site fs_secagg_site;

/* A site with index self for the round p: draws its two key pairs and b_u
 * (libsodium CSPRNG). */
fs_status fs_secagg_site_new(const fs_secagg_params *p, uint32_t self, fs_secagg_site **out)
    __attribute__((warn_unused_result));
/* Wipes every secret and frees; NULL is fine. */
void fs_secagg_site_free(fs_secagg_site *s);

/* Stage 0: the AdvertiseKeys message (c_pk, s_pk, commitment to b_u). */
fs_status fs_secagg_site_advertise(fs_secagg_site *s, uint8_t **msg, size_t *len)
    __attribute__((warn_unused_result));

/* Stage 1: reads the server's KEYS broadcast (must list this site with the
 * keys it advertised, and at least t-1 of its neighbours) and returns the
 * SHARES message: one AEAD ciphertext of (share of b_u, share of s_sk) per
 * neighbour in U1. */
fs_status fs_secagg_site_share_keys(fs_secagg_site *s, const uint8_t *keys, size_t keys_len,
                                    uint8_t **msg, size_t *len) __attribute__((warn_unused_result));

/* Stage 2: reads the RELAY addressed to this site, authenticates and keeps
 * every share, derives the pairwise seeds with the senders, then wipes both
 * private keys. FS_ERR_CHECKSUM (logged, naming the sender) when any share
 * fails authentication. */
fs_status fs_secagg_site_recv_shares(fs_secagg_site *s, const uint8_t *relay, size_t relay_len)
    __attribute__((warn_unused_result));

/* Stage 2: out[0..n) = y_u words offset..offset+n-1 from q[0..n) (the same
 * words of the quantised vector). out may equal q. Any order of chunks. */
fs_status fs_secagg_site_mask(fs_secagg_site *s, const uint32_t *q, uint64_t offset, size_t n,
                              uint32_t *out) __attribute__((warn_unused_result));
/* The masks fs_secagg_site_mask adds, as ChaCha20 mask keys for a backend's
 * chacha_mask (kernels/backend.h): the self mask (+1) and one pairwise mask
 * per neighbour (−1 towards lower-numbered sites), so that a site training
 * on a GPU masks there; applying them over the vector at offset 0 equals
 * fs_secagg_site_mask. *keys: malloc'ed, WARNING: secrets — release with
 * fs_secagg_unmask_keys_free (wipes). */
fs_status fs_secagg_site_mask_keys(fs_secagg_site *s, struct fs_mask_key **keys, int *k);

/* Stage 4: reads the server's unmasking request (the sites whose masked
 * input arrived, and those that dropped after sharing) and returns the
 * response: the share of b_v for each listed survivor v whose share it holds,
 * the share of s_sk of each listed dropped v. Refuses (FS_ERR_MISMATCH,
 * logged) a request naming fewer than t survivors, not naming this site, a
 * survivor graph that is not connected, or sets that contradict the shares
 * it received. Answers at most once; wipes all shares afterwards. */
fs_status fs_secagg_site_unmask(fs_secagg_site *s, const uint8_t *req, size_t req_len,
                                uint8_t **msg, size_t *len) __attribute__((warn_unused_result));

/* ---- the server --------------------------------------------------------------
 * Every recv function takes the authenticated index of the site that sent the
 * bytes (from the transport's identity) and refuses a message whose sender
 * differs. A refused message (FS_ERR_FORMAT / FS_ERR_MISMATCH / FS_ERR_ARG,
 * logged with the site) changes nothing: that site simply does not complete
 * the stage. */
typedef struct fs_secagg_server fs_secagg_server;

/* Which stage a site completed (for fs_secagg_server_has / _count). */
typedef enum {
    FS_SECAGG_ADVERTISED = 0, /* U1: keys received            */
    FS_SECAGG_SHARED,         /* U2: shares received          */
    FS_SECAGG_MASKED,         /* U3: masked input in the sum  */
    FS_SECAGG_UNMASKED        /* U5: unmasking response taken */
} fs_secagg_set;

fs_status fs_secagg_server_new(const fs_secagg_params *p, fs_secagg_server **out)
    __attribute__((warn_unused_result));
/* Wipes reconstructed secrets and frees; NULL is fine. */
void fs_secagg_server_free(fs_secagg_server *srv);

/* 1 when site is in the set, else 0. */
int fs_secagg_server_has(const fs_secagg_server *srv, fs_secagg_set set, uint32_t site);
/* Size of the set. */
uint32_t fs_secagg_server_count(const fs_secagg_server *srv, fs_secagg_set set);
/* Why the round was abandoned ("" while it is not). */
const char *fs_secagg_server_reason(const fs_secagg_server *srv);

/* Stage 0. */
fs_status fs_secagg_server_recv_advertise(fs_secagg_server *srv, uint32_t site, const uint8_t *msg,
                                          size_t len) __attribute__((warn_unused_result));
/* Ends stage 0; *keys is the KEYS message for every site in U1. */
fs_status fs_secagg_server_close_advertise(fs_secagg_server *srv, uint8_t **keys, size_t *len)
    __attribute__((warn_unused_result));
/* Stage 1: the SHARES message of a site in U1 (one ciphertext for each of
 * its neighbours in U1, no more, no less). */
fs_status fs_secagg_server_recv_shares(fs_secagg_server *srv, uint32_t site, const uint8_t *msg,
                                       size_t len) __attribute__((warn_unused_result));
/* Ends stage 1 (U2). */
fs_status fs_secagg_server_close_shares(fs_secagg_server *srv) __attribute__((warn_unused_result));
/* The RELAY message for a site in U2: the ciphertexts its neighbours in U2
 * addressed to it. */
fs_status fs_secagg_server_relay(fs_secagg_server *srv, uint32_t site, uint8_t **msg, size_t *len)
    __attribute__((warn_unused_result));
/* Stage 2: the site's whole masked vector has been added into the running
 * sum (call it only then, once per site, for a site in U2). */
fs_status fs_secagg_server_masked_received(fs_secagg_server *srv, uint32_t site)
    __attribute__((warn_unused_result));
/* Ends stage 2 (U3); *req is the unmasking request for every site in U3. */
fs_status fs_secagg_server_close_masked(fs_secagg_server *srv, uint8_t **req, size_t *len)
    __attribute__((warn_unused_result));
/* Stage 4: a site's unmasking response (exactly the shares it should hold). */
fs_status fs_secagg_server_recv_unmask(fs_secagg_server *srv, uint32_t site, const uint8_t *msg,
                                       size_t len) __attribute__((warn_unused_result));
/* Ends stage 4: reconstructs b_u for every u ∈ U3 and s_sk of every v ∈
 * U2 \ U3, each checked against what the site advertised in stage 0 (H(b_u),
 * s_pk); a share that breaks the check is outvoted by trying other t-subsets
 * when more than t shares arrived. FS_ERR_ABANDONED when a secret cannot be
 * recovered. */
fs_status fs_secagg_server_close_unmask(fs_secagg_server *srv) __attribute__((warn_unused_result));
/* Removes every mask from words offset..offset+n-1 of the running sum of
 * the U3 sites' masked vectors, in place; chunks in any order, each once.
 * Only after a successful close_unmask; the sum is untouched otherwise. */
fs_status fs_secagg_server_unmask(fs_secagg_server *srv, uint32_t *sum, uint64_t offset, size_t n)
    __attribute__((warn_unused_result));
/* The same corrections as ChaCha20 mask keys for a backend's chacha_mask
 * (kernels/backend.h), so that a sum kept on the GPU is unmasked there:
 * applying all k keys over the whole vector (offset 0) equals
 * fs_secagg_server_unmask. Only after close_unmask. *keys: malloc'ed;
 * WARNING: secrets — release with fs_secagg_unmask_keys_free (wipes). */
fs_status fs_secagg_server_unmask_keys(const fs_secagg_server *srv, struct fs_mask_key **keys,
                                       int *k) __attribute__((warn_unused_result));
void fs_secagg_unmask_keys_free(struct fs_mask_key *keys, int k);

/* Wipes and frees a message buffer returned by this module; NULL is fine. */
void fs_secagg_msg_free(uint8_t *msg, size_t len);

#endif
