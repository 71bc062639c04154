/*
 * node/synth_internal.h — pieces shared by the synthetic generator's files:
 *   synth_anatomy.c  the T1 anatomy, its tissue memberships and derived maps
 *   synth_case.c     one patient: deformation, tumour, modalities, scanner, files
 *   synth.c          sites, the output folder, JSON, montages, the parallel loop
 * Coordinates are millimetres in the anatomy's voxel frame (voxel i's centre is
 * at i·dx); patient volumes cover the same field of view on their own grid.
 */
#ifndef FS_SYNTH_INTERNAL_H
#define FS_SYNTH_INTERNAL_H

#include <stdint.h>
#include "common/rng.h"
#include "kernels/status.h"

/* Channels of the anatomy, interleaved per voxel (uint8, 0..255). */
enum { SY_T1 = 0, SY_CSF, SY_GM, SY_WM, SY_MASK, SY_SURF, SY_VENT, SY_WMS, SY_NCH };
#define SY_T1_SCALE 200.0f /* stored = t1 / WM mean · 200 */

typedef struct {
    int nx, ny, nz;
    float dx, dy, dz;      /* mm */
    uint8_t *ch;           /* [nz][ny][nx][SY_NCH]                                    */
    float gmm_mean[3];     /* CSF, GM, WM intensities of the fitted mixture (raw units) */
    float gmm_sd[3];
} sy_anatomy;

/* Load a skull-stripped T1 volume and derive the channels: normalised T1,
 * CSF/GM/WM memberships (3-class Gaussian mixture, posterior = soft partial
 * volume), brain mask, nearness to the brain surface and to the ventricles,
 * and the white-matter membership blurred over a few mm (edema spread). */
fs_status sy_anatomy_load(const char *path, sy_anatomy *a);
void sy_anatomy_free(sy_anatomy *a);

/* Trilinear sample of every channel at (x, y, z) mm; out[c] in 0..1 (T1 in
 * units of the WM mean). Outside the volume: zeros. */
void sy_anatomy_sample(const sy_anatomy *a, float x, float y, float z, float out[SY_NCH]);

/* Smooth random field: N(0,1) values on a lattice of spacing `sp` mm over a
 * box, interpolated with smoothstep weights (continuous, C1 inside cells). */
typedef struct {
    int nx, ny, nz;
    float ox, oy, oz, inv_sp;
    float *v;
} sy_noise;

fs_status sy_noise_init(sy_noise *n, fs_rng *r, float x0, float y0, float z0, float x1, float y1,
                        float z1, float sp);
float sy_noise_eval(const sy_noise *n, float x, float y, float z);
void sy_noise_free(sy_noise *n);

/* One site's scanner, cohort and annotation style. */
typedef struct {
    int index;             /* 1-based                                                 */
    char profile[48];      /* a short description                                     */
    int ncases;
    float vox[3];          /* mm                                                      */
    int nx, ny, nz;
    int datatype;          /* NIFTI_TYPE_INT16 (with scl_slope), _UINT16, _FLOAT32     */
    float store_scale;     /* stored intensity of the WM-level signal                 */
    /* scanner */
    float response[4];     /* per modality: gamma (response_kind 0) or knee (1)       */
    int response_kind;     /* 0 power law, 1 saturating x(1+k)/(1+kx)                 */
    float contrast[4];     /* per modality: scale of the tissue contrast around WM    */
    float bias_amp;        /* std of the log bias field                               */
    float bias_sp;         /* its lattice spacing, mm                                 */
    float noise;           /* Rician sigma, in units of the WM signal                 */
    float psf_xy, psf_z;   /* Gaussian blur sigma, mm                                 */
    /* cohort */
    float radius_mean;     /* mm, log-normal                                          */
    float radius_sd;       /* of log radius                                           */
    float p_hgg, p_necrotic; /* high grade; necrotic given high grade                 */
    float edema_mean;      /* edema extent in units of the core radius                */
    float pvh_mean;        /* strength of periventricular hyperintensities            */
    float lesions_mean;    /* mean number of small white-matter lesions               */
    /* annotation */
    float edema_thr;       /* edema labelled where its probability exceeds this       */
    float label_jitter;    /* amplitude of border noise in the outlines               */
} sy_site;

/* Per-case record for site.json and the montage. */
typedef struct {
    char id[32];
    char grade[16];        /* "HGG-necrotic", "HGG-solid", "LGG"                      */
    float centre[3], radius, edema_extent, mass_effect;
    int nlesions;
    long nvox[5];          /* voxels labelled 0,1,2,4 (index 0,1,2,3) and brain        */
    int mz;                /* montage slice (most tumour voxels)                       */
    int mw, mh;            /* montage slice size (nx, ny)                              */
    uint8_t *mimg;         /* [5][mh][mw]: t1,t1ce,t2,flair grey and labels 0..3       */
    fs_status status;
} sy_case_result;

/* Generate one case (RNG stream derived from seed, site and case number) and
 * write its five volumes into site_dir/ID/. */
fs_status sy_case_generate(const sy_anatomy *a, const sy_site *s, int case_no, uint64_t seed,
                           const char *site_dir, sy_case_result *res);

#endif
