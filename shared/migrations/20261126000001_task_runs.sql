-- History of every task run: one row per attempt, written when the attempt ends.
CREATE TABLE task_runs (
    run_id        uuid        PRIMARY KEY,
    -- NULL when the message was too malformed to name a task.
    task          text,
    -- The envelope id, else the SQS message id, else a generated id (direct invoke).
    run_key       text        NOT NULL,
    message_id    text,
    queue         text        NOT NULL,
    trigger       text        NOT NULL CHECK (trigger IN ('sqs', 'invoke')),
    attempt       integer     NOT NULL CHECK (attempt >= 1),
    status        text        NOT NULL CHECK (status IN ('succeeded', 'skipped', 'failed')),
    -- What happened to the message: acknowledged (deleted), retry_scheduled, dead_lettered,
    -- handed_back (returned to the queue as it was, e.g. the DLQ could not be reached), or returned (a
    -- direct invoke: the report or error went back to the caller).
    disposition   text        NOT NULL
                  CHECK (disposition IN ('acknowledged', 'retry_scheduled', 'dead_lettered', 'handed_back', 'returned')),
    processed     bigint      NOT NULL DEFAULT 0,
    errors        bigint      NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    duration_ms   bigint      NOT NULL,
    reason        text,
    error_kind    text        CHECK (error_kind IN ('retryable', 'permanent')),
    error_class   text,
    detail        jsonb
);

CREATE INDEX task_runs_task_started_idx ON task_runs (task, started_at DESC);
CREATE INDEX task_runs_run_key_idx ON task_runs (run_key);
CREATE INDEX task_runs_failures_idx ON task_runs (started_at DESC) WHERE status = 'failed';
