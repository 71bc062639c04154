/*
 * node/unet.h — the reference 2D U-Net (DESIGN.md §4) built from the backend
 * table's ops, with its parameters, gradients and Adam moments as flat vectors.
 *
 * Architecture: channels ch[i] = base·2^i, i = 0..depth. Each block is
 * two × [3×3 conv (bias) -> InstanceNorm (affine, eps 1e-5) -> LeakyReLU(0.01)].
 * Encoder level i: block -> skip_i -> 2×2 max-pool. Bottom: block ("mid").
 * Decoder level i (from depth−1 down to 0): 2×2 stride-2 transposed conv,
 * concatenate [up ; skip_i], block. Head: 1×1 conv to 4 classes.
 *
 * Parameter order in the flat vector is PyTorch's named_parameters() order for
 * the anchor model (down[0..d−1], mid, up[0..d−1], dec[0..d−1], head; within a
 * block conv.w, conv.b, norm.w, norm.b, conv.w, conv.b, norm.w, norm.b), so a
 * PyTorch state dict flattened in order is a fedseg parameter vector.
 *
 * Memory: one allocation holds params | grads | adam m | adam v (4·P floats);
 * one holds every activation, gradient buffer and scratch for the largest
 * batch given at init. Nothing is allocated by forward, backward or step.
 */
#ifndef FS_UNET_H
#define FS_UNET_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/backend.h"

#define FS_UNET_MAX_DEPTH 6
#define FS_UNET_IN_CH 4
#define FS_UNET_CLASSES 4

typedef struct {
    const char *name;
    int base, depth, size; /* size: input H = W */
    size_t nparams;        /* DESIGN.md §4, checked by tests/test_unet.c */
} fs_preset;

/* "tiny", "small", "ref"; NULL when unknown. */
const fs_preset *fs_preset_find(const char *name);
extern const fs_preset fs_presets[];
extern const int fs_npresets;

/* One named parameter tensor inside the flat vector. */
typedef struct {
    char name[40];   /* PyTorch-style name, e.g. "down.0.0.weight" */
    size_t offset;   /* in floats */
    size_t count;
    int ndim, shape[4];
} fs_param_info;

/* Fills up to max entries (NULL allowed to count) and returns the number of
 * tensors; *total receives the parameter count. */
int fs_unet_layout(int base, int depth, fs_param_info *out, int max, size_t *total);

typedef struct fs_unet fs_unet;

/* Builds a model for batches of up to max_batch images of size×size (size
 * divisible by 2^depth) on backend `be` with context `ctx` (owned by the
 * caller). Parameters are initialised like PyTorch's defaults from `seed`. */
fs_status fs_unet_create(fs_unet **out, const fs_backend *be, void *ctx, int base, int depth,
                         int size, int max_batch, uint64_t seed);
void fs_unet_free(fs_unet *m); /* NULL-safe */

size_t fs_unet_nparams(const fs_unet *m);
/* Backend-memory views of the flat vectors (length nparams each). */
float *fs_unet_params(fs_unet *m);
float *fs_unet_grads(fs_unet *m);

/* Copy the parameters (and optionally Adam m, v, t) in from / out to the host. */
fs_status fs_unet_set_params(fs_unet *m, const float *host);
fs_status fs_unet_get_params(fs_unet *m, float *host);
fs_status fs_unet_set_adam(fs_unet *m, const float *hm, const float *hv, float t);
fs_status fs_unet_get_adam(fs_unet *m, float *hm, float *hv, float *t);
fs_status fs_unet_get_grads(fs_unet *m, float *host);

/* Forward pass on n ≤ max_batch images (host memory, N×4×S×S); writes the
 * logits (N×4×S×S) to host memory when logits_host is non-NULL. */
fs_status fs_unet_predict(fs_unet *m, const float *x_host, int n, float *logits_host);

/* Forward + loss + backward on n images: fills the gradient vector and writes
 * the loss to *loss (host). Labels are classes 0..3, validated here. */
fs_status fs_unet_forward_backward(fs_unet *m, const float *x_host, const uint8_t *y_host,
                                   int n, float *loss);

/* One training step: forward, backward and Adam (with FedProx term when
 * hp.mu > 0 and a reference was set). On CUDA, after the first step the whole
 * device-side step is captured in a CUDA graph and replayed (when n stays the
 * same); set FS_NO_GRAPH=1 in the environment to disable. */
fs_status fs_unet_train_step(fs_unet *m, const float *x_host, const uint8_t *y_host, int n,
                             fs_adam_hp hp, float *loss);

/* SCAFFOLD: from now on every training step also does w −= lr·corr (after
 * Adam; corr: nparams host floats, copied). NULL turns it off. */
fs_status fs_unet_set_correction(fs_unet *m, const float *host_corr);

/* FedProx: copy the current parameters as the proximal reference w_ref. */
fs_status fs_unet_set_prox_ref(fs_unet *m);

/* Layer-by-layer description for `fedseg info`. */
void fs_unet_describe(int base, int depth, int size, void (*emit)(const char *line, void *u), void *u);

#endif
