/*
 * bench/bench_ops.c — times the backend's ops on the shapes of one U-Net
 * training step (forward, loss, backward, Adam) and prints milliseconds per
 * op kind and per step, plus images per second.
 *
 * It replays the op sequence of the reference U-Net (DESIGN.md §4) directly on
 * the backend table, without node/unet.c, so the kernels can be tuned on their
 * own. Before timing it checks one 3×3 convolution against a direct loop and
 * that the loss is finite.
 *
 * Usage: bench_ops [--backend cpu|cuda|auto] [--threads T] [--base B]
 *                  [--size S] [--batch N] [--steps K]
 * Defaults: cpu, 2 threads, the `tiny` preset (base 8, 64×64) at batch 16.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/rng.h"
#include "kernels/backend.h"

#define DEPTH 4
#define IN_CH 4
#define CLASSES 4
#define SLOPE 0.01f
#define NORM_EPS 1e-5f

enum { T_CONV_F, T_CONV_BD, T_CONV_BF, T_CONVT_F, T_CONVT_BD, T_CONVT_BF, T_NORM_F, T_NORM_B,
       T_POOL_F, T_POOL_B, T_CAT_F, T_CAT_B, T_LOSS, T_ADAM, T_ADD, T_N };
static const char *t_name[T_N] = {"conv fwd", "conv bwd data", "conv bwd filter", "convt fwd",
                                  "convt bwd data", "convt bwd filter", "norm+act fwd",
                                  "norm+act bwd", "maxpool fwd", "maxpool bwd", "concat fwd",
                                  "concat bwd", "loss", "adam", "skip-grad add"};
static double t_acc[T_N];
static const fs_backend *be;
static void *ctx;

/* Runs one op call, syncs and adds its time to category k; aborts the bench
 * on an error status. */
#define TIMED(k, call) do { double t0_ = omp_get_wtime(); fs_status s_ = (call); be->sync(ctx); \
    t_acc[k] += omp_get_wtime() - t0_; \
    if (s_ != FS_OK) { fprintf(stderr, "bench_ops: %s failed: %s\n", t_name[k], \
                               fs_status_str(s_)); exit(1); } } while (0)

static float *balloc(size_t count)
{
    void *p = NULL;
    if (be->alloc(ctx, &p, count * sizeof(float)) != FS_OK) {
        fprintf(stderr, "bench_ops: out of memory (%zu floats)\n", count);
        exit(1);
    }
    return p;
}

/* Flat parameter / gradient vectors handed out in order. */
static float *params, *grads;
static size_t pused, pcap;
static void take(size_t count, float **w, float **g)
{
    if (pused + count > pcap) { fprintf(stderr, "bench_ops: parameter overflow\n"); exit(1); }
    *w = params + pused;
    *g = grads + pused;
    pused += count;
}

/* conv -> instance norm -> LeakyReLU, with its buffers. */
typedef struct {
    fs_conv_shape s;
    float *w, *b, *dw, *db, *gam, *bet, *dgam, *dbet;
    const float *x; /* input (owned elsewhere) */
    float *y, *mean, *rstd, *a, *dy, *dx;
} layer;

static void layer_init(layer *L, int n, int cin, int cout, int size, const float *x, int want_dx)
{
    L->s = (fs_conv_shape){.n = n, .cin = cin, .cout = cout, .h = size, .w = size, .k = 3};
    size_t hw = (size_t)size * size;
    take((size_t)cout * cin * 9, &L->w, &L->dw);
    take(cout, &L->b, &L->db);
    take(cout, &L->gam, &L->dgam);
    take(cout, &L->bet, &L->dbet);
    L->x = x;
    L->y = balloc((size_t)n * cout * hw);
    L->a = balloc((size_t)n * cout * hw);
    L->dy = balloc((size_t)n * cout * hw);
    L->mean = balloc((size_t)n * cout);
    L->rstd = balloc((size_t)n * cout);
    L->dx = want_dx ? balloc((size_t)n * cin * hw) : NULL;
}

static void layer_fwd(layer *L, void *ws)
{
    const fs_conv_shape *s = &L->s;
    TIMED(T_CONV_F, be->conv_fwd(ctx, s, L->x, L->w, L->b, L->y, ws));
    TIMED(T_NORM_F, be->norm_act_fwd(ctx, s->n, s->cout, s->h * s->w, L->y, L->gam, L->bet,
                                     NORM_EPS, SLOPE, L->a, L->mean, L->rstd));
}

/* Backward given da (gradient w.r.t. the layer's output a). */
static void layer_bwd(layer *L, const float *da, void *ws)
{
    const fs_conv_shape *s = &L->s;
    TIMED(T_NORM_B, be->norm_act_bwd(ctx, s->n, s->cout, s->h * s->w, L->y, L->gam, L->bet, SLOPE,
                                     L->mean, L->rstd, da, L->dy, L->dgam, L->dbet, ws));
    TIMED(T_CONV_BF, be->conv_bwd_filter(ctx, s, L->x, L->dy, L->dw, L->db, ws));
    if (L->dx) TIMED(T_CONV_BD, be->conv_bwd_data(ctx, s, L->dy, L->w, L->dx, ws));
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Parameter count of the reference U-Net (for the flat vectors). */
static size_t unet_params(int base)
{
    size_t p = 0;
    int ch[DEPTH + 1];
    for (int i = 0; i <= DEPTH; i++) ch[i] = base << i;
    for (int i = 0; i <= DEPTH; i++) {
        int cin = i == 0 ? IN_CH : ch[i - 1];
        p += (size_t)ch[i] * cin * 9 + (size_t)ch[i] * 9 * ch[i] + 6 * (size_t)ch[i];
    }
    for (int i = 0; i < DEPTH; i++) {
        p += (size_t)ch[i + 1] * ch[i] * 4 + ch[i];                                   /* up */
        p += (size_t)ch[i] * 2 * ch[i] * 9 + (size_t)ch[i] * ch[i] * 9 + 6 * (size_t)ch[i]; /* dec */
    }
    return p + (size_t)CLASSES * ch[0] + CLASSES;
}

int main(int argc, char **argv)
{
    const char *bname = "cpu";
    int threads = 2, base = 8, size = 64, n = 16, steps = 10;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--backend")) bname = argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--base")) base = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else { fprintf(stderr, "bench_ops: unknown option %s\n", argv[i]); return 2; }
    }
    const char *why = NULL;
    be = fs_backend_get(bname, &why);
    if (!be) { fprintf(stderr, "bench_ops: %s\n", why); return 2; }
    fs_backend_cpu_set_threads(threads);
    if (be->ctx_init(&ctx, 0) != FS_OK) { fprintf(stderr, "bench_ops: no context\n"); return 1; }

    int ch[DEPTH + 1], sz[DEPTH + 1];
    for (int i = 0; i <= DEPTH; i++) { ch[i] = base << i; sz[i] = size >> i; }
    pcap = unet_params(base);
    params = balloc(pcap); grads = balloc(pcap);
    float *am = balloc(pcap), *av = balloc(pcap), *astate = balloc(1);

    /* layers and buffers */
    float *x = balloc((size_t)n * IN_CH * size * size);
    layer enc[DEPTH][2], mid[2], dec[DEPTH][2];
    float *pooled[DEPTH], *dpooled[DEPTH], *dskip[DEPTH], *ptmp[DEPTH];
    float *up[DEPTH], *dup[DEPTH], *dtin[DEPTH], *cat[DEPTH], *upw[DEPTH], *upb[DEPTH], *updw[DEPTH], *updb[DEPTH];
    const float *in = x;
    for (int i = 0; i < DEPTH; i++) {
        layer_init(&enc[i][0], n, i ? ch[i - 1] : IN_CH, ch[i], sz[i], in, i > 0);
        layer_init(&enc[i][1], n, ch[i], ch[i], sz[i], enc[i][0].a, 1);
        size_t sk = (size_t)n * ch[i] * sz[i] * sz[i];
        pooled[i] = balloc(sk / 4); dpooled[i] = NULL;
        dskip[i] = balloc(sk); ptmp[i] = balloc(sk);
        in = pooled[i];
    }
    layer_init(&mid[0], n, ch[DEPTH - 1], ch[DEPTH], sz[DEPTH], in, 1);
    layer_init(&mid[1], n, ch[DEPTH], ch[DEPTH], sz[DEPTH], mid[0].a, 1);
    for (int i = 0; i < DEPTH; i++) dpooled[i] = i + 1 < DEPTH ? enc[i + 1][0].dx : mid[0].dx;
    for (int i = DEPTH - 1; i >= 0; i--) {
        size_t hw = (size_t)sz[i] * sz[i];
        take((size_t)ch[i + 1] * ch[i] * 4, &upw[i], &updw[i]);
        take(ch[i], &upb[i], &updb[i]);
        up[i] = balloc((size_t)n * ch[i] * hw); dup[i] = balloc((size_t)n * ch[i] * hw);
        dtin[i] = balloc((size_t)n * ch[i + 1] * sz[i + 1] * sz[i + 1]);
        cat[i] = balloc((size_t)n * 2 * ch[i] * hw);
        layer_init(&dec[i][0], n, 2 * ch[i], ch[i], sz[i], cat[i], 1);
        layer_init(&dec[i][1], n, ch[i], ch[i], sz[i], dec[i][0].a, 1);
    }
    float *hw_w, *hw_b, *hw_dw, *hw_db;
    take((size_t)CLASSES * ch[0], &hw_w, &hw_dw);
    take(CLASSES, &hw_b, &hw_db);
    fs_conv_shape hs = {.n = n, .cin = ch[0], .cout = CLASSES, .h = size, .w = size, .k = 1};
    size_t nlog = (size_t)n * CLASSES * size * size;
    float *logits = balloc(nlog), *dlogits = balloc(nlog), *dhead = balloc((size_t)n * ch[0] * size * size);
    float *loss = balloc(1);
    uint8_t *lab = (uint8_t *)balloc((size_t)n * size * size / 4 + 1);

    /* one workspace for every conv, transposed conv, norm and the loss */
    size_t wsb = be->loss_ws_bytes(ctx, n, CLASSES, size * size), b2;
    layer *all[4 * DEPTH + 2];
    int nall = 0;
    for (int i = 0; i < DEPTH; i++) { all[nall++] = &enc[i][0]; all[nall++] = &enc[i][1]; }
    all[nall++] = &mid[0]; all[nall++] = &mid[1];
    for (int i = 0; i < DEPTH; i++) { all[nall++] = &dec[i][0]; all[nall++] = &dec[i][1]; }
    for (int i = 0; i < nall; i++) {
        const fs_conv_shape *s = &all[i]->s;
        if ((b2 = be->conv_ws_bytes(ctx, s)) > wsb) wsb = b2;
        if ((b2 = be->norm_ws_bytes(ctx, s->n, s->cout, s->h * s->w)) > wsb) wsb = b2;
    }
    for (int i = 0; i < DEPTH; i++) {
        fs_convt_shape ts = {.n = n, .cin = ch[i + 1], .cout = ch[i], .h = sz[i + 1], .w = sz[i + 1]};
        if ((b2 = be->convt_ws_bytes(ctx, &ts)) > wsb) wsb = b2;
    }
    if ((b2 = be->conv_ws_bytes(ctx, &hs)) > wsb) wsb = b2;
    void *ws = balloc(wsb / sizeof(float) + 1);

    /* host-side initial values, uploaded once */
    fs_rng r;
    fs_rng_seed(&r, 1, 0);
    float *h = malloc(pcap * sizeof(float));
    for (size_t i = 0; i < pcap; i++) h[i] = (float)(0.1 * fs_rng_normal(&r));
    be->upload(ctx, params, h, pcap * sizeof(float));
    for (int i = 0; i < nall; i++) { /* gamma = 1, beta = 0 like PyTorch */
        layer *L = all[i];
        for (int c = 0; c < L->s.cout; c++) h[c] = 1.0f;
        be->upload(ctx, L->gam, h, L->s.cout * sizeof(float));
        be->memzero(ctx, L->bet, L->s.cout * sizeof(float));
    }
    size_t nx = (size_t)n * IN_CH * size * size;
    float *hx = malloc(nx * sizeof(float));
    uint8_t *hl = malloc((size_t)n * size * size);
    for (size_t i = 0; i < nx; i++) hx[i] = (float)fs_rng_normal(&r);
    for (size_t i = 0; i < (size_t)n * size * size; i++) hl[i] = (uint8_t)fs_rng_below(&r, CLASSES);
    be->upload(ctx, x, hx, nx * sizeof(float));
    be->upload(ctx, lab, hl, (size_t)n * size * size);

    /* correctness before timing: first conv of the encoder at a few points */
    {
        layer *L = &enc[0][0];
        be->conv_fwd(ctx, &L->s, L->x, L->w, L->b, L->y, ws);
        size_t ny = (size_t)n * L->s.cout * size * size;
        float *hy = malloc(ny * sizeof(float)), *hw_ = malloc((size_t)L->s.cout * IN_CH * 9 * 4 + 64);
        float hb[64];
        be->download(ctx, hy, L->y, ny * sizeof(float));
        be->download(ctx, hw_, L->w, (size_t)L->s.cout * IN_CH * 9 * sizeof(float));
        be->download(ctx, hb, L->b, L->s.cout * sizeof(float));
        double worst = 0;
        for (int t = 0; t < 200; t++) {
            int im = (int)fs_rng_below(&r, n), co = (int)fs_rng_below(&r, L->s.cout);
            int yy = (int)fs_rng_below(&r, size), xx = (int)fs_rng_below(&r, size);
            double acc = hb[co];
            for (int ci = 0; ci < IN_CH; ci++)
                for (int a = 0; a < 3; a++)
                    for (int b = 0; b < 3; b++) {
                        int ys = yy + a - 1, xs = xx + b - 1;
                        if (ys < 0 || ys >= size || xs < 0 || xs >= size) continue;
                        acc += (double)hw_[((co * IN_CH + ci) * 3 + a) * 3 + b] *
                               hx[(((size_t)im * IN_CH + ci) * size + ys) * size + xs];
                    }
            double d = fabs(acc - hy[(((size_t)im * L->s.cout + co) * size + yy) * size + xx]);
            if (d > worst) worst = d;
        }
        free(hy); free(hw_);
        if (worst > 1e-4) { fprintf(stderr, "bench_ops: conv check failed (%g)\n", worst); return 1; }
    }

    fs_adam_hp hp = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .mu = 0.0f};
    float first_loss = 0, last_loss = 0;
    double step_total = 0, *step_s = calloc((size_t)steps + 2, sizeof(double));
    for (int it = 0; it < steps + 2; it++) {
        if (it == 2) { memset(t_acc, 0, sizeof t_acc); step_total = 0; }
        double t0 = omp_get_wtime();
        /* forward */
        for (int i = 0; i < DEPTH; i++) {
            layer_fwd(&enc[i][0], ws);
            layer_fwd(&enc[i][1], ws);
            TIMED(T_POOL_F, be->maxpool_fwd(ctx, n, ch[i], sz[i], sz[i], enc[i][1].a, pooled[i]));
        }
        layer_fwd(&mid[0], ws);
        layer_fwd(&mid[1], ws);
        const float *cur = mid[1].a;
        for (int i = DEPTH - 1; i >= 0; i--) {
            fs_convt_shape ts = {.n = n, .cin = ch[i + 1], .cout = ch[i], .h = sz[i + 1], .w = sz[i + 1]};
            TIMED(T_CONVT_F, be->convt_fwd(ctx, &ts, cur, upw[i], upb[i], up[i], ws));
            TIMED(T_CAT_F, be->concat_fwd(ctx, n, ch[i], ch[i], sz[i] * sz[i], up[i], enc[i][1].a, cat[i]));
            layer_fwd(&dec[i][0], ws);
            layer_fwd(&dec[i][1], ws);
            cur = dec[i][1].a;
        }
        TIMED(T_CONV_F, be->conv_fwd(ctx, &hs, cur, hw_w, hw_b, logits, ws));
        TIMED(T_LOSS, be->loss_fwd_bwd(ctx, n, CLASSES, size * size, logits, lab, 1e-5f, loss, dlogits, ws));
        /* backward */
        TIMED(T_CONV_BF, be->conv_bwd_filter(ctx, &hs, cur, dlogits, hw_dw, hw_db, ws));
        TIMED(T_CONV_BD, be->conv_bwd_data(ctx, &hs, dlogits, hw_w, dhead, ws));
        const float *da = dhead;
        for (int i = 0; i < DEPTH; i++) {
            layer_bwd(&dec[i][1], da, ws);
            layer_bwd(&dec[i][0], dec[i][1].dx, ws);
            size_t sk = (size_t)n * ch[i] * sz[i] * sz[i];
            be->memzero(ctx, dskip[i], sk * sizeof(float));
            TIMED(T_CAT_B, be->concat_bwd(ctx, n, ch[i], ch[i], sz[i] * sz[i], dec[i][0].dx, dup[i], dskip[i]));
            fs_convt_shape ts = {.n = n, .cin = ch[i + 1], .cout = ch[i], .h = sz[i + 1], .w = sz[i + 1]};
            const float *tin = i + 1 < DEPTH ? dec[i + 1][1].a : mid[1].a;
            TIMED(T_CONVT_BF, be->convt_bwd_filter(ctx, &ts, tin, dup[i], updw[i], updb[i], ws));
            TIMED(T_CONVT_BD, be->convt_bwd_data(ctx, &ts, dup[i], upw[i], dtin[i], ws));
            da = dtin[i];
        }
        layer_bwd(&mid[1], da, ws);
        layer_bwd(&mid[0], mid[1].dx, ws);
        for (int i = DEPTH - 1; i >= 0; i--) {
            size_t sk = (size_t)n * ch[i] * sz[i] * sz[i];
            TIMED(T_POOL_B, be->maxpool_bwd(ctx, n, ch[i], sz[i], sz[i], enc[i][1].a, dpooled[i], ptmp[i]));
            double ta = omp_get_wtime();
            for (size_t k = 0; k < sk; k++) dskip[i][k] += ptmp[i][k];
            t_acc[T_ADD] += omp_get_wtime() - ta;
            layer_bwd(&enc[i][1], dskip[i], ws);
            layer_bwd(&enc[i][0], enc[i][1].dx, ws);
        }
        TIMED(T_ADAM, be->adam_step(ctx, pcap, params, grads, am, av, NULL, hp, astate));
        step_s[it] = omp_get_wtime() - t0;
        step_total += step_s[it];
        float lv;
        be->download(ctx, &lv, loss, sizeof lv);
        if (!isfinite(lv)) { fprintf(stderr, "bench_ops: loss is not finite\n"); return 1; }
        if (it == 0) first_loss = lv;
        last_loss = lv;
    }
    printf("bench_ops: backend %s, %d threads, base %d, %dx%d, batch %d, %zu parameters, %d steps\n",
           be->name, threads, base, size, size, n, pcap, steps);
    double sum = 0;
    for (int k = 0; k < T_N; k++) {
        printf("  %-18s %8.2f ms/step\n", t_name[k], 1e3 * t_acc[k] / steps);
        sum += t_acc[k];
    }
    printf("  %-18s %8.2f ms/step (ops)\n", "sum", 1e3 * sum / steps);
    qsort(step_s + 2, steps, sizeof(double), cmp_double);
    double med = step_s[2 + steps / 2], best = step_s[2];
    printf("  step mean %.2f ms (%.1f images/s), median %.2f ms (%.1f images/s), "
           "min %.2f ms; loss %.4f -> %.4f\n", 1e3 * step_total / steps, n * steps / step_total,
           1e3 * med, n / med, 1e3 * best, first_loss, last_loss);
    free(step_s);
    free(h); free(hx); free(hl);
    be->ctx_free(ctx);
    return 0;
}
