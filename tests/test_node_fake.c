/*
 * tests/test_node_fake.c — the site node (node/client.c and `fedseg node`)
 * against a fake aggregator: a real transport server (common/transport.h)
 * speaking the real messages (common/wire.h) over mutual TLS on 127.0.0.1,
 * with certificates from common/provision.c, running on a thread of this
 * process. The fake is scripted per scenario: answer the first GetTask with
 * UNAVAILABLE, WAIT a few times, refuse the first update, refuse the Join...
 * It checks every update it receives (header, chunk order, total length,
 * CRC-32) and keeps the last accepted delta.
 *
 * Scenarios and what is asserted:
 *   A  in-process fs_node_run, one round: a retry after UNAVAILABLE, a WAIT,
 *      a refused update (the node goes back to GetTask and trains again), the
 *      accepted update; its header (round, num_params, num_samples = the
 *      site's training slices, finite loss, the global model's Dice equal to
 *      a local evaluation of w0); the delta bit-identical to a local session
 *      trained from w0 with the node's round seed; FINISHED → the final model
 *      (w0 + delta) downloaded, evaluated, saved in state_dir; the report.
 *   B  the `fedseg node` binary with the provisioned node.conf (relative
 *      paths resolved against its folder), flags overriding data, aggregator
 *      and seed: exit 0, one update identical to A's, the per-round line and
 *      the final line on stdout.
 *   C  Join answered accepted=0 with a reason → FS_ERR_MISMATCH at once.
 *   D  Join refused with FAILED_PRECONDITION (protocol version) → FS_ERR_MISMATCH.
 *   E  an aggregator that only says WAIT, and *stop raised → FS_OK, not finished.
 *   F  nobody listening → retries with backoff until *stop, then FS_OK.
 * Skips (77) without FS_FEDSEG.
 */
#include "check.h"
#include "common/ckpt.h"
#include "common/log.h"
#include "common/provision.h"
#include "common/transport.h"
#include "common/wire.h"
#include "node/client.h"
#include "node/session.h"
#include "node/unet.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[] = "/tmp/fs_nodefake_XXXXXX";

/* ------------------------------------------------------------ the fake */

typedef struct {
    pthread_mutex_t mu;
    /* script */
    int join_refuse, join_rpc_refuse, task_unavailable, task_wait, push_refuse;
    int wait_forever;
    volatile sig_atomic_t *stop_node_after_tasks; /* raise after 3 GetTasks */
    uint32_t rounds, epochs, steps;
    float lr;
    /* model */
    size_t P;
    float *w0, *w1;     /* w1 = w0 + the accepted delta */
    uint32_t completed;
    /* what happened */
    int joins, tasks, downloads, pushes_ok, pushes_refused, bad;
    char bad_why[256], join_identity[64], join_preset[16];
    uint64_t join_samples;
    fs_wire_update_header hdr;
    float *got;         /* the accepted delta */
} fake;

static void bad(fake *f, const char *why)
{
    f->bad++;
    snprintf(f->bad_why, sizeof f->bad_why, "%s", why);
    fprintf(stderr, "fake aggregator: %s\n", why);
}

static const float *current_model(fake *f) { return f->completed ? f->w1 : f->w0; }

static void h_unary(void *u, int method, const char *identity, const uint8_t *req, size_t len,
                    fs_rpc_reply *out)
{
    fake *f = u;
    char why[256] = "";
    pthread_mutex_lock(&f->mu);
    if (method == FS_M_JOIN) {
        fs_wire_join_request jq;
        f->joins++;
        if (fs_wire_decode_join_request(req, len, &jq, why, sizeof why) != FS_OK) bad(f, why);
        snprintf(f->join_identity, sizeof f->join_identity, "%s", identity ? identity : "");
        snprintf(f->join_preset, sizeof f->join_preset, "%s", jq.preset);
        f->join_samples = jq.num_samples;
        if (f->join_rpc_refuse) {
            out->code = FS_RPC_FAILED_PRECONDITION;
            snprintf(out->reason, sizeof out->reason, "protocol version 1, this aggregator speaks 7");
        } else {
            fs_wire_join_reply jr;
            memset(&jr, 0, sizeof jr);
            jr.protocol_version = FS_PROTOCOL_VERSION;
            jr.accepted = !f->join_refuse;
            if (f->join_refuse) snprintf(jr.reason, sizeof jr.reason, "test: %s is not on the site list", identity);
            snprintf(jr.site_id, sizeof jr.site_id, "%s", identity ? identity : "anon");
            snprintf(jr.preset, sizeof jr.preset, "tiny");
            jr.num_params = f->P;
            jr.round = f->completed + 1;
            fs_wire_encode_join_reply(&jr, &out->msg, &out->len);
        }
    } else if (method == FS_M_GET_TASK) {
        fs_wire_task_request tq;
        f->tasks++;
        if (fs_wire_decode_task_request(req, len, &tq, why, sizeof why) != FS_OK) bad(f, why);
        if (f->stop_node_after_tasks && f->tasks >= 3) *f->stop_node_after_tasks = 1;
        if (f->task_unavailable > 0) {
            f->task_unavailable--;
            out->code = FS_RPC_UNAVAILABLE;
            snprintf(out->reason, sizeof out->reason, "test: try again later");
        } else {
            fs_wire_task t;
            memset(&t, 0, sizeof t);
            t.num_params = f->P;
            t.model_crc32 = fs_wire_crc32_f32(0, current_model(f), f->P);
            t.round = f->completed + 1;
            t.retry_after_ms = 50;
            if (f->wait_forever || f->task_wait > 0) {
                if (f->task_wait > 0) f->task_wait--;
                t.action = FS_TASK_WAIT;
            } else if (f->completed >= f->rounds) {
                t.action = FS_TASK_FINISHED;
                t.round = f->completed;
            } else {
                t.action = FS_TASK_TRAIN;
                t.local_epochs = f->epochs;
                t.steps_per_epoch = f->steps;
                t.lr = f->lr;
                t.seconds_left = 600;
                t.retry_after_ms = 0;
            }
            fs_wire_encode_task(&t, &out->msg, &out->len);
        }
    } else {
        out->code = FS_RPC_INVALID_ARGUMENT;
        bad(f, "unary call to a streaming method");
    }
    pthread_mutex_unlock(&f->mu);
}

typedef struct {
    const float *w;
    size_t P;
    uint64_t off;
    uint32_t round, crc;
} dl;

static void *h_dl_begin(void *u, int method, const char *identity, const uint8_t *req, size_t len,
                        fs_rpc_reply *out)
{
    fake *f = u;
    (void)identity;
    fs_wire_model_request mq;
    char why[256] = "";
    dl *d = NULL;
    pthread_mutex_lock(&f->mu);
    f->downloads++;
    if (method != FS_M_DOWNLOAD_MODEL || fs_wire_decode_model_request(req, len, &mq, why, sizeof why) != FS_OK) {
        bad(f, why);
        out->code = FS_RPC_INVALID_ARGUMENT;
    } else if (mq.round != f->completed + 1) {
        out->code = FS_RPC_FAILED_PRECONDITION;
        snprintf(out->reason, sizeof out->reason, "round %u is not the current round %u", mq.round, f->completed + 1);
    } else if ((d = calloc(1, sizeof *d))) {
        d->w = current_model(f);
        d->P = f->P;
        d->round = mq.round;
        d->crc = fs_wire_crc32_f32(0, d->w, d->P);
    }
    pthread_mutex_unlock(&f->mu);
    return d;
}

static int h_dl_next(void *u, void *state, fs_rpc_reply *out)
{
    (void)u;
    dl *d = state;
    if (d->off >= d->P) return 0;
    size_t n = d->P - d->off < FS_CHUNK_PARAMS ? d->P - d->off : FS_CHUNK_PARAMS;
    fs_wire_model_chunk c = {d->round, d->P, d->off, (const uint8_t *)(d->w + d->off), n * 4, d->crc};
    fs_wire_encode_model_chunk(&c, &out->msg, &out->len);
    d->off += n;
    return 1;
}

static void h_dl_end(void *u, void *state)
{
    (void)u;
    free(state);
}

typedef struct {
    int have_hdr;
    fs_wire_update_header hdr;
    uint64_t next;
    uint32_t crc;
    float *buf;
} up;

static void *h_up_begin(void *u, int method, const char *identity, fs_rpc_reply *out)
{
    fake *f = u;
    (void)identity;
    if (method != FS_M_PUSH_UPDATE) {
        out->code = FS_RPC_INVALID_ARGUMENT;
        return NULL;
    }
    up *s = calloc(1, sizeof *s);
    if (s && !(s->buf = malloc(f->P * sizeof(float)))) { free(s); s = NULL; }
    if (!s) out->code = FS_RPC_INTERNAL;
    return s;
}

static void h_up_chunk(void *u, void *state, const uint8_t *msg, size_t len, fs_rpc_reply *out)
{
    fake *f = u;
    up *s = state;
    fs_wire_update_chunk c;
    char why[256] = "";
    pthread_mutex_lock(&f->mu);
    if (fs_wire_decode_update_chunk(msg, len, &c, why, sizeof why) != FS_OK) {
        bad(f, why);
        out->code = FS_RPC_INVALID_ARGUMENT;
    } else if (!s->have_hdr) {
        if (!c.has_header) {
            bad(f, "first chunk without a header");
            out->code = FS_RPC_INVALID_ARGUMENT;
        } else if (f->push_refuse > 0) {
            f->push_refuse--;
            f->pushes_refused++;
            out->code = FS_RPC_FAILED_PRECONDITION;
            snprintf(out->reason, sizeof out->reason, "test: update refused once");
        } else if (c.header.round != f->completed + 1 || c.header.num_params != f->P) {
            bad(f, "header for another round or size");
            out->code = FS_RPC_FAILED_PRECONDITION;
        }
        s->have_hdr = 1;
        s->hdr = c.header;
    } else if (c.has_header) {
        bad(f, "a second header");
        out->code = FS_RPC_INVALID_ARGUMENT;
    }
    if (out->code == FS_RPC_OK) {
        if (c.offset != s->next || c.len / 4 > f->P - s->next) {
            bad(f, "chunk out of order");
            out->code = FS_RPC_INVALID_ARGUMENT;
        } else {
            fs_wire_copy_f32(s->buf + s->next, c.data, c.len);
            s->crc = fs_wire_crc32_bytes(s->crc, c.data, c.len);
            s->next += c.len / 4;
        }
    }
    pthread_mutex_unlock(&f->mu);
}

static void h_up_end(void *u, void *state, int failed, fs_rpc_reply *out)
{
    fake *f = u;
    up *s = state;
    pthread_mutex_lock(&f->mu);
    if (!failed) {
        fs_wire_update_ack ack;
        memset(&ack, 0, sizeof ack);
        if (!s->have_hdr || s->next != f->P || s->crc != s->hdr.crc32) {
            bad(f, "update short or CRC mismatch");
            snprintf(ack.reason, sizeof ack.reason, "short or CRC mismatch");
        } else {
            ack.accepted = 1;
            f->pushes_ok++;
            f->hdr = s->hdr;
            memcpy(f->got, s->buf, f->P * sizeof(float));
            for (size_t i = 0; i < f->P; i++) f->w1[i] = f->w0[i] + s->buf[i];
            f->completed++;
        }
        fs_wire_encode_update_ack(&ack, &out->msg, &out->len);
    }
    pthread_mutex_unlock(&f->mu);
    free(s->buf);
    free(s);
}

/* Puts the fake back to round 1 with a new script. */
static void reset(fake *f)
{
    pthread_mutex_lock(&f->mu);
    f->join_refuse = f->join_rpc_refuse = f->task_unavailable = f->task_wait = f->push_refuse = 0;
    f->wait_forever = 0;
    f->stop_node_after_tasks = NULL;
    f->completed = 0;
    f->joins = f->tasks = f->downloads = f->pushes_ok = f->pushes_refused = f->bad = 0;
    f->bad_why[0] = 0;
    pthread_mutex_unlock(&f->mu);
}

static fs_tserver *srv;
static volatile sig_atomic_t srv_stop = 0;

static void *srv_thread(void *arg)
{
    (void)arg;
    fs_tserver_run(srv, &srv_stop, 1000);
    return NULL;
}

static volatile sig_atomic_t timer_flag = 0;
static void *stop_later(void *arg)
{
    struct timespec ts = {1, 500000000};
    nanosleep(&ts, NULL);
    *(volatile sig_atomic_t *)arg = 1;
    return NULL;
}

static int file_has(const char *path, const char *needle)
{
    FILE *fp = fopen(path, "r");
    char line[1024];
    int hit = 0;
    while (fp && !hit && fgets(line, sizeof line, fp)) hit = strstr(line, needle) != NULL;
    if (fp) fclose(fp);
    return hit;
}

int main(void)
{
    const char *fedseg = getenv("FS_FEDSEG");
    if (!fedseg) { fprintf(stderr, "FS_FEDSEG not set: skipping\n"); return 77; }
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    char cmd[32768], site[4200], kit[4200], p1[4300], p2[4300], p3[4300];
    snprintf(cmd, sizeof cmd, "'%s' synth --out '%s/fed' --sites 1 --cases-per-site 3 --voxel-scale 2 "
             "--threads 1 --quiet", fedseg, dir);
    if (system(cmd) != 0) { fprintf(stderr, "FAIL: %s\n", cmd); return 1; }
    snprintf(site, sizeof site, "%s/fed/site_1", dir);
    snprintf(kit, sizeof kit, "%s/kit", dir);
    const char *sites[1] = {"site_1"};
    fs_provision_opts po = {"testconsortium", "127.0.0.1", sites, 1, kit};
    if (fs_provision_create(&po) != FS_OK) { fprintf(stderr, "FAIL: provision\n"); return 1; }

    /* the global model w0: a fresh tiny U-Net from seed 7 */
    fake f;
    memset(&f, 0, sizeof f);
    pthread_mutex_init(&f.mu, NULL);
    f.rounds = 1;
    f.epochs = 1;
    f.steps = 2;
    f.lr = 1e-3f;
    {
        const fs_backend *be = fs_backend_get("cpu", NULL);
        void *ctx = NULL;
        fs_unet *m = NULL;
        const fs_preset *pr = fs_preset_find("tiny");
        if (!be || be->ctx_init(&ctx, 0) != FS_OK ||
            fs_unet_create(&m, be, ctx, pr->base, pr->depth, pr->size, 1, 7) != FS_OK)
            return 1;
        f.P = fs_unet_nparams(m);
        f.w0 = malloc(f.P * sizeof(float));
        f.w1 = malloc(f.P * sizeof(float));
        f.got = malloc(f.P * sizeof(float));
        if (!f.w0 || !f.w1 || !f.got || fs_unet_get_params(m, f.w0) != FS_OK) return 1;
        fs_unet_free(m);
        be->ctx_free(ctx);
    }

    /* the fake aggregator, with the aggregator's kit */
    snprintf(p1, sizeof p1, "%s/aggregator/ca.crt", kit);
    snprintf(p2, sizeof p2, "%s/aggregator/aggregator.crt", kit);
    snprintf(p3, sizeof p3, "%s/aggregator/aggregator.key", kit);
    fs_tls_files stls = {p1, p2, p3, NULL};
    fs_tserver_handlers h = {h_unary, h_up_begin, h_up_chunk, h_up_end, h_dl_begin, h_dl_next, h_dl_end, NULL};
    int port = 0;
    if (fs_tserver_start(&srv, "127.0.0.1:0", &stls, fs_federation_methods, FS_M_COUNT, &h, &f,
                         FS_MAX_MSG_BYTES, &port) != FS_OK) {
        fprintf(stderr, "FAIL: fake aggregator did not start\n");
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, srv_thread, NULL);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);

    char sca[4300], scrt[4300], skey[4300], state[4300];
    snprintf(sca, sizeof sca, "%s/sites/site_1/ca.crt", kit);
    snprintf(scrt, sizeof scrt, "%s/sites/site_1/site_1.crt", kit);
    snprintf(skey, sizeof skey, "%s/sites/site_1/site_1.key", kit);
    snprintf(state, sizeof state, "%s/state", dir);
    const char *data[1] = {site};
    fs_node_report rep;
    fs_node_config nc;
    memset(&nc, 0, sizeof nc);
    nc.aggregator = addr;
    nc.ca = sca;
    nc.cert = scrt;
    nc.key = skey;
    nc.site = "site_1";
    nc.data = data;
    nc.ndata = 1;
    nc.preset = "auto";
    nc.device = "cpu";
    nc.batch = 4;
    nc.threads = 1;
    nc.seed = 5;
    nc.state_dir = state;
    nc.rpc_timeout_ms = 5000;
    nc.backoff_initial_s = 0.05;
    nc.backoff_max_s = 0.2;
    nc.report = &rep;

    /* ---- A: one round with a retry, a WAIT and a refused update */
    reset(&f);
    f.task_unavailable = 1;
    f.task_wait = 1;
    f.push_refuse = 1;
    fs_status st = fs_node_run(&nc, NULL);
    CHECK(st == FS_OK, "A: node returned %s", fs_status_str(st));
    pthread_mutex_lock(&f.mu);
    CHECK(f.bad == 0, "A: the fake saw %d bad messages (%s)", f.bad, f.bad_why);
    CHECK(f.joins == 1 && !strcmp(f.join_identity, "site_1") && !strcmp(f.join_preset, "tiny"),
          "A: joins %d as '%s' preset '%s'", f.joins, f.join_identity, f.join_preset);
    CHECK(f.pushes_refused == 1 && f.pushes_ok == 1 && f.completed == 1, "A: pushes refused %d ok %d",
          f.pushes_refused, f.pushes_ok);
    CHECK(f.downloads == 3, "A: %d downloads (round 1 twice, the final model once)", f.downloads);
    fs_wire_update_header hA = f.hdr;
    float *deltaA = malloc(f.P * sizeof(float));
    if (!deltaA) return 1;
    memcpy(deltaA, f.got, f.P * sizeof(float));
    pthread_mutex_unlock(&f.mu);
    CHECK(rep.finished == 1 && rep.updates_accepted == 1 && rep.updates_refused == 1 && rep.rounds_trained == 2 &&
          rep.last_round_done == 1 && rep.retries >= 1,
          "A: report finished %d accepted %d refused %d trained %d last %u retries %d", rep.finished,
          rep.updates_accepted, rep.updates_refused, rep.rounds_trained, rep.last_round_done, rep.retries);
    for (int r = 0; r < 3; r++)
        CHECK(rep.final_dice[r] >= 0 && rep.final_dice[r] <= 1, "A: final Dice[%d] = %g", r, rep.final_dice[r]);

    /* the same round done locally */
    fs_session *s = NULL;
    float *w = malloc(f.P * sizeof(float));
    double dice0[3] = {NAN, NAN, NAN}, loss = NAN;
    CHECK(fs_session_open(&s, data, 1, "tiny", "cpu", 4, 5, 1) == FS_OK && w, "local session");
    if (!s || !w) return check_result();
    CHECK(fs_session_set_params(s, f.w0) == FS_OK && fs_session_eval(s, dice0) == FS_OK, "local eval");
    fs_session_seed(s, fs_node_round_seed(5, 1));
    CHECK(fs_session_train(s, 1, 2, 1e-3f, 0, &loss) == FS_OK && fs_session_get_params(s, w) == FS_OK, "local train");
    for (size_t i = 0; i < f.P; i++) w[i] -= f.w0[i];
    CHECK(hA.round == 1 && hA.num_params == f.P && hA.num_samples == fs_session_nsamples(s) &&
          hA.protocol_version == FS_PROTOCOL_VERSION, "A: header round %u params %llu samples %llu",
          hA.round, (unsigned long long)hA.num_params, (unsigned long long)hA.num_samples);
    CHECK(hA.train_loss == (float)loss && isfinite(hA.train_loss) && hA.train_seconds >= 0,
          "A: header loss %g, local %g", hA.train_loss, loss);
    CHECK(hA.global_dice_wt == (float)dice0[0] && hA.global_dice_tc == (float)dice0[1] &&
          hA.global_dice_et == (float)dice0[2], "A: header Dice %g %g %g, local eval of w0 %g %g %g",
          hA.global_dice_wt, hA.global_dice_tc, hA.global_dice_et, dice0[0], dice0[1], dice0[2]);
    CHECK(hA.crc32 == fs_wire_crc32_f32(0, deltaA, f.P), "A: CRC");
    check_close("A: delta vs local round", deltaA, w, f.P, 0, 0);
    fs_session_free(s);

    /* state_dir: final.ckpt holds w0 + delta */
    char ck[4400];
    snprintf(ck, sizeof ck, "%s/final.ckpt", state);
    fs_ckpt_meta meta;
    float *fin = NULL;
    CHECK(fs_ckpt_read(ck, &meta, &fin, NULL, NULL, NULL) == FS_OK && fin, "A: %s readable", ck);
    if (fin) {
        CHECK(meta.nparams == f.P && meta.epoch == 1 && !strcmp(meta.preset, "tiny"), "A: final.ckpt meta");
        check_close("A: final model", fin, f.w1, f.P, 0, 0);
        free(fin);
    }

    /* ---- B: the binary with the provisioned node.conf */
    reset(&f);
    char out[4400], err[4400];
    snprintf(out, sizeof out, "%s/node.out", dir);
    snprintf(err, sizeof err, "%s/node.err", dir);
    snprintf(cmd, sizeof cmd, "timeout 300 '%s' node --config '%s/sites/site_1/node.conf' --data '%s' "
             "--aggregator %s --device cpu --threads 1 --set batch=4 --set seed=5 --state-dir '%s/state_b' "
             "--set backoff_max_s=1 > '%s' 2> '%s'", fedseg, kit, site, addr, dir, out, err);
    int rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "B: fedseg node exited %d (see %s)", WEXITSTATUS(rc), err);
    pthread_mutex_lock(&f.mu);
    CHECK(f.bad == 0 && f.pushes_ok == 1 && f.completed == 1 && !strcmp(f.join_identity, "site_1"),
          "B: bad %d (%s), pushes %d", f.bad, f.bad_why, f.pushes_ok);
    check_close("B: delta vs A", f.got, deltaA, f.P, 0, 0);
    pthread_mutex_unlock(&f.mu);
    CHECK(file_has(out, "round 1  global Dice WT") && file_has(out, "federation finished after round 1"),
          "B: per-round and final lines missing from %s", out);
    snprintf(ck, sizeof ck, "%s/state_b/global.ckpt", dir);
    CHECK(access(ck, R_OK) == 0, "B: %s missing", ck);

    /* ---- C: Join refused with a reason */
    reset(&f);
    f.join_refuse = 1;
    nc.state_dir = NULL;
    st = fs_node_run(&nc, NULL);
    CHECK(st == FS_ERR_MISMATCH && f.tasks == 0, "C: refused Join: %s, tasks %d", fs_status_str(st), f.tasks);

    /* ---- D: Join refused by status (protocol version) */
    reset(&f);
    f.join_rpc_refuse = 1;
    st = fs_node_run(&nc, NULL);
    CHECK(st == FS_ERR_MISMATCH && f.joins == 1 && f.tasks == 0, "D: %s, joins %d", fs_status_str(st), f.joins);

    /* ---- E: WAIT until stopped */
    volatile sig_atomic_t stop = 0;
    reset(&f);
    f.wait_forever = 1;
    f.stop_node_after_tasks = &stop;
    st = fs_node_run(&nc, &stop);
    CHECK(st == FS_OK && !rep.finished && rep.rounds_trained == 0 && f.tasks >= 3, "E: %s finished %d tasks %d",
          fs_status_str(st), rep.finished, f.tasks);

    /* ---- F: nobody listening: retries until stopped */
    fs_node_config nf = nc;
    nf.aggregator = "127.0.0.1:1";
    nf.rpc_timeout_ms = 200;
    timer_flag = 0;
    pthread_t tt;
    pthread_create(&tt, NULL, stop_later, (void *)&timer_flag);
    st = fs_node_run(&nf, &timer_flag);
    pthread_join(tt, NULL);
    CHECK(st == FS_OK && rep.retries >= 2 && !rep.finished, "F: %s after %d retries", fs_status_str(st), rep.retries);

    srv_stop = 1;
    pthread_join(th, NULL);
    fs_tserver_free(srv);
    free(f.w0);
    free(f.w1);
    free(f.got);
    free(deltaA);
    free(w);
    if (!check_failures_) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    return check_result();
}
