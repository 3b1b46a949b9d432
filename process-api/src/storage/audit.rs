//! The SQL audit sink of process-api.

use async_trait::async_trait;
use retail_shared::audit::{AuditEntry, AuditQuery, AuditSink};
use sqlx::Row;

use super::{BeginWrite, Store, micros_to_rfc3339};
use crate::{on_reader, on_writer};

#[async_trait]
impl AuditSink for Store {
    async fn record(&self, entries: &[AuditEntry]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // `committer` is SQLite's alone.
        if self.committer().is_some() {
            // On SQLite the entries ride in the next shared transaction of
            // the small writes (see `group`): a transaction of their own
            // made reservations wait for the writer and its WAL sync.
            let entries = entries.to_vec();
            let write: super::group::GroupedWrite<()> = Box::new(move |tx| {
                Box::pin(async move {
                    insert(&entries).build().execute(&mut **tx).await?;
                    Ok(Some(()))
                })
            });
            self.grouped(write, false).await?;
            return Ok(());
        }
        on_writer!(self.db(), |pool| async {
            let mut tx = pool.begin_write().await?;
            insert(entries).build().execute(&mut *tx).await?;
            tx.commit().await
        }
        .await)?;
        Ok(())
    }

    async fn query(&self, query: &AuditQuery, limit: u32) -> anyhow::Result<Vec<AuditEntry>> {
        let rows = on_reader!(self.db(), |pool| {
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT id, at, service, actor, client, method, path, status, request_id, \
                 trace_id FROM audit_log WHERE id > ",
            );
            qb.push_bind(query.after.unwrap_or(0));
            if let Some(actor) = &query.actor {
                qb.push(" AND actor = ").push_bind(actor.as_str());
            }
            if let Some(request_id) = &query.request_id {
                qb.push(" AND request_id = ").push_bind(request_id.as_str());
            }
            qb.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
            qb.build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let at: i64 = row.try_get("at")?;
                    Ok(AuditEntry {
                        id: row.try_get("id")?,
                        at_micros: at,
                        at: micros_to_rfc3339(at),
                        service: row.try_get("service")?,
                        actor: row.try_get("actor")?,
                        client: row.try_get("client")?,
                        method: row.try_get("method")?,
                        path: row.try_get("path")?,
                        status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
                        request_id: row.try_get("request_id")?,
                        trace_id: row.try_get("trace_id")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }
}

impl Store {
    /// Deletes the audit entries recorded before `before` (unix µs): the
    /// log's retention. Entries are found by id (ids grow with time), so a
    /// pass reads only what it deletes and the first entry it keeps.
    pub async fn prune_audit(&self, before: i64) -> Result<u64, sqlx::Error> {
        on_writer!(self.db(), |pool| {
            sqlx::query(
                "DELETE FROM audit_log WHERE id < COALESCE(\
                 (SELECT id FROM audit_log WHERE at >= $1 ORDER BY id LIMIT 1), \
                 (SELECT COALESCE(MAX(id), 0) + 1 FROM audit_log))",
            )
            .bind(before)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
    }
}

/// The insert of `entries` into the audit log.
fn insert<DB: sqlx::Database>(entries: &[AuditEntry]) -> sqlx::QueryBuilder<DB>
where
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::new(
        "INSERT INTO audit_log (at, service, actor, client, method, path, status, \
         request_id, trace_id) ",
    );
    qb.push_values(entries, |mut row, e| {
        row.push_bind(e.at_micros)
            .push_bind(e.service.as_str())
            .push_bind(e.actor.as_str())
            .push_bind(e.client.as_str())
            .push_bind(e.method.as_str())
            .push_bind(e.path.as_str())
            .push_bind(i64::from(e.status))
            .push_bind(e.request_id.as_str())
            .push_bind(e.trace_id.as_str());
    });
    qb
}
