/*
 * kernels/cuda/he_cuda.h — device entry points of the homomorphic-encryption
 * kernels (kernels/cuda/he_ntt.cu), callable from C. They know nothing of the
 * scheme's types: common/he_cuda.c hands them the tables that common/he.c
 * built (primes, twiddles with Shoup companions, a and b in NTT form, Δ), so
 * the kernels layer stays below common/.
 *
 * Layout as in common/he.h: a polynomial is L residue vectors of n words; a
 * ciphertext is two polynomials. Host pointers unless named d_*.
 * Built only with the CUDA backend (FS_HAVE_CUDA); tested by
 * tests/test_he_cuda.c against the CPU code, bit for bit.
 */
#ifndef FS_HE_CUDA_H
#define FS_HE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fs_he_dev fs_he_dev;

/* Tables for L primes of one ring dimension n (≤ 4096): per prime j,
 * w[j], wp[j], iw[j], iwp[j] (n words each, as fs_he_ntt), ninv/ninvp,
 * delta/deltap (Δ mod q_j and its Shoup companion); a_hat, a_hat_p
 * (L·n words). Opens device 0; FS_ERR_DEVICE when there is none. */
typedef struct {
    uint32_t n, logn, nprimes;
    const uint64_t *q;
    const uint64_t *const *w, *const *wp, *const *iw, *const *iwp;
    const uint64_t *ninv, *ninvp, *delta, *deltap;
    const uint64_t *a_hat, *a_hat_p;
} fs_he_dev_tables;

fs_status fs_he_dev_open(fs_he_dev **dev, const fs_he_dev_tables *t);
void fs_he_dev_close(fs_he_dev *dev);
/* b (NTT form) and its Shoup companions, L·n words each. */
fs_status fs_he_dev_set_pk(fs_he_dev *dev, const uint64_t *b_hat, const uint64_t *b_hat_p);
/* In-place NTT (inverse = 0) or INTT (inverse = 1) of npolys residue vectors
 * of prime j (host memory, copied in and out). */
fs_status fs_he_dev_ntt(fs_he_dev *dev, unsigned prime, int inverse, uint64_t *polys,
                        size_t npolys);
/* Encrypts m[0 .. count) (centred, already range-checked) into
 * ceil(count / n) ciphertexts, randomness from ChaCha20(seed, nonce = index)
 * exactly as fs_he_encrypt_seeded. */
fs_status fs_he_dev_encrypt(fs_he_dev *dev, const uint8_t seed[32], const int64_t *m,
                            size_t count, uint64_t *cts);
/* d_acc += d_ct (mod q) over nct ciphertexts in device memory. */
fs_status fs_he_dev_ct_add(fs_he_dev *dev, uint64_t *d_acc, const uint64_t *d_ct, size_t nct);
/* Device memory for the aggregator (bytes); free with fs_he_dev_free. */
fs_status fs_he_dev_alloc(fs_he_dev *dev, void **d_ptr, size_t bytes);
void fs_he_dev_free(fs_he_dev *dev, void *d_ptr);
/* Asynchronous on the handle's stream: a copy from pageable host memory
 * returns once the source is staged, so the host buffer may be reused. */
fs_status fs_he_dev_copy(fs_he_dev *dev, void *dst, const void *src, size_t bytes, int to_device);
fs_status fs_he_dev_zero(fs_he_dev *dev, void *d_ptr, size_t bytes);
fs_status fs_he_dev_sync(fs_he_dev *dev);

#ifdef __cplusplus
}
#endif

#endif
