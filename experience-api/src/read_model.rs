//! The availability read model at the edge.
//!
//! Per sku, the sellable units per location, loaded from process-api on the
//! sku's first read and kept current by the change feed the relay follows
//! (every change carries a position's figures as they are now, so applying
//! one is an overwrite, never arithmetic). A read is answered from the model
//! only while the relay is known to hold every change up to a moment at
//! most `read_model_max_staleness_ms` ago (process-api's stream says so
//! about once a second); otherwise it goes to process-api, like a miss.
//!
//! Loading races with changes: the sku is read from process-api after
//! noting the relay's head, then every buffered change of the sku after
//! that head is applied over it, in order. A change the snapshot already
//! contained is applied again, harmlessly; one it missed is applied. If
//! the relay's buffer no longer reaches back to the noted head, the loaded
//! figures answer this read but are not kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use crate::process_client::SkuAvailability;
use crate::relay::{FeedChange, Relay};

/// One sku's availability: per location (every position of the sku, by
/// location id), the sellable units. Locations are named by their index
/// in [`Names`]: 12 bytes per position, so 6 million positions (300
/// stores × 20,000 skus) take about 70 MiB instead of the ~450 MiB a map
/// of strings took.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// Interned location ids, ordered by the ids they stand for.
    locations: Vec<u32>,
    /// Available, parallel to `locations`.
    available: Vec<i64>,
}

/// Location ids, interned: a retailer has hundreds of locations and each
/// appears in the entry of every sku it stocks.
#[derive(Debug, Default)]
struct Names {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
}

impl Names {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(index) = self.index.get(name) {
            return *index;
        }
        let index = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.index.insert(name, index);
        index
    }

    fn name(&self, index: u32) -> &str {
        self.names.get(index as usize).map_or("", |name| name)
    }
}

impl Entry {
    fn from_sorted(names: &mut Names, locations: &BTreeMap<String, i64>) -> Self {
        let mut entry = Self {
            locations: Vec::with_capacity(locations.len()),
            available: Vec::with_capacity(locations.len()),
        };
        for (location, available) in locations {
            entry.locations.push(names.intern(location));
            entry.available.push(*available);
        }
        entry
    }

    fn set(&mut self, names: &mut Names, location: &str, available: i64) {
        match self
            .locations
            .binary_search_by(|probe| names.name(*probe).cmp(location))
        {
            Ok(at) => self.available[at] = available,
            Err(at) => {
                let index = names.intern(location);
                self.locations.insert(at, index);
                self.available.insert(at, available);
            }
        }
    }

    fn snapshot(&self, names: &Names) -> Snapshot {
        Snapshot {
            locations: self
                .locations
                .iter()
                .zip(&self.available)
                .map(|(location, available)| (names.name(*location).to_owned(), *available))
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    names: Names,
    skus: HashMap<Arc<str>, Entry>,
    /// Load order, for eviction.
    order: VecDeque<Arc<str>>,
    /// Skus this replica just changed through process-api, and when: until
    /// the feed has surely brought the change, they load from process-api
    /// only (not from the shared copy, which may not have it yet).
    written: HashMap<String, std::time::Instant>,
}

/// How long a sku this replica wrote loads from process-api only (far
/// beyond the feed's propagation time).
const WRITTEN_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// What [`ReadModel::insert`] made of a load.
#[derive(Debug, Clone)]
pub struct Inserted {
    /// What to answer.
    pub snapshot: Snapshot,
    /// The feed seq the snapshot is complete up to (the relay's buffer
    /// reached back to the load's starting point), if it is.
    pub through: Option<i64>,
}

/// The model.
#[derive(Debug)]
pub struct ReadModel {
    inner: RwLock<Inner>,
    max_skus: usize,
    /// Skus loaded from the replicas' shared copy.
    pub loaded_shared: std::sync::atomic::AtomicU64,
    /// Skus loaded from process-api.
    pub loaded_process: std::sync::atomic::AtomicU64,
}

/// One sku's availability from the model.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// (location, available), by location.
    pub locations: Vec<(String, i64)>,
}

impl ReadModel {
    /// An empty model keeping at most `max_skus` skus.
    pub fn new(max_skus: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: RwLock::new(Inner::default()),
            max_skus: max_skus.max(1),
            loaded_shared: std::sync::atomic::AtomicU64::new(0),
            loaded_process: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sku's availability, if the model holds it.
    pub fn get(&self, sku: &str) -> Option<Snapshot> {
        let inner = self.read();
        Some(inner.skus.get(sku)?.snapshot(&inner.names))
    }

    /// Skus held.
    pub fn len(&self) -> usize {
        self.read().skus.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a change of a held sku (others are loaded when read).
    pub fn apply(&self, change: &FeedChange) {
        let mut inner = self.write();
        let Inner { names, skus, .. } = &mut *inner;
        if let Some(entry) = skus.get_mut(change.sku.as_str()) {
            entry.set(names, &change.location_id, change.available);
        }
    }

    /// Forgets skus (this replica just changed them through process-api:
    /// the next read loads them afresh, so a caller reads its own write).
    pub fn forget<'a>(&self, skus: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.write();
        let now = std::time::Instant::now();
        if inner.written.len() >= self.max_skus {
            inner
                .written
                .retain(|_, at| now.duration_since(*at) < WRITTEN_HOLD);
        }
        for sku in skus {
            inner.skus.remove(sku);
            inner.written.insert(sku.to_owned(), now);
        }
    }

    /// Whether this replica changed `sku` through process-api so recently
    /// that only process-api's answer is sure to show it.
    pub fn recently_written(&self, sku: &str) -> bool {
        self.read()
            .written
            .get(sku)
            .is_some_and(|at| at.elapsed() < WRITTEN_HOLD)
    }

    /// Forgets everything (the relay lost track of the feed).
    pub fn clear(&self) {
        let mut inner = self.write();
        inner.skus.clear();
        inner.order.clear();
    }

    /// Keeps `held` (a sku known to be complete up to feed seq `after`,
    /// from the replicas' shared copy) if the relay's buffer reaches back
    /// to `after`, brought up to date with the buffered changes; `None`
    /// when it does not (the copy may be older than the staleness bound).
    pub fn insert_shared(
        &self,
        relay: &Relay,
        after: i64,
        held: &SkuAvailability,
    ) -> Option<Snapshot> {
        let inserted = self.insert(relay, after, held);
        inserted.through.map(|_| inserted.snapshot)
    }

    /// Keeps `loaded` (read from process-api after the relay's head was
    /// `noted`), brought up to date with the relay's buffered changes;
    /// returns what to answer and up to which feed seq it is complete.
    pub fn insert(&self, relay: &Relay, noted: i64, loaded: &SkuAvailability) -> Inserted {
        let mut locations: BTreeMap<String, i64> = loaded
            .locations
            .iter()
            .map(|l| (l.location_id.clone(), l.available))
            .collect();
        let mut inner = self.write();
        // Under the write lock, no change can be applied between reading
        // the buffer and keeping the entry.
        let caught_up = relay.read_after(noted, usize::MAX, |c| c.sku == loaded.sku);
        if let Some((changes, _)) = &caught_up {
            for change in changes {
                locations.insert(change.location_id.clone(), change.available);
            }
        }
        let snapshot = Snapshot {
            locations: locations.iter().map(|(l, a)| (l.clone(), *a)).collect(),
        };
        let through = caught_up.as_ref().map(|(_, scanned)| *scanned);
        if caught_up.is_some() && loaded.known && !inner.skus.contains_key(loaded.sku.as_str()) {
            while inner.skus.len() >= self.max_skus {
                match inner.order.pop_front() {
                    Some(old) => {
                        inner.skus.remove(&old);
                    }
                    None => break,
                }
            }
            let sku: Arc<str> = Arc::from(loaded.sku.as_str());
            inner.order.push_back(sku.clone());
            let Inner {
                names, skus, order, ..
            } = &mut *inner;
            // Forgotten skus leave their place in the load order behind.
            if order.len() > 2 * self.max_skus {
                let mut seen = std::collections::HashSet::new();
                order.retain(|sku| skus.contains_key(sku) && seen.insert(sku.clone()));
            }
            skus.insert(sku, Entry::from_sorted(names, &locations));
        }
        Inserted { snapshot, through }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process_client::LocationAvailability;

    fn change(seq: i64, location: &str, available: i64) -> FeedChange {
        FeedChange {
            seq,
            location_id: location.into(),
            sku: "A".into(),
            available,
            on_hand: available,
            reserved: 0,
            changed_at: String::new(),
            published_at: String::new(),
        }
    }

    #[test]
    fn a_loaded_sku_catches_up_and_follows_changes() {
        let model = ReadModel::new(10);
        let relay = Relay::with_model(100, Some(model.clone()));
        relay.start_for_test(0);
        relay.push_for_test(change(1, "S1", 5));
        // Loaded after head 1 was noted, but the snapshot is older than
        // change 2 (arrived during the load).
        relay.push_for_test(change(2, "S1", 4));
        let loaded = SkuAvailability {
            sku: "A".into(),
            known: true,
            total_available: 5,
            locations: vec![LocationAvailability {
                location_id: "S1".into(),
                available: 5,
            }],
        };
        let snapshot = model.insert(&relay, 1, &loaded).snapshot;
        assert_eq!(snapshot.locations, vec![("S1".to_owned(), 4)]);
        relay.push_for_test(change(3, "S2", 7));
        let held = model.get("A").expect("held");
        assert_eq!(
            held.locations,
            vec![("S1".to_owned(), 4), ("S2".to_owned(), 7)]
        );
        // A gap: the model forgets.
        relay.start_for_test(10);
        assert!(model.get("A").is_none());
    }

    #[test]
    fn locations_stay_in_id_order_whatever_order_they_arrive_in() {
        let model = ReadModel::new(10);
        let relay = Relay::with_model(100, Some(model.clone()));
        relay.start_for_test(0);
        let at = |location: &str, available| LocationAvailability {
            location_id: location.into(),
            available,
        };
        let loaded = SkuAvailability {
            sku: "A".into(),
            known: true,
            total_available: 3,
            locations: vec![at("S3", 3), at("S1", 1)],
        };
        model.insert(&relay, 0, &loaded);
        // A location the entry lacks, between two it has; one before all;
        // then an overwrite.
        relay.push_for_test(change(1, "S2", 2));
        relay.push_for_test(change(2, "S0", 9));
        relay.push_for_test(change(3, "S3", 0));
        let held = model.get("A").expect("held").locations;
        let want: Vec<(String, i64)> = [("S0", 9), ("S1", 1), ("S2", 2), ("S3", 0)]
            .iter()
            .map(|(l, a)| ((*l).to_owned(), *a))
            .collect();
        assert_eq!(held, want);
    }

    #[test]
    fn the_oldest_sku_goes_first() {
        let model = ReadModel::new(2);
        let relay = Relay::with_model(100, Some(model.clone()));
        relay.start_for_test(0);
        for sku in ["A", "B", "C"] {
            let loaded = SkuAvailability {
                sku: sku.into(),
                known: true,
                total_available: 0,
                locations: vec![],
            };
            model.insert(&relay, 0, &loaded);
        }
        assert!(model.get("A").is_none());
        assert!(model.get("B").is_some() && model.get("C").is_some());
        assert_eq!(model.len(), 2);
    }
}
