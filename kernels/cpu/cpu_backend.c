/*
 * kernels/cpu/cpu_backend.c — the CPU backend's context, memory functions and
 * its table of ops (the specification every other backend is tested against).
 *
 * Memory is ordinary host memory: alloc returns zero-filled 64-byte aligned
 * blocks, upload / download are memcpy, sync does nothing. The context holds
 * only the thread count (scratch comes from the caller's workspace); ctx_init
 * also pins OpenBLAS to one thread, because the ops parallelise over
 * images themselves and the skinny per-image GEMMs thread badly inside BLAS.
 *
 * Tested by tests/test_kernels_fd.c.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#include "cpu_internal.h"

/* Creates a context with the currently requested thread count. */
static fs_status cpu_ctx_init(void **out, int device)
{
    (void)device;
    if (!out) return FS_ERR_ARG;
    *out = NULL;
    fs_cpu_ctx *c = calloc(1, sizeof *c);
    if (!c) return FS_ERR_NOMEM;
    int t = fs_cpu_requested_threads();
    if (t <= 0) t = omp_get_num_procs();
    if (t < 1) t = 1;
    c->nthreads = t;
    openblas_set_num_threads(1);
    *out = c;
    return FS_OK;
}

static void cpu_ctx_free(void *ctx) { free(ctx); }

/* Zero-filled, 64-byte aligned; a request of 0 bytes still returns a block. */
static fs_status cpu_alloc(void *ctx, void **p, size_t bytes)
{
    (void)ctx;
    if (!p) return FS_ERR_ARG;
    *p = NULL;
    size_t padded = (bytes + 63) & ~(size_t)63;
    if (padded < bytes) return FS_ERR_NOMEM; /* overflow */
    if (padded == 0) padded = 64;
    void *q = aligned_alloc(64, padded);
    if (!q) return FS_ERR_NOMEM;
    memset(q, 0, padded);
    *p = q;
    return FS_OK;
}

static void cpu_free(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static fs_status cpu_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx;
    if (bytes == 0) return FS_OK;
    if (!dst || !src) return FS_ERR_ARG;
    memmove(dst, src, bytes);
    return FS_OK;
}

static fs_status cpu_memzero(void *ctx, void *p, size_t bytes)
{
    (void)ctx;
    if (bytes == 0) return FS_OK;
    if (!p) return FS_ERR_ARG;
    memset(p, 0, bytes);
    return FS_OK;
}

static fs_status cpu_sync(void *ctx)
{
    (void)ctx;
    return FS_OK;
}

static fs_status cpu_graph_unsupported(void *ctx)
{
    (void)ctx;
    return FS_ERR_UNSUPPORTED;
}

static const fs_backend fs_cpu_table = {
    .name = "cpu",
    .ctx_init = cpu_ctx_init,
    .ctx_free = cpu_ctx_free,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .memzero = cpu_memzero,
    .sync = cpu_sync,
    .conv_ws_bytes = fs_cpu_conv_ws_bytes,
    .conv_fwd = fs_cpu_conv_fwd,
    .conv_bwd_data = fs_cpu_conv_bwd_data,
    .conv_bwd_filter = fs_cpu_conv_bwd_filter,
    .convt_ws_bytes = fs_cpu_convt_ws_bytes,
    .convt_fwd = fs_cpu_convt_fwd,
    .convt_bwd_data = fs_cpu_convt_bwd_data,
    .convt_bwd_filter = fs_cpu_convt_bwd_filter,
    .norm_act_fwd = fs_cpu_norm_act_fwd,
    .norm_ws_bytes = fs_cpu_norm_ws_bytes,
    .norm_act_bwd = fs_cpu_norm_act_bwd,
    .maxpool_fwd = fs_cpu_maxpool_fwd,
    .maxpool_bwd = fs_cpu_maxpool_bwd,
    .concat_fwd = fs_cpu_concat_fwd,
    .concat_bwd = fs_cpu_concat_bwd,
    .loss_ws_bytes = fs_cpu_loss_ws_bytes,
    .loss_fwd_bwd = fs_cpu_loss_fwd_bwd,
    .adam_step = fs_cpu_adam_step,
    .graph_capture_begin = cpu_graph_unsupported,
    .graph_capture_end = cpu_graph_unsupported,
    .graph_replay = cpu_graph_unsupported,
    .fold = fs_cpu_fold,
    .fold_many = fs_cpu_fold_many,
    .u32_sum = fs_cpu_u32_sum,
    .chacha_mask = fs_cpu_chacha_mask,
    .dequant = fs_cpu_dequant,
    .l2_ws_bytes = fs_cpu_l2_ws_bytes,
    .l2_norm_sq = fs_cpu_l2_norm_sq,
    .scale = fs_cpu_scale,
    .gauss_add = fs_cpu_gauss_add,
};

const fs_backend *fs_backend_cpu(void) { return &fs_cpu_table; }
