/* common/log.c — see log.h. */
#include "common/log.h"
#include <stdio.h>

static fs_log_level g_level = FS_LOG_INFO;

void fs_log_set_level(fs_log_level level) { g_level = level; }
fs_log_level fs_log_get_level(void) { return g_level; }

static void emit(fs_log_level lvl, const char *tag, const char *fmt, va_list ap)
{
    if (lvl > g_level) return;
    fprintf(stderr, "fedseg: %s", tag);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

#define FS_LOG_FN(name, lvl, tag) \
    void name(const char *fmt, ...) { va_list ap; va_start(ap, fmt); emit(lvl, tag, fmt, ap); va_end(ap); }
FS_LOG_FN(fs_log_error, FS_LOG_ERROR, "error: ")
FS_LOG_FN(fs_log_warn, FS_LOG_WARN, "warning: ")
FS_LOG_FN(fs_log_info, FS_LOG_INFO, "")
FS_LOG_FN(fs_log_debug, FS_LOG_DEBUG, "debug: ")
