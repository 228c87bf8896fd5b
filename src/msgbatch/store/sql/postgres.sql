-- The scale-out store's statements (PostgreSQL 12 or newer), by name: the same names as sqlite.sql.
--
-- Format (store/queries.py): a block starts at `-- name: NAME` and holds one or more statements,
-- each ending with `;` at the end of a line; they run in order, in the caller's transaction
-- (pipelined: one round trip for a whole transaction).
--   `-- rows: a type, b type` the step passes rows: each column arrives as an array parameter of
--                             that type (`%(a)s`); a COPY ... FROM STDIN statement streams the
--                             rows instead, in the binary format.
-- Names starting with `_` are this dialect's own. Parameters are psycopg's `%(name)s`: no percent
-- sign may appear anywhere else in a block, comments included.
--
-- Several processes share the database, so:
-- - every transaction that touches a batch's counts or status locks that batch row first
--   (several batches in `seq` order), then its jobs: one lock order, no deadlocks, and a batch is
--   transitioned by exactly one process;
-- - statements that only touch job rows (claim, renew, reap) skip rows others hold instead of
--   waiting;
-- - a completion is conditional on the lease (owner = me AND state = 1): a worker whose lease ran
--   out and was taken over cannot write a second result;
-- - request ids come from a counter that only grows: a stale completion never matches a new job.
-- Every query is a key lookup or an ordered range scan with a limit; joins go through primary keys
-- explicitly (LATERAL), so no plan depends on statistics the queue's churn makes stale.
--
-- The results lines written here for canceled and expired requests must be byte-identical to
-- those of msgbatch/results.py (tests hold them to it). A custom_id is free-form in an OpenAI batch:
-- it goes into a line JSON-quoted (to_json(custom_id)), which escapes exactly as msgspec does.


-- ---------------------------------------------------------------------------------------------
-- Schema, by version (msgbatch.migrations), applied under an advisory lock

-- name: migrate_1
-- batches, requests, jobs, results
CREATE TABLE msgbatch.batches (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,   -- ids sort by time in byte order: list order and cursors
    workspace text NOT NULL,
    status smallint NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    ended_at bigint,
    cancel_initiated_at bigint,
    archived_at bigint,
    total integer NOT NULL,
    processing integer NOT NULL,
    succeeded integer NOT NULL DEFAULT 0,
    errored integer NOT NULL DEFAULT 0,
    canceled integer NOT NULL DEFAULT 0,
    expired integer NOT NULL DEFAULT 0,
    first_request bigint NOT NULL,
    betas text NOT NULL DEFAULT ''
) WITH (fillfactor = 50);  -- counter bumps stay HOT updates on the same page
CREATE INDEX batches_by_workspace ON msgbatch.batches (workspace, id);
CREATE INDEX batches_open ON msgbatch.batches (expires_at) WHERE status < 2;
CREATE INDEX batches_claimable ON msgbatch.batches (seq) WHERE status = 0;
CREATE INDEX batches_unarchived ON msgbatch.batches (created_at) WHERE archived_at IS NULL;
-- Immutable once written: what the client sent. A batch's rows are [first_request, first_request + total).
CREATE TABLE msgbatch.requests (
    id bigint PRIMARY KEY,
    custom_id text NOT NULL,
    params bytea NOT NULL
);
-- Large params are stored out of line as they are: compressing them costs more than it saves here.
ALTER TABLE msgbatch.requests ALTER COLUMN params SET STORAGE EXTERNAL;
-- Only unfinished work. state 0: waiting (claimable from not_before on); 1: leased to `owner`
-- until `lease_until`. A finished job's row is deleted in the transaction that writes its result.
CREATE TABLE msgbatch.jobs (
    id bigint PRIMARY KEY,
    batch bigint NOT NULL,
    state smallint NOT NULL DEFAULT 0,
    not_before bigint NOT NULL DEFAULT 0,
    owner text,
    lease_until bigint,
    attempts integer NOT NULL DEFAULT 0
);
-- Claims read a batch's id range of waiting jobs; an index on (batch, id) lets the planner fall
-- back to the primary key and re-scan finished rows (see PERF-NOTES), one on (id) cannot.
CREATE INDEX jobs_waiting ON msgbatch.jobs (id) WHERE state = 0;
CREATE INDEX jobs_leased ON msgbatch.jobs (lease_until) WHERE state = 1;
ALTER TABLE msgbatch.jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
-- Append-only: one row per request, the whole results line as it will be served.
CREATE TABLE msgbatch.results (
    id bigint PRIMARY KEY,
    type smallint NOT NULL,
    line bytea NOT NULL
);
ALTER TABLE msgbatch.results ALTER COLUMN line SET STORAGE EXTERNAL;
-- Request ids are handed out in blocks, one per batch, and never reused.
CREATE TABLE msgbatch.counters (name text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO msgbatch.counters VALUES ('request_ids', 0);

-- name: migrate_2
-- request headers kept with the batch
ALTER TABLE msgbatch.batches ADD COLUMN headers text NOT NULL DEFAULT '{}';
CREATE INDEX batches_canceling ON msgbatch.batches (seq) WHERE status = 1;

-- name: migrate_3
-- batch metadata; token usage of each batch
ALTER TABLE msgbatch.batches
    ADD COLUMN metadata text NOT NULL DEFAULT '{}',
    ADD COLUMN input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN output_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cache_read_input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cache_creation_input_tokens bigint NOT NULL DEFAULT 0;

-- name: migrate_4
-- the OpenAI Batch API: its batches' own columns; uploaded files
-- endpoint: '' for a Message Batch, else the OpenAI endpoint every request of the batch targets;
-- output_expires_after: seconds after its end that its output and error files expire (null: when
-- it is archived); errors: a JSON array of the input file's bad lines (it failed validation and
-- nothing ran); files_deleted: 1 its output file was deleted, 2 its error file was; output_bytes,
-- error_bytes: the sizes of those files, once measured (they no longer change after its end).
ALTER TABLE msgbatch.batches
    ADD COLUMN endpoint text NOT NULL DEFAULT '',
    ADD COLUMN input_file_id text,
    ADD COLUMN completion_window text,
    ADD COLUMN output_expires_after bigint,
    ADD COLUMN errors text,
    ADD COLUMN files_deleted smallint NOT NULL DEFAULT 0,
    ADD COLUMN output_bytes bigint,
    ADD COLUMN error_bytes bigint;
CREATE INDEX batches_openai_ended ON msgbatch.batches (workspace, ended_at) WHERE endpoint <> '' AND status = 2;
CREATE TABLE msgbatch.files (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,
    workspace text NOT NULL,
    purpose text NOT NULL,
    filename text NOT NULL,
    bytes bigint NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint
);
CREATE INDEX files_by_workspace ON msgbatch.files (workspace, created_at, id);
CREATE INDEX files_expiring ON msgbatch.files (expires_at) WHERE expires_at IS NOT NULL;
-- A file's content in chunks of up to 1 MiB, in order, stored as they are (like params).
CREATE TABLE msgbatch.file_chunks (
    file_id text COLLATE "C" NOT NULL,
    n integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (file_id, n)
);
ALTER TABLE msgbatch.file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- name: migrate_5
-- batch features: retries, hard cancel, fail-fast, per-batch webhooks; idempotency keys; the webhook outbox
ALTER TABLE msgbatch.batches
    ADD COLUMN retry_of text,
    ADD COLUMN retried_by text,
    ADD COLUMN cancel_reason text,
    ADD COLUMN abort_running smallint NOT NULL DEFAULT 0,
    ADD COLUMN fail_fast_min_results integer,
    ADD COLUMN fail_fast_max_error_rate double precision,
    ADD COLUMN webhook_url text,
    -- The status whose webhook events are in the outbox: a transition moves `status` past it, and
    -- the same transaction writes the events and catches it up (announce_events).
    ADD COLUMN announced smallint NOT NULL DEFAULT 0;
UPDATE msgbatch.batches SET announced = status;  -- nothing for the past
CREATE INDEX batches_unannounced ON msgbatch.batches (seq) WHERE status > announced;
-- Idempotency-Key of a create (or retry) call: per workspace, kept 24 h.
CREATE TABLE msgbatch.idempotency_keys (
    workspace text NOT NULL,
    key text NOT NULL,
    fingerprint text NOT NULL,
    batch_id text NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (workspace, key)
);
CREATE INDEX idempotency_keys_by_age ON msgbatch.idempotency_keys (created_at);
-- The webhook outbox: one row per event and receiver. state 0: to deliver from `next_at` on (a
-- process delivering it holds it as `owner` and has pushed `next_at` out by a lease), 1:
-- delivered, 2: given up. `payload` is the body, fixed at the first attempt.
CREATE TABLE msgbatch.webhook_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id text NOT NULL,
    workspace text NOT NULL,
    event text NOT NULL,
    event_at bigint NOT NULL,
    url text NOT NULL,
    secret_env text NOT NULL,
    checked smallint NOT NULL,
    state smallint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    next_at bigint NOT NULL,
    give_up_at bigint NOT NULL,
    owner text,
    payload bytea,
    created_at bigint NOT NULL,
    delivered_at bigint,
    last_status integer,
    last_error text
);
CREATE INDEX webhook_deliveries_due ON msgbatch.webhook_deliveries (next_at) WHERE state = 0;
CREATE INDEX webhook_deliveries_by_workspace ON msgbatch.webhook_deliveries (workspace, id);
CREATE INDEX webhook_deliveries_by_batch ON msgbatch.webhook_deliveries (batch_id);
CREATE INDEX webhook_deliveries_done ON msgbatch.webhook_deliveries (created_at) WHERE state > 0;

-- name: migrate_6
-- many teams: batch priority; each request's model; outcomes per batch, model, backend and error type; usage per workspace, model and hour; throughput per batch
-- priority: 0 high, 1 normal, 2 low
ALTER TABLE msgbatch.batches ADD COLUMN priority smallint NOT NULL DEFAULT 1;
CREATE INDEX batches_open_by_workspace ON msgbatch.batches (workspace) WHERE status < 2;
-- A job's model, as a key of its batch's batch_models (0 for the jobs of batches made before).
-- Claims filter a batch's id range by it (the jobs_waiting index stays on id alone: see migrate_1).
ALTER TABLE msgbatch.jobs ADD COLUMN model integer NOT NULL DEFAULT 0;
-- The models a batch's requests name ('' where params have no string `model`), keyed 0, 1, ...
CREATE TABLE msgbatch.batch_models (
    batch bigint NOT NULL,
    key integer NOT NULL,
    model text NOT NULL,
    total integer NOT NULL,
    PRIMARY KEY (batch, key)
);
-- Finished requests of a batch by model, backend ('' none), result type and error type ('' none),
-- counted in the transactions that write their results (which hold the batch row's lock).
CREATE TABLE msgbatch.batch_outcomes (
    batch bigint NOT NULL,
    model integer NOT NULL,
    backend text NOT NULL,
    result smallint NOT NULL,
    error_type text NOT NULL,
    requests bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_read_input_tokens bigint NOT NULL,
    cache_creation_input_tokens bigint NOT NULL,
    PRIMARY KEY (batch, model, backend, result, error_type)
) WITH (fillfactor = 50);
-- Token usage per workspace, model and hour (unix seconds of its start); kept when batches go.
-- Rows are locked after the batch rows, in (workspace, model) order: no deadlocks.
CREATE TABLE msgbatch.usage (
    workspace text NOT NULL,
    hour bigint NOT NULL,
    model text NOT NULL,
    succeeded bigint NOT NULL,
    errored bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_read_input_tokens bigint NOT NULL,
    cache_creation_input_tokens bigint NOT NULL,
    PRIMARY KEY (workspace, hour, model)
) WITH (fillfactor = 50);
-- Requests of a batch whose results a dispatcher wrote, per second (unix seconds).
CREATE TABLE msgbatch.batch_throughput (
    batch bigint NOT NULL,
    second bigint NOT NULL,
    requests bigint NOT NULL,
    PRIMARY KEY (batch, second)
) WITH (fillfactor = 50);


-- ---------------------------------------------------------------------------------------------
-- Batches

-- name: reserve_request_ids
-- Its own short transaction: creates never queue behind each other's COPY, and a failed create
-- leaves a gap, never a reused id.
UPDATE msgbatch.counters SET value = value + %(n)s WHERE name = 'request_ids' RETURNING value;

-- name: insert_batch
INSERT INTO msgbatch.batches (
    id, workspace, status, created_at, expires_at, total, processing, first_request, betas, headers, metadata, priority
) VALUES (
    %(id)s, %(workspace)s, 0, %(created_at)s, %(expires_at)s, %(total)s, %(total)s, %(first_request)s, %(betas)s,
    %(headers)s, %(metadata)s, %(priority)s
)
RETURNING seq;

-- name: insert_requests
-- rows: id int8, custom_id text, params bytea
COPY msgbatch.requests (id, custom_id, params) FROM STDIN (FORMAT BINARY);

-- name: insert_jobs
INSERT INTO msgbatch.jobs (id, batch)
SELECT g, (SELECT seq FROM msgbatch.batches WHERE id = %(batch_id)s)
FROM generate_series(%(first)s::int8, %(stop)s::int8 - 1) AS g;

-- name: get_batch
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM msgbatch.batches WHERE id = %(id)s;

-- name: list_batches
-- A workspace's batches between `lower` and `upper` (one API's id prefix), newest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM msgbatch.batches WHERE workspace = %(workspace)s AND id > %(lower)s AND id < %(upper)s
ORDER BY id DESC LIMIT %(limit)s;

-- name: list_batches_before
-- A workspace's batches newer than `lower`, oldest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM msgbatch.batches WHERE workspace = %(workspace)s AND id > %(lower)s ORDER BY id LIMIT %(limit)s;

-- name: mark_canceling
-- The conditional update takes the batch row lock: of two cancels, one acts.
UPDATE msgbatch.batches SET status = 1, cancel_initiated_at = %(now)s
WHERE seq = %(seq)s AND status = 0 RETURNING seq;

-- name: delete_batch
WITH gone AS (
    DELETE FROM msgbatch.batches WHERE seq = %(seq)s RETURNING id, first_request, total
), dropped_results AS (
    DELETE FROM msgbatch.results AS r USING gone WHERE r.id >= gone.first_request AND r.id < gone.first_request + gone.total
), dropped_requests AS (
    DELETE FROM msgbatch.requests AS r USING gone WHERE r.id >= gone.first_request AND r.id < gone.first_request + gone.total
), dropped_jobs AS (
    DELETE FROM msgbatch.jobs AS j USING gone WHERE j.id >= gone.first_request AND j.id < gone.first_request + gone.total
)
SELECT id FROM gone;

-- name: results_page
-- Results lines of one batch's id range from `cursor` on, in id order; `type` filters when set.
SELECT id, line FROM msgbatch.results
WHERE id >= %(cursor)s AND id < %(stop)s AND (%(type)s::int2 IS NULL OR type = %(type)s::int2)
ORDER BY id LIMIT %(limit)s;

-- name: result_of
SELECT line FROM msgbatch.results
WHERE id = (SELECT id FROM msgbatch.requests WHERE id >= %(first)s AND id < %(stop)s AND custom_id = %(custom_id)s)
  AND (%(type)s::int2 IS NULL OR type = %(type)s::int2);


-- ---------------------------------------------------------------------------------------------
-- The queue

-- name: active_batches
-- The batches that take work, in creation order.
SELECT seq, first_request, total, betas, headers, expires_at, endpoint, workspace, priority,
       fail_fast_min_results IS NOT NULL
FROM msgbatch.batches WHERE status = 0 ORDER BY seq;

-- name: claim_jobs
-- rows: seq int8, first int8, stop int8, model int4, take int4
-- Lease up to `take` waiting jobs of each batch (by id range) and model listed, in one statement;
-- jobs other workers are claiming are skipped, not waited for.
WITH picked AS (
    SELECT j.id
    FROM unnest(%(first)s::int8[], %(stop)s::int8[], %(model)s::int4[], %(take)s::int4[]) AS b(first, stop, model, take)
    CROSS JOIN LATERAL (
        SELECT id FROM msgbatch.jobs
        WHERE id >= b.first AND id < b.stop AND state = 0 AND not_before <= %(now)s AND model = b.model
        ORDER BY id
        LIMIT b.take
        FOR UPDATE SKIP LOCKED
    ) AS j
), leased AS (
    UPDATE msgbatch.jobs
    SET state = 1, owner = %(owner)s, lease_until = %(until)s, attempts = attempts + 1
    WHERE id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING id, batch, attempts, model
)
SELECT l.id, l.batch, l.attempts, r.custom_id, r.params, l.model
FROM leased AS l
CROSS JOIN LATERAL (SELECT custom_id, params FROM msgbatch.requests WHERE id = l.id) AS r;

-- name: lock_batches
-- Batch rows first, in seq order: the lock order every transaction here follows.
SELECT seq FROM msgbatch.batches WHERE seq = ANY(%(seqs)s::int8[]) ORDER BY seq FOR NO KEY UPDATE;

-- name: finish_jobs
-- rows: id int8, type int2, line bytea, input_tokens int8, output_tokens int8, cache_read_input_tokens int8, cache_creation_input_tokens int8, backend text, error_type text
-- Finished jobs still leased to `owner` get their results line and leave the queue; the counts and
-- token usage of their batches move by as much, and so do the batches' outcomes by model, backend
-- and error type, their workspaces' usage of the hour and their throughput of the second. A job
-- whose lease lapsed writes nothing. Each outcome is matched to its job by a primary-key lookup
-- (LATERAL), never by a join the planner would order on guesses.
WITH held AS (
    SELECT o.id, o.type, o.line, o.i, o.o, o.cr, o.cc, o.backend, o.error_type, j.batch, j.model
    FROM unnest(
        %(id)s::int8[], %(type)s::int2[], %(line)s::bytea[], %(input_tokens)s::int8[], %(output_tokens)s::int8[],
        %(cache_read_input_tokens)s::int8[], %(cache_creation_input_tokens)s::int8[], %(backend)s::text[],
        %(error_type)s::text[]
    ) AS o(id, type, line, i, o, cr, cc, backend, error_type)
    CROSS JOIN LATERAL (
        SELECT batch, model FROM msgbatch.jobs WHERE id = o.id AND owner = %(owner)s AND state = 1 FOR UPDATE
    ) AS j
), done AS (
    DELETE FROM msgbatch.jobs WHERE id = ANY(ARRAY(SELECT id FROM held))
), kept AS (
    INSERT INTO msgbatch.results (id, type, line) SELECT id, type, line FROM held
), grouped AS (
    -- The outcomes grouped once, for everything they move.
    SELECT batch, model, backend, type, error_type, count(*) AS n, sum(i) AS i, sum(o) AS o, sum(cr) AS cr,
           sum(cc) AS cc
    FROM held GROUP BY batch, model, backend, type, error_type
), outcomes AS (
    INSERT INTO msgbatch.batch_outcomes AS t (
        batch, model, backend, result, error_type, requests,
        input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
    )
    SELECT batch, model, backend, type, error_type, n, i, o, cr, cc
    FROM grouped ORDER BY batch, model, backend, type, error_type
    ON CONFLICT (batch, model, backend, result, error_type) DO UPDATE SET
        requests = t.requests + excluded.requests, input_tokens = t.input_tokens + excluded.input_tokens,
        output_tokens = t.output_tokens + excluded.output_tokens,
        cache_read_input_tokens = t.cache_read_input_tokens + excluded.cache_read_input_tokens,
        cache_creation_input_tokens = t.cache_creation_input_tokens + excluded.cache_creation_input_tokens
), used AS (
    INSERT INTO msgbatch.usage AS t (
        workspace, hour, model, succeeded, errored,
        input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
    )
    SELECT w.workspace, %(hour)s::int8, coalesce(m.model, ''), sum(g.n * (g.type = 0)::int),
           sum(g.n * (g.type = 1)::int), sum(g.i), sum(g.o), sum(g.cr), sum(g.cc)
    FROM grouped AS g
    CROSS JOIN LATERAL (SELECT workspace FROM msgbatch.batches WHERE seq = g.batch) AS w
    LEFT JOIN LATERAL (SELECT model FROM msgbatch.batch_models WHERE batch = g.batch AND key = g.model) AS m ON true
    WHERE g.type < 2
    GROUP BY w.workspace, coalesce(m.model, '') ORDER BY w.workspace, coalesce(m.model, '')
    ON CONFLICT (workspace, hour, model) DO UPDATE SET
        succeeded = t.succeeded + excluded.succeeded, errored = t.errored + excluded.errored,
        input_tokens = t.input_tokens + excluded.input_tokens, output_tokens = t.output_tokens + excluded.output_tokens,
        cache_read_input_tokens = t.cache_read_input_tokens + excluded.cache_read_input_tokens,
        cache_creation_input_tokens = t.cache_creation_input_tokens + excluded.cache_creation_input_tokens
), paced AS (
    INSERT INTO msgbatch.batch_throughput AS t (batch, second, requests)
    SELECT batch, %(second)s::int8, sum(n) FROM grouped GROUP BY batch ORDER BY batch
    ON CONFLICT (batch, second) DO UPDATE SET requests = t.requests + excluded.requests
)
UPDATE msgbatch.batches AS b
SET processing = b.processing - t.n, succeeded = b.succeeded + t.s, errored = b.errored + t.e,
    canceled = b.canceled + t.c, expired = b.expired + t.x,
    input_tokens = b.input_tokens + t.i, output_tokens = b.output_tokens + t.o,
    cache_read_input_tokens = b.cache_read_input_tokens + t.cr,
    cache_creation_input_tokens = b.cache_creation_input_tokens + t.cc
FROM (
    SELECT batch, sum(n) AS n, sum(n * (type = 0)::int) AS s, sum(n * (type = 1)::int) AS e,
           sum(n * (type = 2)::int) AS c, sum(n * (type = 3)::int) AS x,
           sum(i) AS i, sum(o) AS o, sum(cr) AS cr, sum(cc) AS cc
    FROM grouped GROUP BY batch
) AS t
WHERE b.seq = t.batch;

-- name: requeue_jobs
-- rows: id int8, not_before int8
-- Jobs still leased to `owner` go back to the queue, to be claimed again from `not_before` on.
UPDATE msgbatch.jobs AS j
SET state = 0, owner = NULL, lease_until = NULL, not_before = r.not_before
FROM unnest(%(id)s::int8[], %(not_before)s::int8[]) AS r(id, not_before)
WHERE j.id = r.id AND j.owner = %(owner)s AND j.state = 1;

-- name: settle_canceling
-- Waiting jobs of a batch being canceled will never be claimed: each becomes a `canceled` result.
-- `seqs`, when set, limits it to those batches. Only batches with waiting jobs are locked. Returns
-- how many, per batch.
WITH canceling AS (
    SELECT seq, first_request, total FROM msgbatch.batches AS b
    WHERE status = 1 AND (%(seqs)s::int8[] IS NULL OR seq = ANY(%(seqs)s::int8[]))
      AND EXISTS (
          SELECT 1 FROM msgbatch.jobs
          WHERE id >= b.first_request AND id < b.first_request + b.total AND state = 0
      )
    ORDER BY seq
    FOR NO KEY UPDATE
), gone AS (
    DELETE FROM msgbatch.jobs AS j USING canceling AS b
    WHERE j.id >= b.first_request AND j.id < b.first_request + b.total AND j.state = 0
    RETURNING j.id, j.batch, j.model
), kept AS (
    INSERT INTO msgbatch.results (id, type, line)
    SELECT g.id, 2, convert_to('{"custom_id":' || to_json(r.custom_id)::text || ',"result":{"type":"canceled"}}', 'UTF8')
    FROM gone AS g CROSS JOIN LATERAL (SELECT custom_id FROM msgbatch.requests WHERE id = g.id) AS r
), outcomes AS (
    INSERT INTO msgbatch.batch_outcomes AS t (
        batch, model, backend, result, error_type, requests,
        input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
    )
    SELECT batch, model, '', 2, '', count(*), 0, 0, 0, 0 FROM gone GROUP BY batch, model ORDER BY batch, model
    ON CONFLICT (batch, model, backend, result, error_type) DO UPDATE SET requests = t.requests + excluded.requests
)
UPDATE msgbatch.batches AS b SET processing = b.processing - t.n, canceled = b.canceled + t.n
FROM (SELECT batch, count(*) AS n FROM gone GROUP BY batch) AS t
WHERE b.seq = t.batch
RETURNING t.n;

-- name: end_idle_batches
-- Of the batches listed, those with nothing left to process end now. Only the transaction whose
-- counts took processing to 0 can see it at 0 first (it holds the row lock); the status test
-- keeps an ended batch from being ended twice.
UPDATE msgbatch.batches SET status = 2, ended_at = %(now)s
WHERE seq = ANY(%(seqs)s::int8[]) AND processing = 0 AND status < 2
RETURNING id;

-- name: end_idle_canceling
UPDATE msgbatch.batches SET status = 2, ended_at = %(now)s WHERE status = 1 AND processing = 0 RETURNING id;

-- name: renew_leases
-- Only the leases named: a claim whose answer never reached its worker lapses and is reaped.
-- Rows being completed or reaped right now are skipped, not waited for.
UPDATE msgbatch.jobs SET lease_until = %(until)s
WHERE id = ANY(ARRAY(
    SELECT id FROM msgbatch.jobs
    WHERE id = ANY(%(ids)s::int8[]) AND owner = %(owner)s AND state = 1
    FOR UPDATE SKIP LOCKED
));

-- name: release_jobs
-- Leased jobs handed back unstarted: the attempt they were claimed for did not happen. Their
-- batches are locked first, as everywhere; it also orders this with a cancel of the same batch, so
-- that whichever transaction comes second sees the other's work when it settles the batch.
WITH locked AS (
    SELECT seq FROM msgbatch.batches
    WHERE seq IN (SELECT batch FROM msgbatch.jobs WHERE id = ANY(%(ids)s::int8[]) AND owner = %(owner)s AND state = 1)
    ORDER BY seq
    FOR NO KEY UPDATE
)
UPDATE msgbatch.jobs SET state = 0, owner = NULL, lease_until = NULL, attempts = attempts - 1
WHERE id = ANY(%(ids)s::int8[]) AND owner = %(owner)s AND state = 1 AND batch IN (SELECT seq FROM locked)
RETURNING id;

-- name: reap_leases
-- Lapsed leases go back to the queue, their batches locked first (see release_jobs). Jobs being
-- completed right now are skipped, not waited for.
WITH locked AS (
    SELECT seq FROM msgbatch.batches
    WHERE seq IN (SELECT batch FROM msgbatch.jobs WHERE state = 1 AND lease_until < %(now)s)
    ORDER BY seq
    FOR NO KEY UPDATE
)
UPDATE msgbatch.jobs SET state = 0, owner = NULL, lease_until = NULL
WHERE id = ANY(ARRAY(
    SELECT id FROM msgbatch.jobs
    WHERE state = 1 AND lease_until < %(now)s AND batch IN (SELECT seq FROM locked)
    FOR UPDATE SKIP LOCKED
)) AND state = 1
RETURNING id;

-- name: queue_summary
-- Of the waiting jobs of batches in progress: how many are claimable now, how many in all, and
-- when the next one becomes claimable.
SELECT count(*) FILTER (WHERE j.not_before <= %(now)s), count(*), min(j.not_before)
FROM msgbatch.batches AS b
CROSS JOIN LATERAL (
    SELECT not_before FROM msgbatch.jobs WHERE id >= b.first_request AND id < b.first_request + b.total AND state = 0
) AS j
WHERE b.status = 0;

-- name: notify
-- A wake-up for the other processes: "work" (new or returned requests) or "cancel:SEQ".
SELECT pg_notify('msgbatch', %(payload)s);


-- ---------------------------------------------------------------------------------------------
-- Housekeeping

-- name: due_batches
SELECT seq FROM msgbatch.batches WHERE status < 2 AND expires_at <= %(now)s ORDER BY seq;

-- name: expire_batch
-- A batch past its expiry ends; every request not finished becomes `expired`. Lock, then look
-- again: another process may have ended it since. Returns the batch's id and how many expired.
WITH due AS (
    SELECT seq, first_request, total FROM msgbatch.batches
    WHERE seq = %(seq)s AND status < 2 AND expires_at <= %(now)s
    FOR NO KEY UPDATE
), gone AS (
    DELETE FROM msgbatch.jobs AS j USING due AS b
    WHERE j.id >= b.first_request AND j.id < b.first_request + b.total
    RETURNING j.id, j.batch, j.model
), kept AS (
    INSERT INTO msgbatch.results (id, type, line)
    SELECT g.id, 3, convert_to('{"custom_id":' || to_json(r.custom_id)::text || ',"result":{"type":"expired"}}', 'UTF8')
    FROM gone AS g CROSS JOIN LATERAL (SELECT custom_id FROM msgbatch.requests WHERE id = g.id) AS r
), outcomes AS (
    INSERT INTO msgbatch.batch_outcomes AS t (
        batch, model, backend, result, error_type, requests,
        input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
    )
    SELECT batch, model, '', 3, '', count(*), 0, 0, 0, 0 FROM gone GROUP BY batch, model ORDER BY batch, model
    ON CONFLICT (batch, model, backend, result, error_type) DO UPDATE SET requests = t.requests + excluded.requests
), ended AS (
    UPDATE msgbatch.batches AS b
    SET processing = b.processing - (SELECT count(*) FROM gone), expired = b.expired + (SELECT count(*) FROM gone),
        status = 2, ended_at = %(now)s
    FROM due WHERE b.seq = due.seq
    RETURNING b.id
)
SELECT id, (SELECT count(*) FROM gone) FROM ended;

-- name: archivable_batches
SELECT seq FROM msgbatch.batches
WHERE archived_at IS NULL AND status = 2 AND created_at < %(cutoff)s ORDER BY created_at LIMIT 100;

-- name: archive_batch
-- An ended batch past retention keeps its row; its requests and results go. Of two processes,
-- the one whose update marks it archives it.
WITH marked AS (
    UPDATE msgbatch.batches SET archived_at = %(now)s
    WHERE seq = %(seq)s AND archived_at IS NULL
    RETURNING id, first_request, total
), dropped_results AS (
    DELETE FROM msgbatch.results AS r USING marked AS m WHERE r.id >= m.first_request AND r.id < m.first_request + m.total
), dropped_requests AS (
    DELETE FROM msgbatch.requests AS r USING marked AS m WHERE r.id >= m.first_request AND r.id < m.first_request + m.total
)
SELECT id FROM marked;


-- ---------------------------------------------------------------------------------------------
-- This dialect's own

-- name: _dead_jobs
-- Whether the queue table needs a vacuum that the server's autovacuum (off) will not do.
SELECT current_setting('autovacuum') = 'off' AND n_dead_tup > greatest(50000, 4 * n_live_tup)
FROM pg_stat_user_tables WHERE relid = 'msgbatch.jobs'::regclass;


-- ---------------------------------------------------------------------------------------------
-- The OpenAI Batch API: its batches' own columns, their output and error files, uploaded files

-- name: set_openai_batch
-- An OpenAI batch's own columns, in its create transaction; one that failed validation (`errors`)
-- has no requests and ends at once.
UPDATE msgbatch.batches
SET endpoint = %(endpoint)s, input_file_id = %(input_file_id)s, completion_window = %(completion_window)s,
    output_expires_after = %(output_expires_after)s, errors = %(errors)s::text,
    status = CASE WHEN %(errors)s::text IS NULL THEN status ELSE 2 END,
    ended_at = CASE WHEN %(errors)s::text IS NULL THEN ended_at ELSE created_at END
WHERE id = %(id)s;

-- name: get_openai_batch
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority, endpoint, input_file_id, completion_window, output_expires_after, errors, files_deleted,
       output_bytes, error_bytes
FROM msgbatch.batches WHERE id = %(id)s;

-- name: list_openai_batches
-- A workspace's batches between `lower` and `upper` (the OpenAI id prefix), newest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority, endpoint, input_file_id, completion_window, output_expires_after, errors, files_deleted,
       output_bytes, error_bytes
FROM msgbatch.batches WHERE workspace = %(workspace)s AND id > %(lower)s AND id < %(upper)s
ORDER BY id DESC LIMIT %(limit)s;

-- name: list_openai_outputs
-- A workspace's ended OpenAI batches (whose output and error files are files of the workspace)
-- before (`at`, `batch_id`) in the order they ended, the latest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority, endpoint, input_file_id, completion_window, output_expires_after, errors, files_deleted,
       output_bytes, error_bytes
FROM msgbatch.batches
WHERE workspace = %(workspace)s AND endpoint <> '' AND status = 2 AND archived_at IS NULL
  AND (ended_at, id) < (%(at)s, %(batch_id)s)
ORDER BY ended_at DESC, id DESC LIMIT %(limit)s;

-- name: list_openai_outputs_asc
-- The same after (`at`, `batch_id`), the earliest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority, endpoint, input_file_id, completion_window, output_expires_after, errors, files_deleted,
       output_bytes, error_bytes
FROM msgbatch.batches
WHERE workspace = %(workspace)s AND endpoint <> '' AND status = 2 AND archived_at IS NULL
  AND (ended_at, id) > (%(at)s, %(batch_id)s)
ORDER BY ended_at, id LIMIT %(limit)s;

-- name: openai_results_page
-- An OpenAI batch's output file (`succeeded`: the lines of its succeeded requests) or error file
-- (the others), from `cursor` on, in id order.
SELECT id, type, line FROM msgbatch.results
WHERE id >= %(cursor)s AND id < %(stop)s AND (type = 0) = %(succeeded)s::bool
ORDER BY id LIMIT %(limit)s;

-- name: set_openai_file_sizes
UPDATE msgbatch.batches
SET output_bytes = coalesce(%(output_bytes)s::int8, output_bytes), error_bytes = coalesce(%(error_bytes)s::int8, error_bytes)
WHERE seq = %(seq)s;

-- name: delete_openai_output
-- A batch's output file (`succeeded`) or error file is deleted: its lines go, the batch remembers.
WITH marked AS (
    UPDATE msgbatch.batches SET files_deleted = files_deleted | %(bit)s::int2
    WHERE seq = %(seq)s RETURNING id, first_request, total
), dropped AS (
    DELETE FROM msgbatch.results AS r USING marked AS m
    WHERE r.id >= m.first_request AND r.id < m.first_request + m.total AND (r.type = 0) = %(succeeded)s::bool
)
SELECT id FROM marked;

-- name: insert_file
INSERT INTO msgbatch.files (id, workspace, purpose, filename, bytes, created_at, expires_at)
VALUES (%(id)s, %(workspace)s, %(purpose)s, %(filename)s, %(bytes)s, %(created_at)s, %(expires_at)s)
RETURNING seq;

-- name: insert_file_chunks
-- rows: file_id text, n int4, data bytea
COPY msgbatch.file_chunks (file_id, n, data) FROM STDIN (FORMAT BINARY);

-- name: get_file
SELECT seq, id, workspace, purpose, filename, bytes, created_at, expires_at FROM msgbatch.files WHERE id = %(id)s;

-- name: file_chunks
-- Up to `limit` chunks of a file's content, from chunk `n` on.
SELECT n, data FROM msgbatch.file_chunks WHERE file_id = %(file_id)s AND n >= %(n)s ORDER BY n LIMIT %(limit)s;

-- name: list_files
-- A workspace's files (of `purpose`, when set) before the cursor (created_at, id), newest first.
SELECT seq, id, workspace, purpose, filename, bytes, created_at, expires_at FROM msgbatch.files
WHERE workspace = %(workspace)s AND (%(purpose)s::text IS NULL OR purpose = %(purpose)s::text)
  AND (created_at, id) < (%(created_at)s, %(id)s)
ORDER BY created_at DESC, id DESC LIMIT %(limit)s;

-- name: list_files_asc
-- The same after the cursor, oldest first.
SELECT seq, id, workspace, purpose, filename, bytes, created_at, expires_at FROM msgbatch.files
WHERE workspace = %(workspace)s AND (%(purpose)s::text IS NULL OR purpose = %(purpose)s::text)
  AND (created_at, id) > (%(created_at)s, %(id)s)
ORDER BY created_at, id LIMIT %(limit)s;

-- name: delete_file
WITH gone AS (
    DELETE FROM msgbatch.files WHERE id = %(id)s RETURNING id
), dropped AS (
    DELETE FROM msgbatch.file_chunks WHERE file_id IN (SELECT id FROM gone)
)
SELECT id FROM gone;

-- name: expired_files
SELECT id FROM msgbatch.files WHERE expires_at <= %(now)s ORDER BY expires_at LIMIT 100;


-- ---------------------------------------------------------------------------------------------
-- Batch features beyond the hosted API: options, retries, hard cancel, fail-fast, idempotency
-- keys, metadata filters, the webhook outbox

-- name: set_batch_options
-- In the create transaction of a batch that uses an option.
UPDATE msgbatch.batches
SET retry_of = %(retry_of)s::text, fail_fast_min_results = %(fail_fast_min_results)s::int4,
    fail_fast_max_error_rate = %(fail_fast_max_error_rate)s::float8, webhook_url = %(webhook_url)s::text
WHERE id = %(id)s;

-- name: copy_requests
-- A retry batch's requests: those of `ids` (another batch's), in that order, from id `first` on.
INSERT INTO msgbatch.requests (id, custom_id, params)
SELECT %(first)s::int8 + o.n - 1, r.custom_id, r.params
FROM unnest(%(ids)s::int8[]) WITH ORDINALITY AS o(id, n)
CROSS JOIN LATERAL (SELECT custom_id, params FROM msgbatch.requests WHERE id = o.id) AS r;

-- name: set_retried_by
UPDATE msgbatch.batches SET retried_by = %(child)s WHERE seq = %(seq)s;

-- name: mark_abort_running
-- A cancel that also stops the requests running now (a canceling batch may be upgraded to it).
UPDATE msgbatch.batches SET abort_running = 1
WHERE seq = %(seq)s AND status = 1 AND abort_running = 0 RETURNING seq;

-- name: aborting_batches
-- Of the batches listed, those whose running requests are to be stopped.
SELECT seq FROM msgbatch.batches WHERE seq = ANY(%(seqs)s::int8[]) AND status = 1 AND abort_running = 1;

-- name: fail_fast
-- Of the batches listed (locked, their new results counted), those in progress whose fail-fast
-- policy trips — at least `min_results` results, more than `max_error_rate` of them errored,
-- requests still to run — are canceled as a hard cancel, saying why.
UPDATE msgbatch.batches
SET status = 1, cancel_initiated_at = %(now)s, cancel_reason = 'fail_fast', abort_running = 1
WHERE seq = ANY(%(seqs)s::int8[]) AND status = 0 AND processing > 0
  AND fail_fast_min_results IS NOT NULL AND succeeded + errored >= fail_fast_min_results
  AND errored > fail_fast_max_error_rate * (succeeded + errored)
RETURNING seq, id;

-- name: find_idempotency_key
SELECT fingerprint, batch_id FROM msgbatch.idempotency_keys
WHERE workspace = %(workspace)s AND key = %(key)s AND created_at >= %(cutoff)s;

-- name: claim_idempotency_key
-- First in the create transaction: a second create with the same key waits here for the first to
-- commit, then fails on the primary key and rolls back whole. An expired key makes room first.
DELETE FROM msgbatch.idempotency_keys WHERE workspace = %(workspace)s AND key = %(key)s AND created_at < %(cutoff)s;
INSERT INTO msgbatch.idempotency_keys (workspace, key, fingerprint, batch_id, created_at)
VALUES (%(workspace)s, %(key)s, %(fingerprint)s, %(batch_id)s, %(now)s);

-- name: forget_idempotency_keys
DELETE FROM msgbatch.idempotency_keys WHERE created_at < %(cutoff)s;

-- name: list_batches_matching
-- A workspace's batches between `lower` and `upper` (one API's id prefix) whose metadata holds
-- every pair of `metadata` (a JSON object) and, when `status` is set, of that status, newest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM msgbatch.batches
WHERE workspace = %(workspace)s AND id > %(lower)s AND id < %(upper)s AND metadata::jsonb @> %(metadata)s::jsonb
  AND (%(status)s::int2 IS NULL OR status = %(status)s::int2)
ORDER BY id DESC LIMIT %(limit)s;

-- name: list_batches_matching_before
-- A workspace's batches newer than `lower` whose metadata holds every pair of `metadata`, oldest first.
SELECT seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at,
       total, processing, succeeded, errored, canceled, expired, first_request, betas, headers,
       metadata, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
       retry_of, retried_by, cancel_reason, abort_running, fail_fast_min_results, fail_fast_max_error_rate, webhook_url,
       priority
FROM msgbatch.batches
WHERE workspace = %(workspace)s AND id > %(lower)s AND metadata::jsonb @> %(metadata)s::jsonb
  AND (%(status)s::int2 IS NULL OR status = %(status)s::int2)
ORDER BY id LIMIT %(limit)s;

-- name: announce_events
-- Batches whose status moved past `announced`: their webhook events go to the outbox, one row per
-- event and receiver — each configured webhook (`urls`, `secret_envs`, `workspaces` ('' for all)
-- and `events` (comma-separated, '' for all), side by side) and the batch's own webhook_url
-- (signed with `batch_secret_env`, its address checked at delivery) — and `announced` catches up.
-- A batch canceled while idle ends at once: both of its events. Rows other transactions hold are
-- skipped, not waited for: those transactions announce their own batches (the lifecycle catches
-- any that a path missed); the batches this transaction changed are its own to lock.
WITH due AS (
    SELECT seq, id, workspace, status, announced, cancel_initiated_at, ended_at, webhook_url, endpoint
    FROM msgbatch.batches WHERE status > announced
    ORDER BY seq
    FOR NO KEY UPDATE SKIP LOCKED
), events AS (
    SELECT d.id, d.workspace, d.webhook_url, e.name AS event,
           CASE e.status WHEN 1 THEN d.cancel_initiated_at ELSE d.ended_at END AS event_at
    FROM due AS d
    JOIN (VALUES (1, 'message_batch.canceling'), (2, 'message_batch.ended')) AS e(status, name)
      ON e.status > d.announced AND e.status <= d.status AND (e.status = 2 OR d.cancel_initiated_at IS NOT NULL)
    WHERE d.endpoint = ''  -- Message Batches: the OpenAI dialect's have no webhooks
), targets AS (
    SELECT * FROM unnest(%(urls)s::text[], %(secret_envs)s::text[], %(workspaces)s::text[], %(events)s::text[])
        AS t(url, secret_env, workspace, events)
), written AS (
    INSERT INTO msgbatch.webhook_deliveries
        (batch_id, workspace, event, event_at, url, secret_env, checked, next_at, give_up_at, created_at)
    SELECT ev.id, ev.workspace, ev.event, ev.event_at, t.url, t.secret_env, 0, %(now)s, %(give_up_at)s, %(now)s
    FROM events AS ev JOIN targets AS t
      ON (t.workspace = '' OR t.workspace = ev.workspace)
     AND (t.events = '' OR position(',' || ev.event || ',' IN ',' || t.events || ',') > 0)
    UNION ALL
    SELECT ev.id, ev.workspace, ev.event, ev.event_at, ev.webhook_url, %(batch_secret_env)s, 1, %(now)s,
           %(give_up_at)s, %(now)s
    FROM events AS ev WHERE ev.webhook_url IS NOT NULL
)
UPDATE msgbatch.batches AS b SET announced = b.status FROM due WHERE b.seq = due.seq
RETURNING b.id;

-- name: claim_webhook_deliveries
-- Deliveries due now, held by `owner`: `next_at` moves to the end of the lease, so that one whose
-- process died is due again then. Rows others are claiming are skipped.
UPDATE msgbatch.webhook_deliveries SET owner = %(owner)s, next_at = %(until)s
WHERE id = ANY(ARRAY(
    SELECT id FROM msgbatch.webhook_deliveries WHERE state = 0 AND next_at <= %(now)s
    ORDER BY next_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING id, batch_id, workspace, event, event_at, url, secret_env, checked, attempts, payload, give_up_at;

-- name: webhook_delivered
UPDATE msgbatch.webhook_deliveries
SET state = 1, delivered_at = %(now)s, attempts = attempts + 1, last_status = %(status)s::int4, last_error = NULL,
    payload = coalesce(payload, %(payload)s::bytea), owner = NULL
WHERE id = %(id)s AND owner = %(owner)s AND state = 0;

-- name: webhook_failed
-- An attempt failed: try again from `next_at`, unless that is past `give_up_at` or it is `final`.
UPDATE msgbatch.webhook_deliveries
SET attempts = attempts + 1, last_status = %(status)s::int4, last_error = %(error)s::text,
    payload = coalesce(payload, %(payload)s::bytea), owner = NULL, next_at = %(next_at)s,
    state = CASE WHEN %(final)s::boolean OR %(next_at)s::int8 > give_up_at THEN 2 ELSE 0 END
WHERE id = %(id)s AND owner = %(owner)s AND state = 0
RETURNING state;

-- name: list_webhook_deliveries
-- A workspace's deliveries older than `before`, newest first; `batch_id` and `state` filter when set.
SELECT id, batch_id, event, event_at, url, checked, state, attempts, next_at, give_up_at, created_at, delivered_at,
       last_status, last_error
FROM msgbatch.webhook_deliveries
WHERE workspace = %(workspace)s AND id < %(before)s
  AND (%(batch_id)s::text IS NULL OR batch_id = %(batch_id)s::text)
  AND (%(state)s::int2 IS NULL OR state = %(state)s::int2)
ORDER BY id DESC LIMIT %(limit)s;

-- name: get_webhook_delivery
SELECT id, batch_id, event, event_at, url, checked, state, attempts, next_at, give_up_at, created_at, delivered_at,
       last_status, last_error
FROM msgbatch.webhook_deliveries WHERE id = %(id)s AND workspace = %(workspace)s;

-- name: redeliver_webhook
-- Due now again, with a fresh retry window (whatever its state).
UPDATE msgbatch.webhook_deliveries SET state = 0, next_at = %(now)s, give_up_at = %(give_up_at)s, owner = NULL
WHERE id = %(id)s AND workspace = %(workspace)s
RETURNING id;

-- name: forget_webhook_deliveries
DELETE FROM msgbatch.webhook_deliveries WHERE state > 0 AND created_at < %(cutoff)s;


-- ---------------------------------------------------------------------------------------------
-- Many teams: quotas, models, outcomes, usage

-- name: lock_workspace
-- Creates in one workspace take turns while its quotas are checked (a lock held to the commit):
-- of two concurrent creates, the second sees the first's batch. Its own statement, so that the
-- check that follows reads a snapshot taken after the lock was granted.
SELECT pg_advisory_xact_lock(hashtextextended('msgbatch.workspace:' || %(workspace)s, 0));

-- name: check_quotas
-- guard
-- The workspace's queue quotas (a NULL quota is none), checked in the transaction that inserts a
-- batch of `total` requests: one row (quota, its value, the workspace's figure now) per quota it
-- would exceed, and the store rolls the transaction back.
WITH open AS (
    SELECT count(*) AS batches, coalesce(sum(processing), 0) AS queued
    FROM msgbatch.batches WHERE workspace = %(workspace)s AND status < 2
)
SELECT 'max_queued_requests', %(max_queued_requests)s::int8, queued FROM open
WHERE queued + %(total)s::int8 > %(max_queued_requests)s::int8
UNION ALL
SELECT 'max_batches_in_progress', %(max_batches_in_progress)s::int8, batches FROM open
WHERE batches + 1 > %(max_batches_in_progress)s::int8;

-- name: insert_batch_models
-- rows: key int4, model text, total int4
INSERT INTO msgbatch.batch_models (batch, key, model, total)
SELECT (SELECT seq FROM msgbatch.batches WHERE id = %(batch_id)s), k, m, t
FROM unnest(%(key)s::int4[], %(model)s::text[], %(total)s::int4[]) AS r(k, m, t);

-- name: set_job_models
-- rows: first int8, stop int8, model int4
-- The jobs of a batch whose requests name several models: each run of ids gets its model's key.
UPDATE msgbatch.jobs AS j SET model = r.model
FROM unnest(%(first)s::int8[], %(stop)s::int8[], %(model)s::int4[]) AS r(first, stop, model)
WHERE j.id >= r.first AND j.id < r.stop;

-- name: models_of_batches
SELECT batch, key, model, total FROM msgbatch.batch_models
WHERE batch = ANY(%(seqs)s::int8[]) ORDER BY batch, key;

-- name: outcomes_of_batch
SELECT m.model, o.model, o.backend, o.result, o.error_type, o.requests,
       o.input_tokens, o.output_tokens, o.cache_read_input_tokens, o.cache_creation_input_tokens
FROM msgbatch.batch_outcomes AS o
LEFT JOIN msgbatch.batch_models AS m ON m.batch = o.batch AND m.key = o.model
WHERE o.batch = %(seq)s;

-- name: throughput_of_batch
-- Requests written per `step` seconds, from the batch's first on.
SELECT second / %(step)s::int8 * %(step)s::int8 AS at, sum(requests)::int8 FROM msgbatch.batch_throughput
WHERE batch = %(seq)s GROUP BY at ORDER BY at;

-- name: forget_batch
-- What is kept about a batch besides its row, when it is deleted (usage stays).
WITH models AS (
    DELETE FROM msgbatch.batch_models WHERE batch = %(seq)s
), outcomes AS (
    DELETE FROM msgbatch.batch_outcomes WHERE batch = %(seq)s
)
DELETE FROM msgbatch.batch_throughput WHERE batch = %(seq)s;

-- name: usage_of_workspace
-- Per hour and model, the hours in [since, until).
SELECT hour, model, succeeded, errored, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens
FROM msgbatch.usage
WHERE workspace = %(workspace)s AND hour >= %(since)s::int8 AND hour < %(until)s::int8 ORDER BY hour, model;

-- name: open_work_of_workspace
-- A workspace's batches in progress or canceling, and their requests not finished.
SELECT count(*), coalesce(sum(processing), 0)::int8 FROM msgbatch.batches
WHERE workspace = %(workspace)s AND status < 2;

-- name: leased_by_batch_model
-- Requests leased now (running somewhere), per batch and model.
SELECT batch, model, count(*) FROM msgbatch.jobs WHERE state = 1 GROUP BY batch, model;

-- name: open_batches_by_model
-- Of each batch not ended: its workspace, and per model its total and its finished requests.
SELECT b.seq, b.workspace, m.key, m.model, m.total,
       (SELECT coalesce(sum(o.requests), 0)::int8 FROM msgbatch.batch_outcomes AS o
        WHERE o.batch = b.seq AND o.model = m.key)
FROM msgbatch.batches AS b JOIN msgbatch.batch_models AS m ON m.batch = b.seq
WHERE b.status < 2;

-- name: batches_by_status
SELECT status, count(*) FROM msgbatch.batches GROUP BY status;
