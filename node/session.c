/*
 * node/session.c — see session.h. Layout: open (data, split, backend, model,
 * sampler, buffers), accessors, parameters in/out, evaluation, training.
 * Tested by tests/test_session.c.
 */
#include "node/session.h"
#include "node/dataset.h"
#include "node/train.h"
#include "node/unet.h"
#include "common/log.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct fs_session {
    const fs_preset *pr;
    const fs_backend *be;
    void *ctx;
    fs_unet *m;
    int batch;
    fs_dataset *ds;
    int nds;
    const fs_case **train, **val;
    int ntrain, nval;
    uint64_t train_slices;
    fs_sampler sampler;
    float *x;       /* [batch][FS_NMOD][S][S] */
    uint8_t *y;     /* [batch][S][S]          */
    float *zeros;   /* nparams zeros: Adam reset */
    volatile sig_atomic_t *stop;
    long last_steps;
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Loads every folder and splits each one's cases into training and held-out
 * (fs_split_is_val, per folder, as fs_train_run does). */
static fs_status load_data(fs_session *s, const char *const *dirs, int ndirs)
{
    s->ds = calloc((size_t)ndirs, sizeof *s->ds);
    if (!s->ds) return FS_ERR_NOMEM;
    int total = 0;
    for (int i = 0; i < ndirs; i++) {
        FS_TRY(fs_dataset_load(dirs[i], s->pr->size, &s->ds[i]));
        s->nds = i + 1;
        total += s->ds[i].ncases;
    }
    s->train = calloc((size_t)total, sizeof *s->train);
    s->val = calloc((size_t)total, sizeof *s->val);
    if (!s->train || !s->val) return FS_ERR_NOMEM;
    for (int i = 0; i < ndirs; i++)
        for (int c = 0; c < s->ds[i].ncases; c++) {
            const fs_case *cs = &s->ds[i].cases[c];
            if (fs_split_is_val(c, s->ds[i].ncases)) {
                s->val[s->nval++] = cs;
            } else {
                s->train[s->ntrain++] = cs;
                s->train_slices += (uint64_t)cs->nslices;
            }
        }
    if (s->ntrain == 0) {
        fs_log_error("%s: no training cases (a site needs at least one case to train on)", dirs[0]);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

fs_status fs_session_open(fs_session **out, const char *const *data_dirs, int ndirs,
                          const char *preset, const char *device, int batch, uint64_t seed,
                          int threads)
{
    if (!out || !data_dirs || ndirs <= 0 || batch < 0) return FS_ERR_ARG;
    *out = NULL;
    const fs_preset *pr = fs_preset_find(preset);
    if (!pr) {
        fs_log_error("unknown model preset '%s' (tiny, small, ref)", preset ? preset : "");
        return FS_ERR_ARG;
    }
    const char *why = NULL;
    const fs_backend *be = fs_backend_get(device ? device : "auto", &why);
    if (!be) {
        fs_log_error("%s", why ? why : "no backend");
        return FS_ERR_UNSUPPORTED;
    }
    if (threads > 0) {
        fs_backend_cpu_set_threads(threads);
        /* and every other OpenMP loop of this process (encryption, partial
         * decryption): several nodes share one machine in `fedseg sim`, and
         * waiting threads on a shared core cost more than they give */
        omp_set_num_threads(threads);
    }
    fs_session *s = calloc(1, sizeof *s);
    if (!s) return FS_ERR_NOMEM;
    s->pr = pr;
    s->be = be;
    s->batch = batch > 0 ? batch : (!strcmp(be->name, "cuda") ? 32 : (pr->size <= 64 ? 16 : 8));

    double t0 = now_s();
    fs_status st = load_data(s, data_dirs, ndirs);
    if (st == FS_OK)
        fs_log_info("data: %d site folder(s), %d training and %d held-out cases, %llu training slices "
                    "(loaded in %.1f s)", ndirs, s->ntrain, s->nval,
                    (unsigned long long)s->train_slices, now_s() - t0);
    if (st == FS_OK) st = be->ctx_init(&s->ctx, 0);
    if (st == FS_OK) st = fs_unet_create(&s->m, be, s->ctx, pr->base, pr->depth, pr->size, s->batch, seed);
    if (st == FS_OK)
        st = fs_sampler_init(&s->sampler, s->train, s->ntrain, 0.6f, 0.0f, seed ^ 0x5eedULL);
    if (st == FS_OK) {
        size_t hw = (size_t)pr->size * pr->size;
        s->x = malloc((size_t)s->batch * FS_NMOD * hw * sizeof(float));
        s->y = malloc((size_t)s->batch * hw);
        s->zeros = calloc(fs_unet_nparams(s->m), sizeof(float));
        if (!s->x || !s->y || !s->zeros) st = FS_ERR_NOMEM;
    }
    if (st != FS_OK) {
        fs_session_free(s);
        return st;
    }
    fs_log_info("model: %s (%zu parameters), backend %s, batch %d", pr->name, fs_unet_nparams(s->m),
                be->name, s->batch);
    *out = s;
    return FS_OK;
}

void fs_session_free(fs_session *s)
{
    if (!s) return;
    free(s->x);
    free(s->y);
    free(s->zeros);
    fs_sampler_free(&s->sampler);
    fs_unet_free(s->m);
    if (s->ctx) s->be->ctx_free(s->ctx);
    for (int i = 0; i < s->nds; i++) fs_dataset_free(&s->ds[i]);
    free(s->ds);
    free(s->train);
    free(s->val);
    free(s);
}

size_t fs_session_nparams(const fs_session *s) { return fs_unet_nparams(s->m); }
uint64_t fs_session_nsamples(const fs_session *s) { return s->train_slices; }
int fs_session_ntrain_cases(const fs_session *s) { return s->ntrain; }
int fs_session_nval_cases(const fs_session *s) { return s->nval; }
int fs_session_batch(const fs_session *s) { return s->batch; }
const char *fs_session_preset(const fs_session *s) { return s->pr->name; }
const char *fs_session_backend(const fs_session *s) { return s->be->name; }

fs_status fs_session_set_params(fs_session *s, const float *w)
{
    if (!s || !w) return FS_ERR_ARG;
    return fs_unet_set_params(s->m, w);
}

fs_status fs_session_get_params(fs_session *s, float *w)
{
    if (!s || !w) return FS_ERR_ARG;
    return fs_unet_get_params(s->m, w);
}

fs_status fs_session_eval(fs_session *s, double dice[3])
{
    if (!s || !dice) return FS_ERR_ARG;
    if (s->nval == 0) {
        dice[0] = dice[1] = dice[2] = NAN;
        return FS_OK;
    }
    return fs_eval_cases(s->m, s->val, s->nval, s->batch, NULL, dice);
}

void fs_session_seed(fs_session *s, uint64_t seed)
{
    /* the same stream fs_sampler_init starts from seed */
    fs_rng_seed(&s->sampler.rng, seed, 0);
}

void fs_session_set_stop(fs_session *s, volatile sig_atomic_t *stop) { s->stop = stop; }

fs_status fs_session_train(fs_session *s, int epochs, int steps_per_epoch, float lr, float mu,
                           double *mean_loss)
{
    if (!s || epochs <= 0 || steps_per_epoch < 0 || !(lr > 0) || !(mu >= 0) || !isfinite(lr) ||
        !isfinite(mu))
        return FS_ERR_ARG;
    if (mean_loss) *mean_loss = NAN;
    FS_TRY(fs_unet_set_adam(s->m, s->zeros, s->zeros, 0.0f));
    if (mu > 0) FS_TRY(fs_unet_set_prox_ref(s->m));
    int steps = steps_per_epoch > 0 ? steps_per_epoch
                                    : (int)((s->train_slices + (uint64_t)s->batch - 1) / (uint64_t)s->batch);
    fs_adam_hp hp = {lr, 0.9f, 0.999f, 1e-8f, mu};
    double sum = 0;
    long done = 0;
    s->last_steps = 0;
    for (int ep = 1; ep <= epochs; ep++)
        for (int k = 0; k < steps; k++) {
            if (s->stop && *s->stop) goto out;
            fs_sampler_batch(&s->sampler, s->batch, s->x, s->y);
            float loss;
            FS_TRY(fs_unet_train_step(s->m, s->x, s->y, s->batch, hp, &loss));
            if (!isfinite(loss)) {
                fs_log_error("training diverged: loss is %f at epoch %d step %d (try a lower lr)", loss,
                             ep, k + 1);
                return FS_ERR_NUMERIC;
            }
            sum += loss;
            done++;
        }
out:
    s->last_steps = done;
    if (mean_loss && done) *mean_loss = sum / (double)done;
    return FS_OK;
}

fs_status fs_session_set_correction(fs_session *s, const float *corr)
{
    if (!s) return FS_ERR_ARG;
    return fs_unet_set_correction(s->m, corr);
}

long fs_session_last_steps(const fs_session *s) { return s->last_steps; }

void fs_session_arch(const fs_session *s, int *base, int *depth)
{
    *base = s->pr->base;
    *depth = s->pr->depth;
}
