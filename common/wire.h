/*
 * common/wire.h — the federation's messages as plain C structs, and the codec
 * that turns them into protobuf bytes and back (proto/fedseg.proto;
 * docs/protocol.md § Messages). This is the only module that knows protobuf:
 * the transport (common/transport.h) moves opaque bytes, the aggregator and
 * the node see only these structs.
 *
 * Encoding: fs_wire_encode_X packs a struct with protobuf-c into a malloc'ed
 * buffer (the caller, or the transport, frees it). Encoding writes what it is
 * given; it does not judge the values.
 *
 * Decoding: fs_wire_decode_X reads untrusted bytes and returns
 *   FS_OK            — *out holds a message whose every field passed the checks
 *                      below (it is safe to use; whether it is the right round
 *                      or an allowed site is the aggregator's business);
 *   FS_ERR_MISMATCH  — the message parsed but speaks another protocol version:
 *                      why = "protocol version 2, this fedseg speaks 1";
 *   FS_ERR_FORMAT    — the bytes do not parse, or a value is out of range;
 *                      why names the message, the field and the problem;
 *   FS_ERR_ARG       — NULL buffer (with len > 0) or NULL out.
 * why (may be NULL) receives one line for a person; decode never logs (the
 * caller knows which peer sent the bytes and logs with that).
 *
 * WARNING: the decoder is deliberately stricter than protobuf: a known field
 * that appears twice or with the wrong wire type, an over-long varint, a
 * uint32 field above 2^32-1, a bool other than 0/1, a string that is not
 * UTF-8 or holds control characters, or a message over FS_MAX_MSG_BYTES is
 * refused. Unknown fields are skipped (forward compatibility). Whatever it
 * accepts, protobuf-c accepts with the same values (checked by the fuzzer).
 *
 * Checks made by decode:
 *   strings        fit the struct's array; identifiers ([A-Za-z0-9._-]) where
 *                  noted; no control characters, valid UTF-8
 *   num_params     1 .. FS_WIRE_MAX_PARAMS (2^31)
 *   num_samples    1 .. FS_WIRE_MAX_SAMPLES (2^32)
 *   chunk data     a multiple of 4 bytes, at most FS_CHUNK_PARAMS·4 bytes,
 *                  non-empty (except an UpdateChunk carrying the header), and
 *                  offset + len/4 ≤ num_params (≤ 2^31 when num_params is not
 *                  in the message)
 *   Task           action known; TRAIN: round ≥ 1, local_epochs 1..10000,
 *                  lr finite and > 0, prox_mu finite and ≥ 0; lr and prox_mu
 *                  finite always; retry_after_ms ≤ 24 h; dp_clip finite, ≥ 0;
 *                  secure_agg: 3 ≤ sites ≤ 255, index < sites, 2 ≤ threshold,
 *                  neighbours < sites, a 32-byte seed, clip finite > 0,
 *                  weight_cap ≥ 1 (all secagg fields zero otherwise);
 *                  encrypted (not with secure_agg): 2 ≤ sites ≤ 255, index <
 *                  sites, 2 ≤ threshold ≤ sites, neighbours 0, a 32-byte
 *                  seed, clip finite > 0, weight_cap ≥ 1, quant bits 0..24,
 *                  dp_noise_multiplier > 0 with dp_distributed (else 0)
 *   SecAgg         round ≥ 1, stage ≤ 11, payload ≤ FS_SECAGG_MAX_PAYLOAD;
 *                  reply status ≤ 2, retry_after_ms ≤ 24 h
 *   UpdateHeader   round ≥ 1, train_loss and train_seconds finite and ≥ 0,
 *                  each Dice in [0,1] or NaN ("not evaluated")
 *
 * Chunk payloads are never copied by decode: fs_wire_model_chunk.data and
 * fs_wire_update_chunk.data point INTO the buffer passed to decode, which the
 * caller owns; they are valid while that buffer is. The bytes are
 * little-endian fp32; fs_wire_copy_f32 turns them into floats.
 *
 * Tested by tests/test_wire.c (round trips with edge values, every refusal,
 * truncation and bit flips) and fuzzed by tests/fuzz/fuzz_wire.c (saved
 * corpus replayed by ctest: fuzz_replay_wire).
 */
#ifndef FS_WIRE_H
#define FS_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include "common/transport.h"
#include "kernels/status.h"

#define FS_PROTOCOL_VERSION 1u

/* Parameters per model/update chunk (256 KiB of fp32). */
#define FS_CHUNK_PARAMS 65536u
#define FS_CHUNK_BYTES (FS_CHUNK_PARAMS * 4u)
/* The largest message either side sends or accepts: a 1 MiB chunk payload
 * plus slack for the header fields (give this to the transport). */
#define FS_MAX_MSG_BYTES ((1u << 20) + 4096u)
#define FS_WIRE_MAX_PARAMS (1ull << 31)
#define FS_WIRE_MAX_SAMPLES (1ull << 32)

/* Fixed string capacities (including the terminating NUL). */
#define FS_WIRE_PRESET_LEN 16
#define FS_WIRE_NAME_LEN 64
#define FS_WIRE_REASON_LEN 256

/* The RPC methods, indexing fs_federation_methods (paths and call shapes). */
enum { FS_M_JOIN, FS_M_GET_TASK, FS_M_DOWNLOAD_MODEL, FS_M_PUSH_UPDATE, FS_M_SECAGG, FS_M_COUNT };
extern const fs_rpc_method fs_federation_methods[FS_M_COUNT];

/* Join (unary): a site announces itself; its identity comes from its TLS
 * certificate, not from the message. */
typedef struct {
    uint32_t protocol_version;
    char preset[FS_WIRE_PRESET_LEN];   /* identifier, non-empty                  */
    uint64_t num_samples;              /* 1 .. FS_WIRE_MAX_SAMPLES                */
    char software[FS_WIRE_NAME_LEN];   /* "fedseg 0.1.0", free text               */
} fs_wire_join_request;

typedef struct {
    uint32_t protocol_version;
    int accepted;
    char reason[FS_WIRE_REASON_LEN];   /* why not, when not accepted              */
    char site_id[FS_WIRE_NAME_LEN];    /* identifier (non-empty when accepted)    */
    char preset[FS_WIRE_PRESET_LEN];   /* identifier (non-empty when accepted)    */
    uint64_t num_params;               /* 1 .. 2^31 when accepted, else 0 allowed */
    uint32_t round;
} fs_wire_join_reply;

/* GetTask (unary). */
typedef struct {
    uint32_t protocol_version;
    uint32_t last_round_done;          /* 0 = none */
} fs_wire_task_request;

typedef enum { FS_TASK_WAIT = 0, FS_TASK_TRAIN = 1, FS_TASK_FINISHED = 2 } fs_task_action;

typedef struct {
    fs_task_action action;
    uint32_t round;
    uint32_t local_epochs;
    uint32_t steps_per_epoch;          /* 0 = the site's own default */
    float lr;
    float prox_mu;                     /* FedProx term (0 = FedAvg)  */
    uint64_t num_params;
    uint32_t seconds_left;
    uint32_t retry_after_ms;
    uint32_t model_crc32;              /* CRC-32 of the global model's bytes */
    int scaffold;                      /* download [w | c], update [delta | delta_c] (2·num_params) */
    int local_norm;                    /* FedBN: normalisation parameters stay at the site */
    float dp_clip;                     /* > 0: clip the update to this L2 norm (DP); 0 = off */
    /* secure aggregation (all zero when secure_agg is 0) */
    int secure_agg;
    uint32_t secagg_attempt;
    uint32_t secagg_index;             /* < secagg_sites                        */
    uint32_t secagg_sites;             /* 3 .. 255                              */
    uint32_t secagg_threshold;         /* 2 .. secagg_sites - 1                 */
    uint32_t secagg_neighbours;        /* 2 .. secagg_sites - 1                 */
    uint8_t secagg_round_seed[32];
    double secagg_clip;                /* finite, > 0                           */
    uint64_t secagg_weight_cap;        /* ≥ 1                                   */
    int dp_distributed;                /* secure_agg only: add a noise share     */
    float dp_noise_multiplier;         /* > 0 with dp_distributed                */
    int32_t secagg_quant_bits;         /* f, -60..60, with dp_distributed;
                                          encrypted: f, 0..24                    */
    int encrypted;                     /* encrypted aggregation (common/he_proto.h):
                                          the secagg_* fields describe the attempt,
                                          2 ≤ sites ≤ 255, neighbours 0          */
} fs_wire_task;

/* DownloadModel (server stream): one request, then ModelChunks in order. */
typedef struct {
    uint32_t protocol_version;
    uint32_t round;
} fs_wire_model_request;

typedef struct {
    uint32_t round;
    uint64_t num_params;               /* the whole model's length */
    uint64_t offset;                   /* in parameters            */
    const uint8_t *data;               /* little-endian fp32; decode: points into
                                          the decoded buffer (borrowed)          */
    size_t len;                        /* bytes                    */
    uint32_t crc32;                    /* of the whole model's bytes */
} fs_wire_model_chunk;

/* PushUpdate (client stream): UpdateChunks in order, the first carrying the
 * header; the server answers one UpdateAck. */
typedef struct {
    uint32_t protocol_version;
    uint32_t round;
    uint64_t num_params;
    uint64_t num_samples;
    float train_loss;
    float global_dice_wt;              /* NaN = not evaluated */
    float global_dice_tc;
    float global_dice_et;
    double train_seconds;
    uint32_t crc32;                    /* of the whole update's bytes */
    int masked;                        /* secure aggregation: uint32 masked words */
    uint32_t secagg_attempt;
    int encrypted;                     /* encrypted aggregation: ciphertext objects,
                                          num_params = their bytes / 4           */
    int dp_unclipped;                  /* central DP: norm ≤ dp_clip before clipping */
} fs_wire_update_header;

typedef struct {
    int has_header;                    /* first chunk of a stream */
    fs_wire_update_header header;      /* valid when has_header   */
    uint64_t offset;                   /* in parameters           */
    const uint8_t *data;               /* borrowed, as for fs_wire_model_chunk */
    size_t len;
} fs_wire_update_chunk;

typedef struct {
    int accepted;
    char reason[FS_WIRE_REASON_LEN];
} fs_wire_update_ack;

/* SecAgg (unary): one step of a secure-aggregation stage (proto/fedseg.proto). */
typedef enum {
    FS_SA_ADVERTISE = 0,   /* site → server: AdvertiseKeys                  */
    FS_SA_GET_KEYS = 1,    /* server → site: the KEYS broadcast             */
    FS_SA_SHARES = 2,      /* site → server: encrypted shares               */
    FS_SA_GET_RELAY = 3,   /* server → site: the shares addressed to it     */
    FS_SA_GET_UNMASK = 4,  /* server → site: the unmasking request          */
    FS_SA_UNMASK = 5,      /* site → server: the unmasking response         */
    /* encrypted aggregation (common/he_proto.h) */
    FS_HE_KEYS = 6,        /* site → server: KEYS                           */
    FS_HE_GET_BCAST = 7,   /* server → site: BCAST                          */
    FS_HE_SHARES = 8,      /* site → server: one SHARES part                */
    FS_HE_GET_RELAY = 9,   /* server → site: RELAY (request: u32 start)     */
    FS_HE_GET_DECRYPT = 10,/* server → site: REQ (request: u32 start)       */
    FS_HE_PARTIALS = 11    /* site → server: PART                           */
} fs_secagg_stage;
#define FS_SA_STAGE_MAX FS_HE_PARTIALS
typedef enum { FS_SA_WAIT = 0, FS_SA_OK = 1, FS_SA_ABANDONED = 2 } fs_secagg_reply_status;
/* The largest SecAgg payload (a KEYS or SHARES message of 255 sites is
 * about 30 KB). */
#define FS_SECAGG_MAX_PAYLOAD (1u << 20)

typedef struct {
    uint32_t protocol_version;
    uint32_t round;                    /* ≥ 1 */
    uint32_t attempt;
    fs_secagg_stage stage;
    const uint8_t *payload;            /* borrowed from the decoded buffer */
    size_t len;                        /* ≤ FS_SECAGG_MAX_PAYLOAD          */
} fs_wire_secagg_request;

typedef struct {
    fs_secagg_reply_status status;
    fs_secagg_stage stage;
    const uint8_t *payload;            /* borrowed, as above */
    size_t len;
    uint32_t retry_after_ms;           /* ≤ 24 h */
    char reason[FS_WIRE_REASON_LEN];
} fs_wire_secagg_reply;

/* Encoders: *out is malloc'ed (caller frees), *len its size. FS_ERR_ARG for
 * NULL arguments (or chunk data NULL with len > 0), FS_ERR_NOMEM. */
fs_status fs_wire_encode_join_request(const fs_wire_join_request *m, uint8_t **out, size_t *len);
fs_status fs_wire_encode_join_reply(const fs_wire_join_reply *m, uint8_t **out, size_t *len);
fs_status fs_wire_encode_task_request(const fs_wire_task_request *m, uint8_t **out, size_t *len);
fs_status fs_wire_encode_task(const fs_wire_task *m, uint8_t **out, size_t *len);
fs_status fs_wire_encode_model_request(const fs_wire_model_request *m, uint8_t **out, size_t *len);
fs_status fs_wire_encode_model_chunk(const fs_wire_model_chunk *m, uint8_t **out, size_t *len);
fs_status fs_wire_encode_update_chunk(const fs_wire_update_chunk *m, uint8_t **out, size_t *len);
fs_status fs_wire_encode_update_ack(const fs_wire_update_ack *m, uint8_t **out, size_t *len);
fs_status fs_wire_encode_secagg_request(const fs_wire_secagg_request *m, uint8_t **out, size_t *len);
fs_status fs_wire_encode_secagg_reply(const fs_wire_secagg_reply *m, uint8_t **out, size_t *len);

/* Decoders: see the top of this file for the statuses and checks. On an
 * error *out is left zeroed. */
fs_status fs_wire_decode_join_request(const uint8_t *buf, size_t len, fs_wire_join_request *out,
                                      char *why, size_t whylen);
fs_status fs_wire_decode_join_reply(const uint8_t *buf, size_t len, fs_wire_join_reply *out,
                                    char *why, size_t whylen);
fs_status fs_wire_decode_task_request(const uint8_t *buf, size_t len, fs_wire_task_request *out,
                                      char *why, size_t whylen);
fs_status fs_wire_decode_task(const uint8_t *buf, size_t len, fs_wire_task *out, char *why,
                              size_t whylen);
fs_status fs_wire_decode_model_request(const uint8_t *buf, size_t len, fs_wire_model_request *out,
                                       char *why, size_t whylen);
fs_status fs_wire_decode_model_chunk(const uint8_t *buf, size_t len, fs_wire_model_chunk *out,
                                     char *why, size_t whylen);
fs_status fs_wire_decode_update_chunk(const uint8_t *buf, size_t len, fs_wire_update_chunk *out,
                                      char *why, size_t whylen);
fs_status fs_wire_decode_update_ack(const uint8_t *buf, size_t len, fs_wire_update_ack *out,
                                    char *why, size_t whylen);
fs_status fs_wire_decode_secagg_request(const uint8_t *buf, size_t len, fs_wire_secagg_request *out,
                                        char *why, size_t whylen);
fs_status fs_wire_decode_secagg_reply(const uint8_t *buf, size_t len, fs_wire_secagg_reply *out,
                                      char *why, size_t whylen);

/* FS_OK when every little-endian fp32 in data[0..len) is finite; FS_ERR_NUMERIC
 * at the first NaN or ±Inf (its index in *bad_index when not NULL);
 * FS_ERR_ARG when len is not a multiple of 4. Branch-free inner loop
 * (vectorised by the compiler). */
fs_status fs_wire_check_finite(const uint8_t *data, size_t len, size_t *bad_index);

/* CRC-32 (zlib's polynomial) continued from crc (start with 0) over raw bytes,
 * or over the little-endian bytes of n floats — so a sender's
 * fs_wire_crc32_f32(0, w, n) equals the receiver's fs_wire_crc32_bytes over
 * all chunks in order. */
uint32_t fs_wire_crc32_bytes(uint32_t crc, const uint8_t *data, size_t len);
uint32_t fs_wire_crc32_f32(uint32_t crc, const float *v, size_t n);

/* Copies len bytes of little-endian fp32 (len a multiple of 4) into dst. */
void fs_wire_copy_f32(float *dst, const uint8_t *src, size_t len);

/* The gRPC status a server answers for a decode failure: FS_ERR_MISMATCH ->
 * FS_RPC_FAILED_PRECONDITION, anything else -> FS_RPC_INVALID_ARGUMENT. */
fs_rpc_code fs_wire_rpc_code(fs_status s);

const char *fs_task_action_str(fs_task_action a);

#endif
