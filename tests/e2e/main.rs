//! End-to-end tests: the three real services on port 0, talking HTTP to
//! each other, driven over HTTP.

mod channels;
mod foundation;
mod helpers;
mod inventory;
