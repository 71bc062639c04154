/*
 * common/rng.h — deterministic pseudo-random numbers (xoshiro256**, seeded by
 * splitmix64). The same seed gives the same stream on every machine, which is
 * what makes `fedseg synth` byte-reproducible and training runs repeatable.
 * Not for cryptography.
 */
#ifndef FS_RNG_H
#define FS_RNG_H

#include <stdint.h>
#include <math.h>

typedef struct { uint64_t s[4]; } fs_rng;

static inline uint64_t fs_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Seed from a 64-bit value; stream distinguishes independent sub-streams
 * (e.g. one per site or per case) drawn from the same user seed. */
static inline void fs_rng_seed(fs_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ULL);
    for (int i = 0; i < 4; i++) r->s[i] = fs_splitmix64(&x);
}

static inline uint64_t fs_rng_next(fs_rng *r)
{
    uint64_t *s = r->s;
    uint64_t t = s[1] << 17, res = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return res;
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double fs_rng_uniform(fs_rng *r) { return (double)(fs_rng_next(r) >> 11) * 0x1.0p-53; }

/* Uniform integer in [0, n), n > 0 (negligible bias for n << 2^64). */
static inline uint64_t fs_rng_below(fs_rng *r, uint64_t n) { return fs_rng_next(r) % n; }

/* Standard normal (Box–Muller; one value per call, deterministic). */
static inline double fs_rng_normal(fs_rng *r)
{
    double u1 = fs_rng_uniform(r), u2 = fs_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
