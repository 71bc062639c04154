/*
 * common/fsutil.h — small file-system helpers: atomic file replacement
 * (write a temporary file in the same folder, fsync, rename) and mkdir -p.
 */
#ifndef FS_FSUTIL_H
#define FS_FSUTIL_H

#include <stdio.h>
#include "kernels/status.h"

typedef struct {
    FILE *f;
    char tmp[4096];
    char dst[4096];
} fs_atomic_file;

/* Opens a temporary file next to dst for writing ("DIR/.NAME.tmp.PID"). */
fs_status fs_atomic_open(fs_atomic_file *af, const char *dst);
/* Flushes, fsyncs, closes and renames over dst; on failure removes the
 * temporary file and leaves dst untouched. */
fs_status fs_atomic_commit(fs_atomic_file *af);
/* Closes and removes the temporary file; dst untouched. */
void fs_atomic_abort(fs_atomic_file *af);

/* Creates dir and its missing parents (mode 0755). */
fs_status fs_mkdir_p(const char *dir);

#endif
