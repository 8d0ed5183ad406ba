-- What Dualcaster Deals suggests doing with each printing: one current recommendation per printing, rewritten
-- only when its action, confidence or rationale changes.
CREATE TABLE price_recommendations (
    scryfall_id  uuid         PRIMARY KEY REFERENCES printings (scryfall_id) ON DELETE CASCADE,
    action       text         NOT NULL CHECK (action IN ('buy', 'sell', 'hold')),
    confidence   numeric(4,3) NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    -- One sentence a person can read, with the numbers behind it.
    rationale    text         NOT NULL,
    -- The series it was judged on (the printing's main retail series) and that series' latest day.
    source       text         NOT NULL,
    finish       text         NOT NULL,
    currency     text         NOT NULL,
    day          date         NOT NULL,
    -- The metrics and signals it was built from.
    basis        jsonb        NOT NULL,
    updated_at   timestamptz  NOT NULL DEFAULT now()
);

CREATE INDEX price_recommendations_action_idx ON price_recommendations (action, confidence DESC);

-- Later analytics steps read what the earlier ones wrote since their last run.
CREATE INDEX price_metrics_computed_at_idx ON price_metrics (computed_at);
CREATE INDEX price_signals_detected_at_idx ON price_signals (detected_at);
