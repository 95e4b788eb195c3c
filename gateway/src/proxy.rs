//! The general request path: pingora's `HttpProxy` hooks over the
//! decisions of [`crate::exchange`], for everything the fast path
//! (`fast/app.rs`) does not serve: HTTP/2 and h2c, upgrades and WebSockets,
//! streamed bodies, the activator, ExternalNames, h2c and TLS `h2` backends.
//!
//! 1. `request_filter`: the client settings, then the routing the fast path
//!    attached or [`Gateway::route`]; a refusal gets [`Gateway::answer`],
//!    a request to check the authorization server's verdict (the start of
//!    its body read first, held for upstream).
//! 2. `upstream_peer`: [`crate::exchange::take_endpoint`]; with no endpoint,
//!    the activator for a revision split (its HTTP/2 port for a revision
//!    whose port speaks HTTP/2), else 503; an ExternalName's address. HTTP/2
//!    cleartext to an endpoint whose port asks for it, except for upgrades
//!    (HTTP/1.1 always). A backend on Knative's `https` port is reached over
//!    TLS (`config_sync::trust`).
//! 3. `upstream_request_filter`: [`crate::exchange::set_upstream_headers`].
//! 4. `fail_to_connect`: a refused connection is retried on another endpoint
//!    of the same revision, a bounded number of times. A response is never
//!    retried: a backend's 503 reaches the client.
//! 5. `upstream_response_filter`: [`Gateway::answered`];
//!    `response_filter`: the `Server` field, and while draining
//!    `Connection: close`.
//! 6. `fail_to_proxy`: [`Gateway::failed`] (`connected_to_upstream` says
//!    which connections are new).
//! 7. `logging`: [`Gateway::record`]. The in-flight count is released when
//!    the context drops.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dataplane::table::BackendKind;
use dataplane::Table;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::answer;
use crate::exchange::{
    client_settings, connect_failure, set_upstream_headers, take_endpoint, upstream_peer, Failure,
    Gateway, RequestCtx, Routed, Upstream,
};

impl Gateway {
    /// Whether the request came in on the internal listener.
    fn is_internal(&self, session: &Session) -> bool {
        self.is_internal_addr(session.as_downstream().server_addr())
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

/// The most one read of a request body returns (pingora's HTTP/1 body
/// buffer; HTTP/2 frames are smaller).
const BODY_READ_MAX: usize = 64 * 1024;

/// Upstream connection group of upgrade requests (see `upstream_peer`).
const UPGRADE_GROUP: u64 = 1;

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
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        client_settings(session.as_downstream_mut(), &self.options);
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
        let mut peer = upstream_peer(addr, tls, &self.options);
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
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.options.server_header.apply(upstream_response);
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
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if let Some(cookie) = self.answered(ctx, status) {
            upstream_response.append_header(http::header::SET_COOKIE, cookie)?;
        }
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
        // A refused certificate is logged with the name expected.
        connect_failure(peer, &e);
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
        let code = self.failed(ctx, failure_of(e));
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

/// What a pingora error says about how the exchange failed.
fn failure_of(e: &Error) -> Failure {
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(code), _) => Failure::Status(*code),
        (ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert, _) => Failure::Certificate,
        (_, ErrorSource::Upstream) => Failure::Upstream,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => Failure::ClientGone,
        (_, ErrorSource::Downstream) => Failure::BadRequest,
        (_, ErrorSource::Internal | ErrorSource::Unset) => Failure::Internal,
    }
}
