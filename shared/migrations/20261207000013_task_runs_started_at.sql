-- `prune_task_runs` deletes the oldest runs first, a batch at a time, and finds where its continuation starts:
-- both read task_runs by started_at alone.
CREATE INDEX task_runs_started_idx ON task_runs (started_at);
