//! What a request means, written once for both transports: the fast path
//! (`fast/app.rs`, plain HTTP/1.1 as bytes) and the general path
//! (`proxy.rs`, pingora's hooks) call these functions and do nothing else
//! of their own but read and write bytes and hold connections.
//!
//! A request goes through the same steps on either:
//! 1. **Decide** ([`Gateway::route`]): one `ArcSwap` load of the table, then
//!    [`dataplane::resolve`]: Host → route, the first matching path (prefix
//!    and exact headers), a pick by weight, and the headers to set. What
//!    routing refuses gets [`Gateway::answer`]: 400 without a Host, 404 for
//!    an unknown host or path (and, on the external listener, for
//!    cluster-local routes), Knative's probe its hash, a redirect to HTTPS.
//!    With an authorization server, [`Gateway::ask`] checks it next.
//! 2. **Forward**: [`take_endpoint`] picks a ready endpoint by power of two
//!    choices, counted in flight; [`upstream_peer`] names it the same way on
//!    both paths (the key of the one idle pool); [`set_upstream_headers`]
//!    sets what goes upstream. A refused connection is
//!    [`Gateway::connect_refused`] (another
//!    endpoint may be tried); a response head is [`Gateway::answered`]
//!    (endpoint health, and a sticky split's cookie); a failure before one is
//!    [`Gateway::failed`] (the status, and whether it counts against the
//!    endpoint).
//! 3. **Record** ([`Gateway::record`], `record.rs`): metrics, the access
//!    log line and the span.
//!
//! Only the general path reaches the activator and ExternalNames, and reads
//! a body for the authorization server while it streams; the fast path
//! hands those requests over with their routing attached ([`Routed`]), so
//! each is routed once.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use config_sync::publish::ProbeReader;
use config_sync::TableReader;
use dataplane::host::{self, MAX_HOST_LEN};
use dataplane::resolve::{resolve, Request, Resolved};
use dataplane::select::pick_endpoint;
use dataplane::Table;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpPeer;

use crate::access_log::AccessLog;
use crate::activator::Activator;
use crate::answer::{self, Refusal};
use crate::external::ExternalNames;
use crate::forwarded::Client;
use crate::metrics::Metrics;
use crate::otlp::{SpanContext, Tracer};

mod headers;
mod record;

pub(crate) use headers::{request_host, set_upstream_headers, TRACEPARENT};

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
    pub(crate) activator: Arc<Activator>,
    pub(crate) external: Arc<ExternalNames>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) options: ProxyOptions,
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

/// A request routed by no table (never checked) has no labels.
static NO_LABELS: dataplane::table::Labels = dataplane::table::Labels::NONE;

/// Header marking Knative's ingress probe (a static name: no parse per request).
const PROBE_HEADER: http::HeaderName = http::HeaderName::from_static("k-network-probe");

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

    /// Whether `local` (the address a client connected to) is an internal listener's.
    pub(crate) fn is_internal_addr(
        &self,
        local: Option<&pingora::protocols::l4::socket::SocketAddr>,
    ) -> bool {
        let port = local.and_then(|a| a.as_inet()).map(|a| a.port());
        port.is_some_and(|p| self.options.internal_ports.contains(&p))
    }
}

/// Why an exchange ended before a response began, as either transport saw
/// it: [`Gateway::failed`] turns it into the client's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A status decided before anything was forwarded (no endpoint left,
    /// nothing trusted to reach a TLS backend, the activator unresolvable).
    Status(u16),
    /// The upstream's certificate was refused (system-internal TLS).
    Certificate,
    /// The upstream connection failed, broke, closed or sent no valid head.
    Upstream,
    /// The client's connection broke: there is no one to answer.
    ClientGone,
    /// The client's request could not be read as HTTP.
    BadRequest,
    /// The gateway's own fault.
    Internal,
}

impl Gateway {
    /// The upstream answered with a response head of `status`: its
    /// endpoint's failures in a row start over, and a final response to a
    /// sticky split gets the cookie naming the revision (returned, for the
    /// transport to add as `Set-Cookie`).
    pub(crate) fn answered(&self, ctx: &mut RequestCtx, status: u16) -> Option<http::HeaderValue> {
        ctx.answered = true;
        if let (Upstream::Endpoint(i), Some(table)) = (ctx.upstream, &ctx.table) {
            table.backend(ctx.to.backend).endpoints[i].state.succeeded();
        }
        if (100..200).contains(&status) {
            return None;
        }
        ctx.to.set_cookie.take()
    }

    /// The status a client gets for `failure` (0: none, the client is
    /// gone). A connection lost before any response head counts against its
    /// endpoint when it was a new one, as a refused one does; a pooled one
    /// may just have been closed while idle.
    pub(crate) fn failed(&self, ctx: &mut RequestCtx, failure: Failure) -> u16 {
        let lost = !ctx.answered && matches!(failure, Failure::Upstream | Failure::Certificate);
        if let (Upstream::Endpoint(i), true) = (ctx.upstream, lost && ctx.new_connection) {
            self.endpoint_failed(ctx, i);
        }
        match failure {
            Failure::Status(code) => code,
            // A certificate refused is a bad gateway, the activator's too:
            // not a wait for a pod.
            Failure::Certificate => 502,
            // The activator unreachable: a wait for a pod that did not end.
            Failure::Upstream if ctx.upstream == Upstream::Activator && ctx.connect_failed => 503,
            Failure::Upstream => 502,
            Failure::ClientGone => 0,
            Failure::BadRequest => 400,
            Failure::Internal => 500,
        }
    }
}

/// The peer an upstream is reached at, made the same way on both paths, so
/// that the one idle pool of each worker thread (vendor patch 0006) finds a
/// connection either path made: `addr`, over TLS when `tls` gives the name
/// the certificate must carry (checked, not sent: no SNI) and the client
/// settings, within the connect and idle timeouts.
pub(crate) fn upstream_peer(
    addr: SocketAddr,
    tls: Option<(String, Arc<rustls::ClientConfig>)>,
    options: &ProxyOptions,
) -> HttpPeer {
    let mut peer = match tls {
        None => HttpPeer::new(addr, false, String::new()),
        Some((name, config)) => {
            let mut peer = HttpPeer::new(addr, true, name);
            peer.options.rustls_client_config = Some(config);
            peer
        }
    };
    peer.options.connection_timeout = Some(options.connect_timeout);
    peer.options.read_timeout = options.stream_idle_timeout;
    peer.options.write_timeout = options.stream_idle_timeout;
    // Pool keys are exact endpoint addresses: no getpeername() per reuse
    // (vendor/README.md, "reuse without getpeername").
    peer.options.verify_reused_address = false;
    peer
}

/// What a connection to `peer` that could not be made was: a refused
/// certificate is logged as a warning, with the name expected (the metric
/// counts it); the rest is a refused or timed-out connection.
pub(crate) fn connect_failure(peer: &HttpPeer, e: &pingora::Error) -> Failure {
    use pingora::ErrorType;
    match e.etype() {
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert => {
            tracing::warn!(
                upstream = %peer._address,
                expected_name = %peer.sni,
                "TLS to the backend failed: {e}"
            );
            Failure::Certificate
        }
        _ => {
            tracing::debug!("cannot connect to {}: {e}", peer._address);
            Failure::Upstream
        }
    }
}

/// What both paths set on a client session before they answer its request.
pub(crate) fn client_settings(session: &mut ServerSession, options: &ProxyOptions) {
    // pingora reads an HTTP/1.1 body with a 60 s timeout by default: a
    // WebSocket or a streaming upload may be silent far longer.
    session.set_read_timeout(options.stream_idle_timeout);
    // A client may send its next requests before reading the answers (RFC
    // 9112 §9.3.2): answer each in order, as nginx and HAProxy do, rather
    // than close the connection and drop them. (pingora reads the flag only
    // when the connection goes idle or is reused, not while a body is read.)
    session.set_pipelining_enabled(true);
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
    pub(crate) fn take(
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
    pub(crate) connect_failed: bool,
    /// A response head came from the upstream.
    pub(crate) answered: bool,
    /// The current attempt's upstream connection is a new one, not pooled.
    pub(crate) new_connection: bool,
    /// The request came in over TLS.
    pub(crate) tls: bool,
    /// The client as `X-Forwarded-For` named it before the gateway rewrote
    /// it for upstream (with `--trusted-hops`), for the log and the span.
    pub(crate) client: Option<Client>,
    /// How external authorization ended, when the request was checked.
    pub(crate) authz: Option<crate::authz::Outcome>,
    /// Header changes the authorization server asked for.
    pub(crate) authz_headers: Option<crate::authz::Mutations>,
    /// `100 Continue` was sent to the client here: its `Expect` is not
    /// passed on.
    pub(crate) continued: bool,
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

impl RequestCtx {
    /// A request's state as it arrives: started now, not routed.
    pub(crate) fn new() -> Self {
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
}
