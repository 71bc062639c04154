/*
 * aggregator/journal.h — an append-only journal of one-line text records,
 * each written with its CRC-32 and fsync'ed before the append returns: once
 * fs_journal_append says FS_OK the record survives a crash or power loss.
 *
 * Line format:  "J <crc32 of payload, 8 hex digits> <payload>\n"
 * The payload is printable text without newlines (the caller's format).
 *
 * Reading back (fs_journal_scan) hands every intact record to a callback in
 * the order they were written. A torn last record (a crash in the middle of
 * an append: no newline, or a CRC that does not match) is cut off the file,
 * so later appends start on a clean line; a damaged record anywhere else is
 * corruption and refused (FS_ERR_FORMAT, logged with the line number).
 *
 * Tested through tests/test_round.c (torn tail, resume after crashes).
 */
#ifndef FS_JOURNAL_H
#define FS_JOURNAL_H

#include <stddef.h>
#include "kernels/status.h"

typedef struct {
    int fd;              /* -1 when closed */
    char path[4096];
} fs_journal;

/* Opens (creating if missing, mode 0600) path for appending. FS_ERR_IO. */
fs_status fs_journal_open(fs_journal *j, const char *path);
/* Appends one record and fsyncs. FS_ERR_ARG for a payload holding a
 * newline; FS_ERR_IO (logged) when the write fails — the record may then be
 * torn and is dropped by the next scan. */
fs_status fs_journal_append(fs_journal *j, const char *payload);
/* Closes without writing anything (NULL-safe, idempotent). */
void fs_journal_close(fs_journal *j);

/* Calls fn(ctx, payload, line_number) for every intact record of the
 * journal at path (payload is writable and NUL-terminated, valid during the
 * call). A missing file is an empty journal. Stops at the first status fn
 * returns other than FS_OK and returns it. Truncates a torn tail. */
typedef fs_status (*fs_journal_fn)(void *ctx, char *payload, size_t line);
fs_status fs_journal_scan(const char *path, fs_journal_fn fn, void *ctx);

#endif
