-- How many reservations of each client have status 'active', kept by
-- triggers on every insert, status change and delete of a reservation row,
-- whatever the code path. It counts expired reservations the sweeper has
-- not yet recorded, so it is an upper bound of the client's active,
-- unexpired reservations: a reservation batch reads it, and counts a
-- client's reservations exactly (through reservations_client_active) only
-- when the bound could reach the per-client cap. Counting every client of
-- every batch had cost each reservation a walk over all of its client's
-- active reservations.
CREATE TABLE reservation_client_counts (
    client_id   TEXT PRIMARY KEY NOT NULL,
    active      INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO reservation_client_counts (client_id, active)
    SELECT client_id, COUNT(*) FROM reservations WHERE status = 'active' GROUP BY client_id;

CREATE TRIGGER reservation_client_counts_insert AFTER INSERT ON reservations
    WHEN NEW.status = 'active'
BEGIN
    INSERT INTO reservation_client_counts (client_id, active) VALUES (NEW.client_id, 1)
        ON CONFLICT (client_id) DO UPDATE SET active = active + 1;
END;

CREATE TRIGGER reservation_client_counts_update AFTER UPDATE OF status, client_id ON reservations
    WHEN (OLD.status = 'active') OR (NEW.status = 'active')
BEGIN
    UPDATE reservation_client_counts SET active = active - 1
        WHERE OLD.status = 'active' AND client_id = OLD.client_id;
    INSERT INTO reservation_client_counts (client_id, active)
        SELECT NEW.client_id, 1 WHERE NEW.status = 'active'
        ON CONFLICT (client_id) DO UPDATE SET active = active + 1;
END;

CREATE TRIGGER reservation_client_counts_delete AFTER DELETE ON reservations
    WHEN OLD.status = 'active'
BEGIN
    UPDATE reservation_client_counts SET active = active - 1 WHERE client_id = OLD.client_id;
END;
