//! Where one request goes, as a plain function over the table: the host's
//! route, the first path that matches, a pick from its split, and the headers
//! to set on the way. A split to the gateway's own internal Service (an
//! ExternalName, as DomainMapping writes) is dispatched again, with the
//! rewritten Host, without a network hop.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::split::pick_for;
use crate::table::{BackendId, BackendKind, Headers, RouteId, Table};

/// Internal re-dispatches allowed per request (DomainMapping needs one); past
/// that a request is looping through ExternalNames that point back at us.
pub const MAX_HOPS: usize = 2;
/// Header sets one request can collect: a path's and a split's per hop.
const MAX_SETS: usize = 2 * (MAX_HOPS + 1);

/// Header Knative's prober uses to ask for the applied KIngress hash.
pub const HASH_HEADER: HeaderName = HeaderName::from_static("k-network-hash");
/// The `K-Network-Hash` value that asks the ingress to fill in its hash.
pub const HASH_OVERRIDE: &str = "override";

/// What the request needs from the table.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    /// Normalised host.
    pub host: &'r str,
    /// The request path.
    pub path: &'r str,
    /// The client's headers.
    pub headers: &'r HeaderMap,
    /// Came in on the internal listener.
    pub internal: bool,
    /// A Knative probe (`K-Network-Probe: probe`).
    pub probe: bool,
    /// Came in over TLS.
    pub tls: bool,
}

/// Where a request goes and what is set on it.
#[derive(Debug, Default, Clone)]
pub struct Resolved {
    /// The route whose split picked the backend.
    pub route: RouteId,
    /// The backend picked.
    pub backend: BackendId,
    /// With no ready endpoint: the activator (else 503).
    pub activator: bool,
    /// Header sets to apply upstream, in order; later ones replace earlier values.
    pub headers: [Option<Headers>; MAX_SETS],
    /// Replaces the upstream Host.
    pub rewrite_host: Option<HeaderValue>,
    /// Replaces the client's `K-Network-Hash: override`.
    pub hash: Option<HeaderValue>,
    /// A weighted split picked the backend (not a tag host, not a one-way
    /// path), so the request counts towards the route's served split.
    pub split: bool,
    /// Set on the response: a sticky split's cookie naming the revision
    /// picked for a client that had none (or one naming no revision it serves).
    pub set_cookie: Option<HeaderValue>,
    /// The route and path the client's host took ask for authorization
    /// (not opted out, not an ACME challenge path).
    pub authorize: bool,
}

/// Why a request is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route answers this host on this listener: 404.
    NoRoute,
    /// The host's route has no path matching the request: 404.
    NoPath,
    /// A probe for a host no KIngress path serves: the gateway answers it
    /// itself (`--source routes`).
    Probe,
    /// ExternalNames pointing back at the gateway more than [`MAX_HOPS`] times.
    Loop,
    /// Plain HTTP to a host that asks for HTTPS: 301 to `https://`.
    Redirect,
}

/// Resolve `req` against `table`, into `out`.
#[inline]
pub fn resolve(table: &Table, req: Request<'_>, out: &mut Resolved) -> Result<(), Miss> {
    let mut host_buf;
    let mut host = req.host;
    let mut sets = 0;
    for hop in 0..=MAX_HOPS {
        let Some(entry) = table.lookup(host) else {
            return Err(if req.probe && hop == 0 {
                Miss::Probe
            } else {
                Miss::NoRoute
            });
        };
        if req.probe && hop == 0 && !entry.hashed {
            return Err(Miss::Probe);
        }
        // An internal hop arrives on the internal side, as it would over the network.
        if entry.internal_only && !req.internal && hop == 0 {
            return Err(Miss::NoRoute);
        }
        // Probes are never redirected: Knative probes over plain HTTP.
        if entry.https_redirect && !req.tls && !req.probe && hop == 0 {
            return Err(Miss::Redirect);
        }
        let (path, target) = entry
            .dispatch
            .resolve(req.path, req.headers)
            .ok_or(Miss::NoPath)?;
        let chosen = pick_for(target, req.headers, &mut out.set_cookie);
        // Only the first hop sees the client's `override`: it replaces it.
        if hop == 0
            && entry.hashed
            && req
                .headers
                .get(HASH_HEADER)
                .is_some_and(|v| v.as_bytes() == HASH_OVERRIDE.as_bytes())
        {
            out.hash = table.route(entry.route).hash.clone();
        }
        if hop == 0 {
            out.authorize = table.route(entry.route).authorize && !path.is_some_and(|p| p.acme);
        }
        if let Some(path) = path {
            if let Some(h) = &path.append {
                out.headers[sets] = Some(h.clone());
                sets += 1;
            }
            if path.rewrite_host.is_some() {
                out.rewrite_host = path.rewrite_host.clone();
            }
        }
        if let Some(h) = &chosen.headers {
            out.headers[sets] = Some(h.clone());
            sets += 1;
        }
        if table.backend(chosen.backend).kind != BackendKind::Internal {
            out.route = entry.route;
            out.backend = chosen.backend;
            out.split = matches!(target, crate::table::Target::Split(_));
            out.activator = chosen.activator;
            return Ok(());
        }
        // Back into the gateway, as the (rewritten) Host on the internal listener.
        if let Some(rewritten) = &out.rewrite_host {
            host_buf = String::from_utf8_lossy(rewritten.as_bytes()).into_owned();
            host = &host_buf;
        }
    }
    Err(Miss::Loop)
}
