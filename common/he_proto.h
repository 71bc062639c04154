/*
 * common/he_proto.h — the encrypted-aggregation protocol of one round
 * attempt, built on the multiparty BFV library (common/he.h): who sends what,
 * in which message, and the strict parsing of every message. Pure logic: it
 * never touches the network or files; the integrator (aggregator/round.c,
 * node/client.c) moves the bytes and says which authenticated site sent them.
 *
 * ---- One attempt -----------------------------------------------------------
 * The n sites of the attempt are numbered 1..n; everyone gets the same
 * fs_he_params (a fresh public CRS seed per attempt, so every attempt has a
 * fresh collective key and fresh key shares).
 *
 *  site i (fs_he_site)                          server (fs_he_server)
 *  K  site_keys          ──KEYS──►  server_recv_keys(i)  (pk share, X25519 pk)
 *                                   server_close_keys → BCAST   (needs all n)
 *  S  site_shares(BCAST) ◄─BCAST──  (one message, the same for every site)
 *                        ──SHARES─► server_recv_shares(i)  (sealed f_i(k),
 *                                   one part or several)
 *                                   server_close_shares          (needs all n)
 *     site_recv_relay    ◄─RELAY──  server_relay(k, start) (batches; repeat
 *                                   with start = next until done)
 *  U  site_encrypt_ct(j) ──CT j──►  the integrator spools the upload, then
 *                                   server_ct(i, obj, commit = 0) for every
 *                                   object (verify), then again with
 *                                   commit = 1 (fold), then server_ct_done(i)
 *                                   server_close_input → the decryption set T
 *                                   (t contributors; fewer → abandoned)
 *  D  site_partials(REQ) ◄──REQ───  server_decrypt_req(k, start) for k ∈ T
 *                        ──PART──►  server_recv_partials(k)
 *                                   server_close_decrypt: every member of T
 *                                   answered → server_result; members
 *                                   missing → a new T of t other
 *                                   contributors (generation + 1) if there
 *                                   are t, else abandoned
 * The K and S stages need every site of the attempt (a site's secret is in
 * the collective key only if its shares reached everyone); a site lost there
 * costs the attempt (FS_ERR_ABANDONED) and the integrator starts a new one.
 * From U on, up to n − t sites may drop: the sum holds the contributors'
 * ciphertexts, and any t of the sites that contributed decrypt it.
 *
 * ---- Cryptography ------------------------------------------------------------
 * Key shares f_i(k) (common/he.h fs_he_shamir_deal, FS_HE_OBJ_SHAMIR objects)
 * travel site → server → site under XChaCha20-Poly1305 with a key from
 * X25519 between the dealer's and the receiver's per-attempt key pairs
 * (crypto_kx-style derivation over both public keys, BLAKE2b) and associated
 * data (magic, version, round, attempt, dealer, receiver): the server, which
 * relays them, cannot read them, and a share moved to another receiver or
 * round fails authentication. The server holds no key material; it learns
 * the decrypted sum and nothing else (each partial decryption carries
 * smudging noise, common/he.h). Threat model: honest-but-curious server and
 * sites (Mouchet et al.'s passive model): a server that lies about the
 * collective key or asks for a decryption of something other than the sum is
 * not detected (docs/security.md § Encrypted aggregation).
 *
 * ---- Messages ----------------------------------------------------------------
 * All integers little-endian. Every message starts with a 16-byte header:
 * "FSHP", version (u8, 1), type (u8), 2 zero bytes, round (u32), attempt
 * (u32); a message of another round or attempt, type, or with trailing or
 * missing bytes is refused (FS_ERR_FORMAT or FS_ERR_MISMATCH, logged with the
 * reason). Polynomials travel as common/he_wire.c objects (digest-checked).
 *   KEYS    X25519 pk (32) · PK_SHARE object (from = i)
 *   BCAST   n (u32) · PUBKEY object · n × X25519 pk (32)
 *   SHARES  count (u32) · count × [receiver (u32) · sealed SHAMIR object
 *           (24-byte nonce · ciphertext · 16-byte tag)]
 *   RELAY   count (u32) · next (u32, 0 = done) · count × [dealer (u32) ·
 *           sealed SHAMIR object]
 *   REQ     generation (u32) · |T| (u32) · T (u32 each, sorted) · nct (u32) ·
 *           start (u32) · count (u32) · count × C1 object (index start + j)
 *   PART    generation (u32) · start (u32) · count (u32) · count × PARTIAL
 *           object (from = k, index start + j, set id of T)
 * A batch holds at most FS_HE_PROTO_BATCH objects, so every message stays
 * under 1 MiB whatever the model size or number of sites.
 *
 * Tested by tests/test_he_proto.c.
 */
#ifndef FS_HE_PROTO_H
#define FS_HE_PROTO_H

#include "common/he.h"

#define FS_HE_PROTO_BATCH 16u
#define FS_HE_PROTO_MAX_SITES 255u

/* The message types (byte 5 of the header). */
typedef enum {
    FS_HE_MSG_KEYS = 1,
    FS_HE_MSG_BCAST = 2,
    FS_HE_MSG_SHARES = 3,
    FS_HE_MSG_RELAY = 4,
    FS_HE_MSG_REQ = 5,
    FS_HE_MSG_PART = 6
} fs_he_msg_type;

typedef struct {
    uint32_t round, attempt;          /* round ≥ 1                               */
    uint32_t n_sites;                 /* 2 .. FS_HE_PROTO_MAX_SITES              */
    uint32_t threshold;               /* 2 .. n_sites                            */
    uint8_t crs_seed[FS_HE_SEED_BYTES]; /* public, fresh per attempt             */
    uint64_t n_values;                /* P: the update's length (1 .. 2^31)      */
    fs_he_quant qz;                   /* clip and fraction bits                  */
} fs_he_params;

/* FS_OK when the parameters are usable: ranges above, and the scheme
 * supports n sites at this quantisation (fs_he_max_sites(qz) ≥ n); else
 * FS_ERR_ARG with a logged reason. */
fs_status fs_he_params_check(const fs_he_params *p);
/* The largest fraction bits f ≤ 24 at which fs_he_max_sites({clip, f}) ≥ n
 * (the finest grid the plaintext space allows for n sites); FS_ERR_ARG when
 * none (clip too large or too many sites). */
fs_status fs_he_frac_bits(double clip, uint32_t n, unsigned *f);
/* Ciphertexts of an update of p->n_values values (the weight is one more). */
size_t fs_he_params_nct(const fs_he_params *p);

/* ---- server ------------------------------------------------------------------ */

typedef struct fs_he_server fs_he_server;

fs_status fs_he_server_new(const fs_he_params *p, fs_he_server **out);
void fs_he_server_free(fs_he_server *s);  /* NULL-safe */
/* Stage K, before close_shares: keep the ciphertext sum of stage U on the GPU
 * (common/he.h fs_he_cuda_sum: every committed ciphertext is copied in and
 * added there; close_input downloads the sum for decryption). FS_OK when a
 * device answered; otherwise the status of fs_he_cuda_open (FS_ERR_UNSUPPORTED
 * without the CUDA backend, FS_ERR_DEVICE without a device) and the sum stays
 * on the CPU. on_gpu: whether the GPU is (still) in use. */
fs_status fs_he_server_use_gpu(fs_he_server *s);
int fs_he_server_on_gpu(const fs_he_server *s);

/* Stage K. site in 1..n. A repeated message from the same site is refused. */
fs_status fs_he_server_recv_keys(fs_he_server *s, uint32_t site, const uint8_t *msg, size_t len);
/* Ends stage K: all n keys → the collective key and BCAST (*out malloc'ed,
 * caller frees); else FS_ERR_ABANDONED. */
fs_status fs_he_server_close_keys(fs_he_server *s, uint8_t **out, size_t *len);

/* Stage S: one SHARES part (several may come from one site; each receiver at
 * most once per dealer, never the dealer itself). */
fs_status fs_he_server_recv_shares(fs_he_server *s, uint32_t site, const uint8_t *msg, size_t len);
/* 1 when site has sent its shares for all n − 1 others. */
int fs_he_server_shares_done(const fs_he_server *s, uint32_t site);
/* Ends stage S: every site sent all its shares → FS_OK; else FS_ERR_ABANDONED. */
fs_status fs_he_server_close_shares(fs_he_server *s);
/* RELAY for receiver `site`: the shares addressed to it from dealers
 * start.. (at most FS_HE_PROTO_BATCH); start = 1 first, then the message's
 * `next` until it is 0. Between close_shares and close_input (which frees
 * the stored shares). */
fs_status fs_he_server_relay(fs_he_server *s, uint32_t site, uint32_t start, uint8_t **out, size_t *len);

/* Stage U: one serialised CT object (fs_he_wire_bytes(FS_HE_OBJ_CT) bytes)
 * of `site`'s upload; objects must come in index order 0..nct−1, from = site,
 * key id = the collective key's. commit = 0 only verifies (the integrator's
 * first pass over a spooled upload; call fs_he_server_ct_reset(site) before
 * the second pass), commit = 1 verifies and adds it into the running sum. */
fs_status fs_he_server_ct(fs_he_server *s, uint32_t site, const uint8_t *obj, size_t len, int commit);
void fs_he_server_ct_reset(fs_he_server *s, uint32_t site);
/* The site's nct objects were committed: it is a contributor. FS_ERR_FORMAT
 * if fewer arrived.
 * WARNING: a committed object cannot be taken out of the sum. A commit = 1
 * object refused after some of the site's objects were added, or a site
 * whose objects were only partly added when close_input comes, leaves the
 * sum unusable: the attempt is abandoned (FS_ERR_ABANDONED). A site whose nct
 * objects were all added is a contributor at close_input even without
 * ct_done. ct_reset restarts the verifying pass (commit = 0) only. */
fs_status fs_he_server_ct_done(fs_he_server *s, uint32_t site);
/* Ends stage U: fewer than t contributors → FS_ERR_ABANDONED; else chooses T
 * (the t contributors with the smallest indices) and starts stage D. */
fs_status fs_he_server_close_input(fs_he_server *s);

/* Stage D: 1 when site is in the current T. */
int fs_he_server_in_set(const fs_he_server *s, uint32_t site);
/* REQ for member `site` of T: ciphertexts start.. (at most FS_HE_PROTO_BATCH). */
fs_status fs_he_server_decrypt_req(fs_he_server *s, uint32_t site, uint32_t start, uint8_t **out,
                                   size_t *len);
/* A PART message from member `site` (batches in order from 0; of the current
 * generation; a batch of a superseded T is refused with FS_ERR_ABANDONED). */
fs_status fs_he_server_recv_partials(fs_he_server *s, uint32_t site, const uint8_t *msg, size_t len);
/* 1 when every member of T has sent all nct partials. */
int fs_he_server_decrypt_done(const fs_he_server *s);
/* Ends a decryption generation (the integrator's stage deadline, or
 * decrypt_done): every member of T answered → FS_OK and *again = 0 (the
 * result is ready); members missing → they are dropped from the contributors
 * that may decrypt, and a new T of t of the remaining contributors starts
 * (generation + 1, accumulated partials discarded): FS_OK and *again = 1;
 * fewer than t remain → FS_ERR_ABANDONED. */
fs_status fs_he_server_close_decrypt(fs_he_server *s, int *again);
/* After close_decrypt gave FS_OK with *again = 0: the decrypted sum of the
 * contributors' quantised values (n_values + 1 centred integers). */
fs_status fs_he_server_result(fs_he_server *s, int64_t *sum);

typedef enum {
    FS_HE_KEYED = 0,       /* sent KEYS                                       */
    FS_HE_SHARED = 1,      /* sent all its shares                             */
    FS_HE_CONTRIBUTED = 2, /* its ciphertexts are in the sum                  */
    FS_HE_DECRYPTED = 3    /* sent all partials for the current T             */
} fs_he_server_state;
uint32_t fs_he_server_count(const fs_he_server *s, fs_he_server_state st);
int fs_he_server_has(const fs_he_server *s, fs_he_server_state st, uint32_t site);
uint32_t fs_he_server_generation(const fs_he_server *s);
/* Why the attempt was abandoned ("" when it was not). */
const char *fs_he_server_reason(const fs_he_server *s);

/* ---- site ---------------------------------------------------------------------- */

typedef struct fs_he_site fs_he_site;

/* Site `index` (1..n). Builds the context (expands the CRS). */
fs_status fs_he_site_new(const fs_he_params *p, uint32_t index, fs_he_site **out);
void fs_he_site_free(fs_he_site *s);  /* NULL-safe; wipes every secret */

/* Stage K: draws the secret share and the X25519 pair; *out is KEYS. */
fs_status fs_he_site_keys(fs_he_site *s, uint8_t **out, size_t *len);
/* Stage S: takes BCAST (checks n, the key id), deals the Shamir shares of
 * its secret, keeps its own, and seals the others: *nparts SHARES messages
 * (each ≤ FS_HE_PROTO_BATCH shares) in out[0..*nparts) (each malloc'ed, and
 * the array; free with fs_he_site_free_parts). */
fs_status fs_he_site_shares(fs_he_site *s, const uint8_t *bcast, size_t len, uint8_t ***out,
                            size_t **lens, size_t *nparts);
void fs_he_site_free_parts(uint8_t **parts, size_t *lens, size_t nparts);
/* One RELAY message; *next is the start of the next batch to ask (0 when
 * every dealer's share arrived, and the threshold key is then built). */
fs_status fs_he_site_recv_relay(fs_he_site *s, const uint8_t *msg, size_t len, uint32_t *next);
/* Stage U (after the threshold key is built): quantised values q[0..nct·N)
 * are encrypted ciphertext by ciphertext: object j (fs_he_wire_bytes(CT)
 * bytes) of values q[j·N ..], zero beyond count. */
fs_status fs_he_site_encrypt_ct(fs_he_site *s, const int64_t *q, size_t count, uint32_t j,
                                uint8_t *obj, size_t cap);
/* Stage U, the whole update at once: all nct objects into objs (cap ≥
 * nct · fs_he_wire_bytes(CT)), the same objects as fs_he_site_encrypt_ct
 * would write with other randomness; batches of 64 ciphertexts over the
 * OpenMP threads, or on the GPU when gpu is set and a device answers (the
 * GPU encryption is bit-identical to the CPU's for the same seed; without
 * a device this logs a warning and uses the CPU). *on_gpu (may be NULL):
 * whether the GPU did it. */
fs_status fs_he_site_encrypt(fs_he_site *s, const int64_t *q, size_t count, int gpu, uint8_t *objs,
                             size_t cap, int *on_gpu);
/* Stage D: one REQ → one PART (*out malloc'ed). Refuses a REQ whose T does
 * not hold this site, a repeated (generation, start), a key id that is not
 * the collective key's. *gen and *next tell the caller which batch follows
 * (next = 0 after the last). */
fs_status fs_he_site_partials(fs_he_site *s, const uint8_t *req, size_t len, uint8_t **out,
                              size_t *olen, uint32_t *gen, uint32_t *next);
/* The threshold key is built (after the last RELAY). */
int fs_he_site_ready(const fs_he_site *s);
const fs_he_ctx *fs_he_site_ctx(const fs_he_site *s);

#endif
