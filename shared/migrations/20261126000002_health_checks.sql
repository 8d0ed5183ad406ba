-- Heartbeats written by the `ping` task: one row per ping, keyed by the run key so that a redelivered
-- ping records nothing new.
CREATE TABLE health_checks (
    check_key        text        PRIMARY KEY,
    queue            text        NOT NULL,
    function_name    text        NOT NULL,
    note             text,
    checked_at       timestamptz NOT NULL,
    db_roundtrip_us  bigint      NOT NULL
);

CREATE INDEX health_checks_queue_checked_idx ON health_checks (queue, checked_at DESC);
