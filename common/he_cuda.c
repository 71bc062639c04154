/*
 * common/he_cuda.c — the scheme's GPU path (common/he.h, fs_he_cuda_*): hands
 * the context's tables to the device kernels of kernels/cuda/he_ntt.cu and
 * checks arguments as the CPU path does. Without the CUDA backend every entry
 * answers FS_ERR_UNSUPPORTED, so callers need no #ifdef.
 *
 * Tested by tests/test_he_cuda.c (bit-identical to the CPU; exits 77 without
 * a device).
 */
#include "common/he.h"
#include "common/log.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#ifdef FS_HAVE_CUDA
#include "kernels/cuda/he_cuda.h"

typedef struct {
    fs_he_dev *dev;
    uint8_t key_id[FS_HE_KEYID_BYTES];
    int have_pk;
} he_gpu;

fs_status fs_he_cuda_open(void **out, const fs_he_ctx *c)
{
    if (!out || !c || !c->a_hat) return FS_ERR_ARG;
    *out = NULL;
    const uint64_t *w[FS_HE_L], *wp[FS_HE_L], *iw[FS_HE_L], *iwp[FS_HE_L];
    uint64_t ninv[FS_HE_L], ninvp[FS_HE_L], dp[FS_HE_L];
    for (unsigned j = 0; j < FS_HE_L; j++) {
        w[j] = c->ntt[j].w; wp[j] = c->ntt[j].wp; iw[j] = c->ntt[j].iw; iwp[j] = c->ntt[j].iwp;
        ninv[j] = c->ntt[j].ninv; ninvp[j] = c->ntt[j].ninvp;
        dp[j] = (uint64_t)(((unsigned __int128)c->delta[j] << 64) / c->q[j]);
    }
    fs_he_dev_tables t = { .n = FS_HE_N, .logn = FS_HE_LOGN, .nprimes = FS_HE_L, .q = c->q,
                           .w = w, .wp = wp, .iw = iw, .iwp = iwp, .ninv = ninv, .ninvp = ninvp,
                           .delta = c->delta, .deltap = dp, .a_hat = c->a_hat,
                           .a_hat_p = c->a_hat_p };
    he_gpu *g = calloc(1, sizeof *g);
    if (!g) return FS_ERR_NOMEM;
    fs_status st = fs_he_dev_open(&g->dev, &t);
    if (st != FS_OK) {
        free(g);
        return st;
    }
    *out = g;
    return FS_OK;
}

void fs_he_cuda_close(void *dev)
{
    he_gpu *g = dev;
    if (!g) return;
    fs_he_dev_close(g->dev);
    free(g);
}

fs_status fs_he_cuda_ntt(void *dev, unsigned prime, int inverse, uint64_t *polys, size_t npolys)
{
    he_gpu *g = dev;
    if (!g) return FS_ERR_ARG;
    return fs_he_dev_ntt(g->dev, prime, inverse, polys, npolys);
}

fs_status fs_he_cuda_encrypt_seeded(void *dev, const fs_he_ctx *c, const fs_he_pubkey *pk,
                                    const int64_t *m, size_t count,
                                    const uint8_t seed[FS_HE_SEED_BYTES], uint64_t *cts)
{
    he_gpu *g = dev;
    if (!g || !c || !pk || (count && !m) || !seed || !cts) {
        fs_log_error("he: cuda encrypt: NULL argument");
        return FS_ERR_ARG;
    }
    const int64_t half = (int64_t)1 << (FS_HE_PLAIN_BITS - 1);
    for (size_t i = 0; i < count; i++)
        if (m[i] <= -half || m[i] >= half) {
            fs_log_error("he: cuda encrypt: value %zu = %lld outside the plaintext range", i,
                         (long long)m[i]);
            return FS_ERR_ARG;
        }
    if (!g->have_pk || memcmp(g->key_id, pk->key_id, FS_HE_KEYID_BYTES)) {
        FS_TRY(fs_he_dev_set_pk(g->dev, pk->b_hat, pk->b_hat_p));
        memcpy(g->key_id, pk->key_id, FS_HE_KEYID_BYTES);
        g->have_pk = 1;
    }
    return fs_he_dev_encrypt(g->dev, seed, m, count, cts);
}

fs_status fs_he_cuda_encrypt(void *dev, const fs_he_ctx *c, const fs_he_pubkey *pk,
                             const int64_t *m, size_t count, uint64_t *cts)
{
    uint8_t seed[FS_HE_SEED_BYTES];
    randombytes_buf(seed, sizeof seed);
    fs_status st = fs_he_cuda_encrypt_seeded(dev, c, pk, m, count, seed, cts);
    sodium_memzero(seed, sizeof seed);
    return st;
}

fs_status fs_he_cuda_ct_add(void *dev, uint64_t *acc, const uint64_t *ct, size_t nct)
{
    he_gpu *g = dev;
    if (!g || (nct && (!acc || !ct))) return FS_ERR_ARG;
    if (!nct) return FS_OK;
    const size_t bytes = nct * FS_HE_CT_WORDS * sizeof(uint64_t);
    void *da = NULL, *dc = NULL;
    fs_status st = fs_he_dev_alloc(g->dev, &da, bytes);
    if (st == FS_OK) st = fs_he_dev_alloc(g->dev, &dc, bytes);
    if (st == FS_OK) st = fs_he_dev_copy(g->dev, da, acc, bytes, 1);
    if (st == FS_OK) st = fs_he_dev_copy(g->dev, dc, ct, bytes, 1);
    if (st == FS_OK) st = fs_he_dev_ct_add(g->dev, da, dc, nct);
    if (st == FS_OK) st = fs_he_dev_copy(g->dev, acc, da, bytes, 0);
    if (st == FS_OK) st = fs_he_dev_sync(g->dev);
    if (da) fs_he_dev_free(g->dev, da);
    if (dc) fs_he_dev_free(g->dev, dc);
    return st;
}

void *fs_he_cuda_device(void *dev) { return dev ? ((he_gpu *)dev)->dev : NULL; }

struct fs_he_cuda_sum {
    he_gpu *g;
    uint64_t *d_sum, *d_stage;
    size_t nct;
};

fs_status fs_he_cuda_sum_new(void *dev, size_t nct, fs_he_cuda_sum **out)
{
    if (!dev || !out || !nct) return FS_ERR_ARG;
    *out = NULL;
    fs_he_cuda_sum *u = calloc(1, sizeof *u);
    if (!u) return FS_ERR_NOMEM;
    u->g = dev;
    u->nct = nct;
    const size_t ctb = FS_HE_CT_WORDS * sizeof(uint64_t);
    fs_status st = fs_he_dev_alloc(u->g->dev, (void **)&u->d_sum, nct * ctb);
    if (st == FS_OK) st = fs_he_dev_alloc(u->g->dev, (void **)&u->d_stage, ctb);
    if (st == FS_OK) st = fs_he_dev_zero(u->g->dev, u->d_sum, nct * ctb);
    if (st == FS_OK) st = fs_he_dev_sync(u->g->dev);
    if (st != FS_OK) {
        fs_he_cuda_sum_free(u);
        return st;
    }
    *out = u;
    return FS_OK;
}

fs_status fs_he_cuda_sum_add(fs_he_cuda_sum *u, size_t index, const uint64_t *ct)
{
    if (!u || !ct || index >= u->nct) return FS_ERR_ARG;
    FS_TRY(fs_he_dev_copy(u->g->dev, u->d_stage, ct, FS_HE_CT_WORDS * sizeof(uint64_t), 1));
    return fs_he_dev_ct_add(u->g->dev, u->d_sum + index * FS_HE_CT_WORDS, u->d_stage, 1);
}

fs_status fs_he_cuda_sum_get(fs_he_cuda_sum *u, uint64_t *host)
{
    if (!u || !host) return FS_ERR_ARG;
    FS_TRY(fs_he_dev_copy(u->g->dev, host, u->d_sum, u->nct * FS_HE_CT_WORDS * sizeof(uint64_t), 0));
    return fs_he_dev_sync(u->g->dev);
}

void fs_he_cuda_sum_free(fs_he_cuda_sum *u)
{
    if (!u) return;
    if (u->d_sum) fs_he_dev_free(u->g->dev, u->d_sum);
    if (u->d_stage) fs_he_dev_free(u->g->dev, u->d_stage);
    free(u);
}

#else /* no CUDA backend */

struct fs_he_cuda_sum { int unused; };
fs_status fs_he_cuda_sum_new(void *dev, size_t nct, fs_he_cuda_sum **out)
{
    (void)dev; (void)nct;
    if (out) *out = NULL;
    return FS_ERR_UNSUPPORTED;
}
fs_status fs_he_cuda_sum_add(fs_he_cuda_sum *u, size_t index, const uint64_t *ct)
{
    (void)u; (void)index; (void)ct;
    return FS_ERR_UNSUPPORTED;
}
fs_status fs_he_cuda_sum_get(fs_he_cuda_sum *u, uint64_t *host)
{
    (void)u; (void)host;
    return FS_ERR_UNSUPPORTED;
}
void fs_he_cuda_sum_free(fs_he_cuda_sum *u) { (void)u; }

fs_status fs_he_cuda_open(void **out, const fs_he_ctx *c)
{
    (void)c;
    if (out) *out = NULL;
    return FS_ERR_UNSUPPORTED;
}
void fs_he_cuda_close(void *dev) { (void)dev; }
fs_status fs_he_cuda_ntt(void *dev, unsigned prime, int inverse, uint64_t *polys, size_t npolys)
{
    (void)dev; (void)prime; (void)inverse; (void)polys; (void)npolys;
    return FS_ERR_UNSUPPORTED;
}
fs_status fs_he_cuda_encrypt_seeded(void *dev, const fs_he_ctx *c, const fs_he_pubkey *pk,
                                    const int64_t *m, size_t count,
                                    const uint8_t seed[FS_HE_SEED_BYTES], uint64_t *cts)
{
    (void)dev; (void)c; (void)pk; (void)m; (void)count; (void)seed; (void)cts;
    return FS_ERR_UNSUPPORTED;
}
fs_status fs_he_cuda_encrypt(void *dev, const fs_he_ctx *c, const fs_he_pubkey *pk,
                             const int64_t *m, size_t count, uint64_t *cts)
{
    (void)dev; (void)c; (void)pk; (void)m; (void)count; (void)cts;
    return FS_ERR_UNSUPPORTED;
}
fs_status fs_he_cuda_ct_add(void *dev, uint64_t *acc, const uint64_t *ct, size_t nct)
{
    (void)dev; (void)acc; (void)ct; (void)nct;
    return FS_ERR_UNSUPPORTED;
}
void *fs_he_cuda_device(void *dev) { (void)dev; return NULL; }

#endif
