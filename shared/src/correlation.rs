//! Correlation: `X-Request-Id` and W3C Trace Context `traceparent`.
//!
//! Every request gets a [`Correlation`]: the caller's request id (or a new
//! UUID) and the caller's trace id (or a new one). Each service hop takes a
//! fresh span id, so the `traceparent` sent downstream names this service as
//! the parent. Handlers extract [`Correlation`] and hand it to the inter-layer
//! clients, to the journal and to ERP postings.

use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderName, HeaderValue, request::Parts};
use axum::middleware::Next;
use axum::response::Response;

/// `X-Request-Id`.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C `tracestate`, forwarded untouched.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest request id accepted from a caller; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The correlation identifiers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    /// The request id (caller's, or generated here).
    pub request_id: String,
    /// 32 lowercase hex digits shared by every hop of one trace.
    pub trace_id: String,
    /// 16 hex digits naming this service's span.
    pub span_id: String,
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent_span_id: Option<String>,
    /// Trace flags (sampled bit).
    pub flags: u8,
    /// The caller's `tracestate`, forwarded as is.
    pub tracestate: Option<String>,
}

impl Correlation {
    /// A new root correlation (background work, CLI calls).
    pub fn new_root() -> Self {
        Self {
            request_id: random_uuid(),
            trace_id: random_hex(16),
            span_id: random_hex(8),
            parent_span_id: None,
            flags: 1,
            tracestate: None,
        }
    }

    /// Builds the correlation of an incoming request from its headers.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Self {
        let request_id = headers
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_valid_request_id(v))
            .map(str::to_owned)
            .unwrap_or_else(random_uuid);
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let tracestate = headers
            .get(&TRACESTATE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 512)
            .map(str::to_owned);
        match parent {
            Some((trace_id, parent_span, flags)) => Self {
                request_id,
                trace_id,
                span_id: random_hex(8),
                parent_span_id: Some(parent_span),
                flags,
                tracestate,
            },
            None => Self {
                request_id,
                trace_id: random_hex(16),
                span_id: random_hex(8),
                parent_span_id: None,
                flags: 1,
                tracestate: None,
            },
        }
    }

    /// The `traceparent` to send on calls made while handling this request.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// Headers to put on a downstream call.
    pub fn downstream_headers(&self) -> Vec<(HeaderName, String)> {
        let mut headers = vec![
            (REQUEST_ID.clone(), self.request_id.clone()),
            (TRACEPARENT.clone(), self.traceparent()),
        ];
        if let Some(state) = &self.tracestate {
            headers.push((TRACESTATE.clone(), state.clone()));
        }
        headers
    }
}

/// A request id is 1–128 visible ASCII characters.
pub fn is_valid_request_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid.
pub fn parse_traceparent(value: &str) -> Option<(String, String, u8)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !is_hex(version, 2) || version == "ff" || !is_hex(trace_id, 32) || !is_hex(span_id, 16) {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_hex(flags, 2) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_owned(), span_id.to_owned(), flags))
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buffer = [0_u8; 16];
    let raw = &mut buffer[..bytes.min(16)];
    let mut rng = rand::rng();
    loop {
        rng.fill_bytes(raw);
        if raw.iter().any(|b| *b != 0) {
            let mut value = String::with_capacity(raw.len() * 2);
            for b in raw.iter() {
                value.push(char::from(DIGITS[usize::from(b >> 4)]));
                value.push(char::from(DIGITS[usize::from(b & 0x0f)]));
            }
            return value;
        }
    }
}

/// Makes `X-Request-Id` values: random (v4) UUIDs from the thread's
/// generator. tower-http's `MakeRequestUuid` asks the kernel for every one
/// (a system call per request).
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeRequestUuid;

impl tower_http::request_id::MakeRequestId for MakeRequestUuid {
    fn make_request_id<B>(
        &mut self,
        _request: &axum::http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut buffer = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer))
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

/// A random (v4) UUID from the thread's generator, as text.
fn random_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Middleware: computes the request's [`Correlation`], stores it in the
/// request extensions, rewrites an invalid `X-Request-Id` so every later
/// layer (and the response) sees the one actually used, and echoes
/// `traceparent` naming this hop on the response.
pub async fn correlate(mut request: Request, next: Next) -> Response {
    let correlation = Correlation::from_headers(request.headers());
    if let Ok(value) = HeaderValue::from_str(&correlation.request_id) {
        request.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    let traceparent = correlation.traceparent();
    request.extensions_mut().insert(correlation);
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        response.headers_mut().insert(TRACEPARENT.clone(), value);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Correlation {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Correlation>()
            .cloned()
            .unwrap_or_else(|| Correlation::from_headers(&parts.headers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn keeps_the_callers_trace_and_takes_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert(&REQUEST_ID, HeaderValue::from_static("req-42"));
        headers.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let correlation = Correlation::from_headers(&headers);
        assert_eq!(correlation.request_id, "req-42");
        assert_eq!(correlation.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            correlation.parent_span_id.as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_ne!(correlation.span_id, "00f067aa0ba902b7");
        assert!(
            correlation
                .traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }

    #[test]
    fn generated_ids_are_well_formed_and_differ() {
        use tower_http::request_id::MakeRequestId as _;
        let trace = random_hex(16);
        let span = random_hex(8);
        assert!(parse_traceparent(&format!("00-{trace}-{span}-01")).is_some());
        assert_ne!(random_hex(16), trace);
        let request = axum::http::Request::new(());
        let id = |request: &axum::http::Request<()>| {
            let id = MakeRequestUuid.make_request_id(request).expect("an id");
            let id = id.header_value().to_str().expect("ascii").to_owned();
            uuid::Uuid::parse_str(&id).expect("a uuid")
        };
        let first = id(&request);
        assert_eq!(first.get_version_num(), 4);
        assert_eq!(first.to_string().len(), 36);
        assert_ne!(id(&request), first);
    }

    #[test]
    fn invalid_inputs_are_replaced() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            &REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(200)).expect("ascii"),
        );
        let correlation = Correlation::from_headers(&headers);
        assert_ne!(correlation.request_id.len(), 200);
        assert_eq!(correlation.trace_id.len(), 32);
    }
}
