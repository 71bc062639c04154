/*
 * common/config.h — the config files of `fedseg aggregator` and `fedseg node`.
 *
 * Format:
 *   # a comment line
 *   key = value          # text after whitespace + '#' is a comment too
 *   sites = site_1, site_2, site_3
 * One `key = value` per line; blank lines and comments are skipped;
 * whitespace around keys and values is trimmed; keys are [A-Za-z0-9_.-];
 * a value is everything after the first '=' up to an inline comment (a '#'
 * at the start of the value or after a space or tab), so a value cannot
 * itself hold " #".
 *
 * WARNING: a config is strict on purpose — a key the program does not know is
 * an error naming the file, the line and the key (a misspelt
 * `round_deadline_s` must not silently fall back to the default), and so is a
 * key given twice in the file. Values are checked when read (typed getters
 * with ranges); their errors name the file and line the value came from, or
 * "command line" for values set with fs_config_set.
 *
 * Use: fs_config_new(known keys) -> fs_config_load(file) -> fs_config_set()
 * for each command-line flag (flags override the file, whichever order the
 * two happen in) -> getters -> fs_config_free. Every error is logged with
 * fs_log_error and returned as a status.
 *
 * Tested by tests/test_config.c.
 */
#ifndef FS_CONFIG_H
#define FS_CONFIG_H

#include <stddef.h>
#include "kernels/status.h"

typedef struct fs_config fs_config;

/* A config that accepts exactly the keys in `keys` (NULL-terminated; copied).
 * FS_ERR_ARG for a malformed or repeated key in the list, FS_ERR_NOMEM. */
fs_status fs_config_new(fs_config **out, const char *const *keys);
void fs_config_free(fs_config *cfg); /* NULL-safe */

/* Reads a config file. FS_ERR_NOT_FOUND when it does not exist, FS_ERR_IO
 * when it cannot be read, FS_ERR_FORMAT for a line that is not `key = value`,
 * an unknown key, a duplicate key, a NUL byte or a file over 1 MiB — each
 * logged as "FILE:LINE: problem". Keys already set by fs_config_set keep
 * their command-line value. May be called once per config. */
fs_status fs_config_load(fs_config *cfg, const char *path);

/* Sets key = value from the command line, overriding the file. FS_ERR_FORMAT
 * (logged) for an unknown key. Setting the same key twice keeps the last. */
fs_status fs_config_set(fs_config *cfg, const char *key, const char *value);

/* 1 when the key was given (in the file or by fs_config_set). */
int fs_config_has(const fs_config *cfg, const char *key);

/* Typed getters: the value when given, else def. A value that does not parse
 * or lies outside [min, max] is FS_ERR_FORMAT, logged as
 * "FILE:LINE: KEY = VALUE: problem". Asking for a key not in the known list is
 * FS_ERR_ARG (a programming error; logged). The string returned by
 * fs_config_get_str is owned by cfg (or is def). */
fs_status fs_config_get_str(const fs_config *cfg, const char *key, const char *def, const char **out);
fs_status fs_config_get_int(const fs_config *cfg, const char *key, long long def, long long min,
                            long long max, long long *out);
fs_status fs_config_get_float(const fs_config *cfg, const char *key, double def, double min,
                              double max, double *out);
/* true/false, yes/no, on/off, 1/0 (case-insensitive). */
fs_status fs_config_get_bool(const fs_config *cfg, const char *key, int def, int *out);

/* A comma-separated list ("a, b ,c" -> {"a","b","c"}); def is a list in the
 * same syntax or NULL (empty). An empty item ("a,,b") is FS_ERR_FORMAT; an
 * empty value is the empty list. *items is malloc'ed, one block holding the
 * pointers and the strings: free it with free(). */
fs_status fs_config_get_list(const fs_config *cfg, const char *key, const char *def, char ***items,
                             size_t *count);

#endif
