//! Logs and metrics.
//!
//! Logs are JSON lines (or pretty text) through `tracing-subscriber`; each
//! request runs in a span carrying its request id and trace id, so every
//! line logged while handling it names both. Metrics go to one Prometheus
//! recorder per process; every series carries a `service` label so the
//! all-in-one launcher's three services stay distinguishable.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// The service name a router belongs to, stored in request extensions by
/// the common stack so the metrics middleware can label series.
#[derive(Debug, Clone, Copy)]
pub struct ServiceName(pub &'static str);

/// Middleware: counts requests and records latency per route and status.
pub async fn track_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let service = request
        .extensions()
        .get::<ServiceName>()
        .map_or("unknown", |s| s.0);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    record_request(service, method, route, response.status(), started);
    response
}

/// Counts one answered request and its latency (what [`track_metrics`]
/// records, for a route answered ahead of the stack).
pub fn record_request(
    service: &str,
    method: String,
    route: String,
    status: axum::http::StatusCode,
    started: Instant,
) {
    let labels = [
        ("service", service.to_owned()),
        ("method", method),
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
