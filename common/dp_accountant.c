/*
 * common/dp_accountant.c — Rényi-DP accounting for DP-FedAvg (common/dp.h):
 * the Poisson-sampled Gaussian's RDP at integer orders, composition over
 * rounds, conversion to (ε, δ), the budget check, σ calibration, and the
 * distributed discrete Gaussian's RDP with its τ term.
 *
 * Everything is evaluated at the fixed orders FS_DP_ORDERS (integers only, so
 * the sampled Gaussian's RDP is exact up to floating point: no fractional-
 * order series). tests/test_dp.c compares the per-order RDP, ε (both
 * conversions) and calibrated σ with Google's dp-accounting
 * (tests/make_dp_reference.py writes tests/data/dp_rdp_reference.txt with the
 * same orders).
 */
#include "common/dp.h"

#include <math.h>

#include "common/log.h"

static const double FS_DP_ORDERS[FS_DP_N_ORDERS] = {
    2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
    25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
    80, 96, 112, 128, 160, 192, 256, 384, 512, 768, 1024,
};

const double *fs_dp_orders(void)
{
    return FS_DP_ORDERS;
}

/* log(exp(a) + exp(b)) without overflow; a may be -INFINITY. */
static double log_add(double a, double b)
{
    double hi = fmax(a, b), lo = fmin(a, b);
    if (hi == -INFINITY) return -INFINITY;
    return hi + log1p(exp(lo - hi));
}

double fs_dp_rdp_sampled_gaussian(double q, double sigma, int alpha)
{
    if (q == 0) return 0.0;
    if (sigma == 0) return INFINITY;
    if (q == 1) return alpha / (2.0 * sigma * sigma);
    double log_q = log(q), log_1mq = log1p(-q), log_a = -INFINITY;
    double lg_a1 = lgamma(alpha + 1.0);
    for (int k = 0; k <= alpha; k++) {
        double log_binom = lg_a1 - lgamma(k + 1.0) - lgamma(alpha - k + 1.0);
        double term = log_binom + k * log_q + (alpha - k) * log_1mq
                    + ((double)k * k - k) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, term);
    }
    return log_a / (alpha - 1);
}

double fs_dp_epsilon_tight(const double rdp[FS_DP_N_ORDERS], double delta, double *order_out)
{
    double best = INFINITY, best_a = FS_DP_ORDERS[0];
    for (int j = 0; j < FS_DP_N_ORDERS; j++) {
        double a = FS_DP_ORDERS[j], r = rdp[j], e;
        if (r < 0) e = 0.0;
        else if (delta * delta + expm1(-r) > 0) e = 0.0;   /* δ >= sqrt(1 − exp(−KL)) */
        else e = r + log1p(-1.0 / a) - log(delta * a) / (a - 1.0);
        if (e < best) { best = e; best_a = a; }
    }
    if (order_out) *order_out = best_a;
    return best > 0 ? best : 0.0;
}

double fs_dp_epsilon_classic(const double rdp[FS_DP_N_ORDERS], double delta, double *order_out)
{
    double best = INFINITY, best_a = FS_DP_ORDERS[0];
    for (int j = 0; j < FS_DP_N_ORDERS; j++) {
        double a = FS_DP_ORDERS[j];
        double e = rdp[j] + log(1.0 / delta) / (a - 1.0);
        if (e < best) { best = e; best_a = a; }
    }
    if (order_out) *order_out = best_a;
    return best > 0 ? best : 0.0;
}

/* ---- distributed discrete Gaussian ------------------------------------------ */

void fs_dp_ddg_rdp(double l2, double l1, double s, int n, uint64_t d, double rdp[FS_DP_N_ORDERS])
{
    const double pi = 3.14159265358979323846;
    double tau = 0.0;
    for (int k = 1; k < n; k++) tau += exp(-2.0 * pi * pi * s * s * ((double)k / (k + 1.0)));
    tau *= 10.0;
    double sig = sqrt((double)n) * s, dd = (double)d;
    double l2s = l2 / sig, l1s = l1 / sig;
    for (int j = 0; j < FS_DP_N_ORDERS; j++) {
        double a = FS_DP_ORDERS[j];
        double t1 = a / 2.0 * l2s * l2s + tau * dd;
        double t2 = a / 2.0 * (l2s * l2s + 2.0 * l1s * tau + tau * tau * dd);
        double u = l2s + sqrt(dd) * tau;
        double t3 = a / 2.0 * u * u;
        rdp[j] = fmin(t1, fmin(t2, t3));
    }
}

double fs_dp_ddg_l2_bound(double clip, double granularity, uint64_t d, double beta)
{
    double c = clip / granularity, sd = sqrt((double)d);
    double b1 = c + sd;
    if (beta <= 0) return b1;
    double b2sq = c * c + 0.25 * (double)d + sqrt(2.0 * log(1.0 / beta)) * (c + 0.5 * sd);
    return fmin(b1, sqrt(b2sq));
}

double fs_dp_ddg_l1_bound(double l2, uint64_t d)
{
    return l2 * fmin(sqrt((double)d), l2);
}

fs_status fs_dp_ddg_quant_bits(double clip, double sigma, uint32_t n_max, uint32_t t, int *f)
{
    if (!f || !(clip > 0) || !isfinite(clip) || !(sigma > 0) || !isfinite(sigma) || n_max < 1 ||
        t < 1 || t > n_max) {
        fs_log_error("dp: distributed noise needs clip > 0, sigma > 0 and 1 <= t <= n (got clip %g, "
                     "sigma %g, t %u, n %u)", clip, sigma, t, n_max);
        return FS_ERR_ARG;
    }
    double b = clip > 1 ? clip : 1;
    double range = (double)n_max * b + 10.0 * sigma * clip * sqrt((double)n_max / (double)t);
    for (int k = 60; k >= -60; k--) {
        double step = ldexp(1.0, k);
        double local = sigma * clip * step / sqrt((double)t);
        if (range * step + (double)n_max < 2147483648.0 && local <= FS_DP_DGAUSS_MAX_SIGMA) {
            if (local < 0.5) break;
            *f = k;
            return FS_OK;
        }
    }
    fs_log_error("dp: no fixed-point grid holds %u sites' updates (clip %g) with noise multiplier %g",
                 n_max, clip, sigma);
    return FS_ERR_ARG;
}

double fs_dp_ddg_local_stddev(const fs_dp_params *p)
{
    return p->noise_multiplier * p->clip / (p->granularity * sqrt((double)p->min_sites));
}

/* ---- the accountant ---------------------------------------------------------- */

/* One round's RDP of the configured mechanism; `noised_sites` shares in a
 * distributed round. */
static void round_rdp(const fs_dp_params *p, int noised_sites, double out[FS_DP_N_ORDERS])
{
    if (p->mode == FS_DP_DISTRIBUTED) {
        double l2 = fs_dp_ddg_l2_bound(p->clip, p->granularity, p->dim, p->rounding_beta);
        fs_dp_ddg_rdp(l2, fs_dp_ddg_l1_bound(l2, p->dim), fs_dp_ddg_local_stddev(p),
                      noised_sites, p->dim, out);
        return;
    }
    for (int j = 0; j < FS_DP_N_ORDERS; j++)
        out[j] = fs_dp_rdp_sampled_gaussian(p->sample_rate, p->noise_multiplier,
                                            (int)FS_DP_ORDERS[j]);
}

fs_status fs_dp_accountant_init(fs_dp_accountant *acc, const fs_dp_params *p)
{
    FS_TRY(fs_dp_params_check(p));
    if (p->mode == FS_DP_OFF) {
        fs_log_error("dp: the accountant needs a DP mode (central or distributed), not off");
        return FS_ERR_ARG;
    }
    acc->params = *p;
    acc->rounds = 0;
    round_rdp(p, p->min_sites, acc->round_rdp);
    for (int j = 0; j < FS_DP_N_ORDERS; j++) acc->rdp[j] = 0.0;
    return FS_OK;
}

void fs_dp_accountant_add_rdp(fs_dp_accountant *acc, const double rdp[FS_DP_N_ORDERS])
{
    for (int j = 0; j < FS_DP_N_ORDERS; j++) acc->rdp[j] += rdp[j];
}

fs_status fs_dp_accountant_add_round(fs_dp_accountant *acc, int noised_sites)
{
    if (acc->params.mode == FS_DP_DISTRIBUTED) {
        if (noised_sites < acc->params.min_sites) {
            fs_log_error("dp: a distributed-noise round held %d noise shares, fewer than "
                         "min_sites = %d: its sum must not be revealed", noised_sites,
                         acc->params.min_sites);
            return FS_ERR_ARG;
        }
        double r[FS_DP_N_ORDERS];
        round_rdp(&acc->params, noised_sites, r);
        fs_dp_accountant_add_rdp(acc, r);
    } else {
        fs_dp_accountant_add_rdp(acc, acc->round_rdp);
    }
    acc->rounds++;
    return FS_OK;
}

double fs_dp_accountant_epsilon(const fs_dp_accountant *acc)
{
    return fs_dp_epsilon_tight(acc->rdp, acc->params.delta, NULL);
}

double fs_dp_accountant_epsilon_classic(const fs_dp_accountant *acc)
{
    return fs_dp_epsilon_classic(acc->rdp, acc->params.delta, NULL);
}

int fs_dp_accountant_would_exceed(const fs_dp_accountant *acc)
{
    if (acc->params.epsilon_budget <= 0) return 0;
    double next[FS_DP_N_ORDERS];
    for (int j = 0; j < FS_DP_N_ORDERS; j++) next[j] = acc->rdp[j] + acc->round_rdp[j];
    return fs_dp_epsilon_tight(next, acc->params.delta, NULL) > acc->params.epsilon_budget;
}

/* ε after `rounds` rounds of the sampled Gaussian (q, σ), tight conversion. */
static double gaussian_epsilon(double q, double sigma, int rounds, double delta)
{
    double r[FS_DP_N_ORDERS];
    for (int j = 0; j < FS_DP_N_ORDERS; j++)
        r[j] = rounds * fs_dp_rdp_sampled_gaussian(q, sigma, (int)FS_DP_ORDERS[j]);
    return fs_dp_epsilon_tight(r, delta, NULL);
}

fs_status fs_dp_calibrate_sigma(double eps_target, double delta, int rounds, double q,
                                double *sigma_out)
{
    if (!(eps_target > 0) || !isfinite(eps_target) || !(delta > 0 && delta < 1) ||
        rounds < 1 || !(q > 0 && q <= 1)) {
        fs_log_error("dp: cannot calibrate sigma for epsilon %g, delta %g, %d rounds, q %g "
                     "(need epsilon > 0, 0 < delta < 1, rounds >= 1, 0 < q <= 1)",
                     eps_target, delta, rounds, q);
        return FS_ERR_ARG;
    }
    double lo = 1e-3, hi = 1.0;
    while (gaussian_epsilon(q, hi, rounds, delta) > eps_target) {
        lo = hi;
        hi *= 2.0;
        if (hi > 1e6) {
            fs_log_error("dp: no noise multiplier up to 1e6 reaches epsilon %g "
                         "over %d rounds", eps_target, rounds);
            return FS_ERR_NUMERIC;
        }
    }
    while (hi - lo > 1e-6 * hi) {
        double mid = 0.5 * (lo + hi);
        if (gaussian_epsilon(q, mid, rounds, delta) > eps_target) lo = mid;
        else hi = mid;
    }
    *sigma_out = hi;
    return FS_OK;
}
