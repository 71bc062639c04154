/*
 * cli/sim_metrics.c — reads what the federation writes for `fedseg sim`:
 * the aggregator's per-round metrics lines (a small JSON reader that knows
 * objects, arrays, strings, numbers, true/false/null and skips keys it does
 * not need) and the node's final line. See cli/sim.h.
 *
 * Layout: a cursor-based reader (ws, string, number, skip_value), then the
 * metrics line (object → round fields, "sites"/"missing" arrays → site
 * entries), then the node's final line.
 *
 * Tested by tests/test_sim_metrics.c.
 */
#include "cli/sim.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *p;
    int depth;
} cursor;

#define MAX_DEPTH 16

static void ws(cursor *c)
{
    while (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r') c->p++;
}

/* A JSON string into out (escapes kept as the escaped character; \u as '?').
 * 0 on success. */
static int read_string(cursor *c, char *out, size_t cap)
{
    size_t n = 0;
    if (*c->p != '"') return -1;
    c->p++;
    while (*c->p && *c->p != '"') {
        char ch = *c->p++;
        if (ch == '\\') {
            ch = *c->p++;
            if (!ch) return -1;
            if (ch == 'u') {
                for (int i = 0; i < 4; i++)
                    if (!*c->p++) return -1;
                ch = '?';
            } else if (ch == 'n') ch = '\n';
            else if (ch == 't') ch = '\t';
        }
        if (out && n + 1 < cap) out[n++] = ch;
    }
    if (*c->p != '"') return -1;
    c->p++;
    if (out && cap) out[n] = 0;
    return 0;
}

/* A number or null (→ NaN). 0 on success. */
static int read_number(cursor *c, double *v)
{
    if (!strncmp(c->p, "null", 4)) {
        c->p += 4;
        *v = NAN;
        return 0;
    }
    if (*c->p != '-' && (*c->p < '0' || *c->p > '9')) return -1;
    char *end;
    errno = 0;
    *v = strtod(c->p, &end);
    if (end == c->p || errno == ERANGE) return -1;
    c->p = end;
    return 0;
}

static int skip_value(cursor *c);

/* Skips an object or array body after its opening bracket. */
static int skip_container(cursor *c, char close)
{
    if (++c->depth > MAX_DEPTH) return -1;
    ws(c);
    if (*c->p == close) {
        c->p++;
        c->depth--;
        return 0;
    }
    for (;;) {
        ws(c);
        if (close == '}') {
            if (read_string(c, NULL, 0)) return -1;
            ws(c);
            if (*c->p++ != ':') return -1;
            ws(c);
        }
        if (skip_value(c)) return -1;
        ws(c);
        if (*c->p == ',') { c->p++; continue; }
        if (*c->p == close) { c->p++; c->depth--; return 0; }
        return -1;
    }
}

static int skip_value(cursor *c)
{
    double d;
    ws(c);
    switch (*c->p) {
    case '"': return read_string(c, NULL, 0);
    case '{': c->p++; return skip_container(c, '}');
    case '[': c->p++; return skip_container(c, ']');
    case 't': if (!strncmp(c->p, "true", 4)) { c->p += 4; return 0; } return -1;
    case 'f': if (!strncmp(c->p, "false", 5)) { c->p += 5; return 0; } return -1;
    default: return read_number(c, &d);
    }
}

/* Iterates an object: calls on_key for every key with the cursor at its
 * value; on_key must consume the value (or return 1 to have it skipped). */
typedef int (*key_fn)(cursor *c, const char *key, void *u);

static int read_object(cursor *c, key_fn on_key, void *u)
{
    ws(c);
    if (*c->p != '{' || ++c->depth > MAX_DEPTH) return -1;
    c->p++;
    ws(c);
    if (*c->p == '}') {
        c->p++;
        c->depth--;
        return 0;
    }
    for (;;) {
        char key[64];
        ws(c);
        if (read_string(c, key, sizeof key)) return -1;
        ws(c);
        if (*c->p++ != ':') return -1;
        ws(c);
        int r = on_key(c, key, u);
        if (r < 0 || (r > 0 && skip_value(c))) return -1;
        ws(c);
        if (*c->p == ',') { c->p++; continue; }
        if (*c->p == '}') { c->p++; c->depth--; return 0; }
        return -1;
    }
}

typedef struct {
    fs_sim_site_stat *s;
    double recv, sent;
} site_ctx;

static int site_key(cursor *c, const char *key, void *u)
{
    site_ctx *x = u;
    if (!strcmp(key, "site")) return read_string(c, x->s->name, sizeof x->s->name);
    if (!strcmp(key, "global_dice_wt")) return read_number(c, &x->s->dice_wt);
    if (!strcmp(key, "train_loss")) return read_number(c, &x->s->train_loss);
    if (!strcmp(key, "bytes_received")) return read_number(c, &x->recv);
    if (!strcmp(key, "bytes_sent")) return read_number(c, &x->sent);
    return 1;
}

/* An array of site objects, appended to r with reported = rep. */
static int read_sites(cursor *c, fs_sim_round *r, int rep)
{
    if (*c->p != '[') return -1;
    c->p++;
    ws(c);
    if (*c->p == ']') {
        c->p++;
        return 0;
    }
    for (;;) {
        if (r->nsites >= FS_SIM_MAX_SITES) return -1;
        fs_sim_site_stat *s = &r->site[r->nsites];
        memset(s, 0, sizeof *s);
        s->reported = rep;
        s->dice_wt = s->train_loss = NAN;
        site_ctx x = {s, 0, 0};
        if (read_object(c, site_key, &x) || !s->name[0]) return -1;
        s->bytes = (isfinite(x.recv) ? x.recv : 0) + (isfinite(x.sent) ? x.sent : 0);
        r->bytes += s->bytes;
        r->nsites++;
        ws(c);
        if (*c->p == ',') { c->p++; ws(c); continue; }
        if (*c->p == ']') { c->p++; return 0; }
        return -1;
    }
}

static int round_key(cursor *c, const char *key, void *u)
{
    fs_sim_round *r = u;
    double v;
    if (!strcmp(key, "round")) {
        if (read_number(c, &v) || !(v >= 1 && v <= 4294967295.0) || v != floor(v)) return -1;
        r->round = (unsigned)v;
        return 0;
    }
    if (!strcmp(key, "wall_seconds")) return read_number(c, &r->wall_seconds);
    if (!strcmp(key, "closed_by")) return read_string(c, r->closed_by, sizeof r->closed_by);
    if (!strcmp(key, "sites_selected") || !strcmp(key, "sites_reported")) {
        if (read_number(c, &v) || !(v >= 0 && v <= 1e6)) return -1;
        if (!strcmp(key, "sites_selected")) r->sites_selected = (int)v;
        else r->sites_reported = (int)v;
        return 0;
    }
    if (!strcmp(key, "sites")) return read_sites(c, r, 1);
    if (!strcmp(key, "missing")) return read_sites(c, r, 0);
    return 1;
}

fs_status fs_sim_parse_metrics(const char *line, fs_sim_round *out)
{
    memset(out, 0, sizeof *out);
    out->wall_seconds = NAN;
    cursor c = {line, 0};
    if (read_object(&c, round_key, out)) return FS_ERR_FORMAT;
    ws(&c);
    if (*c.p || out->round == 0) return FS_ERR_FORMAT;
    /* reported entries first: "sites" may come after "missing" in the line */
    fs_sim_site_stat tmp[FS_SIM_MAX_SITES];
    int k = 0;
    for (int pass = 1; pass >= 0; pass--)
        for (int i = 0; i < out->nsites; i++)
            if (out->site[i].reported == pass) tmp[k++] = out->site[i];
    memcpy(out->site, tmp, (size_t)k * sizeof tmp[0]);
    return FS_OK;
}

int fs_sim_round_find(const fs_sim_round *r, const char *site)
{
    for (int i = 0; i < r->nsites; i++)
        if (!strcmp(r->site[i].name, site)) return i;
    return -1;
}

#define FINAL_PREFIX "federation finished after round "

fs_status fs_sim_parse_final(const char *line, unsigned *round, double dice[3])
{
    if (strncmp(line, FINAL_PREFIX, strlen(FINAL_PREFIX)) != 0) return FS_ERR_FORMAT;
    unsigned r;
    double d[3];
    int used = 0;
    if (sscanf(line + strlen(FINAL_PREFIX), "%u: final global model, held-out Dice WT %lf TC %lf ET %lf%n", &r,
               &d[0], &d[1], &d[2], &used) != 4 || used == 0)
        return FS_ERR_FORMAT;
    *round = r;
    memcpy(dice, d, sizeof d);
    return FS_OK;
}

fs_status fs_sim_read_final(const char *log_path, unsigned *round, double dice[3])
{
    FILE *f = fopen(log_path, "r");
    if (!f) return FS_ERR_IO;
    char line[1024];
    fs_status st = FS_ERR_NOT_FOUND;
    while (fgets(line, sizeof line, f))
        if (fs_sim_parse_final(line, round, dice) == FS_OK) st = FS_OK;
    fclose(f);
    return st;
}
