//! Thin HTTP handlers, one module per area; each exports `router()`.

pub mod erp;
pub mod ops;
pub mod pos;
pub mod wms;
