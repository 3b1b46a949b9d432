-- Idempotency-Key records: one per (service, caller, key), with the
-- request's fingerprint and, once done, the response to replay.
CREATE TABLE idempotency_keys (
    key                    TEXT PRIMARY KEY NOT NULL,
    fingerprint            TEXT NOT NULL,
    lease_until            BIGINT NOT NULL,
    expires_at             BIGINT NOT NULL,
    response_status        BIGINT,
    response_content_type  TEXT,
    response_body          BYTEA
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
