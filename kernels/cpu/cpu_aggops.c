/*
 * kernels/cpu/cpu_aggops.c — the CPU reference of the aggregator's arithmetic
 * on flat update vectors (kernels/backend.h, "aggregator arithmetic"):
 *   fold_many   sum += Σ_j w_j·chunk_j (fp32, in order, no FMA)
 *   u32_sum     acc += Σ_j x_j mod 2^32 (masked updates)
 *   chacha_mask acc ±= ChaCha20-IETF keystream words (mask expansion)
 *   dequant     out = (float)(int32)sum · scale · inv_w
 *   l2_norm_sq  Σ x² in double over the fixed tree of kernels/aggops.h
 *   scale       x *= s (L2 clipping)
 *   gauss_add   acc += (float)(stddev · fs_philox_gauss(seed, stream, offset+i))
 *
 * Plain loops: this file is the specification the CUDA versions
 * (kernels/cuda/cuda_aggops.cu) are compared with. The pragma below forbids
 * contracting a product and a sum into one fused multiply-add, so the
 * roundings are those written. The two compute-bound ops (chacha_mask,
 * gauss_add) split their elements over the context's OpenMP threads; every
 * element is computed independently, so the result does not depend on the
 * thread count. The memory-bound ops run on one thread, like fold.
 *
 * Tested by tests/test_aggops.c (naive loops, libsodium's ChaCha20, known
 * answers) and tests/test_aggops_cuda.c (CUDA against these, on a GPU).
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <string.h>
#include "cpu_internal.h"
#include "kernels/aggops.h"
#include "kernels/chacha20.h"
#include "kernels/philox.h"

/* Threads for a compute-bound op over `tasks` independent pieces (ctx may be
 * NULL: one thread). */
static int team(void *ctx, uint64_t tasks)
{
    if (!ctx) return 1;
    return fs_cpu_team((const fs_cpu_ctx *)ctx, tasks > 0x7fffffff ? 0x7fffffff : (long)tasks);
}

/* Checks a host array of k backend pointers: none NULL when count > 0. */
static fs_status check_ptrs(const void *const *xs, int k, size_t count)
{
    if (k < 0) return FS_ERR_ARG;
    if (count == 0 || k == 0) return FS_OK;
    if (!xs) return FS_ERR_ARG;
    for (int j = 0; j < k; j++)
        if (!xs[j]) return FS_ERR_ARG;
    return FS_OK;
}

/* Elements per block of the sums: the block of the accumulator stays in the
 * L1 cache while the k inputs stream past it. */
enum { BLOCK = 2048 };

/* sum[i] = sum[i] + w[j]·chunks[j][i] for j = 0..k−1 in order: exactly k
 * calls of fs_cpu_fold (done block by block; each element still sees the
 * inputs in order j = 0, 1, ...). */
fs_status fs_cpu_fold_many(void *ctx, size_t count, float *sum, const float *const *chunks,
                           const float *w, int k)
{
    (void)ctx;
    FS_TRY(check_ptrs((const void *const *)chunks, k, count));
    if (count == 0 || k == 0) return FS_OK;
    if (!sum || !w) return FS_ERR_ARG;
    for (size_t i0 = 0; i0 < count; i0 += BLOCK) {
        const size_t i1 = count - i0 < BLOCK ? count : i0 + BLOCK;
        for (int j = 0; j < k; j++) {
            const float *x = chunks[j], wj = w[j]; /* locals: sum may not alias them */
            for (size_t i = i0; i < i1; i++) sum[i] = sum[i] + wj * x[i];
        }
    }
    return FS_OK;
}

/* acc[i] = acc[i] + Σ_j xs[j][i], wrapping mod 2^32 (unsigned arithmetic). */
fs_status fs_cpu_u32_sum(void *ctx, size_t count, uint32_t *acc, const uint32_t *const *xs, int k)
{
    (void)ctx;
    FS_TRY(check_ptrs((const void *const *)xs, k, count));
    if (count == 0 || k == 0) return FS_OK;
    if (!acc) return FS_ERR_ARG;
    for (size_t i0 = 0; i0 < count; i0 += BLOCK) {
        const size_t i1 = count - i0 < BLOCK ? count : i0 + BLOCK;
        for (int j = 0; j < k; j++) {
            const uint32_t *x = xs[j];
            for (size_t i = i0; i < i1; i++) acc[i] += x[i];
        }
    }
    return FS_OK;
}

/* Keys decoded per group, so the decoded copies live in one wiped array. */
enum { KEY_GROUP = 64 };

/*
 * For each key: acc[i] ±= word (offset + i) of its keystream. Blocks
 * first..last of the keystream cover the words [offset, offset + count);
 * each block is computed once per key and its words inside the range are
 * applied. Keys are applied in order; mod 2^32 the order does not matter.
 */
fs_status fs_cpu_chacha_mask(void *ctx, size_t count, uint32_t *acc, uint64_t offset,
                             const fs_mask_key *keys, int k)
{
    if (k < 0) return FS_ERR_ARG;
    if (count == 0 || k == 0) return FS_OK;
    if (!acc || !keys) return FS_ERR_ARG;
    /* The IETF block counter has 32 bits: the stream is 2^32 blocks of 16 words. */
    const uint64_t limit = (uint64_t)1 << 36;
    if (offset > limit || count > limit - offset) return FS_ERR_ARG;
    for (int j = 0; j < k; j++)
        if (keys[j].sign != 1 && keys[j].sign != -1) return FS_ERR_ARG;

    const uint64_t end = offset + count;
    const uint64_t first = offset / 16, last = (end - 1) / 16;
    uint32_t kw[KEY_GROUP][8], nw[KEY_GROUP][3];
    for (int g = 0; g < k; g += KEY_GROUP) {
        const int kg = k - g < KEY_GROUP ? k - g : KEY_GROUP;
        for (int j = 0; j < kg; j++) fs_chacha20_load_key(keys[g + j].key, keys[g + j].nonce, kw[j], nw[j]);
#pragma omp parallel for num_threads(team(ctx, last - first + 1)) schedule(static)
        for (uint64_t b = first; b <= last; b++) {
            uint32_t ks[16];
            const uint64_t w0 = b * 16 > offset ? b * 16 : offset;
            const uint64_t w1 = b * 16 + 16 < end ? b * 16 + 16 : end;
            for (int j = 0; j < kg; j++) {
                fs_chacha20_block(kw[j], (uint32_t)b, nw[j], ks);
                for (uint64_t wi = w0; wi < w1; wi++) {
                    if (keys[g + j].sign > 0) acc[wi - offset] += ks[wi - b * 16];
                    else acc[wi - offset] -= ks[wi - b * 16];
                }
            }
            explicit_bzero(ks, sizeof ks);
        }
    }
    explicit_bzero(kw, sizeof kw);
    explicit_bzero(nw, sizeof nw);
    return FS_OK;
}

/* The two's-complement value of a 32-bit word (portable: no
 * implementation-defined conversion). */
static inline int32_t as_int32(uint32_t u)
{
    return u <= 0x7fffffffu ? (int32_t)u : (int32_t)(u - 0x80000000u) - 0x7fffffff - 1;
}

/* out[i] = ((float)(int32_t)sum[i] · scale) · inv_w, each step rounded. */
fs_status fs_cpu_dequant(void *ctx, size_t count, float *out, const uint32_t *sum, float scale,
                         float inv_w)
{
    (void)ctx;
    if (count == 0) return FS_OK;
    if (!out || !sum) return FS_ERR_ARG;
    for (size_t i = 0; i < count; i++) {
        float v = (float)as_int32(sum[i]);
        v = v * scale;
        out[i] = v * inv_w;
    }
    return FS_OK;
}

size_t fs_cpu_l2_ws_bytes(void *ctx, size_t count, int k)
{
    (void)ctx;
    return k > 0 ? (size_t)k * FS_L2_NSEG(count) * sizeof(double) : 0;
}

/* Step 3 of the tree in kernels/aggops.h: combines the lanes by halving and
 * returns lane 0. */
static double tree_lanes(double lane[FS_L2_LANES])
{
    for (int h = FS_L2_LANES / 2; h >= 1; h /= 2)
        for (int t = 0; t < h; t++) lane[t] = lane[t] + lane[t + h];
    return lane[0];
}

/* Partial sum of one segment of n ≤ FS_L2_SEG floats (steps 2–3). */
static double segment_sum(const float *x, size_t n)
{
    double lane[FS_L2_LANES];
    for (int t = 0; t < FS_L2_LANES; t++) {
        double s = 0.0;
        for (size_t j = 0; j * FS_L2_STEP < n; j++)
            for (size_t e = 0; e < 4; e++) {
                size_t i = j * FS_L2_STEP + 4 * (size_t)t + e;
                if (i < n) s = s + (double)x[i] * (double)x[i];
            }
        lane[t] = s;
    }
    return tree_lanes(lane);
}

/* Step 4: the partials reduced by lanes striding FS_L2_LANES, then halving. */
static double partials_sum(const double *p, size_t n)
{
    double lane[FS_L2_LANES];
    for (int t = 0; t < FS_L2_LANES; t++) {
        double s = 0.0;
        for (size_t i = (size_t)t; i < n; i += FS_L2_LANES) s = s + p[i];
        lane[t] = s;
    }
    return tree_lanes(lane);
}

/* out[j] = Σ xs[j][i]² over the tree of kernels/aggops.h; ws holds the
 * segment partials (fs_cpu_l2_ws_bytes). */
fs_status fs_cpu_l2_norm_sq(void *ctx, size_t count, const float *const *xs, int k, double *out,
                            void *ws)
{
    FS_TRY(check_ptrs((const void *const *)xs, k, count));
    if (k == 0) return FS_OK;
    if (!out) return FS_ERR_ARG;
    const size_t nseg = FS_L2_NSEG(count);
    if (nseg > 0 && !ws) return FS_ERR_ARG;
    double *part = (double *)ws;
    for (int j = 0; j < k; j++) {
        double *pj = part + (size_t)j * nseg;
        for (size_t s = 0; s < nseg; s++) {
            size_t n = count - s * FS_L2_SEG < FS_L2_SEG ? count - s * FS_L2_SEG : FS_L2_SEG;
            pj[s] = segment_sum(xs[j] + s * FS_L2_SEG, n);
        }
        out[j] = partials_sum(pj, nseg);
    }
    (void)ctx;
    return FS_OK;
}

/* xs[j][i] = xs[j][i] · s[j]. */
fs_status fs_cpu_scale(void *ctx, size_t count, float *const *xs, const float *s, int k)
{
    (void)ctx;
    FS_TRY(check_ptrs((const void *const *)xs, k, count));
    if (count == 0 || k == 0) return FS_OK;
    if (!s) return FS_ERR_ARG;
    for (int j = 0; j < k; j++)
        for (size_t i = 0; i < count; i++) xs[j][i] = xs[j][i] * s[j];
    return FS_OK;
}

/* acc[i] = acc[i] + (float)(stddev · fs_philox_gauss(seed, stream, offset + i)). */
fs_status fs_cpu_gauss_add(void *ctx, size_t count, float *acc, uint64_t offset, double stddev,
                           uint64_t seed, uint64_t stream)
{
    if (count == 0) return FS_OK;
    if (!acc || !(stddev >= 0.0) || stddev > 1e30) return FS_ERR_ARG;
    if (offset > UINT64_MAX - count) return FS_ERR_ARG;
#pragma omp parallel for num_threads(team(ctx, count / 4096 + 1)) schedule(static)
    for (size_t i = 0; i < count; i++) {
        float noise = (float)(stddev * fs_philox_gauss(seed, stream, offset + i));
        acc[i] = acc[i] + noise;
    }
    return FS_OK;
}
