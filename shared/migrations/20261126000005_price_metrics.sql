-- When each price point arrived (or last changed), so analytics can work on what is new since their last run.
ALTER TABLE price_points ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX price_points_recorded_at_idx ON price_points (recorded_at);

-- Per printing and price series: where the price is and how it has moved.
CREATE TABLE price_metrics (
    scryfall_id     uuid        NOT NULL REFERENCES printings (scryfall_id) ON DELETE CASCADE,
    source          text        NOT NULL,
    price_type      text        NOT NULL,
    finish          text        NOT NULL,
    currency        text        NOT NULL,
    latest_day      date        NOT NULL,
    latest_price    numeric     NOT NULL,
    -- Against the latest point N days or more before the latest one (and no older than 2N days): NULL when
    -- the history has no such point (weekly history has no 1-day change).
    change_1d       numeric,
    change_1d_pct   numeric,
    change_7d       numeric,
    change_7d_pct   numeric,
    change_30d      numeric,
    change_30d_pct  numeric,
    ma_7d           numeric,
    ma_30d          numeric,
    -- Standard deviation of log returns between consecutive points of the last 30 days (a ratio, not money).
    volatility_30d  double precision,
    high_30d        numeric     NOT NULL,
    low_30d         numeric     NOT NULL,
    points_30d      integer     NOT NULL,
    points          integer     NOT NULL,
    computed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scryfall_id, source, price_type, finish, currency)
);

-- How far each analytics step has read.
CREATE TABLE analytics_watermarks (
    name        text        PRIMARY KEY,
    high_water  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
