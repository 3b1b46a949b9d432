//! The SQL `Idempotency-Key` store of process-api (same database as the
//! ledger, so several replicas share it).

use async_trait::async_trait;
use retail_shared::idempotency::{
    Begin, Clock, IdempotencyStore, InlineClaim, StoredResponse, decide,
};
use std::collections::HashSet;
use std::future::Future;

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

/// Claiming a key and storing its answer inside an open write transaction
/// of either backend: the transaction of the effect the key guards.
pub(crate) trait KeyTx: Send {
    /// Claims `claim` ([`Begin::Started`] when the effect is to run).
    fn claim_key(
        &mut self,
        claim: &Claim,
    ) -> impl Future<Output = Result<Begin, sqlx::Error>> + Send;
    /// Stores the answer of a key claimed in this transaction.
    fn complete_key(
        &mut self,
        key: &str,
        response: &StoredResponse,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl KeyTx for Transaction<'static, Sqlite> {
    async fn claim_key(&mut self, claim: &Claim) -> Result<Begin, sqlx::Error> {
        let open = self;
        let (key, fingerprint, clock) = (&claim.key, &claim.fingerprint, claim.clock);
        Ok(claim!(open, key, fingerprint, clock, SELECT))
    }

    async fn complete_key(
        &mut self,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(COMPLETE)
            .bind(key)
            .bind(i64::from(response.status))
            .bind(response.content_type.as_deref())
            .bind(response.body.as_slice())
            .execute(&mut **self)
            .await?;
        Ok(())
    }
}

impl KeyTx for Transaction<'static, sqlx::Postgres> {
    async fn claim_key(&mut self, claim: &Claim) -> Result<Begin, sqlx::Error> {
        claim_in_postgres(self, claim).await
    }

    async fn complete_key(
        &mut self,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), sqlx::Error> {
        complete_in_postgres(self, key, response).await
    }
}

/// An `Idempotency-Key` to claim in the transaction of the effect it
/// guards, with the route's answer to the effect's outcome: the claim, the
/// effect and the answer commit together or not at all (see
/// [`keyed_transact!`](crate::keyed_transact)).
pub struct KeyedWrite<'a, T> {
    pub(crate) claim: Claim,
    pub(crate) render: &'a (dyn Fn(&T) -> StoredResponse + Send + Sync),
}

impl<'a, T> KeyedWrite<'a, T> {
    /// The claim the middleware left to the route, marked as the route's
    /// (see [`InlineClaim::take`]), answered with `render`.
    pub fn new(
        claim: &InlineClaim,
        render: &'a (dyn Fn(&T) -> StoredResponse + Send + Sync),
    ) -> Self {
        Self {
            claim: Claim::from(claim.take()),
            render,
        }
    }
}

/// What a write guarded by an `Idempotency-Key` comes to.
#[derive(Debug)]
pub enum Keyed<T> {
    /// The key was new (or there was none): the effect ran, and when it
    /// committed under a key, its stored answer is here.
    Decided(T, Option<StoredResponse>),
    /// The key was not new (a replay, a key reused for another request or
    /// still in flight): nothing ran.
    Key(Begin),
}

impl<T> Keyed<T> {
    /// The outcome of a write made without a key (which always decides).
    pub fn unkeyed(self) -> Result<T, sqlx::Error> {
        match self {
            Self::Decided(value, _) => Ok(value),
            Self::Key(_) => Err(sqlx::Error::Protocol(
                "a write without a key came back undecided".into(),
            )),
        }
    }
}

/// [`transact!`](crate::transact) with an optional [`KeyedWrite`]: the key
/// is claimed first in the transaction; a key that is not new ends it
/// with [`Keyed::Key`] and nothing done; otherwise `$body` runs and, when
/// it commits, its value's answer is stored with it. A body that does not
/// commit leaves the key unclaimed (its answer changed nothing, and the
/// middleware keeps it as any other).
#[macro_export]
macro_rules! keyed_transact {
    ($store:expr, $keyed:expr, $sqlite:ident, $postgres:ident, |$tx:ident, $backend:ident| $body:expr) => {{
        use $crate::storage::idempotency::{KeyTx as _, Keyed};
        let keyed: Option<&$crate::storage::idempotency::KeyedWrite<'_, _>> = $keyed;
        $crate::transact!($store, $sqlite, $postgres, |$tx, $backend| {
            let decision = match keyed {
                Some(k) => Some($tx.claim_key(&k.claim).await?),
                None => None,
            };
            match decision {
                Some(decision) if decision != retail_shared::idempotency::Begin::Started => {
                    (Keyed::Key(decision), false)
                }
                _ => {
                    let (value, commit) = $body;
                    let mut stored = None;
                    if commit && let Some(k) = keyed {
                        let answer = (k.render)(&value);
                        $tx.complete_key(&k.claim.key, &answer).await?;
                        stored = Some(answer);
                    }
                    (Keyed::Decided(value, stored), commit)
                }
            }
        })
    }};
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
pub(crate) async fn claim_batch(
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

    /// The routes that claim their key, make their change and store their
    /// answer in one transaction, on both backends (see
    /// [`crate::routes::keyed`]).
    fn inline_paths(&self) -> &'static [&'static str] {
        crate::routes::keyed::INLINE_PATHS
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
