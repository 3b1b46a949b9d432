-- ERP posting pipeline: outbox rows gain their delivery record; the
-- reconciliation runs and their exceptions.
--
-- outbox_postings.status: pending | in_flight | posted | dead | discarded.
-- An in_flight row's next_attempt_at is its lease: past it, another worker
-- may take the posting over (the ERP dedupes by event id).
ALTER TABLE outbox_postings ADD COLUMN created_at BIGINT;
ALTER TABLE outbox_postings ADD COLUMN posted_at BIGINT;
ALTER TABLE outbox_postings ADD COLUMN erp_ref TEXT;
ALTER TABLE outbox_postings ADD COLUMN resolved_by TEXT;
ALTER TABLE outbox_postings ADD COLUMN note TEXT;
UPDATE outbox_postings SET created_at = next_attempt_at;

-- No per-key index: ingest would pay for it on every event. The claim
-- finds blocking postings among the open rows through the status index.
-- Reconciliation skips keys posted to while it read the ERP.
CREATE INDEX outbox_postings_posted_at ON outbox_postings (posted_at)
    WHERE posted_at IS NOT NULL;

CREATE TABLE reconciliation_runs (
    run_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger      TEXT NOT NULL,
    actor        TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    -- running | completed | failed
    status       TEXT NOT NULL,
    compared     BIGINT NOT NULL DEFAULT 0,
    skipped      BIGINT NOT NULL DEFAULT 0,
    mismatches   BIGINT NOT NULL DEFAULT 0,
    error        TEXT
);

-- A difference between the ERP and the platform for one (location, sku).
-- status: open (waiting for review) | corrected (adjusted automatically or
-- approved) | rejected (closed with a note).
CREATE TABLE reconciliation_exceptions (
    exception_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id          BIGINT NOT NULL,
    location_id     TEXT NOT NULL,
    sku             TEXT NOT NULL,
    platform_on_hand BIGINT NOT NULL,
    erp_quantity    BIGINT NOT NULL,
    difference      BIGINT NOT NULL,
    unit_cost       TEXT,
    value_at_cost   TEXT NOT NULL,
    currency        TEXT,
    status          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    resolved_at     BIGINT,
    resolved_by     TEXT,
    note            TEXT,
    adjustment_event_id TEXT
);
CREATE INDEX reconciliation_exceptions_status ON reconciliation_exceptions (status, exception_id);
