/*
 * tests/test_robust.c — robust aggregation (aggregator/robust.c): the
 * coordinate-wise median and trimmed mean on values computed by hand, an
 * outlier site (a poisoned update 10^6 times larger) that drags the mean far
 * away but leaves the median and the trimmed mean within the honest sites'
 * range, invariance to the sites' order, and the spool-file driver (a length
 * no chunk divides) equal bit for bit to the in-memory statistic.
 */
#include "check.h"
#include "aggregator/robust.h"
#include "common/rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void hand_values(void)
{
    float a[] = {4, 1}, b[] = {100, 2}, c[] = {3, 3}, d[] = {1, 4}, e[] = {2, 100};
    const float *rows5[] = {a, b, c, d, e};
    float out[2], scratch[5];
    /* column 0: {4,100,3,1,2} sorted {1,2,3,4,100}: median 3, trimmed(0.2) = (2+3+4)/3 = 3 */
    CHECK(fs_robust_coord(FS_AGG_MEDIAN, 0, rows5, 5, 2, out, scratch) == FS_OK, "median");
    CHECK(out[0] == 3 && out[1] == 3, "median: %g %g", out[0], out[1]);
    CHECK(fs_robust_coord(FS_AGG_TRIMMED_MEAN, 0.2, rows5, 5, 2, out, scratch) == FS_OK, "trimmed");
    CHECK(out[0] == 3 && out[1] == 3, "trimmed mean: %g %g", out[0], out[1]);
    /* four rows {4,100,3,1} sorted {1,3,4,100}: median (3+4)/2 = 3.5;
     * trimmed(0.25) drops 1 and 100: (3+4)/2 = 3.5; trimmed(0) = 108/4 = 27 */
    CHECK(fs_robust_coord(FS_AGG_MEDIAN, 0, rows5, 4, 1, out, scratch) == FS_OK && out[0] == 3.5f,
          "even median: %g", out[0]);
    CHECK(fs_robust_coord(FS_AGG_TRIMMED_MEAN, 0.25, rows5, 4, 1, out, scratch) == FS_OK &&
          out[0] == 3.5f, "even trimmed: %g", out[0]);
    CHECK(fs_robust_coord(FS_AGG_TRIMMED_MEAN, 0.0, rows5, 4, 1, out, scratch) == FS_OK && out[0] == 27,
          "trim 0 = mean: %g", out[0]);
    CHECK(fs_robust_coord(FS_AGG_TRIMMED_MEAN, 0.5, rows5, 4, 1, out, scratch) == FS_ERR_ARG,
          "trim 0.5 accepted");
    CHECK(fs_robust_coord(FS_AGG_TRIMMED_MEAN, 0.4, rows5, 2, 1, out, scratch) == FS_OK,
          "trim 0.4 of 2 keeps both");
    CHECK(fs_robust_coord(FS_AGG_MEAN, 0, rows5, 4, 1, out, scratch) == FS_ERR_ARG, "mean accepted");
    fs_agg_rule r;
    CHECK(fs_agg_rule_parse("trimmed_mean", &r) == FS_OK && r == FS_AGG_TRIMMED_MEAN, "parse");
    CHECK(fs_agg_rule_parse("krum", &r) == FS_ERR_ARG, "unknown rule accepted");
}

/* Five sites: four honest updates near +0.01, one outlier 10^6 times larger. */
static void outlier_site(void)
{
    enum { S = 5, N = 70001 };
    static float up[S][N], med[N], trim[N], med2[N], mean[N];
    fs_rng r;
    fs_rng_seed(&r, 11, 0);
    for (int s = 0; s < S; s++)
        for (int i = 0; i < N; i++)
            up[s][i] = 0.01f + 0.001f * (float)fs_rng_normal(&r);
    for (int i = 0; i < N; i++) up[2][i] *= 1e6f; /* the poisoned site */
    const float *rows[S] = {up[0], up[1], up[2], up[3], up[4]};
    float scratch[S];
    CHECK(fs_robust_coord(FS_AGG_MEDIAN, 0, rows, S, N, med, scratch) == FS_OK, "median");
    CHECK(fs_robust_coord(FS_AGG_TRIMMED_MEAN, 0.2, rows, S, N, trim, scratch) == FS_OK, "trimmed");
    size_t bad_med = 0, bad_trim = 0, mean_far = 0;
    for (int i = 0; i < N; i++) {
        float lo = up[0][i], hi = up[0][i];
        for (int s = 0; s < S; s++)
            if (s != 2) { lo = fminf(lo, up[s][i]); hi = fmaxf(hi, up[s][i]); }
        double m = 0;
        for (int s = 0; s < S; s++) m += up[s][i];
        mean[i] = (float)(m / S);
        bad_med += !(med[i] >= lo && med[i] <= hi);
        bad_trim += !(trim[i] >= lo && trim[i] <= hi);
        mean_far += fabsf(mean[i]) > 100.0f * hi;
    }
    CHECK(bad_med == 0, "median left the honest range at %zu coordinates", bad_med);
    CHECK(bad_trim == 0, "trimmed mean left the honest range at %zu coordinates", bad_trim);
    CHECK(mean_far > N / 2, "the outlier did not move the mean (%zu coordinates) — test is vacuous", mean_far);
    /* order invariance */
    const float *rev[S] = {up[4], up[3], up[2], up[1], up[0]};
    CHECK(fs_robust_coord(FS_AGG_MEDIAN, 0, rev, S, N, med2, scratch) == FS_OK, "median rev");
    CHECK(!memcmp(med, med2, sizeof med), "median depends on the order of the sites");

    /* spool files, read in chunks of 1000 (70001 is not a multiple) */
    char names[S][64];
    const char *paths[S];
    for (int s = 0; s < S; s++) {
        snprintf(names[s], sizeof names[s], "robust_site%d.upd", s);
        paths[s] = names[s];
        FILE *f = fopen(names[s], "wb");
        CHECK(f && fwrite(up[s], sizeof(float), N, f) == N, "write spool");
        if (f) fclose(f);
    }
    CHECK(fs_robust_spools(FS_AGG_TRIMMED_MEAN, 0.2, paths, S, N, 1000, med2) == FS_OK, "spools");
    CHECK(!memcmp(trim, med2, sizeof trim), "spool trimmed mean differs from the in-memory one");
    CHECK(fs_robust_spools(FS_AGG_MEDIAN, 0, paths, S, N, 65536, med2) == FS_OK, "spools 2");
    CHECK(!memcmp(med, med2, sizeof med), "spool median differs from the in-memory one");
    CHECK(fs_robust_spools(FS_AGG_MEDIAN, 0, paths, S, N + 1, 1000, med2) == FS_ERR_FORMAT,
          "a short spool accepted");
    for (int s = 0; s < S; s++) unlink(names[s]);
    CHECK(fs_robust_spools(FS_AGG_MEDIAN, 0, paths, S, N, 1000, med2) == FS_ERR_IO, "missing spool");
}

int main(void)
{
    hand_values();
    outlier_site();
    return check_result();
}
