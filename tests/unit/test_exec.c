/*
 * test_exec.c — unit tests for core/exec.c: capture, exit codes, file
 * redirection, limits (stdout size, timeout, SIGKILL after the grace, rlimits),
 * command not found, cancel, many concurrent children, a responsive loop, the
 * child's clean state (fds, signals, session), the SIGCHLD fallback, and no
 * zombies or leaked fds afterwards. Callbacks are counted.
 * Confinement (test_confined): a clean environment, the rlimits as the child
 * sees them (/proc/self/limits), inputs passed by descriptor from a directory
 * the tool cannot enter, and, as root, the drop to nobody (the server's own
 * threads keep their credentials: the drop uses raw syscalls).
 */
#include "core/err.h"
#include "core/exec.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static struct event_base *base;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000 + ts.tv_nsec / 1e6;
}

/* Runs the loop until *counter reaches target or 30 s pass. */
static void run_until(const int *counter, int target)
{
    double deadline = now_ms() + 30000;
    while (*counter < target && now_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
}

/* ---- a result copied out of the callback (the original is borrowed) ---- */

typedef struct {
    int calls;
    sl_exec_t *handle;
    int err, exit_status, term_signal, sys_errno;
    char step[16];
    pid_t pid;
    int have_out;
    char *out;
    size_t out_len;
    char *errs;
    size_t err_len;
    int err_trunc;
    int64_t wall_ms, cpu_ms;
} res_t;

static void res_free(res_t *r)
{
    free(r->out);
    free(r->errs);
    memset(r, 0, sizeof *r);
}

static char *dup_bytes(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

static void record_cb(sl_exec_t *x, const sl_exec_result_t *res, void *arg)
{
    res_t *r = arg;
    r->calls++;
    r->handle = x;
    r->err = res->err;
    r->exit_status = res->exit_status;
    r->term_signal = res->term_signal;
    r->sys_errno = res->sys_errno;
    snprintf(r->step, sizeof r->step, "%s", res->failed_step ? res->failed_step : "");
    r->pid = res->pid;
    r->have_out = res->stdout_data != NULL;
    if (res->stdout_data) {
        free(r->out);
        r->out = dup_bytes(res->stdout_data, res->stdout_len);
        r->out_len = res->stdout_len;
    }
    free(r->errs);
    r->errs = dup_bytes(res->stderr_data, res->stderr_len);
    r->err_len = res->stderr_len;
    r->err_trunc = res->stderr_truncated;
    r->wall_ms = res->wall_ms;
    r->cpu_ms = res->cpu_ms;
    sl_exec_cancel(x); /* documented no-op inside the callback */
}

/* Starts argv with opts (argv filled in), checks no synchronous callback, runs
 * the loop until the callback, checks it ran exactly once and reaped. */
static int run(const char *const *argv, sl_exec_opts_t *o, res_t *r)
{
    memset(r, 0, sizeof *r);
    o->argv = argv;
    sl_exec_t *x = NULL;
    int rc = sl_exec_start(base, o, record_cb, r, &x);
    if (rc)
        return rc;
    CHECK(x != NULL);
    CHECK(r->calls == 0); /* never from inside start */
    run_until(&r->calls, 1);
    CHECK(r->calls == 1);
    CHECK(r->handle == x);
    event_base_loop(base, EVLOOP_NONBLOCK); /* a second callback would show here */
    CHECK(r->calls == 1);
    return 0;
}

/* The pid was ours and is reaped: no zombie left. */
static int reaped(pid_t pid)
{
    errno = 0;
    return pid > 0 && waitpid(pid, NULL, WNOHANG) == -1 && errno == ECHILD;
}

/* A process that is not our child: gone, or a zombie (dead, its parent reaps). */
static int dead_within(pid_t pid, int ms)
{
    double deadline = now_ms() + ms;
    for (;;) {
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (!f)
            return 1;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *rp = strrchr(buf, ')');
        if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'))
            return 1;
        if (now_ms() > deadline)
            return 0;
        usleep(10 * 1000);
    }
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* ---- tests ---- */

static void test_echo(void)
{
    const char *argv[] = {"echo", "hello", NULL};
    sl_exec_opts_t o = {0};
    res_t r;
    CHECK(run(argv, &o, &r) == 0);
    CHECK(r.err == 0);
    CHECK(r.exit_status == 0);
    CHECK(r.term_signal == 0);
    CHECK(r.have_out);
    CHECK(r.out_len == 6 && r.out && memcmp(r.out, "hello\n", 6) == 0);
    CHECK(r.err_len == 0);
    CHECK(r.wall_ms >= 0 && r.wall_ms < 5000);
    CHECK(reaped(r.pid));
    res_free(&r);
}

static void test_exit_status_and_stderr(void)
{
    const char *argv[] = {"sh", "-c", "exit 3", NULL};
    sl_exec_opts_t o = {0};
    res_t r;
    CHECK(run(argv, &o, &r) == 0);
    CHECK(r.err == 0);
    CHECK(r.exit_status == 3);
    CHECK(reaped(r.pid));
    res_free(&r);

    const char *argv2[] = {"sh", "-c", "echo out; echo oops >&2; exit 1", NULL};
    sl_exec_opts_t o2 = {0};
    CHECK(run(argv2, &o2, &r) == 0);
    CHECK(r.err == 0 && r.exit_status == 1);
    CHECK(r.out && strcmp(r.out, "out\n") == 0);
    CHECK(r.errs && strcmp(r.errs, "oops\n") == 0);
    CHECK(!r.err_trunc);
    res_free(&r);

    /* stderr beyond max_stderr: the tail is kept, no error */
    const char *argv3[] = {"sh", "-c", "printf 0123456789 >&2; printf abcdef >&2", NULL};
    sl_exec_opts_t o3 = {.max_stderr = 10};
    CHECK(run(argv3, &o3, &r) == 0);
    CHECK(r.err == 0 && r.exit_status == 0);
    CHECK(r.err_len == 10 && r.errs && strcmp(r.errs, "6789abcdef") == 0);
    CHECK(r.err_trunc);
    res_free(&r);
}

static void test_files(void)
{
    char in[] = "/tmp/test_exec_in_XXXXXX";
    char outp[] = "/tmp/test_exec_out_XXXXXX";
    int ifd = mkstemp(in), ofd = mkstemp(outp);
    CHECK(ifd >= 0 && ofd >= 0);
    close(ofd);
    size_t n = 300 * 1000;
    unsigned char *data = malloc(n);
    unsigned seed = 12345;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        data[i] = (unsigned char)(seed >> 16);
    }
    CHECK(write(ifd, data, n) == (ssize_t)n);
    close(ifd);

    const char *argv[] = {"cat", NULL};
    sl_exec_opts_t o = {.stdin_path = in, .stdout_path = outp};
    res_t r;
    CHECK(run(argv, &o, &r) == 0);
    CHECK(r.err == 0 && r.exit_status == 0);
    CHECK(!r.have_out); /* stdout went to the file */
    FILE *f = fopen(outp, "rb");
    unsigned char *back = malloc(n + 1);
    size_t got = f ? fread(back, 1, n + 1, f) : 0;
    if (f)
        fclose(f);
    CHECK(got == n);
    CHECK(got == n && memcmp(back, data, n) == 0);
    struct stat st;
    CHECK(stat(outp, &st) == 0 && (st.st_mode & 0777) == 0600);
    res_free(&r);

    /* missing stdin file: a setup failure, reported as a value */
    const char *argv2[] = {"cat", NULL};
    sl_exec_opts_t o2 = {.stdin_path = "/nonexistent/dir/in"};
    CHECK(run(argv2, &o2, &r) == 0);
    CHECK(r.err == SL_EIO);
    CHECK(strcmp(r.step, "stdin") == 0);
    CHECK(r.sys_errno == ENOENT);
    CHECK(r.exit_status == -1);
    CHECK(reaped(r.pid));
    res_free(&r);

    free(data);
    free(back);
    unlink(in);
    unlink(outp);
}

static void test_too_big(void)
{
    const char *argv[] = {"head", "-c", "5000000", "/dev/zero", NULL};
    sl_exec_opts_t o = {.max_stdout = 1024 * 1024};
    res_t r;
    CHECK(run(argv, &o, &r) == 0);
    CHECK(r.err == SL_ETOOBIG);
    CHECK(r.out_len == 1024 * 1024); /* the head up to the limit */
    CHECK(r.term_signal == SIGKILL || r.term_signal == SIGPIPE);
    CHECK(reaped(r.pid));
    CHECK(kill(r.pid, 0) == -1 && errno == ESRCH);
    res_free(&r);

    /* the whole group is killed, not just the writer: sh would sleep 10 s */
    const char *argv2[] = {"sh", "-c", "head -c 5000000 /dev/zero; sleep 10", NULL};
    sl_exec_opts_t o2 = {.max_stdout = 1024 * 1024};
    double t0 = now_ms();
    CHECK(run(argv2, &o2, &r) == 0);
    CHECK(r.err == SL_ETOOBIG);
    CHECK(r.term_signal == SIGKILL);
    CHECK(now_ms() - t0 < 3000);
    CHECK(reaped(r.pid));
    res_free(&r);
}

static void test_timeout(void)
{
    const char *argv[] = {"sleep", "10", NULL};
    sl_exec_opts_t o = {.timeout_ms = 200};
    res_t r;
    double t0 = now_ms();
    CHECK(run(argv, &o, &r) == 0);
    double took = now_ms() - t0;
    CHECK(r.err == SL_ETIMEDOUT);
    CHECK(r.term_signal == SIGTERM);
    CHECK(r.exit_status == -1);
    CHECK(took >= 190 && took < 2500);
    CHECK(reaped(r.pid));
    res_free(&r);

    /* a child that ignores SIGTERM gets SIGKILL after the grace */
    const char *argv2[] = {"sh", "-c", "trap '' TERM; sleep 10; echo survived", NULL};
    sl_exec_opts_t o2 = {.timeout_ms = 200};
    t0 = now_ms();
    CHECK(run(argv2, &o2, &r) == 0);
    took = now_ms() - t0;
    CHECK(r.err == SL_ETIMEDOUT);
    CHECK(r.term_signal == SIGKILL);
    CHECK(took >= 200 + SL_EXEC_KILL_GRACE_MS - 50 && took < 200 + SL_EXEC_KILL_GRACE_MS + 1500);
    CHECK(r.out && strstr(r.out, "survived") == NULL);
    CHECK(reaped(r.pid));
    res_free(&r);

    /* grandchildren in the group die too */
    const char *argv3[] = {"sh", "-c", "sleep 30 & echo $!; wait", NULL};
    sl_exec_opts_t o3 = {.timeout_ms = 300};
    CHECK(run(argv3, &o3, &r) == 0);
    CHECK(r.err == SL_ETIMEDOUT);
    long gc = r.out ? strtol(r.out, NULL, 10) : 0;
    CHECK(gc > 0);
    if (gc > 0)
        CHECK(dead_within((pid_t)gc, 2000));
    res_free(&r);
}

static void test_linger(void)
{
    /* The leader exits at once, a background child holds stdout: after the
     * linger it is killed and the run completes with the leader's status. */
    const char *argv[] = {"sh", "-c", "sleep 30 & echo $!; exit 4", NULL};
    sl_exec_opts_t o = {0};
    res_t r;
    double t0 = now_ms();
    CHECK(run(argv, &o, &r) == 0);
    double took = now_ms() - t0;
    CHECK(r.err == 0 && r.exit_status == 4);
    CHECK(took >= SL_EXEC_LINGER_MS - 100 && took < SL_EXEC_LINGER_MS + 2000);
    long gc = r.out ? strtol(r.out, NULL, 10) : 0;
    CHECK(gc > 0);
    if (gc > 0)
        CHECK(dead_within((pid_t)gc, 2000));
    res_free(&r);

    /* output written after the leader exited, within the linger, is kept:
     * completion waits for EOF, not just for the exit */
    const char *argv2[] = {"sh", "-c", "(sleep 0.3; echo late) &", NULL};
    sl_exec_opts_t o2 = {0};
    CHECK(run(argv2, &o2, &r) == 0);
    CHECK(r.err == 0 && r.exit_status == 0);
    CHECK(r.out && strcmp(r.out, "late\n") == 0);
    res_free(&r);

    /* a leftover that closed its pipes is killed when the run completes */
    const char *argv3[] = {"sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!", NULL};
    sl_exec_opts_t o3 = {0};
    t0 = now_ms();
    CHECK(run(argv3, &o3, &r) == 0);
    CHECK(now_ms() - t0 < SL_EXEC_LINGER_MS); /* no linger: the pipes closed */
    CHECK(r.err == 0 && r.exit_status == 0);
    gc = r.out ? strtol(r.out, NULL, 10) : 0;
    CHECK(gc > 0);
    if (gc > 0)
        CHECK(dead_within((pid_t)gc, 2000));
    res_free(&r);
}

static void test_not_found(void)
{
    const char *argv[] = {"sl-no-such-command-xyz", "arg", NULL};
    sl_exec_opts_t o = {0};
    res_t r;
    CHECK(run(argv, &o, &r) == 0);
    CHECK(r.err == SL_ENOTFOUND);
    CHECK(strcmp(r.step, "exec") == 0);
    CHECK(r.sys_errno == ENOENT);
    CHECK(r.exit_status == -1); /* not the ambiguous 127 */
    CHECK(reaped(r.pid));
    res_free(&r);

    const char *argv2[] = {"/nonexistent/bin/tool", NULL};
    sl_exec_opts_t o2 = {0};
    CHECK(run(argv2, &o2, &r) == 0);
    CHECK(r.err == SL_ENOTFOUND);
    res_free(&r);

    /* found but not executable: not "not found" */
    char path[] = "/tmp/test_exec_noexec_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    const char *argv3[] = {path, NULL};
    sl_exec_opts_t o3 = {0};
    CHECK(run(argv3, &o3, &r) == 0);
    CHECK(r.err == SL_EIO);
    CHECK(r.sys_errno == EACCES);
    unlink(path);
    res_free(&r);

    /* a bad cwd */
    const char *argv4[] = {"true", NULL};
    sl_exec_opts_t o4 = {.cwd = "/nonexistent/dir"};
    CHECK(run(argv4, &o4, &r) == 0);
    CHECK(r.err == SL_EIO && strcmp(r.step, "chdir") == 0);
    res_free(&r);
}

static void test_rlimits(void)
{
    res_t r;
    if (access("/usr/bin/python3", X_OK) == 0) {
        const char *argv[] = {"/usr/bin/python3", "-c", "x = bytearray(200 * 1024 * 1024)", NULL};
        sl_exec_opts_t ok = {0};
        CHECK(run(argv, &ok, &r) == 0); /* the control: it works unlimited */
        CHECK(r.err == 0 && r.exit_status == 0);
        res_free(&r);
        sl_exec_opts_t o = {.rlimit_as_bytes = 50u * 1024 * 1024};
        CHECK(run(argv, &o, &r) == 0);
        CHECK(r.err == 0);
        CHECK(r.exit_status != 0); /* MemoryError (exit 1) or a signal (-1) */
        CHECK(r.exit_status > 0 || r.term_signal != 0);
        CHECK(reaped(r.pid));
        res_free(&r);
    } else {
        CHECK_SKIPPED("no /usr/bin/python3: the address-space limit is not tested");
    }

    /* CPU: SIGXCPU at the soft limit */
    const char *argv2[] = {"sh", "-c", "while :; do :; done", NULL};
    /* A wall timeout far past 1 s of CPU: on a loaded machine (load 9 on 2 cores)
     * the loop gets a fraction of a core, and a 10 s timeout killed it first. */
    sl_exec_opts_t o2 = {.rlimit_cpu_s = 1, .timeout_ms = 60000};
    CHECK(run(argv2, &o2, &r) == 0);
    CHECK(r.err == 0);
    CHECK(r.term_signal == SIGXCPU || r.term_signal == SIGKILL);
    CHECK(r.cpu_ms >= 900 && r.cpu_ms < 3000);
    res_free(&r);

    /* FSIZE: SIGXFSZ when stdout (a file) grows past it */
    char outp[] = "/tmp/test_exec_fsize_XXXXXX";
    int fd = mkstemp(outp);
    close(fd);
    const char *argv3[] = {"head", "-c", "100000", "/dev/zero", NULL};
    sl_exec_opts_t o3 = {.stdout_path = outp, .rlimit_fsize_bytes = 4096};
    CHECK(run(argv3, &o3, &r) == 0);
    CHECK(r.term_signal == SIGXFSZ);
    struct stat st;
    CHECK(stat(outp, &st) == 0 && st.st_size <= 4096);
    unlink(outp);
    res_free(&r);
}

/* ---- confinement ---- */

/* The value of /proc/self/limits row `name` (soft limit column), -2 if absent,
 * -1 for "unlimited". */
static long long limit_of(const char *text, const char *name)
{
    const char *p = strstr(text, name);
    if (!p)
        return -2;
    p += strlen(name);
    while (*p == ' ')
        p++;
    if (strncmp(p, "unlimited", 9) == 0)
        return -1;
    return strtoll(p, NULL, 10);
}

/* A thread that only waits: its credentials must survive the child's drop. */
static void *idle_thread(void *arg)
{
    volatile int *stop = arg;
    while (!*stop)
        usleep(1000);
    return NULL;
}

static long task_uid(pid_t tid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *u = strstr(buf, "\nUid:");
    return u ? strtol(u + 5, NULL, 10) : -1;
}

static pid_t idle_tid;
static void *idle_thread_tid(void *arg)
{
    idle_tid = (pid_t)syscall(SYS_gettid);
    return idle_thread(arg);
}

static void test_confined(void)
{
    res_t r;

    /* 1. the environment is exactly what was given: nothing of the server's */
    setenv("SLUICE_ADMIN_KEY", "test-secret", 1);
    setenv("DATABASE_URL", "postgres://secret", 1);
    const char *env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LC_ALL=C.UTF-8", NULL};
    const char *argv_env[] = {"env", NULL};
    sl_exec_opts_t o = {.clear_env = 1, .env = env};
    CHECK(run(argv_env, &o, &r) == 0);
    CHECK(r.err == 0 && r.exit_status == 0);
    CHECK_STREQ(r.out, "PATH=/usr/local/bin:/usr/bin:/bin\nHOME=/tmp\nLC_ALL=C.UTF-8\n");
    CHECK(r.out && strstr(r.out, "secret") == NULL);
    res_free(&r);
    /* the control: without clear_env the secret is inherited */
    sl_exec_opts_t inherit = {0};
    CHECK(run(argv_env, &inherit, &r) == 0);
    CHECK(r.out && strstr(r.out, "SLUICE_ADMIN_KEY=test-secret") != NULL);
    res_free(&r);
    unsetenv("SLUICE_ADMIN_KEY");
    unsetenv("DATABASE_URL");

    /* 2. the rlimits as the child sees them */
    const char *argv_lim[] = {"cat", "/proc/self/limits", NULL};
    sl_exec_opts_t ol = {.rlimit_as_bytes = 1ull << 30,
                         .rlimit_cpu_s = 60,
                         .rlimit_fsize_bytes = 256ull << 20,
                         .rlimit_nofile = 256,
                         .no_core = 1};
    CHECK(run(argv_lim, &ol, &r) == 0);
    CHECK(r.err == 0 && r.exit_status == 0 && r.out != NULL);
    if (r.out) {
        CHECK_EQ(limit_of(r.out, "Max address space"), 1ll << 30);
        CHECK_EQ(limit_of(r.out, "Max cpu time"), 60);
        CHECK_EQ(limit_of(r.out, "Max file size"), 256ll << 20);
        CHECK_EQ(limit_of(r.out, "Max open files"), 256);
        CHECK_EQ(limit_of(r.out, "Max core file size"), 0);
    }
    res_free(&r);
    /* the same through a shell's ulimit (dash and bash: KiB for -v) */
    const char *argv_ul[] = {"sh", "-c", "ulimit -v; ulimit -t; ulimit -n; ulimit -c", NULL};
    CHECK(run(argv_ul, &ol, &r) == 0);
    CHECK_STREQ(r.out, "1048576\n60\n256\n0\n");
    res_free(&r);
    /* over the file size limit: SIGXFSZ, a clean result, nothing left running */
    const char *argv_big[] = {"sh", "-c", "head -c 300000 /dev/zero > big", NULL};
    char dir[] = "/tmp/test_exec_conf_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    sl_exec_opts_t of = {.cwd = dir, .rlimit_fsize_bytes = 65536};
    CHECK(run(argv_big, &of, &r) == 0);
    CHECK(r.err == 0 && r.exit_status != 0); /* the shell reports head's SIGXFSZ */
    char big[64];
    snprintf(big, sizeof big, "%s/big", dir);
    struct stat st;
    CHECK(stat(big, &st) == 0 && st.st_size <= 65536);
    unlink(big);
    res_free(&r);

    /* 3. inputs: the file sits in a 0700 dir; the child gets it as fd 3 */
    char in[80];
    snprintf(in, sizeof in, "%s/input.txt", dir);
    FILE *f = fopen(in, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("hello input\n", f);
        fclose(f);
    }
    chmod(in, 0644);
    const char *inputs[] = {in, NULL};
    const char *argv_in[] = {"cat", "/proc/self/fd/3", NULL};
    sl_exec_opts_t oi = {.inputs = inputs};
    CHECK(run(argv_in, &oi, &r) == 0);
    CHECK(r.err == 0 && r.exit_status == 0);
    CHECK_STREQ(r.out, "hello input\n");
    res_free(&r);
    const char *missing[] = {"/nonexistent/input", NULL};
    sl_exec_opts_t om = {.inputs = missing};
    CHECK(run(argv_in, &om, &r) == 0);
    CHECK(r.err == SL_EIO);
    CHECK_STREQ(r.step, "input");
    CHECK_EQ(r.sys_errno, ENOENT);
    res_free(&r);
    const char *nine[SL_EXEC_MAX_INPUTS + 2];
    for (int i = 0; i <= SL_EXEC_MAX_INPUTS; i++)
        nine[i] = in;
    nine[SL_EXEC_MAX_INPUTS + 1] = NULL;
    sl_exec_opts_t o9 = {.argv = argv_in, .inputs = nine};
    sl_exec_t *x = NULL;
    CHECK(sl_exec_start(base, &o9, record_cb, &r, &x) == SL_EINVAL);

    /* 4. the privilege drop */
    const char *argv_id[] = {"sh", "-c", "id -u; id -g; id -G; cat /proc/self/fd/3", NULL};
    if (geteuid() != 0) {
        /* without the privilege: refused in the child, the tool never runs */
        char mark[96];
        snprintf(mark, sizeof mark, "%s/ran", dir);
        const char *argv_mark[] = {"touch", mark, NULL};
        sl_exec_opts_t od = {.drop_privileges = 1, .uid = 0, .gid = 0};
        CHECK(run(argv_mark, &od, &r) == 0);
        CHECK(r.err == SL_EIO);
        CHECK_STREQ(r.step, "user");
        CHECK(access(mark, F_OK) != 0);
        res_free(&r);
        CHECK_SKIPPED("not root: the drop to an unprivileged user is not tested");
    } else {
        const struct passwd *pw = getpwnam("nobody");
        CHECK(pw != NULL);
        if (pw) {
            volatile int stop = 0;
            pthread_t th;
            CHECK(pthread_create(&th, NULL, idle_thread_tid, (void *)&stop) == 0);
            while (!idle_tid)
                usleep(1000);
            sl_exec_opts_t od = {.drop_privileges = 1, .uid = pw->pw_uid, .gid = pw->pw_gid,
                                 .inputs = inputs, .cwd = "/"};
            chmod(dir, 0700); /* only root may enter: the input still reaches the tool */
            CHECK(run(argv_id, &od, &r) == 0);
            CHECK(r.err == 0);
            CHECK_EQ(r.exit_status, 0);
            char want[128];
            snprintf(want, sizeof want, "%u\n%u\n%u\nhello input\n", (unsigned)pw->pw_uid,
                     (unsigned)pw->pw_gid, (unsigned)pw->pw_gid);
            CHECK_STREQ(r.out, want);
            res_free(&r);
            /* the chdir happens after the drop: a dir the user cannot enter is refused */
            od.cwd = dir;
            CHECK(run(argv_id, &od, &r) == 0);
            CHECK(r.err == SL_EIO);
            CHECK_STREQ(r.step, "chdir");
            CHECK_EQ(r.sys_errno, EACCES);
            res_free(&r);
            /* the control: as nobody, the path itself is out of reach */
            const char *argv_direct[] = {"cat", in, NULL};
            sl_exec_opts_t oc = {.drop_privileges = 1, .uid = pw->pw_uid, .gid = pw->pw_gid};
            CHECK(run(argv_direct, &oc, &r) == 0);
            CHECK(r.err == 0 && r.exit_status != 0);
            res_free(&r);
            /* the server's threads keep root */
            CHECK_EQ(geteuid(), 0);
            CHECK_EQ(getuid(), 0);
            CHECK_EQ(task_uid(idle_tid), 0);
            stop = 1;
            pthread_join(th, NULL);
        }
    }
    unlink(in);
    rmdir(dir);
}

/* cancel from a timer callback, twice */
static void cancel_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_exec_t *x = arg;
    sl_exec_cancel(x);
    sl_exec_cancel(x);
}

static void test_cancel(void)
{
    const char *argv[] = {"sleep", "10", NULL};
    sl_exec_opts_t o = {.argv = argv, .timeout_ms = 5000};
    res_t r;
    memset(&r, 0, sizeof r);
    sl_exec_t *x = NULL;
    double t0 = now_ms();
    CHECK(sl_exec_start(base, &o, record_cb, &r, &x) == 0);
    struct event *t = evtimer_new(base, cancel_timer_cb, x);
    struct timeval tv = {0, 50 * 1000};
    evtimer_add(t, &tv);
    run_until(&r.calls, 1);
    CHECK(r.calls == 1);
    CHECK(r.err == SL_ECANCELED);
    CHECK(r.term_signal == SIGKILL);
    CHECK(now_ms() - t0 < 2000);
    CHECK(reaped(r.pid));
    event_free(t);
    /* the loop has nothing more for it */
    for (int i = 0; i < 5; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(r.calls == 1);
    res_free(&r);

    /* cancel right after start: the callback still comes later, once */
    CHECK(sl_exec_start(base, &o, record_cb, &r, &x) == 0);
    sl_exec_cancel(x);
    CHECK(r.calls == 0);
    run_until(&r.calls, 1);
    CHECK(r.calls == 1 && r.err == SL_ECANCELED);
    CHECK(reaped(r.pid));
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(r.calls == 1);
    res_free(&r);

    /* cancel after the leader exited while a grandchild holds the pipe */
    const char *argv2[] = {"sh", "-c", "sleep 30 &", NULL};
    sl_exec_opts_t o2 = {.argv = argv2};
    CHECK(sl_exec_start(base, &o2, record_cb, &r, &x) == 0);
    pid_t pid = sl_exec_pid(x);
    for (int i = 0; i < 100; i++) { /* wait for the leader to exit (it is unreaped) */
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid)
            break;
        usleep(10 * 1000);
    }
    event_base_loop(base, EVLOOP_NONBLOCK); /* let the module see the exit */
    CHECK(r.calls == 0);
    sl_exec_cancel(x);
    CHECK(r.calls == 0);
    run_until(&r.calls, 1);
    CHECK(r.calls == 1 && r.err == SL_ECANCELED && r.exit_status == 0);
    CHECK(reaped(pid));
    res_free(&r);
}

#define NCONC 50
static int conc_calls, conc_ok;
static pid_t conc_pids[NCONC];

static void conc_cb(sl_exec_t *x, const sl_exec_result_t *res, void *arg)
{
    int i = (int)(long)arg;
    conc_calls++;
    conc_pids[i] = res->pid;
    if (res->err == 0 && res->exit_status == 0)
        conc_ok++;
}

static void test_concurrent(int n)
{
    conc_calls = conc_ok = 0;
    const char *argv[] = {"true", NULL};
    sl_exec_opts_t o = {.argv = argv, .timeout_ms = 10000};
    int started = 0;
    for (int i = 0; i < n; i++) {
        sl_exec_t *x;
        if (sl_exec_start(base, &o, conc_cb, (void *)(long)i, &x) == 0)
            started++;
    }
    CHECK(started == n);
    CHECK(conc_calls == 0);
    run_until(&conc_calls, n);
    CHECK(conc_calls == n);
    CHECK(conc_ok == n);
    int all_reaped = 1;
    for (int i = 0; i < n; i++)
        all_reaped &= reaped(conc_pids[i]);
    CHECK(all_reaped);
}

static int ticks;
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    ticks++;
}

static void test_responsive(void)
{
    struct event *t = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 10 * 1000};
    ticks = 0;
    evtimer_add(t, &tv);
    const char *argv[] = {"sleep", "1", NULL};
    sl_exec_opts_t o = {0};
    res_t r;
    CHECK(run(argv, &o, &r) == 0);
    CHECK(r.err == 0 && r.exit_status == 0);
    CHECK(r.wall_ms >= 950);
    CHECK(ticks >= 50);
    event_free(t);
    res_free(&r);
}

static void test_child_state(void)
{
    /* env additions, cwd */
    const char *argv[] = {"sh", "-c", "printf '%s:%s' \"$SL_T_FOO\" \"$PWD\"", NULL};
    const char *env[] = {"SL_T_FOO=bar baz", NULL};
    sl_exec_opts_t o = {.env = env, .cwd = "/tmp"};
    res_t r;
    CHECK(run(argv, &o, &r) == 0);
    CHECK(r.out && strcmp(r.out, "bar baz:/tmp") == 0);
    res_free(&r);

    /* clear_env: only the additions (PATH falls back to /bin:/usr/bin) */
    const char *argv2[] = {"env", NULL};
    const char *env2[] = {"A=1", NULL};
    sl_exec_opts_t o2 = {.env = env2, .clear_env = 1};
    CHECK(run(argv2, &o2, &r) == 0);
    CHECK(r.out && strcmp(r.out, "A=1\n") == 0);
    res_free(&r);

    /* no inherited fds: leak one without CLOEXEC on purpose */
    int leak = open("/dev/null", O_RDONLY);
    CHECK(leak >= 3);
    const char *argv3[] = {"ls", "/proc/self/fd", NULL};
    sl_exec_opts_t o3 = {0};
    CHECK(run(argv3, &o3, &r) == 0);
    CHECK(r.out && strcmp(r.out, "0\n1\n2\n3\n") == 0); /* 3 is ls's own directory */
    close(leak);
    res_free(&r);

    /* signals: ignored and blocked in the parent, default and unblocked in the child */
    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, &old_sa);
    sigset_t set, old_set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &old_set);
    const char *argv4[] = {"grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status", NULL};
    sl_exec_opts_t o4 = {0};
    CHECK(run(argv4, &o4, &r) == 0);
    CHECK(r.out && strcmp(r.out, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n") == 0);
    if (r.out && strcmp(r.out, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n") != 0)
        fprintf(stderr, "child signal state: %s", r.out);
    sigprocmask(SIG_SETMASK, &old_set, NULL);
    sigaction(SIGPIPE, &old_sa, NULL);
    res_free(&r);

    /* own session and process group */
    const char *argv5[] = {"cat", "/proc/self/stat", NULL};
    sl_exec_opts_t o5 = {0};
    CHECK(run(argv5, &o5, &r) == 0);
    long pgrp = 0, sid = 0;
    const char *rp = r.out ? strrchr(r.out, ')') : NULL;
    CHECK(rp && sscanf(rp + 2, "%*c %*d %ld %ld", &pgrp, &sid) == 2);
    CHECK(pgrp == r.pid && sid == r.pid);
    res_free(&r);
}

static void test_invalid(void)
{
    int calls = 0;
    sl_exec_t *x = NULL;
    sl_exec_opts_t o = {0};
    CHECK(sl_exec_start(base, &o, record_cb, &calls, &x) == SL_EINVAL);
    const char *empty[] = {"", NULL};
    o.argv = empty;
    CHECK(sl_exec_start(base, &o, record_cb, &calls, &x) == SL_EINVAL);
    const char *argv[] = {"true", NULL};
    const char *bad_env[] = {"NOEQUALS", NULL};
    sl_exec_opts_t o2 = {.argv = argv, .env = bad_env};
    CHECK(sl_exec_start(base, &o2, record_cb, &calls, &x) == SL_EINVAL);
    CHECK(sl_exec_start(base, &o2, NULL, &calls, &x) == SL_EINVAL);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(calls == 0);
    sl_exec_cancel(NULL); /* no-op */
}

static void run_all(void)
{
    test_echo();
    test_exit_status_and_stderr();
    test_files();
    test_too_big();
    test_not_found();
    test_cancel();
    test_concurrent(NCONC);
    test_responsive();
    test_child_state();
}

int main(void)
{
    int fds_before = count_fds();
    base = event_base_new();
    CHECK(base != NULL);

    run_all();
    test_timeout();
    test_linger();
    test_rlimits();
    test_confined();
    test_invalid();

    /* the same core paths with the SIGCHLD fallback instead of pidfds */
    sl_exec__force_sigchld(1);
    test_echo();
    test_exit_status_and_stderr();
    test_not_found();
    test_cancel();
    test_concurrent(NCONC);
    test_too_big();
    {
        const char *argv[] = {"sleep", "10", NULL};
        sl_exec_opts_t o = {.timeout_ms = 100};
        res_t r;
        CHECK(run(argv, &o, &r) == 0);
        CHECK(r.err == SL_ETIMEDOUT && reaped(r.pid));
        res_free(&r);
    }
    sl_exec__force_sigchld(0);

    event_base_free(base);
    int fds_after = count_fds();
    CHECK(fds_before > 0 && fds_after == fds_before);
    if (fds_after != fds_before)
        fprintf(stderr, "fds before %d after %d\n", fds_before, fds_after);

    return check_summary();
}
