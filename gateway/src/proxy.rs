//! The general request path, start to end, as pingora `ProxyHttp` hooks.
//! Plain HTTP/1.1 requests take the fast path instead (`fast/app.rs`), which
//! calls the same functions of this file to route, pick, set headers, retry
//! and log (`Gateway::route`, `take_endpoint`, `set_upstream_headers`,
//! `Gateway::connect_refused`, `Gateway::record`); it hands the rest here.
//!
//! 1. `request_filter`: one `ArcSwap` load of the table, then
//!    [`dataplane::resolve`]: Host → route, the first matching path (prefix
//!    and exact headers), a pick by weight, and the headers to set; 400
//!    without a Host, 404 for an unknown host or path, and 404 on the external
//!    listener for cluster-local routes. With `--source routes`, Knative's
//!    probe is answered here with the applied KIngress hash.
//! 2. `upstream_peer`: a ready endpoint by power of two choices; with none,
//!    the activator for a revision split (its HTTP/2 port for a revision
//!    whose port speaks HTTP/2), else 503. HTTP/2 cleartext to an endpoint
//!    whose port asks for it, except for upgrades (HTTP/1.1 always). A
//!    backend on Knative's `https` port is reached over TLS (`config_sync::trust`).
//! 3. `upstream_request_filter`: `X-Forwarded-For` gets the peer's address
//!    appended (`forwarded`), `X-Forwarded-Proto` is set; path and split `appendHeaders` (for a
//!    revision, `Knative-Serving-Revision` and `-Namespace`) replace whatever
//!    the client sent; `K-Network-Hash: override` gets the KIngress hash;
//!    `rewriteHost` replaces the Host; a traced request's `traceparent` names
//!    its span as the parent.
//! 4. `fail_to_connect`: a refused connection is retried on another endpoint
//!    of the same revision, a bounded number of times. A response is never
//!    retried: a backend's 503 reaches the client.
//! 5. `fail_to_proxy`: 503 when the activator is unreachable, 502 when every
//!    endpoint refused; a new connection reset before an answer counts
//!    against its endpoint (`connected_to_upstream` says which are new).
//! 6. `response_filter`: while draining, `Connection: close`.
//! 7. `logging`: metrics; with `--access-log` a line, and for a traced
//!    request (`--otlp-endpoint`) its span, queued for a thread of their own.
//!    The in-flight count is released when the context drops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use config_sync::publish::ProbeReader;
use config_sync::TableReader;
use dataplane::host::{self, MAX_HOST_LEN};
use dataplane::resolve::{resolve, Request, Resolved, HASH_HEADER};
use dataplane::select::pick_endpoint;
use dataplane::table::BackendKind;
use dataplane::Table;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::access_log::{AccessLog, Entry};
use crate::activator::Activator;
use crate::answer::{self, Refusal};
use crate::external::ExternalNames;
use crate::forwarded::{self, Client, X_FORWARDED_FOR};
use crate::metrics::Metrics;
use crate::otlp::{Finished, SpanContext, Tracer};
use crate::trace_context;

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Upstream connect timeout (a blackholed pod must not stall the request forever).
    pub connect_timeout: Duration,
    /// Endpoints tried per request when connections fail (at least 1).
    pub max_connect_attempts: usize,
    /// Local ports of the internal listeners (HTTP and HTTPS), which serve
    /// every host; the others serve only public ones.
    pub internal_ports: Vec<u16>,
    /// Close a request whose body (or an upgraded connection, a gRPC stream)
    /// has been silent this long in either direction; `None`: never.
    pub stream_idle_timeout: Option<Duration>,
    /// Concurrent streams per HTTP/2 connection to a backend.
    pub upstream_h2_streams: usize,
    /// Most headers in a request; HTTP/1.x heads are held to it while read
    /// (vendor patch 0008), HTTP/2 header lists here.
    pub max_request_headers: usize,
    /// Ejection of failing endpoints and slow start of new ones.
    pub endpoints: dataplane::health::Policy,
    /// Proxies in front that each append to `X-Forwarded-For`: the client is
    /// the address this many entries from its right (forwarded.rs); 0: the peer.
    pub trusted_hops: u8,
    /// What responses carry as `Server`.
    pub server_header: crate::server_header::ServerHeader,
}

/// The gateway's `ProxyHttp` implementation. Cloning shares the table, the
/// metrics and the log queues: the fast path (`fast/`) holds a clone.
#[derive(Clone)]
pub struct Gateway {
    table: TableReader,
    probes: ProbeReader,
    activator: Arc<Activator>,
    external: Arc<ExternalNames>,
    metrics: Arc<Metrics>,
    options: ProxyOptions,
    access_log: Option<AccessLog>,
    tracer: Option<Tracer>,
    authorizer: Option<Arc<crate::authz::Authorizer>>,
}

impl Gateway {
    /// A gateway reading `table`, answering Knative's probes from `probes`
    /// (`--source routes`), dialling ExternalName Services through `external`.
    pub fn new(
        table: TableReader,
        probes: ProbeReader,
        activator: Arc<Activator>,
        external: Arc<ExternalNames>,
        metrics: Arc<Metrics>,
        options: ProxyOptions,
    ) -> Self {
        Self {
            table,
            probes,
            activator,
            external,
            metrics,
            options,
            access_log: None,
            tracer: None,
            authorizer: None,
        }
    }

    /// Write a line per request to `log`.
    pub fn with_access_log(mut self, log: AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    /// Trace requests with `tracer`.
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Ask `authorizer` before forwarding (`authz`).
    pub fn with_authorizer(mut self, authorizer: Arc<crate::authz::Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// `--trusted-hops`, for the fast path's headers.
    pub(crate) fn trusted_hops(&self) -> u8 {
        self.options.trusted_hops
    }

    /// The authorization server to ask about `req`, routed into `ctx`, if it
    /// is to be asked. Knative's probes never are: queue-proxy answers them
    /// itself, so they never reach an application.
    pub(crate) fn authorizer_for(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
    ) -> Option<&crate::authz::Authorizer> {
        let authorizer = self.authorizer.as_deref()?;
        (ctx.to.authorize && !req.headers.contains_key(&PROBE_HEADER)).then_some(authorizer)
    }

    /// The general path's check with `authorizer`: the start of the body
    /// read (up to the limit), then [`Gateway::ask`]; `true` when the
    /// request was answered here (denied), `false` to forward it.
    async fn authorize(
        &self,
        authorizer: &crate::authz::Authorizer,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let body = if authorizer.wants_body(&session.req_header().headers) {
            let (limit, wait) = (authorizer.body_limit(), authorizer.body_wait());
            read_body_start(session, limit, wait, ctx).await?
        } else {
            None
        };
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let http2 = session.is_http2();
        let asked = self.ask(
            authorizer,
            session.req_header(),
            peer,
            http2,
            body.as_ref(),
            ctx,
        );
        match asked.await {
            None => Ok(false),
            Some(denial) => {
                answer::send(session.as_downstream_mut(), answer::Answer::Denied(denial)).await?;
                Ok(true)
            }
        }
    }

    /// Ask `authorizer` about `req` (from `peer`, over HTTP/2 or not, with
    /// the start of its body): on both paths. Allowed, `None`, the header
    /// changes kept in `ctx` for the request sent upstream; denied, the
    /// answer for the client. The outcome is kept for the access log.
    pub(crate) async fn ask(
        &self,
        authorizer: &crate::authz::Authorizer,
        req: &RequestHeader,
        peer: Option<std::net::IpAddr>,
        http2: bool,
        body: Option<&crate::authz::Body>,
        ctx: &mut RequestCtx,
    ) -> Option<crate::authz::Denial> {
        // Found once: `set_upstream_headers` reuses it for X-Forwarded-For.
        ctx.client = peer.map(|peer| Client::of(&req.headers, peer, self.options.trusted_hops));
        let client = ctx.client.map(|c| c.ip);
        let cluster_local = ctx
            .table
            .as_ref()
            .is_some_and(|t| t.route(ctx.to.route).cluster_local);
        let check = crate::authz::Check {
            method: req.method.as_str(),
            scheme: if ctx.tls { "https" } else { "http" },
            host: request_host(req)
                .and_then(|h| std::str::from_utf8(h).ok())
                .unwrap_or_default(),
            path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            protocol: if http2 { "HTTP/2" } else { "HTTP/1.1" },
            headers: &req.headers,
            client,
            visibility: if cluster_local {
                "ClusterLocal"
            } else {
                "ExternalIP"
            },
            labels: ctx
                .table
                .as_ref()
                .map_or(&NO_LABELS, |t| &t.route(ctx.to.route).labels),
            body,
        };
        let (decision, outcome) = authorizer.check(&check).await;
        ctx.authz = Some(outcome);
        match decision {
            crate::authz::Decision::Allow(mutations) => {
                ctx.authz_headers = Some(mutations);
                None
            }
            crate::authz::Decision::Deny(denial) => Some(denial),
        }
    }
}

/// The start of `session`'s request body, up to `limit` bytes or what came
/// within `wait`, for the authorization server: `None` for a request
/// without one. What is read stays held and goes upstream first (vendor
/// patch 0017), so the backend gets the whole body. A client waiting for
/// `100 Continue` gets it here, and the `Expect` is not passed on
/// (`ctx.continued`).
async fn read_body_start(
    session: &mut Session,
    limit: usize,
    wait: Duration,
    ctx: &mut RequestCtx,
) -> Result<Option<crate::authz::Body>> {
    if session.as_mut().is_body_empty() {
        return Ok(None);
    }
    // Past the limit at most one more read is held: 64 KiB for HTTP/1,
    // a frame for HTTP/2.
    session
        .as_mut()
        .enable_retry_buffering_up_to(limit.saturating_add(BODY_READ_MAX));
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects {
        session.as_mut().write_continue_response().await?;
        ctx.continued = true;
    }
    let mut read = bytes::BytesMut::new();
    let deadline = tokio::time::Instant::now() + wait;
    while read.len() < limit {
        // A body read is cancel-safe: what a cut-off read had not returned
        // stays in the socket, or in h2's stream, for the proxy.
        let next = tokio::time::timeout_at(deadline, session.as_mut().read_request_body());
        match next.await {
            Ok(chunk) => match chunk? {
                Some(chunk) => read.extend_from_slice(&chunk),
                None => break,
            },
            // Waited long enough: the check goes with what came.
            Err(_) => break,
        }
    }
    let partial = read.len() > limit || !session.as_mut().is_body_done();
    read.truncate(limit);
    Ok(Some(crate::authz::Body {
        bytes: read.freeze(),
        partial,
    }))
}

/// A request routed by no table (never checked) has no labels.
static NO_LABELS: dataplane::table::Labels = dataplane::table::Labels::NONE;

/// The most one read of a request body returns (pingora's HTTP/1 body
/// buffer; HTTP/2 frames are smaller).
const BODY_READ_MAX: usize = 64 * 1024;

/// Header marking Knative's ingress probe (a static name: no parse per request).
const PROBE_HEADER: http::HeaderName = http::HeaderName::from_static("k-network-probe");
/// Upstream connection group of upgrade requests (see `upstream_peer`).
const UPGRADE_GROUP: u64 = 1;
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const HTTP: http::HeaderValue = http::HeaderValue::from_static("http");
const HTTPS: http::HeaderValue = http::HeaderValue::from_static("https");

impl Gateway {
    /// What to answer `req`, which routing refused: on both paths.
    pub(crate) fn answer(&self, refusal: Refusal, req: &RequestHeader) -> answer::Answer {
        // Only a refusal needs the host again (the probe's and the redirect's).
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = request_host(req)
            .and_then(|raw| host::normalize(raw, &mut buf))
            .unwrap_or_default();
        answer::refused(refusal, host, req.uri.path_and_query(), |h| {
            self.probes.hash(h)
        })
    }

    /// The span of `req` when it is traced (`--otlp-endpoint`, sampled or
    /// asked for by its caller).
    pub(crate) fn sample(&self, req: &RequestHeader) -> Option<SpanContext> {
        let tracer = self.tracer.as_ref()?;
        tracer.sample(req.headers.get(&TRACEPARENT).map(|v| v.as_bytes()))
    }

    /// The gateway's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Its proxy settings.
    pub(crate) fn options(&self) -> &ProxyOptions {
        &self.options
    }

    /// Resolve `req` (which came in on an internal listener or not, over TLS
    /// as `ctx.tls` says) against the current table into `ctx`: on both paths,
    /// one `ArcSwap` load and [`dataplane::resolve`].
    pub(crate) fn route(
        &self,
        req: &RequestHeader,
        internal: bool,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), Refusal> {
        let raw = request_host(req).ok_or(Refusal::NoHost)?;
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = host::normalize(raw, &mut buf).ok_or(Refusal::BadHost)?;
        let table = self.table.load();
        let request = Request {
            host,
            path: req.uri.path(),
            headers: &req.headers,
            internal,
            probe: req
                .headers
                .get(&PROBE_HEADER)
                .is_some_and(|v| v.as_bytes() == b"probe"),
            tls: ctx.tls,
        };
        resolve(&table, request, &mut ctx.to).map_err(Refusal::Miss)?;
        ctx.table = Some(table);
        Ok(())
    }

    /// Count a refused connection to the current upstream; whether another
    /// endpoint may be tried (nothing was sent yet, so it is safe).
    pub(crate) fn connect_refused(&self, ctx: &mut RequestCtx) -> bool {
        ctx.connect_failed = true;
        match ctx.upstream {
            Upstream::Endpoint(i) => {
                self.metrics
                    .connect_errors
                    .with_label_values(&["revision"])
                    .inc();
                self.endpoint_failed(ctx, i);
                ctx.failed.push(i);
                let endpoints = ctx
                    .table
                    .as_ref()
                    .map_or(0, |t| t.backend(ctx.to.backend).endpoints.len());
                ctx.failed.len() < endpoints && ctx.failed.len() < self.options.max_connect_attempts
            }
            Upstream::Activator => {
                self.metrics
                    .connect_errors
                    .with_label_values(&["activator"])
                    .inc();
                false
            }
            Upstream::None => false,
        }
    }

    /// A connection to endpoint `i` of the request's backend was refused or
    /// reset: counted against it, and it is ejected after
    /// `--eject-after` in a row (never the last one of its revision left).
    pub(crate) fn endpoint_failed(&self, ctx: &RequestCtx, i: usize) {
        use dataplane::health::Verdict;
        let Some(table) = &ctx.table else { return };
        let backend = table.backend(ctx.to.backend);
        let now = dataplane::health::now_millis();
        let others_left = backend
            .endpoints
            .iter()
            .enumerate()
            .filter(|(j, e)| *j != i && !e.state.ejected(now))
            .count();
        let endpoint = &backend.endpoints[i];
        match endpoint
            .state
            .failed(now, others_left, &self.options.endpoints)
        {
            Verdict::Counted => {}
            Verdict::Ejected { length, until } => {
                // Picks in this table look for ejected endpoints until then.
                backend.ejected_until.fetch_max(until, Ordering::Relaxed);
                self.metrics
                    .ejections
                    .with_label_values(&[&*backend.namespace, &*backend.name])
                    .inc();
                tracing::warn!(
                    endpoint = %endpoint.addr,
                    revision = %format_args!("{}/{}", backend.namespace, backend.name),
                    "endpoint ejected for {length:?}: connections failed {} times in a row",
                    self.options.endpoints.eject_after
                );
            }
            Verdict::Kept => tracing::warn!(
                endpoint = %endpoint.addr,
                revision = %format_args!("{}/{}", backend.namespace, backend.name),
                "connections keep failing, but it is the last endpoint of its revision: not ejected"
            ),
        }
    }

    /// The upstream connection closed or reset before a response head. On a
    /// new connection that counts against the endpoint, as a refused one
    /// does; a pooled one may just have been closed while idle. Both request
    /// paths call it.
    pub(crate) fn upstream_lost(&self, ctx: &RequestCtx, new_connection: bool) {
        if let (Upstream::Endpoint(i), true) = (ctx.upstream, new_connection) {
            self.endpoint_failed(ctx, i);
        }
    }

    /// The current endpoint answered with a response head: its failures in
    /// a row start over.
    pub(crate) fn endpoint_answered(&self, ctx: &RequestCtx) {
        if let (Upstream::Endpoint(i), Some(table)) = (ctx.upstream, &ctx.table) {
            table.backend(ctx.to.backend).endpoints[i].state.succeeded();
        }
    }

    /// Whether the request came in on the internal listener.
    fn is_internal(&self, session: &Session) -> bool {
        self.is_internal_addr(session.as_downstream().server_addr())
    }

    /// Whether `local` (the address a client connected to) is an internal listener's.
    pub(crate) fn is_internal_addr(
        &self,
        local: Option<&pingora::protocols::l4::socket::SocketAddr>,
    ) -> bool {
        let port = local.and_then(|a| a.as_inet()).map(|a| a.port());
        port.is_some_and(|p| self.options.internal_ports.contains(&p))
    }
}

/// A request the fast path routed before handing it to the general path,
/// carried in the request head: the general path takes this resolution
/// rather than resolving again, so a split's cursor moves once per request.
#[derive(Clone)]
pub(crate) struct Routed(std::result::Result<(Arc<Table>, Resolved), Refusal>);

impl Routed {
    /// Move `ctx`'s resolution into `req`.
    pub(crate) fn attach(req: &mut RequestHeader, ctx: &mut RequestCtx) {
        if let Some(table) = ctx.table.take() {
            let to = std::mem::take(&mut ctx.to);
            req.extensions_mut().insert(Routed(Ok((table, to))));
        }
    }

    /// Record in `req` that routing refused it (a miss, the probe, a
    /// redirect), so that the general path answers without routing again.
    pub(crate) fn refused(req: &mut RequestHeader, refusal: Refusal) {
        req.extensions_mut().insert(Routed(Err(refusal)));
    }

    /// Take the routing `req` carries into `ctx`: `None` when it was not
    /// routed yet.
    fn take(
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Option<std::result::Result<(), Refusal>> {
        let Routed(routed) = req.extensions_mut().remove::<Routed>()?;
        Some(routed.map(|(table, to)| {
            ctx.table = Some(table);
            ctx.to = to;
        }))
    }
}

/// Where the current attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    None,
    Endpoint(usize),
    Activator,
}

/// Per-request state.
pub struct RequestCtx {
    pub(crate) start: Instant,
    /// The table this request resolved against; kept so ids stay valid after a swap.
    pub(crate) table: Option<Arc<Table>>,
    /// Where it goes and what is set on it.
    pub(crate) to: Resolved,
    pub(crate) upstream: Upstream,
    /// The address of the last upstream tried, for the access log.
    pub(crate) peer: Option<std::net::SocketAddr>,
    /// This request's span, when traced.
    pub(crate) span: Option<SpanContext>,
    /// Endpoints that refused a connection during this request.
    pub(crate) failed: Vec<usize>,
    connect_failed: bool,
    /// A response head came from the upstream.
    pub(crate) answered: bool,
    /// The current attempt's upstream connection is a new one, not pooled.
    new_connection: bool,
    /// The request came in over TLS.
    pub(crate) tls: bool,
    /// The client as `X-Forwarded-For` named it before the gateway rewrote
    /// it for upstream (with `--trusted-hops`), for the log and the span.
    pub(crate) client: Option<Client>,
    /// How external authorization ended, when the request was checked.
    pub(crate) authz: Option<crate::authz::Outcome>,
    /// Header changes the authorization server asked for.
    authz_headers: Option<crate::authz::Mutations>,
    /// `100 Continue` was sent to the client here: its `Expect` is not
    /// passed on.
    continued: bool,
}

impl RequestCtx {
    /// Release the in-flight slot of the current endpoint, if any.
    pub(crate) fn release(&mut self) {
        if let (Upstream::Endpoint(i), Some(table)) = (self.upstream, &self.table) {
            table.backend(self.to.backend).endpoints[i]
                .state
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

/// A ready endpoint of the resolved revision, by power of two choices among
/// those that have not refused this request and are not ejected, weighing
/// warmth during slow start ([`pick_endpoint`]), at `now`
/// ([`dataplane::health::millis`]); counted in flight until
/// [`RequestCtx::release`]: its address and whether it speaks h2c.
pub(crate) fn take_endpoint(
    table: &Table,
    upstream: &mut Upstream,
    to: &Resolved,
    failed: &[usize],
    now: u64,
    policy: &dataplane::health::Policy,
) -> Option<(std::net::SocketAddr, bool)> {
    let backend = table.backend(to.backend);
    let i = pick_endpoint(backend, failed, now, policy, &mut rand::rng())?;
    let endpoint = &backend.endpoints[i];
    endpoint.state.inflight.fetch_add(1, Ordering::Relaxed);
    *upstream = Upstream::Endpoint(i);
    Some((endpoint.addr, endpoint.h2))
}

/// The client configuration for a backend reached over TLS (ALPN `h2` when
/// `h2`), from the table's trust bundle; with none, an error that becomes
/// a 502 naming the missing bundle.
fn upstream_tls(table: &Table, h2: bool) -> Result<Arc<rustls::ClientConfig>> {
    match table.trust() {
        Some(trust) => Ok(trust.config(h2).clone()),
        None => Err(Error::explain(
            ErrorType::HTTPStatus(502),
            "the backend is reached over TLS, but there is no trust bundle \
             (Secret routing-serving-certs, ConfigMaps labelled networking.knative.dev/trust-bundle)",
        )),
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

    /// No modules: pingora's default is a disabled compression module, which
    /// still runs its hooks on every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            table: None,
            to: Resolved::default(),
            upstream: Upstream::None,
            peer: None,
            span: None,
            failed: Vec::new(),
            connect_failed: false,
            answered: false,
            new_connection: false,
            tls: false,
            client: None,
            authz: None,
            authz_headers: None,
            continued: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // pingora reads an HTTP/1.1 body with a 60 s timeout by default: a
        // WebSocket or a streaming upload may be silent far longer.
        session.set_read_timeout(self.options.stream_idle_timeout);
        // A client may send its next requests before reading the answers
        // (RFC 9112 §9.3.2): answer each in order, as nginx and HAProxy do,
        // rather than close the connection and drop them.
        session.as_downstream_mut().set_pipelining_enabled(true);
        let req = session.req_header();
        // An HTTP/2 header list is held to the size limit by h2; its count
        // is held here, as an HTTP/1.x head's is while it is read.
        if req.headers.len() > self.options.max_request_headers {
            return respond(session, 431, "too many request headers\n").await;
        }
        ctx.span = self.sample(req);
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        // A request the fast path handed over was routed there, once.
        let routed = match Routed::take(session.req_header_mut(), ctx) {
            Some(routed) => routed,
            None => {
                let internal = self.is_internal(session);
                self.route(session.req_header(), internal, ctx)
            }
        };
        let miss = match routed {
            // Boxed, and only when asked: the check's future (a gRPC call)
            // would otherwise make every request's filter future larger,
            // and each of its moves a larger copy.
            Ok(()) => {
                return match self.authorizer_for(session.req_header(), ctx) {
                    Some(authorizer) => Box::pin(self.authorize(authorizer, session, ctx)).await,
                    None => Ok(false),
                };
            }
            Err(miss) => miss,
        };
        let answer = self.answer(miss, session.req_header());
        answer::send(session.as_downstream_mut(), answer).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.release();
        ctx.new_connection = false;
        let table = ctx
            .table
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route resolved"))?;
        let backend = table.backend(ctx.to.backend);
        let mut h2 = false;
        // The name a TLS peer's certificate must carry (Knative's
        // system-internal TLS); `None`: plaintext.
        let mut tls_name: Option<String> = None;
        let addr = match &backend.kind {
            BackendKind::Pods if backend.endpoints.is_empty() && ctx.to.activator => {
                // Scaled to zero: the activator wakes a pod and forwards,
                // over HTTP/2 to a revision that speaks it (gRPC), but for
                // upgrades.
                h2 = backend.http2 && !session.is_upgrade_req();
                let limit = self.options.connect_timeout;
                let addr = self
                    .activator
                    .addr_or_resolve(h2, limit)
                    .await
                    .ok_or_else(|| {
                        Error::explain(
                            ErrorType::HTTPStatus(503),
                            format!("activator {} is not resolvable", self.activator.target()),
                        )
                    })?;
                self.metrics
                    .activator_requests
                    .with_label_values(&[&*backend.namespace, &*backend.name])
                    .inc();
                ctx.upstream = Upstream::Activator;
                if self.activator.tls() {
                    tls_name = Some(dataplane::trust::ACTIVATOR_NAME.to_owned());
                }
                addr
            }
            BackendKind::Pods if backend.endpoints.is_empty() => {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    format!(
                        "{}/{} has no ready endpoint",
                        backend.namespace, backend.name
                    ),
                ));
            }
            BackendKind::Pods => {
                // Unreachable through fail_to_connect (it stops retrying first), but if
                // every endpoint has refused, the answer is the specified 502.
                let (addr, wants_h2) = take_endpoint(
                    table,
                    &mut ctx.upstream,
                    &ctx.to,
                    &ctx.failed,
                    dataplane::health::millis(ctx.start),
                    &self.options.endpoints,
                )
                .ok_or_else(|| {
                    Error::explain(ErrorType::HTTPStatus(502), "every endpoint refused")
                })?;
                h2 = wants_h2;
                if backend.port.tls {
                    tls_name = Some(dataplane::trust::user_name(&backend.namespace));
                }
                addr
            }
            BackendKind::External(host, port) => {
                let limit = self.options.connect_timeout;
                let resolved = self.external.addr_or_resolve(host, *port, limit).await;
                resolved.ok_or_else(|| {
                    Error::explain(
                        ErrorType::HTTPStatus(503),
                        format!("ExternalName {host}:{port} does not resolve"),
                    )
                })?
            }
            // resolve() dispatches internal backends itself.
            BackendKind::Internal => {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(508),
                    "internal dispatch did not resolve",
                ))
            }
        };
        ctx.peer = Some(addr);
        let upgrade = session.is_upgrade_req();
        let tls = match tls_name {
            None => None,
            // Refused, never sent in plaintext.
            Some(name) => Some((name, upstream_tls(table, h2 && !upgrade)?)),
        };
        let mut peer = match tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some((name, config)) => {
                // The name is the one checked, not sent (no SNI).
                let mut peer = HttpPeer::new(addr, true, name);
                peer.options.rustls_client_config = Some(config);
                peer
            }
        };
        peer.options.connection_timeout = Some(self.options.connect_timeout);
        peer.options.read_timeout = self.options.stream_idle_timeout;
        peer.options.write_timeout = self.options.stream_idle_timeout;
        // Pool keys are exact endpoint addresses: no getpeername() per reuse
        // (vendor/README.md, "reuse without getpeername").
        peer.options.verify_reused_address = false;
        if upgrade {
            // An upgrade (WebSocket) always goes out as HTTP/1.1: HTTP/2 to the
            // next hop cannot carry it (Kourier's bug #801). And on a new
            // connection: an upgraded one never returns to the pool anyway, and
            // pingora 0.9 loses about one upgrade in a hundred sent on a pooled
            // connection (the request's end closes the body pipe before the 101
            // arrives). Pooled connections are in group 0; this group gets none.
            peer.group_key = UPGRADE_GROUP;
        } else if h2 {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = self.options.upstream_h2_streams;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        set_upstream_headers(upstream_request, client, self.options.trusted_hops, ctx);

        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.options.server_header.apply(upstream_response);
        // A sticky split's cookie naming the revision picked.
        if !upstream_response.status.is_informational() {
            if let Some(cookie) = ctx.to.set_cookie.take() {
                upstream_response.append_header(http::header::SET_COOKIE, cookie)?;
            }
        }
        // Draining (drain.rs): a response in flight when the listeners closed
        // tells its keep-alive client to go (`Connection: close`), rather than
        // the connection closing under the client's next request.
        if session.is_process_shutting_down() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.answered = true;
        self.endpoint_answered(ctx);
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.new_connection = !reused;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if matches!(
            e.etype(),
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert
        ) {
            // Why, with the name expected (the metric counts it by reason).
            tracing::warn!(
                upstream = %peer._address,
                expected_name = %peer.sni,
                "TLS to the backend failed: {e}"
            );
        }
        if ctx.upstream == Upstream::None {
            return e;
        }
        let retry = self.connect_refused(ctx);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if !ctx.answered && e.esource() == &ErrorSource::Upstream {
            self.upstream_lost(ctx, ctx.new_connection);
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // A certificate refused (system-internal TLS) is a bad gateway,
            // the activator's too: not a wait for a pod.
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert => 502,
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
        let status = session.response_written().map(|r| r.status.as_u16());
        let downstream = session.as_downstream();
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let bytes = (downstream.body_bytes_read(), downstream.body_bytes_sent());
        self.record(ctx, session.req_header(), client, status, bytes);
    }
}

impl Gateway {
    /// The end of a request on either path: metrics; with `--access-log` a
    /// line, and for a traced request its span, queued for a thread of their
    /// own. `bytes`: body bytes read from the client and sent to it.
    pub(crate) fn record(
        &self,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
        client: Option<std::net::SocketAddr>,
        status: Option<u16>,
        bytes: (usize, usize),
    ) {
        let code = status.unwrap_or(0);
        let durations = &self.metrics.duration;
        let duration = match ctx.upstream {
            Upstream::Activator => &durations.activator,
            Upstream::Endpoint(_) => &durations.revision,
            Upstream::None if ctx.table.is_some() => &durations.revision,
            Upstream::None => &durations.none,
        };
        let elapsed = ctx.start.elapsed();
        match &ctx.table {
            // Atomic adds on counts kept in the table (see metrics.rs): the
            // code's, the latency bucket's, and the activator's if it went there.
            Some(table) => {
                if let Some(counts) = table.route(ctx.to.route).responses(ctx.to.backend) {
                    counts.record(code);
                    counts.latency.record(elapsed.as_micros() as u64);
                    if ctx.upstream == Upstream::Activator {
                        counts.activator.fetch_add(1, Ordering::Relaxed);
                    }
                    if ctx.to.split {
                        counts.split.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            None => self.metrics.unrouted.record(code),
        }
        duration.observe(elapsed.as_secs_f64());
        let traced = self.tracer.as_ref().zip(ctx.span);
        if self.access_log.is_some() || traced.is_some() {
            let facts = Facts::of(req, client, self.options.trusted_hops, ctx, elapsed, status);
            if let Some(log) = &self.access_log {
                log_access(log, &facts, req, bytes, ctx);
            }
            if let Some((tracer, span)) = traced {
                tracer.finish(finished_span(span, &facts, req, ctx));
            }
        }
        ctx.release();
    }
}

/// The headers the gateway sets on a request going upstream, on both paths:
/// `X-Forwarded-For` gets the peer `client` appended (and, behind trusted
/// hops, loses what the client wrote itself), `X-Forwarded-Proto` is set; the
/// path's and split's headers, the KIngress hash, `rewriteHost` and a traced
/// request's `traceparent` replace whatever the client sent; last, the
/// header changes an authorization server asked for.
pub(crate) fn set_upstream_headers(
    upstream_request: &mut RequestHeader,
    client: Option<std::net::IpAddr>,
    trusted_hops: u8,
    ctx: &mut RequestCtx,
) {
    // Room for every header set below at once: one growth of the map, not several.
    let sets = ctx
        .to
        .headers
        .iter()
        .flatten()
        .map(|h| h.len())
        .sum::<usize>();
    upstream_request.reserve_headers(sets + 5);
    if let Some(peer) = client {
        // The request's own X-Forwarded-For is read once per request: by the
        // authorization check, when there is one.
        let client = ctx
            .client
            .unwrap_or_else(|| Client::of(&upstream_request.headers, peer, trusted_hops));
        let value = forwarded::upstream_value(&upstream_request.headers, &client, peer);
        upstream_request.insert_typed_header(X_FORWARDED_FOR, value);
        ctx.client = Some(client);
    }
    upstream_request.insert_typed_header(FORWARDED_PROTO, if ctx.tls { HTTPS } else { HTTP });
    // Each insert replaces every value the client sent. The names are
    // parsed already: no round trip through bytes (vendor/README.md).
    for (name, value) in ctx.to.headers.iter().flatten().flat_map(|h| h.iter()) {
        upstream_request.insert_typed_header(name.clone(), value.clone());
    }
    if let Some(hash) = &ctx.to.hash {
        upstream_request.insert_typed_header(HASH_HEADER.clone(), hash.clone());
    }
    if let Some(host) = &ctx.to.rewrite_host {
        upstream_request.insert_typed_header(http::header::HOST, host.clone());
    }
    // A traced request names its span as the revision's parent; an
    // untraced one passes the client's traceparent on unchanged.
    if let Some(span) = &ctx.span {
        if let Ok(value) = http::HeaderValue::from_str(&span.traceparent()) {
            upstream_request.insert_typed_header(TRACEPARENT, value);
        }
    }
    // Last: what the authorization server asked for.
    if let Some(mutations) = &ctx.authz_headers {
        mutations.apply(upstream_request);
    }
    if ctx.continued {
        upstream_request.remove_header(&http::header::EXPECT);
    }
}

/// The host a request names: the URI's authority (HTTP/2 and absolute-form
/// requests carry it there), else the `Host` header.
fn request_host(req: &RequestHeader) -> Option<&[u8]> {
    match req.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => req.headers.get(http::header::HOST).map(|h| h.as_bytes()),
    }
}

/// What the access log and a span say about a finished request, borrowed;
/// gathered once for both.
struct Facts<'a> {
    host: &'a [u8],
    route: Option<(&'a str, &'a str)>,
    revision: Option<(&'a Arc<str>, &'a Arc<str>)>,
    start: std::time::SystemTime,
    duration: Duration,
    status: Option<u16>,
    /// The TCP peer (or the PROXY protocol's source).
    peer: Option<std::net::SocketAddr>,
    /// The client behind trusted hops, when `X-Forwarded-For` named one.
    forwarded: Option<std::net::IpAddr>,
}

impl<'a> Facts<'a> {
    fn of(
        req: &'a RequestHeader,
        peer: Option<std::net::SocketAddr>,
        trusted_hops: u8,
        ctx: &'a RequestCtx,
        duration: Duration,
        status: Option<u16>,
    ) -> Self {
        let (route, revision) = match &ctx.table {
            Some(table) => {
                let key = &table.route(ctx.to.route).key;
                let backend = table.backend(ctx.to.backend);
                (
                    Some((key.namespace.as_str(), key.name.as_str())),
                    Some((&backend.namespace, &backend.name)),
                )
            }
            None => (None, None),
        };
        // Found as the request went upstream (whose X-Forwarded-For the fast
        // path rewrites in place), else from the request as it came.
        let forwarded = ctx
            .client
            .or_else(|| {
                let peer = peer.filter(|_| trusted_hops > 0)?;
                Some(Client::of(&req.headers, peer.ip(), trusted_hops))
            })
            .filter(Client::forwarded)
            .map(|client| client.ip);
        let now = std::time::SystemTime::now();
        Facts {
            host: request_host(req).unwrap_or_default(),
            route,
            revision,
            start: now.checked_sub(duration).unwrap_or(now),
            duration,
            status,
            peer,
            forwarded,
        }
    }
}

/// Queue the access log line of a finished request.
fn log_access(
    log: &AccessLog,
    facts: &Facts<'_>,
    req: &RequestHeader,
    (bytes_in, bytes_out): (usize, usize),
    ctx: &RequestCtx,
) {
    log.record(&Entry {
        time: facts.start,
        client: facts.peer,
        forwarded_client: facts.forwarded,
        method: req.method.as_str(),
        host: facts.host,
        path: req.uri.path(),
        status: facts.status,
        route: facts.route,
        revision: facts.revision.map(|(ns, name)| (&**ns, &**name)),
        upstream: ctx.peer,
        bytes_in,
        bytes_out,
        duration: facts.duration,
        trace_id: req
            .headers
            .get(TRACEPARENT)
            .and_then(|v| trace_context::parse(v.as_bytes()))
            .map(|t| t.trace_id),
        authz: ctx.authz.map(crate::authz::Outcome::as_str),
    });
}

/// The span of a finished, traced request.
fn finished_span(
    context: SpanContext,
    facts: &Facts<'_>,
    req: &RequestHeader,
    ctx: &RequestCtx,
) -> Finished {
    Finished {
        context,
        start: facts.start,
        duration: facts.duration,
        method: req.method.clone(),
        host: String::from_utf8_lossy(facts.host).into_owned(),
        path: req.uri.path().to_owned(),
        status: facts.status.unwrap_or(0),
        client: facts.peer,
        forwarded_client: facts.forwarded,
        route: facts.route.map(|(ns, name)| format!("{ns}/{name}")),
        revision: facts.revision.map(|(ns, name)| (ns.clone(), name.clone())),
        upstream: ctx.peer,
    }
}
