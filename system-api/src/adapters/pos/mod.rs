//! The POS adapter: store transactions → canonical sale and return events.
//!
//! A transaction is idempotent by (store, terminal, transaction id): its
//! events get ids derived from those three and the line number
//! (`pos:S001:T01:000123:1`), and process-api deduplicates event ids
//! forever, so a re-sent transaction changes nothing and answers the same
//! event ids as `duplicate`.

pub mod csv;
pub mod poslog;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use retail_shared::validate::{Validate, Validator};

/// Longest store, terminal or transaction id (the three form event ids of
/// at most 128 characters).
pub const MAX_POS_ID_LEN: usize = 36;
/// Most lines in one transaction.
pub const MAX_LINES: usize = 500;
/// Largest quantity on one line.
pub const MAX_LINE_QUANTITY: i64 = 100_000;

/// Sale or return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Units sold.
    Sale,
    /// Units returned (restocked).
    Return,
}

/// One basket line (pinned).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PosLine {
    /// SKU.
    pub sku: String,
    /// Units, 1–100,000.
    pub quantity: i64,
    /// `sale` or `return`.
    pub kind: LineKind,
}

/// A POS transaction (pinned).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PosTransaction {
    /// Store (location id), ≤ 36 characters.
    #[schema(example = "S001")]
    pub store_id: String,
    /// Till, ≤ 36 characters.
    #[schema(example = "T01")]
    pub terminal_id: String,
    /// Transaction number on that till, ≤ 36 characters.
    #[schema(example = "000123")]
    pub transaction_id: String,
    /// When the transaction closed (RFC 3339).
    #[schema(example = "2026-11-27T10:15:00Z")]
    pub occurred_at: String,
    /// 1–500 lines.
    #[schema(min_items = 1, max_items = 500)]
    pub lines: Vec<PosLine>,
}

fn pos_id(v: &mut Validator, field: &str, value: &str) {
    v.id(field, value);
    if value.len() > MAX_POS_ID_LEN || value.contains(':') {
        v.error(
            field,
            format!("must be at most {MAX_POS_ID_LEN} characters without ':'"),
        );
    }
}

impl Validate for PosTransaction {
    fn validate(&self, v: &mut Validator) {
        pos_id(v, "store_id", &self.store_id);
        pos_id(v, "terminal_id", &self.terminal_id);
        pos_id(v, "transaction_id", &self.transaction_id);
        if time::OffsetDateTime::parse(
            &self.occurred_at,
            &time::format_description::well_known::Rfc3339,
        )
        .is_err()
        {
            v.error("occurred_at", "must be an RFC 3339 date-time");
        }
        v.count("lines", self.lines.len(), 1, MAX_LINES);
        v.at("lines", |v| {
            for (index, line) in self.lines.iter().enumerate() {
                v.at(index, |v| {
                    v.id("sku", &line.sku);
                    v.range("quantity", line.quantity, 1, MAX_LINE_QUANTITY);
                });
            }
        });
    }
}

impl PosTransaction {
    /// The idempotency key of the transaction.
    pub fn key(&self) -> String {
        format!(
            "pos:{}:{}:{}",
            self.store_id, self.terminal_id, self.transaction_id
        )
    }

    /// The canonical events, one per line, with derived ids.
    pub fn to_events(&self) -> Vec<Value> {
        let key = self.key();
        self.lines
            .iter()
            .enumerate()
            .map(|(index, line)| {
                json!({
                    "event_id": format!("{key}:{}", index + 1),
                    "type": match line.kind {
                        LineKind::Sale => "sale",
                        LineKind::Return => "return",
                    },
                    "location_id": self.store_id,
                    "sku": line.sku,
                    "quantity": line.quantity,
                    "occurred_at": self.occurred_at,
                    "source": "pos",
                    "reference": format!("{}/{}", self.terminal_id, self.transaction_id),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_derive_from_the_transaction_and_line() {
        let txn = PosTransaction {
            store_id: "S001".into(),
            terminal_id: "T01".into(),
            transaction_id: "000123".into(),
            occurred_at: "2026-11-27T10:15:00Z".into(),
            lines: vec![
                PosLine {
                    sku: "A".into(),
                    quantity: 2,
                    kind: LineKind::Sale,
                },
                PosLine {
                    sku: "A".into(),
                    quantity: 1,
                    kind: LineKind::Return,
                },
            ],
        };
        let events = txn.to_events();
        assert_eq!(events[0]["event_id"], "pos:S001:T01:000123:1");
        assert_eq!(events[1]["type"], "return");
        assert!(txn.validated().is_ok());
    }
}
