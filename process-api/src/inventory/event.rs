//! Canonical inventory events (DESIGN.md §5) and their validation.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

/// Most events in one `POST /v1/inventory/events`.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;
/// Largest absolute quantity of one event.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Longest `source`, `reference` and `reason`.
pub const MAX_TEXT_LEN: usize = 256;
/// How far in the future `occurred_at` may lie (store clocks drift).
pub const MAX_FUTURE_MICROS: i64 = 24 * 3600 * 1_000_000;
/// Earliest accepted `occurred_at` (2000-01-01T00:00:00Z).
pub const MIN_OCCURRED_AT_MICROS: i64 = 946_684_800_000_000;

/// An event as sent by a client. `type` and `disposition` are kept as text
/// so an unknown value rejects that one event instead of the whole batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Globally unique id (1–128 characters): the idempotency key, kept
    /// forever.
    #[schema(example = "pos-S001-T01-000123-1", min_length = 1, max_length = 128)]
    pub event_id: String,
    /// `sale`, `return`, `receipt`, `adjustment`, `count`, `damage`,
    /// `write_off`, `transfer_out` or `transfer_in`.
    #[schema(example = "sale")]
    pub r#type: String,
    /// Where the stock is.
    #[schema(example = "S001")]
    pub location_id: String,
    /// What the stock is.
    #[schema(example = "SKU-000001")]
    pub sku: String,
    /// Units: > 0 for most types, signed non-zero for `adjustment`, ≥ 0
    /// (absolute) for `count`; |quantity| ≤ 1,000,000.
    pub quantity: i64,
    /// When it happened (RFC 3339); at most 24 h in the future.
    #[schema(example = "2026-11-27T10:15:00Z")]
    pub occurred_at: String,
    /// Producing system (≤ 256 characters).
    #[schema(example = "pos")]
    pub source: String,
    /// Business reference (receipt, order, ASN…).
    #[serde(default)]
    pub reference: Option<String>,
    /// Reason code or text.
    #[serde(default)]
    pub reason: Option<String>,
    /// The other location of a transfer (required for `transfer_out`).
    #[serde(default)]
    pub counterparty_location_id: Option<String>,
    /// Returns only: `restock` (default) or `damaged`.
    #[serde(default)]
    pub disposition: Option<String>,
}

/// Body of `POST /v1/inventory/events`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// 1–1000 events.
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<EventInput>,
}

/// The event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// on_hand −q.
    Sale,
    /// on_hand +q (and unsellable +q when damaged).
    Return,
    /// on_hand +q.
    Receipt,
    /// on_hand +q (signed).
    Adjustment,
    /// on_hand := q as of occurred_at.
    Count,
    /// unsellable +q.
    Damage,
    /// on_hand −q and unsellable −q.
    WriteOff,
    /// on_hand −q here; in transit +q at the counterparty.
    TransferOut,
    /// on_hand +q here; in transit −q here.
    TransferIn,
}

impl EventType {
    /// All types.
    pub const ALL: [EventType; 9] = [
        Self::Sale,
        Self::Return,
        Self::Receipt,
        Self::Adjustment,
        Self::Count,
        Self::Damage,
        Self::WriteOff,
        Self::TransferOut,
        Self::TransferIn,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sale => "sale",
            Self::Return => "return",
            Self::Receipt => "receipt",
            Self::Adjustment => "adjustment",
            Self::Count => "count",
            Self::Damage => "damage",
            Self::WriteOff => "write_off",
            Self::TransferOut => "transfer_out",
            Self::TransferIn => "transfer_in",
        }
    }

    /// Parses the wire name.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == value)
    }
}

/// What happens to returned goods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Back to sellable stock.
    Restock,
    /// Into unsellable stock.
    Damaged,
}

impl Disposition {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restock => "restock",
            Self::Damaged => "damaged",
        }
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Idempotency key.
    pub event_id: String,
    /// Type.
    pub kind: EventType,
    /// Location.
    pub location_id: String,
    /// SKU.
    pub sku: String,
    /// Quantity as sent.
    pub quantity: i64,
    /// Event time, unix microseconds.
    pub occurred_at: i64,
    /// Producing system.
    pub source: String,
    /// Business reference.
    pub reference: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// Transfer counterparty.
    pub counterparty_location_id: Option<String>,
    /// Return disposition (returns only).
    pub disposition: Option<Disposition>,
}

impl Event {
    /// What the event means, as a short digest: its type, location, sku,
    /// quantity, counterparty and disposition. The same `event_id` arriving
    /// again with another meaning is not a retry but a collision (another
    /// store reusing a number, a client posting someone else's id): it is
    /// rejected as `event-id-conflict`, never swallowed as a duplicate.
    ///
    /// The time, source, reference and reason are left out on purpose: a
    /// producer that stamps the time when it sends (a return without
    /// `occurred_at`, a till re-sending a receipt) changes them on every
    /// retry, and a retry must stay a duplicate.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for part in [
            self.kind.as_str(),
            &self.location_id,
            &self.sku,
            &self.quantity.to_string(),
            self.counterparty_location_id.as_deref().unwrap_or(""),
            self.disposition.map_or("", Disposition::as_str),
        ] {
            digest.update(part.as_bytes());
            // Ids are printable ASCII: a unit separator keeps parts apart.
            digest.update([0x1f]);
        }
        digest.finalize()[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// The reason of an event rejected because its id is taken by an event
/// that means something else (see [`Event::fingerprint`]).
pub const EVENT_ID_CONFLICT: &str = "event-id-conflict";

/// The effects of one event, before the count rule is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// Delta to on_hand at the event's location (subject to the count rule).
    pub on_hand: i64,
    /// Delta to the unsellable sum at the event's location.
    pub unsellable: i64,
    /// Units received here by a transfer (reduces in transit here).
    pub inbound_received: i64,
    /// Units shipped to the counterparty (raises in transit there).
    pub counterparty_shipped: i64,
}

impl Event {
    /// The event's effects (DESIGN.md §5 table).
    pub fn effects(&self) -> Effects {
        let q = self.quantity;
        match self.kind {
            EventType::Sale => Effects {
                on_hand: -q,
                ..Effects::default()
            },
            EventType::Return => Effects {
                on_hand: q,
                unsellable: if self.disposition == Some(Disposition::Damaged) {
                    q
                } else {
                    0
                },
                ..Effects::default()
            },
            EventType::Receipt | EventType::Adjustment => Effects {
                on_hand: q,
                ..Effects::default()
            },
            EventType::Count => Effects::default(),
            EventType::Damage => Effects {
                unsellable: q,
                ..Effects::default()
            },
            EventType::WriteOff => Effects {
                on_hand: -q,
                unsellable: -q,
                ..Effects::default()
            },
            EventType::TransferOut => Effects {
                on_hand: -q,
                counterparty_shipped: q,
                ..Effects::default()
            },
            EventType::TransferIn => Effects {
                on_hand: q,
                inbound_received: q,
                ..Effects::default()
            },
        }
    }
}

/// Parses RFC 3339 into unix microseconds.
pub fn parse_time(value: &str) -> Option<i64> {
    let time = OffsetDateTime::parse(value, &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000).ok()
}

fn is_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= retail_shared::validate::MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'/')
}

impl EventInput {
    /// Validates one event; `Err` is the rejection reason.
    pub fn validate(&self, now_micros: i64) -> Result<Event, String> {
        if self.event_id.is_empty() || self.event_id.chars().count() > 128 {
            return Err("event_id must be 1 to 128 characters".into());
        }
        let kind = EventType::parse(&self.r#type).ok_or_else(|| {
            format!(
                "type `{}` is not one of sale, return, receipt, adjustment, count, damage, \
                 write_off, transfer_out, transfer_in",
                self.r#type
            )
        })?;
        if !is_id(&self.location_id) {
            return Err("location_id must be 1 to 128 printable characters without spaces, commas or slashes".into());
        }
        if !is_id(&self.sku) {
            return Err(
                "sku must be 1 to 128 printable characters without spaces, commas or slashes"
                    .into(),
            );
        }
        // unsigned_abs: `abs` of i64::MIN overflows (and wraps in release).
        if self.quantity.unsigned_abs() > MAX_QUANTITY.unsigned_abs() {
            return Err(format!("quantity must be within ±{MAX_QUANTITY}"));
        }
        match kind {
            EventType::Adjustment if self.quantity == 0 => {
                return Err("an adjustment needs a non-zero quantity".into());
            }
            EventType::Count if self.quantity < 0 => {
                return Err("a count needs a quantity ≥ 0".into());
            }
            EventType::Adjustment | EventType::Count => {}
            _ if self.quantity <= 0 => {
                return Err(format!("a {} needs a quantity > 0", kind.as_str()));
            }
            _ => {}
        }
        let occurred_at = parse_time(&self.occurred_at)
            .ok_or("occurred_at must be an RFC 3339 date-time (e.g. 2026-11-27T10:15:00Z)")?;
        if occurred_at < MIN_OCCURRED_AT_MICROS {
            return Err("occurred_at is before 2000-01-01".into());
        }
        if occurred_at > now_micros + MAX_FUTURE_MICROS {
            return Err("occurred_at is more than 24 hours in the future".into());
        }
        if self.source.trim().is_empty() || self.source.chars().count() > MAX_TEXT_LEN {
            return Err(format!("source must be 1 to {MAX_TEXT_LEN} characters"));
        }
        for (name, value) in [("reference", &self.reference), ("reason", &self.reason)] {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() > MAX_TEXT_LEN)
            {
                return Err(format!("{name} must be at most {MAX_TEXT_LEN} characters"));
            }
        }
        let counterparty = self.counterparty_location_id.clone();
        match (&counterparty, kind) {
            (None, EventType::TransferOut) => {
                return Err("a transfer_out needs counterparty_location_id".into());
            }
            (Some(other), EventType::TransferOut | EventType::TransferIn) => {
                if !is_id(other) {
                    return Err("counterparty_location_id is not a valid location id".into());
                }
                if *other == self.location_id {
                    return Err("a transfer needs two different locations".into());
                }
            }
            (Some(_), _) => {
                return Err("counterparty_location_id applies to transfers only".into());
            }
            (None, _) => {}
        }
        let disposition = match (self.disposition.as_deref(), kind) {
            (None, EventType::Return) => Some(Disposition::Restock),
            (None, _) => None,
            (Some("restock"), EventType::Return) => Some(Disposition::Restock),
            (Some("damaged"), EventType::Return) => Some(Disposition::Damaged),
            (Some(other), EventType::Return) => {
                return Err(format!(
                    "disposition `{other}` is not one of restock, damaged"
                ));
            }
            (Some(_), _) => return Err("disposition applies to returns only".into()),
        };
        Ok(Event {
            event_id: self.event_id.clone(),
            kind,
            location_id: self.location_id.clone(),
            sku: self.sku.clone(),
            quantity: self.quantity,
            occurred_at,
            source: self.source.clone(),
            reference: self.reference.clone(),
            reason: self.reason.clone(),
            counterparty_location_id: counterparty,
            disposition,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: &str, quantity: i64) -> EventInput {
        EventInput {
            event_id: "e1".into(),
            r#type: kind.into(),
            location_id: "S001".into(),
            sku: "SKU-1".into(),
            quantity,
            occurred_at: "2026-11-27T10:00:00Z".into(),
            source: "pos".into(),
            reference: None,
            reason: None,
            counterparty_location_id: None,
            disposition: None,
        }
    }

    const NOW: i64 = 1_795_800_000_000_000;

    #[test]
    fn quantity_rules_per_type() {
        assert!(input("sale", 1).validate(NOW).is_ok());
        assert!(input("sale", 0).validate(NOW).is_err());
        assert!(input("adjustment", -3).validate(NOW).is_ok());
        assert!(input("adjustment", 0).validate(NOW).is_err());
        assert!(input("adjustment", i64::MIN).validate(NOW).is_err());
        assert!(input("adjustment", MAX_QUANTITY + 1).validate(NOW).is_err());
        assert!(input("adjustment", -MAX_QUANTITY).validate(NOW).is_ok());
        assert!(input("count", 0).validate(NOW).is_ok());
        assert!(input("count", -1).validate(NOW).is_err());
        assert!(input("teleport", 1).validate(NOW).is_err());
        assert!(input("transfer_out", 1).validate(NOW).is_err());
        let mut transfer = input("transfer_out", 1);
        transfer.counterparty_location_id = Some("S002".into());
        assert!(transfer.validate(NOW).is_ok());
    }

    #[test]
    fn returns_default_to_restock_and_only_returns_take_a_disposition() {
        let event = input("return", 2).validate(NOW).expect("valid");
        assert_eq!(event.disposition, Some(Disposition::Restock));
        let mut damaged = input("return", 2);
        damaged.disposition = Some("damaged".into());
        let effects = damaged.validate(NOW).expect("valid").effects();
        assert_eq!((effects.on_hand, effects.unsellable), (2, 2));
        let mut sale = input("sale", 2);
        sale.disposition = Some("damaged".into());
        assert!(sale.validate(NOW).is_err());
    }

    #[test]
    fn times_are_checked() {
        let mut event = input("sale", 1);
        event.occurred_at = "yesterday".into();
        assert!(event.validate(NOW).is_err());
        event.occurred_at = "2099-01-01T00:00:00Z".into();
        assert!(event.validate(NOW).is_err());
        event.occurred_at = "2026-11-27T10:00:00.123456+01:00".into();
        let parsed = event.validate(NOW).expect("valid").occurred_at;
        assert_eq!(parsed % 1_000_000, 123_456);
    }
}
