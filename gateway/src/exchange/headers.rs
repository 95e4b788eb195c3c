//! The headers a request carries upstream, set the same way on both paths.

use dataplane::resolve::HASH_HEADER;
use pingora::http::RequestHeader;

use super::RequestCtx;
use crate::forwarded::{self, Client, X_FORWARDED_FOR};

pub(crate) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const HTTP: http::HeaderValue = http::HeaderValue::from_static("http");
const HTTPS: http::HeaderValue = http::HeaderValue::from_static("https");

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
pub(crate) fn request_host(req: &RequestHeader) -> Option<&[u8]> {
    match req.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => req.headers.get(http::header::HOST).map(|h| h.as_bytes()),
    }
}
