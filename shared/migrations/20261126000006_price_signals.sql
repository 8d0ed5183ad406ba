-- What analytics noticed: one row per printing, kind, series and day (a signal is never emitted twice for a day).
CREATE TABLE price_signals (
    scryfall_id  uuid        NOT NULL REFERENCES printings (scryfall_id) ON DELETE CASCADE,
    kind         text        NOT NULL CHECK (kind IN ('spike', 'drop', 'breakout', 'buylist_arbitrage')),
    source       text        NOT NULL,
    price_type   text        NOT NULL,
    finish       text        NOT NULL,
    currency     text        NOT NULL,
    day          date        NOT NULL,
    -- How strong: the move over its threshold (spike, drop), or the margin over the reference price
    -- (breakout: over the prior 30-day high; arbitrage: buylist over the cheapest retail).
    strength     numeric     NOT NULL,
    -- The numbers behind it.
    details      jsonb       NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scryfall_id, kind, source, price_type, finish, currency, day)
);

CREATE INDEX price_signals_day_idx ON price_signals (day DESC, kind);
