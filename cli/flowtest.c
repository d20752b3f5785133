/*
 * flowtest.c — `sluice flow test`: a flow run offline (actors/flow_offline.h)
 * on one sample, or a folder of cases with their expected outcomes.
 *
 *   sluice flow test FLOW --file SAMPLE [--replay DIR [--replay-exec]]
 *                   [--record DIR] [--config FILE] [--lib DIR] [--mime TYPE] [--json]
 *   sluice flow test --cases DIR [--lib DIR] [--json]
 *
 * A case is DIR/<case>/case.json (or case.yaml): the flow, the sample, the
 * services it has, where its cassettes are, and what to expect (see
 * docs/flows.md "Testing a flow offline"). Each case prints PASS or FAIL; a
 * failed one prints every difference, expected against got, and the run's
 * path. Exit status: 0 every case passed (or the one run succeeded), 1
 * otherwise, 2 bad arguments.
 */
#include "cli/flow.h"

#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <libfyaml.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actors/flow_offline.h"
#include "core/config.h"
#include "core/err.h"
#include "core/log.h"

#define OFFLINE_DB_URL                                                                             \
    "postgres://offline.invalid/sluice" /* required by the config; never used                      \
                                         */

static void usage(FILE *f)
{
    fprintf(f, "usage: sluice flow test FLOW --file SAMPLE [--replay DIR [--replay-exec]]\n"
               "                       [--record DIR] [--config FILE] [--lib DIR] [--mime TYPE] "
               "[--json] [-v]\n"
               "       sluice flow test --cases DIR [--lib DIR] [--json] [-v]\n"
               "Runs a flow offline (no Postgres, Redis or server) and prints its path, artifacts\n"
               "and record; --cases runs every case folder of DIR against its expectations.\n"
               "Exit status: 0 passed, 1 failed, 2 bad arguments.\n");
}

/* a/b into out (PATH_MAX; b alone when absolute); 0, or SL_ETOOBIG (out then empty) */
static int join(char *out, const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (b[0] == '/') { /* an absolute path stands alone */
        if (lb >= PATH_MAX)
            return SL_ETOOBIG;
        memcpy(out, b, lb + 1);
        return 0;
    }
    if (la + 1 + lb >= PATH_MAX) {
        out[0] = '\0';
        return SL_ETOOBIG;
    }
    memcpy(out, a, la);
    out[la] = '/';
    memcpy(out + la + 1, b, lb + 1);
    return 0;
}

/* The lib dir for a flow, as `sluice flow check` finds it: --lib, else the lib/
 * folder next to the flow when there is one, else NULL (lua-flows/lib). */
static const char *lib_for(const char *flow, const char *given, char *buf)
{
    const char *slash = strrchr(flow, '/');
    struct stat st;
    char dir[PATH_MAX];

    if (given != NULL)
        return given;
    if (slash == NULL || (size_t)(slash - flow) >= sizeof dir)
        return NULL;
    memcpy(dir, flow, (size_t)(slash - flow));
    dir[slash - flow] = '\0';
    if (join(buf, dir, "lib") == 0 && stat(buf, &st) == 0 && S_ISDIR(st.st_mode))
        return buf;
    return NULL;
}

/* ---- scratch ---- */

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int make_work(char *buf, size_t len)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, len, "%s/sluice-flowtest-XXXXXX", t && *t ? t : "/tmp");
    if (mkdtemp(buf) == NULL)
        return SL_EIO;
    /* traversable (not readable) by the tool user when Sluice runs as root
     * (actors/lua_exec.c drops to exec.user, default nobody) */
    chmod(buf, 0711);
    return 0;
}

static void drop_work(const char *dir)
{
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- printing ---- */

static void print_run(const json_t *r, const char *sample)
{
    size_t i;
    json_t *e;
    printf("flow %s (version %.12s) on %s\n", json_string_value(json_object_get(r, "pipeline")),
           json_string_value(json_object_get(r, "flow_version")), sample);
    printf("path:\n");
    json_array_foreach(json_object_get(r, "path"), i, e)
    {
        const char *note = json_string_value(json_object_get(e, "note"));
        const char *d0 = json_string_value(json_object_get(e, "detail"));
        char detail_buf[400], *detail = NULL;
        if (d0 != NULL) { /* one line: a tool's stderr has newlines */
            snprintf(detail_buf, sizeof detail_buf, "%s", d0);
            for (char *p = detail_buf; *p; p++)
                if (*p == '\n' || *p == '\r')
                    *p = ' ';
            detail = detail_buf;
        }
        printf("  %2zu. %-12s attempt %lld  %-14s %6lld ms%s%s%s%s\n", i + 1,
               json_string_value(json_object_get(e, "step")),
               (long long)json_integer_value(json_object_get(e, "attempt")),
               json_string_value(json_object_get(e, "outcome")),
               (long long)json_integer_value(json_object_get(e, "duration_ms")),
               note ? "  note " : "", note ? note : "", detail ? "  -- " : "",
               detail ? detail : "");
    }
    const char *err = json_string_value(json_object_get(r, "error"));
    const char *note = json_string_value(json_object_get(r, "note"));
    printf("outcome: %s%s%s%s%s\n", json_string_value(json_object_get(r, "outcome")),
           err ? " (" : "", err ? err : "", err ? ")" : "", note ? "" : "");
    if (note)
        printf("note: %s\n", note);
    printf("artifacts:%s\n", json_array_size(json_object_get(r, "artifacts")) ? "" : " none");
    json_array_foreach(json_object_get(r, "artifacts"), i, e)
    {
        printf("  %-10s %-28s %8lld bytes  sha256 %s\n",
               json_string_value(json_object_get(e, "kind")),
               json_string_value(json_object_get(e, "mime")),
               (long long)json_integer_value(json_object_get(e, "size")),
               json_string_value(json_object_get(e, "sha256")));
    }
    json_t *rec = json_object_get(r, "record");
    char *txt = json_is_null(rec) ? NULL : json_dumps(rec, JSON_SORT_KEYS | JSON_COMPACT);
    printf("record: %s\n", txt ? txt : "none");
    free(txt);
    json_array_foreach(json_object_get(r, "unrecorded"), i, e)
        printf("error: %s\n", json_string_value(e));
}

/* ---- one run ---- */

/* A config holding `services` (an object, borrowed; NULL: none). Returns owned, or NULL + err. */
static sl_config_t *services_config(const json_t *services, char *err, size_t errlen)
{
    json_t *doc = json_pack("{s:s}", "database_url", OFFLINE_DB_URL);
    sl_config_t *cfg = NULL;
    if (doc && services)
        json_object_set(doc, "services", (json_t *)services);
    char *txt = doc ? json_dumps(doc, JSON_COMPACT) : NULL; /* JSON is YAML */
    json_decref(doc);
    if (txt == NULL ||
        sl_config_load_string(txt, strlen(txt), "case services", &cfg, err, errlen) != 0)
        cfg = NULL;
    free(txt);
    return cfg;
}

/* ---- cases ---- */

/* case.json, or case.yaml converted to JSON by libfyaml. Returns owned, or NULL + err. */
static json_t *load_case(const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX];
    json_error_t je;
    struct stat st;

    join(path, dir, "case.json");
    if (stat(path, &st) == 0) {
        json_t *j = json_load_file(path, 0, &je);
        if (j == NULL)
            snprintf(err, errlen, "%.600s:%d: %s", path, je.line, je.text);
        return j;
    }
    join(path, dir, "case.yaml");
    struct fy_document *fyd = fy_document_build_from_file(NULL, path);
    if (fyd == NULL) {
        snprintf(err, errlen, "%.900s: no case.json, or case.yaml does not parse", dir);
        return NULL;
    }
    char *txt = fy_emit_document_to_string(fyd, FYECF_MODE_JSON);
    fy_document_destroy(fyd);
    json_t *j = txt ? json_loads(txt, 0, &je) : NULL;
    if (j == NULL)
        snprintf(err, errlen, "%.600s: %s", path, txt ? je.text : "cannot convert to JSON");
    free(txt);
    return j;
}

/* "step:outcome" for each entry of a run's path. */
static json_t *path_words(const json_t *path)
{
    json_t *out = json_array(), *e;
    size_t i;
    json_array_foreach(path, i, e)
    {
        char w[160];
        snprintf(w, sizeof w, "%s:%s", json_string_value(json_object_get(e, "step")),
                 json_string_value(json_object_get(e, "outcome")));
        json_array_append_new(out, json_string(w));
    }
    return out;
}

static void diff_line(int *ndiff, const char *what, const json_t *want, const json_t *got)
{
    char *w = json_dumps(want, JSON_ENCODE_ANY | JSON_COMPACT | JSON_SORT_KEYS);
    char *g = got ? json_dumps(got, JSON_ENCODE_ANY | JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    printf("    %s:\n      expected %s\n      got      %s\n", what, w ? w : "?",
           g ? g : "(nothing)");
    free(w);
    free(g);
    (*ndiff)++;
}

/* Compares a run's report with the case's expect; prints each difference. Returns their count. */
static int compare(const json_t *expect, const json_t *r)
{
    int n = 0;
    const char *k;
    json_t *v;
    static const char *const scalars[] = {"outcome", "error", "note", "text_source", NULL};

    for (int i = 0; scalars[i]; i++) {
        json_t *want = json_object_get(expect, scalars[i]);
        json_t *got = json_object_get(r, scalars[i]);
        if (want && !json_equal(want, got ? got : json_null()))
            diff_line(&n, scalars[i], want, got);
    }
    json_t *wp = json_object_get(expect, "path");
    if (wp) {
        json_t *gp = path_words(json_object_get(r, "path"));
        if (!json_equal(wp, gp))
            diff_line(&n, "path", wp, gp);
        json_decref(gp);
    }
    json_t *wa = json_object_get(expect, "artifacts");
    if (wa) {
        json_t *ga = json_array(), *e;
        size_t i;
        json_array_foreach(json_object_get(r, "artifacts"), i, e)
            json_array_append(ga, json_object_get(e, "kind"));
        if (!json_equal(wa, ga))
            diff_line(&n, "artifacts (kinds)", wa, ga);
        json_decref(ga);
    }
    /* record: the fields named must be there with these values (others may be too);
     * null: no record at all */
    json_t *wr = json_object_get(expect, "record");
    json_t *gr = json_object_get(r, "record");
    if (json_is_null(wr) && !json_is_null(gr))
        diff_line(&n, "record", wr, gr);
    json_object_foreach(wr, k, v)
    {
        json_t *g = json_object_get(gr, k);
        if (!json_equal(v, g)) {
            char what[160];
            snprintf(what, sizeof what, "record.%s", k);
            diff_line(&n, what, v, g);
        }
    }
    json_object_foreach(json_object_get(expect, "provenance"), k, v)
    {
        json_t *g = json_object_get(json_object_get(r, "provenance"), k);
        if (!json_equal(v, g)) {
            char what[160];
            snprintf(what, sizeof what, "provenance.%s", k);
            diff_line(&n, what, v, g);
        }
    }
    return n;
}

/* Runs one case folder; prints PASS/FAIL. 0 passed, 1 failed. */
static int run_case(const char *dir, const char *name, const char *lib, int as_json)
{
    char err[1024] = "", flow[PATH_MAX], sample[PATH_MAX], cas[PATH_MAX], work[PATH_MAX];
    json_t *c = load_case(dir, err, sizeof err), *r = NULL;
    sl_config_t *cfg = NULL;
    sl_offline_opts_t o = {0};
    struct stat st;
    int rc = 1, ndiff;

    if (c == NULL)
        goto out;
    const char *fl = json_string_value(json_object_get(c, "flow"));
    const char *fi = json_string_value(json_object_get(c, "file"));
    const char *ca = json_string_value(json_object_get(c, "cassettes"));
    const char *ex = json_string_value(json_object_get(c, "exec"));
    json_t *expect = json_object_get(c, "expect");
    if (fl == NULL || fi == NULL || !json_is_object(expect)) {
        snprintf(err, sizeof err, "%.900s: a case needs flow, file and expect", dir);
        goto out;
    }
    if (join(flow, dir, fl) != 0 || join(sample, dir, fi) != 0 ||
        join(cas, dir, ca ? ca : "cassettes") != 0) {
        snprintf(err, sizeof err, "%.900s: a path is too long", dir);
        goto out;
    }
    if ((cfg = services_config(json_object_get(c, "services"), err, sizeof err)) == NULL)
        goto out;
    if (make_work(work, sizeof work) != 0) {
        snprintf(err, sizeof err, "cannot create a scratch dir");
        goto out;
    }
    char libbuf[PATH_MAX];
    o.flow_path = flow;
    o.pipeline = json_string_value(json_object_get(c, "pipeline"));
    o.lib_dir = lib_for(flow, lib, libbuf);
    o.sample_path = sample;
    o.mime = json_string_value(json_object_get(c, "mime"));
    o.schema = json_object_get(c, "schema");
    o.cfg = cfg;
    /* a case never reaches the network: its calls come from cassettes (none: every call
     * is unrecorded) */
    o.replay_dir = stat(cas, &st) == 0 && S_ISDIR(st.st_mode) ? cas : NULL;
    o.replay_exec = ex != NULL && strcmp(ex, "replay") == 0;
    char empty[PATH_MAX];
    if (o.replay_dir == NULL) {
        join(empty, work, "no-cassettes");
        mkdir(empty, 0700);
        o.replay_dir = empty;
    }
    o.work_dir = work;
    int orc = sl_offline_run(&o, &r, err, sizeof err);
    drop_work(work);
    if (orc != 0)
        goto out;
    if (as_json) {
        char *t = json_dumps(r, JSON_INDENT(2) | JSON_SORT_KEYS);
        printf("%s\n", t ? t : "");
        free(t);
    }
    printf("%s %s\n", "----", name);
    ndiff = compare(expect, r);
    /* a call nobody recorded fails a case unless it expects exactly that */
    const char *werr = json_string_value(json_object_get(expect, "error"));
    ndiff += json_array_size(json_object_get(r, "unrecorded")) > 0 &&
             (werr == NULL || strcmp(werr, "not_recorded") != 0);
    if (ndiff == 0) {
        printf("PASS %s (%s, %zu steps)\n", name, json_string_value(json_object_get(r, "outcome")),
               json_array_size(json_object_get(r, "path")));
        rc = 0;
    } else {
        print_run(r, sample);
        printf("FAIL %s: %d difference%s\n", name, ndiff, ndiff == 1 ? "" : "s");
    }
out:
    if (err[0]) {
        printf("---- %s\n", name);
        printf("FAIL %s: %s\n", name, err);
    }
    json_decref(r);
    json_decref(c);
    sl_config_free(cfg);
    return rc;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cases_main(const char *dir, const char *lib, int as_json)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char *names[512];
    int n = 0, failed = 0, ran = 0;

    if (d == NULL) {
        fprintf(stderr, "sluice flow test: %s: cannot open\n", dir);
        return SL_FLOW_CLI_USAGE;
    }
    while ((e = readdir(d)) != NULL && n < 512) {
        char p[PATH_MAX], q[PATH_MAX];
        struct stat st;
        if (e->d_name[0] == '.')
            continue;
        char c[PATH_MAX];
        if (join(c, dir, e->d_name) != 0 || join(p, c, "case.json") != 0 ||
            join(q, c, "case.yaml") != 0)
            continue;
        if ((stat(p, &st) == 0 || stat(q, &st) == 0) && (names[n] = strdup(e->d_name)) != NULL)
            n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], name_cmp);
    for (int i = 0; i < n; i++) {
        char p[PATH_MAX];
        join(p, dir, names[i]);
        failed += run_case(p, names[i], lib, as_json);
        ran++;
        free(names[i]);
    }
    printf("%d case%s, %d passed, %d failed\n", ran, ran == 1 ? "" : "s", ran - failed, failed);
    if (ran == 0)
        fprintf(stderr, "sluice flow test: %s has no case folders (<case>/case.json)\n", dir);
    return failed || ran == 0 ? SL_FLOW_CLI_INVALID : SL_FLOW_CLI_OK;
}

int sl_cli_flow_test_main(int argc, char **argv)
{
    const char *flow = NULL, *sample = NULL, *replay = NULL, *record = NULL, *cases = NULL;
    const char *config = NULL, *lib = NULL, *mime = NULL;
    int as_json = 0, replay_exec = 0, verbose = 0, rc;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = strcmp(a, "--file") == 0     ? &sample
                            : strcmp(a, "--replay") == 0 ? &replay
                            : strcmp(a, "--record") == 0 ? &record
                            : strcmp(a, "--cases") == 0  ? &cases
                            : strcmp(a, "--config") == 0 ? &config
                            : strcmp(a, "--lib") == 0    ? &lib
                            : strcmp(a, "--mime") == 0   ? &mime
                                                         : NULL;
        if (slot != NULL && i + 1 < argc) {
            *slot = argv[++i];
        } else if (strcmp(a, "--json") == 0) {
            as_json = 1;
        } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
            verbose = 1;
        } else if (strcmp(a, "--replay-exec") == 0) {
            replay_exec = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return SL_FLOW_CLI_OK;
        } else if (a[0] != '-' && flow == NULL) {
            flow = a;
        } else {
            fprintf(stderr, "sluice flow test: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return SL_FLOW_CLI_USAGE;
        }
    }
    /* the flows' own log lines (sl.log, warnings) only with --verbose: the
     * path shows what happened */
    sl_log_set_level(verbose ? "debug" : "error");
    if (cases != NULL)
        return cases_main(cases, lib, as_json);
    if (flow == NULL || sample == NULL) {
        usage(stderr);
        return SL_FLOW_CLI_USAGE;
    }

    char err[1024] = "", work[PATH_MAX];
    sl_config_t *cfg = NULL;
    sl_offline_opts_t o = {0};
    json_t *r = NULL;
    if (config != NULL && sl_config_load(config, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "sluice flow test: %s\n", err);
        return SL_FLOW_CLI_USAGE;
    }
    if (cfg == NULL && (cfg = services_config(NULL, err, sizeof err)) == NULL) {
        fprintf(stderr, "sluice flow test: %s\n", err);
        return SL_FLOW_CLI_INVALID;
    }
    if (make_work(work, sizeof work) != 0) {
        fprintf(stderr, "sluice flow test: cannot create a scratch dir\n");
        sl_config_free(cfg);
        return SL_FLOW_CLI_INVALID;
    }
    char libbuf[PATH_MAX];
    o.flow_path = flow;
    o.lib_dir = lib_for(flow, lib, libbuf);
    o.sample_path = sample;
    o.mime = mime;
    o.cfg = cfg;
    o.replay_dir = replay;
    o.replay_exec = replay_exec;
    o.record_dir = record;
    o.work_dir = work;
    rc = sl_offline_run(&o, &r, err, sizeof err);
    drop_work(work);
    sl_config_free(cfg);
    if (rc != 0) {
        fprintf(stderr, "sluice flow test: %s\n", err);
        return SL_FLOW_CLI_INVALID;
    }
    if (as_json) {
        char *t = json_dumps(r, JSON_INDENT(2) | JSON_SORT_KEYS);
        printf("%s\n", t ? t : "");
        free(t);
    } else {
        print_run(r, sample);
    }
    rc = strcmp(json_string_value(json_object_get(r, "outcome")), "succeeded") == 0
             ? SL_FLOW_CLI_OK
             : SL_FLOW_CLI_INVALID;
    json_decref(r);
    return rc;
}
