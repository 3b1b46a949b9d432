-- The availability change feed and its webhook subscribers.
--
-- One publisher at a time turns committed outbox_changes rows into feed
-- entries with a gapless, commit-ordered sequence (feed_state.head), so a
-- reader that has seen seq N has seen every entry before it. An entry
-- carries the position's figures as they were when it was published: the
-- latest state, not a delta, so a consumer keeps the newest seq per
-- position and nothing else.
-- (SQLite: `INTEGER PRIMARY KEY` makes seq the rowid: one B-tree.)
CREATE TABLE change_feed (
    seq           INTEGER PRIMARY KEY,
    location_id   TEXT NOT NULL,
    sku           TEXT NOT NULL,
    on_hand       BIGINT NOT NULL,
    unsellable    BIGINT NOT NULL,
    reserved      BIGINT NOT NULL,
    safety_stock  BIGINT NOT NULL,
    in_transit    BIGINT NOT NULL,
    available     BIGINT NOT NULL,
    -- When the earliest change it covers was accepted (the propagation
    -- clock starts there).
    changed_at    BIGINT NOT NULL,
    published_at  BIGINT NOT NULL
);

CREATE TABLE feed_state (
    id    BIGINT PRIMARY KEY,
    head  BIGINT NOT NULL
);
INSERT INTO feed_state (id, head) VALUES (1, 0);

-- status: active | paused. A subscription's cursor is the last seq it
-- acknowledged (2xx) or gave up on (dead letter); its lease keeps two
-- replicas from delivering to it at once.
CREATE TABLE webhook_subscriptions (
    subscription_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    url              TEXT NOT NULL,
    secret           TEXT NOT NULL,
    skus             TEXT,
    location_ids     TEXT,
    max_batch        BIGINT NOT NULL,
    status           TEXT NOT NULL,
    cursor           BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    lease_until      BIGINT NOT NULL DEFAULT 0,
    delivered        BIGINT NOT NULL DEFAULT 0,
    last_delivered_at BIGINT,
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL
);

-- Deliveries given up on, per subscriber, with the exact body (so a replay
-- does not depend on the feed's retention).
CREATE TABLE webhook_dead_letters (
    dead_letter_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id  BIGINT NOT NULL,
    first_seq        BIGINT NOT NULL,
    last_seq         BIGINT NOT NULL,
    changes          BIGINT NOT NULL,
    body             TEXT NOT NULL,
    content_type     TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    last_error       TEXT NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE INDEX webhook_dead_letters_subscription
    ON webhook_dead_letters (subscription_id, dead_letter_id);

-- The request span of each ingest batch (the parent of its ERP postings'
-- spans when traces are exported).
ALTER TABLE ingest_batches ADD COLUMN span_id TEXT;
