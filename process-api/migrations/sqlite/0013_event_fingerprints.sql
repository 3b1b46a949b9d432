-- What each journalled or parked event means (type, location, sku,
-- quantity, counterparty, disposition) as a digest: an event id arriving
-- again with another meaning is rejected as `event-id-conflict` instead of
-- being answered `duplicate` and lost. Rows written before this column
-- have none and keep answering `duplicate` to any repeat of their id.
ALTER TABLE journal ADD COLUMN fingerprint TEXT;
ALTER TABLE parked_events ADD COLUMN fingerprint TEXT;
