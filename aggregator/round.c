/*
 * aggregator/round.c — the round state machine (see round.h for the rules
 * and the files in state_dir; docs/protocol.md § Rounds for the prose).
 *
 * Layout of this file:
 *   helpers          names for logs, paths, a string builder, fsync of folders
 *   sites            the site table, activity, sampling
 *   spools           per-(round, site) update files: read back and fold
 *   state & metrics  round.state, metrics.jsonl
 *   round life       open, close (the commit sequence), deadline
 *   resume           replaying the journal in fs_round_open
 *   public API
 *
 * The journal's records (aggregator/journal.h payloads):
 *   join SITE N                      a site joined with N samples
 *   open R SITE,SITE,...             round R's selection (a later one for R wins)
 *   accept R SITE N CRC LOSS WT TC ET TRAIN_S UPLOAD_S BYTES
 *                                    SITE's update for round R committed (floats in %a)
 *   close R {json}                   round R decided closed; its metrics line
 * Records of completed rounds are kept (an audit trail) and skipped on resume.
 *
 * Tested by tests/test_round.c.
 */
#include "aggregator/round.h"
#include "kernels/backend.h"
#include "aggregator/journal.h"
#include "aggregator/round_sum.h"
#include "aggregator/sum_device.h"
#include "aggregator/noniid_round.h"
#include "common/fsutil.h"
#include "common/he_proto.h"
#include "common/log.h"
#include "common/rng.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PATH_LEN 4096
/* Write-back of a spool is started every this many bytes while the update
 * streams in, so that the fsync before the ack has little left to write
 * (that fsync blocks the event loop that receives every other upload). */
#define SPOOL_FLUSH_BYTES ((uint64_t)8 << 20)

typedef struct {
    char name[FS_WIRE_NAME_LEN];
    int joined;
    uint64_t join_samples;
    double last_seen;
    int selected, submitted, uploading;
    /* the accepted update of the current round */
    uint64_t n;
    uint32_t crc;
    float loss, dice[3];
    double train_s, upload_s;
    uint64_t bytes_recv, bytes_sent;
    int unclipped;            /* central DP: its update's norm was within the clip */
    double silent_at;         /* encrypted aggregation: missed a key stage at this time;
                                 inactive until it calls again (last_seen later) */
    long sa_index;            /* index in the secure-aggregation attempt, -1 = none */
} fs_site;

struct fs_round_upload {
    fs_round_upload *next;
    size_t site;
    uint32_t round;
    fs_wire_update_header hdr;
    int fd;                   /* the spool, -1 once closed */
    int dead;                 /* refused or cut off: later chunks are refused */
    fs_status dead_status;
    char dead_why[FS_WIRE_REASON_LEN];
    uint64_t received;        /* parameters */
    uint64_t flushed;         /* spool bytes whose write-back was started */
    uint32_t crc;
    double sumsq;             /* Σ x² in index order (differential privacy's bound) */
    double t_begin;
    char path[PATH_LEN];
    /* encrypted: the ciphertext object being assembled from the chunks, each
     * verified as soon as it is complete (the fold then only adds) */
    uint8_t *he_obj;
    size_t he_fill;
    uint64_t he_done;         /* objects verified */
};

static void upload_free(fs_round_upload *u)
{
    if (u) free(u->he_obj);
    free(u);
}

struct fs_round {
    fs_round_config cfg;      /* string pointers below point into this object */
    char state_dir[PATH_LEN], spool_dir[PATH_LEN], ckpt_path[PATH_LEN], state_path[PATH_LEN],
        journal_path[PATH_LEN], metrics_path[PATH_LEN];
    fs_site *sites;
    size_t n_sites;
    size_t P;
    size_t U;                 /* update / download length: P, or 2·P with SCAFFOLD */
    float *model;             /* w_completed (then c with SCAFFOLD: U floats) */
    uint32_t model_crc;       /* CRC-32 of w_completed (P floats) */
    uint32_t dl_crc;          /* CRC-32 of the download (U floats) */
    fs_noniid_server srv;     /* server optimiser moments (aggregator/noniid_round.h) */
    uint8_t *local_mask;      /* FedBN: parameters whose delta must be 0 (or NULL) */
    fs_round_sum sum;
    uint8_t *rbuf;            /* one chunk of spool bytes */
    float *fbuf;              /* the same chunk as floats */
    uint32_t completed;
    int open;                 /* round completed+1 has its selection */
    int closing;              /* its close is decided (close record written) */
    char *close_json;         /* the decided close's metrics line */
    double opened_at, deadline, quorum_since;
    unsigned extensions;
    size_t *order, n_accepted;/* accepted sites, in journal order */
    fs_journal journal;
    fs_round_upload *uploads;
    uint32_t metrics_last;    /* last round with a metrics line */
    fs_round_crash crash_point;
    unsigned crash_nth;
    int dead;
    int dp;                   /* central differential privacy is on */
    int dp_dist;              /* distributed DP (noise shares under secure aggregation) */
    int dp_f;                 /* its fixed-point exponent (fs_dp_ddg_quant_bits)     */
    uint32_t sa_last_masked;  /* masked inputs in the attempt that closed the round  */
    fs_dp_accountant dpa;     /* its ledger over the completed rounds */
    double dp_clip_cur;       /* central DP: the clip of the open round (float-exact) */
    double dp_sum_sigma;      /* the noise multiplier of the sum (σ, or σ_Δ when adaptive) */
    fs_dp_adaptive dpad;      /* adaptive clipping (cfg.dp.adaptive)                */
    /* secure aggregation of the open round (cfg.secure_agg) */
    fs_secagg_server *sa;     /* the attempt in progress (NULL = none)      */
    fs_secagg_params sap;     /* its public parameters                      */
    int sa_f;                 /* fixed-point exponent of its quantisation   */
    uint64_t sa_wcap;         /* its public cap on a site's sample count    */
    uint32_t sa_attempt;      /* id of the current (or last) attempt        */
    int sa_stage;             /* 0 keys, 1 shares, 2 masked inputs, 3 unmasking */
    double sa_deadline;       /* of stages 0, 1 and 3                        */
    double sa_t_masked;       /* when the masked-input stage closed          */
    uint8_t *sa_keys, *sa_req;/* the KEYS broadcast, the unmasking request  */
    size_t sa_keys_len, sa_req_len;
    fs_masked_sum *sa_msum;   /* P + 1 words: Σ of masked vectors mod 2^32,
                                 on the sums' device (round_sum.h)          */
    uint32_t *sa_sum;         /* its host copy for unmasking when it lives on
                                 the GPU (allocated then), else NULL       */
    char sa_summary[384];     /* JSON of the attempt that closed the round   */
    /* encrypted aggregation of the open round (cfg.encrypted); the sa_*
     * fields above number its attempts, stages (0 keys, 1 key shares,
     * 2 ciphertext uploads, 3 threshold decryption) and deadlines */
    fs_he_server *he;         /* the attempt in progress (NULL = none)      */
    fs_he_params hep;         /* its public parameters                      */
    uint8_t *he_bcast;        /* the collective key broadcast               */
    size_t he_bcast_len;
    int64_t *he_res;          /* P + 1: the decrypted sum                   */
};

/* The aggregator sees only a masked or encrypted sum of the updates. */
#define PRIVATE_SUM(a) ((a)->cfg.secure_agg || (a)->cfg.encrypted)

/* ---- helpers ------------------------------------------------------------ */

/* WARNING: identities come from peers' certificates; they are printed only
 * through this, which keeps 63 printable ASCII characters and marks others. */
static const char *who(const char *id, char buf[72])
{
    if (!id) return "(none)";
    size_t i = 0;
    for (; id[i] && i < 63; i++) buf[i] = (id[i] > 0x20 && id[i] < 0x7f) ? id[i] : '?';
    buf[i] = 0;
    if (id[i]) strcpy(buf + i, "...");
    return buf;
}

static int valid_site_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= FS_WIRE_NAME_LEN) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Formats a refusal into why (when given) and logs it as a warning naming
 * the site. Returns st so callers can `return refuse(...)`. */
static fs_status refuse(fs_status st, const char *identity, char *why, size_t whylen,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static fs_status refuse(fs_status st, const char *identity, char *why, size_t whylen,
                        const char *fmt, ...)
{
    char msg[FS_WIRE_REASON_LEN], nb[72];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (why && whylen) snprintf(why, whylen, "%s", msg);
    fs_log_warn("site %s refused: %s", who(identity, nb), msg);
    return st;
}

static fs_status set_path(char *dst, const char *dir, const char *name)
{
    int n = snprintf(dst, PATH_LEN, "%s/%s", dir, name);
    return (n < 0 || n >= PATH_LEN) ? FS_ERR_ARG : FS_OK;
}

/* fsync of a folder, so that file creations, renames and deletions in it
 * survive a power loss. Failure is logged and returned. */
static fs_status fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        fs_log_error("%s: cannot sync the folder: %s", dir, strerror(errno));
        if (fd >= 0) close(fd);
        return FS_ERR_IO;
    }
    close(fd);
    return FS_OK;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads up to n bytes (fewer only at end of file). -1 on error. */
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

/* A growing string for JSON lines and journal payloads. */
typedef struct { char *p; size_t len, cap; int err; } sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->err) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) { b->err = 1; return; }
        if (b->p && b->len + (size_t)n < b->cap) { b->len += (size_t)n; return; }
        size_t cap = (b->cap ? b->cap * 2 : 256) + (size_t)n;
        char *p = realloc(b->p, cap);
        if (!p) { b->err = 1; return; }
        b->p = p;
        b->cap = cap;
    }
}

/* A float as JSON: shortest round-trip-safe text, null for NaN/Inf. */
static void sb_num(sbuf *b, double v)
{
    if (isfinite(v)) sb_printf(b, "%.9g", v);
    else sb_printf(b, "null");
}

/* Crash simulation: true when the armed point is reached for the nth time;
 * the object is dead from then on. */
static int crash_here(fs_round *a, fs_round_crash p)
{
    if (a->crash_point != p || a->crash_nth == 0) return 0;
    if (--a->crash_nth > 0) return 0;
    a->crash_point = FS_CRASH_NONE;
    a->dead = 1;
    fs_log_warn("round: simulated crash (test point %d)", (int)p);
    return 1;
}
#define CRASH_POINT(a, p) do { if (crash_here((a), (p))) return FS_ERR_IO; } while (0)

/* ---- sites -------------------------------------------------------------- */

static long site_find(const fs_round *a, const char *name)
{
    if (!name) return -1;
    for (size_t i = 0; i < a->n_sites; i++)
        if (strcmp(a->sites[i].name, name) == 0) return (long)i;
    return -1;
}

static int site_active(const fs_round *a, const fs_site *s, double now)
{
    if (s->silent_at > 0 && s->last_seen <= s->silent_at) return 0;
    return s->joined && (a->cfg.site_timeout_s <= 0 || now - s->last_seen <= a->cfg.site_timeout_s);
}

static size_t count_active(const fs_round *a, double now)
{
    size_t n = 0;
    for (size_t i = 0; i < a->n_sites; i++) n += (size_t)site_active(a, &a->sites[i], now);
    return n;
}

/* How many sites a round takes out of `active`: max(min_sites,
 * ceil(fraction·active)), at most active. */
static size_t sample_size(const fs_round *a, size_t active)
{
    double want = ceil(a->cfg.fraction * (double)active - 1e-9);
    size_t k = want < 1 ? 1 : (size_t)want;
    if (k < a->cfg.min_sites) k = a->cfg.min_sites;
    return k < active ? k : active;
}

/* Marks k of the candidate sites (indices in site-list order) selected,
 * drawn by a partial Fisher–Yates shuffle from a generator seeded by
 * (seed, round, extension): the same inputs always give the same sites. */
static void draw_sites(fs_round *a, size_t *cand, size_t nc, size_t k, uint32_t round,
                       unsigned extension)
{
    fs_rng r;
    fs_rng_seed(&r, a->cfg.seed ^ ((uint64_t)extension << 40), round);
    for (size_t i = 0; i < k && i < nc; i++) {
        size_t j = i + (size_t)fs_rng_below(&r, nc - i);
        size_t t = cand[i];
        cand[i] = cand[j];
        cand[j] = t;
        a->sites[cand[i]].selected = 1;
    }
}

/* The journal payload "open R site,site,..." for the current selection. */
static fs_status journal_selection(fs_round *a, uint32_t round)
{
    sbuf b = {0};
    sb_printf(&b, "open %u ", round);
    int first = 1;
    for (size_t i = 0; i < a->n_sites; i++)
        if (a->sites[i].selected) {
            sb_printf(&b, "%s%s", first ? "" : ",", a->sites[i].name);
            first = 0;
        }
    fs_status st = b.err ? FS_ERR_NOMEM : fs_journal_append(&a->journal, b.p);
    free(b.p);
    return st;
}

static void selection_text(const fs_round *a, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = 0;
    for (size_t i = 0; i < a->n_sites && used + 1 < n; i++)
        if (a->sites[i].selected) {
            int w = snprintf(buf + used, n - used, "%s%s", used ? ", " : "", a->sites[i].name);
            if (w < 0) break;
            used += (size_t)w;
        }
}

/* ---- spools ------------------------------------------------------------- */

static fs_status spool_path(const fs_round *a, char *dst, uint32_t round, const char *site)
{
    int n = snprintf(dst, PATH_LEN, "%s/r%u_%s.upd", a->spool_dir, round, site);
    return (n < 0 || n >= PATH_LEN) ? FS_ERR_ARG : FS_OK;
}

/*
 * The one place where an update enters the sum: reads the accepted spool of
 * site si (current round) back chunk by chunk and folds n_s·delta into the
 * sum, then adds the weight n_s. Checks the file's size, every value's
 * finiteness and the CRC recorded at acceptance. With verify_first the
 * whole file is checked before anything is folded (the sum is untouched on
 * failure); without it (the live path, where the bytes were just verified
 * on arrival) a failure may leave a partial fold and *touched = 1 — the
 * caller then rebuilds the sum. Failures are logged.
 */
/* A site's weight in the round's sum: its sample count (FedAvg), or 1 under
 * differential privacy (sample counts are data-dependent and unbounded, so
 * they would break the sensitivity bound; common/dp.h). */
static double site_weight(const fs_round *a, const fs_site *s)
{
    return a->dp ? 1.0 : (double)s->n;
}

static fs_status fold_spool(fs_round *a, size_t si, int verify_first, int *touched)
{
    const fs_site *s = &a->sites[si];
    char path[PATH_LEN];
    *touched = 0;
    FS_TRY(spool_path(a, path, a->completed + 1, s->name));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fs_log_error("%s: cannot open the accepted update of site %s: %s", path, s->name,
                     strerror(errno));
        return FS_ERR_IO;
    }
    struct stat stt;
    fs_status st = FS_OK;
    if (fstat(fd, &stt) != 0) stt.st_size = -1;
    if ((uint64_t)stt.st_size != (uint64_t)a->U * 4u) {
        fs_log_error("%s: holds %lld bytes, expected %llu", path, (long long)stt.st_size,
                     (unsigned long long)a->U * 4u);
        close(fd);
        return FS_ERR_FORMAT;
    }
    for (int pass = verify_first ? 0 : 1; pass < 2 && st == FS_OK; pass++) {
        if (lseek(fd, 0, SEEK_SET) != 0) { st = FS_ERR_IO; break; }
        uint32_t crc = 0;
        for (size_t off = 0; off < a->U;) {
            size_t n = a->U - off < FS_CHUNK_PARAMS ? a->U - off : FS_CHUNK_PARAMS;
            ssize_t got = read_full(fd, a->rbuf, n * 4);
            if (got != (ssize_t)(n * 4)) {
                fs_log_error("%s: cannot read back: %s", path, got < 0 ? strerror(errno) : "short file");
                st = FS_ERR_IO;
                break;
            }
            crc = fs_wire_crc32_bytes(crc, a->rbuf, n * 4);
            if (pass == 0) {
                size_t bad;
                if (fs_wire_check_finite(a->rbuf, n * 4, &bad) != FS_OK) {
                    fs_log_error("%s: parameter %zu is not finite", path, off + bad);
                    st = FS_ERR_NUMERIC;
                    break;
                }
            } else {
                fs_wire_copy_f32(a->fbuf, a->rbuf, n * 4);
                st = fs_round_sum_fold(&a->sum, off, a->fbuf, n, site_weight(a, s));
                if (st != FS_OK) {
                    fs_log_error("%s: cannot fold parameters %zu..%zu: %s", path, off, off + n,
                                 fs_status_str(st));
                    break;
                }
                *touched = 1;
            }
            off += n;
        }
        if (st == FS_OK && crc != s->crc) {
            fs_log_error("%s: CRC-32 %08x differs from the accepted update's %08x", path, crc, s->crc);
            st = FS_ERR_CHECKSUM;
        }
    }
    close(fd);
    if (st == FS_OK) st = fs_round_sum_add_weight(&a->sum, site_weight(a, s));
    return st;
}

/* Drops accepted update k (position in a->order) from the round: the site
 * counts as not submitted and, while selected, is asked to train again. */
static void drop_accepted(fs_round *a, size_t k, const char *why)
{
    size_t si = a->order[k];
    fs_log_error("round %u: the accepted update of site %s is dropped (%s); the site will be asked "
                 "for it again", a->completed + 1, a->sites[si].name, why);
    a->sites[si].submitted = 0;
    memmove(a->order + k, a->order + k + 1, (a->n_accepted - k - 1) * sizeof *a->order);
    a->n_accepted--;
}

/* Rebuilds the round's sum from the accepted spools in journal order (the
 * order they were folded in the first place, so the bits are the same). */
static void sa_restart(fs_round *a, const char *why);

static void rebuild_sum(fs_round *a)
{
    if (PRIVATE_SUM(a)) {
        /* masked updates cannot be re-folded (their masks are gone) */
        sa_restart(a, "the round's result could not be saved");
        return;
    }
    fs_round_sum_reset(&a->sum);
    for (size_t k = 0; k < a->n_accepted;) {
        int touched;
        if (fold_spool(a, a->order[k], 1, &touched) == FS_OK) { k++; continue; }
        drop_accepted(a, k, "its spool cannot be read back");
        /* A verified fold failed midway only on a read error: start over. */
        if (touched) { rebuild_sum(a); return; }
    }
}

/* Deletes every file in the spool folder except the accepted updates of
 * the current round. */
static void clean_spools(fs_round *a)
{
    DIR *d = opendir(a->spool_dir);
    if (!d) return;
    struct dirent *e;
    char keep[PATH_LEN], path[PATH_LEN];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
        int kept = 0;
        for (size_t k = 0; k < a->n_accepted && !kept; k++)
            if (spool_path(a, keep, a->completed + 1, a->sites[a->order[k]].name) == FS_OK &&
                strcmp(strrchr(keep, '/') + 1, e->d_name) == 0)
                kept = 1;
        if (kept || set_path(path, a->spool_dir, e->d_name) != FS_OK) continue;
        if (unlink(path) != 0) fs_log_warn("%s: cannot delete: %s", path, strerror(errno));
    }
    closedir(d);
}

/* Closes an in-flight upload's spool and deletes it; later chunks are
 * refused with (st, why). Writes nothing else. */
static void kill_upload(fs_round *a, fs_round_upload *u, fs_status st, const char *why)
{
    if (u->fd >= 0) {
        close(u->fd);
        u->fd = -1;
        unlink(u->path);
    }
    if (!u->dead) {
        u->dead = 1;
        u->dead_status = st;
        snprintf(u->dead_why, sizeof u->dead_why, "%s", why);
        a->sites[u->site].uploading = 0;
    }
}

/* ---- state & metrics ------------------------------------------------------ */

static fs_status write_state(fs_round *a)
{
    fs_atomic_file af;
    FS_TRY(fs_atomic_open(&af, a->state_path));
    fprintf(af.f,
            "fedseg round state 1\ncompleted_round %u\nnum_params %zu\npreset %s\nseed %llu\n"
            "model_crc32 %08x\n",
            a->completed, a->P, a->cfg.model.preset, (unsigned long long)a->cfg.seed, a->model_crc);
    if (ferror(af.f)) {
        fs_log_error("%s: write failed", a->state_path);
        fs_atomic_abort(&af);
        return FS_ERR_IO;
    }
    return fs_atomic_commit(&af);
}

/* Reads round.state (missing: *found = 0) and checks it against the
 * checkpoint just loaded. Rewrites it when it lags behind. */
static fs_status check_state(fs_round *a)
{
    FILE *f = fopen(a->state_path, "r");
    if (!f) {
        if (errno != ENOENT) {
            fs_log_error("%s: cannot read: %s", a->state_path, strerror(errno));
            return FS_ERR_IO;
        }
        fs_log_warn("%s: missing; rewritten from global.ckpt", a->state_path);
        return write_state(a);
    }
    char key[64], val[256];
    unsigned long long completed = 0, np = 0, seed = 0;
    unsigned crc = 0;
    char preset[FS_WIRE_PRESET_LEN] = "";
    int have = 0;
    char line[400];
    if (!fgets(line, sizeof line, f) || strcmp(line, "fedseg round state 1\n") != 0) {
        fclose(f);
        fs_log_error("%s: not a fedseg round state file (version 1)", a->state_path);
        return FS_ERR_FORMAT;
    }
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%63s %255s", key, val) != 2) continue;
        if (!strcmp(key, "completed_round")) { completed = strtoull(val, NULL, 10); have |= 1; }
        else if (!strcmp(key, "num_params")) { np = strtoull(val, NULL, 10); have |= 2; }
        else if (!strcmp(key, "preset")) { snprintf(preset, sizeof preset, "%.15s", val); have |= 4; }
        else if (!strcmp(key, "seed")) { seed = strtoull(val, NULL, 10); have |= 8; }
        else if (!strcmp(key, "model_crc32")) { crc = (unsigned)strtoul(val, NULL, 16); have |= 16; }
    }
    fclose(f);
    if (have != 31) {
        fs_log_error("%s: incomplete state file", a->state_path);
        return FS_ERR_FORMAT;
    }
    if (np != a->P || strcmp(preset, a->cfg.model.preset) != 0) {
        fs_log_error("%s: describes a %s model of %llu parameters, the federation is %s with %zu",
                     a->state_path, preset, np, a->cfg.model.preset, a->P);
        return FS_ERR_MISMATCH;
    }
    if (completed > a->completed) {
        fs_log_error("%s: says round %llu completed but global.ckpt holds round %u", a->state_path,
                     completed, a->completed);
        return FS_ERR_FORMAT;
    }
    if (completed == a->completed && crc != a->model_crc) {
        fs_log_error("%s: model CRC-32 %08x differs from global.ckpt's %08x", a->state_path, crc,
                     a->model_crc);
        return FS_ERR_FORMAT;
    }
    if (seed != a->cfg.seed)
        fs_log_warn("%s: the sampling seed changed from %llu to %llu", a->state_path, seed,
                    (unsigned long long)a->cfg.seed);
    if (completed < a->completed || seed != a->cfg.seed) return write_state(a);
    return FS_OK;
}

/* Finds the last round with a line in the metrics file (0 when none) and
 * cuts off a torn last line. */
static fs_status metrics_scan(fs_round *a)
{
    a->metrics_last = 0;
    FILE *f = fopen(a->metrics_path, "r");
    if (!f) {
        if (errno == ENOENT) return FS_OK;
        fs_log_error("%s: cannot read: %s", a->metrics_path, strerror(errno));
        return FS_ERR_IO;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    off_t good = 0;
    int torn = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] != '\n') { torn = 1; break; }
        const char *p = strstr(line, "\"round\":");
        if (p) {
            unsigned long r = strtoul(p + 8, NULL, 10);
            if (r > a->metrics_last) a->metrics_last = (uint32_t)r;
        }
        good = ftello(f);
    }
    free(line);
    fclose(f);
    if (torn) {
        fs_log_warn("%s: dropping a torn last line", a->metrics_path);
        if (truncate(a->metrics_path, good) != 0) {
            fs_log_error("%s: cannot truncate: %s", a->metrics_path, strerror(errno));
            return FS_ERR_IO;
        }
    }
    return FS_OK;
}

/* Appends one metrics line (and a newline), fsync'ed. */
static fs_status metrics_append(fs_round *a, uint32_t round, const char *json)
{
    int fd = open(a->metrics_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    int err = fd < 0 ? errno : 0;
    if (!err) err = write_all(fd, json, strlen(json));
    if (!err) err = write_all(fd, "\n", 1);
    if (!err && fsync(fd) != 0) err = errno;
    if (fd >= 0) close(fd);
    if (err) {
        fs_log_error("%s: cannot append the metrics of round %u: %s", a->metrics_path, round,
                     strerror(err));
        return FS_ERR_IO;
    }
    a->metrics_last = round;
    return FS_OK;
}

/* The metrics line of the current round, decided now (malloc'ed). */
/* Adaptive clipping: the clip decided by a round's close record (its JSON's
 * dp.next_clip) becomes the clip of the next round. */
static void adopt_next_clip(fs_round *a, const char *json)
{
    if (!a->dp || !a->cfg.dp.adaptive || !json) return;
    const char *p = strstr(json, "\"next_clip\":");
    if (!p) return;
    double v = strtod(p + 12, NULL);
    if (!(v > 0) || !isfinite(v)) {
        fs_log_error("round: a close record holds an invalid next clip; keeping %g", a->dp_clip_cur);
        return;
    }
    a->dp_clip_cur = v;
    a->dpad.clip = v;
}

static char *round_json(fs_round *a, double now, const char *closed_by)
{
    sbuf b = {0};
    uint64_t samples = 0;
    size_t nsel = 0;
    for (size_t i = 0; i < a->n_sites; i++) {
        nsel += (size_t)a->sites[i].selected;
        if (a->sites[i].submitted) samples += a->sites[i].n;
    }
    sb_printf(&b, "{\"round\":%u,\"wall_seconds\":", a->completed + 1);
    sb_num(&b, now - a->opened_at);
    sb_printf(&b, ",\"closed_by\":\"%s\",\"sites_selected\":%zu,\"sites_reported\":%zu,"
              "\"num_samples\":%llu,\"sites\":[", closed_by, nsel, a->n_accepted,
              (unsigned long long)samples);
    int first = 1;
    for (size_t i = 0; i < a->n_sites; i++) {
        const fs_site *s = &a->sites[i];
        if (!s->submitted) continue;
        sb_printf(&b, "%s{\"site\":\"%s\",\"num_samples\":%llu,\"train_loss\":", first ? "" : ",",
                  s->name, (unsigned long long)s->n);
        sb_num(&b, s->loss);
        sb_printf(&b, ",\"global_dice_wt\":");
        sb_num(&b, s->dice[0]);
        sb_printf(&b, ",\"global_dice_tc\":");
        sb_num(&b, s->dice[1]);
        sb_printf(&b, ",\"global_dice_et\":");
        sb_num(&b, s->dice[2]);
        sb_printf(&b, ",\"bytes_received\":%llu,\"bytes_sent\":%llu,\"train_seconds\":",
                  (unsigned long long)s->bytes_recv, (unsigned long long)s->bytes_sent);
        sb_num(&b, s->train_s);
        sb_printf(&b, ",\"upload_seconds\":");
        sb_num(&b, s->upload_s);
        sb_printf(&b, "}");
        first = 0;
    }
    sb_printf(&b, "],\"missing\":[");
    first = 1;
    for (size_t i = 0; i < a->n_sites; i++) {
        const fs_site *s = &a->sites[i];
        if (!s->selected || s->submitted) continue;
        sb_printf(&b, "%s{\"site\":\"%s\",\"bytes_sent\":%llu}", first ? "" : ",", s->name,
                  (unsigned long long)s->bytes_sent);
        first = 0;
    }
    sb_printf(&b, "]");
    if (PRIVATE_SUM(a) && a->sa_summary[0])
        sb_printf(&b, ",\"%s\":%s", a->cfg.encrypted ? "encrypted" : "secure_agg", a->sa_summary);
    if (a->dp || a->dp_dist) {
        /* ε after this round, at the configured δ (the close is decided) */
        fs_dp_accountant next = a->dpa;
        int shares = a->dp_dist ? (int)a->sa_last_masked : 0;
        double eps = fs_dp_accountant_add_round(&next, shares) == FS_OK ? fs_dp_accountant_epsilon(&next)
                                                                         : NAN;
        sb_printf(&b, ",\"dp\":{\"clip\":");
        sb_num(&b, a->dp ? a->dp_clip_cur : a->cfg.dp.clip);
        sb_printf(&b, ",\"noise_multiplier\":");
        sb_num(&b, a->cfg.dp.noise_multiplier);
        if (a->dp && a->cfg.dp.adaptive) {
            /* Andrew et al.: the next clip from the noised count of updates
             * that were within this one; decided here, once, with the close
             * (a resumed close reuses this line, never a second draw) */
            unsigned unclipped = 0;
            for (size_t k = 0; k < a->n_accepted; k++) unclipped += a->sites[a->order[k]].unclipped != 0;
            fs_dp_adaptive next_ad = a->dpad;
            double next = fs_dp_adaptive_update(&next_ad, (double)unclipped, fs_dp_fresh_seed(),
                                                a->completed + 1, a->P);
            float fn = (float)next;
            if ((double)fn > next) fn = nextafterf(fn, 0.0f);
            sb_printf(&b, ",\"sum_noise_multiplier\":");
            sb_num(&b, a->dp_sum_sigma);
            sb_printf(&b, ",\"unclipped_fraction_noised\":");
            sb_num(&b, next_ad.last_fraction);
            sb_printf(&b, ",\"next_clip\":");
            sb_num(&b, (double)fn);
        }
        sb_printf(&b, ",\"delta\":");
        sb_num(&b, a->cfg.dp.delta);
        sb_printf(&b, ",\"epsilon\":");
        sb_num(&b, eps);
        sb_printf(&b, "}");
    }
    sb_printf(&b, "}");
    if (b.err) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- round life ------------------------------------------------------------ */

static fs_status try_open(fs_round *a, double now);
static fs_status sa_tick(fs_round *a, double now);

/* Clears the per-round state after a close (or for a fresh round). */
static void reset_round(fs_round *a)
{
    for (size_t i = 0; i < a->n_sites; i++) {
        fs_site *s = &a->sites[i];
        s->selected = s->submitted = 0;
        s->n = 0;
        s->bytes_recv = s->bytes_sent = 0;
    }
    a->n_accepted = 0;
    a->open = a->closing = 0;
    a->extensions = 0;
    free(a->close_json);
    a->close_json = NULL;
    fs_round_sum_reset(&a->sum);
}

/* The spool paths of the accepted updates, in journal order: *paths and
 * *buf are malloc'ed (the caller frees both). */
static fs_status accepted_paths(fs_round *a, const char ***paths, char **buf)
{
    *paths = calloc(a->n_accepted ? a->n_accepted : 1, sizeof **paths);
    *buf = malloc((a->n_accepted ? a->n_accepted : 1) * (size_t)PATH_LEN);
    if (!*paths || !*buf) return FS_ERR_NOMEM;
    for (size_t k = 0; k < a->n_accepted; k++) {
        char *p = *buf + k * (size_t)PATH_LEN;
        FS_TRY(spool_path(a, p, a->completed + 1, a->sites[a->order[k]].name));
        (*paths)[k] = p;
    }
    return FS_OK;
}

/*
 * Closes round r = completed + 1. The sequence, and what a crash after each
 * step leaves for the next fs_round_open:
 *   1 journal `close r {json}`   → resume closes r at once with the same updates
 *   2 w_r into the sum buffer, global.ckpt written atomically (the commit)
 *                                → resume starts round r + 1 from w_r
 *   3 round.state                → rewritten on resume when it lags
 *   4 metrics line               → re-appended from the close record on resume
 *   5 spools deleted             → stale spools deleted on resume
 * A failure before step 2 completes leaves the round closing (uploads
 * refused) and is retried by fs_round_tick; the sum is rebuilt from the
 * spools. Returns FS_ERR_IO for a failed (or simulated) crash-relevant step.
 */
static fs_status close_round(fs_round *a, double now, const char *closed_by)
{
    uint32_t r = a->completed + 1;
    if (!a->close_json) {
        char *json = round_json(a, now, closed_by);
        if (!json) return FS_ERR_NOMEM;
        sbuf b = {0};
        sb_printf(&b, "close %u %s", r, json);
        fs_status st = b.err ? FS_ERR_NOMEM : fs_journal_append(&a->journal, b.p);
        free(b.p);
        if (st != FS_OK) {
            free(json);
            return st;
        }
        a->close_json = json;
    }
    a->closing = 1;
    CRASH_POINT(a, FS_CRASH_AFTER_CLOSE_RECORD);

    fs_status st = FS_OK;
    if (a->dp && a->n_accepted) {
        /* WARNING: the noise seed is fresh from the OS CSPRNG, used once and
         * never stored: a restart before the checkpoint below draws another,
         * and only one noised model is ever published for a round. */
        uint64_t seed = fs_dp_fresh_seed();
        st = fs_round_sum_privatise(&a->sum, a->dp_sum_sigma * a->dp_clip_cur, seed, r,
                                    fs_dp_denominator(&a->cfg.dp));
        seed = 0;
        if (st != FS_OK) {
            fs_log_error("round %u: cannot add the privacy noise: %s", r, fs_status_str(st));
            rebuild_sum(a);
            return st;
        }
    }
    if (fs_noniid_is_plain(&a->cfg)) {
        st = fs_round_sum_apply(&a->sum, a->model, a->sum.sum);
    } else {
        /* Δ (mean or robust), the server step and the state file of round r,
         * written before the checkpoint commits the round. */
        const char **paths = NULL;
        char *pbuf = NULL;
        st = accepted_paths(a, &paths, &pbuf);
        if (st == FS_OK)
            st = fs_noniid_close(&a->srv, &a->cfg, a->state_dir, r, a->P, a->U, a->n_sites, a->model,
                                 &a->sum, paths, a->n_accepted, a->fbuf);
        free(paths);
        free(pbuf);
    }
    if (st != FS_OK) {
        fs_log_error("round %u: %s", r, st == FS_ERR_ARG ? "no accepted update to average"
                                                         : "the new global model could not be formed");
        rebuild_sum(a);
        return st;
    }
    fs_ckpt_meta meta = a->cfg.model;
    meta.nparams = a->P;
    meta.epoch = r;
    if (a->crash_point == FS_CRASH_IN_CKPT && a->crash_nth == 1) {
        /* What a kill between the temporary file's fsync and its rename leaves. */
        char tmp[PATH_LEN];
        if (set_path(tmp, a->state_dir, ".global.ckpt.tmp.crashed") == FS_OK)
            fs_ckpt_write(tmp, &meta, a->sum.sum, NULL, NULL, 0);
    }
    CRASH_POINT(a, FS_CRASH_IN_CKPT);
    st = fs_ckpt_write(a->ckpt_path, &meta, a->sum.sum, NULL, NULL, 0);
    if (st == FS_OK) st = fsync_dir(a->state_dir);
    if (st != FS_OK) {
        fs_log_error("round %u: the new global model could not be saved; retrying", r);
        rebuild_sum(a);
        return st;
    }
    CRASH_POINT(a, FS_CRASH_AFTER_CKPT);

    memcpy(a->model, a->sum.sum, a->U * sizeof *a->model);
    a->completed = r;
    adopt_next_clip(a, a->close_json);
    if ((a->dp || a->dp_dist) &&
        fs_dp_accountant_add_round(&a->dpa, a->dp_dist ? (int)a->sa_last_masked : 0) != FS_OK)
        fs_log_error("round %u: the privacy accountant refused the round", r);
    a->model_crc = fs_wire_crc32_f32(0, a->model, a->P);
    a->dl_crc = fs_wire_crc32_f32(0, a->model, a->U);
    fs_noniid_committed(&a->srv, &a->cfg, a->state_dir, r);
    write_state(a); /* logged on failure; resume rewrites it from global.ckpt */
    CRASH_POINT(a, FS_CRASH_AFTER_STATE);
    metrics_append(a, r, a->close_json);
    CRASH_POINT(a, FS_CRASH_AFTER_METRICS);

    for (fs_round_upload *u = a->uploads; u; u = u->next)
        if (u->round == r && !u->dead) {
            char msg[FS_WIRE_REASON_LEN];
            snprintf(msg, sizeof msg, "round %u closed before the upload finished", r);
            fs_log_warn("site %s: upload dropped: %s", a->sites[u->site].name, msg);
            kill_upload(a, u, FS_ERR_MISMATCH, msg);
        }
    size_t reported = a->n_accepted;
    double weight = a->sum.acc.weight;
    reset_round(a);
    clean_spools(a);
    fs_log_info("round %u closed (%s): %zu site(s), %.0f samples; global model saved", r, closed_by,
                reported, weight);
    if (a->completed >= a->cfg.rounds) {
        fs_log_info("federation finished after %u rounds", a->completed);
        return FS_OK;
    }
    return try_open(a, now);
}

/* Opens round completed + 1 when enough sites are active (see round.h). */
static fs_status try_open(fs_round *a, double now)
{
    if (a->open || a->closing || a->completed >= a->cfg.rounds) return FS_OK;
    if ((a->dp || a->dp_dist) && fs_dp_accountant_would_exceed(&a->dpa)) {
        /* The budget is spent: this federation ends here, as if R were reached. */
        fs_log_warn("privacy budget: epsilon = %.3f after %u round(s); one more round would exceed "
                    "the budget of %.3f (delta = %g): the federation finishes now",
                    fs_dp_accountant_epsilon(&a->dpa), a->completed, a->cfg.dp.epsilon_budget,
                    a->cfg.dp.delta);
        a->cfg.rounds = a->completed;
        return FS_OK;
    }
    size_t active = count_active(a, now);
    if (active < a->cfg.min_sites) {
        a->quorum_since = -1;
        return FS_OK;
    }
    if (a->quorum_since < 0) a->quorum_since = now;
    if (active < a->n_sites && now < a->quorum_since + a->cfg.join_wait_s) return FS_OK;

    uint32_t r = a->completed + 1;
    size_t *cand = malloc(a->n_sites * sizeof *cand), nc = 0;
    if (!cand) return FS_ERR_NOMEM;
    for (size_t i = 0; i < a->n_sites; i++)
        if (site_active(a, &a->sites[i], now)) cand[nc++] = i;
    draw_sites(a, cand, nc, sample_size(a, nc), r, 0);
    free(cand);
    fs_status st = journal_selection(a, r);
    if (st != FS_OK) {
        for (size_t i = 0; i < a->n_sites; i++) a->sites[i].selected = 0;
        return st;
    }
    a->open = 1;
    a->opened_at = now;
    a->deadline = now + a->cfg.deadline_s;
    a->quorum_since = -1;
    char sel[512];
    selection_text(a, sel, sizeof sel);
    fs_log_info("round %u opened: %zu active site(s), selected %s", r, active, sel);
    if (PRIVATE_SUM(a)) return sa_tick(a, now);
    return FS_OK;
}

/* At the deadline with fewer than min_sites reports: extends the deadline
 * and adds active sites that were not selected, so that dead selected sites
 * cannot stall the round for ever. */
static fs_status extend_round(fs_round *a, double now)
{
    uint32_t r = a->completed + 1;
    a->extensions++;
    size_t active = count_active(a, now), live_sel = 0, nc = 0;
    size_t *cand = malloc(a->n_sites * sizeof *cand);
    if (!cand) return FS_ERR_NOMEM;
    for (size_t i = 0; i < a->n_sites; i++) {
        const fs_site *s = &a->sites[i];
        if (s->selected && (s->submitted || site_active(a, s, now))) live_sel++;
        else if (!s->selected && site_active(a, s, now)) cand[nc++] = i;
    }
    size_t want = sample_size(a, active), add = want > live_sel ? want - live_sel : 0;
    if (add > nc) add = nc;
    fs_status st = FS_OK;
    if (add) {
        draw_sites(a, cand, nc, add, r, a->extensions);
        st = journal_selection(a, r);
    }
    free(cand);
    a->deadline = now + a->cfg.deadline_s;
    char sel[512];
    selection_text(a, sel, sizeof sel);
    fs_log_warn("round %u: only %zu of the required %u site(s) reported by the deadline; deadline "
                "extended by %.0f s (selected now: %s)", r, a->n_accepted, a->cfg.min_sites,
                a->cfg.deadline_s, sel);
    return st;
}

/* Closes the open round when it is complete or past its deadline. */
static fs_status maybe_close(fs_round *a, double now)
{
    if (PRIVATE_SUM(a) && !a->closing) return sa_tick(a, now);
    if (a->closing) return close_round(a, now, "resumed");
    if (!a->open) return FS_OK;
    size_t nsel = 0, nsub = 0;
    for (size_t i = 0; i < a->n_sites; i++) {
        nsel += (size_t)a->sites[i].selected;
        nsub += (size_t)(a->sites[i].selected && a->sites[i].submitted);
    }
    if (nsub == nsel && a->n_accepted >= a->cfg.min_sites) return close_round(a, now, "all_reported");
    if (now < a->deadline) return FS_OK;
    if (a->n_accepted >= a->cfg.min_sites) return close_round(a, now, "deadline");
    return extend_round(a, now);
}

/* ---- secure aggregation ------------------------------------------------------
 * The open round's attempt: sa_begin numbers the selected sites 0..n-1 (site
 * list order), draws a fresh public round seed and starts stage 0; sa_tick
 * ends each stage when every site that can still answer has answered or at
 * its deadline, and closes the round once the unmasked mean is known;
 * sa_restart abandons the attempt (model unchanged) and reopens the round.
 * WARNING: the aggregator never holds an individual site's unmasked update:
 * masked uploads are spooled and added into sa_sum (mod 2^32), and only the
 * sum is unmasked (common/secagg.h explains why each stage preserves this).
 */

/* Frees the attempt (not sa_sum's allocation); sites leave it. */
static void sa_end(fs_round *a)
{
    fs_secagg_server_free(a->sa);
    a->sa = NULL;
    fs_secagg_msg_free(a->sa_keys, a->sa_keys_len);
    fs_secagg_msg_free(a->sa_req, a->sa_req_len);
    a->sa_keys = a->sa_req = NULL;
    a->sa_keys_len = a->sa_req_len = 0;
    fs_he_server_free(a->he);
    a->he = NULL;
    free(a->he_bcast);
    a->he_bcast = NULL;
    a->he_bcast_len = 0;
    for (size_t i = 0; i < a->n_sites; i++) a->sites[i].sa_index = -1;
}

/* Drops every upload in flight for the current round (logged once each). */
static void kill_round_uploads(fs_round *a, const char *msg)
{
    for (fs_round_upload *u = a->uploads; u; u = u->next)
        if (u->round == a->completed + 1 && !u->dead) {
            fs_log_warn("site %s: upload dropped: %s", a->sites[u->site].name, msg);
            kill_upload(a, u, FS_ERR_MISMATCH, msg);
        }
}

/* Numbers the open round's selected sites 0..n-1 (site list order) for a
 * secure or encrypted attempt; returns n. */
static uint32_t number_selected(fs_round *a)
{
    uint32_t n = 0;
    for (size_t i = 0; i < a->n_sites; i++)
        a->sites[i].sa_index = a->sites[i].selected ? (long)n++ : -1;
    return n;
}

/* An attempt's public cap on a site's sample count: configured, or the
 * largest count the selected sites announced when they joined (public
 * already), so that the biggest site sends weight 1 and the fixed-point grid
 * is used fully; 1 under distributed DP (every site weighs 1). */
static uint64_t attempt_weight_cap(const fs_round *a)
{
    uint64_t cap = a->dp_dist ? 1 : a->cfg.secagg_weight_cap;
    if (!cap)
        for (size_t i = 0; i < a->n_sites; i++)
            if (a->sites[i].selected && a->sites[i].join_samples > cap) cap = a->sites[i].join_samples;
    return cap ? cap : 1;
}

/* The upload stage of an attempt (masked or encrypted) stays open while
 * sites that can still upload have not (`got` of `want`) before the round's
 * deadline, and for uploads already in flight up to secagg_stage_s more. */
static int upload_stage_open(const fs_round *a, uint32_t got, uint32_t want, double now)
{
    if (got >= want) return 0;
    if (now < a->deadline) return 1;
    for (const fs_round_upload *u = a->uploads; u; u = u->next)
        if (u->round == a->completed + 1 && !u->dead) return now < a->deadline + a->cfg.secagg_stage_s;
    return 0;
}

/* Starts an attempt of the open round among its selected sites. */
static fs_status sa_begin(fs_round *a, double now)
{
    uint32_t r = a->completed + 1, n = number_selected(a);
    fs_secagg_params p;
    memset(&p, 0, sizeof p);
    p.round = r;
    p.n_sites = n;
    uint32_t k = a->cfg.secagg_neighbours ? a->cfg.secagg_neighbours : n - 1;
    if (k >= n - 1) k = n - 1;
    else if (k % 2) k--; /* SecAgg+ graphs have an even degree */
    if (k < 2) k = n - 1;
    uint32_t t = a->cfg.secagg_threshold ? a->cfg.secagg_threshold : 2 * n / 3 + 1;
    if (t > k) t = k;
    if (t < 2) t = 2;
    p.threshold = t;
    p.neighbours = k;
    p.n_words = (uint64_t)a->P + 1;
    randombytes_buf(p.round_seed, sizeof p.round_seed);
    int f = 0;
    fs_status st = fs_secagg_params_check(&p);
    if (st == FS_OK && a->dp_dist) f = a->dp_f; /* the grid of the accountant */
    else if (st == FS_OK) st = fs_secagg_quant_bits(a->cfg.secagg_clip, n, &f);
    if (st == FS_OK) st = fs_secagg_server_new(&p, &a->sa);
    if (st != FS_OK) {
        fs_log_error("round %u: cannot start secure aggregation among %u site(s): %s", r, n,
                     fs_status_str(st));
        for (size_t i = 0; i < a->n_sites; i++) a->sites[i].sa_index = -1;
        return st;
    }
    a->sa_wcap = attempt_weight_cap(a);
    a->sap = p;
    a->sa_f = f;
    a->sa_attempt++;
    a->sa_stage = 0;
    a->sa_deadline = now + a->cfg.secagg_stage_s;
    a->sa_summary[0] = 0;
    st = fs_masked_sum_zero(a->sa_msum);
    if (st != FS_OK) {
        fs_log_error("round %u: cannot clear the masked sum on the %s: %s", r, fs_sum_device_name(),
                     fs_status_str(st));
        return st;
    }
    fs_log_info("round %u: secure aggregation attempt %u among %u site(s), threshold %u, "
                "%u neighbour(s) each, masked sum on the %s", r, a->sa_attempt, n, t, k,
                fs_sum_device_name());
    return FS_OK;
}

/* Abandons the attempt: logged, model unchanged, the round selects again. */
static void sa_restart(fs_round *a, const char *why)
{
    uint32_t r = a->completed + 1;
    const char *mode = a->cfg.encrypted ? "encrypted aggregation" : "secure aggregation";
    fs_log_error("round %u: %s attempt %u abandoned: %s; the global model is "
                 "unchanged and the round starts again", r, mode, a->sa_attempt, why);
    char msg[FS_WIRE_REASON_LEN];
    snprintf(msg, sizeof msg, "round %u: %s attempt %u abandoned", r, mode, a->sa_attempt);
    kill_round_uploads(a, msg);
    sa_end(a);
    reset_round(a);
    clean_spools(a);
}

/* Adds the spooled masked vector of site si into sa_sum (mod 2^32),
 * checking its size and the CRC recorded at acceptance. On failure sa_sum
 * may hold part of it: the caller abandons the attempt. */
static fs_status sa_fold_spool(fs_round *a, size_t si)
{
    const fs_site *s = &a->sites[si];
    char path[PATH_LEN];
    FS_TRY(spool_path(a, path, a->completed + 1, s->name));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fs_log_error("%s: cannot open the masked update of site %s: %s", path, s->name, strerror(errno));
        return FS_ERR_IO;
    }
    size_t W = a->P + 1;
    uint32_t crc = 0;
    fs_status st = FS_OK;
    for (size_t off = 0; off < W && st == FS_OK;) {
        size_t n = W - off < FS_CHUNK_PARAMS ? W - off : FS_CHUNK_PARAMS;
        ssize_t got = read_full(fd, a->rbuf, n * 4);
        if (got != (ssize_t)(n * 4)) {
            fs_log_error("%s: cannot read back: %s", path, got < 0 ? strerror(errno) : "short file");
            st = FS_ERR_IO;
            break;
        }
        crc = fs_wire_crc32_bytes(crc, a->rbuf, n * 4);
        /* little-endian words read as host words (server.c refuses other hosts) */
        const uint32_t *words = (const uint32_t *)(void *)a->rbuf;
        st = fs_masked_sum_add(a->sa_msum, off, words, n);
        off += n;
    }
    close(fd);
    if (st == FS_OK && crc != s->crc) {
        fs_log_error("%s: CRC-32 %08x differs from the accepted update's %08x", path, crc, s->crc);
        st = FS_ERR_CHECKSUM;
    }
    return st;
}

/* Unmasks the sum, computes the weighted mean and closes the round. */
static fs_status sa_finish(fs_round *a, double now)
{
    uint32_t r = a->completed + 1;
    size_t W = a->P + 1;
    fs_status st = FS_OK;
    struct timespec c0, c1;
    clock_gettime(CLOCK_MONOTONIC, &c0);
    uint32_t *host = fs_masked_sum_host(a->sa_msum);
    if (host) { /* on the CPU: libsodium's ChaCha20, chunk by chunk */
        for (size_t off = 0; off < W && st == FS_OK; off += FS_CHUNK_PARAMS) {
            size_t n = W - off < FS_CHUNK_PARAMS ? W - off : FS_CHUNK_PARAMS;
            st = fs_secagg_server_unmask(a->sa, host + off, off, n);
        }
    } else { /* on the GPU: the backend's chacha_mask, then one download */
        fs_mask_key *keys = NULL;
        int k = 0;
        if (!a->sa_sum && !(a->sa_sum = malloc(W * sizeof *a->sa_sum))) st = FS_ERR_NOMEM;
        if (st == FS_OK) st = fs_secagg_server_unmask_keys(a->sa, &keys, &k);
        if (st == FS_OK) st = fs_masked_sum_unmask(a->sa_msum, keys, k);
        fs_secagg_unmask_keys_free(keys, k);
        if (st == FS_OK) st = fs_masked_sum_get(a->sa_msum, a->sa_sum);
        host = a->sa_sum;
    }
    float total = 0;
    if (st == FS_OK) st = fs_secagg_average(host, a->P, a->sa_f, a->sum.sum, &total);
    if (st == FS_OK) st = fs_round_sum_set(&a->sum, a->sum.sum, 1.0);
    if (st != FS_OK) {
        sa_restart(a, fs_status_str(st));
        return FS_OK;
    }
    clock_gettime(CLOCK_MONOTONIC, &c1);
    /* unmask_seconds: removing the masks and averaging (CPU time on this
     * thread); unmask_stage_seconds: from the masked-input stage's close to
     * here (waiting for the responses, reconstructing the secrets, unmasking) */
    snprintf(a->sa_summary, sizeof a->sa_summary,
             "{\"attempt\":%u,\"sites\":%u,\"threshold\":%u,\"neighbours\":%u,\"advertised\":%u,"
             "\"shared\":%u,\"masked\":%u,\"unmasked\":%u,\"unmask_seconds\":%.4f,"
             "\"unmask_stage_seconds\":%.4f}",
             a->sa_attempt, a->sap.n_sites, a->sap.threshold, a->sap.neighbours,
             fs_secagg_server_count(a->sa, FS_SECAGG_ADVERTISED),
             fs_secagg_server_count(a->sa, FS_SECAGG_SHARED), fs_secagg_server_count(a->sa, FS_SECAGG_MASKED),
             fs_secagg_server_count(a->sa, FS_SECAGG_UNMASKED),
             (double)(c1.tv_sec - c0.tv_sec) + 1e-9 * (double)(c1.tv_nsec - c0.tv_nsec),
             now - a->sa_t_masked + (double)(c1.tv_sec - c0.tv_sec) + 1e-9 * (double)(c1.tv_nsec - c0.tv_nsec));
    fs_log_info("round %u: the masked sum of %u site(s) is unmasked (total weight %.4g)", r,
                fs_secagg_server_count(a->sa, FS_SECAGG_MASKED), (double)total);
    int all = fs_secagg_server_count(a->sa, FS_SECAGG_MASKED) == a->sap.n_sites;
    a->sa_last_masked = fs_secagg_server_count(a->sa, FS_SECAGG_MASKED);
    sa_end(a);
    return close_round(a, now, all ? "all_reported" : "deadline");
}

/* Ends the stages whose collection is complete or past its deadline. */
static fs_status he_tick(fs_round *a, double now);

static fs_status sa_tick(fs_round *a, double now)
{
    if (a->cfg.encrypted) return he_tick(a, now);
    if (!a->cfg.secure_agg || !a->open || a->closing) return FS_OK;
    if (!a->sa) return sa_begin(a, now);
    for (int guard = 0; guard < 4; guard++) {
        uint32_t adv = fs_secagg_server_count(a->sa, FS_SECAGG_ADVERTISED),
                 sh = fs_secagg_server_count(a->sa, FS_SECAGG_SHARED),
                 ms = fs_secagg_server_count(a->sa, FS_SECAGG_MASKED),
                 um = fs_secagg_server_count(a->sa, FS_SECAGG_UNMASKED);
        fs_status st = FS_OK;
        switch (a->sa_stage) {
        case 0:
            if (adv < a->sap.n_sites && now < a->sa_deadline) return FS_OK;
            st = fs_secagg_server_close_advertise(a->sa, &a->sa_keys, &a->sa_keys_len);
            a->sa_deadline = now + a->cfg.secagg_stage_s;
            break;
        case 1:
            if (sh < adv && now < a->sa_deadline) return FS_OK;
            st = fs_secagg_server_close_shares(a->sa);
            break;
        case 2:
            if (upload_stage_open(a, ms, sh, now)) return FS_OK;
            kill_round_uploads(a, "the masked-input stage is over");
            st = fs_secagg_server_close_masked(a->sa, &a->sa_req, &a->sa_req_len);
            a->sa_deadline = now + a->cfg.secagg_stage_s;
            a->sa_t_masked = now;
            break;
        default:
            if (um < ms && now < a->sa_deadline) return FS_OK;
            st = fs_secagg_server_close_unmask(a->sa);
            if (st == FS_OK) return sa_finish(a, now);
            break;
        }
        if (st != FS_OK) {
            const char *why = fs_secagg_server_reason(a->sa);
            sa_restart(a, why && why[0] ? why : fs_status_str(st));
            return FS_OK;
        }
        a->sa_stage++;
    }
    return FS_OK;
}

/* ---- encrypted aggregation ---------------------------------------------------
 * The open round's attempt (cfg.encrypted; common/he_proto.h): he_begin numbers
 * the selected sites 1..n (site list order) and draws a fresh public CRS seed,
 * so every attempt has a fresh collective key; stage 0 collects the sites'
 * public-key shares, stage 1 their sealed Shamir shares of their secret-key
 * shares (both need every site), stage 2 the ciphertext uploads until the
 * round's deadline (folded into the running ciphertext sum as each arrives),
 * stage 3 the partial decryptions of the t sites chosen (a new choice when
 * one of them is lost). WARNING: the aggregator holds no key material; it
 * decrypts only the sum, with the help of t sites.
 */

/* Words (4 bytes) of one site's ciphertext upload. */
static size_t he_words(const fs_round *a)
{
    return fs_he_params_nct(&a->hep) * (fs_he_wire_bytes(FS_HE_OBJ_CT) / 4);
}

static fs_status he_begin(fs_round *a, double now)
{
    uint32_t r = a->completed + 1, n = number_selected(a);
    fs_he_params p;
    memset(&p, 0, sizeof p);
    p.round = r;
    p.attempt = a->sa_attempt + 1;
    p.n_sites = n;
    /* default: ⌊2n/3⌋ + 1, but at most n − 1 from 3 sites on, so that one
     * site may always be lost before decryption */
    uint32_t t = a->cfg.he_threshold ? a->cfg.he_threshold : 2 * n / 3 + 1;
    if (!a->cfg.he_threshold && n >= 3 && t > n - 1) t = n - 1;
    if (t > n) t = n;
    if (t < 2) t = 2;
    p.threshold = t;
    p.n_values = a->P;
    randombytes_buf(p.crs_seed, sizeof p.crs_seed);
    unsigned f = 0;
    fs_status st = a->dp_dist ? FS_OK : fs_he_frac_bits(a->cfg.he_clip, n, &f);
    if (a->dp_dist) f = (unsigned)a->dp_f; /* the grid of the accountant */
    p.qz.clip = (float)a->cfg.he_clip;
    p.qz.frac_bits = f;
    if (st == FS_OK) st = fs_he_params_check(&p);
    if (st == FS_OK) st = fs_he_server_new(&p, &a->he);
    if (st != FS_OK) {
        fs_log_error("round %u: cannot start encrypted aggregation among %u site(s): %s", r, n,
                     fs_status_str(st));
        for (size_t i = 0; i < a->n_sites; i++) a->sites[i].sa_index = -1;
        return st;
    }
    /* the ciphertext sum on the GPU when the aggregator's sums live there */
    int he_gpu = !strcmp(fs_sum_device_name(), "cuda");
    if (he_gpu && fs_he_server_use_gpu(a->he) != FS_OK) {
        fs_log_warn("round %u: the GPU did not open for the ciphertext sum: summing on the CPU", r);
        he_gpu = 0;
    }
    a->sa_wcap = attempt_weight_cap(a);
    a->hep = p;
    a->sa_attempt++;
    a->sa_stage = 0;
    a->sa_deadline = now + a->cfg.secagg_stage_s;
    a->sa_summary[0] = 0;
    fs_log_info("round %u: encrypted aggregation attempt %u among %u site(s), decryption threshold %u, "
                "%zu ciphertext(s) per update, 2^-%u grid, sum on the %s", r, a->sa_attempt, n, t,
                fs_he_params_nct(&p), f, he_gpu ? "GPU" : "CPU");
    return FS_OK;
}

/* Adds the spooled ciphertexts of site si into the sum. Every object was
 * verified as its chunks arrived (he_verify_chunk), so a refusal here means
 * the spool changed or cannot be read back: FS_ERR_IO (the sum may then hold
 * part of it, and the caller abandons the attempt). */
static fs_status he_fold_spool(fs_round *a, size_t si)
{
    const fs_site *s = &a->sites[si];
    const uint32_t site = (uint32_t)s->sa_index + 1;
    const size_t ob = fs_he_wire_bytes(FS_HE_OBJ_CT), nct = fs_he_params_nct(&a->hep);
    char path[PATH_LEN];
    FS_TRY(spool_path(a, path, a->completed + 1, s->name));
    uint8_t *obj = malloc(ob);
    if (!obj) return FS_ERR_NOMEM;
    fs_status st = FS_OK;
    for (int commit = 1; commit < 2 && st == FS_OK; commit++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fs_log_error("%s: cannot open the encrypted update of site %s: %s", path, s->name,
                         strerror(errno));
            st = FS_ERR_IO;
            break;
        }
        uint32_t crc = 0;
        fs_he_server_ct_reset(a->he, site);
        for (size_t j = 0; j < nct && st == FS_OK; j++) {
            ssize_t got = read_full(fd, obj, ob);
            if (got != (ssize_t)ob) {
                fs_log_error("%s: cannot read back: %s", path, got < 0 ? strerror(errno) : "short file");
                st = FS_ERR_IO;
                break;
            }
            crc = fs_wire_crc32_bytes(crc, obj, ob);
            st = fs_he_server_ct(a->he, site, obj, ob, commit);
            if (st != FS_OK) {
                fs_log_error("site %s: ciphertext %zu of its update refused (%s)", s->name, j,
                             fs_status_str(st));
                if (commit) st = FS_ERR_IO; /* verified before: the spool changed under us */
            }
        }
        close(fd);
        if (st == FS_OK && crc != s->crc) {
            fs_log_error("%s: CRC-32 %08x differs from the accepted update's %08x", path, crc, s->crc);
            st = commit ? FS_ERR_IO : FS_ERR_CHECKSUM;
        }
    }
    free(obj);
    if (st == FS_OK) st = fs_he_server_ct_done(a->he, site);
    return st;
}

/* Decodes the decrypted sum, computes the weighted mean and closes the round. */
static fs_status he_finish(fs_round *a, double now)
{
    uint32_t r = a->completed + 1;
    struct timespec c0, c1;
    clock_gettime(CLOCK_MONOTONIC, &c0);
    double wsum = 0;
    fs_status st = fs_he_server_result(a->he, a->he_res);
    if (st == FS_OK) st = fs_he_dequantise(&a->hep.qz, a->he_res, a->P, a->sum.sum, &wsum);
    if (st == FS_OK && !(wsum > 0)) st = FS_ERR_NUMERIC;
    if (st == FS_OK) {
        const float inv = (float)(1.0 / wsum);
        for (size_t i = 0; i < a->P; i++) a->sum.sum[i] *= inv;
        st = fs_round_sum_set(&a->sum, a->sum.sum, 1.0);
    }
    if (st != FS_OK) {
        sa_restart(a, st == FS_ERR_NUMERIC ? "the decrypted total weight is not positive"
                                           : fs_status_str(st));
        return FS_OK;
    }
    clock_gettime(CLOCK_MONOTONIC, &c1);
    double dec_s = (double)(c1.tv_sec - c0.tv_sec) + 1e-9 * (double)(c1.tv_nsec - c0.tv_nsec);
    uint32_t contrib = fs_he_server_count(a->he, FS_HE_CONTRIBUTED);
    snprintf(a->sa_summary, sizeof a->sa_summary,
             "{\"attempt\":%u,\"sites\":%u,\"threshold\":%u,\"keyed\":%u,\"shared\":%u,"
             "\"contributed\":%u,\"decrypted_by\":%u,\"generations\":%u,\"ciphertexts\":%zu,"
             "\"upload_bytes\":%zu,\"frac_bits\":%u,\"decode_seconds\":%.4f,"
             "\"decrypt_stage_seconds\":%.4f}",
             a->sa_attempt, a->hep.n_sites, a->hep.threshold, fs_he_server_count(a->he, FS_HE_KEYED),
             fs_he_server_count(a->he, FS_HE_SHARED), contrib, fs_he_server_count(a->he, FS_HE_DECRYPTED),
             fs_he_server_generation(a->he), fs_he_params_nct(&a->hep), he_words(a) * 4,
             a->hep.qz.frac_bits, dec_s, now - a->sa_t_masked + dec_s);
    fs_log_info("round %u: the encrypted sum of %u site(s) is decrypted by %u site(s) (total weight %.4g)",
                r, contrib, fs_he_server_count(a->he, FS_HE_DECRYPTED), wsum);
    int all = contrib == a->hep.n_sites;
    a->sa_last_masked = contrib;
    sa_end(a);
    return close_round(a, now, all ? "all_reported" : "deadline");
}

static fs_status he_tick(fs_round *a, double now)
{
    if (!a->open || a->closing) return FS_OK;
    if (!a->he) return he_begin(a, now);
    for (int guard = 0; guard < 5; guard++) {
        const uint32_t n = a->hep.n_sites, keyed = fs_he_server_count(a->he, FS_HE_KEYED),
                       shared = fs_he_server_count(a->he, FS_HE_SHARED),
                       contrib = fs_he_server_count(a->he, FS_HE_CONTRIBUTED);
        fs_status st = FS_OK;
        switch (a->sa_stage) {
        case 0:
            if (keyed < n && now < a->sa_deadline) return FS_OK;
            st = fs_he_server_close_keys(a->he, &a->he_bcast, &a->he_bcast_len);
            a->sa_deadline = now + a->cfg.secagg_stage_s;
            break;
        case 1:
            if (shared < n && now < a->sa_deadline) return FS_OK;
            st = fs_he_server_close_shares(a->he);
            break;
        case 2:
            if (upload_stage_open(a, contrib, shared, now)) return FS_OK;
            kill_round_uploads(a, "the ciphertext upload stage is over");
            st = fs_he_server_close_input(a->he);
            a->sa_deadline = now + a->cfg.secagg_stage_s;
            a->sa_t_masked = now;
            break;
        default: {
            if (!fs_he_server_decrypt_done(a->he) && now < a->sa_deadline) return FS_OK;
            int again = 0;
            st = fs_he_server_close_decrypt(a->he, &again);
            if (st == FS_OK && again) {
                fs_log_warn("round %u: a site of the decryption set did not answer; decryption "
                            "restarts with another set (generation %u)", a->completed + 1,
                            fs_he_server_generation(a->he));
                a->sa_deadline = now + a->cfg.secagg_stage_s;
                return FS_OK;
            }
            if (st == FS_OK) return he_finish(a, now);
            break;
        }
        }
        if (st != FS_OK) {
            if (a->sa_stage <= 1) {
                /* The key stages need every site of the attempt: a site that
                 * did not answer is left out of the next selections until it
                 * calls again (else a frozen site, still within its
                 * timeout, would spoil attempt after attempt). */
                fs_he_server_state want = a->sa_stage == 0 ? FS_HE_KEYED : FS_HE_SHARED;
                for (size_t i = 0; i < a->n_sites; i++) {
                    fs_site *x = &a->sites[i];
                    if (x->sa_index >= 0 && !fs_he_server_has(a->he, want, (uint32_t)x->sa_index + 1)) {
                        x->silent_at = now;
                        fs_log_warn("site %s: silent in the key stage of round %u; left out until it calls "
                                    "again", x->name, a->completed + 1);
                    }
                }
            }
            const char *why = fs_he_server_reason(a->he);
            sa_restart(a, why && why[0] ? why : fs_status_str(st));
            return FS_OK;
        }
        a->sa_stage++;
    }
    return FS_OK;
}

/* Ends a SecAgg call of either private mode: `late` (the stage is over for
 * the site: ABANDONED), a refused message (its status, logged; any payload
 * dropped), or OK with the payload, after which the stages move on. */
static fs_status stage_reply(fs_round *a, const char *identity, const fs_wire_secagg_request *req, int late,
                             fs_status st, double now, fs_wire_secagg_reply *reply, uint8_t **payload,
                             char *why, size_t whylen)
{
    if (late || st != FS_OK) {
        fs_secagg_msg_free(*payload, reply->len);
        *payload = NULL;
        reply->len = 0;
    }
    if (late) {
        reply->status = FS_SA_ABANDONED;
        snprintf(reply->reason, sizeof reply->reason, "round %u attempt %u: stage %d is over for this site",
                 a->completed + 1, a->sa_attempt, (int)req->stage);
        return FS_OK;
    }
    if (st != FS_OK)
        return refuse(st == FS_ERR_ABANDONED ? FS_ERR_MISMATCH : st, identity, why, whylen,
                      "%s aggregation stage %d message refused (%s)", a->cfg.encrypted ? "encrypted" : "secure",
                      (int)req->stage, fs_status_str(st));
    reply->status = FS_SA_OK;
    reply->retry_after_ms = 0;
    reply->payload = *payload;
    sa_tick(a, now);
    return FS_OK;
}

/* A 4-byte little-endian start index, the request payload of stages 9, 10. */
static int he_start(const fs_wire_secagg_request *req, uint32_t *start)
{
    if (req->len != 4) return 0;
    *start = (uint32_t)req->payload[0] | (uint32_t)req->payload[1] << 8 |
             (uint32_t)req->payload[2] << 16 | (uint32_t)req->payload[3] << 24;
    return 1;
}

/* The encrypted-aggregation stages of a SecAgg call (site = 1..n). */
static fs_status he_call(fs_round *a, const char *identity, uint32_t site, const fs_wire_secagg_request *req,
                         double now, fs_wire_secagg_reply *reply, uint8_t **payload, char *why, size_t whylen)
{
    uint32_t start = 0;
    fs_status st = FS_OK;
    int late = 0;
    switch (req->stage) {
    case FS_HE_KEYS:
        if (a->sa_stage != 0) { late = 1; break; }
        st = fs_he_server_recv_keys(a->he, site, req->payload, req->len);
        break;
    case FS_HE_GET_BCAST:
        if (a->sa_stage == 0) { reply->status = FS_SA_WAIT; return FS_OK; }
        if (!fs_he_server_has(a->he, FS_HE_KEYED, site)) { late = 1; break; }
        if (!(*payload = malloc(a->he_bcast_len))) return FS_ERR_NOMEM;
        memcpy(*payload, a->he_bcast, a->he_bcast_len);
        reply->len = a->he_bcast_len;
        break;
    case FS_HE_SHARES:
        if (a->sa_stage != 1) { late = 1; break; }
        st = fs_he_server_recv_shares(a->he, site, req->payload, req->len);
        break;
    case FS_HE_GET_RELAY:
        if (a->sa_stage < 2) { reply->status = FS_SA_WAIT; return FS_OK; }
        if (a->sa_stage > 2 || !fs_he_server_has(a->he, FS_HE_SHARED, site)) { late = 1; break; }
        if (!he_start(req, &start))
            return refuse(FS_ERR_FORMAT, identity, why, whylen, "relay request: payload of %zu bytes, "
                          "expected a 4-byte start index", req->len);
        st = fs_he_server_relay(a->he, site, start, payload, &reply->len);
        break;
    case FS_HE_GET_DECRYPT:
        if (a->sa_stage < 3) { reply->status = FS_SA_WAIT; return FS_OK; }
        if (!fs_he_server_has(a->he, FS_HE_CONTRIBUTED, site)) { late = 1; break; }
        if (!fs_he_server_in_set(a->he, site) || fs_he_server_has(a->he, FS_HE_DECRYPTED, site)) {
            /* not needed now; a later decryption set may hold it */
            reply->status = FS_SA_WAIT;
            reply->retry_after_ms = a->cfg.poll_ms < 100 ? a->cfg.poll_ms : 100;
            return FS_OK;
        }
        if (!he_start(req, &start))
            return refuse(FS_ERR_FORMAT, identity, why, whylen, "decryption request: payload of %zu "
                          "bytes, expected a 4-byte start index", req->len);
        st = fs_he_server_decrypt_req(a->he, site, start, payload, &reply->len);
        break;
    case FS_HE_PARTIALS:
        if (a->sa_stage != 3 || !fs_he_server_in_set(a->he, site)) { late = 1; break; }
        st = fs_he_server_recv_partials(a->he, site, req->payload, req->len);
        if (st == FS_ERR_ABANDONED) {
            /* a batch of a superseded decryption set: the reply says which
             * generation is current, and the site starts over */
            uint32_t g = fs_he_server_generation(a->he);
            if (!(*payload = malloc(4))) return FS_ERR_NOMEM;
            for (int i = 0; i < 4; i++) (*payload)[i] = (uint8_t)(g >> (8 * i));
            reply->len = 4;
            st = FS_OK;
        }
        break;
    default:
        late = 1;
        break;
    }
    return stage_reply(a, identity, req, late, st, now, reply, payload, why, whylen);
}

/* Fills the reply of a SecAgg call (see round.h). */
fs_status fs_round_secagg(fs_round *a, const char *identity, const fs_wire_secagg_request *req,
                          double now, fs_wire_secagg_reply *reply, uint8_t **payload, char *why,
                          size_t whylen)
{
    if (!a || !req || !reply || !payload) return FS_ERR_ARG;
    memset(reply, 0, sizeof *reply);
    *payload = NULL;
    if (why && whylen) why[0] = 0;
    if (a->dead) return FS_ERR_IO;
    long si = site_find(a, identity);
    if (si < 0) return refuse(FS_ERR_NOT_FOUND, identity, why, whylen, "not on the site list");
    fs_site *s = &a->sites[si];
    s->last_seen = now;
    if (!PRIVATE_SUM(a))
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "this federation uses neither secure nor encrypted aggregation");
    if (a->cfg.encrypted != (req->stage >= FS_HE_KEYS))
        return refuse(FS_ERR_MISMATCH, identity, why, whylen, "stage %d belongs to %s aggregation, "
                      "but this federation uses %s aggregation", (int)req->stage,
                      req->stage >= FS_HE_KEYS ? "encrypted" : "secure",
                      a->cfg.encrypted ? "encrypted" : "secure");
    fs_round_tick(a, now);
    if (a->dead) return FS_ERR_IO;
    reply->stage = req->stage;
    /* a stage usually ends within a few hundred ms of its last message:
     * waiting sites ask again soon (a SecAgg call is small) */
    reply->retry_after_ms = a->cfg.poll_ms < 25 ? a->cfg.poll_ms : 25;
    uint32_t r = a->completed + 1;
    int current = (a->sa || a->he) && req->round == r && req->attempt == a->sa_attempt &&
                  s->sa_index >= 0;
    if (!current) {
        reply->status = FS_SA_ABANDONED;
        snprintf(reply->reason, sizeof reply->reason,
                 "round %u attempt %u is not in progress for this site (now round %u)", req->round,
                 req->attempt, r);
        return FS_OK;
    }
    uint32_t idx = (uint32_t)s->sa_index;
    if (a->cfg.encrypted) return he_call(a, identity, idx + 1, req, now, reply, payload, why, whylen);
    fs_status st = FS_OK;
    int late = 0;
    switch (req->stage) {
    default:
        late = 1;
        break;
    case FS_SA_ADVERTISE:
        if (a->sa_stage != 0) { late = 1; break; }
        st = fs_secagg_server_recv_advertise(a->sa, idx, req->payload, req->len);
        break;
    case FS_SA_GET_KEYS:
        if (a->sa_stage == 0) { reply->status = FS_SA_WAIT; return FS_OK; }
        if (!fs_secagg_server_has(a->sa, FS_SECAGG_ADVERTISED, idx)) { late = 1; break; }
        *payload = malloc(a->sa_keys_len ? a->sa_keys_len : 1);
        if (!*payload) return FS_ERR_NOMEM;
        memcpy(*payload, a->sa_keys, a->sa_keys_len);
        reply->len = a->sa_keys_len;
        break;
    case FS_SA_SHARES:
        if (a->sa_stage != 1) { late = 1; break; }
        st = fs_secagg_server_recv_shares(a->sa, idx, req->payload, req->len);
        break;
    case FS_SA_GET_RELAY:
        if (a->sa_stage < 2) { reply->status = FS_SA_WAIT; return FS_OK; }
        if (a->sa_stage > 2 || !fs_secagg_server_has(a->sa, FS_SECAGG_SHARED, idx)) { late = 1; break; }
        st = fs_secagg_server_relay(a->sa, idx, payload, &reply->len);
        break;
    case FS_SA_GET_UNMASK:
        if (a->sa_stage < 3) { reply->status = FS_SA_WAIT; return FS_OK; }
        if (!fs_secagg_server_has(a->sa, FS_SECAGG_MASKED, idx)) { late = 1; break; }
        *payload = malloc(a->sa_req_len ? a->sa_req_len : 1);
        if (!*payload) return FS_ERR_NOMEM;
        memcpy(*payload, a->sa_req, a->sa_req_len);
        reply->len = a->sa_req_len;
        break;
    case FS_SA_UNMASK:
        if (a->sa_stage != 3 || !fs_secagg_server_has(a->sa, FS_SECAGG_MASKED, idx)) { late = 1; break; }
        st = fs_secagg_server_recv_unmask(a->sa, idx, req->payload, req->len);
        break;
    }
    return stage_reply(a, identity, req, late, st, now, reply, payload, why, whylen);
}

/* ---- resume ---------------------------------------------------------------- */

typedef struct {
    fs_round *a;
    double now;
    int open_seen;
} replay_ctx;

static int parse_u64(const char *s, uint64_t *v)
{
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (*end || errno) return 0;
    *v = x;
    return 1;
}

static int parse_f(const char *s, double *v)
{
    if (!s || !*s) return 0;
    char *end;
    *v = strtod(s, &end);
    return *end == 0;
}

/* One journal record during fs_round_open (see the top of this file). */
static fs_status replay_record(void *ctx, char *payload, size_t line)
{
    replay_ctx *c = ctx;
    fs_round *a = c->a;
    uint32_t cur = a->completed + 1;
    char *save, *kind = strtok_r(payload, " ", &save);
    if (!kind) return FS_OK;
    if (!strcmp(kind, "close")) {
        char *rs = strtok_r(NULL, " ", &save), *json = save;
        uint64_t r;
        if (!parse_u64(rs, &r) || !json || json[0] != '{') goto bad;
        if (r <= a->completed) adopt_next_clip(a, json); /* the clip after round r */
        if (r == cur) {
            free(a->close_json);
            a->close_json = strdup(json);
            if (!a->close_json) return FS_ERR_NOMEM;
        } else if (r <= a->completed && r > a->metrics_last) {
            fs_log_warn("%s: the metrics line of round %u was missing; restored from the journal",
                        a->metrics_path, (unsigned)r);
            FS_TRY(metrics_append(a, (uint32_t)r, json));
        }
        return FS_OK;
    }
    char *tok[12];
    int nt = 0;
    while (nt < 12 && (tok[nt] = strtok_r(NULL, " ", &save))) nt++;
    if (!strcmp(kind, "join")) {
        uint64_t n;
        if (nt != 2 || !parse_u64(tok[1], &n) || n == 0) goto bad;
        long si = site_find(a, tok[0]);
        if (si < 0) {
            fs_log_warn("%s: line %zu: site %s is no longer on the site list", a->journal_path, line,
                        tok[0]);
            return FS_OK;
        }
        a->sites[si].joined = 1;
        a->sites[si].join_samples = n;
        a->sites[si].last_seen = c->now;
        return FS_OK;
    }
    if (!strcmp(kind, "open")) {
        uint64_t r;
        if (nt < 1 || nt > 2 || !parse_u64(tok[0], &r)) goto bad;
        if (r != cur) return FS_OK;
        for (size_t i = 0; i < a->n_sites; i++) a->sites[i].selected = 0;
        char *s2, *name = nt == 2 ? strtok_r(tok[1], ",", &s2) : NULL;
        for (; name; name = strtok_r(NULL, ",", &s2)) {
            long si = site_find(a, name);
            if (si >= 0) a->sites[si].selected = 1;
            else fs_log_warn("%s: line %zu: selected site %s is no longer on the site list",
                             a->journal_path, line, name);
        }
        c->open_seen = 1;
        return FS_OK;
    }
    if (!strcmp(kind, "accept")) {
        uint64_t r, n, crc, bytes;
        double f[6];
        uint64_t unclipped = 0; /* a 12th field since adaptive clipping; absent before */
        if ((nt != 11 && nt != 12) || (nt == 12 && !parse_u64(tok[11], &unclipped)) ||
            !parse_u64(tok[0], &r) || !parse_u64(tok[2], &n) || n == 0 ||
            sscanf(tok[3], "%" SCNx64, &crc) != 1 || !parse_u64(tok[10], &bytes))
            goto bad;
        for (int k = 0; k < 6; k++)
            if (!parse_f(tok[4 + k], &f[k])) goto bad;
        if (r != cur) return FS_OK;
        long si = site_find(a, tok[1]);
        if (si < 0) {
            fs_log_warn("%s: line %zu: the update of site %s is dropped: no longer on the site list",
                        a->journal_path, line, tok[1]);
            return FS_OK;
        }
        fs_site *s = &a->sites[si];
        if (s->submitted) {
            fs_log_warn("%s: line %zu: a second update of site %s for round %u is ignored",
                        a->journal_path, line, s->name, cur);
            return FS_OK;
        }
        s->submitted = 1;
        s->n = n;
        s->unclipped = unclipped != 0;
        s->crc = (uint32_t)crc;
        s->loss = (float)f[0];
        for (int k = 0; k < 3; k++) s->dice[k] = (float)f[1 + k];
        s->train_s = f[4];
        s->upload_s = f[5];
        s->bytes_recv = bytes;
        a->order[a->n_accepted++] = (size_t)si;
        return FS_OK;
    }
    fs_log_warn("%s: line %zu: unknown record '%s' skipped", a->journal_path, line, kind);
    return FS_OK;
bad:
    fs_log_error("%s: line %zu: malformed '%s' record", a->journal_path, line, kind);
    return FS_ERR_FORMAT;
}

/* Deletes temporary files a crash left behind in state_dir. */
static void clean_tmp(fs_round *a)
{
    DIR *d = opendir(a->state_dir);
    if (!d) return;
    struct dirent *e;
    char path[PATH_LEN];
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, ".global.ckpt.tmp.", 17) != 0 &&
            strncmp(e->d_name, ".round.state.tmp.", 17) != 0)
            continue;
        if (set_path(path, a->state_dir, e->d_name) == FS_OK && unlink(path) == 0)
            fs_log_info("%s: deleted an unfinished temporary file", path);
    }
    closedir(d);
}

/* Loads global.ckpt and round.state, replays the journal, rebuilds the
 * current round. Called by fs_round_open on an existing state_dir. */
static fs_status resume(fs_round *a, double now)
{
    fs_ckpt_meta meta;
    float *params = NULL;
    FS_TRY(fs_ckpt_read(a->ckpt_path, &meta, &params, NULL, NULL, NULL));
    if (meta.nparams != a->P || strcmp(meta.preset, a->cfg.model.preset) != 0) {
        fs_log_error("%s: holds a %s model of %llu parameters, the federation is %s with %zu",
                     a->ckpt_path, meta.preset, (unsigned long long)meta.nparams,
                     a->cfg.model.preset, a->P);
        free(params);
        return FS_ERR_MISMATCH;
    }
    memcpy(a->model, params, a->P * sizeof *a->model);
    free(params);
    a->completed = meta.epoch;
    a->model_crc = fs_wire_crc32_f32(0, a->model, a->P);
    FS_TRY(fs_noniid_resume(&a->srv, &a->cfg, a->state_dir, a->completed, a->P, a->model + a->P));
    a->dl_crc = fs_wire_crc32_f32(0, a->model, a->U);
    FS_TRY(check_state(a));
    FS_TRY(metrics_scan(a));
    replay_ctx c = {a, now, 0};
    FS_TRY(fs_journal_scan(a->journal_path, replay_record, &c));
    if (a->completed >= a->cfg.rounds && a->cfg.rounds < meta.epoch)
        fs_log_warn("%s: holds round %u, beyond the configured %u rounds", a->ckpt_path,
                    meta.epoch, a->cfg.rounds);
    if (a->n_accepted && !c.open_seen) {
        fs_log_warn("%s: round %u has updates but no selection record; taking the submitters",
                    a->journal_path, a->completed + 1);
        for (size_t k = 0; k < a->n_accepted; k++) a->sites[a->order[k]].selected = 1;
        c.open_seen = 1;
    }
    if (c.open_seen && a->completed < a->cfg.rounds) {
        a->open = 1;
        a->opened_at = now;
        a->deadline = now + a->cfg.deadline_s;
    } else {
        for (size_t i = 0; i < a->n_sites; i++) a->sites[i].selected = 0;
        free(a->close_json);
        a->close_json = NULL;
    }
    rebuild_sum(a);
    clean_spools(a);
    fs_log_info("resumed from %s: round %u completed%s", a->state_dir, a->completed,
                a->open ? "; the next round is in progress" : "");
    if (a->open)
        fs_log_info("round %u: %zu accepted update(s) restored from the journal%s", a->completed + 1,
                    a->n_accepted, a->close_json ? "; its close was decided and is finished now" : "");
    if (a->close_json && a->n_accepted == 0) {
        fs_log_error("%s: round %u was closing but none of its updates survive; reopening it",
                     a->journal_path, a->completed + 1);
        free(a->close_json);
        a->close_json = NULL;
    }
    a->closing = a->close_json != NULL;
    return FS_OK;
}

/* ---- public API ---------------------------------------------------------------- */

static fs_status check_config(const fs_round_config *cfg, size_t P)
{
    if (!cfg || !cfg->state_dir || !cfg->sites || cfg->n_sites == 0 || P == 0 ||
        P > FS_WIRE_MAX_PARAMS) {
        fs_log_error("round: configuration needs a state folder, a site list and a model");
        return FS_ERR_ARG;
    }
    for (size_t i = 0; i < cfg->n_sites; i++) {
        if (!cfg->sites[i] || !valid_site_name(cfg->sites[i])) {
            fs_log_error("round: site name '%s' is not 1..63 characters of A-Z a-z 0-9 . _ -",
                         cfg->sites[i] ? cfg->sites[i] : "(null)");
            return FS_ERR_ARG;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(cfg->sites[i], cfg->sites[j])) {
                fs_log_error("round: site %s is listed twice", cfg->sites[i]);
                return FS_ERR_ARG;
            }
    }
    if (cfg->rounds < 1 || cfg->min_sites < 1 || cfg->min_sites > cfg->n_sites) {
        fs_log_error("round: need rounds ≥ 1 and 1 ≤ min_sites (%u) ≤ number of sites (%zu)",
                     cfg->min_sites, cfg->n_sites);
        return FS_ERR_ARG;
    }
    if (!(cfg->fraction > 0 && cfg->fraction <= 1) || !(cfg->deadline_s > 0) ||
        !isfinite(cfg->deadline_s) || !(cfg->join_wait_s >= 0) || !(cfg->site_timeout_s >= 0)) {
        fs_log_error("round: need 0 < fraction ≤ 1, deadline_s > 0, join_wait_s ≥ 0, "
                     "site_timeout_s ≥ 0");
        return FS_ERR_ARG;
    }
    if (cfg->secure_agg) {
        if (cfg->min_sites < 3 || cfg->n_sites > FS_SECAGG_MAX_SITES) {
            fs_log_error("round: secure aggregation needs min_sites ≥ 3 (got %u) and at most %u sites "
                         "(got %zu)", cfg->min_sites, FS_SECAGG_MAX_SITES, cfg->n_sites);
            return FS_ERR_ARG;
        }
        if (!(cfg->secagg_clip > 0) || !isfinite(cfg->secagg_clip) || !(cfg->secagg_stage_s > 0) ||
            !isfinite(cfg->secagg_stage_s)) {
            fs_log_error("round: secure aggregation needs secagg_clip > 0 and secagg_stage_s > 0");
            return FS_ERR_ARG;
        }
        if (cfg->dp.mode == FS_DP_CENTRAL) {
            fs_log_error("round: with secure aggregation the aggregator cannot add noise to the sum "
                         "it never sees unmasked: use distributed DP (noise shares from the sites)");
            return FS_ERR_ARG;
        }
        if (cfg->dp.mode == FS_DP_DISTRIBUTED &&
            (!cfg->secagg_threshold || cfg->min_sites <= cfg->secagg_threshold ||
             (cfg->secagg_neighbours && cfg->secagg_neighbours < cfg->secagg_threshold))) {
            fs_log_error("round: distributed DP needs a fixed secure-aggregation threshold t "
                         "(secagg_threshold), min_sites > t and neighbours >= t: every revealed sum "
                         "must hold the noise of at least t sites");
            return FS_ERR_ARG;
        }
        if (cfg->scaffold || cfg->agg_rule != FS_AGG_MEAN) {
            /* SCAFFOLD: the control-variate half of an update is about 1/(K·lr)
             * times the model half, so one clip and one fixed-point grid for
             * both would clip it or drown the model deltas (measured). */
            fs_log_error("round: secure aggregation cannot be combined with a robust aggregation rule "
                         "(it reveals only the sum) or with SCAFFOLD (its control-variate deltas are "
                         "~1/(K*lr) larger than the model deltas: one clip and grid cannot serve both)");
            return FS_ERR_ARG;
        }
    }
    if (cfg->encrypted) {
        if (cfg->secure_agg) {
            fs_log_error("round: choose one private mode: secure_agg or encrypted, not both");
            return FS_ERR_ARG;
        }
        if (cfg->min_sites < 2 || cfg->n_sites > FS_HE_PROTO_MAX_SITES) {
            fs_log_error("round: encrypted aggregation needs min_sites ≥ 2 (got %u) and at most %u sites "
                         "(got %zu)", cfg->min_sites, FS_HE_PROTO_MAX_SITES, cfg->n_sites);
            return FS_ERR_ARG;
        }
        if (!(cfg->he_clip > 0) || !isfinite(cfg->he_clip) || !(cfg->secagg_stage_s > 0) ||
            !isfinite(cfg->secagg_stage_s)) {
            fs_log_error("round: encrypted aggregation needs he_clip > 0 and secagg_stage_s > 0");
            return FS_ERR_ARG;
        }
        if (cfg->he_threshold && (cfg->he_threshold < 2 || cfg->he_threshold > cfg->min_sites)) {
            fs_log_error("round: he_threshold = %u must be between 2 and min_sites = %u (a round with "
                         "min_sites contributors must be decryptable)", cfg->he_threshold, cfg->min_sites);
            return FS_ERR_ARG;
        }
        unsigned f;
        if (fs_he_frac_bits(cfg->he_clip, (uint32_t)cfg->n_sites, &f) != FS_OK) {
            fs_log_error("round: encrypted aggregation of %zu sites with he_clip = %g does not fit the "
                         "plaintext space (lower he_clip)", cfg->n_sites, cfg->he_clip);
            return FS_ERR_ARG;
        }
        if (cfg->scaffold || cfg->agg_rule != FS_AGG_MEAN) {
            fs_log_error("round: encrypted aggregation reveals only the sum: it cannot be combined with a "
                         "robust aggregation rule or SCAFFOLD");
            return FS_ERR_ARG;
        }
        if (cfg->dp.mode == FS_DP_CENTRAL) {
            fs_log_error("round: with encrypted aggregation the sites add the privacy noise before "
                         "encrypting: use dp = distributed (with he_threshold)");
            return FS_ERR_ARG;
        }
        if (cfg->dp.mode == FS_DP_DISTRIBUTED && !cfg->he_threshold) {
            fs_log_error("round: distributed DP with encrypted aggregation needs a fixed decryption "
                         "threshold t (he_threshold ≤ min_sites): every decrypted sum holds the noise of "
                         "at least t sites");
            return FS_ERR_ARG;
        }
    }
    if (cfg->dp.mode != FS_DP_OFF && (cfg->scaffold || cfg->agg_rule != FS_AGG_MEAN)) {
        fs_log_error("round: differential privacy bounds each site's clipped update in the noised "
                     "mean; it cannot be combined with SCAFFOLD or a robust aggregation rule");
        return FS_ERR_ARG;
    }
    if (!valid_site_name(cfg->model.preset) || strlen(cfg->model.preset) >= FS_WIRE_PRESET_LEN) {
        fs_log_error("round: the model preset '%.16s' is not a valid name", cfg->model.preset);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

fs_status fs_round_open(fs_round **out, const fs_round_config *cfg, const float *w0, size_t P,
                        double now)
{
    if (!out) return FS_ERR_ARG;
    *out = NULL;
    FS_TRY(check_config(cfg, P));
    fs_round *a = calloc(1, sizeof *a);
    if (!a) return FS_ERR_NOMEM;
    a->journal.fd = -1;
    a->cfg = *cfg;
    a->cfg.sites = NULL;
    a->cfg.poll_ms = cfg->poll_ms ? cfg->poll_ms : 1000;
    a->n_sites = cfg->n_sites;
    a->P = P;
    a->U = cfg->scaffold ? 2 * P : P;
    a->quorum_since = -1;
    fs_status st = FS_ERR_ARG;
    if (snprintf(a->state_dir, PATH_LEN, "%s", cfg->state_dir) >= PATH_LEN - 64 ||
        set_path(a->spool_dir, a->state_dir, "spool") != FS_OK ||
        set_path(a->ckpt_path, a->state_dir, "global.ckpt") != FS_OK ||
        set_path(a->state_path, a->state_dir, "round.state") != FS_OK ||
        set_path(a->journal_path, a->state_dir, "journal") != FS_OK)
        goto fail;
    if (cfg->metrics_path) {
        if (snprintf(a->metrics_path, PATH_LEN, "%s", cfg->metrics_path) >= PATH_LEN) goto fail;
    } else if (set_path(a->metrics_path, a->state_dir, "metrics.jsonl") != FS_OK) {
        goto fail;
    }
    a->cfg.state_dir = a->state_dir;
    a->cfg.metrics_path = a->metrics_path;
    if (cfg->dp.mode == FS_DP_DISTRIBUTED) {
        if (!cfg->secure_agg && !cfg->encrypted) {
            fs_log_error("round: distributed DP needs secure aggregation (secure_agg = true) or "
                         "encrypted aggregation (encrypted = true)");
            goto fail;
        }
        if (a->cfg.fraction < 1.0 || a->cfg.dp.adaptive) {
            fs_log_error("round: differential privacy needs fraction = 1 and a fixed clip");
            goto fail;
        }
        /* the updates are clipped at the DP clip before quantisation, and the
         * grid leaves room for the noise of the sum */
        a->cfg.secagg_clip = a->cfg.dp.clip;
        a->cfg.he_clip = a->cfg.dp.clip;
        uint32_t t = cfg->encrypted ? a->cfg.he_threshold : a->cfg.secagg_threshold;
        if (fs_dp_ddg_quant_bits(a->cfg.dp.clip, a->cfg.dp.noise_multiplier, (uint32_t)a->n_sites, t,
                                 &a->dp_f) != FS_OK)
            goto fail;
        if (cfg->encrypted) {
            /* the grid above keeps the noisy sum within 2^31; the BFV
             * plaintext space holds 2^25 either side: 6 bits coarser (at
             * most the 24 the encoder takes), and the local noise must
             * still be at least half a step */
            int f = a->dp_f - (31 - ((int)FS_HE_PLAIN_BITS - 1));
            if (f > 24) f = 24;
            double local = a->cfg.dp.noise_multiplier * a->cfg.dp.clip * ldexp(1.0, f) / sqrt((double)t);
            if (f < 0 || local < 0.5) {
                fs_log_error("round: distributed DP with encrypted aggregation: no fixed-point grid fits "
                             "clip %g, noise multiplier %g and %zu sites in the plaintext space (grid "
                             "2^-%d, local noise %.3g steps); raise dp_clip or the noise", a->cfg.dp.clip,
                             a->cfg.dp.noise_multiplier, a->n_sites, f, local);
                goto fail;
            }
            a->dp_f = f;
        }
        a->cfg.dp.sites = (int)a->n_sites;
        a->cfg.dp.min_sites = (int)t;
        a->cfg.dp.granularity = ldexp(1.0, -a->dp_f);
        a->cfg.dp.dim = P;
        a->cfg.dp.sample_rate = 1.0;
        if (fs_dp_params_check(&a->cfg.dp) != FS_OK ||
            fs_dp_accountant_init(&a->dpa, &a->cfg.dp) != FS_OK)
            goto fail;
        a->dp_dist = 1;
    }
    if (cfg->dp.mode == FS_DP_CENTRAL) {
        /* Privacy amplification by sampling needs Poisson sampling kept
         * secret from everyone; this aggregator draws a fixed-size, seeded
         * selection, so DP runs with every site in every round (q = 1). */
        if (a->cfg.fraction < 1.0) {
            fs_log_error("round: differential privacy needs fraction = 1 (every site every round); "
                         "got fraction = %g", a->cfg.fraction);
            goto fail;
        }
        a->cfg.dp.sites = (int)a->n_sites;
        a->cfg.dp.dim = P;
        a->cfg.dp.sample_rate = 1.0;
        /* Sites receive C as a float: use exactly that float here, rounded
         * down, so that the noise is calibrated to the bound they apply. */
        float fc = (float)a->cfg.dp.clip;
        if ((double)fc > a->cfg.dp.clip) fc = nextafterf(fc, 0.0f);
        a->cfg.dp.clip = fc;
        if (fs_dp_params_check(&a->cfg.dp) != FS_OK ||
            fs_dp_accountant_init(&a->dpa, &a->cfg.dp) != FS_OK)
            goto fail;
        a->dp_clip_cur = a->cfg.dp.clip;
        a->dp_sum_sigma = a->cfg.dp.noise_multiplier;
        if (a->cfg.dp.adaptive) {
            /* the noised count shares the budget: the sum gets σ_Δ so that
             * the pair is as private as one Gaussian query with σ, which
             * the accountant counts (Andrew et al. 2021, §3) */
            double sb = fs_dp_count_stddev(&a->cfg.dp);
            a->dp_sum_sigma = fs_dp_adaptive_sum_multiplier(a->cfg.dp.noise_multiplier, sb);
            if (!isfinite(a->dp_sum_sigma)) {
                fs_log_error("round: adaptive clipping: the count's noise %g must exceed half the "
                             "noise multiplier %g (raise dp_count_stddev)", sb, a->cfg.dp.noise_multiplier);
                goto fail;
            }
            fs_dp_adaptive_init(&a->dpad, &a->cfg.dp);
            fs_log_info("differential privacy: adaptive clip from %g towards the %g quantile of the "
                        "update norms; sum noise multiplier %.4g, count noise %.4g", a->dp_clip_cur,
                        a->cfg.dp.target_quantile, a->dp_sum_sigma, sb);
        }
        a->dp = 1;
    }
    st = FS_ERR_NOMEM;
    a->sites = calloc(a->n_sites, sizeof *a->sites);
    a->order = calloc(a->n_sites, sizeof *a->order);
    a->model = calloc(a->U, sizeof *a->model);
    a->rbuf = malloc(FS_CHUNK_BYTES);
    a->fbuf = malloc(FS_CHUNK_PARAMS * sizeof *a->fbuf);
    if (!a->sites || !a->order || !a->model || !a->rbuf || !a->fbuf) goto fail;
    if ((st = fs_round_sum_init(&a->sum, a->U)) != FS_OK) goto fail;
    if ((st = fs_noniid_server_init(&a->srv, &a->cfg, P)) != FS_OK) goto fail;
    if (cfg->local_mask) {
        if (!(a->local_mask = malloc(P))) goto fail;
        memcpy(a->local_mask, cfg->local_mask, P);
    }
    a->cfg.local_mask = NULL;
    if (cfg->secure_agg && fs_masked_sum_new(P + 1, &a->sa_msum) != FS_OK) goto fail;
    if (cfg->encrypted && !(a->he_res = calloc(P + 1, sizeof *a->he_res))) goto fail;
    for (size_t i = 0; i < a->n_sites; i++) {
        strcpy(a->sites[i].name, cfg->sites[i]);
        a->sites[i].sa_index = -1;
    }
    /* attempt ids differ across restarts, so a site still in an attempt of
     * an earlier run of this aggregator is told it is over */
    a->sa_attempt = randombytes_uniform(1u << 30);

    if ((st = fs_mkdir_p(a->state_dir)) != FS_OK || (st = fs_mkdir_p(a->spool_dir)) != FS_OK) goto fail;
    clean_tmp(a);
    struct stat sb;
    if (stat(a->ckpt_path, &sb) == 0) {
        if ((st = resume(a, now)) != FS_OK) goto fail;
    } else {
        st = FS_ERR_ARG;
        if (stat(a->journal_path, &sb) == 0) {
            fs_log_error("%s: a journal without global.ckpt: this folder holds a damaged "
                         "federation; refusing to start a new one over it", a->state_dir);
            st = FS_ERR_FORMAT;
            goto fail;
        }
        if (stat(a->metrics_path, &sb) == 0 && sb.st_size > 0) {
            fs_log_error("%s: holds metrics of an earlier federation; move it away or choose "
                         "another metrics file", a->metrics_path);
            goto fail;
        }
        if (!w0) {
            fs_log_error("%s: no global.ckpt and no initial model given", a->state_dir);
            goto fail;
        }
        for (size_t i = 0; i < P; i++)
            if (!isfinite(w0[i])) {
                fs_log_error("round: initial model parameter %zu is not finite", i);
                goto fail;
            }
        memcpy(a->model, w0, P * sizeof *a->model);
        a->model_crc = fs_wire_crc32_f32(0, a->model, P);
        a->dl_crc = fs_wire_crc32_f32(0, a->model, a->U);
        fs_ckpt_meta meta = a->cfg.model;
        meta.nparams = P;
        meta.epoch = 0;
        if ((st = fs_ckpt_write(a->ckpt_path, &meta, a->model, NULL, NULL, 0)) != FS_OK ||
            (st = fsync_dir(a->state_dir)) != FS_OK || (st = write_state(a)) != FS_OK)
            goto fail;
        clean_spools(a);
        fs_log_info("new federation in %s: %zu site(s), %u round(s), %zu parameters", a->state_dir,
                    a->n_sites, a->cfg.rounds, P);
    }
    if ((st = fs_journal_open(&a->journal, a->journal_path)) != FS_OK) goto fail;
    if (a->dp || a->dp_dist) {
        /* The ledger is a function of the completed rounds (σ, q and C are
         * fixed for a federation): replay them — under distributed DP with
         * the worst case of t noise shares each (their counts are not kept). */
        for (uint32_t k = 0; k < a->completed; k++)
            if ((st = fs_dp_accountant_add_round(&a->dpa, a->dp_dist ? a->cfg.dp.min_sites : 0)) != FS_OK)
                goto fail;
        if (a->completed)
            fs_log_info("privacy: epsilon = %.3f after %u round(s) (delta = %g)",
                        fs_dp_accountant_epsilon(&a->dpa), a->completed, a->cfg.dp.delta);
    }
    st = maybe_close(a, now);
    if (st == FS_OK) st = try_open(a, now);
    if (st != FS_OK)
        fs_log_error("round: resuming round %u did not finish (%s); retried at the next tick",
                     a->completed + 1, fs_status_str(st));
    *out = a;
    return FS_OK;
fail:
    fs_round_free(a);
    return st;
}

void fs_round_free(fs_round *a)
{
    if (a) {
        sa_end(a);
        fs_masked_sum_free(a->sa_msum);
        a->sa_msum = NULL;
        free(a->sa_sum);
        a->sa_sum = NULL;
        free(a->he_res);
        a->he_res = NULL;
    }
    if (!a) return;
    fs_journal_close(&a->journal);
    for (fs_round_upload *u = a->uploads, *next; u; u = next) {
        next = u->next;
        if (u->fd >= 0) close(u->fd);
        upload_free(u);
    }
    fs_round_sum_free(&a->sum);
    fs_noniid_server_free(&a->srv);
    free(a->local_mask);
    free(a->sites);
    free(a->order);
    free(a->model);
    free(a->rbuf);
    free(a->fbuf);
    free(a->close_json);
    free(a);
}

void fs_round_abandon(fs_round *a) { fs_round_free(a); }

fs_status fs_round_tick(fs_round *a, double now)
{
    if (!a) return FS_ERR_ARG;
    if (a->dead) return FS_ERR_IO;
    fs_status st = maybe_close(a, now);
    if (a->dead) return FS_ERR_IO;
    fs_status st2 = try_open(a, now);
    return st != FS_OK ? st : st2;
}

fs_status fs_round_join(fs_round *a, const char *identity, const fs_wire_join_request *req,
                        double now, fs_wire_join_reply *reply)
{
    if (!a || !req || !reply) return FS_ERR_ARG;
    memset(reply, 0, sizeof *reply);
    reply->protocol_version = FS_PROTOCOL_VERSION;
    if (a->dead) return FS_ERR_IO;
    snprintf(reply->preset, sizeof reply->preset, "%s", a->cfg.model.preset);
    reply->round = a->completed + 1;
    long si = site_find(a, identity);
    if (si < 0)
        return refuse(FS_ERR_NOT_FOUND, identity, reply->reason, sizeof reply->reason,
                      "not on the site list");
    fs_site *s = &a->sites[si];
    snprintf(reply->site_id, sizeof reply->site_id, "%s", s->name);
    if (strcmp(req->preset, a->cfg.model.preset) != 0)
        return refuse(FS_ERR_MISMATCH, identity, reply->reason, sizeof reply->reason,
                      "model preset '%.15s' differs from the federation's '%s'", req->preset,
                      a->cfg.model.preset);
    if (req->num_samples == 0 || req->num_samples > FS_WIRE_MAX_SAMPLES)
        return refuse(FS_ERR_FORMAT, identity, reply->reason, sizeof reply->reason,
                      "num_samples %llu out of range", (unsigned long long)req->num_samples);
    if (!s->joined || s->join_samples != req->num_samples) {
        char rec[128];
        snprintf(rec, sizeof rec, "join %s %llu", s->name, (unsigned long long)req->num_samples);
        if (fs_journal_append(&a->journal, rec) != FS_OK)
            return refuse(FS_ERR_IO, identity, reply->reason, sizeof reply->reason,
                          "the aggregator could not record the join");
        fs_log_info("site %s joined (%llu samples)", s->name, (unsigned long long)req->num_samples);
    }
    s->joined = 1;
    s->join_samples = req->num_samples;
    s->last_seen = now;
    fs_round_tick(a, now);
    if (a->dead) return FS_ERR_IO;
    reply->accepted = 1;
    reply->num_params = a->P;
    reply->round = a->completed + 1;
    return FS_OK;
}

fs_status fs_round_task(fs_round *a, const char *identity, double now, fs_wire_task *task,
                        char *why, size_t whylen)
{
    if (!a || !task) return FS_ERR_ARG;
    memset(task, 0, sizeof *task);
    if (a->dead) return FS_ERR_IO;
    long si = site_find(a, identity);
    if (si < 0) return refuse(FS_ERR_NOT_FOUND, identity, why, whylen, "not on the site list");
    fs_site *s = &a->sites[si];
    if (!s->joined) return refuse(FS_ERR_MISMATCH, identity, why, whylen, "has not joined; Join first");
    s->last_seen = now;
    fs_round_tick(a, now);
    if (a->dead) return FS_ERR_IO;
    task->num_params = a->P;
    task->model_crc32 = a->dl_crc;
    task->scaffold = a->cfg.scaffold != 0;
    task->local_norm = a->cfg.local_norm != 0;
    task->round = a->completed + 1;
    task->retry_after_ms = a->cfg.poll_ms;
    if (a->completed >= a->cfg.rounds) {
        task->action = FS_TASK_FINISHED;
        task->round = a->completed;
        task->retry_after_ms = 0;
    } else if (a->cfg.encrypted) {
        /* a site joins an attempt only while its keys are being collected */
        task->action = FS_TASK_WAIT;
        if (a->open && !a->closing && a->he && a->sa_stage == 0 && s->sa_index >= 0 &&
            !fs_he_server_has(a->he, FS_HE_KEYED, (uint32_t)s->sa_index + 1)) {
            task->action = FS_TASK_TRAIN;
            task->local_epochs = a->cfg.local_epochs;
            task->steps_per_epoch = a->cfg.steps_per_epoch;
            task->lr = a->cfg.lr;
            task->prox_mu = a->cfg.prox_mu;
            double left = ceil(a->deadline - now);
            task->seconds_left = left <= 0 ? 0 : left > 4e9 ? 4000000000u : (uint32_t)left;
            task->retry_after_ms = 0;
            task->encrypted = 1;
            task->secagg_attempt = a->sa_attempt;
            task->secagg_index = (uint32_t)s->sa_index;
            task->secagg_sites = a->hep.n_sites;
            task->secagg_threshold = a->hep.threshold;
            memcpy(task->secagg_round_seed, a->hep.crs_seed, sizeof task->secagg_round_seed);
            task->secagg_clip = a->hep.qz.clip;
            task->secagg_weight_cap = a->sa_wcap;
            task->secagg_quant_bits = (int32_t)a->hep.qz.frac_bits;
            if (a->dp_dist) {
                task->dp_distributed = 1;
                task->dp_noise_multiplier = (float)a->cfg.dp.noise_multiplier;
            }
        }
    } else if (a->cfg.secure_agg) {
        /* a site joins an attempt only while its keys are being collected */
        task->action = FS_TASK_WAIT;
        if (a->open && !a->closing && a->sa && a->sa_stage == 0 && s->sa_index >= 0 &&
            !fs_secagg_server_has(a->sa, FS_SECAGG_ADVERTISED, (uint32_t)s->sa_index)) {
            task->action = FS_TASK_TRAIN;
            task->local_epochs = a->cfg.local_epochs;
            task->steps_per_epoch = a->cfg.steps_per_epoch;
            task->lr = a->cfg.lr;
            task->prox_mu = a->cfg.prox_mu;
            double left = ceil(a->deadline - now);
            task->seconds_left = left <= 0 ? 0 : left > 4e9 ? 4000000000u : (uint32_t)left;
            task->retry_after_ms = 0;
            task->secure_agg = 1;
            task->secagg_attempt = a->sa_attempt;
            task->secagg_index = (uint32_t)s->sa_index;
            task->secagg_sites = a->sap.n_sites;
            task->secagg_threshold = a->sap.threshold;
            task->secagg_neighbours = a->sap.neighbours;
            memcpy(task->secagg_round_seed, a->sap.round_seed, sizeof task->secagg_round_seed);
            task->secagg_clip = a->cfg.secagg_clip;
            task->secagg_weight_cap = a->sa_wcap;
            if (a->dp_dist) {
                task->dp_distributed = 1;
                task->dp_noise_multiplier = (float)a->cfg.dp.noise_multiplier;
                task->secagg_quant_bits = a->sa_f;
                task->secagg_clip = a->cfg.dp.clip;
            }
        }
    } else if (a->open && !a->closing && s->selected && !s->submitted && !s->uploading) {
        task->action = FS_TASK_TRAIN;
        task->local_epochs = a->cfg.local_epochs;
        task->steps_per_epoch = a->cfg.steps_per_epoch;
        task->lr = a->cfg.lr;
        task->prox_mu = a->cfg.prox_mu;
        task->dp_clip = a->dp ? (float)a->dp_clip_cur : 0.0f;
        double left = ceil(a->deadline - now);
        task->seconds_left = left <= 0 ? 0 : left > 4e9 ? 4000000000u : (uint32_t)left;
        task->retry_after_ms = 0;
    } else {
        task->action = FS_TASK_WAIT;
    }
    return FS_OK;
}

fs_status fs_round_model(fs_round *a, const char *identity, uint32_t train_round,
                         const float **params, size_t *P, uint32_t *crc, char *why, size_t whylen)
{
    if (!a || !params || !P || !crc) return FS_ERR_ARG;
    if (a->dead) return FS_ERR_IO;
    if (site_find(a, identity) < 0) return refuse(FS_ERR_NOT_FOUND, identity, why, whylen, "not on the site list");
    if (train_round != a->completed + 1)
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "the model for round %u is not available (current round %u)", train_round,
                      a->completed + 1);
    *params = a->model;
    *P = a->U;
    *crc = a->dl_crc;
    return FS_OK;
}

void fs_round_note_sent(fs_round *a, const char *identity, uint64_t bytes)
{
    long si = a ? site_find(a, identity) : -1;
    if (si >= 0) a->sites[si].bytes_sent += bytes;
}

fs_status fs_round_update_begin(fs_round *a, const char *identity, const fs_wire_update_header *hdr,
                                double now, fs_round_upload **up, char *why, size_t whylen)
{
    if (!a || !hdr || !up) return FS_ERR_ARG;
    *up = NULL;
    if (a->dead) return FS_ERR_IO;
    long si = site_find(a, identity);
    if (si < 0) return refuse(FS_ERR_NOT_FOUND, identity, why, whylen, "not on the site list");
    fs_site *s = &a->sites[si];
    s->last_seen = now;
    uint32_t r = a->completed + 1;
    if (a->completed >= a->cfg.rounds)
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "update for round %u: the federation finished after round %u", hdr->round,
                      a->completed);
    if (hdr->round < r)
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "update for round %u: that round is over (current round %u); stale or replayed",
                      hdr->round, r);
    if (hdr->round > r)
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "update for round %u: that round has not started (current round %u)",
                      hdr->round, r);
    if (!a->open || a->closing)
        return refuse(FS_ERR_MISMATCH, identity, why, whylen, "update for round %u: the round is %s",
                      r, a->closing ? "closing" : "not open yet");
    if (!s->selected)
        return refuse(FS_ERR_MISMATCH, identity, why, whylen, "not selected for round %u", r);
    if (s->submitted)
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "already submitted its update for round %u; a second one is never counted", r);
    if (s->uploading)
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "another upload of this site for round %u is in progress", r);
    if (a->cfg.encrypted) {
        if (!hdr->encrypted)
            return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                          "this federation takes encrypted updates only (encrypted aggregation)");
        if (!a->he || hdr->secagg_attempt != a->sa_attempt || s->sa_index < 0)
            return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                          "encrypted update for attempt %u: not the attempt in progress",
                          hdr->secagg_attempt);
        if (a->sa_stage != 2 || !fs_he_server_has(a->he, FS_HE_SHARED, (uint32_t)s->sa_index + 1))
            return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                          "encrypted update for round %u: this site is not in the upload stage", r);
        if (hdr->num_params != he_words(a))
            return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                          "num_params %llu differs from the %zu words of the ciphertexts",
                          (unsigned long long)hdr->num_params, he_words(a));
    } else if (hdr->encrypted) {
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "an encrypted update, but this federation does not use encrypted aggregation");
    } else if (a->cfg.secure_agg) {
        if (!hdr->masked)
            return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                          "this federation takes masked updates only (secure aggregation)");
        if (!a->sa || hdr->secagg_attempt != a->sa_attempt || s->sa_index < 0)
            return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                          "masked update for attempt %u: not the attempt in progress", hdr->secagg_attempt);
        uint32_t idx = (uint32_t)s->sa_index;
        if (a->sa_stage != 2 || !fs_secagg_server_has(a->sa, FS_SECAGG_SHARED, idx))
            return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                          "masked update for round %u: this site is not in the masked-input stage", r);
        if (hdr->num_params != (uint64_t)a->U + 1)
            return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                          "num_params %llu differs from the masked vector's %zu",
                          (unsigned long long)hdr->num_params, a->U + 1);
    } else if (hdr->masked) {
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "a masked update, but this federation does not use secure aggregation");
    } else if (hdr->num_params != a->U) {
        return refuse(FS_ERR_MISMATCH, identity, why, whylen,
                      "num_params %llu differs from the model's %zu",
                      (unsigned long long)hdr->num_params, a->U);
    }
    if (hdr->num_samples == 0 || hdr->num_samples > FS_WIRE_MAX_SAMPLES)
        return refuse(FS_ERR_FORMAT, identity, why, whylen, "num_samples %llu out of range",
                      (unsigned long long)hdr->num_samples);
    fs_round_upload *u = calloc(1, sizeof *u);
    if (!u) return FS_ERR_NOMEM;
    u->site = (size_t)si;
    u->round = r;
    u->hdr = *hdr;
    u->t_begin = now;
    if (spool_path(a, u->path, r, s->name) != FS_OK) {
        upload_free(u);
        return FS_ERR_ARG;
    }
    u->fd = open(u->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (u->fd < 0) {
        fs_log_error("%s: cannot create the spool: %s", u->path, strerror(errno));
        upload_free(u);
        return refuse(FS_ERR_IO, identity, why, whylen, "the aggregator cannot store the update");
    }
    if (hdr->encrypted) {
        if (!(u->he_obj = malloc(fs_he_wire_bytes(FS_HE_OBJ_CT)))) {
            close(u->fd);
            unlink(u->path);
            upload_free(u);
            return FS_ERR_NOMEM;
        }
        fs_he_server_ct_reset(a->he, (uint32_t)s->sa_index + 1);
    }
    u->next = a->uploads;
    a->uploads = u;
    s->uploading = 1;
    *up = u;
    return FS_OK;
}

/* Encrypted uploads: assembles ciphertext objects from the chunk and
 * verifies each as soon as it is complete (digest, kind, sender, index, key
 * id; common/he_proto.h), so that a bad object is refused at once and the
 * fold at the end only adds. */
static fs_status he_verify_chunk(fs_round *a, fs_round_upload *u, const uint8_t *data, size_t len)
{
    const size_t ob = fs_he_wire_bytes(FS_HE_OBJ_CT);
    const long idx = a->sites[u->site].sa_index;
    if (!a->he || idx < 0 || !u->he_obj) return FS_ERR_MISMATCH;
    while (len) {
        size_t take = ob - u->he_fill < len ? ob - u->he_fill : len;
        memcpy(u->he_obj + u->he_fill, data, take);
        u->he_fill += take;
        data += take;
        len -= take;
        if (u->he_fill == ob) {
            fs_status st = fs_he_server_ct(a->he, (uint32_t)idx + 1, u->he_obj, ob, 0);
            if (st != FS_OK) return st;
            u->he_fill = 0;
            u->he_done++;
        }
    }
    return FS_OK;
}

/* Refuses the chunk and kills the upload: logged, spool deleted. */
static fs_status chunk_refuse(fs_round *a, fs_round_upload *u, fs_status st, char *why,
                              size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static fs_status chunk_refuse(fs_round *a, fs_round_upload *u, fs_status st, char *why,
                              size_t whylen, const char *fmt, ...)
{
    char msg[FS_WIRE_REASON_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kill_upload(a, u, st, msg);
    return refuse(st, a->sites[u->site].name, why, whylen, "update for round %u: %s", u->round, msg);
}

fs_status fs_round_update_chunk(fs_round *a, fs_round_upload *u, uint64_t offset,
                                const uint8_t *data, size_t len, char *why, size_t whylen)
{
    if (!a || !u || (!data && len)) return FS_ERR_ARG;
    if (a->dead) return FS_ERR_IO;
    if (u->dead)
        return refuse(u->dead_status, a->sites[u->site].name, why, whylen,
                      "update for round %u: already refused: %s", u->round, u->dead_why);
    if (len == 0 || len % 4 || len > FS_CHUNK_BYTES)
        return chunk_refuse(a, u, FS_ERR_FORMAT, why, whylen,
                            "chunk of %zu bytes (need a multiple of 4, 4 .. %u)", len, FS_CHUNK_BYTES);
    if (offset != u->received)
        return chunk_refuse(a, u, FS_ERR_FORMAT, why, whylen,
                            "chunk at parameter %llu, expected %llu (chunks must be contiguous and "
                            "in order)", (unsigned long long)offset, (unsigned long long)u->received);
    /* a masked vector carries its weight too; ciphertexts are opaque words */
    size_t words = u->hdr.encrypted ? he_words(a) : a->U + (u->hdr.masked ? 1 : 0);
    if (len / 4 > words - u->received)
        return chunk_refuse(a, u, FS_ERR_FORMAT, why, whylen,
                            "stream larger than the announced %zu parameters (chunk ends at %llu)",
                            words, (unsigned long long)(offset + len / 4));
    size_t bad;
    int opaque = u->hdr.masked || u->hdr.encrypted;
    if (!opaque && fs_wire_check_finite(data, len, &bad) != FS_OK)
        return chunk_refuse(a, u, FS_ERR_NUMERIC, why, whylen, "parameter %llu is NaN or Inf",
                            (unsigned long long)(offset + bad));
    if (a->local_mask && !opaque &&
        fs_noniid_check_local(a->local_mask, a->P, offset, data, len, &bad) != FS_OK)
        return chunk_refuse(a, u, FS_ERR_FORMAT, why, whylen,
                            "parameter %llu is a normalisation parameter kept at the sites (FedBN) "
                            "but its delta is not 0", (unsigned long long)bad);
    if (u->hdr.encrypted) {
        fs_status vs = he_verify_chunk(a, u, data, len);
        if (vs != FS_OK)
            return chunk_refuse(a, u, vs, why, whylen, "ciphertext %llu was refused (%s)",
                                (unsigned long long)u->he_done, fs_status_str(vs));
    }
    int err = write_all(u->fd, data, len);
    if (err) {
        fs_log_error("%s: cannot write the spool: %s", u->path, strerror(err));
        return chunk_refuse(a, u, FS_ERR_IO, why, whylen, "the aggregator cannot store the update");
    }
    u->crc = fs_wire_crc32_bytes(u->crc, data, len);
    if (a->dp) {
        /* the same sum, in the same order, as the site's fs_dp_l2_norm */
        for (size_t i = 0; i < len / 4; i++) {
            float x;
            memcpy(&x, data + 4 * i, 4);
            u->sumsq += (double)x * (double)x;
        }
    }
    u->received += len / 4;
#ifdef SYNC_FILE_RANGE_WRITE
    /* Start (not wait for) the write-back of what arrived so far; an error
     * here is only a lost hint: the fsync at the end is what counts. */
    if (u->received * 4 - u->flushed >= SPOOL_FLUSH_BYTES) {
        (void)sync_file_range(u->fd, (off_t)u->flushed, (off_t)(u->received * 4 - u->flushed),
                              SYNC_FILE_RANGE_WRITE);
        u->flushed = u->received * 4;
    }
#endif
    CRASH_POINT(a, FS_CRASH_MID_UPLOAD);
    return FS_OK;
}

static void unlink_upload(fs_round *a, fs_round_upload *u)
{
    for (fs_round_upload **p = &a->uploads; *p; p = &(*p)->next)
        if (*p == u) {
            *p = u->next;
            return;
        }
}

fs_status fs_round_update_end(fs_round *a, fs_round_upload *u, int failed, double now, char *why,
                              size_t whylen)
{
    if (!a || !u) return FS_ERR_ARG;
    if (a->dead) return FS_ERR_IO;
    fs_site *s = &a->sites[u->site];
    fs_status st = FS_OK;
    if (u->dead) {
        if (why && whylen) snprintf(why, whylen, "update for round %u: %s", u->round, u->dead_why);
        st = u->dead_status;
        goto out;
    }
    if (failed) {
        st = chunk_refuse(a, u, FS_ERR_FORMAT, why, whylen,
                          "the stream broke after %llu of %zu parameters",
                          (unsigned long long)u->received, a->U);
        goto out;
    }
    size_t want_words = u->hdr.encrypted ? he_words(a) : a->U + (u->hdr.masked ? 1 : 0);
    if (u->received != want_words) {
        st = chunk_refuse(a, u, FS_ERR_FORMAT, why, whylen, "the stream ended after %llu of %zu words",
                          (unsigned long long)u->received, want_words);
        goto out;
    }
    if (u->crc != u->hdr.crc32) {
        st = chunk_refuse(a, u, FS_ERR_CHECKSUM, why, whylen,
                          "CRC-32 %08x of the received bytes differs from the header's %08x", u->crc,
                          u->hdr.crc32);
        goto out;
    }
    if (a->dp && !(sqrt(u->sumsq) <= a->dp_clip_cur)) {
        /* WARNING: the noise is calibrated to this bound; an update above it
         * would be less private than the accountant reports. */
        st = chunk_refuse(a, u, FS_ERR_MISMATCH, why, whylen,
                          "the update's L2 norm %.6g exceeds the privacy clip %.6g (clip it as the "
                          "task says)", sqrt(u->sumsq), a->dp_clip_cur);
        goto out;
    }
    int err = fsync(u->fd) != 0 ? errno : 0;
    if (close(u->fd) != 0 && !err) err = errno;
    if (err) {
        fs_log_error("%s: cannot sync the spool: %s", u->path, strerror(err));
        u->fd = -1;
        unlink(u->path);
        st = chunk_refuse(a, u, FS_ERR_IO, why, whylen, "the aggregator cannot store the update");
        goto out;
    }
    u->fd = -1;
    if (fsync_dir(a->spool_dir) != FS_OK) {
        st = chunk_refuse(a, u, FS_ERR_IO, why, whylen, "the aggregator cannot store the update");
        unlink(u->path);
        goto out;
    }
    CRASH_POINT(a, FS_CRASH_AFTER_SPOOL);

    if (u->hdr.encrypted) {
        /* Encrypted aggregation: no journal (as below); the ciphertexts are
         * verified, then added into the running ciphertext sum. */
        double up_s = now - u->t_begin;
        s->crc = u->crc;
        struct timespec f0, f1;
        clock_gettime(CLOCK_MONOTONIC, &f0);
        fs_status fst = he_fold_spool(a, u->site);
        clock_gettime(CLOCK_MONOTONIC, &f1);
        double fold_s = (double)(f1.tv_sec - f0.tv_sec) + 1e-9 * (double)(f1.tv_nsec - f0.tv_nsec);
        if (fst != FS_OK) {
            unlink_upload(a, u);
            s->uploading = 0;
            upload_free(u);
            if (fst == FS_ERR_IO || fst == FS_ERR_NOMEM) {
                sa_restart(a, "an encrypted update could not be added to the sum");
                if (why && whylen) snprintf(why, whylen, "the aggregator could not add the encrypted update");
                return FS_ERR_IO;
            }
            /* a bad ciphertext object: refused, the sum untouched (verified first) */
            if (why && whylen)
                snprintf(why, whylen, "update for round %u: a ciphertext was refused (%s)", a->completed + 1,
                         fs_status_str(fst));
            return fst;
        }
        s->uploading = 0;
        s->submitted = 1;
        s->n = 1; /* the weight travels encrypted */
        s->loss = u->hdr.train_loss;
        s->dice[0] = u->hdr.global_dice_wt;
        s->dice[1] = u->hdr.global_dice_tc;
        s->dice[2] = u->hdr.global_dice_et;
        s->train_s = u->hdr.train_seconds;
        s->upload_s = up_s;
        s->bytes_recv = (uint64_t)he_words(a) * 4u;
        a->order[a->n_accepted++] = u->site;
        fs_log_info("site %s: encrypted update for round %u accepted (%llu bytes, %.1f s upload with each "
                    "ciphertext verified, %.2f s to add)", s->name, u->round, (unsigned long long)s->bytes_recv,
                    up_s, fold_s);
        if (why && whylen) why[0] = 0;
        unlink_upload(a, u);
        upload_free(u);
        sa_tick(a, now);
        return FS_OK;
    }
    if (u->hdr.masked) {
        /* Secure aggregation: no journal (a secure round is never resumed
         * mid-round); the masked vector goes into the running uint32 sum. */
        double up_s = now - u->t_begin;
        s->crc = u->crc;
        if (sa_fold_spool(a, u->site) != FS_OK ||
            fs_secagg_server_masked_received(a->sa, (uint32_t)s->sa_index) != FS_OK) {
            unlink_upload(a, u);
            s->uploading = 0;
            upload_free(u);
            sa_restart(a, "a masked update could not be added to the sum");
            if (why && whylen) snprintf(why, whylen, "the aggregator could not add the masked update");
            return FS_ERR_IO;
        }
        s->uploading = 0;
        s->submitted = 1;
        s->n = 1; /* the weight travels masked: counts are not known here */
        s->loss = u->hdr.train_loss;
        s->dice[0] = u->hdr.global_dice_wt;
        s->dice[1] = u->hdr.global_dice_tc;
        s->dice[2] = u->hdr.global_dice_et;
        s->train_s = u->hdr.train_seconds;
        s->upload_s = up_s;
        s->bytes_recv = ((uint64_t)a->P + 1) * 4u;
        a->order[a->n_accepted++] = u->site;
        fs_log_info("site %s: masked update for round %u accepted (%llu bytes, %.1f s upload)", s->name,
                    u->round, (unsigned long long)s->bytes_recv, up_s);
        if (why && whylen) why[0] = 0;
        unlink_upload(a, u);
        upload_free(u);
        sa_tick(a, now);
        return FS_OK;
    }

    double upload_s = now - u->t_begin;
    uint64_t bytes = (uint64_t)a->U * 4u;
    char rec[512];
    snprintf(rec, sizeof rec, "accept %u %s %llu %08x %a %a %a %a %a %a %llu %d", u->round, s->name,
             (unsigned long long)u->hdr.num_samples, u->crc, (double)u->hdr.train_loss,
             (double)u->hdr.global_dice_wt, (double)u->hdr.global_dice_tc,
             (double)u->hdr.global_dice_et, u->hdr.train_seconds, upload_s,
             (unsigned long long)bytes, u->hdr.dp_unclipped ? 1 : 0);
    if (fs_journal_append(&a->journal, rec) != FS_OK) {
        unlink(u->path);
        st = chunk_refuse(a, u, FS_ERR_IO, why, whylen, "the aggregator cannot record the update");
        goto out;
    }
    CRASH_POINT(a, FS_CRASH_AFTER_JOURNAL);

    s->uploading = 0;
    s->submitted = 1;
    s->n = u->hdr.num_samples;
    s->unclipped = u->hdr.dp_unclipped != 0;
    s->crc = u->crc;
    s->loss = u->hdr.train_loss;
    s->dice[0] = u->hdr.global_dice_wt;
    s->dice[1] = u->hdr.global_dice_tc;
    s->dice[2] = u->hdr.global_dice_et;
    s->train_s = u->hdr.train_seconds;
    s->upload_s = upload_s;
    s->bytes_recv = bytes;
    a->order[a->n_accepted++] = u->site;
    int touched;
    if (fold_spool(a, u->site, 0, &touched) != FS_OK) {
        /* The journal holds it, but its bytes cannot be read back: drop it
         * everywhere so the site is asked again, and rebuild the sum. */
        drop_accepted(a, a->n_accepted - 1, "it cannot be read back from the spool");
        rebuild_sum(a);
        if (why && whylen) snprintf(why, whylen, "the aggregator cannot read back the update");
        st = FS_ERR_IO;
        goto out;
    }
    fs_log_info("site %s: update for round %u accepted (%llu samples, %llu bytes, %.1f s upload)",
                s->name, u->round, (unsigned long long)s->n, (unsigned long long)bytes, upload_s);
    if (why && whylen) why[0] = 0;
    unlink_upload(a, u);
    upload_free(u);
    fs_status cs = maybe_close(a, now);
    if (a->dead) return FS_ERR_IO;
    if (cs != FS_OK)
        fs_log_error("round %u: closing failed (%s); retried at the next tick", a->completed + 1,
                     fs_status_str(cs));
    return FS_OK;
out:
    unlink_upload(a, u);
    if (u->fd >= 0) close(u->fd);
    if (!u->dead) s->uploading = 0;
    upload_free(u);
    return st;
}

void fs_round_view_get(const fs_round *a, fs_round_view *v)
{
    memset(v, 0, sizeof *v);
    v->round = a->completed + 1;
    v->completed = a->completed;
    v->rounds = a->cfg.rounds;
    v->open = a->open;
    v->finished = a->completed >= a->cfg.rounds;
    for (size_t i = 0; i < a->n_sites; i++) {
        v->n_selected += (size_t)a->sites[i].selected;
        v->n_joined += (size_t)a->sites[i].joined;
    }
    v->n_submitted = a->n_accepted;
    v->weight = a->sum.acc.weight;
    v->deadline = a->open ? a->deadline
                  : a->quorum_since >= 0 ? a->quorum_since + a->cfg.join_wait_s : -1;
    v->model = a->model;
    v->sum = a->sum.sum;
    v->num_params = a->P;
    v->update_params = a->U;
    v->model_crc = a->model_crc;
}

uint32_t fs_round_current(const fs_round *a) { return a->completed + 1; }

int fs_round_is_selected(const fs_round *a, const char *site)
{
    long si = site_find(a, site);
    return si >= 0 && a->open && a->sites[si].selected;
}

void fs_round_test_crash(fs_round *a, fs_round_crash point, unsigned nth)
{
    a->crash_point = point;
    a->crash_nth = nth ? nth : 1;
}

int fs_round_test_crashed(const fs_round *a) { return a->dead; }
