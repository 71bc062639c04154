/*
 * tests/test_server_opt.c — the server optimisers of aggregator/server_opt.c
 * against steps computed by hand from Reddi et al. (ICLR 2021) Algorithm 2
 * (the arithmetic is written next to each check; the inputs are chosen so
 * that every intermediate value is exact in binary), chunk invariance, the
 * range checks, and the state file: round trip, and refusal of a corrupted,
 * truncated, foreign-round or foreign-kind file.
 */
#include "check.h"
#include "aggregator/server_opt.h"
#include "common/rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Equal within float rounding of the hyper-parameters (0.9f is not 0.9). */
static int near(float got, float want) { return fabsf(got - want) <= 1e-6f * fmaxf(1.0f, fabsf(want)); }

static fs_server_opt_hp hp_of(fs_server_opt_kind k, float lr, float mom, float b1, float b2, float tau)
{
    fs_server_opt_hp h = {k, lr, mom, b1, b2, tau};
    return h;
}

static void hand_steps(void)
{
    float x, d, m, v;
    /* FedAvg, η = 0.5: x = 1 + 0.5·0.5 = 1.25 */
    fs_server_opt_hp h = hp_of(FS_SOPT_FEDAVG, 0.5f, 0, 0, 0, 1);
    x = 1; d = 0.5f;
    CHECK(fs_server_opt_step(&h, 1, &x, &d, NULL, NULL) == FS_OK && x == 1.25f, "fedavg: x = %g", x);

    /* FedAvgM, η = 1, β = 0.5: Δ=1 → m = 1, x = 1; Δ=1 → m = 0.5·1 + 1 = 1.5, x = 2.5 */
    h = hp_of(FS_SOPT_FEDAVGM, 1, 0.5f, 0.9f, 0.99f, 1);
    x = 0; m = 0; d = 1;
    CHECK(fs_server_opt_step(&h, 1, &x, &d, &m, NULL) == FS_OK && m == 1 && x == 1, "fedavgm 1: %g %g", m, x);
    CHECK(fs_server_opt_step(&h, 1, &x, &d, &m, NULL) == FS_OK && m == 1.5f && x == 2.5f,
          "fedavgm 2: m %g x %g", m, x);

    /* FedAdagrad, η = 0.3, β1 = 0.9, τ = 1 (v0 = τ² = 1), Δ = 0.75:
     * m = 0.1·0.75 = 0.075; v = 1 + 0.5625 = 1.5625, √v = 1.25;
     * x = 2 + 0.3·0.075/(1.25 + 1) = 2 + 0.01 = 2.01 */
    h = hp_of(FS_SOPT_FEDADAGRAD, 0.3f, 0, 0.9f, 0.99f, 1);
    x = 2; d = 0.75f;
    fs_server_opt_init_state(&h, 1, &m, &v);
    CHECK(m == 0 && v == 1, "adagrad init: m %g v %g", m, v);
    CHECK(fs_server_opt_step(&h, 1, &x, &d, &m, &v) == FS_OK, "adagrad step");
    CHECK(v == 1.5625f, "adagrad v = %g", v);
    CHECK(near(m, 0.075f), "adagrad m = %g", m);
    CHECK(near(x, 2.01f), "adagrad x = %.9g", x);

    /* FedAdam, η = 1, β1 = 0.9, β2 = 0.5, τ = 1 (v0 = 1):
     * Δ = 1:  m = 0.1, v = 0.5·1 + 0.5·1 = 1, x = 1 + 0.1/(1 + 1) = 1.05
     * Δ = −1: m = 0.09 − 0.1 = −0.01, v = 1, x = 1.05 − 0.01/2 = 1.045 */
    h = hp_of(FS_SOPT_FEDADAM, 1, 0, 0.9f, 0.5f, 1);
    x = 1; d = 1;
    fs_server_opt_init_state(&h, 1, &m, &v);
    CHECK(fs_server_opt_step(&h, 1, &x, &d, &m, &v) == FS_OK, "adam step 1");
    CHECK(near(m, 0.1f) && v == 1 && near(x, 1.05f), "adam 1: m %g v %g x %.9g", m, v, x);
    d = -1;
    CHECK(fs_server_opt_step(&h, 1, &x, &d, &m, &v) == FS_OK, "adam step 2");
    CHECK(near(m, -0.01f) && v == 1 && near(x, 1.045f), "adam 2: m %g v %g x %.9g", m, v, x);

    /* FedYogi, η = 0.3, β1 = 0.9, β2 = 0.25, τ = 1 (v0 = 1):
     * Δ = 2: v − Δ² = −3 < 0 → v = 1 + 0.75·4 = 4, √v = 2; m = 0.2;
     *        x = 0 + 0.3·0.2/(2 + 1) = 0.02
     * Δ = 0.5 from v = 1: v − Δ² = 0.75 > 0 → v = 1 − 0.75·0.25 = 0.8125
     *        (Adam would give 0.25·1 + 0.75·0.25 = 0.4375: Yogi shrinks v slowly) */
    h = hp_of(FS_SOPT_FEDYOGI, 0.3f, 0, 0.9f, 0.25f, 1);
    x = 0; d = 2;
    fs_server_opt_init_state(&h, 1, &m, &v);
    CHECK(fs_server_opt_step(&h, 1, &x, &d, &m, &v) == FS_OK, "yogi step");
    CHECK(v == 4 && near(m, 0.2f) && near(x, 0.02f), "yogi: m %g v %g x %.9g", m, v, x);
    x = 0; d = 0.5f; m = 0; v = 1;
    CHECK(fs_server_opt_step(&h, 1, &x, &d, &m, &v) == FS_OK && v == 0.8125f, "yogi shrink: v = %g", v);
    h.kind = FS_SOPT_FEDADAM;
    x = 0; m = 0; v = 1;
    CHECK(fs_server_opt_step(&h, 1, &x, &d, &m, &v) == FS_OK && v == 0.4375f, "adam shrink: v = %g", v);
}

/* The step on a whole vector equals the step chunk by chunk, bit for bit. */
static void chunk_invariance(void)
{
    enum { N = 1000 };
    static float x1[N], x2[N], d[N], m1[N], m2[N], v1[N], v2[N];
    fs_rng r;
    fs_rng_seed(&r, 7, 0);
    for (int k = FS_SOPT_FEDAVG; k < FS_SOPT_COUNT; k++) {
        fs_server_opt_hp h = fs_server_opt_defaults((fs_server_opt_kind)k);
        CHECK(fs_server_opt_check(&h) == FS_OK, "defaults of %s", fs_server_opt_name(h.kind));
        fs_server_opt_init_state(&h, N, m1, v1);
        fs_server_opt_init_state(&h, N, m2, v2);
        for (int i = 0; i < N; i++) x1[i] = x2[i] = (float)fs_rng_normal(&r);
        for (int round = 0; round < 3; round++) {
            for (int i = 0; i < N; i++) d[i] = 0.01f * (float)fs_rng_normal(&r);
            CHECK(fs_server_opt_step(&h, N, x1, d, m1, v1) == FS_OK, "whole");
            for (size_t off = 0; off < N; off += 97) {
                size_t len = N - off < 97 ? N - off : 97;
                CHECK(fs_server_opt_step(&h, len, x2 + off, d + off, m2 + off, v2 + off) == FS_OK, "chunk");
            }
        }
        CHECK(!memcmp(x1, x2, sizeof x1), "%s: chunked result differs", fs_server_opt_name(h.kind));
        if (fs_server_opt_has_m(h.kind)) CHECK(!memcmp(m1, m2, sizeof m1), "m differs");
        if (fs_server_opt_has_v(h.kind)) CHECK(!memcmp(v1, v2, sizeof v1), "v differs");
    }
    fs_server_opt_kind k;
    CHECK(fs_server_opt_parse("fedyogi", &k) == FS_OK && k == FS_SOPT_FEDYOGI, "parse");
    CHECK(fs_server_opt_parse("fedsgd", &k) == FS_ERR_ARG, "unknown name accepted");
    fs_server_opt_hp bad = fs_server_opt_defaults(FS_SOPT_FEDADAM);
    bad.beta2 = 1.0f;
    CHECK(fs_server_opt_check(&bad) == FS_ERR_ARG, "beta2 = 1 accepted");
    bad = fs_server_opt_defaults(FS_SOPT_FEDADAM);
    bad.tau = 0;
    CHECK(fs_server_opt_check(&bad) == FS_ERR_ARG, "tau = 0 accepted");
    float x = 1, d1 = 1;
    fs_server_opt_hp h = fs_server_opt_defaults(FS_SOPT_FEDADAM);
    CHECK(fs_server_opt_step(&h, 1, &x, &d1, NULL, NULL) == FS_ERR_ARG, "adam without state accepted");
    h = fs_server_opt_defaults(FS_SOPT_FEDAVG);
    d1 = 3e38f; x = 3e38f;
    CHECK(fs_server_opt_step(&h, 1, &x, &d1, NULL, NULL) == FS_ERR_NUMERIC && x == 3e38f, "overflow accepted");
}

static void state_file(void)
{
    enum { N = 300 };
    static float m[N], v[N], c[N], m2[N], v2[N], c2[N];
    for (int i = 0; i < N; i++) { m[i] = (float)i; v[i] = 0.5f * (float)i; c[i] = -(float)i; }
    const char *path = "server_opt_test.state";
    fs_sopt_vec w[3] = {{FS_SOPT_TAG_M, m}, {FS_SOPT_TAG_V, v}, {FS_SOPT_TAG_C, c}};
    CHECK(fs_server_state_write(path, FS_SOPT_FEDADAM, 4, N, w, 3) == FS_OK, "write");
    fs_sopt_vec r[3] = {{FS_SOPT_TAG_C, c2}, {FS_SOPT_TAG_M, m2}, {FS_SOPT_TAG_V, v2}};
    CHECK(fs_server_state_read(path, FS_SOPT_FEDADAM, 4, N, r, 3) == FS_OK, "read");
    CHECK(!memcmp(m, m2, sizeof m) && !memcmp(v, v2, sizeof v) && !memcmp(c, c2, sizeof c), "round trip");
    CHECK(fs_server_state_read(path, FS_SOPT_FEDADAM, 5, N, r, 3) == FS_ERR_MISMATCH, "wrong round accepted");
    CHECK(fs_server_state_read(path, FS_SOPT_FEDYOGI, 4, N, r, 3) == FS_ERR_MISMATCH, "wrong kind accepted");
    CHECK(fs_server_state_read(path, FS_SOPT_FEDADAM, 4, N + 1, r, 3) == FS_ERR_MISMATCH, "wrong n accepted");
    CHECK(fs_server_state_read("no_such.state", FS_SOPT_FEDADAM, 4, N, r, 3) == FS_ERR_NOT_FOUND, "missing");
    /* flip one bit in the middle */
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL, "reopen");
    if (f) {
        fseek(f, 500, SEEK_SET);
        int ch = fgetc(f);
        fseek(f, 500, SEEK_SET);
        fputc(ch ^ 4, f);
        fclose(f);
    }
    CHECK(fs_server_state_read(path, FS_SOPT_FEDADAM, 4, N, r, 3) == FS_ERR_CHECKSUM, "bit flip accepted");
    CHECK(fs_server_state_write(path, FS_SOPT_FEDADAM, 4, N, w, 3) == FS_OK, "rewrite");
    CHECK(truncate(path, 1000) == 0, "truncate");
    CHECK(fs_server_state_read(path, FS_SOPT_FEDADAM, 4, N, r, 3) == FS_ERR_FORMAT, "truncated accepted");
    unlink(path);
}

int main(void)
{
    hand_steps();
    chunk_invariance();
    state_file();
    return check_result();
}
