/*
 * kernels/cuda/cuda_aggops.cu — the aggregator's arithmetic on the GPU
 * (kernels/backend.h, "aggregator arithmetic"): fold_many, u32_sum,
 * chacha_mask, dequant, l2_norm_sq, scale, gauss_add. Same semantics as the
 * CPU reference (kernels/cpu/cpu_aggops.c); every op is asynchronous on the
 * context's stream like the rest of the backend.
 *
 * Bandwidth: the sums take k inputs per launch (a batch of up to FS_CU_BATCH
 * device pointers passed by value as a kernel parameter), so each input is
 * streamed once and the accumulator read and written once per batch: for
 * 100 updates the accumulator adds 2 % to the bytes read. Inputs are read
 * with 16-byte streaming loads (__ldcs: they are used once), 8 loads in
 * flight per thread; grid-stride loops with enough blocks to fill the
 * device. A scalar kernel handles the last count % 4 elements and buffers
 * that are not 16-byte aligned.
 *
 * Exactness (tests/test_aggops_cuda.c compares with the CPU):
 *   - u32_sum, chacha_mask: integer arithmetic, the same bits; chacha_mask
 *     runs the block function of kernels/chacha20.h;
 *   - fold_many, dequant, scale: __fmul_rn / __fadd_rn / __int2float_rn spell
 *     out the CPU's roundings (no FMA), the same bits;
 *   - l2_norm_sq: the fixed tree of kernels/aggops.h (one 256-thread block
 *     per segment, the halving tree in shared memory, a second kernel over
 *     the partials), double arithmetic with exact squares: the same bits;
 *   - gauss_add: one thread per Philox block (4 outputs), libdevice's double
 *     log / sincos, which may differ from glibc in the last bit:
 *     FS_TOL_GAUSS_ADD.
 */
#include <string.h>
#include "cuda_internal.h"

/* Static inline helpers, usable as C++ (no extern "C" needed). */
#include "kernels/aggops.h"
#include "kernels/chacha20.h"
#include "kernels/philox.h"

#define FS_CU_BATCH 128 /* input pointers per launch (1 KiB of parameters)     */
#define FS_CU_KEYS 64   /* ChaCha keys per launch (3 KiB of parameters)         */

/* k ≤ FS_CU_BATCH device pointers (and per-input factors), by value. */
struct u32_batch {
    const uint32_t *p[FS_CU_BATCH];
    int k;
};
struct f32_batch {
    const float *p[FS_CU_BATCH];
    float w[FS_CU_BATCH];
    int k;
};
struct f32_mut_batch {
    float *p[FS_CU_BATCH];
    float w[FS_CU_BATCH];
    int k;
};
/* Decoded ChaCha keys. WARNING: secrets; the host copy is wiped after launch. */
struct key_batch {
    uint32_t kw[FS_CU_KEYS][8];
    uint32_t nw[FS_CU_KEYS][3];
    int32_t sign[FS_CU_KEYS];
    int k;
};

typedef unsigned long long u64;

#define GRID_STRIDE(i, n) \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

static bool all_aligned16(const void *const *p, int k)
{
    for (int j = 0; j < k; j++)
        if (!fs_cuda_aligned16(p[j])) return false;
    return true;
}

/* Common argument checks of the batched ops; *c_out is the context. */
static fs_status check_batch(void *ctx, size_t count, const void *acc, const void *const *xs, int k,
                             const char *op, fs_cuda_ctx **c_out)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    *c_out = c;
    if (!c) return FS_BAD(FS_ERR_ARG, op);
    if (k < 0) return FS_BAD(FS_ERR_ARG, "negative input count");
    if (count == 0 || k == 0) return FS_OK;
    if (!acc || !xs) return FS_BAD(FS_ERR_ARG, "NULL buffer");
    for (int j = 0; j < k; j++)
        if (!xs[j]) return FS_BAD(FS_ERR_ARG, "NULL input buffer");
    return FS_OK;
}

/* ---- u32_sum ------------------------------------------------------------ */

__device__ __forceinline__ void add4(uint4 &s, const uint4 x)
{
    s.x += x.x; s.y += x.y; s.z += x.z; s.w += x.w;
}

/* acc4[i] += Σ_j b.p[j][i] over uint4 i < n4. */
__global__ void u32_sum4_kernel(u64 n4, uint4 *__restrict__ acc, const u32_batch b)
{
    GRID_STRIDE(i, n4) {
        uint4 s = acc[i];
        int j = 0;
        for (; j + 8 <= b.k; j += 8) {
            uint4 x[8];
#pragma unroll
            for (int q = 0; q < 8; q++) x[q] = __ldcs((const uint4 *)b.p[j + q] + i);
#pragma unroll
            for (int q = 0; q < 8; q++) add4(s, x[q]);
        }
        for (; j < b.k; j++) add4(s, __ldcs((const uint4 *)b.p[j] + i));
        acc[i] = s;
    }
}

/* acc[start + i] += Σ_j b.p[j][start + i] for i < n. */
__global__ void u32_sum1_kernel(u64 start, u64 n, uint32_t *__restrict__ acc, const u32_batch b)
{
    GRID_STRIDE(i, n) {
        uint32_t s = acc[start + i];
        for (int j = 0; j < b.k; j++) s += b.p[j][start + i];
        acc[start + i] = s;
    }
}

fs_status fs_cuda_u32_sum(void *ctx, size_t count, uint32_t *acc, const uint32_t *const *xs, int k)
{
    fs_cuda_ctx *c;
    FS_TRY(check_batch(ctx, count, acc, (const void *const *)xs, k, "u32_sum: NULL context", &c));
    if (count == 0 || k == 0) return FS_OK;
    FS_TRY(fs_cuda_enter(c));
    const bool vec = fs_cuda_aligned16(acc) && all_aligned16((const void *const *)xs, k);
    const size_t n4 = vec ? count / 4 : 0;
    for (int g = 0; g < k; g += FS_CU_BATCH) {
        u32_batch b;
        b.k = k - g < FS_CU_BATCH ? k - g : FS_CU_BATCH;
        for (int j = 0; j < b.k; j++) b.p[j] = xs[g + j];
        if (n4) {
            u32_sum4_kernel<<<fs_cuda_blocks(n4, 256), 256, 0, c->stream>>>(n4, (uint4 *)acc, b);
            FS_LAUNCHED();
        }
        if (n4 * 4 < count) {
            const size_t rest = count - n4 * 4;
            u32_sum1_kernel<<<fs_cuda_blocks(rest, 256), 256, 0, c->stream>>>(n4 * 4, rest, acc, b);
            FS_LAUNCHED();
        }
    }
    return FS_OK;
}

/* ---- fold_many ---------------------------------------------------------- */

__device__ __forceinline__ void fold4(float4 &s, const float4 x, float w)
{
    s.x = __fadd_rn(s.x, __fmul_rn(w, x.x));
    s.y = __fadd_rn(s.y, __fmul_rn(w, x.y));
    s.z = __fadd_rn(s.z, __fmul_rn(w, x.z));
    s.w = __fadd_rn(s.w, __fmul_rn(w, x.w));
}

/* sum4[i] = ((sum4[i] + w0·x0[i]) + w1·x1[i]) + ... over float4 i < n4. */
__global__ void fold_many4_kernel(u64 n4, float4 *__restrict__ sum, const f32_batch b)
{
    GRID_STRIDE(i, n4) {
        float4 s = sum[i];
        int j = 0;
        for (; j + 8 <= b.k; j += 8) {
            float4 x[8];
#pragma unroll
            for (int q = 0; q < 8; q++) x[q] = __ldcs((const float4 *)b.p[j + q] + i);
#pragma unroll
            for (int q = 0; q < 8; q++) fold4(s, x[q], b.w[j + q]);
        }
        for (; j < b.k; j++) fold4(s, __ldcs((const float4 *)b.p[j] + i), b.w[j]);
        sum[i] = s;
    }
}

__global__ void fold_many1_kernel(u64 start, u64 n, float *__restrict__ sum, const f32_batch b)
{
    GRID_STRIDE(i, n) {
        float s = sum[start + i];
        for (int j = 0; j < b.k; j++) s = __fadd_rn(s, __fmul_rn(b.w[j], b.p[j][start + i]));
        sum[start + i] = s;
    }
}

fs_status fs_cuda_fold_many(void *ctx, size_t count, float *sum, const float *const *chunks,
                            const float *w, int k)
{
    fs_cuda_ctx *c;
    FS_TRY(check_batch(ctx, count, sum, (const void *const *)chunks, k,
                       "fold_many: NULL context", &c));
    if (count == 0 || k == 0) return FS_OK;
    if (!w) return FS_BAD(FS_ERR_ARG, "fold_many: NULL weights");
    FS_TRY(fs_cuda_enter(c));
    const bool vec = fs_cuda_aligned16(sum) && all_aligned16((const void *const *)chunks, k);
    const size_t n4 = vec ? count / 4 : 0;
    for (int g = 0; g < k; g += FS_CU_BATCH) {
        f32_batch b;
        b.k = k - g < FS_CU_BATCH ? k - g : FS_CU_BATCH;
        for (int j = 0; j < b.k; j++) {
            b.p[j] = chunks[g + j];
            b.w[j] = w[g + j];
        }
        if (n4) {
            fold_many4_kernel<<<fs_cuda_blocks(n4, 256), 256, 0, c->stream>>>(n4, (float4 *)sum, b);
            FS_LAUNCHED();
        }
        if (n4 * 4 < count) {
            const size_t rest = count - n4 * 4;
            fold_many1_kernel<<<fs_cuda_blocks(rest, 256), 256, 0, c->stream>>>(n4 * 4, rest, sum, b);
            FS_LAUNCHED();
        }
    }
    return FS_OK;
}

/* ---- chacha_mask --------------------------------------------------------- */

/*
 * One thread per keystream block blk = first + t: the words of the block
 * that fall in [offset, offset + count) are loaded, every key's block is
 * added or subtracted, and they are stored back. vec: acc is 16-byte aligned
 * and offset % 4 == 0, so a block wholly inside the range is 4 uint4 loads.
 */
__global__ void chacha_mask_kernel(u64 count, uint32_t *__restrict__ acc, u64 offset, u64 first,
                                   u64 nblocks, const key_batch kb, bool vec)
{
    GRID_STRIDE(t, nblocks) {
        const u64 blk = first + t;
        const long long base = (long long)(blk * 16) - (long long)offset; /* acc index of word 0 */
        const bool full = base >= 0 && (u64)base + 16 <= count;
        uint32_t a[16];
        if (full && vec) {
            const uint4 *p = (const uint4 *)(acc + base);
#pragma unroll
            for (int q = 0; q < 4; q++) {
                uint4 v = p[q];
                a[4 * q] = v.x; a[4 * q + 1] = v.y; a[4 * q + 2] = v.z; a[4 * q + 3] = v.w;
            }
        } else {
#pragma unroll
            for (int w = 0; w < 16; w++) {
                const long long i = base + w;
                a[w] = (i >= 0 && (u64)i < count) ? acc[i] : 0u;
            }
        }
        for (int j = 0; j < kb.k; j++) {
            /* Copy the key into registers first: taking the address of the
             * parameter would make the compiler copy all of kb to local memory. */
            uint32_t kw[8], nw[3], ks[16];
#pragma unroll
            for (int w = 0; w < 8; w++) kw[w] = kb.kw[j][w];
#pragma unroll
            for (int w = 0; w < 3; w++) nw[w] = kb.nw[j][w];
            fs_chacha20_block(kw, (uint32_t)blk, nw, ks);
            if (kb.sign[j] > 0) {
#pragma unroll
                for (int w = 0; w < 16; w++) a[w] += ks[w];
            } else {
#pragma unroll
                for (int w = 0; w < 16; w++) a[w] -= ks[w];
            }
        }
        if (full && vec) {
            uint4 *p = (uint4 *)(acc + base);
#pragma unroll
            for (int q = 0; q < 4; q++)
                p[q] = make_uint4(a[4 * q], a[4 * q + 1], a[4 * q + 2], a[4 * q + 3]);
        } else {
#pragma unroll
            for (int w = 0; w < 16; w++) {
                const long long i = base + w;
                if (i >= 0 && (u64)i < count) acc[i] = a[w];
            }
        }
    }
}

fs_status fs_cuda_chacha_mask(void *ctx, size_t count, uint32_t *acc, uint64_t offset,
                              const fs_mask_key *keys, int k)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c) return FS_BAD(FS_ERR_ARG, "chacha_mask: NULL context");
    if (k < 0) return FS_BAD(FS_ERR_ARG, "chacha_mask: negative key count");
    if (count == 0 || k == 0) return FS_OK;
    if (!acc || !keys) return FS_BAD(FS_ERR_ARG, "chacha_mask: NULL buffer");
    const uint64_t limit = (uint64_t)1 << 36;
    if (offset > limit || count > limit - offset)
        return FS_BAD(FS_ERR_ARG, "chacha_mask: range past the 2^32-block ChaCha20-IETF stream");
    for (int j = 0; j < k; j++)
        if (keys[j].sign != 1 && keys[j].sign != -1)
            return FS_BAD(FS_ERR_ARG, "chacha_mask: a key's sign is not +1 or -1");
    FS_TRY(fs_cuda_enter(c));
    const uint64_t first = offset / 16, last = (offset + count - 1) / 16;
    const uint64_t nblocks = last - first + 1;
    const bool vec = fs_cuda_aligned16(acc) && offset % 4 == 0;
    fs_status st = FS_OK;
    key_batch kb;
    for (int g = 0; g < k && st == FS_OK; g += FS_CU_KEYS) {
        kb.k = k - g < FS_CU_KEYS ? k - g : FS_CU_KEYS;
        for (int j = 0; j < kb.k; j++) {
            fs_chacha20_load_key(keys[g + j].key, keys[g + j].nonce, kb.kw[j], kb.nw[j]);
            kb.sign[j] = keys[g + j].sign;
        }
        /* 128 threads: 16 state + 16 accumulator words per thread. */
        chacha_mask_kernel<<<fs_cuda_blocks(nblocks, 128), 128, 0, c->stream>>>(
            count, acc, offset, first, nblocks, kb, vec);
        cudaError_t e = cudaGetLastError(); /* the parameters were copied at launch */
        if (e != cudaSuccess) st = fs_cuda_fail(e, "chacha_mask_kernel", __FILE__, __LINE__);
    }
    explicit_bzero(&kb, sizeof kb);
    return st;
}

/* ---- dequant ------------------------------------------------------------- */

__device__ __forceinline__ float dq(uint32_t u, float scale, float inv_w)
{
    return __fmul_rn(__fmul_rn(__int2float_rn((int)u), scale), inv_w);
}

__global__ void dequant4_kernel(u64 n4, float4 *__restrict__ out, const uint4 *__restrict__ sum,
                                float scale, float inv_w)
{
    GRID_STRIDE(i, n4) {
        const uint4 s = __ldcs(sum + i);
        out[i] = make_float4(dq(s.x, scale, inv_w), dq(s.y, scale, inv_w), dq(s.z, scale, inv_w),
                             dq(s.w, scale, inv_w));
    }
}

__global__ void dequant1_kernel(u64 n, float *__restrict__ out, const uint32_t *__restrict__ sum,
                                float scale, float inv_w)
{
    GRID_STRIDE(i, n) out[i] = dq(sum[i], scale, inv_w);
}

fs_status fs_cuda_dequant(void *ctx, size_t count, float *out, const uint32_t *sum, float scale,
                          float inv_w)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c) return FS_BAD(FS_ERR_ARG, "dequant: NULL context");
    if (count == 0) return FS_OK;
    if (!out || !sum) return FS_BAD(FS_ERR_ARG, "dequant: NULL buffer");
    FS_TRY(fs_cuda_enter(c));
    const size_t n4 = fs_cuda_aligned16(out) && fs_cuda_aligned16(sum) ? count / 4 : 0;
    if (n4) {
        dequant4_kernel<<<fs_cuda_blocks(n4, 256), 256, 0, c->stream>>>(
            n4, (float4 *)out, (const uint4 *)sum, scale, inv_w);
        FS_LAUNCHED();
    }
    if (n4 * 4 < count) {
        const size_t rest = count - n4 * 4;
        dequant1_kernel<<<fs_cuda_blocks(rest, 256), 256, 0, c->stream>>>(
            rest, out + n4 * 4, sum + n4 * 4, scale, inv_w);
        FS_LAUNCHED();
    }
    return FS_OK;
}

/* ---- l2_norm_sq ---------------------------------------------------------- */

size_t fs_cuda_l2_ws_bytes(void *ctx, size_t count, int k)
{
    (void)ctx;
    return k > 0 ? (size_t)k * FS_L2_NSEG(count) * sizeof(double) : 0;
}

__device__ __forceinline__ double sq(float v) { return __dmul_rn((double)v, (double)v); }

/* The lanes' halving (step 3 of kernels/aggops.h) over sh[FS_L2_LANES]. */
__device__ __forceinline__ double halving(double *sh, double s)
{
    const int t = threadIdx.x;
    sh[t] = s;
    __syncthreads();
    for (int h = FS_L2_LANES / 2; h >= 1; h >>= 1) {
        if (t < h) sh[t] = __dadd_rn(sh[t], sh[t + h]);
        __syncthreads();
    }
    return sh[0];
}

/* Steps 2–3 for segment blockIdx.x of vector blockIdx.y (FS_L2_LANES threads). */
__global__ void __launch_bounds__(FS_L2_LANES)
l2_seg_kernel(u64 count, u64 nseg, const f32_batch b, double *__restrict__ part, bool vec)
{
    __shared__ double sh[FS_L2_LANES];
    const int j = blockIdx.y;
    const u64 seg = blockIdx.x;
    const u64 start = seg * FS_L2_SEG;
    const u64 n = count - start < (u64)FS_L2_SEG ? count - start : (u64)FS_L2_SEG;
    const float *x = b.p[j] + start;
    const int t = threadIdx.x;
    double s = 0.0;
    if (vec && n == FS_L2_SEG) {
        float4 v[FS_L2_SEG / FS_L2_STEP];
#pragma unroll
        for (int q = 0; q < FS_L2_SEG / FS_L2_STEP; q++)
            v[q] = __ldcs((const float4 *)(x + (u64)q * FS_L2_STEP) + t);
#pragma unroll
        for (int q = 0; q < FS_L2_SEG / FS_L2_STEP; q++) {
            s = __dadd_rn(s, sq(v[q].x));
            s = __dadd_rn(s, sq(v[q].y));
            s = __dadd_rn(s, sq(v[q].z));
            s = __dadd_rn(s, sq(v[q].w));
        }
    } else {
        for (u64 q = 0; q * FS_L2_STEP < n; q++)
            for (int e = 0; e < 4; e++) {
                const u64 i = q * FS_L2_STEP + 4 * (u64)t + e;
                if (i < n) s = __dadd_rn(s, sq(x[i]));
            }
    }
    const double r = halving(sh, s);
    if (t == 0) part[(u64)j * nseg + seg] = r;
}

/* Step 4 for vector blockIdx.x of the batch: out[j] from its nseg partials. */
__global__ void __launch_bounds__(FS_L2_LANES)
l2_final_kernel(u64 nseg, const double *__restrict__ part, double *__restrict__ out)
{
    __shared__ double sh[FS_L2_LANES];
    const int j = blockIdx.x;
    const double *p = part + (u64)j * nseg;
    double s = 0.0;
    for (u64 i = threadIdx.x; i < nseg; i += FS_L2_LANES) s = __dadd_rn(s, p[i]);
    const double r = halving(sh, s);
    if (threadIdx.x == 0) out[j] = r;
}

fs_status fs_cuda_l2_norm_sq(void *ctx, size_t count, const float *const *xs, int k, double *out,
                             void *ws)
{
    fs_cuda_ctx *c;
    FS_TRY(check_batch(ctx, count, out, (const void *const *)xs, k, "l2_norm_sq: NULL context", &c));
    if (k == 0) return FS_OK;
    if (!out) return FS_BAD(FS_ERR_ARG, "l2_norm_sq: NULL output");
    const size_t nseg = FS_L2_NSEG(count);
    FS_TRY(fs_cuda_enter(c));
    if (nseg == 0) { /* empty vectors: norm 0 */
        FS_CU(cudaMemsetAsync(out, 0, (size_t)k * sizeof(double), c->stream));
        return FS_OK;
    }
    if (!ws) return FS_BAD(FS_ERR_ARG, "l2_norm_sq: NULL workspace");
    if (nseg > 0x7fffffffu) return FS_BAD(FS_ERR_ARG, "l2_norm_sq: vector too long");
    const bool vec = all_aligned16((const void *const *)xs, k);
    double *part = (double *)ws;
    for (int g = 0; g < k; g += FS_CU_BATCH) {
        f32_batch b;
        b.k = k - g < FS_CU_BATCH ? k - g : FS_CU_BATCH;
        for (int j = 0; j < b.k; j++) {
            b.p[j] = xs[g + j];
            b.w[j] = 0.0f;
        }
        double *pg = part + (size_t)g * nseg;
        l2_seg_kernel<<<dim3((unsigned)nseg, (unsigned)b.k), FS_L2_LANES, 0, c->stream>>>(
            count, nseg, b, pg, vec);
        FS_LAUNCHED();
        l2_final_kernel<<<(unsigned)b.k, FS_L2_LANES, 0, c->stream>>>(nseg, pg, out + g);
        FS_LAUNCHED();
    }
    return FS_OK;
}

/* ---- scale ----------------------------------------------------------------- */

/* Vector blockIdx.y of the batch: x4[i] *= s over float4 i < n4. */
__global__ void scale4_kernel(u64 n4, const f32_mut_batch b)
{
    float4 *x = (float4 *)b.p[blockIdx.y];
    const float s = b.w[blockIdx.y];
    GRID_STRIDE(i, n4) {
        float4 v = x[i];
        v.x = __fmul_rn(v.x, s); v.y = __fmul_rn(v.y, s);
        v.z = __fmul_rn(v.z, s); v.w = __fmul_rn(v.w, s);
        x[i] = v;
    }
}

__global__ void scale1_kernel(u64 start, u64 n, const f32_mut_batch b)
{
    float *x = b.p[blockIdx.y] + start;
    const float s = b.w[blockIdx.y];
    GRID_STRIDE(i, n) x[i] = __fmul_rn(x[i], s);
}

fs_status fs_cuda_scale(void *ctx, size_t count, float *const *xs, const float *s, int k)
{
    fs_cuda_ctx *c;
    FS_TRY(check_batch(ctx, count, s, (const void *const *)xs, k, "scale: NULL context", &c));
    if (count == 0 || k == 0) return FS_OK;
    FS_TRY(fs_cuda_enter(c));
    const bool vec = all_aligned16((const void *const *)xs, k);
    const size_t n4 = vec ? count / 4 : 0;
    for (int g = 0; g < k; g += FS_CU_BATCH) {
        f32_mut_batch b;
        b.k = k - g < FS_CU_BATCH ? k - g : FS_CU_BATCH;
        for (int j = 0; j < b.k; j++) {
            b.p[j] = xs[g + j];
            b.w[j] = s[g + j];
        }
        if (n4) {
            scale4_kernel<<<dim3(fs_cuda_blocks(n4, 256), (unsigned)b.k), 256, 0, c->stream>>>(n4, b);
            FS_LAUNCHED();
        }
        if (n4 * 4 < count) {
            const size_t rest = count - n4 * 4;
            scale1_kernel<<<dim3(fs_cuda_blocks(rest, 256), (unsigned)b.k), 256, 0, c->stream>>>(
                n4 * 4, rest, b);
            FS_LAUNCHED();
        }
    }
    return FS_OK;
}

/* ---- gauss_add ------------------------------------------------------------- */

/*
 * One thread per Philox block q = first + t (elements 4q..4q+3 of the whole
 * vector): the four normals of fs_philox_gauss for that block from one
 * Philox call and two Box-Muller pairs, then acc += (float)(stddev·g) for
 * the elements inside [offset, offset + count). vec: acc 16-byte aligned and
 * offset % 4 == 0, so a block wholly inside is one float4.
 */
__global__ void gauss_add_kernel(u64 count, float *__restrict__ acc, u64 offset, u64 first,
                                 u64 nq, double stddev, uint32_t k0, uint32_t k1, uint32_t s0,
                                 uint32_t s1, bool vec)
{
    GRID_STRIDE(t, nq) {
        const u64 q = first + t;
        const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), s0, s1};
        const uint32_t key[2] = {k0, k1};
        uint32_t x[4];
        fs_philox4x32_10(ctr, key, x);
        double g[4];
#pragma unroll
        for (int p = 0; p < 2; p++) {
            const double u = fs_philox_u01(x[2 * p]), v = fs_philox_u01(x[2 * p + 1]);
            const double r = sqrt(-2.0 * log(u));
            const double a = 6.283185307179586476925286766559 * v;
            double sn, cs;
            sincos(a, &sn, &cs);
            g[2 * p] = r * cs;
            g[2 * p + 1] = r * sn;
        }
        float n[4];
#pragma unroll
        for (int e = 0; e < 4; e++) n[e] = __double2float_rn(__dmul_rn(stddev, g[e]));
        const long long base = (long long)(q * 4) - (long long)offset;
        if (vec && base >= 0 && (u64)base + 4 <= count) {
            float4 *p = (float4 *)(acc + base);
            float4 v = *p;
            v.x = __fadd_rn(v.x, n[0]); v.y = __fadd_rn(v.y, n[1]);
            v.z = __fadd_rn(v.z, n[2]); v.w = __fadd_rn(v.w, n[3]);
            *p = v;
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const long long i = base + e;
                if (i >= 0 && (u64)i < count) acc[i] = __fadd_rn(acc[i], n[e]);
            }
        }
    }
}

fs_status fs_cuda_gauss_add(void *ctx, size_t count, float *acc, uint64_t offset, double stddev,
                            uint64_t seed, uint64_t stream)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c) return FS_BAD(FS_ERR_ARG, "gauss_add: NULL context");
    if (count == 0) return FS_OK;
    if (!acc) return FS_BAD(FS_ERR_ARG, "gauss_add: NULL buffer");
    if (!(stddev >= 0.0) || stddev > 1e30) return FS_BAD(FS_ERR_ARG, "gauss_add: bad stddev");
    if (offset > UINT64_MAX - count) return FS_BAD(FS_ERR_ARG, "gauss_add: offset overflows");
    FS_TRY(fs_cuda_enter(c));
    const uint64_t first = offset / 4, last = (offset + count - 1) / 4;
    const uint64_t nq = last - first + 1;
    const bool vec = fs_cuda_aligned16(acc) && offset % 4 == 0;
    gauss_add_kernel<<<fs_cuda_blocks(nq, 256), 256, 0, c->stream>>>(
        count, acc, offset, first, nq, stddev, (uint32_t)seed, (uint32_t)(seed >> 32),
        (uint32_t)stream, (uint32_t)(stream >> 32), vec);
    FS_LAUNCHED();
    return FS_OK;
}
