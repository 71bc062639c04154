/*
 * node/train.h — local training of the U-Net on one or more site folders, and
 * evaluation of a model on cases. Used by `fedseg train` / `eval` / `predict`
 * and, later, by the site node of a federation (one local round = fs_train_*
 * on the node's own data, starting from the global model).
 */
#ifndef FS_TRAIN_H
#define FS_TRAIN_H

#include <stdint.h>
#include "kernels/backend.h"
#include "node/dataset.h"
#include "node/unet.h"
#include "common/ckpt.h"

/* Held-out split of a site's sorted cases: round(20%) of them (at least one
 * when the site has ≥ 2 cases), spread evenly over the list. Returns 1 when
 * case idx of n is a validation case. */
int fs_split_is_val(int idx, int n);

typedef struct {
    const char *const *data; /* site folders; several = pooled (centralised) */
    int ndata;
    const char *preset;      /* "tiny" | "small" | "ref" */
    int epochs;
    int batch;               /* 0 = preset default (16 tiny, 8 small/ref on CPU, 32 on CUDA) */
    int steps_per_epoch;     /* 0 = training slices / batch */
    float lr;                /* initial learning rate (default 1e-3) */
    int constant_lr;         /* 0: cosine decay per epoch to lr/20; 1: constant */
    const char *device;      /* "cpu" | "cuda" | "auto" */
    const char *out;         /* checkpoint written after every epoch */
    const char *init;        /* optional checkpoint to start from */
    uint64_t seed;
    int threads;             /* CPU threads, 0 = all */
    int progress;            /* draw a progress bar on stderr */
    const char *metrics_json;/* optional: one JSON line per epoch appended here */
} fs_train_opts;

typedef struct {
    int epochs_done;
    double final_loss;
    double val_dice[3];       /* mean over all held-out cases */
    int nsites;
    double site_dice[16][3];  /* per site (first 16) */
    double seconds, img_per_s;
} fs_train_result;

fs_status fs_train_run(const fs_train_opts *o, fs_train_result *res);

/* Dice of a model on cases (batch ≤ the model's max batch); per-case Dice in
 * dice[c][3] when non-NULL; mean over cases in mean[3]. Cases need their seg. */
fs_status fs_eval_cases(fs_unet *m, const fs_case *const *cases, int n, int batch,
                        double (*dice)[3], double mean[3]);

/* Segment one case: pred_native receives nz·ny·nx classes 0..3. probs_out, when
 * non-NULL, receives [nslices][4][S][S] probabilities (caller allocates). */
fs_status fs_predict_case(fs_unet *m, const fs_case *c, int batch, uint8_t *pred_native,
                          float *probs_out);

/* Load a checkpoint into a new model on backend be (batch = max batch). The
 * preset in the file must be one fedseg knows and its parameter count must
 * match. */
fs_status fs_unet_load(const char *path, const fs_backend *be, void *ctx, int batch,
                       fs_unet **out, fs_ckpt_meta *meta);

#endif
