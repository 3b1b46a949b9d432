//! Fresh, isolated stores for each test: a temp SQLite file, and a new
//! PostgreSQL schema (via the connection's `search_path`) when
//! `TEST_POSTGRES_URL` is set.

use process_api::storage::Store;

/// A store plus what keeps it alive (the temp dir).
pub struct TestStore {
    pub name: &'static str,
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL URL of the test server, when one is configured.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // Straight to the stream (not `eprintln!`, which the test harness
            // captures), once per test binary.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "note: PostgreSQL tests skip: TEST_POSTGRES_URL is not set"
                );
            });
            None
        }
    }
}

/// A URL whose connections live in a brand-new schema of the test database.
pub async fn fresh_postgres_url(base: &str) -> String {
    use sqlx::Connection;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to TEST_POSTGRES_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut connection)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// One fresh store per available backend.
pub async fn all() -> Vec<TestStore> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("process.db").display());
    let mut stores = vec![TestStore {
        name: "sqlite",
        store: Store::connect(&url, 4).await.expect("sqlite store"),
        _dir: Some(dir),
    }];
    if let Some(base) = postgres_url() {
        let url = fresh_postgres_url(&base).await;
        stores.push(TestStore {
            name: "postgres",
            store: Store::connect(&url, 8).await.expect("postgres store"),
            _dir: None,
        });
    }
    stores
}

/// Per backend: two stores on one database (two replicas) and a third
/// store on a separate database (the single-replica control).
pub async fn replica_pairs() -> Vec<(Store, Store, Store)> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = format!("sqlite://{}", dir.path().join("shared.db").display());
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    out.push((
        Store::connect(&shared, 4).await.expect("replica a"),
        Store::connect(&shared, 4).await.expect("replica b"),
        Store::connect(&control, 4).await.expect("control"),
    ));
    // The directory must outlive the stores; tests are short.
    std::mem::forget(dir);
    if let Some(base) = postgres_url() {
        let shared = fresh_postgres_url(&base).await;
        let control = fresh_postgres_url(&base).await;
        out.push((
            Store::connect(&shared, 8).await.expect("replica a"),
            Store::connect(&shared, 8).await.expect("replica b"),
            Store::connect(&control, 8).await.expect("control"),
        ));
    }
    out
}
