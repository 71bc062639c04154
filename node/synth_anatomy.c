/*
 * node/synth_anatomy.c — the real brain under the synthetic federation, and
 * smooth random fields.
 *
 * The T1 (by default Colin27, skull-stripped, Debian mricron-data) becomes
 * eight uint8 channels per voxel (synth_internal.h): the T1 in units of the
 * white-matter mean, soft CSF/GM/WM memberships, the brain mask, nearness to
 * the brain's surface, nearness to the ventricles and a blurred white-matter
 * membership. Memberships are the
 * posteriors of a 3-class Gaussian mixture fitted by EM to the histogram of
 * brain intensities, so voxels between two tissues get a partial membership of
 * both (partial volume). "Ventricles" are CSF voxels far from the brain's
 * surface (more than about 2 cm); their blurred map drives periventricular
 * FLAIR hyperintensities and choroid-plexus enhancement in synth_case.c.
 * Tested through tests/test_synth_props.c (tissue-dependent intensities).
 */
#include "node/synth_internal.h"
#include "node/nifti_io.h"
#include "common/log.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBIN 256

/* Running-mean blur along one axis with a window of 2r+1 voxels (edges
 * clamped); in and out may not alias. stride = distance between neighbours. */
static void box_line(const float *in, float *out, int n, int stride, int r)
{
    double acc = 0;
    for (int i = -r; i <= r; i++) acc += in[(size_t)(i < 0 ? 0 : i >= n ? n - 1 : i) * stride];
    for (int i = 0; i < n; i++) {
        out[(size_t)i * stride] = (float)(acc / (2 * r + 1));
        int add = i + r + 1, sub = i - r;
        acc += in[(size_t)(add >= n ? n - 1 : add) * stride];
        acc -= in[(size_t)(sub < 0 ? 0 : sub) * stride];
    }
}

/* Separable box blur of v (in place, tmp the same size), radii per axis;
 * applied twice, which approximates a Gaussian. */
static void box_blur3(float *v, float *tmp, int nx, int ny, int nz, int rx, int ry, int rz)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int z = 0; z < nz; z++)
            for (int y = 0; y < ny; y++) {
                size_t o = ((size_t)z * ny + y) * nx;
                box_line(v + o, tmp + o, nx, 1, rx);
            }
        for (int z = 0; z < nz; z++)
            for (int x = 0; x < nx; x++) {
                size_t o = (size_t)z * ny * nx + x;
                box_line(tmp + o, v + o, ny, nx, ry);
            }
        memcpy(tmp, v, sizeof(float) * (size_t)nx * ny * nz);
        for (int y = 0; y < ny; y++)
            for (int x = 0; x < nx; x++) {
                size_t o = (size_t)y * nx + x;
                box_line(tmp + o, v + o, nz, nx * ny, rz);
            }
    }
}

/* Fit a 3-class Gaussian mixture to a histogram (bins of width 1 over
 * 0..NBIN-1) by EM, starting from the 5th, 35th and 80th percentiles.
 * Means come out sorted (CSF < GM < WM for a T1). */
static void fit_gmm(const double *hist, double *mu, double *sd, double *w)
{
    double tot = 0;
    for (int b = 0; b < NBIN; b++) tot += hist[b];
    const double q[3] = {0.05, 0.35, 0.80};
    for (int k = 0; k < 3; k++) {
        double c = 0;
        int b = 0;
        while (b < NBIN - 1 && c + hist[b] < q[k] * tot) c += hist[b++];
        mu[k] = b;
        sd[k] = NBIN * 0.08;
        w[k] = 1.0 / 3;
    }
    for (int it = 0; it < 200; it++) {
        double s0[3] = {0}, s1[3] = {0}, s2[3] = {0};
        for (int b = 0; b < NBIN; b++) {
            if (hist[b] <= 0) continue;
            double p[3], ps = 0;
            for (int k = 0; k < 3; k++) {
                double d = (b - mu[k]) / sd[k];
                p[k] = w[k] / sd[k] * exp(-0.5 * d * d);
                ps += p[k];
            }
            if (ps <= 0) continue;
            for (int k = 0; k < 3; k++) {
                double g = hist[b] * p[k] / ps;
                s0[k] += g;
                s1[k] += g * b;
                s2[k] += g * b * b;
            }
        }
        for (int k = 0; k < 3; k++) {
            if (s0[k] <= 0) continue;
            mu[k] = s1[k] / s0[k];
            double var = s2[k] / s0[k] - mu[k] * mu[k];
            sd[k] = sqrt(var > 4.0 ? var : 4.0);
            w[k] = s0[k] / tot;
        }
    }
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (mu[j] < mu[i]) {
                double t = mu[i]; mu[i] = mu[j]; mu[j] = t;
                t = sd[i]; sd[i] = sd[j]; sd[j] = t;
                t = w[i]; w[i] = w[j]; w[j] = t;
            }
}

static uint8_t to_u8(float v)
{
    float s = v * 255.0f + 0.5f;
    return (uint8_t)(s < 0 ? 0 : s > 255 ? 255 : s);
}

fs_status sy_anatomy_load(const char *path, sy_anatomy *a)
{
    memset(a, 0, sizeof *a);
    if (access(path, R_OK) != 0) {
        fs_log_error("%s: anatomy not found (%s); install it with `apt-get install mricron-data` "
                     "or pass another skull-stripped T1 volume with --anatomy FILE",
                     path, strerror(errno));
        return FS_ERR_NOT_FOUND;
    }
    fs_volume v;
    fs_status st = fs_nifti_read(path, &v);
    if (st != FS_OK) return st == FS_ERR_NOT_FOUND ? FS_ERR_NOT_FOUND : FS_ERR_FORMAT;
    size_t n = (size_t)v.nx * v.ny * v.nz;
    if (v.nx < 32 || v.ny < 32 || v.nz < 32 || !(v.dx > 0.2f && v.dy > 0.2f && v.dz > 0.2f) ||
        v.dx > 3 || v.dy > 3 || v.dz > 3) {
        fs_log_error("%s: a %dx%dx%d volume of %gx%gx%g mm is not a usable brain T1 "
                     "(need at least 32 voxels per axis and 0.2–3 mm voxels)",
                     path, v.nx, v.ny, v.nz, v.dx, v.dy, v.dz);
        fs_volume_free(&v);
        return FS_ERR_FORMAT;
    }
    /* Robust maximum: the 99.5th percentile of positive voxels. */
    float vmax = 0;
    size_t npos = 0;
    for (size_t i = 0; i < n; i++)
        if (v.data[i] > 0 && isfinite(v.data[i])) {
            if (v.data[i] > vmax) vmax = v.data[i];
            npos++;
        }
    if (npos < n / 50 || !(vmax > 0)) {
        fs_log_error("%s: almost no positive voxels; expected a skull-stripped T1 brain", path);
        fs_volume_free(&v);
        return FS_ERR_FORMAT;
    }
    double *fine = calloc(4096, sizeof(double));
    double hist[NBIN] = {0};
    float *tmp = malloc(sizeof(float) * n), *blur = malloc(sizeof(float) * n);
    a->ch = malloc((size_t)SY_NCH * n);
    if (!fine || !tmp || !blur || !a->ch) {
        free(fine); free(tmp); free(blur); fs_volume_free(&v); sy_anatomy_free(a);
        return FS_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        if (v.data[i] > 0 && isfinite(v.data[i])) fine[(int)fminf(4095.0f, v.data[i] / vmax * 4095.0f)]++;
    double c = 0;
    int b99 = 4095;
    for (int b = 0; b < 4096; b++) {
        c += fine[b];
        if (c >= 0.995 * (double)npos) { b99 = b; break; }
    }
    free(fine);
    float rmax = vmax * (float)(b99 + 1) / 4096.0f;
    float thr = 0.03f * rmax;
    for (size_t i = 0; i < n; i++) {
        float x = v.data[i];
        if (x > thr && isfinite(x)) hist[(int)fminf(NBIN - 1, x / rmax * (NBIN - 1))]++;
    }
    double mu[3], sd[3], w[3];
    fit_gmm(hist, mu, sd, w);
    for (int k = 0; k < 3; k++) {
        a->gmm_mean[k] = (float)(mu[k] / (NBIN - 1) * rmax);
        a->gmm_sd[k] = (float)(sd[k] / (NBIN - 1) * rmax);
    }
    if (!(mu[2] > mu[1] + 2 && mu[1] > mu[0] + 2)) {
        fs_log_error("%s: could not separate CSF, grey and white matter in the intensities "
                     "(mixture means %.3g, %.3g, %.3g); is it a T1 brain?", path,
                     a->gmm_mean[0], a->gmm_mean[1], a->gmm_mean[2]);
        free(tmp); free(blur); fs_volume_free(&v); sy_anatomy_free(a);
        return FS_ERR_FORMAT;
    }
    /* Membership lookup per histogram bin: posteriors, made monotone at the ends
     * (darker than the CSF mean is CSF, brighter than the WM mean is WM). */
    float lut[NBIN][3];
    for (int b = 0; b < NBIN; b++) {
        double p[3], ps = 0;
        for (int k = 0; k < 3; k++) {
            double d = (b - mu[k]) / sd[k];
            p[k] = w[k] / sd[k] * exp(-0.5 * d * d);
            ps += p[k];
        }
        for (int k = 0; k < 3; k++) lut[b][k] = ps > 0 ? (float)(p[k] / ps) : (k == 0);
        if (b <= mu[0]) { lut[b][0] = 1; lut[b][1] = lut[b][2] = 0; }
        if (b >= mu[2]) { lut[b][2] = 1; lut[b][0] = lut[b][1] = 0; }
    }
    a->nx = v.nx; a->ny = v.ny; a->nz = v.nz;
    a->dx = v.dx; a->dy = v.dy; a->dz = v.dz;
    float wm = a->gmm_mean[2];
    for (size_t i = 0; i < n; i++) {
        float x = isfinite(v.data[i]) ? v.data[i] : 0;
        uint8_t *ch = a->ch + i * SY_NCH;
        memset(ch, 0, SY_NCH);
        if (x <= thr) continue;
        int b = (int)fminf(NBIN - 1, x / rmax * (NBIN - 1));
        float t = x / wm * SY_T1_SCALE + 0.5f;
        ch[SY_T1] = (uint8_t)(t > 255 ? 255 : t);
        ch[SY_CSF] = to_u8(lut[b][0]);
        ch[SY_GM] = to_u8(lut[b][1]);
        ch[SY_WM] = to_u8(lut[b][2]);
        ch[SY_MASK] = 255;
    }
    fs_volume_free(&v);

    /* Nearness to the surface: 1 − mask blurred over ~±6 mm (0 deep inside). */
    int r6[3] = {(int)(3 / a->dx + 0.5f), (int)(3 / a->dy + 0.5f), (int)(3 / a->dz + 0.5f)};
    int r20[3] = {(int)(10 / a->dx + 0.5f), (int)(10 / a->dy + 0.5f), (int)(10 / a->dz + 0.5f)};
    int r4[3] = {(int)(2 / a->dx + 0.5f), (int)(2 / a->dy + 0.5f), (int)(2 / a->dz + 0.5f)};
    for (size_t i = 0; i < n; i++) blur[i] = a->ch[i * SY_NCH + SY_MASK] ? 1.0f : 0.0f;
    box_blur3(blur, tmp, a->nx, a->ny, a->nz, r6[0], r6[1], r6[2]);
    for (size_t i = 0; i < n; i++)
        if (a->ch[i * SY_NCH + SY_MASK]) a->ch[i * SY_NCH + SY_SURF] = to_u8(2.0f * (1.0f - blur[i]));
    /* Ventricles: CSF where the mask blurred over ~±20 mm is (almost) full. */
    for (size_t i = 0; i < n; i++) blur[i] = a->ch[i * SY_NCH + SY_MASK] ? 1.0f : 0.0f;
    box_blur3(blur, tmp, a->nx, a->ny, a->nz, r20[0], r20[1], r20[2]);
    for (size_t i = 0; i < n; i++)
        blur[i] = blur[i] > 0.985f ? a->ch[i * SY_NCH + SY_CSF] / 255.0f : 0.0f;
    box_blur3(blur, tmp, a->nx, a->ny, a->nz, r4[0], r4[1], r4[2]);
    for (size_t i = 0; i < n; i++)
        if (a->ch[i * SY_NCH + SY_MASK]) a->ch[i * SY_NCH + SY_VENT] = to_u8(blur[i] / 0.3f);
    /* White matter blurred over ~±4 mm: edema follows tracts with smooth borders. */
    for (size_t i = 0; i < n; i++) blur[i] = a->ch[i * SY_NCH + SY_WM] / 255.0f;
    box_blur3(blur, tmp, a->nx, a->ny, a->nz, r4[0], r4[1], r4[2]);
    for (size_t i = 0; i < n; i++)
        if (a->ch[i * SY_NCH + SY_MASK]) a->ch[i * SY_NCH + SY_WMS] = to_u8(blur[i]);
    free(tmp);
    free(blur);
    return FS_OK;
}

void sy_anatomy_free(sy_anatomy *a)
{
    if (!a) return;
    free(a->ch);
    memset(a, 0, sizeof *a);
}

void sy_anatomy_sample(const sy_anatomy *a, float x, float y, float z, float out[SY_NCH])
{
    float fx = x / a->dx, fy = y / a->dy, fz = z / a->dz;
    for (int c = 0; c < SY_NCH; c++) out[c] = 0;
    if (!(fx >= 0 && fy >= 0 && fz >= 0) || fx > a->nx - 1 || fy > a->ny - 1 || fz > a->nz - 1) return;
    int ix = (int)fx, iy = (int)fy, iz = (int)fz;
    if (ix > a->nx - 2) ix = a->nx - 2;
    if (iy > a->ny - 2) iy = a->ny - 2;
    if (iz > a->nz - 2) iz = a->nz - 2;
    float tx = fx - ix, ty = fy - iy, tz = fz - iz;
    size_t sx = SY_NCH, sy = (size_t)a->nx * SY_NCH, sz = (size_t)a->nx * a->ny * SY_NCH;
    const uint8_t *p = a->ch + (size_t)iz * sz + (size_t)iy * sy + (size_t)ix * sx;
    float w[8] = {(1 - tx) * (1 - ty) * (1 - tz), tx * (1 - ty) * (1 - tz), (1 - tx) * ty * (1 - tz),
                  tx * ty * (1 - tz), (1 - tx) * (1 - ty) * tz, tx * (1 - ty) * tz,
                  (1 - tx) * ty * tz, tx * ty * tz};
    const uint8_t *q[8] = {p, p + sx, p + sy, p + sx + sy, p + sz, p + sz + sx, p + sz + sy, p + sz + sx + sy};
    for (int k = 0; k < 8; k++)
        for (int c = 0; c < SY_NCH; c++) out[c] += w[k] * q[k][c];
    out[SY_T1] *= 1.0f / SY_T1_SCALE;
    for (int c = 1; c < SY_NCH; c++) out[c] *= 1.0f / 255.0f;
}

fs_status sy_noise_init(sy_noise *n, fs_rng *r, float x0, float y0, float z0, float x1, float y1,
                        float z1, float sp)
{
    n->inv_sp = 1.0f / sp;
    n->ox = x0 - sp; n->oy = y0 - sp; n->oz = z0 - sp;
    n->nx = (int)((x1 - x0) / sp) + 4;
    n->ny = (int)((y1 - y0) / sp) + 4;
    n->nz = (int)((z1 - z0) / sp) + 4;
    size_t m = (size_t)n->nx * n->ny * n->nz;
    n->v = malloc(sizeof(float) * m);
    if (!n->v) return FS_ERR_NOMEM;
    for (size_t i = 0; i < m; i++) n->v[i] = (float)fs_rng_normal(r);
    return FS_OK;
}

static inline float smooth01(float t) { return t * t * (3 - 2 * t); }

float sy_noise_eval(const sy_noise *n, float x, float y, float z)
{
    float fx = (x - n->ox) * n->inv_sp, fy = (y - n->oy) * n->inv_sp, fz = (z - n->oz) * n->inv_sp;
    if (fx < 0) fx = 0;
    if (fy < 0) fy = 0;
    if (fz < 0) fz = 0;
    if (fx > n->nx - 1.001f) fx = n->nx - 1.001f;
    if (fy > n->ny - 1.001f) fy = n->ny - 1.001f;
    if (fz > n->nz - 1.001f) fz = n->nz - 1.001f;
    int ix = (int)fx, iy = (int)fy, iz = (int)fz;
    float tx = smooth01(fx - ix), ty = smooth01(fy - iy), tz = smooth01(fz - iz);
    const float *p = n->v + ((size_t)iz * n->ny + iy) * n->nx + ix;
    size_t sy = (size_t)n->nx, sz = (size_t)n->nx * n->ny;
    float a = p[0] + tx * (p[1] - p[0]), b = p[sy] + tx * (p[sy + 1] - p[sy]);
    float c = p[sz] + tx * (p[sz + 1] - p[sz]), d = p[sz + sy] + tx * (p[sz + sy + 1] - p[sz + sy]);
    float e = a + ty * (b - a), f = c + ty * (d - c);
    return 1.6f * (e + tz * (f - e)); /* 1.6: brings the interpolated field's std near 1 */
}

void sy_noise_free(sy_noise *n)
{
    if (!n) return;
    free(n->v);
    n->v = NULL;
}
