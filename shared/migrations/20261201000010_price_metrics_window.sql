-- Each series' points of its last 61 days, kept beside its metrics in a compact encoding
-- (shared/src/series_metrics/window.rs): an incremental run after a new day reads this value and the new points
-- instead of the whole window from price_points. NULL where the window must be read from the points: rows written
-- before this column existed (a full run fills every row), and windows a prune has reached into.
ALTER TABLE price_metrics ADD COLUMN window_points bytea;
