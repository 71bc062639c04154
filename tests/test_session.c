/*
 * tests/test_session.c — node/session.c on a small synthetic site made by
 * `fedseg synth` (FS_FEDSEG) in a temporary folder: 3 cases, so 2 train and 1
 * is held out.
 *
 * Asserted: the parameter count of `tiny`; set/get parameters round-trip;
 * held-out Dice in [0,1]; nsamples equals the training slices counted here
 * from the dataset and the split; one epoch of 3 steps changes the parameters
 * and gives a finite loss; Adam is reset between rounds (two rounds from the
 * same parameters and sampler seed give bit-identical results); the FedProx
 * term (mu > 0) changes the result and keeps the parameters closer to the
 * starting point, and a later mu = 0 round is again identical to the first;
 * a raised stop flag ends training before any step. Skips (77) without
 * FS_FEDSEG.
 */
#include "check.h"
#include "node/dataset.h"
#include "node/session.h"
#include "node/train.h"
#include "node/unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/fs_session_XXXXXX";

static size_t ndiff(const float *a, const float *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += a[i] != b[i];
    return d;
}

static double dist(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return sqrt(s);
}

int main(void)
{
    const char *fedseg = getenv("FS_FEDSEG");
    if (!fedseg) { fprintf(stderr, "FS_FEDSEG not set: skipping\n"); return 77; }
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    char cmd[4096], site[4200];
    snprintf(cmd, sizeof cmd, "'%s' synth --out '%s/fed' --sites 1 --cases-per-site 3 --voxel-scale 2 "
             "--threads 1 --quiet", fedseg, dir);
    if (system(cmd) != 0) { fprintf(stderr, "FAIL: %s\n", cmd); return 1; }
    snprintf(site, sizeof site, "%s/fed/site_1", dir);

    /* expected FedAvg weight, counted here from the data and the split */
    fs_dataset ds;
    CHECK(fs_dataset_load(site, 64, &ds) == FS_OK, "dataset load");
    uint64_t want_slices = 0;
    int nval = 0;
    for (int c = 0; c < ds.ncases; c++) {
        if (fs_split_is_val(c, ds.ncases)) nval++;
        else want_slices += (uint64_t)ds.cases[c].nslices;
    }
    fs_dataset_free(&ds);

    const char *dirs[1] = {site};
    fs_session *s = NULL;
    CHECK(fs_session_open(&s, dirs, 1, "nope", "cpu", 4, 3, 1) == FS_ERR_ARG && !s, "unknown preset refused");
    fs_status st = fs_session_open(&s, dirs, 1, "tiny", "cpu", 4, 3, 1);
    CHECK(st == FS_OK && s, "open: %s", fs_status_str(st));
    if (!s) return check_result();
    size_t P = fs_session_nparams(s);
    CHECK(P == 487388, "tiny has %zu parameters", P);
    CHECK(fs_session_nsamples(s) == want_slices && want_slices > 0, "nsamples %llu, want %llu",
          (unsigned long long)fs_session_nsamples(s), (unsigned long long)want_slices);
    CHECK(fs_session_nval_cases(s) == nval && nval == 1 && fs_session_ntrain_cases(s) == 2,
          "split: %d train, %d held out", fs_session_ntrain_cases(s), fs_session_nval_cases(s));
    CHECK(fs_session_batch(s) == 4 && !strcmp(fs_session_preset(s), "tiny") &&
          !strcmp(fs_session_backend(s), "cpu"), "accessors");

    float *w0 = malloc(P * sizeof(float)), *w1 = malloc(P * sizeof(float)),
          *w2 = malloc(P * sizeof(float)), *wmu = malloc(P * sizeof(float));
    if (!w0 || !w1 || !w2 || !wmu) return 1;
    CHECK(fs_session_get_params(s, w0) == FS_OK, "get params");
    /* a distinct start: perturb, set, read back */
    for (size_t i = 0; i < P; i++) w0[i] += 1e-3f * (float)((int)(i % 7) - 3);
    CHECK(fs_session_set_params(s, w0) == FS_OK && fs_session_get_params(s, w1) == FS_OK, "set/get");
    CHECK(ndiff(w0, w1, P) == 0, "set/get round trip differs in %zu values", ndiff(w0, w1, P));

    double dice[3];
    CHECK(fs_session_eval(s, dice) == FS_OK, "eval");
    for (int r = 0; r < 3; r++) CHECK(dice[r] >= 0 && dice[r] <= 1, "Dice[%d] = %g outside [0,1]", r, dice[r]);

    /* round 1 */
    double loss1 = NAN, loss2 = NAN, lossmu = NAN;
    fs_session_seed(s, 11);
    CHECK(fs_session_train(s, 1, 3, 1e-3f, 0, &loss1) == FS_OK, "train round 1");
    CHECK(isfinite(loss1) && loss1 > 0, "loss %g", loss1);
    CHECK(fs_session_get_params(s, w1) == FS_OK, "get w1");
    size_t changed = ndiff(w0, w1, P);
    CHECK(changed > P / 2, "training changed only %zu of %zu parameters", changed, P);

    /* round 2 from the same start and seed: identical (Adam restarted) */
    CHECK(fs_session_set_params(s, w0) == FS_OK, "reset params");
    fs_session_seed(s, 11);
    CHECK(fs_session_train(s, 1, 3, 1e-3f, 0, &loss2) == FS_OK, "train round 2");
    CHECK(fs_session_get_params(s, w2) == FS_OK, "get w2");
    CHECK(ndiff(w1, w2, P) == 0 && loss1 == loss2,
          "same start, same seed: %zu parameters differ, loss %.9g vs %.9g (Adam state carried over?)",
          ndiff(w1, w2, P), loss1, loss2);

    /* another sampler seed gives other batches, so another result */
    CHECK(fs_session_set_params(s, w0) == FS_OK, "reset params");
    fs_session_seed(s, 12);
    CHECK(fs_session_train(s, 1, 3, 1e-3f, 0, NULL) == FS_OK, "train seed 12");
    CHECK(fs_session_get_params(s, w2) == FS_OK && ndiff(w1, w2, P) > 0, "seed 12 gave the seed-11 result");

    /* FedProx: mu > 0 changes the result and pulls towards the start */
    CHECK(fs_session_set_params(s, w0) == FS_OK, "reset params");
    fs_session_seed(s, 11);
    CHECK(fs_session_train(s, 1, 3, 1e-3f, 10.0f, &lossmu) == FS_OK, "train mu");
    CHECK(fs_session_get_params(s, wmu) == FS_OK, "get wmu");
    double d1 = dist(w1, w0, P), dmu = dist(wmu, w0, P);
    CHECK(ndiff(w1, wmu, P) > 0, "mu = 10 gave the mu = 0 result");
    CHECK(dmu < d1, "with mu = 10 the parameters moved %.6g from the start, without %.6g", dmu, d1);
    fprintf(stderr, "distance from start: mu=0 %.6g, mu=10 %.6g; losses %.5f %.5f\n", d1, dmu, loss1, lossmu);

    /* mu = 0 after a FedProx round: again exactly round 1 */
    CHECK(fs_session_set_params(s, w0) == FS_OK, "reset params");
    fs_session_seed(s, 11);
    CHECK(fs_session_train(s, 1, 3, 1e-3f, 0, NULL) == FS_OK, "train after mu");
    CHECK(fs_session_get_params(s, w2) == FS_OK && ndiff(w1, w2, P) == 0,
          "mu = 0 after a mu > 0 round differs from round 1 in %zu values", ndiff(w1, w2, P));

    /* a raised stop flag: no step taken */
    volatile sig_atomic_t stop = 1;
    fs_session_set_stop(s, &stop);
    CHECK(fs_session_set_params(s, w0) == FS_OK, "reset params");
    double lstop = 0;
    CHECK(fs_session_train(s, 1, 3, 1e-3f, 0, &lstop) == FS_OK && isnan(lstop), "stopped train");
    CHECK(fs_session_get_params(s, w2) == FS_OK && ndiff(w0, w2, P) == 0, "stopped train changed params");
    fs_session_set_stop(s, NULL);

    /* bad arguments */
    CHECK(fs_session_train(s, 0, 3, 1e-3f, 0, NULL) == FS_ERR_ARG, "0 epochs refused");
    CHECK(fs_session_train(s, 1, 3, -1.0f, 0, NULL) == FS_ERR_ARG, "negative lr refused");
    CHECK(fs_session_train(s, 1, 3, 1e-3f, NAN, NULL) == FS_ERR_ARG, "NaN mu refused");

    fs_session_free(s);
    fs_session_free(NULL);
    free(w0);
    free(w1);
    free(w2);
    free(wmu);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_result();
}
