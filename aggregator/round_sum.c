/*
 * aggregator/round_sum.c — see round_sum.h. Host implementation on top of
 * aggregator/fedavg.h.
 */
#include "aggregator/round_sum.h"

#include <stdlib.h>

fs_status fs_round_sum_init(fs_round_sum *s, size_t n)
{
    s->sum = calloc(n ? n : 1, sizeof *s->sum);
    if (!s->sum) return FS_ERR_NOMEM;
    fs_fedavg_init(&s->acc, s->sum, n);
    return FS_OK;
}

void fs_round_sum_free(fs_round_sum *s)
{
    if (!s) return;
    free(s->sum);
    s->sum = NULL;
}

void fs_round_sum_reset(fs_round_sum *s) { fs_fedavg_init(&s->acc, s->sum, s->acc.n); }

fs_status fs_round_sum_fold(fs_round_sum *s, size_t off, const float *chunk, size_t len, double w)
{
    return fs_fedavg_fold(&s->acc, off, chunk, len, w);
}

fs_status fs_round_sum_add_weight(fs_round_sum *s, double w) { return fs_fedavg_add_weight(&s->acc, w); }

/* Same arithmetic as fs_fedavg_finish (multiply by the float reciprocal of
 * Σ w), then added to the model, without a second P-sized buffer. */
fs_status fs_round_sum_apply(const fs_round_sum *s, const float *model, float *out)
{
    if (!(s->acc.weight > 0)) return FS_ERR_ARG;
    float inv = (float)(1.0 / s->acc.weight);
    for (size_t i = 0; i < s->acc.n; i++) out[i] = model[i] + s->sum[i] * inv;
    return FS_OK;
}
