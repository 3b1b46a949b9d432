//! The ERP posting contract between process-api (which owns the outbox) and
//! system-api (which owns the ERP adapters).
//!
//! A posting is one journal entry's change of `on_hand` at one location.
//! The ERP keeps one record per posting, keyed by the posting's `event_id`
//! (the journal's permanent, unique id): an adapter checks for that key
//! before creating anything, so a retried posting never posts twice.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most postings per call.
pub const MAX_POSTINGS_PER_CALL: usize = 1000;

/// One change of on-hand stock to record in the ERP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Posting {
    /// The outbox row (process-api's order of postings).
    pub posting_id: i64,
    /// The journal entry; the ERP's idempotency key.
    #[schema(min_length = 1, max_length = 256)]
    pub event_id: String,
    /// Journal event type (`sale`, `return`, `receipt`, `adjustment`,
    /// `count`, `damage`, `write_off`, `transfer_out`, `transfer_in`).
    #[schema(min_length = 1, max_length = 32)]
    pub kind: String,
    /// The warehouse (ERP warehouse code).
    #[schema(min_length = 1, max_length = 64)]
    pub location_id: String,
    /// The product (ERP product code).
    #[schema(min_length = 1, max_length = 64)]
    pub sku: String,
    /// Signed change of on-hand units (never 0).
    pub quantity: i64,
    /// Unit cost at the time (decimal string), for valuation.
    #[serde(default)]
    pub unit_cost: Option<String>,
    /// ISO 4217 currency of `unit_cost`.
    #[serde(default)]
    pub currency: Option<String>,
    /// When the event happened (RFC 3339).
    pub occurred_at: String,
    /// The other end of a transfer.
    #[serde(default)]
    pub counterparty_location_id: Option<String>,
    /// Reason or disposition, for the ERP record's description.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Posting {
    /// The (location, sku) key postings are ordered by.
    pub fn key(&self) -> (&str, &str) {
        (&self.location_id, &self.sku)
    }
}

/// A batch of postings, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostingBatch {
    /// 1 to 1000 postings; per (location, sku) in posting order.
    pub postings: Vec<Posting>,
}

/// What became of one posting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PostingStatus {
    /// Recorded now.
    Posted,
    /// Recorded by an earlier attempt (found by its event id).
    Duplicate,
    /// Not recorded; see `retryable`.
    Failed,
    /// Not attempted: an earlier posting of the same key failed in this
    /// batch, and order per key is strict.
    Skipped,
}

/// The outcome of one posting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PostingResult {
    /// The posting.
    pub posting_id: i64,
    /// Outcome.
    pub status: PostingStatus,
    /// For `failed`: whether trying again may succeed (`false`: the ERP
    /// refuses this posting until someone changes something).
    #[serde(default)]
    pub retryable: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The ERP's record (e.g. `stock.move:42`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erp_ref: Option<String>,
}

impl PostingResult {
    /// A result with only a status.
    pub fn new(posting_id: i64, status: PostingStatus) -> Self {
        Self {
            posting_id,
            status,
            retryable: false,
            error: None,
            erp_ref: None,
        }
    }

    /// A failure.
    pub fn failed(posting_id: i64, retryable: bool, error: impl Into<String>) -> Self {
        Self {
            posting_id,
            status: PostingStatus::Failed,
            retryable,
            error: Some(error.into()),
            erp_ref: None,
        }
    }
}

/// The answer to a batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PostingResults {
    /// One per posting, in request order.
    pub results: Vec<PostingResult>,
}

/// ERP on-hand quantity of one product at one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErpBalance {
    /// Warehouse code.
    pub location_id: String,
    /// Product code.
    pub sku: String,
    /// Units on hand in the ERP.
    pub quantity: i64,
}

/// The ERP's balances at one warehouse.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErpBalances {
    /// The warehouse.
    pub location_id: String,
    /// Products with a non-zero quantity or any recorded movement.
    pub balances: Vec<ErpBalance>,
}

/// A warehouse as the ERP knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErpLocation {
    /// Warehouse code (= platform location_id).
    pub location_id: String,
    /// Name.
    pub name: String,
}

/// A product as the ERP knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErpProduct {
    /// Product code (= platform sku).
    pub sku: String,
    /// Name.
    pub name: String,
    /// Cost price (decimal string).
    #[serde(default)]
    pub unit_cost: Option<String>,
    /// ISO 4217 currency of the cost.
    #[serde(default)]
    pub currency: Option<String>,
}

/// The ERP's master data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErpMaster {
    /// Warehouses.
    pub locations: Vec<ErpLocation>,
    /// Products.
    pub products: Vec<ErpProduct>,
}
