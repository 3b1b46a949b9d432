//! Lifecycle headers for deprecated versions and routes (from
//! `[[deprecations]]` in the configuration): `Deprecation: @<epoch>`
//! (RFC 9745), `Sunset: <HTTP-date>` (RFC 8594) and
//! `Link: <successor>; rel="successor-version"`, and the same routes
//! flagged `deprecated` in the served OpenAPI document.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Deprecation;

/// `Deprecation`.
pub static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
/// `Sunset`.
pub static SUNSET: HeaderName = HeaderName::from_static("sunset");

/// A deprecation with its header values computed once.
#[derive(Debug, Clone)]
pub struct Rule {
    deprecation: Deprecation,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Precomputes the headers of every configured deprecation.
pub fn rules(deprecations: &[Deprecation]) -> Arc<Vec<Rule>> {
    let http_date = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    Arc::new(
        deprecations
            .iter()
            .map(|deprecation| {
                let mut headers = Vec::new();
                if let Ok(at) = OffsetDateTime::parse(&deprecation.deprecated_at, &Rfc3339)
                    && let Ok(value) = HeaderValue::from_str(&format!("@{}", at.unix_timestamp()))
                {
                    headers.push((DEPRECATION.clone(), value));
                }
                if let Some(sunset) = &deprecation.sunset
                    && let Ok(at) = OffsetDateTime::parse(sunset, &Rfc3339)
                    && let Ok(text) = at.to_offset(time::UtcOffset::UTC).format(&http_date)
                    && let Ok(value) = HeaderValue::from_str(&text)
                {
                    headers.push((SUNSET.clone(), value));
                }
                if let Some(successor) = &deprecation.successor
                    && let Ok(value) =
                        HeaderValue::from_str(&format!("<{successor}>; rel=\"successor-version\""))
                {
                    headers.push((header::LINK, value));
                }
                Rule {
                    deprecation: deprecation.clone(),
                    headers,
                }
            })
            .collect(),
    )
}

/// Whether a deprecation covers `path` (its answers carry lifecycle
/// headers).
pub fn covers(rules: &[Rule], path: &str) -> bool {
    rules.iter().any(|rule| rule.deprecation.covers(path))
}

/// Middleware: adds the lifecycle headers of the first matching rule.
pub async fn lifecycle_headers(
    State(rules): State<Arc<Vec<Rule>>>,
    request: Request,
    next: Next,
) -> Response {
    let rule = rules
        .iter()
        .find(|rule| rule.deprecation.covers(request.uri().path()))
        .cloned();
    let mut response = next.run(request).await;
    if let Some(rule) = rule {
        for (name, value) in rule.headers {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Flags the operations under a deprecation in an OpenAPI document.
pub fn flag_in_openapi(openapi: &mut utoipa::openapi::OpenApi, deprecations: &[Deprecation]) {
    use utoipa::openapi::Deprecated;
    for (path, item) in openapi.paths.paths.iter_mut() {
        if !deprecations.iter().any(|d| d.covers(path)) {
            continue;
        }
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            operation.deprecated = Some(Deprecated::True);
        }
    }
}
