/*
 * common/ckpt.h — model checkpoints: one file holding a model's flat fp32
 * parameter vector (and optionally the Adam moments), safe to trust only after
 * every check passes.
 *
 * File layout (little-endian):
 *   0  char[8]  magic "FSEGCKPT"
 *   8  u32      format version (FS_CKPT_VERSION)
 *   12 u32      header bytes (64)
 *   16 char[16] preset name, NUL-padded ("tiny", "small", "ref")
 *   32 u32 base, u32 depth, u32 input size, u32 flags (bit 0: Adam state present)
 *   48 u64      parameter count P
 *   56 u32      epoch (or federated round), u32 reserved (0)
 *   64 float[P] parameters  [+ float[P] m, float[P] v, float adam step]  (bit 0)
 *   .. u32      CRC-32 (zlib) of every byte before it
 * Written to a temporary file in the same folder, fsync'ed, then renamed over
 * the destination: a crash leaves either the old or the new file, never half.
 */
#ifndef FS_CKPT_H
#define FS_CKPT_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/status.h"

#define FS_CKPT_VERSION 1u

typedef struct {
    char preset[16];
    uint32_t base, depth, size;
    uint64_t nparams;
    uint32_t epoch;
} fs_ckpt_meta;

/* m, v may both be NULL (no optimiser state saved); adam_t is then ignored. */
fs_status fs_ckpt_write(const char *path, const fs_ckpt_meta *meta, const float *params,
                        const float *m, const float *v, float adam_t);

/* Reads and verifies a checkpoint. On FS_OK, *params (and *m, *v when the file
 * holds Adam state and the pointers are non-NULL; else they are set to NULL)
 * are malloc'ed and owned by the caller. Every failure is logged naming the
 * path and the problem: not a checkpoint, newer/older version, truncated,
 * checksum mismatch, inconsistent sizes. */
fs_status fs_ckpt_read(const char *path, fs_ckpt_meta *meta, float **params, float **m,
                       float **v, float *adam_t);

#endif
