/*
 * common/ckpt.c — see ckpt.h. Tested by tests/test_ckpt.c (round trip,
 * truncation at every region, flipped bytes, wrong magic and version).
 */
#include "common/ckpt.h"
#include "common/log.h"
#include "common/fsutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define HDR_BYTES 64u
static const char MAGIC[8] = {'F', 'S', 'E', 'G', 'C', 'K', 'P', 'T'};

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

/* Floats are stored in the host's byte order, which must be little-endian. */
static int host_is_le(void) { uint16_t x = 1; return *(uint8_t *)&x == 1; }

typedef struct { FILE *f; uLong crc; int err; } wr;

static void wr_bytes(wr *w, const void *p, size_t n)
{
    if (w->err || n == 0) return;
    const Bytef *b = p;
    size_t done = 0;
    while (done < n) { /* crc32 takes a uInt length */
        size_t chunk = n - done > (1u << 30) ? (1u << 30) : n - done;
        w->crc = crc32(w->crc, b + done, (uInt)chunk);
        done += chunk;
    }
    if (fwrite(p, 1, n, w->f) != n) w->err = errno ? errno : EIO;
}

fs_status fs_ckpt_write(const char *path, const fs_ckpt_meta *meta, const float *params,
                        const float *m, const float *v, float adam_t)
{
    if (!path || !meta || !params || (m == NULL) != (v == NULL) || meta->nparams == 0)
        return FS_ERR_ARG;
    if (!host_is_le()) { fs_log_error("%s: checkpoints need a little-endian host", path); return FS_ERR_UNSUPPORTED; }
    uint8_t hdr[HDR_BYTES] = {0};
    memcpy(hdr, MAGIC, 8);
    put32(hdr + 8, FS_CKPT_VERSION);
    put32(hdr + 12, HDR_BYTES);
    memcpy(hdr + 16, meta->preset, strnlen(meta->preset, 15)); /* NUL-padded: hdr is zeroed */
    put32(hdr + 32, meta->base);
    put32(hdr + 36, meta->depth);
    put32(hdr + 40, meta->size);
    put32(hdr + 44, m ? 1u : 0u);
    put64(hdr + 48, meta->nparams);
    put32(hdr + 56, meta->epoch);

    fs_atomic_file af;
    FS_TRY(fs_atomic_open(&af, path));
    wr w = {af.f, crc32(0L, Z_NULL, 0), 0};
    size_t bytes = (size_t)meta->nparams * sizeof(float);
    wr_bytes(&w, hdr, sizeof hdr);
    wr_bytes(&w, params, bytes);
    if (m) {
        wr_bytes(&w, m, bytes);
        wr_bytes(&w, v, bytes);
        wr_bytes(&w, &adam_t, sizeof adam_t);
    }
    uint8_t crc[4];
    put32(crc, (uint32_t)w.crc);
    if (!w.err && fwrite(crc, 1, 4, af.f) != 4) w.err = errno ? errno : EIO;
    if (w.err) {
        fs_log_error("%s: write failed: %s", path, strerror(w.err));
        fs_atomic_abort(&af);
        return FS_ERR_IO;
    }
    return fs_atomic_commit(&af);
}

/* Reads exactly n bytes into p and folds them into *crc; FS_ERR_FORMAT on a
 * short read (the file is truncated). */
static fs_status rd_bytes(FILE *f, const char *path, void *p, size_t n, uLong *crc, const char *what)
{
    if (fread(p, 1, n, f) != n) {
        fs_log_error("%s: truncated checkpoint (file ends inside the %s)", path, what);
        return FS_ERR_FORMAT;
    }
    const Bytef *b = p;
    for (size_t done = 0; done < n;) {
        size_t chunk = n - done > (1u << 30) ? (1u << 30) : n - done;
        *crc = crc32(*crc, b + done, (uInt)chunk);
        done += chunk;
    }
    return FS_OK;
}

fs_status fs_ckpt_read(const char *path, fs_ckpt_meta *meta, float **params, float **m,
                       float **v, float *adam_t)
{
    if (!path || !meta || !params) return FS_ERR_ARG;
    *params = NULL;
    if (m) *m = NULL;
    if (v) *v = NULL;
    if (!host_is_le()) { fs_log_error("%s: checkpoints need a little-endian host", path); return FS_ERR_UNSUPPORTED; }
    FILE *f = fopen(path, "rb");
    if (!f) {
        fs_log_error("%s: cannot open checkpoint: %s", path, strerror(errno));
        return errno == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO;
    }
    fs_status st = FS_OK;
    float *p = NULL, *pm = NULL, *pv = NULL;
    uint8_t hdr[HDR_BYTES];
    uLong crc = crc32(0L, Z_NULL, 0);
    if (fread(hdr, 1, 8, f) != 8 || memcmp(hdr, MAGIC, 8) != 0) {
        fs_log_error("%s: not a fedseg checkpoint (bad magic)", path);
        st = FS_ERR_FORMAT; goto done;
    }
    crc = crc32(crc, hdr, 8);
    if ((st = rd_bytes(f, path, hdr + 8, HDR_BYTES - 8, &crc, "header")) != FS_OK) goto done;
    uint32_t version = get32(hdr + 8), hbytes = get32(hdr + 12), flags = get32(hdr + 44);
    if (version != FS_CKPT_VERSION) {
        fs_log_error("%s: checkpoint format version %u, this fedseg reads version %u", path,
                     version, FS_CKPT_VERSION);
        st = FS_ERR_MISMATCH; goto done;
    }
    memset(meta, 0, sizeof *meta);
    memcpy(meta->preset, hdr + 16, 15);
    meta->base = get32(hdr + 32);
    meta->depth = get32(hdr + 36);
    meta->size = get32(hdr + 40);
    meta->nparams = get64(hdr + 48);
    meta->epoch = get32(hdr + 56);
    if (hbytes != HDR_BYTES || (flags & ~1u) || meta->nparams == 0 || meta->nparams > (1ull << 32)) {
        fs_log_error("%s: corrupt checkpoint header", path);
        st = FS_ERR_FORMAT; goto done;
    }
    /* The file's length must be exactly what the header announces. */
    size_t bytes = (size_t)meta->nparams * sizeof(float);
    size_t want = HDR_BYTES + bytes + ((flags & 1u) ? 2 * bytes + sizeof(float) : 0) + 4;
    long cur = ftell(f);
    if (fseek(f, 0, SEEK_END) == 0) {
        long end = ftell(f);
        if (end >= 0 && (size_t)end != want) {
            fs_log_error("%s: checkpoint is %ld bytes, its header announces %zu (%s)", path, end,
                         want, (size_t)end < want ? "truncated" : "trailing garbage");
            st = FS_ERR_FORMAT; goto done;
        }
    }
    fseek(f, cur, SEEK_SET);
    if (!(p = malloc(bytes))) { st = FS_ERR_NOMEM; goto done; }
    if ((st = rd_bytes(f, path, p, bytes, &crc, "parameters")) != FS_OK) goto done;
    float t = 0;
    if (flags & 1u) {
        if (!(pm = malloc(bytes)) || !(pv = malloc(bytes))) { st = FS_ERR_NOMEM; goto done; }
        if ((st = rd_bytes(f, path, pm, bytes, &crc, "optimiser state")) != FS_OK) goto done;
        if ((st = rd_bytes(f, path, pv, bytes, &crc, "optimiser state")) != FS_OK) goto done;
        if ((st = rd_bytes(f, path, &t, sizeof t, &crc, "optimiser state")) != FS_OK) goto done;
    }
    uint8_t c4[4];
    if (fread(c4, 1, 4, f) != 4) {
        fs_log_error("%s: truncated checkpoint (no checksum)", path);
        st = FS_ERR_FORMAT; goto done;
    }
    if (get32(c4) != (uint32_t)crc) {
        fs_log_error("%s: checkpoint checksum mismatch (file corrupt)", path);
        st = FS_ERR_CHECKSUM; goto done;
    }
    *params = p; p = NULL;
    if (m && v) { *m = pm; *v = pv; pm = pv = NULL; }
    if (adam_t) *adam_t = t;
done:
    free(p); free(pm); free(pv);
    fclose(f);
    return st;
}
