/*
 * test_config.c — unit tests for core/config.c: every key read back, the
 * defaults, ${ENV} expansion, and the "file:line: key: message" errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/err.h"

#include "check.h"

#define STREQ(a, b) ((a) != NULL && (b) != NULL && strcmp((a), (b)) == 0)
#define CONTAINS(hay, needle) (strstr((hay), (needle)) != NULL)

static char err[512];

/* Loads `yaml` as "sluice.yaml"; returns the rc, the config (or NULL) in *out. */
static int load(const char *yaml, sl_config_t **out)
{
    int rc;
    err[0] = '\0';
    rc = sl_config_load_string(yaml, strlen(yaml), "sluice.yaml", out, err, sizeof(err));
    if (rc != 0 && getenv("TEST_VERBOSE") != NULL)
        fprintf(stderr, "  (error: %s)\n", err);
    return rc;
}

/* Expects a load failure whose message is exactly `want`. */
static void expect_error(const char *yaml, const char *want, int line)
{
    sl_config_t *cfg = (sl_config_t *)1;
    int rc = load(yaml, &cfg);
    if (rc != SL_ECONFIG || cfg != NULL || strcmp(err, want) != 0) {
        failed++;
        fprintf(stderr, "%s:%d: expected error \"%s\", got rc=%d \"%s\"\n", __FILE__, line, want,
                rc, err);
    } else {
        passed++;
    }
}
#define EXPECT_ERROR(yaml, want) expect_error((yaml), (want), __LINE__)

static void test_full(void)
{
    const char *yaml = "listen: \"0.0.0.0:9000\"\n"
                       "workers: 4\n"
                       "database_url: \"postgresql:///sluice?host=/tmp\"\n"
                       "database_pool: 16\n"
                       "database_statement_timeout_ms: 5000\n"
                       "redis_url: redis://127.0.0.1:6379/0\n"
                       "admin_key: adm1n\n"
                       "public_url: https://sluice.example\n"
                       "log_level: debug\n"
                       "web_root: /srv/web\n"
                       "storage:\n"
                       "  backend: s3\n"
                       "  path: /var/blobs\n"
                       "  endpoint: http://127.0.0.1:9000\n"
                       "  bucket: files\n"
                       "  region: eu-west-1\n"
                       "  access_key_id: AKID\n"
                       "  secret_access_key: SECRET\n"
                       "services:\n"
                       "  tika: {url: \"http://127.0.0.1:9998\", timeout_ms: 5000}\n"
                       "  ocr:\n"
                       "    command: [\"tesseract\", \"{input}\", \"stdout\"]\n"
                       "    concurrency: 2\n"
                       "    retry: {max_attempts: 5, base_ms: 100, max_ms: 2000}\n"
                       "  textract: {endpoint: \"https://textract.us-east-1.amazonaws.com\",\n"
                       "             region: us-east-1, access_key_id: K, secret_access_key: S}\n"
                       "  openai: {base_url: \"https://api.openai.com/v1\", api_key: sk,\n"
                       "           model: gpt-4o-mini, rate_per_s: 2.5}\n"
                       "limits:\n"
                       "  max_file_bytes: 2048\n"
                       "  max_files_per_request: 7\n"
                       "  max_request_bytes: 9999\n"
                       "  max_json_bytes: 4096\n"
                       "  max_header_bytes: 8192\n"
                       "  max_connections: 50\n"
                       "  header_timeout_ms: 1000\n"
                       "  idle_timeout_ms: 2000\n"
                       "  body_timeout_ms: 3000\n"
                       "pipelines:\n"
                       "  - {name: ai_record, flow: lua-flows/ai_record.lua,\n"
                       "     match: [\"application/pdf\", \"image/*\", \"text/*\"]}\n"
                       "  - name: file_view\n"
                       "    flow: lua-flows/file_view.lua\n"
                       "    match: [\"*/*\"]\n"
                       "tenants:\n"
                       "  - {name: acme, api_key: k1}\n"
                       "  - {name: globex, api_key: k2}\n";
    sl_config_t *cfg = NULL;
    const sl_config_service_t *s;

    CHECK(load(yaml, &cfg) == 0);
    CHECK(cfg != NULL);
    if (cfg == NULL)
        return;
    CHECK(STREQ(cfg->path, "sluice.yaml"));
    CHECK(STREQ(cfg->listen, "0.0.0.0:9000"));
    CHECK(cfg->workers == 4);
    CHECK(STREQ(cfg->database_url, "postgresql:///sluice?host=/tmp"));
    CHECK(cfg->database_pool == 16);
    CHECK(cfg->database_statement_timeout_ms == 5000);
    CHECK(STREQ(cfg->redis_url, "redis://127.0.0.1:6379/0"));
    CHECK(STREQ(cfg->admin_key, "adm1n"));
    CHECK(STREQ(cfg->public_url, "https://sluice.example"));
    CHECK(STREQ(cfg->log_level, "debug"));
    CHECK(STREQ(cfg->web_root, "/srv/web"));
    CHECK(STREQ(cfg->storage_backend, "s3"));
    CHECK(STREQ(cfg->storage_path, "/var/blobs"));
    CHECK(STREQ(cfg->s3_endpoint, "http://127.0.0.1:9000"));
    CHECK(STREQ(cfg->s3_bucket, "files"));
    CHECK(STREQ(cfg->s3_region, "eu-west-1"));
    CHECK(STREQ(cfg->s3_access_key_id, "AKID"));
    CHECK(STREQ(cfg->s3_secret_access_key, "SECRET"));

    CHECK(cfg->nservices == 4);
    s = sl_config_service(cfg, "tika");
    CHECK(s != NULL && s->configured == 1 && STREQ(s->url, "http://127.0.0.1:9998"));
    CHECK(s != NULL && s->timeout_ms == 5000 && s->concurrency == 8);
    CHECK(s != NULL && s->retry_max_attempts == 3 && s->retry_base_ms == 500 &&
          s->retry_max_ms == 30000 && s->rate_per_s == 0.0 && s->command[0] == NULL);
    s = sl_config_service(cfg, "ocr");
    CHECK(s != NULL && s->configured == 1 && s->url == NULL);
    CHECK(s != NULL && STREQ(s->command[0], "tesseract") && STREQ(s->command[1], "{input}") &&
          STREQ(s->command[2], "stdout") && s->command[3] == NULL);
    CHECK(s != NULL && s->concurrency == 2 && s->timeout_ms == 30000);
    CHECK(s != NULL && s->retry_max_attempts == 5 && s->retry_base_ms == 100 &&
          s->retry_max_ms == 2000);
    s = sl_config_service(cfg, "textract");
    CHECK(s != NULL && s->configured == 1 &&
          STREQ(s->url, "https://textract.us-east-1.amazonaws.com"));
    CHECK(s != NULL && STREQ(s->region, "us-east-1") && STREQ(s->access_key_id, "K") &&
          STREQ(s->secret_access_key, "S"));
    s = sl_config_service(cfg, "openai");
    CHECK(s != NULL && s->configured == 1 && STREQ(s->url, "https://api.openai.com/v1"));
    CHECK(s != NULL && STREQ(s->api_key, "sk") && STREQ(s->model, "gpt-4o-mini"));
    CHECK(s != NULL && s->rate_per_s == 2.5);
    CHECK(sl_config_service(cfg, "nope") == NULL);

    CHECK(cfg->max_file_bytes == 2048);
    CHECK(cfg->max_files_per_request == 7);
    CHECK(cfg->max_request_bytes == 9999);
    CHECK(cfg->max_json_bytes == 4096);
    CHECK(cfg->max_header_bytes == 8192);
    CHECK(cfg->max_connections == 50);
    CHECK(cfg->header_timeout_ms == 1000);
    CHECK(cfg->idle_timeout_ms == 2000);
    CHECK(cfg->body_timeout_ms == 3000);

    CHECK(cfg->has_pipelines == 1);
    CHECK(cfg->npipelines == 2);
    CHECK(STREQ(cfg->pipelines[0].name, "ai_record"));
    CHECK(STREQ(cfg->pipelines[0].flow, "lua-flows/ai_record.lua"));
    CHECK(STREQ(cfg->pipelines[0].match[0], "application/pdf"));
    CHECK(STREQ(cfg->pipelines[0].match[1], "image/*"));
    CHECK(STREQ(cfg->pipelines[0].match[2], "text/*"));
    CHECK(cfg->pipelines[0].match[3] == NULL);
    CHECK(cfg->pipelines[0].line == 40);
    CHECK(STREQ(cfg->pipelines[1].name, "file_view"));
    CHECK(STREQ(cfg->pipelines[1].match[0], "*/*") && cfg->pipelines[1].match[1] == NULL);
    CHECK(cfg->pipelines[1].line == 42);

    CHECK(cfg->ntenants == 2);
    CHECK(STREQ(cfg->tenants[0].name, "acme") && STREQ(cfg->tenants[0].api_key, "k1"));
    CHECK(STREQ(cfg->tenants[1].name, "globex") && STREQ(cfg->tenants[1].api_key, "k2"));
    sl_config_free(cfg);
}

static void test_defaults(void)
{
    sl_config_t *cfg = NULL;

    unsetenv("SLUICE_ADMIN_KEY");
    CHECK(load("database_url: postgres://x\n", &cfg) == 0);
    if (cfg == NULL)
        return;
    CHECK(STREQ(cfg->listen, "127.0.0.1:8080"));
    CHECK(cfg->workers == 1);
    CHECK(cfg->database_pool == 4);
    CHECK(cfg->database_statement_timeout_ms == 30000);
    CHECK(cfg->engine_lease_s == 30);
    CHECK(cfg->redis_url == NULL);
    CHECK(cfg->admin_key == NULL);
    CHECK(cfg->public_url == NULL);
    CHECK(STREQ(cfg->log_level, "info"));
    CHECK(STREQ(cfg->web_root, "web"));
    sl_config_free(cfg);
    cfg = NULL;
    /* runlife (issue 13): log.level, the same value as log_level */
    CHECK(load("database_url: postgres://x\nlog: {level: warn}\n", &cfg) == 0);
    if (cfg == NULL)
        return;
    CHECK(STREQ(cfg->log_level, "warn"));
    CHECK(STREQ(cfg->storage_backend, "fs"));
    CHECK(STREQ(cfg->storage_path, "./var/blobs"));
    CHECK(cfg->s3_endpoint == NULL && cfg->s3_bucket == NULL);
    CHECK(cfg->max_file_bytes == 104857600);
    CHECK(cfg->max_files_per_request == 1000);
    CHECK(cfg->max_request_bytes == 0);
    CHECK(cfg->max_json_bytes == 1048576);
    CHECK(cfg->max_header_bytes == 65536);
    CHECK(cfg->max_connections == 10000);
    CHECK(cfg->header_timeout_ms == 30000);
    CHECK(cfg->idle_timeout_ms == 60000);
    CHECK(cfg->body_timeout_ms == 60000);
    CHECK(cfg->nservices == 0 && sl_config_service(cfg, "tika") == NULL);
    CHECK(cfg->has_pipelines == 0 && cfg->npipelines == 0);
    CHECK(cfg->ntenants == 0);
    sl_config_free(cfg);

    /* Empty sections keep defaults; an explicit empty pipelines list still counts. */
    CHECK(load("database_url: x\nstorage:\nlimits: {}\nservices:\npipelines: []\n", &cfg) == 0);
    if (cfg != NULL) {
        CHECK(cfg->max_file_bytes == 104857600 && STREQ(cfg->storage_backend, "fs"));
        CHECK(cfg->has_pipelines == 1 && cfg->npipelines == 0);
        sl_config_free(cfg);
    }

    /* s3 (issue 12): path_style and part_size. */
    CHECK(load("database_url: x\nstorage: {backend: s3, endpoint: http://s3, bucket: b, "
               "path_style: true, part_size: 16777216}\n",
               &cfg) == 0);
    if (cfg != NULL) {
        CHECK(STREQ(cfg->s3_path_style, "true") && cfg->s3_part_size == 16777216);
        CHECK(cfg->s3_abort_stale_after_s == 24 * 3600); /* the sweeper's default age */
        sl_config_free(cfg);
    }
    /* A checked string with no default, given empty or null, stays unset (its
     * check once got NULL: fuzz_config's crash, a SEGV in strcmp). */
    CHECK(load("database_url: x\nstorage: {backend: s3, endpoint: http://s3, bucket: b, "
               "path_style: \"\", presigned_redirects: ~}\nfairness: {shares: }\n",
               &cfg) == 0);
    if (cfg != NULL) {
        CHECK(cfg->s3_path_style == NULL && cfg->s3_presigned_redirects == NULL);
        CHECK(cfg->fairness_shares == NULL);
        sl_config_free(cfg);
    }
    CHECK(load("database_url: x\nstorage: {backend: s3, endpoint: http://s3, bucket: b, "
               "abort_stale_uploads_after_s: 60}\n",
               &cfg) == 0);
    if (cfg != NULL) {
        CHECK(cfg->s3_abort_stale_after_s == 60);
        sl_config_free(cfg);
    }
}

static void test_admin_key_env(void)
{
    sl_config_t *cfg = NULL;

    setenv("SLUICE_ADMIN_KEY", "from-env", 1);
    CHECK(load("database_url: x\n", &cfg) == 0);
    CHECK(cfg != NULL && STREQ(cfg->admin_key, "from-env"));
    sl_config_free(cfg);
    CHECK(load("database_url: x\nadmin_key: \"\"\n", &cfg) == 0);
    CHECK(cfg != NULL && STREQ(cfg->admin_key, "from-env"));
    sl_config_free(cfg);
    CHECK(load("database_url: x\nadmin_key: mine\n", &cfg) == 0);
    CHECK(cfg != NULL && STREQ(cfg->admin_key, "mine"));
    sl_config_free(cfg);
    setenv("SLUICE_ADMIN_KEY", "", 1);
    CHECK(load("database_url: x\n", &cfg) == 0);
    CHECK(cfg != NULL && cfg->admin_key == NULL);
    sl_config_free(cfg);
    unsetenv("SLUICE_ADMIN_KEY");
}

static void test_expand(void)
{
    char out[64], eb[128];

    setenv("SL_T_A", "alpha", 1);
    setenv("SL_T_EMPTY", "", 1);
    unsetenv("SL_T_UNSET");
    CHECK(sl_config_expand("x${SL_T_A}y", out, sizeof(out), eb, sizeof(eb)) == 7);
    CHECK(strcmp(out, "xalphay") == 0);
    CHECK(sl_config_expand("${SL_T_UNSET:-def}", out, sizeof(out), eb, sizeof(eb)) == 3);
    CHECK(strcmp(out, "def") == 0);
    CHECK(sl_config_expand("${SL_T_EMPTY:-def}", out, sizeof(out), eb, sizeof(eb)) == 3);
    CHECK(strcmp(out, "def") == 0);
    CHECK(sl_config_expand("${SL_T_EMPTY}", out, sizeof(out), eb, sizeof(eb)) == 0);
    CHECK(strcmp(out, "") == 0);
    CHECK(sl_config_expand("${SL_T_A:-def}", out, sizeof(out), eb, sizeof(eb)) == 5);
    CHECK(strcmp(out, "alpha") == 0);
    CHECK(sl_config_expand("$$HOME $5 $", out, sizeof(out), eb, sizeof(eb)) == 10);
    CHECK(strcmp(out, "$HOME $5 $") == 0);
    CHECK(sl_config_expand("$${SL_T_A}", out, sizeof(out), eb, sizeof(eb)) == 9);
    CHECK(strcmp(out, "${SL_T_A}") == 0);
    eb[0] = '\0';
    CHECK(sl_config_expand("a${SL_T_UNSET}b", out, sizeof(out), eb, sizeof(eb)) == SL_EINVAL);
    CHECK(CONTAINS(eb, "SL_T_UNSET"));
    CHECK(sl_config_expand("${SL_T_A", out, sizeof(out), eb, sizeof(eb)) == SL_EINVAL);
    CHECK(sl_config_expand("${SL_T_A:-x", out, sizeof(out), eb, sizeof(eb)) == SL_EINVAL);
    CHECK(sl_config_expand("${}", out, sizeof(out), eb, sizeof(eb)) == SL_EINVAL);
    CHECK(sl_config_expand("${1X}", out, sizeof(out), eb, sizeof(eb)) == SL_EINVAL);
    CHECK(sl_config_expand("${SL_T_A}", out, 5, eb, sizeof(eb)) == SL_ETOOBIG);
    CHECK(sl_config_expand("${SL_T_A}", out, 6, eb, sizeof(eb)) == 5);
    CHECK(sl_config_expand("x", out, 0, eb, sizeof(eb)) == SL_ETOOBIG);
}

static void test_env_in_config(void)
{
    sl_config_t *cfg = NULL;

    setenv("SL_T_DB", "postgres://db/sluice", 1);
    setenv("SL_T_PORT", "8123", 1);
    setenv("SL_T_WORKERS", "3", 1);
    unsetenv("SL_T_UNSET");
    CHECK(load("database_url: ${SL_T_DB}\n"
               "listen: \"127.0.0.1:${SL_T_PORT}\"\n"
               "workers: ${SL_T_WORKERS}\n"
               "database_pool: ${SL_T_UNSET:-9}\n"
               "public_url: 'cost: $$5'\n"
               "redis_url: ${SL_T_UNSET:-}\n",
               &cfg) == 0);
    if (cfg != NULL) {
        CHECK(STREQ(cfg->database_url, "postgres://db/sluice"));
        CHECK(STREQ(cfg->listen, "127.0.0.1:8123"));
        CHECK(cfg->workers == 3);
        CHECK(cfg->database_pool == 9);
        CHECK(STREQ(cfg->public_url, "cost: $5"));
        CHECK(cfg->redis_url == NULL);
        sl_config_free(cfg);
    }

    EXPECT_ERROR("database_url: x\n"
                 "redis_url: ${SL_T_UNSET}\n",
                 "sluice.yaml:2: redis_url: environment variable SL_T_UNSET is not set");
    EXPECT_ERROR("database_url: x\n"
                 "services:\n"
                 "  tika:\n"
                 "    url: \"http://${SL_T_UNSET}:9998\"\n",
                 "sluice.yaml:4: services.tika.url: environment variable SL_T_UNSET is not set");
    /* Expansion happens before type conversion, so a bad number is a type error. */
    setenv("SL_T_BAD", "12abc", 1);
    EXPECT_ERROR("database_url: x\nworkers: ${SL_T_BAD}\n",
                 "sluice.yaml:2: workers: must be an integer between 1 and 1024");
}

static void test_services_configured(void)
{
    sl_config_t *cfg = NULL;
    const sl_config_service_t *s;

    unsetenv("SL_T_TIKA_URL");
    unsetenv("SL_T_OCR");
    CHECK(load("database_url: x\n"
               "services:\n"
               "  tika: {url: \"${SL_T_TIKA_URL:-}\"}\n"
               "  ocr: {}\n"
               "  openai:\n"
               "  textract: {endpoint: \"\", region: \"\"}\n"
               "  custom: {command: [\"${SL_T_OCR:-}\"]}\n"
               "  local: {timeout_ms: 100}\n",
               &cfg) == 0);
    if (cfg == NULL)
        return;
    CHECK(cfg->nservices == 6);
    s = sl_config_service(cfg, "tika");
    CHECK(s != NULL && s->configured == 0 && s->url == NULL);
    s = sl_config_service(cfg, "ocr");
    CHECK(s != NULL && s->configured == 0 && s->timeout_ms == 30000);
    s = sl_config_service(cfg, "openai");
    CHECK(s != NULL && s->configured == 0);
    s = sl_config_service(cfg, "textract");
    CHECK(s != NULL && s->configured == 0);
    s = sl_config_service(cfg, "custom");
    CHECK(s != NULL && s->configured == 0 && STREQ(s->command[0], "") && s->command[1] == NULL);
    s = sl_config_service(cfg, "local");
    CHECK(s != NULL && s->configured == 1 && s->timeout_ms == 100);
    sl_config_free(cfg);

    setenv("SL_T_TIKA_URL", "http://tika:9998", 1);
    CHECK(load("database_url: x\nservices:\n  tika: {url: \"${SL_T_TIKA_URL:-}\"}\n", &cfg) == 0);
    s = cfg != NULL ? sl_config_service(cfg, "tika") : NULL;
    CHECK(s != NULL && s->configured == 1 && STREQ(s->url, "http://tika:9998"));
    sl_config_free(cfg);
    unsetenv("SL_T_TIKA_URL");
}

static void test_errors(void)
{
    EXPECT_ERROR("database_url: x\n"
                 "listen: \":8080\"\n"
                 "storge:\n"
                 "  backend: fs\n",
                 "sluice.yaml:3: storge: unknown key");
    EXPECT_ERROR("database_url: x\n"
                 "limits:\n"
                 "  max_file_bytes: 10\n"
                 "  max_file_byts: 10\n",
                 "sluice.yaml:4: limits.max_file_byts: unknown key");
    EXPECT_ERROR("database_url: x\n"
                 "services:\n"
                 "  tika:\n"
                 "    url: http://x\n"
                 "    retry: {max_attempts: 2, max_delay: 3}\n",
                 "sluice.yaml:5: services.tika.retry.max_delay: unknown key");
    EXPECT_ERROR("database_url: x\n"
                 "limits:\n"
                 "  max_file_bytes: lots\n",
                 "sluice.yaml:3: limits.max_file_bytes: must be a positive integer");
    EXPECT_ERROR("database_url: x\nlimits:\n  max_file_bytes: 0\n",
                 "sluice.yaml:3: limits.max_file_bytes: must be a positive integer");
    EXPECT_ERROR("database_url: x\nlimits:\n  max_file_bytes: 10M\n",
                 "sluice.yaml:3: limits.max_file_bytes: must be a positive integer");
    EXPECT_ERROR("database_url: x\nlimits:\n  max_file_bytes: 99999999999999999999\n",
                 "sluice.yaml:3: limits.max_file_bytes: must be a positive integer");
    EXPECT_ERROR("database_url: x\nlimits:\n  max_file_bytes: [1]\n",
                 "sluice.yaml:3: limits.max_file_bytes: must be an integer");
    EXPECT_ERROR("database_url: x\nlimits: 5\n", "sluice.yaml:2: limits: must be a mapping");
    EXPECT_ERROR("database_url: x\ndatabase_pool: 65\n",
                 "sluice.yaml:2: database_pool: must be an integer between 1 and 64");
    EXPECT_ERROR("database_url: x\ndatabase_statement_timeout_ms: 0\n",
                 "sluice.yaml:2: database_statement_timeout_ms: must be an integer between 100 and "
                 "3600000");
    EXPECT_ERROR("database_url: x\nworkers: \" 2\"\n",
                 "sluice.yaml:2: workers: must be an integer between 1 and 1024");
    EXPECT_ERROR("database_url: x\nlog_level: verbose\n",
                 "sluice.yaml:2: log_level: must be debug, info, warn or error");
    EXPECT_ERROR("database_url: x\nlog: {level: verbose}\n",
                 "sluice.yaml:2: log.level: must be debug, info, warn or error");
    EXPECT_ERROR("database_url: x\nlog: {levle: warn}\n", "sluice.yaml:2: log.levle: unknown key");
    EXPECT_ERROR("database_url: x\nlisten: {a: 1}\n", "sluice.yaml:2: listen: must be a string");
    EXPECT_ERROR("database_url: x\nengine: {lease_s: 2}\n",
                 "sluice.yaml:2: engine.lease_s: must be an integer between 3 and 3600");
    EXPECT_ERROR("database_url: x\nstorage: {backend: nfs}\n",
                 "sluice.yaml:2: storage.backend: must be fs or s3");
    /* s3 (issue 12): path_style is a boolean, part_size 5..64 MiB */
    EXPECT_ERROR("database_url: x\nstorage: {backend: s3, endpoint: http://s3, bucket: b, "
                 "path_style: maybe}\n",
                 "sluice.yaml:2: storage.path_style: must be true or false");
    EXPECT_ERROR("database_url: x\nstorage: {backend: s3, endpoint: http://s3, bucket: b, "
                 "part_size: 1048576}\n",
                 "sluice.yaml:2: storage.part_size: must be 5 MiB to 64 MiB");
    EXPECT_ERROR("database_url: x\nstorage: {backend: fs, presigned_redirects: true}\n",
                 "sluice.yaml:2: storage.presigned_redirects: needs backend s3 (the filesystem "
                 "has no URL of its own)");
    EXPECT_ERROR("database_url: x\nstorage: {backend: s3, endpoint: http://s3, bucket: b, "
                 "presigned_redirects: yes}\n",
                 "sluice.yaml:2: storage.presigned_redirects: must be true or false");
    EXPECT_ERROR("database_url: x\nstorage: {backend: s3, endpoint: http://s3, bucket: b, "
                 "abort_stale_uploads_after_s: -1}\n",
                 "sluice.yaml:2: storage.abort_stale_uploads_after_s: must be a non-negative "
                 "integer");
    EXPECT_ERROR("database_url: x\nstorage:\n  backend: s3\n  endpoint: http://s3\n",
                 "sluice.yaml:2: storage.bucket: is required for backend s3");
    EXPECT_ERROR("database_url: x\nservices:\n  openai: {rate_per_s: nan}\n",
                 "sluice.yaml:3: services.openai.rate_per_s: must be a non-negative number");
    EXPECT_ERROR("database_url: x\nservices:\n  t: {url: a, endpoint: b}\n",
                 "sluice.yaml:3: services.t.endpoint: conflicts with services.t.url");

    /* Missing database_url, also when it expands to nothing. */
    EXPECT_ERROR("listen: \":1\"\n", "sluice.yaml:1: database_url: is required");
    EXPECT_ERROR("", "sluice.yaml:1: database_url: is required");
    EXPECT_ERROR("# only a comment\n\n", "sluice.yaml:1: database_url: is required");
    EXPECT_ERROR("database_url: ${SL_T_UNSET:-}\n", "sluice.yaml:1: database_url: is required");
    EXPECT_ERROR("- a\n- b\n", "sluice.yaml:1: the top level must be a mapping");

    /* Pipelines. */
    EXPECT_ERROR("database_url: x\n"
                 "pipelines:\n"
                 "  - {name: a, flow: a.lua, match: [\"*/*\"]}\n"
                 "  - {name: b, flow: b.lua, match: [\"*/*\"]}\n"
                 "  - {name: a, flow: c.lua, match: [\"*/*\"]}\n",
                 "sluice.yaml:5: pipelines[2]: duplicate pipeline name \"a\" (first on line 3)");
    EXPECT_ERROR("database_url: x\npipelines:\n  - {name: a, match: [\"*/*\"]}\n",
                 "sluice.yaml:3: pipelines[0]: flow is required");
    EXPECT_ERROR("database_url: x\npipelines:\n  - {name: a, flow: a.lua, match: []}\n",
                 "sluice.yaml:3: pipelines[0].match: must list at least one MIME pattern");
    EXPECT_ERROR("database_url: x\npipelines:\n  - {name: a, flow: a.lua}\n",
                 "sluice.yaml:3: pipelines[0]: match is required");
    EXPECT_ERROR("database_url: x\npipelines:\n  - {name: a, flow: a.lua, mtch: [x]}\n",
                 "sluice.yaml:3: pipelines[0].mtch: unknown key");
    EXPECT_ERROR("database_url: x\npipelines: {a: 1}\n",
                 "sluice.yaml:2: pipelines: must be a sequence");
    EXPECT_ERROR("database_url: x\ntenants:\n  - {name: a}\n",
                 "sluice.yaml:3: tenants[0]: api_key is required");

    /* YAML itself. */
    EXPECT_ERROR("database_url: x\n"
                 "listen: 'oops\n",
                 "sluice.yaml:2: syntax error: single-quoted scalar without closing quote");
    EXPECT_ERROR("database_url: x\ndatabase_url: y\n", "sluice.yaml:2: syntax error: duplicate key");
    /* Invalid UTF-8 never reaches libfyaml (0.7.12 hangs on it in a directive). */
    EXPECT_ERROR("database_url: x\n%\xdd", "sluice.yaml:2: not valid UTF-8");
    EXPECT_ERROR("database_url: \"\xc0\xaf\"\n", "sluice.yaml:1: not valid UTF-8");
    EXPECT_ERROR("a: 1\nb: 2\nc: \xed\xa0\x80\n", "sluice.yaml:3: not valid UTF-8");
    {
        sl_config_t *cfg = NULL;
        CHECK(load("database_url: \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"\n", &cfg) == 0);
        CHECK(cfg != NULL && STREQ(cfg->database_url, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
        sl_config_free(cfg);
    }
    EXPECT_ERROR("database_url: &u x\nredis_url: *u\n",
                 "sluice.yaml:2: redis_url: aliases are not supported");
}

static void test_load_file(void)
{
    char path[] = "/tmp/test_config_XXXXXX";
    const char *bad = "database_url: x\nlimits:\n  max_files_per_request: -1\n";
    const char *good = "database_url: from-file\n";
    sl_config_t *cfg = NULL;
    int fd = mkstemp(path);
    FILE *fp;
    int rc;

    CHECK(fd >= 0);
    if (fd < 0)
        return;
    fp = fdopen(fd, "w");
    CHECK(fp != NULL);
    if (fp == NULL)
        return;
    fputs(bad, fp);
    fclose(fp);

    err[0] = '\0';
    rc = sl_config_load(path, &cfg, err, sizeof(err));
    CHECK(rc == SL_ECONFIG);
    CHECK(cfg == NULL);
    CHECK(strncmp(err, path, strlen(path)) == 0);
    CHECK(CONTAINS(err, ":3: limits.max_files_per_request: must be a positive integer"));

    fp = fopen(path, "w");
    CHECK(fp != NULL);
    if (fp != NULL) {
        fputs(good, fp);
        fclose(fp);
    }
    rc = sl_config_load(path, &cfg, err, sizeof(err));
    CHECK(rc == 0);
    CHECK(cfg != NULL && STREQ(cfg->path, path) && STREQ(cfg->database_url, "from-file"));
    sl_config_free(cfg);
    unlink(path);

    rc = sl_config_load(path, &cfg, err, sizeof(err));
    CHECK(rc == SL_EIO);
    CHECK(cfg == NULL);
    CHECK(strncmp(err, path, strlen(path)) == 0);
}

/* auth: token TTLs and keys (docs/auth.md); a short secret is refused at start */
static void test_auth(void)
{
    sl_config_t *cfg = NULL;
    CHECK(load("database_url: x\n", &cfg) == 0);
    CHECK(cfg && cfg->auth_access_ttl_s == 900 && cfg->auth_refresh_ttl_s == 2592000 &&
          cfg->ntoken_keys == 0);
    sl_config_free(cfg);
    cfg = NULL;
    CHECK(load("database_url: x\n"
               "auth:\n"
               "  access_ttl_s: 60\n"
               "  token_keys:\n"
               "    - {id: k2, secret: \"0123456789abcdef0123456789abcdef\"}\n"
               "    - {id: k1.old, secret: \"fedcba9876543210fedcba9876543210xx\"}\n",
               &cfg) == 0);
    CHECK(cfg && cfg->auth_access_ttl_s == 60 && cfg->ntoken_keys == 2 &&
          strcmp(cfg->token_keys[0].id, "k2") == 0 && strcmp(cfg->token_keys[1].id, "k1.old") == 0);
    sl_config_free(cfg);
    EXPECT_ERROR("database_url: x\n"
                 "auth:\n"
                 "  token_keys:\n"
                 "    - {id: k1, secret: \"0123456789abcdef0123456789abcde\"}\n",
                 "sluice.yaml:4: auth.token_keys[0]: secret is required and must be at least 32 "
                 "bytes");
    EXPECT_ERROR("database_url: x\n"
                 "auth:\n"
                 "  token_keys:\n"
                 "    - {id: k1, secret: \"0123456789abcdef0123456789abcdef\"}\n"
                 "    - {id: k1, secret: \"0123456789abcdef0123456789abcdef\"}\n",
                 "sluice.yaml:5: auth.token_keys[1]: duplicate token key id \"k1\"");
    EXPECT_ERROR("database_url: x\n"
                 "auth:\n"
                 "  token_keys:\n"
                 "    - {id: \"k 1\", secret: \"0123456789abcdef0123456789abcdef\"}\n",
                 "sluice.yaml:4: auth.token_keys[0]: id may hold only letters, digits, '.', '_' "
                 "and '-'");
    EXPECT_ERROR("database_url: x\n"
                 "auth: {access_ttl_s: 0}\n",
                 "sluice.yaml:2: auth.access_ttl_s: must be an integer between 1 and 86400");
}

int main(void)
{
    test_auth();
    test_full();
    test_defaults();
    test_admin_key_env();
    test_expand();
    test_env_in_config();
    test_services_configured();
    test_errors();
    test_load_file();
    sl_config_free(NULL);
    return check_summary();
}
