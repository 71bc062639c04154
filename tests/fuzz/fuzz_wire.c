/*
 * tests/fuzz/fuzz_wire.c — libFuzzer target for the federation message
 * decoders (common/wire.h). The first input byte picks the message (modulo
 * 10: JoinRequest, JoinReply, TaskRequest, Task, ModelRequest, ModelChunk,
 * UpdateChunk, UpdateAck, SecAggRequest, SecAggReply); the rest is decoded
 * as that message.
 *
 * Properties checked (abort() on violation, so the fuzzer reports a crash):
 *   - decode never crashes, leaks or reads outside its input (ASan, UBSan);
 *   - a refusal always comes with a reason;
 *   - an accepted chunk's payload lies inside the input and passes its own
 *     checks (multiple of 4, within num_params), and the float helpers run on it;
 *   - an accepted message re-encodes to exactly the bytes protobuf-c produces
 *     when it unpacks the same input and packs it again (unknown fields
 *     dropped) — the strict reader reads every message it accepts the way
 *     protobuf-c does.
 * Replayed over tests/fuzz/corpus/wire/ by ctest (fuzz_replay_wire).
 */
#include "common/wire.h"
#include "proto/fedseg.pb-c.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const ProtobufCMessageDescriptor *const DESC[10] = {
    &fedseg__v1__join_request__descriptor, &fedseg__v1__join_reply__descriptor,
    &fedseg__v1__task_request__descriptor, &fedseg__v1__task__descriptor,
    &fedseg__v1__model_request__descriptor, &fedseg__v1__model_chunk__descriptor,
    &fedseg__v1__update_chunk__descriptor, &fedseg__v1__update_ack__descriptor,
    &fedseg__v1__sec_agg_request__descriptor, &fedseg__v1__sec_agg_reply__descriptor,
};

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_wire: %s\n", what);
    abort();
}

/* Checks that protobuf-c reads b[0..n) as the message that our decoder's
 * result re-encodes to (mine[0..mlen)). */
static void same_as_protobuf_c(int k, const uint8_t *b, size_t n, const uint8_t *mine, size_t mlen)
{
    ProtobufCMessage *pm = protobuf_c_message_unpack(DESC[k], NULL, n, b);
    if (!pm) fail("accepted by fs_wire, refused by protobuf-c");
    ProtobufCMessage *sub = NULL;
    if (k == 6) sub = (ProtobufCMessage *)((Fedseg__V1__UpdateChunk *)pm)->header;
    unsigned keep = pm->n_unknown_fields, keep_sub = sub ? sub->n_unknown_fields : 0;
    pm->n_unknown_fields = 0;
    if (sub) sub->n_unknown_fields = 0;
    size_t plen = protobuf_c_message_get_packed_size(pm);
    uint8_t *p = malloc(plen ? plen : 1);
    if (!p) fail("out of memory");
    protobuf_c_message_pack(pm, p);
    if (plen != mlen || (plen && memcmp(p, mine, plen) != 0)) fail("fs_wire and protobuf-c read the message differently");
    free(p);
    pm->n_unknown_fields = keep;
    if (sub) sub->n_unknown_fields = keep_sub;
    protobuf_c_message_free_unpacked(pm, NULL);
}

/* Exercises an accepted chunk payload that must lie inside b[0..n). */
static void touch_payload(const uint8_t *d, size_t len, const uint8_t *b, size_t n)
{
    if (!len) return;
    if (d < b || d + len > b + n || len % 4) fail("payload outside the input or not whole floats");
    size_t bad;
    volatile uint32_t crc = fs_wire_crc32_bytes(0, d, len);
    volatile int fin = fs_wire_check_finite(d, len, &bad) == FS_OK;
    (void)crc;
    (void)fin;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int k = data[0] % 10;
    const uint8_t *b = data + 1;
    size_t n = size - 1;
    char why[256];
    why[0] = '\0';
    uint8_t *enc = NULL;
    size_t elen = 0;
    fs_status st, est = FS_OK;
/* Decodes as `type`; when accepted, re-encodes into enc. */
#define PLAIN(type, name) do { type m; st = fs_wire_decode_##name(b, n, &m, why, sizeof why); \
        if (st == FS_OK) est = fs_wire_encode_##name(&m, &enc, &elen); } while (0)
    switch (k) {
    case 0: PLAIN(fs_wire_join_request, join_request); break;
    case 1: PLAIN(fs_wire_join_reply, join_reply); break;
    case 2: PLAIN(fs_wire_task_request, task_request); break;
    case 3: PLAIN(fs_wire_task, task); break;
    case 4: PLAIN(fs_wire_model_request, model_request); break;
    case 5: {
        fs_wire_model_chunk m;
        st = fs_wire_decode_model_chunk(b, n, &m, why, sizeof why);
        if (st == FS_OK) {
            touch_payload(m.data, m.len, b, n);
            if (m.offset + m.len / 4 > m.num_params) fail("ModelChunk past num_params");
            est = fs_wire_encode_model_chunk(&m, &enc, &elen);
        }
        break;
    }
    case 6: {
        fs_wire_update_chunk m;
        st = fs_wire_decode_update_chunk(b, n, &m, why, sizeof why);
        if (st == FS_OK) {
            touch_payload(m.data, m.len, b, n);
            if (m.has_header && m.offset + m.len / 4 > m.header.num_params) fail("UpdateChunk past num_params");
            est = fs_wire_encode_update_chunk(&m, &enc, &elen);
        }
        break;
    }
    case 8: PLAIN(fs_wire_secagg_request, secagg_request); break;
    case 9: PLAIN(fs_wire_secagg_reply, secagg_reply); break;
    default: PLAIN(fs_wire_update_ack, update_ack); break;
    }
#undef PLAIN
    if (st != FS_OK) {
        if (!why[0]) fail("refused without a reason");
        if (st != FS_ERR_FORMAT && st != FS_ERR_MISMATCH) fail("unexpected status");
        return 0;
    }
    if (est != FS_OK) fail("re-encode failed");
    same_as_protobuf_c(k, b, n, enc, elen);
    free(enc);
    return 0;
}
