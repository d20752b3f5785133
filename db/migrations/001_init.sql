-- 001_init: the durable state of Sluice.
-- Every row that belongs to a tenant carries tenant_id, and every query the
-- API runs filters on it: another tenant's object is simply not found.

CREATE TABLE settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
-- The HMAC key for signed blob URLs, shared by every instance on this database.
INSERT INTO settings (key, value)
VALUES ('url_signing_key', encode(sha256(random()::text::bytea || clock_timestamp()::text::bytea
                                        || random()::text::bytea), 'hex'))
ON CONFLICT DO NOTHING;

CREATE TABLE tenants (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key_hash   text NOT NULL UNIQUE,          -- sha256 hex of the key; the key itself is never stored
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE datasets (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name          text NOT NULL,
    record_schema json NOT NULL,                -- json, not jsonb: keeps the property order (CSV columns)
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX datasets_tenant ON datasets (tenant_id, created_at DESC);

CREATE TABLE files (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    dataset_id  uuid NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    batch_id    uuid NOT NULL,                 -- one upload request
    name        text NOT NULL,                 -- the client's filename, for display only
    size        bigint NOT NULL,
    sha256      text NOT NULL,
    mime        text NOT NULL,                 -- sniffed with libmagic, never the client's claim
    storage_key text NOT NULL,                 -- made by the server
    text_source text,
    seq         bigserial NOT NULL UNIQUE,     -- upload order, for newest-first cursor paging
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX files_dataset_seq ON files (dataset_id, seq DESC);

CREATE TABLE runs (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    dataset_id      uuid NOT NULL,
    file_id         uuid NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    batch_id        uuid NOT NULL,
    pipeline        text NOT NULL,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued','running','waiting','succeeded','failed','cancelled')),
    step            text,
    attempt         int NOT NULL DEFAULT 0,
    error           text,
    ctx             jsonb NOT NULL DEFAULT '{}'::jsonb,
    flow_version    text,
    lease_owner     text,
    lease_until     timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX runs_file ON runs (file_id);
CREATE INDEX runs_runnable ON runs (next_attempt_at) WHERE state IN ('queued','running','waiting');
-- At most one active run per file and pipeline (the /process state guard).
CREATE UNIQUE INDEX runs_one_active ON runs (file_id, pipeline)
    WHERE state IN ('queued','running','waiting');

CREATE TABLE run_events (
    seq        bigserial PRIMARY KEY,          -- the SSE event id
    tenant_id  uuid NOT NULL,
    dataset_id uuid NOT NULL,
    file_id    uuid NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    run_id     uuid,
    pipeline   text,
    step       text,
    kind       text NOT NULL,
    state      text,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX run_events_file ON run_events (file_id, seq);
CREATE INDEX run_events_dataset ON run_events (dataset_id, seq);

CREATE TABLE artifacts (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    file_id     uuid NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    run_id      uuid REFERENCES runs(id) ON DELETE CASCADE,
    kind        text NOT NULL,
    mime        text NOT NULL,
    size        bigint NOT NULL,
    sha256      text NOT NULL,
    storage_key text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX artifacts_file ON artifacts (file_id);

CREATE TABLE records (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    dataset_id uuid NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    file_id    uuid NOT NULL UNIQUE REFERENCES files(id) ON DELETE CASCADE, -- one record per file
    run_id     uuid,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX records_dataset ON records (dataset_id, created_at);

-- Idempotency-Key: the first response, replayed for 24 h.
CREATE TABLE idempotency_keys (
    tenant_id   uuid NOT NULL,
    key         text NOT NULL,
    endpoint    text NOT NULL,                 -- "POST /v1/datasets/{id}/files"
    status      int,                           -- NULL while the first request is in flight
    body        text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
