//! Thin HTTP handlers, one module per area; each exports `router()`.

pub mod feed;
pub mod flows;
pub mod inventory;
pub mod keyed;
pub mod master;
pub mod ops;
pub mod promise;
pub mod reservations;

use retail_shared::problem::Problem;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::config::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

/// Keyset paging parameters shared by list endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Return items after this id (the previous page's `next_cursor`).
    pub after: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

impl PageQuery {
    /// The page size, checked.
    pub fn limit(&self) -> Result<u32, Problem> {
        page_limit(self.limit)
    }
}

/// A requested page size (`?limit`), defaulted and checked.
pub fn page_limit(limit: Option<u32>) -> Result<u32, Problem> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if (1..=MAX_PAGE_SIZE).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::validation(vec![
            retail_shared::problem::FieldError {
                pointer: "?limit".into(),
                detail: format!("must be between 1 and {MAX_PAGE_SIZE}"),
            },
        ]))
    }
}
