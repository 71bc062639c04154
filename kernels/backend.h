/*
 * kernels/backend.h — the table of tensor operations that the U-Net is built from.
 *
 * One table per backend (CPU always; CUDA when compiled in and a device exists),
 * chosen once at start-up with fs_backend_get(). The CPU backend is the
 * specification: plain C loops plus OpenBLAS GEMMs. The CUDA backend must give the
 * same results within the tolerances stated beside each op (kernels/tolerances.h)
 * and is tested against the CPU by tests/test_cuda_parity.c.
 *
 * Layout: every activation is NCHW fp32, contiguous:
 *   N = images in the batch, C = channels, H = rows, W = columns;
 *   element (n, c, y, x) lives at ((n*C + c)*H + y)*W + x.
 * Weights use PyTorch's layouts so checkpoints and fixtures map one to one:
 *   Conv2d          w[Cout][Cin][k][k], b[Cout]
 *   ConvTranspose2d w[Cin][Cout][2][2], b[Cout]
 *   InstanceNorm2d  gamma[C], beta[C]
 * Labels are uint8 class indices 0..K-1, layout N×H×W.
 *
 * Memory: every float / uint8 pointer passed to an op is *backend memory*
 * (host memory for the CPU backend, device memory for CUDA). Move data with
 * upload / download. Ops never allocate; scratch space comes from the caller,
 * sized by the *_ws_bytes functions (conv_ws_bytes, convt_ws_bytes,
 * norm_ws_bytes, loss_ws_bytes) for that shape on that context. A workspace
 * holds nothing between calls, so one buffer as large as the largest need
 * serves every op of a model; it must not overlap the op's other buffers.
 * Sizes never shrink as n grows, so a workspace sized for the largest batch
 * serves every smaller one.
 * All ops on one context run in order on one stream (CUDA); results are
 * visible to the host after sync().
 *
 * Every op returns FS_OK or an error status; an op a backend lacks returns
 * FS_ERR_UNSUPPORTED. Output buffers are fully overwritten unless an op says it
 * accumulates.
 */
#ifndef FS_BACKEND_H
#define FS_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "status.h"

/* 3×3 (pad 1) or 1×1 (pad 0) convolution, stride 1: output H×W equals input H×W. */
typedef struct {
    int n, cin, cout, h, w;
    int k; /* 3 or 1 */
} fs_conv_shape;

/* 2×2 transposed convolution, stride 2: input h×w, output 2h×2w. */
typedef struct {
    int n, cin, cout, h, w;
} fs_convt_shape;

/* Adam hyper-parameters (PyTorch's Adam, no weight decay) plus FedProx's proximal
 * term: the gradient used is g + mu·(w − w_ref). mu = 0 ignores w_ref. */
typedef struct {
    float lr, beta1, beta2, eps, mu;
} fs_adam_hp;

/* One ChaCha20 mask for chacha_mask: a 32-byte key, a 12-byte nonce and
 * whether the mask is added (+1) or subtracted (−1). Any other sign is
 * FS_ERR_ARG. */
typedef struct fs_mask_key {
    uint8_t key[32];
    uint8_t nonce[12];
    int32_t sign;
} fs_mask_key;

typedef struct fs_backend {
    const char *name; /* "cpu" or "cuda" */

    /* --- context and memory --------------------------------------------- */
    /* Create a context (CPU: thread settings; CUDA: stream, cuBLAS handle).
     * device: CUDA ordinal, ignored by the CPU. */
    fs_status (*ctx_init)(void **ctx, int device);
    void (*ctx_free)(void *ctx); /* NULL-safe */
    fs_status (*alloc)(void *ctx, void **p, size_t bytes); /* zero-filled */
    void (*free)(void *ctx, void *p);                      /* NULL-safe */
    fs_status (*upload)(void *ctx, void *dst, const void *src_host, size_t bytes);
    fs_status (*download)(void *ctx, void *dst_host, const void *src, size_t bytes);
    fs_status (*memzero)(void *ctx, void *p, size_t bytes);
    fs_status (*sync)(void *ctx);

    /* --- convolution (k = 3 pad 1, or k = 1 pad 0) ---------------------- */
    /* Scratch bytes each conv op needs for this shape (0 allowed). */
    size_t (*conv_ws_bytes)(void *ctx, const fs_conv_shape *s);
    /* y[n,co,y,x] = b[co] + Σ_{ci,i,j} w[co,ci,i,j]·x[n,ci,y+i−p,x+j−p] (zero padding) */
    fs_status (*conv_fwd)(void *ctx, const fs_conv_shape *s, const float *x, const float *w,
                          const float *b, float *y, void *ws);
    /* dx = ∂L/∂x given dy = ∂L/∂y (overwrites dx) */
    fs_status (*conv_bwd_data)(void *ctx, const fs_conv_shape *s, const float *dy,
                               const float *w, float *dx, void *ws);
    /* dw = Σ_n ∂L/∂w, db = Σ_{n,y,x} dy (both overwritten) */
    fs_status (*conv_bwd_filter)(void *ctx, const fs_conv_shape *s, const float *x,
                                 const float *dy, float *dw, float *db, void *ws);

    /* --- 2×2 stride-2 transposed convolution ---------------------------- */
    /* Scratch bytes each transposed-conv op needs for this shape (0 allowed);
     * one buffer of this size serves all three. */
    size_t (*convt_ws_bytes)(void *ctx, const fs_convt_shape *s);
    /* y[n,co,2i+a,2j+c] = b[co] + Σ_ci x[n,ci,i,j]·w[ci,co,a,c] */
    fs_status (*convt_fwd)(void *ctx, const fs_convt_shape *s, const float *x, const float *w,
                           const float *b, float *y, void *ws);
    /* dx[n,ci,i,j] = Σ_{co,a,c} w[ci,co,a,c]·dy[n,co,2i+a,2j+c] (overwrites dx) */
    fs_status (*convt_bwd_data)(void *ctx, const fs_convt_shape *s, const float *dy,
                                const float *w, float *dx, void *ws);
    /* dw[ci,co,a,c] = Σ_{n,i,j} x[n,ci,i,j]·dy[n,co,2i+a,2j+c], db = Σ_{n,y,x} dy
     * (both overwritten) */
    fs_status (*convt_bwd_filter)(void *ctx, const fs_convt_shape *s, const float *x,
                                  const float *dy, float *dw, float *db, void *ws);

    /* --- instance norm (affine) + LeakyReLU, fused ----------------------- */
    /* Per (n,c) plane of hw elements: mean, biased variance var,
     * rstd = 1/sqrt(var + eps), z = gamma[c]·(x − mean)·rstd + beta[c],
     * y = z > 0 ? z : slope·z. Saves mean[n*C+c] and rstd[n*C+c] for backward.
     * Needs no scratch. */
    fs_status (*norm_act_fwd)(void *ctx, int n, int c, int hw, const float *x,
                              const float *gamma, const float *beta, float eps, float slope,
                              float *y, float *mean, float *rstd);
    /* Scratch bytes norm_act_bwd needs for n images of c planes of hw values
     * (0 allowed: ws may then be NULL). */
    size_t (*norm_ws_bytes)(void *ctx, int n, int c, int hw);
    /* Given x, the saved mean/rstd and dy: dx (overwritten), dgamma and dbeta
     * (overwritten, summed over n). The LeakyReLU mask is recomputed from z. */
    fs_status (*norm_act_bwd)(void *ctx, int n, int c, int hw, const float *x,
                              const float *gamma, const float *beta, float slope,
                              const float *mean, const float *rstd, const float *dy,
                              float *dx, float *dgamma, float *dbeta, void *ws);

    /* --- 2×2 max-pool, stride 2 (h, w even) ------------------------------ */
    fs_status (*maxpool_fwd)(void *ctx, int n, int c, int h, int w, const float *x, float *y);
    /* dx overwritten: each window's dy goes to its first maximum in row-major
     * order (top-left, top-right, bottom-left, bottom-right); others get 0. */
    fs_status (*maxpool_bwd)(void *ctx, int n, int c, int h, int w, const float *x,
                             const float *dy, float *dx);

    /* --- channel concatenation y = [a ; b] (a first, the skip b second) -- */
    fs_status (*concat_fwd)(void *ctx, int n, int ca, int cb, int hw, const float *a,
                            const float *b, float *y);
    /* da = dy[:, :ca] (overwritten); db += dy[:, ca:] (ACCUMULATES: the skip
     * tensor also feeds the max-pool, whose gradient is already in db). */
    fs_status (*concat_bwd)(void *ctx, int n, int ca, int cb, int hw, const float *dy,
                            float *da, float *db);

    /* --- loss: softmax + cross-entropy + soft Dice, forward and backward -- */
    size_t (*loss_ws_bytes)(void *ctx, int n, int k, int hw);
    /* p = softmax over the k channels of logits (N×K×HW); y = one-hot(labels).
     * CE   = −(1/(N·HW)) Σ log p[label]
     * I_k  = Σ_{n,i} p·y,  D_k = Σ_{n,i} p + Σ_{n,i} y
     * dice = (1/K) Σ_k (2 I_k + smooth) / (D_k + smooth)
     * loss = CE + 1 − dice, written to loss[0] (backend memory, one float).
     * dlogits = ∂loss/∂logits (overwritten). Labels ≥ k are an error on the CPU
     * (FS_ERR_ARG); the CUDA backend assumes they were validated on upload. */
    fs_status (*loss_fwd_bwd)(void *ctx, int n, int k, int hw, const float *logits,
                              const uint8_t *labels, float smooth, float *loss,
                              float *dlogits, void *ws);

    /* --- Adam (+ optional proximal term) over flat vectors --------------- */
    /* state is backend memory, 1 float: the step count t, incremented by this
     * call (so the step can be captured in a CUDA graph). With t' = t + 1 and
     * g' = g + mu·(w − w_ref):
     *   m = b1·m + (1−b1)·g'; v = b2·v + (1−b2)·g'^2
     *   w −= lr · (m / (1 − b1^t')) / (sqrt(v / (1 − b2^t')) + eps)
     * exactly PyTorch's torch.optim.Adam. w_ref may be NULL when mu == 0. */
    fs_status (*adam_step)(void *ctx, size_t count, float *w, const float *g, float *m,
                           float *v, const float *w_ref, fs_adam_hp hp, float *state);

    /* --- CUDA graphs (FS_ERR_UNSUPPORTED on the CPU) ---------------------- */
    /* Between capture_begin and capture_end every op on ctx is recorded, not
     * run; replay() runs the recorded sequence again on the same buffers. */
    fs_status (*graph_capture_begin)(void *ctx);
    fs_status (*graph_capture_end)(void *ctx);
    fs_status (*graph_replay)(void *ctx);

    /* --- aggregation ----------------------------------------------------- */
    /* The FedAvg fold: sum[i] += w·chunk[i] for i < count (ACCUMULATES).
     * Each element is one fp32 multiply, rounded, then one fp32 add, rounded
     * (never a fused multiply-add): the arithmetic of aggregator/fedavg.c,
     * so every backend gives the same bits (tolerance: exact, checked by
     * tests/test_cuda_parity.c and tests/test_agg_fold.c). sum and chunk must
     * not overlap. Values are not screened: rejecting NaN / Inf is the
     * caller's job (aggregator/round_sum.c does it before uploading). */
    fs_status (*fold)(void *ctx, size_t count, float *sum, const float *chunk, float w);

    /* --- aggregator arithmetic (kernels/cpu/cpu_aggops.c, cuda_aggops.cu) --
     * Flat vectors of `count` elements. "xs" arguments are HOST arrays of k
     * backend pointers (k ≥ 0; any k, split into launches internally), so k
     * updates are streamed in one pass and the accumulator is read and
     * written once per pass instead of once per update. An accumulator must
     * not overlap its inputs. Ops whose result depends on the position take
     * the element offset of the chunk within the whole vector, so a vector
     * processed in chunks gives the same result as in one call. Exactness:
     * the integer ops, fold_many, dequant, scale and l2_norm_sq give the same
     * bits on every backend; gauss_add agrees within FS_TOL_GAUSS_ADD
     * (kernels/tolerances.h). docs/kernels.md has the details. */

    /* fold of k chunks in one pass: for j = 0..k−1 in order,
     * sum[i] = sum[i] + w[j]·chunks[j][i], each product and sum rounded to
     * fp32 (no FMA) — bit for bit k successive fold calls. w: host, k floats. */
    fs_status (*fold_many)(void *ctx, size_t count, float *sum, const float *const *chunks,
                           const float *w, int k);
    /* Masked-update sum: acc[i] = acc[i] + Σ_j xs[j][i] mod 2^32 (ACCUMULATES). */
    fs_status (*u32_sum)(void *ctx, size_t count, uint32_t *acc, const uint32_t *const *xs,
                         int k);
    /* Mask expansion: for each of the k keys (host array),
     * acc[i] = acc[i] ± M[offset + i] mod 2^32 (sign from the key), where M is
     * the ChaCha20-IETF (RFC 8439) keystream of (key, nonce) from block
     * counter 0 read as little-endian uint32 words (libsodium's
     * crypto_stream_chacha20_ietf). offset + count ≤ 2^36 (32-bit block
     * counter), else FS_ERR_ARG. WARNING: the keys are secrets; the op keeps
     * no copy on the host (its decoded copies are wiped), but on CUDA they
     * travel as kernel parameters, which the driver does not wipe. */
    fs_status (*chacha_mask)(void *ctx, size_t count, uint32_t *acc, uint64_t offset,
                             const fs_mask_key *keys, int k);
    /* Dequantisation: out[i] = ((float)(int32_t)sum[i] · scale) · inv_w, the
     * int → float conversion rounding to nearest and each product rounded to
     * fp32 (scale = 2^-f, inv_w = 1/Σw, or 1). out is overwritten. */
    fs_status (*dequant)(void *ctx, size_t count, float *out, const uint32_t *sum, float scale,
                         float inv_w);
    /* Scratch bytes l2_norm_sq needs for k vectors of count elements. */
    size_t (*l2_ws_bytes)(void *ctx, size_t count, int k);
    /* out[j] = Σ_i xs[j][i]² in double over the fixed reduction tree of
     * docs/kernels.md (out: backend memory, k doubles, overwritten). Every
     * backend follows the same tree, so the result is the same bits on every
     * run and every backend. */
    fs_status (*l2_norm_sq)(void *ctx, size_t count, const float *const *xs, int k, double *out,
                            void *ws);
    /* L2 clipping: xs[j][i] = xs[j][i] · s[j] (s: host, k floats). */
    fs_status (*scale)(void *ctx, size_t count, float *const *xs, const float *s, int k);
    /* Gaussian noise: acc[i] = acc[i] + (float)(stddev · g(offset + i)),
     * g(n) = fs_philox_gauss(seed, stream, n) (kernels/philox.h); the product
     * in double, rounded to fp32, then an fp32 sum (ACCUMULATES). */
    fs_status (*gauss_add)(void *ctx, size_t count, float *acc, uint64_t offset, double stddev,
                           uint64_t seed, uint64_t stream);
} fs_backend;

/* The CPU backend (always present). */
const fs_backend *fs_backend_cpu(void);

/* The CUDA backend, or NULL when fedseg was built without CUDA. Use
 * fs_backend_cuda_available() to know whether a device exists at run time. */
const fs_backend *fs_backend_cuda(void);
int fs_backend_cuda_available(void);

/* By name: "cpu", "cuda", or "auto" (CUDA when available, else CPU).
 * Returns NULL (and sets *why to a sentence) when the name is unknown or
 * CUDA is requested but not built / no device is present. */
const fs_backend *fs_backend_get(const char *name, const char **why);

/* Set how many CPU threads the CPU backend uses (OpenMP); 0 = all cores. */
void fs_backend_cpu_set_threads(int threads);

#endif
