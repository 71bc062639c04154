/*
 * tests/test_philox.c — kernels/philox.h against the published known answers
 * of Random123's kat_vectors (philox4x32, 10 rounds), and its Gaussian
 * mapping: moments of one million draws, determinism and independence of
 * streams.
 */
#include "kernels/philox.h"
#include "check.h"

#include <string.h>

int main(void)
{
    static const uint32_t kat[3][10] = {
        { 0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 },
        { 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
          0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd },
        { 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
          0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 },
    };
    for (int t = 0; t < 3; t++) {
        uint32_t out[4];
        fs_philox4x32_10(kat[t], kat[t] + 4, out);
        CHECK(memcmp(out, kat[t] + 6, sizeof out) == 0,
              "KAT %d: got %08x %08x %08x %08x", t, out[0], out[1], out[2], out[3]);
    }

    /* Gaussian: mean 0, variance 1, kurtosis 3 within a few standard errors. */
    const int n = 1000000;
    double s1 = 0, s2 = 0, s4 = 0;
    for (int i = 0; i < n; i++) {
        double g = fs_philox_gauss(0x1234abcdULL, 7, (uint64_t)i);
        s1 += g; s2 += g * g; s4 += g * g * g * g;
    }
    double mean = s1 / n, var = s2 / n - mean * mean, kurt = s4 / n;
    CHECK(fabs(mean) < 5.0 / sqrt(n), "gaussian mean %g", mean);
    CHECK(fabs(var - 1.0) < 5.0 * sqrt(2.0 / n), "gaussian variance %g", var);
    CHECK(fabs(kurt - 3.0) < 5.0 * sqrt(96.0 / n), "gaussian fourth moment %g", kurt);

    /* Same (seed, stream, i) → same number; another stream → another number. */
    CHECK(fs_philox_gauss(9, 1, 12345) == fs_philox_gauss(9, 1, 12345), "not deterministic");
    int same = 0;
    double c = 0;
    for (int i = 0; i < 10000; i++) {
        double a = fs_philox_gauss(9, 1, (uint64_t)i), b = fs_philox_gauss(9, 2, (uint64_t)i);
        same += a == b;
        c += a * b;
    }
    CHECK(same == 0, "%d equal draws across streams", same);
    CHECK(fabs(c / 10000) < 0.05, "streams correlate: %g", c / 10000);
    return check_result();
}
