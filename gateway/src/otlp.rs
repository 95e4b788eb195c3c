//! Tracing with OpenTelemetry over OTLP/HTTP (`--otlp-endpoint`).
//!
//! Each sampled request is one server span. It continues the client's W3C
//! `traceparent` (or starts a trace), and the request goes upstream with a
//! `traceparent` naming this span as the parent, so the revision's own
//! spans join the trace. Sampling follows the caller's decision when it
//! sends one, and `--trace-sampling` otherwise. Finished spans are queued
//! (a full queue drops and counts them, never waits) and a thread of their
//! own sends them in batches, as protobuf (`opentelemetry-proto`), to the
//! collector. Without `--otlp-endpoint` nothing here runs, and a request's
//! `traceparent` goes upstream as the client sent it.

use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::IntCounter;
use prost::Message;
use rand::Rng;

use crate::trace_context::{self, TraceParent};

/// Spans queued for export; past this many, spans are dropped.
pub const QUEUE_SPANS: usize = 16_384;
/// Most spans in one export request.
const BATCH: usize = 512;
/// How long a batch waits for more spans after its first.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Time allowed for one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why `--otlp-endpoint` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL.
    #[error("--otlp-endpoint {0:?} is not a URL: {1}")]
    Invalid(String, http::uri::InvalidUri),
    /// Not `http://`.
    #[error("--otlp-endpoint {0:?}: only http:// is supported (send to a collector next to the gateway, which may forward over TLS)")]
    Scheme(String),
}

/// `--otlp-endpoint`: an `http://host:port` URL; without a path, OTLP's
/// `/v1/traces` is used.
pub fn parse_endpoint(s: &str) -> Result<http::Uri, EndpointError> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| EndpointError::Invalid(s.to_owned(), e))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(EndpointError::Scheme(s.to_owned()));
    }
    if matches!(uri.path(), "" | "/") {
        let with_path = format!("http://{}/v1/traces", uri.authority().expect("checked"));
        return with_path
            .parse()
            .map_err(|e| EndpointError::Invalid(s.to_owned(), e));
    }
    Ok(uri)
}

/// The context of a sampled request's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace: the caller's, or a new one.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// The caller's span, if the client sent a sampled `traceparent`.
    pub parent_id: Option<[u8; 8]>,
}

impl SpanContext {
    /// The `traceparent` sent upstream: this span as the parent.
    pub fn traceparent(&self) -> String {
        trace_context::format(&self.trace_id, &self.span_id)
    }
}

/// Decide whether a request is traced: a caller's decision in a valid
/// `traceparent` wins (parent-based sampling); without one, `ratio` of
/// requests start a new trace.
pub fn sample(
    parent: Option<TraceParent<'_>>,
    ratio: f64,
    rng: &mut impl Rng,
) -> Option<SpanContext> {
    // Ids are drawn only for a request that is traced.
    match parent {
        Some(p) if !p.sampled => None,
        Some(p) => Some(SpanContext {
            trace_id: trace_context::from_hex(p.trace_id)?,
            span_id: nonzero(rng),
            parent_id: Some(trace_context::from_hex(p.parent_id)?),
        }),
        None if ratio >= 1.0 || (ratio > 0.0 && rng.random_bool(ratio)) => Some(SpanContext {
            trace_id: nonzero(rng),
            span_id: nonzero(rng),
            parent_id: None,
        }),
        None => None,
    }
}

/// Random bytes, not all zero (an all-zero id is invalid).
fn nonzero<const N: usize>(rng: &mut impl Rng) -> [u8; N] {
    loop {
        let id: [u8; N] = rng.random();
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

/// What a finished request's span records.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its context.
    pub context: SpanContext,
    /// When the request started.
    pub start: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Request method.
    pub method: http::Method,
    /// Host as the client sent it.
    pub host: String,
    /// Path, without the query.
    pub path: String,
    /// Status sent; 0 if none.
    pub status: u16,
    /// The client (TCP peer, or the PROXY protocol's source).
    pub client: Option<SocketAddr>,
    /// The client behind `--trusted-hops` proxies; `client` is then the last of them.
    pub forwarded_client: Option<std::net::IpAddr>,
    /// `namespace/name` of the route that matched.
    pub route: Option<String>,
    /// Namespace and name of the revision picked.
    pub revision: Option<(Arc<str>, Arc<str>)>,
    /// Where the request was sent.
    pub upstream: Option<SocketAddr>,
}

/// The tracer: sampling settings and the export queue.
#[derive(Clone)]
pub struct Tracer {
    ratio: f64,
    queue: SyncSender<Finished>,
    dropped: IntCounter,
}

/// Counters of the exporter, exported as metrics.
#[derive(Clone)]
pub struct TraceCounts {
    /// Spans dropped because the queue was full.
    pub dropped: IntCounter,
    /// Export requests that failed (spans lost with them).
    pub export_errors: IntCounter,
}

impl Tracer {
    /// Trace `ratio` of requests without a caller's decision, exporting to
    /// `endpoint` as `service_name` from a thread of its own.
    pub fn start(
        endpoint: http::Uri,
        ratio: f64,
        service_name: String,
        counts: TraceCounts,
    ) -> std::io::Result<Self> {
        let (queue, spans) = sync_channel(QUEUE_SPANS);
        let errors = counts.export_errors.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export(spans, endpoint, service_name, errors))?;
        Ok(Self {
            ratio,
            queue,
            dropped: counts.dropped,
        })
    }

    /// [`sample`] with this tracer's ratio.
    pub fn sample(&self, traceparent: Option<&[u8]>) -> Option<SpanContext> {
        let parent = traceparent.and_then(trace_context::parse);
        sample(parent, self.ratio, &mut rand::rng())
    }

    /// Queue a finished span; if the queue is full, drop it and count it.
    pub fn finish(&self, span: Finished) {
        match self.queue.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// The exporter thread: batches of up to [`BATCH`] spans, each sent once
/// [`BATCH_DELAY`] after its first span or when full.
fn export(spans: Receiver<Finished>, endpoint: http::Uri, service: String, errors: IntCounter) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the OTLP exporter: {e}; no spans are exported");
            return;
        }
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut warned = false;
    while let Ok(first) = spans.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH {
            match spans.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(span) => batch.push(span),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let body = encode(&batch, &service);
        let request = http::Request::post(endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid URI and header");
        let outcome = runtime.block_on(async {
            match tokio::time::timeout(EXPORT_TIMEOUT, client.request(request)).await {
                Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
                Ok(Ok(resp)) => Err(format!("the collector answered {}", resp.status())),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
            }
        });
        if let Err(e) = outcome {
            errors.inc();
            if !warned {
                warned = true;
                tracing::warn!(%endpoint, spans = batch.len(),
                    "cannot export spans: {e}; counted in gateway_trace_export_errors_total");
            }
        }
    }
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().try_into().unwrap_or(u64::MAX))
}

/// One span as OTLP writes it, with OpenTelemetry's HTTP server attribute names.
pub fn to_span(f: &Finished) -> Span {
    let mut attributes = vec![
        string("http.request.method", f.method.as_str()),
        string("server.address", f.host.clone()),
        string("url.path", f.path.clone()),
    ];
    if f.status > 0 {
        attributes.push(int("http.response.status_code", f.status.into()));
    }
    // OpenTelemetry's conventions: the client as the proxies in front saw
    // it, and the peer the connection came from.
    match (f.forwarded_client, f.client) {
        (Some(client), peer) => {
            attributes.push(string("client.address", client.to_string()));
            if let Some(peer) = peer {
                attributes.push(string("network.peer.address", peer.ip().to_string()));
                attributes.push(int("network.peer.port", peer.port().into()));
            }
        }
        (None, Some(client)) => {
            attributes.push(string("client.address", client.ip().to_string()));
            attributes.push(int("client.port", client.port().into()));
        }
        (None, None) => {}
    }
    if let Some(route) = &f.route {
        attributes.push(string("knative.route", route.clone()));
    }
    if let Some((namespace, revision)) = &f.revision {
        attributes.push(string("knative.namespace", &**namespace));
        attributes.push(string("knative.revision", &**revision));
    }
    if let Some(upstream) = f.upstream {
        attributes.push(string("network.peer.address", upstream.ip().to_string()));
        attributes.push(int("network.peer.port", upstream.port().into()));
    }
    // Server spans: 5xx, or no answer at all, is an error; 4xx is the client's.
    let error = f.status == 0 || f.status >= 500;
    let start = unix_nanos(f.start);
    Span {
        trace_id: f.context.trace_id.to_vec(),
        span_id: f.context.span_id.to_vec(),
        parent_span_id: f.context.parent_id.map_or_else(Vec::new, |p| p.to_vec()),
        // W3C trace flags: sampled.
        flags: 1,
        name: f.method.as_str().to_owned(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + u64::try_from(f.duration.as_nanos()).unwrap_or(u64::MAX),
        attributes,
        status: Some(Status {
            code: if error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
            message: if f.status == 0 {
                "no response".into()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

/// The value of `span`'s attribute `key`, if it has one.
pub fn attribute(span: &Span, key: &str) -> Option<any_value::Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

/// An export request for `spans` from service `service`, as protobuf.
pub fn encode(spans: &[Finished], service: &str) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "knative-gateway".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.iter().map(to_span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn the_callers_decision_wins_and_ratio_decides_the_rest() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let sampled = format!("00-{ID}-00f067aa0ba902b7-01");
        let parent = trace_context::parse(sampled.as_bytes());
        let ctx = sample(parent, 0.0, &mut rng).expect("a sampled caller is followed");
        assert_eq!(ctx.trace_id, trace_context::from_hex::<16>(ID).unwrap());
        assert_eq!(ctx.parent_id, trace_context::from_hex("00f067aa0ba902b7"));
        assert_ne!(ctx.span_id, [0; 8]);
        assert!(ctx.traceparent().starts_with(&format!("00-{ID}-")));
        assert!(!ctx.traceparent().contains("00f067aa0ba902b7"));

        let not = format!("00-{ID}-00f067aa0ba902b7-00");
        assert_eq!(
            sample(trace_context::parse(not.as_bytes()), 1.0, &mut rng),
            None
        );

        let fresh = sample(None, 1.0, &mut rng).unwrap();
        assert_eq!(fresh.parent_id, None);
        assert_eq!(sample(None, 0.0, &mut rng), None);
        let traced = (0..10_000)
            .filter(|_| sample(None, 0.1, &mut rng).is_some())
            .count();
        assert!((800..1200).contains(&traced), "{traced} of 10,000 at 0.1");
    }

    #[test]
    fn endpoints_are_http_urls_with_the_traces_path_by_default() {
        assert_eq!(
            parse_endpoint("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            parse_endpoint("http://collector:4318/custom/path").unwrap(),
            "http://collector:4318/custom/path"
        );
        for bad in [
            "https://collector:4318",
            "collector:4318",
            "not a url",
            "/v1/traces",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_span_carries_the_request_and_its_outcome() {
        let context = SpanContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
        };
        let f = Finished {
            context,
            start: UNIX_EPOCH + Duration::from_secs(1_000),
            duration: Duration::from_millis(5),
            method: http::Method::POST,
            host: "hello.default.example.com".into(),
            path: "/x".into(),
            status: 503,
            client: Some("10.0.0.1:4000".parse().unwrap()),
            forwarded_client: None,
            route: Some("default/hello".into()),
            revision: Some(("default".into(), "hello-00001".into())),
            upstream: Some("10.0.0.9:8012".parse().unwrap()),
        };
        let bytes = encode(std::slice::from_ref(&f), "gw");
        let back = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let span = &back.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, vec![1; 16]);
        assert_eq!(span.parent_span_id, vec![3; 8]);
        assert_eq!(span.name, "POST");
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            5_000_000
        );
        assert_eq!(
            span.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        let attr = |k: &str| attribute(span, k);
        assert_eq!(
            attr("http.response.status_code"),
            Some(any_value::Value::IntValue(503))
        );
        assert_eq!(
            attr("knative.revision"),
            Some(any_value::Value::StringValue("hello-00001".into()))
        );
        assert_eq!(
            attr("client.address"),
            Some(any_value::Value::StringValue("10.0.0.1".into()))
        );
        // Behind trusted hops: the client from X-Forwarded-For, and the peer.
        let behind = to_span(&Finished {
            forwarded_client: Some("203.0.113.7".parse().unwrap()),
            ..f.clone()
        });
        let attr = |k: &str| attribute(&behind, k);
        assert_eq!(
            attr("client.address"),
            Some(any_value::Value::StringValue("203.0.113.7".into()))
        );
        assert_eq!(
            attr("network.peer.address"),
            Some(any_value::Value::StringValue("10.0.0.1".into()))
        );
        assert_eq!(attr("client.port"), None);
        let ok = Finished { status: 404, ..f };
        assert_eq!(
            to_span(&ok).status.unwrap().code,
            status::StatusCode::Unset as i32
        );
    }
}
