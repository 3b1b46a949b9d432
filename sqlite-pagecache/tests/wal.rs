//! The WAL-gathering VFS under a real SQLite database: a writer through it
//! (`synchronous = FULL`, small autocheckpoints so that the writer also
//! reads the WAL back and restarts it), a reader through the default VFS
//! seeing every commit at once, transactions larger than the gathering
//! buffer, rollbacks, and the database reopened afterwards.

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// A small deterministic generator: the same sizes every run.
struct Sizes(u64);

impl Sizes {
    fn next(&mut self, below: i64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        i64::try_from(self.0 >> 33).expect("31 bits") % below
    }
}

async fn figures(pool: &sqlx::SqlitePool) -> (i64, i64) {
    let row = sqlx::query("SELECT count(*), coalesce(sum(length(v)), 0) FROM t")
        .fetch_one(pool)
        .await
        .expect("figures");
    (row.get(0), row.get(1))
}

async fn integrity(pool: &sqlx::SqlitePool) -> String {
    sqlx::query("PRAGMA integrity_check")
        .fetch_one(pool)
        .await
        .expect("integrity check")
        .get(0)
}

#[tokio::test]
async fn a_reader_sees_every_commit_the_gathering_writer_makes() {
    if std::env::var(sqlite_pagecache::wal::DISABLE_VARIABLE).is_ok_and(|value| value == "direct") {
        eprintln!(
            "skipped: {}=direct registers no VFS",
            sqlite_pagecache::wal::DISABLE_VARIABLE
        );
        return;
    }
    sqlite_pagecache::wal::install().expect("VFS registered");
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("wal.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            options
                .clone()
                .vfs(sqlite_pagecache::wal::NAME)
                .pragma("wal_autocheckpoint", "200"),
        )
        .await
        .expect("open the writer");
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB NOT NULL)")
        .execute(&writer)
        .await
        .expect("table");
    sqlx::query("CREATE INDEX t_k ON t (k)")
        .execute(&writer)
        .await
        .expect("index");
    let reader = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone().read_only(true))
        .await
        .expect("open the reader");

    let mut sizes = Sizes(11);
    let (mut count, mut bytes) = (0, 0);
    for round in 0..60 {
        let mut tx = writer.begin().await.expect("begin");
        // Every tenth transaction writes more than the 1 MiB buffer.
        let rows = if round % 10 == 9 { 400 } else { 40 };
        let (mut n, mut b) = (0, 0);
        for _ in 0..rows {
            let size = 1 + sizes.next(8_000);
            sqlx::query("INSERT INTO t (k, v) VALUES (?, zeroblob(?))")
                .bind(sizes.next(1_000_000))
                .bind(size)
                .execute(&mut *tx)
                .await
                .expect("insert");
            n += 1;
            b += size;
        }
        if round % 7 == 3 {
            // Rolled back: nothing of it may show.
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
            count += n;
            bytes += b;
        }
        assert_eq!(
            figures(&reader).await,
            (count, bytes),
            "the reader after round {round}"
        );
    }
    assert_eq!(integrity(&writer).await, "ok");
    reader.close().await;
    writer.close().await;

    // Opened again through the default VFS: the same rows.
    let again = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("reopen");
    assert_eq!(figures(&again).await, (count, bytes));
    assert_eq!(integrity(&again).await, "ok");
}
