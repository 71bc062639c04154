/*
 * cli/sim_plot.c — `fedseg sim`'s picture: the whole-tumour Dice of the
 * global model on each site's held-out cases after every round, one line per
 * site plus their mean, drawn by gnuplot (Debian gnuplot-nox) into dice.png.
 * The data (dice.dat) and the script (dice.gp) stay in the run folder, so the
 * figure can be redrawn or restyled with `gnuplot dice.gp`.
 *
 * Tested by tests/test_sim.sh (the PNG exists and is a PNG).
 */
#include "cli/sim.h"
#include "common/log.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

/* Writes dice.dat: "# rounds_completed site... mean", "?" for unknown. */
static fs_status write_data(const char *path, const fs_sim_curve *cv)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fs_log_error("%s: cannot write: %s", path, strerror(errno));
        return FS_ERR_IO;
    }
    fprintf(f, "# whole-tumour Dice of the global model after K rounds, on each site's held-out cases\n"
               "# rounds_completed");
    for (int s = 0; s < cv->nsites; s++) fprintf(f, " %s", cv->sites[s]);
    fprintf(f, " mean_of_sites\n");
    for (int k = 0; k <= cv->rounds; k++) {
        double sum = 0;
        int n = 0;
        fprintf(f, "%d", k);
        for (int s = 0; s < cv->nsites; s++) {
            double d = cv->dice[(size_t)k * cv->nsites + s];
            if (isfinite(d)) {
                fprintf(f, " %.4f", d);
                sum += d;
                n++;
            } else {
                fprintf(f, " ?");
            }
        }
        if (n == cv->nsites) fprintf(f, " %.4f\n", sum / n);
        else fprintf(f, " ?\n");
    }
    if (fclose(f) != 0) {
        fs_log_error("%s: cannot write: %s", path, strerror(errno));
        return FS_ERR_IO;
    }
    return FS_OK;
}

/* Writes dice.gp, the gnuplot script that draws dice.dat into dice.png. */
static fs_status write_script(const char *path, const fs_sim_curve *cv)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fs_log_error("%s: cannot write: %s", path, strerror(errno));
        return FS_ERR_IO;
    }
    fprintf(f,
            "# Written by fedseg sim; redraw with: gnuplot dice.gp (in this folder)\n"
            "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n"
            "    set terminal pngcairo size 960,600 font \",11\"\n"
            "} else {\n"
            "    set terminal png size 960,600\n"
            "}\n"
            "set termoption noenhanced\n"
            "set output \"dice.png\"\n"
            "set datafile missing \"?\"\n"
            "set title \"fedseg sim: whole-tumour Dice of the global model on each site's held-out cases\"\n"
            "set xlabel \"rounds completed\"\n"
            "set ylabel \"Dice (whole tumour)\"\n"
            "set yrange [0:1]\n"
            "set xrange [0:%d]\n"
            "set xtics %d\n"
            "set grid\n"
            "set key top left\n"
            "plot ",
            cv->rounds > 0 ? cv->rounds : 1, cv->rounds > 20 ? (cv->rounds + 9) / 10 : 1);
    for (int s = 0; s < cv->nsites; s++)
        fprintf(f, "\"dice.dat\" using 1:%d with linespoints lw 2 pt 7 ps 0.8 title \"%s\", \\\n     ", s + 2,
                cv->sites[s]);
    fprintf(f, "\"dice.dat\" using 1:%d with lines dt 2 lw 3 lc rgb \"black\" title \"mean of sites\"\n",
            cv->nsites + 2);
    if (fclose(f) != 0) {
        fs_log_error("%s: cannot write: %s", path, strerror(errno));
        return FS_ERR_IO;
    }
    return FS_OK;
}

fs_status fs_sim_plot(const char *dir, const fs_sim_curve *cv, const char *log_path)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/dice.dat", dir);
    FS_TRY(write_data(path, cv));
    snprintf(path, sizeof path, "%s/dice.gp", dir);
    FS_TRY(write_script(path, cv));
    snprintf(path, sizeof path, "%s/dice.png", dir);
    remove(path);

    fs_sim_child g;
    memset(&g, 0, sizeof g);
    snprintf(g.name, sizeof g.name, "gnuplot");
    snprintf(g.log, sizeof g.log, "%s", log_path);
    char *argv[] = {"gnuplot", "dice.gp", NULL};
    if (fs_sim_spawn(&g, "gnuplot", argv, dir) != FS_OK) {
        fs_log_error("no dice.png: install gnuplot (Debian: gnuplot-nox), then run `gnuplot dice.gp` in %s", dir);
        return FS_ERR_NOT_FOUND;
    }
    if (!fs_sim_wait(&g, 60)) fs_sim_stop_all(&g, 1, 1);
    FILE *png = fopen(path, "rb");
    if (!WIFEXITED(g.status) || WEXITSTATUS(g.status) != 0 || !png) {
        char why[128];
        fs_sim_describe_exit(&g, why, sizeof why);
        fs_log_error("gnuplot %s and drew no %s (is gnuplot installed? Debian: gnuplot-nox); see %s", why,
                     path, log_path);
        if (png) fclose(png);
        return FS_ERR_NOT_FOUND;
    }
    fclose(png);
    return FS_OK;
}
