/*
 * cli/cmd_model.c — `fedseg train`, `eval`, `predict` and `info`: argument
 * parsing and printing only; the work is in node/train.c and node/unet.c.
 */
#include "cli/args.h"
#include "cli/commands.h"
#include "common/log.h"
#include "common/png.h"
#include "node/metrics.h"
#include "node/nifti_io.h"
#include "node/train.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Parses a positive int option; prints the problem and returns 0 when bad. */
static int parse_pos_int(const char *opt, const char *s, int *out)
{
    long long v;
    if (!fs_arg_ll(s, 1, INT_MAX, &v)) {
        fprintf(stderr, "fedseg: %s expects a positive whole number, got '%s'\n", opt, s);
        return 0;
    }
    *out = (int)v;
    return 1;
}

static int parse_pos_float(const char *opt, const char *s, float *out)
{
    double v;
    if (!fs_arg_double(s, 0, 1e6, &v) || !(v > 0)) {
        fprintf(stderr, "fedseg: %s expects a positive number, got '%s'\n", opt, s);
        return 0;
    }
    *out = (float)v;
    return 1;
}

/* Splits "a,b,c" into at most max pointers into a copy the caller frees. */
static char *split_list(const char *s, const char **items, int max, int *n)
{
    char *copy = strdup(s);
    *n = 0;
    if (!copy) return NULL;
    for (char *tok = strtok(copy, ","); tok && *n < max; tok = strtok(NULL, ","))
        if (*tok) items[(*n)++] = tok;
    return copy;
}

/* ---- train ------------------------------------------------------------------ */

static void train_help(FILE *f)
{
    fprintf(f,
        "usage: fedseg train --data DIR[,DIR...] --out CKPT [options]\n\n"
        "Train a U-Net on BraTS-layout site folders (DIR/CASE_ID/CASE_ID_{t1,t1ce,t2,flair,seg}.nii.gz).\n"
        "Each folder is split into training and held-out cases (20%%, at least one); several\n"
        "folders are pooled (the centralised baseline). After every epoch it prints the\n"
        "training loss and the held-out Dice (whole tumour, tumour core, enhancing), per site\n"
        "when several folders are given, and writes the checkpoint CKPT atomically.\n\n"
        "options:\n"
        "  --data DIR[,DIR...]  site folders (required)\n"
        "  --out CKPT           checkpoint to write (required)\n"
        "  --model PRESET       tiny | small | ref (default tiny)\n"
        "  --epochs E           epochs (default 8)\n"
        "  --steps N            steps per epoch (default: training slices / batch)\n"
        "  --batch B            images per step (default 16 for tiny, 8 otherwise; 32 on cuda)\n"
        "  --lr LR              Adam learning rate (default 0.001)\n"
        "  --schedule S         cosine (default: decays per epoch to lr/20) | constant\n"
        "  --device D           cpu | cuda | auto (default auto)\n"
        "  --threads T          CPU threads (default: all cores)\n"
        "  --init CKPT          start from this checkpoint's parameters\n"
        "  --seed S             seed for initialisation and sampling (default 1)\n"
        "  --metrics FILE       append one JSON line per epoch to FILE\n"
        "  --quiet              no progress bar\n");
}

int fs_cmd_train(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'}, {"out", required_argument, 0, 'o'},
        {"model", required_argument, 0, 'm'}, {"epochs", required_argument, 0, 'e'},
        {"steps", required_argument, 0, 's'}, {"batch", required_argument, 0, 'b'},
        {"lr", required_argument, 0, 'l'}, {"device", required_argument, 0, 'D'},
        {"threads", required_argument, 0, 't'}, {"init", required_argument, 0, 'i'},
        {"seed", required_argument, 0, 'S'}, {"metrics", required_argument, 0, 'M'},
        {"quiet", no_argument, 0, 'q'}, {"schedule", required_argument, 0, 'L'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    fs_train_opts o = {0};
    o.preset = "tiny";
    o.epochs = 8;
    o.device = "auto";
    o.seed = 1;
    o.progress = isatty(2);
    const char *data = NULL;
    int c, seed = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': data = optarg; break;
        case 'o': o.out = optarg; break;
        case 'm': o.preset = optarg; break;
        case 'e': if (!parse_pos_int("--epochs", optarg, &o.epochs)) return 2; break;
        case 's': if (!parse_pos_int("--steps", optarg, &o.steps_per_epoch)) return 2; break;
        case 'b': if (!parse_pos_int("--batch", optarg, &o.batch)) return 2; break;
        case 'l': if (!parse_pos_float("--lr", optarg, &o.lr)) return 2; break;
        case 'D': o.device = optarg; break;
        case 't': if (!parse_pos_int("--threads", optarg, &o.threads)) return 2; break;
        case 'i': o.init = optarg; break;
        case 'S': if (!parse_pos_int("--seed", optarg, &seed)) return 2; o.seed = (uint64_t)seed; break;
        case 'M': o.metrics_json = optarg; break;
        case 'q': o.progress = 0; break;
        case 'L':
            if (!strcmp(optarg, "constant")) o.constant_lr = 1;
            else if (strcmp(optarg, "cosine")) { fprintf(stderr, "fedseg train: --schedule is cosine or constant\n"); return 2; }
            break;
        case 'h': train_help(stdout); return 0;
        default: train_help(stderr); return 2;
        }
    }
    if (optind < argc) { fprintf(stderr, "fedseg train: unexpected argument '%s'\n", argv[optind]); return 2; }
    if (!data || !o.out) {
        fprintf(stderr, "fedseg train: --data and --out are required\n");
        train_help(stderr);
        return 2;
    }
    if (!fs_preset_find(o.preset)) {
        fprintf(stderr, "fedseg train: unknown --model '%s' (tiny, small, ref)\n", o.preset);
        return 2;
    }
    const char *dirs[64];
    int nd;
    char *copy = split_list(data, dirs, 64, &nd);
    if (!copy || nd == 0) { fprintf(stderr, "fedseg train: --data names no folder\n"); free(copy); return 2; }
    o.data = dirs;
    o.ndata = nd;
    fs_train_result r;
    fs_status st = fs_train_run(&o, &r);
    free(copy);
    if (st != FS_OK) {
        fprintf(stderr, "fedseg train: failed (%s)\n", fs_status_str(st));
        return 1;
    }
    printf("trained %d epoch(s) in %.1f s (%.1f img/s); held-out Dice WT %.3f TC %.3f ET %.3f; saved %s\n",
           r.epochs_done, r.seconds, r.img_per_s, r.val_dice[0], r.val_dice[1], r.val_dice[2], o.out);
    return 0;
}

/* ---- shared: backend + model from a checkpoint ------------------------------- */

typedef struct {
    const fs_backend *be;
    void *ctx;
    fs_unet *m;
    fs_ckpt_meta meta;
    int batch;
} loaded;

static int load_model(const char *ckpt, const char *device, loaded *L)
{
    const char *why = NULL;
    memset(L, 0, sizeof *L);
    L->be = fs_backend_get(device, &why);
    if (!L->be) { fprintf(stderr, "fedseg: %s\n", why ? why : "no backend"); return 0; }
    L->batch = strcmp(L->be->name, "cuda") ? 8 : 32;
    if (L->be->ctx_init(&L->ctx, 0) != FS_OK) { fprintf(stderr, "fedseg: backend %s failed to start\n", L->be->name); return 0; }
    if (fs_unet_load(ckpt, L->be, L->ctx, L->batch, &L->m, &L->meta) != FS_OK) {
        L->be->ctx_free(L->ctx);
        return 0;
    }
    return 1;
}

static void unload_model(loaded *L)
{
    fs_unet_free(L->m);
    if (L->ctx) L->be->ctx_free(L->ctx);
}

/* ---- eval ------------------------------------------------------------------- */

static void eval_help(FILE *f)
{
    fprintf(f,
        "usage: fedseg eval --model CKPT --data DIR [--split all|val] [--json] [--device D]\n\n"
        "Dice of a checkpoint on every case of a site folder: whole tumour (labels 1,2,4),\n"
        "tumour core (1,4) and enhancing tumour (4), per case and the mean, computed on the\n"
        "native voxel grid. --split val restricts to the cases `fedseg train` holds out.\n"
        "--json prints one JSON object instead of a table.\n");
}

int fs_cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"data", required_argument, 0, 'd'},
        {"split", required_argument, 0, 's'}, {"json", no_argument, 0, 'j'},
        {"device", required_argument, 0, 'D'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *ckpt = NULL, *data = NULL, *device = "auto", *split = "all";
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': ckpt = optarg; break;
        case 'd': data = optarg; break;
        case 's': split = optarg; break;
        case 'j': json = 1; break;
        case 'D': device = optarg; break;
        case 'h': eval_help(stdout); return 0;
        default: eval_help(stderr); return 2;
        }
    }
    if (optind < argc) { fprintf(stderr, "fedseg eval: unexpected argument '%s'\n", argv[optind]); return 2; }
    if (!ckpt || !data) { fprintf(stderr, "fedseg eval: --model and --data are required\n"); eval_help(stderr); return 2; }
    if (strcmp(split, "all") && strcmp(split, "val")) { fprintf(stderr, "fedseg eval: --split is all or val\n"); return 2; }
    loaded L;
    if (!load_model(ckpt, device, &L)) return 1;
    fs_dataset ds;
    if (fs_dataset_load(data, (int)L.meta.size, &ds) != FS_OK) { unload_model(&L); return 1; }
    const fs_case **cases = calloc((size_t)ds.ncases, sizeof *cases);
    double (*d)[3] = calloc((size_t)ds.ncases, sizeof *d);
    int n = 0, rc = 0;
    for (int i = 0; cases && i < ds.ncases; i++)
        if (!strcmp(split, "all") || fs_split_is_val(i, ds.ncases)) cases[n++] = &ds.cases[i];
    double mean[3];
    if (!cases || !d || n == 0 || fs_eval_cases(L.m, cases, n, L.batch, d, mean) != FS_OK) {
        if (n == 0) fprintf(stderr, "fedseg eval: no cases to evaluate in %s\n", data);
        rc = 1;
    } else if (json) {
        printf("{\"model\":\"%s\",\"preset\":\"%s\",\"data\":\"%s\",\"cases\":[", ckpt, L.meta.preset, data);
        for (int i = 0; i < n; i++)
            printf("%s{\"id\":\"%s\",\"wt\":%.5f,\"tc\":%.5f,\"et\":%.5f}", i ? "," : "", cases[i]->id,
                   d[i][0], d[i][1], d[i][2]);
        printf("],\"mean\":{\"wt\":%.5f,\"tc\":%.5f,\"et\":%.5f}}\n", mean[0], mean[1], mean[2]);
    } else {
        printf("%-28s %7s %7s %7s\n", "case", "WT", "TC", "ET");
        for (int i = 0; i < n; i++) printf("%-28s %7.4f %7.4f %7.4f\n", cases[i]->id, d[i][0], d[i][1], d[i][2]);
        printf("%-28s %7.4f %7.4f %7.4f\n", "mean", mean[0], mean[1], mean[2]);
    }
    free(cases);
    free(d);
    fs_dataset_free(&ds);
    unload_model(&L);
    return rc;
}

/* ---- predict ---------------------------------------------------------------- */

static void predict_help(FILE *f)
{
    fprintf(f,
        "usage: fedseg predict --model CKPT --case CASE_DIR --out SEG.nii.gz [--png FILE] [--device D]\n\n"
        "Segment one case (its four modalities; a seg file is optional and, when present,\n"
        "the Dice is printed). SEG.nii.gz has the input's geometry and BraTS labels\n"
        "(0 background, 1 necrotic core, 2 edema, 4 enhancing). --png writes a picture of\n"
        "the axial slice with the most predicted tumour: FLAIR, prediction overlay and,\n"
        "when known, the reference overlay.\n");
}

/* Colours of classes 1..3 in overlays: core red, edema green, enhancing yellow. */
static const uint8_t cls_rgb[4][3] = {{0, 0, 0}, {230, 40, 40}, {40, 200, 60}, {250, 230, 40}};

/* Draws one S×S panel (grey FLAIR, optional label overlay) scaled ×k into rgb. */
static void draw_panel(uint8_t *rgb, int stride_px, int ox, const float *img, const uint8_t *lab, int S, int k)
{
    for (int yy = 0; yy < S * k; yy++)
        for (int xx = 0; xx < S * k; xx++) {
            int i = (S - 1 - yy / k) * S + xx / k; /* flip rows so anterior is up */
            float g = (img[i] + 2.5f) / 6.0f;
            g = g < 0 ? 0 : g > 1 ? 1 : g;
            uint8_t *p = rgb + ((size_t)yy * stride_px + ox + xx) * 3;
            for (int ch = 0; ch < 3; ch++) {
                float v = 255.0f * g;
                if (lab && lab[i]) v = 0.45f * v + 0.55f * cls_rgb[lab[i]][ch];
                p[ch] = (uint8_t)v;
            }
        }
}

int fs_cmd_predict(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"case", required_argument, 0, 'c'},
        {"out", required_argument, 0, 'o'}, {"png", required_argument, 0, 'p'},
        {"device", required_argument, 0, 'D'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *ckpt = NULL, *cdir = NULL, *out = NULL, *png = NULL, *device = "auto";
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': ckpt = optarg; break;
        case 'c': cdir = optarg; break;
        case 'o': out = optarg; break;
        case 'p': png = optarg; break;
        case 'D': device = optarg; break;
        case 'h': predict_help(stdout); return 0;
        default: predict_help(stderr); return 2;
        }
    }
    if (optind < argc) { fprintf(stderr, "fedseg predict: unexpected argument '%s'\n", argv[optind]); return 2; }
    if (!ckpt || !cdir || !out) { fprintf(stderr, "fedseg predict: --model, --case and --out are required\n"); predict_help(stderr); return 2; }
    loaded L;
    if (!load_model(ckpt, device, &L)) return 1;
    fs_case cs;
    int rc = 1;
    if (fs_case_load(cdir, (int)L.meta.size, 0, &cs) != FS_OK) { unload_model(&L); return 1; }
    size_t nv = (size_t)cs.nx * cs.ny * cs.nz, hw = (size_t)cs.size * cs.size;
    uint8_t *pred = malloc(nv);
    float *probs = malloc((size_t)cs.nslices * FS_NCLS * hw * sizeof(float));
    uint8_t *slab = malloc(hw);
    if (!pred || !probs || !slab) goto done;
    if (fs_predict_case(L.m, &cs, L.batch, pred, probs) != FS_OK) goto done;
    if (cs.seg_native) {
        double d[3];
        fs_dice_brats(pred, cs.seg_native, nv, d);
        printf("%s: Dice WT %.4f TC %.4f ET %.4f\n", cs.id, d[0], d[1], d[2]);
    }
    size_t counts[4] = {0};
    for (size_t i = 0; i < nv; i++) counts[pred[i]]++;
    for (size_t i = 0; i < nv; i++) if (pred[i] == 3) pred[i] = 4; /* BraTS labels on disk */
    if (fs_nifti_write_labels(out, cs.ref_path, pred) != FS_OK) goto done;
    printf("wrote %s: %zu necrotic, %zu edema, %zu enhancing voxels\n", out, counts[1], counts[2], counts[3]);
    if (png) {
        /* slice with the most predicted tumour (at model resolution) */
        int best = 0;
        long best_n = -1;
        for (int z = 0; z < cs.nslices; z++) {
            long t = 0;
            const float *p = probs + (size_t)z * FS_NCLS * hw;
            for (size_t i = 0; i < hw; i++) t += p[i] < 0.5f;
            if (t > best_n) { best_n = t; best = z; }
        }
        const float *p = probs + (size_t)best * FS_NCLS * hw;
        for (size_t i = 0; i < hw; i++) {
            int a = 0;
            for (int k = 1; k < FS_NCLS; k++) if (p[k * hw + i] > p[a * hw + i]) a = k;
            slab[i] = (uint8_t)a;
        }
        int S = cs.size, k = S >= 128 ? 2 : 4, panels = cs.lab ? 3 : 2, W = panels * S * k;
        uint8_t *rgb = calloc((size_t)W * S * k * 3, 1);
        if (!rgb) goto done;
        const float *flair = cs.img + ((size_t)best * FS_NMOD + 3) * hw;
        draw_panel(rgb, W, 0, flair, NULL, S, k);
        draw_panel(rgb, W, S * k, flair, slab, S, k);
        if (cs.lab) draw_panel(rgb, W, 2 * S * k, flair, cs.lab + (size_t)best * hw, S, k);
        fs_status ps = fs_png_write_rgb(png, W, S * k, rgb);
        free(rgb);
        if (ps != FS_OK) goto done;
        printf("wrote %s (slice z=%d: FLAIR | prediction%s)\n", png, cs.z0 + best, cs.lab ? " | reference" : "");
    }
    rc = 0;
done:
    free(pred);
    free(probs);
    free(slab);
    fs_case_free(&cs);
    unload_model(&L);
    return rc;
}

/* ---- info ------------------------------------------------------------------- */

static void emit_line(const char *line, void *u) { (void)u; puts(line); }

int fs_cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *name = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'm') name = optarg;
        else if (c == 'h') {
            printf("usage: fedseg info --model PRESET|CKPT\n\nLayers, tensor shapes and parameter count of a "
                   "model preset (tiny, small, ref) or of the model inside a checkpoint.\n");
            return 0;
        } else return 2;
    }
    if (!name) { fprintf(stderr, "fedseg info: --model PRESET|CKPT is required (presets: tiny, small, ref)\n"); return 2; }
    const fs_preset *pr = fs_preset_find(name);
    struct stat st;
    if (!pr && stat(name, &st) == 0) {
        fs_ckpt_meta meta;
        float *p = NULL;
        if (fs_ckpt_read(name, &meta, &p, NULL, NULL, NULL) != FS_OK) return 1;
        free(p);
        printf("checkpoint %s: preset %s, epoch/round %u\n", name, meta.preset, meta.epoch);
        pr = fs_preset_find(meta.preset);
    }
    if (!pr) { fprintf(stderr, "fedseg info: '%s' is neither a preset (tiny, small, ref) nor a checkpoint\n", name); return 2; }
    printf("preset %s\n", pr->name);
    fs_unet_describe(pr->base, pr->depth, pr->size, emit_line, NULL);
    return 0;
}
