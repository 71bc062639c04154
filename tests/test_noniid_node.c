/*
 * tests/test_noniid_node.c — the site's half of the non-IID algorithms
 * (node/noniid.c, and the SCAFFOLD correction inside node/unet.c):
 *   fedbn     the mask of the tiny and small U-Nets covers exactly the
 *             instance-norm γ and β: 4 × (sum of the blocks' output channels)
 *             = 4 × 368 = 1472 (tiny: 8+16+32+64, 128, 64+32+16+8) and 2944
 *             (small), and on a freshly initialised model the masked values
 *             are exactly PyTorch's γ = 1 / β = 0 (half each); restore/keep/
 *             zero touch only masked entries
 *   scaffold  option II's update on values computed by hand; bad K / lr and
 *             non-finite results refused
 *   corr      one training step with the correction equals the same step
 *             without it minus lr·corr (two models, same data, CPU backend)
 */
#include "check.h"
#include "kernels/backend.h"
#include "node/noniid.h"
#include "node/unet.h"
#include "common/log.h"
#include "common/rng.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void test_fedbn(void)
{
    size_t P = 0;
    fs_unet_layout(8, 4, NULL, 0, &P);
    CHECK(P == 487388, "tiny has %zu parameters", P);
    uint8_t *mask = malloc(P);
    CHECK(fs_fedbn_mask(8, 4, mask, P) == 1472, "tiny: mask count");
    size_t k = 0;
    for (size_t i = 0; i < P; i++) k += mask[i];
    CHECK(k == 1472, "tiny: %zu masked", k);
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(fs_fedbn_mask(8, 4, mask, P + 1) == 0, "a wrong size accepted");
    fs_log_set_level(FS_LOG_WARN);
    size_t Ps = 0;
    fs_unet_layout(16, 4, NULL, 0, &Ps);
    uint8_t *ms = malloc(Ps);
    CHECK(fs_fedbn_mask(16, 4, ms, Ps) == 2944, "small: mask count");
    free(ms);

    /* a fresh model's masked values are γ = 1 and β = 0, nothing else */
    const fs_backend *be = fs_backend_cpu();
    void *ctx = NULL;
    fs_unet *m = NULL;
    CHECK(be->ctx_init(&ctx, 0) == FS_OK, "ctx");
    CHECK(fs_unet_create(&m, be, ctx, 8, 4, 64, 2, 5) == FS_OK, "create");
    float *w = malloc(P * sizeof *w), *local = malloc(P * sizeof *local), *d = malloc(P * sizeof *d);
    CHECK(fs_unet_get_params(m, w) == FS_OK, "get");
    size_t ones = 0, zeros = 0, other = 0, unmasked_unit = 0;
    for (size_t i = 0; i < P; i++) {
        if (mask[i]) { ones += w[i] == 1.0f; zeros += w[i] == 0.0f; other += w[i] != 1.0f && w[i] != 0.0f; }
        else unmasked_unit += w[i] == 1.0f;
    }
    CHECK(ones == 736 && zeros == 736 && other == 0, "masked values: %zu ones, %zu zeros, %zu other", ones,
          zeros, other);
    CHECK(unmasked_unit == 0, "%zu unmasked parameters equal 1 (a norm tensor missed?)", unmasked_unit);
    fs_unet_free(m);
    be->ctx_free(ctx);

    for (size_t i = 0; i < P; i++) { w[i] = (float)i; local[i] = -1.0f; d[i] = 2.0f; }
    fs_fedbn_keep(mask, w, local, P);
    fs_fedbn_zero(mask, d, P);
    size_t bad = 0;
    for (size_t i = 0; i < P; i++)
        bad += mask[i] ? (local[i] != (float)i || d[i] != 0) : (local[i] != -1.0f || d[i] != 2.0f);
    CHECK(bad == 0, "keep/zero touched %zu wrong entries", bad);
    for (size_t i = 0; i < P; i++) w[i] = 7.0f;
    fs_fedbn_restore(mask, local, w, P);
    bad = 0;
    for (size_t i = 0; i < P; i++) bad += mask[i] ? w[i] != (float)i : w[i] != 7.0f;
    CHECK(bad == 0, "restore touched %zu wrong entries", bad);
    free(w);
    free(local);
    free(d);
    free(mask);
}

static void test_scaffold_update(void)
{
    /* c = [1, −2], c_i = [0.5, 0], delta = y − x = [−0.2, 0.4], K = 4, η = 0.1:
     * Kη = 0.4; Δc_i = −c − delta/(Kη) = [−1 + 0.5, 2 − 1] = [−0.5, 1];
     * c_i⁺ = [0, 1]; correction c − c_i = [0.5, −2] */
    float c[2] = {1, -2}, ci[2] = {0.5f, 0}, delta[2] = {-0.2f, 0.4f}, dci[2], corr[2];
    fs_scaffold_correction(c, ci, corr, 2);
    CHECK(corr[0] == 0.5f && corr[1] == -2.0f, "correction %g %g", corr[0], corr[1]);
    CHECK(fs_scaffold_update(ci, c, delta, 4, 0.1f, dci, 2) == FS_OK, "update");
    CHECK(fabsf(dci[0] + 0.5f) < 1e-6f && fabsf(dci[1] - 1.0f) < 1e-6f, "dci %g %g", dci[0], dci[1]);
    CHECK(fabsf(ci[0]) < 1e-6f && fabsf(ci[1] - 1.0f) < 1e-6f, "ci %g %g", ci[0], ci[1]);
    CHECK(fs_scaffold_update(ci, c, delta, 0, 0.1f, dci, 2) == FS_ERR_ARG, "K = 0 accepted");
    CHECK(fs_scaffold_update(ci, c, delta, 4, 0.0f, dci, 2) == FS_ERR_ARG, "lr = 0 accepted");
    float big[2] = {3e38f, 0}, ci2[2] = {0, 0};
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(fs_scaffold_update(ci2, c, big, 1, 1e-3f, dci, 2) == FS_ERR_NUMERIC && ci2[0] == 0,
          "overflow accepted or c_i changed");
    fs_log_set_level(FS_LOG_WARN);
}

/* One step with the correction = the same step without it, then −lr·corr. */
static void test_correction_step(void)
{
    const fs_backend *be = fs_backend_cpu();
    void *ctx = NULL;
    fs_unet *a = NULL, *b = NULL;
    CHECK(be->ctx_init(&ctx, 0) == FS_OK, "ctx");
    CHECK(fs_unet_create(&a, be, ctx, 8, 4, 64, 2, 9) == FS_OK && fs_unet_create(&b, be, ctx, 8, 4, 64, 2, 9) == FS_OK,
          "create");
    size_t P = fs_unet_nparams(a);
    enum { N = 2, S = 64 };
    float *x = malloc((size_t)N * 4 * S * S * sizeof *x);
    uint8_t *y = malloc((size_t)N * S * S);
    fs_rng r;
    fs_rng_seed(&r, 3, 0);
    for (size_t i = 0; i < (size_t)N * 4 * S * S; i++) x[i] = (float)fs_rng_normal(&r);
    for (size_t i = 0; i < (size_t)N * S * S; i++) y[i] = (uint8_t)fs_rng_below(&r, 4);
    float *corr = malloc(P * sizeof *corr), *wa = malloc(P * sizeof *wa), *wb = malloc(P * sizeof *wb);
    for (size_t i = 0; i < P; i++) corr[i] = (float)fs_rng_normal(&r);
    fs_adam_hp hp = {1e-3f, 0.9f, 0.999f, 1e-8f, 0};
    float la, lb;
    CHECK(fs_unet_set_correction(a, corr) == FS_OK, "set correction");
    CHECK(fs_unet_train_step(a, x, y, N, hp, &la) == FS_OK, "step a");
    CHECK(fs_unet_train_step(b, x, y, N, hp, &lb) == FS_OK, "step b");
    CHECK(la == lb, "losses differ: %g %g", la, lb);
    fs_unet_get_params(a, wa);
    fs_unet_get_params(b, wb);
    size_t bad = 0, moved = 0;
    for (size_t i = 0; i < P; i++) {
        float want = wb[i] + (-hp.lr) * corr[i];
        bad += fabsf(wa[i] - want) > 1e-7f + 1e-6f * fabsf(want);
        moved += wa[i] != wb[i];
    }
    CHECK(bad == 0, "%zu parameters differ from the uncorrected step − lr·corr", bad);
    CHECK(moved > P / 2, "the correction moved only %zu parameters", moved);
    /* turned off: the next steps agree again */
    CHECK(fs_unet_set_correction(a, NULL) == FS_OK, "off");
    fs_unet_set_params(a, wb);
    CHECK(fs_unet_train_step(a, x, y, N, hp, &la) == FS_OK && fs_unet_train_step(b, x, y, N, hp, &lb) == FS_OK,
          "steps 2");
    fs_unet_get_params(a, wa);
    fs_unet_get_params(b, wb);
    CHECK(!memcmp(wa, wb, P * sizeof *wa), "the correction is still applied after turning it off");
    free(x); free(y); free(corr); free(wa); free(wb);
    fs_unet_free(a);
    fs_unet_free(b);
    be->ctx_free(ctx);
}

int main(void)
{
    fs_log_set_level(FS_LOG_WARN);
    test_fedbn();
    test_scaffold_update();
    test_correction_step();
    return check_result();
}
