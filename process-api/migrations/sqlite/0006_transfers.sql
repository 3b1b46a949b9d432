-- Transfers between locations: the request and its state, each step with
-- who took it, and receipt differences for operators.
CREATE TABLE transfers (
    transfer_id              TEXT PRIMARY KEY NOT NULL,
    source_location_id       TEXT NOT NULL,
    destination_location_id  TEXT NOT NULL,
    -- requested | approved | shipped | received | cancelled
    status                   TEXT NOT NULL,
    -- JSON array of {sku, quantity, shipped, received}
    lines                    TEXT NOT NULL,
    value_at_cost            TEXT NOT NULL,
    currency                 TEXT,
    requested_by             TEXT NOT NULL,
    approved_by              TEXT,
    reference                TEXT,
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL
);
CREATE INDEX transfers_status ON transfers (status, updated_at);

CREATE TABLE transfer_steps (
    transfer_id  TEXT NOT NULL,
    step         TEXT NOT NULL,
    actor        TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    at           BIGINT NOT NULL,
    PRIMARY KEY (transfer_id, step)
);

-- A short or over receipt, per line: open until an operator settles it.
CREATE TABLE transfer_exceptions (
    transfer_id  TEXT NOT NULL,
    sku          TEXT NOT NULL,
    shipped      BIGINT NOT NULL,
    received     BIGINT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'open',
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (transfer_id, sku)
);
CREATE INDEX transfer_exceptions_open ON transfer_exceptions (status, created_at);
