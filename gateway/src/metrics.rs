//! Prometheus metrics. Request metrics are recorded on the request path;
//! table and source gauges are computed when `/metrics` is scraped, from the
//! live table and the publisher's status, so swaps cost nothing extra.
//!
//! `gateway_requests_total` is not a `prometheus` counter vector: its counts
//! live in the routing table (`dataplane::responses`), one atomic add per
//! request, and become a metric family only when scraped.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use config_sync::Publisher;
use dataplane::responses::Responses;
use dataplane::Table;
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const REQUESTS: &str = "gateway_requests_total";
const REQUESTS_HELP: &str = "Requests by namespace, route, revision and status code.";

/// Requests by path: counted once each, one atomic add.
#[derive(Clone)]
pub struct FastPathCounts {
    /// Served by the fast path.
    pub served: IntCounter,
    /// Read by the fast path and handed to the general proxy.
    pub handed_over: IntCounter,
}

/// `gateway_request_duration_seconds` per upstream kind, resolved once:
/// `with_label_values` would hash the label and take a lock on every request.
pub struct Durations {
    /// Requests sent to a revision's endpoint.
    pub revision: Histogram,
    /// Requests sent to the activator.
    pub activator: Histogram,
    /// Requests answered before any upstream was chosen.
    pub none: Histogram,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered before a route was resolved (no Host, unknown host),
    /// by status code; the routed ones are counted in the table.
    pub unrouted: Responses,
    /// Request latency, by where the request went.
    pub duration: Durations,
    /// Requests sent to the activator because their revision had no ready endpoint.
    pub activator_requests: IntCounterVec,
    /// Failed upstream connections, by upstream kind.
    pub connect_errors: IntCounterVec,
    /// Endpoints ejected after connections failed in a row, by revision.
    pub ejections: IntCounterVec,
    /// Endpoints ejected now, by revision (refreshed on render).
    ejected: IntGaugeVec,
    /// Client connections open, and refused past `--max-connections`.
    pub connections: crate::limits::ConnectionCounts,
    /// HTTP/1.x requests the fast path served, and those it handed to the
    /// general proxy (docs/fast-path.md).
    pub fast_path: FastPathCounts,
    /// Access log lines dropped because the writer fell behind (or failed).
    pub access_log_dropped: IntCounter,
    /// Spans dropped, and failed exports, of the OTLP exporter.
    pub trace: crate::otlp::TraceCounts,
    connections_open: IntGauge,
    table_generation: IntGauge,
    routes: IntGauge,
    hosts: IntGauge,
    last_reload: Gauge,
    seconds_since_sync: Gauge,
    rejected: IntGaugeVec,
    /// Backend certificates refused, by reason (copied on render from
    /// [`dataplane::trust::failures`]).
    upstream_tls_failures: IntCounterVec,
    source_errors: IntCounter,
    source_relists: IntCounter,
    /// Requests the API server refused (RBAC), copied from the status writer's health.
    forbidden: IntCounter,
    /// KIngress status writes accepted, copied from the writer's health.
    status_writes: IntCounter,
    /// Knative probes of replicas by the status writer, by result.
    probes: IntCounterVec,
    /// Last values copied from the publisher's counters: (errors, relists).
    seen: Mutex<(u64, u64)>,
}

impl Metrics {
    /// Register every metric.
    /// The registry, for metrics kept elsewhere (external authorization).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from request start to response end, by upstream kind.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["upstream"],
        )?;
        let activator_requests = IntCounterVec::new(
            Opts::new(
                "gateway_activator_requests_total",
                "Requests sent to the activator because the revision had no ready endpoint.",
            ),
            &["namespace", "revision"],
        )?;
        let connect_errors = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_connect_errors_total",
                "Failed upstream connections.",
            ),
            &["upstream"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "gateway_endpoint_ejections_total",
                "Endpoints ejected because connections to them were refused or reset in a row.",
            ),
            &["namespace", "revision"],
        )?;
        let upstream_tls_failures = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_tls_failures_total",
                "Backend certificates refused on the way to a TLS backend (system-internal TLS), by reason.",
            ),
            &["reason"],
        )?;
        let forbidden = IntCounter::new(
            "gateway_kube_forbidden_total",
            "Requests of the KIngress status writer (Lease, status) the API server refused with 403: a permission is missing (see /debug/routes).",
        )?;
        let status_writes = IntCounter::new(
            "gateway_kingress_status_writes_total",
            "KIngress status writes the API server accepted (this replica, while it leads).",
        )?;
        let probes = IntCounterVec::new(
            Opts::new(
                "gateway_kingress_probes_total",
                "Knative probes of the gateway's replicas by the status writer, by result (passed, failed).",
            ),
            &["result"],
        )?;
        let ejected = IntGaugeVec::new(
            Opts::new(
                "gateway_endpoints_ejected",
                "Endpoints ejected now, by revision.",
            ),
            &["namespace", "revision"],
        )?;
        let connections = crate::limits::ConnectionCounts {
            open: Default::default(),
            refused: IntCounter::new(
                "gateway_connections_refused_total",
                "Client connections closed on accept because --max-connections were open.",
            )?,
        };
        let fast_path_requests = IntCounterVec::new(
            Opts::new(
                "gateway_fast_path_requests_total",
                "HTTP/1.x requests the fast path served, or handed to the general proxy.",
            ),
            &["outcome"],
        )?;
        let fast_path = FastPathCounts {
            served: fast_path_requests.with_label_values(&["served"]),
            handed_over: fast_path_requests.with_label_values(&["handed_over"]),
        };
        let access_log_dropped = IntCounter::new(
            "gateway_access_log_dropped_total",
            "Access log lines dropped because the log's writer fell behind or failed.",
        )?;
        let trace = crate::otlp::TraceCounts {
            dropped: IntCounter::new(
                "gateway_trace_spans_dropped_total",
                "Spans dropped because the OTLP exporter's queue was full.",
            )?,
            export_errors: IntCounter::new(
                "gateway_trace_export_errors_total",
                "OTLP export requests that failed; their spans are lost.",
            )?,
        };
        let connections_open = IntGauge::new(
            "gateway_connections_open",
            "Client connections open on the proxy listeners.",
        )?;
        let table_generation = IntGauge::new(
            "gateway_table_generation",
            "Generation of the live routing table.",
        )?;
        let routes = IntGauge::new("gateway_routes", "Routes in the live table.")?;
        let hosts = IntGauge::new("gateway_hosts", "Hosts in the live table.")?;
        let last_reload = Gauge::new(
            "gateway_table_last_reload_timestamp_seconds",
            "Unix time the live table was built.",
        )?;
        let seconds_since_sync = Gauge::new(
            "gateway_source_seconds_since_last_sync",
            "Seconds since the source was last known in sync; 0 while it is healthy.",
        )?;
        let rejected = IntGaugeVec::new(
            Opts::new(
                "gateway_objects_rejected",
                "Objects (or parts) rejected in the live table, by kind and reason.",
            ),
            &["kind", "reason"],
        )?;
        let source_errors = IntCounter::new(
            "gateway_source_errors_total",
            "Source reads or watches that failed; the last good table was kept.",
        )?;
        let source_relists = IntCounter::new(
            "gateway_source_relists_total",
            "Full relists after the first sync (restarted watches, 410 Gone).",
        )?;
        let durations = Durations {
            revision: duration.with_label_values(&["revision"]),
            activator: duration.with_label_values(&["activator"]),
            none: duration.with_label_values(&["none"]),
        };
        for c in [
            Box::new(duration) as Box<dyn prometheus::core::Collector>,
            Box::new(activator_requests.clone()),
            Box::new(connect_errors.clone()),
            Box::new(ejections.clone()),
            Box::new(ejected.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections.refused.clone()),
            Box::new(fast_path_requests),
            Box::new(access_log_dropped.clone()),
            Box::new(trace.dropped.clone()),
            Box::new(trace.export_errors.clone()),
            Box::new(table_generation.clone()),
            Box::new(routes.clone()),
            Box::new(hosts.clone()),
            Box::new(last_reload.clone()),
            Box::new(seconds_since_sync.clone()),
            Box::new(rejected.clone()),
            Box::new(upstream_tls_failures.clone()),
            Box::new(forbidden.clone()),
            Box::new(status_writes.clone()),
            Box::new(probes.clone()),
            Box::new(source_errors.clone()),
            Box::new(source_relists.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Self {
            registry,
            unrouted: Responses::default(),
            duration: durations,
            activator_requests,
            connect_errors,
            ejections,
            ejected,
            connections,
            fast_path,
            access_log_dropped,
            trace,
            connections_open,
            table_generation,
            routes,
            hosts,
            last_reload,
            seconds_since_sync,
            rejected,
            upstream_tls_failures,
            forbidden,
            status_writes,
            probes,
            source_errors,
            source_relists,
            seen: Mutex::new((0, 0)),
        })
    }

    /// Refresh the table and source gauges, then encode everything as Prometheus text.
    pub fn render(&self, table: &Table, publisher: &Publisher) -> Vec<u8> {
        self.table_generation.set(table.generation as i64);
        self.connections_open
            .set(self.connections.open.load(Ordering::Relaxed) as i64);
        self.routes.set(table.route_count() as i64);
        self.hosts.set(table.host_count() as i64);
        if let Some(t) = table
            .built_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        {
            self.last_reload.set(t.as_secs_f64());
        }
        let status = publisher.status();
        let last = status.last_success_unix.load(Ordering::Relaxed);
        let stale = if status.last_error().is_some() && last > 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(last);
            now.saturating_sub(last)
        } else {
            0
        };
        self.seconds_since_sync.set(stale as f64);
        self.ejected.reset();
        let now = dataplane::health::now_millis();
        for b in table.backends() {
            let n = b.endpoints.iter().filter(|e| e.state.ejected(now)).count();
            if n > 0 {
                self.ejected
                    .with_label_values(&[&*b.namespace, &*b.name])
                    .set(n as i64);
            }
        }
        let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for r in table.rejected() {
            *counts
                .entry((r.kind.to_string(), r.error.reason()))
                .or_default() += 1;
        }
        self.rejected.reset();
        for ((kind, reason), n) in counts {
            self.rejected
                .with_label_values(&[kind.as_str(), reason])
                .set(n);
        }
        let health = publisher.writer_health();
        let mirror = |c: &IntCounter, total: &std::sync::atomic::AtomicU64| {
            c.inc_by(total.load(Ordering::Relaxed).saturating_sub(c.get()));
        };
        mirror(&self.forbidden, &health.forbidden);
        mirror(&self.status_writes, &health.writes);
        mirror(
            &self.probes.with_label_values(&["passed"]),
            &health.probes_passed,
        );
        mirror(
            &self.probes.with_label_values(&["failed"]),
            &health.probes_failed,
        );
        for (reason, n) in dataplane::trust::failures() {
            let c = self.upstream_tls_failures.with_label_values(&[reason]);
            c.inc_by(n.saturating_sub(c.get()));
        }
        {
            // Counters mirror the publisher's totals.
            let errors = status.errors.load(Ordering::Relaxed);
            let relists = status.relists.load(Ordering::Relaxed);
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            self.source_errors.inc_by(errors.saturating_sub(seen.0));
            self.source_relists.inc_by(relists.saturating_sub(seen.1));
            *seen = (errors, relists);
        }
        let mut families = self.registry.gather();
        // The text encoder stops at a family with no metrics (before any
        // request is counted), which cut every later family from the page.
        let requests = self.requests(table);
        if !requests.get_metric().is_empty() {
            families.push(requests);
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!("metrics page incomplete: {e}");
        }
        out
    }

    /// `gateway_requests_total` from the live table's counts and the unrouted ones.
    fn requests(&self, table: &Table) -> MetricFamily {
        let mut metrics = Vec::new();
        let mut add = |namespace: &str, route: &str, revision: &str, counts: &Responses| {
            for (code, n) in counts.counts() {
                let mut m = Metric::default();
                // In name order, as the prometheus crate writes its own.
                m.set_label(vec![
                    label("code", &code.to_string()),
                    label("namespace", namespace),
                    label("revision", revision),
                    label("route", route),
                ]);
                let mut c = Counter::default();
                c.set_value(n as f64);
                m.set_counter(c);
                metrics.push(m);
            }
        };
        add("", "", "", &self.unrouted);
        for route in table.routes() {
            for (rev, counts) in &route.responses {
                let (namespace, name) = (&route.key.namespace, &route.key.name);
                add(namespace, name, &table.backend(*rev).name, counts);
            }
        }
        let mut family = MetricFamily::default();
        family.set_name(REQUESTS.to_owned());
        family.set_help(REQUESTS_HELP.to_owned());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(metrics);
        family
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use config_sync::BuildOptions;

    #[test]
    fn a_fresh_gateway_renders_every_family_before_any_request() {
        let metrics = Metrics::new().unwrap();
        let publisher = Publisher::new(BuildOptions::default());
        let page = String::from_utf8(metrics.render(&Table::default(), &publisher)).unwrap();
        for family in [
            "gateway_hosts",
            "gateway_routes",
            "gateway_source_errors_total",
            "gateway_source_relists_total",
            "gateway_source_seconds_since_last_sync",
            "gateway_table_generation",
        ] {
            assert!(
                page.contains(&format!("\n{family} ")),
                "{family} missing:\n{page}"
            );
        }
        assert!(
            !page.contains("gateway_requests_total"),
            "no request counted yet"
        );
        // Once one is, its family is there too.
        metrics.unrouted.record(404);
        let page = String::from_utf8(metrics.render(&Table::default(), &publisher)).unwrap();
        assert!(page.contains("gateway_requests_total{"), "{page}");
        assert!(page.contains("\ngateway_table_generation "), "{page}");
    }
}
