/*
 * bench/bench_step.c — times full U-Net training steps (forward, loss,
 * backward, Adam) through fs_unet_train_step, the entry point the trainer
 * uses, per preset and backend.
 *
 *   bench_step [--model tiny|small|ref|all|LIST] [--device cpu|cuda|all]
 *              [--batch B] [--steps N] [--warmup W] [--threads T] [--lr LR] [--json]
 *
 * LIST is a comma-separated list of presets ("tiny,small"). Each run builds a
 * model on a fixed random batch: inputs N(0,1) of shape B×4×S×S and labels
 * y = argmax over the four input channels at each pixel (a pixel-wise rule the
 * network can learn, so the loss falls quickly). Before any timing it checks
 * that every warm-up loss is finite and that the loss fell over the warm-up;
 * otherwise it prints an error and exits 1. The timed steps must stay finite.
 *
 * Reported per preset and backend: batch, median and mean ms/step, images/s,
 * approximate GFLOP/s (convolutions only, backward counted as 2× forward),
 * first and last loss, and memory: on the CPU the process's peak resident set
 * (getrusage ru_maxrss — process-wide, so it includes earlier presets of the
 * same run); on CUDA the device memory in use (cudaMemGetInfo) taken before the
 * backend context is created, after the model is created, and after timing.
 * With --json every result is one JSON object per line (as is a skipped
 * backend, with a "skipped" reason).
 *
 * Default batches: CPU tiny 16, small 8, ref 8; CUDA 32 for every preset (on
 * CUDA, fs_unet_train_step captures the step in a CUDA graph after its first
 * step unless FS_NO_GRAPH=1 is set). Exit status: 0 when every run passed its
 * checks (a backend that is absent counts as skipped, not failed), 1 otherwise,
 * 2 for bad usage.
 *
 * --lr (default 1e-3, Adam as in PyTorch) exists so that the tests can show the
 * loss gate failing: with --lr 0 the loss cannot fall and the run must exit 1.
 *
 * Tested by tests/bench.cmake (a short CPU run of the tiny preset, whose
 * correctness checks must pass; the same run with --lr 0, which must fail the
 * gate; an unknown preset); the timings are read, not asserted.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <omp.h>
#include "kernels/backend.h"
#include "node/unet.h"
#include "common/log.h"
#include "common/rng.h"
#ifdef FS_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct {
    int batch;   /* 0 = the default for the preset and device */
    int steps;
    int warmup;
    int threads; /* 0 = all cores */
    int json;
    float lr;    /* Adam learning rate (1e-3; 0 lets the tests see the loss gate fail) */
} bench_opts;

typedef struct {
    double median_ms, mean_ms, min_ms;
    float loss_first, loss_warm_last, loss_last;
    double mem_mib;       /* CPU: peak RSS; CUDA: in use after timing (over baseline) */
    double mem_model_mib; /* CUDA only: in use after model creation (over baseline) */
} bench_result;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Floating-point operations of one forward pass over one image, counting the
 * convolutions, transposed convolutions and the head (2 per multiply-add).
 * Norms, pooling, loss and Adam are left out: they are memory-bound. */
static double forward_flops(const fs_preset *p)
{
    double f = 0;
    int ch[FS_UNET_MAX_DEPTH + 1];
    for (int i = 0; i <= p->depth; i++) ch[i] = p->base << i;
    for (int i = 0; i <= p->depth; i++) {
        double px = (double)(p->size >> i) * (p->size >> i);
        int cin = i == 0 ? FS_UNET_IN_CH : ch[i - 1];
        f += 2.0 * 9 * ((double)cin * ch[i] + (double)ch[i] * ch[i]) * px; /* encoder / mid */
        if (i < p->depth) {
            f += 2.0 * ch[i + 1] * ch[i] * px;                                   /* up: 4 taps at half res */
            f += 2.0 * 9 * (2.0 * ch[i] * ch[i] + (double)ch[i] * ch[i]) * px;  /* decoder block */
        }
    }
    f += 2.0 * ch[0] * FS_UNET_CLASSES * (double)p->size * p->size; /* head */
    return f;
}

/* Default batch size for a preset on a device (see the file comment). */
static int default_batch(const fs_preset *p, int cuda)
{
    if (cuda) return 32;
    return strcmp(p->name, "tiny") == 0 ? 16 : 8;
}

/* Fills x (n×4×s×s) with N(0,1) values and y (n×s×s) with the index of the
 * largest of the four channels at each pixel. */
static void make_batch(float *x, uint8_t *y, int n, int s, uint64_t seed)
{
    fs_rng r;
    fs_rng_seed(&r, seed, 0x62656e6368ULL);
    size_t plane = (size_t)s * s, total = (size_t)n * FS_UNET_IN_CH * plane;
    for (size_t i = 0; i < total; i++) x[i] = (float)fs_rng_normal(&r);
    for (int b = 0; b < n; b++)
        for (size_t i = 0; i < plane; i++) {
            const float *xb = x + (size_t)b * FS_UNET_IN_CH * plane + i;
            int best = 0;
            for (int c = 1; c < FS_UNET_IN_CH; c++)
                if (xb[c * plane] > xb[best * plane]) best = c;
            y[(size_t)b * plane + i] = (uint8_t)best;
        }
}

#ifdef FS_HAVE_CUDA
/* Device memory in use (total − free) in MiB on the current device, or −1. */
static double cuda_used_mib(void)
{
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) return -1;
    return (double)(tot - fr) / (1024.0 * 1024.0);
}
#endif

/* Builds a model for preset p on backend be and runs the warm-up (with its
 * correctness checks) and the timed steps. Returns 0 on success, 1 when a
 * check or a library call failed (after printing why on stderr). */
static int run_one(const fs_preset *p, const fs_backend *be, int batch, const bench_opts *o,
                   bench_result *res)
{
    int cuda = strcmp(be->name, "cuda") == 0;
    int rc = 1;
    void *ctx = NULL;
    fs_unet *m = NULL;
    double *times = NULL;
    size_t plane = (size_t)p->size * p->size;
    float *x = malloc((size_t)batch * FS_UNET_IN_CH * plane * sizeof *x);
    uint8_t *y = malloc((size_t)batch * plane);
    float *wl = calloc((size_t)o->warmup, sizeof *wl);
    times = calloc((size_t)o->steps, sizeof *times);
    memset(res, 0, sizeof *res);
    if (!x || !y || !wl || !times) {
        fprintf(stderr, "bench_step: out of host memory for %s batch %d\n", p->name, batch);
        goto done;
    }
    make_batch(x, y, batch, p->size, 1234);

    double base_mib = 0;
#ifdef FS_HAVE_CUDA
    if (cuda) {
        cudaSetDevice(0);
        cudaFree(NULL); /* create the primary context so the baseline includes it */
        base_mib = cuda_used_mib();
    }
#endif
    fs_status st = be->ctx_init(&ctx, 0);
    if (st != FS_OK) {
        fprintf(stderr, "bench_step: %s backend failed to start: %s\n", be->name, fs_status_str(st));
        goto done;
    }
    st = fs_unet_create(&m, be, ctx, p->base, p->depth, p->size, batch, 1);
    if (st != FS_OK) {
        fprintf(stderr, "bench_step: %s %s batch %d: model creation failed: %s\n", p->name,
                be->name, batch, fs_status_str(st));
        goto done;
    }
    if (fs_unet_nparams(m) != p->nparams) {
        fprintf(stderr, "bench_step: %s has %zu parameters, expected %zu\n", p->name,
                fs_unet_nparams(m), p->nparams);
        goto done;
    }
#ifdef FS_HAVE_CUDA
    if (cuda) res->mem_model_mib = cuda_used_mib() - base_mib;
#endif
    (void)base_mib;

    fs_adam_hp hp = {o->lr, 0.9f, 0.999f, 1e-8f, 0.0f};
    /* Warm-up: library start-up, CUDA graph capture; the correctness check. */
    for (int i = 0; i < o->warmup; i++) {
        if ((st = fs_unet_train_step(m, x, y, batch, hp, &wl[i])) != FS_OK) {
            fprintf(stderr, "bench_step: %s %s: training step failed: %s\n", p->name, be->name,
                    fs_status_str(st));
            goto done;
        }
        if (!isfinite(wl[i])) {
            fprintf(stderr, "bench_step: error: %s %s: warm-up step %d gave a non-finite loss\n",
                    p->name, be->name, i + 1);
            goto done;
        }
    }
    res->loss_first = wl[0];
    res->loss_warm_last = wl[o->warmup - 1];
    if (!(wl[o->warmup - 1] < wl[0])) {
        fprintf(stderr,
                "bench_step: error: %s %s: the loss did not fall over %d warm-up steps on a "
                "fixed batch (%.6f -> %.6f); not timing a broken step\n",
                p->name, be->name, o->warmup, wl[0], wl[o->warmup - 1]);
        goto done;
    }

    float loss = 0;
    for (int i = 0; i < o->steps; i++) {
        double t0 = now_ms();
        st = fs_unet_train_step(m, x, y, batch, hp, &loss); /* returns after the loss is on the host */
        times[i] = now_ms() - t0;
        if (st != FS_OK || !isfinite(loss)) {
            fprintf(stderr, "bench_step: error: %s %s: timed step %d %s\n", p->name, be->name,
                    i + 1, st != FS_OK ? fs_status_str(st) : "gave a non-finite loss");
            goto done;
        }
    }
    res->loss_last = loss;
    double sum = 0;
    for (int i = 0; i < o->steps; i++) sum += times[i];
    res->mean_ms = sum / o->steps;
    qsort(times, (size_t)o->steps, sizeof *times, cmp_double);
    res->min_ms = times[0];
    res->median_ms = o->steps % 2 ? times[o->steps / 2]
                                  : 0.5 * (times[o->steps / 2 - 1] + times[o->steps / 2]);
    if (cuda) {
#ifdef FS_HAVE_CUDA
        res->mem_mib = cuda_used_mib() - base_mib;
#endif
    } else {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        res->mem_mib = ru.ru_maxrss / 1024.0; /* Linux reports KiB */
    }
    rc = 0;
done:
    fs_unet_free(m);
    if (ctx) be->ctx_free(ctx);
    free(x);
    free(y);
    free(wl);
    free(times);
    return rc;
}

/* Name of the device a backend runs on, for the report. */
static void device_name(const fs_backend *be, int threads, char *out, size_t n)
{
#ifdef FS_HAVE_CUDA
    if (strcmp(be->name, "cuda") == 0) {
        struct cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
            snprintf(out, n, "%s", prop.name);
            return;
        }
    }
#endif
    snprintf(out, n, "%d threads", threads);
}

/* Writes s as a JSON string body (quotes and backslashes escaped). */
static void json_str(const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        if ((unsigned char)*s >= 0x20) putchar(*s);
    }
}

static void print_result(const fs_preset *p, const fs_backend *be, int batch, int threads,
                         const bench_opts *o, const bench_result *r)
{
    int cuda = strcmp(be->name, "cuda") == 0;
    double ips = batch / (r->median_ms * 1e-3);
    double gflops = 3.0 * forward_flops(p) * batch / (r->median_ms * 1e-3) * 1e-9;
    char dev[300];
    device_name(be, threads, dev, sizeof dev);
    const char *nograph = getenv("FS_NO_GRAPH");
    int graph = cuda && !(nograph && strcmp(nograph, "1") == 0);
    if (o->json) {
        printf("{\"impl\":\"fedseg\",\"model\":\"%s\",\"device\":\"%s\",\"device_name\":\"", p->name,
               be->name);
        json_str(dev);
        printf("\",\"threads\":%d,\"batch\":%d,\"size\":%d,\"params\":%zu,\"steps\":%d,"
               "\"warmup\":%d,\"median_ms\":%.3f,\"mean_ms\":%.3f,\"min_ms\":%.3f,"
               "\"img_per_s\":%.2f,\"gflop_per_s\":%.1f,\"loss_first\":%.6f,"
               "\"loss_after_warmup\":%.6f,\"loss_last\":%.6f,",
               cuda ? 0 : threads, batch, p->size, p->nparams, o->steps, o->warmup, r->median_ms,
               r->mean_ms, r->min_ms, ips, gflops, r->loss_first, r->loss_warm_last, r->loss_last);
        if (cuda)
            printf("\"cuda_graph\":%s,\"mem_kind\":\"device_in_use\",\"mem_model_mib\":%.1f,"
                   "\"mem_mib\":%.1f}\n", graph ? "true" : "false", r->mem_model_mib, r->mem_mib);
        else
            printf("\"mem_kind\":\"process_peak_rss\",\"mem_mib\":%.1f}\n", r->mem_mib);
    } else {
        printf("%-6s %-5s %-22s batch %3d  median %9.2f ms  mean %9.2f ms  %9.1f img/s  %8.1f GFLOP/s  "
               "loss %.4f -> %.4f  ",
               p->name, be->name, dev, batch, r->median_ms, r->mean_ms, ips, gflops, r->loss_first,
               r->loss_last);
        if (cuda)
            printf("device mem %.0f MiB (model %.0f MiB)%s\n", r->mem_mib, r->mem_model_mib,
                   graph ? "" : "  [no CUDA graph]");
        else
            printf("peak RSS %.0f MiB (process)\n", r->mem_mib);
    }
    fflush(stdout);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_step [--model tiny|small|ref|all|LIST] [--device cpu|cuda|all]\n"
            "                  [--batch B] [--steps N] [--warmup W] [--threads T] [--lr LR]\n"
            "                  [--json]\n"
            "Times full training steps (forward + backward + Adam) of the reference U-Net.\n"
            "  --model    presets, comma-separated (default all)\n"
            "  --device   backend(s) to time (default all: cpu, and cuda when present)\n"
            "  --batch    images per step (default: cpu tiny 16, small/ref 8; cuda 32)\n"
            "  --steps    timed steps (default 20)\n"
            "  --warmup   untimed steps before timing, >= 2 (default 3); the loss must fall\n"
            "  --threads  CPU threads (default 0 = all cores)\n"
            "  --lr       Adam learning rate (default 0.001)\n"
            "  --json     one JSON object per line\n");
}

/* Parses a positive (or, with allow_zero, non-negative) integer option value. */
static int parse_int(const char *opt, const char *v, int allow_zero, int *out)
{
    char *end;
    errno = 0;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || n < (allow_zero ? 0 : 1) || n > 1000000) {
        fprintf(stderr, "bench_step: %s needs a %s integer, got '%s'\n", opt,
                allow_zero ? "non-negative" : "positive", v ? v : "");
        return 0;
    }
    *out = (int)n;
    return 1;
}

int main(int argc, char **argv)
{
    bench_opts o = {0, 20, 3, 0, 0, 1e-3f};
    const char *models = "all", *devices = "all";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--model") && v) models = argv[++i];
        else if (!strcmp(a, "--device") && v) devices = argv[++i];
        else if (!strcmp(a, "--batch")) ok = parse_int(a, v, 0, &o.batch), i++;
        else if (!strcmp(a, "--steps")) ok = parse_int(a, v, 0, &o.steps), i++;
        else if (!strcmp(a, "--warmup")) ok = parse_int(a, v, 0, &o.warmup), i++;
        else if (!strcmp(a, "--threads")) ok = parse_int(a, v, 1, &o.threads), i++;
        else if (!strcmp(a, "--json")) o.json = 1;
        else if (!strcmp(a, "--lr") && v) {
            char *end;
            o.lr = strtof(argv[++i], &end);
            if (*end || !(o.lr >= 0.0f && o.lr < 1.0f)) {
                fprintf(stderr, "bench_step: --lr needs a number in [0, 1), got '%s'\n", argv[i]);
                ok = 0;
            }
        }
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "bench_step: unknown or incomplete option '%s'\n", a);
            ok = 0;
        }
        if (!ok) {
            usage(stderr);
            return 2;
        }
    }
    if (o.warmup < 2) {
        fprintf(stderr, "bench_step: --warmup must be at least 2 (the loss must fall over it)\n");
        return 2;
    }

    /* Presets to run, in the order given ("all" = every preset). */
    const fs_preset *presets[16];
    int np = 0;
    if (!strcmp(models, "all")) {
        for (int i = 0; i < fs_npresets && np < 16; i++) presets[np++] = &fs_presets[i];
    } else {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", models);
        for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            const fs_preset *p = fs_preset_find(tok);
            if (!p || np >= 16) {
                fprintf(stderr, "bench_step: unknown preset '%s' (use tiny, small, ref or all)\n", tok);
                return 2;
            }
            presets[np++] = p;
        }
    }
    int want_cpu = !strcmp(devices, "cpu") || !strcmp(devices, "all");
    int want_cuda = !strcmp(devices, "cuda") || !strcmp(devices, "all");
    if (!want_cpu && !want_cuda) {
        fprintf(stderr, "bench_step: unknown device '%s' (use cpu, cuda or all)\n", devices);
        return 2;
    }

    fs_log_set_level(FS_LOG_WARN);
    fs_backend_cpu_set_threads(o.threads);
    int threads = o.threads > 0 ? o.threads : omp_get_num_procs();
    int failed = 0;
    for (int d = 0; d < 2; d++) {
        if ((d == 0 && !want_cpu) || (d == 1 && !want_cuda)) continue;
        const char *why = NULL;
        const fs_backend *be = fs_backend_get(d == 0 ? "cpu" : "cuda", &why);
        if (!be) {
            if (o.json) {
                printf("{\"impl\":\"fedseg\",\"device\":\"cuda\",\"skipped\":\"");
                json_str(why ? why : "unavailable");
                printf("\"}\n");
            } else {
                printf("cuda: skipped — %s\n", why ? why : "unavailable");
            }
            fflush(stdout);
            continue;
        }
        for (int i = 0; i < np; i++) {
            int batch = o.batch > 0 ? o.batch : default_batch(presets[i], d == 1);
            bench_result r;
            if (run_one(presets[i], be, batch, &o, &r) != 0) {
                failed = 1;
                continue;
            }
            print_result(presets[i], be, batch, threads, &o, &r);
        }
    }
    return failed ? 1 : 0;
}
