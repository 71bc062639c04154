/*
 * kernels/cuda/he_ntt.cu — the homomorphic-encryption kernels on the GPU:
 * negacyclic NTT / INTT, ChaCha20 expansion of the encryption randomness,
 * pointwise Shoup products, the encryption's final additions, and the
 * aggregator's ciphertext modular add. The CPU code (common/he_ntt.c,
 * common/he.c) is the specification; every result here is exact integer
 * arithmetic reduced to [0, q), so the two agree bit for bit.
 *
 * NTT launch: one block of 512 threads per polynomial, the whole polynomial
 * (n ≤ 4096 words, 32 KB) in shared memory, one __syncthreads per stage;
 * butterfly b of a stage with span len touches (x, x + len),
 * x = 2·(b / len)·len + b % len, with the same lazy ranges as the CPU
 * ([0, 4q) forward, [0, 2q) inverse). ChaCha20: one thread per 64-byte block.
 *
 * Tested by tests/test_he_cuda.c (exits 77 without a device).
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "he_cuda.h"

#define HE_MAXL 4
#define NTT_THREADS 512

struct fs_he_dev {
    uint32_t n, logn, L;
    uint64_t q[HE_MAXL], ninv[HE_MAXL], ninvp[HE_MAXL], delta[HE_MAXL], deltap[HE_MAXL];
    uint64_t *d_tw;          /* per prime: w, wp, iw, iwp (4n words)            */
    uint64_t *d_a, *d_ap;    /* a_hat and companions (L·n)                      */
    uint64_t *d_b, *d_bp;    /* b_hat and companions (L·n), after set_pk        */
    uint64_t *d_work;        /* encryption scratch, grown on demand             */
    size_t work_words;
    cudaStream_t stream;
};

static fs_status he_cuda_fail(cudaError_t e, const char *call, const char *file, int line)
{
    fprintf(stderr, "fedseg: error: %s:%d: %s: %s\n", file, line, call, cudaGetErrorString(e));
    return FS_ERR_DEVICE;
}
#define HE_CU(call) do { cudaError_t e_ = (call); \
    if (e_ != cudaSuccess) return he_cuda_fail(e_, #call, __FILE__, __LINE__); } while (0)

__device__ __forceinline__ uint64_t mul_shoup_lazy(uint64_t a, uint64_t w, uint64_t wp, uint64_t q)
{
    return a * w - __umul64hi(a, wp) * q;
}
__device__ __forceinline__ uint64_t mul_shoup(uint64_t a, uint64_t w, uint64_t wp, uint64_t q)
{
    uint64_t r = mul_shoup_lazy(a, w, wp, q);
    return r >= q ? r - q : r;
}
__device__ __forceinline__ uint64_t to_res(int64_t v, uint64_t q)
{
    return v >= 0 ? (uint64_t)v % q : q - ((uint64_t)(-(v + 1)) % q + 1) % q;
}
__device__ __forceinline__ uint64_t add_mod(uint64_t a, uint64_t b, uint64_t q)
{
    uint64_t r = a + b;
    return r >= q ? r - q : r;
}

/* polys: npolys vectors of n words; vector p uses prime (p / per_prime_stride)
 * % L when per_prime is 0, else the fixed prime `prime`. Tables of prime j at
 * tw + 4·n·j. */
__global__ void ntt_fwd_kernel(uint64_t *polys, uint32_t n, const uint64_t *tw, const uint64_t *qs,
                               uint32_t L, int fixed_prime, uint32_t polys_per_prime_run)
{
    extern __shared__ uint64_t sh[];
    const uint32_t p = blockIdx.x;
    const uint32_t j = fixed_prime >= 0 ? (uint32_t)fixed_prime : (p / polys_per_prime_run) % L;
    const uint64_t q = qs[j], q2 = 2 * q;
    const uint64_t *w = tw + 4 * (size_t)n * j, *wp = w + n;
    uint64_t *a = polys + (size_t)p * n;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) sh[i] = a[i];
    __syncthreads();
    uint32_t len = n;
    for (uint32_t m = 1; m < n; m <<= 1) {
        len >>= 1;
        for (uint32_t b = threadIdx.x; b < n / 2; b += blockDim.x) {
            const uint32_t i = b / len, x = 2 * i * len + b % len, y = x + len;
            uint64_t u = sh[x];
            if (u >= q2) u -= q2;
            const uint64_t v = mul_shoup_lazy(sh[y], w[m + i], wp[m + i], q);
            sh[x] = u + v;
            sh[y] = u - v + q2;
        }
        __syncthreads();
    }
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        uint64_t v = sh[i];
        if (v >= q2) v -= q2;
        if (v >= q) v -= q;
        a[i] = v;
    }
}

__global__ void ntt_inv_kernel(uint64_t *polys, uint32_t n, const uint64_t *tw, const uint64_t *qs,
                               const uint64_t *ninv, const uint64_t *ninvp, uint32_t L,
                               int fixed_prime, uint32_t polys_per_prime_run)
{
    extern __shared__ uint64_t sh[];
    const uint32_t p = blockIdx.x;
    const uint32_t j = fixed_prime >= 0 ? (uint32_t)fixed_prime : (p / polys_per_prime_run) % L;
    const uint64_t q = qs[j], q2 = 2 * q;
    const uint64_t *iw = tw + 4 * (size_t)n * j + 2 * (size_t)n, *iwp = iw + n;
    uint64_t *a = polys + (size_t)p * n;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) sh[i] = a[i];
    __syncthreads();
    uint32_t len = 1;
    for (uint32_t m = n; m > 1; m >>= 1) {
        const uint32_t h = m >> 1;
        for (uint32_t b = threadIdx.x; b < n / 2; b += blockDim.x) {
            const uint32_t i = b / len, x = 2 * i * len + b % len, y = x + len;
            const uint64_t u = sh[x], v = sh[y];
            uint64_t s = u + v;
            if (s >= q2) s -= q2;
            sh[x] = s;
            sh[y] = mul_shoup_lazy(u - v + q2, iw[h + i], iwp[h + i], q);
        }
        len <<= 1;
        __syncthreads();
    }
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        uint64_t v = mul_shoup_lazy(sh[i], ninv[j], ninvp[j], q);
        a[i] = v >= q ? v - q : v;
    }
}

/* ---- ChaCha20 (RFC 8439), one thread per 64-byte block ------------------ */

__device__ __forceinline__ uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }
#define QR(a, b, c, d) \
    a += b; d ^= a; d = rotl(d, 16); c += d; b ^= c; b = rotl(b, 12); \
    a += b; d ^= a; d = rotl(d, 8);  c += d; b ^= c; b = rotl(b, 7);

struct he_key { uint32_t k[8]; };

/* words[ct][0 .. 3n): ChaCha20-IETF(key, nonce = (ct0 + ct) as le64 ‖ 0,
 * counter = block) as little-endian 64-bit words. */
__global__ void chacha_kernel(he_key key, uint64_t ct0, uint32_t blocks_per_ct, size_t total_blocks,
                              uint64_t *words)
{
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < total_blocks;
         g += (size_t)gridDim.x * blockDim.x) {
        const uint64_t ct = ct0 + g / blocks_per_ct;
        const uint32_t blk = (uint32_t)(g % blocks_per_ct);
        uint32_t s[16] = { 0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u,
                           key.k[0], key.k[1], key.k[2], key.k[3],
                           key.k[4], key.k[5], key.k[6], key.k[7],
                           blk, (uint32_t)ct, (uint32_t)(ct >> 32), 0u };
        uint32_t x[16];
        for (int i = 0; i < 16; i++) x[i] = s[i];
        for (int r = 0; r < 10; r++) {
            QR(x[0], x[4], x[8], x[12]); QR(x[1], x[5], x[9], x[13]);
            QR(x[2], x[6], x[10], x[14]); QR(x[3], x[7], x[11], x[15]);
            QR(x[0], x[5], x[10], x[15]); QR(x[1], x[6], x[11], x[12]);
            QR(x[2], x[7], x[8], x[13]); QR(x[3], x[4], x[9], x[14]);
        }
        uint64_t *o = words + g * 8;
        for (int i = 0; i < 8; i++)
            o[i] = (uint64_t)(x[2 * i] + s[2 * i]) | ((uint64_t)(x[2 * i + 1] + s[2 * i + 1]) << 32);
    }
}

/* u residues: uh[(k·L + j)·n + i] = (word[k][i] mod 3) − 1 mod q_j. */
__global__ void ternary_kernel(const uint64_t *words, uint64_t *uh, uint32_t n, uint32_t L,
                               const uint64_t *qs, size_t K)
{
    const size_t total = K * L * n;
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < total;
         g += (size_t)gridDim.x * blockDim.x) {
        const size_t k = g / ((size_t)L * n), r = g % ((size_t)L * n);
        const uint32_t j = (uint32_t)(r / n), i = (uint32_t)(r % n);
        uh[g] = to_res((int64_t)(words[k * 3 * n + i] % 3) - 1, qs[j]);
    }
}

/* c0_hat = u_hat ⊙ b_hat, c1_hat = u_hat ⊙ a_hat into ct[k] = (c0, c1). */
__global__ void pointwise_kernel(const uint64_t *uh, const uint64_t *a, const uint64_t *ap,
                                 const uint64_t *b, const uint64_t *bp, uint64_t *ct, uint32_t n,
                                 uint32_t L, const uint64_t *qs, size_t K)
{
    const size_t pw = (size_t)L * n, total = K * pw;
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < total;
         g += (size_t)gridDim.x * blockDim.x) {
        const size_t k = g / pw, r = g % pw;
        const uint64_t q = qs[r / n], u = uh[g];
        ct[k * 2 * pw + r] = mul_shoup(u, b[r], bp[r], q);
        ct[k * 2 * pw + pw + r] = mul_shoup(u, a[r], ap[r], q);
    }
}

__device__ __forceinline__ int64_t cbd(uint64_t w)
{
    return (int64_t)__popcll(w & 0x1fffffull) - (int64_t)__popcll((w >> 21) & 0x1fffffull);
}

/* c0 += e0 + Δ·m, c1 += e1 (coefficient form). m has mcount values from the
 * first ciphertext of this batch on. */
__global__ void finish_kernel(uint64_t *ct, const uint64_t *words, const int64_t *m, size_t mcount,
                              uint32_t n, uint32_t L, const uint64_t *qs, const uint64_t *dl,
                              const uint64_t *dlp, size_t K)
{
    const size_t pw = (size_t)L * n, total = K * pw;
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < total;
         g += (size_t)gridDim.x * blockDim.x) {
        const size_t k = g / pw, r = g % pw;
        const uint32_t j = (uint32_t)(r / n), i = (uint32_t)(r % n);
        const uint64_t q = qs[j];
        const size_t mi = k * n + i;
        const uint64_t dm = mi < mcount ? mul_shoup(to_res(m[mi], q), dl[j], dlp[j], q) : 0;
        const uint64_t *wk = words + k * 3 * n;
        uint64_t *c0 = ct + k * 2 * pw + r, *c1 = c0 + pw;
        *c0 = add_mod(add_mod(*c0, to_res(cbd(wk[n + i]), q), q), dm, q);
        *c1 = add_mod(*c1, to_res(cbd(wk[2 * n + i]), q), q);
    }
}

/* acc += ct mod q_j, j = (word / n) % L. */
__global__ void ct_add_kernel(uint64_t *acc, const uint64_t *ct, size_t words, uint32_t n,
                              uint32_t L, const uint64_t *qs)
{
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < words;
         g += (size_t)gridDim.x * blockDim.x)
        acc[g] = add_mod(acc[g], ct[g], qs[(g / n) % L]);
}

/* ---- host side ------------------------------------------------------------ */

static unsigned grid_for(size_t items)
{
    size_t b = (items + 255) / 256;
    if (b < 1) b = 1;
    if (b > 65535u * 8) b = 65535u * 8;
    return (unsigned)b;
}

struct he_dev_q { uint64_t *d_q, *d_ninv, *d_ninvp, *d_delta, *d_deltap; };
static he_dev_q dq_of(fs_he_dev *d)
{
    /* The small per-prime arrays live after the twiddles in d_tw. */
    const size_t base = 4 * (size_t)d->n * d->L;
    he_dev_q r = { d->d_tw + base, d->d_tw + base + HE_MAXL, d->d_tw + base + 2 * HE_MAXL,
                   d->d_tw + base + 3 * HE_MAXL, d->d_tw + base + 4 * HE_MAXL };
    return r;
}

extern "C" fs_status fs_he_dev_open(fs_he_dev **out, const fs_he_dev_tables *t)
{
    *out = NULL;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        cudaGetLastError();
        return FS_ERR_DEVICE;
    }
    if (!t || t->n == 0 || t->n > 4096 || t->nprimes == 0 || t->nprimes > HE_MAXL)
        return FS_ERR_ARG;
    fs_he_dev *d = (fs_he_dev *)calloc(1, sizeof *d);
    if (!d) return FS_ERR_NOMEM;
    d->n = t->n; d->logn = t->logn; d->L = t->nprimes;
    HE_CU(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking));
    const size_t n = t->n, L = t->nprimes, tw_words = 4 * n * L + 5 * HE_MAXL;
    HE_CU(cudaMalloc(&d->d_tw, tw_words * 8));
    HE_CU(cudaMalloc(&d->d_a, 4 * L * n * 8));
    d->d_ap = d->d_a + L * n;
    d->d_b = d->d_a + 2 * L * n;
    d->d_bp = d->d_a + 3 * L * n;
    uint64_t *h = (uint64_t *)calloc(tw_words, 8);
    if (!h) return FS_ERR_NOMEM;
    for (size_t j = 0; j < L; j++) {
        memcpy(h + 4 * n * j, t->w[j], n * 8);
        memcpy(h + 4 * n * j + n, t->wp[j], n * 8);
        memcpy(h + 4 * n * j + 2 * n, t->iw[j], n * 8);
        memcpy(h + 4 * n * j + 3 * n, t->iwp[j], n * 8);
        d->q[j] = t->q[j]; d->ninv[j] = t->ninv[j]; d->ninvp[j] = t->ninvp[j];
        d->delta[j] = t->delta[j]; d->deltap[j] = t->deltap[j];
        h[4 * n * L + j] = t->q[j];
        h[4 * n * L + HE_MAXL + j] = t->ninv[j];
        h[4 * n * L + 2 * HE_MAXL + j] = t->ninvp[j];
        h[4 * n * L + 3 * HE_MAXL + j] = t->delta[j];
        h[4 * n * L + 4 * HE_MAXL + j] = t->deltap[j];
    }
    cudaError_t e = cudaMemcpy(d->d_tw, h, tw_words * 8, cudaMemcpyHostToDevice);
    free(h);
    HE_CU(e);
    HE_CU(cudaMemcpy(d->d_a, t->a_hat, L * n * 8, cudaMemcpyHostToDevice));
    HE_CU(cudaMemcpy(d->d_ap, t->a_hat_p, L * n * 8, cudaMemcpyHostToDevice));
    *out = d;
    return FS_OK;
}

extern "C" void fs_he_dev_close(fs_he_dev *d)
{
    if (!d) return;
    cudaFree(d->d_tw);
    cudaFree(d->d_a);
    cudaFree(d->d_work);
    cudaStreamDestroy(d->stream);
    free(d);
}

extern "C" fs_status fs_he_dev_set_pk(fs_he_dev *d, const uint64_t *b_hat, const uint64_t *b_hat_p)
{
    const size_t w = (size_t)d->L * d->n * 8;
    HE_CU(cudaMemcpy(d->d_b, b_hat, w, cudaMemcpyHostToDevice));
    HE_CU(cudaMemcpy(d->d_bp, b_hat_p, w, cudaMemcpyHostToDevice));
    return FS_OK;
}

static fs_status grow(fs_he_dev *d, size_t words)
{
    if (d->work_words >= words) return FS_OK;
    cudaFree(d->d_work);
    d->d_work = NULL;
    d->work_words = 0;
    HE_CU(cudaMalloc(&d->d_work, words * 8));
    d->work_words = words;
    return FS_OK;
}

extern "C" fs_status fs_he_dev_ntt(fs_he_dev *d, unsigned prime, int inverse, uint64_t *polys,
                                   size_t npolys)
{
    if (!d || prime >= d->L || !polys) return FS_ERR_ARG;
    if (npolys == 0) return FS_OK;
    const size_t words = npolys * d->n;
    fs_status st = grow(d, words);
    if (st != FS_OK) return st;
    he_dev_q dq = dq_of(d);
    HE_CU(cudaMemcpyAsync(d->d_work, polys, words * 8, cudaMemcpyHostToDevice, d->stream));
    const size_t shm = (size_t)d->n * 8;
    if (!inverse)
        ntt_fwd_kernel<<<(unsigned)npolys, NTT_THREADS, shm, d->stream>>>(d->d_work, d->n, d->d_tw,
                                                                          dq.d_q, d->L, (int)prime, 1);
    else
        ntt_inv_kernel<<<(unsigned)npolys, NTT_THREADS, shm, d->stream>>>(
            d->d_work, d->n, d->d_tw, dq.d_q, dq.d_ninv, dq.d_ninvp, d->L, (int)prime, 1);
    HE_CU(cudaGetLastError());
    HE_CU(cudaMemcpyAsync(polys, d->d_work, words * 8, cudaMemcpyDeviceToHost, d->stream));
    HE_CU(cudaStreamSynchronize(d->stream));
    return FS_OK;
}

/* Batches of up to 256 ciphertexts: words (3n per ct), u_hat (L·n), cts
 * (2·L·n) and the batch's messages in one scratch allocation. */
extern "C" fs_status fs_he_dev_encrypt(fs_he_dev *d, const uint8_t seed[32], const int64_t *m,
                                       size_t count, uint64_t *cts)
{
    if (!d || !seed || (count && !m) || !cts) return FS_ERR_ARG;
    const size_t n = d->n, L = d->L, nct = (count + n - 1) / n, B = 256;
    const size_t per = 3 * n + L * n + 2 * L * n + n;
    fs_status st = grow(d, B * per);
    if (st != FS_OK) return st;
    he_key key;
    for (int i = 0; i < 8; i++)
        key.k[i] = (uint32_t)seed[4 * i] | (uint32_t)seed[4 * i + 1] << 8 |
                   (uint32_t)seed[4 * i + 2] << 16 | (uint32_t)seed[4 * i + 3] << 24;
    he_dev_q dq = dq_of(d);
    const size_t shm = n * 8;
    for (size_t k0 = 0; k0 < nct; k0 += B) {
        const size_t K = nct - k0 < B ? nct - k0 : B;
        uint64_t *words = d->d_work, *uh = words + B * 3 * n, *ct = uh + B * L * n;
        int64_t *dm = (int64_t *)(ct + B * 2 * L * n);
        const size_t m0 = k0 * n, mc = count - m0 < K * n ? count - m0 : K * n;
        HE_CU(cudaMemcpyAsync(dm, m + m0, mc * 8, cudaMemcpyHostToDevice, d->stream));
        const uint32_t bpc = (uint32_t)(3 * n / 8);
        chacha_kernel<<<grid_for(K * bpc), 256, 0, d->stream>>>(key, k0, bpc, K * bpc, words);
        HE_CU(cudaGetLastError());
        ternary_kernel<<<grid_for(K * L * n), 256, 0, d->stream>>>(words, uh, (uint32_t)n,
                                                                   (uint32_t)L, dq.d_q, K);
        HE_CU(cudaGetLastError());
        ntt_fwd_kernel<<<(unsigned)(K * L), NTT_THREADS, shm, d->stream>>>(uh, (uint32_t)n, d->d_tw,
                                                                           dq.d_q, (uint32_t)L, -1, 1);
        HE_CU(cudaGetLastError());
        pointwise_kernel<<<grid_for(K * L * n), 256, 0, d->stream>>>(uh, d->d_a, d->d_ap, d->d_b,
                                                                     d->d_bp, ct, (uint32_t)n,
                                                                     (uint32_t)L, dq.d_q, K);
        HE_CU(cudaGetLastError());
        ntt_inv_kernel<<<(unsigned)(K * 2 * L), NTT_THREADS, shm, d->stream>>>(
            ct, (uint32_t)n, d->d_tw, dq.d_q, dq.d_ninv, dq.d_ninvp, (uint32_t)L, -1, 1);
        HE_CU(cudaGetLastError());
        finish_kernel<<<grid_for(K * L * n), 256, 0, d->stream>>>(ct, words, dm, mc, (uint32_t)n,
                                                                  (uint32_t)L, dq.d_q, dq.d_delta,
                                                                  dq.d_deltap, K);
        HE_CU(cudaGetLastError());
        HE_CU(cudaMemcpyAsync(cts + k0 * 2 * L * n, ct, K * 2 * L * n * 8, cudaMemcpyDeviceToHost,
                              d->stream));
        HE_CU(cudaStreamSynchronize(d->stream));
    }
    /* WARNING: the scratch held the encryption randomness; clear it. */
    HE_CU(cudaMemsetAsync(d->d_work, 0, d->work_words * 8, d->stream));
    HE_CU(cudaStreamSynchronize(d->stream));
    return FS_OK;
}

extern "C" fs_status fs_he_dev_ct_add(fs_he_dev *d, uint64_t *d_acc, const uint64_t *d_ct,
                                      size_t nct)
{
    if (!d || (nct && (!d_acc || !d_ct))) return FS_ERR_ARG;
    if (!nct) return FS_OK;
    const size_t words = nct * 2 * d->L * d->n;
    ct_add_kernel<<<grid_for(words), 256, 0, d->stream>>>(d_acc, d_ct, words, d->n, d->L,
                                                          dq_of(d).d_q);
    HE_CU(cudaGetLastError());
    return FS_OK;
}

extern "C" fs_status fs_he_dev_alloc(fs_he_dev *d, void **p, size_t bytes)
{
    (void)d;
    HE_CU(cudaMalloc(p, bytes ? bytes : 1));
    return FS_OK;
}

extern "C" void fs_he_dev_free(fs_he_dev *d, void *p)
{
    (void)d;
    cudaFree(p);
}

extern "C" fs_status fs_he_dev_copy(fs_he_dev *d, void *dst, const void *src, size_t bytes,
                                    int to_device)
{
    HE_CU(cudaMemcpyAsync(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost,
                          d->stream));
    return FS_OK;
}

extern "C" fs_status fs_he_dev_zero(fs_he_dev *d, void *p, size_t bytes)
{
    HE_CU(cudaMemsetAsync(p, 0, bytes, d->stream));
    return FS_OK;
}

extern "C" fs_status fs_he_dev_sync(fs_he_dev *d)
{
    HE_CU(cudaStreamSynchronize(d->stream));
    return FS_OK;
}
