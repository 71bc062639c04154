/*
 * tests/test_synth_props.c — properties of a small synthetic federation made
 * through the library (fs_synth_run, 6 cases at each of 3 sites, voxels 1.5×
 * the designed size so it runs in seconds):
 *   - every case has the five volumes, one shape, labels ⊂ {0,1,2,4} and a
 *     tumour; tumour lies inside the brain (non-zero images);
 *   - the sites store different datatypes (int16 with scl_slope, uint16,
 *     float32) as site.json says;
 *   - the sites differ measurably: mean tumour-core volume (site 3 > site 1 >
 *     site 2 by design; whole tumour: sites 1 and 3 > site 2), and the annotation style — the FLAIR contrast between
 *     labelled edema and normal white matter (z-scored per volume) is highest
 *     where edema is outlined tightly (site 3) and lowest where it is outlined
 *     loosely (site 2);
 *   - the anatomy's tissue classes carry through: normal-appearing white
 *     matter is brighter than CSF-like voxels on T1 and darker on T2.
 * Skips (77) when the default anatomy (Debian mricron-data) is absent.
 */
#include "check.h"
#include "node/synth.h"
#include "node/nifti_io.h"

#include <nifti2_io.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NS 3
#define NC 6

static const char *mods[5] = {"t1", "t1ce", "t2", "flair", "seg"};

/* Mean and standard deviation of v over mask. */
static void mean_sd(const float *v, const uint8_t *mask, size_t n, double *mu, double *sd)
{
    double s = 0, s2 = 0, c = 0;
    for (size_t i = 0; i < n; i++)
        if (mask[i]) { s += v[i]; s2 += (double)v[i] * v[i]; c++; }
    *mu = c ? s / c : 0;
    *sd = c ? sqrt(fmax(s2 / c - *mu * *mu, 1e-12)) : 1;
}

int main(void)
{
    if (access(FS_SYNTH_DEFAULT_ANATOMY, R_OK) != 0) {
        fprintf(stderr, "SKIP: %s missing (apt-get install mricron-data)\n", FS_SYNTH_DEFAULT_ANATOMY);
        return 77;
    }
    const char *out = "synth_props_out";
    fs_synth_options o;
    fs_synth_defaults(&o);
    o.out_dir = out;
    o.nsites = NS;
    for (int k = 0; k < NS; k++) o.cases[k] = NC;
    o.seed = 42;
    o.voxel_scale = 1.5f;
    o.threads = 2;
    fs_status st = fs_synth_run(&o);
    CHECK(st == FS_OK, "fs_synth_run: %s", fs_status_str(st));
    if (st != FS_OK) return check_result();

    const int want_dt[NS] = {NIFTI_TYPE_INT16, NIFTI_TYPE_UINT16, NIFTI_TYPE_FLOAT32};
    double wt_mean[NS] = {0}, tc_mean[NS] = {0}, flair_contrast[NS] = {0}, t1_wm_csf[NS] = {0}, t2_wm_csf[NS] = {0};
    char path[1024];
    for (int k = 0; k < NS; k++) {
        snprintf(path, sizeof path, "%s/site_%d/montage.png", out, k + 1);
        CHECK(access(path, R_OK) == 0, "%s missing", path);
        snprintf(path, sizeof path, "%s/site_%d/site.json", out, k + 1);
        CHECK(access(path, R_OK) == 0, "%s missing", path);
        for (int c = 1; c <= NC; c++) {
            char id[64];
            snprintf(id, sizeof id, "site%d_case%03d", k + 1, c);
            fs_volume v[5];
            memset(v, 0, sizeof v);
            int ok = 1;
            for (int m = 0; m < 5; m++) {
                snprintf(path, sizeof path, "%s/site_%d/%s/%s_%s.nii.gz", out, k + 1, id, id, mods[m]);
                if (fs_nifti_read(path, &v[m]) != FS_OK) {
                    CHECK(0, "cannot read %s", path);
                    ok = 0;
                    continue;
                }
                if (m < 4) {
                    nifti_image *nim = nifti_image_read(path, 0);
                    CHECK(nim && nim->datatype == want_dt[k], "%s: datatype %d, want %d", path,
                          nim ? nim->datatype : -1, want_dt[k]);
                    if (nim && k == 0) CHECK(nim->scl_slope != 0 && nim->scl_slope != 1, "%s: no scl_slope", path);
                    nifti_image_free(nim);
                }
            }
            if (!ok) { for (int m = 0; m < 5; m++) fs_volume_free(&v[m]); continue; }
            for (int m = 1; m < 5; m++)
                CHECK(v[m].nx == v[0].nx && v[m].ny == v[0].ny && v[m].nz == v[0].nz, "%s: %s shape differs", id,
                      mods[m]);
            size_t n = (size_t)v[0].nx * v[0].ny * v[0].nz;
            uint8_t *brain = calloc(n, 1), *edema = calloc(n, 1), *wm = calloc(n, 1), *csf = calloc(n, 1);
            long tumour = 0, core = 0, bad = 0, outside = 0;
            for (size_t i = 0; i < n; i++) {
                float l = v[4].data[i];
                if (!(l == 0 || l == 1 || l == 2 || l == 4)) bad++;
                if (l != 0) tumour++;
                if (l == 1 || l == 4) core++;
                brain[i] = v[0].data[i] > 0 || v[3].data[i] > 0;
                if (l != 0 && !brain[i]) outside++;
                edema[i] = l == 2;
            }
            CHECK(bad == 0, "%s: %ld voxels with labels outside {0,1,2,4}", id, bad);
            CHECK(tumour > 0, "%s: no tumour", id);
            CHECK(outside == 0, "%s: %ld tumour voxels outside the brain", id, outside);
            double vv = (double)v[0].dx * v[0].dy * v[0].dz / 1000.0;
            wt_mean[k] += tumour * vv / NC;
            tc_mean[k] += core * vv / NC;
            /* z-score each modality in the brain. */
            double mu[4], sd[4];
            for (int m = 0; m < 4; m++) mean_sd(v[m].data, brain, n, &mu[m], &sd[m]);
            /* Normal-appearing WM: label 0, T1 in its top quartile of the
             * brain; CSF-like: label 0, T1 in the bottom tenth. */
            for (size_t i = 0; i < n; i++) {
                if (!brain[i] || v[4].data[i] != 0) continue;
                double z1 = (v[0].data[i] - mu[0]) / sd[0];
                wm[i] = z1 > 0.7;
                csf[i] = z1 < -1.5;
            }
            double fe, fw, tw, tc, t2w, t2c, dummy;
            mean_sd(v[3].data, edema, n, &fe, &dummy);
            mean_sd(v[3].data, wm, n, &fw, &dummy);
            mean_sd(v[0].data, wm, n, &tw, &dummy);
            mean_sd(v[0].data, csf, n, &tc, &dummy);
            mean_sd(v[2].data, wm, n, &t2w, &dummy);
            mean_sd(v[2].data, csf, n, &t2c, &dummy);
            long ne = 0;
            for (size_t i = 0; i < n; i++) ne += edema[i];
            if (ne > 0) flair_contrast[k] += (fe - fw) / sd[3];
            else flair_contrast[k] += 0;
            t1_wm_csf[k] += (tw - tc) / sd[0] / NC;
            t2_wm_csf[k] += (t2w - t2c) / sd[2] / NC;
            fprintf(stderr, "%s: whole tumour %.1f cm3, edema %ld voxels, FLAIR(edema)-FLAIR(WM) %.2f sd\n", id,
                    tumour * vv, ne, ne ? (fe - fw) / sd[3] : 0.0);
            free(brain); free(edema); free(wm); free(csf);
            for (int m = 0; m < 5; m++) fs_volume_free(&v[m]);
        }
        flair_contrast[k] /= NC;
        fprintf(stderr, "site_%d: mean whole tumour %.1f cm3, core %.1f cm3, mean FLAIR edema-WM contrast %.2f sd, "
                        "T1 WM-CSF %.2f sd, T2 WM-CSF %.2f sd\n",
                k + 1, wt_mean[k], tc_mean[k], flair_contrast[k], t1_wm_csf[k], t2_wm_csf[k]);
        CHECK(t1_wm_csf[k] > 1.0, "site_%d: white matter not brighter than CSF on T1 (%.2f sd)", k + 1, t1_wm_csf[k]);
        CHECK(t2_wm_csf[k] < -0.5, "site_%d: white matter not darker than CSF on T2 (%.2f sd)", k + 1, t2_wm_csf[k]);
        CHECK(flair_contrast[k] > 0.3, "site_%d: edema not brighter than white matter on FLAIR (%.2f sd)", k + 1,
              flair_contrast[k]);
    }
    /* Sites differ: tumour size (core radius: site 3 large, site 2 small; the
     * whole tumour also depends on the edema outline) and edema outline. */
    CHECK(tc_mean[2] > 1.5 * tc_mean[0] && tc_mean[0] > 1.5 * tc_mean[1],
          "tumour core volumes do not differ by site as designed: %.1f, %.1f, %.1f cm3", tc_mean[0], tc_mean[1],
          tc_mean[2]);
    CHECK(wt_mean[2] > 1.3 * wt_mean[1] && wt_mean[0] > 1.3 * wt_mean[1],
          "whole-tumour volumes do not differ by site as designed: %.1f, %.1f, %.1f cm3", wt_mean[0], wt_mean[1],
          wt_mean[2]);
    CHECK(flair_contrast[2] > flair_contrast[1] + 0.3,
          "edema outlines: tight site 3 (%.2f sd) not brighter on FLAIR than loose site 2 (%.2f sd)",
          flair_contrast[2], flair_contrast[1]);
    return check_result();
}
