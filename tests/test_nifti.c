/*
 * tests/test_nifti.c — node/nifti_io.c: reading and writing NIfTI volumes.
 *
 * Everything is written into a fresh temporary directory: by fs_nifti_write,
 * by nifticlib directly (datatypes and shapes our writer refuses), or as
 * hand-damaged copies (bad sizeof_hdr, non-positive or absurd dims, files cut
 * short). Checked: every scalar datatype round-trips with scaling applied and
 * agrees with nifticlib's own reading of the raw values; .nii and .nii.gz give
 * the same values; a big-endian file reads the same; each broken file gives
 * the documented status without crashing; writes are deterministic, atomic
 * (no temporary left behind) and pass nifti_tool's checks when it is
 * installed; label files keep the reference geometry.
 */
#include "check.h"
#include "node/nifti_io.h"
#include "common/log.h"

#include <nifti2_io.h>
#include <zlib.h>
#include <glob.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[512];

static const char *tpath(const char *name)
{
    static char buf[8][1024];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static size_t read_all(const char *path, unsigned char **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) { *out = NULL; return 0; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)n + 1);
    size_t got = fread(*out, 1, (size_t)n, f);
    fclose(f);
    return got;
}

static void write_all(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) { CHECK(0, "cannot write %s", path); return; }
    fwrite(p, 1, n, f);
    fclose(f);
}

/* Write a volume with nifticlib itself (any datatype, any dims). */
static void nifticlib_write(const char *path, const int64_t dims[8], int dt, const void *data)
{
    nifti_image *nim = nifti_make_new_nim(dims, dt, 1);
    memcpy(nim->data, data, (size_t)nim->nvox * nim->nbyper);
    CHECK(nifti_set_filenames(nim, path, 0, 1) == 0, "nifti_set_filenames %s", path);
    nifti_image_write(nim);
    nifti_image_free(nim);
}

typedef struct { int dt; double lo, hi; float slope, inter; } dt_case;

/* Every datatype: values on the grid stored·slope + inter (so they round-trip
 * exactly), written as .nii and .nii.gz, read back by us and by nifticlib. */
static void test_datatypes(void)
{
    static const dt_case cases[] = {
        {NIFTI_TYPE_UINT8, 0, 255, 0.5f, 3.0f},     {NIFTI_TYPE_INT8, -128, 127, 2.0f, -1.0f},
        {NIFTI_TYPE_INT16, -3000, 3000, 0.25f, 10}, {NIFTI_TYPE_UINT16, 0, 60000, 1.5f, 0},
        {NIFTI_TYPE_INT32, -100000, 100000, 0.125f, 7}, {NIFTI_TYPE_UINT32, 0, 200000, 3.0f, -5},
        {NIFTI_TYPE_INT64, -100000, 100000, 0.5f, 1},  {NIFTI_TYPE_UINT64, 0, 100000, 2.0f, 0},
        {NIFTI_TYPE_FLOAT32, -1e4, 1e4, 2.0f, -1.0f},   {NIFTI_TYPE_FLOAT64, -1e4, 1e4, 0.5f, 100},
    };
    const int nx = 9, ny = 7, nz = 5, n = nx * ny * nz;
    float *v = malloc(sizeof(float) * n);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const dt_case *dc = &cases[c];
        int is_float = dc->dt == NIFTI_TYPE_FLOAT32 || dc->dt == NIFTI_TYPE_FLOAT64;
        for (int i = 0; i < n; i++) {
            double t = (double)((i * 37) % n) / (n - 1);
            double stored = dc->lo + t * (dc->hi - dc->lo);
            stored = is_float ? stored : floor(stored);
            v[i] = (float)(stored * dc->slope + dc->inter);
        }
        for (int gz = 0; gz < 2; gz++) {
            char name[64];
            snprintf(name, sizeof name, "dt%d%s", dc->dt, gz ? ".nii.gz" : ".nii");
            const char *p = tpath(name);
            fs_status s = fs_nifti_write(p, nx, ny, nz, 1.0f, 1.5f, 2.0f, v, dc->dt, dc->slope, dc->inter);
            CHECK(s == FS_OK, "write %s: %s", name, fs_status_str(s));
            fs_volume vol;
            s = fs_nifti_read(p, &vol);
            CHECK(s == FS_OK, "read %s: %s", name, fs_status_str(s));
            if (s != FS_OK) continue;
            CHECK(vol.nx == nx && vol.ny == ny && vol.nz == nz, "%s: shape %d %d %d", name, vol.nx, vol.ny, vol.nz);
            CHECK(vol.dx == 1.0f && vol.dy == 1.5f && vol.dz == 2.0f, "%s: pixdim %g %g %g", name, vol.dx, vol.dy, vol.dz);
            check_close(name, vol.data, v, (size_t)n, 0.0f, 1e-6f);
            /* nifticlib's view: the stored values are not the scaled ones and
             * stored·slope + inter equals what we returned. */
            nifti_image *nim = nifti_image_read(p, 1);
            CHECK(nim && nim->datatype == dc->dt, "%s: nifticlib datatype", name);
            if (nim) {
                CHECK(nim->scl_slope == dc->slope && nim->scl_inter == dc->inter, "%s: scaling in header", name);
                size_t differ = 0, bad = 0;
                for (int i = 0; i < n; i++) {
                    double raw = 0;
                    switch (dc->dt) {
                    case NIFTI_TYPE_UINT8: raw = ((uint8_t *)nim->data)[i]; break;
                    case NIFTI_TYPE_INT8: raw = ((int8_t *)nim->data)[i]; break;
                    case NIFTI_TYPE_INT16: raw = ((int16_t *)nim->data)[i]; break;
                    case NIFTI_TYPE_UINT16: raw = ((uint16_t *)nim->data)[i]; break;
                    case NIFTI_TYPE_INT32: raw = ((int32_t *)nim->data)[i]; break;
                    case NIFTI_TYPE_UINT32: raw = ((uint32_t *)nim->data)[i]; break;
                    case NIFTI_TYPE_INT64: raw = (double)((int64_t *)nim->data)[i]; break;
                    case NIFTI_TYPE_UINT64: raw = (double)((uint64_t *)nim->data)[i]; break;
                    case NIFTI_TYPE_FLOAT32: raw = ((float *)nim->data)[i]; break;
                    case NIFTI_TYPE_FLOAT64: raw = ((double *)nim->data)[i]; break;
                    }
                    differ += raw != vol.data[i];
                    double want = raw * dc->slope + dc->inter;
                    bad += fabs(want - vol.data[i]) > 1e-6 * fabs(want) + 1e-6;
                }
                CHECK(differ > (size_t)n / 2, "%s: scaling was not applied (%zu of %d differ)", name, differ, n);
                CHECK(bad == 0, "%s: %zu voxels differ from nifticlib raw·slope+inter", name, bad);
                nifti_image_free(nim);
            }
            fs_volume_free(&vol);
        }
    }
    free(v);
}

/* Same values through .nii and .nii.gz; same inputs give the same bytes;
 * no temporary file stays behind; nifti_tool accepts the output. */
static void test_write_properties(void)
{
    const int nx = 11, ny = 6, nz = 4, n = nx * ny * nz;
    float v[11 * 6 * 4];
    for (int i = 0; i < n; i++) v[i] = (float)((i * 7919) % 1000) - 300.0f;
    CHECK(fs_nifti_write(tpath("p1.nii.gz"), nx, ny, nz, 1, 1, 1, v, NIFTI_TYPE_INT16, 0, 0) == FS_OK, "p1");
    CHECK(fs_nifti_write(tpath("p2.nii.gz"), nx, ny, nz, 1, 1, 1, v, NIFTI_TYPE_INT16, 0, 0) == FS_OK, "p2");
    CHECK(fs_nifti_write(tpath("p3.nii"), nx, ny, nz, 1, 1, 1, v, NIFTI_TYPE_INT16, 0, 0) == FS_OK, "p3");
    unsigned char *a, *b;
    size_t na = read_all(tpath("p1.nii.gz"), &a), nb = read_all(tpath("p2.nii.gz"), &b);
    CHECK(na > 0 && na == nb && memcmp(a, b, na) == 0, "same values, different bytes (%zu vs %zu)", na, nb);
    free(a); free(b);
    na = read_all(tpath("p3.nii"), &a);
    CHECK(na == 352 + (size_t)n * 2, "p3.nii holds %zu bytes, want %d", na, 352 + n * 2);
    free(a);
    fs_volume x, y;
    CHECK(fs_nifti_read(tpath("p1.nii.gz"), &x) == FS_OK && fs_nifti_read(tpath("p3.nii"), &y) == FS_OK, "read p1/p3");
    if (x.data && y.data) {
        check_close("gz vs plain", x.data, y.data, (size_t)n, 0, 0);
        check_close("p1", x.data, v, (size_t)n, 0, 0);
    }
    fs_volume_free(&x); fs_volume_free(&y);

    /* Saturation of out-of-range values. */
    float sat[4] = {-5.0f, 300.0f, 254.6f, 0.4f};
    CHECK(fs_nifti_write(tpath("sat.nii"), 4, 1, 1, 1, 1, 1, sat, NIFTI_TYPE_UINT8, 0, 0) == FS_OK, "sat write");
    if (fs_nifti_read(tpath("sat.nii"), &x) == FS_OK) {
        float want[4] = {0, 255, 255, 0};
        check_close("saturated", x.data, want, 4, 0, 0);
        fs_volume_free(&x);
    } else CHECK(0, "sat read");

    /* Refusals. */
    float nanv[2] = {1.0f, NAN};
    CHECK(fs_nifti_write(tpath("nan.nii"), 2, 1, 1, 1, 1, 1, nanv, NIFTI_TYPE_FLOAT32, 0, 0) == FS_ERR_NUMERIC, "NaN written");
    CHECK(fs_nifti_write(tpath("cx.nii"), 1, 1, 1, 1, 1, 1, v, NIFTI_TYPE_COMPLEX64, 0, 0) == FS_ERR_UNSUPPORTED, "complex written");
    CHECK(fs_nifti_write(tpath("bad.img"), 1, 1, 1, 1, 1, 1, v, NIFTI_TYPE_FLOAT32, 0, 0) == FS_ERR_ARG, ".img name accepted");
    CHECK(fs_nifti_write(tpath("no/such/dir/x.nii.gz"), 2, 2, 2, 1, 1, 1, v, NIFTI_TYPE_FLOAT32, 0, 0) == FS_ERR_IO,
          "write into a missing directory");
    CHECK(fs_nifti_write(tpath("z.nii"), 0, 2, 2, 1, 1, 1, v, NIFTI_TYPE_FLOAT32, 0, 0) == FS_ERR_ARG, "zero dim written");

    glob_t gl;
    int tmps = glob(tpath(".tmp*"), 0, NULL, &gl) == 0 ? (int)gl.gl_pathc : 0;
    if (tmps) globfree(&gl);
    CHECK(tmps == 0, "%d temporary files left behind", tmps);

    if (access("/usr/bin/nifti_tool", X_OK) == 0) {
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "/usr/bin/nifti_tool -check_hdr -check_nim -infiles %s %s 2>&1 | grep -c 'IS GOOD'",
                 tpath("p1.nii.gz"), tpath("p3.nii"));
        FILE *pp = popen(cmd, "r");
        int good = 0;
        if (pp) { if (fscanf(pp, "%d", &good) != 1) good = 0; pclose(pp); }
        CHECK(good == 4, "nifti_tool: %d of 4 checks good", good);
    } else {
        fprintf(stderr, "note: nifti_tool not installed, its check is skipped\n");
    }
}

/* A 4D file with one time point is a 3D volume; 2D, 4D with nt > 1 are not. */
static void test_shapes(void)
{
    int16_t data[4 * 3 * 2 * 3];
    for (int i = 0; i < 72; i++) data[i] = (int16_t)(i - 20);
    int64_t d4[8] = {4, 4, 3, 2, 1, 1, 1, 1};
    nifticlib_write(tpath("t1.nii.gz"), d4, NIFTI_TYPE_INT16, data);
    fs_volume v;
    fs_status s = fs_nifti_read(tpath("t1.nii.gz"), &v);
    CHECK(s == FS_OK && v.nx == 4 && v.ny == 3 && v.nz == 2 && v.data[5] == -15.0f, "4D nt=1: %s", fs_status_str(s));
    fs_volume_free(&v);
    int64_t d43[8] = {4, 4, 3, 2, 3, 1, 1, 1};
    nifticlib_write(tpath("t3.nii"), d43, NIFTI_TYPE_INT16, data);
    s = fs_nifti_read(tpath("t3.nii"), &v);
    CHECK(s == FS_ERR_MISMATCH && v.data == NULL, "4D nt=3: %s", fs_status_str(s));
    int64_t d2[8] = {2, 6, 4, 1, 1, 1, 1, 1};
    nifticlib_write(tpath("two.nii"), d2, NIFTI_TYPE_INT16, data);
    s = fs_nifti_read(tpath("two.nii"), &v);
    CHECK(s == FS_ERR_MISMATCH, "2D image: %s", fs_status_str(s));
    float cx[8] = {0};
    int64_t d3[8] = {3, 2, 1, 1, 1, 1, 1, 1};
    nifticlib_write(tpath("cx.nii"), d3, NIFTI_TYPE_COMPLEX64, cx);
    s = fs_nifti_read(tpath("cx.nii"), &v);
    CHECK(s == FS_ERR_UNSUPPORTED, "complex: %s", fs_status_str(s));
    unsigned char rgb[6] = {1, 2, 3, 4, 5, 6};
    nifticlib_write(tpath("rgb.nii.gz"), d3, NIFTI_TYPE_RGB24, rgb);
    s = fs_nifti_read(tpath("rgb.nii.gz"), &v);
    CHECK(s == FS_ERR_UNSUPPORTED, "RGB: %s", fs_status_str(s));
}

/* A big-endian file (header and data swapped) reads like the native one. */
static void test_big_endian(void)
{
    const int n = 5 * 4 * 3;
    float v[60];
    for (int i = 0; i < n; i++) v[i] = (float)(i * 3 - 50);
    char p[1024];
    snprintf(p, sizeof p, "%s", tpath("le.nii"));
    CHECK(fs_nifti_write(p, 5, 4, 3, 1, 1, 1, v, NIFTI_TYPE_INT16, 0.5f, 2.0f) == FS_OK, "le write");
    unsigned char *bytes;
    size_t nb = read_all(p, &bytes);
    if (nb != 352 + (size_t)n * 2) { CHECK(0, "le size %zu", nb); free(bytes); return; }
    nifti_1_header hdr;
    memcpy(&hdr, bytes, sizeof hdr);
    nifti_swap_as_nifti1(&hdr);
    memcpy(bytes, &hdr, sizeof hdr);
    nifti_swap_2bytes(n, bytes + 352);
    write_all(tpath("be.nii"), bytes, nb);
    free(bytes);
    fs_volume a;
    fs_status s = fs_nifti_read(tpath("be.nii"), &a);
    CHECK(s == FS_OK, "big-endian read: %s", fs_status_str(s));
    if (s == FS_OK) check_close("big-endian", a.data, v, (size_t)n, 0, 0);
    fs_volume_free(&a);
}

/* Copy `src` to `dst` with `len` bytes at `off` replaced (NULL = no patch)
 * and the result cut to `keep` bytes (0 = whole). */
static void patched_copy(const char *src, const char *dst, size_t off, const void *patch, size_t len, size_t keep)
{
    unsigned char *b;
    size_t n = read_all(src, &b);
    if (patch && off + len <= n) memcpy(b + off, patch, len);
    write_all(dst, b, keep ? (keep < n ? keep : n) : n);
    free(b);
}

/* Every broken input fails with its status and leaves the output empty. */
static void test_errors(void)
{
    const int nx = 20, ny = 20, nz = 20, n = nx * ny * nz;
    float *v = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) v[i] = (float)((i * 2654435761u) % 4000);
    char ok[1024], okgz[1024];
    snprintf(ok, sizeof ok, "%s", tpath("ok.nii"));
    snprintf(okgz, sizeof okgz, "%s", tpath("ok.nii.gz"));
    CHECK(fs_nifti_write(ok, nx, ny, nz, 1, 1, 1, v, NIFTI_TYPE_INT16, 0, 0) == FS_OK, "ok");
    CHECK(fs_nifti_write(okgz, nx, ny, nz, 1, 1, 1, v, NIFTI_TYPE_INT16, 0, 0) == FS_OK, "okgz");
    free(v);

    struct { const char *name; fs_status want; } cases[16];
    int nc = 0;
    int32_t badsz = 349;
    patched_copy(ok, tpath("sizeof.nii"), 0, &badsz, 4, 0);
    cases[nc].name = "sizeof.nii"; cases[nc++].want = FS_ERR_FORMAT;
    int16_t zero = 0, neg = -5, big = 32767;
    patched_copy(ok, tpath("dimx0.nii"), 42, &zero, 2, 0);
    cases[nc].name = "dimx0.nii"; cases[nc++].want = FS_ERR_FORMAT;
    patched_copy(ok, tpath("dimneg.nii"), 44, &neg, 2, 0);
    cases[nc].name = "dimneg.nii"; cases[nc++].want = FS_ERR_FORMAT;
    {   /* 32767^3 voxels: refused before allocating. */
        unsigned char *b; size_t nb = read_all(ok, &b);
        for (int k = 1; k <= 3; k++) memcpy(b + 40 + 2 * k, &big, 2);
        write_all(tpath("huge.nii"), b, nb);
        free(b);
        cases[nc].name = "huge.nii"; cases[nc++].want = FS_ERR_FORMAT;
    }
    {   /* 1000^3 int16 declared in a small gzip file: fails on the short read. */
        int16_t k1000 = 1000;
        unsigned char *b; size_t nb = read_all(ok, &b);
        for (int k = 1; k <= 3; k++) memcpy(b + 40 + 2 * k, &k1000, 2);
        gzFile gz = gzopen(tpath("bomb.nii.gz"), "wb");
        gzwrite(gz, b, (unsigned)nb);
        gzclose(gz);
        free(b);
        cases[nc].name = "bomb.nii.gz"; cases[nc++].want = FS_ERR_FORMAT;
    }
    patched_copy(ok, tpath("short.nii"), 0, NULL, 0, 352 + (size_t)n); /* half the data */
    cases[nc].name = "short.nii"; cases[nc++].want = FS_ERR_FORMAT;
    patched_copy(ok, tpath("hdronly.nii"), 0, NULL, 0, 200);
    cases[nc].name = "hdronly.nii"; cases[nc++].want = FS_ERR_FORMAT;
    {
        unsigned char *b; size_t nb = read_all(okgz, &b);
        write_all(tpath("halfgz.nii.gz"), b, nb / 2);
        free(b);
        cases[nc].name = "halfgz.nii.gz"; cases[nc++].want = FS_ERR_FORMAT;
    }
    {
        unsigned char junk[1000];
        for (int i = 0; i < 1000; i++) junk[i] = (unsigned char)(i * 131 + 7);
        write_all(tpath("junk.nii"), junk, sizeof junk);
        cases[nc].name = "junk.nii"; cases[nc++].want = FS_ERR_FORMAT;
        write_all(tpath("junkgz.nii.gz"), junk, sizeof junk);
        cases[nc].name = "junkgz.nii.gz"; cases[nc++].want = FS_ERR_FORMAT;
        write_all(tpath("empty.nii"), junk, 0);
        cases[nc].name = "empty.nii"; cases[nc++].want = FS_ERR_FORMAT;
    }
    cases[nc].name = "missing.nii.gz"; cases[nc++].want = FS_ERR_NOT_FOUND;

    for (int i = 0; i < nc; i++) {
        fs_volume vol;
        memset(&vol, 0x5a, sizeof vol);
        fs_status s = fs_nifti_read(tpath(cases[i].name), &vol);
        CHECK(s == cases[i].want, "%s: got '%s', want '%s'", cases[i].name, fs_status_str(s),
              fs_status_str(cases[i].want));
        CHECK(vol.data == NULL && vol.nx == 0, "%s: output not cleared on error", cases[i].name);
        fs_volume_free(&vol);
    }

    /* A NaN slope means "no scaling" (NIfTI rule). */
    float nanf_ = NAN, two = 2.0f;
    patched_copy(ok, tpath("slope_nan.nii"), 112, &nanf_, 4, 0);
    patched_copy(ok, tpath("slope_two.nii"), 112, &two, 4, 0);
    fs_volume a, b, c;
    CHECK(fs_nifti_read(ok, &a) == FS_OK && fs_nifti_read(tpath("slope_nan.nii"), &b) == FS_OK &&
          fs_nifti_read(tpath("slope_two.nii"), &c) == FS_OK, "slope variants read");
    if (a.data && b.data && c.data) {
        check_close("NaN slope = unscaled", b.data, a.data, (size_t)n, 0, 0);
        for (int i = 0; i < n; i++) a.data[i] *= 2.0f;
        check_close("slope 2", c.data, a.data, (size_t)n, 0, 0);
    }
    fs_volume_free(&a); fs_volume_free(&b); fs_volume_free(&c);
}

/* Labels written with a reference's geometry read back equal and keep the
 * reference's pixdim, qform and sform; non-BraTS labels are refused. */
static void test_labels(void)
{
    const int nx = 12, ny = 10, nz = 8, n = nx * ny * nz;
    float *v = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) v[i] = (float)i;
    int64_t dims[8] = {3, nx, ny, nz, 1, 1, 1, 1};
    nifti_image *ref = nifti_make_new_nim(dims, NIFTI_TYPE_FLOAT32, 1);
    memcpy(ref->data, v, sizeof(float) * n);
    ref->dx = ref->pixdim[1] = 0.9; ref->dy = ref->pixdim[2] = 1.1; ref->dz = ref->pixdim[3] = 2.5;
    ref->qform_code = 1; ref->sform_code = 2;
    ref->quatern_b = 0.1; ref->quatern_c = -0.2; ref->quatern_d = 0.3; ref->qfac = -1;
    ref->qoffset_x = 10; ref->qoffset_y = -20; ref->qoffset_z = 30;
    ref->qto_xyz = nifti_quatern_to_dmat44(0.1, -0.2, 0.3, 10, -20, 30, 0.9, 1.1, 2.5, -1);
    ref->sto_xyz = ref->qto_xyz;
    ref->sto_xyz.m[0][3] = 11.5;
    char rp[1024];
    snprintf(rp, sizeof rp, "%s", tpath("ref.nii.gz"));
    nifti_set_filenames(ref, rp, 0, 1);
    nifti_image_write(ref);
    nifti_image_free(ref);
    free(v);

    uint8_t *lab = malloc((size_t)n);
    for (int i = 0; i < n; i++) { static const uint8_t L[4] = {0, 1, 2, 4}; lab[i] = L[(i * 7 / 5) % 4]; }
    char lp[1024];
    snprintf(lp, sizeof lp, "%s", tpath("labels.nii.gz"));
    fs_status s = fs_nifti_write_labels(lp, rp, lab);
    CHECK(s == FS_OK, "write labels: %s", fs_status_str(s));
    fs_volume got;
    if (fs_nifti_read(lp, &got) == FS_OK) {
        size_t bad = 0;
        for (int i = 0; i < n; i++) bad += got.data[i] != lab[i];
        CHECK(bad == 0 && got.nx == nx && got.ny == ny && got.nz == nz, "labels read back: %zu differ", bad);
        fs_volume_free(&got);
    } else CHECK(0, "labels read");
    nifti_image *a = nifti_image_read(rp, 0), *b = nifti_image_read(lp, 0);
    if (a && b) {
        CHECK(b->datatype == NIFTI_TYPE_UINT8, "labels datatype %d", b->datatype);
        CHECK(b->qform_code == a->qform_code && b->sform_code == a->sform_code, "xform codes");
        CHECK(fabs(b->dx - a->dx) < 1e-6 && fabs(b->dy - a->dy) < 1e-6 && fabs(b->dz - a->dz) < 1e-6, "pixdim");
        double dq = 0, ds = 0;
        for (int r = 0; r < 4; r++)
            for (int k = 0; k < 4; k++) {
                dq = fmax(dq, fabs(a->qto_xyz.m[r][k] - b->qto_xyz.m[r][k]));
                ds = fmax(ds, fabs(a->sto_xyz.m[r][k] - b->sto_xyz.m[r][k]));
            }
        CHECK(dq < 1e-5 && ds < 1e-5, "geometry changed: qform %g sform %g", dq, ds);
        CHECK(fabs(a->sto_xyz.m[0][3] - 11.5) < 1e-6, "reference sform not as written");
    } else CHECK(0, "nifticlib could not read ref/labels");
    nifti_image_free(a); nifti_image_free(b);

    lab[17] = 3;
    CHECK(fs_nifti_write_labels(tpath("bad_labels.nii.gz"), rp, lab) == FS_ERR_ARG, "label 3 accepted");
    CHECK(access(tpath("bad_labels.nii.gz"), F_OK) != 0, "refused labels left a file");
    CHECK(fs_nifti_write_labels(tpath("x.nii.gz"), tpath("nope.nii.gz"), lab) == FS_ERR_NOT_FOUND, "missing ref");
    free(lab);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/fs_test_nifti_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_datatypes();
    test_write_properties();
    test_shapes();
    test_big_endian();
    test_errors();
    test_labels();
    if (!check_failures_) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) fprintf(stderr, "note: could not remove %s\n", g_dir);
    } else {
        fprintf(stderr, "files kept in %s\n", g_dir);
    }
    return check_result();
}
