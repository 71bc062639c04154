/*
 * tests/test_ckpt.c — checkpoints: round trip with and without Adam state;
 * every truncation length, a flipped byte in every region, wrong magic and
 * version, trailing garbage → refused with the right status; a failed read
 * never returns buffers; writes leave no temporary file behind.
 */
#include "check.h"
#include "common/ckpt.h"
#include "common/log.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/fs_ckpt_XXXXXX";

static long file_size(const char *p) { FILE *f = fopen(p, "rb"); if (!f) return -1; fseek(f, 0, SEEK_END); long n = ftell(f); fclose(f); return n; }

static void copy_prefix(const char *src, const char *dst, long n, long flip_at)
{
    FILE *a = fopen(src, "rb"), *b = fopen(dst, "wb");
    for (long i = 0; i < n; i++) {
        int c = fgetc(a);
        if (i == flip_at) c ^= 0x10;
        fputc(c, b);
    }
    fclose(a);
    fclose(b);
}

int main(void)
{
    fs_log_set_level(FS_LOG_QUIET);
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char path[256], bad[256];
    snprintf(path, sizeof path, "%s/model.ckpt", dir);
    snprintf(bad, sizeof bad, "%s/bad.ckpt", dir);
    const size_t P = 1000;
    float p[1000], m[1000], v[1000];
    for (size_t i = 0; i < P; i++) { p[i] = (float)i * 0.5f - 3; m[i] = (float)i; v[i] = (float)(i * i); }
    fs_ckpt_meta meta = {"tiny", 8, 4, 64, P, 7};
    CHECK(fs_ckpt_write(path, &meta, p, m, v, 42.0f) == FS_OK, "write");
    fs_ckpt_meta got;
    float *rp = NULL, *rm = NULL, *rv = NULL, t = 0;
    CHECK(fs_ckpt_read(path, &got, &rp, &rm, &rv, &t) == FS_OK, "read");
    CHECK(rp && rm && rv && !memcmp(rp, p, sizeof p) && !memcmp(rm, m, sizeof m) && !memcmp(rv, v, sizeof v),
          "round trip changed the data");
    CHECK(t == 42.0f && got.epoch == 7 && got.nparams == P && !strcmp(got.preset, "tiny") && got.base == 8 &&
          got.depth == 4 && got.size == 64, "round trip changed the header");
    free(rp); free(rm); free(rv);

    /* no temporary files left behind */
    DIR *d = opendir(dir);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));) if (e->d_name[0] != '.' || strstr(e->d_name, "tmp")) entries++;
    closedir(d);
    CHECK(entries == 1, "%d entries in the folder after one write (temporary file left?)", entries);

    long n = file_size(path);
    CHECK(n == 64 + 3 * 4000 + 4 + 4, "size %ld", n);
    /* every truncation is refused */
    int trunc_ok = 1;
    for (long cut = 0; cut < n; cut += (cut < 80 ? 1 : 397)) {
        copy_prefix(path, bad, cut, -1);
        rp = (float *)1;
        fs_status st = fs_ckpt_read(bad, &got, &rp, NULL, NULL, NULL);
        if (st == FS_OK || rp != NULL) { trunc_ok = 0; fprintf(stderr, "truncation at %ld accepted\n", cut); }
    }
    CHECK(trunc_ok, "a truncated checkpoint was accepted");
    /* a flipped byte anywhere is refused */
    int flip_ok = 1;
    for (long at = 0; at < n; at += (at < 80 ? 1 : 211)) {
        copy_prefix(path, bad, n, at);
        rp = NULL;
        fs_status st = fs_ckpt_read(bad, &got, &rp, NULL, NULL, NULL);
        if (st == FS_OK) { flip_ok = 0; fprintf(stderr, "flip at %ld accepted\n", at); }
        free(rp);
    }
    CHECK(flip_ok, "a corrupted checkpoint was accepted");
    copy_prefix(path, bad, n, 0);
    CHECK(fs_ckpt_read(bad, &got, &rp, NULL, NULL, NULL) == FS_ERR_FORMAT, "bad magic not FS_ERR_FORMAT");
    copy_prefix(path, bad, n, 8);
    CHECK(fs_ckpt_read(bad, &got, &rp, NULL, NULL, NULL) == FS_ERR_MISMATCH, "bad version not FS_ERR_MISMATCH");
    copy_prefix(path, bad, n, 100);
    CHECK(fs_ckpt_read(bad, &got, &rp, NULL, NULL, NULL) == FS_ERR_CHECKSUM, "payload flip not FS_ERR_CHECKSUM");
    FILE *f = fopen(bad, "wb");
    fputs("not a checkpoint at all", f);
    fclose(f);
    CHECK(fs_ckpt_read(bad, &got, &rp, NULL, NULL, NULL) == FS_ERR_FORMAT, "garbage accepted");
    /* trailing bytes */
    copy_prefix(path, bad, n, -1);
    f = fopen(bad, "ab"); fputc(0, f); fclose(f);
    CHECK(fs_ckpt_read(bad, &got, &rp, NULL, NULL, NULL) == FS_ERR_FORMAT, "trailing garbage accepted");
    CHECK(fs_ckpt_read("/nonexistent/x.ckpt", &got, &rp, NULL, NULL, NULL) == FS_ERR_NOT_FOUND, "missing file");

    /* without Adam state; a reader asking for m, v gets NULL */
    CHECK(fs_ckpt_write(path, &meta, p, NULL, NULL, 0) == FS_OK, "write params only");
    rm = (float *)1;
    CHECK(fs_ckpt_read(path, &got, &rp, &rm, &rv, &t) == FS_OK && rm == NULL && !memcmp(rp, p, sizeof p), "params only");
    free(rp);
    /* writing into a missing folder fails cleanly and keeps nothing */
    CHECK(fs_ckpt_write("/nonexistent/dir/x.ckpt", &meta, p, NULL, NULL, 0) == FS_ERR_IO, "write to missing folder");
    unlink(path);
    unlink(bad);
    rmdir(dir);
    return check_result();
}
