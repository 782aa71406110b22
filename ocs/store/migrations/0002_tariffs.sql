-- Tariff definitions (ocs.rating): settings, time bands, holidays, usage rates,
-- rate decks with their rows, and exchange rates. Money is micro-units, instants
-- are microseconds since the epoch; a NULL effective bound means "open".
-- ocs.rating.storage writes a tariff in one transaction, so a reader sees either
-- the previous or the new definition, never a mix.

CREATE TABLE tariffs (
    id                   {ID},
    name                 TEXT NOT NULL UNIQUE,
    currency             TEXT NOT NULL,
    timezone             TEXT NOT NULL DEFAULT 'UTC',
    rounding_decimals    INTEGER NOT NULL DEFAULT 6 CHECK (rounding_decimals BETWEEN 0 AND 6),
    rounding_mode        TEXT NOT NULL DEFAULT 'up'
                         CHECK (rounding_mode IN ('up', 'down', 'half-up', 'half-even')),
    international_prefix TEXT NOT NULL DEFAULT '00',
    national_prefix      TEXT NOT NULL DEFAULT '',
    country_code         TEXT NOT NULL DEFAULT '',
    default_band         TEXT NOT NULL DEFAULT 'standard',
    holiday_band         TEXT,
    description          TEXT NOT NULL DEFAULT '',
    revision             BIGINT NOT NULL DEFAULT 1,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

-- Band rules in order (the first rule covering a local time wins).
CREATE TABLE tariff_bands (
    tariff_id BIGINT NOT NULL REFERENCES tariffs (id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    band      TEXT NOT NULL,
    days      TEXT NOT NULL,               -- e.g. 'mon,tue,wed,thu,fri'
    start_s   INTEGER NOT NULL CHECK (start_s >= 0 AND start_s < 86400),
    end_s     INTEGER NOT NULL CHECK (end_s > 0 AND end_s <= 86400),
    PRIMARY KEY (tariff_id, position)
);

CREATE TABLE tariff_holidays (
    tariff_id BIGINT NOT NULL REFERENCES tariffs (id) ON DELETE CASCADE,
    day       TEXT NOT NULL,               -- local date, YYYY-MM-DD
    band      TEXT,                        -- NULL: the tariff's holiday_band
    name      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tariff_id, day)
);

-- Data (octets) and event rates by service id / rating group.
-- tiers: JSON [[upto or null, price], ...], cumulative units, last one open.
CREATE TABLE tariff_usage_rates (
    tariff_id      BIGINT NOT NULL REFERENCES tariffs (id) ON DELETE CASCADE,
    service        TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('octets', 'events')),
    unit           BIGINT NOT NULL CHECK (unit > 0),
    increment      BIGINT NOT NULL CHECK (increment > 0),
    next_increment BIGINT NOT NULL CHECK (next_increment > 0),
    tiers          TEXT NOT NULL,
    PRIMARY KEY (tariff_id, service)
);

-- bands: JSON list of the band names the rows carry prices for, in order.
CREATE TABLE tariff_decks (
    id             {ID},
    tariff_id      BIGINT NOT NULL REFERENCES tariffs (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    position       INTEGER NOT NULL DEFAULT 0,  -- order of the decks in the definition
    service        TEXT NOT NULL DEFAULT 'voice',
    unit           TEXT NOT NULL DEFAULT 'minute' CHECK (unit IN ('minute', 'event')),
    priority       INTEGER NOT NULL DEFAULT 0,
    effective_from BIGINT,
    effective_to   BIGINT,
    bands          TEXT NOT NULL DEFAULT '[]',
    UNIQUE (tariff_id, name)
);

-- band_prices: JSON list aligned with the deck's bands, NULL when all equal price.
CREATE TABLE tariff_deck_rows (
    deck_id        BIGINT NOT NULL REFERENCES tariff_decks (id) ON DELETE CASCADE,
    line           INTEGER NOT NULL,
    prefix         TEXT NOT NULL,
    destination    TEXT NOT NULL DEFAULT '',
    price          BIGINT NOT NULL CHECK (price >= 0),
    connection_fee BIGINT NOT NULL DEFAULT 0 CHECK (connection_fee >= 0),
    min_duration   BIGINT NOT NULL DEFAULT 0 CHECK (min_duration >= 0),
    increment      BIGINT NOT NULL DEFAULT 1 CHECK (increment > 0),
    next_increment BIGINT NOT NULL DEFAULT 1 CHECK (next_increment > 0),
    effective_from BIGINT,
    effective_to   BIGINT,
    band_prices    TEXT,
    PRIMARY KEY (deck_id, line)
);

-- From effective_from on, 1 from_currency = rate / 10^9 to_currency.
CREATE TABLE exchange_rates (
    id             {ID},
    from_currency  TEXT NOT NULL,
    to_currency    TEXT NOT NULL,
    rate           BIGINT NOT NULL CHECK (rate > 0),
    effective_from BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (from_currency, to_currency, effective_from)
);
