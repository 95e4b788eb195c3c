//! The table builder: a pure function from Routes and EndpointSlices (plus
//! the last good version of each Route) to a [`Table`].

use std::collections::{BTreeMap, HashMap};
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
use crate::table::{
    Endpoint, HostEntry, HostMap, Revision, RevisionId, RouteInfo, Split, Table, Target,
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
    /// `namespace/name`.
    pub key: ObjectKey,
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
    routes: HashMap<ObjectKey, Arc<ValidRoute>>,
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
    let svc_suffix = format!(".svc.{}", opts.cluster_domain);
    let cluster_local = route.metadata.label(VISIBILITY_LABEL) == Some("cluster-local")
        || host.ends_with(&svc_suffix);
    Ok(ValidRoute {
        key,
        cluster_local,
        host,
        split,
        tags,
    })
}

/// The ready endpoints of one private EndpointSlice, keyed by its revision.
/// `Ok(None)` for slices that are not a revision's private slice (not ours).
/// Bad endpoints are skipped and reported in `rejected`.
pub fn slice_endpoints(
    slice: &EndpointSlice,
    rejected: &mut Vec<Rejection>,
) -> Result<Option<(ObjectKey, Vec<SocketAddr>)>, ObjectError> {
    let meta = &slice.metadata;
    let (Some(revision), Some("Private")) =
        (meta.label(REVISION_LABEL), meta.label(SERVICE_TYPE_LABEL))
    else {
        return Ok(None);
    };
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    match slice.address_type.as_deref() {
        Some("IPv4") | Some("IPv6") | None => {}
        Some(other) => return Err(ObjectError::AddressType(other.into())),
    }
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p > 0)
        .ok_or(ObjectError::NoHttpPort)?;
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
                object: model::key(meta),
                error: ObjectError::BadAddress {
                    index,
                    address: first.clone(),
                },
                outcome: Outcome::PartlyServed,
            }),
        }
    }
    Ok(Some((ObjectKey::new(namespace, revision), addrs)))
}

/// Index every slice's ready endpoints by `namespace/revision`.
pub fn index_endpoints(
    slices: &[EndpointSlice],
    rejected: &mut Vec<Rejection>,
) -> HashMap<ObjectKey, Vec<SocketAddr>> {
    let mut index: HashMap<ObjectKey, Vec<SocketAddr>> = HashMap::new();
    for slice in slices {
        match slice_endpoints(slice, rejected) {
            Ok(Some((rev, addrs))) => index.entry(rev).or_default().extend(addrs),
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
pub fn build(
    snapshot: &Snapshot,
    opts: &BuildOptions,
    last_good: &LastGood,
    prev: Option<&Table>,
    generation: u64,
) -> (Table, LastGood) {
    let mut rejected = snapshot.rejected.clone();
    let mut next_good = LastGood::default();
    // Ordered by namespace/name: host conflicts are settled the same way every time.
    let mut routes: BTreeMap<ObjectKey, (Arc<ValidRoute>, bool)> = BTreeMap::new();

    for route in &snapshot.routes {
        let key = model::key(&route.metadata);
        match validate_route(route, opts) {
            Ok(valid) => {
                let valid = Arc::new(valid);
                next_good.routes.insert(key.clone(), valid.clone());
                routes.insert(key, (valid, false));
            }
            Err(error) => rejected.push(Rejection::new(Kind::Route, key, error)),
        }
    }
    // Invalid Routes (including undecodable ones) fall back to their last good version.
    for r in rejected.iter_mut().filter(|r| r.kind == Kind::Route) {
        if routes.contains_key(&r.object) {
            continue;
        }
        if let Some(good) = last_good.routes.get(&r.object) {
            r.outcome = Outcome::LastGood;
            next_good.routes.insert(r.object.clone(), good.clone());
            routes.insert(r.object.clone(), (good.clone(), true));
        }
    }

    let mut endpoints = index_endpoints(&snapshot.slices, &mut rejected);
    let counters = prev.map(inflight_counters).unwrap_or_default();
    let mut compiler = Compiler {
        hosts: HostMap::default(),
        revisions: Vec::new(),
        revision_ids: HashMap::new(),
        endpoints: &mut endpoints,
        counters: &counters,
        rejected: &mut rejected,
        cluster_domain: &opts.cluster_domain,
        keys: Vec::with_capacity(routes.len()),
    };
    let infos: Vec<RouteInfo> = routes
        .values()
        .enumerate()
        .map(|(id, (route, last_good))| compiler.add_route(id as u32, route, *last_good))
        .collect();
    let Compiler {
        hosts, revisions, ..
    } = compiler;

    let table = Table {
        generation,
        built_at: Some(SystemTime::now()),
        hosts: Arc::new(hosts),
        routes: Arc::new(infos),
        revisions,
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

/// In-flight counters of the live table by revision and address.
fn inflight_counters(table: &Table) -> HashMap<(Arc<str>, Arc<str>, SocketAddr), Arc<AtomicU32>> {
    table
        .revisions
        .iter()
        .flat_map(|r| {
            r.endpoints.iter().map(|e| {
                (
                    (r.namespace.clone(), r.name.clone(), e.addr),
                    e.inflight.clone(),
                )
            })
        })
        .collect()
}

type Counters = HashMap<(Arc<str>, Arc<str>, SocketAddr), Arc<AtomicU32>>;

struct Compiler<'a> {
    hosts: HostMap,
    revisions: Vec<Arc<Revision>>,
    revision_ids: HashMap<ObjectKey, RevisionId>,
    endpoints: &'a mut HashMap<ObjectKey, Vec<SocketAddr>>,
    counters: &'a Counters,
    rejected: &'a mut Vec<Rejection>,
    cluster_domain: &'a str,
    /// Keys of the routes added so far, by id.
    keys: Vec<ObjectKey>,
}

impl Compiler<'_> {
    fn add_route(&mut self, id: u32, route: &ValidRoute, last_good: bool) -> RouteInfo {
        self.keys.push(route.key.clone());
        let ns = &route.key.namespace;
        let traffic: Vec<(RevisionId, u32)> = route
            .split
            .iter()
            .map(|(rev, pct)| (self.revision(ns, rev), *pct))
            .collect();
        let target = match traffic.as_slice() {
            [(only, _)] => Target::Revision(*only),
            _ => Target::Split(Arc::new(Split::new(&traffic))),
        };
        let mut hosts = vec![route.host.clone()];
        hosts.extend(self.cluster_names(&route.key.name, ns));
        for host in hosts {
            self.claim(host, id, route, target.clone());
        }

        let mut tags = Vec::with_capacity(route.tags.len());
        for tag in &route.tags {
            let rev = self.revision(ns, &tag.revision);
            tags.push((tag.tag.clone(), rev));
            let mut hosts: Vec<String> = tag.host.iter().cloned().collect();
            hosts.extend(self.cluster_names(&format!("{}-{}", tag.tag, route.key.name), ns));
            for host in hosts {
                self.claim(host, id, route, Target::Revision(rev));
            }
        }
        RouteInfo {
            key: route.key.clone(),
            cluster_local: route.cluster_local,
            last_good,
            traffic,
            tags,
        }
    }

    fn cluster_names(&self, name: &str, ns: &str) -> [String; 3] {
        [
            format!("{name}.{ns}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.{}", self.cluster_domain),
        ]
    }

    fn claim(&mut self, host: String, id: u32, route: &ValidRoute, target: Target) {
        let host = host.to_ascii_lowercase().into_boxed_str();
        match self.hosts.get(&host) {
            None => {
                self.hosts.insert(
                    host,
                    HostEntry {
                        route: id,
                        target,
                        cluster_local: route.cluster_local,
                    },
                );
            }
            // The same route naming a host twice (a cluster-local URL is also
            // one of its cluster names): the first target stands.
            Some(existing) if existing.route == id => {}
            Some(_) => {
                // Routes are added in key order, so the owner is an earlier one.
                self.rejected.push(Rejection {
                    kind: Kind::Route,
                    object: route.key.clone(),
                    error: ObjectError::HostConflict {
                        owner: self.owner_of(&host),
                        host: host.into(),
                    },
                    outcome: Outcome::PartlyServed,
                });
            }
        }
    }

    fn owner_of(&self, host: &str) -> String {
        self.hosts
            .get(host)
            .map(|e| self.keys[e.route as usize].to_string())
            .unwrap_or_default()
    }

    fn revision(&mut self, ns: &str, name: &str) -> RevisionId {
        let key = ObjectKey::new(ns, name);
        if let Some(&id) = self.revision_ids.get(&key) {
            return id;
        }
        let namespace: Arc<str> = ns.into();
        let name: Arc<str> = name.into();
        let endpoints = self
            .endpoints
            .remove(&key)
            .unwrap_or_default()
            .into_iter()
            .map(|addr| Endpoint {
                addr,
                inflight: self
                    .counters
                    .get(&(namespace.clone(), name.clone(), addr))
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        let id = self.revisions.len() as RevisionId;
        self.revisions.push(Arc::new(Revision {
            namespace_header: dns_header(&namespace),
            name_header: dns_header(&name),
            namespace,
            name,
            endpoints,
        }));
        self.revision_ids.insert(key, id);
        id
    }
}
