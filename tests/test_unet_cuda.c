/*
 * tests/test_unet_cuda.c — the whole U-Net on the CUDA backend against the CPU
 * reference: same parameters, same batch → the same loss and gradients
 * (within the GEMM tolerance: the GPU sums in another order), and six training
 * steps — the CUDA side captured in a CUDA graph after its first step and
 * replayed — give the same parameters. Also checks that a replayed graph
 * really trains (the loss falls) and that a batch of another size re-captures.
 * Exits 77 (SKIP) without CUDA or without a device.
 */
#include "check.h"
#include "kernels/backend.h"
#include "node/unet.h"
#include "common/rng.h"

#include <stdlib.h>
#include <string.h>

/* Relative L2 distance of two vectors. */
static double rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

int main(void)
{
    const fs_backend *gpu = fs_backend_cuda(), *cpu = fs_backend_cpu();
    if (!gpu || !fs_backend_cuda_available()) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return 77;
    }
    unsetenv("FS_CUDA_TF32"); /* exact fp32 GEMMs for the comparison */
    const int base = 8, depth = 4, size = 64, batch = 4;
    void *cctx = NULL, *gctx = NULL;
    fs_unet *mc = NULL, *mg = NULL;
    CHECK(cpu->ctx_init(&cctx, 0) == FS_OK && gpu->ctx_init(&gctx, 0) == FS_OK, "contexts");
    CHECK(fs_unet_create(&mc, cpu, cctx, base, depth, size, batch, 11) == FS_OK, "cpu model");
    CHECK(fs_unet_create(&mg, gpu, gctx, base, depth, size, batch, 11) == FS_OK, "cuda model");
    if (!mc || !mg) return check_result();
    size_t P = fs_unet_nparams(mc), px = (size_t)batch * size * size;
    float *pc = malloc(P * 4), *pg = malloc(P * 4), *gc = malloc(P * 4), *gg = malloc(P * 4);
    float *x = malloc(px * 4 * sizeof(float));
    uint8_t *y = malloc(px);
    fs_rng r;
    fs_rng_seed(&r, 5, 0);
    for (size_t i = 0; i < px * 4; i++) x[i] = (float)fs_rng_normal(&r);
    /* labels: blobs, so every class and the Dice terms are exercised */
    for (int n = 0; n < batch; n++)
        for (int i = 0; i < size; i++)
            for (int j = 0; j < size; j++) {
                int d2 = (i - 20 - 5 * n) * (i - 20 - 5 * n) + (j - 30) * (j - 30);
                y[((size_t)n * size + i) * size + j] = d2 < 30 ? 3 : d2 < 80 ? 1 : d2 < 200 ? 2 : 0;
            }
    fs_unet_get_params(mc, pc);
    fs_unet_set_params(mg, pc); /* identical start */

    float lc = 0, lg = 0;
    CHECK(fs_unet_forward_backward(mc, x, y, batch, &lc) == FS_OK, "cpu fwd/bwd");
    CHECK(fs_unet_forward_backward(mg, x, y, batch, &lg) == FS_OK, "cuda fwd/bwd");
    fs_unet_get_grads(mc, gc);
    fs_unet_get_grads(mg, gg);
    double rg = rel_l2(gg, gc, P);
    fprintf(stderr, "loss cpu %.7f cuda %.7f; gradient relative L2 %.3g\n", lc, lg, rg);
    CHECK(fabsf(lc - lg) <= 1e-4f * fabsf(lc), "loss differs: cpu %.7f cuda %.7f", lc, lg);
    CHECK(rg <= 1e-3, "gradients differ: relative L2 %.3g", rg);

    /* six Adam steps: CUDA runs step 1 eagerly, captures step 2, replays 3..6 */
    fs_adam_hp hp = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f};
    float first = 0, last = 0;
    for (int s = 0; s < 6; s++) {
        CHECK(fs_unet_train_step(mc, x, y, batch, hp, &lc) == FS_OK, "cpu step %d", s);
        CHECK(fs_unet_train_step(mg, x, y, batch, hp, &lg) == FS_OK, "cuda step %d", s);
        CHECK(fabsf(lc - lg) <= 2e-3f * fabsf(lc), "step %d loss cpu %.6f cuda %.6f", s, lc, lg);
        if (s == 0) first = lg;
        last = lg;
    }
    fs_unet_get_params(mc, pc);
    fs_unet_get_params(mg, pg);
    double rp = rel_l2(pg, pc, P);
    fprintf(stderr, "after 6 steps: loss %.5f -> %.5f on cuda; parameter relative L2 %.3g\n", first, last, rp);
    CHECK(last < first, "the captured step did not train (loss %.5f -> %.5f)", first, last);
    CHECK(rp <= 1e-4, "parameters differ after 6 steps: relative L2 %.3g", rp);

    /* a smaller batch: the graph is re-captured for the new shape */
    CHECK(fs_unet_train_step(mc, x, y, batch - 1, hp, &lc) == FS_OK, "cpu short batch");
    CHECK(fs_unet_train_step(mg, x, y, batch - 1, hp, &lg) == FS_OK, "cuda short batch");
    CHECK(fabsf(lc - lg) <= 2e-3f * fabsf(lc), "short batch loss cpu %.6f cuda %.6f", lc, lg);

    free(pc); free(pg); free(gc); free(gg); free(x); free(y);
    fs_unet_free(mc);
    fs_unet_free(mg);
    cpu->ctx_free(cctx);
    gpu->ctx_free(gctx);
    return check_result();
}
