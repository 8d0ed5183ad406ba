-- Each price series' point count and latest day, kept exact by the statements that write price_points.
-- A full metrics run reads these 100,000-odd rows instead of grouping every point by series: on the generated
-- 36.5-million-point history that grouping took 4.3-4.8 s of a 13.6 s read (docs/benchmarks.md).
--
-- Statement triggers with transition tables keep it, so every writer (ingestion's COPY and upserts, pruning, a
-- cascade from printings, an operator's psql) is counted the same way, in the writer's own transaction. There is
-- no foreign key to printings: a printing's deletion reaches this table through its points' deletion, and a
-- cascade here would race that.
CREATE TABLE price_series (
    scryfall_id uuid    NOT NULL,
    source      text    NOT NULL,
    price_type  text    NOT NULL,
    finish      text    NOT NULL,
    currency    text    NOT NULL,
    points      bigint  NOT NULL CHECK (points > 0),
    latest_day  date    NOT NULL,
    PRIMARY KEY (scryfall_id, source, price_type, finish, currency)
);

INSERT INTO price_series (scryfall_id, source, price_type, finish, currency, points, latest_day)
SELECT scryfall_id, source, price_type, finish, currency, count(*), max(day)
FROM price_points
GROUP BY 1, 2, 3, 4, 5;

-- New points add to their series, a new series gets its row. The rows are taken in key order, so two writers
-- that touch the same series lock them in the same order.
CREATE FUNCTION price_series_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO price_series AS s (scryfall_id, source, price_type, finish, currency, points, latest_day)
    SELECT scryfall_id, source, price_type, finish, currency, count(*), max(day)
    FROM added
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (scryfall_id, source, price_type, finish, currency) DO UPDATE
    SET points = s.points + excluded.points, latest_day = greatest(s.latest_day, excluded.latest_day);
    RETURN NULL;
END
$$;

-- Deleted points leave their series; a series left without points loses its row, and one that lost its latest
-- day looks up its new latest day (one backward step in the points' primary key).
CREATE FUNCTION price_series_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1
    FROM price_series s
    JOIN (SELECT DISTINCT scryfall_id, source, price_type, finish, currency FROM removed) r
        USING (scryfall_id, source, price_type, finish, currency)
    ORDER BY s.scryfall_id, s.source, s.price_type, s.finish, s.currency
    FOR UPDATE OF s;

    WITH r AS (
        SELECT scryfall_id, source, price_type, finish, currency, count(*) AS points, max(day) AS last_day
        FROM removed
        GROUP BY 1, 2, 3, 4, 5
    ),
    emptied AS (
        DELETE FROM price_series s USING r
        WHERE (s.scryfall_id, s.source, s.price_type, s.finish, s.currency)
            = (r.scryfall_id, r.source, r.price_type, r.finish, r.currency)
          AND s.points <= r.points
    )
    UPDATE price_series s
    SET points = s.points - r.points,
        latest_day = CASE WHEN r.last_day < s.latest_day THEN s.latest_day ELSE (
            SELECT max(p.day) FROM price_points p
            WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
                = (s.scryfall_id, s.source, s.price_type, s.finish, s.currency)) END
    FROM r
    WHERE (s.scryfall_id, s.source, s.price_type, s.finish, s.currency)
        = (r.scryfall_id, r.source, r.price_type, r.finish, r.currency)
      AND s.points > r.points;
    RETURN NULL;
END
$$;

-- A point moved to another series or day (nothing in the product does it, an operator might) leaves the one and
-- joins the other. Only an UPDATE that names a key column fires this, so ingestion's repricing never does.
CREATE FUNCTION price_series_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.scryfall_id, OLD.source, OLD.price_type, OLD.finish, OLD.currency, OLD.day)
        IS NOT DISTINCT FROM (NEW.scryfall_id, NEW.source, NEW.price_type, NEW.finish, NEW.currency, NEW.day) THEN
        RETURN NULL;
    END IF;
    INSERT INTO price_series AS s (scryfall_id, source, price_type, finish, currency, points, latest_day)
    VALUES (NEW.scryfall_id, NEW.source, NEW.price_type, NEW.finish, NEW.currency, 1, NEW.day)
    ON CONFLICT (scryfall_id, source, price_type, finish, currency) DO UPDATE
    SET points = s.points + 1, latest_day = greatest(s.latest_day, excluded.latest_day);
    DELETE FROM price_series s
    WHERE (s.scryfall_id, s.source, s.price_type, s.finish, s.currency)
        = (OLD.scryfall_id, OLD.source, OLD.price_type, OLD.finish, OLD.currency)
      AND s.points = 1;
    UPDATE price_series s
    SET points = s.points - 1,
        latest_day = (SELECT max(p.day) FROM price_points p
                      WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
                          = (s.scryfall_id, s.source, s.price_type, s.finish, s.currency))
    WHERE (s.scryfall_id, s.source, s.price_type, s.finish, s.currency)
        = (OLD.scryfall_id, OLD.source, OLD.price_type, OLD.finish, OLD.currency);
    RETURN NULL;
END
$$;

CREATE FUNCTION price_series_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE price_series;
    RETURN NULL;
END
$$;

CREATE TRIGGER price_series_add AFTER INSERT ON price_points
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION price_series_add();
CREATE TRIGGER price_series_remove AFTER DELETE ON price_points
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION price_series_remove();
CREATE TRIGGER price_series_move AFTER UPDATE OF scryfall_id, source, price_type, finish, currency, day ON price_points
    FOR EACH ROW EXECUTE FUNCTION price_series_move();
CREATE TRIGGER price_series_clear AFTER TRUNCATE ON price_points
    FOR EACH STATEMENT EXECUTE FUNCTION price_series_clear();
