/*
 * config.h — the YAML configuration (libfyaml), validated at start.
 *
 * One file, given by --config PATH or SLUICE_CONFIG. Scalar values may use
 * ${NAME} (error if NAME is unset) and ${NAME:-default}. Every error names the
 * file, the line and the key: "sluice.yaml:12: limits.max_file_bytes: must be a
 * positive integer". Unknown keys are errors too (they are usually typos).
 * Keys and their meaning: API.md "Configuration keys" plus the additions
 * documented in README.md ("Configuration reference").
 */
#ifndef SL_CONFIG_H
#define SL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define SL_CONFIG_MAX_SERVICES 16
#define SL_CONFIG_MAX_PIPELINES 32
#define SL_CONFIG_MAX_MATCH 16
#define SL_CONFIG_MAX_ARGV 32
#define SL_CONFIG_MAX_TENANTS 16
#define SL_CONFIG_MAX_WEIGHTS 64
#define SL_CONFIG_MAX_TOKEN_KEYS 8     /* auth.token_keys (core/jwt.h SL_JWT_MAX_KEYS) */
#define SL_CONFIG_TOKEN_SECRET_MIN 32  /* bytes; shorter secrets are refused at start */
#define SL_CONFIG_ACCESS_TTL_S 900     /* auth.access_ttl_s default: 15 min */
#define SL_CONFIG_REFRESH_TTL_S 2592000 /* auth.refresh_ttl_s default: 30 days */

/*
 * Defaults of the limits a public server ships with (README "Configuration
 * reference" gives the reason for each value).
 */
/* exec: every tool a flow runs (sl.exec) gets these rlimits; a flow may lower
 * memory and cpu per call, never raise them. */
#define SL_CONFIG_EXEC_MEMORY_BYTES ((int64_t)1 << 30)  /* RLIMIT_AS: 1 GiB */
#define SL_CONFIG_EXEC_CPU_S 60                          /* RLIMIT_CPU */
#define SL_CONFIG_EXEC_FILE_BYTES ((int64_t)256 << 20)  /* RLIMIT_FSIZE: 256 MiB */
#define SL_CONFIG_EXEC_OPEN_FILES 256                    /* RLIMIT_NOFILE */
#define SL_CONFIG_EXEC_USER "nobody"                     /* when Sluice runs as root */
/* limits: images with more pixels are refused before a decoder sees them */
#define SL_CONFIG_MAX_IMAGE_PIXELS ((int64_t)100000000)  /* 100 megapixels */
#define SL_CONFIG_MAX_CONNECTIONS_PER_IP 256
#define SL_CONFIG_SSE_MAX_STREAMS_PER_IP 32
/* rate_limits, per API key */
#define SL_CONFIG_RL_UPLOADS_PER_S 50.0  /* burst: one second's worth */
#define SL_CONFIG_RL_READS_PER_S 1000.0

/** fairness.weights: a tenant (name or id) and its share of the scheduler. */
typedef struct sl_config_weight_s {
    char *tenant;
    int weight;               /* 1..1000 */
} sl_config_weight_t;

/**
 * A service section (tika, ocr, textract, openai, or any other name). Every
 * string is owned by the config. `configured` is 0 when the section is absent
 * or empty: steps calling it fail with not_configured.
 */
typedef struct sl_config_service_s {
    char *name;
    int configured;
    char *url;                /* tika: url; openai: base_url; textract: endpoint */
    char *region;             /* textract */
    char *access_key_id;      /* textract */
    char *secret_access_key;  /* textract */
    char *api_key;            /* openai */
    char *model;              /* openai */
    char *command[SL_CONFIG_MAX_ARGV + 1]; /* ocr etc.: argv, NULL-terminated */
    int timeout_ms;           /* per call (default 30000) */
    int concurrency;          /* calls in flight at once (default 8) */
    double rate_per_s;        /* outbound request rate, 0 = unlimited */
    double tokens_per_min;    /* openai: model tokens per minute, 0 = unlimited */
    int retry_max_attempts;   /* default 3 */
    int retry_base_ms;        /* default 500 */
    int retry_max_ms;         /* default 30000 */
} sl_config_service_t;

typedef struct sl_config_pipeline_s {
    char *name;
    char *flow;               /* path of the Lua flow file */
    char *match[SL_CONFIG_MAX_MATCH + 1]; /* MIME patterns; subtype "*" is a wildcard; NULL-terminated */
    int line;                 /* where it was declared, for errors */
} sl_config_pipeline_t;

typedef struct sl_config_tenant_s {
    char *name;
    char *api_key;            /* bootstrap key (stored hashed at start) */
} sl_config_tenant_t;

/** auth.token_keys[i]: a JWT signing key (docs/auth.md); the first signs, all verify. */
typedef struct sl_config_token_key_s {
    char *id;                 /* the JWT header's kid: 1..64 of [A-Za-z0-9._-] */
    char *secret;             /* at least SL_CONFIG_TOKEN_SECRET_MIN bytes */
} sl_config_token_key_t;

typedef struct sl_config_s {
    char *path;               /* the file it was read from */
    char *listen;             /* "127.0.0.1:8080" */
    int workers;              /* processes (SO_REUSEPORT); default 1 */
    char *engine_process;     /* engine.process: "separate" (default) or "inline" */
    int engine_lease_s;       /* engine.lease_s: a run's lease (default 30; heartbeat a third) */
    char *database_url;
    int database_pool;        /* connections per process; default 4 */
    int database_statement_timeout_ms; /* per statement, lock waits included; default 30000 */
    char *redis_url;          /* may be NULL: Redis not configured */
    char *admin_key;          /* config admin_key, else env SLUICE_ADMIN_KEY; may be NULL */
    char *public_url;         /* optional, for printed links */

    char *storage_backend;    /* "fs" or "s3" */
    char *storage_path;       /* fs */
    char *s3_endpoint, *s3_bucket, *s3_region, *s3_access_key_id, *s3_secret_access_key;
    char *s3_path_style; /* s3: "true" or "false" (NULL: false, virtual-host) */
    size_t s3_part_size; /* s3: multipart part size; 0: 8 MiB */
    char *s3_presigned_redirects; /* s3: "true": signed blob URLs redirect to presigned S3 URLs */
    int64_t s3_abort_stale_after_s; /* s3: sweep multipart uploads older than this;
                                       default 24 h; 0 = never */

    /* limits */
    int64_t max_file_bytes;        /* default 100 MiB */
    int max_files_per_request;     /* default 1000 */
    int64_t max_request_bytes;     /* whole upload body; default 0: bounded by max_file_bytes * max_files_per_request */
    size_t max_json_bytes;         /* JSON request bodies; default 1 MiB */
    size_t max_header_bytes;       /* default 64 KiB */
    int max_connections;           /* default 10000 */
    int header_timeout_ms, idle_timeout_ms, body_timeout_ms;
    int max_uploads_in_flight;     /* uploads being received by a process; 0 = unlimited (503 past it) */
    int max_uploads_per_tenant;    /* same, per tenant; 0 = unlimited (429 past it) */
    int max_runs_in_flight;        /* runs held by a process's actors; default 10000 */
    int max_runs_per_tenant;       /* ceiling per tenant (x weight) and process; 0 = none */
    int max_runs_active;           /* of the runs held, those not parked on a call or timer; 64 */
    int64_t max_image_pixels;      /* images over it fail too_large; 0 = unlimited */
    int max_connections_per_ip;    /* open connections from one address; 0 = unlimited */

    /* exec: confinement of the tools flows run (sl.exec) */
    int64_t exec_memory_bytes;     /* RLIMIT_AS */
    int exec_cpu_s;                /* RLIMIT_CPU */
    int64_t exec_file_bytes;       /* RLIMIT_FSIZE */
    int exec_open_files;           /* RLIMIT_NOFILE */
    char *exec_user;               /* the user tools run as when Sluice runs as root */

    /* rate_limits: per API key (requests) and per tenant (bytes); 0 = unlimited */
    double rl_uploads_per_s;       /* rate_limits.requests_per_s.uploads */
    double rl_reads_per_s;         /* rate_limits.requests_per_s.reads */
    double rl_requests_burst;      /* rate_limits.requests_per_s.burst; 0 = one second's worth */
    double rl_upload_bytes_per_s;  /* rate_limits.upload_bytes_per_s.per_tenant */
    double rl_upload_bytes_burst;  /* rate_limits.upload_bytes_per_s.burst; 0 = one second's worth */

    int nweights;                  /* fairness.weights */
    char *fairness_shares;         /* fairness.shares: "true" (NULL) or "false": claim oldest first */
    sl_config_weight_t weights[SL_CONFIG_MAX_WEIGHTS];

    /* sse: live status streams (GET /v1/datasets/{id}/events) */
    int sse_keepalive_s;             /* comment interval; 0 = default 15 */
    size_t sse_client_buffer_bytes;  /* unsent bytes per client before it is dropped; 0 = 1 MiB */
    int sse_max_streams_per_ip;      /* open streams from one address; 0 = unlimited */

    /* retention: the automatic sweep and the purges (actors/retention.h, docs/lifecycle.md) */
    int retention_interval_s;        /* retention.interval_s: between sweeps; default 3600 */
    int retention_idempotency_hours; /* retention.idempotency_hours: keys kept; default 24 */
    int retention_files_days;        /* retention.files_older_than_days: 0 = off (default) */
    int retention_batch;             /* retention.batch_size: rows per transaction; default 500 */
    int retention_pause_ms;          /* retention.batch_pause_ms: between batches; default 0 */
    int retention_lock_timeout_ms;   /* retention.lock_timeout_ms: per batch; default 2000 */

    /* shutdown (issue 12, instances): SIGTERM drains (docs/deploy.md) */
    int shutdown_drain_timeout_s;    /* shutdown.drain_timeout_s: uploads in flight get this
                                        long to finish, then are cut; default 30 */
    int shutdown_announce_s;         /* shutdown.announce_s: before that, keep serving with
                                        /readyz 503 so a load balancer takes the instance
                                        out; default 0 (close the listener at once) */
    char *log_level;          /* "debug" | "info" | "warn" | "error"; default info */
    char *web_root;           /* static UI folder; default "web" */

    int nservices;
    sl_config_service_t services[SL_CONFIG_MAX_SERVICES];
    int npipelines;           /* 0 with has_pipelines = 0: the shipped defaults apply */
    int has_pipelines;
    sl_config_pipeline_t pipelines[SL_CONFIG_MAX_PIPELINES];
    int ntenants;
    sl_config_tenant_t tenants[SL_CONFIG_MAX_TENANTS];

    /* auth: access and refresh tokens (api/auth.c, docs/auth.md) */
    int auth_access_ttl_s;    /* auth.access_ttl_s; default 900 */
    int auth_refresh_ttl_s;   /* auth.refresh_ttl_s; default 2592000 */
    int ntoken_keys;          /* auth.token_keys; 0: one key kept in the settings table */
    sl_config_token_key_t token_keys[SL_CONFIG_MAX_TOKEN_KEYS];
} sl_config_t;

/**
 * Loads and validates `path` (borrowed). On success returns 0 and an owned
 * config in *out. On failure returns SL_ECONFIG (or SL_EIO / SL_ENOMEM) and
 * writes a one-line message naming file, line and key into errbuf.
 */
int sl_config_load(const char *path, sl_config_t **out, char *errbuf, size_t errlen);

/** Same, from a string; `name` is used in error messages in place of a path. */
int sl_config_load_string(const char *yaml, size_t len, const char *name, sl_config_t **out,
                          char *errbuf, size_t errlen);

/** The service section `name`, or NULL when absent. Borrowed from cfg. */
const sl_config_service_t *sl_config_service(const sl_config_t *cfg, const char *name);

/** Frees everything. */
void sl_config_free(sl_config_t *cfg);

/**
 * Expands ${NAME} and ${NAME:-default} in `in` into out. Returns the length, or
 * SL_EINVAL with the unset variable's name in errbuf, SL_ETOOBIG if out is short.
 * Exposed for tests.
 */
int sl_config_expand(const char *in, char *out, size_t outlen, char *errbuf, size_t errlen);

#endif
