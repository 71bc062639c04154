/*
 * kernels/cuda/cuda_conv.cu — 3×3 / 1×1 convolution (stride 1, "same") and 2×2
 * stride-2 transposed convolution on the GPU: layout kernels (im2col, col2im,
 * NCHW → CNHW, the transposed conv's pixel shuffle) around cuBLAS GEMMs.
 *
 * Shapes: N images, Cin / Cout channels, H×W planes (hw = H·W), kernel k with
 * kk = Cin·k·k columns per output pixel. Weights are PyTorch's: w[Cout][Cin][k][k]
 * (a row-major Cout×kk matrix) and, transposed, w[Cin][Cout][2][2] (Cin×4Cout).
 *
 * conv (k = 3): images are processed in chunks of G (chosen so the workspace
 * stays under FS_CONV_WS_CAP; G = N for all but the largest layers). For a
 * chunk, im2col writes col[kk][G·hw] (row r = (ci·k + i)·k + j, column
 * g·hw + pixel), so
 *   forward       y_g = w · col[:, g]          strided-batched GEMM over g,
 *                                              written straight into NCHW y
 *                                              on top of a bias fill (beta 1)
 *   backward data dcol[:, g] = wᵀ · dy_g      strided-batched GEMM, then a
 *                                              gather col2im (no atomics)
 *   backward filt dw (+)= dyT · colᵀ          ONE GEMM over the chunk's G·hw
 *                                              pixels (dyT = dy as [Cout][G·hw]),
 *                                              beta 1 after the first chunk
 * k = 1 needs no im2col for forward / backward data (x and dy are already
 * [C][hw] per image); backward filter reuses the same path with k = 1.
 * Bias gradients are per-channel block reductions over dy.
 *
 * Transposed conv: with T = [4Cout][N·hw] (row co·4 + a·2 + c),
 *   forward        T[:, n] = wᵀ · x_n (batched GEMM), then a shuffle writes
 *                  y[n,co,2i+a,2j+c] = T[co·4+a·2+c][n·hw + i·W + j] + b[co]
 *   backward data  dyP = the inverse shuffle of dy; dx_n = w · dyP[:, n]
 *   backward filt  dw = xT · dyPᵀ (one GEMM over N·hw), db = channel sums
 * T, dyP and xT live in the caller's workspace (fs_cuda_convt_ws_bytes: dyP
 * or T, then xT), so the ops allocate nothing and capture into a graph as is.
 *
 * Every GEMM is exact fp32 unless FS_CUDA_TF32=1 (see cuda_backend.cu).
 * Tested by tests/test_cuda_parity.c.
 */
#include "cuda_internal.h"

/* Workspace budget for one conv call. Chunks of images keep the im2col buffer
 * near the size of the GPU's L2 (50 MiB on H100/H200), so the GEMM mostly
 * reads it back from cache; deeper layers fit the whole batch in one chunk. */
#define FS_CONV_WS_CAP ((size_t)64 << 20)

typedef struct {
    size_t hw;     /* pixels per plane                          */
    int kk;        /* Cin·k·k                                   */
    int pad;       /* 1 for k = 3, 0 for k = 1                  */
    int g;         /* images per chunk                          */
    size_t col;    /* floats of col (kk·g·hw)                   */
    size_t dyt;    /* float offset of dyT in the workspace      */
    size_t bytes;  /* workspace bytes                           */
} conv_plan;

/* Validates the shape and derives the chunking; 0 when the shape is invalid
 * or too large for 32-bit indexing / cuBLAS's int dimensions. */
static int conv_plan_make(const fs_conv_shape *s, conv_plan *p)
{
    if (!s || s->n <= 0 || s->cin <= 0 || s->cout <= 0 || s->h <= 0 || s->w <= 0 ||
        (s->k != 1 && s->k != 3))
        return 0;
    p->hw = (size_t)s->h * s->w;
    const size_t kk = (size_t)s->cin * s->k * s->k;
    const size_t maxc = (size_t)(s->cin > s->cout ? s->cin : s->cout);
    if (kk > FS_CUDA_MAX_ELEMS || (size_t)s->n * maxc * p->hw > FS_CUDA_MAX_ELEMS) return 0;
    p->kk = (int)kk;
    p->pad = s->k / 2;
    const size_t per_image = (kk + (size_t)s->cout) * p->hw; /* floats */
    size_t g = FS_CONV_WS_CAP / sizeof(float) / per_image;
    if (g < 1) g = 1;
    if (g > (size_t)s->n) g = (size_t)s->n;
    p->g = (int)g;
    p->col = kk * g * p->hw;
    p->dyt = (p->col + 63) & ~(size_t)63; /* 256-byte aligned */
    const size_t dyt_f = (size_t)s->cout * g * p->hw;
    if (p->col > FS_CUDA_MAX_ELEMS || dyt_f > FS_CUDA_MAX_ELEMS) return 0;
    p->bytes = (p->dyt + dyt_f) * sizeof(float);
    return 1;
}

size_t fs_cuda_conv_ws_bytes(void *ctx, const fs_conv_shape *s)
{
    (void)ctx;
    conv_plan p;
    return conv_plan_make(s, &p) ? p.bytes : 0;
}

/* col[(ci·k + i)·k + j][gi·hw + oy·W + ox] = x[gi, ci, oy+i−pad, ox+j−pad] (0
 * outside), for the g images at x. One thread per (ci, gi, oy, ox) writes its
 * k·k column entries; writes are coalesced along ox. */
__global__ void im2col_kernel(int cin, int h, int w, int k, int pad, int g,
                              const float *__restrict__ x, float *__restrict__ col)
{
    const unsigned hw = (unsigned)h * (unsigned)w;
    const unsigned total = (unsigned)cin * (unsigned)g * hw;
    const size_t row = (size_t)g * hw; /* length of one col row */
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        const int ox = (int)(idx % (unsigned)w);
        unsigned t = idx / (unsigned)w;
        const int oy = (int)(t % (unsigned)h);
        t /= (unsigned)h;
        const unsigned gi = t % (unsigned)g, ci = t / (unsigned)g;
        const float *src = x + ((size_t)gi * cin + ci) * hw;
        float *dst = col + (size_t)ci * k * k * row + (size_t)gi * hw + (size_t)oy * w + ox;
        for (int i = 0; i < k; i++) {
            const int iy = oy + i - pad;
            const bool rowok = iy >= 0 && iy < h;
            for (int j = 0; j < k; j++) {
                const int ix = ox + j - pad;
                const float v = (rowok && ix >= 0 && ix < w) ? src[iy * w + ix] : 0.0f;
                dst[(size_t)(i * k + j) * row] = v;
            }
        }
    }
}

/* The adjoint of im2col as a gather: dx[gi, ci, iy, ix] = Σ_{i,j} col[(ci·k+i)·k+j]
 * [gi·hw + (iy−i+pad)·W + (ix−j+pad)] over in-range positions. One thread per
 * dx element (dx is the chunk's g images, contiguous), each written once. */
__global__ void col2im_kernel(int cin, int h, int w, int k, int pad, int g,
                              const float *__restrict__ col, float *__restrict__ dx)
{
    const unsigned hw = (unsigned)h * (unsigned)w;
    const unsigned total = (unsigned)g * (unsigned)cin * hw;
    const size_t row = (size_t)g * hw;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        const int ix = (int)(idx % (unsigned)w);
        unsigned t = idx / (unsigned)w;
        const int iy = (int)(t % (unsigned)h);
        t /= (unsigned)h;
        const unsigned ci = t % (unsigned)cin, gi = t / (unsigned)cin;
        const float *base = col + (size_t)ci * k * k * row + (size_t)gi * hw;
        float s = 0.0f;
        for (int i = 0; i < k; i++) {
            const int oy = iy + pad - i;
            if (oy < 0 || oy >= h) continue;
            for (int j = 0; j < k; j++) {
                const int ox = ix + pad - j;
                if (ox < 0 || ox >= w) continue;
                s += base[(size_t)(i * k + j) * row + (size_t)oy * w + ox];
            }
        }
        dx[idx] = s;
    }
}

/* y[n, c, :] = b[c] for every element (total = N·C·plane). */
__global__ void bias_fill_kernel(unsigned total, int ch, unsigned plane,
                                 const float *__restrict__ b, float *__restrict__ y)
{
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x)
        y[idx] = b[(idx / plane) % (unsigned)ch];
}

static fs_status launch_im2col(fs_cuda_ctx *c, const fs_conv_shape *s, const conv_plan *p,
                               int g, const float *x, float *col)
{
    const size_t total = (size_t)s->cin * g * p->hw;
    im2col_kernel<<<fs_cuda_blocks(total, 256), 256, 0, c->stream>>>(s->cin, s->h, s->w, s->k,
                                                                     p->pad, g, x, col);
    FS_LAUNCHED();
    return FS_OK;
}

/* y = conv(x, w) + b. */
fs_status fs_cuda_conv_fwd(void *ctx, const fs_conv_shape *s, const float *x, const float *w,
                           const float *b, float *y, void *ws)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    conv_plan p;
    if (!c || !conv_plan_make(s, &p)) return FS_BAD(FS_ERR_ARG, "conv_fwd: bad shape");
    if (!x || !w || !b || !y || (s->k == 3 && !ws)) return FS_BAD(FS_ERR_ARG, "conv_fwd: NULL buffer");
    FS_TRY(fs_cuda_enter(c));
    const size_t hw = p.hw, ysize = (size_t)s->n * s->cout * hw;
    bias_fill_kernel<<<fs_cuda_blocks(ysize, 256), 256, 0, c->stream>>>(
        (unsigned)ysize, s->cout, (unsigned)hw, b, y);
    FS_LAUNCHED();
    if (s->k == 1) /* y_n = w · x_n */
        return fs_cuda_gemm(c, false, false, s->cout, (int)hw, s->cin, 1.0f, w, s->cin, 0, x,
                            (int)hw, (long long)s->cin * hw, 1.0f, y, (int)hw,
                            (long long)s->cout * hw, s->n);
    float *col = (float *)ws;
    for (int n0 = 0; n0 < s->n; n0 += p.g) {
        const int g = s->n - n0 < p.g ? s->n - n0 : p.g;
        FS_TRY(launch_im2col(c, s, &p, g, x + (size_t)n0 * s->cin * hw, col));
        FS_TRY(fs_cuda_gemm(c, false, false, s->cout, (int)hw, p.kk, 1.0f, w, p.kk, 0, col,
                            (int)((size_t)g * hw), (long long)hw, 1.0f,
                            y + (size_t)n0 * s->cout * hw, (int)hw, (long long)s->cout * hw, g));
    }
    return FS_OK;
}

/* dx = convᵀ(dy, w). */
fs_status fs_cuda_conv_bwd_data(void *ctx, const fs_conv_shape *s, const float *dy,
                                const float *w, float *dx, void *ws)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    conv_plan p;
    if (!c || !conv_plan_make(s, &p)) return FS_BAD(FS_ERR_ARG, "conv_bwd_data: bad shape");
    if (!dy || !w || !dx || (s->k == 3 && !ws))
        return FS_BAD(FS_ERR_ARG, "conv_bwd_data: NULL buffer");
    FS_TRY(fs_cuda_enter(c));
    const size_t hw = p.hw;
    if (s->k == 1) /* dx_n = wᵀ · dy_n */
        return fs_cuda_gemm(c, true, false, s->cin, (int)hw, s->cout, 1.0f, w, s->cin, 0, dy,
                            (int)hw, (long long)s->cout * hw, 0.0f, dx, (int)hw,
                            (long long)s->cin * hw, s->n);
    float *col = (float *)ws;
    for (int n0 = 0; n0 < s->n; n0 += p.g) {
        const int g = s->n - n0 < p.g ? s->n - n0 : p.g;
        FS_TRY(fs_cuda_gemm(c, true, false, p.kk, (int)hw, s->cout, 1.0f, w, p.kk, 0,
                            dy + (size_t)n0 * s->cout * hw, (int)hw, (long long)s->cout * hw,
                            0.0f, col, (int)((size_t)g * hw), (long long)hw, g));
        const size_t total = (size_t)g * s->cin * hw;
        col2im_kernel<<<fs_cuda_blocks(total, 256), 256, 0, c->stream>>>(
            s->cin, s->h, s->w, s->k, p.pad, g, col, dx + (size_t)n0 * s->cin * hw);
        FS_LAUNCHED();
    }
    return FS_OK;
}

/* dw = Σ_n dy_n · col_nᵀ, db = Σ dy. */
fs_status fs_cuda_conv_bwd_filter(void *ctx, const fs_conv_shape *s, const float *x,
                                  const float *dy, float *dw, float *db, void *ws)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    conv_plan p;
    if (!c || !conv_plan_make(s, &p)) return FS_BAD(FS_ERR_ARG, "conv_bwd_filter: bad shape");
    if (!x || !dy || !dw || !db || !ws) return FS_BAD(FS_ERR_ARG, "conv_bwd_filter: NULL buffer");
    FS_TRY(fs_cuda_enter(c));
    const size_t hw = p.hw;
    float *col = (float *)ws, *dyt = (float *)ws + p.dyt;
    for (int n0 = 0; n0 < s->n; n0 += p.g) {
        const int g = s->n - n0 < p.g ? s->n - n0 : p.g;
        const int kdim = (int)((size_t)g * hw);
        FS_TRY(launch_im2col(c, s, &p, g, x + (size_t)n0 * s->cin * hw, col));
        FS_TRY(fs_cuda_nchw_to_cnhw(c, g, s->cout, hw, dy + (size_t)n0 * s->cout * hw, dyt));
        FS_TRY(fs_cuda_gemm(c, false, true, s->cout, p.kk, kdim, 1.0f, dyt, kdim, 0, col, kdim,
                            0, n0 == 0 ? 0.0f : 1.0f, dw, p.kk, 0, 1));
    }
    return fs_cuda_channel_sum(c, s->n, s->cout, hw, dy, db);
}

/* ---- transposed convolution ------------------------------------------- */

static int convt_ok(const fs_convt_shape *s)
{
    if (!s || s->n <= 0 || s->cin <= 0 || s->cout <= 0 || s->h <= 0 || s->w <= 0) return 0;
    const size_t hw = (size_t)s->h * s->w;
    return (size_t)s->n * s->cin * hw <= FS_CUDA_MAX_ELEMS &&
           (size_t)s->n * s->cout * 4 * hw <= FS_CUDA_MAX_ELEMS;
}

/* Floats of T / dyP (rounded up to 64, so xT after it is 256-byte aligned). */
static size_t convt_t_floats(const fs_convt_shape *s)
{
    return ((size_t)4 * s->cout * s->n * s->h * s->w + 63) & ~(size_t)63;
}

/* Workspace: T (forward) or dyP (backward), then xT (backward filter). */
size_t fs_cuda_convt_ws_bytes(void *ctx, const fs_convt_shape *s)
{
    (void)ctx;
    if (!convt_ok(s)) return 0;
    return (convt_t_floats(s) + (size_t)s->cin * s->n * s->h * s->w) * sizeof(float);
}

/* Between dy / y (N×Cout×2H×2W) and the GEMM layout T[(co·4 + a·2 + c)][n·hw + i·W + j]
 * for pixel (2i+a, 2j+c). One thread per image element (coalesced on that side).
 *   TO_T:  t[...] = img[idx]                  (dy → dyP)
 *   !TO_T: img[idx] = t[...] + b[co]          (T → y, with the bias)          */
template <bool TO_T>
__global__ void convt_shuffle_kernel(int n, int cout, int h, int w, const float *__restrict__ b,
                                     const float *__restrict__ src, float *__restrict__ dst)
{
    const unsigned w2 = 2u * (unsigned)w, h2 = 2u * (unsigned)h;
    const unsigned hw = (unsigned)h * (unsigned)w;
    const unsigned total = (unsigned)n * (unsigned)cout * 4u * hw;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        const unsigned ox = idx % w2;
        unsigned t = idx / w2;
        const unsigned oy = t % h2;
        t /= h2;
        const unsigned co = t % (unsigned)cout, img = t / (unsigned)cout;
        const unsigned r = co * 4u + (oy & 1u) * 2u + (ox & 1u);
        const size_t tidx = ((size_t)r * n + img) * hw + (size_t)(oy >> 1) * w + (ox >> 1);
        if (TO_T)
            dst[tidx] = src[idx];
        else
            dst[idx] = src[tidx] + b[co];
    }
}

template <bool TO_T>
static fs_status launch_shuffle(fs_cuda_ctx *c, const fs_convt_shape *s, const float *b,
                                const float *src, float *dst)
{
    const size_t total = (size_t)s->n * s->cout * 4 * s->h * s->w;
    convt_shuffle_kernel<TO_T><<<fs_cuda_blocks(total, 256), 256, 0, c->stream>>>(
        s->n, s->cout, s->h, s->w, b, src, dst);
    FS_LAUNCHED();
    return FS_OK;
}

/* y = convt(x, w) + b via T = wᵀ·x and a shuffle. */
fs_status fs_cuda_convt_fwd(void *ctx, const fs_convt_shape *s, const float *x, const float *w,
                            const float *b, float *y, void *ws)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || !convt_ok(s)) return FS_BAD(FS_ERR_ARG, "convt_fwd: bad shape");
    if (!x || !w || !b || !y || !ws) return FS_BAD(FS_ERR_ARG, "convt_fwd: NULL buffer");
    FS_TRY(fs_cuda_enter(c));
    const size_t hw = (size_t)s->h * s->w, nhw = (size_t)s->n * hw;
    const int c4 = 4 * s->cout;
    float *t = (float *)ws;
    FS_TRY(fs_cuda_gemm(c, true, false, c4, (int)hw, s->cin, 1.0f, w, c4, 0, x, (int)hw,
                        (long long)s->cin * hw, 0.0f, t, (int)nhw, (long long)hw, s->n));
    return launch_shuffle<false>(c, s, b, t, y);
}

/* dx_n = w · dyP[:, n] with dyP the shuffled dy. */
fs_status fs_cuda_convt_bwd_data(void *ctx, const fs_convt_shape *s, const float *dy,
                                 const float *w, float *dx, void *ws)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || !convt_ok(s)) return FS_BAD(FS_ERR_ARG, "convt_bwd_data: bad shape");
    if (!dy || !w || !dx || !ws) return FS_BAD(FS_ERR_ARG, "convt_bwd_data: NULL buffer");
    FS_TRY(fs_cuda_enter(c));
    const size_t hw = (size_t)s->h * s->w, nhw = (size_t)s->n * hw;
    const int c4 = 4 * s->cout;
    float *dyp = (float *)ws;
    FS_TRY(launch_shuffle<true>(c, s, NULL, dy, dyp));
    return fs_cuda_gemm(c, false, false, s->cin, (int)hw, c4, 1.0f, w, c4, 0, dyp, (int)nhw,
                        (long long)hw, 0.0f, dx, (int)hw, (long long)s->cin * hw, s->n);
}

/* dw = xT · dyPᵀ over all N·hw pixels; db = channel sums of dy. */
fs_status fs_cuda_convt_bwd_filter(void *ctx, const fs_convt_shape *s, const float *x,
                                   const float *dy, float *dw, float *db, void *ws)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || !convt_ok(s)) return FS_BAD(FS_ERR_ARG, "convt_bwd_filter: bad shape");
    if (!x || !dy || !dw || !db || !ws)
        return FS_BAD(FS_ERR_ARG, "convt_bwd_filter: NULL buffer");
    FS_TRY(fs_cuda_enter(c));
    const size_t hw = (size_t)s->h * s->w, nhw = (size_t)s->n * hw;
    const int c4 = 4 * s->cout;
    float *dyp = (float *)ws, *xt = (float *)ws + convt_t_floats(s);
    FS_TRY(launch_shuffle<true>(c, s, NULL, dy, dyp));
    FS_TRY(fs_cuda_nchw_to_cnhw(c, s->n, s->cin, hw, x, xt));
    FS_TRY(fs_cuda_gemm(c, false, true, s->cin, c4, (int)nhw, 1.0f, xt, (int)nhw, 0, dyp,
                        (int)nhw, 0, 0.0f, dw, c4, 0, 1));
    return fs_cuda_channel_sum(c, s->n, s->cout, 4 * hw, dy, db);
}
