/*
 * common/png.h — write 8-bit RGB pictures through libpng (montages of the
 * synthetic sites, prediction overlays, plots drawn by us).
 */
#ifndef FS_PNG_H
#define FS_PNG_H

#include "kernels/status.h"
#include <stdint.h>

/* rgb: h rows of w pixels, 3 bytes each, top row first. Written atomically
 * (temporary file + rename). FS_ERR_IO names the path in the log. */
fs_status fs_png_write_rgb(const char *path, int w, int h, const uint8_t *rgb);

#endif
