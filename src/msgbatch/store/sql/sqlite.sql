-- The embedded store's statements (SQLite 3.35 or newer), by name: the same names as postgres.sql.
--
-- Format (store/queries.py): a block starts at `-- name: NAME` and holds one or more statements,
-- each ending with `;` at the end of a line; they run in order, in the caller's transaction.
--   `-- rows: a, b, c` the step passes rows: a statement written with `?` runs once per row (the
--                      row's values in that order), one written with `:a` names runs once per row
--                      with the row's columns and the step's parameters by name; every other
--                      statement runs once.
--   `-- inline`        a point read that takes microseconds: run on the event loop, not queued.
-- A list parameter arrives as a JSON array (read it with json_each). Names starting with `_` are
-- this dialect's own. The writer thread runs every write one at a time, so nothing here locks.
--
-- The results lines written here for canceled and expired requests must be byte-identical to
-- those of msgbatch/results.py (tests hold them to it). A custom_id is free-form in an OpenAI batch:
-- it goes into a line JSON-quoted (json_quote(custom_id)), which escapes exactly as msgspec does.


-- name: _connect
PRAGMA journal_mode = WAL;
-- NORMAL in WAL mode survives a killed process; a power loss can only roll back the last
-- results, which are then run again. Batch creation upgrades itself to FULL.
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = OFF;
PRAGMA cache_size = -65536;
PRAGMA temp_store = MEMORY;

-- name: _writer
-- Scratch tables of the writer connection: set-based steps stage their rows here.
CREATE TEMP TABLE IF NOT EXISTS finishing (
    id INTEGER PRIMARY KEY, type INTEGER NOT NULL, line BLOB NOT NULL,
    input_tokens INTEGER, output_tokens INTEGER, cache_read_input_tokens INTEGER, cache_creation_input_tokens INTEGER,
    backend TEXT, error_type TEXT
);
CREATE TEMP TABLE IF NOT EXISTS ending (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, model INTEGER NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS claimed (id INTEGER PRIMARY KEY);
-- finish_jobs' outcomes grouped once, for the counts, outcomes, usage and throughput it moves.
CREATE TEMP TABLE IF NOT EXISTS finished (
    batch INTEGER, model INTEGER, backend TEXT, type INTEGER, error_type TEXT, n INTEGER,
    input_tokens INTEGER, output_tokens INTEGER, cache_read_input_tokens INTEGER, cache_creation_input_tokens INTEGER
);


-- ---------------------------------------------------------------------------------------------
-- Schema, by version (PRAGMA user_version)

-- name: migrate_1
-- batches, requests, jobs, results (msgbatch 0.1.0)
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    workspace TEXT NOT NULL,
    status INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at INTEGER,
    cancel_initiated_at INTEGER,
    archived_at INTEGER,
    total INTEGER NOT NULL,
    processing INTEGER NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    errored INTEGER NOT NULL DEFAULT 0,
    canceled INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    first_request INTEGER NOT NULL,
    betas TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS batches_by_workspace ON batches (workspace, id);
CREATE INDEX IF NOT EXISTS batches_open ON batches (expires_at) WHERE status < 2;
CREATE INDEX IF NOT EXISTS batches_unarchived ON batches (created_at) WHERE archived_at IS NULL;
-- Immutable once written: what the client sent.
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    custom_id TEXT NOT NULL,
    params BLOB NOT NULL
);
-- Only unfinished work lives here, so the queue stays small however much history there is.
-- state 0: waiting (claimable from not_before on), 1: leased to `owner` until `lease_until`.
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (batch, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (owner) WHERE state = 1;
-- Append-only: one row per request, the whole results line as it will be served.
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    type INTEGER NOT NULL,
    line BLOB NOT NULL
);

-- name: migrate_2
-- request headers kept with the batch; request ids from a counter, as in PostgreSQL
ALTER TABLE batches ADD COLUMN headers TEXT NOT NULL DEFAULT '{}';
CREATE INDEX batches_canceling ON batches (seq) WHERE status = 1;
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters (name, value) VALUES ('request_ids', max(
    (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'requests'),
    (SELECT coalesce(max(id), 0) FROM requests)
));

-- name: migrate_3
-- batch metadata; token usage of each batch
ALTER TABLE batches ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
ALTER TABLE batches ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN cache_read_input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0;

-- name: migrate_4
-- the OpenAI Batch API: its batches' own columns; uploaded files
-- endpoint: '' for a Message Batch, else the OpenAI endpoint every request of the batch targets.
ALTER TABLE batches ADD COLUMN endpoint TEXT NOT NULL DEFAULT '';
ALTER TABLE batches ADD COLUMN input_file_id TEXT;
ALTER TABLE batches ADD COLUMN completion_window TEXT;
-- Seconds after its end that the batch's output and error files expire (null: when it is archived).
ALTER TABLE batches ADD COLUMN output_expires_after INTEGER;
-- A JSON array of the input file's bad lines: the batch failed validation, and nothing ran.
ALTER TABLE batches ADD COLUMN errors TEXT;
-- 1: its output file was deleted, 2: its error file was.
ALTER TABLE batches ADD COLUMN files_deleted INTEGER NOT NULL DEFAULT 0;
-- The sizes of its output and error files, once measured (they no longer change after its end).
ALTER TABLE batches ADD COLUMN output_bytes INTEGER;
ALTER TABLE batches ADD COLUMN error_bytes INTEGER;
CREATE INDEX batches_openai_ended ON batches (workspace, ended_at) WHERE endpoint <> '' AND status = 2;
CREATE TABLE files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    workspace TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX files_by_workspace ON files (workspace, created_at, id);
CREATE INDEX files_expiring ON files (expires_at) WHERE expires_at IS NOT NULL;
-- A file's content in chunks of up to 1 MiB, in order.
CREATE TABLE file_chunks (
    file_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (file_id, n)
);

-- name: migrate_5
-- batch features: retries, hard cancel, fail-fast, per-batch webhooks; idempotency keys; the webhook outbox
ALTER TABLE batches ADD COLUMN retry_of TEXT;
ALTER TABLE batches ADD COLUMN retried_by TEXT;
ALTER TABLE batches ADD COLUMN cancel_reason TEXT;
ALTER TABLE batches ADD COLUMN abort_running INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN fail_fast_min_results INTEGER;
ALTER TABLE batches ADD COLUMN fail_fast_max_error_rate REAL;
ALTER TABLE batches ADD COLUMN webhook_url TEXT;
-- The status whose webhook events are in the outbox: a transition moves `status` past it, and the
-- same transaction writes the events and catches it up (announce_events). Nothing for the past.
ALTER TABLE batches ADD COLUMN announced INTEGER NOT NULL DEFAULT 0;
UPDATE batches SET announced = status;
CREATE INDEX batches_unannounced ON batches (seq) WHERE status > announced;
-- Idempotency-Key of a create (or retry) call: per workspace, kept 24 h.
CREATE TABLE idempotency_keys (
    workspace TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (workspace, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
-- The webhook outbox: one row per event and receiver. state 0: to deliver from `next_at` on (a
-- process delivering it holds it as `owner` and has pushed `next_at` out by a lease), 1:
-- delivered, 2: given up. `payload` is the body, fixed at the first attempt.
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL,
    workspace TEXT NOT NULL,
    event TEXT NOT NULL,
    event_at INTEGER NOT NULL,
    url TEXT NOT NULL,
    secret_env TEXT NOT NULL,
    checked INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    give_up_at INTEGER NOT NULL,
    owner TEXT,
    payload BLOB,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 0;
CREATE INDEX webhook_deliveries_by_workspace ON webhook_deliveries (workspace, id);
CREATE INDEX webhook_deliveries_by_batch ON webhook_deliveries (batch_id);
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (created_at) WHERE state > 0;

-- name: migrate_6
-- many teams: batch priority; each request's model; outcomes per batch, model, backend and error type; usage per workspace, model and hour; throughput per batch
-- 0 high, 1 normal, 2 low
ALTER TABLE batches ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
CREATE INDEX batches_open_by_workspace ON batches (workspace) WHERE status < 2;
-- A job's model, as a key of its batch's batch_models (0 for the jobs of batches made before).
ALTER TABLE jobs ADD COLUMN model INTEGER NOT NULL DEFAULT 0;
-- Claims ask for one model of one batch at a time (what one backend can take).
DROP INDEX jobs_waiting;
CREATE INDEX jobs_waiting ON jobs (batch, model, id) WHERE state = 0;
-- The models a batch's requests name ('' where params have no string `model`), keyed 0, 1, ...
CREATE TABLE batch_models (
    batch INTEGER NOT NULL,
    key INTEGER NOT NULL,
    model TEXT NOT NULL,
    total INTEGER NOT NULL,
    PRIMARY KEY (batch, key)
) WITHOUT ROWID;
-- Finished requests of a batch by model, backend ('' none), result type and error type ('' none),
-- counted in the transactions that write their results.
CREATE TABLE batch_outcomes (
    batch INTEGER NOT NULL,
    model INTEGER NOT NULL,
    backend TEXT NOT NULL,
    result INTEGER NOT NULL,
    error_type TEXT NOT NULL,
    requests INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    PRIMARY KEY (batch, model, backend, result, error_type)
) WITHOUT ROWID;
-- Token usage per workspace, model and hour (unix seconds of its start); kept when batches go.
CREATE TABLE usage (
    workspace TEXT NOT NULL,
    hour INTEGER NOT NULL,
    model TEXT NOT NULL,
    succeeded INTEGER NOT NULL,
    errored INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    PRIMARY KEY (workspace, hour, model)
) WITHOUT ROWID;
-- Requests of a batch whose results a dispatcher wrote, per second (unix seconds).
CREATE TABLE batch_throughput (
    batch INTEGER NOT NULL,
    second INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    PRIMARY KEY (batch, second)
) WITHOUT ROWID;


-- ---------------------------------------------------------------------------------------------
-- Batches

-- name: reserve_request_ids
-- A block of `n` request ids that no other batch will ever get; returns the last one.
UPDATE counters SET value = value + :n WHERE name = 'request_ids' RETURNING value;

-- name: insert_batch
INSERT INTO batches (
    id, workspace, status, created_at, expires_at, total, processing, first_request, betas, headers, metadata, priority
)
VALUES (
    :id, :workspace, 0, :created_at, :expires_at, :total, :total, :first_request, :betas, :headers, :metadata, :priority
)
RETURNING seq;

-- name: insert_requests
-- rows: id int8, custom_id text, params bytea
INSERT INTO requests (id, custom_id, params) VALUES (?, ?, ?);

-- name: insert_jobs
INSERT INTO jobs (id, batch)
SELECT id, (SELECT seq FROM batches WHERE id = :batch_id) FROM requests WHERE id >= :first AND id < :stop;

-- name: get_batch
-- inline
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM batches WHERE id = :id;

-- name: list_batches
-- A workspace's batches between `lower` and `upper` (one API's id prefix), newest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM batches WHERE workspace = :workspace AND id > :lower AND id < :upper ORDER BY id DESC LIMIT :limit;

-- name: list_batches_before
-- A workspace's batches newer than `lower`, oldest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM batches WHERE workspace = :workspace AND id > :lower ORDER BY id LIMIT :limit;

-- name: mark_canceling
UPDATE batches SET status = 1, cancel_initiated_at = :now WHERE seq = :seq AND status = 0 RETURNING seq;

-- name: delete_batch
DELETE FROM results WHERE id >= (SELECT first_request FROM batches WHERE seq = :seq)
    AND id < (SELECT first_request + total FROM batches WHERE seq = :seq);
DELETE FROM requests WHERE id >= (SELECT first_request FROM batches WHERE seq = :seq)
    AND id < (SELECT first_request + total FROM batches WHERE seq = :seq);
DELETE FROM jobs WHERE batch = :seq;
DELETE FROM batches WHERE seq = :seq RETURNING id;

-- name: results_page
-- Results lines of one batch's id range from `cursor` on, in id order; `type` filters when set.
SELECT id, line FROM results
WHERE id >= :cursor AND id < :stop AND (:type IS NULL OR type = :type)
ORDER BY id LIMIT :limit;

-- name: result_of
SELECT res.line FROM requests AS r JOIN results AS res ON res.id = r.id
WHERE r.id >= :first AND r.id < :stop AND r.custom_id = :custom_id AND (:type IS NULL OR res.type = :type);


-- ---------------------------------------------------------------------------------------------
-- The queue

-- name: active_batches
-- The batches that take work, in creation order.
SELECT seq, first_request, total, betas, headers, expires_at, endpoint, workspace, priority,
       fail_fast_min_results IS NOT NULL
FROM batches WHERE status = 0 ORDER BY seq;

-- name: claim_jobs
-- rows: seq int8, first int8, stop int8, model int4, take int4
-- Lease up to `take` waiting jobs of each batch and model listed. (Staging the ids and joining
-- once is a third faster than RETURNING the params with a subquery per row.)
INSERT INTO temp.claimed (id)
SELECT id FROM jobs WHERE batch = :seq AND model = :model AND state = 0 AND not_before <= :now ORDER BY id LIMIT :take;
UPDATE jobs SET state = 1, owner = :owner, lease_until = :until, attempts = attempts + 1
WHERE id IN (SELECT id FROM temp.claimed);
SELECT c.id, j.batch, j.attempts, r.custom_id, r.params, j.model
FROM temp.claimed AS c JOIN jobs AS j ON j.id = c.id JOIN requests AS r ON r.id = c.id;
DELETE FROM temp.claimed;

-- name: lock_batches
-- Nothing to lock: the writer thread runs one transaction at a time.

-- name: finish_jobs
-- rows: id int8, type int2, line bytea, input_tokens int8, output_tokens int8, cache_read_input_tokens int8, cache_creation_input_tokens int8, backend text, error_type text
-- Finished jobs still leased to `owner` get their results line and leave the queue; the counts and
-- token usage of their batches move by as much, and so do the batches' outcomes by model, backend
-- and error type, their workspaces' usage of the hour and their throughput of the second. A job
-- whose lease lapsed writes nothing.
INSERT INTO temp.finishing (
    id, type, line, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, backend, error_type
)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?);
DELETE FROM temp.finishing
WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = finishing.id AND owner = :owner AND state = 1);
-- (Read through the jobs, not copied into the staged rows: rewriting each row, its line with it,
-- cost more than the join.)
INSERT INTO temp.finished
SELECT j.batch, j.model, f.backend, f.type, f.error_type, count(*),
       sum(f.input_tokens), sum(f.output_tokens), sum(f.cache_read_input_tokens), sum(f.cache_creation_input_tokens)
FROM temp.finishing AS f CROSS JOIN jobs AS j ON j.id = f.id
GROUP BY j.batch, j.model, f.backend, f.type, f.error_type;
INSERT INTO results (id, type, line) SELECT id, type, line FROM temp.finishing;
DELETE FROM jobs WHERE id IN (SELECT id FROM temp.finishing);
UPDATE batches
SET processing = processing - t.n, succeeded = succeeded + t.s, errored = errored + t.e,
    canceled = canceled + t.c, expired = expired + t.x,
    input_tokens = batches.input_tokens + t.i, output_tokens = batches.output_tokens + t.o,
    cache_read_input_tokens = batches.cache_read_input_tokens + t.cr,
    cache_creation_input_tokens = batches.cache_creation_input_tokens + t.cc
FROM (
    SELECT batch, sum(n) AS n, sum(n * (type = 0)) AS s, sum(n * (type = 1)) AS e, sum(n * (type = 2)) AS c,
           sum(n * (type = 3)) AS x, sum(input_tokens) AS i, sum(output_tokens) AS o,
           sum(cache_read_input_tokens) AS cr, sum(cache_creation_input_tokens) AS cc
    FROM temp.finished GROUP BY batch
) AS t
WHERE batches.seq = t.batch;
INSERT INTO batch_outcomes (
    batch, model, backend, result, error_type, requests,
    input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
)
SELECT batch, model, backend, type, error_type, n,
       input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
FROM temp.finished WHERE true
ON CONFLICT (batch, model, backend, result, error_type) DO UPDATE SET
    requests = requests + excluded.requests, input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    cache_read_input_tokens = cache_read_input_tokens + excluded.cache_read_input_tokens,
    cache_creation_input_tokens = cache_creation_input_tokens + excluded.cache_creation_input_tokens;
INSERT INTO usage (
    workspace, hour, model, succeeded, errored,
    input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
)
SELECT b.workspace, :hour, coalesce(m.model, ''), sum(f.n * (f.type = 0)), sum(f.n * (f.type = 1)),
       sum(f.input_tokens), sum(f.output_tokens), sum(f.cache_read_input_tokens), sum(f.cache_creation_input_tokens)
FROM temp.finished AS f
JOIN batches AS b ON b.seq = f.batch
LEFT JOIN batch_models AS m ON m.batch = f.batch AND m.key = f.model
WHERE f.type < 2 GROUP BY b.workspace, coalesce(m.model, '')
ON CONFLICT (workspace, hour, model) DO UPDATE SET
    succeeded = succeeded + excluded.succeeded, errored = errored + excluded.errored,
    input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,
    cache_read_input_tokens = cache_read_input_tokens + excluded.cache_read_input_tokens,
    cache_creation_input_tokens = cache_creation_input_tokens + excluded.cache_creation_input_tokens;
INSERT INTO batch_throughput (batch, second, requests)
SELECT batch, :second, sum(n) FROM temp.finished WHERE true GROUP BY batch
ON CONFLICT (batch, second) DO UPDATE SET requests = requests + excluded.requests;
DELETE FROM temp.finished;
DELETE FROM temp.finishing;

-- name: requeue_jobs
-- rows: id int8, not_before int8
-- Jobs still leased to `owner` go back to the queue, to be claimed again from `not_before` on.
UPDATE jobs SET state = 0, owner = NULL, lease_until = NULL, not_before = :not_before
WHERE id = :id AND owner = :owner AND state = 1;

-- name: settle_canceling
-- Waiting jobs of a batch being canceled will never be claimed: each becomes a `canceled` result.
-- `seqs`, when set, limits it to those batches.
-- Returns how many.
INSERT INTO temp.ending (id, batch, model)
-- CROSS JOIN keeps the batches being canceled (few, indexed) as the outer loop: SQLite would
-- otherwise scan every waiting job of every batch, at each completion.
SELECT j.id, j.batch, j.model FROM batches AS b CROSS JOIN jobs AS j ON j.batch = b.seq AND j.state = 0
WHERE b.status = 1 AND (:seqs IS NULL OR b.seq IN (SELECT value FROM json_each(:seqs)));
INSERT INTO results (id, type, line)
SELECT e.id, 2, CAST('{"custom_id":' || json_quote(r.custom_id) || ',"result":{"type":"canceled"}}' AS BLOB)
FROM temp.ending AS e JOIN requests AS r ON r.id = e.id;
DELETE FROM jobs WHERE id IN (SELECT id FROM temp.ending);
UPDATE batches SET processing = processing - t.n, canceled = canceled + t.n
FROM (SELECT batch, count(*) AS n FROM temp.ending GROUP BY batch) AS t
WHERE batches.seq = t.batch;
INSERT INTO batch_outcomes (
    batch, model, backend, result, error_type, requests,
    input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
)
SELECT batch, model, '', 2, '', count(*), 0, 0, 0, 0 FROM temp.ending WHERE true GROUP BY batch, model
ON CONFLICT (batch, model, backend, result, error_type) DO UPDATE SET requests = requests + excluded.requests;
SELECT count(*) FROM temp.ending;
DELETE FROM temp.ending;

-- name: end_idle_batches
-- Of the batches listed, those with nothing left to process end now.
UPDATE batches SET status = 2, ended_at = :now
WHERE seq IN (SELECT value FROM json_each(:seqs)) AND processing = 0 AND status < 2
RETURNING id;

-- name: end_idle_canceling
UPDATE batches SET status = 2, ended_at = :now WHERE status = 1 AND processing = 0 RETURNING id;

-- name: renew_leases
UPDATE jobs SET lease_until = :until
WHERE id IN (SELECT value FROM json_each(:ids)) AND owner = :owner AND state = 1;

-- name: release_jobs
-- Leased jobs handed back unstarted: the attempt they were claimed for did not happen.
UPDATE jobs SET state = 0, owner = NULL, lease_until = NULL, attempts = attempts - 1
WHERE id IN (SELECT value FROM json_each(:ids)) AND owner = :owner AND state = 1
RETURNING id;

-- name: reap_leases
UPDATE jobs SET state = 0, owner = NULL, lease_until = NULL WHERE state = 1 AND lease_until < :now RETURNING id;

-- name: queue_summary
-- Of the waiting jobs of batches in progress: how many are claimable now, how many in all, and
-- when the next one becomes claimable.
SELECT count(*) FILTER (WHERE j.not_before <= :now), count(*), min(j.not_before)
FROM jobs AS j JOIN batches AS b ON b.seq = j.batch
WHERE j.state = 0 AND b.status = 0;

-- name: notify
-- One process owns the file: the manager's callbacks reach the dispatcher directly.


-- ---------------------------------------------------------------------------------------------
-- Housekeeping

-- name: due_batches
SELECT seq FROM batches WHERE status < 2 AND expires_at <= :now ORDER BY seq;

-- name: expire_batch
-- A batch past its expiry ends; every request not finished becomes `expired`. Returns the batch's
-- id and how many requests expired.
INSERT INTO temp.ending (id, batch, model)
SELECT j.id, j.batch, j.model FROM jobs AS j JOIN batches AS b ON b.seq = j.batch
WHERE j.batch = :seq AND b.status < 2 AND b.expires_at <= :now;
INSERT INTO results (id, type, line)
SELECT e.id, 3, CAST('{"custom_id":' || json_quote(r.custom_id) || ',"result":{"type":"expired"}}' AS BLOB)
FROM temp.ending AS e JOIN requests AS r ON r.id = e.id;
DELETE FROM jobs WHERE id IN (SELECT id FROM temp.ending);
INSERT INTO batch_outcomes (
    batch, model, backend, result, error_type, requests,
    input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
)
SELECT batch, model, '', 3, '', count(*), 0, 0, 0, 0 FROM temp.ending WHERE true GROUP BY batch, model
ON CONFLICT (batch, model, backend, result, error_type) DO UPDATE SET requests = requests + excluded.requests;
UPDATE batches
SET processing = processing - (SELECT count(*) FROM temp.ending),
    expired = expired + (SELECT count(*) FROM temp.ending),
    status = 2, ended_at = :now
WHERE seq = :seq AND status < 2 AND expires_at <= :now
RETURNING id, (SELECT count(*) FROM temp.ending);
DELETE FROM temp.ending;

-- name: archivable_batches
SELECT seq FROM batches WHERE archived_at IS NULL AND status = 2 AND created_at < :cutoff ORDER BY created_at LIMIT 100;

-- name: archive_batch
-- An ended batch past retention keeps its row; its requests and results go.
DELETE FROM results WHERE id >= (SELECT first_request FROM batches WHERE seq = :seq AND archived_at IS NULL)
    AND id < (SELECT first_request + total FROM batches WHERE seq = :seq AND archived_at IS NULL);
DELETE FROM requests WHERE id >= (SELECT first_request FROM batches WHERE seq = :seq AND archived_at IS NULL)
    AND id < (SELECT first_request + total FROM batches WHERE seq = :seq AND archived_at IS NULL);
UPDATE batches SET archived_at = :now WHERE seq = :seq AND archived_at IS NULL RETURNING id;


-- ---------------------------------------------------------------------------------------------
-- The OpenAI Batch API: its batches' own columns, their output and error files, uploaded files

-- name: set_openai_batch
-- An OpenAI batch's own columns, in its create transaction; one that failed validation (`errors`)
-- has no requests and ends at once.
UPDATE batches
SET endpoint = :endpoint, input_file_id = :input_file_id, completion_window = :completion_window,
    output_expires_after = :output_expires_after, errors = :errors,
    status = CASE WHEN :errors IS NULL THEN status ELSE 2 END,
    ended_at = CASE WHEN :errors IS NULL THEN ended_at ELSE created_at END
WHERE id = :id;

-- name: get_openai_batch
-- inline
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority, endpoint, input_file_id, completion_window, output_expires_after, errors, files_deleted,
       output_bytes, error_bytes
FROM batches WHERE id = :id;

-- name: list_openai_batches
-- A workspace's batches between `lower` and `upper` (the OpenAI id prefix), newest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority, endpoint, input_file_id, completion_window, output_expires_after, errors, files_deleted,
       output_bytes, error_bytes
FROM batches WHERE workspace = :workspace AND id > :lower AND id < :upper ORDER BY id DESC LIMIT :limit;

-- name: list_openai_outputs
-- A workspace's ended OpenAI batches (whose output and error files are files of the workspace)
-- before (`at`, `batch_id`) in the order they ended, the latest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority, endpoint, input_file_id, completion_window, output_expires_after, errors, files_deleted,
       output_bytes, error_bytes
FROM batches
WHERE workspace = :workspace AND endpoint <> '' AND status = 2 AND archived_at IS NULL
  AND (ended_at < :at OR (ended_at = :at AND id < :batch_id))
ORDER BY ended_at DESC, id DESC LIMIT :limit;

-- name: list_openai_outputs_asc
-- The same after (`at`, `batch_id`), the earliest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority, endpoint, input_file_id, completion_window, output_expires_after, errors, files_deleted,
       output_bytes, error_bytes
FROM batches
WHERE workspace = :workspace AND endpoint <> '' AND status = 2 AND archived_at IS NULL
  AND (ended_at > :at OR (ended_at = :at AND id > :batch_id))
ORDER BY ended_at, id LIMIT :limit;

-- name: openai_results_page
-- An OpenAI batch's output file (`succeeded`: the lines of its succeeded requests) or error file
-- (the others), from `cursor` on, in id order.
SELECT id, type, line FROM results
WHERE id >= :cursor AND id < :stop AND (type = 0) = :succeeded
ORDER BY id LIMIT :limit;

-- name: set_openai_file_sizes
UPDATE batches SET output_bytes = coalesce(:output_bytes, output_bytes), error_bytes = coalesce(:error_bytes, error_bytes)
WHERE seq = :seq;

-- name: delete_openai_output
-- A batch's output file (`succeeded`) or error file is deleted: its lines go, the batch remembers.
DELETE FROM results
WHERE id >= (SELECT first_request FROM batches WHERE seq = :seq)
  AND id < (SELECT first_request + total FROM batches WHERE seq = :seq)
  AND (type = 0) = :succeeded;
UPDATE batches SET files_deleted = files_deleted | :bit WHERE seq = :seq RETURNING id;

-- name: insert_file
INSERT INTO files (id, workspace, purpose, filename, bytes, created_at, expires_at)
VALUES (:id, :workspace, :purpose, :filename, :bytes, :created_at, :expires_at)
RETURNING seq;

-- name: insert_file_chunks
-- rows: file_id text, n int4, data bytea
INSERT INTO file_chunks (file_id, n, data) VALUES (?, ?, ?);

-- name: get_file
-- inline
SELECT seq, id, workspace, purpose, filename, bytes, created_at, expires_at FROM files WHERE id = :id;

-- name: file_chunks
-- Up to `limit` chunks of a file's content, from chunk `n` on.
SELECT n, data FROM file_chunks WHERE file_id = :file_id AND n >= :n ORDER BY n LIMIT :limit;

-- name: list_files
-- A workspace's files (of `purpose`, when set) before the cursor (created_at, id), newest first.
SELECT seq, id, workspace, purpose, filename, bytes, created_at, expires_at FROM files
WHERE workspace = :workspace AND (:purpose IS NULL OR purpose = :purpose)
  AND (created_at < :created_at OR (created_at = :created_at AND id < :id))
ORDER BY created_at DESC, id DESC LIMIT :limit;

-- name: list_files_asc
-- The same after the cursor, oldest first.
SELECT seq, id, workspace, purpose, filename, bytes, created_at, expires_at FROM files
WHERE workspace = :workspace AND (:purpose IS NULL OR purpose = :purpose)
  AND (created_at > :created_at OR (created_at = :created_at AND id > :id))
ORDER BY created_at, id LIMIT :limit;

-- name: delete_file
DELETE FROM file_chunks WHERE file_id = :id;
DELETE FROM files WHERE id = :id RETURNING id;

-- name: expired_files
SELECT id FROM files WHERE expires_at <= :now ORDER BY expires_at LIMIT 100;


-- ---------------------------------------------------------------------------------------------
-- Batch features beyond the hosted API: options, retries, hard cancel, fail-fast, idempotency
-- keys, metadata filters, the webhook outbox

-- name: set_batch_options
-- In the create transaction of a batch that uses an option.
UPDATE batches
SET retry_of = :retry_of, fail_fast_min_results = :fail_fast_min_results,
    fail_fast_max_error_rate = :fail_fast_max_error_rate, webhook_url = :webhook_url
WHERE id = :id;

-- name: copy_requests
-- A retry batch's requests: those of `ids` (another batch's), in that order, from id `first` on.
INSERT INTO requests (id, custom_id, params)
SELECT :first + j.key, r.custom_id, r.params FROM json_each(:ids) AS j JOIN requests AS r ON r.id = j.value;

-- name: set_retried_by
UPDATE batches SET retried_by = :child WHERE seq = :seq;

-- name: mark_abort_running
-- A cancel that also stops the requests running now (a canceling batch may be upgraded to it).
UPDATE batches SET abort_running = 1 WHERE seq = :seq AND status = 1 AND abort_running = 0 RETURNING seq;

-- name: aborting_batches
-- Of the batches listed, those whose running requests are to be stopped.
SELECT seq FROM batches WHERE seq IN (SELECT value FROM json_each(:seqs)) AND status = 1 AND abort_running = 1;

-- name: fail_fast
-- Of the batches listed (locked, their new results counted), those in progress whose fail-fast
-- policy trips — at least `min_results` results, more than `max_error_rate` of them errored,
-- requests still to run — are canceled as a hard cancel, saying why.
UPDATE batches SET status = 1, cancel_initiated_at = :now, cancel_reason = 'fail_fast', abort_running = 1
WHERE seq IN (SELECT value FROM json_each(:seqs)) AND status = 0 AND processing > 0
  AND fail_fast_min_results IS NOT NULL AND succeeded + errored >= fail_fast_min_results
  AND errored > fail_fast_max_error_rate * (succeeded + errored)
RETURNING seq, id;

-- name: find_idempotency_key
SELECT fingerprint, batch_id FROM idempotency_keys WHERE workspace = :workspace AND key = :key AND created_at >= :cutoff;

-- name: claim_idempotency_key
-- In the create transaction: a second create with the same key fails on the primary key and rolls
-- back whole. An expired key makes room first.
DELETE FROM idempotency_keys WHERE workspace = :workspace AND key = :key AND created_at < :cutoff;
INSERT INTO idempotency_keys (workspace, key, fingerprint, batch_id, created_at)
VALUES (:workspace, :key, :fingerprint, :batch_id, :now);

-- name: forget_idempotency_keys
DELETE FROM idempotency_keys WHERE created_at < :cutoff;

-- name: list_batches_matching
-- A workspace's batches between `lower` and `upper` (one API's id prefix) whose metadata holds
-- every pair of `metadata` (a JSON object) and, when `status` is set, of that status, newest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM batches AS b
WHERE workspace = :workspace AND id > :lower AND id < :upper AND (:status IS NULL OR status = :status)
  AND NOT EXISTS (
      SELECT 1 FROM json_each(:metadata) AS f
      WHERE NOT EXISTS (SELECT 1 FROM json_each(b.metadata) AS m WHERE m.key = f.key AND m.value = f.value)
  )
ORDER BY id DESC LIMIT :limit;

-- name: list_batches_matching_before
-- A workspace's batches newer than `lower` whose metadata holds every pair of `metadata`, oldest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM batches AS b
WHERE workspace = :workspace AND id > :lower AND (:status IS NULL OR status = :status)
  AND NOT EXISTS (
      SELECT 1 FROM json_each(:metadata) AS f
      WHERE NOT EXISTS (SELECT 1 FROM json_each(b.metadata) AS m WHERE m.key = f.key AND m.value = f.value)
  )
ORDER BY id LIMIT :limit;

-- name: announce_events
-- Batches whose status moved past `announced` (in this transaction): their webhook events go to
-- the outbox, one row per event and receiver — each configured webhook (`urls`, `secret_envs`,
-- `workspaces` ('' for all) and `events` (comma-separated, '' for all), side by side) and the
-- batch's own webhook_url (signed with `batch_secret_env`, its address checked at delivery) —
-- and `announced` catches up. A batch canceled while idle ends at once: both of its events.
WITH events (status, name) AS (VALUES (1, 'message_batch.canceling'), (2, 'message_batch.ended')),
targets (url, secret_env, workspace, events) AS (
    SELECT u.value, s.value, w.value, v.value
    FROM json_each(:urls) AS u
    JOIN json_each(:secret_envs) AS s ON s.key = u.key
    JOIN json_each(:workspaces) AS w ON w.key = u.key
    JOIN json_each(:events) AS v ON v.key = u.key
),
due (id, workspace, webhook_url, event, event_at) AS (
    SELECT b.id, b.workspace, b.webhook_url, e.name, CASE e.status WHEN 1 THEN b.cancel_initiated_at ELSE b.ended_at END
    FROM batches AS b
    JOIN events AS e ON e.status > b.announced AND e.status <= b.status AND (e.status = 2 OR b.cancel_initiated_at IS NOT NULL)
    WHERE b.status > b.announced AND b.endpoint = ''  -- Message Batches: the OpenAI dialect's have no webhooks
)
INSERT INTO webhook_deliveries (batch_id, workspace, event, event_at, url, secret_env, checked, next_at, give_up_at, created_at)
SELECT d.id, d.workspace, d.event, d.event_at, t.url, t.secret_env, 0, :now, :give_up_at, :now
FROM due AS d JOIN targets AS t
  ON (t.workspace = '' OR t.workspace = d.workspace) AND (t.events = '' OR instr(',' || t.events || ',', ',' || d.event || ',') > 0)
UNION ALL
SELECT d.id, d.workspace, d.event, d.event_at, d.webhook_url, :batch_secret_env, 1, :now, :give_up_at, :now
FROM due AS d WHERE d.webhook_url IS NOT NULL;
UPDATE batches SET announced = status WHERE status > announced RETURNING id;

-- name: claim_webhook_deliveries
-- Deliveries due now, held by `owner`: `next_at` moves to the end of the lease, so that one whose
-- process died is due again then.
UPDATE webhook_deliveries SET owner = :owner, next_at = :until
WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 0 AND next_at <= :now ORDER BY next_at LIMIT :limit)
RETURNING id, batch_id, workspace, event, event_at, url, secret_env, checked, attempts, payload, give_up_at;

-- name: webhook_delivered
UPDATE webhook_deliveries
SET state = 1, delivered_at = :now, attempts = attempts + 1, last_status = :status, last_error = NULL,
    payload = coalesce(payload, :payload), owner = NULL
WHERE id = :id AND owner = :owner AND state = 0;

-- name: webhook_failed
-- An attempt failed: try again from `next_at`, unless that is past `give_up_at` or it is `final`.
UPDATE webhook_deliveries
SET attempts = attempts + 1, last_status = :status, last_error = :error, payload = coalesce(payload, :payload),
    owner = NULL, next_at = :next_at, state = CASE WHEN :final OR :next_at > give_up_at THEN 2 ELSE 0 END
WHERE id = :id AND owner = :owner AND state = 0
RETURNING state;

-- name: list_webhook_deliveries
-- A workspace's deliveries older than `before`, newest first; `batch_id` and `state` filter when set.
SELECT id, batch_id, event, event_at, url, checked, state, attempts, next_at, give_up_at, created_at, delivered_at,
       last_status, last_error
FROM webhook_deliveries
WHERE workspace = :workspace AND id < :before AND (:batch_id IS NULL OR batch_id = :batch_id)
  AND (:state IS NULL OR state = :state)
ORDER BY id DESC LIMIT :limit;

-- name: get_webhook_delivery
SELECT id, batch_id, event, event_at, url, checked, state, attempts, next_at, give_up_at, created_at, delivered_at,
       last_status, last_error
FROM webhook_deliveries WHERE id = :id AND workspace = :workspace;

-- name: redeliver_webhook
-- Due now again, with a fresh retry window (whatever its state).
UPDATE webhook_deliveries SET state = 0, next_at = :now, give_up_at = :give_up_at, owner = NULL
WHERE id = :id AND workspace = :workspace
RETURNING id;

-- name: forget_webhook_deliveries
DELETE FROM webhook_deliveries WHERE state > 0 AND created_at < :cutoff;


-- ---------------------------------------------------------------------------------------------
-- Many teams: quotas, models, outcomes, usage

-- name: lock_workspace
-- Nothing to lock: the writer thread runs one transaction at a time.

-- name: check_quotas
-- guard
-- The workspace's queue quotas (a NULL quota is none), checked in the transaction that inserts a
-- batch of `total` requests: one row (quota, its value, the workspace's figure now) per quota it
-- would exceed, and the store rolls the transaction back.
SELECT 'max_queued_requests', :max_queued_requests, queued
FROM (SELECT coalesce(sum(processing), 0) AS queued FROM batches WHERE workspace = :workspace AND status < 2)
WHERE queued + :total > :max_queued_requests
UNION ALL
SELECT 'max_batches_in_progress', :max_batches_in_progress, open
FROM (SELECT count(*) AS open FROM batches WHERE workspace = :workspace AND status < 2)
WHERE open + 1 > :max_batches_in_progress;

-- name: insert_batch_models
-- rows: key int4, model text, total int4
INSERT INTO batch_models (batch, key, model, total)
VALUES ((SELECT seq FROM batches WHERE id = :batch_id), :key, :model, :total);

-- name: set_job_models
-- rows: first int8, stop int8, model int4
-- The jobs of a batch whose requests name several models: each run of ids gets its model's key.
UPDATE jobs SET model = :model WHERE id >= :first AND id < :stop;

-- name: models_of_batches
-- inline
SELECT batch, key, model, total FROM batch_models
WHERE batch IN (SELECT value FROM json_each(:seqs)) ORDER BY batch, key;

-- name: outcomes_of_batch
SELECT m.model, o.model, o.backend, o.result, o.error_type, o.requests,
       o.input_tokens, o.output_tokens, o.cache_read_input_tokens, o.cache_creation_input_tokens
FROM batch_outcomes AS o LEFT JOIN batch_models AS m ON m.batch = o.batch AND m.key = o.model
WHERE o.batch = :seq;

-- name: throughput_of_batch
-- Requests written per `step` seconds, from the batch's first on.
SELECT second / :step * :step AS at, sum(requests) FROM batch_throughput
WHERE batch = :seq GROUP BY at ORDER BY at;

-- name: forget_batch
-- What is kept about a batch besides its row, when it is deleted (usage stays).
DELETE FROM batch_models WHERE batch = :seq;
DELETE FROM batch_outcomes WHERE batch = :seq;
DELETE FROM batch_throughput WHERE batch = :seq;

-- name: usage_of_workspace
-- Per hour and model, the hours in [since, until).
SELECT hour, model, succeeded, errored, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
FROM usage WHERE workspace = :workspace AND hour >= :since AND hour < :until ORDER BY hour, model;

-- name: open_work_of_workspace
-- A workspace's batches in progress or canceling, and their requests not finished.
SELECT count(*), coalesce(sum(processing), 0) FROM batches WHERE workspace = :workspace AND status < 2;

-- name: leased_by_batch_model
-- Requests leased now (running somewhere), per batch and model.
SELECT batch, model, count(*) FROM jobs WHERE state = 1 GROUP BY batch, model;

-- name: open_batches_by_model
-- Of each batch not ended: its workspace, and per model its total and its finished requests.
SELECT b.seq, b.workspace, m.key, m.model, m.total,
       (SELECT coalesce(sum(o.requests), 0) FROM batch_outcomes AS o WHERE o.batch = b.seq AND o.model = m.key)
FROM batches AS b JOIN batch_models AS m ON m.batch = b.seq
WHERE b.status < 2;

-- name: batches_by_status
SELECT status, count(*) FROM batches GROUP BY status;
