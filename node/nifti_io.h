/*
 * node/nifti_io.h — NIfTI-1/2 volumes (.nii, .nii.gz) through nifticlib.
 *
 * Reading accepts every datatype NIfTI allows for scalar volumes (u/int8..64,
 * float32/64; complex and RGB are refused) and applies scl_slope/scl_inter.
 * Writing keeps the geometry (qform/sform, pixdim) of a reference volume.
 */
#ifndef FS_NIFTI_IO_H
#define FS_NIFTI_IO_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/status.h"

typedef struct {
    int nx, ny, nz;
    float dx, dy, dz;  /* voxel size in mm */
    float *data;       /* nx*ny*nz scaled values, x fastest */
} fs_volume;

/* Read a 3D scalar volume (a 4D file with one time point is accepted).
 * Errors are logged naming `path` and the problem (missing, corrupt or
 * truncated, unsupported datatype, not 3D, non-finite scaling).
 * A zero or non-finite scl_slope means "no scaling" (the NIfTI rule, which
 * nifticlib applies when it parses the header). On error *out is zeroed.
 * Status: FS_ERR_NOT_FOUND (no such file), FS_ERR_FORMAT (not NIfTI, corrupt,
 * truncated, non-positive or absurd dims), FS_ERR_UNSUPPORTED (complex, RGB,
 * ...), FS_ERR_MISMATCH (not 3D), FS_ERR_IO, FS_ERR_NOMEM. */
fs_status fs_nifti_read(const char *path, fs_volume *out);
void fs_volume_free(fs_volume *v); /* NULL-safe */

/* Write a uint8 label volume (BraTS labels 0,1,2,4) with the geometry of the
 * NIfTI file at ref_path. Written to a temporary name, then renamed.
 * Any other label value is refused (FS_ERR_ARG): convert classes 0..3 with
 * fs_classes_to_brats (dataset.h) first. */
fs_status fs_nifti_write_labels(const char *path, const char *ref_path, const uint8_t *labels);

/* Write a volume of the given datatype (NIFTI_TYPE_INT16, _UINT8, _FLOAT32, ...)
 * from float values with optional scaling (stored = (value − inter) / slope;
 * slope 0 = no scaling), voxel sizes in mm, an identity-oriented (RAS) qform.
 * Used by the synthetic generator. Atomic like the above.
 * Details: path must end in .nii or .nii.gz (gzip by name); NIfTI-1, data at
 * offset 352; qform = sform = identity rotation, world origin at the grid
 * centre; integer types round to nearest and saturate (a warning counts the
 * saturated voxels); non-finite values are refused (FS_ERR_NUMERIC). The same
 * inputs always give the same bytes. */
fs_status fs_nifti_write(const char *path, int nx, int ny, int nz, float dx, float dy, float dz,
                         const float *values, int datatype, float slope, float inter);

#endif
