//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/debug/routes`,
//! and the split view `/ui` with its data, `/ui/data` (see `ui/`).
//! It runs as its own pingora service, apart from proxy traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use config_sync::Publisher;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use std::time::{Duration, Instant};

use crate::activator::Activator;
use crate::drain::Drain;
use crate::external::ExternalNames;
use crate::metrics::Metrics;

/// The admin HTTP app.
pub struct Admin {
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    activator: Arc<Activator>,
    drain: Arc<Drain>,
    listening: Arc<AtomicBool>,
    ui: crate::ui::Ui,
    policy: dataplane::health::Policy,
    /// ExternalNames and how long `/readyz` waits for names to resolve.
    resolutions: Option<(Arc<ExternalNames>, Duration)>,
    /// When `/readyz` first found a table loaded: the wait counts from then.
    first_table: std::sync::OnceLock<Instant>,
    /// The probes listener (`--probes`): `/metrics`, `/healthz` and
    /// `/readyz` only, for what kubelets and scrapers reach.
    probes_only: bool,
}

impl Admin {
    /// An admin app over the gateway's publisher and metrics; `/readyz`
    /// answers 200 only once `listening` is set (the proxy listeners are
    /// bound) and 503 again once `drain` is.
    pub fn new(
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        activator: Arc<Activator>,
        drain: Arc<Drain>,
        listening: Arc<AtomicBool>,
    ) -> Self {
        Self {
            publisher,
            metrics,
            activator,
            drain,
            listening,
            ui: crate::ui::Ui::default(),
            policy: dataplane::health::Policy::default(),
            resolutions: None,
            first_table: std::sync::OnceLock::new(),
            probes_only: false,
        }
    }

    /// `/readyz` also waits, for at most `wait` after the first table, until
    /// the activator and `external`'s names resolve.
    pub fn with_resolutions(mut self, external: Arc<ExternalNames>, wait: Duration) -> Self {
        self.resolutions = Some((external, wait));
        self
    }

    /// Names not resolved yet: the activator's, and the table's ExternalNames.
    fn unresolved(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.activator.addr().is_none() {
            names.push(format!("activator {}", self.activator.target()));
        }
        if let Some((external, _)) = &self.resolutions {
            names.extend(
                external
                    .unresolved()
                    .into_iter()
                    .map(|n| format!("ExternalName {n}")),
            );
        }
        names
    }

    /// `/readyz` once the listeners are bound and a table is loaded: 200, or
    /// 503 while names it needs are unresolved within the wait.
    fn ready(&self) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        let unresolved = self.unresolved();
        if unresolved.is_empty() {
            return reply(StatusCode::OK, text, b"ready\n".to_vec());
        }
        let list = unresolved.join(", ");
        let first = *self.first_table.get_or_init(Instant::now);
        let wait = self.resolutions.as_ref().map_or(Duration::ZERO, |r| r.1);
        if first.elapsed() < wait {
            let body = format!("waiting for names to resolve: {list}\n");
            return reply(StatusCode::SERVICE_UNAVAILABLE, text, body.into_bytes());
        }
        let body = format!("ready; not resolved after {wait:?}: {list}\n");
        reply(StatusCode::OK, text, body.into_bytes())
    }

    /// Serve `/metrics`, `/healthz` and `/readyz` only (the `--probes`
    /// listener): the table, with every host and endpoint, and `/ui` stay
    /// on the admin listener.
    pub fn probes_only(mut self) -> Self {
        self.probes_only = true;
        self
    }

    /// Show warmth in `/ui` as the proxy's `policy` computes it.
    pub fn with_policy(mut self, policy: dataplane::health::Policy) -> Self {
        self.policy = policy;
        self
    }

    /// `/debug/routes`: the live table plus the source's health.
    fn debug_routes(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Debug {
            ready: bool,
            source_last_error: Option<String>,
            source_errors: u64,
            /// A permission the API server refused the status writer.
            #[serde(skip_serializing_if = "Option::is_none")]
            missing_permission: Option<String>,
            /// KIngresses whose Knative probe keeps failing, with why.
            #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
            probe_failures: std::collections::BTreeMap<String, String>,
            activator: ActivatorView,
            #[serde(flatten)]
            table: dataplane::table::TableView,
        }
        #[derive(Serialize)]
        struct ActivatorView {
            target: String,
            address: Option<String>,
        }
        let status = self.publisher.status();
        let view = Debug {
            ready: self.publisher.is_ready(),
            source_last_error: status.last_error(),
            source_errors: status.errors.load(std::sync::atomic::Ordering::Relaxed),
            missing_permission: self.publisher.writer_health().missing_permission(),
            probe_failures: self.publisher.writer_health().probe_failures(),
            activator: ActivatorView {
                target: self.activator.target().to_owned(),
                address: self.activator.addr().map(|a| a.to_string()),
            },
            table: self.publisher.reader().load().view(),
        };
        serde_json::to_vec_pretty(&view).unwrap_or_default()
    }
}

fn reply(code: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        let path = session.req_header().uri.path();
        if self.probes_only && !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return reply(
                StatusCode::NOT_FOUND,
                text,
                b"this listener serves /metrics, /healthz and /readyz; the rest is on the admin listener (--admin)\n".to_vec(),
            );
        }
        match path {
            "/metrics" => {
                let table = self.publisher.reader().load();
                let body = self.metrics.render(&table, &self.publisher);
                reply(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            "/healthz" => reply(StatusCode::OK, text, b"ok\n".to_vec()),
            "/readyz" if self.drain.is_draining() => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                b"draining: shutting down\n".to_vec(),
            ),
            "/readyz" if !self.listening.load(Ordering::Acquire) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                b"proxy listeners not bound yet\n".to_vec(),
            ),
            "/readyz" if self.publisher.is_ready() => self.ready(),
            "/readyz" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                b"no routing table loaded yet\n".to_vec(),
            ),
            "/debug/routes" => reply(StatusCode::OK, "application/json", self.debug_routes()),
            "/ui" | "/ui/" => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                crate::ui::PAGE.as_bytes().to_vec(),
            ),
            "/ui/data" => {
                let table = self.publisher.reader().load();
                let body = self
                    .ui
                    .data(&table, &self.policy, std::time::Instant::now());
                reply(StatusCode::OK, "application/json", body)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                text,
                b"try /ui, /metrics, /healthz, /readyz or /debug/routes\n".to_vec(),
            ),
        }
    }
}
