//! The one error type of system-api; every variant answers problem+json.

use axum::response::{IntoResponse, Response};
use retail_shared::Problem;
use retail_shared::client::ClientError;

/// Errors of system-api handlers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem to answer as is.
    #[error(transparent)]
    Problem(#[from] Problem),
    /// A database failure: logged with its cause, answered generically.
    #[error("database failure")]
    Database(#[from] sqlx::Error),
    /// A call to process-api failed; its problem is passed on.
    #[error(transparent)]
    Downstream(#[from] ClientError),
    /// Anything else: logged, answered generically.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Result of system-api handlers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Self::Problem(problem) => problem.into_response(),
            Self::Database(error) => {
                tracing::error!(error = ?anyhow::Error::from(error), "database failure");
                Problem::internal().into_response()
            }
            Self::Downstream(error) => Problem::from(error).into_response(),
            Self::Internal(error) => {
                tracing::error!(error = ?error, "internal failure");
                Problem::internal().into_response()
            }
        }
    }
}
