//! Group commit of small writes on SQLite's single writer.
//!
//! A request with an `Idempotency-Key` writes three times: its claim, its
//! work, and the stored answer (a reservation carries all three in its own
//! batch: see `reservations::reserve_batch`). Each alone is a transaction
//! whose commit syncs the WAL, and the single writer does one at a time, so
//! the sync, not the work, would bound reservations per second. Instead
//! such requests wait in a [`Batch`] of their kind, and one write of the
//! shared transaction decides and writes a whole batch with a handful of
//! statements; the next transaction carries every batch that is waiting
//! (up to [`GROUP_WRITES`]), each in its own savepoint where it needs one
//! (a batch that fails rolls back only itself). One commit makes them
//! durable together, and only then does each caller get its answer. The
//! writes of one transaction run one after the other on one connection, so
//! each sees those before it (no oversell).
//!
//! Writers that would otherwise take the writer for a transaction of their
//! own between the groups ride along the same way ([`Store::grouped`]):
//! the audit log's batches, and the change feed's numbering, which goes
//! last in its transaction so its entries see every write committed with
//! them. An ingest transaction (which has its own grouping, in `ledger`)
//! takes the feed's waiting write at its end ([`Store::ride_last`]), and
//! while ingest groups commit one after the other the feed's write waits
//! for the next of them rather than taking the writer, with a commit and a
//! WAL sync of its own, between two groups (`bench ingest`: the next group
//! waited 6 ms for the writer on average before, 1.7 ms after, of a 45 ms
//! transaction; WAL syncs over the million events 1,826 before, 1,350
//! after). It waits at most one ingest transaction longer for it.
//!
//! **The committer thread.** Every statement is a round trip to the
//! connection's own thread, and a transaction is a chain of them. Driven
//! from the service's runtime, each link waited behind HTTP work for a
//! worker, and the chain (not SQLite) bounded the writes per second. The
//! transactions are therefore driven by one thread of their own (a
//! single-threaded runtime that does nothing else), started with the first
//! write, ending once the store is closed or dropped. The ingest path's
//! grouped transactions (`ledger`) run there too: a batch of 500 events
//! is about 20 statements, and with HTTP bodies of 100 KB being parsed on
//! the service's runtime each link of that chain waited for a worker,
//! leaving the writer's connection idle about a third of the time
//! (`bench ingest`, 1,000,000 events, alternating: 20,053 / 17,290,
//! 18,320 / 15,281, 18,009 / 16,756 and 16,663 / 14,903 events/s, median
//! 1.14x). A caller that goes away still never cancels a transaction other
//! callers' batches ride in: the transaction is its own task there.
//!
//! A failed commit fails every write of the group: nothing of it is kept,
//! and every caller hears so. PostgreSQL needs none of this: its
//! connections commit concurrently, so callers there run their own
//! transactions.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{BeginWrite as _, Db, Store};

/// Writes one shared transaction carries at most.
const GROUP_WRITES: usize = 128;

/// The pause before writes that a failed transaction never ran go again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How often an idle committer looks whether its store is gone.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A write for [`Store::grouped`]: `Ok(None)` rolls it back.
pub(crate) type GroupedWrite<T> = Box<
    dyn for<'c> FnOnce(
            &'c mut Transaction<'static, Sqlite>,
        ) -> BoxFuture<'c, Result<Option<T>, sqlx::Error>>
        + Send,
>;

/// Tells a write's callers the transaction's fate.
type Tell = Box<dyn FnOnce(Result<(), &sqlx::Error>) + Send>;

/// What a write hands back: whether to keep it, and how to tell its callers
/// once the transaction's fate is known.
type Settled = (bool, Tell);

/// One waiting write: runs inside the shared transaction.
type Write =
    Box<dyn for<'c> FnOnce(&'c mut Transaction<'static, Sqlite>) -> BoxFuture<'c, Settled> + Send>;

/// A write waiting for the next shared transaction.
struct Queued {
    /// Whether it runs in its own savepoint.
    savepoint: bool,
    /// Whether it goes after every other write of its transaction.
    last: bool,
    write: Write,
}

/// The writes waiting for SQLite's writer.
#[derive(Default)]
pub(crate) struct WriteGroup {
    waiting: Mutex<std::collections::VecDeque<Queued>>,
    /// Writes that go after every other write of the next transaction
    /// (the change feed's, so its entries carry the figures every write of
    /// their commit left; see [`Store::grouped`]).
    last: Mutex<std::collections::VecDeque<Queued>>,
    /// Wakes the committer.
    wake: tokio::sync::Notify,
    /// Ingest groups committing now (see [`IngestTurn`]): while there are,
    /// writes asked to go last wait for the next ingest transaction to
    /// carry them ([`Store::ride_last`]) instead of taking the writer for a
    /// transaction of their own between two groups.
    ingesting: AtomicUsize,
    /// The committer thread's runtime, once it runs (`None`: it could not
    /// start).
    committer: OnceLock<Option<tokio::runtime::Handle>>,
    /// Reservations waiting to be decided and written together.
    pub(crate) reservations: Batch<super::reservations::Pending, super::reservations::Keyed>,
    /// `Idempotency-Key` claims waiting.
    pub(crate) claims: Batch<super::idempotency::Claim, retail_shared::idempotency::Begin>,
    /// Stored answers of claimed keys waiting.
    pub(crate) completions: Batch<(String, retail_shared::idempotency::StoredResponse), ()>,
}

impl std::fmt::Debug for WriteGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self.waiting.lock().map(|w| w.len()).unwrap_or_default();
        f.debug_struct("WriteGroup")
            .field("waiting", &waiting)
            .finish_non_exhaustive()
    }
}

impl WriteGroup {
    fn push(&self, savepoint: bool, write: Write) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Queued {
                savepoint,
                last: false,
                write,
            });
        self.wake.notify_one();
    }

    fn push_last(&self, write: Write) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Queued {
                savepoint: true,
                last: true,
                write,
            });
        self.wake.notify_one();
    }

    /// Drops everything waiting (the store is closed): each caller hears
    /// that its write ended without an answer.
    fn abandon(&self) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.reservations.lock().clear();
        self.claims.lock().clear();
        self.completions.lock().clear();
    }

    /// Puts writes a failed transaction never ran back at the front.
    fn requeue(&self, writes: Vec<Queued>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        for write in writes.into_iter().rev() {
            if write.last {
                last.push_front(write);
            } else {
                waiting.push_front(write);
            }
        }
    }

    /// The next transaction's writes: those waiting (up to
    /// [`GROUP_WRITES`]), then every write asked to go last (each in its
    /// savepoint). While an ingest group commits, writes that go last
    /// alone make no transaction: they are left for the next ingest
    /// transaction to carry, or for the committer once ingest stops (its
    /// [`IngestTurn`] ending wakes it).
    fn take(&self) -> Vec<Queued> {
        let mut writes: Vec<Queued> = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let n = waiting.len().min(GROUP_WRITES);
            waiting.drain(..n).collect()
        };
        if writes.is_empty() && self.ingesting.load(Ordering::Acquire) > 0 {
            return writes;
        }
        writes.extend(self.take_last());
        writes
    }

    /// Marks an ingest group committing until the turn is dropped.
    pub(crate) fn ingest_turn(self: &Arc<Self>) -> IngestTurn {
        self.ingesting.fetch_add(1, Ordering::AcqRel);
        IngestTurn(Arc::clone(self))
    }

    /// Every write waiting to go last.
    fn take_last(&self) -> Vec<Queued> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect()
    }
}

/// Held while ingest groups commit one after the other (see
/// [`WriteGroup::take`]); dropping it wakes the committer for the writes
/// left waiting to go last.
pub(crate) struct IngestTurn(Arc<WriteGroup>);

impl Drop for IngestTurn {
    fn drop(&mut self) {
        self.0.ingesting.fetch_sub(1, Ordering::AcqRel);
        self.0.wake.notify_one();
    }
}

/// Requests of one kind that one write of the group decides and writes
/// together: a handful of statements for the whole batch instead of a
/// handful per request.
///
/// The first request into an empty batch schedules a run (a write of the
/// group); the run takes what is waiting when the writer reaches it, so
/// requests arriving meanwhile ride along. A run that leaves requests
/// behind (over its weight) schedules the next. A run that fails is rolled
/// back (its savepoint) and every request of it hears the error; answers
/// go out only once the shared transaction has committed.
pub(crate) struct Batch<I, O> {
    waiting: Mutex<Vec<Waiting<I, O>>>,
    /// Runs that carried requests, and the requests they carried.
    runs: AtomicU64,
    carried: AtomicU64,
}

/// A request and where its answer goes.
type Waiting<I, O> = (I, tokio::sync::oneshot::Sender<Result<O, sqlx::Error>>);

/// Decides and writes a batch inside the shared transaction: one answer
/// per request, in order.
pub(crate) type BatchRun<I, O> = for<'c> fn(
    &'c mut Transaction<'static, Sqlite>,
    &'c Store,
    Vec<I>,
) -> BoxFuture<'c, Result<Vec<O>, sqlx::Error>>;

/// How a kind of request is batched.
pub(crate) struct BatchKind<I: 'static, O: 'static> {
    /// Where its requests wait.
    pub(crate) queue: fn(&Store) -> &Batch<I, O>,
    /// The work of one run.
    pub(crate) run: BatchRun<I, O>,
    /// A request's weight (e.g. its lines) …
    pub(crate) weight: fn(&I) -> usize,
    /// … and the most one run takes (at least one request).
    pub(crate) max_weight: usize,
    /// Whether a run needs a savepoint: false only for a run of one
    /// statement (SQLite undoes a failed statement on its own).
    pub(crate) savepoint: bool,
}

impl<I, O> Default for Batch<I, O> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(Vec::new()),
            runs: AtomicU64::new(0),
            carried: AtomicU64::new(0),
        }
    }
}

impl<I, O> Batch<I, O> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<I, O>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// (runs that carried requests, requests they carried) so far.
    pub(crate) fn runs(&self) -> (u64, u64) {
        (
            self.runs.load(Ordering::Relaxed),
            self.carried.load(Ordering::Relaxed),
        )
    }

    /// Adds a request; true when the batch was empty (no run scheduled).
    fn push(&self, waiting: Waiting<I, O>) -> bool {
        let mut queue = self.lock();
        queue.push(waiting);
        queue.len() == 1
    }

    /// Takes requests from the front up to `max_weight` (at least one);
    /// also answers whether any are left.
    fn take(&self, weight: fn(&I) -> usize, max_weight: usize) -> (Vec<Waiting<I, O>>, bool) {
        let mut queue = self.lock();
        let mut total = 0;
        let mut n = 0;
        for (item, _) in queue.iter() {
            total += weight(item);
            if n > 0 && total > max_weight {
                break;
            }
            n += 1;
        }
        let taken: Vec<_> = queue.drain(..n).collect();
        (taken, !queue.is_empty())
    }
}

impl Store {
    /// Adds `item` to its kind's batch and waits for its answer, given
    /// once the transaction carrying the batch has committed. A caller
    /// that goes away cancels nothing: the batch runs without it.
    ///
    /// SQLite only (callers branch on the backend).
    pub(crate) async fn batched<I, O>(
        &self,
        kind: &'static BatchKind<I, O>,
        item: I,
    ) -> Result<O, sqlx::Error>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if (kind.queue)(self).push((item, reply)) {
            self.schedule_batch(kind);
        }
        answer.await.unwrap_or_else(|_| {
            Err(sqlx::Error::Protocol(
                "the batched write ended without an answer".into(),
            ))
        })
    }

    /// Runs `write` in the next shared transaction, in its own savepoint
    /// (with `last`: after every other write of that transaction), and
    /// answers once the transaction's fate is known: `Ok(Some(_))` only
    /// once it committed. `Ok(None)` from the write rolls it back (its
    /// savepoint) and is answered at once, as is an error. SQLite only;
    /// without a committer thread (see [`Store::committer`]) the write is
    /// dropped and answered with an error.
    ///
    /// Going last, a write sees every other write of its commit: the
    /// change feed numbers its entries so, and an entry never carries
    /// figures older than a write that became visible with it.
    pub(crate) async fn grouped<T: Send + 'static>(
        &self,
        write: GroupedWrite<T>,
        last: bool,
    ) -> Result<Option<T>, sqlx::Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued: Write = Box::new(move |tx| {
            Box::pin(async move {
                match write(tx).await {
                    Ok(Some(value)) => {
                        let tell: Tell = Box::new(move |committed| {
                            let _ = reply.send(committed.map(|()| Some(value)).map_err(|error| {
                                sqlx::Error::Protocol(format!(
                                    "the grouped transaction failed: {error}"
                                ))
                            }));
                        });
                        (true, tell)
                    }
                    Ok(None) => {
                        let _ = reply.send(Ok(None));
                        let tell: Tell = Box::new(|_| {});
                        (false, tell)
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                        let tell: Tell = Box::new(|_| {});
                        (false, tell)
                    }
                }
            })
        });
        if last {
            self.write_group().push_last(queued);
        } else {
            self.write_group().push(true, queued);
        }
        self.abandon_if_unserved();
        answer.await.unwrap_or_else(|_| {
            Err(sqlx::Error::Protocol(
                "the grouped write ended without an answer".into(),
            ))
        })
    }

    /// Queues one run of `kind`'s batch as a write of the group.
    fn schedule_batch<I, O>(&self, kind: &'static BatchKind<I, O>)
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let runner = self.clone();
        let write: Write = Box::new(move |tx| {
            Box::pin(async move {
                let (taken, more) = (kind.queue)(&runner).take(kind.weight, kind.max_weight);
                if more {
                    runner.schedule_batch(kind);
                }
                let (items, replies): (Vec<I>, Vec<_>) = taken.into_iter().unzip();
                if items.is_empty() {
                    let tell: Tell = Box::new(|_| {});
                    return (false, tell);
                }
                let queue = (kind.queue)(&runner);
                queue.runs.fetch_add(1, Ordering::Relaxed);
                queue
                    .carried
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                match (kind.run)(tx, &runner, items).await {
                    Ok(answers) => {
                        let tell: Tell = Box::new(move |committed| match committed {
                            Ok(()) => {
                                for (reply, answer) in replies.into_iter().zip(answers) {
                                    let _ = reply.send(Ok(answer));
                                }
                            }
                            Err(error) => {
                                for reply in replies {
                                    let _ = reply.send(Err(sqlx::Error::Protocol(format!(
                                        "the grouped transaction failed: {error}"
                                    ))));
                                }
                            }
                        });
                        (true, tell)
                    }
                    Err(error) => {
                        let message = format!("the batched write failed: {error}");
                        let tell: Tell = Box::new(move |_| {
                            for reply in replies {
                                let _ = reply.send(Err(sqlx::Error::Protocol(message.clone())));
                            }
                        });
                        (false, tell)
                    }
                }
            })
        });
        self.write_group().push(kind.savepoint, write);
        self.abandon_if_unserved();
    }

    /// Without the committer thread (or once the store is closed and the
    /// thread gone) nothing would ever run what was queued: drops it (its
    /// callers hear that it ended without an answer).
    fn abandon_if_unserved(&self) {
        let closed = matches!(self.db(), Db::Sqlite { writer, .. } if writer.is_closed());
        if closed || self.committer().is_none() {
            self.write_group().abandon();
        }
    }

    /// The committer thread's runtime (SQLite only), started on first
    /// use: the shared transactions of small writes run there.
    pub(crate) fn committer(&self) -> Option<&tokio::runtime::Handle> {
        let Db::Sqlite { writer, .. } = self.db() else {
            return None;
        };
        let group = self.write_group_arc();
        group
            .committer
            .get_or_init(|| {
                let (group, writer) = (Arc::downgrade(group), writer.clone());
                let (started, handle) = std::sync::mpsc::sync_channel(1);
                let spawned = std::thread::Builder::new()
                    .name("sqlite-commits".into())
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(runtime) => {
                                let _ = started.send(Some(runtime.handle().clone()));
                                runtime.block_on(commit_loop(group, writer));
                            }
                            Err(error) => {
                                tracing::error!(%error, "cannot start the SQLite committer");
                                let _ = started.send(None);
                            }
                        }
                    });
                match spawned {
                    // Waits only for the thread to build its runtime.
                    Ok(_) => handle.recv().ok().flatten(),
                    Err(error) => {
                        tracing::error!(%error, "cannot start the SQLite committer thread");
                        None
                    }
                }
            })
            .as_ref()
    }
}

/// Runs `writes` in `tx`, each in its savepoint where it asked for one,
/// collecting how to tell their callers; stops at the first statement that
/// fails (the writes not yet run stay in `writes`).
async fn run_writes(
    tx: &mut Transaction<'static, Sqlite>,
    writes: &mut std::vec::IntoIter<Queued>,
    tells: &mut Vec<Tell>,
) -> Result<(), sqlx::Error> {
    for Queued {
        savepoint, write, ..
    } in writes.by_ref()
    {
        if !savepoint {
            let (_, tell) = write(tx).await;
            tells.push(tell);
            continue;
        }
        sqlx::query("SAVEPOINT grouped_write")
            .execute(&mut **tx)
            .await?;
        let (keep, tell) = write(tx).await;
        tells.push(tell);
        // A kept write's savepoint is never released: the commit keeps
        // everything under it, the next write's savepoint nests inside it
        // (`ROLLBACK TO` names the newest one of that name), and each
        // statement is a round trip to the writer's thread.
        if !keep {
            sqlx::query("ROLLBACK TO grouped_write")
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// Writes asked to go last (see [`Store::grouped`]) that rode in another
/// transaction, one its owner commits (an ingest group's): told its fate
/// with [`Riders::settle`].
pub(crate) struct Riders {
    tells: Vec<Tell>,
    unrun: std::vec::IntoIter<Queued>,
    group: Arc<WriteGroup>,
}

impl Riders {
    /// Tells the riders that ran whether their transaction committed, and
    /// puts those that never ran back in line for the committer.
    pub(crate) fn settle(self, committed: Result<(), &sqlx::Error>) {
        self.tells.into_iter().for_each(|tell| tell(committed));
        let unrun: Vec<Queued> = self.unrun.collect();
        if !unrun.is_empty() {
            self.group.requeue(unrun);
            self.group.wake.notify_one();
        }
    }
}

impl Store {
    /// Runs the writes waiting to go last (the change feed's numbering)
    /// at the end of `tx`, a write transaction the caller commits, so they
    /// need no transaction and WAL sync of their own. The caller commits
    /// only when this answers `Ok`, and then settles the riders with the
    /// commit's outcome (also after an `Err`, which fails the transaction).
    pub(crate) async fn ride_last(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
    ) -> (Riders, Result<(), sqlx::Error>) {
        let group = self.write_group_arc().clone();
        let waiting = group.take_last();
        let mut riders = Riders {
            tells: Vec::with_capacity(waiting.len()),
            unrun: waiting.into_iter(),
            group,
        };
        let ran = run_writes(tx, &mut riders.unrun, &mut riders.tells).await;
        (riders, ran)
    }
}

/// The committer: carries the waiting writes in shared transactions until
/// the store is closed or dropped (then fails what still waits).
async fn commit_loop(group: Weak<WriteGroup>, writer: SqlitePool) {
    loop {
        let Some(group) = group.upgrade() else {
            return;
        };
        if writer.is_closed() {
            group.abandon();
            return;
        }
        let writes = group.take();
        if writes.is_empty() {
            // A write pushed since `take` left a permit: no wake is lost.
            let _ = tokio::time::timeout(IDLE_CHECK, group.wake.notified()).await;
            continue;
        }
        let unrun = commit(&writer, writes).await;
        if !unrun.is_empty() {
            group.requeue(unrun);
            // The writer failed before they ran: give it a moment.
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// One shared transaction: every write (in its savepoint where it asked for
/// one), one commit, then every caller told. Answers the writes that never
/// ran (the transaction failed before them): they go to the next one.
async fn commit(writer: &SqlitePool, writes: Vec<Queued>) -> Vec<Queued> {
    let mut tells = Vec::with_capacity(writes.len());
    let started = std::time::Instant::now();
    #[expect(clippy::cast_precision_loss, reason = "a count for a histogram")]
    metrics::histogram!("sqlite_group_commit_writes").record(writes.len() as f64);
    let mut writes = writes.into_iter();
    let committed = async {
        let mut tx = writer.begin_write().await?;
        run_writes(&mut tx, &mut writes, &mut tells).await?;
        let syncing = std::time::Instant::now();
        let committed = tx.commit().await;
        metrics::histogram!("sqlite_group_commit_sync_seconds")
            .record(syncing.elapsed().as_secs_f64());
        committed
    }
    .await;
    metrics::histogram!("sqlite_group_commit_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    match committed {
        Ok(()) => tells.into_iter().for_each(|tell| tell(Ok(()))),
        Err(error) => {
            tracing::warn!(%error, "grouped write transaction failed");
            tells.into_iter().for_each(|tell| tell(Err(&error)));
        }
    }
    writes.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row as _;

    async fn store() -> (tempfile::TempDir, Store, SqlitePool) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("group.db").display());
        let store = Store::connect(&url, 2).await.expect("store");
        let Db::Sqlite { writer, .. } = store.db() else {
            panic!("not SQLite");
        };
        let writer = writer.clone();
        sqlx::query("CREATE TABLE scratch (what TEXT NOT NULL)")
            .execute(&writer)
            .await
            .expect("table");
        (dir, store, writer)
    }

    /// A write inserting `what`, answering on `reply` once its
    /// transaction's fate is known; with `seen`, it first counts the rows
    /// already there and sends the count.
    fn insert(
        what: &'static str,
        seen: Option<tokio::sync::oneshot::Sender<i64>>,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    ) -> Write {
        Box::new(move |tx| {
            Box::pin(async move {
                if let Some(seen) = seen {
                    let n: i64 = sqlx::query("SELECT COUNT(*) FROM scratch")
                        .fetch_one(&mut **tx)
                        .await
                        .expect("count")
                        .get(0);
                    let _ = seen.send(n);
                }
                sqlx::query("INSERT INTO scratch (what) VALUES ($1)")
                    .bind(what)
                    .execute(&mut **tx)
                    .await
                    .expect("insert");
                let tell: Tell = Box::new(move |committed| {
                    let _ = reply.send(committed.map_err(ToString::to_string));
                });
                (true, tell)
            })
        })
    }

    /// `answer`, or a failed test when it does not come in time.
    async fn within<T>(answer: tokio::sync::oneshot::Receiver<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("no answer in time")
            .expect("the answer was dropped")
    }

    async fn rows(writer: &SqlitePool) -> Vec<String> {
        sqlx::query_scalar("SELECT what FROM scratch ORDER BY rowid")
            .fetch_all(writer)
            .await
            .expect("rows")
    }

    /// A write asked to go last runs after every other write of its
    /// transaction, even those queued after it.
    #[tokio::test]
    async fn a_last_write_sees_every_other_write_of_its_transaction() {
        let (_dir, store, writer) = store().await;
        let group = store.write_group();
        let (first, first_told) = tokio::sync::oneshot::channel();
        let (last, last_told) = tokio::sync::oneshot::channel();
        let (second, second_told) = tokio::sync::oneshot::channel();
        let (seen, seen_by_last) = tokio::sync::oneshot::channel();
        group.push(true, insert("first", None, first));
        group.push_last(insert("last", Some(seen), last));
        group.push(false, insert("second", None, second));
        let unrun = commit(&writer, group.take()).await;
        assert!(unrun.is_empty());
        assert_eq!(within(seen_by_last).await, 2);
        for told in [first_told, last_told, second_told] {
            assert_eq!(within(told).await, Ok(()));
        }
        assert_eq!(rows(&writer).await, ["first", "second", "last"]);
    }

    /// `grouped` answers `Some` after the commit, and a write answering
    /// `None` leaves nothing behind (its savepoint is rolled back) while
    /// the others of its transaction stay.
    #[tokio::test]
    async fn a_grouped_write_that_declines_is_rolled_back_alone() {
        let (_dir, store, writer) = store().await;
        let kept: GroupedWrite<&str> = Box::new(|tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO scratch (what) VALUES ('kept')")
                    .execute(&mut **tx)
                    .await?;
                Ok(Some("kept"))
            })
        });
        let declined: GroupedWrite<&str> = Box::new(|tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO scratch (what) VALUES ('declined')")
                    .execute(&mut **tx)
                    .await?;
                Ok(None)
            })
        });
        let (kept, declined) =
            tokio::join!(store.grouped(kept, false), store.grouped(declined, true));
        assert_eq!(kept.expect("kept"), Some("kept"));
        assert_eq!(declined.expect("declined"), None);
        assert_eq!(rows(&writer).await, ["kept"]);
    }

    /// Savepoints of kept writes stay open until the commit, so those of
    /// later writes nest inside them: rolling back a declined write undoes
    /// it alone, wherever it falls among kept ones.
    #[tokio::test]
    async fn a_declined_write_among_kept_ones_undoes_only_itself() {
        let (_dir, store, writer) = store().await;
        let group = store.write_group();
        let declined = |what: &'static str| -> Write {
            Box::new(move |tx| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO scratch (what) VALUES ($1)")
                        .bind(what)
                        .execute(&mut **tx)
                        .await
                        .expect("insert");
                    let tell: Tell = Box::new(|_| {});
                    (false, tell)
                })
            })
        };
        let mut told = Vec::new();
        for (what, keep) in [
            ("declined first", false),
            ("kept 1", true),
            ("declined 2", false),
            ("kept 3", true),
            ("kept 4", true),
            ("declined last", false),
        ] {
            if keep {
                let (reply, answer) = tokio::sync::oneshot::channel();
                group.push(true, insert(what, None, reply));
                told.push(answer);
            } else {
                group.push(true, declined(what));
            }
        }
        let unrun = commit(&writer, group.take()).await;
        assert!(unrun.is_empty());
        for answer in told {
            assert_eq!(within(answer).await, Ok(()));
        }
        assert_eq!(rows(&writer).await, ["kept 1", "kept 3", "kept 4"]);
    }

    /// A transaction of another owner (an ingest group's) inserting
    /// `what`, carrying the writes waiting to go last, committed.
    async fn owner_with_riders(store: &Store, writer: &SqlitePool, what: &str) {
        use super::super::BeginWrite as _;
        let mut tx = writer.begin_write().await.expect("begin");
        sqlx::query("INSERT INTO scratch (what) VALUES ($1)")
            .bind(what)
            .execute(&mut *tx)
            .await
            .expect("owner");
        let (riders, ran) = store.ride_last(&mut tx).await;
        ran.expect("riders ran");
        let committed = tx.commit().await;
        riders.settle(committed.as_ref().map(|_| ()));
        committed.expect("commit");
    }

    /// Writes waiting to go last ride at the end of another transaction
    /// (an ingest group's): they are written with it, hear its commit, and
    /// no longer wait for the committer; when that transaction does not
    /// commit they hear so and nothing of them stays.
    #[tokio::test]
    async fn last_writes_ride_in_a_transaction_their_owner_commits() {
        use super::super::BeginWrite as _;
        let (_dir, store, writer) = store().await;
        let group = store.write_group();

        let (reply, told) = tokio::sync::oneshot::channel();
        let (seen, seen_by_rider) = tokio::sync::oneshot::channel();
        group.push_last(insert("rider", Some(seen), reply));
        owner_with_riders(&store, &writer, "owner").await;
        assert_eq!(within(seen_by_rider).await, 1, "after the owner's write");
        assert_eq!(within(told).await, Ok(()));
        assert_eq!(rows(&writer).await, ["owner", "rider"]);
        assert!(group.take().is_empty(), "a rider left for the committer");

        // The owner's transaction fails to commit: the rider hears it.
        let (reply, told) = tokio::sync::oneshot::channel();
        group.push_last(insert("lost rider", None, reply));
        let mut tx = writer.begin_write().await.expect("begin");
        let (riders, ran) = store.ride_last(&mut tx).await;
        ran.expect("riders ran");
        tx.rollback().await.expect("rollback");
        let failed = sqlx::Error::Protocol("the owner did not commit".into());
        riders.settle(Err(&failed));
        assert!(within(told).await.is_err());
        assert_eq!(rows(&writer).await, ["owner", "rider"]);
    }

    /// While an ingest group commits, a write asked to go last is not
    /// committed on its own between two ingest transactions (each with its
    /// WAL sync, the next group waiting for the writer): it waits for the
    /// next ingest transaction to carry it, and once ingest stops the
    /// committer takes it.
    #[tokio::test]
    async fn last_writes_wait_for_the_ingest_transaction_while_ingest_commits() {
        let (_dir, store, writer) = store().await;
        let fed = |what: &'static str| -> GroupedWrite<&'static str> {
            Box::new(move |tx| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO scratch (what) VALUES ($1)")
                        .bind(what)
                        .execute(&mut **tx)
                        .await?;
                    Ok(Some(what))
                })
            })
        };

        let turn = store.write_group_arc().ingest_turn();
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.grouped(fed("rider"), true).await }
        });
        // The committer had every chance to take the writer for it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(rows(&writer).await.is_empty(), "committed on its own");
        assert!(!waiting.is_finished());
        owner_with_riders(&store, &writer, "ingest").await;
        let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("no answer in time")
            .expect("task");
        assert_eq!(answer.expect("grouped"), Some("rider"));
        assert_eq!(rows(&writer).await, ["ingest", "rider"]);

        // Left waiting when ingest stops: the committer takes it.
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.grouped(fed("after"), true).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rows(&writer).await, ["ingest", "rider"]);
        drop(turn);
        let answer = tokio::time::timeout(Duration::from_millis(900), waiting)
            .await
            .expect("not woken when ingest stopped")
            .expect("task");
        assert_eq!(answer.expect("grouped"), Some("after"));
        assert_eq!(rows(&writer).await, ["ingest", "rider", "after"]);
    }
}
