/*
 * common/dp.h — client-level differential privacy for federated rounds: the
 * pieces the aggregator and the site node call, as pure functions on flat
 * vectors and small structs (no I/O, no network).
 *
 * The mechanism is DP-FedAvg (McMahan, Ramage, Talwar, Zhang, "Learning
 * differentially private recurrent language models", ICLR 2018): a privacy
 * unit is one *site* (hospital); every site's update is clipped to L2 norm C,
 * the clipped updates are summed, Gaussian noise of standard deviation σ·C is
 * added to the sum, and the noised sum is divided by a fixed denominator.
 * Two ways to add the noise:
 *
 *   plain mode (FS_DP_CENTRAL): the aggregator sees the clipped updates and
 *     adds N(0, (σC)²) per coordinate with fs_dp_add_gaussian (Philox, any
 *     chunking gives the same vector as one call);
 *   secure-aggregation mode (FS_DP_DISTRIBUTED): the distributed discrete
 *     Gaussian of Kairouz, Liu, Steinke (ICML 2021): each site adds an exact
 *     discrete Gaussian share (fs_dp_dgauss_*) to its quantised integer update
 *     before masking, so the aggregator only ever sees a noised sum.
 *
 * Accounting is Rényi DP (Mironov 2017) for the Poisson-sampled Gaussian
 * (Mironov, Talwar, Zhang 2019) at a fixed set of integer orders, composed
 * over rounds and converted to (ε, δ); the distributed discrete Gaussian is
 * accounted with Kairouz et al.'s Proposition 14 (its τ term included).
 * Optional adaptive clipping follows Andrew, Thakkar, McMahan, Ramaswamy
 * (NeurIPS 2021). docs/security.md § Differential privacy explains the guarantees and choices.
 *
 * Files: common/dp.c (parameters, clipping, noise, averaging, adaptive
 * clipping), common/dp_accountant.c (RDP, conversions, accountant, σ
 * calibration, distributed discrete Gaussian accounting), common/dp_dgauss.c
 * (the exact discrete Gaussian sampler). Tested by tests/test_dp.c against
 * reference values from Google's dp-accounting (tests/make_dp_reference.py,
 * tests/data/dp_rdp_reference.txt) and exact distributions.
 */
#ifndef FS_DP_H
#define FS_DP_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/status.h"

#define FS_DP_WARN_UNUSED __attribute__((warn_unused_result))

/* ---- parameters ------------------------------------------------------------ */

typedef enum {
    FS_DP_OFF = 0,       /* no differential privacy                              */
    FS_DP_CENTRAL,       /* aggregator adds Gaussian noise to the clipped sum    */
    FS_DP_DISTRIBUTED    /* sites add discrete Gaussian shares (secure aggregation) */
} fs_dp_mode;

/*
 * Everything DP needs from the configuration. Units: update vectors are fp32
 * model deltas; C is an L2 norm in those units; σ (noise_multiplier) is the
 * ratio of the noise's standard deviation on the *sum* to C.
 */
typedef struct {
    fs_dp_mode mode;
    double clip;              /* C > 0: L2 bound of one site's update (initial C when adaptive) */
    double noise_multiplier;  /* σ >= 0: noise stddev on the sum = σ·C (0 = no noise, ε = ∞)   */
    double delta;             /* 0 < δ < 1, well below 1/sites                                  */
    double epsilon_budget;    /* > 0: stop before ε would exceed it; 0 = report only            */
    double sample_rate;       /* q in (0, 1]: each site takes part in a round with probability q,
                                 sampled by the aggregator independently and kept secret; 1 =
                                 every site every round                                           */
    int sites;                /* N >= 1 sites in the federation; q·N is the fixed denominator    */
    int adaptive;             /* 1: adapt C to a quantile of the update norms (Andrew et al.)    */
    double target_quantile;   /* γ in (0, 1): fraction of updates to leave unclipped (0.5)      */
    double clip_lr;           /* η_C > 0: geometric learning rate of C (0.2)                     */
    double count_stddev;      /* σ_b > σ/2: noise on the count of unclipped updates; 0 = automatic:
                                 max(q·N/20 (Andrew et al.'s choice for large N), σ)              */
    /* FS_DP_DISTRIBUTED only */
    double granularity;       /* γ_q > 0: model units per integer step of the quantised update  */
    int min_sites;            /* t >= 1: fewest sites whose noise shares are in any revealed sum
                                 (the secure-aggregation threshold); each share has variance
                                 (σC/γ_q)²/t in integer units                                    */
    double rounding_beta;     /* β in [0, 1): 0 = sensitivity bound C/γ_q + √d, valid for any
                                 rounding to a neighbouring integer; > 0 only when the quantiser
                                 rounds conditionally (Kairouz et al. §4.1)                      */
    uint64_t dim;             /* d: parameters in the update vector                             */
} fs_dp_params;

/* Defaults: mode off, C = 1, σ = 1, δ = 1e-5, no budget, q = 1, N = 1, adaptive
 * off with γ = 0.5, η_C = 0.2, σ_b automatic, γ_q = 1e-5,
 * t = 1, β = 0, d = 0. */
void fs_dp_params_default(fs_dp_params *p);

/* Validates every field that the mode uses. On the first bad field logs one
 * line naming it, its value and the rule ("dp: delta must be in (0, 1), got 2")
 * and returns FS_ERR_ARG; FS_OK when usable. */
fs_status fs_dp_params_check(const fs_dp_params *p) FS_DP_WARN_UNUSED;

/* ---- clipping, noise and averaging (plain DP-FedAvg) ----------------------- */

/*
 * L2 norm of x in double precision, summed in index order (one fixed order, so
 * the same vector gives the same norm on every machine). Returns NAN when x
 * holds NaN or Inf.
 */
double fs_dp_l2_norm(const float *x, size_t n);

/*
 * Clips x in place to L2 norm at most C: when ||x|| > C every element is
 * multiplied by C/||x|| (rounded towards zero), and the result is checked
 * with fs_dp_l2_norm and shrunk further until that norm is <= C, so the
 * bound holds exactly as fs_dp_l2_norm measures it. Vectors with
 * ||x|| <= C (the zero vector included) are left bit for bit unchanged.
 * *norm_out (may be NULL) receives the norm before clipping — the input of
 * adaptive clipping. FS_ERR_ARG when C is not a finite positive number,
 * FS_ERR_NUMERIC (x untouched) when x holds NaN or Inf.
 */
fs_status fs_dp_clip_l2(float *x, size_t n, double C, double *norm_out) FS_DP_WARN_UNUSED;

/*
 * sum[i] += stddev · fs_philox_gauss(seed, stream, offset + i), i < n. Element
 * offset+i of the stream always receives the same draw, so a vector noised
 * chunk by chunk (offset = chunk start) equals one noised in a single call,
 * and a GPU kernel using kernels/philox.h reproduces it (within
 * FS_TOL_PHILOX_GAUSS). FS_ERR_ARG when stddev is negative or not finite.
 * WARNING: the privacy of the result rests on the seed being secret, drawn
 * fresh for every round from the OS CSPRNG (fs_dp_fresh_seed) and never
 * logged or sent; Philox is not a cryptographic generator, and floating-point
 * Gaussian noise is not exactly a Gaussian (Mironov, CCS 2012, on
 * floating-point Laplace; the same caution applies) — use the distributed
 * discrete Gaussian when that matters.
 */
fs_status fs_dp_add_gaussian(float *sum, size_t n, double stddev, uint64_t seed,
                             uint64_t stream, uint64_t offset);

/* A fresh 64-bit noise seed from the OS CSPRNG (libsodium randombytes). */
uint64_t fs_dp_fresh_seed(void);

/*
 * The averaging rule for the noised sum, McMahan et al. 2018's fixed-denominator
 * estimator f̃_f: every participating site weighs 1 and the noised sum is
 * divided by the *expected* number of participants q·N, not by the number
 * that actually reported. Dividing by the actual count would make the
 * denominator depend on whether one site took part and double the
 * sensitivity (the paper's f̃_c needs 2S/(qW_min)); with the fixed
 * denominator the average changes by at most C/(qN) when one site is added
 * or removed, the estimator is unbiased under Poisson sampling, and the noise
 * σC/(qN) on the average is what the accountant assumes. Example-count
 * weights (plain FedAvg's n_k) are dropped: they are data-dependent and
 * unbounded, so they would break the sensitivity bound. Returns q·N (> 0).
 */
double fs_dp_denominator(const fs_dp_params *p);

/* avg[i] = sum[i] / fs_dp_denominator(p), in place. */
void fs_dp_average(float *sum, size_t n, const fs_dp_params *p);

/* ---- adaptive clipping (Andrew et al., NeurIPS 2021) ----------------------- */

typedef struct {
    double clip;             /* current C, broadcast to the sites with the model */
    double target_quantile;  /* γ */
    double clip_lr;          /* η_C */
    double count_stddev;     /* σ_b */
    double denominator;      /* q·N, fixed like the update average               */
    double last_fraction;    /* the last noised fraction b̄ (for logs)           */
} fs_dp_adaptive;

/* σ_b in use: count_stddev, or max(q·N/20, σ) when it is 0. */
double fs_dp_count_stddev(const fs_dp_params *p);

/* From validated parameters (adaptive = 1). */
void fs_dp_adaptive_init(fs_dp_adaptive *a, const fs_dp_params *p);

/*
 * One round of the geometric update C ← C·exp(−η_C (b̄ − γ)), where
 * b̄ = (Σ_i b_i + N(0, σ_b²)) / (q·N) and b_i = 1 when site i's update norm
 * was <= C before clipping. `unclipped` is Σ b_i over the sites that
 * reported; the N(0, 1) draw is fs_philox_gauss(seed, stream, index)
 * (index chosen by the caller, e.g. the parameter count, so it never
 * coincides with an update coordinate's draw). Returns the new C.
 */
double fs_dp_adaptive_update(fs_dp_adaptive *a, double unclipped, uint64_t seed,
                             uint64_t stream, uint64_t index);

/*
 * The noise multiplier of the update sum when the clipped-count query shares
 * the privacy budget (Andrew et al., §3): the pair (sum with σ_Δ, count with
 * σ_b and sensitivity 1/2) is as private as one Gaussian query with
 * multiplier σ, when σ_Δ = (σ^-2 − (2σ_b)^-2)^(-1/2). Returns σ_Δ, or NAN
 * when 2σ_b <= σ (the count alone would cost more than the budget).
 */
double fs_dp_adaptive_sum_multiplier(double sigma, double count_stddev);

/* ---- RDP accounting --------------------------------------------------------- */

#define FS_DP_N_ORDERS 74

/* The RDP orders α used everywhere: 2..64, then 80 ... 1024. */
const double *fs_dp_orders(void);

/*
 * RDP at integer order α >= 2 of one round of the Poisson-sampled Gaussian
 * mechanism with sampling rate q in (0, 1] and noise multiplier σ > 0
 * (Mironov, Talwar, Zhang 2019, §3.3: log A_α / (α − 1), A_α = Σ_k C(α,k)
 * (1−q)^(α−k) q^k exp((k²−k)/(2σ²)), summed in log space); q = 1 gives the
 * Gaussian mechanism's α/(2σ²). Returns INFINITY when σ = 0.
 */
double fs_dp_rdp_sampled_gaussian(double q, double sigma, int alpha);

/*
 * (ε, δ) from an RDP curve over fs_dp_orders(). Tight conversion (Balle et
 * al. 2020; Canonne, Kamath, Steinke 2020): ε = min_α rdp + log((α−1)/α) −
 * (log δ + log α)/(α−1), taking ε = 0 where δ² > 1 − exp(−rdp) (the KL bound),
 * never below 0. Classic conversion (Mironov 2017): ε = min_α rdp +
 * log(1/δ)/(α−1). *order_out (may be NULL) gets the minimising order.
 */
double fs_dp_epsilon_tight(const double rdp[FS_DP_N_ORDERS], double delta, double *order_out);
double fs_dp_epsilon_classic(const double rdp[FS_DP_N_ORDERS], double delta, double *order_out);

/*
 * The privacy ledger of a federation: composed RDP over the rounds so far.
 * Its whole state is `rdp` and `rounds`; the aggregator can checkpoint those
 * (or re-add `rounds` identical rounds after a restart) to resume.
 */
typedef struct {
    fs_dp_params params;            /* validated copy                          */
    double round_rdp[FS_DP_N_ORDERS]; /* one round's RDP (central mode)         */
    double rdp[FS_DP_N_ORDERS];     /* composed over `rounds`                  */
    int rounds;
} fs_dp_accountant;

/* Validates p and prepares the per-round RDP. FS_ERR_ARG on bad parameters. */
fs_status fs_dp_accountant_init(fs_dp_accountant *acc, const fs_dp_params *p) FS_DP_WARN_UNUSED;

/*
 * Records one finished round. `noised_sites` is how many sites' noise shares
 * the revealed sum held (distributed mode only: more than min_sites shares
 * mean more noise; ignored in central mode). FS_ERR_ARG when a distributed
 * round had fewer than min_sites shares (it must not have been revealed).
 */
fs_status fs_dp_accountant_add_round(fs_dp_accountant *acc, int noised_sites) FS_DP_WARN_UNUSED;

/* Adds an arbitrary per-order RDP vector (one composed mechanism). */
void fs_dp_accountant_add_rdp(fs_dp_accountant *acc, const double rdp[FS_DP_N_ORDERS]);

/* (ε, δ) spent so far, tight and classic conversion, at the configured δ. */
double fs_dp_accountant_epsilon(const fs_dp_accountant *acc);
double fs_dp_accountant_epsilon_classic(const fs_dp_accountant *acc);

/*
 * 1 when running one more round (at the worst case: central mode's round, or
 * a distributed round with only min_sites shares) would take ε above the
 * configured budget — the aggregator must then stop before starting it; 0
 * when it fits or no budget is set.
 */
int fs_dp_accountant_would_exceed(const fs_dp_accountant *acc);

/*
 * The smallest noise multiplier σ for which `rounds` rounds of the Poisson-
 * sampled Gaussian with rate q spend at most eps_target at δ (tight
 * conversion), by bisection to relative width 1e-6, returning the upper end
 * (so ε(σ) <= eps_target holds). FS_ERR_ARG on bad inputs, FS_ERR_NUMERIC
 * when no σ <= 1e6 suffices.
 */
fs_status fs_dp_calibrate_sigma(double eps_target, double delta, int rounds, double q,
                                double *sigma_out) FS_DP_WARN_UNUSED;

/* ---- distributed discrete Gaussian (secure-aggregation mode) --------------- */

/*
 * Per-order RDP of one round of the distributed discrete Gaussian (Kairouz,
 * Liu, Steinke 2021, Theorem 1 with Proposition 14): n sites each add
 * N_Z(0, s²) per coordinate (s = local stddev in integer units, s >= 1/2)
 * to integer vectors whose one-site difference has L2 norm <= l2 and L1 norm
 * <= l1, in dimension d. With σ_tot = √n·s, τ = 10·Σ_{k=1}^{n−1}
 * exp(−2π² s² k/(k+1)):
 *   rdp(α) = min{ α l2²/(2σ_tot²) + τ d,
 *                 (α/2)(l2²/σ_tot² + 2 l1 τ/σ_tot + τ² d),
 *                 (α/2)(l2/σ_tot + √d τ)² }.
 * No amplification by sampling is claimed for this mechanism (the bound
 * holds for any q by quasi-convexity of the Rényi divergence).
 */
void fs_dp_ddg_rdp(double l2, double l1, double s, int n, uint64_t d,
                   double rdp[FS_DP_N_ORDERS]);

/*
 * Sensitivity of the quantised update in integer units (Kairouz et al. §4.1):
 * with c = C/γ_q, L2 <= c + √d for any rounding to a neighbouring integer
 * (β = 0), or min{c + √d, sqrt(c² + d/4 + sqrt(2 log(1/β))(c + √d/2))} when
 * rounding is repeated until the norm is below that bound (probability of a
 * retry at most β); L1 <= L2·min(√d, L2) for an integer vector.
 */
double fs_dp_ddg_l2_bound(double clip, double granularity, uint64_t d, double beta);
double fs_dp_ddg_l1_bound(double l2, uint64_t d);

/* Local noise stddev of one site's share in integer units: σ·C/(γ_q·√t). */
double fs_dp_ddg_local_stddev(const fs_dp_params *p);

/*
 * An exact sampler of the discrete Gaussian N_Z(0, s²) (Canonne, Kamath,
 * Steinke 2020, Algorithm 3 over their Algorithms 1 and 2), with s² held as
 * an exact rational num/2^shift, rounded *up* from the requested s² to 40
 * significant bits (sigma2 holds the value actually used, which the
 * accounting should be given).
 */
typedef struct {
    uint64_t num;      /* s² = num / 2^shift */
    unsigned shift;
    uint64_t t;        /* discrete Laplace scale floor(s) + 1 */
    double sigma2;     /* num / 2^shift as a double */
} fs_dp_dgauss;

#define FS_DP_DGAUSS_MIN_SIGMA (1.0 / 16.0)
#define FS_DP_DGAUSS_MAX_SIGMA 16777216.0   /* 2^24 */

/* FS_ERR_ARG unless FS_DP_DGAUSS_MIN_SIGMA <= s <= FS_DP_DGAUSS_MAX_SIGMA. */
fs_status fs_dp_dgauss_init(fs_dp_dgauss *g, double s) FS_DP_WARN_UNUSED;

/*
 * out[i] = sample number offset+i of N_Z(0, s²) under `key`, i < n. Sample j
 * draws its random bits from ChaCha20 (libsodium crypto_stream_chacha20,
 * 64-bit nonce = j, block counter from 0), so it depends only on (key, j):
 * chunked or parallel calls give the same values as one call. Integer-only
 * arithmetic (64/128-bit); a Laplace candidate so large that its acceptance
 * exponent overflows 128 bits is rejected, which moves the distribution by
 * less than exp(−2^28) in total variation.
 * WARNING: key must be 32 secret bytes drawn fresh for every round from the
 * OS CSPRNG and wiped after use (sodium_memzero), and must not be a key used
 * for secure-aggregation masks.
 */
void fs_dp_dgauss_sample(const fs_dp_dgauss *g, const uint8_t key[32], uint64_t offset,
                         int64_t *out, size_t n);

/*
 * The fixed-point exponent f (granularity 2^-f) of a securely aggregated
 * round with distributed noise: the largest f for which (1) the sum of up to
 * n_max sites' updates (each at most max(clip, 1) per coordinate) plus ten
 * standard deviations of the summed noise σ·clip·sqrt(n_max / t) stays below
 * 2^31 (no wrap-around), and (2) a site's local noise stddev σ·clip·2^f/√t
 * stays within FS_DP_DGAUSS_MAX_SIGMA. The aggregator computes it and sends it
 * to the sites. FS_ERR_ARG (logged) when no f in [-60, 60] fits or the
 * local stddev would fall below 1/2 step.
 */
fs_status fs_dp_ddg_quant_bits(double clip, double sigma, uint32_t n_max, uint32_t t, int *f)
    FS_DP_WARN_UNUSED;

/* x[i] += sample offset+i, modulo 2^32 (the secure-aggregation ring): a site's
 * noise share added to its quantised update before masking. */
void fs_dp_dgauss_add_u32(const fs_dp_dgauss *g, const uint8_t key[32], uint64_t offset,
                          uint32_t *x, size_t n);

/* Exact moments of N_Z(0, s²) by summation of its pmf: the variance (slightly
 * below s² for small s) and pmf(k). For tests and for the accounting docs. */
double fs_dp_dgauss_variance(double sigma2);
double fs_dp_dgauss_pmf(double sigma2, int64_t k);

#endif
