/*
 * tests/fuzz/fuzz_secagg.c — libFuzzer target for the secure-aggregation
 * message decoders (common/secagg_msg.h). The first input byte picks the
 * message type (modulo 6: ADVERTISE, KEYS, SHARES, RELAY, UNMASK_REQ,
 * UNMASK_RSP); the rest is decoded as that message of round 7 with 5 sites
 * (the round of the saved corpus, written by test_secagg with
 * FS_SECAGG_CORPUS=DIR).
 *
 * Properties checked (abort() on violation, so the fuzzer reports a crash):
 *   - decode never crashes or reads outside its input (ASan, UBSan);
 *   - a refusal is FS_ERR_FORMAT or FS_ERR_MISMATCH and comes with a reason;
 *   - the format has one encoding per message: whatever is accepted
 *     re-encodes to exactly the input bytes (nothing ignored, nothing
 *     trailing);
 *   - an accepted ADVERTISE is taken by a fresh server from its sender, and
 *     an accepted RELAY is refused or taken by a site without crashing.
 * Replayed over tests/fuzz/corpus/secagg/ by ctest (fuzz_replay_secagg).
 */
#include "common/secagg.h"
#include "common/secagg_msg.h"
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_secagg: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static union {
        fs_secagg_msg_advertise a; fs_secagg_msg_keys k; fs_secagg_msg_shares s;
        fs_secagg_msg_relay r; fs_secagg_msg_unmask_req q; fs_secagg_msg_unmask_rsp p;
    } m;
    const uint64_t round = 7;
    const uint32_t n = 5;
    int type = data[0] % 6 + 1;
    const uint8_t *b = data + 1;
    size_t len = size - 1;
    char why[256];
    why[0] = '\0';
    uint8_t *enc = NULL;
    size_t elen = 0;
    fs_status st, est = FS_OK;
    fs_log_set_level(FS_LOG_QUIET);
    switch (type) {
    case 1:
        st = fs_secagg_dec_advertise(b, len, round, n, &m.a, why, sizeof why);
        if (st == FS_OK) est = fs_secagg_enc_advertise(round, n, &m.a, &enc, &elen);
        break;
    case 2:
        st = fs_secagg_dec_keys(b, len, round, n, &m.k, why, sizeof why);
        if (st == FS_OK) est = fs_secagg_enc_keys(round, n, &m.k, &enc, &elen);
        break;
    case 3:
        st = fs_secagg_dec_shares(b, len, round, n, &m.s, why, sizeof why);
        if (st == FS_OK) est = fs_secagg_enc_shares(round, n, &m.s, &enc, &elen);
        break;
    case 4:
        st = fs_secagg_dec_relay(b, len, round, n, &m.r, why, sizeof why);
        if (st == FS_OK) est = fs_secagg_enc_relay(round, n, &m.r, &enc, &elen);
        break;
    case 5:
        st = fs_secagg_dec_unmask_req(b, len, round, n, &m.q, why, sizeof why);
        if (st == FS_OK) est = fs_secagg_enc_unmask_req(round, n, &m.q, &enc, &elen);
        break;
    default:
        st = fs_secagg_dec_unmask_rsp(b, len, round, n, &m.p, why, sizeof why);
        if (st == FS_OK) est = fs_secagg_enc_unmask_rsp(round, n, &m.p, &enc, &elen);
        break;
    }
    if (st != FS_OK) {
        if (!why[0]) fail("refused without a reason");
        if (st != FS_ERR_FORMAT && st != FS_ERR_MISMATCH) fail("unexpected status");
        return 0;
    }
    if (est != FS_OK) fail("re-encode failed");
    if (elen != len || memcmp(enc, b, len) != 0) fail("accepted bytes do not re-encode to themselves");
    free(enc);

    fs_secagg_params p;
    memset(&p, 0, sizeof p);
    p.round = round;
    p.n_sites = n;
    p.threshold = 3;
    p.neighbours = n - 1;
    p.n_words = 16;
    if (type == 1) {
        fs_secagg_server *srv;
        if (fs_secagg_server_new(&p, &srv) != FS_OK) fail("server_new");
        if (fs_secagg_server_recv_advertise(srv, m.a.from, b, len) != FS_OK) fail("server refused a valid ADVERTISE");
        fs_secagg_server_free(srv);
    } else if (type == 4) {
        /* a site that never got keys refuses a relay (out of order) */
        fs_secagg_site *s;
        if (fs_secagg_site_new(&p, m.r.to, &s) != FS_OK) fail("site_new");
        if (fs_secagg_site_recv_shares(s, b, len) == FS_OK) fail("site took a relay before sharing keys");
        fs_secagg_site_free(s);
    }
    return 0;
}
