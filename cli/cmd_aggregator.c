/*
 * cli/cmd_aggregator.c — `fedseg aggregator --config FILE`: the federation's
 * aggregator. Reads the config (common/config.h; relative paths in the file
 * are resolved against the file's folder, those given as flags against the
 * current folder), applies the flags over it (every key is also a flag:
 * `--round-deadline-s 60` sets round_deadline_s), builds the round
 * configuration (model from node/unet.h's presets; the initial model from
 * the seed, or from `init = CKPT`), chooses the aggregation device, and runs
 * aggregator/server.c until SIGINT/SIGTERM or until the federation finished
 * and linger_s passed. Prints one line when listening and one per closed
 * round. Exit codes: 0 finished or stopped, 1 failed (the reason printed),
 * 2 bad usage. Tested by tests/test_agg_server.c.
 */
#include "aggregator/server.h"
#include "aggregator/sum_device.h"
#include "cli/commands.h"
#include "common/ckpt.h"
#include "common/config.h"
#include "common/log.h"
#include "kernels/backend.h"
#include "node/noniid.h"
#include "node/unet.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static const char *const agg_keys[] = {
    "listen", "ca", "cert", "key", "sites", "rounds", "min_sites", "fraction", "round_deadline_s",
    "join_wait_s", "site_timeout_s", "local_epochs", "steps_per_epoch", "model", "lr", "prox_mu",
    "state_dir", "metrics", "seed", "init", "device", "linger_s", "poll_ms", "port_file",
    "dp", "dp_clip", "dp_noise_multiplier", "dp_delta", "dp_epsilon", "dp_adaptive",
    "dp_target_quantile", "dp_clip_lr", "dp_count_stddev", "secure_agg",
    "secagg_threshold", "secagg_neighbours", "secagg_clip", "secagg_weight_cap", "secagg_stage_s",
    "algorithm", "server_lr", "server_momentum", "server_beta1", "server_beta2", "server_tau",
    "aggregation", "trim_fraction", "encrypted", "he_threshold", "he_clip", NULL};

static void agg_help(FILE *f)
{
    fprintf(f,
        "usage: fedseg aggregator --config FILE [--KEY VALUE ...]\n\n"
        "Run a federation's aggregator: admit the sites on its list by their certificate\n"
        "(mutual TLS, always), run FedAvg rounds (each selected site trains the global model\n"
        "locally and sends its update; the aggregator averages them weighted by sample count),\n"
        "checkpoint the global model atomically after every round, and write one JSON line of\n"
        "metrics per round. Killed or stopped at any moment, it resumes from its state folder\n"
        "with no accepted update lost or counted twice. Prints one line per closed round; after\n"
        "the last round it keeps serving the final model for linger_s seconds, then exits 0.\n\n"
        "Config file (`key = value` lines, # comments; `fedseg provision` writes one; relative\n"
        "paths are relative to the folder holding the file). Every key is also a flag,\n"
        "--KEY VALUE with '-' or '_' (flags override the file; their paths are relative to the\n"
        "current folder):\n"
        "  listen = HOST:PORT         address to serve on (default 0.0.0.0:50051; port 0 = any free)\n"
        "  ca = FILE                  consortium CA certificate (PEM) (required)\n"
        "  cert = FILE                this aggregator's certificate (PEM, CN aggregator) (required)\n"
        "  key = FILE                 its private key (PEM; keep it mode 0600) (required)\n"
        "  sites = A,B,...            sites admitted, by certificate common name (required)\n"
        "  rounds = R                 federated rounds to run (default 10)\n"
        "  min_sites = M              a round opens once M sites joined, and closes at its deadline\n"
        "                             only if M reported (else the deadline is extended)\n"
        "                             (default min(2, number of sites))\n"
        "  fraction = F               share of the active sites sampled per round, 0 < F <= 1,\n"
        "                             at least min_sites (default 1.0)\n"
        "  round_deadline_s = S       seconds a round waits for its sites' updates (default 600)\n"
        "  join_wait_s = S            once min_sites joined, wait this long for the others before\n"
        "                             opening the round (default 10)\n"
        "  site_timeout_s = S         a site not heard from for S seconds is not sampled (0 = never\n"
        "                             time out; default 0)\n"
        "  local_epochs = E           local epochs per round at each site (default 1)\n"
        "  steps_per_epoch = N        training steps per local epoch (0 = the site's default)\n"
        "  model = tiny|small|ref     model preset every site trains (default tiny)\n"
        "  lr = LR                    learning rate of the sites' Adam (default 0.001)\n"
        "  prox_mu = MU               FedProx proximal term (0 = FedAvg; default 0)\n"
        "  state_dir = DIR            global model checkpoints, update spools, journal (default state)\n"
        "  metrics = FILE             per-round JSON lines (default STATE_DIR/metrics.jsonl; a\n"
        "                             --state-dir flag without --metrics also means that)\n"
        "  seed = N                   initial model and site sampling (default 1)\n"
        "  init = CKPT                start from this checkpoint's parameters instead of the seed\n"
        "                             (a fresh state_dir only; its preset must match)\n"
        "  device = auto|cpu|cuda     where updates are summed (default auto: the GPU if present)\n"
        "  linger_s = S               after the last round, keep serving the final model (default 30)\n"
        "  poll_ms = MS               how often waiting sites ask again (default 1000)\n"
        "  port_file = FILE           write the bound port here once listening (useful with port 0)\n"
        "  dp = off|central|distributed  client-level differential privacy (DP-FedAvg;\n"
        "                             docs/security.md): sites clip their update to dp_clip, each\n"
        "                             counts once; central: the aggregator adds Gaussian noise to the\n"
        "                             sum; distributed (with secure_agg and secagg_threshold T,\n"
        "                             min_sites > T): each site adds a discrete Gaussian noise share\n"
        "                             before masking (default off)\n"
        "  dp_clip = C                L2 bound of one site's update (default 1)\n"
        "  dp_noise_multiplier = Z    noise standard deviation on the sum = Z*C (default 1)\n"
        "  dp_delta = D               the delta of the reported (epsilon, delta) (default 1e-5)\n"
        "  dp_epsilon = E             privacy budget: a round that would take epsilon past E is not\n"
        "                             run, the federation finishes (default 0 = report only)\n"
        "  dp_adaptive = true|false   central DP: adapt the clip each round towards a quantile of\n"
        "                             the sites' update norms (Andrew et al. 2021; dp_clip is the\n"
        "                             first round's clip) (default false)\n"
        "  dp_target_quantile = G     share of updates to leave unclipped (default 0.5)\n"
        "  dp_clip_lr = ETA           geometric learning rate of the clip (default 0.2)\n"
        "  dp_count_stddev = S        noise on the count of unclipped updates; must exceed half\n"
        "                             the noise multiplier (default 0 = max(sites/20, multiplier))\n"
        "  secure_agg = true|false    secure aggregation (docs/security.md): the aggregator sees only\n"
        "                             masked updates and learns their sum; needs min_sites >= 3\n"
        "                             (default false)\n"
        "  secagg_threshold = T       sites needed to unmask (default floor(2n/3)+1 of the n selected)\n"
        "  secagg_neighbours = K      SecAgg+ neighbours per site, even (default n-1: full SecAgg)\n"
        "  secagg_clip = C            L2 clip of an update before quantisation (default 10)\n"
        "  secagg_weight_cap = W      public cap on a site's sample count (default: the largest\n"
        "                             count the selected sites joined with)\n"
        "  secagg_stage_s = S         seconds each key and unmasking stage waits (default 60)\n"
        "  algorithm = NAME           fedavg | fedprox | fedavgm | fedadagrad | fedadam | fedyogi |\n"
        "                             scaffold | fedbn (default fedavg; docs/protocol.md § Non-IID)\n"
        "  server_lr = ETA            server learning rate (default 1; 0.01 for the adaptive ones)\n"
        "  server_momentum = B        fedavgm's momentum (default 0.9)\n"
        "  server_beta1 = B1          fedadagrad/fedadam/fedyogi first moment (default 0.9)\n"
        "  server_beta2 = B2          fedadam/fedyogi second moment (default 0.99)\n"
        "  server_tau = TAU           adaptivity of the adaptive optimisers (default 0.001)\n"
        "  aggregation = RULE         mean (sample-weighted) | median | trimmed_mean (coordinate-wise,\n"
        "                             unweighted; plain mode only) (default mean)\n"
        "  trim_fraction = F          trimmed_mean: share dropped at each end, 0 <= F < 0.5 (default 0.2)\n"
        "  encrypted = true|false     encrypted aggregation (docs/security.md): updates travel as\n"
        "                             multiparty-HE ciphertexts under a key no single party holds;\n"
        "                             the aggregator adds them and t sites decrypt the sum; needs\n"
        "                             min_sites >= 2 (default false)\n"
        "  he_threshold = T           sites needed to decrypt, at most min_sites (default\n"
        "                             floor(2n/3)+1 of the n selected, at most n-1 from 3 on)\n"
        "  he_clip = C                each update value is clipped to [-C, C] before quantisation\n"
        "                             (default 10)\n\n"
        "Options:\n"
        "  --config FILE              the config file\n"
        "  -v, --verbose              more log lines (repeat for debug)\n"
        "  -h, --help                 this help\n");
}

typedef struct loader loader;
static fs_status noniid_config(loader *l, double *mu, fs_round_config *out);

/* dir of path (without the trailing '/'), "." when it has none. */
static void dirname_of(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(out, cap, ".");
    else if (slash == path) snprintf(out, cap, "/");
    else snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

struct loader {
    fs_config *cfg;
    char base[4096];                 /* the config file's folder ("" = none) */
    char cli[32][64];                /* keys set on the command line */
    int ncli;
    char paths[8][4096];             /* resolved paths */
    int npaths;
};

static int from_cli(const loader *l, const char *key)
{
    for (int i = 0; i < l->ncli; i++)
        if (!strcmp(l->cli[i], key)) return 1;
    return 0;
}

/* A path value: resolved against the config file's folder when it came
 * from the file and is relative. NULL when absent. */
static fs_status get_path(loader *l, const char *key, const char *def, const char **out)
{
    const char *v;
    FS_TRY(fs_config_get_str(l->cfg, key, def, &v));
    *out = v;
    if (!v || !v[0] || v[0] == '/' || from_cli(l, key) || !l->base[0] || !fs_config_has(l->cfg, key))
        return FS_OK;
    if (l->npaths >= 8) return FS_ERR_ARG;
    char *dst = l->paths[l->npaths++];
    int n = snprintf(dst, sizeof l->paths[0], "%s/%s", l->base, v);
    if (n < 0 || n >= (int)sizeof l->paths[0]) {
        fs_log_error("%s: path too long", key);
        return FS_ERR_ARG;
    }
    *out = dst;
    return FS_OK;
}

/* Writes the port atomically (temporary file, then rename). */
static int write_port_file(const char *path, int port)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fs_log_error("%s: cannot write: %s", tmp, strerror(errno));
        return -1;
    }
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        fs_log_error("%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* The operator's line for a closed round. */
static void print_round(void *u, const fs_server_round_info *r)
{
    (void)u;
    char loss[32] = "-", dice[32] = "-";
    if (isfinite(r->mean_loss)) snprintf(loss, sizeof loss, "%.4f", r->mean_loss);
    if (isfinite(r->mean_dice_wt)) snprintf(dice, sizeof dice, "%.4f", r->mean_dice_wt);
    printf("round %u/%u closed: %zu site(s), %.0f samples, %.1f s, mean training loss %s, "
           "Dice WT of the previous global model %s, %.1f MB received, %.1f MB sent%s\n",
           r->round, r->rounds, r->sites_reported, r->samples, r->seconds, loss, dice,
           (double)r->bytes_in / 1e6, (double)r->bytes_out / 1e6,
           r->finished ? " — federation finished" : "");
    fflush(stdout);
}

/* The initial model: the checkpoint `init`, or a fresh U-Net from `seed`.
 * *w is malloc'ed. */
static fs_status initial_model(const fs_preset *pr, const char *init, uint64_t seed, float **w)
{
    *w = NULL;
    if (init) {
        fs_ckpt_meta meta;
        FS_TRY(fs_ckpt_read(init, &meta, w, NULL, NULL, NULL));
        if (strcmp(meta.preset, pr->name) != 0 || meta.nparams != pr->nparams) {
            fs_log_error("%s: holds model '%s' (%llu parameters), the federation trains '%s' (%zu)",
                         init, meta.preset, (unsigned long long)meta.nparams, pr->name, pr->nparams);
            free(*w);
            *w = NULL;
            return FS_ERR_MISMATCH;
        }
        return FS_OK;
    }
    const fs_backend *cpu = fs_backend_cpu();
    void *ctx = NULL;
    fs_unet *m = NULL;
    fs_status st = cpu->ctx_init(&ctx, 0);
    if (st == FS_OK) st = fs_unet_create(&m, cpu, ctx, pr->base, pr->depth, pr->size, 1, seed);
    if (st == FS_OK && !(*w = malloc(pr->nparams * sizeof **w))) st = FS_ERR_NOMEM;
    if (st == FS_OK) st = fs_unet_get_params(m, *w);
    fs_unet_free(m);
    if (ctx) cpu->ctx_free(ctx);
    if (st != FS_OK) {
        fs_log_error("cannot build the initial '%s' model: %s", pr->name, fs_status_str(st));
        free(*w);
        *w = NULL;
    }
    return st;
}

/* Parses the command line into the loader (flags set config keys). Returns
 * 0 to go on, or an exit code. */
static int parse_args(int argc, char **argv, loader *l, const char **config_path, int *verbose)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            agg_help(stdout);
            return -1;
        }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            (*verbose)++;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || !a[2]) {
            fprintf(stderr, "fedseg aggregator: unexpected argument '%s' (see --help)\n", a);
            return 2;
        }
        char key[64];
        const char *val = NULL;
        const char *eq = strchr(a + 2, '=');
        size_t klen = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        if (klen >= sizeof key) {
            fprintf(stderr, "fedseg aggregator: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        memcpy(key, a + 2, klen);
        key[klen] = 0;
        for (char *p = key; *p; p++)
            if (*p == '-') *p = '_';
        if (eq) val = eq + 1;
        else if (i + 1 < argc) val = argv[++i];
        else {
            fprintf(stderr, "fedseg aggregator: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(key, "config")) {
            *config_path = val;
            continue;
        }
        int known = 0;
        for (int k = 0; agg_keys[k]; k++) known |= !strcmp(agg_keys[k], key);
        if (!known || l->ncli >= 32) {
            fprintf(stderr, "fedseg aggregator: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (fs_config_set(l->cfg, key, val) != FS_OK) return 2;
        snprintf(l->cli[l->ncli++], sizeof l->cli[0], "%s", key);
    }
    return 0;
}

/*
 * The non-IID keys: algorithm (with its server optimiser), aggregation rule,
 * and the refusal of combinations that cannot work. fedprox without prox_mu
 * gets mu = 0.01 (*mu is updated). Errors are logged naming the key.
 * WARNING: robust rules need every update in the clear; with secure_agg or
 * encrypted the aggregator sees only the (masked or encrypted) sum, so the
 * combination is refused here rather than silently averaged.
 */
static fs_status noniid_config(loader *l, double *mu, fs_round_config *out)
{
    const char *alg, *rule;
    double lr, mom, b1, b2, tau, trim;
    int secure, encrypted;
    if (fs_config_get_str(l->cfg, "algorithm", "fedavg", &alg) != FS_OK ||
        fs_config_get_str(l->cfg, "aggregation", "mean", &rule) != FS_OK ||
        fs_config_get_float(l->cfg, "trim_fraction", 0.2, 0, 0.499999, &trim) != FS_OK ||
        fs_config_get_bool(l->cfg, "secure_agg", 0, &secure) != FS_OK ||
        fs_config_get_bool(l->cfg, "encrypted", 0, &encrypted) != FS_OK)
        return FS_ERR_FORMAT;
    fs_server_opt_kind kind = FS_SOPT_FEDAVG;
    if (!strcmp(alg, "fedprox")) {
        if (!fs_config_has(l->cfg, "prox_mu")) *mu = 0.01;
        if (!(*mu > 0)) {
            fs_log_error("algorithm = fedprox needs prox_mu > 0");
            return FS_ERR_ARG;
        }
    } else if (!strcmp(alg, "scaffold")) {
        out->scaffold = 1;
    } else if (!strcmp(alg, "fedbn")) {
        out->local_norm = 1;
    } else if (fs_server_opt_parse(alg, &kind) != FS_OK) {
        fs_log_error("algorithm = %s: expected fedavg, fedprox, fedavgm, fedadagrad, fedadam, fedyogi, "
                     "scaffold or fedbn", alg);
        return FS_ERR_ARG;
    }
    fs_server_opt_hp d = fs_server_opt_defaults(kind);
    if (fs_config_get_float(l->cfg, "server_lr", d.lr, 1e-12, 1e6, &lr) != FS_OK ||
        fs_config_get_float(l->cfg, "server_momentum", d.momentum, 0, 0.999999, &mom) != FS_OK ||
        fs_config_get_float(l->cfg, "server_beta1", d.beta1, 0, 0.999999, &b1) != FS_OK ||
        fs_config_get_float(l->cfg, "server_beta2", d.beta2, 0, 0.999999, &b2) != FS_OK ||
        fs_config_get_float(l->cfg, "server_tau", d.tau, 1e-12, 1e6, &tau) != FS_OK)
        return FS_ERR_FORMAT;
    out->server_opt = (fs_server_opt_hp){kind, (float)lr, (float)mom, (float)b1, (float)b2, (float)tau};
    if (fs_agg_rule_parse(rule, &out->agg_rule) != FS_OK) {
        fs_log_error("aggregation = %s: expected mean, median or trimmed_mean", rule);
        return FS_ERR_ARG;
    }
    out->trim = trim;
    if (out->agg_rule != FS_AGG_MEAN && (secure || encrypted)) {
        fs_log_error("aggregation = %s cannot be combined with %s: a coordinate-wise %s needs every "
                     "site's update in the clear, and the aggregator sees only their %s sum",
                     rule, secure ? "secure_agg = true" : "encrypted = true",
                     out->agg_rule == FS_AGG_MEDIAN ? "median" : "trimmed mean",
                     secure ? "masked" : "encrypted");
        return FS_ERR_ARG;
    }
    if (encrypted && out->scaffold) {
        fs_log_error("algorithm = scaffold cannot be combined with encrypted = true: its control-"
                     "variate deltas are ~1/(K*lr) larger than the model deltas, and one clip and "
                     "fixed-point grid cannot serve both");
        return FS_ERR_ARG;
    }
    if (secure && out->scaffold) {
        fs_log_error("algorithm = scaffold cannot be combined with secure_agg = true: its control-"
                     "variate deltas are ~1/(K*lr) larger than the model deltas, and one clip and "
                     "fixed-point grid cannot serve both");
        return FS_ERR_ARG;
    }
    fs_log_info("algorithm %s: server optimiser %s (server_lr %g), aggregation %s%s%s", alg,
                fs_server_opt_name(kind), lr, rule, out->scaffold ? ", SCAFFOLD control variates" : "",
                out->local_norm ? ", FedBN (normalisation kept at the sites)" : "");
    return FS_OK;
}

int fs_cmd_aggregator(int argc, char **argv)
{
    static loader l; /* large path buffers: not on the stack */
    memset(&l, 0, sizeof l);
    if (fs_config_new(&l.cfg, agg_keys) != FS_OK) return 1;
    const char *config_path = NULL;
    int verbose = 0, rc = 1;
    int pr = parse_args(argc, argv, &l, &config_path, &verbose);
    if (pr) {
        fs_config_free(l.cfg);
        return pr < 0 ? 0 : pr;
    }
    if (verbose) fs_log_set_level(verbose > 1 ? FS_LOG_DEBUG : FS_LOG_INFO);
    if (config_path) {
        if (fs_config_load(l.cfg, config_path) != FS_OK) goto done;
        dirname_of(config_path, l.base, sizeof l.base);
    }

    char **sites = NULL;
    size_t nsites = 0;
    const char *listen, *ca, *cert, *key, *model, *state_dir, *metrics, *init, *device, *port_file;
    long long rounds, min_sites, local_epochs, steps, seed, poll_ms;
    double fraction, deadline, join_wait, site_timeout, lr, mu, linger;
    const char *dp_mode;
    int secure_agg, encrypted;
    long long he_t = 0;
    double he_clip = 10;
    long long sa_t, sa_k, sa_wcap;
    double sa_clip, sa_stage;
    fs_dp_params dp;
    fs_dp_params_default(&dp);
    if (fs_config_get_list(l.cfg, "sites", NULL, &sites, &nsites) != FS_OK) goto done;
    if (fs_config_get_str(l.cfg, "listen", "0.0.0.0:50051", &listen) != FS_OK ||
        get_path(&l, "ca", NULL, &ca) != FS_OK || get_path(&l, "cert", NULL, &cert) != FS_OK ||
        get_path(&l, "key", NULL, &key) != FS_OK ||
        fs_config_get_int(l.cfg, "rounds", 10, 1, 1000000, &rounds) != FS_OK ||
        fs_config_get_int(l.cfg, "min_sites", nsites < 2 ? (long long)nsites : 2, 1,
                          nsites ? (long long)nsites : 1, &min_sites) != FS_OK ||
        fs_config_get_float(l.cfg, "fraction", 1.0, 1e-9, 1.0, &fraction) != FS_OK ||
        fs_config_get_float(l.cfg, "round_deadline_s", 600, 1e-3, 1e9, &deadline) != FS_OK ||
        fs_config_get_float(l.cfg, "join_wait_s", 10, 0, 1e9, &join_wait) != FS_OK ||
        fs_config_get_float(l.cfg, "site_timeout_s", 0, 0, 1e9, &site_timeout) != FS_OK ||
        fs_config_get_int(l.cfg, "local_epochs", 1, 1, 10000, &local_epochs) != FS_OK ||
        fs_config_get_int(l.cfg, "steps_per_epoch", 0, 0, 100000000, &steps) != FS_OK ||
        fs_config_get_str(l.cfg, "model", "tiny", &model) != FS_OK ||
        fs_config_get_float(l.cfg, "lr", 1e-3, 1e-12, 1e3, &lr) != FS_OK ||
        fs_config_get_float(l.cfg, "prox_mu", 0, 0, 1e6, &mu) != FS_OK ||
        get_path(&l, "state_dir", "state", &state_dir) != FS_OK ||
        get_path(&l, "metrics", NULL, &metrics) != FS_OK ||
        fs_config_get_int(l.cfg, "seed", 1, 0, (long long)0x7fffffffffffffffLL, &seed) != FS_OK ||
        get_path(&l, "init", NULL, &init) != FS_OK ||
        fs_config_get_str(l.cfg, "device", "auto", &device) != FS_OK ||
        fs_config_get_float(l.cfg, "linger_s", 30, 0, 1e9, &linger) != FS_OK ||
        fs_config_get_int(l.cfg, "poll_ms", 1000, 1, 86400000, &poll_ms) != FS_OK ||
        get_path(&l, "port_file", NULL, &port_file) != FS_OK ||
        fs_config_get_str(l.cfg, "dp", "off", &dp_mode) != FS_OK ||
        fs_config_get_float(l.cfg, "dp_clip", dp.clip, 1e-12, 1e12, &dp.clip) != FS_OK ||
        fs_config_get_float(l.cfg, "dp_noise_multiplier", dp.noise_multiplier, 0, 1e6,
                            &dp.noise_multiplier) != FS_OK ||
        fs_config_get_float(l.cfg, "dp_delta", dp.delta, 1e-300, 0.999999, &dp.delta) != FS_OK ||
        fs_config_get_float(l.cfg, "dp_epsilon", 0, 0, 1e6, &dp.epsilon_budget) != FS_OK ||
        fs_config_get_bool(l.cfg, "dp_adaptive", 0, &dp.adaptive) != FS_OK ||
        fs_config_get_float(l.cfg, "dp_target_quantile", dp.target_quantile, 1e-6, 0.999999,
                            &dp.target_quantile) != FS_OK ||
        fs_config_get_float(l.cfg, "dp_clip_lr", dp.clip_lr, 1e-6, 10, &dp.clip_lr) != FS_OK ||
        fs_config_get_float(l.cfg, "dp_count_stddev", 0, 0, 1e9, &dp.count_stddev) != FS_OK ||
        fs_config_get_bool(l.cfg, "secure_agg", 0, &secure_agg) != FS_OK ||
        fs_config_get_int(l.cfg, "secagg_threshold", 0, 0, 255, &sa_t) != FS_OK ||
        fs_config_get_int(l.cfg, "secagg_neighbours", 0, 0, 254, &sa_k) != FS_OK ||
        fs_config_get_float(l.cfg, "secagg_clip", 10, 1e-9, 1e6, &sa_clip) != FS_OK ||
        fs_config_get_int(l.cfg, "secagg_weight_cap", 0, 0, (long long)FS_WIRE_MAX_SAMPLES, &sa_wcap) != FS_OK ||
        fs_config_get_float(l.cfg, "secagg_stage_s", 60, 1e-3, 1e9, &sa_stage) != FS_OK ||
        fs_config_get_bool(l.cfg, "encrypted", 0, &encrypted) != FS_OK ||
        fs_config_get_int(l.cfg, "he_threshold", 0, 0, 255, &he_t) != FS_OK ||
        fs_config_get_float(l.cfg, "he_clip", 10, 1e-9, 1e6, &he_clip) != FS_OK)
        goto done_sites;
    if (!strcmp(dp_mode, "central")) {
        dp.mode = FS_DP_CENTRAL;
    } else if (!strcmp(dp_mode, "distributed")) {
        dp.mode = FS_DP_DISTRIBUTED;
    } else if (strcmp(dp_mode, "off") != 0) {
        fs_log_error("dp = %s: expected off, central or distributed", dp_mode);
        goto done_sites;
    } else if (fs_config_has(l.cfg, "dp_clip") || fs_config_has(l.cfg, "dp_noise_multiplier") ||
               fs_config_has(l.cfg, "dp_epsilon")) {
        fs_log_warn("dp_* keys are set but dp = off: no differential privacy");
    }
    /* A state dir given as a flag takes its metrics along, unless --metrics
     * is given too (the file's metrics path belongs to the file's state). */
    if (metrics && from_cli(&l, "state_dir") && !from_cli(&l, "metrics")) {
        fs_log_info("metrics go to %s/metrics.jsonl (--state-dir given without --metrics)", state_dir);
        metrics = NULL;
    }
    if (!nsites) {
        fs_log_error("%s: no sites: set `sites = A,B,...` (the certificate names admitted)",
                     config_path ? config_path : "command line");
        goto done_sites;
    }
    if (!ca || !cert || !key) {
        fs_log_error("%s: mutual TLS is required: set ca, cert and key",
                     config_path ? config_path : "command line");
        goto done_sites;
    }
    fs_round_config nonidd;
    memset(&nonidd, 0, sizeof nonidd);
    if (noniid_config(&l, &mu, &nonidd) != FS_OK) goto done_sites;
    const fs_preset *pre = fs_preset_find(model);
    if (!pre) {
        fs_log_error("model '%s' is not a preset (tiny, small, ref)", model);
        goto done_sites;
    }
    char why[256];
    if (fs_sum_device_select(device, why, sizeof why) != FS_OK) {
        fs_log_error("device = %s: %s", device, why);
        goto done_sites;
    }

    float *w0 = NULL;
    fs_server_config sc = {0};
    sc.listen = listen;
    sc.tls = (fs_tls_files){ca, cert, key, NULL};
    sc.round = (fs_round_config){
        .sites = (const char *const *)sites, .n_sites = nsites, .rounds = (uint32_t)rounds,
        .min_sites = (uint32_t)min_sites, .fraction = fraction, .deadline_s = deadline,
        .join_wait_s = join_wait, .site_timeout_s = site_timeout,
        .local_epochs = (uint32_t)local_epochs, .steps_per_epoch = (uint32_t)steps,
        .lr = (float)lr, .prox_mu = (float)mu, .poll_ms = (uint32_t)poll_ms,
        .state_dir = state_dir, .metrics_path = metrics, .seed = (uint64_t)seed, .dp = dp,
        .secure_agg = secure_agg, .secagg_threshold = (uint32_t)sa_t,
        .secagg_neighbours = (uint32_t)sa_k, .secagg_clip = sa_clip,
        .secagg_weight_cap = (uint64_t)sa_wcap, .secagg_stage_s = sa_stage,
        .encrypted = encrypted, .he_threshold = (uint32_t)he_t, .he_clip = he_clip,
        .server_opt = nonidd.server_opt, .agg_rule = nonidd.agg_rule, .trim = nonidd.trim,
        .scaffold = nonidd.scaffold, .local_norm = nonidd.local_norm};
    uint8_t *local_mask = NULL;
    snprintf(sc.round.model.preset, sizeof sc.round.model.preset, "%s", pre->name);
    sc.round.model.base = (uint32_t)pre->base;
    sc.round.model.depth = (uint32_t)pre->depth;
    sc.round.model.size = (uint32_t)pre->size;
    sc.linger_s = linger;
    sc.on_round = print_round;
    /* The initial model is needed only for a fresh state dir. */
    char ck[4200];
    snprintf(ck, sizeof ck, "%s/global.ckpt", state_dir);
    if (access(ck, F_OK) != 0) {
        if (initial_model(pre, init, (uint64_t)seed, &w0) != FS_OK) goto done_sites;
    } else if (init) {
        fs_log_warn("init = %s ignored: %s exists (resuming)", init, ck);
    }
    sc.w0 = w0;
    sc.num_params = pre->nparams;
    /* FedBN: the normalisation parameters' deltas must be 0 (a site that
     * does not keep them local is refused rather than averaged in) */
    if (sc.round.local_norm) {
        local_mask = malloc(pre->nparams);
        if (!local_mask || fs_fedbn_mask(pre->base, pre->depth, local_mask, pre->nparams) == 0) {
            free(local_mask);
            free(w0);
            goto done_sites;
        }
        sc.round.local_mask = local_mask;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    fs_server *srv = NULL;
    fs_status started = fs_server_start(&srv, &sc);
    free(w0);
    free(local_mask);
    if (started != FS_OK) goto done_sites;
    int port = fs_server_port(srv);
    const char *colon = strrchr(listen, ':');
    int hostlen = colon ? (int)(colon - listen) : (int)strlen(listen);
    fs_round_view v;
    fs_round_view_get(fs_server_round(srv), &v);
    printf("aggregator listening on %.*s:%d, ", hostlen, listen, port);
    if (v.finished) printf("federation finished (%u/%u rounds)", v.completed, v.rounds);
    else printf("round %u/%u", v.round, v.rounds);
    printf(", sites ");
    for (size_t i = 0; i < nsites; i++) printf("%s%s", i ? "," : "", sites[i]);
    printf(" (model %s, %zu parameters, summed on %s)\n", pre->name, pre->nparams,
           fs_sum_device_name());
    fflush(stdout);
    if (port_file && write_port_file(port_file, port) != 0) {
        fs_server_free(srv);
        goto done_sites;
    }
    fs_status st = fs_server_run(srv, &g_stop);
    fs_server_free(srv);
    if (st != FS_OK) fs_log_error("aggregator: %s", fs_status_str(st));
    else rc = 0;

done_sites:
    free(sites);
done:
    fs_config_free(l.cfg);
    return rc;
}
