-- Card printings, keyed by Scryfall id, and their daily prices.

CREATE TABLE printings (
    scryfall_id       uuid        PRIMARY KEY,
    -- Reversible cards have no top-level oracle id.
    oracle_id         uuid,
    name              text        NOT NULL,
    set_code          text        NOT NULL,
    collector_number  text        NOT NULL,
    rarity            text        NOT NULL,
    finishes          text[]      NOT NULL DEFAULT '{}',
    released_at       date,
    tcgplayer_id      integer,
    cardmarket_id     integer,
    mtgo_id           integer,
    -- MTGJSON's id for the same printing, filled in when MTGJSON data names its Scryfall id.
    mtgjson_uuid      uuid        UNIQUE,
    image_uri         text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX printings_oracle_id_idx ON printings (oracle_id);
CREATE INDEX printings_set_number_idx ON printings (set_code, collector_number);
CREATE INDEX printings_name_idx ON printings (lower(name));

-- One price per printing, source, retail or buylist, finish, currency and day. Exact decimals, never floats.
CREATE TABLE price_points (
    scryfall_id  uuid    NOT NULL REFERENCES printings (scryfall_id) ON DELETE CASCADE,
    -- Who quoted it: 'scryfall' (its daily aggregate), or an MTGJSON provider such as 'tcgplayer',
    -- 'cardkingdom', 'cardmarket', 'cardhoarder'.
    source       text    NOT NULL,
    -- Buylist prices (what a store pays) are kept apart from retail prices (what it asks).
    price_type   text    NOT NULL CHECK (price_type IN ('retail', 'buylist')),
    finish       text    NOT NULL CHECK (finish IN ('nonfoil', 'foil', 'etched')),
    currency     text    NOT NULL CHECK (currency IN ('USD', 'EUR', 'TIX')),
    day          date    NOT NULL,
    price        numeric NOT NULL CHECK (price >= 0),
    PRIMARY KEY (scryfall_id, source, price_type, finish, currency, day)
);

-- Analytics read "points that arrived since" and "the last N days of one series".
CREATE INDEX price_points_day_idx ON price_points (day);

-- Every ingestion of an upstream file: what changed, and where a long run got to.
CREATE TABLE ingestion_runs (
    source            text        NOT NULL,
    -- The upstream's own version of the file (Scryfall's bulk `updated_at`, MTGJSON's meta date).
    file_version      timestamptz NOT NULL,
    file_uri          text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    -- Items of the file already applied: a continuation resumes after this many.
    cursor            bigint      NOT NULL DEFAULT 0,
    items_seen        bigint      NOT NULL DEFAULT 0,
    printings_upserted bigint     NOT NULL DEFAULT 0,
    prices_written    bigint      NOT NULL DEFAULT 0,
    malformed         bigint      NOT NULL DEFAULT 0,
    started_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    error             text,
    PRIMARY KEY (source, file_version)
);
