//! Logs and metrics.
//!
//! Logs are JSON lines (or pretty text) through `tracing-subscriber`; each
//! request runs in a span carrying its request id and trace id, so every
//! line logged while handling it names both. Metrics go to one Prometheus
//! recorder per process; every series carries a `service` label so the
//! all-in-one launcher's three services stay distinguishable.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetrySettings};
use crate::correlation::Correlation;

/// Installs the global log subscriber once; later calls do nothing.
pub fn init_logging(settings: &TelemetrySettings) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let result = match settings.log_format {
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .try_init(),
            LogFormat::Pretty => builder.try_init(),
        };
        // Another subscriber (a test harness) may already be installed.
        let _ = result;
    });
}

/// How often the recorder's upkeep runs: it drains the histograms'
/// pending samples, which otherwise grow until the next scrape (and
/// without end when nothing scrapes).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Upper bounds (seconds) of `http_request_duration_seconds`: from
/// sub-millisecond cached reads up to the 900 s deadline of streamed bulk
/// uploads (`[http] upload_timeout_ms`), so a slow upload lands in a
/// bucket of its own instead of `+Inf`.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 900.0,
];

/// Upper bounds (seconds) of `erp_call_duration_seconds`: an ERP call may
/// run for minutes (a large posting batch; the Tryton client waits 300 s).
pub const ERP_CALL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Upper bounds (seconds) of the other `*_duration_seconds` histograms
/// (commits, propagation, webhook deliveries): short work.
const SHORT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How many upkeep threads were started (one per process).
static UPKEEP_STARTED: AtomicUsize = AtomicUsize::new(0);

/// How many upkeep rounds have run.
static UPKEEP_RUNS: AtomicU64 = AtomicU64::new(0);

/// The process-wide Prometheus handle, installing the recorder on first use.
///
/// The first call also registers every metric's help text
/// ([`metric_catalog`](crate::metric_catalog)) and starts the upkeep,
/// once per process.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = install_recorder();
        crate::metric_catalog::describe_all();
        start_upkeep(handle.clone());
        handle
    })
}

fn install_recorder() -> PrometheusHandle {
    let buckets = [
        (
            Matcher::Full("http_request_duration_seconds".into()),
            REQUEST_BUCKETS,
        ),
        (
            Matcher::Full("erp_call_duration_seconds".into()),
            ERP_CALL_BUCKETS,
        ),
        (Matcher::Suffix("duration_seconds".into()), SHORT_BUCKETS),
    ];
    let builder = buckets
        .into_iter()
        .try_fold(PrometheusBuilder::new(), |builder, (matcher, values)| {
            builder.set_buckets_for_metric(matcher, values)
        })
        .unwrap_or_else(|error| {
            // Only an empty list is refused, and none of them is empty.
            tracing::warn!(%error, "histogram buckets refused");
            PrometheusBuilder::new()
        });
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
    }
    handle
}

/// Runs the recorder's upkeep every [`UPKEEP_INTERVAL`] on a thread of its
/// own: not a task, because the recorder outlives any one runtime (tests
/// and tools build routers in short-lived runtimes), and an upkeep that
/// died with the first runtime would silently stop.
fn start_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
                UPKEEP_RUNS.fetch_add(1, Ordering::Relaxed);
            }
        });
    match started {
        Ok(_) => {
            UPKEEP_STARTED.fetch_add(1, Ordering::SeqCst);
        }
        Err(error) => tracing::error!(%error, "cannot start the metrics upkeep"),
    }
}

/// Sets `build_info{service, version} 1`, so dashboards can tell which
/// build answers.
pub fn record_build_info(service: &'static str) {
    metrics::gauge!(
        "build_info",
        "service" => service,
        "version" => env!("CARGO_PKG_VERSION")
    )
    .set(1.0);
}

/// The service name a router belongs to, stored in request extensions by
/// the common stack so the metrics middleware can label series.
#[derive(Debug, Clone, Copy)]
pub struct ServiceName(pub &'static str);

/// The `method` label: the standard methods as themselves, any other
/// `OTHER`, so a client inventing methods cannot mint new series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// The `route` label of a request the router did not match: one series
/// for every unmatched path, never the path itself.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Middleware: counts requests and records latency per route template
/// (the router's [`MatchedPath`], never the raw path) and status.
pub async fn track_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let service = request
        .extensions()
        .get::<ServiceName>()
        .map_or("unknown", |s| s.0);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    record_request(service, &method, route, response.status(), started);
    response
}

/// Counts one answered request and its latency (what [`track_metrics`]
/// records, for a route answered ahead of the stack). `route` is a route
/// template, never a raw path.
pub fn record_request(
    service: &str,
    method: &Method,
    route: String,
    status: axum::http::StatusCode,
    started: Instant,
) {
    let labels = [
        ("service", service.to_owned()),
        ("method", method_label(method).to_owned()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
}

/// Whether traces are exported (set once by [`init_tracing`]).
static TRACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keeps the trace exporter running; dropping it sends what is buffered
/// and stops it.
#[derive(Debug)]
pub struct TracingGuard(opentelemetry_sdk::trace::SdkTracerProvider);

impl TracingGuard {
    /// Sends the finished spans now.
    pub fn flush(&self) {
        if let Err(error) = self.0.force_flush() {
            tracing::warn!(%error, "flushing traces failed");
        }
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        TRACING.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Err(error) = self.0.shutdown() {
            tracing::debug!(%error, "stopping the trace exporter failed");
        }
    }
}

/// Starts exporting traces over OTLP/HTTP (JSON) when
/// `otlp_endpoint` is set; `service_name` becomes the resource's
/// `service.name` (the all-in-one launcher names itself and marks each
/// span with the `retail.service` it belongs to).
pub fn init_tracing(
    settings: &TelemetrySettings,
    service_name: &str,
) -> anyhow::Result<Option<TracingGuard>> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler};
    if settings.otlp_endpoint.trim().is_empty() {
        return Ok(None);
    }
    // A blocking client owns a runtime of its own: built on a plain thread,
    // never inside the caller's runtime. It trusts the platform's roots
    // (an https collector with a private CA works).
    let http = std::thread::spawn(|| crate::tls::blocking_client_builder().build())
        .join()
        .map_err(|_| anyhow::anyhow!("building the OTLP HTTP client panicked"))??;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http)
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(settings.otlp_endpoint.trim())
        .build()?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(std::time::Duration::from_millis(
                    settings.otlp_batch_delay_ms.max(10),
                ))
                .build(),
        )
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_id_generator(ChosenIds::default())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.trace_sample_ratio.clamp(0.0, 1.0),
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    TRACING.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(endpoint = %settings.otlp_endpoint, "exporting traces over OTLP");
    Ok(Some(TracingGuard(provider)))
}

/// Whether spans are being exported.
pub fn tracing_enabled() -> bool {
    TRACING.load(std::sync::atomic::Ordering::Relaxed)
}

fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer("retail-platform")
}

/// The OpenTelemetry context of a W3C parent (`trace_id`, `span_id` as
/// hex), for spans that continue a trace: a request's server span, or
/// work done later on behalf of a request (an ERP posting).
pub fn remote_parent(trace_id: &str, span_id: &str, sampled: bool) -> opentelemetry::Context {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    let (Ok(trace), Ok(span)) = (TraceId::from_hex(trace_id), SpanId::from_hex(span_id)) else {
        return opentelemetry::Context::new();
    };
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace,
        span,
        flags,
        true,
        TraceState::NONE,
    ))
}

/// Starts a span of kind `kind` under `parent`, with the given ids when
/// set (a server span takes the request's own span id, so the
/// `traceparent` sent downstream names it).
pub fn start_span(
    name: String,
    kind: opentelemetry::trace::SpanKind,
    parent: &opentelemetry::Context,
    ids: Option<(&str, &str)>,
    attributes: Vec<opentelemetry::KeyValue>,
) -> opentelemetry::global::BoxedSpan {
    use opentelemetry::trace::{SpanId, TraceId, Tracer};
    let tracer = tracer();
    let builder = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes);
    if let Some((trace_id, span_id)) = ids {
        let chosen = (
            TraceId::from_hex(trace_id).ok(),
            SpanId::from_hex(span_id).ok(),
        );
        CHOSEN.with(|slot| slot.set(chosen));
        let span = builder.start_with_context(&tracer, parent);
        CHOSEN.with(|slot| slot.set((None, None)));
        return span;
    }
    builder.start_with_context(&tracer, parent)
}

thread_local! {
    /// Ids for the span being started on this thread (see [`ChosenIds`]).
    static CHOSEN: std::cell::Cell<(
        Option<opentelemetry::trace::TraceId>,
        Option<opentelemetry::trace::SpanId>,
    )> = const { std::cell::Cell::new((None, None)) };
}

/// Span ids as the platform chose them: the SDK asks its id generator for
/// a span's ids, and a request's span must carry the ids its
/// [`Correlation`] already handed to logs, the journal and downstream
/// calls. [`start_span`] puts them in a thread-local slot for the
/// (synchronous) start; every other span gets random ids.
#[derive(Debug, Default)]
struct ChosenIds(opentelemetry_sdk::trace::RandomIdGenerator);

impl opentelemetry_sdk::trace::IdGenerator for ChosenIds {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        CHOSEN
            .with(std::cell::Cell::get)
            .0
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        CHOSEN
            .with(std::cell::Cell::get)
            .1
            .unwrap_or_else(|| self.0.new_span_id())
    }
}

/// Middleware: one server span per request when traces are exported. Its
/// trace id and span id are the request's [`Correlation`] (so logs,
/// journal entries and downstream `traceparent`s name the same span), its
/// parent the caller's span from `traceparent`.
pub async fn trace_requests(request: Request, next: Next) -> Response {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{Span, SpanKind, Status};
    if !tracing_enabled() {
        return next.run(request).await;
    }
    let Some(correlation) = request.extensions().get::<Correlation>().cloned() else {
        return next.run(request).await;
    };
    let service = request
        .extensions()
        .get::<ServiceName>()
        .map_or("unknown", |s| s.0);
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let method = request.method().as_str().to_owned();
    let sampled = correlation.flags & 1 == 1;
    let parent = match &correlation.parent_span_id {
        Some(parent) => remote_parent(&correlation.trace_id, parent, sampled),
        None => opentelemetry::Context::new(),
    };
    let mut span = start_span(
        format!("{method} {route}"),
        SpanKind::Server,
        &parent,
        Some((&correlation.trace_id, &correlation.span_id)),
        vec![
            KeyValue::new("retail.service", service),
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", route),
            KeyValue::new("url.path", request.uri().path().to_owned()),
            KeyValue::new("retail.request_id", correlation.request_id.clone()),
        ],
    );
    let response = next.run(request).await;
    let status = response.status();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    response
}

/// Records a finished span that continues a stored trace context: work a
/// request caused and that ran later (an ERP posting of an ingested
/// event). `link` names the trace of the call that did the work.
pub fn record_span(
    name: &str,
    parent: (&str, &str),
    started: std::time::SystemTime,
    attributes: Vec<opentelemetry::KeyValue>,
    error: Option<String>,
    link: Option<(&str, &str)>,
) {
    use opentelemetry::trace::{
        Link, Span, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState, Tracer,
    };
    if !tracing_enabled() {
        return;
    }
    let tracer = tracer();
    let mut builder = tracer
        .span_builder(name.to_owned())
        .with_kind(SpanKind::Client)
        .with_start_time(started)
        .with_attributes(attributes);
    if let Some((trace, span)) = link
        && let (Ok(trace), Ok(span)) = (TraceId::from_hex(trace), SpanId::from_hex(span))
    {
        builder = builder.with_links(vec![Link::with_context(SpanContext::new(
            trace,
            span,
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        ))]);
    }
    let mut span = builder.start_with_context(&tracer, &remote_parent(parent.0, parent.1, true));
    if let Some(error) = error {
        span.set_status(Status::error(error));
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use std::sync::Arc;
    use tower::ServiceExt;

    /// A router with the production stack, under a service name of its own
    /// so its series are told apart from other tests' in the shared recorder.
    fn app(service: &'static str) -> Router {
        let settings = crate::config::Settings::defaults();
        let router = Router::new().route("/items/{id}", get(|| async { "item" }));
        crate::middleware::apply(
            router,
            service,
            &settings,
            Arc::new(crate::auth::Authenticator::new(
                &settings.auth,
                "process-api",
            )),
            Arc::new(crate::idempotency::MemoryStore::default()),
            crate::audit::Auditor::start(service, Arc::new(crate::audit::MemoryAudit::new(10))).0,
        )
    }

    async fn send(app: &Router, method: &str, path: &str) -> axum::http::StatusCode {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        app.clone()
            .oneshot(request)
            .await
            .expect("infallible")
            .status()
    }

    /// The rendered series of `service`.
    fn series_of(service: &str) -> Vec<String> {
        let label = format!("service=\"{service}\"");
        prometheus()
            .render()
            .lines()
            .filter(|line| line.contains(&label))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn made_up_methods_and_raw_paths_mint_no_series() {
        let app = app("metrics-labels-test");
        send(&app, "FOOBAR", "/items/42").await;
        send(&app, "FOOBAZ", "/items/43").await;
        send(&app, "GET", "/items/44").await;
        send(&app, "GET", "/no/such/path").await;

        let series = series_of("metrics-labels-test");
        let counted = |method: &str, route: &str| {
            series.iter().any(|line| {
                line.starts_with("http_requests_total{")
                    && line.contains(&format!("method=\"{method}\""))
                    && line.contains(&format!("route=\"{route}\""))
            })
        };
        assert!(counted("OTHER", "/items/{id}"), "{series:#?}");
        assert!(counted("GET", "/items/{id}"), "{series:#?}");
        assert!(counted("GET", "unmatched"), "{series:#?}");
        let text = series.join("\n");
        for minted in ["FOOBAR", "FOOBAZ", "/items/4", "/no/such/path"] {
            assert!(!text.contains(minted), "{minted} became a label: {text}");
        }
    }

    #[test]
    fn only_the_standard_methods_are_labelled_by_name() {
        for method in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
        ] {
            let parsed = Method::from_bytes(method.as_bytes()).expect("method");
            assert_eq!(method_label(&parsed), method);
        }
        for invented in ["FOOBAR", "get", "PROPFIND"] {
            let parsed = Method::from_bytes(invented.as_bytes()).expect("method");
            assert_eq!(method_label(&parsed), "OTHER");
        }
    }

    #[tokio::test]
    async fn the_metrics_text_has_help_build_info_and_buckets_up_to_minutes() {
        let app = app("metrics-text-test");
        send(&app, "GET", "/items/1").await;

        let text = prometheus().render();
        for help in [
            "# HELP http_requests_total ",
            "# HELP http_request_duration_seconds ",
            "# HELP build_info ",
        ] {
            assert!(text.contains(help), "missing {help:?}");
        }
        let series = series_of("metrics-text-test");
        let build_info = format!(
            "build_info{{service=\"metrics-text-test\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(series.contains(&build_info), "{series:#?}");
        for le in ["le=\"300\"", "le=\"900\"", "le=\"+Inf\""] {
            assert!(
                series.iter().any(|line| {
                    line.starts_with("http_request_duration_seconds_bucket{") && line.contains(le)
                }),
                "no request-duration bucket {le}: {series:#?}"
            );
        }
    }

    #[test]
    fn the_erp_call_histogram_has_buckets_up_to_minutes() {
        prometheus();
        metrics::histogram!(
            "erp_call_duration_seconds",
            "backend" => "buckets-test",
            "operation" => "post",
            "outcome" => "ok"
        )
        .record(200.0);
        let text = prometheus().render();
        let bucket = |le: &str| {
            text.lines().find(|line| {
                line.starts_with("erp_call_duration_seconds_bucket{")
                    && line.contains("backend=\"buckets-test\"")
                    && line.contains(&format!("le=\"{le}\""))
            })
        };
        assert!(bucket("120").is_some_and(|line| line.ends_with(" 0")));
        assert!(bucket("300").is_some_and(|line| line.ends_with(" 1")));
    }

    #[test]
    fn upkeep_runs_on_one_thread_however_often_the_recorder_is_asked_for() {
        let askers: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| prometheus().render().len()))
            .collect();
        for asker in askers {
            asker.join().expect("thread");
        }
        prometheus();
        assert_eq!(UPKEEP_STARTED.load(Ordering::SeqCst), 1);

        let before = UPKEEP_RUNS.load(Ordering::Relaxed);
        let deadline = Instant::now() + UPKEEP_INTERVAL * 3;
        while UPKEEP_RUNS.load(Ordering::Relaxed) == before {
            assert!(Instant::now() < deadline, "no upkeep ran");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
