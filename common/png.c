/*
 * common/png.c — 8-bit RGB PNG writer on libpng (see png.h).
 *
 * The picture goes to a temporary file next to the destination (common/fsutil.h)
 * and is renamed over it only when libpng finished without error, so a reader
 * never sees half a picture. libpng reports errors by longjmp; the jump lands
 * in fs_png_write_rgb, which aborts the temporary file and returns FS_ERR_IO.
 * Tested through the synthetic generator's montages (tests/test_synth.sh
 * checks that each site's montage.png is a valid PNG of the announced size).
 */
#include "common/png.h"
#include "common/fsutil.h"
#include "common/log.h"

#include <png.h>
#include <setjmp.h>
#include <stdlib.h>

fs_status fs_png_write_rgb(const char *path, int w, int h, const uint8_t *rgb)
{
    if (!path || !rgb || w <= 0 || h <= 0) {
        fs_log_error("%s: cannot write a %dx%d picture", path ? path : "(null)", w, h);
        return FS_ERR_ARG;
    }
    fs_atomic_file af;
    fs_status st = fs_atomic_open(&af, path);
    if (st != FS_OK) return st;

    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, NULL);
        fs_atomic_abort(&af);
        fs_log_error("%s: libpng could not start", path);
        return FS_ERR_NOMEM;
    }
    /* Everything below that can longjmp back here touches only af/png/info,
     * which are not modified after setjmp, so their values stay valid. */
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fs_atomic_abort(&af);
        fs_log_error("%s: libpng failed while writing the picture", path);
        return FS_ERR_IO;
    }
    png_init_io(png, af.f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * (size_t)w * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    st = fs_atomic_commit(&af);
    if (st != FS_OK) fs_log_error("%s: could not store the picture", path);
    return st;
}
