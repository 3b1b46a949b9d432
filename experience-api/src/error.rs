//! The one error type of experience-api; every variant answers problem+json.

use axum::response::{IntoResponse, Response};
use retail_shared::Problem;
use retail_shared::client::ClientError;

/// Errors of experience-api handlers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem to answer as is.
    #[error(transparent)]
    Problem(#[from] Problem),
    /// A call to process-api failed; its problem is passed on.
    #[error(transparent)]
    Downstream(#[from] ClientError),
}

/// Result of experience-api handlers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Self::Problem(problem) => problem.into_response(),
            Self::Downstream(error) => Problem::from(error).into_response(),
        }
    }
}
