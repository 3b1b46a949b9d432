-- The postings that can block their key (dead, in flight on a lease, or
-- backing off) are the open rows whose next attempt was pushed past their
-- creation. A posting is written with next_attempt_at = created_at, so it
-- enters this index only when a delivery attempt or a failure moves it:
-- ingest pays nothing for it, and the claim finds a key's blockers with
-- one probe instead of reading every open row (which made each claim cost
-- time in proportion to the backlog an ERP outage leaves).
CREATE INDEX outbox_postings_blocking ON outbox_postings (location_id, sku, posting_id)
    WHERE status IN ('pending', 'in_flight', 'dead') AND next_attempt_at > created_at;
