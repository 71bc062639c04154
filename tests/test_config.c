/*
 * tests/test_config.c — config files (common/config.h): comments, blank lines,
 * spaces, tabs, CRLF and inline comments; typed getters and defaults; lists;
 * command-line overrides in either order; and each refusal (unknown key with
 * a hint, duplicate key, malformed line, bad or out-of-range int and float,
 * bad bool, empty list item, NUL byte, missing file) with the logged message
 * checked for the file, the line and the key. Files live in a fresh
 * temporary directory.
 */
#include "check.h"
#include "common/config.h"
#include "common/log.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/fs_config_XXXXXX";
static const char *const KEYS[] = {"address", "min_sites", "fraction", "deadline_s", "sites",
                                   "tls", "ca_cert", "lr", NULL};

/* ---- capture of the log (stderr) ---------------------------------------- */

static char logbuf[4096];
static int saved_fd = -1;
static FILE *cap;

static void capture_begin(void)
{
    fflush(stderr);
    cap = tmpfile();
    saved_fd = dup(2);
    dup2(fileno(cap), 2);
}

static const char *capture_end(void)
{
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    rewind(cap);
    size_t n = fread(logbuf, 1, sizeof logbuf - 1, cap);
    logbuf[n] = '\0';
    fclose(cap);
    return logbuf;
}

static void write_file(const char *path, const char *text, size_t n)
{
    FILE *f = fopen(path, "wb");
    fwrite(text, 1, n, f);
    fclose(f);
}

/* Loads `text` as a file named `name`; returns the status, the log in *log. */
static fs_status load_text(fs_config **cfg, const char *name, const char *text, const char **log)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_file(path, text, strlen(text));
    CHECK(fs_config_new(cfg, KEYS) == FS_OK, "fs_config_new");
    capture_begin();
    fs_status st = fs_config_load(*cfg, path);
    *log = capture_end();
    return st;
}

static void test_good_file(void)
{
    const char *text =
        "# fedseg aggregator\n"
        "\n"
        "   address   =   0.0.0.0:50051   \n"
        "\tmin_sites\t=\t2\t# at least two hospitals\n"
        "fraction=0.5\r\n"
        "   # indented comment\n"
        "sites = site_1, site_2 ,site_3\n"
        "tls = yes\n"
        "ca_cert = /etc/fedseg/ca#1.pem\n"
        "lr =\n"
        "deadline_s = 600";               /* no final newline */
    fs_config *cfg;
    const char *log;
    CHECK(load_text(&cfg, "good.conf", text, &log) == FS_OK, "good file refused: %s", log);
    const char *s;
    long long i;
    double d;
    int b;
    CHECK(fs_config_get_str(cfg, "address", "x", &s) == FS_OK && strcmp(s, "0.0.0.0:50051") == 0,
          "address '%s'", s);
    CHECK(fs_config_get_int(cfg, "min_sites", 1, 1, 100, &i) == FS_OK && i == 2, "min_sites %lld", i);
    CHECK(fs_config_get_float(cfg, "fraction", 1.0, 1e-9, 1.0, &d) == FS_OK && d == 0.5, "fraction %g", d);
    CHECK(fs_config_get_int(cfg, "deadline_s", 60, 1, 86400, &i) == FS_OK && i == 600, "deadline %lld", i);
    CHECK(fs_config_get_bool(cfg, "tls", 0, &b) == FS_OK && b == 1, "tls");
    CHECK(fs_config_get_str(cfg, "ca_cert", NULL, &s) == FS_OK && strcmp(s, "/etc/fedseg/ca#1.pem") == 0,
          "'#' inside a value is kept: '%s'", s);
    CHECK(fs_config_get_str(cfg, "lr", "def", &s) == FS_OK && strcmp(s, "") == 0, "empty value '%s'", s);
    CHECK(fs_config_has(cfg, "lr") && fs_config_has(cfg, "sites"), "has");
    char **items;
    size_t n;
    CHECK(fs_config_get_list(cfg, "sites", NULL, &items, &n) == FS_OK && n == 3 &&
          strcmp(items[0], "site_1") == 0 && strcmp(items[1], "site_2") == 0 &&
          strcmp(items[2], "site_3") == 0 && items[3] == NULL, "sites list (%zu items)", n);
    free(items);
    /* empty value: an empty list; a bad int */
    CHECK(fs_config_get_list(cfg, "lr", "a,b", &items, &n) == FS_OK && n == 0, "empty list");
    free(items);
    capture_begin();
    fs_status st = fs_config_get_float(cfg, "lr", 1e-3, 1e-9, 1.0, &d);
    log = capture_end();
    CHECK(st == FS_ERR_FORMAT && strstr(log, "good.conf:10: lr = \"\": not a finite number"),
          "empty float: %s", log);
    fs_config_free(cfg);
}

static void test_defaults(void)
{
    fs_config *cfg;
    const char *log;
    CHECK(load_text(&cfg, "empty.conf", "# nothing\n\n", &log) == FS_OK, "comment-only file: %s", log);
    const char *s;
    long long i;
    double d;
    int b;
    char **items;
    size_t n;
    CHECK(fs_config_get_str(cfg, "address", "127.0.0.1:0", &s) == FS_OK && strcmp(s, "127.0.0.1:0") == 0, "str def");
    CHECK(fs_config_get_int(cfg, "min_sites", 3, 1, 10, &i) == FS_OK && i == 3, "int def");
    CHECK(fs_config_get_float(cfg, "fraction", 0.25, 0, 1, &d) == FS_OK && d == 0.25, "float def");
    CHECK(fs_config_get_bool(cfg, "tls", 1, &b) == FS_OK && b == 1, "bool def");
    CHECK(fs_config_get_list(cfg, "sites", "a, b", &items, &n) == FS_OK && n == 2 && strcmp(items[1], "b") == 0,
          "list def");
    free(items);
    CHECK(!fs_config_has(cfg, "address"), "has on a missing key");
    capture_begin();
    fs_status st = fs_config_get_int(cfg, "no_such_key", 0, 0, 1, &i);
    log = capture_end();
    CHECK(st == FS_ERR_ARG && strstr(log, "no_such_key"), "undeclared key: %s", log);
    fs_config_free(cfg);
}

/* One refusal at load time: status and log fragments. */
static void refuse_load(const char *name, const char *text, fs_status want, const char *frag1, const char *frag2)
{
    fs_config *cfg;
    const char *log;
    fs_status st = load_text(&cfg, name, text, &log);
    CHECK(st == want, "%s: status %s, want %s", name, fs_status_str(st), fs_status_str(want));
    CHECK(strstr(log, frag1) != NULL, "%s: log \"%s\" lacks \"%s\"", name, log, frag1);
    CHECK(!frag2 || strstr(log, frag2) != NULL, "%s: log \"%s\" lacks \"%s\"", name, log, frag2);
    fs_config_free(cfg);
}

/* One refusal at get time. */
static void refuse_get(const char *name, const char *text, const char *key, int kind, const char *frag)
{
    fs_config *cfg;
    const char *log;
    CHECK(load_text(&cfg, name, text, &log) == FS_OK, "%s: load: %s", name, log);
    long long i;
    double d;
    int b;
    char **items = NULL;
    size_t n;
    capture_begin();
    fs_status st = kind == 0 ? fs_config_get_int(cfg, key, 1, 1, 100, &i)
                 : kind == 1 ? fs_config_get_float(cfg, key, 0.5, 1e-6, 1.0, &d)
                 : kind == 2 ? fs_config_get_bool(cfg, key, 0, &b)
                             : fs_config_get_list(cfg, key, NULL, &items, &n);
    log = capture_end();
    CHECK(st == FS_ERR_FORMAT, "%s: status %s", name, fs_status_str(st));
    CHECK(items == NULL, "%s: items returned on error", name);
    CHECK(strstr(log, frag) != NULL, "%s: log \"%s\" lacks \"%s\"", name, log, frag);
    fs_config_free(cfg);
}

static void test_refusals(void)
{
    refuse_load("typo.conf", "address = x\nmin_site = 2\n", FS_ERR_FORMAT,
                "typo.conf:2: unknown key 'min_site'", "did you mean 'min_sites'?");
    refuse_load("unknown.conf", "\n\n\nfoo = 1\n", FS_ERR_FORMAT, "unknown.conf:4: unknown key 'foo'", NULL);
    refuse_load("dup.conf", "lr = 0.1\n# again\nlr = 0.2\n", FS_ERR_FORMAT,
                "dup.conf:3: duplicate key 'lr'", "first given on line 1");
    refuse_load("noeq.conf", "address 0.0.0.0\n", FS_ERR_FORMAT, "noeq.conf:1: expected 'key = value'", NULL);
    refuse_load("nokey.conf", "= 5\n", FS_ERR_FORMAT, "nokey.conf:1:", "is not a key");
    refuse_load("badkey.conf", "min sites = 5\n", FS_ERR_FORMAT, "badkey.conf:1:", "is not a key");
    refuse_get("int.conf", "min_sites = ten\n", "min_sites", 0, "int.conf:1: min_sites = \"ten\": not an integer");
    refuse_get("int2.conf", "min_sites = 3x\n", "min_sites", 0, "not an integer");
    refuse_get("int3.conf", "min_sites = 99999999999999999999\n", "min_sites", 0, "not an integer");
    refuse_get("range.conf", "\nmin_sites = 0\n", "min_sites", 0,
               "range.conf:2: min_sites = \"0\": outside the allowed range [1, 100]");
    refuse_get("range2.conf", "min_sites = 101\n", "min_sites", 0, "outside the allowed range");
    refuse_get("float.conf", "fraction = half\n", "fraction", 1, "float.conf:1: fraction = \"half\": not a finite number");
    refuse_get("nan.conf", "fraction = nan\n", "fraction", 1, "not a finite number");
    refuse_get("inf.conf", "fraction = inf\n", "fraction", 1, "not a finite number");
    refuse_get("frange.conf", "fraction = 1.5\n", "fraction", 1, "outside the allowed range");
    refuse_get("frange0.conf", "fraction = 0\n", "fraction", 1, "outside the allowed range");
    refuse_get("bool.conf", "tls = maybe\n", "tls", 2, "bool.conf:1: tls = \"maybe\": not a boolean");
    refuse_get("list.conf", "sites = a,,b\n", "sites", 3, "empty item");
    refuse_get("list2.conf", "sites = a, b,\n", "sites", 3, "empty item");

    /* a NUL byte */
    char path[256];
    snprintf(path, sizeof path, "%s/nul.conf", dir);
    write_file(path, "lr = 0.1\nad\0dress = x\n", 22);
    fs_config *cfg;
    CHECK(fs_config_new(&cfg, KEYS) == FS_OK, "new");
    capture_begin();
    fs_status st = fs_config_load(cfg, path);
    const char *log = capture_end();
    CHECK(st == FS_ERR_FORMAT && strstr(log, "nul.conf:2: NUL byte"), "NUL: %s", log);
    fs_config_free(cfg);

    /* a missing file */
    snprintf(path, sizeof path, "%s/absent.conf", dir);
    CHECK(fs_config_new(&cfg, KEYS) == FS_OK, "new");
    capture_begin();
    st = fs_config_load(cfg, path);
    log = capture_end();
    CHECK(st == FS_ERR_NOT_FOUND && strstr(log, "absent.conf: cannot open config file"), "missing file: %s", log);
    fs_config_free(cfg);

    /* a bad key list is the program's bug */
    const char *const badkeys[] = {"ok", "not ok", NULL};
    capture_begin();
    st = fs_config_new(&cfg, badkeys);
    capture_end();
    CHECK(st == FS_ERR_ARG && cfg == NULL, "bad key list");
    const char *const dupkeys[] = {"a", "a", NULL};
    capture_begin();
    st = fs_config_new(&cfg, dupkeys);
    capture_end();
    CHECK(st == FS_ERR_ARG && cfg == NULL, "repeated key in the list");
}

static void test_overrides(void)
{
    const char *text = "min_sites = 2\nlr = 0.1\n";
    fs_config *cfg;
    const char *log;
    long long i;
    double d;
    /* flag after the file */
    CHECK(load_text(&cfg, "ovr.conf", text, &log) == FS_OK, "load: %s", log);
    CHECK(fs_config_set(cfg, "min_sites", "5") == FS_OK, "set");
    CHECK(fs_config_get_int(cfg, "min_sites", 1, 1, 100, &i) == FS_OK && i == 5, "flag overrides file: %lld", i);
    CHECK(fs_config_get_float(cfg, "lr", 1, 0, 1, &d) == FS_OK && d == 0.1, "file value kept");
    CHECK(fs_config_set(cfg, "min_sites", "6") == FS_OK &&
          fs_config_get_int(cfg, "min_sites", 1, 1, 100, &i) == FS_OK && i == 6, "last flag wins");
    capture_begin();
    fs_status st = fs_config_set(cfg, "min_sits", "6");
    log = capture_end();
    CHECK(st == FS_ERR_FORMAT && strstr(log, "command line: unknown key 'min_sits' (did you mean 'min_sites'?)"),
          "unknown flag: %s", log);
    CHECK(fs_config_set(cfg, "min_sites", "zero") == FS_OK, "set");
    capture_begin();
    st = fs_config_get_int(cfg, "min_sites", 1, 1, 100, &i);
    log = capture_end();
    CHECK(st == FS_ERR_FORMAT && strstr(log, "command line: min_sites = \"zero\": not an integer"),
          "bad flag value names the command line: %s", log);
    fs_config_free(cfg);

    /* flag before the file: the flag still wins; duplicates in the file are
     * still refused */
    char path[256];
    snprintf(path, sizeof path, "%s/ovr2.conf", dir);
    write_file(path, text, strlen(text));
    CHECK(fs_config_new(&cfg, KEYS) == FS_OK, "new");
    CHECK(fs_config_set(cfg, "min_sites", "7") == FS_OK, "set");
    CHECK(fs_config_load(cfg, path) == FS_OK, "load");
    CHECK(fs_config_get_int(cfg, "min_sites", 1, 1, 100, &i) == FS_OK && i == 7, "early flag still wins: %lld", i);
    fs_config_free(cfg);
    fs_config_free(NULL);
}

int main(void)
{
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    test_good_file();
    test_defaults();
    test_refusals();
    test_overrides();
    /* remove the temporary files */
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_result();
}
