/*
 * common/provision.c — see provision.h. Layout: a growable text buffer; a
 * small strict JSON reader/writer for consortium.json (bounded depth and size:
 * the file is operator-editable, so it is parsed, never trusted); address and
 * name checks; the config file writers; then create and add-sites.
 * Tested by tests/test_provision.sh.
 */
#include "common/provision.h"
#include "common/fsutil.h"
#include "common/log.h"
#include "common/pki.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PATHMAX 4096
#define JSON_MAX_BYTES (4 << 20)
#define JSON_MAX_DEPTH 16

/* ---- text buffer --------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        sb_putn(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_putn(b, big, (size_t)n);
    free(big);
}

/* ---- JSON ---------------------------------------------------------------- */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

/* One JSON value. Scalars keep their text in s (a string decoded, a number or
 * true/false verbatim); arrays and objects keep children in kids, an object's
 * children carrying their member name in key. */
typedef struct jval {
    jtype t;
    char *key;
    char *s;
    struct jval *kids;
    int n, cap;
} jval;

static void j_free(jval *v)
{
    if (!v) return;
    for (int i = 0; i < v->n; i++) j_free(&v->kids[i]);
    free(v->kids);
    free(v->key);
    free(v->s);
    memset(v, 0, sizeof *v);
}

/* Appends a child (copying key and text); NULL when out of memory. */
static jval *j_add(jval *parent, const char *key, jtype t, const char *s)
{
    if (parent->n == parent->cap) {
        int cap = parent->cap ? parent->cap * 2 : 8;
        jval *k = realloc(parent->kids, (size_t)cap * sizeof *k);
        if (!k) return NULL;
        parent->kids = k;
        parent->cap = cap;
    }
    jval *c = &parent->kids[parent->n];
    memset(c, 0, sizeof *c);
    c->t = t;
    if ((key && !(c->key = strdup(key))) || (s && !(c->s = strdup(s)))) {
        free(c->key);
        free(c->s);
        return NULL;
    }
    parent->n++;
    return c;
}

static const jval *j_get(const jval *obj, const char *key)
{
    if (!obj || obj->t != J_OBJ) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (!strcmp(obj->kids[i].key, key)) return &obj->kids[i];
    return NULL;
}

static const char *j_str(const jval *obj, const char *key)
{
    const jval *v = j_get(obj, key);
    return v && v->t == J_STR ? v->s : NULL;
}

typedef struct {
    const char *p, *end;
    const char *err;
} jparser;

static void j_ws(jparser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Parses a string at ps->p (at its opening quote) into a new NUL-terminated
 * buffer. Escapes are decoded; \u0000 and surrogates are refused. */
static char *j_string(jparser *ps)
{
    if (ps->p >= ps->end || *ps->p != '"') {
        ps->err = "expected a string";
        return NULL;
    }
    ps->p++;
    sbuf b = {0};
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p++;
        if (c < 0x20) {
            ps->err = "control character in a string";
            goto fail;
        }
        if (c != '\\') {
            sb_putn(&b, (const char *)&c, 1);
            continue;
        }
        if (ps->p >= ps->end) break;
        char e = *ps->p++;
        const char *m = strchr("\"\\/bfnrt", e);
        if (e && m) {
            static const char out[] = "\"\\/\b\f\n\r\t";
            sb_putn(&b, &out[m - "\"\\/bfnrt"], 1);
        } else if (e == 'u') {
            if (ps->end - ps->p < 4) break;
            int u = 0;
            for (int i = 0; i < 4; i++) {
                int h = hexval(ps->p[i]);
                if (h < 0) {
                    ps->err = "bad \\u escape";
                    goto fail;
                }
                u = u * 16 + h;
            }
            ps->p += 4;
            if (u == 0 || (u >= 0xD800 && u <= 0xDFFF)) {
                ps->err = "unsupported \\u escape";
                goto fail;
            }
            char utf[3];
            int n;
            if (u < 0x80) utf[0] = (char)u, n = 1;
            else if (u < 0x800) utf[0] = (char)(0xC0 | (u >> 6)), utf[1] = (char)(0x80 | (u & 63)), n = 2;
            else
                utf[0] = (char)(0xE0 | (u >> 12)), utf[1] = (char)(0x80 | ((u >> 6) & 63)),
                utf[2] = (char)(0x80 | (u & 63)), n = 3;
            sb_putn(&b, utf, (size_t)n);
        } else {
            ps->err = "bad escape";
            goto fail;
        }
    }
    if (ps->p >= ps->end) {
        ps->err = "unterminated string";
        goto fail;
    }
    ps->p++;
    if (b.oom) {
        ps->err = "out of memory";
        goto fail;
    }
    if (!b.p) return strdup("");
    return b.p;
fail:
    free(b.p);
    return NULL;
}

static int j_value(jparser *ps, jval *v, int depth);

/* Parses the members of an object or the elements of an array. */
static int j_container(jparser *ps, jval *v, int depth)
{
    int obj = *ps->p == '{';
    char close = obj ? '}' : ']';
    v->t = obj ? J_OBJ : J_ARR;
    ps->p++;
    j_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return 1;
    }
    for (;;) {
        char *key = NULL;
        j_ws(ps);
        if (obj) {
            if (!(key = j_string(ps))) return 0;
            for (int i = 0; i < v->n; i++)
                if (!strcmp(v->kids[i].key, key)) {
                    ps->err = "duplicate member name";
                    free(key);
                    return 0;
                }
            j_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                ps->err = "expected ':'";
                free(key);
                return 0;
            }
            ps->p++;
        }
        jval *c = j_add(v, key, J_NULL, NULL);
        free(key);
        if (!c) {
            ps->err = "out of memory";
            return 0;
        }
        if (!j_value(ps, c, depth + 1)) return 0;
        j_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return 1;
        }
        ps->err = obj ? "expected ',' or '}'" : "expected ',' or ']'";
        return 0;
    }
}

/* Parses one value into v (whose key is already set). */
static int j_value(jparser *ps, jval *v, int depth)
{
    if (depth > JSON_MAX_DEPTH) {
        ps->err = "nested too deeply";
        return 0;
    }
    j_ws(ps);
    if (ps->p >= ps->end) {
        ps->err = "unexpected end";
        return 0;
    }
    char c = *ps->p;
    if (c == '{' || c == '[') return j_container(ps, v, depth);
    if (c == '"') {
        v->t = J_STR;
        return (v->s = j_string(ps)) != NULL;
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if ((size_t)(ps->end - ps->p) >= n && !strncmp(ps->p, words[i], n)) {
            v->t = i < 2 ? J_BOOL : J_NULL;
            ps->p += n;
            return i == 2 || (v->s = strdup(words[i])) != NULL;
        }
    }
    /* number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
    const char *s = ps->p, *q = s;
    if (q < ps->end && *q == '-') q++;
    if (q < ps->end && *q == '0') q++;
    else if (q < ps->end && *q >= '1' && *q <= '9')
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    else {
        ps->err = "unexpected character";
        return 0;
    }
    if (q < ps->end && *q == '.') {
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') {
            ps->err = "bad number";
            return 0;
        }
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < ps->end && (*q == '+' || *q == '-')) q++;
        if (q >= ps->end || *q < '0' || *q > '9') {
            ps->err = "bad number";
            return 0;
        }
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    v->t = J_NUM;
    v->s = strndup(s, (size_t)(q - s));
    ps->p = q;
    return v->s != NULL;
}

/* Parses a whole JSON document; logs "path: offset N: reason" on error. */
static fs_status j_parse(const char *path, const char *text, size_t len, jval *out)
{
    memset(out, 0, sizeof *out);
    jparser ps = {text, text + len, NULL};
    int ok = j_value(&ps, out, 0);
    if (ok) {
        j_ws(&ps);
        if (ps.p != ps.end) ok = 0, ps.err = "trailing characters";
    }
    if (!ok) {
        fs_log_error("%s: not valid JSON at byte %ld: %s", path, (long)(ps.p - text), ps.err ? ps.err : "?");
        j_free(out);
        return FS_ERR_FORMAT;
    }
    return FS_OK;
}

static void j_write_str(sbuf *b, const char *s)
{
    sb_putn(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            sb_putn(b, e, 2);
        } else if (*p < 0x20) {
            sb_printf(b, "\\u%04x", *p);
        } else {
            sb_putn(b, (const char *)p, 1);
        }
    }
    sb_putn(b, "\"", 1);
}

/* Writes v in the one canonical layout fedseg uses (two-space indent, one
 * member per line), so rewriting an unchanged document gives the same bytes. */
static void j_write(sbuf *b, const jval *v, int indent)
{
    switch (v->t) {
    case J_NULL: sb_putn(b, "null", 4); return;
    case J_BOOL:
    case J_NUM: sb_printf(b, "%s", v->s); return;
    case J_STR: j_write_str(b, v->s); return;
    case J_ARR:
    case J_OBJ: break;
    }
    char open = v->t == J_OBJ ? '{' : '[', close = v->t == J_OBJ ? '}' : ']';
    if (v->n == 0) {
        sb_printf(b, "%c%c", open, close);
        return;
    }
    sb_printf(b, "%c\n", open);
    for (int i = 0; i < v->n; i++) {
        sb_printf(b, "%*s", 2 * (indent + 1), "");
        if (v->t == J_OBJ) {
            j_write_str(b, v->kids[i].key);
            sb_putn(b, ": ", 2);
        }
        j_write(b, &v->kids[i], indent + 1);
        sb_printf(b, "%s\n", i + 1 < v->n ? "," : "");
    }
    sb_printf(b, "%*s%c", 2 * indent, "", close);
}

/* ---- small helpers ------------------------------------------------------- */

/* snprintf into a PATHMAX buffer; FS_ERR_ARG (logged) when it does not fit. */
static fs_status pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static fs_status pathf(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, PATHMAX, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= PATHMAX) {
        fs_log_error("path too long: %.80s...", out);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

/* Reads a whole text file (at most JSON_MAX_BYTES) into a new buffer. */
static fs_status read_text(const char *path, char **out, size_t *len)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        fs_log_error("%s: cannot open: %s", path, strerror(e));
        return e == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO;
    }
    sbuf b = {0};
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        sb_putn(&b, chunk, n);
        if (b.n > JSON_MAX_BYTES) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err || b.oom || b.n > JSON_MAX_BYTES) {
        fs_log_error("%s: %s", path, err ? "read failed" : b.oom ? "out of memory" : "too large");
        free(b.p);
        return err ? FS_ERR_IO : FS_ERR_FORMAT;
    }
    if (!b.p) b.p = strdup("");
    if (!b.p) return FS_ERR_NOMEM;
    *out = b.p;
    *len = b.n;
    return FS_OK;
}

/* Writes text atomically (common/fsutil.h: temporary file, fsync, rename). */
static fs_status write_text(const char *path, const char *text, size_t len)
{
    fs_atomic_file af;
    FS_TRY(fs_atomic_open(&af, path));
    if (fwrite(text, 1, len, af.f) != len) {
        fs_log_error("%s: write failed: %s", path, strerror(errno));
        fs_atomic_abort(&af);
        return FS_ERR_IO;
    }
    return fs_atomic_commit(&af);
}

static fs_status copy_file(const char *from, const char *to)
{
    char *buf;
    size_t len;
    FS_TRY(read_text(from, &buf, &len));
    fs_status s = write_text(to, buf, len);
    free(buf);
    return s;
}

static fs_status make_dir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) != 0) {
        fs_log_error("%s: cannot create folder: %s", path, strerror(errno));
        return FS_ERR_IO;
    }
    chmod(path, mode); /* exact, whatever the umask */
    return FS_OK;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Removes a folder tree this run created (never follows symbolic links). */
static void rm_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void now_utc(char out[24])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 24, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* 1 when name is not yet among names[0..n). */
static int is_new(const char *name, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(name, names[i])) return 0;
    return 1;
}

/* Checks the new site names: valid, not reserved, no repeats, none in
 * existing[0..nexisting). Logs the first problem. */
static fs_status check_site_names(const char *const *sites, int nsites, const char *const *existing,
                                  int nexisting)
{
    if (nsites < 1) {
        fs_log_error("provision: no site names given");
        return FS_ERR_ARG;
    }
    if (nsites + nexisting > FS_PROVISION_MAX_SITES) {
        fs_log_error("provision: more than %d sites", FS_PROVISION_MAX_SITES);
        return FS_ERR_ARG;
    }
    for (int i = 0; i < nsites; i++) {
        const char *s = sites[i];
        if (!fs_pki_name_ok(s)) {
            fs_log_error("provision: site name '%s' is invalid: use 1-%d of A-Z a-z 0-9 _ . - "
                         "(not starting with '.' or '-')",
                         s, FS_PKI_NAME_MAX);
            return FS_ERR_ARG;
        }
        if (!strcmp(s, "aggregator")) {
            fs_log_error("provision: 'aggregator' is the aggregator's certificate name, not a site name");
            return FS_ERR_ARG;
        }
        if (!is_new(s, sites, i)) {
            fs_log_error("provision: site '%s' is named twice", s);
            return FS_ERR_ARG;
        }
        if (!is_new(s, existing, nexisting)) {
            fs_log_error("provision: site '%s' is already in the consortium", s);
            return FS_ERR_ARG;
        }
    }
    return FS_OK;
}

static int is_dns_name(const char *h)
{
    size_t n = strlen(h);
    if (n == 0 || n > 253 || h[0] == '.' || h[0] == '-' || h[n - 1] == '.' || h[n - 1] == '-') return 0;
    for (const char *p = h; *p; p++) {
        char c = *p;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
            return 0;
        if (c == '.' && p[1] == '.') return 0;
    }
    return 1;
}

fs_status fs_provision_parse_address(const char *spec, char *host, size_t cap, int *port, int *is_ip)
{
    char h[300];
    const char *portstr = NULL;
    if (!spec || !*spec || strlen(spec) >= sizeof h) goto bad;
    *port = FS_PROVISION_DEFAULT_PORT;
    if (spec[0] == '[') { /* [IPv6] or [IPv6]:PORT */
        const char *close = strchr(spec, ']');
        if (!close) goto bad;
        snprintf(h, sizeof h, "%.*s", (int)(close - spec - 1), spec + 1);
        if (close[1] == ':') portstr = close + 2;
        else if (close[1]) goto bad;
    } else {
        const char *colon = strchr(spec, ':');
        if (colon && strchr(colon + 1, ':')) { /* bare IPv6 literal, no port */
            snprintf(h, sizeof h, "%s", spec);
        } else if (colon) {
            snprintf(h, sizeof h, "%.*s", (int)(colon - spec), spec);
            portstr = colon + 1;
        } else {
            snprintf(h, sizeof h, "%s", spec);
        }
    }
    if (portstr) {
        if (!*portstr || strlen(portstr) > 5 || strspn(portstr, "0123456789") != strlen(portstr)) goto bad;
        *port = atoi(portstr);
        if (*port < 1 || *port > 65535) goto bad;
    }
    unsigned char addr[16];
    *is_ip = inet_pton(AF_INET, h, addr) == 1 || inet_pton(AF_INET6, h, addr) == 1;
    if (!*is_ip && (strchr(h, ':') || !is_dns_name(h))) goto bad;
    if (strlen(h) >= cap) goto bad;
    strcpy(host, h);
    return FS_OK;
bad:
    fs_log_error("provision: aggregator address '%s' is not HOST, HOST:PORT, [IPv6]:PORT "
                 "(HOST a DNS name or IP address, PORT 1-65535)",
                 spec ? spec : "");
    return FS_ERR_ARG;
}

/* "host:port", with brackets around an IPv6 literal. */
static void format_address(char *out, size_t cap, const char *host, int port)
{
    if (strchr(host, ':')) snprintf(out, cap, "[%s]:%d", host, port);
    else snprintf(out, cap, "%s:%d", host, port);
}

/* ---- config files -------------------------------------------------------- */

/* Text of aggregator/aggregator.conf; v6: listen on every IPv6 (and, by the
 * system's default, IPv4) interface. */
static void aggregator_conf(sbuf *b, const char *consortium, const char *address, int port, int v6,
                            const char *const *sites, int nsites)
{
    sb_printf(b,
              "# fedseg aggregator configuration for consortium %s, written by `fedseg provision`.\n"
              "# Use: fedseg aggregator --config aggregator.conf   (command-line flags override it)\n"
              "# Format: one `key = value` per line; lines starting with # are comments.\n"
              "# Relative paths are relative to the folder holding this file.\n"
              "\n"
              "# Address to listen on; %s = every interface. Sites dial %s.\n"
              "listen = %s:%d\n"
              "# Consortium CA certificate: every site's certificate must chain to it (mutual TLS).\n"
              "ca = ca.crt\n"
              "# This aggregator's certificate (CN aggregator) and its private key (keep it mode 0600).\n"
              "cert = aggregator.crt\n"
              "key = aggregator.key\n"
              "# Sites admitted, by their certificate's common name, comma-separated.\n"
              "# `fedseg provision --add-site NAME` appends here; restart the aggregator to admit them.\n"
              "sites = ",
              consortium, v6 ? "[::]" : "0.0.0.0", address, v6 ? "[::]" : "0.0.0.0", port);
    for (int i = 0; i < nsites; i++) sb_printf(b, "%s%s", i ? "," : "", sites[i]);
    sb_printf(b,
              "\n"
              "# Federated rounds to run.\n"
              "rounds = 10\n"
              "# A round opens once this many sites have joined, and closes at its deadline only\n"
              "# if at least this many reported (otherwise the deadline is extended).\n"
              "min_sites = %d\n"
              "# Fraction of the joined sites sampled for each round (0 < fraction <= 1; at least min_sites).\n"
              "fraction = 1.0\n"
              "# Seconds a round waits for the selected sites' updates.\n"
              "round_deadline_s = 600\n"
              "# Local epochs each selected site trains per round.\n"
              "local_epochs = 1\n"
              "# Model preset trained by every site: tiny | small | ref.\n"
              "model = tiny\n"
              "# Learning rate of the sites' local Adam optimiser.\n"
              "lr = 0.001\n"
              "# Aggregator state: global model checkpoints, update spools and journal (resume after a crash).\n"
              "state_dir = state\n"
              "# Per-round metrics, one JSON line per round.\n"
              "metrics = state/metrics.jsonl\n",
              nsites < 2 ? nsites : 2);
}

/* Text of sites/<site>/node.conf. */
static void node_conf(sbuf *b, const char *consortium, const char *site, const char *address,
                      const char *server_name)
{
    sb_printf(b,
              "# fedseg node configuration for site %s of consortium %s, written by `fedseg provision`.\n"
              "# Use: fedseg node --config node.conf   (command-line flags override it)\n"
              "# Format: one `key = value` per line; lines starting with # are comments.\n"
              "# Relative paths are relative to the folder holding this file.\n"
              "\n"
              "# The aggregator's address, HOST:PORT.\n"
              "aggregator = %s\n"
              "# Name the aggregator's certificate must carry (checked during the TLS handshake).\n"
              "server_name = %s\n"
              "# Consortium CA certificate: the aggregator's certificate must chain to it.\n"
              "ca = ca.crt\n"
              "# This site's certificate (CN %s) and its private key (keep it mode 0600; never share it).\n"
              "cert = %s.crt\n"
              "key = %s.key\n"
              "# This site's name; must equal the certificate's common name.\n"
              "site = %s\n"
              "# EDIT THIS: the folder of this site's cases (BraTS layout: CASE/CASE_{t1,t1ce,t2,flair,seg}.nii.gz).\n"
              "data = /path/to/this/site/data\n"
              "# Training device: cpu | cuda | auto (cuda when a GPU is present).\n"
              "device = auto\n"
              "# Node state: the last global model and local checkpoints.\n"
              "state_dir = state\n",
              site, consortium, address, server_name, site, site, site, site);
}

/* ---- kits ---------------------------------------------------------------- */

/* A JSON object describing one certificate. */
static int j_cert(jval *parent, const char *key, const char *rel, const fs_pki_cert_info *ci, const char *added)
{
    jval *o = j_add(parent, key, J_OBJ, NULL);
    return o && (!added || j_add(o, "name", J_STR, ci->cn)) && j_add(o, "cn", J_STR, ci->cn) &&
           j_add(o, "cert", J_STR, rel) && j_add(o, "serial", J_STR, ci->serial) &&
           j_add(o, "sha256", J_STR, ci->sha256) && j_add(o, "not_after", J_STR, ci->not_after) &&
           (!added || j_add(o, "added", J_STR, added));
}

/*
 * Writes one site's kit into the new folder kit (created here, 0700): its
 * certificate and key, a copy of the CA certificate, node.conf. Records the
 * certificate in sites_arr.
 */
static fs_status write_site_kit(const fs_pki_ca *ca, const char *ca_crt, const char *kit, const char *consortium,
                                const char *site, const char *address, const char *server_name, jval *sites_arr)
{
    char crt[PATHMAX], key[PATHMAX], p[PATHMAX], uri[256];
    FS_TRY(make_dir(kit, 0700));
    FS_TRY(pathf(crt, "%s/%s.crt", kit, site));
    FS_TRY(pathf(key, "%s/%s.key", kit, site));
    /* SPIFFE trust domains are lower case; the site path segment keeps its case */
    char domain[FS_PKI_NAME_MAX + 1];
    size_t i = 0;
    for (; consortium[i] && i < FS_PKI_NAME_MAX; i++)
        domain[i] = (char)(consortium[i] >= 'A' && consortium[i] <= 'Z' ? consortium[i] + 32 : consortium[i]);
    domain[i] = 0;
    snprintf(uri, sizeof uri, "URI:spiffe://%s/site/%s", domain, site);
    fs_pki_leaf req = {.role = FS_PKI_CLIENT, .cn = site, .org = consortium, .san = {uri}, .nsan = 1};
    fs_pki_cert_info ci;
    FS_TRY(fs_pki_issue(ca, &req, crt, key, &ci));
    FS_TRY(pathf(p, "%s/ca.crt", kit));
    FS_TRY(copy_file(ca_crt, p));
    sbuf b = {0};
    node_conf(&b, consortium, site, address, server_name);
    fs_status s = b.oom ? FS_ERR_NOMEM : pathf(p, "%s/node.conf", kit);
    if (s == FS_OK) s = write_text(p, b.p, b.n);
    free(b.p);
    if (s != FS_OK) return s;
    char rel[PATHMAX], added[24];
    FS_TRY(pathf(rel, "sites/%s/%s.crt", site, site));
    now_utc(added);
    return j_cert(sites_arr, NULL, rel, &ci, added) ? FS_OK : FS_ERR_NOMEM;
}

static fs_status write_json(const char *path, const jval *doc)
{
    sbuf b = {0};
    j_write(&b, doc, 0);
    sb_putn(&b, "\n", 1);
    fs_status s = b.oom ? FS_ERR_NOMEM : write_text(path, b.p, b.n);
    free(b.p);
    return s;
}

/* FS_OK when dir does not exist or is an empty folder; otherwise FS_ERR_ARG
 * with the reason logged. */
static fs_status check_out_dir(const char *dir)
{
    struct stat st;
    if (lstat(dir, &st) != 0) {
        if (errno == ENOENT) return FS_OK;
        fs_log_error("%s: %s", dir, strerror(errno));
        return FS_ERR_IO;
    }
    if (!S_ISDIR(st.st_mode)) {
        fs_log_error("%s: exists and is not a folder; refusing to overwrite it", dir);
        return FS_ERR_ARG;
    }
    char p[PATHMAX];
    FS_TRY(pathf(p, "%s/consortium.json", dir));
    if (access(p, F_OK) == 0) {
        fs_log_error("%s: already holds a consortium; refusing to overwrite it "
                     "(to add a site: fedseg provision --out %s --add-site NAME)",
                     dir, dir);
        return FS_ERR_ARG;
    }
    DIR *d = opendir(dir);
    if (!d) {
        fs_log_error("%s: cannot open: %s", dir, strerror(errno));
        return FS_ERR_IO;
    }
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    if (!empty) {
        fs_log_error("%s: exists and is not empty; refusing to write a consortium into it", dir);
        return FS_ERR_ARG;
    }
    return FS_OK;
}

/* ---- create -------------------------------------------------------------- */

/* Builds the whole consortium tree in tmp (which must not exist). */
static fs_status build_tree(const fs_provision_opts *o, const char *tmp, const char *host, int port, int is_ip)
{
    char p[PATHMAX], crt[PATHMAX], key[PATHMAX], address[320], created[24];
    format_address(address, sizeof address, host, port);
    now_utc(created);
    FS_TRY(make_dir(tmp, 0700));
    FS_TRY(pathf(p, "%s/ca", tmp));
    FS_TRY(make_dir(p, 0700));
    char ca_crt[PATHMAX], ca_key[PATHMAX];
    FS_TRY(pathf(ca_crt, "%s/ca/ca.crt", tmp));
    FS_TRY(pathf(ca_key, "%s/ca/ca.key", tmp));

    jval doc = {.t = J_OBJ};
    fs_pki_ca *ca = NULL;
    fs_pki_cert_info ci;
    sbuf b = {0};
    fs_status s = FS_ERR_NOMEM;
    if (!j_add(&doc, "format", J_NUM, "1") || !j_add(&doc, "name", J_STR, o->consortium) ||
        !j_add(&doc, "aggregator", J_STR, address) || !j_add(&doc, "server_name", J_STR, host) ||
        !j_add(&doc, "created", J_STR, created))
        goto done;
    if ((s = fs_pki_ca_create(o->consortium, 0, ca_crt, ca_key, &ca, &ci)) != FS_OK) goto done;
    s = FS_ERR_NOMEM;
    if (!j_cert(&doc, "ca", "ca/ca.crt", &ci, NULL)) goto done;

    /* aggregator kit */
    if ((s = pathf(p, "%s/aggregator", tmp)) != FS_OK || (s = make_dir(p, 0700)) != FS_OK) goto done;
    if ((s = pathf(crt, "%s/aggregator/aggregator.crt", tmp)) != FS_OK ||
        (s = pathf(key, "%s/aggregator/aggregator.key", tmp)) != FS_OK)
        goto done;
    char host_san[320];
    snprintf(host_san, sizeof host_san, "%s:%s", is_ip ? "IP" : "DNS", host);
    fs_pki_leaf req = {.role = FS_PKI_SERVER, .cn = "aggregator", .org = o->consortium};
    req.san[req.nsan++] = host_san;
    if (strcmp(host, "localhost")) req.san[req.nsan++] = "DNS:localhost";
    if (strcmp(host, "127.0.0.1")) req.san[req.nsan++] = "IP:127.0.0.1";
    if ((s = fs_pki_issue(ca, &req, crt, key, &ci)) != FS_OK) goto done;
    s = FS_ERR_NOMEM;
    if (!j_cert(&doc, "aggregator_cert", "aggregator/aggregator.crt", &ci, NULL)) goto done;
    if ((s = pathf(p, "%s/aggregator/ca.crt", tmp)) != FS_OK || (s = copy_file(ca_crt, p)) != FS_OK) goto done;
    aggregator_conf(&b, o->consortium, address, port, strchr(host, ':') != NULL, o->sites, o->nsites);
    s = b.oom ? FS_ERR_NOMEM : pathf(p, "%s/aggregator/aggregator.conf", tmp);
    if (s != FS_OK || (s = write_text(p, b.p, b.n)) != FS_OK) goto done;

    /* site kits */
    jval *arr = j_add(&doc, "sites", J_ARR, NULL);
    s = FS_ERR_NOMEM;
    if (!arr) goto done;
    if ((s = pathf(p, "%s/sites", tmp)) != FS_OK || (s = make_dir(p, 0755)) != FS_OK) goto done;
    for (int i = 0; i < o->nsites; i++) {
        if ((s = pathf(p, "%s/sites/%s", tmp, o->sites[i])) != FS_OK) goto done;
        s = write_site_kit(ca, ca_crt, p, o->consortium, o->sites[i], address, host, arr);
        if (s != FS_OK) goto done;
    }
    if ((s = pathf(p, "%s/consortium.json", tmp)) == FS_OK) s = write_json(p, &doc);
done:
    free(b.p);
    fs_pki_ca_free(ca);
    j_free(&doc);
    return s;
}

fs_status fs_provision_create(const fs_provision_opts *o)
{
    if (!o || !o->out_dir || !*o->out_dir) {
        fs_log_error("provision: no output folder given");
        return FS_ERR_ARG;
    }
    if (!fs_pki_name_ok(o->consortium)) {
        fs_log_error("provision: consortium name '%s' is invalid: use 1-%d of A-Z a-z 0-9 _ . - "
                     "(not starting with '.' or '-')",
                     o->consortium ? o->consortium : "", FS_PKI_NAME_MAX);
        return FS_ERR_ARG;
    }
    char host[300];
    int port, is_ip;
    FS_TRY(fs_provision_parse_address(o->aggregator, host, sizeof host, &port, &is_ip));
    FS_TRY(check_site_names(o->sites, o->nsites, NULL, 0));
    FS_TRY(check_out_dir(o->out_dir));

    /* build next to DIR, then rename: all or nothing */
    char dst[PATHMAX], tmp[PATHMAX];
    FS_TRY(pathf(dst, "%s", o->out_dir));
    size_t n = strlen(dst);
    while (n > 1 && dst[n - 1] == '/') dst[--n] = 0;
    const char *slash = strrchr(dst, '/');
    int dirlen = slash ? (int)(slash - dst + 1) : 0;
    FS_TRY(pathf(tmp, "%.*s.%s.provision.%ld", dirlen, dst, dst + dirlen, (long)getpid()));
    rm_tree(tmp); /* a leftover of a crashed run with our pid */
    fs_status s = build_tree(o, tmp, host, port, is_ip);
    if (s == FS_OK && rename(tmp, dst) != 0) {
        fs_log_error("%s: cannot move the new consortium into place: %s", dst, strerror(errno));
        s = FS_ERR_IO;
    }
    if (s != FS_OK) {
        rm_tree(tmp);
        return s;
    }
    /* make the rename durable: fsync the parent folder */
    snprintf(tmp, sizeof tmp, "%.*s", dirlen, dst);
    int fd = open(dirlen ? tmp : ".", O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return FS_OK;
}

/* ---- add sites ----------------------------------------------------------- */

/*
 * Rewrites the `sites = ...` line of aggregator.conf text to include the new
 * names (skipping any already listed), keeping every other byte; appends the
 * line when there is none.
 */
static fs_status add_to_sites_line(const char *text, const char *const *add, int nadd, sbuf *out)
{
    int done = 0;
    for (const char *line = text; *line;) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line + 1) : strlen(line);
        const char *k = line;
        while (k < line + len && (*k == ' ' || *k == '\t')) k++;
        const char *eq = memchr(k, '=', (size_t)(line + len - k));
        size_t klen = 0;
        if (eq && *k != '#') {
            const char *ke = eq;
            while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t')) ke--;
            klen = (size_t)(ke - k);
        }
        if (!done && klen == 5 && !strncmp(k, "sites", 5)) {
            /* value: between '=' and end of line (or a '#'), trimmed */
            const char *v = eq + 1, *ve = line + len;
            const char *hash = memchr(v, '#', (size_t)(ve - v));
            if (hash) ve = hash;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t' || ve[-1] == '\n' || ve[-1] == '\r')) ve--;
            sb_printf(out, "sites = %.*s", (int)(ve - v), v);
            int have = ve > v;
            for (int i = 0; i < nadd; i++) {
                /* already listed? compare against each comma item */
                int listed = 0;
                for (const char *it = v; it < ve;) {
                    const char *ie = memchr(it, ',', (size_t)(ve - it));
                    if (!ie) ie = ve;
                    const char *a = it, *z = ie;
                    while (a < z && (*a == ' ' || *a == '\t')) a++;
                    while (z > a && (z[-1] == ' ' || z[-1] == '\t')) z--;
                    if ((size_t)(z - a) == strlen(add[i]) && !strncmp(a, add[i], (size_t)(z - a))) listed = 1;
                    it = ie + 1;
                }
                if (listed) continue;
                sb_printf(out, "%s%s", have ? "," : "", add[i]);
                have = 1;
            }
            if (hash) sb_printf(out, " %.*s", (int)(line + len - hash), hash);
            else sb_putn(out, "\n", 1);
            done = 1;
        } else {
            sb_putn(out, line, len);
        }
        line += len;
    }
    if (!done) {
        if (out->n && out->p[out->n - 1] != '\n') sb_putn(out, "\n", 1);
        sb_printf(out, "# Sites admitted, by their certificate's common name, comma-separated.\nsites = ");
        for (int i = 0; i < nadd; i++) sb_printf(out, "%s%s", i ? "," : "", add[i]);
        sb_putn(out, "\n", 1);
    }
    return out->oom ? FS_ERR_NOMEM : FS_OK;
}

fs_status fs_provision_add_sites(const char *out_dir, const char *const *sites, int nsites)
{
    char json_path[PATHMAX], conf_path[PATHMAX], ca_crt[PATHMAX], ca_key[PATHMAX], p[PATHMAX];
    if (!out_dir || !*out_dir) {
        fs_log_error("provision: no consortium folder given (--out DIR)");
        return FS_ERR_ARG;
    }
    FS_TRY(pathf(json_path, "%s/consortium.json", out_dir));
    FS_TRY(pathf(conf_path, "%s/aggregator/aggregator.conf", out_dir));
    FS_TRY(pathf(ca_crt, "%s/ca/ca.crt", out_dir));
    FS_TRY(pathf(ca_key, "%s/ca/ca.key", out_dir));
    if (access(json_path, F_OK) != 0) {
        fs_log_error("%s: no consortium here (%s missing); create one first with "
                     "fedseg provision --consortium NAME --aggregator HOST --sites ... --out %s",
                     out_dir, json_path, out_dir);
        return FS_ERR_NOT_FOUND;
    }
    /* one provisioner at a time on this folder */
    int lock = open(out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) != 0) {
        fs_log_error("%s: %s", out_dir, lock < 0 ? strerror(errno) : "another fedseg provision is working on it");
        if (lock >= 0) close(lock);
        return FS_ERR_IO;
    }

    char *text = NULL, *conf = NULL;
    size_t len, conf_len;
    jval doc = {0};
    fs_pki_ca *ca = NULL;
    const char **existing = NULL;
    char **tmps = NULL;
    int nexisting = 0, nmade = 0;
    sbuf newconf = {0};
    fs_status s = read_text(json_path, &text, &len);
    if (s != FS_OK || (s = j_parse(json_path, text, len, &doc)) != FS_OK) goto done;
    const char *name = j_str(&doc, "name"), *address = j_str(&doc, "aggregator");
    const char *server_name = j_str(&doc, "server_name");
    jval *arr = (jval *)j_get(&doc, "sites");
    s = FS_ERR_FORMAT;
    if (doc.t != J_OBJ || !name || !address || !server_name || !arr || arr->t != J_ARR) {
        fs_log_error("%s: lacks name, aggregator, server_name or the sites list", json_path);
        goto done;
    }
    existing = calloc((size_t)arr->n + 1, sizeof *existing);
    s = FS_ERR_NOMEM;
    if (!existing) goto done;
    for (int i = 0; i < arr->n; i++) {
        const char *sn = j_str(&arr->kids[i], "name");
        if (!sn) {
            fs_log_error("%s: site entry %d has no name", json_path, i + 1);
            s = FS_ERR_FORMAT;
            goto done;
        }
        existing[nexisting++] = sn;
    }
    if ((s = check_site_names(sites, nsites, existing, nexisting)) != FS_OK) goto done;
    for (int i = 0; i < nsites; i++) {
        if ((s = pathf(p, "%s/sites/%s", out_dir, sites[i])) != FS_OK) goto done;
        if (access(p, F_OK) == 0) {
            fs_log_error("%s: exists but the site is not in %s (left by an interrupted run?); "
                         "remove it and try again",
                         p, json_path);
            s = FS_ERR_ARG;
            goto done;
        }
    }
    if (access(ca_key, F_OK) != 0) {
        fs_log_error("%s: the consortium CA's private key is missing; adding a site needs it "
                     "(restore ca/ from its offline copy)",
                     ca_key);
        s = FS_ERR_NOT_FOUND;
        goto done;
    }
    if ((s = fs_pki_ca_load(ca_crt, ca_key, &ca)) != FS_OK) goto done;
    if ((s = read_text(conf_path, &conf, &conf_len)) != FS_OK) goto done;
    if ((s = add_to_sites_line(conf, sites, nsites, &newconf)) != FS_OK) goto done;
    if ((s = pathf(p, "%s/sites", out_dir)) != FS_OK) goto done;
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        fs_log_error("%s: cannot create folder: %s", p, strerror(errno));
        s = FS_ERR_IO;
        goto done;
    }

    /* every kit in a hidden folder first; then move them all into place */
    tmps = calloc((size_t)nsites, sizeof *tmps);
    s = FS_ERR_NOMEM;
    if (!tmps) goto done;
    for (; nmade < nsites; nmade++) {
        char t[PATHMAX];
        if ((s = pathf(t, "%s/sites/.%s.provision.%ld", out_dir, sites[nmade], (long)getpid())) != FS_OK) goto done;
        rm_tree(t);
        if (!(tmps[nmade] = strdup(t))) {
            s = FS_ERR_NOMEM;
            goto done;
        }
        s = write_site_kit(ca, ca_crt, t, name, sites[nmade], address, server_name, arr);
        if (s != FS_OK) {
            nmade++;
            goto done;
        }
    }
    for (int i = 0; i < nsites; i++) {
        if ((s = pathf(p, "%s/sites/%s", out_dir, sites[i])) != FS_OK) goto done;
        if (renameat2(AT_FDCWD, tmps[i], AT_FDCWD, p, RENAME_NOREPLACE) != 0) {
            fs_log_error("%s: cannot move the new kit into place: %s", p, strerror(errno));
            s = FS_ERR_IO;
            goto done;
        }
        free(tmps[i]);
        tmps[i] = NULL;
    }
    /* the registry, then the aggregator's list */
    if ((s = write_json(json_path, &doc)) != FS_OK) goto done;
    s = write_text(conf_path, newconf.p, newconf.n);
done:
    for (int i = 0; tmps && i < nmade; i++)
        if (tmps[i]) {
            rm_tree(tmps[i]);
            free(tmps[i]);
        }
    free(tmps);
    free(newconf.p);
    free(existing);
    fs_pki_ca_free(ca);
    j_free(&doc);
    free(conf);
    free(text);
    close(lock);
    return s;
}
