//! Adapters to the systems of record. Each turns a source system's format
//! into canonical events (POS, WMS) or canonical postings into the target
//! system's calls (ERP).

pub mod erp;
pub mod pos;
pub mod wms;
