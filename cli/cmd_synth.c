/*
 * cli/cmd_synth.c — `fedseg synth`: parse the options, hand them to
 * fs_synth_run (node/synth.h). Exit codes: 0 done, 1 generation failed (the
 * reason printed), 2 bad usage. Tested by tests/test_synth.sh.
 */
#include "cli/commands.h"
#include "common/log.h"
#include "node/synth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void synth_usage(FILE *f)
{
    fprintf(f,
            "usage: fedseg synth --out DIR [--sites N] [--cases-per-site A,B,...] [--seed S]\n"
            "                    [--anatomy FILE] [--threads T] [--voxel-scale F]\n"
            "                    [--heterogeneity iid|mild|strong] [--quiet]\n\n"
            "Generate a synthetic multi-site brain-tumour federation in the BraTS layout:\n"
            "DIR/site_K/CASE/CASE_{t1,t1ce,t2,flair,seg}.nii.gz plus DIR/site_K/site.json,\n"
            "DIR/site_K/montage.png and DIR/federation.json. Patients are warped copies of a\n"
            "real T1 brain with an irregular tumour (necrotic core, enhancing rim, infiltrative\n"
            "edema); each site has its own scanner, cohort and annotation style.\n\n"
            "  --out DIR            output folder: new, empty, or an earlier synth output\n"
            "                       (whose site_K folders are then replaced)\n"
            "  --sites N            number of sites, 1..%d (default 3)\n"
            "  --cases-per-site L   comma-separated cases per site, one number per site\n"
            "                       (default 24,16,10; for N sites the pattern repeats; with\n"
            "                       --heterogeneity iid 16,16,16, strong 40,20,10)\n"
            "  --seed S             non-negative integer (default 1); same seed, same bytes\n"
            "  --anatomy FILE       skull-stripped T1 volume (default %s,\n"
            "                       Debian package mricron-data)\n"
            "  --threads T          worker threads (default: all cores); output does not depend on it\n"
            "  --voxel-scale F      multiply every site's voxel size by F in [0.5, 4] (default 1;\n"
            "                       2 gives quick, coarse test data)\n"
            "  --heterogeneity H    how different the sites are: iid (one scanner, cohort and\n"
            "                       annotation style for all), mild (the designed profiles; default),\n"
            "                       strong (sites 2 and 3: scanner response, edema outline and\n"
            "                       tumour mix 2.5x further from site 1's; case numbers skewed)\n"
            "  --quiet              no per-case progress lines\n",
            FS_SYNTH_MAX_SITES, FS_SYNTH_DEFAULT_ANATOMY);
}

/* Strict non-negative decimal integer: digits only, no sign, no overflow. */
static int parse_u64(const char *s, unsigned long long *out)
{
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return 0;
    *out = v;
    return 1;
}

static int parse_int_range(const char *opt, const char *s, long lo, long hi, int *out)
{
    unsigned long long v;
    if (!parse_u64(s, &v) || v < (unsigned long long)lo || v > (unsigned long long)hi) {
        fs_log_error("synth: %s wants an integer in %ld..%ld, got '%s'", opt, lo, hi, s ? s : "");
        return 0;
    }
    *out = (int)v;
    return 1;
}

int fs_cmd_synth(int argc, char **argv)
{
    fs_synth_options o;
    fs_synth_defaults(&o);
    o.verbose = 1;
    int sites_given = 0, list_n = 0;
    int list[FS_SYNTH_MAX_SITES];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            synth_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--quiet")) {
            o.verbose = 0;
            continue;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strncmp(a, "--", 2) != 0) {
            fs_log_error("synth: unexpected argument '%s' (see fedseg synth --help)", a);
            return 2;
        }
        if (!v && (!strcmp(a, "--out") || !strcmp(a, "--sites") || !strcmp(a, "--cases-per-site") ||
                   !strcmp(a, "--seed") || !strcmp(a, "--anatomy") || !strcmp(a, "--threads") ||
                   !strcmp(a, "--voxel-scale") || !strcmp(a, "--heterogeneity"))) {
            fs_log_error("synth: %s needs a value", a);
            return 2;
        }
        if (!strcmp(a, "--out")) {
            o.out_dir = v;
        } else if (!strcmp(a, "--anatomy")) {
            o.anatomy = v;
        } else if (!strcmp(a, "--sites")) {
            if (!parse_int_range(a, v, 1, FS_SYNTH_MAX_SITES, &o.nsites)) return 2;
            sites_given = 1;
        } else if (!strcmp(a, "--threads")) {
            if (!parse_int_range(a, v, 1, 1024, &o.threads)) return 2;
        } else if (!strcmp(a, "--seed")) {
            unsigned long long s;
            if (!parse_u64(v, &s)) {
                fs_log_error("synth: --seed wants a non-negative integer, got '%s'", v);
                return 2;
            }
            o.seed = s;
        } else if (!strcmp(a, "--voxel-scale")) {
            char *end;
            errno = 0;
            double f = strtod(v, &end);
            if (errno || end == v || *end || !(f >= 0.5 && f <= 4.0)) {
                fs_log_error("synth: --voxel-scale wants a number in [0.5, 4], got '%s'", v);
                return 2;
            }
            o.voxel_scale = (float)f;
        } else if (!strcmp(a, "--heterogeneity")) {
            if (fs_synth_het_parse(v, &o.heterogeneity) != FS_OK) {
                fs_log_error("synth: --heterogeneity wants iid, mild or strong, got '%s'", v);
                return 2;
            }
        } else if (!strcmp(a, "--cases-per-site")) {
            list_n = 0;
            char buf[1024];
            if (strlen(v) >= sizeof buf) {
                fs_log_error("synth: --cases-per-site list is too long");
                return 2;
            }
            strcpy(buf, v);
            char *save = NULL;
            int commas = 0;
            for (const char *p = v; *p; p++) commas += *p == ',';
            for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (list_n == FS_SYNTH_MAX_SITES) {
                    fs_log_error("synth: --cases-per-site lists more than %d sites", FS_SYNTH_MAX_SITES);
                    return 2;
                }
                if (!parse_int_range("--cases-per-site", t, 1, FS_SYNTH_MAX_CASES, &list[list_n])) return 2;
                list_n++;
            }
            if (list_n == 0 || commas != list_n - 1) {
                fs_log_error("synth: --cases-per-site wants numbers separated by single commas, got '%s'", v);
                return 2;
            }
        } else {
            fs_log_error("synth: unknown option '%s' (see fedseg synth --help)", a);
            return 2;
        }
        i++;
    }
    if (!o.out_dir || !*o.out_dir) {
        fs_log_error("synth: --out DIR is required (see fedseg synth --help)");
        return 2;
    }
    if (list_n) {
        if (sites_given && list_n != o.nsites) {
            fs_log_error("synth: --sites %d but --cases-per-site lists %d number%s", o.nsites, list_n,
                         list_n == 1 ? "" : "s");
            return 2;
        }
        o.nsites = list_n;
        memcpy(o.cases, list, sizeof(int) * (size_t)list_n);
    } else {
        for (int k = 0; k < o.nsites; k++) o.cases[k] = fs_synth_het_cases(o.heterogeneity, k);
    }
    if (fs_synth_check_out(o.out_dir) != FS_OK) return 2;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fs_status st = fs_synth_run(&o);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (st != FS_OK) {
        fs_log_error("synth: generation failed (%s)", fs_status_str(st));
        return st == FS_ERR_ARG ? 2 : 1;
    }
    int total = 0;
    for (int k = 0; k < o.nsites; k++) total += o.cases[k];
    fs_log_info("synth: %d cases at %d sites written to %s in %.1f s", total, o.nsites, o.out_dir,
                (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    return 0;
}
