/*
 * node/session.h — a site's local-training session: its data loaded once, and
 * the model, backend context, batch sampler and batch buffers kept across
 * federated rounds. The site node (node/client.c) drives one session:
 *
 *   fs_session_open                      load + split the site's cases, build the model
 *   per round: fs_session_set_params     the received global model w_global
 *              fs_session_eval           held-out Dice of w_global
 *              fs_session_seed           (optional) a reproducible stream per round
 *              fs_session_train          local epochs; Adam restarts from zero
 *              fs_session_get_params     w_local (the caller forms w_local - w_global)
 *   fs_session_free
 *
 * Split: each site folder's sorted cases are divided exactly as `fedseg train`
 * divides them (fs_split_is_val): about 20% held out for evaluation, the rest
 * for training. fs_session_nsamples — the number of training slices — is the
 * site's FedAvg weight.
 *
 * Optimiser: every fs_session_train call starts Adam afresh (moments and step
 * count zero), so a round's result depends only on the starting parameters,
 * the hyper-parameters and the sampler's stream — never on earlier rounds.
 * With mu > 0 the FedProx reference is the parameters at the start of that
 * call (the global model).
 *
 * Memory: everything is allocated by fs_session_open (the model's own arena,
 * one batch of images and labels, a zero vector for resetting Adam); training
 * steps allocate nothing. Evaluation allocates per case (predictions).
 *
 * Tested by tests/test_session.c (synthetic site made with `fedseg synth`).
 */
#ifndef FS_SESSION_H
#define FS_SESSION_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include "kernels/status.h"

typedef struct fs_session fs_session;

/* Loads the site folders data_dirs[0..ndirs) (several = pooled) at the size of
 * model preset `preset` ("tiny" | "small" | "ref"), picks the backend
 * `device` ("cpu" | "cuda" | "auto"), and builds the model with parameters
 * initialised from `seed` (the sampler's stream is seed ^ 0x5eed, as in
 * `fedseg train`). batch 0 = the preset's default (16 tiny, 8 small/ref on
 * the CPU, 32 on CUDA); threads 0 = all cores (CPU backend). Errors are
 * logged (unknown preset, unreadable case, no training cases, no backend);
 * *out is NULL on failure. */
fs_status fs_session_open(fs_session **out, const char *const *data_dirs, int ndirs,
                          const char *preset, const char *device, int batch, uint64_t seed,
                          int threads);
void fs_session_free(fs_session *s); /* NULL-safe */

size_t fs_session_nparams(const fs_session *s);
/* Training slices over the training cases: the site's FedAvg weight. */
uint64_t fs_session_nsamples(const fs_session *s);
int fs_session_ntrain_cases(const fs_session *s);
int fs_session_nval_cases(const fs_session *s);
int fs_session_batch(const fs_session *s);
const char *fs_session_preset(const fs_session *s);  /* "tiny", ... */
const char *fs_session_backend(const fs_session *s); /* "cpu" | "cuda" */

/* Copies nparams floats in / out (host memory, the unet.h parameter order). */
fs_status fs_session_set_params(fs_session *s, const float *w);
fs_status fs_session_get_params(fs_session *s, float *w);

/* Mean Dice (whole tumour, tumour core, enhancing) of the current parameters
 * over the held-out cases; NaN for each when the site has no held-out case. */
fs_status fs_session_eval(fs_session *s, double dice[3]);

/* Restarts the batch sampler's random stream from seed (same seed, same
 * batches from here on). */
void fs_session_seed(fs_session *s, uint64_t seed);

/* When stop is non-NULL, fs_session_train checks *stop before every step and,
 * once it is non-zero, returns early with FS_OK and the mean loss of the steps
 * done (the caller, who owns the flag, knows to discard the result). */
void fs_session_set_stop(fs_session *s, volatile sig_atomic_t *stop);

/* Trains epochs × steps_per_epoch steps (steps_per_epoch 0 = training slices /
 * batch, rounded up) of Adam with learning rate lr from the current
 * parameters. Adam's moments and step count are reset to zero first; with
 * mu > 0 the FedProx reference is set to the current (starting) parameters.
 * *mean_loss (may be NULL) receives the mean loss over all steps.
 * FS_ERR_NUMERIC (logged) when the loss becomes NaN or Inf. */
fs_status fs_session_train(fs_session *s, int epochs, int steps_per_epoch, float lr, float mu,
                           double *mean_loss);

/* SCAFFOLD: every later training step also moves the parameters by
 * −lr·corr (corr: nparams floats, copied; NULL = off). node/noniid.h. */
fs_status fs_session_set_correction(fs_session *s, const float *corr);
/* Training steps the last fs_session_train call made (K of SCAFFOLD). */
long fs_session_last_steps(const fs_session *s);
/* The U-Net's base width and depth (for node/noniid.h's FedBN mask). */
void fs_session_arch(const fs_session *s, int *base, int *depth);

#endif
