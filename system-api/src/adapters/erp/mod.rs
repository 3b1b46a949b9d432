//! The ERP adapter: one trait, a backend chosen by `[erp] backend`.
//!
//! Every backend records a posting under its `event_id` and looks for that
//! record before creating one, so a posting delivered twice (a retry after
//! a lost answer, a lease taken over by another replica) is answered
//! `duplicate` and never posted twice. Postings of one (location, sku) are
//! applied in the order given; after a failure, the key's later postings
//! in the same batch are `skipped`.

pub mod sandbox;
pub mod tryton;

use std::collections::HashSet;

use async_trait::async_trait;
use retail_shared::erp::{ErpBalance, ErpMaster, Posting, PostingResult, PostingStatus};

/// Why a call to the ERP failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ErpError {
    /// The ERP did not answer, or answered that it cannot serve now:
    /// worth retrying later.
    #[error("the ERP is unavailable: {0}")]
    Unavailable(String),
    /// The ERP answered with an error that retrying will not fix.
    #[error("the ERP refused the call: {0}")]
    Refused(String),
}

/// What process-api and operators need from an ERP backend.
#[async_trait]
pub trait Erp: Send + Sync + std::fmt::Debug {
    /// The backend name (`sandbox`, `tryton`).
    fn backend(&self) -> &'static str;

    /// Whether the ERP answers right now.
    async fn health(&self) -> Result<(), String>;

    /// Records postings (in order per key); one result per posting.
    async fn post(&self, postings: &[Posting]) -> Result<Vec<PostingResult>, ErpError>;

    /// On-hand quantity per product at a warehouse; `None` when the ERP
    /// has no such warehouse.
    async fn balances(&self, location_id: &str) -> Result<Option<Vec<ErpBalance>>, ErpError>;

    /// Warehouses and products.
    async fn master(&self) -> Result<ErpMaster, ErpError>;
}

/// Tracks keys whose posting failed earlier in a batch, so their later
/// postings are skipped (order per key is strict).
#[derive(Debug, Default)]
pub struct KeyGate {
    failed: HashSet<(String, String)>,
}

impl KeyGate {
    /// `Some(skipped result)` when an earlier posting of the key failed.
    pub fn check(&self, posting: &Posting) -> Option<PostingResult> {
        self.failed
            .contains(&(posting.location_id.clone(), posting.sku.clone()))
            .then(|| PostingResult::new(posting.posting_id, PostingStatus::Skipped))
    }

    /// Notes a result; a failure closes the key for the rest of the batch.
    pub fn note(&mut self, posting: &Posting, result: &PostingResult) {
        if result.status == PostingStatus::Failed {
            self.failed
                .insert((posting.location_id.clone(), posting.sku.clone()));
        }
    }
}
