/*
 * tests/test_fedavg.c — FedAvg: the chunked fold equals the weighted mean
 * computed directly (double), for chunks of uneven sizes in any site order;
 * NaN/Inf chunks, out-of-range chunks and bad weights are refused and leave
 * the sum untouched.
 */
#include "check.h"
#include "aggregator/fedavg.h"
#include "common/rng.h"

#include <stdlib.h>
#include <string.h>

int main(void)
{
    enum { S = 3, N = 1001 };
    static float up[S][N], sum[N], mean[N];
    const double w[S] = {24, 16, 10};
    fs_rng r;
    fs_rng_seed(&r, 5, 0);
    for (int s = 0; s < S; s++)
        for (int i = 0; i < N; i++) up[s][i] = (float)fs_rng_normal(&r);
    fs_fedavg_acc a;
    fs_fedavg_init(&a, sum, N);
    const size_t chunk = 97; /* does not divide N */
    for (int s = S - 1; s >= 0; s--) {
        for (size_t off = 0; off < N; off += chunk) {
            size_t len = N - off < chunk ? N - off : chunk;
            CHECK(fs_fedavg_fold(&a, off, up[s] + off, len, w[s]) == FS_OK, "fold");
        }
        CHECK(fs_fedavg_add_weight(&a, w[s]) == FS_OK, "weight");
    }
    CHECK(fs_fedavg_finish(&a, mean) == FS_OK, "finish");
    float want[N];
    for (int i = 0; i < N; i++) {
        double acc = 0;
        for (int s = 0; s < S; s++) acc += w[s] * up[s][i];
        want[i] = (float)(acc / (w[0] + w[1] + w[2]));
    }
    check_close("fedavg", mean, want, N, 1e-6f, 1e-5f);

    float before[N];
    memcpy(before, sum, sizeof sum);
    float poison[4] = {1, NAN, 2, 3};
    CHECK(fs_fedavg_fold(&a, 0, poison, 4, 1.0) == FS_ERR_NUMERIC, "NaN accepted");
    poison[1] = INFINITY;
    CHECK(fs_fedavg_fold(&a, 0, poison, 4, 1.0) == FS_ERR_NUMERIC, "Inf accepted");
    CHECK(fs_fedavg_fold(&a, N - 2, up[0], 4, 1.0) == FS_ERR_ARG, "chunk past the end accepted");
    CHECK(fs_fedavg_fold(&a, 0, up[0], 4, 0.0) == FS_ERR_ARG, "zero weight accepted");
    CHECK(fs_fedavg_fold(&a, 0, up[0], 4, NAN) == FS_ERR_ARG, "NaN weight accepted");
    CHECK(memcmp(before, sum, sizeof sum) == 0, "a refused chunk changed the sum");
    fs_fedavg_acc empty;
    fs_fedavg_init(&empty, sum, N);
    CHECK(fs_fedavg_finish(&empty, mean) == FS_ERR_ARG, "finish without weight");
    return check_result();
}
