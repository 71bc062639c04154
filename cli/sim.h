/*
 * cli/sim.h — the pieces of `fedseg sim` (cli/cmd_sim.c) that are worth
 * testing on their own:
 *   sim_metrics.c  reading the aggregator's per-round metrics lines
 *                  (aggregator/round.c writes them) and the node's final line;
 *   sim_proc.c     child processes: fork + exec of this same binary with its
 *                  output in a log file, reaping, and stopping them all
 *                  (SIGTERM, a grace period, then SIGKILL) so that none outlives
 *                  the simulation;
 *   sim_plot.c     the Dice-per-round table as a gnuplot data file and script,
 *                  and the PNG drawn from them.
 * No gRPC here: the simulation process never talks to the federation itself,
 * it only starts `fedseg aggregator` and `fedseg node` and reads their files.
 *
 * Tested by tests/test_sim_metrics.c (parsers) and tests/test_sim*.sh (the
 * whole command).
 */
#ifndef FS_SIM_H
#define FS_SIM_H

#include <stddef.h>
#include <sys/types.h>
#include "kernels/status.h"

#define FS_SIM_MAX_SITES 32
#define FS_SIM_NAME_LEN 64

/* One site's entry in a round's metrics line. */
typedef struct {
    char name[FS_SIM_NAME_LEN];
    int reported;        /* 1: in "sites" (its update counted); 0: in "missing" */
    double dice_wt;      /* Dice WT of the global model it received (NaN: none) */
    double train_loss;   /* NaN when absent                                     */
    double bytes;        /* bytes_received + bytes_sent                         */
} fs_sim_site_stat;

/* One metrics line: {"round":R,"wall_seconds":S,"closed_by":"...",
 * "sites_selected":N,"sites_reported":N,"num_samples":N,"sites":[{...}],
 * "missing":[{...}]}. Keys this reader does not know are skipped. */
typedef struct {
    unsigned round;
    double wall_seconds;
    char closed_by[32];
    int sites_selected, sites_reported;
    int nsites;                        /* entries in site[]: reported first */
    fs_sim_site_stat site[FS_SIM_MAX_SITES];
    double bytes;                      /* every entry's bytes, summed       */
} fs_sim_round;

/* Parses one metrics line (without or with its newline). FS_ERR_FORMAT for
 * anything that is not such a JSON object (no "round", a bad value, more
 * than FS_SIM_MAX_SITES entries, trailing bytes); *out is then undefined. */
fs_status fs_sim_parse_metrics(const char *line, fs_sim_round *out);

/* Finds a site's position in r (-1 when it is not there). */
int fs_sim_round_find(const fs_sim_round *r, const char *site);

/* Parses the node's last line, "federation finished after round R: final
 * global model, held-out Dice WT a TC b ET c ...". FS_ERR_FORMAT otherwise. */
fs_status fs_sim_parse_final(const char *line, unsigned *round, double dice[3]);

/* Scans a node's log for its final line (the last one wins). FS_ERR_NOT_FOUND
 * when the log holds none, FS_ERR_IO when it cannot be read. */
fs_status fs_sim_read_final(const char *log_path, unsigned *round, double dice[3]);

/* ---- child processes ----------------------------------------------------- */

typedef struct {
    char name[FS_SIM_NAME_LEN];   /* "aggregator", "site_1", ...            */
    char log[4096];               /* where its stdout and stderr go         */
    pid_t pid;                    /* 0 before it started                    */
    int running;                  /* 1 from spawn until reaped              */
    int status;                   /* waitpid status once reaped             */
} fs_sim_child;

/* Starts argv (argv[0] is only the name shown by ps) as a child running
 * /proc/self/exe — this same fedseg binary — in folder cwd (NULL = the current
 * one), or the program `prog` found on PATH when prog is not NULL. Its stdin
 * is /dev/null; stdout and stderr are appended to c->log. The child gets its
 * own process group (a terminal's Ctrl-C reaches only the simulation, which
 * then stops the children in order) and SIGTERM when the simulation dies, so
 * it never outlives it. FS_ERR_IO (logged) when the log cannot be opened or
 * fork fails; an exec failure shows as exit status 127 with the reason in the
 * log; FS_ERR_NOT_FOUND (logged) when prog is not on PATH. */
fs_status fs_sim_spawn(fs_sim_child *c, const char *prog, char *const argv[], const char *cwd);

/* Reaps children that have ended (never blocks). Returns the index of one
 * that ended in this call, or -1 when none did; call until -1. */
int fs_sim_reap(fs_sim_child *c, int n);

/* Blocks until child c ends or timeout_s passes; 1 when it ended. */
int fs_sim_wait(fs_sim_child *c, double timeout_s);

/* Stops every running child: SIGTERM, then SIGKILL to those still running
 * after grace_s seconds; returns once all are reaped. Returns how many needed
 * SIGKILL. */
int fs_sim_stop_all(fs_sim_child *c, int n, double grace_s);

/* "exited with status 3", "was killed by signal 9 (Killed)", ... */
void fs_sim_describe_exit(const fs_sim_child *c, char *buf, size_t cap);

/* Prints the last `lines` lines of a file to stderr, each indented. */
void fs_sim_print_tail(const char *path, int lines);

/* ---- plot ------------------------------------------------------------------ */

/* Dice WT per site per round: dice[k * nsites + s] for the global model after
 * k completed rounds, k = 0..rounds (NaN when not known). */
typedef struct {
    int nsites, rounds;
    const char *const *sites;
    const double *dice;
} fs_sim_curve;

/* Writes DIR/dice.dat and DIR/dice.gp, then runs `gnuplot dice.gp` in DIR
 * (its output in log_path) to draw DIR/dice.png (pngcairo when gnuplot has
 * it, else png). FS_ERR_IO (logged) when a file cannot be written,
 * FS_ERR_NOT_FOUND (logged) when gnuplot is missing or fails. */
fs_status fs_sim_plot(const char *dir, const fs_sim_curve *curve, const char *log_path);

#endif
