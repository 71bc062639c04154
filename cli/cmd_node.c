/*
 * cli/cmd_node.c — `fedseg node --config FILE`: a site's federation node.
 * Reads the node config (common/config.h; relative paths in the file are
 * resolved against the file's folder, those given as flags against the
 * current folder), applies the flags over it, installs SIGINT/SIGTERM
 * handlers that ask the loop to stop, and runs node/client.c's fs_node_run.
 * Exit codes: 0 finished or stopped, 1 failed (the reason printed), 2 bad
 * usage. Tested by tests/test_node_fake.c (the binary against a fake
 * aggregator, with a provisioned kit's node.conf).
 */
#include "cli/commands.h"
#include "common/config.h"
#include "common/log.h"
#include "node/client.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static const char *const node_keys[] = {"aggregator", "server_name", "ca", "cert", "key", "site", "data",
                                        "device", "state_dir", "model", "batch", "threads", "seed",
                                        "rpc_timeout_s", "backoff_max_s", "secagg_drop_stage",
                                        "secagg_drop_round", "finetune_epochs", "finetune_lr", NULL};

/* The provisioned node.conf's placeholder for `data`. */
#define DATA_PLACEHOLDER "/path/to/this/site/data"

static void node_help(FILE *f)
{
    fprintf(f,
        "usage: fedseg node --config FILE [--data DIR] [--device D] [--aggregator HOST:PORT] [options]\n\n"
        "Run a site of a federation: join the aggregator over mutual TLS, then for every round\n"
        "the aggregator gives this site: download the global model, evaluate it on this site's\n"
        "held-out cases, train it locally, and send back the update. Patient data never leave\n"
        "the site. Prints one line per round (Dice of the global model, training loss, seconds,\n"
        "MB sent and received) and exits 0 when the federation has finished (or on Ctrl-C /\n"
        "SIGTERM). A lost aggregator is retried with exponential backoff, forever.\n\n"
        "Config file (`key = value` lines, # comments; `fedseg provision` writes one per site;\n"
        "relative paths are relative to the folder holding the file):\n"
        "  aggregator = HOST:PORT    the aggregator's address (required)\n"
        "  server_name = NAME        name the aggregator's certificate must carry (default: HOST)\n"
        "  ca = FILE                 consortium CA certificate (PEM) (required)\n"
        "  cert = FILE               this site's certificate (PEM) (required)\n"
        "  key = FILE                this site's private key (PEM; keep it mode 0600) (required)\n"
        "  site = NAME               this site's name, as in its certificate (checked at Join)\n"
        "  data = DIR[,DIR...]       this site's cases, BraTS layout (required)\n"
        "  device = cpu|cuda|auto    training device (default auto)\n"
        "  state_dir = DIR           keeps global.ckpt (last global model) and final.ckpt\n"
        "                            (default: none kept)\n"
        "  model = tiny|small|ref|auto  model preset; auto follows the aggregator (default auto)\n"
        "  batch = B                 images per step (default 16 tiny, 8 small/ref on CPU, 32 on CUDA)\n"
        "  threads = T               CPU threads (default: all cores)\n"
        "  seed = S                  seed of the local batch sampling (default 1)\n"
        "  rpc_timeout_s = S         timeout of a request; model transfers get this plus 4 us per\n"
        "                            byte (default 10)\n"
        "  backoff_max_s = S         longest wait between retries; waits start at 0.5 s and\n"
        "                            double (default 30)\n"
        "  secagg_drop_stage = STAGE to demonstrate secure aggregation's dropout recovery: leave\n"
        "                            the protocol silently in round secagg_drop_round at STAGE:\n"
        "                            advertise, shares, masked or unmask (encrypted aggregation:\n"
        "                            keys, shares, upload or decrypt) (default none)\n"
        "  secagg_drop_round = R     the round of that dropout (default 1)\n"
        "  finetune_epochs = K       personalisation: after the last round, fine-tune the final\n"
        "                            model for K local epochs, evaluate it on this site's held-out\n"
        "                            cases and keep it as STATE_DIR/personal.ckpt (default 0 = no)\n"
        "  finetune_lr = LR          its learning rate (default: the federation's last lr)\n\n"
        "options (override the file):\n"
        "  --config FILE             the node config\n"
        "  --data DIR[,DIR...]       data = DIR\n"
        "  --device D                device = D\n"
        "  --aggregator HOST:PORT    aggregator = HOST:PORT\n"
        "  --model PRESET            model = PRESET\n"
        "  --threads T               threads = T\n"
        "  --state-dir DIR           state_dir = DIR\n"
        "  --set KEY=VALUE           any key above (repeatable)\n"
        "  --quiet                   only warnings and errors on stderr\n");
}

/* Joins dir and a relative path into a malloc'ed string (path itself when
 * absolute or dir is empty). */
static char *resolve(const char *dir, const char *path)
{
    size_t ld = strlen(dir), lp = strlen(path);
    char *out = malloc(ld + lp + 2);
    if (!out) return NULL;
    if (path[0] == '/' || !ld) memcpy(out, path, lp + 1);
    else {
        memcpy(out, dir, ld);
        out[ld] = '/';
        memcpy(out + ld + 1, path, lp + 1);
    }
    return out;
}

typedef struct {
    char *cfg_dir;       /* folder of the config file ("" when none) */
    int from_cli[32];    /* per node_keys index: set by a flag       */
    char *owned[80];     /* strings to free (≤ 4 paths, 1 list, 64 data) */
    int nowned;
    const char *data[64];
} node_args;

static int key_index(const char *key)
{
    for (int i = 0; node_keys[i]; i++)
        if (!strcmp(node_keys[i], key)) return i;
    return -1;
}

/* A path-valued key: as given when it came from a flag, else resolved
 * against the config file's folder. NULL when absent or on error (*st). */
static const char *path_key(fs_config *cfg, node_args *a, const char *key, fs_status *st)
{
    const char *v = NULL;
    if ((*st = fs_config_get_str(cfg, key, NULL, &v)) != FS_OK || !v || !v[0]) return NULL;
    if (a->from_cli[key_index(key)]) return v;
    char *r = resolve(a->cfg_dir, v);
    if (!r) { *st = FS_ERR_NOMEM; return NULL; }
    a->owned[a->nowned++] = r;
    return r;
}

/* Sets one key from a flag, remembering that it came from the command line. */
static int set_flag(fs_config *cfg, node_args *a, const char *key, const char *value)
{
    if (fs_config_set(cfg, key, value) != FS_OK) return 0;
    a->from_cli[key_index(key)] = 1;
    return 1;
}

/* Reads every key into o; returns 0 (reason logged) on a bad value. */
static int build_config(fs_config *cfg, node_args *a, fs_node_config *o)
{
    fs_status st = FS_OK;
    long long v;
    double d;
    const char *s;
    if (fs_config_get_str(cfg, "aggregator", NULL, &o->aggregator) != FS_OK) return 0;
    if (fs_config_get_str(cfg, "server_name", NULL, &o->server_name) != FS_OK) return 0;
    if (fs_config_get_str(cfg, "site", NULL, &o->site) != FS_OK) return 0;
    o->ca = path_key(cfg, a, "ca", &st);
    if (st == FS_OK) o->cert = path_key(cfg, a, "cert", &st);
    if (st == FS_OK) o->key = path_key(cfg, a, "key", &st);
    if (st == FS_OK) o->state_dir = path_key(cfg, a, "state_dir", &st);
    if (st != FS_OK) return 0;
    if (fs_config_get_str(cfg, "device", "auto", &o->device) != FS_OK) return 0;
    if (fs_config_get_str(cfg, "model", "auto", &s) != FS_OK) return 0;
    if (strcmp(s, "auto") && strcmp(s, "tiny") && strcmp(s, "small") && strcmp(s, "ref")) {
        fs_log_error("node: model = %s: expected tiny, small, ref or auto", s);
        return 0;
    }
    o->preset = s;
    if (fs_config_get_int(cfg, "batch", 0, 0, 4096, &v) != FS_OK) return 0;
    o->batch = (int)v;
    if (fs_config_get_int(cfg, "threads", 0, 0, 4096, &v) != FS_OK) return 0;
    o->threads = (int)v;
    if (fs_config_get_int(cfg, "seed", 1, 0, (long long)1 << 62, &v) != FS_OK) return 0;
    o->seed = (uint64_t)v;
    if (fs_config_get_float(cfg, "rpc_timeout_s", 10, 0.1, 86400, &d) != FS_OK) return 0;
    o->rpc_timeout_ms = (int)(d * 1000);
    if (fs_config_get_float(cfg, "backoff_max_s", 30, 0.5, 86400, &d) != FS_OK) return 0;
    o->backoff_max_s = d;
    if (fs_config_get_str(cfg, "secagg_drop_stage", "none", &s) != FS_OK) return 0;
    /* the same four points of encrypted aggregation: keys, shares, upload, decrypt */
    static const char *const stages[] = {"advertise", "shares", "masked", "unmask"};
    static const char *const he_stages[] = {"keys", "shares", "upload", "decrypt"};
    o->secagg_drop_stage = -1;
    for (int k = 0; k < 4; k++)
        if (!strcmp(s, stages[k]) || !strcmp(s, he_stages[k])) o->secagg_drop_stage = k;
    if (o->secagg_drop_stage < 0 && strcmp(s, "none") != 0) {
        fs_log_error("node: secagg_drop_stage = %s: expected none, advertise, shares, masked or unmask "
                     "(encrypted aggregation: keys, shares, upload or decrypt)", s);
        return 0;
    }
    if (fs_config_get_int(cfg, "secagg_drop_round", 1, 1, 1000000, &v) != FS_OK) return 0;
    o->secagg_drop_round = (uint32_t)v;
    if (fs_config_get_int(cfg, "finetune_epochs", 0, 0, 10000, &v) != FS_OK) return 0;
    o->finetune_epochs = (int)v;
    if (fs_config_get_float(cfg, "finetune_lr", 0, 0, 1e3, &d) != FS_OK) return 0;
    o->finetune_lr = (float)d;

    char **items = NULL;
    size_t n = 0;
    if (fs_config_get_list(cfg, "data", NULL, &items, &n) != FS_OK) return 0;
    a->owned[a->nowned++] = (char *)items;
    if (n > 64) { fs_log_error("node: data lists more than 64 folders"); return 0; }
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(items[i], DATA_PLACEHOLDER)) {
            fs_log_error("node: data = %s is the placeholder `fedseg provision` writes: set `data` in "
                         "the config (or pass --data) to this site's case folder", DATA_PLACEHOLDER);
            return 0;
        }
        if (a->from_cli[key_index("data")]) a->data[i] = items[i];
        else if (!(a->data[i] = a->owned[a->nowned++] = resolve(a->cfg_dir, items[i]))) return 0;
    }
    o->data = a->data;
    o->ndata = (int)n;
    const char *missing = !o->aggregator ? "aggregator" : !o->ca ? "ca" : !o->cert ? "cert"
                        : !o->key ? "key" : n == 0 ? "data" : NULL;
    if (missing) {
        fs_log_error("node: `%s` is required (in the config file, or as a flag)", missing);
        return 0;
    }
    return 1;
}

int fs_cmd_node(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"data", required_argument, 0, 'd'},
        {"device", required_argument, 0, 'D'}, {"aggregator", required_argument, 0, 'a'},
        {"model", required_argument, 0, 'm'}, {"threads", required_argument, 0, 't'},
        {"state-dir", required_argument, 0, 's'}, {"set", required_argument, 0, 'S'},
        {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    fs_config *cfg = NULL;
    if (fs_config_new(&cfg, node_keys) != FS_OK) return 1;
    node_args a;
    memset(&a, 0, sizeof a);
    const char *config_path = NULL;
    int c, ok = 1;
    optind = 1;
    while (ok && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'd': ok = set_flag(cfg, &a, "data", optarg); break;
        case 'D': ok = set_flag(cfg, &a, "device", optarg); break;
        case 'a': ok = set_flag(cfg, &a, "aggregator", optarg); break;
        case 'm': ok = set_flag(cfg, &a, "model", optarg); break;
        case 't': ok = set_flag(cfg, &a, "threads", optarg); break;
        case 's': ok = set_flag(cfg, &a, "state_dir", optarg); break;
        case 'S': {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg) {
                fprintf(stderr, "fedseg node: --set expects KEY=VALUE, got '%s'\n", optarg);
                ok = 0;
                break;
            }
            *eq = 0;
            ok = key_index(optarg) >= 0 ? set_flag(cfg, &a, optarg, eq + 1) : 0;
            if (!ok) fprintf(stderr, "fedseg node: --set: unknown key '%s' (see --help)\n", optarg);
            *eq = '=';
            break;
        }
        case 'q': fs_log_set_level(FS_LOG_WARN); break;
        case 'h': node_help(stdout); fs_config_free(cfg); return 0;
        default: ok = 0; break;
        }
    }
    if (!ok || optind < argc) {
        if (ok) fprintf(stderr, "fedseg node: unexpected argument '%s'\n", argv[optind]);
        node_help(stderr);
        fs_config_free(cfg);
        return 2;
    }
    if (config_path) {
        if (fs_config_load(cfg, config_path) != FS_OK) { fs_config_free(cfg); return 1; }
        const char *slash = strrchr(config_path, '/');
        a.cfg_dir = slash ? strndup(config_path, (size_t)(slash - config_path + (slash == config_path))) : strdup("");
    } else {
        a.cfg_dir = strdup("");
    }
    fs_node_config o;
    memset(&o, 0, sizeof o);
    int rc = 1;
    if (a.cfg_dir && build_config(cfg, &a, &o)) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        fs_status st = fs_node_run(&o, &g_stop);
        if (st != FS_OK) fprintf(stderr, "fedseg node: failed (%s)\n", fs_status_str(st));
        else rc = 0;
    }
    for (int i = 0; i < a.nowned; i++) free(a.owned[i]);
    free(a.cfg_dir);
    fs_config_free(cfg);
    return rc;
}
