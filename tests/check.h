/*
 * tests/check.h — tiny assertion helpers shared by the C tests.
 * CHECK(cond, fmt, ...) records a failure and goes on; a test's main returns
 * check_result(): 0 when nothing failed, 1 otherwise. check_close() compares
 * arrays element by element (|got − want| ≤ atol + rtol·|want|) and prints the
 * first mismatches with their indices.
 */
#ifndef FS_TEST_CHECK_H
#define FS_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stddef.h>

static int check_failures_ = 0;

#define CHECK(cond, ...) do { if (!(cond)) { check_failures_++; \
    fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); \
    fputc('\n', stderr); } } while (0)

static inline int check_result(void)
{
    if (check_failures_) fprintf(stderr, "%d check(s) failed\n", check_failures_);
    else fprintf(stderr, "all checks passed\n");
    return check_failures_ ? 1 : 0;
}

/* Returns the number of mismatches (and counts one failure if any). */
static inline size_t check_close(const char *what, const float *got, const float *want, size_t n,
                                 float atol, float rtol)
{
    size_t bad = 0; double worst = 0; size_t worst_i = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        double lim = atol + rtol * fabs((double)want[i]);
        if (!(d <= lim)) {
            if (bad < 5) fprintf(stderr, "  %s[%zu]: got %.8g want %.8g (|diff| %.3g > %.3g)\n",
                                 what, i, got[i], want[i], d, lim);
            bad++;
        }
        if (d > worst) { worst = d; worst_i = i; }
    }
    if (bad) {
        check_failures_++;
        fprintf(stderr, "FAIL %s: %zu of %zu elements outside tolerance (worst |diff| %.3g at %zu)\n",
                what, bad, n, worst, worst_i);
    }
    return bad;
}

#endif
