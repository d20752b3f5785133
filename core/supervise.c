/*
 * supervise.c — forks the engine and the HTTP processes and keeps the engine
 * running (supervise.h).
 *
 * Signals are blocked and taken synchronously with sigtimedwait, so there
 * are no handlers and no races between a child's death and the decision to
 * restart it. Children restore the mask before they do anything else.
 */
#include "core/supervise.h"
#include "core/err.h"
#include "core/log.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_HTTP 1024
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STABLE_MS 30000 /* an engine that lived this long restarts at BACKOFF_MIN_MS again */

typedef struct sup_s {
    const sl_sup_opts_t *o;
    sigset_t set, old;
    pid_t self;
    pid_t engine;
    int64_t engine_started_ms;
    int64_t restart_at_ms; /* 0: no restart pending */
    int backoff_ms;
    pid_t http[MAX_HTTP];
    int nhttp;  /* forked */
    int nalive; /* HTTP processes alive */
    int stopping;
    int stop_signals; /* SIGTERM/SIGINT received: a second one stops the children at once */
    int worst;
} sup_t;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* In the child: defaults back, parent-death signal, a name for ps and the tests. */
static void child_setup(sup_t *s, int role, int index)
{
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, role == SL_ROLE_HTTP ? SIG_IGN : SIG_DFL); /* reload is the engine's */
    sigprocmask(SIG_SETMASK, &s->old, NULL);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != s->self) /* the supervisor died before prctl: go too */
        raise(SIGTERM);
    prctl(PR_SET_NAME, role == SL_ROLE_ENGINE ? "sluice-engine" : "sluice-http");
    sl_log_set_role(role == SL_ROLE_ENGINE ? "engine" : "http");
    sl_elink_become(s->o->link, role == SL_ROLE_ENGINE, index);
}

/*
 * Forks one child (HTTP: number `index`); 1 in the child, 0 in the
 * supervisor (pid in *pid, 0 on failure).
 */
static int spawn(sup_t *s, int role, int index, pid_t *pid)
{
    pid_t p = fork();
    if (p == 0) {
        child_setup(s, role, index);
        return 1;
    }
    if (p < 0) {
        sl_log(SL_LOG_ERROR, "fork_failed", "{s:s}", "error", strerror(errno));
        p = 0;
    }
    *pid = p;
    return 0;
}

static int start_engine(sup_t *s)
{
    pid_t p;
    if (spawn(s, SL_ROLE_ENGINE, 0, &p))
        return 1;
    s->restart_at_ms = 0;
    s->engine = p;
    if (p > 0) {
        s->engine_started_ms = now_ms();
        sl_elink_set_engine_pid(s->o->link, (int)p);
        sl_log(SL_LOG_INFO, "engine_started", "{s:i}", "pid", (int)p);
    } else {
        s->restart_at_ms = now_ms() + s->backoff_ms;
    }
    return 0;
}

static void signal_children(sup_t *s, int sig)
{
    if (s->engine > 0)
        kill(s->engine, sig);
    for (int i = 0; i < s->nhttp; i++)
        if (s->http[i] > 0)
            kill(s->http[i], sig);
}

static void begin_stop(sup_t *s, int sig)
{
    if (!s->stopping)
        sl_log(SL_LOG_INFO, "supervisor_stopping", "{s:i}", "signal", sig);
    s->stopping = 1;
    s->restart_at_ms = 0;
    signal_children(s, sig);
}

static void describe_exit(int st, char *buf, size_t len)
{
    if (WIFSIGNALED(st))
        snprintf(buf, len, "signal %d", WTERMSIG(st));
    else
        snprintf(buf, len, "exit %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* Reaps every child that exited. */
static void reap(sup_t *s)
{
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
        char how[32];
        int clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        describe_exit(st, how, sizeof how);
        if (p == s->engine) {
            s->engine = 0;
            sl_elink_set_engine_pid(s->o->link, 0);
            if (s->stopping) {
                if (!clean)
                    s->worst = 1;
                sl_log(SL_LOG_INFO, "engine_stopped", "{s:i, s:s}", "pid", (int)p, "how", how);
                continue;
            }
            int64_t lived = now_ms() - s->engine_started_ms;
            if (lived >= STABLE_MS)
                s->backoff_ms = BACKOFF_MIN_MS;
            s->restart_at_ms = now_ms() + s->backoff_ms;
            sl_log(SL_LOG_ERROR, "engine_exited", "{s:i, s:s, s:i, s:i}", "pid", (int)p, "how",
                   how, "lived_ms", lived > INT32_MAX ? INT32_MAX : (int)lived, "restart_in_ms",
                   s->backoff_ms);
            s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
            continue;
        }
        for (int i = 0; i < s->nhttp; i++) {
            if (s->http[i] != p)
                continue;
            s->http[i] = 0;
            s->nalive--;
            if (!clean)
                s->worst = 1;
            sl_log(s->stopping ? SL_LOG_INFO : SL_LOG_ERROR, "http_exited", "{s:i, s:s}", "pid",
                   (int)p, "how", how);
        }
        if (s->nalive == 0 && !s->stopping) /* nothing left to serve: stop the engine too */
            begin_stop(s, SIGTERM);
    }
}

/* Waits for one signal up to ms (-1: forever). Returns the signal, 0 on timeout. */
static int wait_signal(sup_t *s, int ms)
{
    siginfo_t info;
    if (ms < 0)
        return sigwaitinfo(&s->set, &info) > 0 ? info.si_signo : 0;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    int sig = sigtimedwait(&s->set, &info, &ts);
    return sig > 0 ? sig : 0;
}

/* One signal (or a timeout) of the supervision loop. */
static void handle(sup_t *s, int sig)
{
    if (sig == SIGCHLD)
        reap(s);
    else if ((sig == SIGTERM || sig == SIGINT) && s->stop_signals++ > 0) {
        /* The operator insists (issue 12): no drain. Safe: the engine's
         * leases lapse, and an upload cut before its 202 kept nothing. */
        sl_log(SL_LOG_WARN, "supervisor_stop_now", "{s:i}", "signal", sig);
        s->stopping = 1;
        s->restart_at_ms = 0;
        s->worst = 1;
        signal_children(s, SIGKILL);
    } else if (sig == SIGTERM || sig == SIGINT)
        begin_stop(s, sig);
    else if (sig == SIGHUP && s->engine > 0)
        kill(s->engine, SIGHUP);
}

int sl_supervise(const sl_sup_opts_t *o, int *role, int *status)
{
    static sup_t sup; /* one per process; static so a forked child may keep using it */
    sup_t *s = &sup;
    memset(s, 0, sizeof *s);
    s->o = o;
    s->self = getpid();
    s->backoff_ms = BACKOFF_MIN_MS;
    sigemptyset(&s->set);
    sigaddset(&s->set, SIGCHLD);
    sigaddset(&s->set, SIGTERM);
    sigaddset(&s->set, SIGINT);
    sigaddset(&s->set, SIGHUP);
    sigprocmask(SIG_BLOCK, &s->set, &s->old);
    sl_log_set_role("supervisor");
    *status = 0;

    if (start_engine(s)) {
        *role = SL_ROLE_ENGINE;
        return 1;
    }
    /* The first engine must load its flows before anything serves. */
    int64_t deadline = now_ms() + (o->ready_timeout_ms > 0 ? o->ready_timeout_ms : 30000);
    while (!s->stopping && s->engine > 0 && !sl_elink_engine_ready(o->link) &&
           now_ms() < deadline)
        handle(s, wait_signal(s, 20));
    if (s->engine == 0 && !s->stopping) {
        sl_log(SL_LOG_ERROR, "engine_start_failed", NULL);
        s->worst = 1;
        s->stopping = 1;
    }
    int n = o->nhttp < 1 ? 1 : o->nhttp > MAX_HTTP ? MAX_HTTP : o->nhttp;
    for (int i = 0; i < n && !s->stopping; i++) {
        pid_t p;
        if (spawn(s, SL_ROLE_HTTP, i, &p)) {
            *role = SL_ROLE_HTTP;
            return 1;
        }
        s->http[s->nhttp++] = p;
        s->nalive += p > 0;
    }
    if (s->nalive == 0)
        begin_stop(s, SIGTERM);

    while (s->engine > 0 || s->nalive > 0 || (s->restart_at_ms && !s->stopping)) {
        int wait_ms = -1;
        if (s->restart_at_ms) {
            int64_t left = s->restart_at_ms - now_ms();
            wait_ms = left < 0 ? 0 : (int)left;
        }
        int sig = wait_ms == 0 ? 0 : wait_signal(s, wait_ms);
        handle(s, sig);
        if (s->restart_at_ms && !s->stopping && now_ms() >= s->restart_at_ms &&
            start_engine(s)) {
            *role = SL_ROLE_ENGINE;
            return 1;
        }
    }
    sigprocmask(SIG_SETMASK, &s->old, NULL);
    *status = s->worst;
    return 0;
}
