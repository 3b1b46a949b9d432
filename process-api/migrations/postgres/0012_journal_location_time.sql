-- The journal's position index, keyed by location and time instead of by
-- (location, sku, time).
--
-- A (location_id, sku, occurred_at) key puts each new event at a random
-- place in the index: every event of a batch dirtied its own index page,
-- which the commit wrote to the WAL (and the checkpoint into the file)
-- whole. Keyed by (location_id, occurred_at), events arrive in roughly
-- increasing time at each location, so a batch appends at the tail of each
-- location's run: a few hundred pages per transaction for a whole chain,
-- however many SKUs it carries.
--
-- The queries it serves still find a position's entries: the journal read
-- filtered by location (and sku, and time) scans the location's entries
-- in the time window; a count's "sum of effects after the count" reads
-- the location's entries after the count's time and keeps the sku's (and
-- is not run at all when the position has no event after the count, the
-- usual case: see `apply` in storage/ledger.rs).
DROP INDEX journal_position_time;
CREATE INDEX journal_location_time ON journal (location_id, occurred_at);
