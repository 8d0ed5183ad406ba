-- Keeps price_metrics true to price_points after any change that is not a new latest day (docs/data.md,
-- "What a metrics run recomputes"). A metrics run computes the series whose points were recorded after its
-- watermark; a series whose stored window (window_points) is NULL is computed too, from its points. So:
-- 1. a point whose price or key an UPDATE changes is recorded anew (ingestion's upsert sets recorded_at itself;
--    an operator's UPDATE did not), and a run finds it;
-- 2. a DELETE (a prune, an operator, a printing's cascade) drops the stored window of each series it took a
--    point of the window from, or a point the last run may not have counted, so the next run recomputes that
--    series from its points; a deleted point that is older than the window and was counted only lowers the
--    row's all-time count; a series left without points loses its row;
-- 3. a point moved to another series or day does the same to the series it left;
-- 4. TRUNCATE of price_points empties price_metrics.
-- Only those series pay: a day of new points changes nothing here.

CREATE FUNCTION price_points_rerecorded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.recorded_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER price_points_rerecorded BEFORE UPDATE ON price_points
    FOR EACH ROW
    WHEN (OLD.recorded_at IS NOT DISTINCT FROM NEW.recorded_at
          AND (OLD.price, scale(OLD.price), OLD.scryfall_id, OLD.source, OLD.price_type, OLD.finish, OLD.currency,
               OLD.day)
              IS DISTINCT FROM
              (NEW.price, scale(NEW.price), NEW.scryfall_id, NEW.source, NEW.price_type, NEW.finish, NEW.currency,
               NEW.day))
    EXECUTE FUNCTION price_points_rerecorded();

CREATE FUNCTION price_metrics_points_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- Points recorded after this were possibly not counted by the run that wrote a row (NULL: no run yet).
    counted_until timestamptz := (SELECT high_water FROM analytics_watermarks WHERE name = 'compute_price_metrics');
BEGIN
    -- The rows are taken in key order, so two deleting statements lock them in the same order.
    PERFORM 1
    FROM price_metrics m
    JOIN (SELECT DISTINCT scryfall_id, source, price_type, finish, currency FROM removed) r
        USING (scryfall_id, source, price_type, finish, currency)
    ORDER BY m.scryfall_id, m.source, m.price_type, m.finish, m.currency
    FOR UPDATE OF m;

    DELETE FROM price_metrics m
    USING (SELECT DISTINCT scryfall_id, source, price_type, finish, currency FROM removed) r
    WHERE (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
        = (r.scryfall_id, r.source, r.price_type, r.finish, r.currency)
      AND NOT EXISTS (
          SELECT 1 FROM price_points p
          WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
              = (r.scryfall_id, r.source, r.price_type, r.finish, r.currency));

    -- (The rows are locked above, so the latest day read here is the one updated.)
    WITH r AS (
        SELECT scryfall_id, source, price_type, finish, currency,
            count(*) AS points, max(day) AS last_day, max(recorded_at) AS last_recorded
        FROM removed
        GROUP BY 1, 2, 3, 4, 5
    ),
    judged AS (
        SELECT r.*, r.last_day > m.latest_day - 61 OR counted_until IS NULL OR r.last_recorded > counted_until
            AS stale
        FROM r
        JOIN price_metrics m USING (scryfall_id, source, price_type, finish, currency)
    )
    UPDATE price_metrics m
    SET points = CASE WHEN j.stale THEN m.points ELSE m.points - j.points END,
        window_points = CASE WHEN j.stale THEN NULL ELSE m.window_points END
    FROM judged j
    WHERE (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
        = (j.scryfall_id, j.source, j.price_type, j.finish, j.currency);
    RETURN NULL;
END
$$;

CREATE FUNCTION price_metrics_point_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.scryfall_id, OLD.source, OLD.price_type, OLD.finish, OLD.currency, OLD.day)
        IS NOT DISTINCT FROM (NEW.scryfall_id, NEW.source, NEW.price_type, NEW.finish, NEW.currency, NEW.day) THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM price_points p
               WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
                   = (OLD.scryfall_id, OLD.source, OLD.price_type, OLD.finish, OLD.currency)) THEN
        UPDATE price_metrics m SET window_points = NULL
        WHERE (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
            = (OLD.scryfall_id, OLD.source, OLD.price_type, OLD.finish, OLD.currency)
          AND m.window_points IS NOT NULL;
    ELSE
        DELETE FROM price_metrics m
        WHERE (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
            = (OLD.scryfall_id, OLD.source, OLD.price_type, OLD.finish, OLD.currency);
    END IF;
    RETURN NULL;
END
$$;

-- A DELETE, not a TRUNCATE: a `TRUNCATE ... CASCADE` that reached price_metrics already holds it in use.
CREATE FUNCTION price_metrics_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM price_metrics;
    RETURN NULL;
END
$$;

CREATE TRIGGER price_metrics_points_removed AFTER DELETE ON price_points
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION price_metrics_points_removed();
CREATE TRIGGER price_metrics_point_moved
    AFTER UPDATE OF scryfall_id, source, price_type, finish, currency, day ON price_points
    FOR EACH ROW EXECUTE FUNCTION price_metrics_point_moved();
CREATE TRIGGER price_metrics_clear AFTER TRUNCATE ON price_points
    FOR EACH STATEMENT EXECUTE FUNCTION price_metrics_clear();

-- The rows the next metrics run recomputes from their points whatever their points' arrival: it finds them
-- here, without reading the rest.
CREATE INDEX price_metrics_window_dropped_idx
    ON price_metrics (scryfall_id, source, price_type, finish, currency) WHERE window_points IS NULL;

COMMENT ON COLUMN price_metrics.window_points IS
    'The series'' points of the 61 days ending on latest_day (shared/src/series_metrics/window.rs). NULL: the next '
    'metrics run recomputes the series from its points (a row written before the column, or a deletion, prune '
    'or move reached its window).';

-- The columns' definitions, as docs/data.md ("The metrics") gives them; L is the latest day.
COMMENT ON COLUMN price_metrics.change_1d IS
    'latest_price less the latest price of days L-2..L-1 (7d: L-14..L-7, 30d: L-60..L-30), with the larger '
    'places of the two; NULL without such a point.';
COMMENT ON COLUMN price_metrics.change_1d_pct IS
    'change_1d over its reference price, times 100, rounded half away from zero to 2 places; NULL when the '
    'reference is missing or 0.';
COMMENT ON COLUMN price_metrics.ma_7d IS 'Mean price of days L-6..L, rounded half away from zero to 4 places.';
COMMENT ON COLUMN price_metrics.ma_30d IS 'Mean price of days L-29..L, rounded half away from zero to 4 places.';
COMMENT ON COLUMN price_metrics.volatility_30d IS
    'Sample standard deviation of the log returns ln(p/q) of the points p of days L-29..L, q the point before p '
    'in the window (days L-60..L); returns with a 0 price left out; NULL below two returns.';
COMMENT ON COLUMN price_metrics.high_30d IS
    'Highest price of days L-29..L; of equal prices, the most recent one''s text.';
COMMENT ON COLUMN price_metrics.low_30d IS
    'Lowest price of days L-29..L; of equal prices, the most recent one''s text.';
COMMENT ON COLUMN price_metrics.prior_high_30d IS
    'Highest price of days L-30..L-1 (the most recent of equal ones); NULL without a point there.';
COMMENT ON COLUMN price_metrics.points IS 'Every point the series has.';
