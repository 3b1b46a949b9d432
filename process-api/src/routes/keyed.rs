//! The route side of an `Idempotency-Key` claimed in the transaction of
//! the effect it guards (see [`KeyedWrite`]): the route hands the storage
//! its claim and how it answers an outcome; the storage claims the key,
//! makes the change and stores that answer in one transaction. A retry
//! therefore finds either nothing done and the key free, or the change
//! made and its first answer kept: never the change without its answer,
//! and never the change made twice.

use axum::Extension;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use retail_shared::idempotency::{self, Begin, InlineClaim, StoredResponse};
use retail_shared::problem::{PROBLEM_JSON, Problem};
use serde::Serialize;

use crate::SERVICE;
use crate::storage::idempotency::{Keyed, KeyedWrite};

/// POST routes whose key is claimed in their effect's own transaction
/// (patterns of [`idempotency::path_matches`]). Every other effectful POST
/// is idempotent by its own ids or state (see `docs/security.md`), and the
/// middleware keeps its key around it.
pub const INLINE_PATHS: &[&str] = &[
    "/v1/reservations",
    "/v1/reservations/*/release",
    "/v1/reservations/*/fulfill",
    "/v1/transfers",
    "/v1/transfers/*/approve",
    "/v1/transfers/*/ship",
    "/v1/transfers/*/receive",
    "/v1/transfers/*/cancel",
    "/v1/ops/postings/*/replay",
    "/v1/ops/postings/*/discard",
    "/v1/ops/reconciliation/exceptions/*/approve",
    "/v1/ops/reconciliation/exceptions/*/reject",
    "/v1/ops/webhooks",
    "/v1/ops/webhooks/*/resume",
    "/v1/ops/webhooks/*/dead-letters/*/discard",
    "/v1/promise",
    "/v1/inventory/events",
    "/v1/returns",
];

/// The route's claim, if the middleware left it one, with `render` as the
/// answer to keep.
pub fn claim<'a, T>(
    claim: Option<&Extension<InlineClaim>>,
    render: &'a (dyn Fn(&T) -> StoredResponse + Send + Sync),
) -> Option<KeyedWrite<'a, T>> {
    claim.map(|Extension(claim)| KeyedWrite::new(claim, render))
}

/// The response to a keyed write, and its outcome when the write ran: a
/// key that was not new answers for itself (the first answer replayed, a
/// key reused for another request, a key in flight); otherwise the answer
/// kept with the change, or, when none was kept, the outcome rendered now.
pub fn respond<T>(
    keyed: Keyed<T>,
    render: &(dyn Fn(&T) -> StoredResponse + Send + Sync),
) -> (Option<T>, Response) {
    match keyed {
        Keyed::Key(decision) => (None, key_answer(decision)),
        Keyed::Decided(outcome, stored) => {
            let response = match stored {
                Some(stored) => kept(stored),
                None => render(&outcome).into_response(),
            };
            (Some(outcome), response)
        }
    }
}

/// The answer of a key that was not new.
pub fn key_answer(decision: Begin) -> Response {
    idempotency::answer(SERVICE, decision).unwrap_or_else(|| {
        tracing::error!("a new key came back undecided");
        Problem::internal().into_response()
    })
}

/// The answer kept with a change, sent as kept.
pub fn kept(stored: StoredResponse) -> Response {
    // Counted as the middleware counts a key's first use.
    let _ = idempotency::answer(SERVICE, Begin::Started);
    stored.into_response()
}

/// An outcome as JSON: `status` with the value, or the refusal's problem.
pub fn json<T: Serialize, E>(
    status: StatusCode,
    outcome: &Result<T, E>,
    refused: impl Fn(&E) -> Problem,
) -> StoredResponse {
    let (status, content_type, body) = match outcome {
        Ok(value) => (status, "application/json", serde_json::to_vec(value)),
        Err(refusal) => {
            let problem = refused(refusal);
            (
                problem.status(),
                PROBLEM_JSON,
                serde_json::to_vec(&problem.body()),
            )
        }
    };
    StoredResponse {
        status: status.as_u16(),
        content_type: Some(content_type.to_owned()),
        body: body.unwrap_or_default(),
    }
}
