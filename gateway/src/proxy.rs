//! The request path, start to end, as pingora `ProxyHttp` hooks:
//!
//! 1. `request_filter`: Knative's probe (`K-Network-Probe`) is answered with
//!    the applied KIngress hash; otherwise one `ArcSwap` load of the table, Host → route,
//!    revision by weight; 400 without a Host, 404 for an unknown one, and 404
//!    on the external listener for cluster-local routes and cluster names.
//! 2. `upstream_peer`: a ready endpoint by power of two choices, or the
//!    activator when the revision has none.
//! 3. `upstream_request_filter`: overwrite `Knative-Serving-Revision` and
//!    `Knative-Serving-Namespace`, whatever the client sent.
//! 4. `fail_to_connect`: a refused connection is retried on another endpoint
//!    of the same revision, a bounded number of times. A response is never
//!    retried: a backend's 503 reaches the client.
//! 5. `fail_to_proxy`: 503 when the activator is unreachable, 502 when every
//!    endpoint refused.
//! 6. `logging`: metrics. The in-flight count is released when the context drops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use config_sync::host::{self, MAX_HOST_LEN};
use config_sync::publish::ProbeReader;
use config_sync::select::{pick_endpoint, pick_revision};
use config_sync::table::{RevisionId, RouteId};
use config_sync::{Table, TableReader};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::activator::{Activator, NAMESPACE_HEADER, REVISION_HEADER};
use crate::metrics::Metrics;

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Upstream connect timeout (a blackholed pod must not stall the request forever).
    pub connect_timeout: Duration,
    /// Endpoints tried per request when connections fail (at least 1).
    pub max_connect_attempts: usize,
    /// Local port of the internal listener, which serves every host; the other
    /// listener serves only public ones.
    pub internal_port: Option<u16>,
}

/// The gateway's `ProxyHttp` implementation.
pub struct Gateway {
    table: TableReader,
    probes: ProbeReader,
    activator: Arc<Activator>,
    metrics: Arc<Metrics>,
    options: ProxyOptions,
}

impl Gateway {
    /// A gateway reading `table`, answering Knative's probes from `probes`.
    pub fn new(
        table: TableReader,
        probes: ProbeReader,
        activator: Arc<Activator>,
        metrics: Arc<Metrics>,
        options: ProxyOptions,
    ) -> Self {
        Self {
            table,
            probes,
            activator,
            metrics,
            options,
        }
    }
}

/// Header marking Knative's ingress probe.
const PROBE_HEADER: &str = "K-Network-Probe";
/// Header carrying the hash of the KIngress a gateway has applied.
const HASH_HEADER: &str = "K-Network-Hash";

impl Gateway {
    /// Knative's prober asks each replica which KIngress version it serves for
    /// a host: 200 with the hash once served, 404 until then (the prober retries).
    async fn answer_probe(&self, session: &mut Session, host: &str) -> Result<bool> {
        let Some(hash) = self.probes.hash(host) else {
            return respond(session, 404, "no KIngress served for this host yet\n").await;
        };
        let mut resp = ResponseHeader::build(200, Some(2))?;
        resp.insert_header(HASH_HEADER, hash)?;
        resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }

    /// Whether the request came in on the internal listener.
    fn is_internal(&self, session: &Session) -> bool {
        let port = session
            .as_downstream()
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port());
        port.is_some() && port == self.options.internal_port
    }
}

/// Where the current attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    None,
    Endpoint(usize),
    Activator,
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    /// The table this request resolved against; kept so ids stay valid after a swap.
    table: Option<Arc<Table>>,
    route: RouteId,
    revision: RevisionId,
    upstream: Upstream,
    /// Endpoints that refused a connection during this request.
    failed: Vec<usize>,
    connect_failed: bool,
}

impl RequestCtx {
    /// Release the in-flight slot of the current endpoint, if any.
    fn release(&mut self) {
        if let (Upstream::Endpoint(i), Some(table)) = (self.upstream, &self.table) {
            table.revision(self.revision).endpoints[i]
                .inflight
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.upstream = Upstream::None;
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        self.release();
    }
}

async fn respond(session: &mut Session, code: u16, body: &'static str) -> Result<bool> {
    session
        .respond_error_with_body(code, Bytes::from_static(body.as_bytes()))
        .await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            table: None,
            route: 0,
            revision: 0,
            upstream: Upstream::None,
            failed: Vec::new(),
            connect_failed: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        // HTTP/2 and absolute-form requests carry the authority in the URI.
        let raw = match req.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => match req.headers.get(http::header::HOST) {
                Some(h) => h.as_bytes(),
                None => return respond(session, 400, "request has no Host header\n").await,
            },
        };
        let mut buf = [0u8; MAX_HOST_LEN];
        let Some(host) = host::normalize(raw, &mut buf) else {
            return respond(session, 400, "invalid Host header\n").await;
        };
        if req
            .headers
            .get(PROBE_HEADER)
            .is_some_and(|v| v.as_bytes() == b"probe")
        {
            let host = host.to_owned();
            return self.answer_probe(session, &host).await;
        }
        let table = self.table.load();
        let Some(entry) = table.lookup(host) else {
            return respond(session, 404, "no route for this host\n").await;
        };
        if (entry.cluster_local || entry.cluster_name) && !self.is_internal(session) {
            return respond(session, 404, "no route for this host\n").await;
        }
        ctx.route = entry.route;
        ctx.revision = pick_revision(&entry.target, &mut rand::rng());
        ctx.table = Some(table);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.release();
        let table = ctx
            .table
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route resolved"))?;
        let revision = table.revision(ctx.revision);
        let addr = if revision.endpoints.is_empty() {
            // Scaled to zero: the activator wakes a pod and forwards.
            let addr = self.activator.addr().ok_or_else(|| {
                Error::explain(
                    ErrorType::HTTPStatus(503),
                    format!("activator {} is not resolvable", self.activator.target()),
                )
            })?;
            self.metrics
                .activator_requests
                .with_label_values(&[&*revision.namespace, &*revision.name])
                .inc();
            ctx.upstream = Upstream::Activator;
            addr
        } else {
            // Unreachable through fail_to_connect (it stops retrying first), but if
            // every endpoint has refused, the answer is the specified 502.
            let i = pick_endpoint(&revision.endpoints, &ctx.failed, &mut rand::rng()).ok_or_else(
                || Error::explain(ErrorType::HTTPStatus(502), "every endpoint refused"),
            )?;
            let endpoint = &revision.endpoints[i];
            endpoint.inflight.fetch_add(1, Ordering::Relaxed);
            ctx.upstream = Upstream::Endpoint(i);
            endpoint.addr
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.options.connect_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(table) = &ctx.table {
            // insert_header replaces every value the client sent.
            let revision = table.revision(ctx.revision);
            upstream_request.insert_header(REVISION_HEADER, revision.name_header.clone())?;
            upstream_request.insert_header(NAMESPACE_HEADER, revision.namespace_header.clone())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.connect_failed = true;
        match ctx.upstream {
            Upstream::Endpoint(i) => {
                self.metrics
                    .connect_errors
                    .with_label_values(&["revision"])
                    .inc();
                ctx.failed.push(i);
                let endpoints = ctx
                    .table
                    .as_ref()
                    .map_or(0, |t| t.revision(ctx.revision).endpoints.len());
                // Nothing was sent yet, so another endpoint is safe to try.
                let more = ctx.failed.len() < endpoints
                    && ctx.failed.len() < self.options.max_connect_attempts;
                e.set_retry(more);
            }
            Upstream::Activator => {
                self.metrics
                    .connect_errors
                    .with_label_values(&["activator"])
                    .inc();
                e.set_retry(false);
            }
            Upstream::None => {}
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ if ctx.upstream == Upstream::Activator && ctx.connect_failed => 503,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                tracing::debug!("cannot send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let code = session.response_written().map_or(0, |r| r.status.as_u16());
        let durations = &self.metrics.duration;
        let duration = match ctx.upstream {
            Upstream::Activator => &durations.activator,
            Upstream::Endpoint(_) => &durations.revision,
            Upstream::None if ctx.table.is_some() => &durations.revision,
            Upstream::None => &durations.none,
        };
        match &ctx.table {
            // One atomic add on counts kept in the table (see metrics.rs).
            Some(table) => {
                if let Some(counts) = table.route(ctx.route).responses(ctx.revision) {
                    counts.record(code);
                }
            }
            None => self.metrics.unrouted.record(code),
        }
        duration.observe(ctx.start.elapsed().as_secs_f64());
        ctx.release();
    }
}
