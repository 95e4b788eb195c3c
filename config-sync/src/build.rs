//! The table builder: a pure function from Routes and EndpointSlices (plus
//! the last good version of each Route) to a [`Table`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;

use crate::error::{ObjectError, Outcome, Rejection};
use crate::host;
use crate::model::{
    self, EndpointSlice, Kind, ObjectKey, Route, Snapshot, REVISION_LABEL, SERVICE_TYPE_LABEL,
    VISIBILITY_LABEL,
};
use crate::responses::Responses;
use crate::table::{
    revision_key, Endpoint, HostEntry, HostMap, Revision, RevisionId, RouteInfo, Split, Table,
    Target,
};

/// Cluster settings the builder needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Kubernetes cluster domain (`cluster.local`), for `x.ns.svc.<domain>` names.
    pub cluster_domain: String,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// A Route that passed validation, reduced to what the table needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRoute {
    /// `namespace/name`, shared with the table's route entry.
    pub key: Arc<ObjectKey>,
    /// Reachable only inside the cluster.
    pub cluster_local: bool,
    /// Host of `status.url`.
    pub host: String,
    /// `(revision, percent)` with percent > 0, merged per revision; sums to 100.
    pub split: Vec<(String, u32)>,
    /// Tagged targets.
    pub tags: Vec<ValidTag>,
}

/// A tagged traffic target.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTag {
    /// The tag.
    pub tag: String,
    /// Its revision.
    pub revision: String,
    /// Host of its `url`, when set.
    pub host: Option<String>,
}

/// The last valid version of every Route seen, so that a broken update keeps
/// serving what worked.
#[derive(Debug, Clone, Default)]
pub struct LastGood {
    routes: HashMap<Arc<ObjectKey>, Arc<ValidRoute>>,
}

/// Check a Route's status and reduce it to a [`ValidRoute`].
pub fn validate_route(route: &Route, opts: &BuildOptions) -> Result<ValidRoute, ObjectError> {
    let key = model::key(&route.metadata);
    for (field, value) in [
        ("metadata.namespace", &key.namespace),
        ("metadata.name", &key.name),
    ] {
        if !is_dns_name(value) {
            return Err(ObjectError::BadName {
                field: field.into(),
                value: value.clone(),
            });
        }
    }
    let status = route.status.as_ref().ok_or(ObjectError::NoStatus)?;
    let url = status.url.as_deref().ok_or(ObjectError::NoUrl)?;
    let host = host::of_url(url).ok_or_else(|| ObjectError::BadUrl {
        field: "status.url".into(),
        url: url.into(),
    })?;
    let traffic = status
        .traffic
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or(ObjectError::NoTraffic)?;

    let mut split: Vec<(String, u32)> = Vec::new();
    let mut tags: Vec<ValidTag> = Vec::new();
    let mut sum: i64 = 0;
    for (index, t) in traffic.iter().enumerate() {
        let revision = t
            .revision_name
            .as_deref()
            .filter(|r| !r.is_empty())
            .ok_or(ObjectError::MissingRevision { index })?;
        if !is_dns_name(revision) {
            return Err(ObjectError::BadName {
                field: format!("status.traffic[{index}].revisionName"),
                value: revision.into(),
            });
        }
        let percent = t.percent.unwrap_or(0);
        if percent < 0 {
            return Err(ObjectError::NegativePercent { index, percent });
        }
        sum = sum.saturating_add(percent);
        if percent > 0 && percent <= 100 {
            match split.iter_mut().find(|(r, _)| r == revision) {
                Some((_, p)) => *p += percent as u32,
                None => split.push((revision.to_owned(), percent as u32)),
            }
        }
        if let Some(tag) = t.tag.as_deref().filter(|t| !t.is_empty()) {
            if !is_dns_name(tag) {
                return Err(ObjectError::BadName {
                    field: format!("status.traffic[{index}].tag"),
                    value: tag.into(),
                });
            }
            let host = match t.url.as_deref() {
                Some(url) => Some(host::of_url(url).ok_or_else(|| ObjectError::BadUrl {
                    field: format!("status.traffic[{index}].url"),
                    url: url.into(),
                })?),
                None => None,
            };
            if !tags.iter().any(|x| x.tag == tag) {
                tags.push(ValidTag {
                    tag: tag.to_owned(),
                    revision: revision.to_owned(),
                    host,
                });
            }
        }
    }
    if sum != 100 {
        return Err(ObjectError::PercentSum { sum });
    }
    // Under `.svc.<cluster domain>`, checked without building the suffix per route.
    let under_svc = host
        .strip_suffix(opts.cluster_domain.as_str())
        .is_some_and(|h| h.ends_with(".svc."));
    let cluster_local =
        route.metadata.label(VISIBILITY_LABEL) == Some("cluster-local") || under_svc;
    Ok(ValidRoute {
        key: Arc::new(key),
        cluster_local,
        host,
        split,
        tags,
    })
}

/// `(namespace, revision)` of a revision's private slice; `None` for any other slice.
fn private_revision(slice: &EndpointSlice) -> Option<RevisionKey<'_>> {
    let meta = &slice.metadata;
    match (meta.label(REVISION_LABEL), meta.label(SERVICE_TYPE_LABEL)) {
        (Some(rev), Some("Private")) => Some((meta.namespace.as_deref().unwrap_or("default"), rev)),
        _ => None,
    }
}

/// The `namespace/revision` a slice belongs to, if it is a revision's private slice.
pub fn slice_revision(slice: &EndpointSlice) -> Option<ObjectKey> {
    private_revision(slice).map(|(ns, rev)| ObjectKey::new(ns, rev))
}

/// The port named `http` (queue-proxy's), if the slice has a valid one.
pub fn http_port(slice: &EndpointSlice) -> Option<u16> {
    slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p > 0)
}

/// The first address of every ready endpoint, on `port`. An address that is not
/// an IP is skipped and reported in `rejected`.
pub fn ready_addresses(
    slice: &EndpointSlice,
    port: u16,
    rejected: &mut Vec<Rejection>,
) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for (index, ep) in slice.endpoints.iter().flatten().enumerate() {
        if !ep.is_ready() {
            continue;
        }
        let Some(first) = ep.addresses.first() else {
            continue;
        };
        match first.parse::<IpAddr>() {
            Ok(ip) => addrs.push(SocketAddr::new(ip, port)),
            Err(_) => rejected.push(Rejection {
                kind: Kind::EndpointSlice,
                object: model::key(&slice.metadata),
                error: ObjectError::BadAddress {
                    index,
                    address: first.clone(),
                },
                outcome: Outcome::PartlyServed,
            }),
        }
    }
    addrs
}

/// The ready endpoints of one private EndpointSlice, keyed by its revision.
/// `Ok(None)` for slices that are not a revision's private slice (not ours).
/// Bad endpoints are skipped and reported in `rejected`.
pub fn slice_endpoints<'a>(
    slice: &'a EndpointSlice,
    rejected: &mut Vec<Rejection>,
) -> Result<Option<(RevisionKey<'a>, Vec<SocketAddr>)>, ObjectError> {
    let Some(revision) = private_revision(slice) else {
        return Ok(None);
    };
    match slice.address_type.as_deref() {
        Some("IPv4") | Some("IPv6") | None => {}
        Some(other) => return Err(ObjectError::AddressType(other.into())),
    }
    let port = http_port(slice).ok_or(ObjectError::NoHttpPort)?;
    Ok(Some((revision, ready_addresses(slice, port, rejected))))
}

/// `(namespace, revision)`, borrowed from the objects being built.
pub type RevisionKey<'a> = (&'a str, &'a str);

/// Hash map with the fast hasher used throughout the build.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Ready endpoints by `namespace/revision`.
pub type EndpointIndex = FastMap<Box<str>, Vec<SocketAddr>>;

/// Index every slice's ready endpoints by `namespace/revision`. The index owns
/// its keys, so the slices can be freed before the table is filled.
pub fn index_endpoints(slices: &[EndpointSlice], rejected: &mut Vec<Rejection>) -> EndpointIndex {
    let mut index = EndpointIndex::with_capacity_and_hasher(slices.len(), Default::default());
    let mut buf = String::new();
    for slice in slices {
        match slice_endpoints(slice, rejected) {
            Ok(Some(((ns, rev), addrs))) => {
                let key = revision_key(&mut buf, ns, rev);
                match index.get_mut(key) {
                    Some(known) => known.extend(addrs),
                    None => {
                        index.insert(key.into(), addrs);
                    }
                }
            }
            Ok(None) => {}
            Err(error) => rejected.push(Rejection::new(
                Kind::EndpointSlice,
                model::key(&slice.metadata),
                error,
            )),
        }
    }
    for addrs in index.values_mut() {
        // A pod can sit in two slices while they are being rebalanced.
        addrs.sort_unstable();
        addrs.dedup();
    }
    index
}

/// Build a table from a snapshot. `last_good` supplies the previous valid
/// version of Routes that are now invalid; `prev` (the live table) lends its
/// in-flight counters so load balancing carries across the swap.
/// Returns the table and the updated last-good set.
///
/// The snapshot is consumed: once its objects are read, they are freed on a
/// thread of their own while the table is filled, so that the two are not in
/// memory together (at 10,000 routes they were 26 and 22 MB) and the swap does
/// not wait for the frees.
pub fn build(
    snapshot: Snapshot,
    opts: &BuildOptions,
    last_good: &LastGood,
    prev: Option<&Table>,
    generation: u64,
) -> (Table, LastGood) {
    let Snapshot {
        routes: decoded,
        slices,
        rejected,
    } = snapshot;
    // Slices and the live table's counters do not depend on the Routes: index
    // them on a second thread while the Routes are validated (a quarter of a build).
    let ((mut endpoints, slice_rejected, counters), (mut rejected, routes, next_good)) =
        std::thread::scope(|scope| {
            let side = scope.spawn(|| {
                let mut slice_rejected = Vec::new();
                let endpoints = index_endpoints(&slices, &mut slice_rejected);
                retire(slices);
                let counters = prev.map(Carried::from).unwrap_or_default();
                (endpoints, slice_rejected, counters)
            });
            let validated = validate_all(&decoded, rejected, opts, last_good);
            let side = side.join().expect("indexing endpoints does not panic");
            (side, validated)
        });
    retire(decoded);
    rejected.extend(slice_rejected);
    let mut hosts = HostMap::default();
    // A route stores 2 names for its split and 2 per tag.
    hosts.reserve(routes.iter().map(|(r, _)| 2 + 2 * r.tags.len()).sum());
    let mut compiler = Compiler {
        hosts,
        revisions: Vec::new(),
        revision_ids: FastMap::default(),
        namespaces: FastMap::default(),
        endpoints: &mut endpoints,
        key: String::new(),
        counters: &counters,
        rejected: &mut rejected,
        keys: Vec::with_capacity(routes.len()),
    };
    let infos: Vec<RouteInfo> = routes
        .iter()
        .enumerate()
        .map(|(id, (route, last_good))| compiler.add_route(id as u32, route, *last_good))
        .collect();
    let Compiler {
        hosts, revisions, ..
    } = compiler;
    let cluster_names = hosts.values().filter(|e| e.cluster_name).count();
    let mut key = String::new();
    let revision_index = revisions
        .iter()
        .enumerate()
        .map(|(id, r)| {
            (
                revision_key(&mut key, &r.namespace, &r.name).into(),
                id as RevisionId,
            )
        })
        .collect();

    let table = Table {
        generation,
        built_at: Some(SystemTime::now()),
        host_count: hosts.len() + 2 * cluster_names,
        hosts: Arc::new(hosts),
        svc_suffix: format!(".svc.{}", opts.cluster_domain).into_boxed_str(),
        routes: Arc::new(infos),
        revisions,
        revision_index: Arc::new(revision_index),
        rejected: Arc::new(rejected),
    };
    (table, next_good)
}

/// A header value from a name [`validate_route`] checked with [`is_dns_name`].
fn dns_header(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).expect("DNS names are valid header values")
}

/// A DNS-1123 name as Kubernetes requires of namespaces, revisions and tags:
/// lower-case letters, digits, '-' and '.', at most 253 characters.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// Rejections, routes ordered by namespace/name (each flagged when it is a last
/// good version), and the new last-good set.
type Validated = (Vec<Rejection>, Vec<(Arc<ValidRoute>, bool)>, LastGood);

/// Free `garbage` on a thread of its own: a decoded snapshot is hundreds of
/// thousands of allocations, and the build need not wait for them.
fn retire<T: Send + 'static>(garbage: T) {
    // If no thread can be started, the closure, and the garbage in it, is dropped here.
    let _ = std::thread::Builder::new()
        .name("free-snapshot".into())
        .spawn(move || drop(garbage));
}

/// Validate every Route, falling back to last good versions.
fn validate_all(
    decoded: &[Route],
    mut rejected: Vec<Rejection>,
    opts: &BuildOptions,
    last_good: &LastGood,
) -> Validated {
    let mut next_good = LastGood::default();
    let mut routes: Vec<(Arc<ValidRoute>, bool)> = Vec::with_capacity(decoded.len());
    for route in decoded {
        match validate_route(route, opts) {
            Ok(valid) => {
                let valid = Arc::new(valid);
                next_good.routes.insert(valid.key.clone(), valid.clone());
                routes.push((valid, false));
            }
            Err(error) => rejected.push(Rejection::new(
                Kind::Route,
                model::key(&route.metadata),
                error,
            )),
        }
    }
    // Invalid Routes (including undecodable ones) fall back to their last good version.
    for r in rejected.iter_mut().filter(|r| r.kind == Kind::Route) {
        if next_good.routes.contains_key(&r.object) {
            continue;
        }
        if let Some(good) = last_good.routes.get(&r.object) {
            r.outcome = Outcome::LastGood;
            next_good.routes.insert(good.key.clone(), good.clone());
            routes.push((good.clone(), true));
        }
    }
    // Ordered by namespace/name: host conflicts are settled the same way every
    // time. A Route listed twice: the later one wins, as in the last-good set.
    routes.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    routes.dedup_by(|later, earlier| {
        let same = later.0.key == earlier.0.key;
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });

    (rejected, routes, next_good)
}

/// The live table's counters, which the next table takes over.
#[derive(Default)]
struct Carried<'p> {
    /// In-flight counts by revision namespace, name and endpoint address.
    inflight: FastMap<(&'p str, &'p str, SocketAddr), &'p Arc<AtomicU32>>,
    /// Response counts by route namespace, route name and revision name.
    responses: FastMap<(&'p str, &'p str, &'p str), &'p Arc<Responses>>,
}

impl<'p> From<&'p Table> for Carried<'p> {
    fn from(table: &'p Table) -> Self {
        let inflight = table
            .revisions
            .iter()
            .flat_map(|r| {
                r.endpoints
                    .iter()
                    .map(|e| ((&*r.namespace, &*r.name, e.addr), &e.inflight))
            })
            .collect();
        let responses = table
            .routes
            .iter()
            .flat_map(|route| {
                route.responses.iter().map(|(rev, counts)| {
                    let key = (
                        route.key.namespace.as_str(),
                        route.key.name.as_str(),
                        &*table.revision(*rev).name,
                    );
                    (key, counts)
                })
            })
            .collect();
        Self {
            inflight,
            responses,
        }
    }
}

/// A host name from parts, allocated once at its exact size.
fn host_name<'s>(parts: impl Iterator<Item = &'s str> + Clone) -> Box<str> {
    let mut s = String::with_capacity(parts.clone().map(str::len).sum());
    parts.for_each(|p| s.push_str(p));
    s.into_boxed_str()
}

struct Compiler<'a, 'p> {
    hosts: HostMap,
    revisions: Vec<Arc<Revision>>,
    revision_ids: FastMap<RevisionKey<'a>, RevisionId>,
    namespaces: FastMap<&'a str, (Arc<str>, HeaderValue)>,
    endpoints: &'a mut EndpointIndex,
    /// Reused to look revisions up in `endpoints` without allocating.
    key: String,
    counters: &'a Carried<'p>,
    rejected: &'a mut Vec<Rejection>,
    /// Keys of the routes added so far, by id.
    keys: Vec<Arc<ObjectKey>>,
}

impl<'a> Compiler<'a, '_> {
    fn add_route(&mut self, id: u32, route: &'a ValidRoute, last_good: bool) -> RouteInfo {
        self.keys.push(route.key.clone());
        let (ns, name) = (route.key.namespace.as_str(), route.key.name.as_str());
        let traffic: Vec<(RevisionId, u32)> = route
            .split
            .iter()
            .map(|(rev, pct)| (self.revision(ns, rev), *pct))
            .collect();
        let target = match traffic.as_slice() {
            [(only, _)] => Target::Revision(*only),
            _ => Target::Split(Arc::new(Split::new(&traffic))),
        };
        self.claim(route.host.as_str().into(), id, route, &target, false);
        self.claim_cluster_name(&[name], id, route, &target);

        let mut tags = Vec::with_capacity(route.tags.len());
        for tag in &route.tags {
            let target = Target::Revision(self.revision(ns, &tag.revision));
            if let Some(host) = &tag.host {
                self.claim(host.as_str().into(), id, route, &target, false);
            }
            self.claim_cluster_name(&[&tag.tag, "-", name], id, route, &target);
            if let Target::Revision(rev) = target {
                tags.push((tag.tag.clone(), rev));
            }
        }
        let mut responses: Vec<(RevisionId, Arc<Responses>)> = Vec::with_capacity(traffic.len());
        for rev in traffic.iter().map(|t| t.0).chain(tags.iter().map(|t| t.1)) {
            if responses.iter().any(|r| r.0 == rev) {
                continue;
            }
            let counts = self
                .counters
                .responses
                .get(&(ns, name, &*self.revisions[rev as usize].name))
                .map(|c| Arc::clone(c))
                .unwrap_or_default();
            responses.push((rev, counts));
        }
        RouteInfo {
            key: route.key.clone(),
            cluster_local: route.cluster_local,
            last_good,
            traffic,
            tags,
            responses,
        }
    }

    /// `name.ns`, which [`Table::lookup`] also finds as `name.ns.svc` and
    /// `name.ns.svc.<cluster domain>`; `name` comes in parts.
    fn claim_cluster_name(&mut self, name: &[&str], id: u32, route: &ValidRoute, target: &Target) {
        let ns = route.key.namespace.as_str();
        let host = host_name(name.iter().chain(&[".", ns]).copied());
        self.claim(host, id, route, target, true);
    }

    /// Give `host` to route `id`. Hosts arrive normalised: URLs through
    /// [`host::of_url`], cluster names from validated lower-case DNS names.
    fn claim(
        &mut self,
        host: Box<str>,
        id: u32,
        route: &ValidRoute,
        target: &Target,
        cluster_name: bool,
    ) {
        use std::collections::hash_map::Entry;
        let owner = match self.hosts.entry(host) {
            Entry::Vacant(v) => {
                v.insert(HostEntry {
                    route: id,
                    target: target.clone(),
                    cluster_local: route.cluster_local,
                    cluster_name,
                });
                return;
            }
            // The same route naming a host twice (a cluster-local URL is also
            // one of its cluster names): the first target stands.
            Entry::Occupied(o) if o.get().route == id => return,
            Entry::Occupied(o) => (o.get().route, o.key().to_string()),
        };
        // Routes are added in key order, so the owner is an earlier one.
        self.rejected.push(Rejection {
            kind: Kind::Route,
            object: (*route.key).clone(),
            error: ObjectError::HostConflict {
                owner: self.keys[owner.0 as usize].to_string(),
                host: owner.1,
            },
            outcome: Outcome::PartlyServed,
        });
    }

    fn revision(&mut self, ns: &'a str, name: &'a str) -> RevisionId {
        if let Some(&id) = self.revision_ids.get(&(ns, name)) {
            return id;
        }
        let endpoints = self
            .endpoints
            .remove(revision_key(&mut self.key, ns, name))
            .unwrap_or_default()
            .into_iter()
            .map(|addr| Endpoint {
                addr,
                inflight: self
                    .counters
                    .inflight
                    .get(&(ns, name, addr))
                    .map(|c| Arc::clone(c))
                    .unwrap_or_default(),
            })
            .collect();
        let key = (ns, name);
        // Namespaces repeat across revisions: share one string and header value each.
        let (namespace, namespace_header) = self
            .namespaces
            .entry(ns)
            .or_insert_with(|| (Arc::from(ns), dns_header(ns)))
            .clone();
        let name: Arc<str> = name.into();
        let id = self.revisions.len() as RevisionId;
        self.revisions.push(Arc::new(Revision {
            namespace_header,
            name_header: dns_header(&name),
            namespace,
            name,
            endpoints,
        }));
        self.revision_ids.insert(key, id);
        id
    }
}
