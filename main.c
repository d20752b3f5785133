/*
 * main.c — the sluice executable: arguments, configuration, subcommands.
 *
 *   sluice [serve] --config PATH   serve (migrates the database first)
 *   sluice migrate --config PATH   apply schema migrations and exit
 *   sluice upload --dataset ID ... upload files and follow them (cli/upload.h)
 *   sluice flow check FILE...      check flow files offline (cli/flow.h)
 *   sluice --version | --help
 *
 * Serving (the process roles, what each builds, start-up and shutdown) is
 * app.c's: main reads the configuration, sets process-wide state (log level,
 * SIGPIPE, the descriptor limit) and calls sl_app_run.
 */
#include "app.h"
#include "cli/flow.h" /* sluice flow check (issue 14) */
#include "cli/upload.h"
#include "core/err.h"
#include "core/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* ---- sluice routes: what the router serves (issue 13, openapi) ---- */

static int print_route_cb(const char *method, const char *pattern, const char *name, void *arg)
{
    (void)name;
    return fprintf(arg, "%s %s\n", method, pattern) < 0 ? SL_EIO : 0;
}

/*
 * Registers every route as `serve` does, without serving, and prints one
 * "METHOD PATTERN" line per route in registration order (the OpenAPI check,
 * tests/blackbox/test_openapi.py, compares them with docs/openapi.json).
 */
static int print_routes(sl_config_t *cfg)
{
    static sl_app_t routes_app; /* the routes' arg; nothing is opened */
    sl_app_t *app = &routes_app;
    memset(app, 0, sizeof *app);
    app->cfg = cfg;
    if (!(app->router = sl_http_router_new()))
        return SL_ENOMEM;
    sl_app_register_routes(app);
    int err = sl_http_router_each(app->router, print_route_cb, stdout);
    if (fflush(stdout) != 0 && err == 0)
        err = SL_EIO;
    sl_http_router_free(app->router);
    app->router = NULL;
    return err;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: sluice [serve] --config PATH\n"
               "       sluice migrate --config PATH\n"
               "       sluice routes [--config PATH]   (print METHOD PATTERN per route)\n"
               "       sluice upload --dataset ID [--url URL] [--key KEY] FILES_OR_DIRS...\n"
               "       sluice flow check [--lib DIR] FILE...\n"
               "       sluice --version\n"
               "The config path may also come from SLUICE_CONFIG.\n");
}

int main(int argc, char **argv)
{
    const char *cmd = "serve";
    const char *config_path = getenv("SLUICE_CONFIG");
    /* A client of the API: no server configuration involved. */
    if (argc >= 2 && strcmp(argv[1], "upload") == 0)
        return sl_cli_upload_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "flow") == 0) /* offline: no configuration either */
        return sl_cli_flow_main(argc - 1, argv + 1);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config_path = argv[i] + 9;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("sluice %s\n", SLUICE_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "serve") == 0 || strcmp(argv[i], "migrate") == 0 ||
                   strcmp(argv[i], "routes") == 0) {
            cmd = argv[i];
        } else {
            fprintf(stderr, "sluice: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    char errbuf[512];
    sl_config_t *cfg = NULL;
    if (!config_path && strcmp(cmd, "routes") == 0) {
        /* Routes do not depend on the configuration: any valid one will do. */
        static const char min_cfg[] = "database_url: \"postgresql:///unused\"\n";
        if (sl_config_load_string(min_cfg, sizeof min_cfg - 1, "routes", &cfg, errbuf,
                                  sizeof errbuf) != 0) {
            fprintf(stderr, "sluice: %s\n", errbuf);
            return 2;
        }
        int err = print_routes(cfg);
        sl_config_free(cfg);
        return err ? 1 : 0;
    }
    if (!config_path) {
        fprintf(stderr, "sluice: no configuration: pass --config PATH or set SLUICE_CONFIG\n");
        return 2;
    }
    if (sl_config_load(config_path, &cfg, errbuf, sizeof errbuf) != 0) {
        fprintf(stderr, "sluice: %s\n", errbuf);
        return 2;
    }
    sl_log_set_level(cfg->log_level);
    sl_log_catch_fatal(); /* a crash still writes the buffered log lines */
    signal(SIGPIPE, SIG_IGN);
    /*
     * Every connection (SSE clients stay open) and pending upload holds a
     * descriptor: use the hard limit, as nginx's worker_rlimit_nofile does.
     */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }

    int rc;
    if (strcmp(cmd, "routes") == 0) {
        rc = print_routes(cfg);
    } else if (strcmp(cmd, "migrate") == 0) {
        rc = sl_pg_migrate(cfg->database_url, sl_pg_migrations, sl_pg_nmigrations, errbuf,
                           sizeof errbuf);
        if (rc)
            fprintf(stderr, "sluice: migrate: %s\n", errbuf);
        else
            printf("sluice: schema up to date (%d migrations)\n", sl_pg_nmigrations);
    } else {
        rc = sl_app_run(cfg); /* serve: app.c */
    }
    sl_config_free(cfg);
    return rc ? 1 : 0;
}
