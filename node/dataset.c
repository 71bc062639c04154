/*
 * node/dataset.c — BraTS-layout cases on disk -> normalised axial slices, the
 * training sampler, and the way back from slice predictions to the native grid.
 *
 * One case: the four modalities (and the seg) are read with fs_nifti_read,
 * checked (present, same shape, finite, labels in {0,1,2,4}), the brain mask is
 * "any modality non-zero", each modality is z-scored over the mask (0 outside),
 * the brain's x/y bounding box is padded to a centred square and every axial
 * slice in the brain's z range is resampled to S×S (bilinear for images,
 * nearest for labels). Only what dataset.h lists is kept; the native float
 * volumes are freed before returning.
 *
 * Resampling convention (both directions): output pixel j of S covers the
 * square's coordinate u = (j + 0.5)·side/S − 0.5 (pixel centres aligned), so
 * fs_case_probs_to_native is the inverse map of fs_case_load's resize.
 *
 * File naming: CASE_ID_<mod>.nii.gz is preferred; CASE_ID_<mod>.nii is used
 * when the .nii.gz does not exist (a warning names both when both exist).
 *
 * Tested by tests/test_dataset.c (errors, z-score, crop/resize, labels,
 * sampler statistics and flips, probs_to_native round trip).
 */
#include "node/dataset.h"
#include "node/nifti_io.h"
#include "common/log.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *const fs_modality_names[FS_NMOD] = {"t1", "t1ce", "t2", "flair"};

/* Largest slice side accepted (a guard against nonsense arguments). */
#define FS_MAX_SIZE 8192

/* 1 when `path` names an existing regular file. */
static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Find CASE_ID_<suffix>.nii.gz (preferred) or .nii in dir; writes the path
 * into buf and returns 1 when found, 0 when neither exists, -1 when the name
 * does not fit in buf. */
static int find_case_file(const char *dir, const char *id, const char *suffix, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "%s/%s_%s.nii.gz", dir, id, suffix);
    if (n < 0 || (size_t)n >= cap) return -1;
    int gz = is_file(buf);
    buf[n - 3] = '\0'; /* the same name without ".gz" */
    int plain = is_file(buf);
    if (gz && plain)
        fs_log_warn("%s: both %s_%s.nii.gz and %s_%s.nii exist; using the .nii.gz", dir, id, suffix, id, suffix);
    if (gz) buf[n - 3] = '.';
    return gz || plain;
}

void fs_case_free(fs_case *c)
{
    if (!c) return;
    free(c->img);
    free(c->lab);
    free(c->tumour);
    free(c->seg_native);
    memset(c, 0, sizeof *c);
}

/* Check the seg's values (floats from the reader) are BraTS labels and turn
 * them into classes 0..3. Logs every distinct bad value with its count. */
static fs_status seg_to_classes(const char *path, const float *v, size_t n, uint8_t *cls)
{
    size_t bad_count[257] = {0}; /* 0..255 by value, 256 = not an integer in 0..255 */
    size_t nbad = 0;
    for (size_t i = 0; i < n; i++) {
        float f = v[i];
        if (f == 0.0f) cls[i] = 0;
        else if (f == 1.0f) cls[i] = 1;
        else if (f == 2.0f) cls[i] = 2;
        else if (f == 4.0f) cls[i] = 3;
        else {
            nbad++;
            if (f >= 0.0f && f <= 255.0f && f == floorf(f)) bad_count[(int)f]++;
            else bad_count[256]++;
        }
    }
    if (!nbad) return FS_OK;
    char msg[512] = "";
    size_t len = 0;
    for (int k = 0; k < 257 && len < sizeof msg - 64; k++) {
        if (!bad_count[k]) continue;
        if (k < 256)
            len += (size_t)snprintf(msg + len, sizeof msg - len, "%slabel %d in %zu voxels", len ? ", " : "",
                                    k, bad_count[k]);
        else
            len += (size_t)snprintf(msg + len, sizeof msg - len, "%snon-integer or out-of-range values in %zu voxels",
                                    len ? ", " : "", bad_count[k]);
    }
    fs_log_error("%s: labels must be 0, 1, 2 or 4; found %s", path, msg);
    return FS_ERR_FORMAT;
}

/* Precomputed 1D resampling from S output pixels to a side-long span that
 * starts at native index `origin` in an axis of length n: for bilinear,
 * i0/i0+1 with weight w for i0+1 (indices outside 0..n-1 read as 0); for
 * nearest, the single index `nn` (−1 when outside). */
typedef struct { int i0; float w; int nn; } fs_tap;

static void make_taps(fs_tap *t, int S, int origin, int side, int n)
{
    for (int j = 0; j < S; j++) {
        double u = (j + 0.5) * side / S - 0.5;
        double f = floor(u);
        t[j].i0 = origin + (int)f;
        t[j].w = (float)(u - f);
        int nn = origin + (int)floor((j + 0.5) * side / S);
        t[j].nn = (nn >= 0 && nn < n) ? nn : -1;
    }
}

/* Bilinear sample of plane p (nx×ny, x fastest) at taps tx/ty; outside is 0. */
static float bilinear(const float *p, int nx, int ny, const fs_tap *tx, const fs_tap *ty)
{
    float acc = 0.0f;
    for (int dy = 0; dy < 2; dy++) {
        int y = ty->i0 + dy;
        if (y < 0 || y >= ny) continue;
        float wy = dy ? ty->w : 1.0f - ty->w;
        for (int dx = 0; dx < 2; dx++) {
            int x = tx->i0 + dx;
            if (x < 0 || x >= nx) continue;
            float wx = dx ? tx->w : 1.0f - tx->w;
            acc += wy * wx * p[(size_t)y * nx + x];
        }
    }
    return acc;
}

/* Load one case: see dataset.h. Steps in order: names, files present, read
 * and check each volume, mask and bounding box, z-score, square, resample.
 * On any error *out is left zeroed and every buffer freed. */
fs_status fs_case_load(const char *case_dir, int size, int need_seg, fs_case *out)
{
    if (!out) return FS_ERR_ARG;
    memset(out, 0, sizeof *out);
    if (!case_dir || size < 1 || size > FS_MAX_SIZE) {
        fs_log_error("%s: invalid slice size %d", case_dir ? case_dir : "(null)", size);
        return FS_ERR_ARG;
    }
    fs_case *c = out;
    size_t dlen = strlen(case_dir);
    while (dlen > 1 && case_dir[dlen - 1] == '/') dlen--;
    if (dlen >= sizeof c->dir) {
        fs_log_error("%s: case path too long", case_dir);
        return FS_ERR_ARG;
    }
    memcpy(c->dir, case_dir, dlen);
    c->dir[dlen] = '\0';
    const char *base = strrchr(c->dir, '/');
    base = base ? base + 1 : c->dir;
    if (strlen(base) >= sizeof c->id || !*base) {
        fs_log_error("%s: case name empty or too long", case_dir);
        return FS_ERR_ARG;
    }
    memcpy(c->id, base, strlen(base) + 1);

    struct stat st;
    int serr = stat(c->dir, &st) != 0 ? errno : 0;
    if (serr || !S_ISDIR(st.st_mode)) {
        fs_log_error("%s: case directory: %s", c->dir, serr ? strerror(serr) : "not a directory");
        memset(c, 0, sizeof *c);
        return FS_ERR_NOT_FOUND;
    }

    /* 1. Which files exist. */
    char paths[FS_NMOD + 1][1100];
    char missing[128] = "";
    for (int m = 0; m <= FS_NMOD; m++) {
        const char *suf = m < FS_NMOD ? fs_modality_names[m] : "seg";
        int found = find_case_file(c->dir, c->id, suf, paths[m], sizeof paths[m]);
        if (found < 0) {
            fs_log_error("%s: case path too long", c->dir);
            memset(c, 0, sizeof *c);
            return FS_ERR_ARG;
        }
        if (!found) {
            paths[m][0] = '\0';
            if (m < FS_NMOD || need_seg)
                snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s",
                         missing[0] ? ", " : "", suf);
        }
    }
    if (missing[0]) {
        fs_log_error("%s: case %s is missing %s (expected %s_<name>.nii.gz or .nii)", c->dir, c->id, missing, c->id);
        return FS_ERR_NOT_FOUND;
    }
    memcpy(c->ref_path, paths[0], sizeof c->ref_path);

    /* 2. Read and check every volume. */
    fs_volume vol[FS_NMOD + 1];
    memset(vol, 0, sizeof vol);
    uint8_t *mask = NULL;
    fs_status rc = FS_OK;
    int have_seg = paths[FS_NMOD][0] != '\0';
    for (int m = 0; m <= FS_NMOD && rc == FS_OK; m++) {
        if (m == FS_NMOD && !have_seg) break;
        rc = fs_nifti_read(paths[m], &vol[m]);
        if (rc != FS_OK) break;
        if (m > 0 && (vol[m].nx != vol[0].nx || vol[m].ny != vol[0].ny || vol[m].nz != vol[0].nz)) {
            fs_log_error("%s: shape %d×%d×%d differs from the t1's %d×%d×%d", paths[m], vol[m].nx, vol[m].ny,
                         vol[m].nz, vol[0].nx, vol[0].ny, vol[0].nz);
            rc = FS_ERR_MISMATCH;
            break;
        }
        if (m < FS_NMOD) {
            size_t n = (size_t)vol[m].nx * vol[m].ny * vol[m].nz, bad = 0, first = 0;
            for (size_t i = 0; i < n; i++)
                if (!isfinite(vol[m].data[i]) && !bad++) first = i;
            if (bad) {
                fs_log_error("%s: %zu non-finite intensities (NaN or Inf), first at voxel %zu", paths[m], bad, first);
                rc = FS_ERR_NUMERIC;
            }
        }
    }
    if (rc != FS_OK) goto fail;

    int nx = vol[0].nx, ny = vol[0].ny, nz = vol[0].nz;
    size_t plane = (size_t)nx * ny, nvox = plane * nz;
    c->nx = nx; c->ny = ny; c->nz = nz;
    if (have_seg) {
        c->seg_native = malloc(nvox);
        if (!c->seg_native) { rc = FS_ERR_NOMEM; goto fail; }
        rc = seg_to_classes(paths[FS_NMOD], vol[FS_NMOD].data, nvox, c->seg_native);
        fs_volume_free(&vol[FS_NMOD]);
        if (rc != FS_OK) goto fail;
    }

    /* 3. Brain mask and its bounding box. */
    mask = malloc(nvox);
    if (!mask) { rc = FS_ERR_NOMEM; goto fail; }
    int x0 = nx, x1 = 0, y0 = ny, y1 = 0, z0 = nz, z1 = 0;
    size_t nbrain = 0;
    for (int z = 0; z < nz; z++)
        for (int y = 0; y < ny; y++)
            for (int x = 0; x < nx; x++) {
                size_t i = (size_t)z * plane + (size_t)y * nx + x;
                int in = 0;
                for (int m = 0; m < FS_NMOD; m++) in |= vol[m].data[i] != 0.0f;
                mask[i] = (uint8_t)in;
                if (!in) continue;
                nbrain++;
                if (x < x0) x0 = x;
                if (x >= x1) x1 = x + 1;
                if (y < y0) y0 = y;
                if (y >= y1) y1 = y + 1;
                if (z < z0) z0 = z;
                if (z >= z1) z1 = z + 1;
            }
    if (!nbrain) {
        fs_log_error("%s: case %s has no brain voxels (every modality is zero everywhere)", c->dir, c->id);
        rc = FS_ERR_FORMAT;
        goto fail;
    }
    if (have_seg) {
        size_t outside = 0;
        for (size_t i = 0; i < nvox; i++) outside += c->seg_native[i] && !mask[i];
        if (outside)
            fs_log_warn("%s: %zu tumour voxels lie where every modality is zero (outside the brain mask)",
                        paths[FS_NMOD], outside);
    }
    c->x0 = x0; c->x1 = x1; c->y0 = y0; c->y1 = y1; c->z0 = z0; c->z1 = z1;
    if (z1 - z0 > 65535) {
        fs_log_error("%s: %d brain slices, more than the 65535 supported", c->dir, z1 - z0);
        rc = FS_ERR_UNSUPPORTED;
        goto fail;
    }

    /* 4. z-score each modality over the brain; 0 outside. */
    for (int m = 0; m < FS_NMOD; m++) {
        double s = 0.0, s2 = 0.0;
        float *d = vol[m].data;
        for (size_t i = 0; i < nvox; i++) if (mask[i]) s += d[i];
        double mean = s / (double)nbrain;
        for (size_t i = 0; i < nvox; i++) if (mask[i]) { double e = d[i] - mean; s2 += e * e; }
        double sd = sqrt(s2 / (double)nbrain);
        if (!(sd > 1e-6 * fmax(1.0, fabs(mean)))) {
            fs_log_warn("%s: intensity is constant within the brain (%g); this modality is all zeros after "
                        "normalisation", paths[m], mean);
            sd = 1.0;
        }
        float fm = (float)mean, inv = (float)(1.0 / sd);
        for (size_t i = 0; i < nvox; i++) d[i] = mask[i] ? (d[i] - fm) * inv : 0.0f;
    }
    free(mask);
    mask = NULL;

    /* 5. The square around the box, then resample every brain slice. */
    int w = x1 - x0, h = y1 - y0, side = w > h ? w : h;
    c->sq_side = side;
    c->sq_x0 = x0 - (side - w) / 2;
    c->sq_y0 = y0 - (side - h) / 2;
    c->size = size;
    c->nslices = z1 - z0;
    int S = size, ns = c->nslices;
    size_t ss = (size_t)S * S;
    fs_tap *tx = malloc(sizeof *tx * S), *ty = malloc(sizeof *ty * S);
    c->img = malloc(sizeof(float) * (size_t)ns * FS_NMOD * ss);
    c->tumour = calloc((size_t)ns, 1);
    if (have_seg) c->lab = malloc((size_t)ns * ss);
    if (!tx || !ty || !c->img || !c->tumour || (have_seg && !c->lab)) {
        free(tx); free(ty);
        fs_log_error("%s: out of memory for %d slices of %d×%d", c->dir, ns, S, S);
        rc = FS_ERR_NOMEM;
        goto fail;
    }
    make_taps(tx, S, c->sq_x0, side, nx);
    make_taps(ty, S, c->sq_y0, side, ny);
    for (int k = 0; k < ns; k++) {
        size_t zoff = (size_t)(z0 + k) * plane;
        for (int m = 0; m < FS_NMOD; m++) {
            const float *p = vol[m].data + zoff;
            float *o = c->img + ((size_t)k * FS_NMOD + m) * ss;
            for (int i = 0; i < S; i++)
                for (int j = 0; j < S; j++) o[(size_t)i * S + j] = bilinear(p, nx, ny, &tx[j], &ty[i]);
        }
        if (have_seg) {
            const uint8_t *p = c->seg_native + zoff;
            uint8_t *o = c->lab + (size_t)k * ss, any = 0;
            for (int i = 0; i < S; i++)
                for (int j = 0; j < S; j++) {
                    uint8_t v = (tx[j].nn >= 0 && ty[i].nn >= 0) ? p[(size_t)ty[i].nn * nx + tx[j].nn] : 0;
                    o[(size_t)i * S + j] = v;
                    any |= v;
                }
            c->tumour[k] = any != 0;
        }
    }
    free(tx); free(ty);
    for (int m = 0; m < FS_NMOD; m++) fs_volume_free(&vol[m]);
    return FS_OK;

fail:
    free(mask);
    for (int m = 0; m <= FS_NMOD; m++) fs_volume_free(&vol[m]);
    fs_case_free(c);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void fs_dataset_free(fs_dataset *ds)
{
    if (!ds) return;
    for (int i = 0; i < ds->ncases; i++) fs_case_free(&ds->cases[i]);
    free(ds->cases);
    memset(ds, 0, sizeof *ds);
}

/* Load every case directory of site_dir, sorted by name: see dataset.h.
 * Entries that are not directories and names starting with '.' are skipped.
 * The first failing case fails the whole load (after its own message). */
fs_status fs_dataset_load(const char *site_dir, int size, fs_dataset *out)
{
    if (!out) return FS_ERR_ARG;
    memset(out, 0, sizeof *out);
    if (!site_dir) return FS_ERR_ARG;
    DIR *d = opendir(site_dir);
    if (!d) {
        fs_log_error("%s: cannot open site directory: %s", site_dir, strerror(errno));
        return errno == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO;
    }
    char **names = NULL;
    int n = 0, cap = 0;
    fs_status rc = FS_OK;
    char path[1100];
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", site_dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, sizeof *names * cap);
            if (!nn) { rc = FS_ERR_NOMEM; break; }
            names = nn;
        }
        if (!(names[n] = strdup(e->d_name))) { rc = FS_ERR_NOMEM; break; }
        n++;
    }
    closedir(d);
    if (rc == FS_OK && n == 0) {
        fs_log_error("%s: no case directories (expected CASE_ID/CASE_ID_{t1,t1ce,t2,flair,seg}.nii.gz)", site_dir);
        rc = FS_ERR_NOT_FOUND;
    }
    if (rc == FS_OK) {
        qsort(names, (size_t)n, sizeof *names, cmp_str);
        out->cases = calloc((size_t)n, sizeof *out->cases);
        if (!out->cases) rc = FS_ERR_NOMEM;
    }
    for (int i = 0; rc == FS_OK && i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", site_dir, names[i]);
        rc = fs_case_load(path, size, 1, &out->cases[i]);
        if (rc == FS_OK) {
            out->ncases = i + 1;
            fs_log_debug("%s: %d slices", path, out->cases[i].nslices);
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (rc != FS_OK) fs_dataset_free(out);
    return rc;
}

void fs_sampler_free(fs_sampler *s)
{
    if (!s) return;
    free(s->all_idx);
    free(s->tum_idx);
    memset(s, 0, sizeof *s);
}

/* Index every slice (and separately the tumour and tumour-free slices) of
 * `cases`: see dataset.h. The cases must outlive the sampler. */
fs_status fs_sampler_init(fs_sampler *s, const fs_case *const *cases, int ncases,
                          float tumour_frac, float flip_ud, uint64_t seed)
{
    if (!s) return FS_ERR_ARG;
    memset(s, 0, sizeof *s);
    if (!cases || ncases < 1 || ncases > 32767 || !(tumour_frac <= 1.0f) || !(flip_ud >= 0.0f && flip_ud <= 1.0f)) {
        fs_log_error("sampler: invalid arguments (%d cases, tumour_frac %g, flip_ud %g)", ncases, tumour_frac, flip_ud);
        return FS_ERR_ARG;
    }
    int total = 0;
    for (int i = 0; i < ncases; i++) {
        const fs_case *c = cases[i];
        if (!c || !c->lab || c->size != cases[0]->size || c->nslices > 65535) {
            fs_log_error("sampler: case %s has no labels, a different slice size or too many slices",
                         c ? c->id : "(null)");
            return FS_ERR_ARG;
        }
        total += c->nslices;
    }
    if (total == 0) {
        fs_log_error("sampler: the cases hold no slices");
        return FS_ERR_ARG;
    }
    s->all_idx = malloc(sizeof(int) * (size_t)total);
    s->tum_idx = malloc(sizeof(int) * (size_t)total * 2);
    if (!s->all_idx || !s->tum_idx) { fs_sampler_free(s); return FS_ERR_NOMEM; }
    /* tum_idx holds the tumour slices first, then (from index total) the
     * tumour-free ones, so one allocation serves both lists. */
    int nfree = 0;
    for (int i = 0; i < ncases; i++)
        for (int k = 0; k < cases[i]->nslices; k++) {
            int code = i * 65536 + k;
            s->all_idx[s->nall++] = code;
            if (cases[i]->tumour[k]) s->tum_idx[s->ntum++] = code;
            else s->tum_idx[total + nfree++] = code;
        }
    s->cases = cases;
    s->ncases = ncases;
    s->tumour_frac = tumour_frac;
    s->flip_ud = flip_ud;
    fs_rng_seed(&s->rng, seed, 0);
    return FS_OK;
}

/* Draw one slice code following the sampler's policy. */
static int draw_slice(fs_sampler *s)
{
    int nfree = s->nall - s->ntum;
    if (s->tumour_frac < 0.0f || (s->ntum == 0) || (nfree == 0))
        return s->all_idx[fs_rng_below(&s->rng, (uint64_t)s->nall)];
    if (fs_rng_uniform(&s->rng) < s->tumour_frac)
        return s->tum_idx[fs_rng_below(&s->rng, (uint64_t)s->ntum)];
    return s->tum_idx[s->nall + fs_rng_below(&s->rng, (uint64_t)nfree)];
}

/* Fill a batch: see dataset.h. Flip decisions are drawn per slice after the
 * slice itself, so the stream (and the batches) depend only on the seed. */
void fs_sampler_batch(fs_sampler *s, int batch, float *x, uint8_t *y)
{
    int S = s->cases[0]->size;
    size_t ss = (size_t)S * S;
    for (int b = 0; b < batch; b++) {
        int code = draw_slice(s);
        const fs_case *c = s->cases[code / 65536];
        int k = code % 65536;
        int lr = fs_rng_uniform(&s->rng) < 0.5;
        int ud = fs_rng_uniform(&s->rng) < (double)s->flip_ud;
        for (int m = 0; m < FS_NMOD; m++) {
            const float *src = c->img + ((size_t)k * FS_NMOD + m) * ss;
            float *dst = x + ((size_t)b * FS_NMOD + m) * ss;
            for (int i = 0; i < S; i++) {
                const float *row = src + (size_t)(ud ? S - 1 - i : i) * S;
                float *o = dst + (size_t)i * S;
                if (lr) for (int j = 0; j < S; j++) o[j] = row[S - 1 - j];
                else memcpy(o, row, sizeof(float) * S);
            }
        }
        if (y) {
            const uint8_t *src = c->lab + (size_t)k * ss;
            uint8_t *dst = y + (size_t)b * ss;
            for (int i = 0; i < S; i++) {
                const uint8_t *row = src + (size_t)(ud ? S - 1 - i : i) * S;
                uint8_t *o = dst + (size_t)i * S;
                if (lr) for (int j = 0; j < S; j++) o[j] = row[S - 1 - j];
                else memcpy(o, row, S);
            }
        }
    }
}

/* Slice probabilities -> native classes: see dataset.h. Each native voxel in
 * the square and the brain's z range is mapped to the resized grid (inverse
 * of the load convention, clamped at the edges), the four class maps are
 * interpolated bilinearly and the arg-max wins (ties to the lower class). */
void fs_case_probs_to_native(const fs_case *c, const float *probs, uint8_t *out)
{
    int nx = c->nx, ny = c->ny, nz = c->nz, S = c->size, side = c->sq_side;
    size_t plane = (size_t)nx * ny, ss = (size_t)S * S;
    memset(out, 0, plane * nz);
    double scale = (double)S / side;
    for (int z = c->z0; z < c->z1; z++) {
        const float *pk = probs + (size_t)(z - c->z0) * FS_NCLS * ss;
        for (int y = 0; y < ny; y++) {
            int sy = y - c->sq_y0;
            if (sy < 0 || sy >= side) continue;
            double v = (sy + 0.5) * scale - 0.5;
            if (v < 0) v = 0;
            if (v > S - 1) v = S - 1;
            int i0 = (int)v, i1 = i0 + 1 < S ? i0 + 1 : i0;
            float wy = (float)(v - i0);
            for (int x = 0; x < nx; x++) {
                int sx = x - c->sq_x0;
                if (sx < 0 || sx >= side) continue;
                double u = (sx + 0.5) * scale - 0.5;
                if (u < 0) u = 0;
                if (u > S - 1) u = S - 1;
                int j0 = (int)u, j1 = j0 + 1 < S ? j0 + 1 : j0;
                float wx = (float)(u - j0);
                int best = 0;
                float bestp = -INFINITY;
                for (int k = 0; k < FS_NCLS; k++) {
                    const float *p = pk + (size_t)k * ss;
                    float a = p[(size_t)i0 * S + j0] * (1 - wx) + p[(size_t)i0 * S + j1] * wx;
                    float b = p[(size_t)i1 * S + j0] * (1 - wx) + p[(size_t)i1 * S + j1] * wx;
                    float val = a * (1 - wy) + b * wy;
                    if (val > bestp) { bestp = val; best = k; }
                }
                out[(size_t)z * plane + (size_t)y * nx + x] = (uint8_t)best;
            }
        }
    }
}

void fs_classes_to_brats(uint8_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) v[i] = v[i] == 3 ? 4 : v[i];
}
