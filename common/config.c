/*
 * common/config.c — see config.h. Layout: the key table (one entry per known
 * key: its value, where the value came from); the file reader (whole file in
 * memory, one line at a time); the typed getters. Tested by
 * tests/test_config.c.
 */
#include "common/config.h"
#include "common/log.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_FILE_BYTES (1u << 20)

typedef struct {
    char *key;
    char *value;    /* NULL when not given */
    int file_line;  /* line in the file where the key appeared (0 = not there) */
    int from_cli;   /* value set by fs_config_set (wins over the file)        */
} entry;

struct fs_config {
    entry *e;
    size_t n;
    char *path;     /* the loaded file, for messages */
};

static int key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

static int key_ok(const char *k)
{
    if (!k || !k[0]) return 0;
    for (; *k; k++)
        if (!key_char(*k)) return 0;
    return 1;
}

static entry *find(const fs_config *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->n; i++)
        if (strcmp(cfg->e[i].key, key) == 0) return &cfg->e[i];
    return NULL;
}

fs_status fs_config_new(fs_config **out, const char *const *keys)
{
    if (!out || !keys) return FS_ERR_ARG;
    *out = NULL;
    size_t n = 0;
    while (keys[n]) n++;
    fs_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg || !(cfg->e = calloc(n ? n : 1, sizeof *cfg->e))) {
        free(cfg);
        return FS_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        if (!key_ok(keys[i]) || find(cfg, keys[i])) {
            fs_log_error("config: invalid or repeated key \"%s\" in the list of known keys", keys[i]);
            fs_config_free(cfg);
            return FS_ERR_ARG;
        }
        if (!(cfg->e[i].key = strdup(keys[i]))) {
            fs_config_free(cfg);
            return FS_ERR_NOMEM;
        }
        cfg->n = i + 1;
    }
    *out = cfg;
    return FS_OK;
}

void fs_config_free(fs_config *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < cfg->n; i++) {
        free(cfg->e[i].key);
        free(cfg->e[i].value);
    }
    free(cfg->e);
    free(cfg->path);
    free(cfg);
}

/* Edit distance between two short strings (capped at 64 characters each), for
 * "did you mean" hints. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 99;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Logs "WHERE: unknown key 'KEY'" with the closest known key as a hint. */
static void log_unknown(const fs_config *cfg, const char *where, const char *key)
{
    const char *best = NULL;
    size_t bd = 3;
    for (size_t i = 0; i < cfg->n; i++) {
        size_t d = edit_distance(key, cfg->e[i].key);
        if (d < bd) { bd = d; best = cfg->e[i].key; }
    }
    if (best) fs_log_error("%s: unknown key '%s' (did you mean '%s'?)", where, key, best);
    else fs_log_error("%s: unknown key '%s'", where, key);
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

/* Parses one line (NUL-terminated, modified in place) of file `path`. */
static fs_status parse_line(fs_config *cfg, const char *path, int lineno, char *s)
{
    while (is_space(*s)) s++;
    if (!*s || *s == '#') return FS_OK;
    char *eq = strchr(s, '=');
    if (!eq) {
        fs_log_error("%s:%d: expected 'key = value', got \"%.60s\"", path, lineno, s);
        return FS_ERR_FORMAT;
    }
    char *kend = eq;
    while (kend > s && is_space(kend[-1])) kend--;
    *kend = '\0';
    if (!key_ok(s)) {
        fs_log_error("%s:%d: \"%.60s\" is not a key (letters, digits, _ . - only)", path, lineno, s);
        return FS_ERR_FORMAT;
    }
    char *v = eq + 1;
    while (is_space(*v)) v++;
    for (char *c = v; *c; c++) {
        if (*c == '#' && (c == v || is_space(c[-1]))) { *c = '\0'; break; }
    }
    size_t vl = strlen(v);
    while (vl && is_space(v[vl - 1])) v[--vl] = '\0';

    char where[4200];
    snprintf(where, sizeof where, "%s:%d", path, lineno);
    entry *e = find(cfg, s);
    if (!e) {
        log_unknown(cfg, where, s);
        return FS_ERR_FORMAT;
    }
    if (e->file_line) {
        fs_log_error("%s: duplicate key '%s' (first given on line %d)", where, s, e->file_line);
        return FS_ERR_FORMAT;
    }
    e->file_line = lineno;
    if (e->from_cli) return FS_OK;
    char *copy = strdup(v);
    if (!copy) return FS_ERR_NOMEM;
    free(e->value);
    e->value = copy;
    return FS_OK;
}

fs_status fs_config_load(fs_config *cfg, const char *path)
{
    if (!cfg || !path) return FS_ERR_ARG;
    if (cfg->path) {
        fs_log_error("%s: a config file was already loaded (%s)", path, cfg->path);
        return FS_ERR_ARG;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        int err = errno;
        fs_log_error("%s: cannot open config file: %s", path, strerror(err));
        return err == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO;
    }
    char *buf = malloc(MAX_FILE_BYTES + 1);
    if (!buf) { fclose(f); return FS_ERR_NOMEM; }
    size_t n = fread(buf, 1, MAX_FILE_BYTES + 1, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        fs_log_error("%s: cannot read config file", path);
        free(buf);
        return FS_ERR_IO;
    }
    if (n > MAX_FILE_BYTES) {
        fs_log_error("%s: config file larger than %u bytes", path, MAX_FILE_BYTES);
        free(buf);
        return FS_ERR_FORMAT;
    }
    buf[n] = '\0';
    if (!(cfg->path = strdup(path))) { free(buf); return FS_ERR_NOMEM; }

    fs_status st = FS_OK;
    int lineno = 1;
    for (size_t i = 0; i <= n && st == FS_OK; lineno++) {
        size_t j = i;
        while (j < n && buf[j] != '\n' && buf[j] != '\0') j++;
        if (j < n && buf[j] == '\0') {
            fs_log_error("%s:%d: NUL byte in a config file", path, lineno);
            st = FS_ERR_FORMAT;
            break;
        }
        buf[j] = '\0';
        st = parse_line(cfg, path, lineno, buf + i);
        i = j + 1;
    }
    free(buf);
    return st;
}

fs_status fs_config_set(fs_config *cfg, const char *key, const char *value)
{
    if (!cfg || !key || !value) return FS_ERR_ARG;
    entry *e = find(cfg, key);
    if (!e) {
        log_unknown(cfg, "command line", key);
        return FS_ERR_FORMAT;
    }
    char *copy = strdup(value);
    if (!copy) return FS_ERR_NOMEM;
    free(e->value);
    e->value = copy;
    e->from_cli = 1;
    return FS_OK;
}

int fs_config_has(const fs_config *cfg, const char *key)
{
    const entry *e = cfg && key ? find(cfg, key) : NULL;
    return e && e->value;
}

/* Finds the key for a getter: FS_ERR_ARG when the program asks for a key it
 * did not declare; *e->value NULL when not given. */
static fs_status lookup(const fs_config *cfg, const char *key, const entry **e)
{
    if (!cfg || !key) return FS_ERR_ARG;
    *e = find(cfg, key);
    if (!*e) {
        fs_log_error("config: the program asked for undeclared key '%s'", key);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

/* Logs "ORIGIN: KEY = VALUE: problem" for a value that failed its check. */
static fs_status bad_value(const fs_config *cfg, const entry *e, const char *problem)
{
    if (e->from_cli || !cfg->path)
        fs_log_error("command line: %s = \"%s\": %s", e->key, e->value, problem);
    else
        fs_log_error("%s:%d: %s = \"%s\": %s", cfg->path, e->file_line, e->key, e->value, problem);
    return FS_ERR_FORMAT;
}

fs_status fs_config_get_str(const fs_config *cfg, const char *key, const char *def, const char **out)
{
    const entry *e;
    FS_TRY(lookup(cfg, key, &e));
    if (!out) return FS_ERR_ARG;
    *out = e->value ? e->value : def;
    return FS_OK;
}

fs_status fs_config_get_int(const fs_config *cfg, const char *key, long long def, long long min,
                            long long max, long long *out)
{
    const entry *e;
    FS_TRY(lookup(cfg, key, &e));
    if (!out) return FS_ERR_ARG;
    if (!e->value) { *out = def; return FS_OK; }
    char *end;
    errno = 0;
    long long v = strtoll(e->value, &end, 10);
    if (!e->value[0] || *end || errno == ERANGE) return bad_value(cfg, e, "not an integer");
    if (v < min || v > max) {
        char msg[128];
        snprintf(msg, sizeof msg, "outside the allowed range [%lld, %lld]", min, max);
        return bad_value(cfg, e, msg);
    }
    *out = v;
    return FS_OK;
}

fs_status fs_config_get_float(const fs_config *cfg, const char *key, double def, double min,
                              double max, double *out)
{
    const entry *e;
    FS_TRY(lookup(cfg, key, &e));
    if (!out) return FS_ERR_ARG;
    if (!e->value) { *out = def; return FS_OK; }
    char *end;
    errno = 0;
    double v = strtod(e->value, &end);
    if (!e->value[0] || *end || errno == ERANGE || !isfinite(v)) return bad_value(cfg, e, "not a finite number");
    if (v < min || v > max) {
        char msg[128];
        snprintf(msg, sizeof msg, "outside the allowed range [%g, %g]", min, max);
        return bad_value(cfg, e, msg);
    }
    *out = v;
    return FS_OK;
}

fs_status fs_config_get_bool(const fs_config *cfg, const char *key, int def, int *out)
{
    const entry *e;
    FS_TRY(lookup(cfg, key, &e));
    if (!out) return FS_ERR_ARG;
    if (!e->value) { *out = def; return FS_OK; }
    static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(e->value, yes[i]) == 0) { *out = 1; return FS_OK; }
        if (strcasecmp(e->value, no[i]) == 0) { *out = 0; return FS_OK; }
    }
    return bad_value(cfg, e, "not a boolean (true/false, yes/no, on/off, 1/0)");
}

/* Splits s on commas into one malloc'ed block (pointer array, then the
 * strings), trimming each item. Returns -1 for an empty item, -2 for no
 * memory, else 0. */
static int split_list(const char *s, char ***items, size_t *count)
{
    size_t slen = strlen(s), n = 1;
    const char *t = s;
    while (is_space(*t)) t++;
    if (!*t) n = 0;
    else for (const char *c = s; *c; c++) n += *c == ',';
    char **arr = malloc((n + 1) * sizeof *arr + slen + 1);
    if (!arr) return -2;
    char *text = (char *)(arr + n + 1);
    memcpy(text, s, slen + 1);
    char *p = text;
    for (size_t i = 0; i < n; i++) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        while (is_space(*p)) p++;
        size_t l = strlen(p);
        while (l && is_space(p[l - 1])) p[--l] = '\0';
        if (!l) { free(arr); return -1; }
        arr[i] = p;
        p = comma ? comma + 1 : p + l;
    }
    arr[n] = NULL;
    *items = arr;
    *count = n;
    return 0;
}

fs_status fs_config_get_list(const fs_config *cfg, const char *key, const char *def, char ***items,
                             size_t *count)
{
    const entry *e;
    FS_TRY(lookup(cfg, key, &e));
    if (!items || !count) return FS_ERR_ARG;
    *items = NULL;
    *count = 0;
    const char *s = e->value ? e->value : (def ? def : "");
    int rc = split_list(s, items, count);
    if (rc == -2) return FS_ERR_NOMEM;
    if (rc == -1) {
        if (e->value) return bad_value(cfg, e, "empty item in the comma-separated list");
        fs_log_error("config: default of '%s' has an empty item", key);
        return FS_ERR_ARG;
    }
    return FS_OK;
}
