/* aggregator/fedavg.c — see fedavg.h. */
#include "aggregator/fedavg.h"

#include <math.h>
#include <string.h>

void fs_fedavg_init(fs_fedavg_acc *a, float *sum, size_t n)
{
    a->sum = sum;
    a->n = n;
    a->weight = 0;
    if (sum) memset(sum, 0, n * sizeof *sum);
}

fs_status fs_fedavg_fold(fs_fedavg_acc *a, size_t off, const float *chunk, size_t len, double w)
{
    if (!a->sum || off > a->n || len > a->n - off || !(w > 0) || !isfinite(w)) return FS_ERR_ARG;
    /* Validate the whole chunk first so a poisoned chunk folds nothing. */
    for (size_t i = 0; i < len; i++)
        if (!isfinite(chunk[i])) return FS_ERR_NUMERIC;
    float wf = (float)w, *s = a->sum + off;
    for (size_t i = 0; i < len; i++) s[i] += wf * chunk[i];
    return FS_OK;
}

fs_status fs_fedavg_add_weight(fs_fedavg_acc *a, double w)
{
    if (!(w > 0) || !isfinite(w)) return FS_ERR_ARG;
    a->weight += w;
    return FS_OK;
}

fs_status fs_fedavg_finish(const fs_fedavg_acc *a, float *out)
{
    if (!(a->weight > 0)) return FS_ERR_ARG;
    float inv = (float)(1.0 / a->weight);
    for (size_t i = 0; i < a->n; i++) out[i] = a->sum[i] * inv;
    return FS_OK;
}
