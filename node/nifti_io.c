/*
 * node/nifti_io.c — NIfTI-1/2 volumes (.nii, .nii.gz) in and out, through
 * nifticlib (headers, validation, byte order) and znzlib (plain or gzip I/O).
 *
 * Reading: the first bytes are checked by hand (sizeof_hdr, header length,
 * dims — nifticlib would silently turn a negative dimension into 1), then
 * nifticlib parses and validates the header (either byte order, NIfTI-1 or
 * 2); if it still refuses the file we say so. The voxel data are then read by us in chunks through znzlib,
 * so a tiny or truncated file that declares a huge volume fails with a clear
 * message before anything near the declared size is allocated. Every scalar
 * datatype is converted to float, with scl_slope/scl_inter applied when the
 * slope is non-zero and finite (nifticlib already maps a non-finite slope to
 * 0, i.e. "no scaling", as the NIfTI standard asks).
 *
 * Writing: always NIfTI-1 single file (.nii or .nii.gz, chosen by the name),
 * header 348 bytes + a 4-byte empty extension flag + the data at offset 352.
 * The bytes depend only on the inputs (gzip headers carry no time stamp), and
 * the file appears atomically: it is written to DIR/.tmp-PID-N-NAME (same
 * extension; PID and a per-process counter keep concurrent writers apart)
 * and renamed over `path` only when every write and the close succeeded.
 * nifticlib's own "** ERROR" lines on stderr are left as they are; ours
 * follow them and name the file and the problem.
 *
 * Tested by tests/test_nifti.c (every datatype with scaling, .nii vs .nii.gz,
 * corrupt / truncated / unsupported files, label write-back).
 */
#include "node/nifti_io.h"
#include "common/log.h"

#include <nifti2_io.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* More voxels than this in one volume is refused before any allocation. */
#define FS_NIFTI_MAX_VOX ((int64_t)1 << 31)
/* Data are read in pieces of at most this many bytes (the buffer grows only
 * as real bytes arrive). */
#define FS_NIFTI_CHUNK ((size_t)32 << 20)

/* The scalar datatypes we read and write; everything else is refused. */
static int scalar_type_size(int dt)
{
    switch (dt) {
    case NIFTI_TYPE_UINT8: case NIFTI_TYPE_INT8: return 1;
    case NIFTI_TYPE_INT16: case NIFTI_TYPE_UINT16: return 2;
    case NIFTI_TYPE_INT32: case NIFTI_TYPE_UINT32: case NIFTI_TYPE_FLOAT32: return 4;
    case NIFTI_TYPE_INT64: case NIFTI_TYPE_UINT64: case NIFTI_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

/* Check the raw header of `path` before nifticlib interprets it (nifticlib
 * silently turns a negative dimension into 1): sizeof_hdr, header length and
 * dim[0..dim[0]] are read by hand in either byte order. Logs the first
 * problem found and returns its status; FS_OK when these fields are sane. */
static fs_status check_raw_header(const char *path)
{
    znzFile fp = znzopen(path, "rb", nifti_is_gzfile(path));
    if (znz_isnull(fp)) {
        fs_log_error("%s: cannot open: %s", path, strerror(errno));
        return FS_ERR_IO;
    }
    unsigned char buf[540];
    size_t got = znzread(buf, 1, sizeof buf, fp);
    znzclose(fp);
    if (got < 4) {
        fs_log_error("%s: not a NIfTI file (only %zu bytes%s)", path, got,
                     nifti_is_gzfile(path) ? " after decompression; corrupt or truncated gzip?" : "");
        return FS_ERR_FORMAT;
    }
    int32_t sz;
    memcpy(&sz, buf, 4);
    int32_t szs = (int32_t)__builtin_bswap32((uint32_t)sz);
    if (sz != 348 && sz != 540 && szs != 348 && szs != 540) {
        fs_log_error("%s: not a NIfTI file (sizeof_hdr is %d, expected 348 or 540)", path, (int)sz);
        return FS_ERR_FORMAT;
    }
    int n2 = (sz == 540 || szs == 540);
    if ((size_t)got < (n2 ? 540u : 348u)) {
        fs_log_error("%s: truncated NIfTI header (%zu bytes)", path, got);
        return FS_ERR_FORMAT;
    }
    int swapped = (sz != 348 && sz != 540);
    int64_t dim[8];
    for (int i = 0; i < 8; i++) {
        if (n2) {
            int64_t d; memcpy(&d, buf + 16 + 8 * i, 8);
            dim[i] = swapped ? (int64_t)__builtin_bswap64((uint64_t)d) : d;
        } else {
            int16_t d; memcpy(&d, buf + 40 + 2 * i, 2);
            dim[i] = swapped ? (int16_t)__builtin_bswap16((uint16_t)d) : d;
        }
    }
    if (dim[0] < 1 || dim[0] > 7) {
        fs_log_error("%s: corrupt NIfTI header (dim[0] = %lld, expected 1..7)", path, (long long)dim[0]);
        return FS_ERR_FORMAT;
    }
    for (int i = 1; i <= dim[0]; i++)
        if (dim[i] <= 0) {
            fs_log_error("%s: non-positive dimension dim[%d] = %lld", path, i, (long long)dim[i]);
            return FS_ERR_FORMAT;
        }
    return FS_OK;
}

/* nifticlib refused a header that passed check_raw_header: say so. */
static fs_status diagnose_header(const char *path)
{
    fs_status rc = check_raw_header(path);
    if (rc != FS_OK) return rc;
    fs_log_error("%s: corrupt or unreadable NIfTI header (nifticlib refused it)", path);
    return FS_ERR_FORMAT;
}

/* Read nbytes of voxel data at `offset` of the image file into a new buffer,
 * growing it chunk by chunk so that a short file never causes a huge
 * allocation. On success *out owns the buffer. */
static fs_status read_raw(const char *path, const char *iname, int64_t offset, size_t nbytes, void **out)
{
    *out = NULL;
    znzFile fp = znzopen(iname, "rb", nifti_is_gzfile(iname));
    if (znz_isnull(fp)) {
        fs_log_error("%s: cannot open image data %s: %s", path, iname, strerror(errno));
        return FS_ERR_IO;
    }
    if (znzseek(fp, (znz_off_t)offset, SEEK_SET) < 0) {
        znzclose(fp);
        fs_log_error("%s: truncated: cannot seek to the data at byte %lld", path, (long long)offset);
        return FS_ERR_FORMAT;
    }
    unsigned char *buf = NULL;
    size_t have = 0, cap = 0;
    while (have < nbytes) {
        size_t want = nbytes - have < FS_NIFTI_CHUNK ? nbytes - have : FS_NIFTI_CHUNK;
        if (have + want > cap) {
            size_t ncap = cap ? cap * 2 : want;
            if (ncap > nbytes) ncap = nbytes;
            if (ncap < have + want) ncap = have + want;
            unsigned char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf); znzclose(fp);
                fs_log_error("%s: out of memory reading %zu bytes of voxel data", path, nbytes);
                return FS_ERR_NOMEM;
            }
            buf = nb; cap = ncap;
        }
        size_t got = znzread(buf + have, 1, want, fp);
        have += got;
        if (got < want) break;
    }
    znzclose(fp);
    if (have < nbytes) {
        free(buf);
        fs_log_error("%s: truncated or corrupt: the header declares %zu bytes of voxel data, "
                     "only %zu could be read", path, nbytes, have);
        return FS_ERR_FORMAT;
    }
    *out = buf;
    return FS_OK;
}

/* Convert n raw voxels of datatype dt to float, applying value·slope + inter
 * when `scale` is set (computed in double, stored as float). */
static void raw_to_float(const void *raw, int dt, size_t n, int scale, double slope, double inter, float *dst)
{
#define FS_CONV(T) do { const T *s = (const T *)raw; \
        if (scale) for (size_t i = 0; i < n; i++) dst[i] = (float)((double)s[i] * slope + inter); \
        else for (size_t i = 0; i < n; i++) dst[i] = (float)s[i]; } while (0)
    switch (dt) {
    case NIFTI_TYPE_UINT8: FS_CONV(uint8_t); break;
    case NIFTI_TYPE_INT8: FS_CONV(int8_t); break;
    case NIFTI_TYPE_INT16: FS_CONV(int16_t); break;
    case NIFTI_TYPE_UINT16: FS_CONV(uint16_t); break;
    case NIFTI_TYPE_INT32: FS_CONV(int32_t); break;
    case NIFTI_TYPE_UINT32: FS_CONV(uint32_t); break;
    case NIFTI_TYPE_INT64: FS_CONV(int64_t); break;
    case NIFTI_TYPE_UINT64: FS_CONV(uint64_t); break;
    case NIFTI_TYPE_FLOAT32: FS_CONV(float); break;
    case NIFTI_TYPE_FLOAT64: FS_CONV(double); break;
    default: break;
    }
#undef FS_CONV
}

/* A voxel size for people: |pixdim|, or 1 mm when the header holds nonsense. */
static float sane_pixdim(double d)
{
    d = fabs(d);
    return (isfinite(d) && d > 0) ? (float)d : 1.0f;
}

/* Read a 3D scalar volume: see nifti_io.h. Steps: existence, header through
 * nifticlib (diagnosed on failure), datatype and shape checks, size checks
 * before allocation, chunked data read, byte swap, conversion and scaling. */
fs_status fs_nifti_read(const char *path, fs_volume *out)
{
    if (!out) return FS_ERR_ARG;
    memset(out, 0, sizeof *out);
    if (!path) return FS_ERR_ARG;

    struct stat st;
    if (stat(path, &st) != 0) {
        fs_log_error("%s: %s", path, strerror(errno));
        return errno == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        fs_log_error("%s: not a regular file", path);
        return FS_ERR_IO;
    }

    fs_status rc = check_raw_header(path);
    if (rc != FS_OK) return rc;
    nifti_image *nim = nifti_image_read(path, 0);
    if (!nim) return diagnose_header(path);

    void *raw = NULL;
    int dt = nim->datatype, nb = scalar_type_size(dt);
    if (nim->nifti_type == NIFTI_FTYPE_ASCII) {
        fs_log_error("%s: ASCII NIfTI files are not supported", path);
        rc = FS_ERR_UNSUPPORTED; goto done;
    }
    if (nb == 0) {
        const char *name = nifti_datatype_to_string(dt);
        fs_log_error("%s: unsupported datatype %s (%d): only scalar integer and float volumes are read",
                     path, name ? name : "?", dt);
        rc = FS_ERR_UNSUPPORTED; goto done;
    }
    if (nim->dim[0] < 3) {
        fs_log_error("%s: %lldD image; a 3D volume is expected", path, (long long)nim->dim[0]);
        rc = FS_ERR_MISMATCH; goto done;
    }
    for (int i = 1; i <= nim->dim[0] && i <= 7; i++)
        if (nim->dim[i] <= 0) {
            fs_log_error("%s: non-positive dimension dim[%d] = %lld", path, i, (long long)nim->dim[i]);
            rc = FS_ERR_FORMAT; goto done;
        }
    for (int i = 4; i <= nim->dim[0] && i <= 7; i++)
        if (nim->dim[i] != 1) {
            fs_log_error("%s: %lldD volume with dim[%d] = %lld; a 3D volume (or 4D with one time point) is expected",
                         path, (long long)nim->dim[0], i, (long long)nim->dim[i]);
            rc = FS_ERR_MISMATCH; goto done;
        }
    int64_t d[3];
    for (int i = 0; i < 3; i++) d[i] = (i + 1 <= nim->dim[0]) ? nim->dim[i + 1] : 1;
    if (d[0] > INT_MAX || d[1] > INT_MAX || d[2] > INT_MAX ||
        d[0] * d[1] > FS_NIFTI_MAX_VOX || d[0] * d[1] * d[2] > FS_NIFTI_MAX_VOX) {
        fs_log_error("%s: absurd size %lld×%lld×%lld (more than 2^31 voxels); corrupt header?",
                     path, (long long)d[0], (long long)d[1], (long long)d[2]);
        rc = FS_ERR_FORMAT; goto done;
    }
    size_t nvox = (size_t)(d[0] * d[1] * d[2]);
    size_t nbytes = nvox * (size_t)nb;
    if (!nim->iname) {
        fs_log_error("%s: header names no image data file", path);
        rc = FS_ERR_FORMAT; goto done;
    }
    /* Uncompressed: the file size tells a truncated file before any read. */
    if (!nifti_is_gzfile(nim->iname)) {
        struct stat si;
        if (stat(nim->iname, &si) != 0) {
            fs_log_error("%s: image data %s: %s", path, nim->iname, strerror(errno));
            rc = FS_ERR_NOT_FOUND; goto done;
        }
        if ((uint64_t)si.st_size < (uint64_t)nim->iname_offset + nbytes) {
            fs_log_error("%s: truncated: the header declares %zu bytes of voxel data at offset %lld, "
                         "the file holds %lld bytes", path, nbytes, (long long)nim->iname_offset,
                         (long long)si.st_size);
            rc = FS_ERR_FORMAT; goto done;
        }
    }
    rc = read_raw(path, nim->iname, nim->iname_offset, nbytes, &raw);
    if (rc != FS_OK) goto done;
    if (nb > 1 && nim->byteorder != nifti_short_order())
        nifti_swap_Nbytes((int64_t)nvox, nb, raw);

    out->data = malloc(nvox * sizeof(float));
    if (!out->data) {
        fs_log_error("%s: out of memory for %zu voxels", path, nvox);
        rc = FS_ERR_NOMEM; goto done;
    }
    double slope = nim->scl_slope, inter = nim->scl_inter;
    int scale = (slope != 0.0 && isfinite(slope));
    if (scale && !isfinite(inter)) {
        fs_log_error("%s: non-finite scl_inter %g with scl_slope %g", path, inter, slope);
        rc = FS_ERR_NUMERIC; goto done;
    }
    raw_to_float(raw, dt, nvox, scale, slope, inter, out->data);
    out->nx = (int)d[0]; out->ny = (int)d[1]; out->nz = (int)d[2];
    out->dx = sane_pixdim(nim->dx);
    out->dy = sane_pixdim(nim->dy);
    out->dz = sane_pixdim(nim->dz);

done:
    free(raw);
    nifti_image_free(nim);
    if (rc != FS_OK) fs_volume_free(out);
    return rc;
}

void fs_volume_free(fs_volume *v)
{
    if (!v) return;
    free(v->data);
    memset(v, 0, sizeof *v);
}

/* 1 when `path` ends in .nii or .nii.gz (the only names we write). */
static int writable_name(const char *path)
{
    size_t n = strlen(path);
    return (n > 4 && strcmp(path + n - 4, ".nii") == 0) || (n > 7 && strcmp(path + n - 7, ".nii.gz") == 0);
}

/* Write the NIfTI-1 header of `nim` (dims, datatype, geometry, scaling taken
 * from it) followed by `nbytes` of data to `path`, atomically: a temporary
 * sibling with the same extension is written, closed, checked and renamed. */
static fs_status write_nim(const char *path, nifti_image *nim, const void *data, size_t nbytes)
{
    if (!writable_name(path)) {
        fs_log_error("%s: output name must end in .nii or .nii.gz", path);
        return FS_ERR_ARG;
    }
    nifti_1_header hdr;
    if (nifti_convert_nim2n1hdr(nim, &hdr) != 0) {
        fs_log_error("%s: cannot build a NIfTI-1 header (dimensions too large?)", path);
        return FS_ERR_ARG;
    }
    hdr.vox_offset = 352.0f;
    memcpy(hdr.magic, "n+1\0", 4);

    const char *slash = strrchr(path, '/');
    size_t dirlen = slash ? (size_t)(slash - path + 1) : 0;
    size_t tlen = strlen(path) + 64;
    char *tmp = malloc(tlen);
    if (!tmp) return FS_ERR_NOMEM;
    static _Atomic unsigned long serial = 0;
    snprintf(tmp, tlen, "%.*s.tmp-%ld-%lu-%s", (int)dirlen, path, (long)getpid(), serial++, path + dirlen);

    int gz = nifti_is_gzfile(path);
    znzFile fp = znzopen(tmp, "wb", gz);
    if (znz_isnull(fp)) {
        fs_log_error("%s: cannot create %s: %s", path, tmp, strerror(errno));
        free(tmp);
        return FS_ERR_IO;
    }
    static const unsigned char ext_flag[4] = {0, 0, 0, 0};
    int ok = znzwrite(&hdr, 1, sizeof hdr, fp) == sizeof hdr;
    ok = ok && znzwrite(ext_flag, 1, 4, fp) == 4;
    const unsigned char *p = data;
    for (size_t done = 0; ok && done < nbytes;) {
        size_t n = nbytes - done < FS_NIFTI_CHUNK ? nbytes - done : FS_NIFTI_CHUNK;
        ok = znzwrite(p + done, 1, n, fp) == n;
        done += n;
    }
    int err = errno;
    if (znzclose(fp) != 0 && ok) { ok = 0; err = errno; }
    if (!ok) {
        fs_log_error("%s: write failed: %s", path, strerror(err));
        unlink(tmp);
        free(tmp);
        return FS_ERR_IO;
    }
    if (rename(tmp, path) != 0) {
        fs_log_error("%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        unlink(tmp);
        free(tmp);
        return FS_ERR_IO;
    }
    free(tmp);
    return FS_OK;
}

/* Store float `v` as datatype dt at element i of dst: integer types round to
 * nearest and saturate (the number of saturated voxels is counted). */
static void store_value(void *dst, int dt, size_t i, double v, size_t *clamped)
{
#define FS_ST_INT(T, LO, HI) do { double r = nearbyint(v); \
        if (r < (double)(LO)) { r = (double)(LO); (*clamped)++; } \
        if (r >= (double)(HI) + 1.0) { ((T *)dst)[i] = (HI); (*clamped)++; break; } \
        ((T *)dst)[i] = (T)r; } while (0)
    switch (dt) {
    case NIFTI_TYPE_UINT8: FS_ST_INT(uint8_t, 0, UINT8_MAX); break;
    case NIFTI_TYPE_INT8: FS_ST_INT(int8_t, INT8_MIN, INT8_MAX); break;
    case NIFTI_TYPE_INT16: FS_ST_INT(int16_t, INT16_MIN, INT16_MAX); break;
    case NIFTI_TYPE_UINT16: FS_ST_INT(uint16_t, 0, UINT16_MAX); break;
    case NIFTI_TYPE_INT32: FS_ST_INT(int32_t, INT32_MIN, INT32_MAX); break;
    case NIFTI_TYPE_UINT32: FS_ST_INT(uint32_t, 0, UINT32_MAX); break;
    case NIFTI_TYPE_INT64: FS_ST_INT(int64_t, INT64_MIN, INT64_MAX); break;
    case NIFTI_TYPE_UINT64: FS_ST_INT(uint64_t, 0, UINT64_MAX); break;
    case NIFTI_TYPE_FLOAT32: ((float *)dst)[i] = (float)v; break;
    case NIFTI_TYPE_FLOAT64: ((double *)dst)[i] = v; break;
    default: break;
    }
#undef FS_ST_INT
}

/* Write a volume from floats: see nifti_io.h. Non-finite values or
 * parameters are refused; integer types round to nearest and saturate with
 * a warning that counts the saturated voxels. */
fs_status fs_nifti_write(const char *path, int nx, int ny, int nz, float dx, float dy, float dz,
                         const float *values, int datatype, float slope, float inter)
{
    if (!path || !values) return FS_ERR_ARG;
    int nb = scalar_type_size(datatype);
    if (nb == 0) {
        fs_log_error("%s: cannot write datatype %d (only scalar integer and float types)", path, datatype);
        return FS_ERR_UNSUPPORTED;
    }
    if (nx <= 0 || ny <= 0 || nz <= 0 || nx > 32767 || ny > 32767 || nz > 32767 ||
        (int64_t)nx * ny * nz > FS_NIFTI_MAX_VOX) {
        fs_log_error("%s: invalid size %d×%d×%d", path, nx, ny, nz);
        return FS_ERR_ARG;
    }
    if (!(isfinite(dx) && dx > 0 && isfinite(dy) && dy > 0 && isfinite(dz) && dz > 0)) {
        fs_log_error("%s: invalid voxel size %g×%g×%g mm", path, dx, dy, dz);
        return FS_ERR_ARG;
    }
    if (!isfinite(slope) || !isfinite(inter)) {
        fs_log_error("%s: non-finite scaling (slope %g, inter %g)", path, slope, inter);
        return FS_ERR_NUMERIC;
    }
    size_t nvox = (size_t)nx * ny * nz;
    for (size_t i = 0; i < nvox; i++)
        if (!isfinite(values[i])) {
            fs_log_error("%s: non-finite value at voxel %zu", path, i);
            return FS_ERR_NUMERIC;
        }

    int64_t dims[8] = {3, nx, ny, nz, 1, 1, 1, 1};
    nifti_image *nim = nifti_make_new_nim(dims, datatype, 0);
    void *buf = malloc(nvox * (size_t)nb);
    if (!nim || !buf) {
        nifti_image_free(nim); free(buf);
        return FS_ERR_NOMEM;
    }
    double s = slope, b = inter;
    size_t clamped = 0;
    for (size_t i = 0; i < nvox; i++)
        store_value(buf, datatype, i, slope != 0.0f ? ((double)values[i] - b) / s : (double)values[i], &clamped);
    if (clamped)
        fs_log_warn("%s: %zu of %zu voxels were outside the range of %s and were saturated", path, clamped,
                    nvox, nifti_datatype_to_string(datatype));

    nim->dx = nim->pixdim[1] = dx;
    nim->dy = nim->pixdim[2] = dy;
    nim->dz = nim->pixdim[3] = dz;
    nim->xyz_units = NIFTI_UNITS_MM;
    nim->scl_slope = slope != 0.0f ? s : 0.0;
    nim->scl_inter = slope != 0.0f ? b : 0.0;
    /* Identity (RAS) orientation, world origin at the centre of the grid. */
    nim->qform_code = nim->sform_code = NIFTI_XFORM_SCANNER_ANAT;
    nim->quatern_b = nim->quatern_c = nim->quatern_d = 0.0;
    nim->qfac = 1.0;
    nim->qoffset_x = -0.5 * (nx - 1) * dx;
    nim->qoffset_y = -0.5 * (ny - 1) * dy;
    nim->qoffset_z = -0.5 * (nz - 1) * dz;
    nim->qto_xyz = nifti_quatern_to_dmat44(0, 0, 0, nim->qoffset_x, nim->qoffset_y, nim->qoffset_z,
                                           dx, dy, dz, 1.0);
    nim->sto_xyz = nim->qto_xyz;
    snprintf(nim->descrip, sizeof nim->descrip, "fedseg");

    fs_status rc = write_nim(path, nim, buf, nvox * (size_t)nb);
    nifti_image_free(nim);
    free(buf);
    return rc;
}

/* Write BraTS labels with the geometry of ref_path: see nifti_io.h. The
 * reference header is read (not its data); labels must be 0, 1, 2 or 4. */
fs_status fs_nifti_write_labels(const char *path, const char *ref_path, const uint8_t *labels)
{
    if (!path || !ref_path || !labels) return FS_ERR_ARG;
    struct stat st;
    if (stat(ref_path, &st) != 0) {
        fs_log_error("%s: reference volume: %s", ref_path, strerror(errno));
        return errno == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO;
    }
    nifti_image *nim = nifti_image_read(ref_path, 0);
    if (!nim) return diagnose_header(ref_path);
    for (int i = 4; i <= nim->dim[0] && i <= 7; i++)
        if (nim->dim[i] != 1) {
            fs_log_error("%s: reference volume is not 3D (dim[%d] = %lld)", ref_path, i, (long long)nim->dim[i]);
            nifti_image_free(nim);
            return FS_ERR_MISMATCH;
        }
    int64_t d[3];
    for (int i = 0; i < 3; i++) d[i] = (i + 1 <= nim->dim[0]) ? nim->dim[i + 1] : 1;
    if (d[0] <= 0 || d[1] <= 0 || d[2] <= 0 || d[0] * d[1] * d[2] > FS_NIFTI_MAX_VOX) {
        fs_log_error("%s: reference volume has an invalid size", ref_path);
        nifti_image_free(nim);
        return FS_ERR_FORMAT;
    }
    size_t nvox = (size_t)(d[0] * d[1] * d[2]);
    for (size_t i = 0; i < nvox; i++)
        if (labels[i] != 0 && labels[i] != 1 && labels[i] != 2 && labels[i] != 4) {
            fs_log_error("%s: label %u at voxel %zu is not a BraTS label (0, 1, 2, 4)", path,
                         (unsigned)labels[i], i);
            nifti_image_free(nim);
            return FS_ERR_ARG;
        }

    nifti_free_extensions(nim);
    nim->ndim = nim->dim[0] = 3;
    nim->nt = nim->nu = nim->nv = nim->nw = 1;
    for (int i = 4; i < 8; i++) { nim->dim[i] = 1; }
    nim->nvox = (int64_t)nvox;
    nim->datatype = NIFTI_TYPE_UINT8;
    nim->nbyper = 1;
    nim->swapsize = 0;
    nim->scl_slope = 0.0;
    nim->scl_inter = 0.0;
    nim->cal_min = 0.0;
    nim->cal_max = 4.0;
    nim->intent_code = NIFTI_INTENT_LABEL;
    nim->intent_p1 = nim->intent_p2 = nim->intent_p3 = 0.0;
    memset(nim->intent_name, 0, sizeof nim->intent_name);
    memset(nim->descrip, 0, sizeof nim->descrip);
    snprintf(nim->descrip, sizeof nim->descrip, "fedseg labels");
    memset(nim->aux_file, 0, sizeof nim->aux_file);
    nim->toffset = 0.0;

    fs_status rc = write_nim(path, nim, labels, nvox);
    nifti_image_free(nim);
    return rc;
}
