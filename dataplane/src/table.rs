//! The routing table: an immutable value the gateway reads through one
//! `ArcSwap` load per request. A host maps to a route and its dispatch: straight
//! to a target (a Route's split or tag), or KIngress paths matched in order,
//! each with its target. A target picks a backend (a revision or a Service) by
//! weight; backends carry their ready endpoints.
//!
//! The parts are behind `Arc`s so a new table that changes only one backend's
//! endpoints shares everything else with the old one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use crate::health::EndpointState;
use crate::rejection::Rejection;
pub use crate::split::{BackendId, Headers, Pick, Split, Target};

use crate::endpoints::{endpoint_addrs, speaks_http2, EndpointUpdate, PortSelector};
use crate::key::{Kind, ObjectKey};
use crate::responses::Responses;

/// Index of a route in [`Table::route`].
pub type RouteId = u32;
/// Host map with a fast hasher: keys are Route hosts, not attacker-chosen, and
/// a lookup of an arbitrary Host cannot degrade it.
pub type HostMap = HashMap<Box<str>, HostEntry, foldhash::fast::RandomState>;

/// The live routing table. Its fields are the builder's (config-sync) to fill
/// and keep consistent; the request path reads it through the methods.
#[derive(Debug, Default)]
pub struct Table {
    /// Incremented on every swap.
    pub generation: u64,
    /// When this table was built.
    pub built_at: Option<SystemTime>,
    /// Every host answered, normalised, with its route and dispatch.
    pub hosts: Arc<HostMap>,
    /// `.svc.<cluster domain>`: stripped on a miss to find a cluster name.
    pub svc_suffix: Box<str>,
    /// Hosts answered, counting the `.svc` forms of cluster names.
    pub host_count: usize,
    /// Every route, by [`RouteId`].
    pub routes: Arc<Vec<RouteInfo>>,
    /// Every backend, by [`BackendId`].
    pub backends: Vec<Arc<Backend>>,
    /// Endpoint index key → the backends fed by it, for endpoint-only updates.
    pub backend_index: Arc<HashMap<Box<str>, Vec<BackendId>, foldhash::fast::RandomState>>,
    /// What the build left out, and why.
    pub rejected: Arc<Vec<Rejection>>,
    /// TLS certificates by server name.
    pub certs: Arc<crate::certs::Certs>,
    /// Whom to trust on the way to `https` ports; `None`: nothing is.
    pub trust: Option<Arc<crate::trust::Trust>>,
}

/// What a host resolves to.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// The route owning the host.
    pub route: RouteId,
    /// How its requests are dispatched.
    pub dispatch: Dispatch,
    /// Served only on the internal listener (cluster-local routes and rules,
    /// and cluster names).
    pub internal_only: bool,
    /// This is the `name.ns` cluster name, which also answers for
    /// `name.ns.svc` and `name.ns.svc.<cluster domain>`.
    pub cluster_name: bool,
    /// The route is a KIngress with a probe hash (kept here so that a request
    /// reads the route entry only when it needs the hash).
    pub hashed: bool,
    /// Plain-HTTP requests (but probes) get a 301 to `https://`.
    pub https_redirect: bool,
}

/// How a host's requests are dispatched.
#[derive(Debug, Clone)]
pub enum Dispatch {
    /// One catch-all path that sets no header of its own: straight to the split.
    Direct(Target),
    /// Paths in order, the first that matches wins; none matching is a 404.
    Paths(Arc<[PathRule]>),
}

/// A path rule of a KIngress.
#[derive(Debug)]
pub struct PathRule {
    /// Literal prefix of the request path; empty matches every path.
    pub prefix: Box<str>,
    /// Exact header matches, all of which must hold.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// Set before the split.
    pub append: Option<Headers>,
    /// Replaces the upstream Host.
    pub rewrite_host: Option<HeaderValue>,
    /// Its prefix is under [`ACME_CHALLENGE`]: never sent to the
    /// authorization server, as Kourier does for HTTP-01 challenges.
    pub acme: bool,
    /// The split.
    pub target: Target,
}

/// Where ACME HTTP-01 challenges are answered.
pub const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

impl PathRule {
    /// Whether a request for `path` with `headers` takes this rule.
    #[inline]
    pub fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        path.starts_with(&*self.prefix)
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get(name) == Some(value))
    }
}

impl Dispatch {
    /// The path rule and target a request takes; `None` when no path matches.
    #[inline]
    pub fn resolve(&self, path: &str, headers: &HeaderMap) -> Option<(Option<&PathRule>, &Target)> {
        match self {
            Dispatch::Direct(target) => Some((None, target)),
            Dispatch::Paths(rules) => rules
                .iter()
                .find(|r| r.matches(path, headers))
                .map(|r| (Some(r), &r.target)),
        }
    }

    /// The target of the catch-all path, if there is one (for views and probes).
    pub fn default_target(&self) -> Option<&Target> {
        match self {
            Dispatch::Direct(target) => Some(target),
            Dispatch::Paths(rules) => rules
                .iter()
                .rev()
                .find(|r| r.prefix.is_empty() && r.headers.is_empty())
                .map(|r| &r.target),
        }
    }
}

/// A routed object as the table holds it (for metrics labels and `/debug/routes`).
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// `Route` or `KIngress`.
    pub kind: Kind,
    /// `namespace/name`.
    pub key: Arc<ObjectKey>,
    /// Reachable only inside the cluster.
    pub cluster_local: bool,
    /// Served from its last good version because the current one is invalid.
    pub last_good: bool,
    /// The split of its first rule's catch-all path: `(backend, percent)`, percent > 0.
    pub traffic: Vec<(BackendId, u32)>,
    /// A Route's tags and their revisions.
    pub tags: Vec<(String, BackendId)>,
    /// `K-Network-Hash` of a KIngress: set on requests that send `override`.
    pub hash: Option<HeaderValue>,
    /// Responses by status code for each backend the route sends to, each once.
    pub responses: Vec<(BackendId, Arc<Responses>)>,
    /// Sticky canary settings.
    pub affinity: Option<Arc<crate::affinity::Affinity>>,
    /// Its requests go to the authorization server, when there is one.
    pub authorize: bool,
    /// A KIngress's labels, for the authorization server.
    pub labels: Labels,
}

/// An object's labels, shared by the objects and tables that hold them,
/// packed in one string (`key NUL value NUL ...`): at 10,000 KIngresses a
/// pair of strings per label cost several megabytes more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Option<Arc<str>>);

impl Labels {
    /// No labels.
    pub const NONE: Labels = Labels(None);

    /// `(key, value)` pairs; a pair holding a NUL (no valid label does) is
    /// left out.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Labels {
        let mut packed = String::new();
        for (key, value) in pairs {
            if key.contains('\0') || value.contains('\0') {
                continue;
            }
            packed.push_str(key);
            packed.push('\0');
            packed.push_str(value);
            packed.push('\0');
        }
        Labels((!packed.is_empty()).then(|| packed.into()))
    }

    /// The `(key, value)` pairs, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.as_deref().unwrap_or_default().split_terminator('\0');
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl RouteInfo {
    /// The response counts of `backend` through this route.
    #[inline]
    pub fn responses(&self, backend: BackendId) -> Option<&Responses> {
        self.responses
            .iter()
            .find(|r| r.0 == backend)
            .map(|r| &*r.1)
    }
}

/// Where a backend's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// Ready endpoints from EndpointSlices.
    Pods,
    /// The gateway itself (an ExternalName pointing at its internal Service).
    Internal,
    /// An ExternalName Service: `host:port`, resolved in the background.
    External(Box<str>, u16),
}

/// A revision or Service and its ready endpoints. The fields a pick reads
/// come first, on one cache line.
#[derive(Debug)]
#[repr(C)]
pub struct Backend {
    /// Ready endpoints; empty means scaled to zero (or not ready).
    pub endpoints: Vec<Endpoint>,
    /// The latest [`EndpointState::ready_at`] of its endpoints: a pick
    /// weighs warmth only within `--slow-start` of it.
    pub newest_ready_at: u64,
    /// The latest time ([`crate::health::millis`]) one of its endpoints is
    /// ejected until: a pick looks for ejected endpoints only before it.
    /// Raised by each ejection; a new table takes it from the endpoints.
    pub ejected_until: std::sync::atomic::AtomicU64,
    /// Namespace.
    pub namespace: Arc<str>,
    /// Revision or Service name.
    pub name: Arc<str>,
    /// Endpoint index key (empty for internal and external backends).
    pub key: Box<str>,
    /// Which port of the slices.
    pub port: PortSelector,
    /// Pods, the gateway itself, or an external name.
    pub kind: BackendKind,
    /// Its port speaks HTTP/2 ([`speaks_http2`](crate::endpoints::speaks_http2)): at zero, its requests go to
    /// the activator's HTTP/2 port (`--source routes`).
    pub http2: bool,
}

impl Backend {
    /// Pods, the gateway itself or an external name, with `endpoints`;
    /// `http2`: its port speaks HTTP/2 ([`speaks_http2`](crate::endpoints::speaks_http2)).
    pub fn new(
        namespace: Arc<str>,
        name: Arc<str>,
        key: Box<str>,
        port: PortSelector,
        kind: BackendKind,
        endpoints: Vec<Endpoint>,
        http2: bool,
    ) -> Self {
        let newest_ready_at = endpoints
            .iter()
            .map(|e| e.state.ready_at())
            .max()
            .unwrap_or(0);
        let ejected_until = endpoints
            .iter()
            .map(|e| e.state.ejected_until())
            .max()
            .unwrap_or(0);
        Self {
            ejected_until: ejected_until.into(),
            namespace,
            name,
            key,
            port,
            kind,
            endpoints,
            newest_ready_at,
            http2,
        }
    }
}

/// One ready pod of a backend.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Pod IP and port.
    pub addr: SocketAddr,
    /// In-flight count, failures, ejection and readiness time; shared
    /// across tables so a swap keeps them.
    pub state: Arc<EndpointState>,
    /// It speaks HTTP/2: h2c, or ALPN `h2` when its backend's port is TLS
    /// (see [`PortSelector`]).
    pub h2: bool,
}

impl Endpoint {
    /// A new HTTP/1.1 endpoint with no requests in flight, not warming up.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            state: Arc::default(),
            h2: false,
        }
    }

    /// Requests in flight now.
    #[inline]
    pub fn load(&self) -> u32 {
        self.state.load()
    }
}

impl Table {
    /// Resolve a normalised host (see [`crate::host::normalize`]). Two probes
    /// at most: the `.svc` forms of cluster names are not stored, but found by
    /// stripping the suffix, which halves the table.
    #[inline]
    pub fn lookup(&self, host: &str) -> Option<&HostEntry> {
        if let Some(entry) = self.hosts.get(host) {
            return Some(entry);
        }
        let base = host
            .strip_suffix(&*self.svc_suffix)
            .or_else(|| host.strip_suffix(".svc"))?;
        self.hosts.get(base).filter(|e| e.cluster_name)
    }

    /// A route by id.
    #[inline]
    pub fn route(&self, id: RouteId) -> &RouteInfo {
        &self.routes[id as usize]
    }

    /// Every route served, indexed by id.
    pub fn routes(&self) -> &[RouteInfo] {
        &self.routes
    }

    /// A backend by id.
    #[inline]
    pub fn backend(&self, id: BackendId) -> &Backend {
        &self.backends[id as usize]
    }

    /// Number of routes served.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Number of hosts served, counting every form of a cluster name.
    pub fn host_count(&self) -> usize {
        self.host_count
    }

    /// Objects (or parts of objects) rejected when this table was built.
    pub fn rejected(&self) -> &[Rejection] {
        &self.rejected
    }

    /// The backends fed by endpoint index `key`.
    pub fn backends_of(&self, key: &str) -> &[BackendId] {
        self.backend_index.get(key).map_or(&[], Vec::as_slice)
    }

    /// A table equal to this one but for the endpoints of `updates` (keys no
    /// route uses are skipped) and the rejections of the EndpointSlices in
    /// `slices`, which `rejected` replaces. Everything else is shared, so the cost
    /// is one pointer copy per backend, whatever the number of routes.
    pub fn with_endpoints(
        &self,
        updates: &[EndpointUpdate],
        slices: &[ObjectKey],
        rejected: Vec<Rejection>,
        generation: u64,
    ) -> Table {
        let mut backends = self.backends.clone();
        let now = crate::health::now_millis();
        for update in updates {
            for &id in self.backends_of(&update.key) {
                let old = &self.backends[id as usize];
                let endpoints = endpoint_addrs(&update.slices, &old.port)
                    .into_iter()
                    .map(|(addr, h2)| {
                        // An endpoint that stays keeps its state; a new one
                        // beside others warms up (slow start), a revision's
                        // first after zero takes everything at once.
                        let state = old
                            .endpoints
                            .iter()
                            .find(|e| e.addr == addr)
                            .map(|e| e.state.clone())
                            .unwrap_or_else(|| {
                                let ready_at = if old.endpoints.is_empty() { 0 } else { now };
                                Arc::new(EndpointState::new(ready_at))
                            });
                        Endpoint { addr, state, h2 }
                    })
                    .collect();
                backends[id as usize] = Arc::new(Backend::new(
                    old.namespace.clone(),
                    old.name.clone(),
                    old.key.clone(),
                    old.port.clone(),
                    old.kind.clone(),
                    endpoints,
                    speaks_http2(&update.slices, &old.port),
                ));
            }
        }
        let rejected = if slices.is_empty() && rejected.is_empty() {
            self.rejected.clone()
        } else {
            let kept = self
                .rejected
                .iter()
                .filter(|r| !(r.kind == Kind::EndpointSlice && slices.contains(&r.object)));
            Arc::new(kept.cloned().chain(rejected).collect())
        };
        Table {
            generation,
            built_at: Some(SystemTime::now()),
            hosts: self.hosts.clone(),
            svc_suffix: self.svc_suffix.clone(),
            host_count: self.host_count,
            routes: self.routes.clone(),
            backends,
            backend_index: self.backend_index.clone(),
            rejected,
            certs: self.certs.clone(),
            trust: self.trust.clone(),
        }
    }

    /// Every backend routes send to.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().map(|r| &**r)
    }

    /// The table as JSON-friendly data, for `/debug/routes`.
    pub fn view(&self) -> TableView {
        let now = crate::health::now_millis();
        let mut hosts_of: Vec<Vec<HostView>> = vec![Vec::new(); self.routes.len()];
        for (host, entry) in self.hosts.iter() {
            let revision = match &entry.dispatch {
                Dispatch::Direct(Target::One(p)) => Some(self.backend(p.backend).name.to_string()),
                _ => None,
            };
            let names = if entry.cluster_name {
                vec![
                    host.to_string(),
                    format!("{host}.svc"),
                    format!("{host}{}", self.svc_suffix),
                ]
            } else {
                vec![host.to_string()]
            };
            let paths = match &entry.dispatch {
                Dispatch::Direct(_) => Vec::new(),
                Dispatch::Paths(rules) => rules.iter().map(|r| self.path_view(r)).collect(),
            };
            for host in names {
                hosts_of[entry.route as usize].push(HostView {
                    host,
                    revision: revision.clone(),
                    internal_only: entry.internal_only,
                    paths: paths.clone(),
                });
            }
        }
        let routes = self
            .routes
            .iter()
            .zip(hosts_of)
            .map(|(r, mut hosts)| {
                hosts.sort_by(|a, b| a.host.cmp(&b.host));
                RouteView {
                    kind: r.kind.to_string(),
                    namespace: r.key.namespace.clone(),
                    name: r.key.name.clone(),
                    cluster_local: r.cluster_local,
                    last_good: r.last_good,
                    hash: r
                        .hash
                        .as_ref()
                        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
                    traffic: r
                        .traffic
                        .iter()
                        .map(|&(b, percent)| TrafficView {
                            revision: self.backend(b).name.to_string(),
                            percent,
                        })
                        .collect(),
                    tags: r
                        .tags
                        .iter()
                        .map(|(tag, b)| TagView {
                            tag: tag.clone(),
                            revision: self.backend(*b).name.to_string(),
                        })
                        .collect(),
                    hosts,
                    affinity: r.affinity.as_ref().map(|a| AffinityView {
                        cookie: a.cookie.clone(),
                        max_age_seconds: a.max_age,
                    }),
                }
            })
            .collect();
        let revisions = self
            .backends
            .iter()
            .map(|b| RevisionView {
                namespace: b.namespace.to_string(),
                name: b.name.to_string(),
                kind: match &b.kind {
                    BackendKind::Pods => "pods".into(),
                    BackendKind::Internal => "internal".into(),
                    BackendKind::External(host, port) => format!("external {host}:{port}"),
                },
                cold: b.kind == BackendKind::Pods && b.endpoints.is_empty(),
                endpoints: b
                    .endpoints
                    .iter()
                    .map(|e| EndpointView {
                        address: e.addr.to_string(),
                        inflight: e.load(),
                        protocol: match (b.port.tls, e.h2) {
                            (false, false) => "http/1.1",
                            (false, true) => "h2c",
                            (true, false) => "http/1.1 over tls",
                            (true, true) => "h2 over tls",
                        },
                        failures_in_a_row: e.state.failures(),
                        ejections: e.state.ejections(),
                        ejected_for_ms: e.state.ejected_for(now),
                        ready_ms_ago: (e.state.ready_at() > 0)
                            .then(|| now.saturating_sub(e.state.ready_at())),
                    })
                    .collect(),
            })
            .collect();
        let rejected = self
            .rejected
            .iter()
            .map(|r| RejectionView {
                kind: r.kind.to_string(),
                object: r.object.to_string(),
                reason: r.error.reason(),
                message: r.error.to_string(),
                outcome: r.outcome,
            })
            .collect();
        TableView {
            generation: self.generation,
            built_at_unix: self
                .built_at
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
            routes,
            revisions,
            rejected,
            certificates: self.certs.names().to_vec(),
            trust: self.trust.as_ref().map(|t| t.view().clone()),
        }
    }

    /// TLS certificates by server name.
    pub fn certs(&self) -> &crate::certs::Certs {
        &self.certs
    }

    /// Whom to trust on the way to `https` ports; `None` when nothing is
    /// (such backends are then refused, never reached in plaintext).
    #[inline]
    pub fn trust(&self) -> Option<&Arc<crate::trust::Trust>> {
        self.trust.as_ref()
    }

    fn path_view(&self, rule: &PathRule) -> PathView {
        let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        PathView {
            prefix: rule.prefix.to_string(),
            headers: rule
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), text(v)))
                .collect(),
            rewrite_host: rule.rewrite_host.as_ref().map(text),
            splits: rule
                .target
                .shares()
                .into_iter()
                .map(|(p, percent)| TrafficView {
                    revision: self.backend(p.backend).name.to_string(),
                    percent,
                })
                .collect(),
        }
    }
}

/// `/debug/routes` view of a table.
#[derive(Debug, Serialize)]
pub struct TableView {
    /// Table generation.
    pub generation: u64,
    /// Build time, seconds since the epoch.
    pub built_at_unix: Option<f64>,
    /// Routes with their hosts, split and tags.
    pub routes: Vec<RouteView>,
    /// Revisions with their endpoints.
    pub revisions: Vec<RevisionView>,
    /// Rejected objects with reasons.
    pub rejected: Vec<RejectionView>,
    /// Server names with a certificate, and the Secret of each.
    pub certificates: Vec<crate::certs::CertView>,
    /// The trust bundle for `https` backends; absent when nothing is trusted.
    pub trust: Option<crate::trust::TrustView>,
}

/// A route in [`TableView`].
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// `Route` or `KIngress`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Reachable only inside the cluster.
    pub cluster_local: bool,
    /// Served from its last good version.
    pub last_good: bool,
    /// The KIngress hash set on `K-Network-Hash: override` requests.
    pub hash: Option<String>,
    /// The split.
    pub traffic: Vec<TrafficView>,
    /// Tags.
    pub tags: Vec<TagView>,
    /// Every host answering for this route.
    pub hosts: Vec<HostView>,
    /// Sticky canary: the cookie keeping users on a revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityView>,
}

/// Sticky canary settings in [`RouteView`].
#[derive(Debug, Serialize)]
pub struct AffinityView {
    /// Cookie name.
    pub cookie: String,
    /// Cookie lifetime.
    pub max_age_seconds: u64,
}

/// A host in [`RouteView`].
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// The host.
    pub host: String,
    /// The revision, for a tag host; `None` for the split.
    pub revision: Option<String>,
    /// Served only on the internal listener.
    pub internal_only: bool,
    /// A KIngress host's paths, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathView>,
}

/// A path rule in [`HostView`].
#[derive(Debug, Clone, Serialize)]
pub struct PathView {
    /// Path prefix.
    pub prefix: String,
    /// Exact header matches.
    pub headers: Vec<(String, String)>,
    /// Upstream Host rewrite.
    pub rewrite_host: Option<String>,
    /// The split.
    pub splits: Vec<TrafficView>,
}

/// A split entry in [`RouteView`].
#[derive(Debug, Clone, Serialize)]
pub struct TrafficView {
    /// Revision name.
    pub revision: String,
    /// Percent.
    pub percent: u32,
}

/// A tag in [`RouteView`].
#[derive(Debug, Serialize)]
pub struct TagView {
    /// Tag.
    pub tag: String,
    /// Revision name.
    pub revision: String,
}

/// A revision in [`TableView`].
#[derive(Debug, Serialize)]
pub struct RevisionView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `pods`, `internal` or `external HOST:PORT`.
    pub kind: String,
    /// No ready endpoint: requests go to the activator.
    pub cold: bool,
    /// Ready endpoints.
    pub endpoints: Vec<EndpointView>,
}

/// An endpoint in [`RevisionView`].
#[derive(Debug, Serialize)]
pub struct EndpointView {
    /// `ip:port`.
    pub address: String,
    /// Requests in flight.
    pub inflight: u32,
    /// What the gateway speaks to it: `http/1.1`, `h2c`, `http/1.1 over
    /// tls` or `h2 over tls` (upgrades always go out as HTTP/1.1).
    pub protocol: &'static str,
    /// Connections refused or reset in a row.
    pub failures_in_a_row: u32,
    /// Times it was ejected.
    pub ejections: u64,
    /// Ejection left, in milliseconds; absent when not ejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
    /// How long ago it became ready beside others (slow start counts from
    /// then); absent for an endpoint that did not warm up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_ms_ago: Option<u64>,
}

/// A rejection in [`TableView`].
#[derive(Debug, Serialize)]
pub struct RejectionView {
    /// Object kind.
    pub kind: String,
    /// `namespace/name`.
    pub object: String,
    /// Short reason label.
    pub reason: &'static str,
    /// Full message.
    pub message: String,
    /// What the table did about it.
    pub outcome: crate::rejection::Outcome,
}

#[cfg(test)]
mod tests {
    use super::Labels;

    #[test]
    fn labels_pack_their_pairs_in_order_and_leave_out_a_nul() {
        let labels = Labels::new([("team", "payments"), ("bad\0key", "x"), ("tier", "")]);
        let pairs: Vec<_> = labels.iter().collect();
        assert_eq!(pairs, [("team", "payments"), ("tier", "")]);
        assert!(!labels.is_empty());
        let none = Labels::new([]);
        assert!(none.is_empty());
        assert_eq!(none, Labels::NONE);
        assert_eq!(none.iter().count(), 0);
    }
}
