//! The SQL `Idempotency-Key` store of process-api (same database as the
//! ledger, so several replicas share it).

use async_trait::async_trait;
use retail_shared::idempotency::{Begin, Clock, IdempotencyStore, StoredResponse, decide};
use sqlx::Row;

use super::{Backend, BeginWrite, Store};
use crate::on_writer;

#[async_trait]
impl IdempotencyStore for Store {
    async fn begin(&self, key: &str, fingerprint: &str, clock: Clock) -> anyhow::Result<Begin> {
        // Claim by insert; on conflict read the row (locked on PostgreSQL)
        // and decide; a claim may replace an expired record or a dead
        // in-flight one.
        let select = match self.backend() {
            Backend::Sqlite => {
                "SELECT fingerprint, lease_until, expires_at, response_status, \
                 response_content_type, response_body FROM idempotency_keys WHERE key = $1"
            }
            Backend::Postgres => {
                "SELECT fingerprint, lease_until, expires_at, response_status, \
                 response_content_type, response_body FROM idempotency_keys WHERE key = $1 \
                 FOR UPDATE"
            }
        };
        // The claim: on SQLite a write of the shared group commit (see
        // `group`), so a burst of requests shares one WAL sync. It needs no
        // savepoint: its insert either claims or changes nothing, and the
        // update that may follow is a single statement.
        macro_rules! claim {
            ($tx:ident, $key:ident, $fingerprint:ident) => {{
                let inserted = sqlx::query(
                    "INSERT INTO idempotency_keys (key, fingerprint, lease_until, expires_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
                )
                .bind(&$key)
                .bind(&$fingerprint)
                .bind(clock.lease_until)
                .bind(clock.expires_at)
                .execute(&mut **$tx)
                .await?
                .rows_affected();
                if inserted == 1 {
                    Begin::Started
                } else {
                    let row = sqlx::query(select).bind(&$key).fetch_one(&mut **$tx).await?;
                    let stored: String = row.try_get("fingerprint")?;
                    let status: Option<i64> = row.try_get("response_status")?;
                    let response = match status {
                        Some(status) => Some(StoredResponse {
                            status: u16::try_from(status).unwrap_or(200),
                            content_type: row.try_get("response_content_type")?,
                            body: row
                                .try_get::<Option<Vec<u8>>, _>("response_body")?
                                .unwrap_or_default(),
                        }),
                        None => None,
                    };
                    let decision = decide(
                        Some((
                            stored.as_str(),
                            response,
                            row.try_get("lease_until")?,
                            row.try_get("expires_at")?,
                        )),
                        &$fingerprint,
                        clock.now,
                    );
                    if decision == Begin::Started {
                        sqlx::query(
                            "UPDATE idempotency_keys SET fingerprint = $2, lease_until = $3, \
                             expires_at = $4, response_status = NULL, \
                             response_content_type = NULL, response_body = NULL WHERE key = $1",
                        )
                        .bind(&$key)
                        .bind(&$fingerprint)
                        .bind(clock.lease_until)
                        .bind(clock.expires_at)
                        .execute(&mut **$tx)
                        .await?;
                    }
                    decision
                }
            }};
        }
        let (key, fingerprint) = (key.to_owned(), fingerprint.to_owned());
        let decision = match self.db() {
            super::Db::Sqlite { .. } => {
                self.grouped_atomic(move |tx| {
                    Box::pin(
                        async move { Ok::<_, sqlx::Error>((claim!(tx, key, fingerprint), true)) },
                    )
                })
                .await?
            }
            super::Db::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                let open = &mut tx;
                let decision = claim!(open, key, fingerprint);
                tx.commit().await?;
                decision
            }
        };
        Ok(decision)
    }

    async fn complete(&self, key: &str, response: &StoredResponse) -> anyhow::Result<()> {
        const UPDATE: &str = "UPDATE idempotency_keys SET response_status = $2, \
             response_content_type = $3, response_body = $4 WHERE key = $1";
        match self.db() {
            super::Db::Sqlite { .. } => {
                let (key, response) = (key.to_owned(), response.clone());
                self.grouped_atomic(move |tx| {
                    Box::pin(async move {
                        sqlx::query(UPDATE)
                            .bind(&key)
                            .bind(i64::from(response.status))
                            .bind(response.content_type.as_deref())
                            .bind(response.body.as_slice())
                            .execute(&mut **tx)
                            .await?;
                        Ok(((), true))
                    })
                })
                .await?;
            }
            super::Db::Postgres(pool) => {
                sqlx::query(UPDATE)
                    .bind(key)
                    .bind(i64::from(response.status))
                    .bind(response.content_type.as_deref())
                    .bind(response.body.as_slice())
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn abandon(&self, key: &str) -> anyhow::Result<()> {
        on_writer!(self.db(), |pool| {
            sqlx::query("DELETE FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }
}

impl Store {
    /// Forgets idempotency records past their retention.
    pub async fn purge_idempotency_keys(&self, now: i64) -> Result<u64, sqlx::Error> {
        on_writer!(self.db(), |pool| {
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < $1")
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
    }
}
