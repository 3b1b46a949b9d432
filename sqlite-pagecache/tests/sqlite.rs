//! The cache under a real SQLite database (the one sqlx links): inserts
//! that split pages, a transaction that grows the database and rolls back,
//! a savepoint rolled back, and a second connection reading it all back.

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// A small deterministic generator: the same keys every run.
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as i64
    }
}

async fn insert(conn: &mut sqlx::SqliteConnection, keys: &mut Keys, rows: usize) -> (i64, i64) {
    let mut sum = 0;
    for _ in 0..rows {
        let key = keys.next();
        sqlx::query("INSERT INTO t (k, v) VALUES (?, zeroblob(?))")
            .bind(key)
            .bind(100 + key % 400)
            .execute(&mut *conn)
            .await
            .expect("insert");
        sum += key;
    }
    (rows as i64, sum)
}

async fn run(conn: &mut sqlx::SqliteConnection, sql: &'static str) {
    sqlx::query(sql).execute(&mut *conn).await.expect(sql);
}

/// `rows` random rows in a transaction of their own, committed.
async fn committed(conn: &mut sqlx::SqliteConnection, keys: &mut Keys, rows: usize) -> (i64, i64) {
    run(conn, "BEGIN").await;
    let inserted = insert(conn, keys, rows).await;
    run(conn, "COMMIT").await;
    inserted
}

#[tokio::test]
async fn commits_rollbacks_and_savepoints_keep_the_database_whole() {
    if std::env::var(sqlite_pagecache::DISABLE_VARIABLE).is_ok_and(|value| value == "default") {
        eprintln!(
            "skipped: {}=default keeps SQLite's own page cache",
            sqlite_pagecache::DISABLE_VARIABLE
        );
        return;
    }
    sqlite_pagecache::install().expect("installed before any connection of this test");
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("cache.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .pragma("cache_size", "-65536");
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .expect("open");
    let mut conn = writer.acquire().await.expect("connection");
    run(
        &mut conn,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB NOT NULL)",
    )
    .await;
    run(&mut conn, "CREATE INDEX t_k ON t (k)").await;

    let mut keys = Keys(7);
    let (mut count, mut sum) = (0, 0);
    let start = sqlite_pagecache::stats();
    // Committed batches of random keys: the index splits pages all along.
    for _ in 0..40 {
        let (n, s) = committed(&mut conn, &mut keys, 250).await;
        count += n;
        sum += s;
    }
    let after_commits = sqlite_pagecache::stats();
    assert!(
        after_commits.truncations_skipped > start.truncations_skipped,
        "commits after page splits skip the cache's truncation: {after_commits:?}"
    );

    // A transaction that grows the database by thousands of pages, rolled
    // back: its pages must leave the cache.
    run(&mut conn, "BEGIN").await;
    let _ = insert(&mut conn, &mut keys, 6_000).await;
    run(&mut conn, "ROLLBACK").await;
    let rolled_back = sqlite_pagecache::stats();
    assert!(
        rolled_back.truncations_forwarded > after_commits.truncations_forwarded,
        "a rollback that shrinks the database is forwarded: {rolled_back:?}"
    );

    // A savepoint rolled back inside a transaction that commits.
    run(&mut conn, "BEGIN").await;
    let (n, s) = insert(&mut conn, &mut keys, 500).await;
    count += n;
    sum += s;
    run(&mut conn, "SAVEPOINT inner_work").await;
    let _ = insert(&mut conn, &mut keys, 3_000).await;
    run(&mut conn, "ROLLBACK TO inner_work").await;
    run(&mut conn, "RELEASE inner_work").await;
    let (n, s) = insert(&mut conn, &mut keys, 500).await;
    count += n;
    sum += s;
    run(&mut conn, "COMMIT").await;

    // Reused page numbers after the rollbacks hold what was written since.
    for _ in 0..10 {
        let (n, s) = committed(&mut conn, &mut keys, 300).await;
        count += n;
        sum += s;
    }

    let check: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&mut *conn)
        .await
        .expect("integrity check")
        .get(0);
    assert_eq!(check, "ok");
    drop(conn);

    // Another connection, with a cold cache of its own, reads the same.
    let reader = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.read_only(true))
        .await
        .expect("open for reading");
    let row =
        sqlx::query("SELECT count(*), coalesce(sum(k), 0) FROM t INDEXED BY t_k WHERE k >= 0")
            .fetch_one(&reader)
            .await
            .expect("read");
    assert_eq!((row.get::<i64, _>(0), row.get::<i64, _>(1)), (count, sum));
    let row = sqlx::query("SELECT count(*), coalesce(sum(k), 0) FROM t NOT INDEXED")
        .fetch_one(&writer)
        .await
        .expect("read");
    assert_eq!((row.get::<i64, _>(0), row.get::<i64, _>(1)), (count, sum));
}
