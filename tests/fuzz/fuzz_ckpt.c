/*
 * tests/fuzz/fuzz_ckpt.c — libFuzzer target: arbitrary bytes as a checkpoint
 * through fs_ckpt_read: a status, never a crash, leak or huge allocation from
 * a lying header. Replayed by ctest through tests/fuzz/replay.c.
 */
#include "common/ckpt.h"
#include "common/log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (!path[0]) {
        fs_log_set_level(FS_LOG_QUIET);
        snprintf(path, sizeof path, "/tmp/fs_fuzz_%ld.ckpt", (long)getpid());
    }
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    fs_ckpt_meta meta;
    float *p = NULL, *m = NULL, *v = NULL, t;
    if (fs_ckpt_read(path, &meta, &p, &m, &v, &t) == FS_OK) {
        volatile float acc = p[0] + p[meta.nparams - 1];
        if (m) acc += m[meta.nparams - 1] + v[meta.nparams - 1];
        (void)acc;
    }
    free(p);
    free(m);
    free(v);
    unlink(path);
    return 0;
}
