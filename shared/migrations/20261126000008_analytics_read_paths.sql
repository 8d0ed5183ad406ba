-- Faster analytics reads.

-- The primary key carries the price, so reading a series' recent days is an index-only scan (no heap visits).
ALTER TABLE price_points DROP CONSTRAINT price_points_pkey;
ALTER TABLE price_points ADD CONSTRAINT price_points_pkey
    PRIMARY KEY (scryfall_id, source, price_type, finish, currency, day) INCLUDE (price);

-- The high and the number of points of the 30 days before each series' latest day, so breakouts are read from
-- the metrics instead of the points.
ALTER TABLE price_metrics
    ADD COLUMN prior_high_30d   numeric,
    ADD COLUMN prior_points_30d integer NOT NULL DEFAULT 0;

UPDATE price_metrics m
SET (prior_high_30d, prior_points_30d) = (
    SELECT max(p.price), count(*) FROM price_points p
    WHERE p.scryfall_id = m.scryfall_id AND p.source = m.source AND p.price_type = m.price_type
      AND p.finish = m.finish AND p.currency = m.currency
      AND p.day >= m.latest_day - 30 AND p.day < m.latest_day
);
