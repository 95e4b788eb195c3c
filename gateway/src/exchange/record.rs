//! The end of an exchange on either path: metrics, the access log line and
//! the span.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pingora::http::RequestHeader;

use super::{request_host, Gateway, RequestCtx, Upstream, TRACEPARENT};
use crate::access_log::{AccessLog, Entry};
use crate::forwarded::Client;
use crate::otlp::{Finished, SpanContext};
use crate::trace_context;

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
