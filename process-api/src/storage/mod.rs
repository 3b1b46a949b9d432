//! Storage of process-api: one interface ([`Store`]) over two backends.
//!
//! - **SQLite** (embedded default): WAL journal, `synchronous = FULL` (an
//!   acknowledged write survives a crash of the process or the machine), a
//!   busy timeout, a reader pool and a single-connection writer pool, so
//!   writes are serialised by the pool instead of failing with `SQLITE_BUSY`.
//! - **PostgreSQL**: one pool; several process-api replicas may share it.
//!
//! Both backends run the same SQL text wherever the dialects agree (`$n`
//! placeholders, `ON CONFLICT … DO UPDATE … WHERE`, `RETURNING`); the
//! [`on_reader!`] and [`on_writer!`] macros type-check one body against each
//! backend's native driver. Queries are built at run time (`sqlx::query`),
//! never with the compile-time macros, so a fresh clone builds with no
//! database. Timestamps are stored as unix microseconds.

pub mod audit;
pub mod cache;
pub mod feed;
mod group;
pub mod idempotency;
pub mod ingest_keys;
pub mod ledger;
pub mod maintenance;
pub mod master;
pub mod postings;
pub mod reconciliation;
pub mod reservations;
pub mod transfers;
pub mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use retail_shared::config::SqliteMemory;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// The backend pools.
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite: concurrent readers, one writer.
    Sqlite {
        /// Read-only work.
        reader: SqlitePool,
        /// Every write, one at a time.
        writer: SqlitePool,
        /// The background checkpointer's connection.
        checkpoints: SqlitePool,
    },
    /// PostgreSQL: one pool for both.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's read pool.
#[macro_export]
macro_rules! on_reader {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::storage::Db::Sqlite { reader: $pool, .. } => $body,
            $crate::storage::Db::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the backend's write pool.
#[macro_export]
macro_rules! on_writer {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::storage::Db::Sqlite { writer: $pool, .. } => $body,
            $crate::storage::Db::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` (evaluating to `(value, commit)`) in a write transaction
/// `$tx`, with `$backend` naming the backend's module (`$sqlite` or
/// `$postgres`); the transaction commits when `commit` is true. PostgreSQL
/// deadlocks, serialisation failures and unique violations are retried.
#[macro_export]
macro_rules! transact {
    ($store:expr, $sqlite:ident, $postgres:ident, |$tx:ident, $backend:ident| $body:expr) => {{
        use $crate::storage::BeginWrite as _;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome: Result<_, sqlx::Error> = async {
                match $store.db() {
                    $crate::storage::Db::Sqlite { writer, .. } => {
                        let mut $tx = writer.begin_write().await?;
                        #[allow(unused_imports, reason = "a body may not need its backend")]
                        use $sqlite as $backend;
                        let (value, commit) = $body;
                        if commit {
                            $tx.commit().await?;
                        }
                        Ok(value)
                    }
                    $crate::storage::Db::Postgres(pool) => {
                        let mut $tx = pool.begin_write().await?;
                        #[allow(unused_imports, reason = "a body may not need its backend")]
                        use $postgres as $backend;
                        let (value, commit) = $body;
                        if commit {
                            $tx.commit().await?;
                        }
                        Ok(value)
                    }
                }
            }
            .await;
            match outcome {
                Err(error)
                    if attempt < $crate::storage::ledger::PG_ATTEMPTS
                        && $crate::storage::ledger::is_retryable(&error) =>
                {
                    tracing::debug!(attempt, "write transaction retried: {error}");
                }
                other => break other,
            }
        }
    }};
}

/// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`: the write
/// lock is taken up front, so a second writer (another process on the same
/// file) waits out the busy timeout instead of failing with "database is
/// locked" when a deferred transaction tries to upgrade its read lock.
pub trait BeginWrite {
    /// The database.
    type Database: sqlx::Database;
    /// Begins the write transaction.
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>,
    > + Send;
}

impl BeginWrite for SqlitePool {
    type Database = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Database = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// The store's time source: the system clock, or a manual one that tests
/// set and advance (reservation expiry is checked without sleeping).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// Wall-clock time.
    #[default]
    System,
    /// Unix microseconds held in a shared cell.
    Manual(std::sync::Arc<std::sync::atomic::AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `micros`.
    pub fn manual(micros: i64) -> Self {
        Self::Manual(std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
            micros,
        )))
    }

    /// Now, as unix microseconds.
    pub fn now(&self) -> i64 {
        match self {
            Self::System => now_micros(),
            Self::Manual(cell) => cell.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set(&self, micros: i64) {
        if let Self::Manual(cell) = self {
            cell.store(micros, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Moves a manual clock forward.
    pub fn advance(&self, by: Duration) {
        if let Self::Manual(cell) = self {
            let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            cell.fetch_add(micros, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The storage interface of process-api.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    master: std::sync::Arc<cache::MasterCache>,
    clock: Clock,
    /// Ingest batches waiting for SQLite's writer (see `ledger::GroupCommit`).
    group: std::sync::Arc<ledger::GroupCommit>,
    /// Small writes waiting for SQLite's writer (see `group`).
    write_group: std::sync::Arc<group::WriteGroup>,
    /// See [`Store::posting_counts`].
    closed_counts: std::sync::Arc<std::sync::Mutex<Option<postings::ClosedCounts>>>,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH`, `sqlite::memory:` or
    /// `postgres://…`) and runs the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Self::connect_with(url, max_connections, &SqliteMemory::default()).await
    }

    /// [`Store::connect`] with SQLite's memory budget.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        memory: &SqliteMemory,
    ) -> anyhow::Result<Self> {
        let kib = |mib: u32| format!("-{}", u64::from(mib) * 1024);
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(2))
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .context("cannot connect to PostgreSQL")?;
            sqlx::migrate!("./migrations/postgres")
                .run(&pool)
                .await
                .context("PostgreSQL migrations failed")?;
            Db::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            // Before the first connection: SQLite takes its page cache only
            // before it initialises (see the crate's documentation).
            match sqlite_pagecache::install() {
                Ok(()) => {}
                Err(sqlite_pagecache::InstallError::Disabled) => {
                    tracing::info!("SQLite's default page cache chosen")
                }
                Err(error) => tracing::warn!(%error, "SQLite's bounded page cache is not in use"),
            }
            // The writer's WAL frames are written in large pieces (see the
            // crate's `wal` module); that needs `synchronous = FULL`, which
            // the writer's options below set.
            let gathered_wal = match sqlite_pagecache::wal::install() {
                Ok(()) => true,
                Err(sqlite_pagecache::wal::InstallError::Disabled) => {
                    tracing::info!("the WAL's frames are written one by one");
                    false
                }
                Err(error) => {
                    tracing::warn!(%error, "the WAL's frames are written one by one");
                    false
                }
            };
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| "invalid SQLite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                .pragma("cache_size", kib(memory.writer_cache_mib))
                .pragma(
                    "mmap_size",
                    (u64::from(memory.mmap_mib) * 1024 * 1024).to_string(),
                )
                .pragma("temp_store", "memory")
                // Rows a statement may hand back before the connection
                // thread waits for the caller to take them: sqlx's 50 made
                // every read of a batch's positions (up to 500 rows) stop
                // and switch threads ten times.
                .row_buffer_size(ROW_BUFFER)
                // Checkpoints run in the background (see `checkpointer`);
                // the writer checkpoints itself only past 256 MiB of WAL, a
                // backstop for when no runtime drives the checkpointer.
                .pragma("wal_autocheckpoint", "65536");
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            // The batched writes build their statements for the number of
            // requests in the batch, so each kind comes in many lengths:
            // with sqlx's 100 cached statements the writer kept preparing
            // them again (a tenth of its time under reservations).
            // SQLite's pools skip sqlx's test before each acquire: an
            // embedded connection does not go stale, and the test was a
            // round trip to the connection's thread per transaction. The
            // writer is also never closed for age or idleness: it holds the
            // large page cache and the prepared statements.
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_with({
                    let writer = options.clone().statement_cache_capacity(WRITER_STATEMENTS);
                    if gathered_wal {
                        writer.vfs(sqlite_pagecache::wal::NAME)
                    } else {
                        writer
                    }
                })
                .await
                .context("cannot open the SQLite database")?;
            sqlx::migrate!("./migrations/sqlite")
                .run(&writer)
                .await
                .context("SQLite migrations failed")?;
            // The large page cache is the writer's: a reader's is multiplied
            // by the number of connections, and the checkpointer needs none
            // (nor a memory map: it copies the WAL into the file).
            let checkpoints = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    options
                        .clone()
                        .pragma("cache_size", "-2048")
                        .pragma("mmap_size", "0"),
                )
                .await
                .context("cannot open the SQLite database for checkpoints")?;
            tokio::spawn(checkpointer(checkpoints.clone()));
            let reader = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .test_before_acquire(false)
                .connect_with(
                    options
                        .read_only(true)
                        .pragma("cache_size", kib(memory.reader_cache_mib)),
                )
                .await
                .context("cannot open the SQLite database for reading")?;
            Db::Sqlite {
                reader,
                writer,
                checkpoints,
            }
        } else {
            anyhow::bail!("unsupported database URL scheme (use sqlite:// or postgres://)");
        };
        Ok(Self {
            db,
            master: std::sync::Arc::default(),
            clock: Clock::System,
            group: std::sync::Arc::default(),
            write_group: std::sync::Arc::default(),
            closed_counts: std::sync::Arc::default(),
        })
    }

    /// The same store reading time from `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The store's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Now by the store's clock, as unix microseconds.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite { .. } => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// The master data cache of the ingest path.
    pub(crate) fn master_cache(&self) -> &cache::MasterCache {
        &self.master
    }

    pub(crate) fn write_group(&self) -> &group::WriteGroup {
        &self.write_group
    }

    pub(crate) fn write_group_arc(&self) -> &std::sync::Arc<group::WriteGroup> {
        &self.write_group
    }

    /// The pools, for storage modules.
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Readiness: a round trip to the database.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_reader!(&self.db, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()))
    }

    /// Closes the pools, waiting for in-flight queries.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite {
                reader,
                writer,
                checkpoints,
            } => {
                reader.close().await;
                writer.close().await;
                checkpoints.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// Rows buffered between a SQLite connection's thread and its caller (see
/// `row_buffer_size` in [`Store::connect_with`]); a batch's reads return at
/// most 500 rows per statement.
const ROW_BUFFER: usize = 1024;

/// Prepared statements the writer keeps (see where it connects).
const WRITER_STATEMENTS: usize = 2048;

/// Copies the WAL back into the database file once a second from its own
/// connection, so the writer's commits do not pay for checkpoints (a batch
/// dirties hundreds of scattered pages; copying them back is the larger
/// half of the I/O). Passive checkpoints never block the writer. Ends when
/// the store's pools are closed.
async fn checkpointer(pool: SqlitePool) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if pool.is_closed() {
            return;
        }
        // The page cache's truncations (process-wide), with the ticks.
        let cache = sqlite_pagecache::stats();
        metrics::counter!("sqlite_page_cache_truncations_total", "outcome" => "skipped")
            .absolute(cache.truncations_skipped);
        metrics::counter!("sqlite_page_cache_truncations_total", "outcome" => "forwarded")
            .absolute(cache.truncations_forwarded);
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(%error, "background WAL checkpoint failed");
        }
    }
}

/// Now as unix microseconds.
pub fn now_micros() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// Unix microseconds as RFC 3339 (UTC).
pub fn micros_to_rfc3339(micros: i64) -> String {
    let nanos = i128::from(micros) * 1_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// ` AND {column} IN ($n, …)` with `count` placeholders numbered from
/// `*next` (advanced past them); an empty list matches nothing. For a
/// token's location binding, which is short; the values are bound by the
/// caller in the same order.
pub(crate) fn in_list(column: &str, count: usize, next: &mut usize) -> String {
    if count == 0 {
        return " AND 1 = 0".to_owned();
    }
    let placeholders: Vec<String> = (*next..*next + count).map(|n| format!("${n}")).collect();
    *next += count;
    format!(" AND {column} IN ({})", placeholders.join(", "))
}
