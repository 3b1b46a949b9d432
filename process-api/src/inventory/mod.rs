//! The inventory ledger's domain logic, free of HTTP and SQL:
//!
//! - [`event`]: canonical events, their validation and their effects;
//! - [`position`]: a position's stored state, the count-and-late-event rule,
//!   and the read-time view (DESIGN.md §5);
//! - [`rebuild`]: folding a journal into fresh positions.
//!
//! **Counts and late events.** `on_hand` is defined by event time: the
//! latest `count` by `occurred_at` (ties broken by the larger `event_id`,
//! so the choice never depends on arrival order) plus every on-hand delta
//! strictly later than it. A position stores that count and the sum of the
//! deltas after it; a delta at or before the count is journalled but
//! changes nothing, and a newer count replaces the stored one and re-sums
//! the deltas after it from the journal.

pub mod event;
pub mod position;
pub mod rebuild;
