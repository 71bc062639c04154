/*
 * tests/fuzz/fuzz_he.c — libFuzzer target for the parsers of the encrypted
 * aggregation: common/he_wire.c objects (fs_he_read) and the messages of
 * common/he_proto.h as the server and the sites receive them.
 *
 * A small attempt is built once (round 7, attempt 1, 3 sites, threshold 2,
 * 10 values, CRS seed 0x42 × 32, the parameters of the saved corpus, written
 * by test_he_proto with FS_HE_CORPUS=DIR): servers in stages K, S, U and D
 * (T = {1, 2}), a site that has sent KEYS, site 3 waiting for its relays,
 * and sites 1 and 2 with their threshold keys. The first input byte picks
 * the target (modulo 13), the rest is fed to it:
 *    0..5  fs_he_read of object kind 1..6
 *    6     server K: KEYS from site 1       10  site (keyed): BCAST
 *    7     server S: SHARES from site 1     11  site 3: RELAY
 *    8     server U: CT object of site 1    12  site 2: REQ
 *    9     server D: PART from site 2
 * Properties (abort() on violation, so the fuzzer reports a crash):
 *   - nothing crashes or reads outside its input (ASan, UBSan);
 *   - a refusal is FS_ERR_FORMAT, FS_ERR_MISMATCH, FS_ERR_CHECKSUM or (a
 *     PART of an older generation) FS_ERR_ABANDONED, never another status;
 *   - a refused KEYS or SHARES leaves the server's counts as they were.
 * A target that takes its input changes state; that part of the attempt is
 * rebuilt before the next input, so every input meets the same state.
 * Replayed over tests/fuzz/corpus/he/ by ctest (fuzz_replay_he).
 */
#include "common/he_proto.h"
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_he: %s\n", what);
    abort();
}

static void need(fs_status st, const char *what)
{
    if (st != FS_OK) fail(what);
}

static fs_he_params P;
static struct {
    int built;
    uint8_t *keys[4];
    size_t klen[4];
    uint8_t *bcast;
    size_t blen;
    uint8_t *shares[4];
    size_t slen[4];
    fs_he_server *sk, *ss, *su, *sd;
    fs_he_site *keyed;
    fs_he_site *site[4];
} F;

static uint64_t polys[2 * FS_HE_POLY_WORDS];

static void params(void)
{
    memset(&P, 0, sizeof P);
    P.round = 7;
    P.attempt = 1;
    P.n_sites = 3;
    P.threshold = 2;
    P.n_values = 10;
    P.qz.clip = 1.0f;
    P.qz.frac_bits = 16;
    memset(P.crs_seed, 0x42, sizeof P.crs_seed);
}

/* A server in stage K (0), S (1) or U (2), fed the saved messages. */
static fs_he_server *server_at(int stage)
{
    fs_he_server *s;
    need(fs_he_server_new(&P, &s), "server_new");
    if (stage == 0) return s;
    for (uint32_t i = 1; i <= 3; i++) need(fs_he_server_recv_keys(s, i, F.keys[i], F.klen[i]), "keys");
    uint8_t *b;
    size_t bl;
    need(fs_he_server_close_keys(s, &b, &bl), "close_keys");
    if (!F.bcast) {
        F.bcast = b;
        F.blen = bl;
    } else {
        free(b);
    }
    if (stage == 1) return s;
    for (uint32_t i = 1; i <= 3; i++)
        need(fs_he_server_recv_shares(s, i, F.shares[i], F.slen[i]), "shares");
    need(fs_he_server_close_shares(s), "close_shares");
    return s;
}

static void fixture_free(void)
{
    for (int i = 0; i < 4; i++) {
        free(F.keys[i]);
        free(F.shares[i]);
        fs_he_site_free(F.site[i]);
    }
    free(F.bcast);
    fs_he_server_free(F.sk);
    fs_he_server_free(F.ss);
    fs_he_server_free(F.su);
    fs_he_server_free(F.sd);
    fs_he_site_free(F.keyed);
    memset(&F, 0, sizeof F);
}

static void fixture_build(void)
{
    fixture_free();
    params();
    for (uint32_t i = 1; i <= 3; i++) {
        need(fs_he_site_new(&P, i, &F.site[i]), "site_new");
        need(fs_he_site_keys(F.site[i], &F.keys[i], &F.klen[i]), "site_keys");
    }
    F.sk = server_at(0);
    F.ss = server_at(1); /* keeps its BCAST: every server of these keys sends the same */
    for (uint32_t i = 1; i <= 3; i++) {
        uint8_t **parts;
        size_t *lens, np;
        need(fs_he_site_shares(F.site[i], F.bcast, F.blen, &parts, &lens, &np), "site_shares");
        if (np != 1) fail("one SHARES part expected");
        F.shares[i] = parts[0];
        F.slen[i] = lens[0];
        parts[0] = NULL;
        fs_he_site_free_parts(parts, lens, np);
    }
    F.su = server_at(2);
    F.sd = server_at(2);
    for (uint32_t i = 1; i <= 2; i++) {
        uint8_t *m;
        size_t ml;
        uint32_t next;
        need(fs_he_server_relay(F.su, i, 1, &m, &ml), "relay");
        need(fs_he_site_recv_relay(F.site[i], m, ml, &next), "recv_relay");
        free(m);
        if (next || !fs_he_site_ready(F.site[i])) fail("site not ready");
        int64_t q[11] = { 1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 65536 };
        const size_t ob = fs_he_wire_bytes(FS_HE_OBJ_CT);
        uint8_t *obj = malloc(ob);
        if (!obj) fail("out of memory");
        need(fs_he_site_encrypt_ct(F.site[i], q, 11, 0, obj, ob), "encrypt");
        need(fs_he_server_ct(F.sd, i, obj, ob, 1), "ct");
        need(fs_he_server_ct_done(F.sd, i), "ct_done");
        free(obj);
    }
    need(fs_he_server_close_input(F.sd), "close_input");
    need(fs_he_site_new(&P, 1, &F.keyed), "site_new");
    uint8_t *m;
    size_t ml;
    need(fs_he_site_keys(F.keyed, &m, &ml), "keys");
    free(m);
    F.built = 1;
}

static int refusal(fs_status st)
{
    return st == FS_ERR_FORMAT || st == FS_ERR_MISMATCH || st == FS_ERR_CHECKSUM;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    fs_log_set_level(FS_LOG_QUIET);
    if (!F.built) fixture_build();
    const unsigned sel = data[0] % 13;
    /* A copy of exactly the input's length, so ASan sees any over-read. */
    const size_t len = size - 1;
    uint8_t *b = malloc(len ? len : 1);
    if (!b) return 0;
    memcpy(b, data + 1, len);
    fs_status st;
    int rebuild = 0;
    switch (sel) {
    case 0: case 1: case 2: case 3: case 4: case 5: {
        fs_he_hdr h;
        st = fs_he_read(b, len, (fs_he_obj_kind)(sel + 1), &h, polys);
        break;
    }
    case 6:
        st = fs_he_server_recv_keys(F.sk, 1, b, len);
        if (st == FS_OK) {
            fs_he_server_free(F.sk);
            F.sk = server_at(0);
        } else if (fs_he_server_count(F.sk, FS_HE_KEYED) != 0) {
            fail("a refused KEYS changed the server");
        }
        break;
    case 7:
        st = fs_he_server_recv_shares(F.ss, 1, b, len);
        if (st == FS_OK) {
            fs_he_server_free(F.ss);
            F.ss = server_at(1);
        } else if (fs_he_server_count(F.ss, FS_HE_SHARED) != 0) {
            fail("a refused SHARES changed the server");
        }
        break;
    case 8:
        st = fs_he_server_ct(F.su, 1, b, len, 0);
        fs_he_server_ct_reset(F.su, 1);
        if (fs_he_server_reason(F.su)[0]) fail("a verifying pass abandoned the attempt");
        break;
    case 9:
        st = fs_he_server_recv_partials(F.sd, 2, b, len);
        rebuild = st == FS_OK;
        break;
    case 10: {
        uint8_t **parts = NULL;
        size_t *lens = NULL, np = 0;
        st = fs_he_site_shares(F.keyed, b, len, &parts, &lens, &np);
        fs_he_site_free_parts(parts, lens, np);
        if (st == FS_OK) {
            fs_he_site_free(F.keyed);
            uint8_t *m;
            size_t ml;
            need(fs_he_site_new(&P, 1, &F.keyed), "site_new");
            need(fs_he_site_keys(F.keyed, &m, &ml), "keys");
            free(m);
        }
        break;
    }
    case 11: {
        uint32_t next;
        st = fs_he_site_recv_relay(F.site[3], b, len, &next);
        rebuild = st == FS_OK;
        break;
    }
    default: {
        uint8_t *out = NULL;
        size_t ol = 0;
        uint32_t g, next;
        st = fs_he_site_partials(F.site[2], b, len, &out, &ol, &g, &next);
        free(out);
        rebuild = st == FS_OK;
        break;
    }
    }
    free(b);
    if (st != FS_OK && !refusal(st) && !(sel == 9 && st == FS_ERR_ABANDONED)) {
        fprintf(stderr, "fuzz_he: target %u refused with %s\n", sel, fs_status_str(st));
        fail("unexpected status");
    }
    if (rebuild) fixture_build();
    return 0;
}
