//! RFC 9457 problem details, the one error body every service writes.
//!
//! [`Problem`] is the response; [`ApiJson`], [`ApiQuery`] and [`ApiPath`]
//! replace axum's extractors so that their rejections (bad JSON, wrong
//! content type, missing or unknown fields, bad query strings) become
//! problems with a JSON pointer to the offending field instead of axum's
//! plain-text bodies.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::validate::Validate;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of every problem `type` URI. The last segment names the problem
/// (e.g. `urn:retail-platform:problem:insufficient-stock`).
pub const PROBLEM_TYPE_PREFIX: &str = "urn:retail-platform:problem:";

/// One field-level error: where (RFC 6901 JSON pointer) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON pointer into the request (`/events/3/quantity`), or a query
    /// parameter as `?name`.
    pub pointer: String,
    /// What is wrong with it.
    pub detail: String,
}

/// An RFC 9457 problem details response.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: String,
    detail: Option<String>,
    // Boxed: problems travel in `Result`s, which should stay small.
    extra: Box<Extra>,
}

#[derive(Debug, Clone, Default)]
struct Extra {
    errors: Vec<FieldError>,
    extensions: Map<String, Value>,
    headers: HeaderMap,
    /// A downstream layer's problem body, passed on unchanged.
    passthrough: Option<Value>,
}

/// The wire shape of a problem, for the OpenAPI documents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// URI naming the problem type; its last segment is stable.
    #[schema(example = "urn:retail-platform:problem:validation")]
    pub r#type: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation of this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Field-level errors, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    /// A problem of the given status, type slug and title.
    pub fn new(status: StatusCode, slug: &'static str, title: impl Into<String>) -> Self {
        Self {
            status,
            slug,
            title: title.into(),
            detail: None,
            extra: Box::default(),
        }
    }

    /// A downstream layer's problem, answered to our caller unchanged. A
    /// downstream 401 means this layer's service token was refused: that is
    /// our failure, not the caller's, so it becomes a 502.
    pub fn passthrough(status: StatusCode, body: Value) -> Self {
        if status == StatusCode::UNAUTHORIZED || !body.is_object() {
            tracing::error!(%status, %body, "downstream layer refused or garbled a call");
            return Self::upstream(
                StatusCode::BAD_GATEWAY,
                "a downstream layer refused the call",
            );
        }
        let mut problem = Self::new(status, "downstream", "");
        problem.extra.passthrough = Some(body);
        problem
    }

    /// Adds the occurrence-specific explanation.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds field errors.
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.extra.errors = errors;
        self
    }

    /// Adds an extension member (RFC 9457 §3.2).
    pub fn with_extension(mut self, key: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.extra.extensions.insert(key.to_owned(), value);
        self
    }

    /// Adds a response header (e.g. `WWW-Authenticate`, `Retry-After`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.extra.headers.insert(name, value);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The last segment of the type URI.
    pub fn slug(&self) -> &'static str {
        self.slug
    }

    /// The field errors.
    pub fn errors(&self) -> &[FieldError] {
        &self.extra.errors
    }

    /// 400 for a malformed request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").with_detail(detail)
    }

    /// 422 with field errors.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => format!("{}: {}", errors[0].pointer, errors[0].detail),
            n => format!("{n} fields are invalid; see `errors`"),
        };
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "The request failed validation",
        )
        .with_detail(detail)
        .with_errors(errors)
    }

    /// 404 for a missing resource.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found").with_detail(detail)
    }

    /// 409 for a state conflict.
    pub fn conflict(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, slug, "Conflict").with_detail(detail)
    }

    /// 401 with `WWW-Authenticate` (RFC 6750).
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let challenge = format!(
            "Bearer realm=\"retail-platform\", error=\"invalid_token\", error_description=\"{}\"",
            detail.replace(['"', '\\'], "'")
        );
        let value = HeaderValue::from_str(&challenge)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"retail-platform\""));
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
        )
        .with_detail(detail)
        .with_header(header::WWW_AUTHENTICATE, value)
    }

    /// 403 for a missing scope or a location outside the token's binding.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").with_detail(detail)
    }

    /// 500 with a generic body. The cause is logged by the caller, never sent.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
        .with_detail("the server failed to handle the request; it has been logged")
    }

    /// 502/503 when a downstream layer fails.
    pub fn upstream(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::new(
            status,
            "upstream-unavailable",
            "A downstream service failed",
        )
        .with_detail(detail)
    }

    /// The problem for a bare status produced by a layer (404 fallback, 405,
    /// timeout, body limit…), so no response body is ever plain text.
    pub fn from_status(status: StatusCode) -> Self {
        let (slug, detail) = match status {
            StatusCode::NOT_FOUND => ("not-found", "no resource at this path"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method-not-allowed",
                "this path does not accept that method",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "the request body is too large"),
            StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => (
                "unavailable",
                "the request did not complete in time; retry later",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported-media-type", "send application/json")
            }
            _ if status.is_server_error() => {
                ("internal", "the server failed to handle the request")
            }
            _ => ("http-error", "the request could not be handled"),
        };
        let title = status.canonical_reason().unwrap_or("Error");
        Self::new(status, slug, title).with_detail(detail)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        if let Some(body) = &self.extra.passthrough {
            return body.clone();
        }
        let mut body = Map::new();
        body.insert(
            "type".into(),
            Value::String(format!("{PROBLEM_TYPE_PREFIX}{}", self.slug)),
        );
        body.insert("title".into(), Value::String(self.title.clone()));
        body.insert("status".into(), Value::from(self.status.as_u16()));
        if let Some(detail) = &self.detail {
            body.insert("detail".into(), Value::String(detail.clone()));
        }
        if !self.extra.errors.is_empty() {
            let errors = serde_json::to_value(&self.extra.errors).unwrap_or(Value::Null);
            body.insert("errors".into(), errors);
        }
        for (key, value) in &self.extra.extensions {
            body.entry(key.clone()).or_insert_with(|| value.clone());
        }
        Value::Object(body)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.slug)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response.headers_mut().extend(self.extra.headers);
        response
    }
}

/// Turns a serde error path plus message into a JSON pointer. Unknown and
/// missing field errors point at the field itself, not at its parent.
fn pointer_for(path: &serde_path_to_error::Path, message: &str) -> String {
    let mut pointer = String::new();
    for segment in path.iter() {
        use serde_path_to_error::Segment;
        match segment {
            Segment::Seq { index } => {
                pointer.push('/');
                pointer.push_str(&index.to_string());
            }
            Segment::Map { key } => {
                pointer.push('/');
                pointer.push_str(&escape_pointer(key));
            }
            Segment::Enum { variant } => {
                pointer.push('/');
                pointer.push_str(&escape_pointer(variant));
            }
            Segment::Unknown => {}
        }
    }
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some(end) = rest.find('`')
        {
            // serde reports these at the parent: name the field itself.
            let field = &rest[..end];
            if !pointer.ends_with(&format!("/{}", escape_pointer(field))) {
                pointer.push('/');
                pointer.push_str(&escape_pointer(field));
            }
        }
    }
    pointer
}

/// RFC 6901 escaping of one reference token.
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Strips serde's position suffix (" at line 1 column 7") from a message.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// Deserialises a JSON body, turning every failure into a problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let inner = error.inner();
        let message = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let pointer = pointer_for(error.path(), &message);
                Problem::validation(vec![FieldError {
                    pointer,
                    detail: without_position(&message),
                }])
            }
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                syntax_problem(inner, pointer_for(error.path(), ""))
            }
            serde_json::error::Category::Io => Problem::bad_request("the body could not be read"),
        }
    })?;
    // `{"a":1} garbage` is not one JSON document.
    deserializer
        .end()
        .map_err(|error| syntax_problem(&error, String::new()))?;
    Ok(value)
}

fn syntax_problem(error: &serde_json::Error, pointer: String) -> Problem {
    let message = without_position(&error.to_string());
    Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
        .with_detail(format!(
            "the body is not valid JSON: {message} (line {}, column {})",
            error.line(),
            error.column()
        ))
        .with_errors(vec![FieldError {
            pointer,
            detail: message,
        }])
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn bytes_rejection(rejection: BytesRejection) -> Problem {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::from_status(status)
            .with_detail("the request body exceeds the configured limit (http.body_limit_bytes)")
    } else {
        Problem::bad_request(format!(
            "the body could not be read: {}",
            rejection.body_text()
        ))
    }
}

/// JSON body extractor and response whose rejections are problems with a
/// pointer. Requires `Content-Type: application/json` (or `+json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .with_detail("the body must be sent with Content-Type: application/json"));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A JSON body that must also pass [`Validate`]; all violations are
/// reported together in one 422 problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidJson<T>(pub T);

impl<T, S> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        value.validated().map(ValidJson)
    }
}

/// Query-string extractor whose rejections are problems.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_problem(&rejection)),
        }
    }
}

fn query_problem(rejection: &QueryRejection) -> Problem {
    let text = rejection.body_text();
    let message = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text)
        .to_owned();
    let pointer = ["unknown field `", "missing field `", "field `"]
        .iter()
        .find_map(|prefix| {
            let index = message.find(prefix)?;
            let rest = &message[index + prefix.len()..];
            rest.find('`').map(|end| format!("?{}", &rest[..end]))
        })
        .or_else(|| {
            // serde_urlencoded reports value errors as `field: message`.
            let (field, _) = message.split_once(": ")?;
            field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                .then(|| format!("?{field}"))
        })
        .unwrap_or_else(|| "?".to_owned());
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query string",
    )
    .with_detail(message.clone())
    .with_errors(vec![FieldError {
        pointer,
        detail: message,
    }])
}

/// Path-parameter extractor whose rejections are problems.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_problem(&rejection)),
        }
    }
}

fn path_problem(rejection: &PathRejection) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-path",
        "Invalid path parameter",
    )
    .with_detail(rejection.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields exist to be parsed")]
    struct Event {
        event_id: String,
        quantity: i64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields exist to be parsed")]
    struct Batch {
        events: Vec<Event>,
    }

    fn pointer_of(body: &str) -> (StatusCode, String) {
        let problem = parse_json::<Batch>(body.as_bytes()).expect_err("must fail");
        (problem.status(), problem.errors()[0].pointer.clone())
    }

    #[test]
    fn wrong_type_points_at_the_field() {
        let body = r#"{"events":[{"event_id":"a","quantity":1},{"event_id":"b","quantity":"x"}]}"#;
        assert_eq!(
            pointer_of(body),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/events/1/quantity".into()
            )
        );
    }

    #[test]
    fn unknown_field_points_at_the_unknown_field() {
        let body = r#"{"events":[{"event_id":"a","quantity":1,"colour":"red"}]}"#;
        assert_eq!(
            pointer_of(body),
            (StatusCode::UNPROCESSABLE_ENTITY, "/events/0/colour".into())
        );
    }

    #[test]
    fn missing_field_points_at_the_missing_field() {
        let body = r#"{"events":[{"event_id":"a"}]}"#;
        assert_eq!(
            pointer_of(body),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/events/0/quantity".into()
            )
        );
    }

    #[test]
    fn syntax_error_is_a_400() {
        let (status, _) = pointer_of(r#"{"events":[{"event_id":"a",}]}"#);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = pointer_of(r#"{"events":[]} trailing"#);
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn body_has_the_rfc9457_members() {
        let body = Problem::validation(vec![FieldError {
            pointer: "/a".into(),
            detail: "bad".into(),
        }])
        .body();
        assert_eq!(body["type"], "urn:retail-platform:problem:validation");
        assert_eq!(body["status"], 422);
        assert_eq!(body["errors"][0]["pointer"], "/a");
        assert!(body["title"].is_string() && body["detail"].is_string());
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(escape_pointer("a/b~c"), "a~1b~0c");
    }
}
