//! A position's stored state and its read-time view (DESIGN.md §5).

use serde::Serialize;
use utoipa::ToSchema;

/// The count that defines on_hand: the latest by (`occurred_at`, `event_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountMark {
    /// Event time of the count (unix µs).
    pub at: i64,
    /// Its event id (tie-break between counts at the same instant).
    pub event_id: String,
    /// The counted quantity.
    pub quantity: i64,
}

impl CountMark {
    /// Whether this count is later than `other` (by time, then event id).
    pub fn supersedes(&self, other: Option<&CountMark>) -> bool {
        other.is_none_or(|other| (self.at, &self.event_id) > (other.at, &other.event_id))
    }
}

/// What is stored per (location, sku).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PositionState {
    /// The latest count, if any.
    pub count: Option<CountMark>,
    /// Sum of on-hand deltas strictly after the count (all deltas without one).
    pub delta_after: i64,
    /// Sum of unsellable deltas (clamped only when shown).
    pub unsellable_raw: i64,
    /// Units shipped here by transfers.
    pub inbound_shipped: i64,
    /// Units received here by transfers.
    pub inbound_received: i64,
    /// Units held by active reservations.
    pub reserved: i64,
    /// Latest `occurred_at` seen (unix µs).
    pub last_event_at: Option<i64>,
}

impl PositionState {
    /// Physical units by the count-and-late-event rule.
    pub fn on_hand(&self) -> i64 {
        self.count
            .as_ref()
            .map_or(0, |c| c.quantity)
            .saturating_add(self.delta_after)
    }

    /// Whether a delta at `at` counts towards on_hand (strictly after the
    /// latest count).
    pub fn counts_delta_at(&self, at: i64) -> bool {
        self.count.as_ref().is_none_or(|c| at > c.at)
    }

    /// Applies an on-hand delta at event time `at`; returns the change to
    /// on_hand it caused (0 when the latest count already reflects it).
    pub fn apply_on_hand_delta(&mut self, at: i64, delta: i64) -> i64 {
        if delta != 0 && self.counts_delta_at(at) {
            self.delta_after += delta;
            delta
        } else {
            0
        }
    }

    /// Installs a count that [`CountMark::supersedes`] the current one;
    /// `deltas_after` is the sum of all on-hand deltas of this position
    /// strictly after `mark.at`. Returns the change to on_hand.
    pub fn install_count(&mut self, mark: CountMark, deltas_after: i64) -> i64 {
        let before = self.on_hand();
        self.count = Some(mark);
        self.delta_after = deltas_after;
        self.on_hand() - before
    }

    /// Records that an event at `at` touched this position.
    pub fn touch(&mut self, at: i64) {
        self.last_event_at = Some(self.last_event_at.map_or(at, |t| t.max(at)));
    }

    /// The read-time view with the resolved safety stock.
    pub fn view(&self, safety_stock: i64) -> PositionFigures {
        // Saturating: stored sums are bounded by validation, but a view must
        // never wrap into a huge availability.
        let on_hand = self.on_hand();
        let unsellable = self.unsellable_raw.clamp(0, on_hand.max(0));
        let in_transit = self
            .inbound_shipped
            .saturating_sub(self.inbound_received)
            .max(0);
        let available = on_hand
            .saturating_sub(unsellable)
            .saturating_sub(self.reserved)
            .saturating_sub(safety_stock)
            .max(0);
        PositionFigures {
            on_hand,
            unsellable,
            reserved: self.reserved,
            safety_stock,
            in_transit,
            available,
        }
    }
}

/// The pinned figures of a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct PositionFigures {
    /// Physical units, any condition (may be negative: a signal, not an error).
    pub on_hand: i64,
    /// Damaged or quarantined units, shown within [0, max(on_hand, 0)].
    pub unsellable: i64,
    /// Units held by active reservations.
    pub reserved: i64,
    /// Buffer withheld from sale (position, else product, else location).
    pub safety_stock: i64,
    /// Units shipped here by transfers, not yet received (never negative).
    pub in_transit: i64,
    /// max(0, on_hand − unsellable − reserved − safety_stock).
    pub available: i64,
}

/// Safety stock resolution: position, else product, else location default.
pub fn resolve_safety_stock(
    position: Option<i64>,
    product: Option<i64>,
    location_default: i64,
) -> i64 {
    position.or(product).unwrap_or(location_default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(at: i64, id: &str, quantity: i64) -> CountMark {
        CountMark {
            at,
            event_id: id.into(),
            quantity,
        }
    }

    #[test]
    fn deltas_at_or_before_the_count_are_already_in_it() {
        let mut state = PositionState::default();
        assert_eq!(state.apply_on_hand_delta(10, 5), 5);
        assert_eq!(state.install_count(mark(20, "c1", 3), 0), -2);
        assert_eq!(state.apply_on_hand_delta(20, -1), 0);
        assert_eq!(state.apply_on_hand_delta(15, -1), 0);
        assert_eq!(state.apply_on_hand_delta(21, -1), -1);
        assert_eq!(state.on_hand(), 2);
    }

    #[test]
    fn counts_at_the_same_instant_tie_break_on_event_id() {
        let a = mark(5, "a", 1);
        let b = mark(5, "b", 2);
        assert!(b.supersedes(Some(&a)));
        assert!(!a.supersedes(Some(&b)));
        assert!(a.supersedes(None));
    }

    #[test]
    fn view_bounds_hold() {
        let state = PositionState {
            delta_after: -3,
            unsellable_raw: 4,
            inbound_shipped: 1,
            inbound_received: 5,
            ..PositionState::default()
        };
        let view = state.view(2);
        assert_eq!(view.on_hand, -3);
        assert_eq!(view.unsellable, 0);
        assert_eq!(view.in_transit, 0);
        assert_eq!(view.available, 0);
        let state = PositionState {
            delta_after: 10,
            unsellable_raw: 3,
            reserved: 2,
            ..PositionState::default()
        };
        assert_eq!(state.view(1).available, 4);
        assert_eq!(resolve_safety_stock(None, Some(3), 1), 3);
        assert_eq!(resolve_safety_stock(Some(0), Some(3), 1), 0);
        assert_eq!(resolve_safety_stock(None, None, 1), 1);
    }
}
