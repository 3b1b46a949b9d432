//! The ledger's storage: batch ingest, parked events, the journal,
//! positions, the outbox and rebuild.
//!
//! One request batch is one transaction and a handful of statements,
//! whatever its size: master data is looked up with one `IN` query per
//! table, positions are created, locked and read with one statement each,
//! and journal rows, position updates, parked events and outbox rows are
//! written as multi-row inserts. Only a count that becomes a position's
//! latest costs an extra query (the sum of the journalled deltas after it).
//!
//! Concurrency: on SQLite every write goes through the single writer
//! connection, and requests that wait for it share its next transaction
//! (group commit, see `GroupCommit`). On PostgreSQL the positions a batch touches are locked
//! (`SELECT … FOR UPDATE`, in key order) *before* duplicates are checked,
//! so two replicas handling the same event serialise on its position and
//! the second sees the first's journal row; deadlocks and serialisation
//! failures are retried.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use utoipa::ToSchema;

use retail_shared::idempotency::{Begin, InlineClaim};

use super::idempotency::{Keyed, claim_in_postgres, complete_in_postgres};
use super::ingest_keys::{self, IngestKey, IngestRender, KeyAnswer};
use super::{BeginWrite, Db, Store, in_list, micros_to_rfc3339};
use crate::inventory::event::{EVENT_ID_CONFLICT, Event, EventInput, EventType};
use crate::inventory::position::{CountMark, PositionFigures, PositionState, resolve_safety_stock};
use crate::inventory::rebuild::{JournalFact, Key, Rebuilder};

/// Who sent a batch, for the journal.
#[derive(Debug, Clone)]
pub struct IngestContext {
    /// The acting principal (end user behind a service token).
    pub actor: String,
    /// Request id.
    pub request_id: String,
    /// W3C trace id.
    pub trace_id: String,
    /// The request's span (the parent of spans of work done later on its
    /// behalf, such as its ERP postings); `None` for background work.
    pub span_id: Option<String>,
}

/// Per-event outcome (pinned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Journalled; positions updated.
    Applied,
    /// Seen before (journalled or parked): nothing changed.
    Duplicate,
    /// Unknown sku or location: kept and retried when master data arrives.
    Parked,
    /// Invalid: not kept.
    Rejected,
}

/// The result of one event of a batch.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventResult {
    /// The event's id as sent.
    pub event_id: String,
    /// Outcome.
    pub status: EventStatus,
    /// Why, for parked, rejected and duplicate events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A valid event on its way into the ledger.
#[derive(Debug, Clone)]
struct Candidate {
    index: usize,
    event: Event,
    /// [`Event::fingerprint`], stored with the event.
    fingerprint: String,
    /// The event as sent, kept only if it is parked.
    input: EventInput,
    actor: String,
    request_id: String,
    trace_id: String,
    span_id: Option<String>,
}

/// Counts of one applied batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Events journalled.
    pub applied: usize,
    /// Events seen before.
    pub duplicate: usize,
    /// Events parked.
    pub parked: usize,
    /// Positions written.
    pub positions: usize,
}

/// A journal entry as operators read it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JournalEntry {
    /// Position in the journal (the paging cursor).
    pub seq: i64,
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub r#type: String,
    /// Location.
    pub location_id: String,
    /// SKU.
    pub sku: String,
    /// Quantity as sent.
    pub quantity: i64,
    /// Event time.
    pub occurred_at: String,
    /// Arrival time.
    pub received_at: String,
    /// Producing system.
    pub source: String,
    /// Business reference.
    pub reference: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// Transfer counterparty.
    pub counterparty_location_id: Option<String>,
    /// Return disposition.
    pub disposition: Option<String>,
    /// Change to on_hand this event caused when it arrived (0 when a later
    /// count already reflected it; for a count, the correction it made).
    pub on_hand_change: i64,
    /// Change to the unsellable sum.
    pub unsellable_change: i64,
    /// Unit cost at ingest (enrichment from master data).
    pub unit_cost: Option<String>,
    /// Currency of the unit cost.
    pub currency: Option<String>,
    /// Location type at ingest.
    pub location_type: Option<String>,
    /// Who sent it.
    pub actor: String,
    /// Request id of the ingest.
    pub request_id: String,
    /// Trace id of the ingest.
    pub trace_id: String,
}

/// Journal filters.
#[derive(Debug, Clone, Default)]
pub struct JournalQuery {
    /// Location.
    pub location_id: Option<String>,
    /// SKU.
    pub sku: Option<String>,
    /// occurred_at ≥ from (unix µs).
    pub from: Option<i64>,
    /// occurred_at < to (unix µs).
    pub to: Option<i64>,
    /// seq > after.
    pub after: Option<i64>,
    /// seq < before.
    pub before: Option<i64>,
    /// Newest first.
    pub newest_first: bool,
    /// Page size.
    pub limit: u32,
}

/// A parked event as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ParkedEvent {
    /// Event id.
    pub event_id: String,
    /// Why it waits.
    pub reason: String,
    /// When it was parked.
    pub parked_at: String,
    /// The event as sent.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// A position with its pinned figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PositionRecord {
    /// Location.
    pub location_id: String,
    /// SKU.
    pub sku: String,
    /// The figures.
    #[serde(flatten)]
    pub figures: PositionFigures,
    /// Last change.
    pub updated_at: String,
    /// Latest event time seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<String>,
}

/// What a rebuild found (and did).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RebuildReport {
    /// Journal entries replayed.
    pub events: u64,
    /// Positions rebuilt.
    pub positions: u64,
    /// Live positions that differed from the rebuild.
    pub mismatches: u64,
    /// Up to 20 differing positions (`location_id/sku`).
    pub examples: Vec<String>,
    /// Whether the rebuilt positions were written.
    pub written: bool,
}

/// Which positions a read wants.
enum PositionFilter<'a> {
    /// Some skus, optionally only at some locations.
    Skus {
        skus: &'a [String],
        locations: Option<&'a [String]>,
    },
    /// A page of one location's positions.
    Location {
        location_id: &'a str,
        after: &'a str,
        limit: u32,
    },
}

/// Events one grouped SQLite transaction takes at most.
const GROUP_EVENTS: usize = 2_000;

/// Group commit for SQLite's single writer. Ingest requests that arrive
/// while the writer is busy wait here, and the next transaction takes all
/// of them (up to [`GROUP_EVENTS`] events): one commit, one WAL sync and
/// one pass over shared pages for several requests. Each request still
/// gets its own results and its own `ingest_batches` row, exactly as if it
/// had committed alone; two requests carrying the same event id never
/// share a transaction, so the second one finds the first's journal row.
/// A failed group is retried batch by batch. PostgreSQL needs none of
/// this: its replicas write concurrently.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    waiting: std::sync::Mutex<std::collections::VecDeque<Job>>,
    /// Held by the task committing; the others queue behind it.
    turn: tokio::sync::Mutex<()>,
    /// Transactions committed and request batches they carried.
    transactions: std::sync::atomic::AtomicU64,
    batches: std::sync::atomic::AtomicU64,
}

type JobAnswer = Result<(Vec<Option<EventResult>>, BatchSummary, Option<KeyAnswer>), sqlx::Error>;

/// One request's batch waiting for the writer.
#[derive(Debug)]
struct Job {
    candidates: Vec<Candidate>,
    results: Vec<Option<EventResult>>,
    now: i64,
    reply: tokio::sync::oneshot::Sender<JobAnswer>,
    /// Its `Idempotency-Key`, claimed and answered in the transaction.
    key: Option<IngestKey>,
}

/// One job's place in a [`Group`].
#[derive(Debug)]
struct Part {
    /// Its first result.
    offset: usize,
    results: usize,
    candidates: usize,
    reply: tokio::sync::oneshot::Sender<JobAnswer>,
    key: Option<IngestKey>,
}

impl GroupCommit {
    fn push(&self, job: Job) {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(job);
    }

    /// The oldest waiting jobs that fit one transaction: at most
    /// [`GROUP_EVENTS`] events (the first job always), no event id twice.
    fn take(&self) -> Vec<Job> {
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut taken: Vec<Job> = Vec::new();
        let mut ids: HashSet<String> = HashSet::new();
        let mut events = 0;
        while let Some(job) = waiting.front() {
            let fits = taken.is_empty()
                || (events + job.candidates.len() <= GROUP_EVENTS
                    && job
                        .candidates
                        .iter()
                        .all(|c| !ids.contains(&c.event.event_id)));
            if !fits {
                break;
            }
            let Some(job) = waiting.pop_front() else {
                break;
            };
            events += job.candidates.len();
            ids.extend(job.candidates.iter().map(|c| c.event.event_id.clone()));
            taken.push(job);
        }
        taken
    }
}

/// Waiting jobs joined into one batch: candidate indexes are shifted so
/// that they address the joined results.
struct Group {
    candidates: Vec<Candidate>,
    results: Vec<Option<EventResult>>,
    now: i64,
    parts: Vec<Part>,
}

impl Group {
    fn join(jobs: Vec<Job>) -> Self {
        let mut group = Group {
            candidates: Vec::new(),
            results: Vec::new(),
            now: jobs.iter().map(|job| job.now).max().unwrap_or_default(),
            parts: Vec::with_capacity(jobs.len()),
        };
        for job in jobs {
            let offset = group.results.len();
            group.parts.push(Part {
                offset,
                results: job.results.len(),
                candidates: job.candidates.len(),
                reply: job.reply,
                key: job.key,
            });
            group.results.extend(job.results);
            group
                .candidates
                .extend(job.candidates.into_iter().map(|mut candidate| {
                    candidate.index += offset;
                    candidate
                }));
        }
        group
    }

    /// Back into the jobs, for committing them one by one; the results the
    /// failed transaction wrote are cleared (rejections made before it stay).
    fn split(mut self) -> Vec<Job> {
        for candidate in &self.candidates {
            if let Some(result) = self.results.get_mut(candidate.index) {
                *result = None;
            }
        }
        let mut candidates = self.candidates.into_iter();
        let mut results = self.results.into_iter();
        self.parts
            .into_iter()
            .map(|part| Job {
                candidates: candidates
                    .by_ref()
                    .take(part.candidates)
                    .map(|mut candidate| {
                        candidate.index -= part.offset;
                        candidate
                    })
                    .collect(),
                results: results.by_ref().take(part.results).collect(),
                now: self.now,
                reply: part.reply,
                key: part.key,
            })
            .collect()
    }

    /// Sends each job its results, its own counts and what became of its
    /// key (`keys`, per job).
    fn answer(self, keys: Vec<Option<KeyAnswer>>) {
        let mut candidates = self.candidates.into_iter();
        let mut results = self.results.into_iter();
        for (part, key) in self.parts.into_iter().zip(keys) {
            let (offset, reply) = (part.offset, part.reply);
            let mine: Vec<Option<EventResult>> = results.by_ref().take(part.results).collect();
            let mut summary = BatchSummary::default();
            for result in mine.iter().flatten() {
                match result.status {
                    EventStatus::Applied => summary.applied += 1,
                    EventStatus::Duplicate => summary.duplicate += 1,
                    EventStatus::Parked => summary.parked += 1,
                    EventStatus::Rejected => {}
                }
            }
            let positions: HashSet<(String, String)> = candidates
                .by_ref()
                .take(part.candidates)
                .filter(|candidate| {
                    matches!(
                        mine.get(candidate.index - offset),
                        Some(Some(EventResult {
                            status: EventStatus::Applied,
                            ..
                        }))
                    )
                })
                .flat_map(|candidate| {
                    let sku = candidate.event.sku;
                    let counterparty = candidate
                        .event
                        .counterparty_location_id
                        .map(|location| (location, sku.clone()));
                    std::iter::once((candidate.event.location_id, sku)).chain(counterparty)
                })
                .collect();
            summary.positions = positions.len();
            let _ = reply.send(Ok((mine, summary, key)));
        }
    }

    fn fail(self, error: sqlx::Error) {
        let message = error.to_string();
        let mut error = Some(error);
        for part in self.parts {
            let error = error
                .take()
                .unwrap_or_else(|| sqlx::Error::Protocol(message.clone()));
            let _ = part.reply.send(Err(error));
        }
    }
}

/// Applies a group's batches in one SQLite write transaction and commits.
/// The writes waiting to go last in the small writes' shared transaction
/// (the change feed's numbering, see `group`) ride at its end: under a
/// stream of ingest they would otherwise each take the writer for a
/// transaction and a WAL sync of their own.
///
/// The batches' `Idempotency-Key`s are claimed first in the same
/// transaction (see `ingest_keys`); a batch whose key is not new journals
/// nothing, and each claimed key gets its batch's answer before the
/// commit. Returns what became of each batch's key.
async fn apply_in_transaction(
    store: &Store,
    writer: &sqlx::SqlitePool,
    group: &mut Group,
) -> Result<Vec<Option<KeyAnswer>>, sqlx::Error> {
    let mut tx = writer.begin_write().await?;
    let keys: Vec<Option<&IngestKey>> = group.parts.iter().map(|p| p.key.as_ref()).collect();
    let refused = ingest_keys::claim_group(&mut tx, &keys).await?;
    if refused.iter().all(Option::is_none) {
        let candidates = &group.candidates;
        sqlite_ledger::apply(
            &mut tx,
            store.master_cache(),
            candidates,
            &mut group.results,
            group.now,
        )
        .await?;
    } else {
        // Rare (a retry answered from its key): the other batches' events
        // only.
        let skipped: Vec<std::ops::Range<usize>> = group
            .parts
            .iter()
            .zip(&refused)
            .filter(|(_, refused)| refused.is_some())
            .map(|(part, _)| part.offset..part.offset + part.results)
            .collect();
        let runnable: Vec<Candidate> = group
            .candidates
            .iter()
            .filter(|c| !skipped.iter().any(|range| range.contains(&c.index)))
            .cloned()
            .collect();
        sqlite_ledger::apply(
            &mut tx,
            store.master_cache(),
            &runnable,
            &mut group.results,
            group.now,
        )
        .await?;
    }
    let mut answers = Vec::with_capacity(group.parts.len());
    let mut kept = Vec::new();
    for (part, refused) in group.parts.iter().zip(refused) {
        answers.push(match (&part.key, refused) {
            (_, Some(decision)) => Some(KeyAnswer::Key(decision)),
            (None, None) => None,
            (Some(key), None) => {
                let results = &group.results[part.offset..part.offset + part.results];
                let answer = key.answer(results);
                kept.push((key.claim.key.clone(), answer.clone()));
                Some(KeyAnswer::Kept(answer))
            }
        });
    }
    ingest_keys::complete_group(&mut tx, kept).await?;
    let (riders, ran) = store.ride_last(&mut tx).await;
    let committed = match ran {
        Ok(()) => tx.commit().await,
        Err(error) => Err(error),
    };
    riders.settle(committed.as_ref().map(|_| ()));
    committed.map(|()| answers)
}

/// Whether `candidate`'s result has `status`.
fn is_status(results: &[Option<EventResult>], candidate: &Candidate, status: EventStatus) -> bool {
    results[candidate.index]
        .as_ref()
        .is_some_and(|result| result.status == status)
}

/// Rows per multi-row insert: keeps every statement under SQLite's 32,766
/// and PostgreSQL's 65,535 bind parameters.
const CHUNK: usize = 500;

fn prepare(
    inputs: &[EventInput],
    ctx: &IngestContext,
    now: i64,
    results: &mut [Option<EventResult>],
) -> Vec<Candidate> {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut candidates = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        match input.validate(now) {
            Err(reason) => {
                results[index] = Some(EventResult {
                    event_id: input.event_id.clone(),
                    status: EventStatus::Rejected,
                    reason: Some(reason),
                });
            }
            Ok(event) => {
                let fingerprint = event.fingerprint();
                if let Some(first) = seen.get(&event.event_id) {
                    results[index] = Some(if *first == fingerprint {
                        EventResult {
                            event_id: event.event_id,
                            status: EventStatus::Duplicate,
                            reason: Some("repeated within this request".into()),
                        }
                    } else {
                        conflict(event.event_id, "an earlier event of this request")
                    });
                    continue;
                }
                seen.insert(event.event_id.clone(), fingerprint.clone());
                candidates.push(Candidate {
                    index,
                    event,
                    fingerprint,
                    input: input.clone(),
                    actor: ctx.actor.clone(),
                    request_id: ctx.request_id.clone(),
                    trace_id: ctx.trace_id.clone(),
                    span_id: ctx.span_id.clone(),
                });
            }
        }
    }
    candidates
}

/// The answer to an event whose id is taken by one that means something
/// else (`taken_by` says where that one is): rejected, counted, never a
/// silent duplicate.
fn conflict(event_id: String, taken_by: &str) -> EventResult {
    metrics::counter!("ledger_event_id_conflicts_total").increment(1);
    EventResult {
        event_id,
        status: EventStatus::Rejected,
        reason: Some(format!(
            "{EVENT_ID_CONFLICT}: this event_id is taken by {taken_by} with another type, \
             location, sku, quantity, counterparty or disposition; give this event an id of its own"
        )),
    }
}

/// One result per input, in order (an input left without one was not
/// processed, which `apply` never does).
/// The results of a request's events (`event_ids`, in order): an event
/// never reached reads rejected.
pub(crate) fn finish_results<'a>(
    results: Vec<Option<EventResult>>,
    event_ids: impl Iterator<Item = &'a str>,
) -> Vec<EventResult> {
    results
        .into_iter()
        .zip(event_ids)
        .map(|(result, event_id)| {
            result.unwrap_or_else(|| EventResult {
                event_id: event_id.to_owned(),
                status: EventStatus::Rejected,
                reason: Some("not processed".into()),
            })
        })
        .collect()
}

fn state_differs(live: &PositionState, rebuilt: &PositionState) -> bool {
    live.count != rebuilt.count
        || live.delta_after != rebuilt.delta_after
        || live.unsellable_raw != rebuilt.unsellable_raw
        || live.inbound_shipped != rebuilt.inbound_shipped
        || live.inbound_received != rebuilt.inbound_received
        || live.last_event_at != rebuilt.last_event_at
}

/// Whether a PostgreSQL transaction should be retried: a deadlock, a
/// serialisation failure, or a unique violation (the same `event_id` sent
/// concurrently with different locations: the retry sees it as a duplicate).
pub(crate) fn is_retryable(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| matches!(code.as_ref(), "40P01" | "40001" | "23505"))
}

/// A position's stored count from its three columns (all set, or none).
fn count_mark(
    at: Option<i64>,
    event_id: Option<String>,
    quantity: Option<i64>,
) -> Option<CountMark> {
    match (at, event_id, quantity) {
        (Some(at), Some(event_id), Some(quantity)) => Some(CountMark {
            at,
            event_id,
            quantity,
        }),
        _ => None,
    }
}

/// A position's stored state from a row with the `positions` columns.
pub(crate) fn state_from_row<R: sqlx::Row>(row: &R) -> Result<PositionState, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let count_at: Option<i64> = row.try_get("count_at")?;
    let count_event_id: Option<String> = row.try_get("count_event_id")?;
    let count_qty: Option<i64> = row.try_get("count_qty")?;
    Ok(PositionState {
        count: count_mark(count_at, count_event_id, count_qty),
        delta_after: row.try_get("delta_after")?,
        unsellable_raw: row.try_get("unsellable_raw")?,
        inbound_shipped: row.try_get("inbound_shipped")?,
        inbound_received: row.try_get("inbound_received")?,
        reserved: row.try_get("reserved")?,
        last_event_at: row.try_get("last_event_at")?,
    })
}

/// Generates the backend-specific transaction bodies from one source: the
/// SQL is shared, the lock clauses differ (SQLite has one writer and no
/// `FOR UPDATE`), and so do the reads (`$reads`) and the inserts' verb.
///
/// `$insert` is `INSERT OR FAIL INTO` on SQLite. A statement that fails
/// there always fails the transaction it is part of, which is rolled back:
/// an ingest group (then retried request by request in new transactions),
/// a parked events' replay, or the transaction of a reservation's
/// fulfilment, a transfer step or a reconciliation correction (`transact!`,
/// which commits only a body that returned without error). Nothing ever
/// keeps a failed statement's partial work.
/// With `OR FAIL` SQLite therefore does not copy every page a multi-row
/// insert touches into a statement journal first, just to be able to undo
/// that one statement alone (`INSERT` means `OR ABORT`, which needs it);
/// that copy was 4 % of the writer's time under `bench ingest`.
macro_rules! ledger_backend {
    ($module:ident, $db:ty, $for_update:literal, $skip_locked:literal, $ensure_rows:literal, $insert:literal, $reads:path) => {
        pub(crate) mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Row, Transaction};

            type Tx<'c> = Transaction<'c, $db>;

            async fn existing_ids(
                tx: &mut Tx<'_>,
                table: &str,
                ids: &[&str],
            ) -> Result<Fingerprints, sqlx::Error> {
                let mut found = HashMap::new();
                for chunk in ids.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(format!(
                        "SELECT event_id, fingerprint FROM {table} WHERE event_id IN ("
                    ));
                    let mut list = qb.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    list.push_unseparated(")");
                    for row in qb.build().fetch_all(&mut **tx).await? {
                        found.insert(row.try_get::<String, _>(0)?, row.try_get(1)?);
                    }
                }
                Ok(found)
            }

            pub(crate) async fn lookup_products(
                tx: &mut Tx<'_>,
                skus: &BTreeSet<&str>,
            ) -> Result<HashMap<String, (String, String)>, sqlx::Error> {
                let mut found = HashMap::new();
                let skus: Vec<&str> = skus.iter().copied().collect();
                for chunk in skus.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT sku, unit_cost, currency FROM products WHERE sku IN (",
                    );
                    let mut list = qb.separated(", ");
                    for sku in chunk {
                        list.push_bind(*sku);
                    }
                    list.push_unseparated(")");
                    for row in qb.build().fetch_all(&mut **tx).await? {
                        found.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
                    }
                }
                Ok(found)
            }

            pub(crate) async fn lookup_locations(
                tx: &mut Tx<'_>,
                ids: &BTreeSet<&str>,
            ) -> Result<HashMap<String, String>, sqlx::Error> {
                let mut found = HashMap::new();
                let ids: Vec<&str> = ids.iter().copied().collect();
                for chunk in ids.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT location_id, type FROM locations WHERE location_id IN (",
                    );
                    let mut list = qb.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    list.push_unseparated(")");
                    for row in qb.build().fetch_all(&mut **tx).await? {
                        found.insert(row.try_get(0)?, row.try_get(1)?);
                    }
                }
                Ok(found)
            }

            /// Creates missing positions, then locks and reads them all.
            async fn lock_positions(
                tx: &mut Tx<'_>,
                keys: &BTreeSet<Key>,
                now: i64,
            ) -> Result<HashMap<Key, PositionState>, sqlx::Error> {
                // One lock order for every transaction: the primary key's
                // (sku, location_id), across chunk boundaries too.
                let mut keys: Vec<&Key> = keys.iter().collect();
                keys.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
                // Rows that do not exist cannot be locked: with concurrent
                // writers (PostgreSQL) create them first. SQLite's single
                // writer needs no lock; missing positions start empty.
                for chunk in keys.chunks(CHUNK).filter(|_| $ensure_rows) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO positions (location_id, sku, updated_at) ",
                    );
                    qb.push_values(chunk, |mut row, (location, sku)| {
                        row.push_bind(location.as_str())
                            .push_bind(sku.as_str())
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (sku, location_id) DO NOTHING");
                    qb.build().execute(&mut **tx).await?;
                }
                let mut states = HashMap::with_capacity(keys.len());
                for chunk in keys.chunks(CHUNK) {
                    // A join with the key list, not `(a, b) IN (VALUES …)`:
                    // SQLite answers the latter with a full scan.
                    let mut qb = QueryBuilder::<$db>::new("WITH k (l, s) AS (");
                    qb.push_values(chunk, |mut row, (location, sku)| {
                        row.push_bind(location.as_str()).push_bind(sku.as_str());
                    });
                    qb.push(
                        ") SELECT p.location_id, p.sku, p.count_at, p.count_event_id, p.count_qty, \
                         p.delta_after, p.unsellable_raw, p.inbound_shipped, p.inbound_received, \
                         CAST(0 AS BIGINT) AS reserved, p.last_event_at FROM k JOIN positions p \
                         ON p.sku = k.s AND p.location_id = k.l ORDER BY p.sku, p.location_id",
                    );
                    qb.push($for_update);
                    for row in qb.build().fetch_all(&mut **tx).await? {
                        let key: Key = (row.try_get(0)?, row.try_get(1)?);
                        states.insert(key, state_from_row(&row)?);
                    }
                }
                Ok(states)
            }

            async fn journal_sum_after(
                tx: &mut Tx<'_>,
                key: &Key,
                at: i64,
            ) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(on_hand_effect), 0) AS BIGINT) FROM journal \
                     WHERE location_id = $1 AND sku = $2 AND occurred_at > $3",
                )
                .bind(&key.0)
                .bind(&key.1)
                .bind(at)
                .fetch_one(&mut **tx)
                .await
            }

            async fn write_positions(
                tx: &mut Tx<'_>,
                states: &[(&Key, &PositionState)],
                now: i64,
            ) -> Result<(), sqlx::Error> {
                for chunk in states.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(concat!(
                        $insert,
                        " positions (location_id, sku, count_at, count_event_id, \
                         count_qty, delta_after, unsellable_raw, inbound_shipped, \
                         inbound_received, last_event_at, updated_at) ",
                    ));
                    qb.push_values(chunk, |mut row, ((location, sku), state)| {
                        row.push_bind(location.as_str())
                            .push_bind(sku.as_str())
                            .push_bind(state.count.as_ref().map(|c| c.at))
                            .push_bind(state.count.as_ref().map(|c| c.event_id.clone()))
                            .push_bind(state.count.as_ref().map(|c| c.quantity))
                            .push_bind(state.delta_after)
                            .push_bind(state.unsellable_raw)
                            .push_bind(state.inbound_shipped)
                            .push_bind(state.inbound_received)
                            .push_bind(state.last_event_at)
                            .push_bind(now);
                    });
                    qb.push(
                        " ON CONFLICT (sku, location_id) DO UPDATE SET \
                         count_at = excluded.count_at, count_event_id = excluded.count_event_id, \
                         count_qty = excluded.count_qty, delta_after = excluded.delta_after, \
                         unsellable_raw = excluded.unsellable_raw, \
                         inbound_shipped = excluded.inbound_shipped, \
                         inbound_received = excluded.inbound_received, \
                         last_event_at = excluded.last_event_at, updated_at = excluded.updated_at",
                    );
                    qb.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            struct JournalRow<'a> {
                candidate: &'a Candidate,
                batch_id: i64,
                on_hand_effect: i64,
                unsellable_effect: i64,
                inbound_received_effect: i64,
                counterparty_shipped_effect: i64,
                on_hand_change: i64,
                unit_cost: &'a str,
                currency: &'a str,
                location_type: &'a str,
            }

            /// One `ingest_batches` row per distinct sender context (one for
            /// a request; several when parked events of different requests
            /// are replayed together).
            async fn insert_batches<'a>(
                tx: &mut Tx<'_>,
                candidates: impl Iterator<Item = &'a Candidate>,
                now: i64,
            ) -> Result<HashMap<(&'a str, &'a str, &'a str), i64>, sqlx::Error> {
                let mut ids = HashMap::new();
                for candidate in candidates {
                    let key = (
                        candidate.actor.as_str(),
                        candidate.request_id.as_str(),
                        candidate.trace_id.as_str(),
                    );
                    if ids.contains_key(&key) {
                        continue;
                    }
                    let id: i64 = sqlx::query_scalar(concat!(
                        $insert,
                        " ingest_batches (received_at, actor, request_id, trace_id, \
                         span_id) VALUES ($1, $2, $3, $4, $5) RETURNING batch_id",
                    ))
                    .bind(now)
                    .bind(key.0)
                    .bind(key.1)
                    .bind(key.2)
                    .bind(candidate.span_id.as_deref())
                    .fetch_one(&mut **tx)
                    .await?;
                    ids.insert(key, id);
                }
                Ok(ids)
            }

            async fn insert_journal(
                tx: &mut Tx<'_>,
                rows: &[JournalRow<'_>],
                now: i64,
            ) -> Result<(), sqlx::Error> {
                for chunk in rows.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(concat!(
                        $insert,
                        " journal (event_id, type, location_id, sku, quantity, \
                         occurred_at, batch_id, source, reference, reason, \
                         counterparty_location_id, disposition, on_hand_effect, \
                         unsellable_effect, inbound_received_effect, \
                         counterparty_shipped_effect, on_hand_change, unit_cost, currency, \
                         location_type, fingerprint) ",
                    ));
                    qb.push_values(chunk, |mut row, entry| {
                        let event = &entry.candidate.event;
                        row.push_bind(event.event_id.as_str())
                            .push_bind(event.kind.as_str())
                            .push_bind(event.location_id.as_str())
                            .push_bind(event.sku.as_str())
                            .push_bind(event.quantity)
                            .push_bind(event.occurred_at)
                            .push_bind(entry.batch_id)
                            .push_bind(event.source.as_str())
                            .push_bind(event.reference.as_deref())
                            .push_bind(event.reason.as_deref())
                            .push_bind(event.counterparty_location_id.as_deref())
                            .push_bind(event.disposition.map(|d| d.as_str()))
                            .push_bind(entry.on_hand_effect)
                            .push_bind(entry.unsellable_effect)
                            .push_bind(entry.inbound_received_effect)
                            .push_bind(entry.counterparty_shipped_effect)
                            .push_bind(entry.on_hand_change)
                            .push_bind(entry.unit_cost)
                            .push_bind(entry.currency)
                            .push_bind(entry.location_type)
                            .push_bind(entry.candidate.fingerprint.as_str());
                    });
                    qb.build().execute(&mut **tx).await?;
                }
                for chunk in rows.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(concat!(
                        $insert,
                        " outbox_postings (event_id, location_id, sku, next_attempt_at, \
                         created_at) ",
                    ));
                    qb.push_values(chunk, |mut row, entry| {
                        let event = &entry.candidate.event;
                        row.push_bind(event.event_id.as_str())
                            .push_bind(event.location_id.as_str())
                            .push_bind(event.sku.as_str())
                            .push_bind(now)
                            .push_bind(now);
                    });
                    qb.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            async fn insert_changes(
                tx: &mut Tx<'_>,
                batch_ids: impl Iterator<Item = i64>,
                now: i64,
            ) -> Result<(), sqlx::Error> {
                for batch_id in batch_ids {
                    sqlx::query(concat!(
                        $insert,
                        " outbox_changes (batch_id, created_at) VALUES ($1, $2)"
                    ))
                        .bind(batch_id)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }

            async fn park(
                tx: &mut Tx<'_>,
                parked: &[(&Candidate, String)],
                now: i64,
            ) -> Result<(), sqlx::Error> {
                let payloads: Vec<String> = parked
                    .iter()
                    .map(|(candidate, _)| serde_json::to_string(&candidate.input).unwrap_or_default())
                    .collect();
                let parked: Vec<(&Candidate, &String, &String)> = parked
                    .iter()
                    .zip(&payloads)
                    .map(|((candidate, reason), payload)| (*candidate, reason, payload))
                    .collect();
                for chunk in parked.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO parked_events (event_id, location_id, sku, \
                         counterparty_location_id, reason, payload, parked_at, occurred_at, \
                         actor, request_id, trace_id, fingerprint) ",
                    );
                    qb.push_values(chunk, |mut row, (candidate, reason, payload)| {
                        let event = &candidate.event;
                        row.push_bind(event.event_id.as_str())
                            .push_bind(event.location_id.as_str())
                            .push_bind(event.sku.as_str())
                            .push_bind(event.counterparty_location_id.as_deref())
                            .push_bind(reason.as_str())
                            .push_bind(payload.as_str())
                            .push_bind(now)
                            .push_bind(event.occurred_at)
                            .push_bind(candidate.actor.as_str())
                            .push_bind(candidate.request_id.as_str())
                            .push_bind(candidate.trace_id.as_str())
                            .push_bind(candidate.fingerprint.as_str());
                    });
                    qb.push(" ON CONFLICT (event_id) DO NOTHING");
                    qb.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Locks and reads the positions, then finds the ids already
            /// journalled or parked (PostgreSQL; SQLite reads in one round
            /// trip instead, `sqlite_batch_reads`).
            #[allow(dead_code)]
            async fn locked_reads(
                tx: &mut Tx<'_>,
                keys: &BTreeSet<Key>,
                ids: &[&str],
                now: i64,
            ) -> Result<super::BatchReads, sqlx::Error> {
                let states = lock_positions(tx, keys, now).await?;
                let journalled = existing_ids(tx, "journal", ids).await?;
                let parked = existing_ids(tx, "parked_events", ids).await?;
                Ok((states, journalled, parked))
            }

            /// Applies validated candidates inside `tx`, filling `results`.
            pub(super) async fn apply(
                tx: &mut Tx<'_>,
                cache: &crate::storage::cache::MasterCache,
                candidates: &[Candidate],
                results: &mut [Option<EventResult>],
                now: i64,
            ) -> Result<BatchSummary, sqlx::Error> {
                let mut summary = BatchSummary::default();
                if candidates.is_empty() {
                    return Ok(summary);
                }
                let skus: BTreeSet<&str> =
                    candidates.iter().map(|c| c.event.sku.as_str()).collect();
                let location_ids: BTreeSet<&str> = candidates
                    .iter()
                    .flat_map(|c| {
                        std::iter::once(c.event.location_id.as_str())
                            .chain(c.event.counterparty_location_id.as_deref())
                    })
                    .collect();
                let sku_list: Vec<&str> = skus.iter().copied().collect();
                let location_list: Vec<&str> = location_ids.iter().copied().collect();
                let mut products = cache.products(&sku_list);
                let mut locations = cache.locations(&location_list);
                let missing_skus: BTreeSet<&str> =
                    skus.into_iter().filter(|s| !products.contains_key(*s)).collect();
                let missing_locations: BTreeSet<&str> = location_ids
                    .into_iter()
                    .filter(|l| !locations.contains_key(*l))
                    .collect();
                if !missing_skus.is_empty() || !missing_locations.is_empty() {
                    let found_products = lookup_products(tx, &missing_skus).await?;
                    let found_locations = lookup_locations(tx, &missing_locations).await?;
                    cache.remember(&found_products, &found_locations);
                    products.extend(found_products);
                    locations.extend(found_locations);
                }

                let mut known = Vec::with_capacity(candidates.len());
                let mut unknown = Vec::new();
                for candidate in candidates {
                    let event = &candidate.event;
                    let reason = if !products.contains_key(&event.sku) {
                        Some(format!("unknown sku `{}`", event.sku))
                    } else if !locations.contains_key(&event.location_id) {
                        Some(format!("unknown location `{}`", event.location_id))
                    } else {
                        event
                            .counterparty_location_id
                            .as_ref()
                            .filter(|other| !locations.contains_key(*other))
                            .map(|other| format!("unknown counterparty location `{other}`"))
                    };
                    match reason {
                        Some(reason) => unknown.push((candidate, reason)),
                        None => known.push(candidate),
                    }
                }

                // Lock first, then look for duplicates (see the module docs).
                let mut keys: BTreeSet<Key> = BTreeSet::new();
                for candidate in &known {
                    let event = &candidate.event;
                    keys.insert((event.location_id.clone(), event.sku.clone()));
                    if event.kind == EventType::TransferOut
                        && let Some(other) = &event.counterparty_location_id
                    {
                        keys.insert((other.clone(), event.sku.clone()));
                    }
                }
                let ids: Vec<&str> = candidates.iter().map(|c| c.event.event_id.as_str()).collect();
                let (mut states, journalled, parked_before) = $reads(tx, &keys, &ids, now).await?;
                // An id seen before is a duplicate when it means the same
                // (or was stored before meanings were kept), else a
                // conflict; either way nothing of it is applied again.
                let is_duplicate = |candidate: &Candidate, results: &mut [Option<EventResult>]| {
                    let id = &candidate.event.event_id;
                    let (stored, reason, taken_by) = if let Some(stored) = journalled.get(id) {
                        (stored, "already applied", "an applied event")
                    } else if let Some(stored) = parked_before.get(id) {
                        (
                            stored,
                            "already received; parked until its master data arrives",
                            "a parked event",
                        )
                    } else {
                        return false;
                    };
                    results[candidate.index] = Some(match stored {
                        Some(stored) if *stored != candidate.fingerprint => {
                            conflict(id.clone(), taken_by)
                        }
                        _ => EventResult {
                            event_id: id.clone(),
                            status: EventStatus::Duplicate,
                            reason: Some(reason.into()),
                        },
                    });
                    true
                };

                let batch_ids = insert_batches(
                    tx,
                    known.iter().copied().filter(|c| {
                        !journalled.contains_key(&c.event.event_id)
                            && !parked_before.contains_key(&c.event.event_id)
                    }),
                    now,
                )
                .await?;
                let mut journal_rows = Vec::with_capacity(known.len());
                let mut batch_deltas: HashMap<Key, Vec<(i64, i64)>> = HashMap::new();
                let mut touched: BTreeSet<Key> = BTreeSet::new();
                for candidate in known {
                    if is_duplicate(candidate, results) {
                        summary.duplicate += usize::from(is_status(results, candidate, EventStatus::Duplicate));
                        continue;
                    }
                    let event = &candidate.event;
                    let key: Key = (event.location_id.clone(), event.sku.clone());
                    let effects = event.effects();
                    let on_hand_change = if event.kind == EventType::Count {
                        let mark = CountMark {
                            at: event.occurred_at,
                            event_id: event.event_id.clone(),
                            quantity: event.quantity,
                        };
                        let current = states.get(&key).and_then(|s| s.count.as_ref());
                        if mark.supersedes(current) {
                            let in_batch: i64 = batch_deltas
                                .get(&key)
                                .map(|deltas| {
                                    deltas
                                        .iter()
                                        .filter(|(at, _)| *at > mark.at)
                                        .map(|(_, delta)| delta)
                                        .sum()
                                })
                                .unwrap_or(0);
                            // Every journal entry of a position is at or
                            // before its `last_event_at` (each one touched
                            // it): when that is not after the count, no
                            // entry can be, and the journal is not read.
                            let latest = states.get(&key).and_then(|s| s.last_event_at);
                            let journalled = match latest {
                                Some(latest) if latest <= mark.at => 0,
                                _ => journal_sum_after(tx, &key, mark.at).await?,
                            };
                            states
                                .entry(key.clone())
                                .or_default()
                                .install_count(mark, journalled + in_batch)
                        } else {
                            0
                        }
                    } else {
                        let state = states.entry(key.clone()).or_default();
                        let change = state.apply_on_hand_delta(event.occurred_at, effects.on_hand);
                        state.unsellable_raw += effects.unsellable;
                        state.inbound_received += effects.inbound_received;
                        if effects.on_hand != 0 {
                            batch_deltas
                                .entry(key.clone())
                                .or_default()
                                .push((event.occurred_at, effects.on_hand));
                        }
                        change
                    };
                    states.entry(key.clone()).or_default().touch(event.occurred_at);
                    if effects.counterparty_shipped != 0
                        && let Some(other) = &event.counterparty_location_id
                    {
                        let other_key: Key = (other.clone(), event.sku.clone());
                        states.entry(other_key.clone()).or_default().inbound_shipped +=
                            effects.counterparty_shipped;
                        touched.insert(other_key);
                    }
                    touched.insert(key);
                    let (unit_cost, currency) = products
                        .get(&event.sku)
                        .map(|(cost, currency)| (cost.as_str(), currency.as_str()))
                        .unwrap_or(("", ""));
                    let batch_id = batch_ids
                        .get(&(
                            candidate.actor.as_str(),
                            candidate.request_id.as_str(),
                            candidate.trace_id.as_str(),
                        ))
                        .copied()
                        .unwrap_or_default();
                    journal_rows.push(JournalRow {
                        candidate,
                        batch_id,
                        on_hand_effect: effects.on_hand,
                        unsellable_effect: effects.unsellable,
                        inbound_received_effect: effects.inbound_received,
                        counterparty_shipped_effect: effects.counterparty_shipped,
                        on_hand_change,
                        unit_cost,
                        currency,
                        location_type: locations
                            .get(&event.location_id)
                            .map_or("", String::as_str),
                    });
                    results[candidate.index] = Some(EventResult {
                        event_id: event.event_id.clone(),
                        status: EventStatus::Applied,
                        reason: None,
                    });
                }

                let mut to_park = Vec::new();
                for (candidate, reason) in unknown {
                    if is_duplicate(candidate, results) {
                        summary.duplicate += usize::from(is_status(results, candidate, EventStatus::Duplicate));
                        continue;
                    }
                    results[candidate.index] = Some(EventResult {
                        event_id: candidate.event.event_id.clone(),
                        status: EventStatus::Parked,
                        reason: Some(reason.clone()),
                    });
                    to_park.push((candidate, reason));
                }

                insert_journal(tx, &journal_rows, now).await?;
                let touched: Vec<&Key> = touched.iter().collect();
                let written: Vec<(&Key, &PositionState)> = touched
                    .iter()
                    .filter_map(|key| states.get(*key).map(|state| (*key, state)))
                    .collect();
                write_positions(tx, &written, now).await?;
                insert_changes(tx, batch_ids.values().copied(), now).await?;
                park(tx, &to_park, now).await?;
                summary.applied = journal_rows.len();
                summary.parked = to_park.len();
                summary.positions = written.len();
                Ok(summary)
            }

            /// Validates and applies `inputs` inside an open transaction:
            /// reservation fulfilment journals its sales in the transaction
            /// that closes the reservation.
            pub(crate) async fn apply_inputs(
                tx: &mut Tx<'_>,
                cache: &crate::storage::cache::MasterCache,
                inputs: &[EventInput],
                ctx: &IngestContext,
                now: i64,
            ) -> Result<Vec<EventResult>, sqlx::Error> {
                let mut results = vec![None; inputs.len()];
                let candidates = prepare(inputs, ctx, now, &mut results);
                apply(tx, cache, &candidates, &mut results, now).await?;
                Ok(finish_results(results, inputs.iter().map(|i| i.event_id.as_str())))
            }

            /// Takes up to `limit` parked events whose master data now
            /// exists out of the parking table, as ingest candidates.
            pub(super) async fn take_ready_parked(
                tx: &mut Tx<'_>,
                limit: i64,
                now: i64,
            ) -> Result<Vec<Candidate>, sqlx::Error> {
                let rows = sqlx::query(concat!(
                    "SELECT event_id, payload, actor, request_id, trace_id FROM parked_events p \
                     WHERE p.dead = 0 AND EXISTS (SELECT 1 FROM products WHERE sku = p.sku) \
                     AND EXISTS (SELECT 1 FROM locations WHERE location_id = p.location_id) \
                     AND (p.counterparty_location_id IS NULL OR EXISTS \
                          (SELECT 1 FROM locations WHERE location_id = p.counterparty_location_id)) \
                     ORDER BY occurred_at, event_id LIMIT $1",
                    $skip_locked
                ))
                .bind(limit)
                .fetch_all(&mut **tx)
                .await?;
                let mut candidates = Vec::with_capacity(rows.len());
                let mut ids = Vec::with_capacity(rows.len());
                for row in &rows {
                    let event_id: String = row.try_get("event_id")?;
                    let payload: String = row.try_get("payload")?;
                    // Validated at parking time; only the clock can have moved
                    // (which only loosens the future bound) or a rule changed
                    // in an upgrade. A payload that no longer validates stays
                    // listed for operators, marked dead so it never blocks
                    // the replay of the rows behind it.
                    let event = serde_json::from_str::<EventInput>(&payload)
                        .map_err(|e| e.to_string())
                        .and_then(|input| input.validate(now).map(|event| (input, event)));
                    let (input, event) = match event {
                        Ok(pair) => pair,
                        Err(reason) => {
                            tracing::error!(%event_id, %reason, "parked event can no longer be applied");
                            sqlx::query(
                                "UPDATE parked_events SET dead = 1, reason = $1 WHERE event_id = $2",
                            )
                            .bind(format!("cannot be applied: {reason}"))
                            .bind(&event_id)
                            .execute(&mut **tx)
                            .await?;
                            continue;
                        }
                    };
                    ids.push(event_id);
                    candidates.push(Candidate {
                        index: candidates.len(),
                        fingerprint: event.fingerprint(),
                        event,
                        input,
                        actor: row.try_get("actor")?,
                        request_id: row.try_get("request_id")?,
                        trace_id: row.try_get("trace_id")?,
                        // The parking request's span is not kept.
                        span_id: None,
                    });
                }
                for chunk in ids.chunks(CHUNK) {
                    let mut qb =
                        QueryBuilder::<$db>::new("DELETE FROM parked_events WHERE event_id IN (");
                    let mut list = qb.separated(", ");
                    for id in chunk {
                        list.push_bind(id.as_str());
                    }
                    list.push_unseparated(")");
                    qb.build().execute(&mut **tx).await?;
                }
                Ok(candidates)
            }

            /// Replays the journal into positions, comparing with (and with
            /// `write`, replacing) the live ones.
            pub(super) async fn rebuild(
                tx: &mut Tx<'_>,
                write: bool,
                now: i64,
            ) -> Result<RebuildReport, sqlx::Error> {
                use futures::TryStreamExt;
                let mut rebuilder = Rebuilder::default();
                {
                    let mut counts = sqlx::query(
                        "SELECT location_id, sku, occurred_at, event_id, quantity FROM journal \
                         WHERE type = 'count'",
                    )
                    .fetch(&mut **tx);
                    while let Some(row) = counts.try_next().await? {
                        let location: String = row.try_get(0)?;
                        let sku: String = row.try_get(1)?;
                        rebuilder.add_count(
                            &location,
                            &sku,
                            CountMark {
                                at: row.try_get(2)?,
                                event_id: row.try_get(3)?,
                                quantity: row.try_get(4)?,
                            },
                        );
                    }
                }
                {
                    let mut facts = sqlx::query(
                        "SELECT location_id, sku, occurred_at, on_hand_effect, unsellable_effect, \
                         inbound_received_effect, counterparty_shipped_effect, \
                         counterparty_location_id FROM journal ORDER BY seq",
                    )
                    .fetch(&mut **tx);
                    while let Some(row) = facts.try_next().await? {
                        rebuilder.add_fact(&JournalFact {
                            location_id: row.try_get(0)?,
                            sku: row.try_get(1)?,
                            occurred_at: row.try_get(2)?,
                            on_hand_effect: row.try_get(3)?,
                            unsellable_effect: row.try_get(4)?,
                            inbound_received_effect: row.try_get(5)?,
                            counterparty_shipped_effect: row.try_get(6)?,
                            counterparty_location_id: row.try_get(7)?,
                        });
                    }
                }
                let events = rebuilder.events();
                let mut rebuilt = rebuilder.finish();
                let live_rows = sqlx::query(concat!(
                    "SELECT location_id, sku, count_at, count_event_id, count_qty, delta_after, \
                     unsellable_raw, inbound_shipped, inbound_received, \
                     CAST(0 AS BIGINT) AS reserved, last_event_at \
                     FROM positions p ORDER BY location_id, sku",
                    $for_update
                ))
                .fetch_all(&mut **tx)
                .await?;
                let mut mismatches = 0;
                let mut examples = Vec::new();
                let mut to_write: Vec<(Key, PositionState)> = Vec::new();
                let positions = rebuilt.len() as u64;
                for row in &live_rows {
                    let key: Key = (row.try_get(0)?, row.try_get(1)?);
                    let live = state_from_row(row)?;
                    let fresh = rebuilt.remove(&key).unwrap_or_default();
                    if state_differs(&live, &fresh) {
                        mismatches += 1;
                        if examples.len() < 20 {
                            examples.push(format!("{}/{}", key.0, key.1));
                        }
                        to_write.push((key, fresh));
                    }
                }
                for (key, fresh) in rebuilt {
                    mismatches += 1;
                    if examples.len() < 20 {
                        examples.push(format!("{}/{}", key.0, key.1));
                    }
                    to_write.push((key, fresh));
                }
                if write && !to_write.is_empty() {
                    let refs: Vec<(&Key, &PositionState)> =
                        to_write.iter().map(|(k, s)| (k, s)).collect();
                    write_positions(tx, &refs, now).await?;
                }
                Ok(RebuildReport {
                    events,
                    positions,
                    mismatches,
                    examples,
                    written: write && mismatches > 0,
                })
            }
        }
    };
}

ledger_backend!(
    sqlite_ledger,
    sqlx::Sqlite,
    "",
    "",
    false,
    "INSERT OR FAIL INTO",
    super::sqlite_batch_reads
);
ledger_backend!(
    postgres_ledger,
    sqlx::Postgres,
    " FOR UPDATE OF p",
    " FOR UPDATE SKIP LOCKED",
    true,
    "INSERT INTO",
    locked_reads
);

/// SQLite's reads of an ingest transaction in one round trip to the
/// writer's thread, of fixed text (the lists go in as JSON arrays: one
/// prepared statement whatever the batch's size): the batch's event ids
/// already in the journal (`j`) or parked (`q`), and the stored state of
/// the positions it touches, as one JSON array (`p`) rather than a row per
/// position (each row a message from the connection's thread, its values
/// copied one by one). The single writer needs no locks; missing positions
/// start empty.
const SQLITE_BATCH_READS: &str = "SELECT 'j' AS part, j.event_id, j.fingerprint FROM json_each($1) e \
     JOIN journal j ON j.event_id = e.value; \
     SELECT 'q' AS part, q.event_id, q.fingerprint FROM json_each($1) e \
     JOIN parked_events q ON q.event_id = e.value; \
     WITH k (l, s) AS MATERIALIZED (SELECT value ->> 0, value ->> 1 FROM json_each($2)) \
     SELECT 'p' AS part, json_group_array(json_array(p.location_id, p.sku, p.count_at, \
     p.count_event_id, p.count_qty, p.delta_after, p.unsellable_raw, p.inbound_shipped, \
     p.inbound_received, p.last_event_at)) FROM k JOIN positions p \
     ON p.sku = k.s AND p.location_id = k.l";

/// One stored position as [`SQLITE_BATCH_READS`] lists it.
type StoredPosition = (
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<i64>,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
);

/// Ids already stored, with what each means ([`Event::fingerprint`];
/// `None` for rows stored before meanings were kept).
type Fingerprints = HashMap<String, Option<String>>;

/// What an ingest transaction reads before it decides: the positions'
/// states, and the batch's ids already journalled or parked.
type BatchReads = (HashMap<Key, PositionState>, Fingerprints, Fingerprints);

/// See [`SQLITE_BATCH_READS`].
async fn sqlite_batch_reads(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    keys: &BTreeSet<Key>,
    ids: &[&str],
    _now: i64,
) -> Result<BatchReads, sqlx::Error> {
    use sqlx::Row as _;
    let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
    let rows = sqlx::query(SQLITE_BATCH_READS)
        .bind(serde_json::to_string(ids).map_err(encode)?)
        .bind(serde_json::to_string(keys).map_err(encode)?)
        .fetch_all(&mut **tx)
        .await?;
    let mut states = HashMap::with_capacity(keys.len());
    let (mut journalled, mut parked) = (HashMap::new(), HashMap::new());
    for row in rows {
        let part: &str = row.try_get(0)?;
        match part {
            "j" => drop(journalled.insert(row.try_get(1)?, row.try_get(2)?)),
            "q" => drop(parked.insert(row.try_get(1)?, row.try_get(2)?)),
            _ => {
                let stored: Vec<StoredPosition> =
                    serde_json::from_str(row.try_get(1)?).map_err(decode)?;
                for (
                    location,
                    sku,
                    count_at,
                    count_event_id,
                    count_qty,
                    delta_after,
                    unsellable_raw,
                    inbound_shipped,
                    inbound_received,
                    last_event_at,
                ) in stored
                {
                    let state = PositionState {
                        count: count_mark(count_at, count_event_id, count_qty),
                        delta_after,
                        unsellable_raw,
                        inbound_shipped,
                        inbound_received,
                        reserved: 0,
                        last_event_at,
                    };
                    states.insert((location, sku), state);
                }
            }
        }
    }
    Ok((states, journalled, parked))
}

/// Runs `$body` in a write transaction `$tx` with `$ledger` naming the
/// backend's generated module.
macro_rules! on_ledger {
    ($db:expr, |$tx:ident, $ledger:ident| $body:expr) => {
        match $db {
            Db::Sqlite { writer, .. } => {
                let mut $tx = writer.begin_write().await?;
                use sqlite_ledger as $ledger;
                $body
            }
            Db::Postgres(pool) => {
                let mut $tx = pool.begin_write().await?;
                use postgres_ledger as $ledger;
                $body
            }
        }
    };
}

/// Attempts of a PostgreSQL transaction that hit a deadlock.
pub(crate) const PG_ATTEMPTS: usize = 5;

impl Store {
    /// Ingests one batch in one transaction (on SQLite possibly shared with
    /// other requests' batches, see `GroupCommit`); the result has one entry
    /// per input, in order.
    pub async fn ingest(
        &self,
        inputs: &[EventInput],
        ctx: &IngestContext,
    ) -> Result<(Vec<EventResult>, BatchSummary), sqlx::Error> {
        self.ingest_keyed(inputs, ctx, None).await?.unkeyed()
    }

    /// [`Store::ingest`] with the request's `Idempotency-Key` claimed and
    /// answered in the transaction that journals its events (see
    /// `ingest_keys`); a key that is not new journals nothing.
    pub async fn ingest_keyed(
        &self,
        inputs: &[EventInput],
        ctx: &IngestContext,
        key: Option<(&InlineClaim, IngestRender)>,
    ) -> Result<Keyed<(Vec<EventResult>, BatchSummary)>, sqlx::Error> {
        let now = self.now();
        let mut results: Vec<Option<EventResult>> = vec![None; inputs.len()];
        let candidates = prepare(inputs, ctx, now, &mut results);
        let key = key.map(|(claim, render)| {
            let ids = inputs.iter().map(|i| i.event_id.clone()).collect();
            IngestKey::new(claim, render, ids)
        });
        let (summary, kept) = match self.db() {
            Db::Sqlite { .. } => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                self.group.push(Job {
                    candidates,
                    results,
                    now,
                    reply,
                    key,
                });
                // The commit runs in its own task: a caller that goes away
                // never cancels a transaction other callers' batches ride in.
                // On the committer thread when it runs, where the chain of
                // statements does not wait behind HTTP work (see `group`).
                let store = self.clone();
                let commit = async move { store.commit_waiting().await };
                match self.committer() {
                    Some(committer) => drop(committer.spawn(commit)),
                    None => drop(tokio::spawn(commit)),
                }
                let (done, summary, kept) = answer.await.map_err(|_| sqlx::Error::PoolClosed)??;
                results = done;
                (summary, kept)
            }
            Db::Postgres(pool) => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let mut scratch = results.clone();
                    let outcome = async {
                        let mut tx = pool.begin_write().await?;
                        if let Some(key) = &key {
                            let decision = claim_in_postgres(&mut tx, &key.claim).await?;
                            if decision != Begin::Started {
                                return Ok((
                                    BatchSummary::default(),
                                    Some(KeyAnswer::Key(decision)),
                                ));
                            }
                        }
                        let summary = postgres_ledger::apply(
                            &mut tx,
                            self.master_cache(),
                            &candidates,
                            &mut scratch,
                            now,
                        )
                        .await?;
                        let mut kept = None;
                        if let Some(key) = &key {
                            let answer = key.answer(&scratch);
                            complete_in_postgres(&mut tx, &key.claim.key, &answer).await?;
                            kept = Some(KeyAnswer::Kept(answer));
                        }
                        tx.commit().await?;
                        Ok::<_, sqlx::Error>((summary, kept))
                    }
                    .await;
                    match outcome {
                        Ok(done) => {
                            results = scratch;
                            break done;
                        }
                        Err(error) if attempt < PG_ATTEMPTS && is_retryable(&error) => {
                            tracing::debug!(attempt, "ingest transaction retried: {error}");
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
        };
        let stored = match kept {
            Some(KeyAnswer::Key(decision)) => return Ok(Keyed::Key(decision)),
            Some(KeyAnswer::Kept(answer)) => Some(answer),
            None => None,
        };
        let results = finish_results(results, inputs.iter().map(|i| i.event_id.as_str()));
        Ok(Keyed::Decided((results, summary), stored))
    }

    /// SQLite group commit so far: (transactions, request batches they
    /// carried). Both 0 on PostgreSQL.
    pub fn ingest_groups(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.group.transactions.load(Relaxed),
            self.group.batches.load(Relaxed),
        )
    }

    /// Commits the waiting ingest batches (SQLite), several per transaction
    /// (see [`GroupCommit`]); returns when none is waiting.
    async fn commit_waiting(&self) {
        let Db::Sqlite { writer, .. } = self.db() else {
            return;
        };
        let _turn = self.group.turn.lock().await;
        // The change feed's numbering rides in these transactions instead
        // of taking the writer (and a WAL sync) between them.
        let _ingesting = self.write_group_arc().ingest_turn();
        loop {
            let jobs = self.group.take();
            if jobs.is_empty() {
                return;
            }
            let grouped = jobs.len() > 1;
            let batch_count = jobs.len() as u64;
            let mut group = Group::join(jobs);
            let outcome = apply_in_transaction(self, writer, &mut group).await;
            match outcome {
                Ok(keys) => {
                    use std::sync::atomic::Ordering::Relaxed;
                    self.group.transactions.fetch_add(1, Relaxed);
                    self.group.batches.fetch_add(batch_count, Relaxed);
                    group.answer(keys);
                }
                // One batch's failure must not fail the batches that rode
                // along: each is tried again in a transaction of its own.
                Err(error) if grouped => {
                    tracing::warn!(%error, "grouped ingest failed; committing its batches one by one");
                    for job in group.split() {
                        let mut single = Group::join(vec![job]);
                        match apply_in_transaction(self, writer, &mut single).await {
                            Ok(keys) => single.answer(keys),
                            Err(error) => single.fail(error),
                        }
                    }
                }
                Err(error) => group.fail(error),
            }
        }
    }

    /// Applies parked events whose master data has arrived, in batches of up
    /// to 500, until none is ready. Returns how many were applied.
    pub async fn replay_parked(&self) -> Result<usize, sqlx::Error> {
        let mut applied = 0;
        loop {
            let now = self.now();
            let summary = on_ledger!(self.db(), |tx, ledger| {
                let candidates = ledger::take_ready_parked(&mut tx, 500, now).await?;
                if candidates.is_empty() {
                    break;
                }
                let mut results = vec![None; candidates.len()];
                let summary =
                    ledger::apply(&mut tx, self.master_cache(), &candidates, &mut results, now)
                        .await?;
                tx.commit().await?;
                summary
            });
            applied += summary.applied;
            if summary.applied + summary.duplicate == 0 {
                break;
            }
        }
        Ok(applied)
    }

    /// Replays the journal into fresh positions and compares them with the
    /// live ones; with `write`, replaces those that differ. Writers wait
    /// while it runs.
    pub async fn rebuild(&self, write: bool) -> Result<RebuildReport, sqlx::Error> {
        let now = self.now();
        match self.db() {
            Db::Sqlite { writer, .. } => {
                let mut tx = writer.begin_write().await?;
                let report = sqlite_ledger::rebuild(&mut tx, write, now).await?;
                tx.commit().await?;
                Ok(report)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                // Ingest takes row locks on positions; this blocks it (and
                // is blocked by it) for the duration.
                sqlx::query("LOCK TABLE positions IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
                let report = postgres_ledger::rebuild(&mut tx, write, now).await?;
                tx.commit().await?;
                Ok(report)
            }
        }
    }

    /// Positions of one sku (optionally at one location), with safety stock
    /// resolved and the pinned figures computed.
    pub async fn positions(
        &self,
        sku: &str,
        location_id: Option<&str>,
    ) -> Result<Vec<PositionRecord>, sqlx::Error> {
        let locations = location_id.map(|l| vec![l.to_owned()]);
        self.positions_of(&[sku.to_owned()], locations.as_deref())
            .await
    }

    /// Positions of several skus (optionally only at `locations`), ordered
    /// by sku then location: one query.
    pub async fn positions_of(
        &self,
        skus: &[String],
        locations: Option<&[String]>,
    ) -> Result<Vec<PositionRecord>, sqlx::Error> {
        if skus.is_empty() || locations.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        self.query_positions(PositionFilter::Skus { skus, locations })
            .await
    }

    /// A page of one location's positions in sku order (skus after
    /// `after`).
    pub async fn positions_at(
        &self,
        location_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PositionRecord>, sqlx::Error> {
        self.query_positions(PositionFilter::Location {
            location_id,
            after: after.unwrap_or(""),
            limit,
        })
        .await
    }

    async fn query_positions(
        &self,
        filter: PositionFilter<'_>,
    ) -> Result<Vec<PositionRecord>, sqlx::Error> {
        let now = self.now();
        crate::on_reader!(self.db(), |pool| {
            // `reserved`: the holds still active now (see `reservations`).
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT p.location_id, p.sku, p.count_at, p.count_event_id, p.count_qty, \
                 p.delta_after, p.unsellable_raw, p.inbound_shipped, p.inbound_received, \
                 (SELECT CAST(COALESCE(SUM(h.quantity), 0) AS BIGINT) FROM reservation_holds h \
                 WHERE h.sku = p.sku AND h.location_id = p.location_id AND h.expires_at > ",
            );
            qb.push_bind(now);
            qb.push(
                ") AS reserved, p.last_event_at, p.updated_at, \
                 p.safety_stock AS position_safety, \
                 pr.safety_stock AS product_safety, l.safety_stock_default \
                 FROM positions p JOIN products pr ON pr.sku = p.sku \
                 JOIN locations l ON l.location_id = p.location_id WHERE ",
            );
            match &filter {
                PositionFilter::Skus { skus, locations } => {
                    qb.push("p.sku IN (");
                    let mut list = qb.separated(", ");
                    for sku in *skus {
                        list.push_bind(sku.as_str());
                    }
                    list.push_unseparated(")");
                    if let Some(locations) = locations {
                        qb.push(" AND p.location_id IN (");
                        let mut list = qb.separated(", ");
                        for location in *locations {
                            list.push_bind(location.as_str());
                        }
                        list.push_unseparated(")");
                    }
                    qb.push(" ORDER BY p.sku, p.location_id");
                }
                PositionFilter::Location {
                    location_id,
                    after,
                    limit,
                } => {
                    qb.push("p.location_id = ");
                    qb.push_bind(*location_id);
                    qb.push(" AND p.sku > ");
                    qb.push_bind(*after);
                    qb.push(" ORDER BY p.sku LIMIT ");
                    qb.push_bind(i64::from(*limit));
                }
            }
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    use sqlx::Row;
                    let state = state_from_row(row)?;
                    let safety = resolve_safety_stock(
                        row.try_get("position_safety")?,
                        row.try_get("product_safety")?,
                        row.try_get("safety_stock_default")?,
                    );
                    Ok(PositionRecord {
                        location_id: row.try_get("location_id")?,
                        sku: row.try_get("sku")?,
                        figures: state.view(safety),
                        updated_at: micros_to_rfc3339(row.try_get("updated_at")?),
                        last_event_at: state.last_event_at.map(micros_to_rfc3339),
                    })
                })
                .collect()
        })
    }

    /// Which of `skus` exist in the registry.
    pub async fn known_skus(&self, skus: &[String]) -> Result<Vec<String>, sqlx::Error> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        crate::on_reader!(self.db(), |pool| {
            let mut qb = sqlx::QueryBuilder::new("SELECT sku FROM products WHERE sku IN (");
            let mut list = qb.separated(", ");
            for sku in skus {
                list.push_bind(sku.as_str());
            }
            list.push_unseparated(")");
            qb.build_query_scalar().fetch_all(pool).await
        })
    }

    /// Sets (or with `None` clears) a position's own safety stock.
    pub async fn set_safety_stock(
        &self,
        location_id: &str,
        sku: &str,
        safety_stock: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        let now = self.now();
        crate::on_writer!(self.db(), |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO positions (location_id, sku, safety_stock, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (sku, location_id) DO UPDATE SET \
                 safety_stock = excluded.safety_stock, updated_at = excluded.updated_at",
            )
            .bind(location_id)
            .bind(sku)
            .bind(safety_stock)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO outbox_changes (location_id, sku, created_at) VALUES ($1, $2, $3)",
            )
            .bind(location_id)
            .bind(sku)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
    }

    /// A page of the journal, in seq order.
    pub async fn journal(&self, query: &JournalQuery) -> Result<Vec<JournalEntry>, sqlx::Error> {
        crate::on_reader!(self.db(), |pool| {
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT j.seq, j.event_id, j.type, j.location_id, j.sku, j.quantity, \
                 j.occurred_at, b.received_at, j.source, j.reference, j.reason, \
                 j.counterparty_location_id, j.disposition, j.on_hand_change, \
                 j.unsellable_effect, j.unit_cost, j.currency, j.location_type, b.actor, \
                 b.request_id, b.trace_id FROM journal j \
                 JOIN ingest_batches b ON b.batch_id = j.batch_id WHERE j.seq > ",
            );
            qb.push_bind(query.after.unwrap_or(0));
            if let Some(location) = &query.location_id {
                qb.push(" AND j.location_id = ")
                    .push_bind(location.as_str());
            }
            if let Some(sku) = &query.sku {
                qb.push(" AND j.sku = ").push_bind(sku.as_str());
            }
            if let Some(from) = query.from {
                qb.push(" AND j.occurred_at >= ").push_bind(from);
            }
            if let Some(to) = query.to {
                qb.push(" AND j.occurred_at < ").push_bind(to);
            }
            if let Some(before) = query.before {
                qb.push(" AND j.seq < ").push_bind(before);
            }
            qb.push(if query.newest_first {
                " ORDER BY j.seq DESC LIMIT "
            } else {
                " ORDER BY j.seq LIMIT "
            })
            .push_bind(i64::from(query.limit));
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    use sqlx::Row;
                    Ok(JournalEntry {
                        seq: row.try_get("seq")?,
                        event_id: row.try_get("event_id")?,
                        r#type: row.try_get("type")?,
                        location_id: row.try_get("location_id")?,
                        sku: row.try_get("sku")?,
                        quantity: row.try_get("quantity")?,
                        occurred_at: micros_to_rfc3339(row.try_get("occurred_at")?),
                        received_at: micros_to_rfc3339(row.try_get("received_at")?),
                        source: row.try_get("source")?,
                        reference: row.try_get("reference")?,
                        reason: row.try_get("reason")?,
                        counterparty_location_id: row.try_get("counterparty_location_id")?,
                        disposition: row.try_get("disposition")?,
                        on_hand_change: row.try_get("on_hand_change")?,
                        unsellable_change: row.try_get("unsellable_effect")?,
                        unit_cost: row
                            .try_get::<Option<String>, _>("unit_cost")?
                            .filter(|s| !s.is_empty()),
                        currency: row
                            .try_get::<Option<String>, _>("currency")?
                            .filter(|s| !s.is_empty()),
                        location_type: row
                            .try_get::<Option<String>, _>("location_type")?
                            .filter(|s| !s.is_empty()),
                        actor: row.try_get("actor")?,
                        request_id: row.try_get("request_id")?,
                        trace_id: row.try_get("trace_id")?,
                    })
                })
                .collect()
        })
    }

    /// A page of parked events in event id order, only those at
    /// `locations` (a token's binding; `None`: every location).
    pub async fn parked(
        &self,
        after: Option<&str>,
        limit: u32,
        locations: Option<&[String]>,
    ) -> Result<Vec<ParkedEvent>, sqlx::Error> {
        crate::on_reader!(self.db(), |pool| {
            let mut next = 3;
            let only_at =
                locations.map_or_else(String::new, |l| in_list("location_id", l.len(), &mut next));
            // Only fixed column names and placeholders are spliced in.
            let sql = format!(
                "SELECT event_id, reason, parked_at, payload FROM parked_events \
                 WHERE event_id > $1{only_at} ORDER BY event_id LIMIT $2"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit));
            for location in locations.into_iter().flatten() {
                query = query.bind(location.as_str());
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    use sqlx::Row;
                    let payload: String = row.try_get("payload")?;
                    Ok(ParkedEvent {
                        event_id: row.try_get("event_id")?,
                        reason: row.try_get("reason")?,
                        parked_at: micros_to_rfc3339(row.try_get("parked_at")?),
                        event: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    })
                })
                .collect()
        })
    }

    /// How many events are parked.
    pub async fn parked_count(&self) -> Result<i64, sqlx::Error> {
        crate::on_reader!(self.db(), |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM parked_events")
                .fetch_one(pool)
                .await
        })
    }

    /// How many events are parked at `locations` (see [`Store::parked`]).
    pub async fn parked_count_at(&self, locations: Option<&[String]>) -> Result<i64, sqlx::Error> {
        let Some(locations) = locations else {
            return self.parked_count().await;
        };
        crate::on_reader!(self.db(), |pool| {
            let mut next = 1;
            let only_at = in_list("location_id", locations.len(), &mut next);
            // Only fixed column names and placeholders are spliced in.
            let sql = format!("SELECT COUNT(*) FROM parked_events WHERE 1 = 1{only_at}");
            let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
            for location in locations {
                query = query.bind(location.as_str());
            }
            query.fetch_one(pool).await
        })
    }

    /// Journal entries with these event ids (exactly-once checks).
    pub async fn journalled_ids(&self, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
        let mut found = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let chunk_found: Vec<String> = crate::on_reader!(self.db(), |pool| {
                let mut qb =
                    sqlx::QueryBuilder::new("SELECT event_id FROM journal WHERE event_id IN (");
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(id.as_str());
                }
                list.push_unseparated(")");
                qb.build_query_scalar().fetch_all(pool).await?
            });
            found.extend(chunk_found);
        }
        Ok(found)
    }

    /// Rows in the journal.
    pub async fn journal_len(&self) -> Result<i64, sqlx::Error> {
        crate::on_reader!(self.db(), |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM journal")
                .fetch_one(pool)
                .await
        })
    }

    /// Pending rows of the two outboxes: (postings, changes).
    pub async fn outbox_lengths(&self) -> Result<(i64, i64), sqlx::Error> {
        crate::on_reader!(self.db(), |pool| {
            let postings: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox_postings WHERE status = 'pending'")
                    .fetch_one(pool)
                    .await?;
            let changes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_changes")
                .fetch_one(pool)
                .await?;
            Ok((postings, changes))
        })
    }

    /// All positions of a sku as raw figures keyed by location (tests and
    /// rebuild checks).
    pub async fn position_figures(
        &self,
        sku: &str,
    ) -> Result<BTreeMap<String, PositionFigures>, sqlx::Error> {
        Ok(self
            .positions(sku, None)
            .await?
            .into_iter()
            .map(|p| (p.location_id, p.figures))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement of SQLite's batch reads finds the batch's rows
    /// through an index (the journal's event ids, the parked events' and
    /// the positions' keys), never by reading a table whole: those tables
    /// hold millions of rows.
    #[tokio::test]
    async fn sqlite_batch_reads_search_every_table_by_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("reads.db").display());
        let store = Store::connect(&url, 2).await.expect("store");
        let Db::Sqlite { writer, .. } = store.db() else {
            panic!("not SQLite");
        };
        let statements: Vec<&str> = SQLITE_BATCH_READS.split("; ").collect();
        assert_eq!(statements.len(), 3);
        for (statement, (table, index)) in statements.into_iter().zip([
            ("journal", "sqlite_autoindex_journal"),
            ("parked_events", "sqlite_autoindex_parked_events"),
            ("positions", "PRIMARY KEY"),
        ]) {
            use sqlx::Row as _;
            let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {statement}"
            )))
            .fetch_all(writer)
            .await
            .expect("plan")
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
            assert!(
                plan.iter()
                    .any(|step| step.starts_with("SEARCH") && step.contains(index)),
                "{table}: {plan:?}"
            );
            assert!(
                !plan
                    .iter()
                    // The JSON lists (and the key list's CTE) are read
                    // whole: they are the batch.
                    .any(|step| step.starts_with("SCAN")
                        && !step.contains("VIRTUAL TABLE")
                        && step != "SCAN k"),
                "{table} read whole: {plan:?}"
            );
        }
        store.close().await;
    }
}
