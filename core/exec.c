/*
 * exec.c — subprocesses on the event loop (see exec.h, docs/internals/exec.md).
 *
 * Spawn: vfork() + a child routine that only makes system calls (no malloc, no
 * locks), so the cost does not grow with the server's memory size the way
 * fork()'s page-table copy does. Everything the child needs (argv, the merged
 * envp, the PATH candidates, the pipe fds) is prepared by the parent first.
 * posix_spawn would be as cheap but cannot set rlimits. The child reports a
 * failed step (open, chdir, setrlimit, exec) as {step, errno} on a CLOEXEC
 * "status" pipe: after vfork returns the child has exec'd (pipe closed, EOF) or
 * _exit'ed (record written), so the parent's read never waits. Reading the pipe
 * (rather than a shared variable) also keeps this correct where vfork acts as
 * fork (valgrind).
 *
 * Completion needs three things: the leader exited (pidfd readable, or a
 * SIGCHLD + waitid(WNOWAIT)), and EOF (or our close) on the stdout and stderr
 * pipes. Only then is the leader reaped, so until that moment its pid, which is
 * also the group id we kill(), cannot be reused.
 *
 * One timer per handle drives the kill sequence: timeout -> SIGTERM -> grace ->
 * SIGKILL; after the leader exits it is re-armed as the linger deadline (or as
 * a zero delay to finish a cancel on a later loop turn).
 */
#include "exec.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* same number on every architecture */
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

extern char **environ;

#define READ_CHUNK 65536 /* the default pipe capacity: one read drains it */
#define READS_PER_CB 16  /* then yield to the loop, level-triggered events come back */
#define STDOUT_FIRST_CAP 65536
#define DEFAULT_PATH "/bin:/usr/bin" /* execvp's default when PATH is unset */
#define MAX_FD_LOOP 65536            /* close() loop bound when close_range is missing */
/* Our pipes live at or above this fd in the child, clear of the input targets
 * 3 .. 3 + SL_EXEC_MAX_INPUTS - 1 that its dup2 calls fill. */
#define FD_FLOOR (3 + SL_EXEC_MAX_INPUTS)
#define NLIMITS 6

/* Setup steps of the child; the names are what the result reports. */
enum {
    STEP_NONE,
    STEP_STDIN,
    STEP_STDOUT,
    STEP_DUP,
    STEP_INPUT,
    STEP_RLIMIT,
    STEP_USER,
    STEP_CHDIR,
    STEP_EXEC,
    STEP_N
};
static const char *const step_names[STEP_N] = {NULL,     "stdin", "stdout", "dup2",  "input",
                                               "rlimit", "user",  "chdir",  "exec"};

typedef struct stream_s {
    sl_exec_t *x;
    int fd;           /* parent's non-blocking read end; -1 when closed or unused */
    struct event *ev; /* NULL when closed or unused */
    char *buf;        /* owned; cap includes room for a NUL */
    size_t len, cap, max;
    int keep_tail; /* stderr: keep the last max bytes instead of failing */
    int truncated;
} stream_t;

struct sl_exec_s {
    struct event_base *base; /* borrowed */
    sl_exec_cb cb;
    void *arg;
    pid_t pid;
    int pidfd;             /* -1 in SIGCHLD mode */
    struct event *ev_exit; /* on pidfd; NULL in SIGCHLD mode */
    struct event *timer;   /* timeout / grace / linger / deferred finish */
    stream_t out, err;
    int sigchld_mode; /* on sigchld_list instead of a pidfd */
    int exited;       /* leader exited, not yet reaped */
    int term_sent;
    int canceled;
    int finishing; /* inside the user callback: cancel is a no-op */
    int err_code;  /* first failure (SL_ETIMEDOUT, SL_ETOOBIG, ...) */
    int child_step, child_errno;
    struct timespec t0;
    sl_exec_t *prev, *next; /* SIGCHLD mode: all live children */
};

/* ---- SIGCHLD fallback state (one loop thread per process) ---- */

static int force_sigchld;
static int pidfd_support; /* 0 unknown, 1 yes, -1 no */
static struct event *sigchld_ev;
static struct event_base *sigchld_base;
static sl_exec_t *sigchld_list;

static void on_exit_detected(sl_exec_t *x);

void sl_exec__force_sigchld(int on)
{
    force_sigchld = on;
}

static int use_pidfd(void)
{
    if (force_sigchld)
        return 0;
    if (pidfd_support == 0) {
        int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
        pidfd_support = fd >= 0 ? 1 : -1;
        if (fd >= 0)
            close(fd);
    }
    return pidfd_support > 0;
}

static void sigchld_cb(evutil_socket_t sig, short what, void *arg)
{
    /* Signals coalesce, so poll every child. WNOWAIT leaves it a zombie: it is
     * reaped only when the handle finishes. on_exit_detected may finish (and
     * free) x, and its callback may start new children (added at the head), so
     * take next first. */
    sl_exec_t *next;
    for (sl_exec_t *x = sigchld_list; x; x = next) {
        next = x->next;
        if (x->exited)
            continue;
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)x->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            si.si_pid == x->pid)
            on_exit_detected(x);
    }
}

static int sigchld_acquire(struct event_base *base)
{
    if (sigchld_ev)
        return sigchld_base == base ? 0 : SL_EINVAL;
    sigchld_ev = evsignal_new(base, SIGCHLD, sigchld_cb, NULL);
    if (!sigchld_ev)
        return SL_ENOMEM;
    if (evsignal_add(sigchld_ev, NULL) < 0) {
        event_free(sigchld_ev);
        sigchld_ev = NULL;
        return SL_EIO;
    }
    sigchld_base = base;
    return 0;
}

static void sigchld_release_if_idle(void)
{
    if (sigchld_ev && !sigchld_list) {
        event_free(sigchld_ev);
        sigchld_ev = NULL;
        sigchld_base = NULL;
    }
}

/* ---- the child (between vfork and exec: system calls only) ---- */

typedef struct spawn_s {
    const char *stdin_path;  /* never NULL */
    const char *stdout_path; /* NULL: dup out_w */
    const char *cwd;
    int out_w, err_w, status_w; /* all >= 3 and CLOEXEC */
    char *const *argv;
    char *const *envp;
    char *const *paths; /* exec candidates, NULL-terminated */
    const char *const *inputs; /* NULL or NULL-terminated, at most SL_EXEC_MAX_INPUTS */
    int ninputs;
    struct {
        int resource;
        rlim_t value;
    } limits[NLIMITS];
    int nlimits;
    int drop;
    uid_t uid;
    gid_t gid;
} spawn_t;

__attribute__((noreturn)) static void child_fail(const spawn_t *s, int step, int e)
{
    int rec[2] = {step, e};
    ssize_t n = write(s->status_w, rec, sizeof rec); /* < PIPE_BUF: atomic */
    (void)n;
    _exit(127);
}

static void child_close_fds(int lo, int keep)
{
    /* Everything but 0 .. lo - 1 and the status pipe (keep > lo). */
    int ok = 1;
    if (keep > lo && syscall(SYS_close_range, (unsigned)lo, (unsigned)keep - 1, 0u) < 0)
        ok = 0;
    if (ok && syscall(SYS_close_range, (unsigned)keep + 1, ~0u, 0u) < 0)
        ok = 0;
    if (ok)
        return;
    struct rlimit rl;
    long maxfd = MAX_FD_LOOP;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)MAX_FD_LOOP)
        maxfd = (long)rl.rlim_cur;
    for (long fd = lo; fd < maxfd; fd++)
        if (fd != keep)
            close((int)fd);
}

/*
 * Raw system calls, not glibc's setgroups/setgid/setuid: in a multithreaded
 * process those broadcast the change to every thread (nptl's setxid signal),
 * and a vfork child shares the parent's memory and thread list, so glibc would
 * signal the PARENT's threads and change their credentials (glibc's own
 * posix_spawn uses raw calls here for the same reason). Order: groups and gid
 * while still root, uid last. Then verify: all three ids changed, no
 * supplementary group is left, and root cannot be regained.
 */
static void child_drop_privileges(const spawn_t *s)
{
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    if (syscall(SYS_setgroups, 0, NULL) < 0 || syscall(SYS_setresgid, s->gid, s->gid, s->gid) < 0 ||
        syscall(SYS_setresuid, s->uid, s->uid, s->uid) < 0)
        child_fail(s, STEP_USER, errno);
    if (syscall(SYS_getresuid, &ru, &eu, &su) < 0 || syscall(SYS_getresgid, &rg, &eg, &sg) < 0)
        child_fail(s, STEP_USER, errno);
    if (ru != s->uid || eu != s->uid || su != s->uid || rg != s->gid || eg != s->gid ||
        sg != s->gid || syscall(SYS_getgroups, 0, NULL) != 0)
        child_fail(s, STEP_USER, EPERM);
    if (s->uid != 0 && syscall(SYS_setresuid, 0, 0, 0) == 0)
        child_fail(s, STEP_USER, EPERM);
}

__attribute__((noinline, noreturn)) static void child_run(const spawn_t *s)
{
    /* Handlers would run parent code on the shared stack, and ignored signals
     * survive exec: set every disposition to default, with all signals still
     * blocked (the parent blocked them before vfork). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &sa, NULL); /* SIGKILL, SIGSTOP and libc-internal ones fail: fine */

    setsid(); /* own session and group: kill(-pid) reaches the whole tree */

    /* Targets in ascending order; a temporary fd below a later target is
     * overwritten by that target's dup2, those >= 3 go with child_close_fds. */
    int fd = open(s->stdin_path, O_RDONLY);
    if (fd < 0)
        child_fail(s, STEP_STDIN, errno);
    if (fd != 0 && dup2(fd, 0) < 0)
        child_fail(s, STEP_DUP, errno);
    if (s->stdout_path) {
        fd = open(s->stdout_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0)
            child_fail(s, STEP_STDOUT, errno);
        if (fd != 1 && dup2(fd, 1) < 0)
            child_fail(s, STEP_DUP, errno);
    } else if (dup2(s->out_w, 1) < 0) {
        child_fail(s, STEP_DUP, errno);
    }
    if (dup2(s->err_w, 2) < 0)
        child_fail(s, STEP_DUP, errno);

    /* Inputs onto 3, 4, ...: open returns the lowest free fd, so it never
     * lands on a target already filled; a temporary it lands on is redundant.
     * dup2 onto itself would keep O_CLOEXEC: clear it then. */
    for (int i = 0; i < s->ninputs; i++) {
        fd = open(s->inputs[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            child_fail(s, STEP_INPUT, errno);
        if (fd == 3 + i ? fcntl(fd, F_SETFD, 0) < 0 : dup2(fd, 3 + i) < 0)
            child_fail(s, STEP_DUP, errno);
    }

    for (int i = 0; i < s->nlimits; i++) {
        struct rlimit old, nl;
        if (getrlimit(s->limits[i].resource, &old) < 0)
            child_fail(s, STEP_RLIMIT, errno);
        rlim_t v = s->limits[i].value;
        nl.rlim_cur = v < old.rlim_max ? v : old.rlim_max;
        nl.rlim_max = nl.rlim_cur;
        /* CPU: SIGXCPU at the soft limit, SIGKILL a second later */
        if (s->limits[i].resource == RLIMIT_CPU && nl.rlim_cur < old.rlim_max)
            nl.rlim_max = nl.rlim_cur + 1;
        if (setrlimit(s->limits[i].resource, &nl) < 0)
            child_fail(s, STEP_RLIMIT, errno);
    }

    if (s->drop)
        child_drop_privileges(s);
    child_close_fds(3 + s->ninputs, s->status_w);
    if (s->cwd && chdir(s->cwd) < 0)
        child_fail(s, STEP_CHDIR, errno);

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* execvp's search rules: go on past "not here", remember EACCES; stop at
     * anything else. No /bin/sh retry on ENOEXEC: we never run a shell. */
    int e = ENOENT, eacces = 0;
    for (char *const *p = s->paths; *p; p++) {
        execve(*p, s->argv, s->envp);
        e = errno;
        if (e == EACCES) {
            eacces = 1;
            continue;
        }
        if (e == ENOENT || e == ENOTDIR || e == ESTALE || e == ENODEV || e == ETIMEDOUT)
            continue;
        child_fail(s, STEP_EXEC, e);
    }
    child_fail(s, STEP_EXEC, eacces ? EACCES : e);
}

/* Isolated so the parent's locals never live across vfork (-Wclobbered). */
__attribute__((noinline)) static pid_t spawn_vfork(const spawn_t *s)
{
    pid_t pid = vfork();
    if (pid == 0)
        child_run(s);
    return pid;
}

/* ---- parent-side preparation ---- */

static int errno_to_sl(int e)
{
    switch (e) {
    case ENOMEM:
        return SL_ENOMEM;
    case EMFILE:
    case ENFILE:
    case EAGAIN:
        return SL_EAGAIN;
    default:
        return SL_EIO;
    }
}

/* A CLOEXEC pipe whose both ends are >= FD_FLOOR, so the child's dup2 onto
 * 0..2 and onto the input fds can never clobber one of them, even when the
 * server runs with stdio closed. */
static int make_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return errno_to_sl(errno);
    for (int i = 0; i < 2; i++) {
        if (fds[i] >= FD_FLOOR)
            continue;
        int n = fcntl(fds[i], F_DUPFD_CLOEXEC, FD_FLOOR);
        if (n < 0) {
            int err = errno_to_sl(errno);
            close(fds[0]);
            close(fds[1]);
            return err;
        }
        close(fds[i]);
        fds[i] = n;
    }
    return 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static size_t name_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* The child's environment: environ (unless clear_env) minus names that `add`
 * redefines, then `add`. Returns an owned array of borrowed strings. */
static int build_env(const sl_exec_opts_t *o, char ***out)
{
    size_t nadd = 0, nenv = 0;
    if (o->env)
        for (; o->env[nadd]; nadd++)
            if (!strchr(o->env[nadd], '=') || o->env[nadd][0] == '=')
                return SL_EINVAL;
    if (!o->clear_env && environ)
        for (; environ[nenv]; nenv++)
            ;
    char **envp = calloc(nenv + nadd + 1, sizeof *envp);
    if (!envp)
        return SL_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++) {
        size_t nl = name_len(environ[i]);
        int replaced = 0;
        for (size_t j = 0; j < nadd && !replaced; j++)
            replaced = name_len(o->env[j]) == nl && memcmp(o->env[j], environ[i], nl) == 0;
        if (!replaced)
            envp[k++] = environ[i];
    }
    for (size_t j = 0; j < nadd; j++)
        envp[k++] = (char *)o->env[j];
    envp[k] = NULL;
    *out = envp;
    return 0;
}

/* execvp's candidate list for `name`: itself if it has a '/', else each PATH
 * element + "/" + name (an empty element is the current directory). Returns an
 * owned NULL-terminated array in *out whose strings live in owned *store. */
static int build_paths(const char *name, char *const *envp, char ***out, char **store)
{
    char **paths;
    if (strchr(name, '/')) {
        paths = calloc(2, sizeof *paths);
        if (!paths)
            return SL_ENOMEM;
        paths[0] = (char *)name;
        *out = paths;
        *store = NULL;
        return 0;
    }
    const char *path = NULL;
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    if (!path)
        path = DEFAULT_PATH;
    size_t nelem = 1, plen = strlen(path), nlen = strlen(name);
    for (const char *p = path; *p; p++)
        nelem += *p == ':';
    /* each element: its chars (or "."), "/", name, NUL */
    size_t total = plen + nelem * (nlen + 3);
    paths = calloc(nelem + 1, sizeof *paths);
    char *buf = malloc(total);
    if (!paths || !buf) {
        free(paths);
        free(buf);
        return SL_ENOMEM;
    }
    size_t k = 0, off = 0;
    const char *p = path;
    for (;;) {
        size_t dl = strcspn(p, ":");
        const char *dir = dl ? p : ".";
        size_t dlen = dl ? dl : 1;
        paths[k++] = buf + off;
        memcpy(buf + off, dir, dlen);
        off += dlen;
        buf[off++] = '/';
        memcpy(buf + off, name, nlen + 1);
        off += nlen + 1;
        if (!p[dl])
            break;
        p += dl + 1;
    }
    paths[k] = NULL;
    *out = paths;
    *store = buf;
    return 0;
}

/* ---- the running handle ---- */

static int64_t ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)(t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static void arm_timer(sl_exec_t *x, unsigned ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(x->timer, &tv);
}

static void set_err(sl_exec_t *x, int err)
{
    if (!x->err_code)
        x->err_code = err;
}

/* The leader is not reaped before the handle finishes, so -pid is still our
 * group here and never a recycled id. */
static void kill_group(sl_exec_t *x, int sig)
{
    if (kill(-x->pid, sig) < 0 && errno == ESRCH)
        kill(x->pid, sig); /* setsid had not run yet: the child is not a leader */
}

static void stream_close(stream_t *s)
{
    if (s->ev) {
        event_free(s->ev);
        s->ev = NULL;
    }
    close_fd(&s->fd);
}

/* Handles alive in this process (sl_exec_live): a graceful stop waits for them. */
static int live_handles;

int sl_exec_live(void)
{
    return live_handles;
}

static void free_handle(sl_exec_t *x)
{
    live_handles--;
    stream_close(&x->out);
    stream_close(&x->err);
    if (x->ev_exit)
        event_free(x->ev_exit);
    if (x->timer)
        event_free(x->timer);
    close_fd(&x->pidfd);
    free(x->out.buf);
    free(x->err.buf);
    free(x);
}

static void finish(sl_exec_t *x)
{
    /* Leftovers of the group (background children the leader did not wait for)
     * would escape every limit: kill them before the group id is released. */
    kill(-x->pid, SIGKILL);
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    pid_t r;
    do /* never waits: the leader is known to have exited */
        r = wait4(x->pid, &status, 0, &ru);
    while (r < 0 && errno == EINTR);

    sl_exec_result_t res;
    memset(&res, 0, sizeof res);
    res.pid = x->pid;
    res.exit_status = -1;
    if (r == x->pid && WIFEXITED(status))
        res.exit_status = WEXITSTATUS(status);
    else if (r == x->pid && WIFSIGNALED(status))
        res.term_signal = WTERMSIG(status);
    if (x->child_step) {
        res.exit_status = -1; /* the 127 of _exit is not the program's */
        res.sys_errno = x->child_errno;
        res.failed_step = step_names[x->child_step];
    }
    if (x->canceled)
        res.err = SL_ECANCELED;
    else if (x->err_code)
        res.err = x->err_code;
    else if (x->child_step == STEP_EXEC && (x->child_errno == ENOENT || x->child_errno == ENOTDIR))
        res.err = SL_ENOTFOUND;
    else if (x->child_step)
        res.err = SL_EIO;
    if (x->out.max) { /* captured */
        res.stdout_data = x->out.buf ? x->out.buf : "";
        res.stdout_len = x->out.len;
    }
    res.stderr_data = x->err.buf ? x->err.buf : "";
    res.stderr_len = x->err.len;
    res.stderr_truncated = x->err.truncated;
    res.wall_ms = ms_since(&x->t0);
    res.cpu_ms = (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
                 (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;

    if (x->sigchld_mode) {
        if (x->prev)
            x->prev->next = x->next;
        else
            sigchld_list = x->next;
        if (x->next)
            x->next->prev = x->prev;
        sigchld_release_if_idle();
    }
    evtimer_del(x->timer);
    x->finishing = 1;
    x->cb(x, &res, x->arg);
    free_handle(x);
}

static void maybe_finish(sl_exec_t *x)
{
    if (x->exited && x->out.fd < 0 && x->err.fd < 0)
        finish(x);
}

static void on_exit_detected(sl_exec_t *x)
{
    x->exited = 1;
    if (x->out.fd < 0 && x->err.fd < 0) {
        finish(x);
        return;
    }
    /* Someone else in the group still holds a pipe: give it a moment. */
    arm_timer(x, SL_EXEC_LINGER_MS);
}

static void pidfd_cb(evutil_socket_t fd, short what, void *arg)
{
    on_exit_detected(arg); /* non-persistent: fires once */
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_exec_t *x = arg;
    if (x->exited) { /* linger over, or a cancel's deferred finish */
        kill_group(x, SIGKILL);
        stream_close(&x->out);
        stream_close(&x->err);
        finish(x);
        return;
    }
    if (!x->term_sent) {
        x->term_sent = 1;
        set_err(x, SL_ETIMEDOUT);
        kill_group(x, SIGTERM);
        arm_timer(x, SL_EXEC_KILL_GRACE_MS);
        return;
    }
    kill_group(x, SIGKILL); /* exit (and EOF) follow */
}

/* Appends to stdout; 0, or an error after which the stream must close. */
static int out_append(stream_t *s, const char *p, size_t n)
{
    int err = 0;
    if (n > s->max - s->len) { /* keep what fits: the result holds the head */
        n = s->max - s->len;
        err = SL_ETOOBIG;
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : STDOUT_FIRST_CAP;
        while (cap < s->len + n + 1)
            cap *= 2;
        if (cap > s->max + 1)
            cap = s->max + 1;
        char *nb = realloc(s->buf, cap);
        if (!nb)
            return SL_ENOMEM;
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = '\0';
    return err;
}

/* Appends to stderr keeping the last s->max bytes. */
static int tail_append(stream_t *s, const char *p, size_t n)
{
    if (!s->buf) {
        s->buf = malloc(s->max + 1);
        if (!s->buf)
            return SL_ENOMEM;
        s->cap = s->max + 1;
    }
    if (n >= s->max) {
        s->truncated |= n > s->max || s->len > 0;
        memcpy(s->buf, p + (n - s->max), s->max);
        s->len = s->max;
    } else {
        if (s->len + n > s->max) {
            size_t drop = s->len + n - s->max;
            memmove(s->buf, s->buf + drop, s->len - drop);
            s->len -= drop;
            s->truncated = 1;
        }
        memcpy(s->buf + s->len, p, n);
        s->len += n;
    }
    s->buf[s->len] = '\0';
    return 0;
}

static void stream_cb(evutil_socket_t fd, short what, void *arg)
{
    stream_t *s = arg;
    sl_exec_t *x = s->x;
    char chunk[READ_CHUNK];
    for (int i = 0; i < READS_PER_CB; i++) {
        ssize_t n = read(s->fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n > 0) {
            int err =
                s->keep_tail ? tail_append(s, chunk, (size_t)n) : out_append(s, chunk, (size_t)n);
            if (!err)
                continue;
            set_err(x, err);
            kill_group(x, SIGKILL);
        } else if (n < 0) {
            set_err(x, SL_EIO);
        }
        stream_close(s); /* EOF, error or over the limit */
        maybe_finish(x); /* may free x: last */
        return;
    }
}

/* Takes *fdp (the read end), non-blocking for us only: the child's write end
 * is a separate open file description and stays blocking. */
static int stream_open(sl_exec_t *x, stream_t *s, int *fdp)
{
    s->fd = *fdp;
    *fdp = -1;
    int fl = fcntl(s->fd, F_GETFL);
    if (fl < 0 || fcntl(s->fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return SL_EIO;
    s->ev = event_new(x->base, s->fd, EV_READ | EV_PERSIST, stream_cb, s);
    return s->ev ? 0 : SL_ENOMEM;
}

int sl_exec_start(struct event_base *base, const sl_exec_opts_t *opts, sl_exec_cb cb, void *arg,
                  sl_exec_t **out)
{
    if (!base || !opts || !cb || !out || !opts->argv || !opts->argv[0] || !opts->argv[0][0])
        return SL_EINVAL;
    int ninputs = 0;
    if (opts->inputs)
        for (; opts->inputs[ninputs]; ninputs++)
            if (ninputs == SL_EXEC_MAX_INPUTS)
                return SL_EINVAL;
    int err = 0;
    int out_p[2] = {-1, -1}, err_p[2] = {-1, -1}, st_p[2] = {-1, -1};
    char **envp = NULL, **paths = NULL;
    char *path_store = NULL;
    int sigchld_mode = !use_pidfd();
    pid_t pid = -1;

    sl_exec_t *x = calloc(1, sizeof *x);
    if (!x)
        return SL_ENOMEM;
    live_handles++; /* free_handle, on every path, counts it down */
    x->base = base;
    x->cb = cb;
    x->arg = arg;
    x->pidfd = -1;
    x->out.x = x->err.x = x;
    x->out.fd = x->err.fd = -1;
    x->err.keep_tail = 1;
    x->err.max = opts->max_stderr ? opts->max_stderr : SL_EXEC_DEFAULT_MAX_STDERR;
    if (!opts->stdout_path)
        x->out.max = opts->max_stdout ? opts->max_stdout : SL_EXEC_DEFAULT_MAX_STDOUT;

    if ((err = build_env(opts, &envp)) ||
        (err = build_paths(opts->argv[0], envp, &paths, &path_store)))
        goto fail;
    if ((!opts->stdout_path && (err = make_pipe(out_p))) || (err = make_pipe(err_p)) ||
        (err = make_pipe(st_p)))
        goto fail;
    if ((!opts->stdout_path && (err = stream_open(x, &x->out, &out_p[0]))) ||
        (err = stream_open(x, &x->err, &err_p[0])))
        goto fail;
    x->timer = evtimer_new(base, timer_cb, x);
    if (!x->timer) {
        err = SL_ENOMEM;
        goto fail;
    }
    if (sigchld_mode && (err = sigchld_acquire(base))) /* before the child exists */
        goto fail;

    spawn_t s;
    memset(&s, 0, sizeof s);
    s.stdin_path = opts->stdin_path ? opts->stdin_path : "/dev/null";
    s.stdout_path = opts->stdout_path;
    s.cwd = opts->cwd;
    s.out_w = out_p[1];
    s.err_w = err_p[1];
    s.status_w = st_p[1];
    s.argv = (char *const *)opts->argv;
    s.envp = envp;
    s.paths = paths;
    s.inputs = opts->inputs;
    s.ninputs = ninputs;
    s.drop = opts->drop_privileges != 0;
    s.uid = opts->uid;
    s.gid = opts->gid;
    const struct {
        int resource;
        uint64_t value;
    } lim[NLIMITS] = {{RLIMIT_CPU, opts->rlimit_cpu_s},
                      {RLIMIT_AS, opts->rlimit_as_bytes},
                      {RLIMIT_FSIZE, opts->rlimit_fsize_bytes},
                      {RLIMIT_NPROC, opts->rlimit_nproc},
                      {RLIMIT_NOFILE, opts->rlimit_nofile},
                      {RLIMIT_CORE, 0}};
    for (int i = 0; i < NLIMITS; i++)
        if (lim[i].value || (lim[i].resource == RLIMIT_CORE && opts->no_core)) {
            s.limits[s.nlimits].resource = lim[i].resource;
            s.limits[s.nlimits].value = (rlim_t)lim[i].value;
            s.nlimits++;
        }

    /* All signals blocked across vfork: no handler of ours may run in the
     * child, which shares our memory until it execs. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    clock_gettime(CLOCK_MONOTONIC, &x->t0);
    pid = spawn_vfork(&s);
    int spawn_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close_fd(&out_p[1]);
    close_fd(&err_p[1]);
    close_fd(&st_p[1]);
    if (pid < 0) {
        err = errno_to_sl(spawn_errno);
        goto fail;
    }
    x->pid = pid;

    int rec[2];
    ssize_t n;
    do /* the child has exec'd or exited (vfork), or will soon (fork): bounded */
        n = read(st_p[0], rec, sizeof rec);
    while (n < 0 && errno == EINTR);
    close_fd(&st_p[0]);
    if (n == (ssize_t)sizeof rec && rec[0] > STEP_NONE && rec[0] < STEP_N) {
        x->child_step = rec[0];
        x->child_errno = rec[1];
    }

    if (!sigchld_mode) {
        x->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (x->pidfd < 0) {
            err = errno_to_sl(errno);
            goto fail;
        }
        x->ev_exit = event_new(base, x->pidfd, EV_READ, pidfd_cb, x);
        if (!x->ev_exit || event_add(x->ev_exit, NULL) < 0) {
            err = x->ev_exit ? SL_EIO : SL_ENOMEM;
            goto fail;
        }
    }
    if ((x->out.ev && event_add(x->out.ev, NULL) < 0) || event_add(x->err.ev, NULL) < 0) {
        err = SL_EIO;
        goto fail;
    }
    if (opts->timeout_ms)
        arm_timer(x, opts->timeout_ms);
    if (sigchld_mode) {
        x->sigchld_mode = 1;
        x->next = sigchld_list;
        if (sigchld_list)
            sigchld_list->prev = x;
        sigchld_list = x;
    }
    free(envp);
    free(paths);
    free(path_store);
    *out = x;
    return 0;

fail:
    if (pid > 0) { /* leave no child behind: SIGKILL cannot be ignored, the wait is short */
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    close_fd(&out_p[0]);
    close_fd(&out_p[1]);
    close_fd(&err_p[0]);
    close_fd(&err_p[1]);
    close_fd(&st_p[0]);
    close_fd(&st_p[1]);
    free(envp);
    free(paths);
    free(path_store);
    free_handle(x);
    if (sigchld_mode)
        sigchld_release_if_idle();
    return err;
}

void sl_exec_cancel(sl_exec_t *x)
{
    if (!x || x->finishing || x->canceled)
        return;
    x->canceled = 1;
    kill_group(x, SIGKILL);
    stream_close(&x->out);
    stream_close(&x->err);
    if (x->exited)
        arm_timer(x, 0); /* finish on a later loop turn, never inside this call */
    else
        evtimer_del(x->timer); /* the exit event finishes it */
}

pid_t sl_exec_pid(const sl_exec_t *x)
{
    return x ? x->pid : -1;
}
