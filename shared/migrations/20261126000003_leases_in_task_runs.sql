-- Runs answered from a stored idempotency record, and messages deferred because a lease was held.
ALTER TABLE task_runs ADD COLUMN replayed boolean NOT NULL DEFAULT false;

ALTER TABLE task_runs DROP CONSTRAINT task_runs_disposition_check;
ALTER TABLE task_runs ADD CONSTRAINT task_runs_disposition_check
    CHECK (disposition IN ('acknowledged', 'retry_scheduled', 'dead_lettered', 'handed_back', 'returned', 'deferred'));
