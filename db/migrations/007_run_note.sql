-- 007_run_note: a run that succeeded may say why it has no output.
-- A flow step that returns `true, "no_text"` ends its run succeeded with that
-- note (ai_record: a photo with no text has no record, and nothing failed).
-- runs.note is null for other runs; the file document shows it on each run,
-- next to error (an addition to API.md's run object, no change of meaning).
ALTER TABLE runs ADD COLUMN note text;

CREATE OR REPLACE FUNCTION sluice_file_json(f files) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', f.id,
        'dataset_id', f.dataset_id,
        'name', f.name,
        'size', f.size,
        'sha256', f.sha256,
        'mime', f.mime,
        'status', sluice_file_status(f.id),
        'created_at', sluice_ts(f.created_at),
        'runs', coalesce((
            SELECT json_agg(json_build_object(
                'id', r.id, 'pipeline', r.pipeline, 'state', r.state, 'step', r.step,
                'attempt', r.attempt, 'error', r.error, 'note', r.note,
                'started_at', sluice_ts(r.started_at), 'finished_at', sluice_ts(r.finished_at),
                'artifacts', coalesce((
                    SELECT json_agg(json_build_object(
                        'id', a.id, 'kind', a.kind, 'mime', a.mime, 'size', a.size,
                        'url', '/v1/artifacts/' || a.id) ORDER BY a.created_at, a.id)
                    FROM artifacts a WHERE a.run_id = r.id), '[]'::json),
                'queue_position', CASE WHEN r.state = 'queued' THEN (
                    SELECT count(*) + 1 FROM runs q
                    WHERE q.tenant_id = r.tenant_id AND q.state = 'queued'
                      AND (q.created_at, q.id) < (r.created_at, r.id)) END
            ) ORDER BY r.created_at, r.pipeline)
            FROM runs r WHERE r.file_id = f.id), '[]'::json),
        'text_source', f.text_source,
        'record', (SELECT rec.data FROM records rec WHERE rec.file_id = f.id))
$$;
