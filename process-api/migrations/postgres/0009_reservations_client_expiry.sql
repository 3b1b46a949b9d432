-- The per-client cap counts a client's active, unexpired reservations on
-- every reservation: with the expiry in the index the count reads the
-- index alone instead of one table row per active reservation.
DROP INDEX reservations_client_active;
CREATE INDEX reservations_client_active ON reservations (client_id, expires_at)
    WHERE status = 'active';
