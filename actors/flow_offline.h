/*
 * flow_offline.h — one run of a flow, offline: no Postgres, Redis or server
 * (`sluice flow test`, cli/flowtest.c; docs/flows.md "Testing a flow
 * offline").
 *
 * The run uses the engine's own runtime — the same VM, sandbox, budgets,
 * service policy and primitives (actors/flow.h), the same storage backend
 * (core/storage_fs in a scratch dir: the sample's MIME type and sha256 come
 * from it as they do from an upload) and the same transition decision
 * (actors/transition.h) — with an offline host behind the effects seam
 * (actors/flow_effects.h):
 *   - rows (artifacts, the record, the text source) are kept in memory and
 *     reported at the end;
 *   - sl.http.request is answered from cassettes (--replay DIR: one JSON file
 *     per interaction), or made for real (libcurl) when no cassette dir is
 *     given; with a record dir, what happened is written there as cassettes;
 *   - sl.exec runs for real, or from cassettes when replay_exec is set.
 * A call with no recorded answer fails its step with "not_recorded" and the
 * run fails there, with the message "no recorded answer for POST openai
 * /chat/completions" in the report: never a silent default.
 * A run that would wait (a service held back, a transient chain) ends with
 * outcome "waiting" (the engine would resume it later).
 */
#ifndef SL_FLOW_OFFLINE_H
#define SL_FLOW_OFFLINE_H

#include <jansson.h>

#include "core/config.h"

#define SL_OFFLINE_MAX_ATTEMPTS 100  /* step attempts in one run before it is stopped */
#define SL_OFFLINE_MAX_DELAY_MS 2000 /* retry delays longer than this are shortened */
#define SL_OFFLINE_MAX_SAMPLE (64u * 1024 * 1024)

/** What to run. Every pointer is borrowed for the call. */
typedef struct sl_offline_opts_s {
    const char *flow_path;   /* required: the flow file */
    const char *pipeline;    /* the pipeline's name; NULL: the file's name without .lua */
    const char *lib_dir;     /* where require finds modules; NULL: lua-flows/lib */
    const char *sample_path; /* required: the file the run processes */
    const char *mime;        /* NULL: sniffed by the store, as for an upload */
    const json_t *schema;    /* the dataset's record_schema (an object), or NULL */
    const sl_config_t *cfg;  /* services and exec limits; NULL: nothing configured */
    const char *replay_dir;  /* cassettes to answer sl.http from, or NULL (live calls) */
    int replay_exec;         /* with replay_dir: answer sl.exec from cassettes too */
    const char *record_dir;  /* write each live call there as a cassette, or NULL */
    const char *work_dir;    /* scratch: the store and the run's tmp dir (created) */
} sl_offline_opts_t;

/**
 * Runs the flow on the sample to its end. On success returns 0 and the
 * report in *out (returns owned):
 *   {pipeline, flow_version, outcome: "succeeded"|"failed"|"waiting",
 *    error, note, path: [{step, attempt, outcome, note?, detail?, duration_ms}],
 *    artifacts: [{kind, mime, size, sha256}], record, provenance, text_source,
 *    calls: ["http PUT tika /tika <- 01-tika.json", ...], unrecorded: [...]}
 * Errors before the run starts (the flow does not load, the sample cannot be
 * read, a cassette is malformed) return an SL_E* code with a message in err.
 */
int sl_offline_run(const sl_offline_opts_t *o, json_t **out, char *err, size_t errlen);

#endif
