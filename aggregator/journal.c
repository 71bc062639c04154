/*
 * aggregator/journal.c — see journal.h. Appends go through one write() of
 * the whole line on an O_APPEND descriptor, then fsync.
 */
#include "aggregator/journal.h"
#include "common/log.h"
#include "common/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

fs_status fs_journal_open(fs_journal *j, const char *path)
{
    j->fd = -1;
    if (strlen(path) >= sizeof j->path) return FS_ERR_ARG;
    strcpy(j->path, path);
    j->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (j->fd < 0) {
        fs_log_error("%s: cannot open the journal: %s", path, strerror(errno));
        return FS_ERR_IO;
    }
    return FS_OK;
}

/* Writes all of buf, retrying short writes and EINTR. 0 or an errno. */
static int write_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

fs_status fs_journal_append(fs_journal *j, const char *payload)
{
    if (j->fd < 0 || !payload || strchr(payload, '\n')) return FS_ERR_ARG;
    size_t n = strlen(payload);
    char *line = malloc(n + 13);
    if (!line) return FS_ERR_NOMEM;
    uint32_t crc = fs_wire_crc32_bytes(0, (const uint8_t *)payload, n);
    snprintf(line, 13, "J %08x ", crc);
    memcpy(line + 11, payload, n);
    line[11 + n] = '\n';
    int err = write_all(j->fd, line, n + 12);
    free(line);
    if (!err && fsync(j->fd) != 0) err = errno;
    if (err) {
        fs_log_error("%s: cannot append to the journal: %s", j->path, strerror(err));
        return FS_ERR_IO;
    }
    return FS_OK;
}

void fs_journal_close(fs_journal *j)
{
    if (j && j->fd >= 0) close(j->fd);
    if (j) j->fd = -1;
}

/* Parses "J XXXXXXXX payload" in place; returns the payload or NULL when the
 * line is malformed or its CRC does not match. line has no newline. */
static char *check_line(char *line, size_t len)
{
    if (len < 11 || line[0] != 'J' || line[1] != ' ' || line[10] != ' ') return NULL;
    char hex[9];
    memcpy(hex, line + 2, 8);
    hex[8] = 0;
    char *end;
    unsigned long want = strtoul(hex, &end, 16);
    if (*end) return NULL;
    char *payload = line + 11;
    if (memchr(payload, 0, len - 11)) return NULL;
    if (fs_wire_crc32_bytes(0, (const uint8_t *)payload, len - 11) != (uint32_t)want) return NULL;
    return payload;
}

fs_status fs_journal_scan(const char *path, fs_journal_fn fn, void *ctx)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return FS_OK;
        fs_log_error("%s: cannot read the journal: %s", path, strerror(errno));
        return FS_ERR_IO;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    off_t good = 0;
    fs_status st = FS_OK;
    int torn = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        lineno++;
        int has_nl = line[n - 1] == '\n';
        if (has_nl) line[--n] = 0;
        char *payload = check_line(line, (size_t)n);
        if (!payload || !has_nl) {
            /* Torn only if nothing follows; otherwise the journal is damaged. */
            if (getc(f) != EOF) {
                fs_log_error("%s: line %zu: damaged journal record (bad checksum or format)", path,
                             lineno);
                st = FS_ERR_FORMAT;
            } else {
                torn = 1;
            }
            break;
        }
        st = fn(ctx, payload, lineno);
        if (st != FS_OK) break;
        good = ftello(f);
    }
    if (st == FS_OK && !torn && ferror(f)) {
        fs_log_error("%s: cannot read the journal: %s", path, strerror(errno));
        st = FS_ERR_IO;
    }
    free(line);
    fclose(f);
    if (st == FS_OK && torn) {
        fs_log_warn("%s: dropping a torn last record at line %zu (a crash during its write)", path,
                    lineno);
        if (truncate(path, good) != 0) {
            fs_log_error("%s: cannot truncate the torn record: %s", path, strerror(errno));
            st = FS_ERR_IO;
        }
    }
    return st;
}
