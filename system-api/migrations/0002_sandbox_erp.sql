-- The sandbox ERP: what it received (one record per posting, keyed by the
-- posting's event id, so a re-delivered posting is found, not re-posted),
-- its stock per warehouse and product, and its master data.
CREATE TABLE erp_records (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    posting_id   BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    location_id  TEXT NOT NULL,
    sku          TEXT NOT NULL,
    quantity     BIGINT NOT NULL,
    unit_cost    TEXT,
    currency     TEXT,
    occurred_at  TEXT NOT NULL,
    reason       TEXT,
    recorded_at  TEXT NOT NULL
);
CREATE INDEX erp_records_key ON erp_records (location_id, sku, seq);

CREATE TABLE erp_stock (
    location_id  TEXT NOT NULL,
    sku          TEXT NOT NULL,
    quantity     BIGINT NOT NULL,
    PRIMARY KEY (location_id, sku)
);

CREATE TABLE erp_warehouses (
    location_id  TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL
);

CREATE TABLE erp_products (
    sku          TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    unit_cost    TEXT,
    currency     TEXT
);
