/*
 * flow.c — `sluice flow check` (see flow.h): each file checked in a flow VM
 * of its own, created here without any backend (the sandbox needs only an
 * event base; primitives that would reach a service are never called while a
 * flow loads), every error printed.
 */
#include "cli/flow.h"

#include <event2/event.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "actors/flow_check.h"
#include "core/err.h"

#define DEFAULT_LIB_DIR "lua-flows/lib"

static void usage(FILE *f)
{
    fprintf(f, "usage: sluice flow check [--lib DIR] FILE...\n"
               "       sluice flow test ... (sluice flow test --help)\n"
               "Checks flow files offline; prints FILE:LINE: message for each error.\n"
               "Exit status: 0 all valid, 1 some invalid, 2 bad arguments.\n");
}

/* The lib dir for path: --lib, else <dir of path>/lib when it is a directory, else the default. */
static const char *lib_dir_for(const char *path, const char *given, char *buf, size_t buflen)
{
    const char *slash = strrchr(path, '/');
    struct stat st;
    int n;

    if (given != NULL)
        return given;
    n = slash ? snprintf(buf, buflen, "%.*s/lib", (int)(slash - path), path)
              : snprintf(buf, buflen, "lib");
    if (n > 0 && (size_t)n < buflen && stat(buf, &st) == 0 && S_ISDIR(st.st_mode))
        return buf;
    return DEFAULT_LIB_DIR;
}

/* Checks one file; prints its errors. 0 valid, 1 invalid, -1 the check could not run. */
static int check_one(struct event_base *base, const char *path, const char *lib)
{
    sl_flow_host_t host = {0};
    sl_flowvm_t *vm = NULL;
    sl_flow_check_t *c = NULL;
    char err[512], libbuf[PATH_MAX];
    int rc;

    host.base = base;
    host.lib_dir = lib_dir_for(path, lib, libbuf, sizeof libbuf);
    host.tmp_root = "/tmp";
    if (sl_flowvm_new(&host, &vm, err, sizeof err) != 0) {
        fprintf(stderr, "sluice: %s\n", err);
        return -1;
    }
    rc = sl_flow_check_file(vm, path, &c);
    if (c == NULL) {
        fprintf(stderr, "%s:1: %s\n", path, sl_strerror(rc));
        rc = -1;
    } else {
        for (int i = 0; i < sl_flow_check_nerrors(c); i++)
            fprintf(stderr, "%s\n", sl_flow_check_error(c, i));
        if (sl_flow_check_nerrors(c) == 0)
            printf("%s: ok\n", path);
        rc = sl_flow_check_nerrors(c) > 0 ? 1 : 0;
    }
    sl_flow_check_free(c);
    sl_flowvm_free(vm);
    return rc;
}

static int check_main(int argc, char **argv)
{
    const char *lib = NULL;
    struct event_base *base;
    int first = 1, bad = 0;

    for (; first < argc && argv[first][0] == '-'; first++) {
        if (strcmp(argv[first], "--lib") == 0 && first + 1 < argc) {
            lib = argv[++first];
        } else if (strncmp(argv[first], "--lib=", 6) == 0) {
            lib = argv[first] + 6;
        } else if (strcmp(argv[first], "--") == 0) {
            first++;
            break;
        } else if (strcmp(argv[first], "--help") == 0 || strcmp(argv[first], "-h") == 0) {
            usage(stdout);
            return SL_FLOW_CLI_OK;
        } else {
            fprintf(stderr, "sluice flow check: unknown option '%s'\n", argv[first]);
            usage(stderr);
            return SL_FLOW_CLI_USAGE;
        }
    }
    if (first >= argc) {
        usage(stderr);
        return SL_FLOW_CLI_USAGE;
    }
    if ((base = event_base_new()) == NULL) {
        fprintf(stderr, "sluice: out of memory\n");
        return SL_FLOW_CLI_INVALID;
    }
    for (int i = first; i < argc; i++)
        bad |= check_one(base, argv[i], lib) != 0;
    event_base_free(base);
    return bad ? SL_FLOW_CLI_INVALID : SL_FLOW_CLI_OK;
}

int sl_cli_flow_main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "check") == 0)
        return check_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "test") == 0)
        return sl_cli_flow_test_main(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return SL_FLOW_CLI_OK;
    }
    fprintf(stderr, "sluice flow: unknown or missing subcommand%s%s\n", argc >= 2 ? ": " : "",
            argc >= 2 ? argv[1] : "");
    usage(stderr);
    return SL_FLOW_CLI_USAGE;
}
