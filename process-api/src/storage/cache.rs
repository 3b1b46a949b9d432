//! A small read-through cache of the master data the ingest path needs for
//! every event (does the sku exist, its unit cost and currency; does the
//! location exist, its type).
//!
//! Only hits are cached, so an unknown sku or location is always looked up
//! in the database: an event is never parked because of the cache. Entries
//! expire after [`TTL`] and this store's own upserts clear them, so a cost
//! changed through another replica reaches the journal's enrichment within
//! [`TTL`].

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How long a cached entry is trusted.
pub const TTL: Duration = Duration::from_secs(10);

/// Cached master data.
#[derive(Debug, Default)]
pub struct MasterCache {
    inner: RwLock<Entries>,
}

#[derive(Debug)]
struct Entries {
    loaded_at: Instant,
    products: HashMap<String, (String, String)>,
    locations: HashMap<String, String>,
}

impl Default for Entries {
    fn default() -> Self {
        Self {
            loaded_at: Instant::now(),
            products: HashMap::new(),
            locations: HashMap::new(),
        }
    }
}

impl MasterCache {
    fn fresh<R>(&self, read: impl FnOnce(&Entries) -> R) -> Option<R> {
        let entries = self.inner.read().ok()?;
        (entries.loaded_at.elapsed() < TTL).then(|| read(&entries))
    }

    /// Cached (unit cost, currency) of the skus that are cached.
    pub fn products(&self, skus: &[&str]) -> HashMap<String, (String, String)> {
        self.fresh(|entries| {
            skus.iter()
                .filter_map(|sku| {
                    entries
                        .products
                        .get(*sku)
                        .map(|v| ((*sku).to_owned(), v.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Cached types of the locations that are cached.
    pub fn locations(&self, ids: &[&str]) -> HashMap<String, String> {
        self.fresh(|entries| {
            ids.iter()
                .filter_map(|id| {
                    entries
                        .locations
                        .get(*id)
                        .map(|v| ((*id).to_owned(), v.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Remembers looked-up products and locations.
    pub fn remember(
        &self,
        products: &HashMap<String, (String, String)>,
        locations: &HashMap<String, String>,
    ) {
        let Ok(mut entries) = self.inner.write() else {
            return;
        };
        if entries.loaded_at.elapsed() >= TTL {
            *entries = Entries::default();
        }
        for (sku, value) in products {
            entries.products.insert(sku.clone(), value.clone());
        }
        for (id, kind) in locations {
            entries.locations.insert(id.clone(), kind.clone());
        }
    }

    /// Forgets everything (after a master data change).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.inner.write() {
            *entries = Entries::default();
        }
    }
}
