/* A private throwaway Postgres for the unit tests that need one (test_pg,
 * test_flow): initdb into a fresh temp dir, start it on a unix socket only
 * (no TCP), stop it and remove the dir at the end. As root, the server's
 * commands run as `nobody` (Postgres refuses to run as root) and the dir is
 * chowned to it. Header-only: each test is a single .c file.
 *
 *     static pgtmp_t pgt;
 *     if (pgtmp_setup(&pgt, "/tmp/sl_x_XXXXXX", "55999", conninfo, sizeof conninfo) != 0) ...
 *     ...
 *     pgtmp_teardown(&pgt);   // a no-op when setup did not start a server
 *
 * Every command's output goes to <dir>/cmd.log, the server's to
 * <dir>/data/server.log. pgtmp_sql_scalar runs one blocking statement against
 * any conninfo (the throwaway server's or SL_TEST_DATABASE_URL's). */
#ifndef SL_TESTS_UNIT_PGTMP_H
#define SL_TESTS_UNIT_PGTMP_H

#include <fcntl.h>
#include <glob.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    char dir[64];     /* the temp dir: the socket, cmd.log, data/ */
    char data[128];   /* the data directory */
    char bindir[256]; /* the newest /usr/lib/postgresql/N/bin */
    const char *port; /* borrowed: a string literal, e.g. "55432" */
    int own;          /* 1 once the server started; teardown stops it */
} pgtmp_t;

/* Runs argv (as `nobody` when root) in t->dir, output appended to cmd.log;
 * returns the exit status, or -1. argv is borrowed, NULL-terminated. */
static inline int pgtmp_run(const pgtmp_t *t, const char *const *argv)
{
    const char *full[32];
    int k = 0, status;
    pid_t pid;

    if (geteuid() == 0) {
        full[k++] = "runuser";
        full[k++] = "-u";
        full[k++] = "nobody";
        full[k++] = "--";
    }
    for (int i = 0; argv[i] && k < 31; i++)
        full[k++] = argv[i];
    full[k] = NULL;
    if ((pid = fork()) < 0)
        return -1;
    if (pid == 0) {
        char logp[160];
        snprintf(logp, sizeof logp, "%s/cmd.log", t->dir);
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0666);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        if (chdir(t->dir) != 0)
            _exit(126);
        execvp(full[0], (char *const *)full);
        _exit(127);
    }
    if (waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Copies cmd.log to stderr (after a failed setup). */
static inline void pgtmp_dump_log(const pgtmp_t *t)
{
    char p[160], line[512];
    snprintf(p, sizeof p, "%s/cmd.log", t->dir);
    FILE *f = fopen(p, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

/* pg_ctl start (waits up to 60 s); returns pg_ctl's exit status, or -1. */
static inline int pgtmp_start(const pgtmp_t *t)
{
    char tool[300], opts[256];
    snprintf(tool, sizeof tool, "%s/pg_ctl", t->bindir);
    snprintf(opts, sizeof opts, "-c listen_addresses='' -k %s -p %s -c fsync=off", t->dir, t->port);
    const char *argv[] = {tool, "-D", t->data, "-l", "server.log", "-w",
                          "-t", "60", "-o",    opts, "start",      NULL};
    return pgtmp_run(t, argv);
}

/* pg_ctl stop -m `mode` ("fast", "immediate"...; borrowed); returns its exit
 * status, or -1. */
static inline int pgtmp_stop(const pgtmp_t *t, const char *mode)
{
    char tool[300];
    snprintf(tool, sizeof tool, "%s/pg_ctl", t->bindir);
    const char *argv[] = {tool, "-D", t->data, "-w", "-m", mode, "stop", NULL};
    return pgtmp_run(t, argv);
}

/* Makes a temp dir from `dir_template` (borrowed, ends in XXXXXX), runs
 * initdb (user "sluice", trust auth) and starts the server on `port`
 * (borrowed; must outlive t). On success writes the libpq conninfo into
 * conninfo[cap] and returns 0; on failure prints why on stderr and returns -1
 * (pgtmp_teardown is still safe to call). */
static inline int pgtmp_setup(pgtmp_t *t, const char *dir_template, const char *port,
                              char *conninfo, size_t cap)
{
    glob_t g;
    char tool[300];

    memset(t, 0, sizeof *t);
    t->port = port;
    if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) != 0 || g.gl_pathc == 0) {
        fprintf(stderr, "no initdb under /usr/lib/postgresql/*/bin\n");
        return -1;
    }
    snprintf(t->bindir, sizeof t->bindir, "%s", g.gl_pathv[g.gl_pathc - 1]);
    globfree(&g);
    *strrchr(t->bindir, '/') = '\0';

    snprintf(t->dir, sizeof t->dir, "%s", dir_template);
    if (!mkdtemp(t->dir))
        return -1;
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw || chown(t->dir, pw->pw_uid, pw->pw_gid) != 0)
            return -1;
    }
    snprintf(t->data, sizeof t->data, "%s/data", t->dir);
    snprintf(tool, sizeof tool, "%s/initdb", t->bindir);
    const char *argv[] = {tool,     "-D", t->data, "-A",   "trust",      "-U",
                          "sluice", "-N", "-E",    "UTF8", "--locale=C", NULL};
    if (pgtmp_run(t, argv) != 0 || pgtmp_start(t) != 0) {
        pgtmp_dump_log(t);
        return -1;
    }
    t->own = 1;
    snprintf(conninfo, cap, "host=%s port=%s user=sluice dbname=postgres", t->dir, port);
    return 0;
}

/* Stops the server (immediate) and removes the temp dir; a no-op unless
 * pgtmp_setup started a server. */
static inline void pgtmp_teardown(pgtmp_t *t)
{
    if (!t->own)
        return;
    pgtmp_stop(t, "immediate");
    /* runs as root again: rm does not need the server's user */
    pid_t pid = fork();
    if (pid == 0) {
        execlp("rm", "rm", "-rf", t->dir, (char *)NULL);
        _exit(127);
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
    t->own = 0;
}

static inline void pgtmp_quiet_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* Runs `sql` on a fresh blocking connection to `conninfo` (both borrowed) and
 * writes into out[cap] the first value of the first row, "<null>", "<ok>" (a
 * command without rows) or "<error: libpq's message>". */
static inline void pgtmp_sql_scalar(const char *conninfo, const char *sql, char *out, size_t cap)
{
    PGconn *pc = PQconnectdb(conninfo);
    PQsetNoticeProcessor(pc, pgtmp_quiet_notice, NULL);
    PGresult *r = PQstatus(pc) == CONNECTION_OK ? PQexec(pc, sql) : NULL;
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(out, cap, "%s", PQgetisnull(r, 0, 0) ? "<null>" : PQgetvalue(r, 0, 0));
    else if (r && PQresultStatus(r) == PGRES_COMMAND_OK)
        snprintf(out, cap, "<ok>");
    else
        snprintf(out, cap, "<error: %s>", pc ? PQerrorMessage(pc) : "");
    PQclear(r);
    PQfinish(pc);
}

#endif
