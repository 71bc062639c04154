/*
 * kernels/chacha20.h — the ChaCha20 block function of RFC 8439 (the IETF
 * variant: 256-bit key, 96-bit nonce, 32-bit block counter), written once for
 * the CPU and CUDA mask-expansion ops (kernels/cpu/cpu_aggops.c,
 * kernels/cuda/cuda_aggops.cu), so both run the same code.
 *
 * Layout: the keystream of (key, nonce) is the concatenation of the 64-byte
 * blocks for counters 0, 1, 2, ...; block b serialises its 16 output words
 * little-endian. Read as little-endian uint32 words, mask word j is therefore
 * word j % 16 of block j / 16 — exactly what fs_chacha20_block writes, with no
 * byte shuffling. This is libsodium's crypto_stream_chacha20_ietf.
 *
 * Tested by tests/test_aggops.c: the RFC 8439 §2.3.2 block vector, and the
 * mask op against libsodium's crypto_stream_chacha20_ietf_xor_ic at several
 * offsets and lengths (tests/test_aggops_cuda.c then checks CUDA against the
 * CPU bit for bit).
 *
 * WARNING: key and nonce words are secrets of the caller; these functions keep
 * no copy, but their stack frames hold key material until overwritten — the
 * ops that call them wipe their own copies of the decoded keys.
 */
#ifndef FS_CHACHA20_H
#define FS_CHACHA20_H

#include <stdint.h>

#ifdef __CUDACC__
#define FS_CHACHA_FN static inline __host__ __device__
#else
#define FS_CHACHA_FN static inline
#endif

/* Little-endian 32-bit word from 4 bytes. */
FS_CHACHA_FN uint32_t fs_chacha20_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

FS_CHACHA_FN uint32_t fs_chacha20_rotl(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

/* The quarter round of RFC 8439 §2.1 on words a, b, c, d of x. */
#define FS_CHACHA_QR(x, a, b, c, d)                                   \
    do {                                                              \
        x[a] += x[b]; x[d] ^= x[a]; x[d] = fs_chacha20_rotl(x[d], 16); \
        x[c] += x[d]; x[b] ^= x[c]; x[b] = fs_chacha20_rotl(x[b], 12); \
        x[a] += x[b]; x[d] ^= x[a]; x[d] = fs_chacha20_rotl(x[d], 8);  \
        x[c] += x[d]; x[b] ^= x[c]; x[b] = fs_chacha20_rotl(x[b], 7);  \
    } while (0)

/*
 * One block (RFC 8439 §2.3): the state is the four constants "expand 32-byte
 * k", the 8 key words, the counter, the 3 nonce words; 20 rounds (10 column +
 * diagonal double rounds); out = rounds(state) + state, word by word.
 * key[8] and nonce[3] are the little-endian words of the 32-byte key and the
 * 12-byte nonce (fs_chacha20_load_key).
 */
FS_CHACHA_FN void fs_chacha20_block(const uint32_t key[8], uint32_t counter,
                                    const uint32_t nonce[3], uint32_t out[16])
{
    uint32_t s[16] = { 0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u,
                       key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
                       counter, nonce[0], nonce[1], nonce[2] };
    uint32_t x[16];
    for (int i = 0; i < 16; i++) x[i] = s[i];
    for (int r = 0; r < 10; r++) {
        FS_CHACHA_QR(x, 0, 4, 8, 12);
        FS_CHACHA_QR(x, 1, 5, 9, 13);
        FS_CHACHA_QR(x, 2, 6, 10, 14);
        FS_CHACHA_QR(x, 3, 7, 11, 15);
        FS_CHACHA_QR(x, 0, 5, 10, 15);
        FS_CHACHA_QR(x, 1, 6, 11, 12);
        FS_CHACHA_QR(x, 2, 7, 8, 13);
        FS_CHACHA_QR(x, 3, 4, 9, 14);
    }
    for (int i = 0; i < 16; i++) out[i] = x[i] + s[i];
}

/* Decodes a 32-byte key and a 12-byte nonce into little-endian words. */
FS_CHACHA_FN void fs_chacha20_load_key(const uint8_t key[32], const uint8_t nonce[12],
                                       uint32_t kw[8], uint32_t nw[3])
{
    for (int i = 0; i < 8; i++) kw[i] = fs_chacha20_le32(key + 4 * i);
    for (int i = 0; i < 3; i++) nw[i] = fs_chacha20_le32(nonce + 4 * i);
}

#endif
