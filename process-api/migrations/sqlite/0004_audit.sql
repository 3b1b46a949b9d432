-- Audit log of state-changing requests.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    service     TEXT NOT NULL,
    actor       TEXT NOT NULL,
    client      TEXT NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      BIGINT NOT NULL,
    request_id  TEXT NOT NULL,
    trace_id    TEXT NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
