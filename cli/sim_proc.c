/*
 * cli/sim_proc.c — the child processes of `fedseg sim` (cli/sim.h): fork +
 * exec with the output in a log file, reaping without blocking, stopping all
 * of them so that none is left behind.
 *
 * WARNING: the simulation may hold other threads when it forks (OpenMP from
 * the synthetic data generator), so between fork and exec the child calls only
 * async-signal-safe functions (setpgid, prctl, dup2, sigaction, chdir, execv,
 * write, _exit) and allocates nothing; a program's PATH search is done before
 * the fork.
 *
 * No orphans: every child gets PR_SET_PDEATHSIG = SIGTERM (the kernel signals
 * it when the simulation dies, even by SIGKILL), checked against the race
 * where the parent died before the prctl; fs_sim_stop_all sends SIGTERM, waits
 * a grace period and SIGKILLs the rest, and reaps everything.
 *
 * Tested by tests/test_sim.sh and tests/test_sim_stop.sh (Ctrl-C and a
 * child killed under the simulation: no process left).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "cli/sim.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* In the child: write a message to fd 2 without allocating. */
static void child_say(const char *a, const char *b)
{
    ssize_t r = write(2, a, strlen(a));
    r = write(2, b, strlen(b));
    r = write(2, "\n", 1);
    (void)r;
}

/* The file prog names: itself when it holds a '/', else the first
 * executable PATH entry holding it. 0 when found. Done before fork, so the
 * child needs no search (execvp may allocate). */
static int find_program(const char *prog, char *out, size_t cap)
{
    if (strchr(prog, '/')) {
        snprintf(out, cap, "%s", prog);
        return access(out, X_OK) == 0 ? 0 : -1;
    }
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        if (snprintf(out, cap, "%.*s/%s", (int)n, n ? path : ".", prog) < (int)cap && access(out, X_OK) == 0)
            return 0;
        path += n + (path[n] == ':');
    }
    return -1;
}

fs_status fs_sim_spawn(fs_sim_child *c, const char *prog, char *const argv[], const char *cwd)
{
    char exe[4096] = "/proc/self/exe";
    if (prog && find_program(prog, exe, sizeof exe) != 0) {
        fs_log_error("cannot start %s: no program '%s' on PATH", c->name, prog);
        return FS_ERR_NOT_FOUND;
    }
    int out = open(c->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out < 0) {
        fs_log_error("%s: cannot open for writing: %s", c->log, strerror(errno));
        return FS_ERR_IO;
    }
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        fs_log_error("/dev/null: cannot open: %s", strerror(errno));
        close(out);
        return FS_ERR_IO;
    }
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fs_log_error("cannot start %s: fork: %s", c->name, strerror(errno));
        close(out);
        close(in);
        return FS_ERR_IO;
    }
    if (pid == 0) {
        setpgid(0, 0);
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(126);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigemptyset(&sa.sa_mask);
        for (int s = 1; s < NSIG; s++)
            if (s != SIGKILL && s != SIGSTOP) sigaction(s, &sa, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0) _exit(126);
        if (cwd && chdir(cwd) != 0) {
            child_say("fedseg sim: cannot enter folder ", cwd);
            _exit(126);
        }
        execv(exe, argv);
        child_say("fedseg sim: exec failed: ", strerror(errno));
        _exit(127);
    }
    close(out);
    close(in);
    c->pid = pid;
    c->running = 1;
    c->status = 0;
    return FS_OK;
}

int fs_sim_reap(fs_sim_child *c, int n)
{
    for (int i = 0; i < n; i++) {
        if (!c[i].running) continue;
        int status;
        pid_t r = waitpid(c[i].pid, &status, WNOHANG);
        if (r == c[i].pid || (r < 0 && errno == ECHILD)) {
            c[i].running = 0;
            c[i].status = r == c[i].pid ? status : 0;
            return i;
        }
    }
    return -1;
}

int fs_sim_wait(fs_sim_child *c, double timeout_s)
{
    double t_end = now_s() + timeout_s;
    while (c->running) {
        if (fs_sim_reap(c, 1) >= 0) return 1;
        if (now_s() >= t_end) return 0;
        sleep_ms(50);
    }
    return 1;
}

int fs_sim_stop_all(fs_sim_child *c, int n, double grace_s)
{
    while (fs_sim_reap(c, n) >= 0) {}
    for (int i = 0; i < n; i++)
        if (c[i].running) kill(c[i].pid, SIGTERM);
    double t_end = now_s() + grace_s;
    for (;;) {
        while (fs_sim_reap(c, n) >= 0) {}
        int left = 0;
        for (int i = 0; i < n; i++) left += c[i].running;
        if (!left || now_s() >= t_end) break;
        sleep_ms(50);
    }
    int killed = 0;
    for (int i = 0; i < n; i++) {
        if (!c[i].running) continue;
        fs_log_warn("%s (pid %ld) did not stop within %.0f s of SIGTERM: SIGKILL", c[i].name, (long)c[i].pid,
                    grace_s);
        kill(c[i].pid, SIGKILL);
        killed++;
    }
    for (int i = 0; i < n; i++) {
        if (!c[i].running) continue;
        int status;
        while (waitpid(c[i].pid, &status, 0) < 0 && errno == EINTR) {}
        c[i].running = 0;
        c[i].status = status;
    }
    return killed;
}

void fs_sim_describe_exit(const fs_sim_child *c, char *buf, size_t cap)
{
    if (c->running) snprintf(buf, cap, "is still running");
    else if (WIFEXITED(c->status)) snprintf(buf, cap, "exited with status %d", WEXITSTATUS(c->status));
    else if (WIFSIGNALED(c->status))
        snprintf(buf, cap, "was killed by signal %d (%s)", WTERMSIG(c->status), strsignal(WTERMSIG(c->status)));
    else snprintf(buf, cap, "ended (wait status %d)", c->status);
}

void fs_sim_print_tail(const char *path, int lines)
{
    FILE *f = fopen(path, "r");
    if (!f) return;
    enum { KEEP = 16, LEN = 400 };
    static char ring[KEEP][LEN];
    if (lines > KEEP) lines = KEEP;
    long n = 0;
    while (fgets(ring[n % KEEP], LEN, f)) {
        size_t l = strlen(ring[n % KEEP]);
        if (l && ring[n % KEEP][l - 1] == '\n') ring[n % KEEP][l - 1] = 0;
        n++;
    }
    fclose(f);
    for (long i = n > lines ? n - lines : 0; i < n; i++) fprintf(stderr, "    | %s\n", ring[i % KEEP]);
}
