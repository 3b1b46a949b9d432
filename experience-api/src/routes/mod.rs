//! Thin HTTP handlers, one module per area; each exports `router()`.

pub mod availability;
pub mod changes;
pub mod ops;
pub mod reservations;
pub mod stores;
