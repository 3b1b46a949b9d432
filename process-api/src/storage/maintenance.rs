//! PostgreSQL table maintenance when the server does none.
//!
//! PostgreSQL plans every statement from table statistics that `ANALYZE`
//! gathers, and reuses the space of updated rows once `VACUUM` has marked
//! it free; its autovacuum daemon does both. A server running with
//! `autovacuum = off` never does either: the journal, positions and outbox
//! grow from empty with no statistics, the planner keeps choosing
//! sequential scans for the ingest and feed statements, and every batch
//! gets slower as the tables grow (measured: 8,000–9,000 events/s falling
//! through a run; 13,600 rising, with the tables analysed as they grew).
//!
//! So process-api looks after its own tables when autovacuum is off (or
//! always, if configured): every few seconds it reads the server's
//! per-table counters (`pg_stat_user_tables`, this schema only) and applies
//! autovacuum's default rules: `ANALYZE` a table once more than 50 + 10 %
//! of its rows changed since the last analysis, `VACUUM` it once more than
//! 50 + 20 % of its rows are dead or 1,000 + 20 % were inserted since the
//! last vacuum. One replica at a time (a session advisory lock per schema), on one
//! connection outside any transaction (`VACUUM` cannot run in one). Both
//! run beside the platform's writes: neither locks out reads or writes.

use sqlx::Row as _;

use retail_shared::config::TableMaintenance;

use super::{Db, Store};

/// The advisory lock of table maintenance: this class ("rmnt") and the
/// schema's hash (several platforms may share one database).
pub const LOCK_CLASS: i32 = 0x726d_6e74;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Whether the pass ran (PostgreSQL, autovacuum off or forced, and this
    /// replica held the lock).
    pub ran: bool,
    /// Tables analysed.
    pub analyzed: Vec<String>,
    /// Tables vacuumed.
    pub vacuumed: Vec<String>,
}

impl Store {
    /// Whether the PostgreSQL server runs autovacuum (`None` on SQLite).
    pub async fn autovacuum_on(&self) -> Result<Option<bool>, sqlx::Error> {
        match self.db() {
            Db::Postgres(pool) => {
                let on: bool = sqlx::query_scalar("SELECT current_setting('autovacuum') = 'on'")
                    .fetch_one(pool)
                    .await?;
                Ok(Some(on))
            }
            Db::Sqlite { .. } => Ok(None),
        }
    }

    /// One maintenance pass (see the module docs); nothing on SQLite.
    pub async fn maintain_tables(
        &self,
        mode: TableMaintenance,
    ) -> Result<Maintenance, sqlx::Error> {
        let Db::Postgres(pool) = self.db() else {
            return Ok(Maintenance::default());
        };
        if mode == TableMaintenance::Off
            || (mode == TableMaintenance::Auto && self.autovacuum_on().await? == Some(true))
        {
            return Ok(Maintenance::default());
        }
        let mut connection = pool.acquire().await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext(current_schema()))")
                .bind(LOCK_CLASS)
                .fetch_one(&mut *connection)
                .await?;
        if !locked {
            return Ok(Maintenance::default());
        }
        let outcome = async {
            let rows = sqlx::query(
                "SELECT relname, n_live_tup, n_dead_tup, n_mod_since_analyze, \
                 n_ins_since_vacuum FROM pg_stat_user_tables \
                 WHERE schemaname = current_schema() ORDER BY relname",
            )
            .fetch_all(&mut *connection)
            .await?;
            let schema: String = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&mut *connection)
                .await?;
            let mut done = Maintenance {
                ran: true,
                ..Maintenance::default()
            };
            for row in rows {
                let table: String = row.try_get(0)?;
                let live: i64 = row.try_get(1)?;
                let dead: i64 = row.try_get(2)?;
                let changed: i64 = row.try_get(3)?;
                let inserted: i64 = row.try_get(4)?;
                let name = format!("{}.{}", quote(&schema), quote(&table));
                if dead > 50 + live / 5 || inserted > 1000 + live / 5 {
                    // Analyses too: one pass over the table for both.
                    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {name}")))
                        .execute(&mut *connection)
                        .await?;
                    done.vacuumed.push(table.clone());
                    done.analyzed.push(table);
                } else if changed > 50 + live / 10 {
                    sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {name}")))
                        .execute(&mut *connection)
                        .await?;
                    done.analyzed.push(table);
                }
            }
            Ok::<_, sqlx::Error>(done)
        }
        .await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, hashtext(current_schema()))")
            .bind(LOCK_CLASS)
            .execute(&mut *connection)
            .await;
        if unlocked.is_err() {
            // A connection that may still hold the lock must not go back
            // to the pool.
            connection.detach();
        }
        outcome
    }
}

/// A quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("journal"), "\"journal\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
