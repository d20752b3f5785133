/*
 * exec.h — run a subprocess on the libevent loop without ever blocking it.
 *
 * This is how Sluice runs CPU-heavy tools (tesseract, pdftoppm, vips): argv is
 * executed directly (PATH lookup like execvp, never a shell), in its own session
 * and process group, with a timeout, resource limits, a bounded in-memory
 * capture of stdout (or stdout written to a file) and of stderr. Exit is
 * watched through a pidfd (Linux >= 5.3), or SIGCHLD on older kernels; the
 * child is always reaped. See docs/internals/exec.md.
 *
 * The callback contract is the house one: sl_exec_start either fails (and never
 * calls back) or calls back exactly once, always from a later loop turn, with
 * the result or SL_ETIMEDOUT / SL_ETOOBIG / SL_ENOTFOUND / SL_ECANCELED /
 * SL_EIO. After the callback returns the module frees the handle.
 *
 * Process-wide assumptions: SIGCHLD is not set to SIG_IGN and nobody else calls
 * waitpid(-1, ...) (either would steal our children's exit status). The SIGCHLD
 * fallback serves one event_base per process.
 */
#ifndef SL_EXEC_H
#define SL_EXEC_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct sl_exec_s sl_exec_t;

/** Capture limits used when the corresponding opts field is 0. */
#define SL_EXEC_DEFAULT_MAX_STDOUT (16u * 1024 * 1024)
#define SL_EXEC_DEFAULT_MAX_STDERR (64u * 1024)
/** Delay between SIGTERM (at the timeout) and SIGKILL. */
#define SL_EXEC_KILL_GRACE_MS 2000
/**
 * After the main child exited, how long other members of its process group may
 * keep the output pipes open before the group is SIGKILLed and the pipes closed.
 */
#define SL_EXEC_LINGER_MS 1000

/** What to run. All pointers are borrowed for the duration of sl_exec_start only. */
typedef struct sl_exec_opts_s {
    /** NULL-terminated; argv[0] is looked up in PATH (of the child's environment,
     *  else "/bin:/usr/bin") unless it contains '/'. No shell: a file without
     *  a #! line or ELF header fails with SL_EIO (ENOEXEC). Required. */
    const char *const *argv;
    /** Working directory of the child, or NULL to inherit. */
    const char *cwd;
    /** NULL-terminated "NAME=value" strings added to (replacing same-named
     *  entries of) the environment, or NULL. */
    const char *const *env;
    /** Non-zero: start from an empty environment instead of environ. */
    int clear_env;
    /** File opened read-only as the child's stdin, or NULL for /dev/null.
     *  Relative paths are resolved against the caller's cwd (opened before chdir). */
    const char *stdin_path;
    /** File the child's stdout is written to (created or truncated, mode 0600),
     *  or NULL to capture stdout in memory. Relative paths: as stdin_path. */
    const char *stdout_path;
    /** Capture limit for stdout (0: SL_EXEC_DEFAULT_MAX_STDOUT). More output
     *  kills the process group and the result is SL_ETOOBIG. */
    size_t max_stdout;
    /** Capture limit for stderr (0: SL_EXEC_DEFAULT_MAX_STDERR). More output is
     *  not an error: the LAST max_stderr bytes are kept (the error message a tool
     *  prints before dying is what matters), stderr_truncated is set. */
    size_t max_stderr;
    /** Wall-clock limit; 0 = none. At expiry the group gets SIGTERM, then
     *  SIGKILL after SL_EXEC_KILL_GRACE_MS; the result is SL_ETIMEDOUT. */
    unsigned timeout_ms;
    /** Resource limits set in the child before exec; 0 = inherit.
     *  cpu: soft limit (SIGXCPU) at the value, hard limit (SIGKILL) 1 s later. */
    uint64_t rlimit_cpu_s;
    uint64_t rlimit_as_bytes;    /* RLIMIT_AS */
    uint64_t rlimit_fsize_bytes; /* RLIMIT_FSIZE: larger writes raise SIGXFSZ */
    uint64_t rlimit_nproc;       /* RLIMIT_NPROC (per real uid, not per child!) */
    uint64_t rlimit_nofile;      /* RLIMIT_NOFILE: open files */
    /** Non-zero: RLIMIT_CORE 0, no core dumps (a tool's memory may hold the file). */
    int no_core;
    /** Files the child opens read-only before it drops privileges and keeps
     *  as fds 3, 4, ... in order, so argv can name them "/proc/self/fd/3": the
     *  tool reads its input without any right on the file's directories (only
     *  the file's own mode is checked when the link is reopened). At most
     *  SL_EXEC_MAX_INPUTS; NULL-terminated, or NULL. One that cannot be opened
     *  is the callback's SL_EIO with failed_step "input". */
    const char *const *inputs;
    /** Non-zero: after opening its files and setting the rlimits, the child
     *  drops every group (setgroups 0), then sets its real, effective and
     *  saved gid to `gid` and uid to `uid`, and checks that the change took
     *  and cannot be undone (setuid(0) fails) before chdir and exec; any
     *  failure is SL_EIO with failed_step "user" and the tool never runs.
     *  Needs the privilege to switch (root or CAP_SETUID/CAP_SETGID). */
    int drop_privileges;
    uid_t uid;
    gid_t gid;
} sl_exec_opts_t;

/** Most files `inputs` may pass. */
#define SL_EXEC_MAX_INPUTS 8

/** The outcome, borrowed by the callback (valid until it returns). */
typedef struct sl_exec_result_s {
    /** 0 if the program ran and exited (with any status) or was killed by a
     *  signal it caused (rlimits); else SL_ETIMEDOUT, SL_ETOOBIG (stdout over
     *  max_stdout), SL_ENOTFOUND (argv[0] not found), SL_ECANCELED, or SL_EIO
     *  (a setup step in the child failed: see failed_step and sys_errno). */
    int err;
    pid_t pid;
    /** Exit status 0..255 if the program exited normally, else -1. */
    int exit_status;
    /** The signal that terminated it, else 0. */
    int term_signal;
    /** With SL_ENOTFOUND/SL_EIO from a setup step: its errno and its name
     *  ("stdin", "stdout", "input", "chdir", "rlimit", "user", "exec", ...;
     *  static string). */
    int sys_errno;
    const char *failed_step;
    /** Captured stdout (first bytes up to max_stdout), NUL-terminated for
     *  convenience; NULL when stdout went to stdout_path. Borrowed. */
    const char *stdout_data;
    size_t stdout_len;
    /** Captured stderr (its tail, see max_stderr), NUL-terminated. Borrowed. */
    const char *stderr_data;
    size_t stderr_len;
    int stderr_truncated;
    /** Wall time from spawn to completion; user+system CPU time of the child
     *  (and of the descendants it waited for), from wait4(). */
    int64_t wall_ms;
    int64_t cpu_ms;
} sl_exec_result_t;

/** Called exactly once on the loop thread. `res` is borrowed; `x` is freed by
 *  the module when the callback returns (do not cancel it afterwards). */
typedef void (*sl_exec_cb)(sl_exec_t *x, const sl_exec_result_t *res, void *arg);

/**
 * Starts opts->argv. `base` is borrowed and must outlive the handle; `opts` and
 * everything it points to are borrowed for this call only (the child has
 * exec'd, or failed to, before it returns). `arg` is passed to cb untouched.
 * On success returns 0 and the handle in *out (owned by the module; valid
 * until the callback returns). Returns SL_EINVAL (bad arguments), SL_ENOMEM,
 * SL_EAGAIN (out of fds or processes) or SL_EIO; then no callback and no child.
 * "Command not found" is not an error here: it is the callback's SL_ENOTFOUND.
 */
int sl_exec_start(struct event_base *base, const sl_exec_opts_t *opts, sl_exec_cb cb, void *arg,
                  sl_exec_t **out);

/**
 * Cancels: SIGKILLs the process group and stops reading its output. The
 * callback still fires exactly once, on a later loop turn, with SL_ECANCELED.
 * Calling it again, or from inside the handle's own callback, is a no-op.
 */
void sl_exec_cancel(sl_exec_t *x);

/**
 * Handles alive in this process: started and not yet past their callback.
 * A graceful stop (SIGTERM) waits for 0, so a run's scratch-dir removal or a
 * cancelled tool's reaping is not cut off by the exit (issue 12).
 */
int sl_exec_live(void);

/** The child's pid (also its process group and session id). */
pid_t sl_exec_pid(const sl_exec_t *x);

/** Tests only: non-zero forces the SIGCHLD fallback instead of pidfds for
 *  children started afterwards. */
void sl_exec__force_sigchld(int on);

#endif
