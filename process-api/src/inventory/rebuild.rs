//! Folding a journal into fresh positions.
//!
//! Two passes, so memory holds positions, never the journal: first every
//! count (to find each position's latest), then every event (each on-hand
//! delta counts only when strictly after that latest count). The result
//! depends on the multiset of events, not on their order.

use std::collections::HashMap;

use super::position::{CountMark, PositionState};

/// A position key.
pub type Key = (String, String);

/// One journalled event's stored effects.
#[derive(Debug, Clone)]
pub struct JournalFact {
    /// Location.
    pub location_id: String,
    /// SKU.
    pub sku: String,
    /// Event time (unix µs).
    pub occurred_at: i64,
    /// On-hand delta before the count rule.
    pub on_hand_effect: i64,
    /// Unsellable delta.
    pub unsellable_effect: i64,
    /// Transfer units received here.
    pub inbound_received_effect: i64,
    /// Transfer units shipped to the counterparty.
    pub counterparty_shipped_effect: i64,
    /// Transfer counterparty.
    pub counterparty_location_id: Option<String>,
}

/// Accumulates a rebuild.
#[derive(Debug, Default)]
pub struct Rebuilder {
    states: HashMap<Key, PositionState>,
    events: u64,
}

impl Rebuilder {
    /// Pass 1: offer a count.
    pub fn add_count(&mut self, location_id: &str, sku: &str, mark: CountMark) {
        let state = self
            .states
            .entry((location_id.to_owned(), sku.to_owned()))
            .or_default();
        if mark.supersedes(state.count.as_ref()) {
            let at = mark.at;
            state.count = Some(mark);
            state.touch(at);
        }
    }

    /// Pass 2: apply an event's effects (counts contribute no delta).
    pub fn add_fact(&mut self, fact: &JournalFact) {
        self.events += 1;
        let state = self
            .states
            .entry((fact.location_id.clone(), fact.sku.clone()))
            .or_default();
        state.apply_on_hand_delta(fact.occurred_at, fact.on_hand_effect);
        state.unsellable_raw += fact.unsellable_effect;
        state.inbound_received += fact.inbound_received_effect;
        state.touch(fact.occurred_at);
        if fact.counterparty_shipped_effect != 0
            && let Some(other) = &fact.counterparty_location_id
        {
            let state = self
                .states
                .entry((other.clone(), fact.sku.clone()))
                .or_default();
            state.inbound_shipped += fact.counterparty_shipped_effect;
        }
    }

    /// Events folded in pass 2.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The rebuilt positions (reserved is not part of the journal: 0).
    pub fn finish(self) -> HashMap<Key, PositionState> {
        self.states
    }
}
