//! The routing table: an immutable value the gateway reads through one
//! `ArcSwap` load per request. Hosts map to a route and a target (a weighted
//! split or one tagged revision); revisions carry their ready endpoints.
//!
//! The parts are behind `Arc`s so a new table that changes only one revision's
//! endpoints shares everything else with the old one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde::Serialize;

use crate::error::Rejection;
use crate::model::ObjectKey;
use crate::responses::Responses;

/// Index of a route in [`Table::route`].
pub type RouteId = u32;
/// Index of a revision in [`Table::revision`].
pub type RevisionId = u32;

/// `namespace/revision` into `buf`: the key of the revision index, and of the
/// builder's endpoint index. One writer, so the two can never disagree.
pub(crate) fn revision_key<'b>(buf: &'b mut String, namespace: &str, revision: &str) -> &'b str {
    buf.clear();
    buf.push_str(namespace);
    buf.push('/');
    buf.push_str(revision);
    buf
}

/// Host map with a fast hasher: keys are Route hosts, not attacker-chosen, and
/// a lookup of an arbitrary Host cannot degrade it.
pub type HostMap = HashMap<Box<str>, HostEntry, foldhash::fast::RandomState>;

/// The live routing table.
#[derive(Debug, Default)]
pub struct Table {
    /// Incremented on every swap.
    pub generation: u64,
    /// When this table was built.
    pub built_at: Option<SystemTime>,
    pub(crate) hosts: Arc<HostMap>,
    /// `.svc.<cluster domain>`: stripped on a miss to find a cluster name.
    pub(crate) svc_suffix: Box<str>,
    /// Hosts answered, counting the `.svc` forms of cluster names.
    pub(crate) host_count: usize,
    pub(crate) routes: Arc<Vec<RouteInfo>>,
    pub(crate) revisions: Vec<Arc<Revision>>,
    /// `namespace/name` → revision id, for endpoint-only updates.
    pub(crate) revision_index: Arc<HashMap<Box<str>, RevisionId, foldhash::fast::RandomState>>,
    pub(crate) rejected: Arc<Vec<Rejection>>,
}

/// New endpoints for one revision.
#[derive(Debug, Clone)]
pub struct EndpointUpdate {
    /// `namespace/revision`.
    pub revision: ObjectKey,
    /// Its ready addresses now (sorted, deduplicated).
    pub addrs: Vec<SocketAddr>,
}

/// What a host resolves to.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// The route owning the host.
    pub route: RouteId,
    /// Where its traffic goes.
    pub target: Target,
    /// Whether the route is reachable only inside the cluster.
    pub cluster_local: bool,
    /// This is the `name.ns` cluster name, which also answers for
    /// `name.ns.svc` and `name.ns.svc.<cluster domain>`.
    pub cluster_name: bool,
}

/// Where a host's traffic goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// All of it to one revision (a tag host, or a one-revision route).
    Revision(RevisionId),
    /// A weighted split.
    Split(Arc<Split>),
}

/// A weighted split precomputed as 100 slots (Knative percents are whole
/// numbers summing to 100), so a pick is one random index.
#[derive(Debug)]
pub struct Split {
    pub(crate) slots: [RevisionId; 100],
}

impl Split {
    /// A split from `(revision, percent)` pairs whose percents sum to 100.
    pub fn new(weights: &[(RevisionId, u32)]) -> Self {
        debug_assert_eq!(weights.iter().map(|w| w.1).sum::<u32>(), 100);
        let mut slots = [0; 100];
        let mut at = 0;
        for &(rev, pct) in weights {
            for slot in &mut slots[at..at + pct as usize] {
                *slot = rev;
            }
            at += pct as usize;
        }
        Self { slots }
    }
}

/// A route as the table holds it (for metrics labels and `/debug/routes`).
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// `namespace/name`.
    pub key: Arc<ObjectKey>,
    /// Reachable only inside the cluster.
    pub cluster_local: bool,
    /// Served from its last good version because the current one is invalid.
    pub last_good: bool,
    /// The split: `(revision, percent)`, percent > 0.
    pub traffic: Vec<(RevisionId, u32)>,
    /// Tags and their revisions.
    pub tags: Vec<(String, RevisionId)>,
    /// Responses by status code for each revision the route sends to (split
    /// and tags), each revision once.
    pub responses: Vec<(RevisionId, Arc<Responses>)>,
}

impl RouteInfo {
    /// The response counts of `revision` through this route.
    #[inline]
    pub fn responses(&self, revision: RevisionId) -> Option<&Responses> {
        self.responses
            .iter()
            .find(|r| r.0 == revision)
            .map(|r| &*r.1)
    }
}

/// A revision and its ready endpoints.
#[derive(Debug)]
pub struct Revision {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Revision name.
    pub name: Arc<str>,
    /// `Knative-Serving-Namespace` value, validated once at build time.
    pub namespace_header: HeaderValue,
    /// `Knative-Serving-Revision` value, validated once at build time.
    pub name_header: HeaderValue,
    /// Ready endpoints on the `http` port; empty means scaled to zero.
    pub endpoints: Vec<Endpoint>,
}

/// One ready pod of a revision.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Pod IP and queue-proxy `http` port.
    pub addr: SocketAddr,
    /// Requests in flight to it; shared across tables so a swap keeps the counts.
    pub inflight: Arc<AtomicU32>,
}

impl Endpoint {
    /// A new endpoint with no requests in flight.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            inflight: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Requests in flight now.
    #[inline]
    pub fn load(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
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

    /// A revision by id.
    #[inline]
    pub fn revision(&self, id: RevisionId) -> &Revision {
        &self.revisions[id as usize]
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

    /// The id of revision `namespace/name`, if a route references it.
    pub fn revision_id(&self, namespace: &str, name: &str) -> Option<RevisionId> {
        self.revision_index
            .get(revision_key(&mut String::new(), namespace, name))
            .copied()
    }

    /// A table equal to this one but for the endpoints of `updates` (revisions no
    /// route references are skipped) and the rejections of the EndpointSlices in
    /// `slices`, which `rejected` replaces. Everything else is shared, so the cost
    /// is one pointer copy per revision, whatever the number of routes.
    pub fn with_endpoints(
        &self,
        updates: &[EndpointUpdate],
        slices: &[ObjectKey],
        rejected: Vec<Rejection>,
        generation: u64,
    ) -> Table {
        let mut revisions = self.revisions.clone();
        for update in updates {
            let Some(id) = self.revision_id(&update.revision.namespace, &update.revision.name)
            else {
                continue;
            };
            let old = &self.revisions[id as usize];
            let endpoints = update
                .addrs
                .iter()
                .map(|&addr| {
                    // Keep the in-flight count of an endpoint that stays.
                    old.endpoints
                        .iter()
                        .find(|e| e.addr == addr)
                        .cloned()
                        .unwrap_or_else(|| Endpoint::new(addr))
                })
                .collect();
            revisions[id as usize] = Arc::new(Revision {
                namespace: old.namespace.clone(),
                name: old.name.clone(),
                namespace_header: old.namespace_header.clone(),
                name_header: old.name_header.clone(),
                endpoints,
            });
        }
        let rejected = if slices.is_empty() && rejected.is_empty() {
            self.rejected.clone()
        } else {
            let kept = self.rejected.iter().filter(|r| {
                !(r.kind == crate::model::Kind::EndpointSlice && slices.contains(&r.object))
            });
            Arc::new(kept.cloned().chain(rejected).collect())
        };
        Table {
            generation,
            built_at: Some(SystemTime::now()),
            hosts: self.hosts.clone(),
            svc_suffix: self.svc_suffix.clone(),
            host_count: self.host_count,
            routes: self.routes.clone(),
            revisions,
            revision_index: self.revision_index.clone(),
            rejected,
        }
    }

    /// Revisions referenced by routes.
    pub fn revisions(&self) -> impl Iterator<Item = &Revision> {
        self.revisions.iter().map(|r| &**r)
    }

    /// The table as JSON-friendly data, for `/debug/routes`.
    pub fn view(&self) -> TableView {
        let mut hosts_of: Vec<Vec<HostView>> = vec![Vec::new(); self.routes.len()];
        for (host, entry) in self.hosts.iter() {
            let revision = match &entry.target {
                Target::Revision(r) => Some(self.revision(*r).name.to_string()),
                Target::Split(_) => None,
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
            for host in names {
                hosts_of[entry.route as usize].push(HostView {
                    host,
                    revision: revision.clone(),
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
                    namespace: r.key.namespace.clone(),
                    name: r.key.name.clone(),
                    cluster_local: r.cluster_local,
                    last_good: r.last_good,
                    traffic: r
                        .traffic
                        .iter()
                        .map(|&(rev, percent)| TrafficView {
                            revision: self.revision(rev).name.to_string(),
                            percent,
                        })
                        .collect(),
                    tags: r
                        .tags
                        .iter()
                        .map(|(tag, rev)| TagView {
                            tag: tag.clone(),
                            revision: self.revision(*rev).name.to_string(),
                        })
                        .collect(),
                    hosts,
                }
            })
            .collect();
        let revisions = self
            .revisions
            .iter()
            .map(|r| RevisionView {
                namespace: r.namespace.to_string(),
                name: r.name.to_string(),
                cold: r.endpoints.is_empty(),
                endpoints: r
                    .endpoints
                    .iter()
                    .map(|e| EndpointView {
                        address: e.addr.to_string(),
                        inflight: e.load(),
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
}

/// A route in [`TableView`].
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Reachable only inside the cluster.
    pub cluster_local: bool,
    /// Served from its last good version.
    pub last_good: bool,
    /// The split.
    pub traffic: Vec<TrafficView>,
    /// Tags.
    pub tags: Vec<TagView>,
    /// Every host answering for this route.
    pub hosts: Vec<HostView>,
}

/// A host in [`RouteView`].
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// The host.
    pub host: String,
    /// The revision, for a tag host; `None` for the split.
    pub revision: Option<String>,
}

/// A split entry in [`RouteView`].
#[derive(Debug, Serialize)]
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
    pub outcome: crate::error::Outcome,
}
