/*
 * aggregator/noniid_round.c — see noniid_round.h. Layout: configuration,
 * state file name and vectors, resume, close, commit.
 * Tested by tests/test_noniid_round.c.
 */
#include "aggregator/noniid_round.h"
#include "common/log.h"
#include "common/wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static fs_server_opt_hp effective_hp(const fs_round_config *cfg)
{
    fs_server_opt_hp hp = cfg->server_opt;
    if (hp.lr == 0) hp = fs_server_opt_defaults(hp.kind);
    return hp;
}

int fs_noniid_is_plain(const fs_round_config *cfg)
{
    return cfg->server_opt.kind == FS_SOPT_FEDAVG && (cfg->server_opt.lr == 0 || cfg->server_opt.lr == 1) &&
           cfg->agg_rule == FS_AGG_MEAN && !cfg->scaffold;
}

fs_status fs_noniid_server_init(fs_noniid_server *s, const fs_round_config *cfg, size_t P)
{
    memset(s, 0, sizeof *s);
    s->hp = effective_hp(cfg);
    s->P = P;
    FS_TRY(fs_server_opt_check(&s->hp));
    if ((unsigned)cfg->agg_rule >= FS_AGG_COUNT) return FS_ERR_ARG;
    if (cfg->agg_rule == FS_AGG_TRIMMED_MEAN && !(cfg->trim >= 0 && cfg->trim < 0.5)) {
        fs_log_error("round: trim = %g must lie in [0, 0.5)", cfg->trim);
        return FS_ERR_ARG;
    }
    if (fs_server_opt_has_m(s->hp.kind)) {
        s->m = malloc(P * sizeof *s->m);
        s->m_next = malloc(P * sizeof *s->m);
        if (!s->m || !s->m_next) return FS_ERR_NOMEM;
    }
    if (fs_server_opt_has_v(s->hp.kind)) {
        s->v = malloc(P * sizeof *s->v);
        s->v_next = malloc(P * sizeof *s->v);
        if (!s->v || !s->v_next) return FS_ERR_NOMEM;
    }
    fs_server_opt_init_state(&s->hp, P, s->m, s->v);
    return FS_OK;
}

void fs_noniid_server_free(fs_noniid_server *s)
{
    if (!s) return;
    free(s->m);
    free(s->v);
    free(s->m_next);
    free(s->v_next);
    memset(s, 0, sizeof *s);
}

static int needs_state(const fs_noniid_server *s, const fs_round_config *cfg)
{
    return s->m || s->v || cfg->scaffold;
}

static void state_path(char *dst, size_t cap, const char *dir, uint32_t r)
{
    snprintf(dst, cap, "%s/server.r%u.state", dir, r);
}

/* The vectors of the state file: m, v, c (those in use). */
static uint32_t state_vecs(fs_sopt_vec *v, float *m, float *vv, float *c)
{
    uint32_t n = 0;
    if (m) v[n++] = (fs_sopt_vec){FS_SOPT_TAG_M, m};
    if (vv) v[n++] = (fs_sopt_vec){FS_SOPT_TAG_V, vv};
    if (c) v[n++] = (fs_sopt_vec){FS_SOPT_TAG_C, c};
    return n;
}

fs_status fs_noniid_resume(fs_noniid_server *s, const fs_round_config *cfg, const char *state_dir,
                           uint32_t completed, size_t P, float *c)
{
    fs_server_opt_init_state(&s->hp, P, s->m, s->v);
    if (cfg->scaffold && c) memset(c, 0, P * sizeof *c);
    if (completed == 0 || !needs_state(s, cfg)) return FS_OK;
    char path[4200];
    state_path(path, sizeof path, state_dir, completed);
    fs_sopt_vec v[3];
    uint32_t nv = state_vecs(v, s->m, s->v, cfg->scaffold ? c : NULL);
    fs_status st = fs_server_state_read(path, s->hp.kind, completed, P, v, nv);
    if (st != FS_OK)
        fs_log_error("%s: the %s%s state of round %u cannot be restored; a federation resumes only "
                     "with the algorithm it was started with", path, fs_server_opt_name(s->hp.kind),
                     cfg->scaffold ? " + SCAFFOLD" : "", completed);
    return st;
}

fs_status fs_noniid_close(fs_noniid_server *s, const fs_round_config *cfg, const char *state_dir,
                          uint32_t r, size_t P, size_t U, size_t n_sites, const float *model,
                          fs_round_sum *sum, const char *const *paths, size_t n_paths, float *buf)
{
    if (n_paths == 0) return FS_ERR_ARG;
    float *d = sum->sum;
    /* 1. the pseudo-gradient Δ over all U values */
    if (cfg->agg_rule == FS_AGG_MEAN) FS_TRY(fs_fedavg_finish(&sum->acc, d));
    else FS_TRY(fs_robust_spools(cfg->agg_rule, cfg->trim, paths, n_paths, U, FS_CHUNK_PARAMS, d));
    /* 2. the server step on w, on copies of the moments */
    if (s->m) memcpy(s->m_next, s->m, P * sizeof *s->m);
    if (s->v) memcpy(s->v_next, s->v, P * sizeof *s->v);
    for (size_t off = 0; off < P; off += FS_CHUNK_PARAMS) {
        size_t len = P - off < FS_CHUNK_PARAMS ? P - off : FS_CHUNK_PARAMS;
        memcpy(buf, model + off, len * sizeof *buf);
        FS_TRY(fs_server_opt_step(&s->hp, len, buf, d + off, s->m ? s->m_next + off : NULL,
                                  s->v ? s->v_next + off : NULL));
        memcpy(d + off, buf, len * sizeof *buf);
    }
    /* 3. SCAFFOLD: c += (|S| / N)·Δc (option II's server update) */
    if (cfg->scaffold) {
        double frac = (double)n_paths / (double)n_sites;
        for (size_t i = 0; i < P; i++) {
            float c = (float)((double)model[P + i] + frac * (double)d[P + i]);
            if (!isfinite(c)) {
                fs_log_error("round %u: control variate %zu became %g", r, i, (double)c);
                return FS_ERR_NUMERIC;
            }
            d[P + i] = c;
        }
    }
    /* 4. the state after round r, durable before the round commits */
    if (!needs_state(s, cfg)) return FS_OK;
    char path[4200];
    state_path(path, sizeof path, state_dir, r);
    fs_sopt_vec v[3];
    uint32_t nv = state_vecs(v, s->m_next, s->v_next, cfg->scaffold ? d + P : NULL);
    return fs_server_state_write(path, s->hp.kind, r, P, v, nv);
}

void fs_noniid_committed(fs_noniid_server *s, const fs_round_config *cfg, const char *state_dir,
                         uint32_t r)
{
    float *t = s->m;
    s->m = s->m_next;
    s->m_next = t;
    t = s->v;
    s->v = s->v_next;
    s->v_next = t;
    if (!needs_state(s, cfg) || r < 2) return;
    char path[4200];
    state_path(path, sizeof path, state_dir, r - 1);
    unlink(path); /* an old round's state; a leftover is harmless */
}

fs_status fs_noniid_check_local(const uint8_t *mask, size_t P, uint64_t offset, const uint8_t *data,
                                size_t len, size_t *bad)
{
    for (size_t k = 0; k < len / 4; k++) {
        uint64_t i = offset + k;
        if (i >= P) break;
        if (!mask[i]) continue;
        uint32_t bits = (uint32_t)data[4 * k] | (uint32_t)data[4 * k + 1] << 8 |
                        (uint32_t)data[4 * k + 2] << 16 | (uint32_t)data[4 * k + 3] << 24;
        if (bits & 0x7fffffffu) {
            *bad = (size_t)i;
            return FS_ERR_FORMAT;
        }
    }
    return FS_OK;
}
