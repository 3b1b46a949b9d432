//! Group commit of small writes on SQLite's single writer.
//!
//! A reservation request writes three times: its `Idempotency-Key` claim,
//! the reservation, and the stored answer. Each alone is a transaction
//! whose commit syncs the WAL, and the single writer does one at a time, so
//! the sync, not the work, would bound reservations per second. Instead
//! every such write waits here, and the next transaction carries all that
//! are waiting (up to [`GROUP_WRITES`]): each runs in its own savepoint (a
//! write that refuses or fails rolls back only itself), one commit makes
//! them durable together, and only then does each caller get its answer.
//! The writes of one transaction run one after the other on one
//! connection, so each sees those before it (no oversell).
//!
//! A failed commit fails every write of the group: nothing of it is kept,
//! and every caller hears so. PostgreSQL needs none of this: its
//! connections commit concurrently, so callers there run their own
//! transactions.

use futures::future::BoxFuture;
use sqlx::{Sqlite, Transaction};

use super::{BeginWrite as _, Db, Store};

/// Writes one shared transaction carries at most.
const GROUP_WRITES: usize = 128;

/// Tells a write's caller the transaction's fate.
type Tell = Box<dyn FnOnce(Result<(), &sqlx::Error>) + Send>;

/// What a write hands back: whether to keep it, and how to tell its caller
/// once the transaction's fate is known.
type Settled = (bool, Tell);

/// One waiting write: runs inside the shared transaction.
type Write =
    Box<dyn for<'c> FnOnce(&'c mut Transaction<'static, Sqlite>) -> BoxFuture<'c, Settled> + Send>;

/// The writes waiting for SQLite's writer.
#[derive(Default)]
pub(crate) struct WriteGroup {
    /// (needs a savepoint, the write).
    waiting: std::sync::Mutex<std::collections::VecDeque<(bool, Write)>>,
    /// Held by the task committing; the others queue behind it.
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for WriteGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self.waiting.lock().map(|w| w.len()).unwrap_or_default();
        f.debug_struct("WriteGroup")
            .field("waiting", &waiting)
            .finish()
    }
}

impl WriteGroup {
    fn push(&self, savepoint: bool, write: Write) {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back((savepoint, write));
    }

    fn take(&self) -> Vec<(bool, Write)> {
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = waiting.len().min(GROUP_WRITES);
        waiting.drain(..n).collect()
    }
}

impl Store {
    /// Runs `write` on SQLite's writer inside a transaction shared with the
    /// other waiting writes, in a savepoint of its own. `write` answers
    /// `(value, keep)`: `keep == false` rolls its savepoint back (a
    /// refusal). The value comes back once the transaction has committed;
    /// an error of `write` rolls back only its own savepoint.
    ///
    /// SQLite only (callers branch on the backend).
    pub(crate) async fn grouped<T, F>(&self, write: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut Transaction<'static, Sqlite>,
            ) -> BoxFuture<'c, Result<(T, bool), sqlx::Error>>
            + Send
            + 'static,
    {
        self.enqueue(true, write).await
    }

    /// Like [`Store::grouped`] without the savepoint (two statements fewer),
    /// for a write that always keeps what it did and whose statements each
    /// either change nothing or complete the write: a statement that fails
    /// is undone by SQLite on its own, so nothing is left half done.
    pub(crate) async fn grouped_atomic<T, F>(&self, write: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut Transaction<'static, Sqlite>,
            ) -> BoxFuture<'c, Result<(T, bool), sqlx::Error>>
            + Send
            + 'static,
    {
        self.enqueue(false, write).await
    }

    async fn enqueue<T, F>(&self, savepoint: bool, write: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut Transaction<'static, Sqlite>,
            ) -> BoxFuture<'c, Result<(T, bool), sqlx::Error>>
            + Send
            + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, sqlx::Error>>();
        let boxed: Write = Box::new(move |tx| {
            Box::pin(async move {
                match write(tx).await {
                    Ok((value, keep)) => {
                        let tell: Tell = Box::new(move |committed| {
                            let _ = reply.send(match committed {
                                Ok(()) => Ok(value),
                                Err(error) => Err(sqlx::Error::Protocol(format!(
                                    "the grouped transaction failed: {error}"
                                ))),
                            });
                        });
                        (keep, tell)
                    }
                    Err(error) => {
                        let tell: Tell = Box::new(move |_| {
                            let _ = reply.send(Err(error));
                        });
                        (false, tell)
                    }
                }
            })
        });
        self.write_group().push(savepoint, boxed);
        // The commit runs in its own task: a caller that goes away never
        // cancels a transaction other callers' writes ride in.
        let store = self.clone();
        tokio::spawn(async move { store.commit_group().await });
        answer.await.unwrap_or_else(|_| {
            Err(sqlx::Error::Protocol(
                "the grouped transaction failed before this write ran".into(),
            ))
        })
    }

    async fn commit_group(&self) {
        let Db::Sqlite { writer, .. } = self.db() else {
            return;
        };
        let group = self.write_group();
        let _turn = group.turn.lock().await;
        loop {
            let writes = group.take();
            if writes.is_empty() {
                return;
            }
            let mut tells = Vec::with_capacity(writes.len());
            let committed = async {
                let mut tx = writer.begin_write().await?;
                for (savepoint, write) in writes {
                    if !savepoint {
                        let (_, tell) = write(&mut tx).await;
                        tells.push(tell);
                        continue;
                    }
                    sqlx::query("SAVEPOINT grouped_write")
                        .execute(&mut *tx)
                        .await?;
                    let (keep, tell) = write(&mut tx).await;
                    tells.push(tell);
                    if !keep {
                        sqlx::query("ROLLBACK TO grouped_write")
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query("RELEASE grouped_write")
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await;
            match committed {
                Ok(()) => tells.into_iter().for_each(|tell| tell(Ok(()))),
                Err(error) => {
                    tracing::warn!(%error, "grouped write transaction failed");
                    tells.into_iter().for_each(|tell| tell(Err(&error)));
                }
            }
        }
    }
}
