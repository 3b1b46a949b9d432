//! The SQL `Idempotency-Key` store of process-api (same database as the
//! ledger, so several replicas share it).

use async_trait::async_trait;
use retail_shared::idempotency::{
    Begin, Clock, IdempotencyStore, InlineClaim, StoredResponse, decide,
};
use std::collections::HashSet;

use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::group::BatchKind;
use super::{BeginWrite, Store};
use crate::on_writer;

/// The claim of one key: insert, or on conflict read the row (locked on
/// PostgreSQL) and decide; a claim may replace an expired record or a dead
/// in-flight one.
macro_rules! claim {
    ($tx:ident, $key:expr, $fingerprint:expr, $clock:expr, $select:expr) => {{
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (key, fingerprint, lease_until, expires_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&$key)
        .bind(&$fingerprint)
        .bind($clock.lease_until)
        .bind($clock.expires_at)
        .execute(&mut **$tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            Begin::Started
        } else {
            let row = sqlx::query($select)
                .bind(&$key)
                .fetch_one(&mut **$tx)
                .await?;
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
                $clock.now,
            );
            if decision == Begin::Started {
                sqlx::query(
                    "UPDATE idempotency_keys SET fingerprint = $2, lease_until = $3, \
                     expires_at = $4, response_status = NULL, \
                     response_content_type = NULL, response_body = NULL WHERE key = $1",
                )
                .bind(&$key)
                .bind(&$fingerprint)
                .bind($clock.lease_until)
                .bind($clock.expires_at)
                .execute(&mut **$tx)
                .await?;
            }
            decision
        }
    }};
}

/// A key's row, for deciding on a conflicting claim.
const SELECT: &str = "SELECT fingerprint, lease_until, expires_at, response_status, \
     response_content_type, response_body FROM idempotency_keys WHERE key = $1";

/// [`SELECT`] locking the row (PostgreSQL).
const SELECT_LOCKED: &str = "SELECT fingerprint, lease_until, expires_at, response_status, \
     response_content_type, response_body FROM idempotency_keys WHERE key = $1 FOR UPDATE";

/// Stores a claimed key's answer.
const COMPLETE: &str = "UPDATE idempotency_keys SET response_status = $2, \
     response_content_type = $3, response_body = $4 WHERE key = $1";

/// Claims `claim` inside an open PostgreSQL transaction: the effect's own,
/// so the key, the work and (with [`complete_in_postgres`]) the answer
/// commit together or not at all.
pub(crate) async fn claim_in_postgres(
    tx: &mut Transaction<'_, sqlx::Postgres>,
    claim: &Claim,
) -> Result<Begin, sqlx::Error> {
    let open = tx;
    let (key, fingerprint, clock) = (&claim.key, &claim.fingerprint, claim.clock);
    Ok(claim!(open, key, fingerprint, clock, SELECT_LOCKED))
}

/// Stores a claimed key's answer inside the same open transaction.
pub(crate) async fn complete_in_postgres(
    tx: &mut Transaction<'_, sqlx::Postgres>,
    key: &str,
    response: &StoredResponse,
) -> Result<(), sqlx::Error> {
    sqlx::query(COMPLETE)
        .bind(key)
        .bind(i64::from(response.status))
        .bind(response.content_type.as_deref())
        .bind(response.body.as_slice())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A claim waiting in SQLite's batch.
#[derive(Clone)]
pub(crate) struct Claim {
    pub(crate) key: String,
    pub(crate) fingerprint: String,
    pub(crate) clock: Clock,
}

impl From<&InlineClaim> for Claim {
    fn from(claim: &InlineClaim) -> Self {
        Self {
            key: claim.key.clone(),
            fingerprint: claim.fingerprint.clone(),
            clock: claim.clock,
        }
    }
}

/// Claims on SQLite, a batch at a time.
static CLAIMS: BatchKind<Claim, Begin> = BatchKind {
    queue: |store| &store.write_group().claims,
    run: |tx, _, claims| Box::pin(claim_batch(tx, claims)),
    weight: |_| 1,
    max_weight: 500,
    savepoint: true,
};

/// Stored answers on SQLite, a batch at a time.
static COMPLETIONS: BatchKind<(String, StoredResponse), ()> = BatchKind {
    queue: |store| &store.write_group().completions,
    run: |tx, _, completions| Box::pin(complete_batch(tx, completions)),
    // An answer's body counts by the kibibyte: a run stays a few MiB.
    weight: |(_, response)| 1 + response.body.len() / 1024,
    max_weight: 2_000,
    savepoint: false,
};

/// One insert claims every key that is new; the others (a retry, a replay,
/// a key used twice in the batch) are decided one by one as before. A key
/// twice in the batch: the first claims it, the second finds it in flight.
async fn claim_batch(
    tx: &mut Transaction<'static, Sqlite>,
    claims: Vec<Claim>,
) -> Result<Vec<Begin>, sqlx::Error> {
    let mut qb = QueryBuilder::<Sqlite>::new(
        "INSERT INTO idempotency_keys (key, fingerprint, lease_until, expires_at) ",
    );
    qb.push_values(&claims, |mut row, claim| {
        row.push_bind(claim.key.as_str())
            .push_bind(claim.fingerprint.as_str())
            .push_bind(claim.clock.lease_until)
            .push_bind(claim.clock.expires_at);
    });
    qb.push(" ON CONFLICT (key) DO NOTHING RETURNING key");
    let mut claimed: HashSet<String> = HashSet::with_capacity(claims.len());
    for row in qb.build().fetch_all(&mut **tx).await? {
        claimed.insert(row.try_get(0)?);
    }
    decide_claims(tx, claims, claimed).await
}

/// The decisions on a batch's claims once its insert has claimed the keys
/// in `claimed` (in its transaction): those started, every other one
/// decided from the key's row as [`Store::begin`] would.
pub(crate) async fn decide_claims(
    tx: &mut Transaction<'static, Sqlite>,
    claims: Vec<Claim>,
    mut claimed: HashSet<String>,
) -> Result<Vec<Begin>, sqlx::Error> {
    let mut decisions = Vec::with_capacity(claims.len());
    for Claim {
        key,
        fingerprint,
        clock,
    } in claims
    {
        if claimed.remove(&key) {
            decisions.push(Begin::Started);
        } else {
            decisions.push(claim!(tx, key, fingerprint, clock, SELECT));
        }
    }
    Ok(decisions)
}

/// Stores a batch's answers with one update.
pub(crate) async fn complete_batch(
    tx: &mut Transaction<'static, Sqlite>,
    completions: Vec<(String, StoredResponse)>,
) -> Result<Vec<()>, sqlx::Error> {
    let mut qb = QueryBuilder::<Sqlite>::new("WITH v (k, s, t, b) AS (");
    qb.push_values(&completions, |mut row, (key, response)| {
        row.push_bind(key.as_str())
            .push_bind(i64::from(response.status))
            .push_bind(response.content_type.as_deref())
            .push_bind(response.body.as_slice());
    });
    qb.push(
        ") UPDATE idempotency_keys SET response_status = v.s, response_content_type = v.t, \
         response_body = v.b FROM v WHERE idempotency_keys.key = v.k",
    );
    qb.build().execute(&mut **tx).await?;
    Ok(vec![(); completions.len()])
}

#[async_trait]
impl IdempotencyStore for Store {
    async fn begin(&self, key: &str, fingerprint: &str, clock: Clock) -> anyhow::Result<Begin> {
        let (key, fingerprint) = (key.to_owned(), fingerprint.to_owned());
        let decision = match self.db() {
            // On SQLite a claim rides in a batch of the shared group commit
            // (see `group`): one insert claims every new key of the batch.
            super::Db::Sqlite { .. } => {
                self.batched(
                    &CLAIMS,
                    Claim {
                        key,
                        fingerprint,
                        clock,
                    },
                )
                .await?
            }
            super::Db::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                let open = &mut tx;
                let decision = claim!(open, key, fingerprint, clock, SELECT_LOCKED);
                tx.commit().await?;
                decision
            }
        };
        Ok(decision)
    }

    async fn complete(&self, key: &str, response: &StoredResponse) -> anyhow::Result<()> {
        match self.db() {
            super::Db::Sqlite { .. } => {
                self.batched(&COMPLETIONS, (key.to_owned(), response.clone()))
                    .await?;
            }
            super::Db::Postgres(pool) => {
                sqlx::query(COMPLETE)
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

    /// `POST /v1/reservations` claims its key, reserves and stores its
    /// answer in one transaction, on both backends (see
    /// [`Store::reserve_keyed`](crate::storage::Store::reserve_keyed)).
    fn inline_paths(&self) -> &'static [&'static str] {
        &["/v1/reservations"]
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
