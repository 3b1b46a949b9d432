//! The availability change feed.
//!
//! Every write that moves a position commits an `outbox_changes` row in its
//! own transaction (an ingest batch, a reservation, a safety stock change).
//! [`Store::publish_changes`] turns committed rows into `change_feed`
//! entries: it takes the lock of the publisher (PostgreSQL advisory lock;
//! SQLite's single writer), expands batch rows into the positions their
//! journal entries touched (transfer counterparties included), reads those
//! positions' figures as they are now, appends one entry per position with
//! the next numbers of a gapless sequence, and deletes the rows it
//! consumed, all in one transaction (on SQLite: reads on a reader
//! snapshot, then numbers, appends and deletes last in a transaction it
//! shares with other writes; see `group`).
//!
//! Why this gives readers a gapless, ordered feed: sequence numbers are
//! handed out only under the publisher lock and become visible together at
//! its commit, so a reader that has seen `seq` N has seen everything below
//! N. A row whose transaction commits late is simply published by a later
//! run with a higher number; since every entry carries the position's
//! current figures, the newest entry per position is always the truth.

use serde::Serialize;
use utoipa::ToSchema;

use super::{Store, micros_to_rfc3339};
use crate::inventory::position::resolve_safety_stock;
use crate::on_reader;
use crate::storage::ledger::state_from_row;

/// Outbox rows taken per publishing run (a batch row can expand to up to
/// 2,000 positions: 1,000 events and their counterparties).
const ROWS_PER_RUN: i64 = 64;
/// Position pairs per figures query (two binds each; a shorter last chunk
/// is padded to this length, see `gather`).
const PAIRS_PER_QUERY: usize = 100;

/// One entry of the change feed: a position's figures after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct Change {
    /// Feed sequence number (gapless, ascending; the SSE event id).
    pub seq: i64,
    /// Location.
    pub location_id: String,
    /// Sku.
    pub sku: String,
    /// Physical units.
    pub on_hand: i64,
    /// Damaged or quarantined units.
    pub unsellable: i64,
    /// Held by active reservations.
    pub reserved: i64,
    /// Withheld from sale.
    pub safety_stock: i64,
    /// Shipped here, not yet received.
    pub in_transit: i64,
    /// Sellable now.
    pub available: i64,
    /// When the earliest change this entry covers was accepted (RFC 3339).
    pub changed_at: String,
    /// When the entry was published (RFC 3339).
    pub published_at: String,
    /// `changed_at` in unix microseconds (for latency measurements).
    #[serde(skip)]
    pub changed_at_micros: i64,
}

/// What one publishing run did.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Outbox rows consumed.
    pub rows: usize,
    /// Feed entries appended (in seq order).
    pub changes: Vec<Change>,
    /// Outbox rows left behind (more work waiting).
    pub more: bool,
}

/// A page query of the feed.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// Entries after this seq.
    pub after: i64,
    /// Only these skus (empty: all).
    pub skus: Vec<String>,
    /// Only these locations (empty: all).
    pub location_ids: Vec<String>,
    /// At most this many entries.
    pub limit: i64,
}

/// Outbox rows not yet published and the oldest one's creation time.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeedBacklog {
    /// Rows waiting.
    pub rows: i64,
    /// Creation of the oldest (unix microseconds).
    pub oldest: Option<i64>,
}

const FIGURES_SELECT: &str = "SELECT p.location_id, p.sku, p.count_at, p.count_event_id, \
     p.count_qty, p.delta_after, p.unsellable_raw, p.inbound_shipped, p.inbound_received, \
     (SELECT CAST(COALESCE(SUM(h.quantity), 0) AS BIGINT) FROM reservation_holds h \
     WHERE h.sku = p.sku AND h.location_id = p.location_id AND h.expires_at > ";

/// The positions a journal entry touched, as text: its sku, its location
/// and, for a transfer, the counterparty, split by [`UNIT`]. Publishing
/// reads a batch's entries as such records joined by [`RECORD`] into one
/// string: a row each spent more in the driver than the database spent
/// reading them (a refresh of two batches took 5.5 ms that way, 1.4 ms
/// this way, in `bench ingest`). Ids are printable ASCII (see
/// `retail_shared::validate`), so neither separator occurs in one.
macro_rules! touched_record {
    () => {
        "sku || '\u{1f}' || location_id || COALESCE('\u{1f}' || counterparty_location_id, '')"
    };
}
/// Separates the fields of a touched-positions record.
const UNIT: char = '\u{1f}';
/// Separates touched-positions records.
const RECORD: char = '\u{1e}';

/// The (location, sku) pairs of one `touched_record!`.
fn record_positions(record: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut fields = record.split(UNIT);
    let sku = fields.next().unwrap_or_default();
    fields.map(move |location| (location, sku))
}

const FEED_COLUMNS: &str = "seq, location_id, sku, on_hand, unsellable, reserved, safety_stock, \
     in_transit, available, changed_at, published_at";

fn change_from_row<R: sqlx::Row>(row: &R) -> Result<Change, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let changed_at: i64 = row.try_get("changed_at")?;
    Ok(Change {
        seq: row.try_get("seq")?,
        location_id: row.try_get("location_id")?,
        sku: row.try_get("sku")?,
        on_hand: row.try_get("on_hand")?,
        unsellable: row.try_get("unsellable")?,
        reserved: row.try_get("reserved")?,
        safety_stock: row.try_get("safety_stock")?,
        in_transit: row.try_get("in_transit")?,
        available: row.try_get("available")?,
        changed_at: micros_to_rfc3339(changed_at),
        published_at: micros_to_rfc3339(row.try_get("published_at")?),
        changed_at_micros: changed_at,
    })
}

macro_rules! feed_backend {
    ($module:ident, $db:ty, $serialise:literal, $concat:literal) => {
        pub(crate) mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Row, Transaction};
            use std::collections::HashMap;

            type Tx<'c> = Transaction<'c, $db>;

            /// The current figures of `keys` (positions that do not exist
            /// are left out).
            async fn read_figures(
                tx: &mut Tx<'_>,
                keys: &[(String, String)],
                now: i64,
            ) -> Result<HashMap<(String, String), PositionFiguresRow>, sqlx::Error> {
                let mut figures: HashMap<(String, String), PositionFiguresRow> = HashMap::new();
                for chunk in keys.chunks(PAIRS_PER_QUERY) {
                    // A join with the key list (one primary-key probe per
                    // pair on both backends), padded to a fixed length by
                    // repeating the last pair: every query of a run is the
                    // same statement, prepared once per connection, where
                    // a statement per chunk length was prepared again on
                    // almost every run.
                    let Some(last) = chunk.last() else { continue };
                    let padded = chunk
                        .iter()
                        .chain(std::iter::repeat(last))
                        .take(PAIRS_PER_QUERY);
                    let mut qb = QueryBuilder::<$db>::new("WITH k (l, s) AS (");
                    qb.push_values(padded, |mut row, (location, sku)| {
                        row.push_bind(location.as_str()).push_bind(sku.as_str());
                    });
                    qb.push(") ");
                    qb.push(FIGURES_SELECT);
                    qb.push_bind(now);
                    qb.push(
                        ") AS reserved, p.last_event_at, p.updated_at, \
                         p.safety_stock AS position_safety, \
                         pr.safety_stock AS product_safety, l.safety_stock_default \
                         FROM k JOIN positions p ON p.sku = k.s AND p.location_id = k.l \
                         JOIN products pr ON pr.sku = p.sku \
                         JOIN locations l ON l.location_id = p.location_id",
                    );
                    for row in qb.build().fetch_all(&mut **tx).await? {
                        let state = state_from_row(&row)?;
                        let safety = resolve_safety_stock(
                            row.try_get("position_safety")?,
                            row.try_get("product_safety")?,
                            row.try_get("safety_stock_default")?,
                        );
                        let view = state.view(safety);
                        figures.insert(
                            (row.try_get("location_id")?, row.try_get("sku")?),
                            PositionFiguresRow(view),
                        );
                    }
                }
                Ok(figures)
            }

            /// The positions the journal entries of `batches` touched (each
            /// entry's own and its counterparty's), with their batch, in
            /// journal order. The entries come back as one string per
            /// chunk of batches (see `touched_record!`).
            async fn batch_positions(
                tx: &mut Tx<'_>,
                batches: &[i64],
            ) -> Result<Vec<(i64, (String, String))>, sqlx::Error> {
                let mut out = Vec::new();
                for chunk in batches.chunks(500) {
                    let mut qb = QueryBuilder::<$db>::new(concat!(
                        "SELECT ",
                        $concat,
                        "(CAST(batch_id AS TEXT) || '\u{1f}' || ",
                        touched_record!(),
                        ", '\u{1e}' ORDER BY seq) FROM journal WHERE batch_id IN ("
                    ));
                    let mut list = qb.separated(", ");
                    for batch in chunk {
                        list.push_bind(*batch);
                    }
                    list.push_unseparated(")");
                    let text: Option<String> = qb.build_query_scalar().fetch_one(&mut **tx).await?;
                    for record in text.as_deref().unwrap_or_default().split(RECORD) {
                        let Some((batch, record)) = record.split_once(UNIT) else {
                            continue;
                        };
                        let batch: i64 = batch.parse().map_err(|_| {
                            sqlx::Error::Protocol(format!("journal batch id `{batch}`"))
                        })?;
                        for (location, sku) in record_positions(record) {
                            out.push((batch, (location.to_owned(), sku.to_owned())));
                        }
                    }
                }
                Ok(out)
            }

            /// Reads what to publish: the oldest outbox rows, the positions
            /// they touched and those positions' figures.
            pub(super) async fn gather(tx: &mut Tx<'_>, now: i64) -> Result<Gathered, sqlx::Error> {
                if !$serialise.is_empty() {
                    sqlx::query($serialise).execute(&mut **tx).await?;
                }
                let rows = sqlx::query(
                    "SELECT change_id, batch_id, location_id, sku, created_at FROM outbox_changes \
                     ORDER BY change_id LIMIT $1",
                )
                .bind(ROWS_PER_RUN + 1)
                .fetch_all(&mut **tx)
                .await?;
                // The newest outbox row this snapshot sees: a row above it
                // was committed after these figures were read.
                let horizon: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(MAX(change_id), 0) AS BIGINT) FROM outbox_changes",
                )
                .fetch_one(&mut **tx)
                .await?;
                let more = rows.len() > ROWS_PER_RUN as usize;
                let rows = &rows[..rows.len().min(ROWS_PER_RUN as usize)];
                if rows.is_empty() {
                    return Ok(Gathered::default());
                }
                // Positions touched, with the earliest acceptance time of each,
                // in first-touched order.
                let mut touched: HashMap<(String, String), (usize, i64)> = HashMap::new();
                let mut order: Vec<(String, String)> = Vec::new();
                let mut touch = |key: (String, String), at: i64| match touched.get_mut(&key) {
                    Some(entry) => entry.1 = entry.1.min(at),
                    None => {
                        touched.insert(key.clone(), (order.len(), at));
                        order.push(key);
                    }
                };
                let mut batches: Vec<(i64, i64)> = Vec::new();
                let mut ids: Vec<i64> = Vec::with_capacity(rows.len());
                for row in rows {
                    ids.push(row.try_get("change_id")?);
                    let created_at: i64 = row.try_get("created_at")?;
                    let batch: Option<i64> = row.try_get("batch_id")?;
                    match batch {
                        Some(batch) => batches.push((batch, created_at)),
                        None => {
                            let location: Option<String> = row.try_get("location_id")?;
                            let sku: Option<String> = row.try_get("sku")?;
                            if let (Some(location), Some(sku)) = (location, sku) {
                                touch((location, sku), created_at);
                            }
                        }
                    }
                }
                if !batches.is_empty() {
                    let created: HashMap<i64, i64> = batches.iter().copied().collect();
                    let ids: Vec<i64> = batches.iter().map(|(batch, _)| *batch).collect();
                    for (batch, key) in batch_positions(tx, &ids).await? {
                        touch(key, created.get(&batch).copied().unwrap_or(now));
                    }
                }
                // The touched positions' figures now.
                let mut figures = read_figures(tx, &order, now).await?;
                let entries = order
                    .into_iter()
                    .filter_map(|key| {
                        let PositionFiguresRow(view) = figures.remove(&key)?;
                        let changed_at = touched.get(&key).map_or(now, |entry| entry.1);
                        Some((key, view, changed_at))
                    })
                    .collect();
                Ok(Gathered {
                    ids,
                    entries,
                    more,
                    horizon,
                })
            }

            /// Re-reads, inside the writing transaction, the figures of
            /// gathered positions that a change committed after the
            /// gathering snapshot touched (an outbox row above its
            /// horizon). Without it an entry could carry figures older than
            /// a write a client already had answered: a reader that loaded
            /// the position afresh after its write, then applied the entry
            /// (numbered after its load), would go back to the figures
            /// before its own write until the next entry came. SQLite
            /// only: PostgreSQL gathers and appends in one transaction (and
            /// its ids are not commit-ordered, so a horizon would not say
            /// what came after).
            #[allow(dead_code)]
            pub(super) async fn refresh(
                tx: &mut Tx<'_>,
                gathered: &mut Gathered,
                now: i64,
            ) -> Result<(), sqlx::Error> {
                if gathered.entries.is_empty() {
                    return Ok(());
                }
                // Every position a newer change touched, as one string (see
                // `touched_record!`).
                let touched: Option<String> = sqlx::query_scalar(concat!(
                    "SELECT group_concat(k, '\u{1e}') FROM ( \
                     SELECT sku || '\u{1f}' || location_id AS k FROM outbox_changes \
                     WHERE change_id > $1 AND batch_id IS NULL \
                     AND sku IS NOT NULL AND location_id IS NOT NULL \
                     UNION ALL SELECT ",
                    touched_record!(),
                    " FROM journal WHERE batch_id IN ( \
                     SELECT batch_id FROM outbox_changes \
                     WHERE change_id > $1 AND batch_id IS NOT NULL))"
                ))
                .bind(gathered.horizon)
                .fetch_one(&mut **tx)
                .await?;
                let Some(touched) = touched else {
                    return Ok(());
                };
                let newer: std::collections::HashSet<(&str, &str)> =
                    touched.split(RECORD).flat_map(record_positions).collect();
                let stale: Vec<(String, String)> = gathered
                    .entries
                    .iter()
                    .filter(|((location, sku), _, _)| {
                        newer.contains(&(location.as_str(), sku.as_str()))
                    })
                    .map(|(key, _, _)| key.clone())
                    .collect();
                if stale.is_empty() {
                    return Ok(());
                }
                let mut fresh = read_figures(tx, &stale, now).await?;
                for (key, view, _) in &mut gathered.entries {
                    if let Some(PositionFiguresRow(figures)) = fresh.remove(key) {
                        *view = figures;
                    }
                }
                Ok(())
            }

            /// Numbers and appends the gathered entries and deletes their
            /// outbox rows; `None` (roll back) when another publisher took
            /// some of the rows meanwhile.
            pub(super) async fn append(
                tx: &mut Tx<'_>,
                gathered: Gathered,
                now: i64,
            ) -> Result<Option<Published>, sqlx::Error> {
                let Gathered {
                    ids, entries, more, ..
                } = gathered;
                if ids.is_empty() {
                    return Ok(Some(Published::default()));
                }
                // Only the rows read: on PostgreSQL a lower change_id may
                // still be uncommitted; a later run takes it.
                let mut qb =
                    QueryBuilder::<$db>::new("DELETE FROM outbox_changes WHERE change_id IN (");
                let mut list = qb.separated(", ");
                for id in &ids {
                    list.push_bind(*id);
                }
                list.push_unseparated(")");
                let deleted = qb.build().execute(&mut **tx).await?.rows_affected();
                if deleted != ids.len() as u64 {
                    return Ok(None);
                }
                // The numbers taken and the head moved past them in one
                // statement (each is a round trip to SQLite's writer thread).
                let taken = i64::try_from(entries.len()).unwrap_or(i64::MAX);
                let head: i64 = if entries.is_empty() {
                    0
                } else {
                    sqlx::query_scalar(
                        "UPDATE feed_state SET head = head + $1 WHERE id = 1 RETURNING head - $1",
                    )
                    .bind(taken)
                    .fetch_one(&mut **tx)
                    .await?
                };
                let mut changes = Vec::with_capacity(entries.len());
                let mut seq = head;
                let published_at = micros_to_rfc3339(now);
                for (key, view, changed_at) in entries {
                    seq += 1;
                    changes.push(Change {
                        seq,
                        location_id: key.0,
                        sku: key.1,
                        on_hand: view.on_hand,
                        unsellable: view.unsellable,
                        reserved: view.reserved,
                        safety_stock: view.safety_stock,
                        in_transit: view.in_transit,
                        available: view.available,
                        changed_at: micros_to_rfc3339(changed_at),
                        published_at: published_at.clone(),
                        changed_at_micros: changed_at,
                    });
                }
                for chunk in changes.chunks(500) {
                    let mut qb = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO change_feed ({FEED_COLUMNS}) "
                    ));
                    qb.push_values(chunk, |mut values, change| {
                        values
                            .push_bind(change.seq)
                            .push_bind(change.location_id.as_str())
                            .push_bind(change.sku.as_str())
                            .push_bind(change.on_hand)
                            .push_bind(change.unsellable)
                            .push_bind(change.reserved)
                            .push_bind(change.safety_stock)
                            .push_bind(change.in_transit)
                            .push_bind(change.available)
                            .push_bind(change.changed_at_micros)
                            .push_bind(now);
                    });
                    qb.build().execute(&mut **tx).await?;
                }
                Ok(Some(Published {
                    rows: ids.len(),
                    changes,
                    more,
                }))
            }
        }
    };
}

/// What a publishing run read: outbox row ids and, per position touched
/// (first-touched order), its figures and earliest acceptance time.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    ids: Vec<i64>,
    entries: Vec<(
        (String, String),
        crate::inventory::position::PositionFigures,
        i64,
    )>,
    more: bool,
    /// The newest outbox row the gathering snapshot saw.
    horizon: i64,
}
/// A position's figures, named for the publisher's map.
#[derive(Debug, Clone, Copy)]
struct PositionFiguresRow(crate::inventory::position::PositionFigures);

feed_backend!(sqlite_feed, sqlx::Sqlite, "", "group_concat");
feed_backend!(
    postgres_feed,
    sqlx::Postgres,
    // One publisher at a time across replicas (released at commit).
    "SELECT pg_advisory_xact_lock(7301006)",
    "string_agg"
);

impl Store {
    /// Publishes committed availability changes into the feed (see the
    /// module documentation). Returns what it appended.
    pub async fn publish_changes(&self) -> Result<Published, sqlx::Error> {
        use super::BeginWrite as _;
        let now = self.now();
        match self.db() {
            // Read on a reader snapshot, so the single writer (which every
            // ingest waits for) is held only to number, append and delete.
            // Positions that a change committed since the snapshot touched
            // are read again in the writing transaction (`refresh`), so no
            // entry carries figures older than a write answered before it
            // was numbered; the change's own outbox row is published next.
            super::Db::Sqlite { reader, writer, .. } => {
                let mut read = reader.begin().await?;
                let mut gathered = sqlite_feed::gather(&mut read, now).await?;
                read.rollback().await?;
                if gathered.ids.is_empty() {
                    return Ok(Published::default());
                }
                // The numbering rides, last, in the next shared transaction
                // of the small writes (see `group`): no transaction and WAL
                // sync of its own for reservations to queue behind, and its
                // entries see every write committed with them.
                if self.committer().is_some() {
                    let write: super::group::GroupedWrite<Published> = Box::new(move |tx| {
                        Box::pin(async move {
                            sqlite_feed::refresh(tx, &mut gathered, now).await?;
                            sqlite_feed::append(tx, gathered, now).await
                        })
                    });
                    // `None`: another publisher (a replica on the same file)
                    // took some rows; try again.
                    return Ok(self.grouped(write, true).await?.unwrap_or(Published {
                        more: true,
                        ..Published::default()
                    }));
                }
                let mut tx = writer.begin_write().await?;
                sqlite_feed::refresh(&mut tx, &mut gathered, now).await?;
                match sqlite_feed::append(&mut tx, gathered, now).await? {
                    Some(published) => {
                        tx.commit().await?;
                        Ok(published)
                    }
                    // Another publisher (a replica on the same file) took
                    // some rows: try again.
                    None => {
                        tx.rollback().await?;
                        Ok(Published {
                            more: true,
                            ..Published::default()
                        })
                    }
                }
            }
            super::Db::Postgres(_) => {
                crate::transact!(self, sqlite_feed, postgres_feed, |tx, backend| {
                    let gathered = backend::gather(&mut tx, now).await?;
                    let published = backend::append(&mut tx, gathered, now)
                        .await?
                        .unwrap_or_default();
                    let commit = published.rows > 0;
                    (published, commit)
                })
            }
        }
    }

    /// The newest seq of the feed (0 when nothing was published yet).
    pub async fn feed_head(&self) -> Result<i64, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            sqlx::query_scalar("SELECT head FROM feed_state WHERE id = 1")
                .fetch_one(pool)
                .await
        })
    }

    /// The oldest seq still kept (head + 1 when the feed is empty).
    pub async fn feed_tail(&self) -> Result<i64, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM change_feed")
                .fetch_one(pool)
                .await?;
            match oldest {
                Some(seq) => Ok(seq),
                None => Ok(sqlx::query_scalar::<_, i64>(
                    "SELECT head FROM feed_state WHERE id = 1",
                )
                .fetch_one(pool)
                .await?
                    + 1),
            }
        })
    }

    /// Feed entries after `filter.after`, in seq order.
    pub async fn changes(&self, filter: &FeedFilter) -> Result<Vec<Change>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let mut qb = sqlx::QueryBuilder::new(format!(
                "SELECT {FEED_COLUMNS} FROM change_feed WHERE seq > "
            ));
            qb.push_bind(filter.after);
            if !filter.skus.is_empty() {
                qb.push(" AND sku IN (");
                let mut list = qb.separated(", ");
                for sku in &filter.skus {
                    list.push_bind(sku.as_str());
                }
                list.push_unseparated(")");
            }
            if !filter.location_ids.is_empty() {
                qb.push(" AND location_id IN (");
                let mut list = qb.separated(", ");
                for location in &filter.location_ids {
                    list.push_bind(location.as_str());
                }
                list.push_unseparated(")");
            }
            qb.push(" ORDER BY seq LIMIT ");
            qb.push_bind(filter.limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(change_from_row).collect()
        })
    }

    /// Outbox change rows waiting for the publisher.
    pub async fn feed_backlog(&self) -> Result<FeedBacklog, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let (rows, oldest): (i64, Option<i64>) =
                sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox_changes")
                    .fetch_one(pool)
                    .await?;
            Ok(FeedBacklog { rows, oldest })
        })
    }

    /// Deletes the oldest feed entries: those published before `before`
    /// that every webhook subscriber (active or paused) has, and whatever
    /// was published before `hard_before`. Always a prefix of the
    /// sequence (replicas' clocks differ, so times are not monotonic in
    /// seq): readers resuming below the oldest kept seq are told so.
    ///
    /// Works through the sequence `page` entries at a time, one short
    /// write per page, and stops at the first page not wholly deleted: the
    /// cost follows what is deleted, not the feed's length (there is no
    /// index on publication time for every publish to pay for).
    /// Returns the number deleted.
    pub async fn prune_feed(
        &self,
        before: i64,
        hard_before: i64,
        page: i64,
    ) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        loop {
            let (soft, hard, min_cursor, page_end): (
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<i64>,
            ) = on_reader!(self.db(), |pool| {
                sqlx::query_as(
                    "WITH page AS (SELECT seq, published_at FROM change_feed \
                         ORDER BY seq LIMIT $3) \
                     SELECT (SELECT MAX(seq) FROM page WHERE published_at < $1), \
                     (SELECT MAX(seq) FROM page WHERE published_at < $2), \
                     (SELECT MIN(cursor) FROM webhook_subscriptions), \
                     (SELECT MAX(seq) FROM page)",
                )
                .bind(before)
                .bind(hard_before)
                .bind(page.max(1))
                .fetch_one(pool)
                .await
            })?;
            let soft = match (soft, min_cursor) {
                (Some(soft), Some(cursor)) => Some(soft.min(cursor)),
                (soft, None) => soft,
                (None, Some(_)) => None,
            };
            let Some(bound) = soft.max(hard) else {
                return Ok(deleted);
            };
            let n = crate::on_writer!(self.db(), |pool| {
                sqlx::query("DELETE FROM change_feed WHERE seq <= $1")
                    .bind(bound)
                    .execute(pool)
                    .await
                    .map(|result| result.rows_affected())
            })?;
            deleted += n;
            if n == 0 || Some(bound) != page_end {
                return Ok(deleted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::event::EventInput;
    use crate::storage::BeginWrite as _;
    use crate::storage::ledger::IngestContext;
    use crate::storage::master::ChangeContext;
    use retail_shared::model::{LocationInput, LocationType, ProductInput};
    use std::collections::HashMap;

    fn receipt(id: &str, quantity: i64) -> EventInput {
        EventInput {
            event_id: id.into(),
            r#type: "receipt".into(),
            location_id: "L1".into(),
            sku: "S1".into(),
            quantity,
            occurred_at: "2026-11-20T08:00:00Z".into(),
            source: "test".into(),
            reference: None,
            reason: None,
            counterparty_location_id: None,
            disposition: None,
        }
    }

    /// A change committed between the publisher's read (on a reader
    /// snapshot) and its append: the entry carries the figures after it,
    /// not the snapshot's.
    #[tokio::test]
    async fn an_entry_is_not_older_than_a_change_committed_while_it_was_gathered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("feed.db").display());
        let store = Store::connect(&url, 2).await.expect("store");
        let change = ChangeContext {
            actor: "t".into(),
            request_id: "r".into(),
        };
        store
            .upsert_locations(
                &["L1", "L2", "L3", "L4"].map(|id| LocationInput {
                    location_id: id.into(),
                    name: id.into(),
                    r#type: LocationType::Store,
                    latitude: None,
                    longitude: None,
                    capabilities: vec![],
                    safety_stock_default: 0,
                }),
                &change,
            )
            .await
            .expect("locations");
        store
            .upsert_products(
                &[ProductInput {
                    sku: "S1".into(),
                    name: "S1".into(),
                    unit_cost: rust_decimal::Decimal::ONE,
                    currency: "USD".into(),
                    gtin: None,
                    safety_stock: None,
                }],
                &change,
            )
            .await
            .expect("products");
        // Nothing from the master data left to publish.
        while store.publish_changes().await.expect("publish").rows > 0 {}
        let ctx = IngestContext {
            actor: "t".into(),
            request_id: "r".into(),
            trace_id: "t".into(),
            span_id: None,
        };
        let at = |location: &str, event: EventInput| EventInput {
            location_id: location.into(),
            ..event
        };
        store
            .ingest(
                &[
                    receipt("first", 5),
                    at("L2", receipt("first-l2", 3)),
                    at("L3", receipt("first-l3", 5)),
                    at("L4", receipt("first-l4", 9)),
                ],
                &ctx,
            )
            .await
            .expect("ingest");
        let crate::storage::Db::Sqlite { reader, writer, .. } = store.db() else {
            unreachable!("a SQLite store")
        };
        let now = store.now();
        let mut read = reader.begin().await.expect("read");
        let mut gathered = sqlite_feed::gather(&mut read, now).await.expect("gather");
        read.rollback().await.expect("end read");
        let figures = |entries: &[Change]| -> HashMap<String, (i64, i64, i64)> {
            entries
                .iter()
                .map(|c| {
                    (
                        c.location_id.clone(),
                        (c.on_hand, c.in_transit, c.safety_stock),
                    )
                })
                .collect()
        };
        let snapshot: HashMap<&str, i64> = gathered
            .entries
            .iter()
            .map(|((location, _), view, _)| (location.as_str(), view.on_hand))
            .collect();
        assert_eq!(
            snapshot,
            HashMap::from([("L1", 5), ("L2", 3), ("L3", 5), ("L4", 9)]),
            "the snapshot's figures"
        );

        // Committed after the read (outbox rows above the horizon): a
        // receipt at L1, a transfer from L3 whose counterparty is L2 (the
        // record's third field), and a safety stock change at L4 (a row
        // without a batch).
        let mut transfer = at("L3", receipt("transfer", 2));
        transfer.r#type = "transfer_out".into();
        transfer.counterparty_location_id = Some("L2".into());
        store
            .ingest(&[receipt("second", 7), transfer], &ctx)
            .await
            .expect("ingest");
        store
            .set_safety_stock("L4", "S1", Some(6))
            .await
            .expect("safety stock");

        let mut tx = writer.begin_write().await.expect("write");
        sqlite_feed::refresh(&mut tx, &mut gathered, now)
            .await
            .expect("refresh");
        let published = sqlite_feed::append(&mut tx, gathered, now)
            .await
            .expect("append")
            .expect("appended");
        tx.commit().await.expect("commit");
        assert_eq!(
            figures(&published.changes),
            HashMap::from([
                ("L1".to_owned(), (12, 0, 0)),
                ("L2".to_owned(), (3, 2, 0)),
                ("L3".to_owned(), (3, 0, 0)),
                ("L4".to_owned(), (9, 0, 6)),
            ]),
            "the figures after them"
        );
        store.close().await;
    }
}
