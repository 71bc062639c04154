/*
 * kernels/cuda/cuda_backend.cu — the CUDA backend's table, its context (stream,
 * cuBLAS handle, CUDA graph), memory movement, and the shared helpers declared
 * in cuda_internal.h (error reporting, row-major GEMM, channel sums, NCHW →
 * CNHW layout change).
 *
 * Context: one non-blocking stream per context; every op is enqueued on it and
 * none synchronises with the host, so a whole training step can be captured in
 * a CUDA graph (graph_capture_begin / _end) and replayed (graph_replay).
 * Capture uses cudaStreamCaptureModeThreadLocal: calls that would break the
 * capture (cudaMalloc, synchronisation) are refused in the capturing thread
 * while other threads (other GPUs' contexts) are left alone. alloc, free,
 * upload, download and sync are refused during capture with FS_ERR_ARG.
 *
 * Math mode: cuBLAS runs in CUBLAS_DEFAULT_MATH (true fp32) unless the
 * environment variable FS_CUDA_TF32=1 is set when the context is created; then
 * CUBLAS_TF32_TENSOR_OP_MATH lets GEMMs use TF32 tensor cores (10-bit mantissa
 * inputs, fp32 accumulate; several times faster, and outside the parity
 * tolerances of kernels/tolerances.h, which assume fp32).
 *
 * Errors: every CUDA / cuBLAS call and every kernel launch is checked; a
 * failure prints "fedseg: error: <file>:<line>: <call>: <message>" on stderr
 * and the op returns FS_ERR_DEVICE.
 *
 * Tested by tests/test_cuda_parity.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda_internal.h"

/* cuBLAS workspace: NVIDIA's recommendation for Hopper (4 MiB suffices for
 * older GPUs). Set explicitly so cuBLAS never allocates during capture and
 * picks the same kernels eagerly and in a graph. */
#define FS_CUDA_BLAS_WS_BYTES ((size_t)32 << 20)

/* Trims an absolute source path to its part from "kernels/" on. */
static const char *short_file(const char *file)
{
    const char *k = strstr(file, "kernels/");
    return k ? k : file;
}

fs_status fs_cuda_fail(cudaError_t e, const char *call, const char *file, int line)
{
    fprintf(stderr, "fedseg: error: %s:%d: %s: %s (%s)\n", short_file(file), line, call,
            cudaGetErrorString(e), cudaGetErrorName(e));
    cudaGetLastError(); /* so a later launch check does not report it again */
    return FS_ERR_DEVICE;
}

fs_status fs_cublas_fail(cublasStatus_t s, const char *call, const char *file, int line)
{
    fprintf(stderr, "fedseg: error: %s:%d: %s: %s (%s)\n", short_file(file), line, call,
            cublasGetStatusString(s), cublasGetStatusName(s));
    return FS_ERR_DEVICE;
}

fs_status fs_cuda_complain(fs_status st, const char *file, int line, const char *msg)
{
    fprintf(stderr, "fedseg: error: %s:%d: %s\n", short_file(file), line, msg);
    return st;
}

fs_status fs_cuda_enter(fs_cuda_ctx *c)
{
    int cur = -1;
    FS_CU(cudaGetDevice(&cur));
    if (cur != c->device) FS_CU(cudaSetDevice(c->device));
    return FS_OK;
}

fs_status fs_cuda_gemm(fs_cuda_ctx *c, bool ta, bool tb, int M, int N, int K, float alpha,
                       const float *A, int lda, long long strideA, const float *B, int ldb,
                       long long strideB, float beta, float *C, int ldc, long long strideC,
                       int batch)
{
    if (M <= 0 || N <= 0 || K <= 0 || batch <= 0) return FS_BAD(FS_ERR_ARG, "empty GEMM");
    /* cuBLAS is column-major: a row-major X (rows×cols, row stride ld) is the
     * column-major Xᵀ with the same ld, so C = op(A)·op(B) becomes
     * Cᵀ = op(B)ᵀ·op(A)ᵀ with the operands swapped and the same op flags. */
    const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int max_batch = 65535; /* the grid's y/z limit, to be safe */
    for (int b0 = 0; b0 < batch; b0 += max_batch) {
        const int nb = batch - b0 < max_batch ? batch - b0 : max_batch;
        FS_CUBLAS(cublasSgemmStridedBatched(c->blas, opb, opa, N, M, K, &alpha,
                                            B + (long long)b0 * strideB, ldb, strideB,
                                            A + (long long)b0 * strideA, lda, strideA, &beta,
                                            C + (long long)b0 * strideC, ldc, strideC, nb));
    }
    return FS_OK;
}

/* One block per channel: out[ch] = Σ over images and the plane. */
__global__ void channel_sum_kernel(int n, int ch, int plane, const float *__restrict__ x,
                                   float *__restrict__ out)
{
    __shared__ float sh[33];
    const int c = blockIdx.x;
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        const float *p = x + ((size_t)i * ch + c) * (size_t)plane;
        for (int k = threadIdx.x; k < plane; k += blockDim.x) s += p[k];
    }
    s = fs_block_sum(s, sh);
    if (threadIdx.x == 0) out[c] = s;
}

fs_status fs_cuda_channel_sum(fs_cuda_ctx *c, int n, int ch, size_t plane, const float *x,
                              float *out)
{
    if (n <= 0 || ch <= 0 || plane == 0 || (size_t)n * ch * plane > FS_CUDA_MAX_ELEMS)
        return FS_BAD(FS_ERR_ARG, "channel sum: bad shape");
    channel_sum_kernel<<<ch, 512, 0, c->stream>>>(n, ch, (int)plane, x, out);
    FS_LAUNCHED();
    return FS_OK;
}

/* dst[(c·g + i)·plane + p] = src[(i·C + c)·plane + p], one thread per element. */
__global__ void nchw_to_cnhw_kernel(int g, int ch, int plane, const float *__restrict__ src,
                                    float *__restrict__ dst)
{
    const unsigned total = (unsigned)g * (unsigned)ch * (unsigned)plane;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        const unsigned p = idx % (unsigned)plane;
        const unsigned t = idx / (unsigned)plane;
        const unsigned i = t % (unsigned)g, c = t / (unsigned)g;
        dst[idx] = src[((size_t)i * ch + c) * plane + p];
    }
}

fs_status fs_cuda_nchw_to_cnhw(fs_cuda_ctx *c, int g, int ch, size_t plane, const float *src,
                               float *dst)
{
    const size_t total = (size_t)g * ch * plane;
    if (g <= 0 || ch <= 0 || plane == 0 || total > FS_CUDA_MAX_ELEMS)
        return FS_BAD(FS_ERR_ARG, "layout change: bad shape");
    nchw_to_cnhw_kernel<<<fs_cuda_blocks(total, 256), 256, 0, c->stream>>>(g, ch, (int)plane,
                                                                            src, dst);
    FS_LAUNCHED();
    return FS_OK;
}

/* ---- context ------------------------------------------------------------- */

static void cuda_ctx_free(void *ctx);

/* Creates the stream, the cuBLAS handle (bound to the stream, explicit
 * workspace, math mode from FS_CUDA_TF32) on CUDA device `device`. */
static fs_status cuda_ctx_init(void **out, int device)
{
    if (!out) return FS_ERR_ARG;
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) return fs_cuda_fail(e, "cudaGetDeviceCount", __FILE__, __LINE__);
    if (device < 0 || device >= count) return FS_BAD(FS_ERR_ARG, "no CUDA device with that ordinal");
    fs_cuda_ctx *c = (fs_cuda_ctx *)calloc(1, sizeof *c);
    if (!c) return FS_ERR_NOMEM;
    c->device = device;
    fs_status st = FS_OK;
#define INIT_CU(call) do { cudaError_t ie_ = (call); if (ie_ != cudaSuccess) { \
        st = fs_cuda_fail(ie_, #call, __FILE__, __LINE__); goto fail; } } while (0)
#define INIT_BLAS(call) do { cublasStatus_t ib_ = (call); if (ib_ != CUBLAS_STATUS_SUCCESS) { \
        st = fs_cublas_fail(ib_, #call, __FILE__, __LINE__); goto fail; } } while (0)
    {
        INIT_CU(cudaSetDevice(device));
        INIT_CU(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
        INIT_BLAS(cublasCreate(&c->blas));
        /* cublasSetStream resets the workspace to cuBLAS's own, so set it first. */
        INIT_BLAS(cublasSetStream(c->blas, c->stream));
        INIT_CU(cudaMalloc(&c->blas_ws, FS_CUDA_BLAS_WS_BYTES));
        c->blas_ws_bytes = FS_CUDA_BLAS_WS_BYTES;
        INIT_BLAS(cublasSetWorkspace(c->blas, c->blas_ws, c->blas_ws_bytes));
        const char *tf32 = getenv("FS_CUDA_TF32");
        const int use_tf32 = tf32 && strcmp(tf32, "1") == 0;
        INIT_BLAS(cublasSetMathMode(c->blas, use_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                      : CUBLAS_DEFAULT_MATH));
    }
#undef INIT_CU
#undef INIT_BLAS
    *out = c;
    return FS_OK;
fail:
    cuda_ctx_free(c);
    return st;
}

/* Waits for queued work, then releases the graph, cuBLAS, workspace, stream. */
static void cuda_ctx_free(void *ctx)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->capturing) {
        cudaGraph_t g = NULL;
        cudaStreamEndCapture(c->stream, &g);
        if (g) cudaGraphDestroy(g);
    }
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->exec) cudaGraphExecDestroy(c->exec);
    if (c->graph) cudaGraphDestroy(c->graph);
    if (c->blas) cublasDestroy(c->blas);
    if (c->blas_ws) cudaFree(c->blas_ws);
    if (c->stream) cudaStreamDestroy(c->stream);
    cudaGetLastError(); /* nothing above may leave an error for the next call */
    free(c);
}

/* ---- memory ------------------------------------------------------------- */

static fs_status refuse_in_capture(fs_cuda_ctx *c, const char *what)
{
    if (!c->capturing) return FS_OK;
    fprintf(stderr, "fedseg: error: %s is not allowed while a CUDA graph is being captured\n",
            what);
    return FS_ERR_ARG;
}

/* cudaMalloc, then zero-filled on the stream and waited for. */
static fs_status cuda_alloc(void *ctx, void **p, size_t bytes)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || !p) return FS_ERR_ARG;
    *p = NULL;
    FS_TRY(refuse_in_capture(c, "alloc"));
    if (bytes == 0) return FS_OK;
    FS_TRY(fs_cuda_enter(c));
    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, bytes);
    if (e != cudaSuccess) {
        fs_cuda_fail(e, "cudaMalloc", __FILE__, __LINE__);
        cudaGetLastError();
        return e == cudaErrorMemoryAllocation ? FS_ERR_NOMEM : FS_ERR_DEVICE;
    }
    e = cudaMemsetAsync(d, 0, bytes, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {
        fs_cuda_fail(e, "cudaMemsetAsync(alloc)", __FILE__, __LINE__);
        cudaFree(d);
        return FS_ERR_DEVICE;
    }
    *p = d;
    return FS_OK;
}

/* cudaFree synchronises the device; it is refused (and the memory kept)
 * during capture. */
static void cuda_free(void *ctx, void *p)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || !p) return;
    if (refuse_in_capture(c, "free") != FS_OK) return;
    if (fs_cuda_enter(c) != FS_OK) return;
    cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) fs_cuda_fail(e, "cudaFree", __FILE__, __LINE__);
}

/* Host → device, waited for: the host buffer (pageable or not) may be reused
 * as soon as this returns. */
static fs_status cuda_upload(void *ctx, void *dst, const void *src_host, size_t bytes)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || (bytes && (!dst || !src_host))) return FS_ERR_ARG;
    FS_TRY(refuse_in_capture(c, "upload"));
    if (bytes == 0) return FS_OK;
    FS_TRY(fs_cuda_enter(c));
    FS_CU(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, c->stream));
    FS_CU(cudaStreamSynchronize(c->stream));
    return FS_OK;
}

/* Device → host after all work queued before it; waited for. */
static fs_status cuda_download(void *ctx, void *dst_host, const void *src, size_t bytes)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || (bytes && (!dst_host || !src))) return FS_ERR_ARG;
    FS_TRY(refuse_in_capture(c, "download"));
    if (bytes == 0) return FS_OK;
    FS_TRY(fs_cuda_enter(c));
    FS_CU(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    FS_CU(cudaStreamSynchronize(c->stream));
    return FS_OK;
}

/* Zero on the stream (capturable). */
static fs_status cuda_memzero(void *ctx, void *p, size_t bytes)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c || (bytes && !p)) return FS_ERR_ARG;
    if (bytes == 0) return FS_OK;
    FS_TRY(fs_cuda_enter(c));
    FS_CU(cudaMemsetAsync(p, 0, bytes, c->stream));
    return FS_OK;
}

static fs_status cuda_sync(void *ctx)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c) return FS_ERR_ARG;
    FS_TRY(refuse_in_capture(c, "sync"));
    FS_TRY(fs_cuda_enter(c));
    FS_CU(cudaStreamSynchronize(c->stream));
    return FS_OK;
}

/* ---- graphs ------------------------------------------------------------- */

/* Starts recording: ops on ctx are captured, not run, until capture_end.
 * A previously captured graph is released (after its launches finish). */
static fs_status cuda_graph_capture_begin(void *ctx)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c) return FS_ERR_ARG;
    if (c->capturing) return FS_BAD(FS_ERR_ARG, "graph capture already in progress");
    FS_TRY(fs_cuda_enter(c));
    FS_CU(cudaStreamSynchronize(c->stream));
    if (c->exec) {
        FS_CU(cudaGraphExecDestroy(c->exec));
        c->exec = NULL;
    }
    if (c->graph) {
        FS_CU(cudaGraphDestroy(c->graph));
        c->graph = NULL;
    }
    FS_CU(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = 1;
    return FS_OK;
}

/* Stops recording and instantiates the graph for replay. If an op failed
 * during capture the capture is invalid and this returns FS_ERR_DEVICE. */
static fs_status cuda_graph_capture_end(void *ctx)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c) return FS_ERR_ARG;
    if (!c->capturing) return FS_BAD(FS_ERR_ARG, "graph capture was not started");
    FS_TRY(fs_cuda_enter(c));
    c->capturing = 0;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (e != cudaSuccess) {
        if (g) cudaGraphDestroy(g);
        return fs_cuda_fail(e, "cudaStreamEndCapture", __FILE__, __LINE__);
    }
    cudaGraphExec_t x = NULL;
    e = cudaGraphInstantiate(&x, g, 0);
    if (e != cudaSuccess) {
        cudaGraphDestroy(g);
        return fs_cuda_fail(e, "cudaGraphInstantiate", __FILE__, __LINE__);
    }
    c->graph = g;
    c->exec = x;
    return FS_OK;
}

/* Enqueues the captured graph on the stream (no host wait). */
static fs_status cuda_graph_replay(void *ctx)
{
    fs_cuda_ctx *c = (fs_cuda_ctx *)ctx;
    if (!c) return FS_ERR_ARG;
    if (c->capturing) return FS_BAD(FS_ERR_ARG, "graph replay during capture");
    if (!c->exec) return FS_BAD(FS_ERR_ARG, "graph replay before any capture");
    FS_TRY(fs_cuda_enter(c));
    FS_CU(cudaGraphLaunch(c->exec, c->stream));
    return FS_OK;
}

/* ---- the table ---------------------------------------------------------- */

static fs_backend make_table(void)
{
    fs_backend t;
    memset(&t, 0, sizeof t);
    t.name = "cuda";
    t.ctx_init = cuda_ctx_init;
    t.ctx_free = cuda_ctx_free;
    t.alloc = cuda_alloc;
    t.free = cuda_free;
    t.upload = cuda_upload;
    t.download = cuda_download;
    t.memzero = cuda_memzero;
    t.sync = cuda_sync;
    t.conv_ws_bytes = fs_cuda_conv_ws_bytes;
    t.conv_fwd = fs_cuda_conv_fwd;
    t.conv_bwd_data = fs_cuda_conv_bwd_data;
    t.conv_bwd_filter = fs_cuda_conv_bwd_filter;
    t.convt_ws_bytes = fs_cuda_convt_ws_bytes;
    t.convt_fwd = fs_cuda_convt_fwd;
    t.convt_bwd_data = fs_cuda_convt_bwd_data;
    t.convt_bwd_filter = fs_cuda_convt_bwd_filter;
    t.norm_act_fwd = fs_cuda_norm_act_fwd;
    t.norm_ws_bytes = fs_cuda_norm_ws_bytes;
    t.norm_act_bwd = fs_cuda_norm_act_bwd;
    t.maxpool_fwd = fs_cuda_maxpool_fwd;
    t.maxpool_bwd = fs_cuda_maxpool_bwd;
    t.concat_fwd = fs_cuda_concat_fwd;
    t.concat_bwd = fs_cuda_concat_bwd;
    t.loss_ws_bytes = fs_cuda_loss_ws_bytes;
    t.loss_fwd_bwd = fs_cuda_loss_fwd_bwd;
    t.adam_step = fs_cuda_adam_step;
    t.graph_capture_begin = cuda_graph_capture_begin;
    t.graph_capture_end = cuda_graph_capture_end;
    t.graph_replay = cuda_graph_replay;
    t.fold = fs_cuda_fold;
    t.fold_many = fs_cuda_fold_many;
    t.u32_sum = fs_cuda_u32_sum;
    t.chacha_mask = fs_cuda_chacha_mask;
    t.dequant = fs_cuda_dequant;
    t.l2_ws_bytes = fs_cuda_l2_ws_bytes;
    t.l2_norm_sq = fs_cuda_l2_norm_sq;
    t.scale = fs_cuda_scale;
    t.gauss_add = fs_cuda_gauss_add;
    return t;
}

extern "C" const fs_backend *fs_backend_cuda(void)
{
    static const fs_backend table = make_table();
    return &table;
}

/* 1 when at least one CUDA device can be used; any error (no driver, no
 * device) counts as none and is cleared. */
extern "C" int fs_backend_cuda_available(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}
