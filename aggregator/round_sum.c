/*
 * aggregator/round_sum.c — see round_sum.h and sum_device.h. The sum is
 * folded with the backend table's fold op: the CPU backend folds straight
 * into the host array s->sum; the CUDA backend keeps the live sum in device
 * memory (d_sum) and s->sum is the host copy filled when the round is
 * applied. Device buffers are found by their owner (a short list keyed by
 * the fs_round_sum's address), which keeps round_sum.h's struct unchanged.
 * Every value is screened for NaN / Inf on the host before anything is
 * folded, so a poisoned chunk folds nothing on either device.
 *
 * Tested through tests/test_round.c (CPU), tests/test_agg_fold.c and
 * tests/test_cuda_parity.c.
 */
#include "aggregator/round_sum.h"
#include "aggregator/sum_device.h"
#include "common/dp.h"
#include "kernels/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

/* Floats uploaded per fold on the GPU (256 KiB: one wire chunk). */
#define STAGE_FLOATS ((size_t)65536)

/* The device buffers of one sum (GPU only). */
typedef struct dev_sum {
    const fs_round_sum *owner;
    float *d_sum;          /* n floats: the live sum            */
    float *d_stage;        /* STAGE_FLOATS: the chunk being folded */
    struct dev_sum *next;
} dev_sum;

static const fs_backend *g_be;    /* NULL = the CPU backend */
static void *g_ctx;               /* context of g_be (CUDA only) */
static dev_sum *g_dev;            /* live device sums */
static size_t g_live;             /* live sums on any device */

static const fs_backend *backend(void) { return g_be ? g_be : fs_backend_cpu(); }
static int on_device(void) { return g_be && g_be != fs_backend_cpu(); }

static dev_sum *find_dev(const fs_round_sum *s)
{
    for (dev_sum *d = g_dev; d; d = d->next)
        if (d->owner == s) return d;
    return NULL;
}

fs_status fs_sum_device_select(const char *name, char *why, size_t whylen)
{
    if (why && whylen) why[0] = 0;
    if (!name) return FS_ERR_ARG;
    if (g_live) {
        if (why) snprintf(why, whylen, "the aggregation device cannot change while a round sum exists");
        return FS_ERR_ARG;
    }
    const char *reason = NULL;
    const fs_backend *be = fs_backend_get(name, &reason);
    if (!be) {
        if (why) snprintf(why, whylen, "%s", reason ? reason : "unknown device");
        return strcmp(name, "cuda") == 0 ? FS_ERR_UNSUPPORTED : FS_ERR_ARG;
    }
    if (!be->fold) {
        if (why) snprintf(why, whylen, "the %s backend has no fold op", be->name);
        return FS_ERR_UNSUPPORTED;
    }
    if (be == backend() && (be == fs_backend_cpu() || g_ctx)) return FS_OK;
    if (g_ctx) {
        g_be->ctx_free(g_ctx);
        g_ctx = NULL;
    }
    g_be = NULL;
    if (be == fs_backend_cpu()) return FS_OK;
    fs_status st = be->ctx_init(&g_ctx, 0);
    if (st != FS_OK) {
        if (why) snprintf(why, whylen, "cannot create a %s context: %s", be->name, fs_status_str(st));
        g_ctx = NULL;
        return st;
    }
    g_be = be;
    return FS_OK;
}

const char *fs_sum_device_name(void) { return backend()->name; }

fs_status fs_round_sum_init(fs_round_sum *s, size_t n)
{
    s->sum = calloc(n ? n : 1, sizeof *s->sum);
    if (!s->sum) return FS_ERR_NOMEM;
    fs_fedavg_init(&s->acc, s->sum, n);
    if (!on_device()) {
        g_live++;
        return FS_OK;
    }
    dev_sum *d = calloc(1, sizeof *d);
    fs_status st = d ? FS_OK : FS_ERR_NOMEM;
    if (st == FS_OK) st = g_be->alloc(g_ctx, (void **)&d->d_sum, (n ? n : 1) * sizeof(float));
    if (st == FS_OK) st = g_be->alloc(g_ctx, (void **)&d->d_stage, STAGE_FLOATS * sizeof(float));
    if (st != FS_OK) {
        if (d) {
            g_be->free(g_ctx, d->d_sum);
            g_be->free(g_ctx, d->d_stage);
        }
        free(d);
        free(s->sum);
        s->sum = NULL;
        return st;
    }
    d->owner = s;
    d->next = g_dev;
    g_dev = d;
    g_live++;
    return FS_OK;
}

void fs_round_sum_free(fs_round_sum *s)
{
    if (!s || !s->sum) return;
    g_live--;
    for (dev_sum **p = &g_dev; *p; p = &(*p)->next) {
        if ((*p)->owner != s) continue;
        dev_sum *d = *p;
        *p = d->next;
        g_be->free(g_ctx, d->d_sum);
        g_be->free(g_ctx, d->d_stage);
        free(d);
        break;
    }
    free(s->sum);
    s->sum = NULL;
}

/* Zeroes the sum and its weight; on the GPU the device sum too (a failure
 * there is reported by the next fold, which checks the context's errors). */
void fs_round_sum_reset(fs_round_sum *s)
{
    fs_fedavg_init(&s->acc, s->sum, s->acc.n);
    dev_sum *d = find_dev(s);
    if (d) g_be->memzero(g_ctx, d->d_sum, (s->acc.n ? s->acc.n : 1) * sizeof(float));
}

/* The checks of fs_fedavg_fold (range, weight, finite values) and then the
 * backend's fold: in place on the CPU, chunk by chunk through the staging
 * buffer on the GPU (upload waits for the stream, so the staging buffer is
 * free again when the next upload starts). */
fs_status fs_round_sum_fold(fs_round_sum *s, size_t off, const float *chunk, size_t len, double w)
{
    if (!s->sum || off > s->acc.n || len > s->acc.n - off || !(w > 0) || !isfinite(w) ||
        (len && !chunk))
        return FS_ERR_ARG;
    /* NaN/Inf = all exponent bits set; OR-ed without an early exit so that
     * the compiler vectorises the scan (it was 7% of the ingest's CPU). */
    uint32_t bad = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t b;
        memcpy(&b, chunk + i, sizeof b);
        bad |= (uint32_t)((b & 0x7f800000u) == 0x7f800000u);
    }
    if (bad) return FS_ERR_NUMERIC;
    const float wf = (float)w;
    dev_sum *d = find_dev(s);
    if (!d) return backend()->fold(NULL, len, s->sum + off, chunk, wf);
    for (size_t k = 0; k < len; k += STAGE_FLOATS) {
        size_t m = len - k < STAGE_FLOATS ? len - k : STAGE_FLOATS;
        FS_TRY(g_be->upload(g_ctx, d->d_stage, chunk + k, m * sizeof(float)));
        FS_TRY(g_be->fold(g_ctx, m, d->d_sum + off + k, d->d_stage, wf));
    }
    return FS_OK;
}

fs_status fs_round_sum_add_weight(fs_round_sum *s, double w) { return fs_fedavg_add_weight(&s->acc, w); }

fs_status fs_round_sum_set(fs_round_sum *s, const float *host, double weight)
{
    if (!s->sum || !host || !(weight > 0) || !isfinite(weight)) return FS_ERR_ARG;
    if (host != s->sum) memcpy(s->sum, host, s->acc.n * sizeof(float));
    dev_sum *d = find_dev(s);
    if (d) FS_TRY(g_be->upload(g_ctx, d->d_sum, s->sum, s->acc.n * sizeof(float)));
    s->acc.weight = weight;
    return FS_OK;
}

fs_status fs_round_sum_privatise(fs_round_sum *s, double stddev, uint64_t seed, uint64_t stream,
                                 double denominator)
{
    if (!s->sum || !(stddev >= 0) || !isfinite(stddev) || !(denominator > 0) || !isfinite(denominator))
        return FS_ERR_ARG;
    dev_sum *d = find_dev(s);
    if (d) FS_TRY(g_be->gauss_add(g_ctx, s->acc.n, d->d_sum, 0, stddev, seed, stream));
    else FS_TRY(fs_dp_add_gaussian(s->sum, s->acc.n, stddev, seed, stream, 0));
    s->acc.weight = denominator;
    return FS_OK;
}

/* Same arithmetic as fs_fedavg_finish (multiply by the float reciprocal of
 * Σ w), then added to the model, without a second P-sized buffer. On the GPU
 * the sum is first downloaded into the host copy s->sum (the only transfer
 * of the whole round in that direction). */
fs_status fs_round_sum_apply(const fs_round_sum *s, const float *model, float *out)
{
    if (!(s->acc.weight > 0)) return FS_ERR_ARG;
    dev_sum *d = find_dev(s);
    if (d) FS_TRY(g_be->download(g_ctx, s->sum, d->d_sum, s->acc.n * sizeof(float)));
    float inv = (float)(1.0 / s->acc.weight);
    for (size_t i = 0; i < s->acc.n; i++) out[i] = model[i] + s->sum[i] * inv;
    return FS_OK;
}

/* ---- the masked sum ------------------------------------------------------ */

/* Words uploaded per add on the GPU (256 KiB: one wire chunk). */
#define STAGE_WORDS ((size_t)65536)

struct fs_masked_sum {
    size_t words;
    uint32_t *sum;      /* host (CPU) or device memory: the live sum */
    uint32_t *d_stage;  /* GPU only: STAGE_WORDS */
};

fs_status fs_masked_sum_new(size_t words, fs_masked_sum **out)
{
    if (!out || !words) return FS_ERR_ARG;
    *out = NULL;
    fs_masked_sum *m = calloc(1, sizeof *m);
    if (!m) return FS_ERR_NOMEM;
    m->words = words;
    fs_status st = FS_OK;
    if (!on_device()) {
        m->sum = calloc(words, sizeof *m->sum);
        if (!m->sum) st = FS_ERR_NOMEM;
    } else {
        st = g_be->alloc(g_ctx, (void **)&m->sum, words * sizeof *m->sum);
        if (st == FS_OK) st = g_be->alloc(g_ctx, (void **)&m->d_stage, STAGE_WORDS * sizeof *m->sum);
    }
    if (st != FS_OK) {
        g_live++; /* balanced by the free */
        fs_masked_sum_free(m);
        return st;
    }
    g_live++;
    *out = m;
    return FS_OK;
}

void fs_masked_sum_free(fs_masked_sum *m)
{
    if (!m) return;
    g_live--;
    if (!on_device()) {
        free(m->sum);
    } else {
        g_be->free(g_ctx, m->sum);
        g_be->free(g_ctx, m->d_stage);
    }
    free(m);
}

fs_status fs_masked_sum_zero(fs_masked_sum *m)
{
    if (!m) return FS_ERR_ARG;
    if (!on_device()) {
        memset(m->sum, 0, m->words * sizeof *m->sum);
        return FS_OK;
    }
    return g_be->memzero(g_ctx, m->sum, m->words * sizeof *m->sum);
}

fs_status fs_masked_sum_add(fs_masked_sum *m, size_t off, const uint32_t *host, size_t n)
{
    if (!m || (n && !host) || off > m->words || n > m->words - off) return FS_ERR_ARG;
    if (!on_device()) return fs_backend_cpu()->u32_sum(NULL, n, m->sum + off, &host, 1);
    for (size_t k = 0; k < n; k += STAGE_WORDS) {
        const size_t c = n - k < STAGE_WORDS ? n - k : STAGE_WORDS;
        const uint32_t *stage = m->d_stage;
        FS_TRY(g_be->upload(g_ctx, m->d_stage, host + k, c * sizeof *host));
        FS_TRY(g_be->u32_sum(g_ctx, c, m->sum + off + k, &stage, 1));
    }
    return FS_OK;
}

fs_status fs_masked_sum_unmask(fs_masked_sum *m, const fs_mask_key *keys, int k)
{
    if (!m || k < 0 || (k && !keys)) return FS_ERR_ARG;
    if (!k) return FS_OK;
    return backend()->chacha_mask(on_device() ? g_ctx : NULL, m->words, m->sum, 0, keys, k);
}

uint32_t *fs_masked_sum_host(fs_masked_sum *m) { return m && !on_device() ? m->sum : NULL; }

fs_status fs_masked_sum_get(const fs_masked_sum *m, uint32_t *host)
{
    if (!m || !host) return FS_ERR_ARG;
    if (!on_device()) {
        memcpy(host, m->sum, m->words * sizeof *host);
        return FS_OK;
    }
    return g_be->download(g_ctx, host, m->sum, m->words * sizeof *host);
}
