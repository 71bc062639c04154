/*
 * common/dp.c — DP-FedAvg's parameter checks, L2 clipping, Gaussian noise on
 * the sum, the fixed-denominator average and adaptive clipping (common/dp.h
 * explains the mechanism). Plain readable loops: these are the reference
 * versions that the aggregation kernels are compared with.
 *
 * Tested by tests/test_dp.c (clipping bounds, noise statistics and chunking,
 * adaptive clipping convergence, parameter messages).
 */
#include "common/dp.h"
#include "kernels/backend.h"

#include <float.h>
#include <math.h>

#include <sodium.h>

#include "common/log.h"
#include "kernels/philox.h"

void fs_dp_params_default(fs_dp_params *p)
{
    p->mode = FS_DP_OFF;
    p->clip = 1.0;
    p->noise_multiplier = 1.0;
    p->delta = 1e-5;
    p->epsilon_budget = 0.0;
    p->sample_rate = 1.0;
    p->sites = 1;
    p->adaptive = 0;
    p->target_quantile = 0.5;
    p->clip_lr = 0.2;
    p->count_stddev = 0.0;
    p->granularity = 1e-5;
    p->min_sites = 1;
    p->rounding_beta = 0.0;
    p->dim = 0;
}

/* Logs "dp: <field> must be <rule>, got <value>" and returns FS_ERR_ARG. */
static fs_status bad_field(const char *field, const char *rule, double value)
{
    fs_log_error("dp: %s must be %s, got %g", field, rule, value);
    return FS_ERR_ARG;
}

fs_status fs_dp_params_check(const fs_dp_params *p)
{
    if (!p) {
        fs_log_error("dp: no parameters given");
        return FS_ERR_ARG;
    }
    if (p->mode != FS_DP_OFF && p->mode != FS_DP_CENTRAL && p->mode != FS_DP_DISTRIBUTED)
        return bad_field("mode", "off, central or distributed", (double)p->mode);
    if (p->mode == FS_DP_OFF) return FS_OK;
    if (!(p->clip > 0) || !isfinite(p->clip)) return bad_field("clip", "> 0 and finite", p->clip);
    if (!(p->noise_multiplier >= 0) || !isfinite(p->noise_multiplier))
        return bad_field("noise_multiplier", ">= 0 and finite", p->noise_multiplier);
    if (!(p->delta > 0 && p->delta < 1)) return bad_field("delta", "in (0, 1)", p->delta);
    if (!(p->epsilon_budget >= 0) || !isfinite(p->epsilon_budget))
        return bad_field("epsilon_budget", ">= 0 and finite (0 = no budget)", p->epsilon_budget);
    if (!(p->sample_rate > 0 && p->sample_rate <= 1))
        return bad_field("sample_rate", "in (0, 1]", p->sample_rate);
    if (p->sites < 1) return bad_field("sites", ">= 1", (double)p->sites);
    if (p->epsilon_budget > 0 && p->noise_multiplier == 0)
        return bad_field("noise_multiplier", "> 0 when an epsilon_budget is set",
                         p->noise_multiplier);
    if (p->delta >= 1.0 / p->sites)
        fs_log_warn("dp: delta %g is not below 1/sites = %g: a guarantee that can fail "
                    "for one site in %d protects little", p->delta, 1.0 / p->sites, p->sites);
    if (p->adaptive) {
        if (p->mode != FS_DP_CENTRAL)
            return bad_field("adaptive", "0 outside central mode (the clipped count is "
                             "not secure-aggregated here)", (double)p->adaptive);
        if (!(p->target_quantile > 0 && p->target_quantile < 1))
            return bad_field("target_quantile", "in (0, 1)", p->target_quantile);
        if (!(p->clip_lr > 0) || !isfinite(p->clip_lr))
            return bad_field("clip_lr", "> 0 and finite", p->clip_lr);
        if (!(p->count_stddev >= 0) || !isfinite(p->count_stddev))
            return bad_field("count_stddev", ">= 0 and finite (0 = automatic)", p->count_stddev);
        if (!(2.0 * fs_dp_count_stddev(p) > p->noise_multiplier))
            return bad_field("count_stddev", "> noise_multiplier/2 (else the count query "
                             "alone spends the whole budget)", p->count_stddev);
    }
    if (p->mode == FS_DP_DISTRIBUTED) {
        if (!(p->granularity > 0) || !isfinite(p->granularity))
            return bad_field("granularity", "> 0 and finite", p->granularity);
        if (p->min_sites < 1 || p->min_sites > p->sites)
            return bad_field("min_sites", "in [1, sites]", (double)p->min_sites);
        if (!(p->rounding_beta >= 0 && p->rounding_beta < 1))
            return bad_field("rounding_beta", "in [0, 1)", p->rounding_beta);
        if (p->dim < 1) return bad_field("dim", ">= 1", (double)p->dim);
        double s = fs_dp_ddg_local_stddev(p);
        if (!(s >= FS_DP_DGAUSS_MIN_SIGMA && s <= FS_DP_DGAUSS_MAX_SIGMA))
            return bad_field("noise_multiplier*clip/(granularity*sqrt(min_sites))",
                             "a local noise stddev in [1/16, 2^24] integer steps", s);
        if (s < 0.5)
            return bad_field("noise_multiplier*clip/(granularity*sqrt(min_sites))",
                             ">= 1/2 integer step (Kairouz et al.'s bound needs it)", s);
        double tau_d = p->sites > 1 ? 10.0 * exp(-3.14159265358979 * 3.14159265358979 * s * s)
                                          * (double)(p->sites - 1) * (double)p->dim : 0.0;
        if (tau_d > 1e-3)
            fs_log_warn("dp: local noise stddev %g integer steps is so small that the sum of "
                        "discrete Gaussians adds about %g to every RDP order (tau*d); use a "
                        "finer granularity so it is >= 2", s, tau_d);
    }
    return FS_OK;
}

double fs_dp_l2_norm(const float *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return sqrt(s);
}

/* v rounded to float towards zero: |result| <= |v|. */
static float to_float_towards_zero(double v)
{
    float f = (float)v;
    if (fabs((double)f) > fabs(v)) f = nextafterf(f, 0.0f);
    return f;
}

fs_status fs_dp_clip_l2(float *x, size_t n, double C, double *norm_out)
{
    if (!(C > 0) || !isfinite(C)) {
        fs_log_error("dp: clip norm must be > 0 and finite, got %g", C);
        return FS_ERR_ARG;
    }
    double norm = fs_dp_l2_norm(x, n);
    if (!isfinite(norm)) {
        fs_log_error("dp: update holds NaN or Inf; refusing to clip it");
        return FS_ERR_NUMERIC;
    }
    if (norm_out) *norm_out = norm;
    if (norm <= C) return FS_OK;
    double scale = C / norm;
    for (size_t i = 0; i < n; i++) x[i] = to_float_towards_zero((double)x[i] * scale);
    /* Rounding in the norm's sum can leave it a few ulps above C: shrink by a
     * relative 2^-30 until it is not (one pass in practice). */
    for (int pass = 0; pass < 64 && fs_dp_l2_norm(x, n) > C; pass++)
        for (size_t i = 0; i < n; i++)
            x[i] = to_float_towards_zero((double)x[i] * (1.0 - 0x1p-30));
    if (fs_dp_l2_norm(x, n) > C) {
        fs_log_error("dp: clipping to %g did not converge", C);
        return FS_ERR_NUMERIC;
    }
    return FS_OK;
}

fs_status fs_dp_add_gaussian(float *sum, size_t n, double stddev, uint64_t seed,
                             uint64_t stream, uint64_t offset)
{
    if (!(stddev >= 0) || !isfinite(stddev)) {
        fs_log_error("dp: noise stddev must be >= 0 and finite, got %g", stddev);
        return FS_ERR_ARG;
    }
    /* one definition of the noise: the CPU backend's gauss_add op, which the
     * CUDA op reproduces (kernels/aggops.h) */
    const fs_backend *cpu = fs_backend_cpu();
    return cpu->gauss_add(NULL, n, sum, offset, stddev, seed, stream);
}

uint64_t fs_dp_fresh_seed(void)
{
    uint64_t s;
    randombytes_buf(&s, sizeof s);
    return s;
}

double fs_dp_denominator(const fs_dp_params *p)
{
    return p->sample_rate * (double)p->sites;
}

void fs_dp_average(float *sum, size_t n, const fs_dp_params *p)
{
    double d = fs_dp_denominator(p);
    for (size_t i = 0; i < n; i++) sum[i] = (float)((double)sum[i] / d);
}

double fs_dp_count_stddev(const fs_dp_params *p)
{
    if (p->count_stddev > 0) return p->count_stddev;
    return fmax(fs_dp_denominator(p) / 20.0, p->noise_multiplier);
}

void fs_dp_adaptive_init(fs_dp_adaptive *a, const fs_dp_params *p)
{
    a->clip = p->clip;
    a->target_quantile = p->target_quantile;
    a->clip_lr = p->clip_lr;
    a->count_stddev = fs_dp_count_stddev(p);
    a->denominator = fs_dp_denominator(p);
    a->last_fraction = NAN;
}

double fs_dp_adaptive_update(fs_dp_adaptive *a, double unclipped, uint64_t seed,
                             uint64_t stream, uint64_t index)
{
    double noised = unclipped + a->count_stddev * fs_philox_gauss(seed, stream, index);
    double b = noised / a->denominator;
    a->last_fraction = b;
    a->clip *= exp(-a->clip_lr * (b - a->target_quantile));
    return a->clip;
}

double fs_dp_adaptive_sum_multiplier(double sigma, double count_stddev)
{
    double r = 1.0 / (sigma * sigma) - 1.0 / (4.0 * count_stddev * count_stddev);
    if (!(r > 0)) return NAN;
    return 1.0 / sqrt(r);
}
