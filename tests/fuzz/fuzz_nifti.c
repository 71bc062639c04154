/*
 * tests/fuzz/fuzz_nifti.c — libFuzzer target: arbitrary bytes as a NIfTI file
 * (.nii.gz when they start with the gzip magic, else .nii) through
 * fs_nifti_read, which must return a status and never crash, leak or read out
 * of bounds. Build with -DFS_FUZZ=ON and clang (see docs/kernels.md § Fuzzing);
 * tests/fuzz/replay.c replays the saved corpus in every ctest run.
 */
#include "node/nifti_io.h"
#include "common/log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[2][64];
    if (!path[0][0]) {
        fs_log_set_level(FS_LOG_QUIET);
        snprintf(path[0], sizeof path[0], "/tmp/fs_fuzz_%ld.nii", (long)getpid());
        snprintf(path[1], sizeof path[1], "/tmp/fs_fuzz_%ld.nii.gz", (long)getpid());
    }
    const char *p = path[size >= 2 && data[0] == 0x1f && data[1] == 0x8b];
    FILE *f = fopen(p, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    fs_volume v = {0};
    if (fs_nifti_read(p, &v) == FS_OK) {
        /* a volume that reads must be fully addressable */
        volatile float acc = 0;
        size_t n = (size_t)v.nx * v.ny * v.nz;
        for (size_t i = 0; i < n; i += 4096) acc += v.data[i];
        if (n) acc += v.data[n - 1];
        (void)acc;
    }
    fs_volume_free(&v);
    unlink(p);
    return 0;
}
