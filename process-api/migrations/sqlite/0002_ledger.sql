-- The inventory ledger: journal (append-only), positions, parked events and
-- the transactional outbox (ERP postings, availability changes).

-- One row per ingest request: who sent it and under which request/trace.
CREATE TABLE ingest_batches (
    batch_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    trace_id     TEXT NOT NULL
);

CREATE TABLE journal (
    seq                          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id                     TEXT NOT NULL UNIQUE,
    type                         TEXT NOT NULL,
    location_id                  TEXT NOT NULL,
    sku                          TEXT NOT NULL,
    quantity                     BIGINT NOT NULL,
    occurred_at                  BIGINT NOT NULL,
    batch_id                     BIGINT NOT NULL,
    source                       TEXT NOT NULL,
    reference                    TEXT,
    reason                       TEXT,
    counterparty_location_id     TEXT,
    disposition                  TEXT,
    on_hand_effect               BIGINT NOT NULL,
    unsellable_effect            BIGINT NOT NULL,
    inbound_received_effect      BIGINT NOT NULL,
    counterparty_shipped_effect  BIGINT NOT NULL,
    on_hand_change               BIGINT NOT NULL,
    unit_cost                    TEXT,
    currency                     TEXT,
    location_type                TEXT
);
CREATE INDEX journal_position_time ON journal (location_id, sku, occurred_at);
-- The change feed reads a batch's entries.
CREATE INDEX journal_batch ON journal (batch_id);

CREATE TABLE positions (
    location_id       TEXT NOT NULL,
    sku               TEXT NOT NULL,
    count_at          BIGINT,
    count_event_id    TEXT,
    count_qty         BIGINT,
    delta_after       BIGINT NOT NULL DEFAULT 0,
    unsellable_raw    BIGINT NOT NULL DEFAULT 0,
    inbound_shipped   BIGINT NOT NULL DEFAULT 0,
    inbound_received  BIGINT NOT NULL DEFAULT 0,
    reserved          BIGINT NOT NULL DEFAULT 0,
    safety_stock      BIGINT,
    last_event_at     BIGINT,
    updated_at        BIGINT NOT NULL,
    PRIMARY KEY (sku, location_id)
) WITHOUT ROWID;
-- Keyed by sku first: channel reads ask for one sku across locations, and
-- one B-tree (no secondary index) halves the pages a batch dirties.

CREATE TABLE parked_events (
    event_id     TEXT PRIMARY KEY NOT NULL,
    location_id  TEXT NOT NULL,
    sku          TEXT NOT NULL,
    counterparty_location_id TEXT,
    reason       TEXT NOT NULL,
    payload      TEXT NOT NULL,
    parked_at    BIGINT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    trace_id     TEXT NOT NULL,
    -- 1 when the event can no longer be applied (kept for operators).
    dead         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX parked_events_sku ON parked_events (sku);

-- ERP postings to make, one per journal entry, in posting_id order per
-- (location_id, sku); the event's details are read from the journal.
CREATE TABLE outbox_postings (
    posting_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL,
    location_id      TEXT NOT NULL,
    sku              TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT
);
CREATE INDEX outbox_postings_status ON outbox_postings (status, posting_id);

-- Availability-change notifications. A row names either a whole ingest
-- batch (every position its journal entries touched, counterparties of
-- transfers included) or one position (safety stock, reservations).
CREATE TABLE outbox_changes (
    change_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id     BIGINT,
    location_id  TEXT,
    sku          TEXT,
    created_at   BIGINT NOT NULL
);
