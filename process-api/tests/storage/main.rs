//! Storage tests, run against every backend available: SQLite always,
//! PostgreSQL when `TEST_POSTGRES_URL` is set (CI sets it).

mod audit;
mod backends;
mod event_ids;
mod feed;
mod group_commit;
mod idempotency;
mod ingest_keys;
mod journal_index;
mod keyed;
mod ledger_props;
mod maintenance;
mod master;
mod postings;
mod replicas;
mod reservations;
mod transfers;
