//! The fast path's request loop (docs/fast-path.md): plain HTTP/1.1
//! requests, forwarded over pooled TCP (or, to Knative's `https` ports, TLS)
//! connections with the response passed
//! through as framed bytes, no header maps or proxy tasks. It reads every
//! head with pingora's HTTP/1 reader (its parser and limits), decides
//! through the same functions as the general proxy (`exchange`: route,
//! pick, set headers, the answer to a refusal or a failure, record), and
//! hands whatever it does not serve to that proxy with the
//! head already read: upgrades, chunked or long request bodies, misses (404,
//! the probe, redirects), the activator, ExternalNames and HTTP/2 backends.
//! HTTP/2 connections go to that proxy before any head is read.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dataplane::table::BackendKind;
use pingora::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp,
};
use pingora::connectors::TransportConnector;
use pingora::protocols::http::v1::server::HttpSession as Session1;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::buffers::Buf;
use super::request;
use crate::exchange::{
    client_settings, connect_failure, set_upstream_headers, take_endpoint, upstream_peer, Failure,
    Gateway, RequestCtx, Routed,
};
use wire::body::BodyEnd;
use wire::response_head::{self, Framing};

/// The proxy app: the fast path in front of pingora's `HttpProxy`.
pub struct FastPath {
    gateway: Gateway,
    proxy: Arc<HttpProxy<Gateway>>,
}

impl FastPath {
    /// Serve through `gateway` what is plain, hand the rest to `proxy` (built
    /// on a clone of the same gateway). Upstream connections are made and
    /// kept idle by the proxy's own connector (vendor patch 0020): one pool
    /// per worker thread serves both paths (patch 0006).
    pub fn new(gateway: Gateway, proxy: Arc<HttpProxy<Gateway>>) -> Self {
        Self { gateway, proxy }
    }

    /// The general proxy's connector of HTTP/1.x upstreams.
    fn connector(&self) -> &TransportConnector {
        self.proxy.upstream_transport()
    }
}

/// The proxy listeners' app: the fast path in front of the general proxy, or
/// (`--fast-path false`) the general proxy alone, exactly as without it.
pub enum ProxyApp {
    /// Plain HTTP/1.1 on the fast path, the rest handed over.
    Fast(Arc<FastPath>),
    /// Every request through pingora's `HttpProxy`.
    General(Arc<HttpProxy<Gateway>>),
}

#[async_trait]
impl ServerApp for ProxyApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut stream = stream;
        match &**self {
            ProxyApp::Fast(app) => match app.is_http2(&mut stream).await? {
                // HTTP/2 goes straight to the general proxy, whose future per
                // stream then need not pass through the fast path's.
                true => app.proxy.process_new(stream, shutdown).await,
                false => app.process_new(stream, shutdown).await,
            },
            ProxyApp::General(app) => app.process_new(stream, shutdown).await,
        }
    }

    async fn cleanup(&self) {
        match self {
            ProxyApp::Fast(app) => ServerApp::cleanup(&**app).await,
            ProxyApp::General(app) => ServerApp::cleanup(&**app).await,
        }
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a request read by the fast path ended.
enum Outcome {
    /// Not one the fast path serves: the general proxy takes it, unanswered.
    HandOver,
    /// Answered; the client connection may stay (or must close).
    Served { keep: bool },
    /// Nothing was sent to the client yet: it gets the status this failure
    /// means on either path ([`Gateway::failed`]).
    Failed(Failure),
    /// The client or the upstream broke off after the response began.
    Broken,
    /// Routing refused it: the gateway's own answer (a 404, the probe's
    /// hash, a redirect), decided as on the general path.
    Answer(crate::answer::Answer),
}

/// What was sent to the client, for the metrics and the access log.
#[derive(Default)]
struct Sent {
    status: Option<u16>,
    body_bytes: usize,
    /// Request body bytes read from the client.
    body_read: usize,
}

#[async_trait]
impl HttpServerApp for FastPath {
    fn process_new_http<'a>(
        self: &'a Arc<Self>,
        session: ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<ReusedHttpStream>> + Send + 'a {
        self.serve(session, shutdown)
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    async fn http_cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}

impl FastPath {
    /// Whether a new client connection speaks HTTP/2: by ALPN over TLS, else
    /// by the h2c preface (peeked, not consumed: pingora peeks it again),
    /// given the time a request head has. `None`: it closed or timed out.
    async fn is_http2(&self, stream: &mut Stream) -> Option<bool> {
        if stream.get_ssl_digest().is_some() {
            return Some(matches!(stream.selected_alpn_proto(), Some(ALPN::H2)));
        }
        let options = self.proxy.server_options.as_ref();
        if !options.is_some_and(|o| o.h2c) {
            return Some(false);
        }
        let limit = options
            .and_then(|o| o.h1_request_head_limits.timeout)
            .unwrap_or(Duration::from_secs(60));
        match tokio::time::timeout(limit, stream.starts_with(H2_PREFACE)).await {
            Ok(Ok(Some(h2))) => Some(h2),
            Ok(Ok(None)) => Some(false),
            Ok(Err(e)) => {
                tracing::debug!("reading a connection's first bytes: {e}");
                None
            }
            Err(_) => None,
        }
    }

    async fn serve(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !matches!(session, ServerSession::H1(_)) {
            // HTTP/2 is routed around the fast path (`is_http2`).
            return Box::pin(self.proxy.process_new_http(session, shutdown)).await;
        }
        // As the general proxy: an idle keep-alive connection closes when the
        // server shuts down; a head already buffered is still read first.
        let read = {
            let mut stop = shutdown.clone();
            tokio::select! {
                biased;
                read = session.read_request() => read,
                _ = stop.changed() => return None,
            }
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(mut e) => {
                // The same answers as the general proxy's (400, 408, 431).
                e.as_down();
                tracing::debug!("cannot read a request head: {e}");
                session.refuse_head(&e).await;
                return None;
            }
        }
        client_settings(&mut session, self.gateway.options());
        let ServerSession::H1(h1) = &mut session else {
            unreachable!("an HTTP/1 session, checked above");
        };
        let mut ctx = self.gateway.new_ctx();
        let mut sent = Sent::default();
        let outcome = self.forward(h1, &mut ctx, &mut sent, shutdown).await;
        let counts = &self.gateway.metrics().fast_path;
        let broken = matches!(outcome, Outcome::Broken);
        let keep = match outcome {
            Outcome::HandOver => {
                counts.handed_over.inc();
                drop(ctx);
                h1.keep_read_head();
                // Boxed: held inline, the general proxy's future (about
                // 8 KB, vendor patch 0021) would size every idle keep-alive
                // connection's; a handed-over request pays the copy.
                return Box::pin(self.proxy.process_new_http(session, shutdown)).await;
            }
            Outcome::Served { keep } => keep,
            Outcome::Failed(failure) => {
                session.set_keepalive(None);
                let code = self.gateway.failed(&mut ctx, failure);
                if code > 0 {
                    if let Err(e) = session.respond_error(code).await {
                        tracing::debug!("cannot send the error response: {e}");
                    }
                    sent.status = Some(code);
                }
                false
            }
            Outcome::Broken => false,
            Outcome::Answer(answer) => {
                sent.status = Some(answer.status());
                sent.body_bytes = answer.body_len();
                match crate::answer::send(&mut session, answer).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!("cannot send the answer: {e}");
                        false
                    }
                }
            }
        };
        counts.served.inc();
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let bytes = (sent.body_read, sent.body_bytes);
        self.gateway
            .record(&mut ctx, session.req_header(), client, sent.status, bytes);
        if !keep {
            session.set_keepalive(None);
        }
        if broken {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!("cannot reuse the client connection: {e}");
                None
            }
        }
    }

    /// Route, forward and answer a request whose head `h1` has read: its
    /// steps in order, each ending the exchange early with its [`Outcome`].
    async fn forward(
        &self,
        h1: &mut Session1,
        ctx: &mut RequestCtx,
        sent: &mut Sent,
        shutdown: &ShutdownWatch,
    ) -> Outcome {
        let exchange = async {
            let body_length = self.admit(h1, ctx)?;
            let body = read_body(h1, body_length, sent).await?;
            // Not boxed, unlike the general path's: here a box costs a
            // checked request about 10,000 instructions more (callgrind),
            // and a plain one gains little.
            self.authorize(h1, ctx).await?;
            let head_request = h1.req_header().method == http::Method::HEAD;
            let mut rbuf = Buf::take();
            let (mut up, mut out, pool_key) = self.send(h1, ctx, &body, &mut rbuf).await?;
            let close = !h1.will_keepalive() || *shutdown.borrow();
            // The request head is sent: its buffer takes what goes to the client.
            out.clear();
            let head = self
                .relay_head(h1, ctx, &mut up, &mut rbuf, &mut out, head_request, close)
                .await?;
            sent.status = Some(head.status);
            if let Some(cookie) = self.gateway.answered(ctx, head.status) {
                response_head::append_field(&mut out, b"Set-Cookie", cookie.as_bytes());
            }
            let idle = self.gateway.options().stream_idle_timeout;
            let reusable = relay_body(h1, &mut up, &mut rbuf, &head, &mut out, idle, sent).await?;
            // The client learns where a body that ran to the close ended by
            // the close too (the head said so).
            let keep = !close && head.framing != Framing::UntilClose;
            if reusable {
                // No idle timeout, as the general proxy's peers have none:
                // a connection the backend closed is found by the pool.
                self.connector().release_stream(up, pool_key, None);
            }
            Ok(Outcome::Served { keep })
        };
        exchange.await.unwrap_or_else(|early| early)
    }

    /// Whether the fast path serves this request, routed: the length of its
    /// body if so. A request routing refused gets the gateway's own answer
    /// here (one with a body to read first is handed over). A request it
    /// does not serve is handed over with its routing attached, route or
    /// refusal, so that it is routed once (a split's cursor must not move
    /// twice for one request).
    fn admit(&self, h1: &mut Session1, ctx: &mut RequestCtx) -> Result<u64, Outcome> {
        let body_length = request::plain_body(h1.req_header()).ok_or(Outcome::HandOver)?;
        ctx.tls = h1.digest().ssl_digest.is_some();
        let internal = self.gateway.is_internal_addr(h1.server_addr());
        if let Err(refusal) = self.gateway.route(h1.req_header(), internal, ctx) {
            if body_length > 0 {
                // Its body would have to be read first: the general path
                // answers it, from this routing.
                Routed::refused(h1.req_header_mut(), refusal);
                return Err(Outcome::HandOver);
            }
            ctx.span = self.gateway.sample(h1.req_header());
            return Err(Outcome::Answer(
                self.gateway.answer(refusal, h1.req_header()),
            ));
        }
        let table = ctx.table.as_ref().ok_or(Outcome::HandOver)?;
        let backend = table.backend(ctx.to.backend);
        // The activator (no endpoints), ExternalNames and a rewritten Host
        // (which the access log must not see) stay with the general proxy.
        // An h2c backend too: the fast path speaks HTTP/1.1 upstream (a
        // revision's endpoints share one port, so the first tells).
        // A TLS backend with nothing trusted gets its 502 there too, and a
        // body the authorization server is to see (read there no longer
        // than the check may wait, where the fast path reads it whole).
        if !matches!(backend.kind, BackendKind::Pods)
            || (body_length > 0 && self.gateway.authorizer_for(h1.req_header(), ctx).is_some())
            || (backend.port.tls && table.trust().is_none())
            || backend.endpoints.first().is_none_or(|e| e.h2)
            || ctx.to.rewrite_host.is_some()
        {
            Routed::attach(h1.req_header_mut(), ctx);
            return Err(Outcome::HandOver);
        }
        Ok(body_length)
    }

    /// With an authorization server to ask about the request (one without a
    /// body: `admit` hands the others over), ask it as the general path
    /// does; a denial ends the exchange with the server's answer.
    async fn authorize(&self, h1: &mut Session1, ctx: &mut RequestCtx) -> Result<(), Outcome> {
        let Some(authorizer) = self.gateway.authorizer_for(h1.req_header(), ctx) else {
            return Ok(());
        };
        let peer = h1.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let asked = self
            .gateway
            .ask(authorizer, h1.req_header(), peer, false, None, ctx);
        match asked.await {
            None => Ok(()),
            Some(denial) => {
                ctx.span = self.gateway.sample(h1.req_header());
                Err(Outcome::Answer(crate::answer::Answer::Denied(denial)))
            }
        }
    }

    /// Send the request to an endpoint and read the first bytes of its
    /// answer into `rbuf`: the upstream connection, the buffer the head was
    /// written from, and the connection's key in the idle pool. A pooled
    /// connection that turns out closed before answering is replaced (at most [`RETRIES_ON_REUSED`] times); a refused
    /// connection moves on to another endpoint as the general proxy does.
    async fn send(
        &self,
        h1: &mut Session1,
        ctx: &mut RequestCtx,
        body: &[u8],
        rbuf: &mut Buf,
    ) -> Result<(Stream, Buf, u64), Outcome> {
        let options = self.gateway.options();
        let idle = options.stream_idle_timeout;
        let mut retries_left = RETRIES_ON_REUSED;
        let mut request_head = Buf::take();
        loop {
            let now = dataplane::health::millis(ctx.start);
            let picked = {
                let RequestCtx {
                    table,
                    upstream,
                    to,
                    failed,
                    ..
                } = &mut *ctx;
                let table = table.as_ref().expect("routed by admit");
                take_endpoint(table, upstream, to, failed, now, &options.endpoints)
            };
            // Every endpoint refused.
            let (addr, h2c) = picked.ok_or(Outcome::Failed(Failure::Status(502)))?;
            if h2c {
                // Endpoints of one revision that differ in protocol: not one
                // port, not a revision Knative makes. Refused, not forwarded.
                ctx.release();
                return Err(Outcome::Failed(Failure::Status(502)));
            }
            if request_head.is_empty() {
                // The headers set upstream, then the head, once.
                ctx.span = self.gateway.sample(h1.req_header());
                let client = h1.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
                let req = h1.req_header_mut();
                request::strip_hop_by_hop(req);
                set_upstream_headers(req, client, self.gateway.trusted_hops(), ctx);
                request::write_head(req, &mut request_head);
                request_head.extend_from_slice(body);
            }
            ctx.peer = Some(addr);
            ctx.new_connection = false;
            let peer = upstream_peer(addr, self.tls_for(ctx), options);
            let (mut stream, reused) = match self.connector().reused_stream(&peer).await {
                Some(stream) => (stream, true),
                None => match self.connector().new_stream(&peer).await {
                    Ok(stream) => (stream, false),
                    Err(e) => {
                        let failure = connect_failure(&peer, &e);
                        if self.gateway.connect_refused(ctx) {
                            continue;
                        }
                        return Err(Outcome::Failed(failure));
                    }
                },
            };
            ctx.new_connection = !reused;
            let sent = async {
                stream.write_all(&request_head).await?;
                stream.flush().await
            };
            let answered = match within(idle, sent).await {
                Ok(()) => read_answer(h1, &mut stream, rbuf, idle)
                    .await
                    .ok_or(Outcome::Broken)?,
                Err(e) => Err(e),
            };
            match answered {
                Ok(n) if n > 0 => return Ok((stream, request_head, peer.reuse_hash())),
                // A pooled connection the backend had closed: it read nothing,
                // so the request goes again, on a new connection.
                _ if reused && retries_left > 0 => {
                    retries_left -= 1;
                    ctx.release();
                }
                _ => return Err(Outcome::Failed(Failure::Upstream)),
            }
        }
    }

    /// The name to check and the TLS client settings for the routed
    /// backend, when it is reached over TLS (Knative's system-internal TLS).
    fn tls_for(&self, ctx: &RequestCtx) -> Option<(String, Arc<rustls::ClientConfig>)> {
        let table = ctx.table.as_ref().expect("routed by admit");
        let backend = table.backend(ctx.to.backend);
        backend.port.tls.then(|| {
            let name = dataplane::trust::user_name(&backend.namespace);
            let trust = table.trust().expect("checked by admit");
            (name, trust.config(false).clone())
        })
    }

    /// The response head, and any 1xx before it, passed on as they come:
    /// `out` holds the final head for the client when this returns.
    #[allow(clippy::too_many_arguments)] // the exchange's state, each used once
    async fn relay_head(
        &self,
        h1: &mut Session1,
        ctx: &mut RequestCtx,
        up: &mut Stream,
        rbuf: &mut Buf,
        out: &mut Buf,
        head_request: bool,
        close: bool,
    ) -> Result<response_head::Head, Outcome> {
        let options = self.gateway.options();
        let idle = options.stream_idle_timeout;
        let date = pingora::protocols::http::date::get_cached_date();
        let relay = response_head::Relay {
            head_request,
            close,
            date: date.as_bytes(),
            server: options.server_header.relay(),
        };
        loop {
            match response_head::parse(rbuf, &relay, out) {
                Ok(Some(head)) if head.informational => {
                    write(h1, out).await.map_err(|_| Outcome::Broken)?;
                    out.clear();
                    rbuf.drain(..head.len);
                    if !rbuf.is_empty() {
                        continue;
                    }
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => {
                    let peer = ctx.peer.map_or(String::new(), |p| p.to_string());
                    tracing::debug!("response from {peer}: {e}");
                    return Err(Outcome::Failed(Failure::Upstream));
                }
            }
            match read_answer(h1, up, rbuf, idle).await {
                None => return Err(Outcome::Broken),
                Some(Ok(0) | Err(_)) => return Err(Outcome::Failed(Failure::Upstream)),
                Some(Ok(_)) => {}
            }
        }
    }
}

/// The request body, read whole (at most `MAX_BODY`) through pingora's body
/// reader, which holds it to its Content-Length; it follows the head.
async fn read_body(h1: &mut Session1, length: u64, sent: &mut Sent) -> Result<Buf, Outcome> {
    if length == 0 {
        return Ok(Buf::none());
    }
    let mut body = Buf::take();
    loop {
        match h1.read_body_bytes().await {
            Ok(Some(bytes)) => body.extend_from_slice(&bytes),
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("cannot read a request body: {e}");
                return Err(Outcome::Broken);
            }
        }
    }
    sent.body_read = body.len();
    Ok(body)
}

/// The response body after `head`, by its framing: what came with the head
/// (appended to `out`, the head for the client), then each read passed on
/// up to the body's end. Bytes past it (a misbehaving backend's) are not
/// passed on. Whether the upstream connection can be reused: only when the
/// body ended exactly where its framing said.
async fn relay_body(
    h1: &mut Session1,
    up: &mut Stream,
    rbuf: &mut Buf,
    head: &response_head::Head,
    out: &mut Buf,
    idle: Option<Duration>,
    sent: &mut Sent,
) -> Result<bool, Outcome> {
    let mut end = BodyEnd::of(head.framing);
    let body = &rbuf[head.len..];
    let now = end
        .take(body)
        .map_err(|_| Outcome::Failed(Failure::Upstream))?;
    let mut reusable = head.reusable && now == body.len();
    out.extend_from_slice(&body[..now]);
    write(h1, out).await.map_err(|_| Outcome::Broken)?;
    sent.body_bytes = now;
    while !end.is_done() {
        rbuf.clear();
        let n = match within(idle, up.read_buf(&mut **rbuf)).await {
            // A body that runs to the close has ended.
            Ok(0) if matches!(end, BodyEnd::Close) => break,
            Ok(0) | Err(_) => return Err(Outcome::Broken),
            Ok(n) => n,
        };
        let now = end.take(rbuf).map_err(|_| Outcome::Broken)?;
        reusable &= now == n;
        write(h1, &rbuf[..now]).await.map_err(|_| Outcome::Broken)?;
        sent.body_bytes += now;
    }
    Ok(reusable)
}

/// A request goes again on a new connection at most this often when pooled
/// connections turn out closed.
const RETRIES_ON_REUSED: usize = 2;

/// `f`, failed with `TimedOut` after `limit` (if any).
async fn within<T>(
    limit: Option<Duration>,
    f: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, f)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
        None => f.await,
    }
}

/// Read the upstream's answer into `buf`, watching the client meanwhile as
/// the general proxy does: a client that closes its connection gives the
/// request up (`None`; the upstream connection is then dropped, not
/// pooled), and the first bytes of a pipelined next request are kept for it.
async fn read_answer(
    h1: &mut Session1,
    up: &mut Stream,
    buf: &mut Vec<u8>,
    idle: Option<Duration>,
) -> Option<io::Result<usize>> {
    tokio::select! {
        biased;
        read = within(idle, up.read_buf(buf)) => Some(read),
        _ = h1.read_body_or_idle(true) => None,
    }
}

/// Write `bytes` to the client, flushed.
async fn write(h1: &mut Session1, bytes: &[u8]) -> io::Result<()> {
    let stream = h1.stream_mut();
    stream.write_all(bytes).await?;
    stream.flush().await
}
