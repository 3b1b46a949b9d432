//! The WMS adapter: warehouse documents → canonical events.
//!
//! | document | event at `location_id` |
//! |---|---|
//! | receipt (ASN lines) | `receipt` |
//! | transfer shipment | `transfer_out` (counterparty: the destination) |
//! | transfer receipt | `transfer_in` (counterparty: the source) |
//! | cycle count | `count` (absolute, as of `occurred_at`) |
//!
//! A document is idempotent by its kind, location and id: its events get
//! ids `wms:<kind>:<location>:<document>:<line>`, which process-api never
//! applies twice.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use retail_shared::validate::{Validate, Validator};

use super::pos::MAX_POS_ID_LEN;

/// Most lines in one document.
pub const MAX_WMS_LINES: usize = 1000;
/// Largest quantity on one line.
pub const MAX_WMS_QUANTITY: i64 = 1_000_000;

/// What a document records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WmsKind {
    /// Goods received against an advance ship notice.
    Receipt,
    /// A transfer leaving the warehouse.
    Shipment,
    /// A transfer arriving at the warehouse.
    TransferReceipt,
    /// A cycle count.
    Count,
}

impl WmsKind {
    fn tag(self) -> &'static str {
        match self {
            Self::Receipt => "asn",
            Self::Shipment => "ship",
            Self::TransferReceipt => "trin",
            Self::Count => "count",
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Shipment => "transfer_out",
            Self::TransferReceipt => "transfer_in",
            Self::Count => "count",
        }
    }

    /// Whether the document names the other end of a transfer.
    pub fn needs_counterparty(self) -> bool {
        matches!(self, Self::Shipment | Self::TransferReceipt)
    }
}

/// One line of a WMS document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WmsLine {
    /// SKU.
    pub sku: String,
    /// Units (a count may be 0; otherwise at least 1).
    pub quantity: i64,
}

/// A WMS document (receipt, shipment, transfer receipt or cycle count).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WmsDocument {
    /// The document's id in the WMS (ASN, shipment or count number), ≤ 36
    /// characters.
    #[schema(example = "ASN-000123")]
    pub document_id: String,
    /// The warehouse (or store) the document is about.
    #[schema(example = "DC01")]
    pub location_id: String,
    /// Transfers only: the other end (destination of a shipment, source of
    /// a transfer receipt).
    #[serde(default)]
    pub counterparty_location_id: Option<String>,
    /// When it happened (RFC 3339).
    #[schema(example = "2026-11-27T10:15:00Z")]
    pub occurred_at: String,
    /// 1-1000 lines.
    pub lines: Vec<WmsLine>,
}

/// A document with its kind, validated against the kind's rules.
#[derive(Debug, Clone)]
pub struct TypedDocument<'a> {
    /// Kind.
    pub kind: WmsKind,
    /// The document.
    pub document: &'a WmsDocument,
}

fn wms_id(v: &mut Validator, field: &str, value: &str) {
    v.id(field, value);
    if value.len() > MAX_POS_ID_LEN || value.contains(':') {
        v.error(
            field,
            format!("must be at most {MAX_POS_ID_LEN} characters without ':'"),
        );
    }
}

impl Validate for TypedDocument<'_> {
    fn validate(&self, v: &mut Validator) {
        let d = self.document;
        wms_id(v, "document_id", &d.document_id);
        wms_id(v, "location_id", &d.location_id);
        match (&d.counterparty_location_id, self.kind.needs_counterparty()) {
            (Some(other), true) => {
                v.id("counterparty_location_id", other);
                if *other == d.location_id {
                    v.error("counterparty_location_id", "must differ from location_id");
                }
            }
            (None, true) => v.error("counterparty_location_id", "is required for transfers"),
            (Some(_), false) => v.error(
                "counterparty_location_id",
                "applies to transfer shipments and receipts only",
            ),
            (None, false) => {}
        }
        if time::OffsetDateTime::parse(
            &d.occurred_at,
            &time::format_description::well_known::Rfc3339,
        )
        .is_err()
        {
            v.error("occurred_at", "must be an RFC 3339 date-time");
        }
        v.count("lines", d.lines.len(), 1, MAX_WMS_LINES);
        let minimum = if self.kind == WmsKind::Count { 0 } else { 1 };
        let mut seen = std::collections::HashSet::new();
        v.at("lines", |v| {
            for (index, line) in d.lines.iter().enumerate() {
                v.at(index, |v| {
                    v.id("sku", &line.sku);
                    v.range("quantity", line.quantity, minimum, MAX_WMS_QUANTITY);
                    if self.kind == WmsKind::Count && !seen.insert(line.sku.as_str()) {
                        v.error("sku", "is counted twice in this document");
                    }
                });
            }
        });
    }
}

impl TypedDocument<'_> {
    /// The idempotency key of the document.
    pub fn key(&self) -> String {
        format!(
            "wms:{}:{}:{}",
            self.kind.tag(),
            self.document.location_id,
            self.document.document_id
        )
    }

    /// The canonical events, one per line, with derived ids.
    pub fn to_events(&self) -> Vec<Value> {
        let key = self.key();
        let d = self.document;
        d.lines
            .iter()
            .enumerate()
            .map(|(index, line)| {
                let mut event = json!({
                    "event_id": format!("{key}:{}", index + 1),
                    "type": self.kind.event_type(),
                    "location_id": d.location_id,
                    "sku": line.sku,
                    "quantity": line.quantity,
                    "occurred_at": d.occurred_at,
                    "source": "wms",
                    "reference": d.document_id,
                });
                if let Some(other) = &d.counterparty_location_id {
                    event["counterparty_location_id"] = json!(other);
                }
                event
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(counterparty: Option<&str>, quantity: i64) -> WmsDocument {
        WmsDocument {
            document_id: "D-1".into(),
            location_id: "DC01".into(),
            counterparty_location_id: counterparty.map(str::to_owned),
            occurred_at: "2026-11-27T10:15:00Z".into(),
            lines: vec![WmsLine {
                sku: "A".into(),
                quantity,
            }],
        }
    }

    #[test]
    fn each_kind_maps_to_its_event_with_a_derived_id() {
        let shipment = document(Some("S001"), 4);
        let typed = TypedDocument {
            kind: WmsKind::Shipment,
            document: &shipment,
        };
        let events = typed.clone().validated().expect("valid").to_events();
        assert_eq!(events[0]["event_id"], "wms:ship:DC01:D-1:1");
        assert_eq!(events[0]["type"], "transfer_out");
        assert_eq!(events[0]["counterparty_location_id"], "S001");

        let count = document(None, 0);
        let typed = TypedDocument {
            kind: WmsKind::Count,
            document: &count,
        };
        assert_eq!(
            typed.clone().validated().expect("valid").to_events()[0]["type"],
            "count"
        );
    }

    #[test]
    fn kind_rules_are_enforced() {
        let no_counterparty = document(None, 1);
        assert!(
            TypedDocument {
                kind: WmsKind::TransferReceipt,
                document: &no_counterparty,
            }
            .validated()
            .is_err()
        );
        let stray = document(Some("S001"), 1);
        assert!(
            TypedDocument {
                kind: WmsKind::Receipt,
                document: &stray,
            }
            .validated()
            .is_err()
        );
        let zero = document(None, 0);
        assert!(
            TypedDocument {
                kind: WmsKind::Receipt,
                document: &zero,
            }
            .validated()
            .is_err()
        );
    }
}
