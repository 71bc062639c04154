/*
 * node/synth.c — the synthetic federation: site profiles, the output folder,
 * the parallel loop over cases, site.json / federation.json and montages.
 *
 * Sites 1, 2, 3 use three fixed profiles (below); site K > 3 takes profile
 * (K−1) mod 3 with its continuous parameters perturbed by the site's own RNG
 * stream. Cases of all sites form one job list that OpenMP threads take one at
 * a time; each case has its own RNG stream (synth_case.c), so the bytes do not
 * depend on the thread count or the order of completion.
 * Tested by tests/test_synth.sh (CLI, determinism, arguments, NIfTI headers)
 * and tests/test_synth_props.c (labels, tumour in every case, site shift).
 */
#include "node/synth.h"
#include "node/synth_internal.h"
#include "common/fsutil.h"
#include "common/log.h"
#include "common/png.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <nifti1.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SY_VERSION 1
#define SY_MONTAGE_ROWS 8
#define SY_MONTAGE_MM 1.0f /* millimetres per montage pixel */

void fs_synth_defaults(fs_synth_options *o)
{
    memset(o, 0, sizeof *o);
    o->anatomy = FS_SYNTH_DEFAULT_ANATOMY;
    o->nsites = 3;
    o->cases[0] = 24;
    o->cases[1] = 16;
    o->cases[2] = 10;
    o->seed = 1;
    o->voxel_scale = 1.0f;
}

/* The three base profiles. Numbers are in units of the white-matter signal
 * (noise), millimetres (voxels, PSF, radius) or fractions. */
static void base_profile(int which, sy_site *s)
{
    memset(s, 0, sizeof *s);
    switch (which) {
    case 0: /* big centre, 3T, 1.5 mm isotropic, int16 with scl_slope */
        snprintf(s->profile, sizeof s->profile, "3T, 1.5 mm isotropic, int16+scl_slope");
        s->vox[0] = s->vox[1] = s->vox[2] = 1.5f;
        s->datatype = NIFTI_TYPE_INT16;
        s->store_scale = 1000;
        s->response_kind = 0;
        s->response[0] = 1.0f; s->response[1] = 0.95f; s->response[2] = 1.05f; s->response[3] = 1.0f;
        s->contrast[0] = 1.0f; s->contrast[1] = 1.0f; s->contrast[2] = 1.0f; s->contrast[3] = 1.0f;
        s->bias_amp = 0.06f; s->bias_sp = 80;
        s->noise = 0.03f;
        s->psf_xy = 0.6f; s->psf_z = 0.7f;
        s->radius_mean = 15; s->radius_sd = 0.25f;
        s->p_hgg = 0.75f; s->p_necrotic = 0.7f;
        s->edema_mean = 2.0f; s->pvh_mean = 0.35f; s->lesions_mean = 1.5f;
        s->edema_thr = 0.5f; s->label_jitter = 0.4f;
        break;
    case 1: /* community hospital, 1.5T, thick slices, 12-bit uint16 */
        snprintf(s->profile, sizeof s->profile, "1.5T, 1.5x1.5x3 mm slices, uint16 12-bit");
        s->vox[0] = s->vox[1] = 1.5f; s->vox[2] = 3.0f;
        s->datatype = NIFTI_TYPE_UINT16;
        s->store_scale = 1200;
        s->response_kind = 0;
        s->response[0] = 0.8f; s->response[1] = 0.85f; s->response[2] = 0.75f; s->response[3] = 0.8f;
        s->contrast[0] = 0.9f; s->contrast[1] = 0.9f; s->contrast[2] = 0.85f; s->contrast[3] = 0.85f;
        s->bias_amp = 0.12f; s->bias_sp = 75;
        s->noise = 0.055f;
        s->psf_xy = 0.9f; s->psf_z = 2.2f;
        s->radius_mean = 10; s->radius_sd = 0.3f;
        s->p_hgg = 0.5f; s->p_necrotic = 0.5f;
        s->edema_mean = 2.0f; s->pvh_mean = 0.7f; s->lesions_mean = 3.0f;
        s->edema_thr = 0.33f; s->label_jitter = 0.8f;
        break;
    default: /* older scanner, 2 mm isotropic, float32 reconstructions */
        snprintf(s->profile, sizeof s->profile, "3T older, 2 mm isotropic, float32");
        s->vox[0] = s->vox[1] = s->vox[2] = 2.0f;
        s->datatype = NIFTI_TYPE_FLOAT32;
        s->store_scale = 100;
        s->response_kind = 1;
        s->response[0] = 0.4f; s->response[1] = 0.6f; s->response[2] = 0.3f; s->response[3] = 0.5f;
        s->contrast[0] = 1.1f; s->contrast[1] = 1.0f; s->contrast[2] = 1.1f; s->contrast[3] = 1.15f;
        s->bias_amp = 0.09f; s->bias_sp = 90;
        s->noise = 0.04f;
        s->psf_xy = 1.0f; s->psf_z = 1.2f;
        s->radius_mean = 22; s->radius_sd = 0.22f;
        s->p_hgg = 0.9f; s->p_necrotic = 0.8f;
        s->edema_mean = 1.8f; s->pvh_mean = 0.2f; s->lesions_mean = 1.0f;
        s->edema_thr = 0.68f; s->label_jitter = 0.6f;
        break;
    }
}

fs_status fs_synth_het_parse(const char *name, fs_synth_het *out)
{
    if (!name) return FS_ERR_ARG;
    if (!strcmp(name, "mild")) *out = FS_SYNTH_HET_MILD;
    else if (!strcmp(name, "iid")) *out = FS_SYNTH_HET_IID;
    else if (!strcmp(name, "strong")) *out = FS_SYNTH_HET_STRONG;
    else return FS_ERR_ARG;
    return FS_OK;
}

int fs_synth_het_cases(fs_synth_het h, int k)
{
    static const int mild[3] = {24, 16, 10}, iid[3] = {16, 16, 16}, strong[3] = {40, 20, 10};
    const int *c = h == FS_SYNTH_HET_IID ? iid : h == FS_SYNTH_HET_STRONG ? strong : mild;
    return c[k % 3];
}

/* x·(x/ref)^(f−1): the log-ratio to the reference multiplied by f. */
static float amplify_log(float x, float ref, float f)
{
    return x > 0 && ref > 0 ? ref * powf(x / ref, f) : x;
}

/* The strong preset: site 1 unchanged; for the other sites, the departures
 * from profile 1 that make a model trained elsewhere wrong are amplified by
 * 2.5 (see fs_synth_het in synth.h): the scanner's intensity response and
 * tissue contrast (floors γ 0.5, contrast 0.8), the annotation style's edema
 * label threshold and the tumour mix (grade, necrosis, edema extent). The
 * threshold's departure is amplified towards the tight side whichever way
 * the profile leans (capped at 0.8), so sites 2 and 3 both outline only the
 * clearly hyperintense edema: a loose threshold (profile 2's 0.33, amplified
 * to 0.2) puts the label boundary where the edema's excess signal is about
 * 3 noise σ, and the site 2 model of that version scored better on site 1's
 * patients than on its own (docs/results_study.md). What makes a
 * site's own task harder or easier for every model is NOT shifted: image
 * quality (bias, noise, blur), outline noise and the periventricular /
 * lesion load are profile 1's, and so is tumour size. An earlier version
 * amplified all of them: site 2 (noise 0.15, 4 mm slice blur, bias 0.35,
 * 6 mm tumours) was unlearnable alone, and site 3's 28 mm tumours were
 * easier for every model, which hid the shift. The voxel grid and the
 * storage type stay the site's. */
static void make_strong(sy_site *s)
{
    const float f = 2.5f;
    sy_site r;
    base_profile(0, &r);
    for (int q = 0; q < 4; q++) {
        s->response[q] = amplify_log(s->response[q], r.response[q], f);
        s->contrast[q] = fminf(1.6f, fmaxf(0.8f, amplify_log(s->contrast[q], r.contrast[q], f)));
    }
    if (s->response_kind == 1)
        for (int q = 0; q < 4; q++) s->response[q] = fminf(4.0f, s->response[q]);
    else
        for (int q = 0; q < 4; q++) s->response[q] = fminf(2.0f, fmaxf(0.5f, s->response[q]));
    s->bias_amp = r.bias_amp;
    s->noise = r.noise;
    s->psf_xy = r.psf_xy;
    s->psf_z = r.psf_z;
    s->pvh_mean = r.pvh_mean;
    s->lesions_mean = r.lesions_mean;
    s->label_jitter = r.label_jitter;
    s->radius_mean = r.radius_mean;
    s->radius_sd = r.radius_sd;
    s->p_hgg = fminf(0.98f, fmaxf(0.05f, r.p_hgg + f * (s->p_hgg - r.p_hgg)));
    s->p_necrotic = fminf(0.98f, fmaxf(0.05f, r.p_necrotic + f * (s->p_necrotic - r.p_necrotic)));
    s->edema_mean = fminf(3.5f, fmaxf(1.2f, amplify_log(s->edema_mean, r.edema_mean, f)));
    s->edema_thr = fminf(0.8f, r.edema_thr + f * fabsf(s->edema_thr - r.edema_thr));
    size_t len = strlen(s->profile);
    if (len + 9 < sizeof s->profile) strcat(s->profile, " [strong]");
}

/* Site K's parameters (1-based) for a seed and an anatomy field of view. */
static void make_site(int k, int ncases, uint64_t seed, float voxel_scale, fs_synth_het het,
                      const sy_anatomy *a, sy_site *s)
{
    base_profile(het == FS_SYNTH_HET_IID ? 0 : (k - 1) % 3, s);
    s->index = k;
    s->ncases = ncases;
    if (k > 3 && het != FS_SYNTH_HET_IID) {
        fs_rng r;
        fs_rng_seed(&r, seed, (uint64_t)k);
        float *cont[] = {&s->bias_amp, &s->noise, &s->psf_xy, &s->psf_z, &s->radius_mean, &s->edema_mean,
                         &s->pvh_mean, &s->lesions_mean, &s->response[0], &s->response[1], &s->response[2],
                         &s->response[3]};
        for (size_t i = 0; i < sizeof cont / sizeof cont[0]; i++)
            *cont[i] *= expf(0.15f * (float)fs_rng_normal(&r));
        s->p_hgg = fminf(0.95f, fmaxf(0.2f, s->p_hgg + 0.15f * (float)fs_rng_normal(&r)));
        s->edema_thr = fminf(0.75f, fmaxf(0.25f, s->edema_thr + 0.08f * (float)fs_rng_normal(&r)));
        s->radius_mean = fminf(24.0f, fmaxf(9.0f, s->radius_mean));
    }
    if (het == FS_SYNTH_HET_STRONG) make_strong(s);
    for (int q = 0; q < 3; q++) s->vox[q] *= voxel_scale;
    s->nx = (int)lroundf(a->nx * a->dx / s->vox[0]);
    s->ny = (int)lroundf(a->ny * a->dy / s->vox[1]);
    s->nz = (int)lroundf(a->nz * a->dz / s->vox[2]);
}

static const char *dtype_name(int dt)
{
    return dt == NIFTI_TYPE_INT16 ? "int16+scl_slope" : dt == NIFTI_TYPE_UINT16 ? "uint16" : "float32";
}

/* 1 when path holds a federation.json written by this generator. */
static int is_synth_output(const char *dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/federation.json", dir);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    char buf[512];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, "\"generator\": \"fedseg synth\"") != NULL;
}

fs_status fs_synth_check_out(const char *out_dir)
{
    struct stat st;
    if (!out_dir || !*out_dir) {
        fs_log_error("no output folder given (--out DIR)");
        return FS_ERR_ARG;
    }
    if (stat(out_dir, &st) != 0) return errno == ENOENT ? FS_OK : FS_ERR_IO;
    if (!S_ISDIR(st.st_mode)) {
        fs_log_error("%s: exists and is not a folder; choose another --out", out_dir);
        return FS_ERR_ARG;
    }
    DIR *d = opendir(out_dir);
    if (!d) {
        fs_log_error("%s: cannot open the folder (%s)", out_dir, strerror(errno));
        return FS_ERR_IO;
    }
    int entries = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) entries++;
    closedir(d);
    if (entries == 0 || is_synth_output(out_dir)) return FS_OK;
    fs_log_error("%s: the folder is not empty and holds no earlier `fedseg synth` output "
                 "(no federation.json); refusing to write into it — choose an empty or new --out",
                 out_dir);
    return FS_ERR_ARG;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)ftw;
    int rc = (flag == FTW_DP) ? rmdir(path) : unlink(path);
    if (rc != 0) fs_log_error("%s: cannot remove (%s)", path, strerror(errno));
    return rc;
}

/* Remove an earlier run's site_K folders and federation.json (only those). */
static fs_status clear_previous(const char *out_dir)
{
    DIR *d = opendir(out_dir);
    if (!d) return FS_OK;
    struct dirent *e;
    fs_status st = FS_OK;
    char p[4200];
    while ((e = readdir(d)) && st == FS_OK) {
        int k;
        char tail;
        if (sscanf(e->d_name, "site_%d%c", &k, &tail) != 1) continue;
        snprintf(p, sizeof p, "%s/%s", out_dir, e->d_name);
        if (nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) st = FS_ERR_IO;
    }
    closedir(d);
    snprintf(p, sizeof p, "%s/federation.json", out_dir);
    if (st == FS_OK && unlink(p) != 0 && errno != ENOENT) st = FS_ERR_IO;
    return st;
}

/* Write `text` to path atomically. */
static fs_status write_text(const char *path, const char *text)
{
    fs_atomic_file af;
    FS_TRY(fs_atomic_open(&af, path));
    if (fputs(text, af.f) < 0) {
        fs_atomic_abort(&af);
        fs_log_error("%s: write failed", path);
        return FS_ERR_IO;
    }
    return fs_atomic_commit(&af);
}

/* A growing string for JSON (open_memstream). */
typedef struct { char *buf; size_t len; FILE *f; } sbuf;

static fs_status write_site_json(const char *path, const sy_site *s, uint64_t seed, const sy_case_result *res)
{
    sbuf b = {0};
    b.f = open_memstream(&b.buf, &b.len);
    if (!b.f) return FS_ERR_NOMEM;
    FILE *f = b.f;
    const char *mods[4] = {"t1", "t1ce", "t2", "flair"};
    fprintf(f, "{\n  \"generator\": \"fedseg synth\",\n  \"version\": %d,\n", SY_VERSION);
    fprintf(f, "  \"site\": \"site_%d\",\n  \"profile\": \"%s\",\n  \"seed\": %llu,\n", s->index, s->profile,
            (unsigned long long)seed);
    fprintf(f, "  \"grid\": [%d, %d, %d],\n  \"voxel_mm\": [%.3f, %.3f, %.3f],\n  \"datatype\": \"%s\",\n",
            s->nx, s->ny, s->nz, s->vox[0], s->vox[1], s->vox[2], dtype_name(s->datatype));
    fprintf(f, "  \"scanner\": {\n    \"response\": \"%s\",\n",
            s->response_kind == 0 ? "power: out = in^g" : "saturating: out = in(1+k)/(1+k in)");
    fprintf(f, "    \"response_parameter\": {");
    for (int m = 0; m < 4; m++) fprintf(f, "%s\"%s\": %.3f", m ? ", " : "", mods[m], s->response[m]);
    fprintf(f, "},\n    \"contrast\": {");
    for (int m = 0; m < 4; m++) fprintf(f, "%s\"%s\": %.3f", m ? ", " : "", mods[m], s->contrast[m]);
    fprintf(f, "},\n    \"stored_white_matter_level\": %.1f,\n", s->store_scale);
    fprintf(f, "    \"bias_log_std\": %.3f,\n    \"bias_spacing_mm\": %.1f,\n", s->bias_amp, s->bias_sp);
    fprintf(f, "    \"rician_noise_sigma\": %.4f,\n    \"psf_sigma_mm\": [%.2f, %.2f, %.2f]\n  },\n", s->noise,
            s->psf_xy, s->psf_xy, s->psf_z);
    fprintf(f, "  \"cohort\": {\n    \"core_radius_mm_mean\": %.2f,\n    \"core_radius_log_std\": %.3f,\n",
            s->radius_mean, s->radius_sd);
    fprintf(f, "    \"p_high_grade\": %.3f,\n    \"p_necrotic_given_high_grade\": %.3f,\n", s->p_hgg, s->p_necrotic);
    fprintf(f, "    \"edema_extent_mean\": %.3f,\n    \"periventricular_hyperintensity_mean\": %.3f,\n",
            s->edema_mean, s->pvh_mean);
    fprintf(f, "    \"white_matter_lesions_mean\": %.2f\n  },\n", s->lesions_mean);
    fprintf(f, "  \"annotation\": {\n    \"edema_probability_threshold\": %.3f,\n    \"border_noise\": %.3f\n  },\n",
            s->edema_thr, s->label_jitter);
    double vv = (double)s->vox[0] * s->vox[1] * s->vox[2] / 1000.0;
    fprintf(f, "  \"cases\": [\n");
    for (int c = 0; c < s->ncases; c++) {
        const sy_case_result *r = &res[c];
        fprintf(f, "    {\"id\": \"%s\", \"grade\": \"%s\", \"centre_mm\": [%.1f, %.1f, %.1f], "
                   "\"core_radius_mm\": %.2f, \"edema_extent\": %.3f, \"mass_effect\": %.3f, "
                   "\"white_matter_lesions\": %d, \"montage_slice\": %d,\n     \"volume_cm3\": {\"brain\": %.1f, "
                   "\"necrotic_core\": %.2f, \"edema\": %.2f, \"enhancing\": %.2f, \"whole_tumour\": %.2f}}%s\n",
                r->id, r->grade, r->centre[0], r->centre[1], r->centre[2], r->radius, r->edema_extent,
                r->mass_effect, r->nlesions, r->mz, r->nvox[4] * vv, r->nvox[1] * vv, r->nvox[2] * vv,
                r->nvox[3] * vv, (r->nvox[1] + r->nvox[2] + r->nvox[3]) * vv, c + 1 < s->ncases ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
    fs_status st = write_text(path, b.buf);
    free(b.buf);
    return st;
}

static fs_status write_federation_json(const char *path, const fs_synth_options *o, const sy_site *sites,
                                       int complete)
{
    sbuf b = {0};
    b.f = open_memstream(&b.buf, &b.len);
    if (!b.f) return FS_ERR_NOMEM;
    FILE *f = b.f;
    fprintf(f, "{\n  \"generator\": \"fedseg synth\",\n  \"version\": %d,\n  \"seed\": %llu,\n", SY_VERSION,
            (unsigned long long)o->seed);
    fprintf(f, "  \"anatomy\": \"%s\",\n  \"voxel_scale\": %.3f,\n", o->anatomy, o->voxel_scale);
    fprintf(f, "  \"layout\": \"site_K/CASE/CASE_{t1,t1ce,t2,flair,seg}.nii.gz\",\n");
    fprintf(f, "  \"labels\": {\"0\": \"background\", \"1\": \"necrotic / non-enhancing core\", "
               "\"2\": \"edema\", \"4\": \"enhancing\"},\n");
    fprintf(f, "  \"sites\": [\n");
    int total = 0;
    for (int k = 0; k < o->nsites; k++) {
        total += sites[k].ncases;
        fprintf(f, "    {\"name\": \"site_%d\", \"cases\": %d, \"profile\": \"%s\", \"grid\": [%d, %d, %d], "
                   "\"voxel_mm\": [%.3f, %.3f, %.3f], \"datatype\": \"%s\"}%s\n",
                k + 1, sites[k].ncases, sites[k].profile, sites[k].nx, sites[k].ny, sites[k].nz, sites[k].vox[0],
                sites[k].vox[1], sites[k].vox[2], dtype_name(sites[k].datatype), k + 1 < o->nsites ? "," : "");
    }
    fprintf(f, "  ],\n  \"total_cases\": %d,\n  \"complete\": %s\n}\n", total, complete ? "true" : "false");
    fclose(f);
    fs_status st = write_text(path, b.buf);
    free(b.buf);
    return st;
}

/* Montage: one row per case (up to SY_MONTAGE_ROWS), columns t1, t1ce, t2,
 * flair, flair with labels (red 1, green 2, yellow 4); anterior up. Tiles are
 * resampled to SY_MONTAGE_MM per pixel so sites of different resolution look
 * alike in size. */
static fs_status write_montage(const char *path, const sy_site *s, const sy_case_result *res)
{
    int rows = s->ncases < SY_MONTAGE_ROWS ? s->ncases : SY_MONTAGE_ROWS;
    int tw = (int)lroundf(s->nx * s->vox[0] / SY_MONTAGE_MM), th = (int)lroundf(s->ny * s->vox[1] / SY_MONTAGE_MM);
    int gap = 3, W = 5 * tw + 6 * gap, H = rows * th + (rows + 1) * gap;
    uint8_t *rgb = malloc((size_t)W * H * 3);
    if (!rgb) return FS_ERR_NOMEM;
    memset(rgb, 24, (size_t)W * H * 3);
    static const uint8_t col[4][3] = {{0, 0, 0}, {230, 40, 40}, {40, 210, 60}, {250, 225, 20}};
    for (int r = 0; r < rows; r++) {
        const sy_case_result *c = &res[r];
        size_t sn = (size_t)c->mw * c->mh;
        for (int py = 0; py < th; py++)
            for (int px = 0; px < tw; px++) {
                float sx = (px + 0.5f) * c->mw / tw - 0.5f, sy = (th - 1 - py + 0.5f) * c->mh / th - 0.5f;
                int ix = (int)floorf(sx), iy = (int)floorf(sy);
                float tx = sx - ix, ty = sy - iy;
                int x0 = ix < 0 ? 0 : ix, y0 = iy < 0 ? 0 : iy;
                int x1 = ix + 1 >= c->mw ? c->mw - 1 : ix + 1, y1 = iy + 1 >= c->mh ? c->mh - 1 : iy + 1;
                if (x0 >= c->mw) x0 = c->mw - 1;
                if (y0 >= c->mh) y0 = c->mh - 1;
                float g[4];
                for (int m = 0; m < 4; m++) {
                    const uint8_t *im = c->mimg + m * sn;
                    g[m] = (1 - ty) * ((1 - tx) * im[y0 * c->mw + x0] + tx * im[y0 * c->mw + x1]) +
                           ty * ((1 - tx) * im[y1 * c->mw + x0] + tx * im[y1 * c->mw + x1]);
                }
                int nxr = (int)lroundf(sx), nyr = (int)lroundf(sy);
                nxr = nxr < 0 ? 0 : nxr >= c->mw ? c->mw - 1 : nxr;
                nyr = nyr < 0 ? 0 : nyr >= c->mh ? c->mh - 1 : nyr;
                int lab = c->mimg[4 * sn + (size_t)nyr * c->mw + nxr];
                int oy = gap + r * (th + gap) + py;
                for (int m = 0; m < 5; m++) {
                    uint8_t *o = rgb + ((size_t)oy * W + gap + m * (tw + gap) + px) * 3;
                    float v = g[m < 4 ? m : 3];
                    for (int q = 0; q < 3; q++) {
                        float out = v;
                        if (m == 4 && lab) out = 0.45f * v + 0.55f * col[lab][q];
                        o[q] = (uint8_t)(out + 0.5f);
                    }
                }
            }
    }
    fs_status st = fs_png_write_rgb(path, W, H, rgb);
    free(rgb);
    return st;
}

fs_status fs_synth_run(const fs_synth_options *o)
{
    if (!o || !o->out_dir || o->nsites < 1 || o->nsites > FS_SYNTH_MAX_SITES || !(o->voxel_scale >= 0.5f) ||
        !(o->voxel_scale <= 4.0f) || o->threads < 0) {
        fs_log_error("synth: invalid options (sites 1..%d, voxel scale 0.5..4, an output folder)", FS_SYNTH_MAX_SITES);
        return FS_ERR_ARG;
    }
    int total = 0;
    for (int k = 0; k < o->nsites; k++) {
        if (o->cases[k] < 1 || o->cases[k] > FS_SYNTH_MAX_CASES) {
            fs_log_error("synth: site %d: %d cases; each site needs 1..%d", k + 1, o->cases[k], FS_SYNTH_MAX_CASES);
            return FS_ERR_ARG;
        }
        total += o->cases[k];
    }
    FS_TRY(fs_synth_check_out(o->out_dir));
    const char *anat_path = o->anatomy ? o->anatomy : FS_SYNTH_DEFAULT_ANATOMY;
    sy_anatomy a;
    FS_TRY(sy_anatomy_load(anat_path, &a));
    fs_status st = clear_previous(o->out_dir);
    if (st == FS_OK) st = fs_mkdir_p(o->out_dir);
    sy_site *sites = calloc((size_t)o->nsites, sizeof *sites);
    sy_case_result *res = calloc((size_t)total, sizeof *res);
    int *job_site = malloc(sizeof(int) * (size_t)total), *job_case = malloc(sizeof(int) * (size_t)total);
    int *first = calloc((size_t)o->nsites, sizeof(int));
    if (st == FS_OK && (!sites || !res || !job_site || !job_case || !first)) st = FS_ERR_NOMEM;
    char site_dir[FS_SYNTH_MAX_SITES][4096], path[4200];
    for (int k = 0, j = 0; st == FS_OK && k < o->nsites; k++) {
        make_site(k + 1, o->cases[k], o->seed, o->voxel_scale, o->heterogeneity, &a, &sites[k]);
        snprintf(site_dir[k], sizeof site_dir[k], "%s/site_%d", o->out_dir, k + 1);
        st = fs_mkdir_p(site_dir[k]);
        first[k] = j;
        for (int c = 0; c < o->cases[k]; c++, j++) {
            job_site[j] = k;
            job_case[j] = c + 1;
        }
    }
    /* A provisional federation.json marks the folder as ours at once, so a run
     * that was interrupted can be replaced by the next one. */
    snprintf(path, sizeof path, "%s/federation.json", o->out_dir);
    if (st == FS_OK) st = write_federation_json(path, o, sites, 0);
    if (st == FS_OK) {
        int nt = o->threads > 0 ? o->threads : omp_get_max_threads();
        if (nt > total) nt = total;
        int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int j = 0; j < total; j++) {
            int k = job_site[j];
            sy_case_result *r = &res[j];
            if (sy_case_generate(&a, &sites[k], job_case[j], o->seed, site_dir[k], r) != FS_OK) {
#pragma omp atomic write
                failed = 1;
            } else if (o->verbose) {
                double vv = (double)sites[k].vox[0] * sites[k].vox[1] * sites[k].vox[2] / 1000.0;
                fs_log_info("site_%d/%s: %s, whole tumour %.1f cm3 (core %.1f, enhancing %.1f)", k + 1, r->id,
                            r->grade, (r->nvox[1] + r->nvox[2] + r->nvox[3]) * vv, (r->nvox[1] + r->nvox[3]) * vv,
                            r->nvox[3] * vv);
            }
        }
        if (failed)
            for (int j = 0; j < total; j++)
                if (res[j].status != FS_OK) { st = res[j].status; break; }
    }
    for (int k = 0; st == FS_OK && k < o->nsites; k++) {
        snprintf(path, sizeof path, "%s/site.json", site_dir[k]);
        st = write_site_json(path, &sites[k], o->seed, res + first[k]);
        snprintf(path, sizeof path, "%s/montage.png", site_dir[k]);
        if (st == FS_OK) st = write_montage(path, &sites[k], res + first[k]);
    }
    /* federation.json last, now marked complete. */
    snprintf(path, sizeof path, "%s/federation.json", o->out_dir);
    if (st == FS_OK) st = write_federation_json(path, o, sites, 1);
    for (int j = 0; res && j < total; j++) free(res[j].mimg);
    free(res);
    free(sites);
    free(job_site);
    free(job_case);
    free(first);
    sy_anatomy_free(&a);
    return st;
}
