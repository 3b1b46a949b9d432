-- Master data registry: locations and products, versioned, with a change
-- journal. Timestamps are unix microseconds (BIGINT) in every backend.
CREATE TABLE locations (
    location_id          TEXT PRIMARY KEY NOT NULL,
    name                 TEXT NOT NULL,
    type                 TEXT NOT NULL,
    latitude             REAL,
    longitude            REAL,
    capabilities         TEXT NOT NULL,
    safety_stock_default BIGINT NOT NULL,
    version              BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

CREATE TABLE products (
    sku          TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    unit_cost    TEXT NOT NULL,
    currency     TEXT NOT NULL,
    gtin         TEXT,
    safety_stock BIGINT,
    version      BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE master_changes (
    change_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    entity      TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    version     BIGINT NOT NULL,
    changed_at  BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX master_changes_entity ON master_changes (entity, entity_id, change_id);
