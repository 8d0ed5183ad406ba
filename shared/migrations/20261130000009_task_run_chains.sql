-- Runs that caused one another share a chain id: the key of the run that started the chain (an ingestion, a
-- schedule's firing, a trigger), carried by every follow-up in its envelope. Runs recorded before this
-- column existed have none. trace_header is the X-Ray trace (AWSTraceHeader) the run belonged to.
ALTER TABLE task_runs ADD COLUMN chain_id text;
ALTER TABLE task_runs ADD COLUMN trace_header text;

CREATE INDEX task_runs_chain_idx ON task_runs (chain_id, started_at) WHERE chain_id IS NOT NULL;
