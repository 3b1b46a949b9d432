//! End-to-end tests: the three real services on port 0, talking HTTP to
//! each other, driven over HTTP.

mod binding;
mod channels;
mod console;
mod erp;
mod fast_read;
mod feed;
mod flows;
mod foundation;
mod governance;
mod helpers;
mod inventory;
mod jwks;
mod pos_batch;
mod poslog;
mod promising;
mod reservations;
mod stream_limits;
mod tls;
mod tokens;
mod tryton;
mod views;
mod wms;
