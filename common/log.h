/*
 * common/log.h — one-line messages to stderr for people: errors name the file
 * and the problem ("fedseg: error: case_003_t1.nii.gz: shape 90×108×90 differs
 * from the t1ce's 91×109×91"). Library code logs, then returns a status.
 */
#ifndef FS_LOG_H
#define FS_LOG_H

#include <stdarg.h>

typedef enum { FS_LOG_QUIET = 0, FS_LOG_ERROR, FS_LOG_WARN, FS_LOG_INFO, FS_LOG_DEBUG } fs_log_level;

void fs_log_set_level(fs_log_level level);
fs_log_level fs_log_get_level(void);
void fs_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fs_log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fs_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fs_log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
