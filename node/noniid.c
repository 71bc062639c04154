/*
 * node/noniid.c — see noniid.h. Tested by tests/test_noniid_node.c.
 */
#include "node/noniid.h"
#include "node/unet.h"
#include "common/log.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The instance-norm tensors are "<block>.1.*" and "<block>.4.*" of the
 * encoder, middle and decoder blocks ("up.K.*" and "head.*" are
 * convolutions): the rule node/unet.c initialises them by. */
static int is_norm(const char *name)
{
    const char *last = strrchr(name, '.');
    return strncmp(name, "up.", 3) && strncmp(name, "head.", 5) && last && last - name >= 2 &&
           last[-2] == '.' && (last[-1] == '1' || last[-1] == '4');
}

size_t fs_fedbn_mask(int base, int depth, uint8_t *mask, size_t P)
{
    size_t total = 0;
    int n = fs_unet_layout(base, depth, NULL, 0, &total);
    if (total != P || n <= 0) {
        fs_log_error("FedBN: the U-Net (base %d, depth %d) has %zu parameters, not %zu", base, depth,
                     total, P);
        return 0;
    }
    fs_param_info *info = calloc((size_t)n, sizeof *info);
    if (!info) return 0;
    fs_unet_layout(base, depth, info, n, NULL);
    memset(mask, 0, P);
    size_t k = 0;
    for (int t = 0; t < n; t++)
        if (is_norm(info[t].name)) {
            memset(mask + info[t].offset, 1, info[t].count);
            k += info[t].count;
        }
    free(info);
    return k;
}

void fs_fedbn_restore(const uint8_t *mask, const float *local, float *w, size_t P)
{
    for (size_t i = 0; i < P; i++)
        if (mask[i]) w[i] = local[i];
}

void fs_fedbn_keep(const uint8_t *mask, const float *w, float *local, size_t P)
{
    for (size_t i = 0; i < P; i++)
        if (mask[i]) local[i] = w[i];
}

void fs_fedbn_zero(const uint8_t *mask, float *delta, size_t P)
{
    for (size_t i = 0; i < P; i++)
        if (mask[i]) delta[i] = 0;
}

void fs_scaffold_correction(const float *c, const float *ci, float *corr, size_t P)
{
    for (size_t i = 0; i < P; i++) corr[i] = c[i] - ci[i];
}

fs_status fs_scaffold_update(float *ci, const float *c, const float *delta, long K, float lr,
                             float *dci, size_t P)
{
    if (K < 1 || !(lr > 0)) return FS_ERR_ARG;
    const double inv = 1.0 / ((double)K * (double)lr);
    for (size_t i = 0; i < P; i++) {
        /* c_i⁺ − c_i = −c + (x − y)/(Kη) = −c − delta/(Kη) */
        double d = -(double)c[i] - (double)delta[i] * inv;
        dci[i] = (float)d;
        if (!isfinite(dci[i])) {
            fs_log_error("SCAFFOLD: control variate %zu became %g", i, d);
            return FS_ERR_NUMERIC;
        }
    }
    for (size_t i = 0; i < P; i++) ci[i] += dci[i];
    return FS_OK;
}
