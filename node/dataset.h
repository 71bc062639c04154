/*
 * node/dataset.h — BraTS-layout cases on disk -> normalised 2D training slices.
 *
 * Layout (DESIGN.md §5): SITE_DIR/CASE_ID/CASE_ID_{t1,t1ce,t2,flair,seg}.nii[.gz].
 * Entries of SITE_DIR that are not directories (montage.png, site.json) are
 * ignored; a directory without the five files is an error naming what is
 * missing.
 *
 * Geometry: NIfTI stores x fastest, then y, then z. An axial slice is one z; as
 * an image it has H = ny rows and W = nx columns. Each case is cropped to the
 * brain's bounding box in x/y (voxels where any modality is non-zero), padded to
 * a square centred on that box, and resized to size×size (bilinear for images,
 * nearest for labels). Slices outside the brain's z range are dropped.
 *
 * Intensities: per volume and modality, z-score over brain voxels; voxels
 * outside the brain are 0 after normalisation.
 *
 * Labels: BraTS 0,1,2,4 on disk <-> classes 0,1,2,3 in memory (4 stored as 3).
 */
#ifndef FS_DATASET_H
#define FS_DATASET_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/status.h"
#include "common/rng.h"

#define FS_NMOD 4   /* t1, t1ce, t2, flair — channel order everywhere */
#define FS_NCLS 4   /* background, necrotic core, edema, enhancing    */

extern const char *const fs_modality_names[FS_NMOD]; /* "t1","t1ce","t2","flair" */

typedef struct {
    char id[128];        /* CASE_ID                                          */
    char dir[1024];      /* the case directory                               */
    char ref_path[1100]; /* the t1 file: geometry template for predictions   */
    int nx, ny, nz;      /* native grid                                      */
    int x0, x1, y0, y1;  /* brain box, half-open, in native voxels           */
    int z0, z1;          /* brain z range, half-open; nslices = z1 - z0      */
    int sq_x0, sq_y0, sq_side; /* the square (may extend outside the volume)
                                  that is resized to size×size               */
    int size;            /* S: slices are S×S                                */
    int nslices;
    float *img;          /* [nslices][FS_NMOD][S][S] normalised              */
    uint8_t *lab;        /* [nslices][S][S] classes 0..3 (NULL if no seg)    */
    uint8_t *tumour;     /* [nslices] 1 when the slice holds any tumour label */
    uint8_t *seg_native; /* [nz][ny][nx] classes 0..3 (NULL if no seg)       */
} fs_case;

/* Load one case directory (4 modalities; the seg too when need_seg). Every
 * problem — missing modality, unreadable or corrupt file, shapes that differ,
 * an unknown label — is logged naming the file and returns an error.
 * With need_seg = 0 a missing seg is not an error (lab, seg_native NULL), but
 * a seg that is present is still loaded and checked. CASE_ID_x.nii.gz is
 * preferred over CASE_ID_x.nii when both exist (with a warning). */
fs_status fs_case_load(const char *case_dir, int size, int need_seg, fs_case *out);
void fs_case_free(fs_case *c); /* NULL-safe; leaves *c zeroed */

typedef struct {
    fs_case *cases;
    int ncases;
} fs_dataset;

/* Load every case of SITE_DIR (sorted by CASE_ID, so the order is stable).
 * An empty SITE_DIR is an error. */
fs_status fs_dataset_load(const char *site_dir, int size, fs_dataset *out);
void fs_dataset_free(fs_dataset *ds);

/* Draws training batches from a set of cases: a slice is a tumour slice with
 * probability tumour_frac (when the set has any), otherwise any brain slice;
 * each drawn slice is flipped left-right with probability 1/2 and up-down with
 * probability flip_ud.
 * Precisely: with probability tumour_frac a slice holding tumour, otherwise a
 * slice without tumour, so the drawn tumour fraction is tumour_frac (when the
 * set has both kinds; if it has only one kind, any slice). tumour_frac < 0
 * draws uniformly over all brain slices. Every case needs labels and the same
 * size; the cases must outlive the sampler. Same seed, same batches. */
typedef struct {
    const fs_case *const *cases;
    int ncases;
    float tumour_frac, flip_ud;
    fs_rng rng;
    /* private: flattened slice index */
    int *all_idx, *tum_idx; /* pairs (case, slice) packed as case*65536+slice */
    int nall, ntum;
} fs_sampler;

fs_status fs_sampler_init(fs_sampler *s, const fs_case *const *cases, int ncases,
                          float tumour_frac, float flip_ud, uint64_t seed);
void fs_sampler_free(fs_sampler *s);
/* x: [batch][FS_NMOD][S][S], y: [batch][S][S]; all cases share one size S. */
void fs_sampler_batch(fs_sampler *s, int batch, float *x, uint8_t *y);

/* Map per-slice class probabilities back to the native grid: probs is
 * [nslices][FS_NCLS][S][S]; each native voxel inside the brain's z range and
 * the square takes the arg-max of the bilinearly interpolated probabilities;
 * every other voxel is background. out: [nz][ny][nx] classes 0..3. */
void fs_case_probs_to_native(const fs_case *c, const float *probs, uint8_t *out);

/* Classes 0..3 -> BraTS labels 0,1,2,4 in place (for fs_nifti_write_labels). */
void fs_classes_to_brats(uint8_t *v, size_t n);

#endif
