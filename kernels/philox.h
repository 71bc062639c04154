/*
 * kernels/philox.h — Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3", SC 2011), the counter-based generator behind
 * every piece of random noise the aggregator adds (differential privacy).
 *
 * Counter-based means element i's random bits are a pure function of (key,
 * counter): the CPU and a CUDA kernel produce the same bits for the same i in
 * any order, on any number of threads, without carrying state. The integer
 * output is bit-identical everywhere (tests/test_philox.c checks the published
 * known answers of the Random123 distribution). The Gaussian mapping uses
 * double-precision log/sin/cos, whose last bit may differ between glibc and
 * CUDA's libdevice: CPU and GPU agree within FS_TOL_PHILOX_GAUSS (relative).
 *
 * Usable from C and CUDA (functions are static inline and marked
 * __host__ __device__ under nvcc). Not a cryptographic generator: privacy noise
 * needs unpredictability only against the aggregator's *observers*, and the
 * seed is drawn from the OS CSPRNG by the caller.
 */
#ifndef FS_PHILOX_H
#define FS_PHILOX_H

#include <stdint.h>
#include <math.h>

#ifdef __CUDACC__
#define FS_PHILOX_FN static inline __host__ __device__
#else
#define FS_PHILOX_FN static inline
#endif

#define FS_TOL_PHILOX_GAUSS 1e-12

/* One Philox4x32-10 block: out = philox(ctr, key). */
FS_PHILOX_FN void fs_philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2],
                                   uint32_t out[4])
{
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
    uint32_t k0 = key_in[0], k1 = key_in[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* A uniform double in the open interval (0, 1) from 32 random bits. */
FS_PHILOX_FN double fs_philox_u01(uint32_t x)
{
    return ((double)x + 0.5) * (1.0 / 4294967296.0);
}

/*
 * Standard normal number i of the stream (seed, stream): block i/4 of
 * Philox with counter {i/4 low, i/4 high, stream low, stream high} and key
 * {seed low, seed high}; its words (u0,u1) and (u2,u3) give two Box-Muller
 * pairs, element i taking entry i%4 of (r0 cos, r0 sin, r1 cos, r1 sin).
 */
FS_PHILOX_FN double fs_philox_gauss(uint64_t seed, uint64_t stream, uint64_t i)
{
    uint64_t b = i >> 2;
    uint32_t ctr[4] = { (uint32_t)b, (uint32_t)(b >> 32), (uint32_t)stream,
                        (uint32_t)(stream >> 32) };
    uint32_t key[2] = { (uint32_t)seed, (uint32_t)(seed >> 32) };
    uint32_t x[4];
    fs_philox4x32_10(ctr, key, x);
    unsigned j = (unsigned)(i & 3);
    double u = fs_philox_u01(x[j & 2]), v = fs_philox_u01(x[(j & 2) + 1]);
    double r = sqrt(-2.0 * log(u));
    double a = 6.283185307179586476925286766559 * v;
    return (j & 1) ? r * sin(a) : r * cos(a);
}

#endif
