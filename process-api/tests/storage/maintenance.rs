//! PostgreSQL table maintenance: tables past autovacuum's thresholds are
//! analysed (the planner gets statistics), one replica at a time; nothing
//! happens on SQLite.

use std::time::{Duration, Instant};

use process_api::storage::Store;
use process_api::storage::maintenance::Maintenance;
use retail_shared::config::TableMaintenance;
use sqlx::Connection;

use crate::backends;
use crate::reservations::{receive, seed};

async fn reltuples(url: &str, table: &str) -> f32 {
    let mut connection = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar(
        "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relname = $1",
    )
    .bind(table)
    .fetch_one(&mut connection)
    .await
    .expect("reltuples")
}

#[tokio::test]
async fn changed_tables_get_statistics_and_sqlite_needs_nothing() {
    for t in backends::all().await {
        if t.name == "sqlite" {
            let done = t
                .store
                .maintain_tables(TableMaintenance::Always)
                .await
                .expect("maintain");
            assert_eq!(done, Maintenance::default());
        }
    }
    let Some(base) = backends::postgres_url() else {
        return;
    };
    let url = backends::fresh_postgres_url(&base).await;
    let store = Store::connect(&url, 4).await.expect("store");
    // Never analysed: the planner has no statistics.
    assert!(reltuples(&url, "journal").await < 0.0);
    let locations = ["L1", "L2", "L3", "L4"];
    let skus: Vec<String> = (0..30).map(|n| format!("K{n}")).collect();
    let sku_refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    seed(&store, &locations, &sku_refs, 0).await;
    for (n, sku) in skus.iter().enumerate() {
        for location in locations {
            receive(&store, &format!("e-{n}-{location}"), location, sku, 2).await;
        }
    }
    // Off does nothing, whatever the tables look like.
    assert_eq!(
        store
            .maintain_tables(TableMaintenance::Off)
            .await
            .expect("maintain"),
        Maintenance::default()
    );
    // The server publishes its per-table counters within seconds.
    let started = Instant::now();
    let done = loop {
        let done = store
            .maintain_tables(TableMaintenance::Always)
            .await
            .expect("maintain");
        assert!(done.ran, "{done:?}");
        if done.analyzed.iter().any(|table| table == "journal") {
            break done;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "journal never analysed: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        done.analyzed.iter().all(|table| table != "feed_state"),
        "unchanged tables are left alone: {done:?}"
    );
    assert!((reltuples(&url, "journal").await - 120.0).abs() < 1.0);
    assert!(reltuples(&url, "positions").await >= 120.0 - 1.0);
}

#[tokio::test]
async fn one_replica_maintains_at_a_time() {
    let Some(base) = backends::postgres_url() else {
        return;
    };
    let url = backends::fresh_postgres_url(&base).await;
    let a = Store::connect(&url, 4).await.expect("a");
    let b = Store::connect(&url, 4).await.expect("b");
    // Replica b holds the maintenance lock on a connection of its own.
    let mut holder = sqlx::PgConnection::connect(&url).await.expect("connect");
    let class = process_api::storage::maintenance::LOCK_CLASS;
    let held: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext(current_schema()))")
            .bind(class)
            .fetch_one(&mut holder)
            .await
            .expect("lock");
    assert!(held);
    let done = a
        .maintain_tables(TableMaintenance::Always)
        .await
        .expect("maintain");
    assert!(!done.ran, "{done:?}");
    sqlx::query("SELECT pg_advisory_unlock($1, hashtext(current_schema()))")
        .bind(class)
        .execute(&mut holder)
        .await
        .expect("unlock");
    assert!(
        b.maintain_tables(TableMaintenance::Always)
            .await
            .expect("maintain")
            .ran
    );
}
