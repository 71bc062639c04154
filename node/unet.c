/*
 * node/unet.c — the reference U-Net on the backend table (see unet.h).
 *
 * The forward pass keeps every activation the backward pass needs; the backward
 * pass walks the network in reverse with four scratch gradient buffers (X, Y,
 * B, C) of the largest activation's size, plus one per-level buffer dcat[i]
 * holding the gradient of the decoder's concatenation until the encoder level
 * that produced the skip is reached (the skip's gradient is the sum of the
 * max-pool's and the concatenation's contributions, and the pool's arrives
 * last).
 *
 * Tested by tests/test_unet.c (parameter counts, PyTorch fixture: loss and every
 * gradient of one step, finite differences on a small model) and, on the GPU,
 * by tests/test_cuda_parity.c and tests/test_unet_cuda.c.
 */
#include "node/unet.h"
#include "common/log.h"
#include "common/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NORM_EPS 1e-5f
#define LRELU_SLOPE 0.01f
#define DICE_SMOOTH 1e-5f

const fs_preset fs_presets[] = {
    {"tiny", 8, 4, 64, 487388},
    {"small", 16, 4, 128, 1944244},
    {"ref", 32, 4, 128, 7766372},
};
const int fs_npresets = (int)(sizeof fs_presets / sizeof fs_presets[0]);

const fs_preset *fs_preset_find(const char *name)
{
    for (int i = 0; name && i < fs_npresets; i++)
        if (!strcmp(name, fs_presets[i].name)) return &fs_presets[i];
    return NULL;
}

/* ---- parameter layout (PyTorch order) ------------------------------------ */

typedef struct {
    fs_param_info *out;
    int max, n;
    size_t total;
} layout;

static size_t lay_add(layout *L, const char *name, int ndim, int s0, int s1, int s2, int s3)
{
    int shape[4] = {s0, s1, s2, s3};
    size_t count = 1;
    for (int i = 0; i < ndim; i++) count *= (size_t)shape[i];
    size_t off = L->total;
    if (L->out && L->n < L->max) {
        fs_param_info *p = &L->out[L->n];
        snprintf(p->name, sizeof p->name, "%s", name);
        p->offset = off;
        p->count = count;
        p->ndim = ndim;
        memcpy(p->shape, shape, sizeof shape);
    }
    L->n++;
    L->total += count;
    return off;
}

/* Offsets of one conv block's eight tensors, in PyTorch's Sequential order. */
typedef struct { size_t w1, b1, g1, be1, w2, b2, g2, be2; } block_off;

static block_off lay_block(layout *L, const char *prefix, int cin, int cout)
{
    char nm[40];
    block_off o;
#define ADD(field, idx, what, ndim, a, b, c, d) \
    snprintf(nm, sizeof nm, "%s.%d.%s", prefix, idx, what); o.field = lay_add(L, nm, ndim, a, b, c, d)
    ADD(w1, 0, "weight", 4, cout, cin, 3, 3);
    ADD(b1, 0, "bias", 1, cout, 0, 0, 0);
    ADD(g1, 1, "weight", 1, cout, 0, 0, 0);
    ADD(be1, 1, "bias", 1, cout, 0, 0, 0);
    ADD(w2, 3, "weight", 4, cout, cout, 3, 3);
    ADD(b2, 3, "bias", 1, cout, 0, 0, 0);
    ADD(g2, 4, "weight", 1, cout, 0, 0, 0);
    ADD(be2, 4, "bias", 1, cout, 0, 0, 0);
#undef ADD
    return o;
}

/* Everything the model needs to know about where its tensors live. */
typedef struct {
    block_off enc[FS_UNET_MAX_DEPTH], mid, dec[FS_UNET_MAX_DEPTH];
    size_t up_w[FS_UNET_MAX_DEPTH], up_b[FS_UNET_MAX_DEPTH]; /* by level i */
    size_t head_w, head_b;
} offsets;

static void build_layout(layout *L, int base, int depth, offsets *o)
{
    int ch[FS_UNET_MAX_DEPTH + 1];
    for (int i = 0; i <= depth; i++) ch[i] = base << i;
    char nm[40];
    for (int i = 0; i < depth; i++) {
        snprintf(nm, sizeof nm, "down.%d", i);
        o->enc[i] = lay_block(L, nm, i == 0 ? FS_UNET_IN_CH : ch[i - 1], ch[i]);
    }
    o->mid = lay_block(L, "mid", ch[depth - 1], ch[depth]);
    for (int k = 0; k < depth; k++) {
        int i = depth - 1 - k;
        snprintf(nm, sizeof nm, "up.%d.weight", k);
        o->up_w[i] = lay_add(L, nm, 4, ch[i + 1], ch[i], 2, 2);
        snprintf(nm, sizeof nm, "up.%d.bias", k);
        o->up_b[i] = lay_add(L, nm, 1, ch[i], 0, 0, 0);
    }
    for (int k = 0; k < depth; k++) {
        int i = depth - 1 - k;
        snprintf(nm, sizeof nm, "dec.%d", k);
        o->dec[i] = lay_block(L, nm, 2 * ch[i], ch[i]);
    }
    o->head_w = lay_add(L, "head.weight", 4, FS_UNET_CLASSES, ch[0], 1, 1);
    o->head_b = lay_add(L, "head.bias", 1, FS_UNET_CLASSES, 0, 0, 0);
}

int fs_unet_layout(int base, int depth, fs_param_info *out, int max, size_t *total)
{
    if (base <= 0 || depth <= 0 || depth > FS_UNET_MAX_DEPTH) return 0;
    layout L = {out, max, 0, 0};
    offsets o;
    build_layout(&L, base, depth, &o);
    if (total) *total = L.total;
    return L.n;
}

/* ---- the model ------------------------------------------------------------ */

typedef struct {
    int cin, cout, h, w;
    block_off o;
    float *a1, *h1, *a2, *h2;             /* [N][cout][h][w] */
    float *mean1, *rstd1, *mean2, *rstd2; /* [N][cout] */
} block;

struct fs_unet {
    const fs_backend *be;
    void *ctx;
    int base, depth, size, max_batch;
    int ch[FS_UNET_MAX_DEPTH + 1];
    size_t P;
    offsets off;
    /* flat vectors: params | grads | m | v | w_ref, then adam state + loss */
    float *flat, *params, *grads, *adam_m, *adam_v, *wref, *adam_state, *loss_d;
    int have_ref;
    /* activations */
    void *arena;
    block enc[FS_UNET_MAX_DEPTH], mid, dec[FS_UNET_MAX_DEPTH];
    float *pool[FS_UNET_MAX_DEPTH], *up[FS_UNET_MAX_DEPTH], *cat[FS_UNET_MAX_DEPTH];
    float *dcat[FS_UNET_MAX_DEPTH];
    float *x_in, *logits, *dlogits;
    uint8_t *y_in;
    float *gX, *gY, *gB, *gC, *gD;
    void *ws;
    size_t ws_bytes;
    /* CUDA graph of one training step */
    int graph_state; /* 0 not tried, 1 captured, -1 disabled */
    int graph_n;
    fs_adam_hp graph_hp;
    int graph_corr;
    /* SCAFFOLD: a fixed correction added to every step's direction */
    float *corr;
    int have_corr;
    int steps_done;
};

size_t fs_unet_nparams(const fs_unet *m) { return m->P; }
float *fs_unet_params(fs_unet *m) { return m->params; }
float *fs_unet_grads(fs_unet *m) { return m->grads; }

/* Sizes in floats of one image's worth of each kind of buffer, for carving. */
static size_t plane(const fs_unet *m, int level) { size_t s = (size_t)(m->size >> level); return s * s; }

/* Initialises parameters like PyTorch's defaults: conv and transposed-conv
 * weights and biases U(−1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with
 * a = sqrt(5)); instance-norm gamma 1, beta 0. Host buffer of P floats. */
static void init_params(const fs_unet *m, float *p, uint64_t seed)
{
    fs_rng r;
    fs_rng_seed(&r, seed, 0x756e6574ULL);
    int n = fs_unet_layout(m->base, m->depth, NULL, 0, NULL);
    fs_param_info *info = calloc((size_t)n, sizeof *info);
    if (!info) return;
    fs_unet_layout(m->base, m->depth, info, n, NULL);
    double bound = 1.0;
    for (int t = 0; t < n; t++) {
        const fs_param_info *pi = &info[t];
        float *dst = p + pi->offset;
        /* Instance-norm tensors are "<block>.1.*" and "<block>.4.*"; "up.K.*"
         * and "head.*" are convolutions. */
        const char *last = strrchr(pi->name, '.');
        int norm = strncmp(pi->name, "up.", 3) && strncmp(pi->name, "head.", 5) &&
                   last - pi->name >= 2 && last[-2] == '.' && (last[-1] == '1' || last[-1] == '4');
        if (norm) {
            float v = strcmp(last, ".weight") == 0 ? 1.0f : 0.0f;
            for (size_t i = 0; i < pi->count; i++) dst[i] = v;
            continue;
        }
        if (pi->ndim == 4) {
            /* Conv2d: fan_in = shape[1]·k·k; ConvTranspose2d's weight is
             * [Cin][Cout][2][2] and PyTorch computes fan_in from dim 1 too. */
            bound = 1.0 / sqrt((double)pi->shape[1] * pi->shape[2] * pi->shape[3]);
        } /* a bias follows its weight and uses the same bound */
        for (size_t i = 0; i < pi->count; i++) dst[i] = (float)((2.0 * fs_rng_uniform(&r) - 1.0) * bound);
    }
    free(info);
}

fs_status fs_unet_create(fs_unet **out, const fs_backend *be, void *ctx, int base, int depth,
                         int size, int max_batch, uint64_t seed)
{
    *out = NULL;
    if (!be || base <= 0 || depth <= 0 || depth > FS_UNET_MAX_DEPTH || max_batch <= 0 ||
        size <= 0 || size % (1 << depth) != 0) {
        fs_log_error("U-Net: invalid configuration (base %d, depth %d, size %d, batch %d): size "
                     "must be divisible by 2^depth", base, depth, size, max_batch);
        return FS_ERR_ARG;
    }
    fs_unet *m = calloc(1, sizeof *m);
    if (!m) return FS_ERR_NOMEM;
    m->be = be;
    m->ctx = ctx;
    m->base = base;
    m->depth = depth;
    m->size = size;
    m->max_batch = max_batch;
    for (int i = 0; i <= depth; i++) m->ch[i] = base << i;
    layout L = {NULL, 0, 0, 0};
    build_layout(&L, base, depth, &m->off);
    m->P = L.total;
    fs_status st;

    /* flat parameter arena: 5·P floats + adam state + loss (+ padding) */
    size_t P = m->P;
    if ((st = be->alloc(ctx, (void **)&m->flat, (5 * P + 64) * sizeof(float))) != FS_OK) goto fail;
    m->params = m->flat;
    m->grads = m->flat + P;
    m->adam_m = m->flat + 2 * P;
    m->adam_v = m->flat + 3 * P;
    m->wref = m->flat + 4 * P;
    m->adam_state = m->flat + 5 * P;
    m->loss_d = m->flat + 5 * P + 32;

    /* activation arena: count first, then carve */
    size_t N = (size_t)max_batch, total = 0, maxelem = 0, wsb = 0;
    const int K = FS_UNET_CLASSES;
#define NEED(elems) do { size_t n_ = (elems); total += (n_ + 63) & ~(size_t)63; if (n_ > maxelem) maxelem = n_; } while (0)
    for (int pass = 0; pass < 2; pass++) {
        float *cur = (float *)m->arena;
#define TAKE(ptr, elems) do { size_t e_ = (elems); if (pass) { (ptr) = cur; cur += (e_ + 63) & ~(size_t)63; } else NEED(e_); } while (0)
        TAKE(m->x_in, N * FS_UNET_IN_CH * plane(m, 0));
        block *blocks[2 * FS_UNET_MAX_DEPTH + 1];
        int nb = 0;
        for (int i = 0; i < depth; i++) {
            block *b = &m->enc[i];
            b->cin = i == 0 ? FS_UNET_IN_CH : m->ch[i - 1];
            b->cout = m->ch[i];
            b->h = b->w = size >> i;
            b->o = m->off.enc[i];
            blocks[nb++] = b;
            TAKE(m->pool[i], N * m->ch[i] * plane(m, i + 1));
        }
        m->mid.cin = m->ch[depth - 1];
        m->mid.cout = m->ch[depth];
        m->mid.h = m->mid.w = size >> depth;
        m->mid.o = m->off.mid;
        blocks[nb++] = &m->mid;
        for (int i = 0; i < depth; i++) {
            block *b = &m->dec[i];
            b->cin = 2 * m->ch[i];
            b->cout = m->ch[i];
            b->h = b->w = size >> i;
            b->o = m->off.dec[i];
            blocks[nb++] = b;
            TAKE(m->up[i], N * m->ch[i] * plane(m, i));
            TAKE(m->cat[i], N * 2 * m->ch[i] * plane(m, i));
            TAKE(m->dcat[i], N * 2 * m->ch[i] * plane(m, i));
            if (!pass) {
                fs_convt_shape ts = {max_batch, m->ch[i + 1], m->ch[i], size >> (i + 1),
                                     size >> (i + 1)};
                size_t wt = be->convt_ws_bytes(ctx, &ts);
                if (wt > wsb) wsb = wt;
            }
        }
        for (int k = 0; k < nb; k++) {
            block *b = blocks[k];
            size_t act = N * b->cout * (size_t)b->h * b->w, stat = N * b->cout;
            TAKE(b->a1, act); TAKE(b->h1, act); TAKE(b->a2, act); TAKE(b->h2, act);
            TAKE(b->mean1, stat); TAKE(b->rstd1, stat); TAKE(b->mean2, stat); TAKE(b->rstd2, stat);
            if (!pass) {
                fs_conv_shape s1 = {max_batch, b->cin, b->cout, b->h, b->w, 3};
                fs_conv_shape s2 = {max_batch, b->cout, b->cout, b->h, b->w, 3};
                size_t w1 = be->conv_ws_bytes(ctx, &s1), w2 = be->conv_ws_bytes(ctx, &s2);
                size_t wn = be->norm_ws_bytes(ctx, max_batch, b->cout, b->h * b->w);
                if (w1 > wsb) wsb = w1;
                if (w2 > wsb) wsb = w2;
                if (wn > wsb) wsb = wn;
            }
        }
        TAKE(m->logits, N * K * plane(m, 0));
        TAKE(m->dlogits, N * K * plane(m, 0));
        if (pass) {
            /* scratch gradients: the largest activation of any kind */
            m->gX = cur; cur += maxelem;
            m->gY = cur; cur += maxelem;
            m->gB = cur; cur += maxelem;
            m->gC = cur; cur += maxelem;
            m->gD = cur; cur += maxelem;
            m->y_in = (uint8_t *)cur;
            break;
        }
        {
            fs_conv_shape sh = {max_batch, m->ch[0], K, size, size, 1};
            size_t wh = be->conv_ws_bytes(ctx, &sh), wl = be->loss_ws_bytes(ctx, max_batch, K, size * size);
            if (wh > wsb) wsb = wh;
            if (wl > wsb) wsb = wl;
        }
        total += 5 * maxelem + (N * plane(m, 0) + 63) / 4 + 64;
        if ((st = be->alloc(ctx, &m->arena, total * sizeof(float))) != FS_OK) goto fail;
    }
#undef TAKE
#undef NEED
    m->ws_bytes = wsb;
    if (wsb && (st = be->alloc(ctx, &m->ws, wsb)) != FS_OK) goto fail;

    float *host = malloc(P * sizeof(float));
    if (!host) { st = FS_ERR_NOMEM; goto fail; }
    init_params(m, host, seed);
    st = be->upload(ctx, m->params, host, P * sizeof(float));
    free(host);
    if (st != FS_OK) goto fail;
    if (getenv("FS_NO_GRAPH") || !strcmp(be->name, "cpu")) m->graph_state = -1;
    *out = m;
    return FS_OK;
fail:
    fs_unet_free(m);
    return st;
}

void fs_unet_free(fs_unet *m)
{
    if (!m) return;
    m->be->free(m->ctx, m->flat);
    m->be->free(m->ctx, m->arena);
    m->be->free(m->ctx, m->ws);
    m->be->free(m->ctx, m->corr);
    free(m);
}

fs_status fs_unet_set_params(fs_unet *m, const float *host)
{
    return m->be->upload(m->ctx, m->params, host, m->P * sizeof(float));
}

fs_status fs_unet_get_params(fs_unet *m, float *host)
{
    return m->be->download(m->ctx, host, m->params, m->P * sizeof(float));
}

fs_status fs_unet_get_grads(fs_unet *m, float *host)
{
    return m->be->download(m->ctx, host, m->grads, m->P * sizeof(float));
}

fs_status fs_unet_set_adam(fs_unet *m, const float *hm, const float *hv, float t)
{
    FS_TRY(m->be->upload(m->ctx, m->adam_m, hm, m->P * sizeof(float)));
    FS_TRY(m->be->upload(m->ctx, m->adam_v, hv, m->P * sizeof(float)));
    return m->be->upload(m->ctx, m->adam_state, &t, sizeof t);
}

fs_status fs_unet_get_adam(fs_unet *m, float *hm, float *hv, float *t)
{
    FS_TRY(m->be->download(m->ctx, hm, m->adam_m, m->P * sizeof(float)));
    FS_TRY(m->be->download(m->ctx, hv, m->adam_v, m->P * sizeof(float)));
    return m->be->download(m->ctx, t, m->adam_state, sizeof *t);
}

fs_status fs_unet_set_prox_ref(fs_unet *m)
{
    float *host = malloc(m->P * sizeof(float));
    if (!host) return FS_ERR_NOMEM;
    fs_status st = fs_unet_get_params(m, host);
    if (st == FS_OK) st = m->be->upload(m->ctx, m->wref, host, m->P * sizeof(float));
    free(host);
    if (st == FS_OK) m->have_ref = 1;
    return st;
}

fs_status fs_unet_set_correction(fs_unet *m, const float *host)
{
    if (!host) {
        m->have_corr = 0;
        return FS_OK;
    }
    if (!m->corr) FS_TRY(m->be->alloc(m->ctx, (void **)&m->corr, m->P * sizeof(float)));
    FS_TRY(m->be->upload(m->ctx, m->corr, host, m->P * sizeof(float)));
    m->have_corr = 1;
    return FS_OK;
}

/* ---- forward ---------------------------------------------------------------- */

static fs_status block_fwd(fs_unet *m, block *b, const float *x, int n)
{
    const fs_backend *be = m->be;
    const float *P = m->params;
    int hw = b->h * b->w;
    fs_conv_shape s1 = {n, b->cin, b->cout, b->h, b->w, 3};
    fs_conv_shape s2 = {n, b->cout, b->cout, b->h, b->w, 3};
    FS_TRY(be->conv_fwd(m->ctx, &s1, x, P + b->o.w1, P + b->o.b1, b->a1, m->ws));
    FS_TRY(be->norm_act_fwd(m->ctx, n, b->cout, hw, b->a1, P + b->o.g1, P + b->o.be1, NORM_EPS,
                            LRELU_SLOPE, b->h1, b->mean1, b->rstd1));
    FS_TRY(be->conv_fwd(m->ctx, &s2, b->h1, P + b->o.w2, P + b->o.b2, b->a2, m->ws));
    return be->norm_act_fwd(m->ctx, n, b->cout, hw, b->a2, P + b->o.g2, P + b->o.be2, NORM_EPS,
                            LRELU_SLOPE, b->h2, b->mean2, b->rstd2);
}

/* Forward from m->x_in to m->logits for n images (device-side only). */
static fs_status forward(fs_unet *m, int n)
{
    const fs_backend *be = m->be;
    const float *P = m->params;
    const float *x = m->x_in;
    for (int i = 0; i < m->depth; i++) {
        block *b = &m->enc[i];
        FS_TRY(block_fwd(m, b, x, n));
        FS_TRY(be->maxpool_fwd(m->ctx, n, b->cout, b->h, b->w, b->h2, m->pool[i]));
        x = m->pool[i];
    }
    FS_TRY(block_fwd(m, &m->mid, x, n));
    const float *prev = m->mid.h2;
    for (int i = m->depth - 1; i >= 0; i--) {
        int hs = m->size >> (i + 1);
        fs_convt_shape ts = {n, m->ch[i + 1], m->ch[i], hs, hs};
        FS_TRY(be->convt_fwd(m->ctx, &ts, prev, P + m->off.up_w[i], P + m->off.up_b[i], m->up[i],
                             m->ws));
        FS_TRY(be->concat_fwd(m->ctx, n, m->ch[i], m->ch[i], (int)plane(m, i), m->up[i],
                              m->enc[i].h2, m->cat[i]));
        FS_TRY(block_fwd(m, &m->dec[i], m->cat[i], n));
        prev = m->dec[i].h2;
    }
    fs_conv_shape hs = {n, m->ch[0], FS_UNET_CLASSES, m->size, m->size, 1};
    return be->conv_fwd(m->ctx, &hs, prev, P + m->off.head_w, P + m->off.head_b, m->logits, m->ws);
}

/* ---- backward --------------------------------------------------------------- */

/* Gradients of one block given dh2 (in buffer `dh2`, consumed); writes the
 * gradient of the block's input x to dx unless dx is NULL. Uses m->gB, m->gC;
 * dx may alias dh2 but not gB/gC. */
static fs_status block_bwd(fs_unet *m, block *b, const float *x, float *dh2, float *dx, int n)
{
    const fs_backend *be = m->be;
    const float *P = m->params;
    float *G = m->grads;
    int hw = b->h * b->w;
    fs_conv_shape s1 = {n, b->cin, b->cout, b->h, b->w, 3};
    fs_conv_shape s2 = {n, b->cout, b->cout, b->h, b->w, 3};
    FS_TRY(be->norm_act_bwd(m->ctx, n, b->cout, hw, b->a2, P + b->o.g2, P + b->o.be2, LRELU_SLOPE,
                            b->mean2, b->rstd2, dh2, m->gB, G + b->o.g2, G + b->o.be2, m->ws));
    FS_TRY(be->conv_bwd_filter(m->ctx, &s2, b->h1, m->gB, G + b->o.w2, G + b->o.b2, m->ws));
    FS_TRY(be->conv_bwd_data(m->ctx, &s2, m->gB, P + b->o.w2, m->gC, m->ws));
    FS_TRY(be->norm_act_bwd(m->ctx, n, b->cout, hw, b->a1, P + b->o.g1, P + b->o.be1, LRELU_SLOPE,
                            b->mean1, b->rstd1, m->gC, m->gB, G + b->o.g1, G + b->o.be1, m->ws));
    FS_TRY(be->conv_bwd_filter(m->ctx, &s1, x, m->gB, G + b->o.w1, G + b->o.b1, m->ws));
    if (dx) FS_TRY(be->conv_bwd_data(m->ctx, &s1, m->gB, P + b->o.w1, dx, m->ws));
    return FS_OK;
}

/* Loss and all gradients for n images, after forward(). */
static fs_status backward(fs_unet *m, int n)
{
    const fs_backend *be = m->be;
    const float *P = m->params;
    float *G = m->grads;
    int S = m->size;
    FS_TRY(be->loss_fwd_bwd(m->ctx, n, FS_UNET_CLASSES, S * S, m->logits, m->y_in, DICE_SMOOTH,
                            m->loss_d, m->dlogits, m->ws));
    fs_conv_shape hs = {n, m->ch[0], FS_UNET_CLASSES, S, S, 1};
    FS_TRY(be->conv_bwd_filter(m->ctx, &hs, m->dec[0].h2, m->dlogits, G + m->off.head_w,
                               G + m->off.head_b, m->ws));
    FS_TRY(be->conv_bwd_data(m->ctx, &hs, m->dlogits, P + m->off.head_w, m->gX, m->ws));
    /* decoder, top level first; gX holds the gradient of dec[i].h2 */
    for (int i = 0; i < m->depth; i++) {
        int c = m->ch[i], hw = (int)plane(m, i);
        FS_TRY(block_bwd(m, &m->dec[i], m->cat[i], m->gX, m->dcat[i], n));
        /* the up half now; the skip half is added at encoder level i */
        FS_TRY(be->memzero(m->ctx, m->gD, (size_t)n * c * hw * sizeof(float)));
        FS_TRY(be->concat_bwd(m->ctx, n, c, c, hw, m->dcat[i], m->gY, m->gD));
        const float *prev = i == m->depth - 1 ? m->mid.h2 : m->dec[i + 1].h2;
        int hs2 = m->size >> (i + 1);
        fs_convt_shape ts = {n, m->ch[i + 1], c, hs2, hs2};
        FS_TRY(be->convt_bwd_filter(m->ctx, &ts, prev, m->gY, G + m->off.up_w[i], G + m->off.up_b[i],
                                    m->ws));
        FS_TRY(be->convt_bwd_data(m->ctx, &ts, m->gY, P + m->off.up_w[i], m->gX, m->ws));
    }
    FS_TRY(block_bwd(m, &m->mid, m->pool[m->depth - 1], m->gX, m->gY, n));
    /* encoder, bottom level first; gY holds the gradient of pool[i] */
    for (int i = m->depth - 1; i >= 0; i--) {
        block *b = &m->enc[i];
        int c = m->ch[i], hw = (int)plane(m, i);
        FS_TRY(be->maxpool_bwd(m->ctx, n, c, b->h, b->w, b->h2, m->gY, m->gX));
        FS_TRY(be->concat_bwd(m->ctx, n, c, c, hw, m->dcat[i], m->gD, m->gX));
        FS_TRY(block_bwd(m, b, i ? m->pool[i - 1] : m->x_in, m->gX, i ? m->gY : NULL, n));
    }
    return FS_OK;
}

/* ---- public entry points ------------------------------------------------------ */

static fs_status load_batch(fs_unet *m, const float *x_host, const uint8_t *y_host, int n)
{
    if (n <= 0 || n > m->max_batch) {
        fs_log_error("U-Net: batch of %d images, the model was built for at most %d", n, m->max_batch);
        return FS_ERR_ARG;
    }
    size_t px = (size_t)n * plane(m, 0);
    FS_TRY(m->be->upload(m->ctx, m->x_in, x_host, px * FS_UNET_IN_CH * sizeof(float)));
    if (y_host) {
        for (size_t i = 0; i < px; i++)
            if (y_host[i] >= FS_UNET_CLASSES) {
                fs_log_error("U-Net: label %u at pixel %zu is not a class 0..3", y_host[i], i);
                return FS_ERR_ARG;
            }
        FS_TRY(m->be->upload(m->ctx, m->y_in, y_host, px));
    }
    return FS_OK;
}

fs_status fs_unet_predict(fs_unet *m, const float *x_host, int n, float *logits_host)
{
    FS_TRY(load_batch(m, x_host, NULL, n));
    FS_TRY(forward(m, n));
    if (logits_host)
        FS_TRY(m->be->download(m->ctx, logits_host, m->logits,
                               (size_t)n * FS_UNET_CLASSES * plane(m, 0) * sizeof(float)));
    return FS_OK;
}

fs_status fs_unet_forward_backward(fs_unet *m, const float *x_host, const uint8_t *y_host, int n,
                                   float *loss)
{
    FS_TRY(load_batch(m, x_host, y_host, n));
    FS_TRY(forward(m, n));
    FS_TRY(backward(m, n));
    return m->be->download(m->ctx, loss, m->loss_d, sizeof *loss);
}

static fs_status device_step(fs_unet *m, int n, fs_adam_hp hp)
{
    FS_TRY(forward(m, n));
    FS_TRY(backward(m, n));
    FS_TRY(m->be->adam_step(m->ctx, m->P, m->params, m->grads, m->adam_m, m->adam_v,
                            m->have_ref ? m->wref : NULL, hp, m->adam_state));
    /* SCAFFOLD: w −= lr·(c − c_i) (node/noniid.h) */
    if (m->have_corr) return m->be->fold(m->ctx, m->P, m->params, m->corr, -hp.lr);
    return FS_OK;
}

fs_status fs_unet_train_step(fs_unet *m, const float *x_host, const uint8_t *y_host, int n,
                             fs_adam_hp hp, float *loss)
{
    if (hp.mu > 0 && !m->have_ref) {
        fs_log_error("U-Net: proximal term mu > 0 needs a reference (fs_unet_set_prox_ref)");
        return FS_ERR_ARG;
    }
    FS_TRY(load_batch(m, x_host, y_host, n));
    const fs_backend *be = m->be;
    int same = m->graph_n == n && !memcmp(&m->graph_hp, &hp, sizeof hp) &&
               m->graph_corr == m->have_corr;
    if (m->graph_state == 1 && same) {
        FS_TRY(be->graph_replay(m->ctx));
    } else if (m->graph_state >= 0 && m->steps_done >= 1 && (m->graph_state == 0 || !same)) {
        /* The first step ran eagerly (library warm-up); capture the second. */
        fs_status st = be->graph_capture_begin(m->ctx);
        if (st == FS_OK) {
            fs_status sd = device_step(m, n, hp);
            st = be->graph_capture_end(m->ctx);
            if (sd != FS_OK) st = sd;
        }
        if (st == FS_OK) st = be->graph_replay(m->ctx);
        if (st != FS_OK) {
            fs_log_warn("CUDA graph capture failed (%s); running the step eagerly", fs_status_str(st));
            m->graph_state = -1;
            FS_TRY(device_step(m, n, hp));
        } else {
            m->graph_state = 1;
            m->graph_n = n;
            m->graph_hp = hp;
            m->graph_corr = m->have_corr;
        }
    } else {
        FS_TRY(device_step(m, n, hp));
    }
    m->steps_done++;
    return be->download(m->ctx, loss, m->loss_d, sizeof *loss);
}

void fs_unet_describe(int base, int depth, int size, void (*emit)(const char *line, void *u), void *u)
{
    char line[256];
    int n = fs_unet_layout(base, depth, NULL, 0, NULL);
    fs_param_info *info = calloc((size_t)n, sizeof *info);
    size_t total = 0;
    if (!info) return;
    fs_unet_layout(base, depth, info, n, &total);
    snprintf(line, sizeof line, "U-Net base %d, depth %d, input %dx%dx%d, %d classes", base, depth,
             FS_UNET_IN_CH, size, size, FS_UNET_CLASSES);
    emit(line, u);
    snprintf(line, sizeof line, "%-22s %-20s %12s", "tensor", "shape", "parameters");
    emit(line, u);
    for (int t = 0; t < n; t++) {
        char shape[64] = "";
        for (int d = 0; d < info[t].ndim; d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), d ? "x%d" : "%d", info[t].shape[d]);
        snprintf(line, sizeof line, "%-22s %-20s %12zu", info[t].name, shape, info[t].count);
        emit(line, u);
    }
    for (int i = 0; i <= depth; i++) {
        snprintf(line, sizeof line, "level %d: %d channels at %dx%d", i, base << i, size >> i, size >> i);
        emit(line, u);
    }
    snprintf(line, sizeof line, "total parameters: %zu", total);
    emit(line, u);
    free(info);
}
