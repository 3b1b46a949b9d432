//! `Idempotency-Key`s of ingest requests (`POST /v1/inventory/events`,
//! `POST /v1/returns`), claimed and answered in the transaction that
//! journals their events: on PostgreSQL the request's own, on SQLite the
//! group commit's shared one, where each request's key is decided and
//! answered as if it had committed alone. A request whose key is not new
//! journals nothing.

use std::sync::Arc;

use retail_shared::idempotency::{Begin, InlineClaim, StoredResponse};
use sqlx::{Sqlite, Transaction};

use super::idempotency::{Claim, claim_batch, complete_batch};
use super::ledger::{EventResult, finish_results};

/// The route's answer to an ingest request's results (one per input, in
/// order), as sent and as kept with its key.
pub type IngestRender = Arc<dyn Fn(&[EventResult]) -> StoredResponse + Send + Sync>;

/// A request's key on its way through ingest.
pub(crate) struct IngestKey {
    pub(crate) claim: Claim,
    render: IngestRender,
    /// The inputs' event ids, for results never reached.
    event_ids: Vec<String>,
}

impl std::fmt::Debug for IngestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestKey")
            .field("key", &self.claim.key)
            .finish_non_exhaustive()
    }
}

impl IngestKey {
    /// The claim the middleware left to the route (marked as the route's),
    /// for a request of `event_ids`.
    pub(crate) fn new(claim: &InlineClaim, render: IngestRender, event_ids: Vec<String>) -> Self {
        Self {
            claim: Claim::from(claim.take()),
            render,
            event_ids,
        }
    }

    /// The answer to the request's `results`.
    pub(crate) fn answer(&self, results: &[Option<EventResult>]) -> StoredResponse {
        let finished = finish_results(results.to_vec(), self.event_ids.iter().map(String::as_str));
        (self.render)(&finished)
    }
}

/// What became of a request's key.
#[derive(Debug, Clone)]
pub enum KeyAnswer {
    /// New: the events were journalled and this answer kept with them.
    Kept(StoredResponse),
    /// Not new (a replay, a key reused for another request, a key in
    /// flight): nothing was journalled.
    Key(Begin),
}

/// Claims the keys of a group's requests (`None`: a request without one)
/// in one insert; per request, the decision when its key was not new.
pub(crate) async fn claim_group(
    tx: &mut Transaction<'static, Sqlite>,
    keys: &[Option<&IngestKey>],
) -> Result<Vec<Option<Begin>>, sqlx::Error> {
    let claims: Vec<Claim> = keys.iter().flatten().map(|k| k.claim.clone()).collect();
    if claims.is_empty() {
        return Ok(vec![None; keys.len()]);
    }
    let mut decisions = claim_batch(tx, claims).await?.into_iter();
    Ok(keys
        .iter()
        .map(|key| {
            key.and_then(|_| decisions.next())
                .filter(|decision| *decision != Begin::Started)
        })
        .collect())
}

/// Stores the answers of a group's claimed keys (`answers`: key, answer)
/// in one update.
pub(crate) async fn complete_group(
    tx: &mut Transaction<'static, Sqlite>,
    answers: Vec<(String, StoredResponse)>,
) -> Result<(), sqlx::Error> {
    if !answers.is_empty() {
        complete_batch(tx, answers).await?;
    }
    Ok(())
}
