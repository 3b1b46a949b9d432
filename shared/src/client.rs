//! The base of the typed clients between layers (experience → process →
//! system).
//!
//! Every call:
//! - carries a fresh short-lived service token for the next layer's
//!   audience, with only the scopes the call needs and the end user's
//!   subject (see [`TokenIssuer::service_token`]);
//! - carries `X-Request-Id`, `traceparent` and `tracestate` of the request
//!   being served;
//! - has a per-attempt timeout; idempotent calls (GET, PUT, and POST with an
//!   `Idempotency-Key`) are retried with jittered exponential backoff on
//!   connection failures, 429 and 502/503/504; other calls are sent once;
//! - maps the answer: 2xx → the typed body, a downstream problem (4xx) →
//!   the same problem for our caller, anything else → a 502/503 problem.

use std::time::Duration;

use axum::http::StatusCode;
use backon::{ExponentialBuilder, Retryable};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::{Principal, TokenIssuer};
use crate::config::ClientSettings;
use crate::correlation::Correlation;
use crate::problem::Problem;

/// Errors of a downstream call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The downstream layer answered with a problem (4xx): pass it on.
    #[error("downstream answered {status}")]
    Problem {
        /// Status from downstream.
        status: StatusCode,
        /// Its problem body.
        body: Value,
    },
    /// Transport failure, timeout, 429, 502, 503 or 504 (retried when the
    /// call is idempotent).
    #[error("downstream unavailable: {0}")]
    Unavailable(String),
    /// The downstream layer failed (500) or answered nonsense: not retried.
    #[error("downstream failed: {0}")]
    Failed(String),
    /// A token could not be minted or a body not encoded.
    #[error("client failure: {0}")]
    Internal(String),
}

impl From<ClientError> for Problem {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Problem { status, body } => Problem::passthrough(status, body),
            ClientError::Unavailable(detail) | ClientError::Failed(detail) => {
                tracing::warn!(%detail, "downstream call failed");
                Problem::upstream(
                    StatusCode::BAD_GATEWAY,
                    "a downstream layer did not answer; retry later",
                )
            }
            ClientError::Internal(detail) => {
                tracing::error!(%detail, "downstream call could not be made");
                Problem::internal()
            }
        }
    }
}

/// A client for one downstream layer.
#[derive(Debug, Clone)]
pub struct LayerClient {
    http: reqwest::Client,
    base_url: String,
    service: &'static str,
    audience: &'static str,
    issuer: TokenIssuer,
    retries: ExponentialBuilder,
}

/// Who a call is made for and under which request.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// The end user, when the call serves one.
    pub principal: Option<&'a Principal>,
    /// The request being served.
    pub correlation: &'a Correlation,
}

impl LayerClient {
    /// A client from `service` to the layer at `base_url` with `audience`.
    pub fn new(
        service: &'static str,
        audience: &'static str,
        base_url: &str,
        settings: &ClientSettings,
        issuer: TokenIssuer,
    ) -> anyhow::Result<Self> {
        let http = crate::tls::client_builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        let retries = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(settings.retry_min_delay_ms))
            .with_max_delay(Duration::from_millis(settings.retry_max_delay_ms))
            .with_max_times(settings.max_retries)
            .with_jitter();
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            service,
            audience,
            issuer,
            retries,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Unauthenticated probe of an operational path (`/readyz`): one
    /// attempt, `Ok` on 2xx.
    pub async fn probe(&self, path: &str) -> Result<(), String> {
        let url = format!("{}{}", self.base_url, path);
        match self.http.get(&url).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("{url} answered {}", response.status())),
            Err(error) => Err(format!("{url}: {error}")),
        }
    }

    /// GET, retried.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        scopes: &[&str],
        ctx: CallContext<'_>,
    ) -> Result<T, ClientError> {
        self.send::<(), T>(Method::GET, path, query, None, scopes, ctx, None, true)
            .await
    }

    /// PUT with a JSON body, retried (PUT is idempotent).
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        scopes: &[&str],
        ctx: CallContext<'_>,
    ) -> Result<T, ClientError> {
        self.send(Method::PUT, path, &[], Some(body), scopes, ctx, None, true)
            .await
    }

    /// POST of a query that changes nothing (a read with a body): retried
    /// like a GET.
    pub async fn post_read<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        scopes: &[&str],
        ctx: CallContext<'_>,
    ) -> Result<T, ClientError> {
        self.send(Method::POST, path, &[], Some(body), scopes, ctx, None, true)
            .await
    }

    /// POST with a JSON body. Retried only when an idempotency key makes
    /// the repeat safe.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        scopes: &[&str],
        ctx: CallContext<'_>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        self.send(
            Method::POST,
            path,
            &[],
            Some(body),
            scopes,
            ctx,
            idempotency_key,
            idempotency_key.is_some(),
        )
        .await
    }

    /// Opens a long-lived GET (a Server-Sent Events stream): one attempt,
    /// no overall deadline (the caller watches for silence), `Last-Event-ID`
    /// when resuming. The caller reads the body as it arrives.
    pub async fn open_stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        scopes: &[&str],
        last_event_id: Option<i64>,
    ) -> Result<reqwest::Response, ClientError> {
        let token = self
            .issuer
            .service_token(self.service, self.audience, scopes, None)
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        let url = format!("{}{}", self.base_url, path);
        let mut request = self
            .http
            .get(&url)
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            // Replaces the client's per-call deadline for this request.
            .timeout(Duration::from_secs(365 * 24 * 3600));
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(format!("{url}: {e}")))?;
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        if status.is_success() {
            Ok(response)
        } else if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            Err(ClientError::Problem { status, body })
        } else {
            Err(ClientError::Unavailable(format!(
                "{url}: answered {status}"
            )))
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one private funnel for all verbs"
    )]
    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
        scopes: &[&str],
        ctx: CallContext<'_>,
        idempotency_key: Option<&str>,
        retryable: bool,
    ) -> Result<T, ClientError> {
        let token = self
            .issuer
            .service_token(self.service, self.audience, scopes, ctx.principal)
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        let url = format!("{}{}", self.base_url, path);
        let attempt = || async {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .header("accept", "application/json");
            if !query.is_empty() {
                request = request.query(query);
            }
            for (name, value) in ctx.correlation.downstream_headers() {
                request = request.header(name.as_str(), value);
            }
            if let Some(key) = idempotency_key {
                request = request.header("idempotency-key", key);
            }
            if let Some(bytes) = &body {
                request = request
                    .header("content-type", "application/json")
                    .body(bytes.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| ClientError::Unavailable(format!("{url}: {e}")))?;
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let bytes = response
                .bytes()
                .await
                .map_err(|e| ClientError::Unavailable(format!("{url}: {e}")))?;
            if status.is_success() {
                return serde_json::from_slice::<T>(&bytes)
                    .map_err(|e| ClientError::Failed(format!("{url}: unexpected answer: {e}")));
            }
            let transient = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            );
            if transient {
                return Err(ClientError::Unavailable(format!(
                    "{url}: answered {status}"
                )));
            }
            if status.is_client_error() {
                let body = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
                // Our own earlier attempt (timed out here) is still running
                // downstream: wait for it like for a 503, then get its replay.
                let in_flight = status == StatusCode::CONFLICT
                    && body["type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with("idempotency-key-in-flight"));
                if in_flight && idempotency_key.is_some() {
                    return Err(ClientError::Unavailable(format!(
                        "{url}: the first attempt is still in flight"
                    )));
                }
                return Err(ClientError::Problem { status, body });
            }
            // A 500 is not retried: the same request would likely fail again.
            Err(ClientError::Failed(format!("{url}: answered {status}")))
        };
        if retryable {
            attempt
                .retry(self.retries)
                .when(|e| matches!(e, ClientError::Unavailable(_)))
                .notify(|error, delay| {
                    metrics::counter!("client_retries_total", "to" => self.audience).increment(1);
                    tracing::debug!(%error, ?delay, "retrying downstream call");
                })
                .await
        } else {
            attempt().await
        }
    }
}
