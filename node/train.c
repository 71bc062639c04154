/*
 * node/train.c — see train.h. The training loop: load the site folders, split
 * each into training and held-out cases, draw tumour-weighted batches, step the
 * model, and after each epoch evaluate Dice on the held-out cases and write the
 * checkpoint atomically. Tested end to end by tests/test_train.sh.
 */
#include "node/train.h"
#include "node/metrics.h"
#include "common/ckpt.h"
#include "common/log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int fs_split_is_val(int idx, int n)
{
    if (n < 2 || idx < 0 || idx >= n) return 0;
    int nval = (int)floor(0.2 * n + 0.5);
    if (nval < 1) nval = 1;
    /* case idx is held out when the running count of held-out cases steps up */
    return (long)(idx + 1) * nval / n > (long)idx * nval / n;
}

/* Softmax over the class axis of one slice's logits ([K][S*S]), in place. */
static void softmax_slice(float *z, int hw)
{
    for (int i = 0; i < hw; i++) {
        float mx = z[i];
        for (int k = 1; k < FS_NCLS; k++) if (z[k * hw + i] > mx) mx = z[k * hw + i];
        float s = 0;
        for (int k = 0; k < FS_NCLS; k++) { z[k * hw + i] = expf(z[k * hw + i] - mx); s += z[k * hw + i]; }
        for (int k = 0; k < FS_NCLS; k++) z[k * hw + i] /= s;
    }
}

fs_status fs_predict_case(fs_unet *m, const fs_case *c, int batch, uint8_t *pred_native,
                          float *probs_out)
{
    size_t hw = (size_t)c->size * c->size, per = FS_NCLS * hw;
    float *probs = probs_out ? probs_out : malloc((size_t)c->nslices * per * sizeof(float));
    if (!probs) return FS_ERR_NOMEM;
    fs_status st = FS_OK;
    for (int z = 0; z < c->nslices && st == FS_OK; z += batch) {
        int nb = c->nslices - z < batch ? c->nslices - z : batch;
        st = fs_unet_predict(m, c->img + (size_t)z * FS_NMOD * hw, nb, probs + (size_t)z * per);
        for (int j = 0; st == FS_OK && j < nb; j++) softmax_slice(probs + (size_t)(z + j) * per, (int)hw);
    }
    if (st == FS_OK && pred_native) fs_case_probs_to_native(c, probs, pred_native);
    if (!probs_out) free(probs);
    return st;
}

fs_status fs_eval_cases(fs_unet *m, const fs_case *const *cases, int n, int batch,
                        double (*dice)[3], double mean[3])
{
    mean[0] = mean[1] = mean[2] = 0;
    for (int i = 0; i < n; i++) {
        const fs_case *c = cases[i];
        if (!c->seg_native) {
            fs_log_error("%s: no segmentation to evaluate against", c->dir);
            return FS_ERR_NOT_FOUND;
        }
        size_t nv = (size_t)c->nx * c->ny * c->nz;
        uint8_t *pred = malloc(nv);
        if (!pred) return FS_ERR_NOMEM;
        fs_status st = fs_predict_case(m, c, batch, pred, NULL);
        double d[3];
        if (st == FS_OK) fs_dice_brats(pred, c->seg_native, nv, d);
        free(pred);
        if (st != FS_OK) return st;
        for (int r = 0; r < 3; r++) {
            mean[r] += d[r] / n;
            if (dice) dice[i][r] = d[r];
        }
    }
    return FS_OK;
}

fs_status fs_unet_load(const char *path, const fs_backend *be, void *ctx, int batch,
                       fs_unet **out, fs_ckpt_meta *meta)
{
    fs_ckpt_meta mt;
    float *p = NULL;
    *out = NULL;
    FS_TRY(fs_ckpt_read(path, &mt, &p, NULL, NULL, NULL));
    const fs_preset *pr = fs_preset_find(mt.preset);
    fs_status st = FS_OK;
    if (!pr || pr->base != (int)mt.base || pr->depth != (int)mt.depth || pr->size != (int)mt.size ||
        pr->nparams != mt.nparams) {
        fs_log_error("%s: checkpoint describes model '%s' (base %u, depth %u, %llu parameters), "
                     "which is not a fedseg preset", path, mt.preset, mt.base, mt.depth,
                     (unsigned long long)mt.nparams);
        st = FS_ERR_MISMATCH;
    }
    if (st == FS_OK) st = fs_unet_create(out, be, ctx, pr->base, pr->depth, pr->size, batch, 0);
    if (st == FS_OK) st = fs_unet_set_params(*out, p);
    if (st != FS_OK) { fs_unet_free(*out); *out = NULL; }
    free(p);
    if (meta) *meta = mt;
    return st;
}

/* Saves the model and its Adam state to o->out (atomic). */
static fs_status save(fs_unet *m, const fs_preset *pr, const char *path, int epoch)
{
    size_t P = fs_unet_nparams(m);
    float *buf = malloc(3 * P * sizeof(float));
    if (!buf) return FS_ERR_NOMEM;
    float t = 0;
    fs_status st = fs_unet_get_params(m, buf);
    if (st == FS_OK) st = fs_unet_get_adam(m, buf + P, buf + 2 * P, &t);
    fs_ckpt_meta meta = {{0}, (uint32_t)pr->base, (uint32_t)pr->depth, (uint32_t)pr->size, P, (uint32_t)epoch};
    snprintf(meta.preset, sizeof meta.preset, "%s", pr->name);
    if (st == FS_OK) st = fs_ckpt_write(path, &meta, buf, buf + P, buf + 2 * P, t);
    free(buf);
    return st;
}

static void progress(int epoch, int epochs, int step, int steps, double loss, double ips)
{
    int width = 30, done = steps ? step * width / steps : width;
    fprintf(stderr, "\repoch %d/%d [", epoch, epochs);
    for (int i = 0; i < width; i++) fputc(i < done ? '#' : '.', stderr);
    fprintf(stderr, "] %d/%d loss %.4f %.1f img/s ", step, steps, loss, ips);
    fflush(stderr);
}

fs_status fs_train_run(const fs_train_opts *o, fs_train_result *res)
{
    memset(res, 0, sizeof *res);
    const fs_preset *pr = fs_preset_find(o->preset);
    if (!pr) {
        fs_log_error("unknown model preset '%s' (tiny, small, ref)", o->preset ? o->preset : "");
        return FS_ERR_ARG;
    }
    if (o->ndata <= 0 || o->epochs <= 0 || !o->out) return FS_ERR_ARG;
    const char *why = NULL;
    const fs_backend *be = fs_backend_get(o->device ? o->device : "auto", &why);
    if (!be) { fs_log_error("%s", why ? why : "no backend"); return FS_ERR_UNSUPPORTED; }
    if (o->threads > 0) fs_backend_cpu_set_threads(o->threads);
    int cuda = !strcmp(be->name, "cuda");
    int batch = o->batch > 0 ? o->batch : (cuda ? 32 : (pr->size <= 64 ? 16 : 8));

    fs_status st = FS_OK;
    void *ctx = NULL;
    fs_unet *m = NULL;
    fs_dataset *ds = calloc((size_t)o->ndata, sizeof *ds);
    const fs_case **train = NULL, **val = NULL;
    int *val_site = NULL, ntrain = 0, nval = 0;
    fs_sampler sampler;
    memset(&sampler, 0, sizeof sampler);
    float *x = NULL;
    uint8_t *y = NULL;
    double (*vd)[3] = NULL;
    if (!ds) return FS_ERR_NOMEM;

    double t_load = now_s();
    int total_cases = 0;
    for (int i = 0; i < o->ndata; i++) {
        if ((st = fs_dataset_load(o->data[i], pr->size, &ds[i])) != FS_OK) goto done;
        total_cases += ds[i].ncases;
    }
    train = calloc((size_t)total_cases, sizeof *train);
    val = calloc((size_t)total_cases, sizeof *val);
    val_site = calloc((size_t)total_cases, sizeof *val_site);
    vd = calloc((size_t)total_cases, sizeof *vd);
    if (!train || !val || !val_site || !vd) { st = FS_ERR_NOMEM; goto done; }
    long train_slices = 0;
    for (int i = 0; i < o->ndata; i++)
        for (int c = 0; c < ds[i].ncases; c++) {
            if (fs_split_is_val(c, ds[i].ncases)) {
                val_site[nval] = i;
                val[nval++] = &ds[i].cases[c];
            } else {
                train[ntrain++] = &ds[i].cases[c];
                train_slices += ds[i].cases[c].nslices;
            }
        }
    if (ntrain == 0) { fs_log_error("no training cases in the given folders"); st = FS_ERR_ARG; goto done; }
    fs_log_info("data: %d site folder(s), %d training and %d held-out cases, %ld training slices "
                "(loaded in %.1f s)", o->ndata, ntrain, nval, train_slices, now_s() - t_load);

    if ((st = be->ctx_init(&ctx, 0)) != FS_OK) goto done;
    if (o->init) {
        fs_ckpt_meta meta;
        if ((st = fs_unet_load(o->init, be, ctx, batch, &m, &meta)) != FS_OK) goto done;
        if (strcmp(meta.preset, pr->name)) {
            fs_log_error("%s: checkpoint holds model '%s', --model asks for '%s'", o->init, meta.preset, pr->name);
            st = FS_ERR_MISMATCH;
            goto done;
        }
    } else if ((st = fs_unet_create(&m, be, ctx, pr->base, pr->depth, pr->size, batch, o->seed)) != FS_OK) {
        goto done;
    }
    fs_log_info("model: %s (%zu parameters), backend %s, batch %d", pr->name, fs_unet_nparams(m), be->name, batch);
    if ((st = fs_sampler_init(&sampler, train, ntrain, 0.6f, 0.0f, o->seed ^ 0x5eedULL)) != FS_OK) goto done;
    size_t hw = (size_t)pr->size * pr->size;
    x = malloc((size_t)batch * FS_NMOD * hw * sizeof(float));
    y = malloc((size_t)batch * hw);
    if (!x || !y) { st = FS_ERR_NOMEM; goto done; }

    int steps = o->steps_per_epoch > 0 ? o->steps_per_epoch : (int)((train_slices + batch - 1) / batch);
    fs_adam_hp hp = {o->lr > 0 ? o->lr : 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f};
    const float lr0 = hp.lr;
    double t0 = now_s();
    long images = 0;
    for (int ep = 1; ep <= o->epochs; ep++) {
        double te = now_s(), loss_sum = 0;
        /* Cosine decay per epoch from lr to lr/20 (constant with --schedule
         * constant). Per epoch, not per step, so a CUDA graph of the step is
         * re-captured once an epoch at most. */
        if (!o->constant_lr && o->epochs > 1)
            hp.lr = lr0 * (0.05f + 0.95f * 0.5f * (1.0f + cosf(3.14159265f * (ep - 1) / (o->epochs - 1))));
        for (int s = 0; s < steps; s++) {
            fs_sampler_batch(&sampler, batch, x, y);
            float loss;
            if ((st = fs_unet_train_step(m, x, y, batch, hp, &loss)) != FS_OK) goto done;
            if (!isfinite(loss)) {
                fs_log_error("training diverged: loss is %f at epoch %d step %d (try a lower --lr)", loss, ep, s + 1);
                st = FS_ERR_NUMERIC;
                goto done;
            }
            loss_sum += loss;
            images += batch;
            if (o->progress && (s % 4 == 3 || s == steps - 1))
                progress(ep, o->epochs, s + 1, steps, loss_sum / (s + 1), (s + 1) * batch / (now_s() - te));
        }
        double train_s = now_s() - te;
        if (o->progress) fputc('\n', stderr);
        res->final_loss = loss_sum / steps;
        double mean[3] = {0, 0, 0};
        if (nval && (st = fs_eval_cases(m, val, nval, batch, vd, mean)) != FS_OK) goto done;
        memcpy(res->val_dice, mean, sizeof mean);
        res->nsites = o->ndata < 16 ? o->ndata : 16;
        for (int i = 0; i < res->nsites; i++) {
            int cnt = 0;
            double acc[3] = {0, 0, 0};
            for (int v = 0; v < nval; v++)
                if (val_site[v] == i) { cnt++; for (int r = 0; r < 3; r++) acc[r] += vd[v][r]; }
            for (int r = 0; r < 3; r++) res->site_dice[i][r] = cnt ? acc[r] / cnt : NAN;
        }
        printf("epoch %d/%d  loss %.4f  val Dice WT %.3f TC %.3f ET %.3f  (lr %.2g, %.1f s, %.1f img/s)\n", ep,
               o->epochs, res->final_loss, mean[0], mean[1], mean[2], hp.lr, now_s() - te, steps * batch / train_s);
        if (o->ndata > 1)
            for (int i = 0; i < res->nsites; i++)
                printf("    %-40s WT %.3f TC %.3f ET %.3f\n", o->data[i], res->site_dice[i][0],
                       res->site_dice[i][1], res->site_dice[i][2]);
        fflush(stdout);
        if (o->metrics_json) {
            FILE *f = fopen(o->metrics_json, "a");
            if (f) {
                fprintf(f, "{\"epoch\":%d,\"loss\":%.6f,\"wt\":%.5f,\"tc\":%.5f,\"et\":%.5f,\"seconds\":%.2f}\n",
                        ep, res->final_loss, mean[0], mean[1], mean[2], now_s() - t0);
                fclose(f);
            }
        }
        if ((st = save(m, pr, o->out, ep)) != FS_OK) goto done;
        res->epochs_done = ep;
    }
    res->seconds = now_s() - t0;
    res->img_per_s = images / res->seconds;
done:
    free(x);
    free(y);
    free(vd);
    fs_sampler_free(&sampler);
    fs_unet_free(m);
    if (ctx) be->ctx_free(ctx);
    for (int i = 0; i < o->ndata; i++) fs_dataset_free(&ds[i]);
    free(ds);
    free(train);
    free(val);
    free(val_site);
    return st;
}
