/*
 * node/noniid.h — the site's half of the non-IID algorithms, as pure
 * functions on flat parameter vectors (node/unet.h order):
 *
 * FedBN (Li et al., ICLR 2021): the instance-norm affine parameters (γ, β of
 * every "<block>.1" and "<block>.4" tensor) stay at the site. The node
 * overwrites them in every received global model with its own values,
 * trains, keeps the trained values, and sends a zero delta for them — so the
 * aggregator's average (weighted or robust, any server optimiser: a zero
 * pseudo-gradient leaves their moments and values unchanged) never mixes
 * them.
 *
 * SCAFFOLD (Karimireddy et al., ICML 2020): with server control c and site
 * control c_i, every local step adds the correction (c − c_i) to the update
 * direction; after K local steps of learning rate η with local result y from
 * the global x, option II:
 *     c_i⁺ = c_i − c + (x − y) / (K·η),    Δc_i = c_i⁺ − c_i,
 * and the site sends [y − x | Δc_i]. fedseg's local optimiser is Adam, so
 * the correction is applied to Adam's step direction (w −= η·(adam_dir +
 * c − c_i)) — the quantity (x − y)/(K·η) estimates: with SGD in place of
 * Adam this is the paper's algorithm exactly.
 *
 * Tested by tests/test_noniid_node.c.
 */
#ifndef FS_NONIID_H
#define FS_NONIID_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/status.h"

/* mask[i] = 1 for the instance-norm parameters of the U-Net (base, depth),
 * else 0; P is the model's parameter count (checked). Returns the number of
 * masked parameters, or 0 with FS_ERR_ARG logged on a size mismatch. */
size_t fs_fedbn_mask(int base, int depth, uint8_t *mask, size_t P);
/* w[i] = local[i] where mask[i]. */
void fs_fedbn_restore(const uint8_t *mask, const float *local, float *w, size_t P);
/* local[i] = w[i] where mask[i] (after local training: the site's values). */
void fs_fedbn_keep(const uint8_t *mask, const float *w, float *local, size_t P);
/* delta[i] = 0 where mask[i] (what the site sends for them). */
void fs_fedbn_zero(const uint8_t *mask, float *delta, size_t P);

/* corr[i] = c[i] − ci[i]. */
void fs_scaffold_correction(const float *c, const float *ci, float *corr, size_t P);
/* Option II after K steps of rate lr: delta = y − x (what the site sends);
 * dci receives Δc_i and ci becomes c_i⁺. FS_ERR_ARG for K < 1 or lr ≤ 0;
 * FS_ERR_NUMERIC when a value is not finite (ci then unchanged). */
fs_status fs_scaffold_update(float *ci, const float *c, const float *delta, long K, float lr,
                             float *dci, size_t P);

#endif
