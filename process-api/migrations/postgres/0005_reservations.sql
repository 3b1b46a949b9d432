-- Reservations. `reserved` is no longer a stored position column: it is the
-- sum of the holds still active at read time, so a reservation stops
-- counting at its expires_at exactly, sweeper or not.
ALTER TABLE positions DROP COLUMN reserved;

CREATE TABLE reservations (
    reservation_id  TEXT PRIMARY KEY NOT NULL,
    -- The end user or channel behind the token (anti-hoarding cap).
    client_id       TEXT NOT NULL,
    channel         TEXT NOT NULL,
    order_ref       TEXT NOT NULL,
    -- active | released | fulfilled | expired
    status          TEXT NOT NULL,
    -- JSON array of {sku, location_id, quantity}
    lines           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    closed_at       BIGINT,
    request_id      TEXT NOT NULL
);
CREATE INDEX reservations_client_active ON reservations (client_id) WHERE status = 'active';
CREATE INDEX reservations_due ON reservations (expires_at) WHERE status = 'active';

-- The units active reservations hold, one row per reservation line; rows
-- leave when the reservation is released, fulfilled or swept as expired.
CREATE TABLE reservation_holds (
    sku             TEXT NOT NULL,
    location_id     TEXT NOT NULL,
    reservation_id  TEXT NOT NULL,
    quantity        BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    PRIMARY KEY (sku, location_id, reservation_id)
);
CREATE INDEX reservation_holds_reservation ON reservation_holds (reservation_id);
