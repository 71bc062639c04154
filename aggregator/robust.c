/*
 * aggregator/robust.c — see robust.h. Layout: names, the per-coordinate
 * statistic on rows in memory, the spool driver (one chunk buffer per file).
 * Tested by tests/test_robust.c.
 */
#include "aggregator/robust.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "spools hold little-endian fp32 and this file reads them as host floats"
#endif

static const char *const rule_names[FS_AGG_COUNT] = {"mean", "median", "trimmed_mean"};

fs_status fs_agg_rule_parse(const char *name, fs_agg_rule *out)
{
    for (int k = 0; name && k < FS_AGG_COUNT; k++)
        if (!strcmp(name, rule_names[k])) {
            *out = (fs_agg_rule)k;
            return FS_OK;
        }
    return FS_ERR_ARG;
}

const char *fs_agg_rule_name(fs_agg_rule r)
{
    return (unsigned)r < FS_AGG_COUNT ? rule_names[r] : "unknown";
}

/* Values dropped at each end by a trimmed mean of n values. */
static size_t trim_count(double trim, size_t n) { return (size_t)(trim * (double)n + 1e-9); }

fs_status fs_robust_coord(fs_agg_rule rule, double trim, const float *const *rows, size_t n_rows,
                          size_t len, float *out, float *scratch)
{
    if (!rows || !out || !scratch || n_rows == 0 ||
        (rule != FS_AGG_MEDIAN && rule != FS_AGG_TRIMMED_MEAN))
        return FS_ERR_ARG;
    size_t k = 0;
    if (rule == FS_AGG_TRIMMED_MEAN) {
        if (!(trim >= 0 && trim < 0.5)) return FS_ERR_ARG;
        k = trim_count(trim, n_rows);
        if (2 * k >= n_rows) return FS_ERR_ARG;
    }
    for (size_t i = 0; i < len; i++) {
        for (size_t s = 0; s < n_rows; s++) {
            float v = rows[s][i];
            size_t j = s;
            while (j > 0 && scratch[j - 1] > v) {
                scratch[j] = scratch[j - 1];
                j--;
            }
            scratch[j] = v;
        }
        if (rule == FS_AGG_MEDIAN) {
            size_t h = n_rows / 2;
            out[i] = n_rows % 2 ? scratch[h] : (float)(0.5 * ((double)scratch[h - 1] + scratch[h]));
        } else {
            double acc = 0;
            for (size_t s = k; s < n_rows - k; s++) acc += scratch[s];
            out[i] = (float)(acc / (double)(n_rows - 2 * k));
        }
    }
    return FS_OK;
}

static ssize_t read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

fs_status fs_robust_spools(fs_agg_rule rule, double trim, const char *const *paths, size_t n_files,
                           size_t n, size_t chunk_params, float *out)
{
    if (!paths || !out || n_files == 0 || chunk_params == 0) return FS_ERR_ARG;
    fs_status st = FS_ERR_NOMEM;
    int *fds = malloc(n_files * sizeof *fds);
    float **rows = calloc(n_files, sizeof *rows);
    float *scratch = malloc(n_files * sizeof *scratch);
    size_t opened = 0;
    if (!fds || !rows || !scratch) goto out;
    for (size_t s = 0; s < n_files; s++)
        if (!(rows[s] = malloc(chunk_params * sizeof(float)))) goto out;
    for (; opened < n_files; opened++) {
        fds[opened] = open(paths[opened], O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (fds[opened] < 0 || fstat(fds[opened], &sb) != 0) {
            fs_log_error("%s: cannot open the update: %s", paths[opened], strerror(errno));
            if (fds[opened] >= 0) close(fds[opened]);
            st = FS_ERR_IO;
            goto out;
        }
        if ((uint64_t)sb.st_size != (uint64_t)n * 4u) {
            fs_log_error("%s: holds %lld bytes, expected %llu", paths[opened], (long long)sb.st_size,
                         (unsigned long long)n * 4u);
            close(fds[opened]);
            st = FS_ERR_FORMAT;
            goto out;
        }
    }
    st = FS_OK;
    for (size_t off = 0; off < n && st == FS_OK; off += chunk_params) {
        size_t len = n - off < chunk_params ? n - off : chunk_params;
        for (size_t s = 0; s < n_files; s++)
            if (read_full(fds[s], rows[s], len * 4) != (ssize_t)(len * 4)) {
                fs_log_error("%s: cannot read parameters %zu..%zu: %s", paths[s], off, off + len,
                             strerror(errno));
                st = FS_ERR_IO;
                break;
            }
        if (st == FS_OK)
            st = fs_robust_coord(rule, trim, (const float *const *)rows, n_files, len, out + off, scratch);
    }
out:
    for (size_t s = 0; s < opened; s++) close(fds[s]);
    for (size_t s = 0; rows && s < n_files; s++) free(rows[s]);
    free(rows);
    free(fds);
    free(scratch);
    return st;
}
