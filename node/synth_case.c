/*
 * node/synth_case.c — one synthetic patient, from anatomy to five NIfTI files.
 *
 * Steps (all randomness from the case's own RNG stream, so cases can be made
 * in any order on any number of threads and still give the same bytes):
 *  1. Patient draw: grade (high grade with a necrotic core, high grade solid,
 *     low grade), core radius, lobulation, edema extent, mass effect, a small
 *     affine and a smooth non-linear warp of the anatomy, white-matter lesions,
 *     periventricular hyperintensity strength, contrast jitter.
 *  2. Per voxel of the site's grid: warp to the anatomy, sample tissue
 *     memberships and T1; normal-tissue signals per modality (class intensities
 *     plus the T1's own fine detail); confounders (T1ce vessels and choroid
 *     plexus, FLAIR/T2-bright periventricular caps and lesions, T2 flow voids);
 *     the tumour as soft compartments — core s < 1 of a lobulated distance s,
 *     necrosis inside it, heterogeneous enhancement, infiltrative edema whose
 *     probability decays softly with s and reaches further along white matter.
 *     Labels follow the site's annotation style: edema where its probability
 *     exceeds the site's threshold, borders perturbed by smooth label noise.
 *  3. Scanner: Gaussian PSF (thick slices at some sites), smooth multiplicative
 *     bias field, Rician noise, a non-linear intensity response, storage in the
 *     site's datatype (int16 + scl_slope, uint16 12-bit, float32).
 * Tested by tests/test_synth_props.c and tests/test_synth.sh.
 */
#include "node/synth_internal.h"
#include "node/nifti_io.h"
#include "common/fsutil.h"
#include "common/log.h"

#include <math.h>
#include <nifti1.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { M_T1 = 0, M_T1CE, M_T2, M_FLAIR, NMOD = 4 };
static const char *const mod_names[NMOD] = {"t1", "t1ce", "t2", "flair"};

/* Signal of each class relative to white matter (= 1). T1 itself comes from
 * the anatomy; its row here is used for the anatomy's residual detail only. */
static const float cls_csf[NMOD] = {0.30f, 0.32f, 2.30f, 0.22f};
static const float cls_gm[NMOD] = {0.72f, 0.74f, 1.38f, 1.28f};
/* Tumour compartments, same units: edema, non-enhancing core, enhancing,
 * necrosis, and the FLAIR/T2-bright non-tumour lesions. */
static const float cmp_edema[NMOD] = {0.80f, 0.80f, 1.70f, 1.50f};
static const float cmp_net[NMOD] = {0.72f, 0.76f, 1.72f, 1.50f};
static const float cmp_enh[NMOD] = {0.72f, 1.70f, 1.42f, 1.30f};
static const float cmp_nec[NMOD] = {0.42f, 0.45f, 2.05f, 0.95f};
static const float cmp_lesion[NMOD] = {0.85f, 0.86f, 1.62f, 1.52f};

static inline float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float clampf(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; }

typedef struct {
    int hgg, necrotic;
    float c[3], r0, lob, s_nec, enh_bias, re, wm_pref, mass;
    float rot[3][3], centre_fov[3];
    float warp_amp[2];
    float pvh;
    int nles;
    float les_c[12][3], les_r[12];
    float jit[4][NMOD]; /* per compartment (edema, net, enh, nec) contrast jitter */
    float vessel_amp, choroid_amp;
} patient;

/* Pick a point in the anatomy that is brain tissue (not CSF), away from the
 * surface; wm_min > 0 asks for white matter. Returns 0 if none was found. */
static int pick_point(const sy_anatomy *a, fs_rng *r, float wm_min, float out[3])
{
    float ch[SY_NCH];
    for (int t = 0; t < 20000; t++) {
        float x = (0.1f + 0.8f * (float)fs_rng_uniform(r)) * a->nx * a->dx;
        float y = (0.1f + 0.8f * (float)fs_rng_uniform(r)) * a->ny * a->dy;
        float z = (0.1f + 0.8f * (float)fs_rng_uniform(r)) * a->nz * a->dz;
        sy_anatomy_sample(a, x, y, z, ch);
        if (ch[SY_MASK] > 0.99f && ch[SY_SURF] < 0.02f && ch[SY_CSF] < 0.25f && ch[SY_VENT] < 0.2f &&
            ch[SY_WM] >= wm_min && ch[SY_GM] + ch[SY_WM] > 0.75f) {
            out[0] = x; out[1] = y; out[2] = z;
            return 1;
        }
    }
    return 0;
}

/* Rotation matrix from three small angles (radians) times a scale per axis. */
static void make_affine(float ax, float ay, float az, const float sc[3], float m[3][3])
{
    float cx = cosf(ax), sx = sinf(ax), cy = cosf(ay), sy = sinf(ay), cz = cosf(az), sz = sinf(az);
    float rx[3][3] = {{1, 0, 0}, {0, cx, -sx}, {0, sx, cx}};
    float ry[3][3] = {{cy, 0, sy}, {0, 1, 0}, {-sy, 0, cy}};
    float rz[3][3] = {{cz, -sz, 0}, {sz, cz, 0}, {0, 0, 1}};
    float t[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            t[i][j] = 0;
            for (int k = 0; k < 3; k++) t[i][j] += ry[i][k] * rx[k][j];
        }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            m[i][j] = 0;
            for (int k = 0; k < 3; k++) m[i][j] += rz[i][k] * t[k][j];
            m[i][j] *= sc[j];
        }
}

static void draw_patient(const sy_anatomy *a, const sy_site *s, fs_rng *r, patient *p)
{
    memset(p, 0, sizeof *p);
    p->hgg = fs_rng_uniform(r) < s->p_hgg;
    p->necrotic = p->hgg && fs_rng_uniform(r) < s->p_necrotic;
    p->r0 = clampf(s->radius_mean * expf(s->radius_sd * (float)fs_rng_normal(r)), 6.0f, 28.0f);
    if (!p->hgg) p->r0 = clampf(p->r0 * 1.1f, 6.0f, 28.0f);
    if (!pick_point(a, r, 0.0f, p->c)) {
        p->c[0] = 0.5f * a->nx * a->dx; p->c[1] = 0.55f * a->ny * a->dy; p->c[2] = 0.6f * a->nz * a->dz;
    }
    p->lob = 0.12f + 0.22f * (float)fs_rng_uniform(r);
    p->s_nec = 0.45f + 0.3f * (float)fs_rng_uniform(r);
    p->enh_bias = p->necrotic ? 1.0f + 0.6f * (float)fs_rng_uniform(r)
                              : -0.3f + 0.9f * (float)fs_rng_uniform(r);
    p->re = clampf(s->edema_mean * expf(0.22f * (float)fs_rng_normal(r)), 1.15f, 3.6f);
    if (!p->hgg) p->re = clampf(0.75f * p->re, 1.1f, 3.0f);
    /* Whole tumour within ~45 mm of the centre (about 380 cm3 at most). */
    if (p->re * p->r0 > 45.0f) p->re = fmaxf(1.1f, 45.0f / p->r0);
    p->wm_pref = 0.35f + 0.5f * (float)fs_rng_uniform(r);
    p->mass = p->hgg ? 0.08f + 0.3f * (float)fs_rng_uniform(r) : 0.12f * (float)fs_rng_uniform(r);
    float sc0 = 1.0f + 0.03f * (float)fs_rng_normal(r);
    float sc[3];
    for (int i = 0; i < 3; i++) sc[i] = sc0 * (1.0f + 0.015f * (float)fs_rng_normal(r));
    float ang[3];
    for (int i = 0; i < 3; i++) ang[i] = 0.045f * (float)fs_rng_normal(r);
    make_affine(ang[0], ang[1], ang[2], sc, p->rot);
    p->centre_fov[0] = 0.5f * a->nx * a->dx;
    p->centre_fov[1] = 0.5f * a->ny * a->dy;
    p->centre_fov[2] = 0.5f * a->nz * a->dz;
    p->warp_amp[0] = 2.0f + 1.5f * (float)fs_rng_uniform(r);
    p->warp_amp[1] = 0.6f + 0.8f * (float)fs_rng_uniform(r);
    p->pvh = clampf(s->pvh_mean * expf(0.5f * (float)fs_rng_normal(r)), 0.0f, 1.5f);
    /* Lesion count: Poisson-like via a sum of Bernoulli draws. */
    for (int i = 0; i < 12; i++)
        if (fs_rng_uniform(r) < s->lesions_mean / 12.0f) p->nles++;
    for (int i = 0; i < p->nles; i++) {
        if (!pick_point(a, r, 0.6f, p->les_c[i])) memcpy(p->les_c[i], p->c, sizeof p->c);
        p->les_r[i] = 1.5f + 3.0f * (float)fs_rng_uniform(r);
    }
    for (int k = 0; k < 4; k++)
        for (int m = 0; m < NMOD; m++) p->jit[k][m] = 1.0f + 0.07f * (float)fs_rng_normal(r);
    p->vessel_amp = 0.6f + 0.5f * (float)fs_rng_uniform(r);
    p->choroid_amp = 0.5f + 0.4f * (float)fs_rng_uniform(r);
}

/* Separable Gaussian blur of v (nx·ny·nz, x fastest) with sigmas in voxels;
 * zero outside the volume. tmp has the volume's size. Axes with sigma < 0.2
 * are left alone. */
static void gauss_blur(float *v, float *tmp, int nx, int ny, int nz, const float sig[3])
{
    int n[3] = {nx, ny, nz};
    size_t stride[3] = {1, (size_t)nx, (size_t)nx * ny};
    for (int ax = 0; ax < 3; ax++) {
        if (sig[ax] < 0.2f) continue;
        int rad = (int)ceilf(3 * sig[ax]);
        if (rad > 32) rad = 32;
        float k[65], ks = 0;
        for (int i = -rad; i <= rad; i++) ks += k[i + rad] = expf(-0.5f * i * i / (sig[ax] * sig[ax]));
        for (int i = 0; i <= 2 * rad; i++) k[i] /= ks;
        size_t total = (size_t)nx * ny * nz;
        memcpy(tmp, v, sizeof(float) * total);
        for (size_t idx = 0; idx < total; idx++) {
            int pos = (int)((idx / stride[ax]) % (size_t)n[ax]);
            float acc = 0;
            for (int i = -rad; i <= rad; i++) {
                int q = pos + i;
                if (q < 0 || q >= n[ax]) continue;
                acc += k[i + rad] * tmp[idx + (ptrdiff_t)i * (ptrdiff_t)stride[ax]];
            }
            v[idx] = acc;
        }
    }
}

/* Window [lo, hi] of brain voxels in one slice: 1st and 99.5th percentiles. */
static void slice_window(const float *img, const uint8_t *mask, size_t n, float *lo, float *hi)
{
    float mx = 0;
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++)
        if (mask[i]) { if (img[i] > mx) mx = img[i]; cnt++; }
    *lo = 0; *hi = mx > 0 ? mx : 1;
    if (!cnt || !(mx > 0)) return;
    size_t h[512] = {0};
    for (size_t i = 0; i < n; i++)
        if (mask[i]) h[(int)fminf(511.0f, img[i] / mx * 511.0f)]++;
    size_t c = 0;
    int b_lo = -1;
    for (int b = 0; b < 512; b++) {
        c += h[b];
        if (b_lo < 0 && c >= cnt / 100) b_lo = b;
        if (c >= cnt - cnt / 200) { *hi = (b + 1) * mx / 511.0f; break; }
    }
    *lo = b_lo > 0 ? b_lo * mx / 511.0f : 0;
    if (*hi <= *lo) *hi = *lo + 1e-6f;
}

fs_status sy_case_generate(const sy_anatomy *a, const sy_site *s, int case_no, uint64_t seed,
                           const char *site_dir, sy_case_result *res)
{
    fs_rng rng;
    fs_rng_seed(&rng, seed, 0x1000000ULL * (uint64_t)s->index + (uint64_t)case_no);
    snprintf(res->id, sizeof res->id, "site%d_case%03d", s->index, case_no);
    patient p;
    draw_patient(a, s, &rng, &p);
    snprintf(res->grade, sizeof res->grade, "%s", p.hgg ? (p.necrotic ? "HGG-necrotic" : "HGG-solid") : "LGG");
    memcpy(res->centre, p.c, sizeof p.c);
    res->radius = p.r0;
    res->edema_extent = p.re;
    res->mass_effect = p.mass;
    res->nlesions = p.nles;

    const int nx = s->nx, ny = s->ny, nz = s->nz;
    const size_t n = (size_t)nx * ny * nz;
    const float fx = a->nx * a->dx, fy = a->ny * a->dy, fz = a->nz * a->dz; /* field of view */
    const float off[3] = {-0.5f * a->dx, -0.5f * a->dy, -0.5f * a->dz};

    /* Smooth fields. Whole field of view: warp (2 scales × 3 axes), texture,
     * vessels (2), choroid, bias (shared + one per modality). Tumour region:
     * lobulation, necrosis border, enhancement, edema fingers, label noise. */
    enum { F_W0X, F_W0Y, F_W0Z, F_W1X, F_W1Y, F_W1Z, F_TEX, F_V1, F_V2, F_CHO, F_B, F_B0, F_B1, F_B2, F_B3,
           F_LOB, F_NEC, F_ENH, F_ED, F_LAB, F_TTEX, NF };
    sy_noise f[NF];
    memset(f, 0, sizeof f);
    float sp[NF] = {38, 38, 38, 15, 15, 15, 3.5f, 9, 9, 4, s->bias_sp, s->bias_sp, s->bias_sp, s->bias_sp,
                    s->bias_sp, clampf(0.5f * p.r0, 4, 14), clampf(0.3f * p.r0, 3, 8), 5, 8, 3.5f, 3};
    float reach = p.r0 * (p.re * 1.8f + 0.6f) + 10.0f;
    fs_status st = FS_OK;
    for (int i = 0; i < NF && st == FS_OK; i++) {
        if (i >= F_LOB)
            st = sy_noise_init(&f[i], &rng, p.c[0] - reach, p.c[1] - reach, p.c[2] - reach, p.c[0] + reach,
                               p.c[1] + reach, p.c[2] + reach, sp[i]);
        else
            st = sy_noise_init(&f[i], &rng, -20, -20, -20, fx + 20, fy + 20, fz + 20, sp[i]);
    }
    float *img[NMOD] = {0};
    uint8_t *lab = malloc(n), *mask = malloc(n);
    float *tmp = malloc(sizeof(float) * n);
    for (int m = 0; m < NMOD; m++) img[m] = calloc(n, sizeof(float));
    if (st == FS_OK && (!lab || !mask || !tmp || !img[0] || !img[1] || !img[2] || !img[3])) st = FS_ERR_NOMEM;

    const float gm_t1 = a->gmm_mean[1] / a->gmm_mean[2], csf_t1 = a->gmm_mean[0] / a->gmm_mean[2];
    const float rm = p.r0 * 1.6f;
    const float ed_width = 0.13f * p.re, core_w = clampf(1.0f / p.r0, 0.04f, 0.12f);
    /* A core without necrosis has an infiltrative, ill-defined margin: its
     * signal fades into the edema over a few mm while the label stops at s = 1. */
    const float margin_w = p.necrotic ? core_w : 3.0f * core_w;
    for (int k = 0; k < nz && st == FS_OK; k++)
        for (int j = 0; j < ny; j++)
            for (int i = 0; i < nx; i++) {
                size_t idx = ((size_t)k * ny + j) * nx + i;
                float x[3] = {off[0] + (i + 0.5f) * s->vox[0], off[1] + (j + 0.5f) * s->vox[1],
                              off[2] + (k + 0.5f) * s->vox[2]};
                /* Patient space -> anatomy: mass effect, warp, affine. */
                float d[3] = {x[0] - p.c[0], x[1] - p.c[1], x[2] - p.c[2]};
                float r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
                float shrink = 1.0f - p.mass * expf(-r2 / (rm * rm));
                float y[3];
                for (int q = 0; q < 3; q++) y[q] = p.c[q] + d[q] * shrink;
                float w[3];
                for (int q = 0; q < 3; q++)
                    w[q] = y[q] + p.warp_amp[0] * sy_noise_eval(&f[F_W0X + q], y[0], y[1], y[2]) +
                           p.warp_amp[1] * sy_noise_eval(&f[F_W1X + q], y[0], y[1], y[2]);
                float u[3];
                for (int q = 0; q < 3; q++) {
                    u[q] = p.centre_fov[q];
                    for (int t = 0; t < 3; t++) u[q] += p.rot[q][t] * (w[t] - p.centre_fov[t]);
                }
                float ch[SY_NCH];
                sy_anatomy_sample(a, u[0], u[1], u[2], ch);
                lab[idx] = 0;
                mask[idx] = ch[SY_MASK] > 0.5f;
                if (!mask[idx]) continue;
                float msum = ch[SY_CSF] + ch[SY_GM] + ch[SY_WM];
                float pc = msum > 0 ? ch[SY_CSF] / msum : 0, pg = msum > 0 ? ch[SY_GM] / msum : 0;
                float pw = msum > 0 ? ch[SY_WM] / msum : 1;
                float t1 = ch[SY_T1];
                /* Detail of the real T1 that the classes do not explain. */
                float resid = t1 - (pc * csf_t1 + pg * gm_t1 + pw);
                float tex = 0.025f * sy_noise_eval(&f[F_TEX], x[0], x[1], x[2]);
                float v[NMOD];
                v[M_T1] = t1 * (1.0f + 0.5f * tex);
                v[M_T1CE] = (pc * cls_csf[M_T1CE] + pg * cls_gm[M_T1CE] + pw + 0.9f * resid) * (1.0f + 0.5f * tex);
                v[M_T2] = (pc * cls_csf[M_T2] + pg * cls_gm[M_T2] + pw - 1.2f * resid) * (1.0f + tex);
                v[M_FLAIR] = (pc * cls_csf[M_FLAIR] + pg * cls_gm[M_FLAIR] + pw - 0.8f * resid) * (1.0f + tex);
                /* Vessels: tubes where two smooth fields cross zero, mostly in
                 * sulci and near the surface; choroid plexus in the ventricles. */
                float v1 = sy_noise_eval(&f[F_V1], x[0], x[1], x[2]), v2 = sy_noise_eval(&f[F_V2], x[0], x[1], x[2]);
                float tube = expf(-(v1 * v1 + v2 * v2) / 0.08f);
                float vw = 0.15f + 0.85f * clampf(ch[SY_SURF] * 1.5f + pc, 0, 1);
                float vessel = p.vessel_amp * tube * vw;
                float cho = ch[SY_VENT] * pc * sigm((sy_noise_eval(&f[F_CHO], x[0], x[1], x[2]) - 0.6f) / 0.15f);
                v[M_T1CE] += vessel + p.choroid_amp * cho;
                v[M_T2] *= 1.0f - 0.45f * tube * vw;
                v[M_FLAIR] += 0.4f * cho;
                /* Periventricular caps and white-matter lesions (not tumour). */
                float les = p.pvh * pw * clampf(ch[SY_VENT] * 1.3f - 0.15f, 0, 1) *
                            (0.7f + 0.3f * sy_noise_eval(&f[F_TEX], x[1], x[2], x[0]));
                for (int l = 0; l < p.nles; l++) {
                    float e0 = u[0] - p.les_c[l][0], e1 = u[1] - p.les_c[l][1], e2 = u[2] - p.les_c[l][2];
                    float q2 = (e0 * e0 + e1 * e1 + e2 * e2) / (p.les_r[l] * p.les_r[l]);
                    if (q2 < 9) les += expf(-q2);
                }
                les = clampf(les, 0, 1);
                for (int m = 0; m < NMOD; m++) v[m] += les * (cmp_lesion[m] - v[m]) * (m == M_T2 || m == M_FLAIR ? 1.0f : 0.5f);
                /* Tumour. */
                if (fabsf(d[0]) < reach && fabsf(d[1]) < reach && fabsf(d[2]) < reach) {
                    float dist = sqrtf(r2) / p.r0;
                    float sd = dist - p.lob * sy_noise_eval(&f[F_LOB], x[0], x[1], x[2]);
                    float core = sigm((1.0f - sd) / margin_w);
                    float nl = sy_noise_eval(&f[F_NEC], x[0], x[1], x[2]);
                    float nec = p.necrotic ? sigm((p.s_nec + 0.1f * nl - sd) / core_w) : 0;
                    float en = sy_noise_eval(&f[F_ENH], x[0], x[1], x[2]);
                    float enh = p.hgg ? sigm((p.enh_bias + 0.8f * en + 1.5f * (sd - p.s_nec)) / 0.25f) : 0;
                    float fing = sy_noise_eval(&f[F_ED], x[0], x[1], x[2]);
                    float re_eff = p.re * (1.0f + p.wm_pref * (ch[SY_WMS] - 0.5f)) + 0.18f * p.re * fing;
                    float pe = sigm((re_eff - sd) / ed_width) * (1.0f - pc);
                    float tt = 1.0f + 0.06f * sy_noise_eval(&f[F_TTEX], x[0], x[1], x[2]);
                    for (int m = 0; m < NMOD; m++) {
                        float normal = v[m] + pe * (cmp_edema[m] * p.jit[0][m] * tt - v[m]);
                        float solid = nec * cmp_nec[m] * p.jit[3][m] +
                                      (1 - nec) * (enh * cmp_enh[m] * p.jit[2][m] + (1 - enh) * cmp_net[m] * p.jit[1][m]);
                        v[m] = (1 - core) * normal + core * solid * tt;
                    }
                    /* Annotation: the site's outline style plus border noise. */
                    float ln = s->label_jitter * sy_noise_eval(&f[F_LAB], x[0], x[1], x[2]);
                    if (sd < 1.0f + 0.08f * ln) {
                        if (p.necrotic && sd < p.s_nec + 0.1f * nl + 0.05f * ln) lab[idx] = 1;
                        else lab[idx] = enh > 0.5f ? 4 : 1;
                    } else if (pe > 0.1f && pe > s->edema_thr + 0.1f * ln) {
                        lab[idx] = 2;
                    }
                }
                for (int m = 0; m < NMOD; m++) {
                    float c = 1.0f + s->contrast[m] * (v[m] - 1.0f);
                    img[m][idx] = c > 0 ? c : 0;
                }
            }

    /* Scanner: PSF, bias, Rician noise, intensity response. */
    if (st == FS_OK) {
        float sig[3] = {s->psf_xy / s->vox[0], s->psf_xy / s->vox[1], s->psf_z / s->vox[2]};
        for (int m = 0; m < NMOD; m++) gauss_blur(img[m], tmp, nx, ny, nz, sig);
        for (int k = 0; k < nz; k++)
            for (int j = 0; j < ny; j++)
                for (int i = 0; i < nx; i++) {
                    size_t idx = ((size_t)k * ny + j) * nx + i;
                    if (!mask[idx]) {
                        for (int m = 0; m < NMOD; m++) img[m][idx] = 0;
                        continue;
                    }
                    float x[3] = {off[0] + (i + 0.5f) * s->vox[0], off[1] + (j + 0.5f) * s->vox[1],
                                  off[2] + (k + 0.5f) * s->vox[2]};
                    float shared = sy_noise_eval(&f[F_B], x[0], x[1], x[2]);
                    for (int m = 0; m < NMOD; m++) {
                        float b = expf(s->bias_amp * (0.8f * shared + 0.5f * sy_noise_eval(&f[F_B0 + m], x[0], x[1], x[2])));
                        float sv = img[m][idx] * b;
                        float n1 = s->noise * (float)fs_rng_normal(&rng), n2 = s->noise * (float)fs_rng_normal(&rng);
                        sv = sqrtf((sv + n1) * (sv + n1) + n2 * n2);
                        if (s->response_kind == 0) sv = powf(sv, s->response[m]);
                        else sv = sv * (1 + s->response[m]) / (1 + s->response[m] * sv);
                        img[m][idx] = sv * s->store_scale;
                    }
                }
    }

    /* Label counts and the montage slice (most tumour voxels). */
    memset(res->nvox, 0, sizeof res->nvox);
    int best_z = nz / 2;
    long best = -1;
    for (int k = 0; k < nz && st == FS_OK; k++) {
        long cnt = 0;
        for (size_t q = (size_t)k * nx * ny; q < (size_t)(k + 1) * nx * ny; q++) {
            int c = lab[q] == 4 ? 3 : lab[q];
            if (mask[q]) res->nvox[4]++;
            if (c) { res->nvox[c]++; cnt++; }
            else if (mask[q]) res->nvox[0]++;
        }
        if (cnt > best) { best = cnt; best_z = k; }
    }
    res->mz = best_z;
    res->mw = nx;
    res->mh = ny;
    res->mimg = st == FS_OK ? malloc((size_t)5 * nx * ny) : NULL;
    if (st == FS_OK && !res->mimg) st = FS_ERR_NOMEM;
    if (st == FS_OK) {
        size_t so = (size_t)best_z * nx * ny, sn = (size_t)nx * ny;
        for (int m = 0; m < NMOD; m++) {
            float lo, hi;
            slice_window(img[m] + so, mask + so, sn, &lo, &hi);
            for (size_t q = 0; q < sn; q++) {
                float g = (img[m][so + q] - lo) / (hi - lo);
                res->mimg[m * sn + q] = (uint8_t)(clampf(g, 0, 1) * 255.0f + 0.5f);
            }
        }
        for (size_t q = 0; q < sn; q++) res->mimg[4 * sn + q] = lab[so + q] == 4 ? 3 : lab[so + q];
    }

    /* Files. */
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/%s", site_dir, res->id);
    if (st == FS_OK) st = fs_mkdir_p(dir);
    for (int m = 0; m < NMOD && st == FS_OK; m++) {
        snprintf(path, sizeof path, "%s/%s_%s.nii.gz", dir, res->id, mod_names[m]);
        float slope = 0;
        if (s->datatype == NIFTI_TYPE_INT16) {
            float mx = 0;
            for (size_t q = 0; q < n; q++) if (img[m][q] > mx) mx = img[m][q];
            slope = mx > 0 ? mx / 32000.0f : 1.0f;
        } else if (s->datatype == NIFTI_TYPE_UINT16) {
            for (size_t q = 0; q < n; q++) img[m][q] = fminf(65535.0f, roundf(img[m][q]));
        } else {
            /* float32 scanners still quantise: keep 1/64 of a unit. */
            for (size_t q = 0; q < n; q++) img[m][q] = roundf(img[m][q] * 64.0f) / 64.0f;
        }
        st = fs_nifti_write(path, nx, ny, nz, s->vox[0], s->vox[1], s->vox[2], img[m], s->datatype, slope, 0);
    }
    if (st == FS_OK) {
        for (size_t q = 0; q < n; q++) tmp[q] = lab[q];
        snprintf(path, sizeof path, "%s/%s_seg.nii.gz", dir, res->id);
        st = fs_nifti_write(path, nx, ny, nz, s->vox[0], s->vox[1], s->vox[2], tmp, NIFTI_TYPE_UINT8, 0, 0);
    }
    for (int i = 0; i < NF; i++) sy_noise_free(&f[i]);
    for (int m = 0; m < NMOD; m++) free(img[m]);
    free(lab);
    free(mask);
    free(tmp);
    res->status = st;
    return st;
}
