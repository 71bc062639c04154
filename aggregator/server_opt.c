/*
 * aggregator/server_opt.c — see server_opt.h. Layout: names and defaults,
 * the step (one loop per kind, double arithmetic rounded once), the state
 * file (write, read). Tested by tests/test_server_opt.c.
 */
#include "aggregator/server_opt.h"
#include "common/fsutil.h"
#include "common/log.h"
#include "common/wire.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[FS_SOPT_COUNT] = {"fedavg", "fedavgm", "fedadagrad", "fedadam",
                                                 "fedyogi"};

fs_server_opt_hp fs_server_opt_defaults(fs_server_opt_kind kind)
{
    fs_server_opt_hp hp = {kind, 1.0f, 0.9f, 0.9f, 0.99f, 1e-3f};
    if (kind == FS_SOPT_FEDADAGRAD || kind == FS_SOPT_FEDADAM || kind == FS_SOPT_FEDYOGI)
        hp.lr = 0.01f;
    return hp;
}

fs_status fs_server_opt_parse(const char *name, fs_server_opt_kind *out)
{
    for (int k = 0; name && k < FS_SOPT_COUNT; k++)
        if (!strcmp(name, names[k])) {
            *out = (fs_server_opt_kind)k;
            return FS_OK;
        }
    return FS_ERR_ARG;
}

const char *fs_server_opt_name(fs_server_opt_kind kind)
{
    return (unsigned)kind < FS_SOPT_COUNT ? names[kind] : "unknown";
}

int fs_server_opt_has_m(fs_server_opt_kind k) { return k != FS_SOPT_FEDAVG; }
int fs_server_opt_has_v(fs_server_opt_kind k)
{
    return k == FS_SOPT_FEDADAGRAD || k == FS_SOPT_FEDADAM || k == FS_SOPT_FEDYOGI;
}

fs_status fs_server_opt_check(const fs_server_opt_hp *hp)
{
    if (!hp || (unsigned)hp->kind >= FS_SOPT_COUNT) return FS_ERR_ARG;
    if (!(hp->lr > 0) || !isfinite(hp->lr)) {
        fs_log_error("server optimiser %s: server_lr = %g must be > 0", names[hp->kind], hp->lr);
        return FS_ERR_ARG;
    }
    if (!(hp->momentum >= 0 && hp->momentum < 1) || !(hp->beta1 >= 0 && hp->beta1 < 1) ||
        !(hp->beta2 >= 0 && hp->beta2 < 1)) {
        fs_log_error("server optimiser %s: server_momentum = %g, server_beta1 = %g, server_beta2 = %g "
                     "must each lie in [0, 1)", names[hp->kind], hp->momentum, hp->beta1, hp->beta2);
        return FS_ERR_ARG;
    }
    if (!(hp->tau > 0) || !isfinite(hp->tau)) {
        fs_log_error("server optimiser %s: server_tau = %g must be > 0", names[hp->kind], hp->tau);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

void fs_server_opt_init_state(const fs_server_opt_hp *hp, size_t n, float *m, float *v)
{
    if (m && fs_server_opt_has_m(hp->kind)) memset(m, 0, n * sizeof *m);
    if (v && fs_server_opt_has_v(hp->kind)) {
        float t2 = (float)((double)hp->tau * hp->tau);
        for (size_t i = 0; i < n; i++) v[i] = t2;
    }
}

/* One element: returns the new x (and updates *m, *v), all in double. */
static double step1(const fs_server_opt_hp *hp, double x, double d, float *m, float *v)
{
    const double eta = hp->lr, b1 = hp->beta1, b2 = hp->beta2, tau = hp->tau;
    double mm, vv;
    switch (hp->kind) {
    case FS_SOPT_FEDAVG:
        return x + eta * d;
    case FS_SOPT_FEDAVGM:
        mm = (double)hp->momentum * *m + d;
        *m = (float)mm;
        return x + eta * (double)*m;
    case FS_SOPT_FEDADAGRAD:
        vv = (double)*v + d * d;
        break;
    case FS_SOPT_FEDADAM:
        vv = b2 * *v + (1 - b2) * d * d;
        break;
    case FS_SOPT_FEDYOGI: {
        double diff = (double)*v - d * d;
        double sg = diff > 0 ? 1 : diff < 0 ? -1 : 0;
        vv = (double)*v - (1 - b2) * d * d * sg;
        break;
    }
    default:
        return NAN;
    }
    mm = b1 * *m + (1 - b1) * d;
    *m = (float)mm;
    *v = (float)vv;
    /* Yogi's v stays ≥ 0 in exact arithmetic; guard the square root anyway. */
    double sv = *v > 0 ? sqrt((double)*v) : 0.0;
    return x + eta * (double)*m / (sv + tau);
}

fs_status fs_server_opt_step(const fs_server_opt_hp *hp, size_t n, float *x, const float *delta,
                             float *m, float *v)
{
    if (!hp || (!x && n) || (!delta && n)) return FS_ERR_ARG;
    if ((fs_server_opt_has_m(hp->kind) && !m && n) || (fs_server_opt_has_v(hp->kind) && !v && n))
        return FS_ERR_ARG;
    for (size_t i = 0; i < n; i++) {
        float mi = m ? m[i] : 0, vi = v ? v[i] : 0;
        double nx = step1(hp, x[i], delta[i], &mi, &vi);
        float fx = (float)nx;
        if (!isfinite(fx) || !isfinite(mi) || !isfinite(vi)) {
            fs_log_error("server optimiser %s: parameter %zu became %g (delta %g)",
                         fs_server_opt_name(hp->kind), i, nx, (double)delta[i]);
            return FS_ERR_NUMERIC;
        }
        x[i] = fx;
        if (m) m[i] = mi;
        if (v) v[i] = vi;
    }
    return FS_OK;
}

/* ---- the state file ---------------------------------------------------------- */

static const char MAGIC[8] = {'F', 'S', 'S', 'O', 'P', 'T', '0', '1'};

static int put(FILE *f, uint32_t *crc, const void *p, size_t n)
{
    *crc = fs_wire_crc32_bytes(*crc, p, n);
    return fwrite(p, 1, n, f) == n;
}

fs_status fs_server_state_write(const char *path, fs_server_opt_kind kind, uint32_t round, size_t n,
                                const fs_sopt_vec *vecs, uint32_t nvec)
{
    if (!path || (nvec && !vecs)) return FS_ERR_ARG;
    fs_atomic_file af;
    FS_TRY(fs_atomic_open(&af, path));
    uint32_t crc = 0, hdr[4] = {1u, (uint32_t)kind, round, nvec};
    uint64_t n64 = n;
    int ok = put(af.f, &crc, MAGIC, sizeof MAGIC) && put(af.f, &crc, hdr, sizeof hdr) &&
             put(af.f, &crc, &n64, sizeof n64);
    for (uint32_t k = 0; ok && k < nvec; k++)
        ok = put(af.f, &crc, &vecs[k].tag, 4) && put(af.f, &crc, vecs[k].data, n * sizeof(float));
    ok = ok && fwrite(&crc, 1, 4, af.f) == 4;
    if (!ok || ferror(af.f)) {
        fs_log_error("%s: cannot write the server optimiser state: %s", path, strerror(errno));
        fs_atomic_abort(&af);
        return FS_ERR_IO;
    }
    return fs_atomic_commit(&af);
}

static int get(FILE *f, uint32_t *crc, void *p, size_t n)
{
    if (fread(p, 1, n, f) != n) return 0;
    *crc = fs_wire_crc32_bytes(*crc, p, n);
    return 1;
}

fs_status fs_server_state_read(const char *path, fs_server_opt_kind kind, uint32_t round, size_t n,
                               fs_sopt_vec *vecs, uint32_t nvec)
{
    if (!path || (nvec && !vecs)) return FS_ERR_ARG;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) {
            fs_log_error("%s: missing (the server optimiser state of round %u)", path, round);
            return FS_ERR_NOT_FOUND;
        }
        fs_log_error("%s: cannot open: %s", path, strerror(errno));
        return FS_ERR_IO;
    }
    fs_status st = FS_ERR_FORMAT;
    uint32_t crc = 0, hdr[4], got_crc;
    uint64_t n64;
    char magic[8];
    unsigned seen = 0;
    if (!get(f, &crc, magic, 8) || memcmp(magic, MAGIC, 8) || !get(f, &crc, hdr, sizeof hdr) ||
        !get(f, &crc, &n64, 8) || hdr[0] != 1u) {
        fs_log_error("%s: not a fedseg server optimiser state (version 1)", path);
        goto out;
    }
    if (hdr[1] != (uint32_t)kind || hdr[2] != round || n64 != n || hdr[3] != nvec) {
        fs_log_error("%s: holds %s state of round %u for %llu parameters (%u vectors); expected %s, "
                     "round %u, %zu parameters (%u vectors)", path,
                     fs_server_opt_name((fs_server_opt_kind)hdr[1]), hdr[2], (unsigned long long)n64,
                     hdr[3], fs_server_opt_name(kind), round, n, nvec);
        st = FS_ERR_MISMATCH;
        goto out;
    }
    for (uint32_t k = 0; k < nvec; k++) {
        uint32_t tag;
        if (!get(f, &crc, &tag, 4)) goto trunc;
        uint32_t j = 0;
        while (j < nvec && (vecs[j].tag != tag || (seen >> j & 1u))) j++;
        if (j == nvec) {
            fs_log_error("%s: unexpected vector tag %u", path, tag);
            goto out;
        }
        seen |= 1u << j;
        if (!get(f, &crc, vecs[j].data, n * sizeof(float))) goto trunc;
    }
    if (fread(&got_crc, 1, 4, f) != 4) goto trunc;
    if (got_crc != crc) {
        fs_log_error("%s: CRC-32 %08x differs from the stored %08x", path, crc, got_crc);
        st = FS_ERR_CHECKSUM;
        goto out;
    }
    if (fgetc(f) != EOF) {
        fs_log_error("%s: trailing bytes after the CRC", path);
        goto out;
    }
    st = FS_OK;
    goto out;
trunc:
    fs_log_error("%s: truncated", path);
out:
    fclose(f);
    return st;
}
