/*
 * cli/cmd_sim.c — `fedseg sim`: a whole federation on one machine. Makes a
 * run folder, synthesizes the sites' data there (or takes a folder of site_*
 * folders), provisions a fresh consortium ("sim", aggregator 127.0.0.1),
 * writes an aggregator config and one node config per site, starts
 * `fedseg aggregator` on a free port of 127.0.0.1 and one `fedseg node` per
 * site as child processes of this same binary, prints a table row per round
 * as the aggregator's metrics lines appear, and when the federation finished
 * leaves metrics.jsonl, final.ckpt and dice.png (gnuplot) in the run folder.
 *
 * Run folder:
 *   data/site_K/...              synthesized cases (absent with --data)
 *   consortium/                  CA, aggregator and site kits (common/provision.h)
 *   config/aggregator.conf       the aggregator's config (paths relative to it)
 *   config/site_K.conf           each node's config
 *   state/aggregator/            the aggregator's checkpoints, journal, spools
 *   state/site_K/                each node's last global model and final.ckpt
 *   logs/{aggregator,site_K,gnuplot}.log   every child's stdout and stderr
 *   metrics.jsonl                one JSON line per round (the aggregator's)
 *   final.ckpt                   the final global model
 *   dice.dat, dice.gp, dice.png  Dice of the global model per round per site
 *
 * Process rules: this process never calls gRPC (it only forks and execs);
 * every child has its own process group and dies with the simulation
 * (cli/sim_proc.c); Ctrl-C / SIGTERM / SIGHUP stop all children (SIGTERM, a
 * grace period, SIGKILL); a child that ends before the federation finished is
 * reported by name with the end of its log, and everything is stopped. Exit
 * codes: 0 the federation finished, 1 it did not (reason printed), 2 bad
 * usage, 130 interrupted.
 *
 * Tested by tests/test_sim.sh (a small federation end to end) and
 * tests/test_sim_stop.sh (Ctrl-C, a child killed under it: no process left).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/sim.h"
#include "common/dp.h"
#include "common/fsutil.h"
#include "common/log.h"
#include "common/pki.h"
#include "common/provision.h"
#include "node/synth.h"
#include "node/unet.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GRACE_S 15.0         /* SIGTERM → SIGKILL                              */
#define PORT_WAIT_S 60.0     /* the aggregator must be listening by then      */
#define NODES_AFTER_AGG_S 30 /* nodes fetching the final model after the end  */
#define PATHLEN 4096

static volatile sig_atomic_t g_signal = 0;

static void on_signal(int sig)
{
    g_signal = sig;
}

typedef struct {
    int nsites, rounds, local_epochs, steps, min_sites, threads, batch, sites_given;
    double deadline, lr, voxel_scale;
    double dp_clip, dp_noise, dp_epsilon, dp_delta; /* dp_clip > 0: DP on */
    int dp_noise_given;
    int secure_agg, sa_threshold, sa_neighbours, drop, drop_round;
    int encrypted, he_threshold, dp_adaptive;
    double sa_clip;
    const char *drop_stage;
    long long seed;
    const char *model, *data, *out, *device, *cases;
    /* non-IID: written into the aggregator's and nodes' configs (docs/protocol.md) */
    const char *algorithm, *aggregation;
    double mu, server_lr, fraction, trim;      /* < 0: not given (the aggregator's default) */
    int finetune_epochs;
    fs_synth_het heterogeneity;
} sim_opts;

static void sim_help(FILE *f)
{
    fprintf(f,
        "usage: fedseg sim [--sites N] [--rounds R] [--model tiny|small|ref] [--data DIR] [--out RUN_DIR]\n"
        "                  [--local-epochs E] [--steps S] [--min-sites M] [--deadline S] [--seed S]\n"
        "                  [--device D] [--threads T] [options]\n\n"
        "A whole federation on this machine, over mutual TLS on 127.0.0.1: synthesizes the\n"
        "sites' data (or takes DIR), provisions a fresh consortium, starts `fedseg aggregator`\n"
        "and one `fedseg node` process per site, and prints a row per round as it closes:\n"
        "the sites that reported, each site's whole-tumour Dice of the global model it received\n"
        "(evaluated on its own held-out cases, so the row of round r shows the model after\n"
        "r-1 rounds; the last row, 'final', the model after every round), the round's seconds\n"
        "and the megabytes moved. Ends with a summary line and leaves in the run folder:\n"
        "metrics.jsonl (one JSON line per round), final.ckpt (the final global model, for\n"
        "`fedseg eval` / `predict`), dice.png (Dice per round per site, drawn with gnuplot;\n"
        "dice.dat and dice.gp beside it), config/ (the configs used), consortium/ (the\n"
        "certificates), state/ and logs/ (each process's output).\n\n"
        "Ctrl-C stops every process cleanly (SIGTERM, then SIGKILL after %.0f s); a process\n"
        "that dies before the federation finished is named, with the end of its log, and the\n"
        "rest are stopped. Exit status 0 only when the federation finished (1 otherwise,\n"
        "2 bad usage, 130 interrupted).\n\n"
        "options:\n"
        "  --sites N            sites (default 3; with --data: the first N site_* folders, default all)\n"
        "  --rounds R           federated rounds (default 15)\n"
        "  --local-epochs E     local epochs per round at each site (default 2)\n"
        "  --steps S            training steps per local epoch (default: the site's training\n"
        "                       slices / batch, so one epoch sees each slice about once)\n"
        "  --model PRESET       tiny | small | ref (default tiny)\n"
        "  --data DIR           take the sites from DIR/site_* (BraTS layout) instead of\n"
        "                       synthesizing them\n"
        "  --out RUN_DIR        run folder, new or empty (default run/sim-YYYYmmdd-HHMMSS)\n"
        "  --min-sites M        a round closes at its deadline only if M sites reported\n"
        "                       (default min(2, N); 3 with --secure-agg)\n"
        "  --deadline S         seconds a round waits for its sites' updates (default 600)\n"
        "  --lr LR              the sites' Adam learning rate (default 0.001, the same every round)\n"
        "  --seed S             data, initial model and sampling (default 1); node K uses S+K\n"
        "  --device D           cpu | cuda | auto, for the nodes and the aggregator's sum (default auto)\n"
        "  --threads T          CPU threads per node (default: cores / N, at least 1)\n"
        "  --batch B            images per training step (default: the node's, 16 for tiny on CPU)\n"
        "  --cases-per-site L   synthesized cases per site, comma-separated (default 24,16,10,\n"
        "                       repeating for more sites)\n"
        "  --voxel-scale F      coarser synthesized voxels, in [0.5, 4] (default 1; 2 = quick tests)\n"
        "  --dp-clip C          client-level differential privacy (docs/security.md): each site's\n"
        "                       update clipped to L2 norm C, Gaussian noise on the sum (default off;\n"
        "                       added by the aggregator, or with --secure-agg / --encrypted as\n"
        "                       discrete Gaussian shares from the sites)\n"
        "  --dp-noise Z         noise multiplier: standard deviation Z*C on the sum\n"
        "  --dp-epsilon E       privacy budget at --dp-delta; without --dp-noise the smallest Z\n"
        "                       that keeps all R rounds within E is computed\n"
        "  --dp-delta D         delta of the reported (epsilon, delta) (default 1e-5)\n"
        "  --dp-adaptive        central DP: adapt the clip each round towards the median update\n"
        "                       norm (Andrew et al.; --dp-clip is the first round's clip)\n"
        "  --secure-agg         secure aggregation: the aggregator sees only masked updates and\n"
        "                       learns their sum (docs/security.md); needs 3 or more sites\n"
        "  --secagg-threshold T sites needed to unmask (default floor(2n/3)+1, at most n-1)\n"
        "  --secagg-neighbours K  SecAgg+ neighbours per site, even (default n-1: full SecAgg)\n"
        "  --secagg-clip C      L2 clip of an update before quantisation (default 10)\n"
        "  --encrypted          encrypted aggregation: updates travel as multiparty-HE ciphertexts\n"
        "                       under a key no single party holds; the aggregator adds them and\n"
        "                       t sites decrypt only the sum (docs/security.md); 2 or more sites\n"
        "  --he-threshold T     sites needed to decrypt (default floor(2n/3)+1, at most n-1\n"
        "                       from 3 sites on)\n"
        "  --drop K             with --secure-agg or --encrypted: the last K sites leave the\n"
        "                       protocol silently in round --drop-round (default 2) at\n"
        "                       --drop-stage STAGE: advertise, shares, masked or unmask (default\n"
        "                       masked; encrypted: keys, shares, upload or decrypt, default\n"
        "                       upload; with decrypt the first K sites, which are in the\n"
        "                       decryption set, drop), to show the recovery\n"
        "  --heterogeneity H    synthesized site differences: iid | mild (default) | strong\n"
        "  --algorithm A        fedavg (default) | fedprox | fedavgm | fedadagrad | fedadam | fedyogi |\n"
        "                       scaffold | fedbn\n"
        "  --mu MU              FedProx proximal term (fedprox default 0.01)\n"
        "  --server-lr ETA      server learning rate (fedavg 1, adaptive optimisers 0.01)\n"
        "  --aggregation R      mean (default) | median | trimmed_mean\n"
        "  --trim F             trimmed_mean: share dropped at each end (default 0.2)\n"
        "  --fraction F         share of the sites sampled per round, 0 < F <= 1 (default 1)\n"
        "  --finetune-epochs K  personalisation: each site fine-tunes the final model for K\n"
        "                       local epochs (state/SITE/personal.ckpt; default 0 = none)\n"
        "  -h, --help           this help\n\n"
        "example: fedseg sim --sites 3 --rounds 15 --local-epochs 2 --out run/sim\n",
        GRACE_S);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Parses the command line. 0 to go on, -1 after --help, 2 bad usage. */
static int parse_args(int argc, char **argv, sim_opts *o)
{
    static const struct option opts[] = {
        {"sites", required_argument, 0, 'n'}, {"rounds", required_argument, 0, 'r'},
        {"model", required_argument, 0, 'm'}, {"data", required_argument, 0, 'd'},
        {"out", required_argument, 0, 'o'}, {"local-epochs", required_argument, 0, 'e'},
        {"steps", required_argument, 0, 's'}, {"min-sites", required_argument, 0, 'M'},
        {"deadline", required_argument, 0, 'D'}, {"seed", required_argument, 0, 'S'},
        {"device", required_argument, 0, 'v'}, {"threads", required_argument, 0, 't'},
        {"batch", required_argument, 0, 'b'}, {"lr", required_argument, 0, 'l'},
        {"cases-per-site", required_argument, 0, 'c'}, {"voxel-scale", required_argument, 0, 'x'},
        {"dp-clip", required_argument, 0, 'C'}, {"dp-noise", required_argument, 0, 'Z'},
        {"dp-epsilon", required_argument, 0, 'E'}, {"dp-delta", required_argument, 0, 'Q'},
        {"secure-agg", no_argument, 0, 1001}, {"secagg-threshold", required_argument, 0, 1002},
        {"secagg-neighbours", required_argument, 0, 1003}, {"drop", required_argument, 0, 1004},
        {"drop-stage", required_argument, 0, 1005}, {"drop-round", required_argument, 0, 1006},
        {"secagg-clip", required_argument, 0, 1007}, {"encrypted", no_argument, 0, 1008},
        {"he-threshold", required_argument, 0, 1009}, {"dp-adaptive", no_argument, 0, 1010},
        {"algorithm", required_argument, 0, 'A'}, {"mu", required_argument, 0, 'u'},
        {"server-lr", required_argument, 0, 'L'}, {"aggregation", required_argument, 0, 'g'},
        {"trim", required_argument, 0, 'T'}, {"fraction", required_argument, 0, 'F'},
        {"finetune-epochs", required_argument, 0, 'k'}, {"heterogeneity", required_argument, 0, 'H'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->nsites = 3;
    o->rounds = 15;
    o->local_epochs = 2;
    o->deadline = 600;
    o->lr = 1e-3;
    o->voxel_scale = 1;
    o->dp_delta = 1e-5;
    o->drop_round = 2;
    o->drop_stage = "masked";
    o->seed = 1;
    o->model = "tiny";
    o->device = "auto";
    o->mu = o->server_lr = o->fraction = o->trim = -1;
    int c, li = -1;
    long long v = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, &li)) != -1) {
        int ok = 1;
        switch (c) {
        case 'n': ok = fs_arg_ll(optarg, 1, FS_SIM_MAX_SITES, &v); o->nsites = (int)v; o->sites_given = 1; break;
        case 'r': ok = fs_arg_ll(optarg, 1, 100000, &v); o->rounds = (int)v; break;
        case 'e': ok = fs_arg_ll(optarg, 1, 10000, &v); o->local_epochs = (int)v; break;
        case 's': ok = fs_arg_ll(optarg, 1, 100000000, &v); o->steps = (int)v; break;
        case 'M': ok = fs_arg_ll(optarg, 1, FS_SIM_MAX_SITES, &v); o->min_sites = (int)v; break;
        case 't': ok = fs_arg_ll(optarg, 1, 4096, &v); o->threads = (int)v; break;
        case 'b': ok = fs_arg_ll(optarg, 1, 4096, &v); o->batch = (int)v; break;
        case 'S': ok = fs_arg_ll(optarg, 0, (long long)1 << 40, &o->seed); break;
        case 'D': ok = fs_arg_double(optarg, 1e-3, 1e9, &o->deadline); break;
        case 'l': ok = fs_arg_double(optarg, 1e-12, 1e3, &o->lr); break;
        case 'x': ok = fs_arg_double(optarg, 0.5, 4, &o->voxel_scale); break;
        case 'C': ok = fs_arg_double(optarg, 1e-12, 1e12, &o->dp_clip); break;
        case 'Z':
            ok = fs_arg_double(optarg, 0, 1e6, &o->dp_noise);
            o->dp_noise_given = 1;
            break;
        case 'E': ok = fs_arg_double(optarg, 1e-6, 1e6, &o->dp_epsilon); break;
        case 'Q': ok = fs_arg_double(optarg, 1e-300, 0.999999, &o->dp_delta); break;
        case 1001: o->secure_agg = 1; break;
        case 1002: ok = fs_arg_ll(optarg, 2, 255, &v); o->sa_threshold = (int)v; break;
        case 1003: ok = fs_arg_ll(optarg, 2, 254, &v); o->sa_neighbours = (int)v; break;
        case 1004: ok = fs_arg_ll(optarg, 1, FS_SIM_MAX_SITES, &v); o->drop = (int)v; break;
        case 1006: ok = fs_arg_ll(optarg, 1, 100000, &v); o->drop_round = (int)v; break;
        case 1007: ok = fs_arg_double(optarg, 1e-9, 1e6, &o->sa_clip); break;
        case 1008: o->encrypted = 1; break;
        case 1010: o->dp_adaptive = 1; break;
        case 1009: ok = fs_arg_ll(optarg, 2, 255, &v); o->he_threshold = (int)v; break;
        case 1005:
            o->drop_stage = optarg;
            ok = !strcmp(optarg, "advertise") || !strcmp(optarg, "shares") || !strcmp(optarg, "masked") ||
                 !strcmp(optarg, "unmask") || !strcmp(optarg, "keys") || !strcmp(optarg, "upload") ||
                 !strcmp(optarg, "decrypt");
            break;
        case 'm': o->model = optarg; ok = fs_preset_find(optarg) != NULL; break;
        case 'd': o->data = optarg; break;
        case 'o': o->out = optarg; break;
        case 'c': o->cases = optarg; break;
        case 'A': o->algorithm = optarg; ok = strspn(optarg, "abcdefghijklmnopqrstuvwxyz") == strlen(optarg); break;
        case 'g': o->aggregation = optarg; ok = strspn(optarg, "abcdefghijklmnopqrstuvwxyz_") == strlen(optarg); break;
        case 'u': ok = fs_arg_double(optarg, 0, 1e6, &o->mu); break;
        case 'L': ok = fs_arg_double(optarg, 1e-12, 1e6, &o->server_lr); break;
        case 'T': ok = fs_arg_double(optarg, 0, 0.499999, &o->trim); break;
        case 'F': ok = fs_arg_double(optarg, 1e-9, 1, &o->fraction); break;
        case 'k': ok = fs_arg_ll(optarg, 0, 10000, &v); o->finetune_epochs = (int)v; break;
        case 'H': ok = fs_synth_het_parse(optarg, &o->heterogeneity) == FS_OK; break;
        case 'v':
            o->device = optarg;
            ok = !strcmp(optarg, "cpu") || !strcmp(optarg, "cuda") || !strcmp(optarg, "auto");
            break;
        case 'h': sim_help(stdout); return -1;
        default: return 2;
        }
        if (!ok) {
            fprintf(stderr, "fedseg sim: bad value '%s' for --%s (see --help)\n", optarg,
                    li >= 0 ? opts[li].name : "?");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "fedseg sim: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    if (o->data && (o->cases || o->voxel_scale != 1 || o->heterogeneity != FS_SYNTH_HET_MILD)) {
        fprintf(stderr, "fedseg sim: --cases-per-site, --voxel-scale and --heterogeneity shape synthesized "
                        "data; not with --data\n");
        return 2;
    }
    if (o->drop && !o->secure_agg && !o->encrypted) {
        fprintf(stderr, "fedseg sim: --drop shows the recovery of secure or encrypted aggregation: it needs "
                        "--secure-agg or --encrypted\n");
        return 2;
    }
    if (o->dp_adaptive && (!o->dp_clip || o->secure_agg || o->encrypted)) {
        fprintf(stderr, "fedseg sim: --dp-adaptive adapts the clip of central DP: it needs --dp-clip and "
                        "neither --secure-agg nor --encrypted\n");
        return 2;
    }
    if (o->encrypted && o->secure_agg) {
        fprintf(stderr, "fedseg sim: --encrypted and --secure-agg are two private modes: choose one\n");
        return 2;
    }
    if (!o->dp_clip && (o->dp_noise_given || o->dp_epsilon)) {
        fprintf(stderr, "fedseg sim: --dp-noise and --dp-epsilon need --dp-clip C (the bound on each update)\n");
        return 2;
    }
    if (o->dp_clip && !o->dp_noise_given && !o->dp_epsilon) {
        fprintf(stderr, "fedseg sim: --dp-clip needs --dp-noise Z or --dp-epsilon E\n");
        return 2;
    }
    if (o->dp_clip && !o->dp_noise_given) {
        /* every site takes part in every round of a simulation: q = 1 */
        if (fs_dp_calibrate_sigma(o->dp_epsilon, o->dp_delta, o->rounds, 1.0, &o->dp_noise) != FS_OK) {
            fprintf(stderr, "fedseg sim: no noise multiplier keeps %d rounds within epsilon %g at delta %g\n",
                    o->rounds, o->dp_epsilon, o->dp_delta);
            return 2;
        }
    }
    return 0;
}

static int is_site_dir(const struct dirent *d)
{
    return !strncmp(d->d_name, "site_", 5) && d->d_name[5];
}

/* The site folders of dir (site_*, in natural order: site_2 before site_10),
 * at most max; names and absolute paths. Returns the count, -1 on error. */
static int list_sites(const char *dir, char names[][FS_SIM_NAME_LEN], char paths[][PATHLEN], int max)
{
    struct dirent **ents;
    int n = scandir(dir, &ents, is_site_dir, versionsort);
    if (n < 0) {
        fs_log_error("%s: cannot list: %s", dir, strerror(errno));
        return -1;
    }
    int k = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        char p[PATHLEN + 300];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, ents[i]->d_name);
        if (k < max && stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (strlen(ents[i]->d_name) >= FS_SIM_NAME_LEN || !fs_pki_name_ok(ents[i]->d_name)) {
                fs_log_error("%s: '%s' cannot be a site name (letters, digits, '-', '_', '.')", dir,
                             ents[i]->d_name);
                bad = 1;
            } else if (!realpath(p, paths[k])) {
                fs_log_error("%s: %s", p, strerror(errno));
                bad = 1;
            } else {
                snprintf(names[k++], FS_SIM_NAME_LEN, "%.63s", ents[i]->d_name);
            }
        }
        free(ents[i]);
    }
    free(ents);
    return bad ? -1 : k;
}

/* 1 when dir does not exist or is an empty folder. */
static int dir_absent_or_empty(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

/* Writes a whole small file; FS_ERR_IO (logged). */
static fs_status write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fs_log_error("%s: cannot write: %s", path, strerror(errno));
        if (f) fclose(f);
        return FS_ERR_IO;
    }
    return FS_OK;
}

/* Copies src to dst atomically; FS_ERR_IO (logged). */
static fs_status copy_file(const char *src, const char *dst)
{
    FILE *in = fopen(src, "rb");
    if (!in) {
        fs_log_error("%s: cannot read: %s", src, strerror(errno));
        return FS_ERR_IO;
    }
    fs_atomic_file af;
    fs_status st = fs_atomic_open(&af, dst);
    if (st != FS_OK) {
        fclose(in);
        return st;
    }
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, af.f) != n) st = FS_ERR_IO;
    if (ferror(in)) st = FS_ERR_IO;
    fclose(in);
    if (st != FS_OK) {
        fs_log_error("cannot copy %s to %s", src, dst);
        fs_atomic_abort(&af);
        return st;
    }
    return fs_atomic_commit(&af);
}

/* ---- the federation ------------------------------------------------------- */

typedef struct {
    const sim_opts *o;
    char run[3000];                          /* absolute run folder          */
    const char *run_shown;                   /* as the user named it         */
    int n;                                   /* sites                        */
    char names[FS_SIM_MAX_SITES][FS_SIM_NAME_LEN];
    char data[FS_SIM_MAX_SITES][PATHLEN];
    fs_sim_child ch[FS_SIM_MAX_SITES + 1];   /* [0] aggregator, [1..n] nodes */
    int threads;
    /* rounds seen */
    long metrics_off;
    int completed;                           /* highest round seen           */
    unsigned char *seen;                     /* [rounds + 1]                 */
    double *dice;                            /* [(rounds + 1) * n]           */
    double bytes, t0;
    int col;                                 /* width of a site column       */
} sim;

/* The aggregator's config. Paths are relative to config/. */
/* Encrypted aggregation: a round opens with 2 sites, or with as many as the
 * decryption threshold asks for (a round must be decryptable). */
static int he_min_sites(const sim_opts *o, int n)
{
    int m = o->he_threshold > 2 ? o->he_threshold : 2;
    return m < n ? m : n;
}

static fs_status write_agg_config(sim *s)
{
    const sim_opts *o = s->o;
    char sites[FS_SIM_MAX_SITES * (FS_SIM_NAME_LEN + 1)] = "";
    for (int i = 0; i < s->n; i++) {
        if (i) strcat(sites, ",");
        strcat(sites, s->names[i]);
    }
    char text[8192], path[PATHLEN + 64];
    int len = snprintf(text, sizeof text,
        "# fedseg aggregator configuration written by `fedseg sim` (paths relative to this folder)\n"
        "listen = 127.0.0.1:0\n"
        "port_file = ../state/aggregator.port\n"
        "ca = ../consortium/aggregator/ca.crt\n"
        "cert = ../consortium/aggregator/aggregator.crt\n"
        "key = ../consortium/aggregator/aggregator.key\n"
        "sites = %s\n"
        "rounds = %d\n"
        "min_sites = %d\n"
        "fraction = %g\n"
        "round_deadline_s = %g\n"
        "# round 1 waits for every site to join (they load their data first)\n"
        "join_wait_s = 120\n"
        "local_epochs = %d\n"
        "steps_per_epoch = %d\n"
        "model = %s\n"
        "lr = %g\n"
        "seed = %lld\n"
        "device = %s\n"
        "state_dir = ../state/aggregator\n"
        "metrics = ../metrics.jsonl\n"
        "# the simulation stops the aggregator once every node has the final model\n"
        "linger_s = 120\n"
        "poll_ms = 250\n",
        sites, o->rounds,
        /* distributed DP: every round needs more sites than the threshold */
        o->min_sites ? o->min_sites : (o->secure_agg || o->encrypted) && o->dp_clip > 0 ? s->n : o->secure_agg ? 3 :
        o->encrypted ? he_min_sites(o, s->n) : (s->n < 2 ? s->n : 2),
        o->fraction > 0 ? o->fraction : 1.0, o->deadline, o->local_epochs,
        o->steps, o->model, o->lr, o->seed, o->device);
    if (len > 0 && len < (int)sizeof text && o->dp_clip > 0)
        len += snprintf(text + len, sizeof text - (size_t)len,
                        "# client-level differential privacy (--dp-*)\n"
                        "dp = %s\n"
                        "dp_clip = %.9g\n"
                        "dp_noise_multiplier = %.9g\n"
                        "dp_delta = %.9g\n"
                        "dp_epsilon = %.9g\n"
                        "dp_adaptive = %s\n",
                        o->secure_agg || o->encrypted ? "distributed" : "central", o->dp_clip, o->dp_noise, o->dp_delta,
                        o->dp_epsilon, o->dp_adaptive ? "true" : "false");
    if (len > 0 && len < (int)sizeof text && o->secure_agg) {
        len += snprintf(text + len, sizeof text - (size_t)len,
                        "# secure aggregation (--secure-agg)\n"
                        "secure_agg = true\n"
                        "# each key or unmasking stage waits up to a quarter of the round deadline\n"
                        "secagg_stage_s = %g\n",
                        o->deadline / 4 < 1 ? 1 : o->deadline / 4 > 60 ? 60 : o->deadline / 4);
        if (len < (int)sizeof text && o->sa_clip > 0)
            len += snprintf(text + len, sizeof text - (size_t)len, "secagg_clip = %.9g\n", o->sa_clip);
        if (len < (int)sizeof text && o->sa_threshold)
            len += snprintf(text + len, sizeof text - (size_t)len, "secagg_threshold = %d\n", o->sa_threshold);

        if (len < (int)sizeof text && o->sa_neighbours)
            len += snprintf(text + len, sizeof text - (size_t)len, "secagg_neighbours = %d\n", o->sa_neighbours);
    }
    if (len > 0 && len < (int)sizeof text && o->encrypted) {
        len += snprintf(text + len, sizeof text - (size_t)len,
                        "# encrypted aggregation (--encrypted)\n"
                        "encrypted = true\n"
                        "# each key or decryption stage waits up to a quarter of the round deadline\n"
                        "secagg_stage_s = %g\n",
                        o->deadline / 4 < 1 ? 1 : o->deadline / 4 > 60 ? 60 : o->deadline / 4);
        if (len < (int)sizeof text && o->he_threshold)
            len += snprintf(text + len, sizeof text - (size_t)len, "he_threshold = %d\n", o->he_threshold);
    }
    if (len < 0 || len >= (int)sizeof text) return FS_ERR_ARG;
    /* the non-IID keys, only those given (the aggregator's defaults otherwise) */
    char extra[1024] = "", item[128];
    if (o->algorithm) { snprintf(item, sizeof item, "algorithm = %s\n", o->algorithm); strcat(extra, item); }
    if (o->aggregation) { snprintf(item, sizeof item, "aggregation = %s\n", o->aggregation); strcat(extra, item); }
    if (o->mu >= 0) { snprintf(item, sizeof item, "prox_mu = %g\n", o->mu); strcat(extra, item); }
    if (o->server_lr > 0) { snprintf(item, sizeof item, "server_lr = %g\n", o->server_lr); strcat(extra, item); }
    if (o->trim >= 0) { snprintf(item, sizeof item, "trim_fraction = %g\n", o->trim); strcat(extra, item); }
    if ((size_t)len + strlen(extra) >= sizeof text) return FS_ERR_ARG;
    strcat(text, extra);
    snprintf(path, sizeof path, "%s/config/aggregator.conf", s->run);
    return write_file(path, text);
}

/* Site i's node config, once the aggregator's port is known. */
static fs_status write_node_config(sim *s, int i, int port)
{
    const sim_opts *o = s->o;
    const char *nm = s->names[i];
    char text[PATHLEN + 4096], path[PATHLEN + 128], batch[64] = "";
    if (o->batch) snprintf(batch, sizeof batch, "batch = %d\n", o->batch);
    int len = snprintf(text, sizeof text,
        "# fedseg node configuration of %s written by `fedseg sim` (paths relative to this folder)\n"
        "aggregator = 127.0.0.1:%d\n"
        "server_name = 127.0.0.1\n"
        "ca = ../consortium/sites/%s/ca.crt\n"
        "cert = ../consortium/sites/%s/%s.crt\n"
        "key = ../consortium/sites/%s/%s.key\n"
        "site = %s\n"
        "data = %s\n"
        "device = %s\n"
        "model = %s\n"
        "threads = %d\n"
        "seed = %lld\n"
        "%s"
        "state_dir = ../state/%s\n"
        "backoff_max_s = 5\n"
        "finetune_epochs = %d\n",
        nm, port, nm, nm, nm, nm, nm, nm, s->data[i], o->device, o->model, s->threads,
        o->seed + i + 1, batch, nm, o->finetune_epochs);
    /* the last K sites drop; before decryption the first K (the aggregator
     * asks the contributors with the smallest indices to decrypt, so that
     * the dropout hits the decryption set and its replacement shows) */
    int dropper = o->encrypted && !strcmp(o->drop_stage, "decrypt") ? i < o->drop : i >= s->n - o->drop;
    if (len > 0 && len < (int)sizeof text && o->drop && dropper)
        len += snprintf(text + len, sizeof text - (size_t)len,
                        "# --drop: this site leaves the private aggregation once, to show the recovery\n"
                        "secagg_drop_stage = %s\n"
                        "secagg_drop_round = %d\n",
                        o->drop_stage, o->drop_round);
    if (len < 0 || len >= (int)sizeof text) return FS_ERR_ARG;
    snprintf(path, sizeof path, "%s/config/%s.conf", s->run, nm);
    return write_file(path, text);
}

/* Distributed DP under secure aggregation: a fixed threshold t (< n, so that
 * every round's sum holds t noise shares) and, when --dp-noise was not
 * given, the smallest noise multiplier (in 2% steps up from the Gaussian
 * calibration) whose distributed-discrete-Gaussian ledger keeps all rounds
 * within --dp-epsilon, counting t shares per round. */
static fs_status distributed_dp_setup(sim_opts *o, int n)
{
    const int he = o->encrypted;
    int t = he ? o->he_threshold : o->sa_threshold;
    if (!t) t = 2 * n / 3 + 1;
    if (t > n - 1) t = n - 1;
    if (t < 2) t = 2;
    if (t >= n) {
        fs_log_error("--dp-* with %s needs more sites than the threshold (%d site(s), t %d)",
                     he ? "--encrypted" : "--secure-agg", n, t);
        return FS_ERR_ARG;
    }
    if (he) o->he_threshold = t;
    else o->sa_threshold = t;
    if (o->dp_noise_given) return FS_OK;
    const fs_preset *pr = fs_preset_find(o->model);
    for (int it = 0; it < 400; it++, o->dp_noise *= 1.02) {
        int f;
        if (fs_dp_ddg_quant_bits(o->dp_clip, o->dp_noise, (uint32_t)n, (uint32_t)t, &f) != FS_OK) continue;
        if (he) { /* the aggregator's grid for the BFV plaintext space (aggregator/round.c) */
            f = f - 6 > 24 ? 24 : f - 6;
            if (f < 0 || o->dp_noise * o->dp_clip * ldexp(1.0, f) / sqrt((double)t) < 0.5) continue;
        }
        fs_dp_params p;
        fs_dp_params_default(&p);
        p.mode = FS_DP_DISTRIBUTED;
        p.clip = o->dp_clip;
        p.noise_multiplier = o->dp_noise;
        p.delta = o->dp_delta;
        p.sites = n;
        p.min_sites = t;
        p.granularity = ldexp(1.0, -f);
        p.dim = pr ? pr->nparams : 1;
        fs_dp_accountant acc;
        if (fs_dp_accountant_init(&acc, &p) != FS_OK) continue;
        int ok = 1;
        for (int r = 0; r < o->rounds && ok; r++) ok = fs_dp_accountant_add_round(&acc, t) == FS_OK;
        if (ok && fs_dp_accountant_epsilon(&acc) <= o->dp_epsilon) return FS_OK;
    }
    fs_log_error("no noise multiplier keeps %d rounds of distributed DP within epsilon %g", o->rounds,
                 o->dp_epsilon);
    return FS_ERR_ARG;
}

/* Makes the data: synthesized into RUN/data, or the site_* folders of --data. */
static fs_status prepare_data(sim *s)
{
    const sim_opts *o = s->o;
    char dir[PATHLEN + 16];
    if (o->data) {
        int max = o->sites_given ? o->nsites : FS_SIM_MAX_SITES;
        int k = list_sites(o->data, s->names, s->data, max);
        if (k < 0) return FS_ERR_ARG;
        if (k == 0 || (o->sites_given && k < o->nsites)) {
            fs_log_error("%s: holds %d site_* folder(s), %d needed", o->data, k, o->sites_given ? o->nsites : 1);
            return FS_ERR_NOT_FOUND;
        }
        s->n = k;
        return FS_OK;
    }
    fs_synth_options so;
    fs_synth_defaults(&so);
    snprintf(dir, sizeof dir, "%s/data", s->run);
    so.out_dir = dir;
    so.nsites = o->nsites;
    so.seed = (uint64_t)o->seed;
    so.voxel_scale = (float)o->voxel_scale;
    so.heterogeneity = o->heterogeneity;
    if (o->cases) {
        int m = 0;
        const char *p = o->cases;
        while (*p && m < FS_SYNTH_MAX_SITES) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 1 || v > FS_SYNTH_MAX_CASES || (*end && *end != ',')) {
                fs_log_error("--cases-per-site %s: expected numbers 1..%d separated by commas", o->cases,
                             FS_SYNTH_MAX_CASES);
                return FS_ERR_ARG;
            }
            so.cases[m++] = (int)v;
            p = *end ? end + 1 : end;
        }
        for (int i = m; i < so.nsites; i++) so.cases[i] = so.cases[i % m];
    } else {
        for (int i = 0; i < so.nsites; i++) so.cases[i] = fs_synth_het_cases(o->heterogeneity, i);
    }
    printf("synthesizing %d site(s) (", so.nsites);
    for (int i = 0; i < so.nsites; i++) printf("%s%d", i ? "," : "", so.cases[i]);
    printf(" cases, seed %lld) in %s/data ...\n", o->seed, s->run_shown);
    fflush(stdout);
    double t = now_s();
    FS_TRY(fs_synth_run(&so));
    printf("data ready in %.0f s\n", now_s() - t);
    int k = list_sites(dir, s->names, s->data, so.nsites);
    if (k != so.nsites) {
        fs_log_error("%s: expected %d site folders after synthesis, found %d", dir, so.nsites, k);
        return FS_ERR_IO;
    }
    s->n = k;
    return FS_OK;
}

static fs_status provision(sim *s)
{
    char out[PATHLEN + 16];
    const char *sites[FS_SIM_MAX_SITES];
    for (int i = 0; i < s->n; i++) sites[i] = s->names[i];
    snprintf(out, sizeof out, "%s/consortium", s->run);
    fs_provision_opts po = {"sim", "127.0.0.1", sites, s->n, out};
    return fs_provision_create(&po);
}

/* Table header: one column per site. */
static void print_header(sim *s)
{
    printf("\nDice = whole-tumour Dice of the global model each site received in that round, on its own\n"
           "held-out cases (round r shows the model after r-1 rounds; 'final' the model after all).\n\n");
    printf("round  sites |");
    for (int i = 0; i < s->n; i++) printf(" %*s", s->col, s->names[i]);
    printf("    mean | seconds        MB\n");
    fflush(stdout);
}

static void print_row(sim *s, const char *label, const char *reported, const double *dice, double secs,
                      double mb)
{
    printf("%5s  %5s |", label, reported);
    double sum = 0;
    int k = 0;
    for (int i = 0; i < s->n; i++) {
        if (isfinite(dice[i])) {
            printf(" %*.3f", s->col, dice[i]);
            sum += dice[i];
            k++;
        } else {
            printf(" %*s", s->col, "-");
        }
    }
    if (k) printf("   %.3f", sum / k);
    else printf("       -");
    if (isfinite(secs)) printf(" | %7.1f %9.2f\n", secs, mb);
    else printf(" |\n");
    fflush(stdout);
}

/* Reads the metrics lines that appeared since the last call and prints them. */
static void poll_metrics(sim *s)
{
    char path[PATHLEN + 32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", s->run);
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fseek(f, s->metrics_off, SEEK_SET) != 0) {
        fclose(f);
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] != '\n') break; /* a line being written: next time */
        s->metrics_off += len;
        fs_sim_round r;
        if (fs_sim_parse_metrics(line, &r) != FS_OK) {
            fs_log_warn("%s: an unreadable line (ignored)", path);
            continue;
        }
        if (r.round > (unsigned)s->o->rounds || s->seen[r.round]) {
            fs_log_warn("%s: unexpected line for round %u (ignored)", path, r.round);
            continue;
        }
        s->seen[r.round] = 1;
        if ((int)r.round > s->completed) s->completed = (int)r.round;
        double d[FS_SIM_MAX_SITES];
        for (int i = 0; i < s->n; i++) {
            int j = fs_sim_round_find(&r, s->names[i]);
            d[i] = j >= 0 && r.site[j].reported ? r.site[j].dice_wt : NAN;
            s->dice[(size_t)(r.round - 1) * s->n + i] = d[i];
        }
        s->bytes += r.bytes;
        char lab[16], rep[16];
        snprintf(lab, sizeof lab, "%u", r.round);
        snprintf(rep, sizeof rep, "%d/%d", r.sites_reported, r.sites_selected);
        print_row(s, lab, rep, d, r.wall_seconds, r.bytes / 1e6);
        if (strcmp(r.closed_by, "all_reported") != 0 || r.sites_reported < r.sites_selected) {
            printf("             (closed by %s", r.closed_by[0] ? r.closed_by : "?");
            const char *sep = "; did not report:";
            for (int j = 0; j < r.nsites; j++)
                if (!r.site[j].reported) {
                    printf("%s %s", sep, r.site[j].name);
                    sep = "";
                }
            printf(")\n");
        }
    }
    free(line);
    fclose(f);
}

/* Reports a child that ended before the federation finished. */
static void report_death(sim *s, int i)
{
    char why[160];
    fs_sim_describe_exit(&s->ch[i], why, sizeof why);
    fs_log_error("%s (pid %ld) %s before the federation finished (round %d/%d done); the end of %s:",
                 s->ch[i].name, (long)s->ch[i].pid, why, s->completed, s->o->rounds, s->ch[i].log);
    fs_sim_print_tail(s->ch[i].log, 8);
}

/* Starts the aggregator and waits for its port. Returns the port, or -1
 * (reason logged; the aggregator stopped), or 0 when interrupted. */
static int start_aggregator(sim *s)
{
    char conf[PATHLEN + 64], portf[PATHLEN + 64];
    snprintf(conf, sizeof conf, "%s/config/aggregator.conf", s->run);
    snprintf(portf, sizeof portf, "%s/state/aggregator.port", s->run);
    fs_sim_child *a = &s->ch[0];
    snprintf(a->name, sizeof a->name, "aggregator");
    snprintf(a->log, sizeof a->log, "%s/logs/aggregator.log", s->run);
    char *argv[] = {"fedseg", "aggregator", "--config", conf, NULL};
    if (fs_sim_spawn(a, NULL, argv, NULL) != FS_OK) return -1;
    printf("started the aggregator (pid %ld), log %s/logs/aggregator.log\n", (long)a->pid, s->run_shown);
    fflush(stdout);
    double t_end = now_s() + PORT_WAIT_S;
    while (!g_signal) {
        FILE *f = fopen(portf, "r");
        int port = 0;
        if (f) {
            if (fscanf(f, "%d", &port) != 1) port = 0;
            fclose(f);
        }
        if (port > 0) return port;
        if (fs_sim_reap(a, 1) >= 0) {
            report_death(s, 0);
            return -1;
        }
        if (now_s() > t_end) {
            fs_log_error("the aggregator did not listen within %.0f s; the end of %s:", PORT_WAIT_S, a->log);
            fs_sim_print_tail(a->log, 8);
            fs_sim_stop_all(a, 1, GRACE_S);
            return -1;
        }
        sleep_ms(100);
    }
    return 0;
}

/* Everything after the aggregator ended well: final model, plot, summary. */
static int finish(sim *s)
{
    char src[PATHLEN + 64], dst[PATHLEN + 64], log[PATHLEN + 64];
    int rc = 0;
    snprintf(src, sizeof src, "%s/state/aggregator/global.ckpt", s->run);
    snprintf(dst, sizeof dst, "%s/final.ckpt", s->run);
    if (copy_file(src, dst) != FS_OK) rc = 1;
    double *fin = s->dice + (size_t)s->o->rounds * s->n;
    for (int i = 0; i < s->n; i++) {
        unsigned r;
        double d[3];
        fin[i] = fs_sim_read_final(s->ch[i + 1].log, &r, d) == FS_OK && r == (unsigned)s->o->rounds ? d[0] : NAN;
    }
    print_row(s, "final", "", fin, NAN, 0);
    const char *sites[FS_SIM_MAX_SITES];
    for (int i = 0; i < s->n; i++) sites[i] = s->names[i];
    fs_sim_curve cv = {s->n, s->o->rounds, sites, s->dice};
    snprintf(log, sizeof log, "%s/logs/gnuplot.log", s->run);
    int plotted = fs_sim_plot(s->run, &cv, log) == FS_OK;
    double sum = 0;
    int k = 0;
    for (int i = 0; i < s->n; i++)
        if (isfinite(fin[i])) {
            sum += fin[i];
            k++;
        }
    printf("\nsim finished: %d rounds of %d site(s) in %.1f min, %.1f MB moved; final global model's held-out "
           "Dice WT",
           s->o->rounds, s->n, (now_s() - s->t0) / 60, s->bytes / 1e6);
    for (int i = 0; i < s->n; i++) {
        if (isfinite(fin[i])) printf(" %s %.3f", s->names[i], fin[i]);
        else printf(" %s -", s->names[i]);
    }
    if (k) printf(" (mean %.3f)", sum / k);
    printf("\nrun folder %s: metrics.jsonl, final.ckpt%s, logs/\n", s->run_shown, plotted ? ", dice.png" : "");
    fflush(stdout);
    return rc;
}

/* Watches the federation until it finished, a child died or a signal came.
 * Returns the exit code. */
static int watch(sim *s)
{
    int nodes_done = 0, agg_done = 0;
    double agg_end = -1;
    for (;;) {
        if (g_signal) {
            printf("\n%s: stopping every process (SIGTERM, SIGKILL after %.0f s) ...\n", strsignal(g_signal),
                   GRACE_S);
            fflush(stdout);
            fs_sim_stop_all(s->ch, s->n + 1, GRACE_S);
            poll_metrics(s);
            printf("stopped after %d of %d rounds; no process left. Logs in %s/logs\n", s->completed,
                   s->o->rounds, s->run_shown);
            return 130;
        }
        poll_metrics(s);
        int i;
        while ((i = fs_sim_reap(s->ch, s->n + 1)) >= 0) {
            poll_metrics(s);
            int ok = WIFEXITED(s->ch[i].status) && WEXITSTATUS(s->ch[i].status) == 0;
            if (!ok || s->completed < s->o->rounds) {
                report_death(s, i);
                fs_sim_stop_all(s->ch, s->n + 1, GRACE_S);
                fs_log_error("the federation did not finish; logs in %s/logs", s->run_shown);
                return 1;
            }
            if (i == 0) {
                agg_done = 1;
                agg_end = now_s();
            } else {
                nodes_done++;
            }
        }
        if (nodes_done == s->n) {
            if (!agg_done) {
                /* every node has the final model: the aggregator's linger is
                 * no longer needed */
                fs_sim_stop_all(s->ch, 1, GRACE_S);
                char why[160];
                fs_sim_describe_exit(&s->ch[0], why, sizeof why);
                if (!WIFEXITED(s->ch[0].status) || WEXITSTATUS(s->ch[0].status) != 0) {
                    fs_log_error("the aggregator %s when stopped; see %s", why, s->ch[0].log);
                    return 1;
                }
            }
            return finish(s);
        }
        if (agg_done && now_s() - agg_end > NODES_AFTER_AGG_S) {
            fs_log_warn("the aggregator has ended but %d node(s) have not fetched the final model: stopping them",
                        s->n - nodes_done);
            fs_sim_stop_all(s->ch, s->n + 1, GRACE_S);
            return finish(s);
        }
        sleep_ms(200);
    }
}

int fs_cmd_sim(int argc, char **argv)
{
    sim_opts o;
    int pr = parse_args(argc, argv, &o);
    if (pr) return pr < 0 ? 0 : pr;

    static sim s; /* large path arrays: not on the stack */
    memset(&s, 0, sizeof s);
    s.o = &o;
    s.t0 = now_s();
    char def_out[64];
    if (!o.out) {
        time_t t = time(NULL);
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(def_out, sizeof def_out, "run/sim-%Y%m%d-%H%M%S", &tm);
        o.out = def_out;
    }
    s.run_shown = o.out;
    if (!dir_absent_or_empty(o.out)) {
        fs_log_error("%s: exists and is not empty; a simulation needs a new run folder (--out)", o.out);
        return 1;
    }
    char sub[PATHLEN + 32];
    static const char *const subdirs[] = {"logs", "config", "state"};
    for (int i = 0; i < 3; i++) {
        snprintf(sub, sizeof sub, "%s/%s", o.out, subdirs[i]);
        if (fs_mkdir_p(sub) != FS_OK) {
            fs_log_error("%s: cannot create", sub);
            return 1;
        }
    }
    char abs_run[PATH_MAX];
    if (!realpath(o.out, abs_run)) {
        fs_log_error("%s: %s", o.out, strerror(errno));
        return 1;
    }
    if (strlen(abs_run) >= sizeof s.run) {
        fs_log_error("%s: path too long", abs_run);
        return 1;
    }
    memcpy(s.run, abs_run, strlen(abs_run) + 1);
    if (prepare_data(&s) != FS_OK) return 1;
    if (o.secure_agg && (s.n < 3 || (o.min_sites && o.min_sites < 3))) {
        fs_log_error("--secure-agg needs 3 or more sites in every round (%d site(s), --min-sites %d)", s.n,
                     o.min_sites);
        return 1;
    }
    if (o.encrypted && (s.n < 2 || (o.min_sites && o.min_sites < 2))) {
        fs_log_error("--encrypted needs 2 or more sites in every round (%d site(s), --min-sites %d)", s.n,
                     o.min_sites);
        return 1;
    }
    if (o.encrypted && o.he_threshold > s.n) {
        fs_log_error("--he-threshold %d: only %d site(s)", o.he_threshold, s.n);
        return 1;
    }
    if (o.drop > s.n) {
        fs_log_error("--drop %d: only %d site(s)", o.drop, s.n);
        return 1;
    }
    if ((o.secure_agg || o.encrypted) && o.dp_clip > 0 && distributed_dp_setup(&o, s.n) != FS_OK) return 1;
    if (provision(&s) != FS_OK) {
        fs_log_error("cannot provision the consortium in %s/consortium", o.out);
        return 1;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    s.threads = o.threads ? o.threads : (int)(ncpu / s.n > 1 ? ncpu / s.n : 1);
    if (o.min_sites > s.n) {
        fs_log_error("--min-sites %d: only %d site(s)", o.min_sites, s.n);
        return 2;
    }
    s.seen = calloc((size_t)o.rounds + 1, 1);
    s.dice = malloc(((size_t)o.rounds + 1) * s.n * sizeof *s.dice);
    if (!s.seen || !s.dice) {
        free(s.seen);
        free(s.dice);
        return 1;
    }
    for (size_t i = 0; i < ((size_t)o.rounds + 1) * s.n; i++) s.dice[i] = NAN;
    s.col = 6;
    for (int i = 0; i < s.n; i++)
        if ((int)strlen(s.names[i]) > s.col) s.col = (int)strlen(s.names[i]);

    int rc = 1;
    if (write_agg_config(&s) != FS_OK) goto out;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    printf("fedseg sim: %d site(s) (", s.n);
    for (int i = 0; i < s.n; i++) printf("%s%s", i ? ", " : "", s.names[i]);
    printf("), %d round(s) of %d local epoch(s), model %s, device %s, %d thread(s) per node; run folder %s\n",
           o.rounds, o.local_epochs, o.model, o.device, s.threads, o.out);
    int port = start_aggregator(&s);
    if (port <= 0) {
        if (port == 0) fs_sim_stop_all(s.ch, 1, GRACE_S);
        rc = port == 0 ? 130 : 1;
        goto out;
    }
    printf("the aggregator listens on 127.0.0.1:%d (mutual TLS)\n", port);
    if (o.secure_agg)
        printf("secure aggregation: the aggregator sees only masked updates%s\n",
               o.drop ? "; some sites will drop out once (--drop) to show the recovery" : "");
    if (o.encrypted)
        printf("encrypted aggregation: the aggregator sees only ciphertexts and their decrypted sum%s\n",
               o.drop ? "; some sites will drop out once (--drop) to show the recovery" : "");
    if (o.dp_clip > 0) {
        char budget[64] = "";
        if (o.dp_epsilon > 0) snprintf(budget, sizeof budget, ", budget epsilon %g", o.dp_epsilon);
        printf("differential privacy: updates clipped to L2 norm %g, noise multiplier %.4g%s, "
               "delta %g (epsilon per round in metrics.jsonl)\n",
               o.dp_clip, o.dp_noise, budget, o.dp_delta);
    }
    for (int i = 0; i < s.n; i++) {
        fs_sim_child *c = &s.ch[i + 1];
        char conf[PATHLEN + 128];
        snprintf(c->name, sizeof c->name, "%s", s.names[i]);
        snprintf(c->log, sizeof c->log, "%s/logs/%s.log", s.run, s.names[i]);
        snprintf(conf, sizeof conf, "%s/config/%s.conf", s.run, s.names[i]);
        char *nargv[] = {"fedseg", "node", "--config", conf, NULL};
        if (write_node_config(&s, i, port) != FS_OK || fs_sim_spawn(c, NULL, nargv, NULL) != FS_OK) {
            fs_sim_stop_all(s.ch, s.n + 1, GRACE_S);
            goto out;
        }
        printf("started %s (pid %ld), log %s/logs/%s.log\n", s.names[i], (long)c->pid, o.out, s.names[i]);
    }
    print_header(&s);
    rc = watch(&s);
out:
    free(s.seen);
    free(s.dice);
    return rc;
}
