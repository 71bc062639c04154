/*
 * tests/test_agg_fold.c — the backend table's FedAvg fold op and the
 * aggregator's round sum built on it (aggregator/round_sum.c,
 * aggregator/sum_device.h):
 *   - known answers: sum += w·chunk with a product that is not exact in fp32,
 *     where a fused multiply-add would give other bits — the op must round
 *     the product, then the sum;
 *   - the CPU backend's fold equals aggregator/fedavg.h's fold bit for bit,
 *     over several sites, uneven chunks and offsets;
 *   - the round sum (CPU) equals fedavg.h; refuses NaN / Inf, out-of-range
 *     chunks and bad weights without folding anything; apply gives
 *     model + sum / Σw; device selection answers a clear refusal for CUDA
 *     without a GPU and an unknown name;
 *   - with a GPU: the round sum on CUDA equals the CPU's bit for bit;
 *   - the masked sum of secure aggregation (added in chunks, unmasked with
 *     the backend's chacha_mask) equals a plain loop on the CPU, and the
 *     same on CUDA word for word when a GPU is present.
 */
#include "check.h"
#include "aggregator/fedavg.h"
#include "aggregator/round_sum.h"
#include "aggregator/sum_device.h"
#include "common/rng.h"
#include "kernels/backend.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { S = 3, N = 200003 };

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static size_t count_diff(const float *a, const float *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += bits(a[i]) != bits(b[i]);
    return d;
}

/* Known answers, including one where fma(w, c, s) ≠ s + round(w·c). */
static void known_answers(const fs_backend *cpu)
{
    float sum[3] = {1.0f, -2.0f, 0.0f};
    const float chunk[3] = {0.5f, 0.25f, 3.0f};
    CHECK(cpu->fold(NULL, 3, sum, chunk, 3.0f) == FS_OK, "fold");
    CHECK(sum[0] == 2.5f && sum[1] == -1.25f && sum[2] == 9.0f, "fold known answer: %g %g %g",
          sum[0], sum[1], sum[2]);
    /* w = c = 1 + 2^-12: w·c = 1 + 2^-11 + 2^-24 exactly, which rounds (tie
     * to even) to 1 + 2^-11; with s = -1 the rounded path gives 2^-11, a
     * fused one 2^-11 + 2^-24. */
    const float x = 1.0f + 0x1p-12f;
    float s1 = -1.0f;
    CHECK(cpu->fold(NULL, 1, &s1, &x, x) == FS_OK, "fold");
    CHECK(s1 == 0x1p-11f, "fold rounds the product before the add: got %a want %a (an FMA gives %a)",
          (double)s1, (double)0x1p-11f, (double)(0x1p-11f + 0x1p-24f));
    CHECK(cpu->fold(NULL, 0, NULL, NULL, 1.0f) == FS_OK, "fold of nothing");
    CHECK(cpu->fold(NULL, 1, NULL, chunk, 1.0f) == FS_ERR_ARG, "NULL sum refused");
}

/* The masked sum (round_sum.h) on the current device: three vectors added
 * in uneven chunks, then two masks removed; into out (n words). */
static void masked_round(const uint32_t *const *xs, size_t n, const fs_mask_key *keys, int k,
                         uint32_t *out, const char *dev)
{
    fs_masked_sum *m = NULL;
    CHECK(fs_masked_sum_new(n, &m) == FS_OK, "%s: masked sum", dev);
    if (!m) return;
    CHECK(fs_masked_sum_add(m, n - 3, xs[0], 4) == FS_ERR_ARG, "%s: out of range refused", dev);
    CHECK(fs_masked_sum_add(m, 0, xs[0], n) == FS_OK, "%s: zero", dev);
    CHECK(fs_masked_sum_zero(m) == FS_OK, "%s: zero", dev);
    const size_t chunk = 65536 + 5;
    for (int s = 0; s < 3; s++)
        for (size_t off = 0; off < n; off += chunk)
            CHECK(fs_masked_sum_add(m, off, xs[s] + off, n - off < chunk ? n - off : chunk) == FS_OK,
                  "%s: add", dev);
    CHECK(fs_masked_sum_unmask(m, keys, k) == FS_OK, "%s: unmask", dev);
    CHECK(fs_masked_sum_get(m, out) == FS_OK, "%s: get", dev);
    CHECK((fs_masked_sum_host(m) != NULL) == !strcmp(dev, "cpu"), "%s: host memory only on the CPU",
          dev);
    fs_masked_sum_free(m);
}

/* Masked sums: Σ x_s + M_a − M_b mod 2^32 against a plain loop with the
 * CPU backend's masks; with a GPU, the same on CUDA word for word. */
static void masked_sums(void)
{
    enum { MW = 200009 };
    static uint32_t x[3][MW], want[MW], got[MW], ma[MW], mb[MW];
    fs_rng r;
    fs_rng_seed(&r, 12, 0);
    for (int s = 0; s < 3; s++)
        for (size_t i = 0; i < MW; i++) x[s][i] = (uint32_t)(fs_rng_next(&r) >> 32);
    fs_mask_key keys[2];
    memset(keys, 0, sizeof keys);
    for (int j = 0; j < 2; j++) {
        for (int b = 0; b < 32; b++) keys[j].key[b] = (uint8_t)((uint32_t)(fs_rng_next(&r) >> 32) >> 9);
        keys[j].nonce[0] = (uint8_t)(j + 1);
        keys[j].sign = j ? -1 : 1;
    }
    memset(ma, 0, sizeof ma);
    memset(mb, 0, sizeof mb);
    const fs_backend *cpu = fs_backend_cpu();
    CHECK(cpu->chacha_mask(NULL, MW, ma, 0, &keys[0], 1) == FS_OK, "mask a");
    fs_mask_key kb = keys[1];
    kb.sign = 1;
    CHECK(cpu->chacha_mask(NULL, MW, mb, 0, &kb, 1) == FS_OK, "mask b");
    for (size_t i = 0; i < MW; i++) want[i] = x[0][i] + x[1][i] + x[2][i] + ma[i] - mb[i];
    const uint32_t *xs[3] = { x[0], x[1], x[2] };
    char why[256];
    CHECK(fs_sum_device_select("cpu", why, sizeof why) == FS_OK, "select cpu");
    masked_round(xs, MW, keys, 2, got, "cpu");
    CHECK(!memcmp(got, want, sizeof got), "masked sum on the CPU == Σx + Ma − Mb");
    if (fs_backend_cuda() && fs_backend_cuda_available()) {
        CHECK(fs_sum_device_select("cuda", why, sizeof why) == FS_OK, "select cuda: %s", why);
        memset(got, 0, sizeof got);
        masked_round(xs, MW, keys, 2, got, "cuda");
        CHECK(!memcmp(got, want, sizeof got), "masked sum on CUDA == the CPU's, word for word");
        printf("masked sum on cuda == cpu (%d words)\n", MW);
        CHECK(fs_sum_device_select("cpu", why, sizeof why) == FS_OK, "back to cpu");
    }
}

int main(void)
{
    const fs_backend *cpu = fs_backend_cpu();
    CHECK(cpu->fold != NULL, "the CPU backend has a fold op");
    if (!cpu->fold) return check_result();
    known_answers(cpu);

    static float up[S][N], ref[N], got[N], model[N], out[N], want[N];
    const double w[S] = {120, 7, 33};
    fs_rng r;
    fs_rng_seed(&r, 11, 0);
    for (int s = 0; s < S; s++)
        for (size_t i = 0; i < N; i++) up[s][i] = (float)(fs_rng_normal(&r) * 1e-2);
    for (size_t i = 0; i < N; i++) model[i] = (float)fs_rng_normal(&r);

    /* backend fold vs fedavg.h, uneven chunks, sites in order */
    fs_fedavg_acc a;
    fs_fedavg_init(&a, ref, N);
    memset(got, 0, sizeof got);
    const size_t chunk = 65536 + 37;
    for (int s = 0; s < S; s++)
        for (size_t off = 0; off < N; off += chunk) {
            size_t len = N - off < chunk ? N - off : chunk;
            CHECK(fs_fedavg_fold(&a, off, up[s] + off, len, w[s]) == FS_OK, "fedavg fold");
            CHECK(cpu->fold(NULL, len, got + off, up[s] + off, (float)w[s]) == FS_OK, "backend fold");
        }
    size_t d = count_diff(got, ref, N);
    CHECK(d == 0, "backend fold differs from fs_fedavg_fold in %zu of %d elements", d, N);
    printf("cpu backend fold == fedavg fold: %zu of %d elements differ\n", d, N);

    /* the round sum on the CPU */
    char why[256];
    CHECK(fs_sum_device_select("cpu", why, sizeof why) == FS_OK, "select cpu: %s", why);
    CHECK(fs_sum_device_select("gpu9", why, sizeof why) == FS_ERR_ARG && why[0],
          "an unknown device name is refused with a reason");
    if (!fs_backend_cuda() || !fs_backend_cuda_available()) {
        fs_status st = fs_sum_device_select("cuda", why, sizeof why);
        CHECK(st == FS_ERR_UNSUPPORTED && why[0], "cuda without a GPU: %s (%s)", fs_status_str(st), why);
        printf("select cuda without a GPU: %s\n", why);
    }
    CHECK(!strcmp(fs_sum_device_name(), "cpu"), "device is cpu");
    fs_round_sum rs;
    CHECK(fs_round_sum_init(&rs, N) == FS_OK, "init");
    CHECK(fs_sum_device_select("cpu", why, sizeof why) == FS_ERR_ARG,
          "the device cannot change while a sum exists");
    for (int s = 0; s < S; s++)
        for (size_t off = 0; off < N; off += chunk) {
            size_t len = N - off < chunk ? N - off : chunk;
            CHECK(fs_round_sum_fold(&rs, off, up[s] + off, len, w[s]) == FS_OK, "round fold");
        }
    d = count_diff(rs.sum, ref, N);
    CHECK(d == 0, "round sum differs from fedavg in %zu elements", d);
    /* refusals fold nothing */
    float bad[5] = {1, 2, NAN, 4, 5};
    CHECK(fs_round_sum_fold(&rs, 10, bad, 5, 1.0) == FS_ERR_NUMERIC, "NaN refused");
    bad[2] = INFINITY;
    CHECK(fs_round_sum_fold(&rs, 10, bad, 5, 1.0) == FS_ERR_NUMERIC, "Inf refused");
    bad[2] = 3;
    CHECK(fs_round_sum_fold(&rs, N - 2, bad, 5, 1.0) == FS_ERR_ARG, "out of range refused");
    CHECK(fs_round_sum_fold(&rs, 0, bad, 5, 0.0) == FS_ERR_ARG, "zero weight refused");
    CHECK(fs_round_sum_fold(&rs, 0, bad, 5, NAN) == FS_ERR_ARG, "NaN weight refused");
    d = count_diff(rs.sum, ref, N);
    CHECK(d == 0, "a refused fold changed %zu elements", d);
    double tw = 0;
    for (int s = 0; s < S; s++) {
        CHECK(fs_round_sum_add_weight(&rs, w[s]) == FS_OK, "weight");
        CHECK(fs_fedavg_add_weight(&a, w[s]) == FS_OK, "weight");
        tw += w[s];
    }
    CHECK(fs_round_sum_apply(&rs, model, out) == FS_OK, "apply");
    CHECK(fs_fedavg_finish(&a, want) == FS_OK, "finish");
    for (size_t i = 0; i < N; i++) want[i] = model[i] + want[i];
    d = count_diff(out, want, N);
    CHECK(d == 0, "apply differs from model + fedavg mean in %zu elements", d);
    /* and the mean itself against double arithmetic */
    double worst = 0;
    for (size_t i = 0; i < N; i++) {
        double m = 0;
        for (int s = 0; s < S; s++) m += w[s] * up[s][i];
        double e = fabs((double)out[i] - ((double)model[i] + m / tw));
        if (e > worst) worst = e;
    }
    CHECK(worst < 1e-5, "apply vs double FedAvg: worst error %g", worst);
    printf("round sum apply vs double FedAvg: worst |error| %.3g\n", worst);
    fs_round_sum_reset(&rs);
    size_t nz = 0;
    for (size_t i = 0; i < N; i++) nz += rs.sum[i] != 0.0f;
    CHECK(nz == 0 && rs.acc.weight == 0, "reset zeroes the sum and the weight");
    fs_round_sum_free(&rs);

    /* with a GPU: the same round on CUDA, bit for bit */
    if (fs_backend_cuda() && fs_backend_cuda_available()) {
        CHECK(fs_sum_device_select("cuda", why, sizeof why) == FS_OK, "select cuda: %s", why);
        fs_round_sum gs;
        CHECK(fs_round_sum_init(&gs, N) == FS_OK, "cuda init");
        for (int s = 0; s < S; s++)
            for (size_t off = 0; off < N; off += chunk) {
                size_t len = N - off < chunk ? N - off : chunk;
                CHECK(fs_round_sum_fold(&gs, off, up[s] + off, len, w[s]) == FS_OK, "cuda fold");
            }
        CHECK(fs_round_sum_fold(&gs, 10, (float[]){1, NAN}, 2, 1.0) == FS_ERR_NUMERIC, "cuda NaN");
        for (int s = 0; s < S; s++) fs_round_sum_add_weight(&gs, w[s]);
        CHECK(fs_round_sum_apply(&gs, model, got) == FS_OK, "cuda apply");
        d = count_diff(got, want, N);
        CHECK(d == 0, "cuda round differs from the CPU's in %zu elements", d);
        printf("round sum on cuda == cpu: %zu of %d elements differ\n", d, N);
        fs_round_sum_free(&gs);
    } else {
        printf("no CUDA device: the GPU round-sum comparison is skipped here "
               "(tests/test_cuda_parity.c covers the op)\n");
    }
    masked_sums();
    return check_result();
}
