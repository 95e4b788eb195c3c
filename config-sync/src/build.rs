//! The table builder: a pure function from a snapshot (Routes, KIngresses,
//! Services, EndpointSlices), plus the last good version of each routed
//! object, to a [`Table`]. Routes and KIngresses are first lowered into the
//! one intermediate form of [`crate::ir`]; [`Compiler`] turns that into the table.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};

use crate::affinity::{Affinity, Sticky};
use crate::error::{ObjectError, Outcome, Rejection};
use crate::health::EndpointState;
use crate::host;
use crate::ir::{self, PortSelector};
use crate::kingress::{self, KIngress, LowerOptions, Services};
use crate::model::{
    self, EndpointSlice, Kind, ObjectKey, Route, Service, Snapshot, REVISION_LABEL,
    SERVICE_NAME_LABEL, SERVICE_TYPE_LABEL, VISIBILITY_LABEL,
};
use crate::responses::Responses;
use crate::table::{
    endpoint_addrs, Backend, BackendId, BackendKind, Dispatch, Endpoint, HostEntry, HostMap,
    PathRule, Pick, RouteInfo, SliceEndpoints, Split, Table, Target,
};

/// `Knative-Serving-Revision`: set on every request sent to a revision.
pub const REVISION_HEADER: HeaderName = HeaderName::from_static("knative-serving-revision");
/// `Knative-Serving-Namespace`: set on every request sent to a revision.
pub const NAMESPACE_HEADER: HeaderName = HeaderName::from_static("knative-serving-namespace");

/// Cluster settings the builder needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Kubernetes cluster domain (`cluster.local`), for `x.ns.svc.<domain>` names.
    pub cluster_domain: String,
    /// The gateway's internal Service: an ExternalName Service pointing at it
    /// is dispatched internally, without a network hop (DomainMapping).
    pub internal_service: Option<ObjectKey>,
    /// The Secret of the certificate for names no KIngress has one for.
    pub default_certificate: Option<ObjectKey>,
    /// `--cluster-cert-secret`: the internal HTTPS listener's certificate
    /// for cluster-local names no KIngress has one for.
    pub cluster_certificate: Option<ObjectKey>,
    /// Knative's system namespace: where the trust bundle for `https`
    /// backends lives ([`crate::trust`]).
    pub system_namespace: String,
}

impl BuildOptions {
    /// What lowering a KIngress needs of these options, and whether
    /// anything is `trusted` for `https` backends.
    fn lower_options(&self, trusted: bool) -> LowerOptions<'_> {
        LowerOptions {
            cluster_domain: &self.cluster_domain,
            internal_service: self.internal_service.as_ref(),
            untrusted: (!trusted).then_some(self.system_namespace.as_str()),
        }
    }
}

/// Services by `(namespace, name)`, for lowering KIngresses.
fn service_index(services: &[Service]) -> Services<'_> {
    services
        .iter()
        .map(|s| {
            let m = &s.metadata;
            let key = (
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or_default(),
            );
            (key, s)
        })
        .collect()
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            internal_service: None,
            default_certificate: None,
            cluster_certificate: None,
            system_namespace: crate::trust::DEFAULT_SYSTEM_NAMESPACE.into(),
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
    /// Sticky canary settings, from its annotations.
    pub affinity: Option<Arc<crate::affinity::Affinity>>,
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

/// The last valid version of every Route and KIngress seen, so that a broken
/// update keeps serving what worked.
#[derive(Debug, Clone, Default)]
pub struct LastGood {
    routes: HashMap<(Kind, Arc<ObjectKey>), Good>,
    /// TLS Secrets as last parsed.
    certs: crate::tls::Parsed,
    /// The trust bundle as last parsed.
    trust: crate::trust::Parsed,
}

/// A last good version, in its most compact form: a Route as validated (its
/// lowered form is twice the size), a KIngress as decoded, shared with the
/// source's store while it is current. Either is lowered again only when it
/// has to serve (a KIngress against the Services of that moment).
#[derive(Debug, Clone)]
enum Good {
    Route(Arc<ValidRoute>),
    KIngress(Arc<KIngress>),
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
    let affinity = crate::affinity::of(&route.metadata)?.map(Arc::new);
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
        affinity,
    })
}

/// Lower a validated Route into the intermediate form: its URL's host and its
/// `name.ns` cluster name get the split; each tag's host and cluster name get
/// its revision. Every split sets the revision's Knative headers and goes to
/// the activator when the revision has no ready endpoint.
pub fn lower_route(route: &ValidRoute) -> ir::Ingress {
    let ns = route.key.namespace.as_str();
    let name = route.key.name.as_str();
    let namespace: Arc<str> = ns.into();
    let namespace_value = dns_header(ns);
    // Each revision once: its backend and headers are shared by its split and tag.
    let mut revisions: Vec<(Arc<str>, ir::Backend, ir::SharedHeaders)> = Vec::new();
    let mut revision = |rev: &str| -> (ir::Backend, ir::SharedHeaders) {
        if let Some((_, b, h)) = revisions.iter().find(|r| &*r.0 == rev) {
            return (b.clone(), h.clone());
        }
        let name: Arc<str> = rev.into();
        let backend = ir::Backend::Pods {
            namespace: namespace.clone(),
            name: name.clone(),
            revision: true,
            port: PortSelector {
                name: http_port_name(),
                number: None,
                h2: false,
                tls: false,
                or_http2: true,
            },
        };
        let headers: ir::SharedHeaders = Arc::new([
            (REVISION_HEADER, dns_header(rev)),
            (NAMESPACE_HEADER, namespace_value.clone()),
        ]);
        revisions.push((name, backend.clone(), headers.clone()));
        (backend, headers)
    };
    let mut split = |rev: &str, percent: u32| {
        let (backend, headers) = revision(rev);
        ir::Split {
            backend,
            percent,
            append: Some(headers),
            activator: true,
        }
    };
    let rule = |hosts: Vec<ir::Host>, splits: Vec<ir::Split>| ir::Rule {
        hosts,
        paths: vec![ir::Path {
            prefix: String::new(),
            headers: Vec::new(),
            append: Vec::new(),
            rewrite_host: None,
            splits,
        }],
    };
    let public = |host: &str| ir::Host {
        name: host.to_owned(),
        internal_only: route.cluster_local,
        cluster_name: false,
        https_redirect: false,
    };
    let cluster_name = |short: String| ir::Host {
        name: format!("{short}.{ns}"),
        internal_only: true,
        cluster_name: true,
        https_redirect: false,
    };
    let main: Vec<ir::Split> = route
        .split
        .iter()
        .map(|(rev, pct)| split(rev, *pct))
        .collect();
    let mut rules = Vec::with_capacity(1 + route.tags.len());
    rules.push(rule(
        vec![public(&route.host), cluster_name(name.to_owned())],
        main,
    ));
    let mut tags = Vec::with_capacity(route.tags.len());
    for tag in &route.tags {
        let mut hosts: Vec<ir::Host> = Vec::with_capacity(2);
        hosts.extend(tag.host.as_deref().map(public));
        hosts.push(cluster_name(format!("{}-{name}", tag.tag)));
        let to = split(&tag.revision, 100);
        tags.push((tag.tag.clone(), to.backend.clone()));
        rules.push(rule(hosts, vec![to]));
    }
    ir::Ingress {
        kind: Kind::Route,
        key: route.key.clone(),
        cluster_local: route.cluster_local,
        hash: None,
        rules,
        tags,
        affinity: route.affinity.clone(),
    }
}

/// `http`, shared by every revision backend instead of a copy each.
fn http_port_name() -> Arc<str> {
    static HTTP: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "http".into());
    HTTP.clone()
}

/// The endpoint index keys a slice feeds: its revision's (a private revision
/// slice) and its Service's (`kubernetes.io/service-name`).
pub fn slice_keys(slice: &EndpointSlice) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    each_slice_key(slice, &mut String::new(), |k| keys.push(k.to_owned()));
    keys
}

/// [`slice_keys`], each written into `buf` in turn: no allocation per key.
fn each_slice_key(slice: &EndpointSlice, buf: &mut String, mut f: impl FnMut(&str)) {
    let meta = &slice.metadata;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    if let (Some(rev), Some("Private")) =
        (meta.label(REVISION_LABEL), meta.label(SERVICE_TYPE_LABEL))
    {
        f(ir::write_key(buf, true, ns, rev));
    }
    if let Some(svc) = meta.label(SERVICE_NAME_LABEL) {
        f(ir::write_key(buf, false, ns, svc));
    }
}

/// Whether a slice is a revision's private slice.
fn is_private_revision(slice: &EndpointSlice) -> bool {
    let meta = &slice.metadata;
    meta.label(REVISION_LABEL).is_some() && meta.label(SERVICE_TYPE_LABEL) == Some("Private")
}

/// The port named `http` (queue-proxy's), or else `http2` (a revision that
/// speaks h2c), if the slice has a valid one.
pub fn http_port(slice: &EndpointSlice) -> Option<u16> {
    let named = |want: &str| {
        slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(want))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p > 0)
    };
    named("http").or_else(|| named(ir::HTTP2_PORT))
}

/// The first address of every ready endpoint, on `port`. An address that is not
/// an IP is skipped and reported in `rejected`.
pub fn ready_addresses(
    slice: &EndpointSlice,
    port: u16,
    rejected: &mut Vec<Rejection>,
) -> Vec<SocketAddr> {
    ready_ips(slice, rejected)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

fn ready_ips(slice: &EndpointSlice, rejected: &mut Vec<Rejection>) -> Vec<IpAddr> {
    let mut addrs = Vec::new();
    for (index, ep) in slice.endpoints.iter().flatten().enumerate() {
        if !ep.is_ready() {
            continue;
        }
        let Some(first) = ep.addresses.first() else {
            continue;
        };
        match first.parse::<IpAddr>() {
            Ok(ip) => addrs.push(ip),
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

/// The endpoint index keys of one slice and what it contributes to them.
/// `Ok(None)` for a slice that feeds no key (not a revision's or a Service's).
/// Bad endpoints are skipped and reported in `rejected`.
pub fn slice_endpoints(
    slice: &EndpointSlice,
    rejected: &mut Vec<Rejection>,
) -> Result<Option<(Vec<String>, SliceEndpoints)>, ObjectError> {
    let keys = slice_keys(slice);
    if keys.is_empty() {
        return Ok(None);
    }
    let found = contribution(slice, rejected, &mut |name| name.into())?;
    Ok(Some((keys, found)))
}

/// What a slice that feeds some key contributes; `port_name` makes the shared
/// form of a port name.
fn contribution(
    slice: &EndpointSlice,
    rejected: &mut Vec<Rejection>,
    port_name: &mut dyn FnMut(&str) -> Arc<str>,
) -> Result<SliceEndpoints, ObjectError> {
    match slice.address_type.as_deref() {
        Some("IPv4") | Some("IPv6") | None => {}
        Some(other) => return Err(ObjectError::AddressType(other.into())),
    }
    if is_private_revision(slice) && http_port(slice).is_none() {
        return Err(ObjectError::NoHttpPort);
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let number = u16::try_from(p.port?).ok().filter(|&n| n > 0)?;
            Some((port_name(p.name.as_deref().unwrap_or_default()), number))
        })
        .collect();
    Ok(SliceEndpoints {
        ports,
        addrs: ready_ips(slice, rejected),
    })
}

/// Hash map with the fast hasher used throughout the build.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What each endpoint index key's slices contribute.
pub type EndpointIndex = FastMap<Box<str>, Vec<SliceEndpoints>>;

/// Index every slice by the keys it feeds. The index owns its data, so the
/// slices can be freed before the table is filled.
pub fn index_endpoints(slices: &[EndpointSlice], rejected: &mut Vec<Rejection>) -> EndpointIndex {
    let mut index = EndpointIndex::with_capacity_and_hasher(slices.len(), Default::default());
    // Port names repeat across slices (`http`, `http2`, ...): one copy each.
    let mut names: FastMap<Box<str>, Arc<str>> = FastMap::default();
    let mut port_name = |name: &str| match names.get(name) {
        Some(shared) => shared.clone(),
        None => {
            let shared: Arc<str> = name.into();
            names.insert(name.into(), shared.clone());
            shared
        }
    };
    let mut buf = String::new();
    let mut keys: Vec<Box<str>> = Vec::with_capacity(2);
    for slice in slices {
        keys.clear();
        each_slice_key(slice, &mut buf, |k| keys.push(k.into()));
        if keys.is_empty() {
            continue;
        }
        match contribution(slice, rejected, &mut port_name) {
            Ok(found) => {
                let last = keys.pop().expect("checked not empty");
                for key in keys.drain(..) {
                    index.entry(key).or_default().push(found.clone());
                }
                index.entry(last).or_default().push(found);
            }
            Err(error) => rejected.push(Rejection::new(
                Kind::EndpointSlice,
                model::key(&slice.metadata),
                error,
            )),
        }
    }
    index
}

/// Build a table from a snapshot. `last_good` supplies the previous valid
/// version of Routes and KIngresses that are now invalid; `prev` (the live
/// table) lends its in-flight and response counters so they carry across the
/// swap. Returns the table and the updated last-good set.
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
        kingresses,
        services,
        secrets,
        config_maps,
        mut rejected,
        class: _,
    } = snapshot;
    // First: whether `https` backends can be reached decides which
    // KIngresses are valid.
    let trust = crate::trust::build(
        &secrets,
        &config_maps,
        &opts.system_namespace,
        &last_good.trust,
        &mut rejected,
    );
    let sliced = if kingresses.is_empty() {
        SlicedServices::default()
    } else {
        sliced_services(&slices)
    };
    // Slices and the live table's counters do not depend on the routed objects:
    // index them on a second thread while those are validated (a quarter of a build).
    let ((endpoints, slice_rejected, counters), (mut rejected, routes, next_good)) =
        std::thread::scope(|scope| {
            let side = scope.spawn(|| {
                let mut slice_rejected = Vec::new();
                let endpoints = index_endpoints(&slices, &mut slice_rejected);
                retire(slices);
                let counters = prev.map(Carried::from).unwrap_or_default();
                (endpoints, slice_rejected, counters)
            });
            let validated = validate_all(
                &decoded,
                &kingresses,
                &services,
                &sliced,
                rejected,
                opts,
                last_good,
                trust.trust().is_some(),
            );
            let side = side.join().expect("indexing endpoints does not panic");
            (side, validated)
        });
    let (certs, parsed) = crate::tls::build(
        &kingresses,
        &secrets,
        crate::tls::Defaults {
            any: opts.default_certificate.as_ref(),
            cluster_local: opts.cluster_certificate.as_ref(),
        },
        &last_good.certs,
        &mut rejected,
    );
    let mut next_good = next_good;
    next_good.certs = parsed;
    let trusted = trust.trust().cloned();
    next_good.trust = trust;
    retire((decoded, kingresses, services, secrets, config_maps));
    rejected.extend(slice_rejected);
    let mut hosts = HostMap::default();
    hosts.reserve(routes.iter().map(|(r, _)| r.hosts()).sum());
    let mut compiler = Compiler {
        hosts,
        backends: Vec::new(),
        backend_ids: FastMap::default(),
        existing: None,
        key: String::new(),
        endpoints: &endpoints,
        counters: &counters,
        rejected: &mut rejected,
        owners: Vec::with_capacity(routes.len()),
    };
    let infos: Vec<RouteInfo> = routes
        .iter()
        .enumerate()
        .map(|(id, (route, last_good))| compiler.add(id as u32, &route.lowered(), *last_good))
        .collect();
    let Compiler {
        hosts, backends, ..
    } = compiler;
    let cluster_names = hosts.values().filter(|e| e.cluster_name).count();
    let mut backend_index: FastMap<Box<str>, Vec<BackendId>> = FastMap::default();
    for (id, b) in backends.iter().enumerate() {
        if b.kind == BackendKind::Pods {
            backend_index
                .entry(b.key.clone())
                .or_default()
                .push(id as BackendId);
        }
    }
    let table = Table {
        generation,
        built_at: Some(SystemTime::now()),
        host_count: hosts.len() + 2 * cluster_names,
        hosts: Arc::new(hosts),
        svc_suffix: format!(".svc.{}", opts.cluster_domain).into_boxed_str(),
        routes: Arc::new(infos),
        backends,
        backend_index: Arc::new(backend_index),
        rejected: Arc::new(rejected),
        certs: Arc::new(certs),
        trust: trusted,
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

/// Rejections, routed objects in the order they claim hosts (each flagged when
/// it is a last good version), and the new last-good set.
type Validated = (Vec<Rejection>, Vec<(Ready, bool)>, LastGood);

/// A valid object on its way into the table. Routes are lowered one at a
/// time while the table is filled, so that the lowered forms of all of them
/// (twice their validated size) are never alive together.
enum Ready {
    Route(Arc<ValidRoute>),
    Lowered(Arc<ir::Ingress>),
}

impl Ready {
    fn kind(&self) -> Kind {
        match self {
            Ready::Route(_) => Kind::Route,
            Ready::Lowered(ing) => ing.kind,
        }
    }

    fn key(&self) -> &Arc<ObjectKey> {
        match self {
            Ready::Route(r) => &r.key,
            Ready::Lowered(ing) => &ing.key,
        }
    }

    /// How many hosts it names, to size the host map.
    fn hosts(&self) -> usize {
        match self {
            // Its URL and cluster name, and both for each tag.
            Ready::Route(r) => 2 + 2 * r.tags.len(),
            Ready::Lowered(ing) => ing.rules.iter().map(|r| r.hosts.len()).sum(),
        }
    }

    fn lowered(&self) -> std::borrow::Cow<'_, ir::Ingress> {
        match self {
            Ready::Route(r) => std::borrow::Cow::Owned(lower_route(r)),
            Ready::Lowered(ing) => std::borrow::Cow::Borrowed(ing),
        }
    }
}

/// Free `garbage` on a thread of its own: a decoded snapshot is hundreds of
/// thousands of allocations, and the build need not wait for them.
fn retire<T: Send + 'static>(garbage: T) {
    // If no thread can be started, the closure, and the garbage in it, is dropped here.
    let _ = std::thread::Builder::new()
        .name("free-snapshot".into())
        .spawn(move || drop(garbage));
}

/// Validate and lower every Route and KIngress, falling back to last good
/// versions of the invalid ones; `trusted`: whether `https` backends can be
/// reached (a trust bundle exists).
#[allow(clippy::too_many_arguments)] // the build's inputs, each read once
fn validate_all(
    routes: &[Route],
    kingresses: &[Arc<KIngress>],
    services: &[Service],
    sliced: &SlicedServices,
    mut rejected: Vec<Rejection>,
    opts: &BuildOptions,
    last_good: &LastGood,
    trusted: bool,
) -> Validated {
    let mut next_good = LastGood::default();
    // (kind order, creation time, key): Routes by namespace/name; among
    // KIngresses the oldest claims a contested host first, as Knative expects.
    let mut lowered: Vec<((u8, String), Ready, bool)> =
        Vec::with_capacity(routes.len() + kingresses.len());
    for route in routes {
        match validate_route(route, opts) {
            Ok(valid) => {
                let valid = Arc::new(valid);
                next_good
                    .routes
                    .insert((Kind::Route, valid.key.clone()), Good::Route(valid.clone()));
                lowered.push(((0, String::new()), Ready::Route(valid), false));
            }
            Err(error) => rejected.push(Rejection::new(
                Kind::Route,
                model::key(&route.metadata),
                error,
            )),
        }
    }
    let services = service_index(services);
    let lower_opts = opts.lower_options(trusted);
    for ing in kingresses {
        let created = ing.metadata.creation_timestamp.clone().unwrap_or_default();
        let last = last_good.routes.get(&(Kind::KIngress, Arc::new(ing.key())));
        let result = kingress::lower(ing, &services, &lower_opts)
            .and_then(|valid| hold_for_endpoints(valid, last, |k| sliced.contains(k)));
        match result {
            Ok(valid) => {
                let valid = Arc::new(valid);
                next_good.routes.insert(
                    (Kind::KIngress, valid.key.clone()),
                    Good::KIngress(ing.clone()),
                );
                lowered.push(((1, created), Ready::Lowered(valid), false));
            }
            Err(error) => rejected.push(Rejection::new(Kind::KIngress, ing.key(), error)),
        }
    }
    // Invalid objects (including undecodable ones, and KIngresses whose new
    // version names a Service that has not arrived yet: watches deliver in
    // any order) fall back to their last good version.
    for r in rejected
        .iter_mut()
        .filter(|r| matches!(r.kind, Kind::Route | Kind::KIngress))
    {
        let key = (r.kind, Arc::new(r.object.clone()));
        if next_good.routes.contains_key(&key) {
            continue;
        }
        let Some(good) = last_good.routes.get(&key) else {
            continue;
        };
        let (order, ing) = match good {
            Good::Route(route) => ((0, String::new()), Ready::Route(route.clone())),
            Good::KIngress(old) => match kingress::lower(old, &services, &lower_opts) {
                Ok(ing) => {
                    let created = old.metadata.creation_timestamp.clone().unwrap_or_default();
                    ((1, created), Ready::Lowered(Arc::new(ing)))
                }
                // Its Services are gone too: nothing of it can serve.
                Err(_) => continue,
            },
        };
        r.outcome = Outcome::LastGood;
        next_good.routes.insert(key, good.clone());
        lowered.push((order, ing, true));
    }
    // Host conflicts are settled the same way every time. An object listed
    // twice: the later one wins, as in the last-good set.
    lowered.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key().cmp(b.1.key())));
    lowered.dedup_by(|later, earlier| {
        let same = later.1.kind() == earlier.1.kind() && later.1.key() == earlier.1.key();
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
    let routes = lowered.into_iter().map(|(_, r, lg)| (r, lg)).collect();
    (rejected, routes, next_good)
}

/// Endpoint index keys of the Services (and revisions) with at least one
/// EndpointSlice, valid or not.
type SlicedServices = std::collections::HashSet<Box<str>, foldhash::fast::RandomState>;

fn sliced_services(slices: &[EndpointSlice]) -> SlicedServices {
    let mut sliced = SlicedServices::default();
    let mut buf = String::new();
    for slice in slices {
        each_slice_key(slice, &mut buf, |k| {
            if !sliced.contains(k) {
                sliced.insert(k.into());
            }
        });
    }
    sliced
}

/// `ing`, or why a changed KIngress should keep serving its last good
/// version: it names a Service whose EndpointSlices have not arrived yet.
/// Serving it now would answer 503 for a backend that is about to be there;
/// Knative marks a KIngress Ready only after the change is served, so the wait
/// costs nothing. A KIngress with no last good version is served at once (503
/// until then).
fn hold_for_endpoints(
    ing: ir::Ingress,
    last_good: Option<&Good>,
    has_slices: impl Fn(&str) -> bool,
) -> Result<ir::Ingress, ObjectError> {
    let Some(Good::KIngress(old)) = last_good else {
        return Ok(ing);
    };
    if ing.hash.as_ref().map(|h| h.as_bytes()) == Some(old.hash.as_bytes()) {
        return Ok(ing);
    }
    let mut buf = String::new();
    let backends = ing
        .rules
        .iter()
        .flat_map(|r| &r.paths)
        .flat_map(|p| &p.splits)
        .map(|s| &s.backend);
    for backend in backends {
        if let (
            Some(key),
            ir::Backend::Pods {
                namespace, name, ..
            },
        ) = (backend.index_key(&mut buf), backend)
        {
            if !has_slices(key) {
                return Err(ObjectError::NoEndpoints {
                    service: format!("{namespace}/{name}"),
                });
            }
        }
    }
    Ok(ing)
}

/// The live table's counters, which the next table takes over.
#[derive(Default)]
struct Carried<'p> {
    /// Endpoint states by endpoint index key and endpoint address.
    endpoints: FastMap<(&'p str, SocketAddr), &'p Arc<EndpointState>>,
    /// Endpoint index keys that had a ready endpoint: a new endpoint of one
    /// warms up (slow start). Without a live table, none does.
    serving: std::collections::HashSet<&'p str, foldhash::fast::RandomState>,
    /// Response counts by route namespace, route name and backend name.
    responses: FastMap<(&'p str, &'p str, &'p str), &'p Arc<Responses>>,
}

impl<'p> From<&'p Table> for Carried<'p> {
    fn from(table: &'p Table) -> Self {
        let endpoints = table
            .backends
            .iter()
            .flat_map(|b| b.endpoints.iter().map(|e| ((&*b.key, e.addr), &e.state)))
            .collect();
        let serving = table
            .backends
            .iter()
            .filter(|b| !b.endpoints.is_empty())
            .map(|b| &*b.key)
            .collect();
        let responses = table
            .routes
            .iter()
            .flat_map(|route| {
                route.responses.iter().map(|(b, counts)| {
                    let key = (
                        route.key.namespace.as_str(),
                        route.key.name.as_str(),
                        &*table.backend(*b).name,
                    );
                    (key, counts)
                })
            })
            .collect();
        Self {
            endpoints,
            serving,
            responses,
        }
    }
}

struct Compiler<'a, 'p> {
    hosts: HostMap,
    backends: Vec<Arc<Backend>>,
    backend_ids: FastMap<ir::Backend, BackendId>,
    /// The live table, when patching it: its backends are reused.
    existing: Option<&'a Table>,
    /// Reused to write endpoint index keys.
    key: String,
    endpoints: &'a EndpointIndex,
    counters: &'a Carried<'p>,
    rejected: &'a mut Vec<Rejection>,
    /// Kind and key of the objects added so far, by id.
    owners: Vec<(Kind, Arc<ObjectKey>)>,
}

impl<'a> Compiler<'a, '_> {
    fn add(&mut self, id: u32, ing: &ir::Ingress, last_good: bool) -> RouteInfo {
        self.owners.push((ing.kind, ing.key.clone()));
        let (info, dispatches) = self.compile(ing, last_good, None);
        for (rule, dispatch) in ing.rules.iter().zip(&dispatches) {
            for host in &rule.hosts {
                self.claim(host, id, ing, dispatch);
            }
        }
        info
    }

    /// The route entry of `ing` and the dispatch of each of its rules. Response
    /// counts come from `old` (the same route in the live table) when given,
    /// else from the carried counters.
    fn compile(
        &mut self,
        ing: &ir::Ingress,
        last_good: bool,
        old: Option<&RouteInfo>,
    ) -> (RouteInfo, Vec<Dispatch>) {
        let mut traffic = Vec::new();
        let mut dispatches = Vec::with_capacity(ing.rules.len());
        for (r, rule) in ing.rules.iter().enumerate() {
            let dispatch = self.dispatch(&rule.paths, ing.affinity.as_deref());
            if r == 0 {
                if let Some(target) = dispatch.default_target() {
                    traffic = target
                        .shares()
                        .into_iter()
                        .filter(|s| s.1 > 0)
                        .map(|(p, pct)| (p.backend, pct))
                        .collect();
                }
            }
            dispatches.push(dispatch);
        }
        let tags: Vec<(String, BackendId)> = ing
            .tags
            .iter()
            .map(|(tag, b)| (tag.clone(), self.backend(b)))
            .collect();
        let (ns, name) = (ing.key.namespace.as_str(), ing.key.name.as_str());
        let mut responses: Vec<(BackendId, Arc<Responses>)> = Vec::new();
        let used = ing
            .rules
            .iter()
            .flat_map(|r| &r.paths)
            .flat_map(|p| &p.splits)
            .map(|s| &s.backend);
        for backend in used {
            let id = self.backend(backend);
            if responses.iter().any(|r| r.0 == id) {
                continue;
            }
            let carried = match old {
                Some(old) => old.responses.iter().find(|r| r.0 == id).map(|r| &r.1),
                None => self
                    .counters
                    .responses
                    .get(&(ns, name, &*self.backends[id as usize].name))
                    .copied(),
            };
            responses.push((id, carried.map(Arc::clone).unwrap_or_default()));
        }
        let info = RouteInfo {
            kind: ing.kind,
            key: ing.key.clone(),
            cluster_local: ing.cluster_local,
            last_good,
            traffic,
            tags,
            hash: ing.hash.clone(),
            responses,
            affinity: ing.affinity.clone(),
        };
        (info, dispatches)
    }

    /// A catch-all path that sets nothing of its own goes straight to its
    /// split; anything else is matched path by path.
    fn dispatch(&mut self, paths: &[ir::Path], affinity: Option<&Affinity>) -> Dispatch {
        if let [only] = paths {
            if only.prefix.is_empty()
                && only.headers.is_empty()
                && only.append.is_empty()
                && only.rewrite_host.is_none()
            {
                return Dispatch::Direct(self.target(&only.splits, affinity));
            }
        }
        let rules: Vec<PathRule> = paths
            .iter()
            .map(|p| PathRule {
                prefix: p.prefix.as_str().into(),
                headers: p.headers.clone().into_boxed_slice(),
                append: (!p.append.is_empty()).then(|| p.append.as_slice().into()),
                rewrite_host: p.rewrite_host.clone(),
                target: self.target(&p.splits, affinity),
            })
            .collect();
        Dispatch::Paths(rules.into())
    }

    fn target(&mut self, splits: &[ir::Split], affinity: Option<&Affinity>) -> Target {
        let mut picks: Vec<(Pick, u32)> = splits
            .iter()
            .map(|s| {
                let pick = Pick {
                    backend: self.backend(&s.backend),
                    // Shared with every other split that sets the same headers.
                    headers: s.append.clone(),
                    activator: s.activator,
                };
                (pick, s.percent)
            })
            .collect();
        // 0% ways registered their backends above (tags reach them), but
        // are never picked.
        picks.retain(|p| p.1 > 0);
        match picks.len() {
            1 => Target::One(picks.swap_remove(0).0),
            _ => {
                // A sticky split's cookie names the revision (or Service).
                let sticky = affinity.map(|a| {
                    let names = picks
                        .iter()
                        .map(|(p, _)| self.backends[p.backend as usize].name.as_ref().into())
                        .collect();
                    Sticky::new(a, names)
                });
                Target::Split(Arc::new(Split::new(picks, sticky)))
            }
        }
    }

    /// Give `host` to route `id`. Hosts arrive normalised: URLs through
    /// [`host::of_url`], KIngress hosts through [`host::normalize_owned`],
    /// cluster names from validated lower-case DNS names.
    fn claim(&mut self, host: &ir::Host, id: u32, ing: &ir::Ingress, dispatch: &Dispatch) {
        use std::collections::hash_map::Entry;
        let owner = match self.hosts.entry(host.name.as_str().into()) {
            Entry::Vacant(v) => {
                v.insert(HostEntry {
                    route: id,
                    dispatch: dispatch.clone(),
                    internal_only: host.internal_only,
                    cluster_name: host.cluster_name,
                    hashed: ing.hash.is_some(),
                    https_redirect: host.https_redirect,
                });
                return;
            }
            // The same object naming a host twice (a cluster-local URL is also
            // one of its cluster names; a host in two rules): the first stands.
            Entry::Occupied(o) if o.get().route == id => return,
            Entry::Occupied(o) => (o.get().route, o.key().to_string()),
        };
        // Objects are added in claim order, so the owner is an earlier one.
        let (kind, key) = &self.owners[owner.0 as usize];
        self.rejected.push(Rejection {
            kind: ing.kind,
            object: (*ing.key).clone(),
            error: ObjectError::HostConflict {
                owner: format!("{kind} {key}"),
                host: owner.1,
            },
            outcome: Outcome::PartlyServed,
        });
    }

    fn backend(&mut self, backend: &ir::Backend) -> BackendId {
        if let Some(&id) = self.backend_ids.get(backend) {
            return id;
        }
        if let Some(id) = self.existing.and_then(|t| find_backend(t, backend)) {
            self.backend_ids.insert(backend.clone(), id);
            return id;
        }
        let mut buf = std::mem::take(&mut self.key);
        let key = backend.index_key(&mut buf).unwrap_or_default();
        // A Pods backend's names are the lowered form's, shared, not copied.
        let (namespace, name, port, kind): (Arc<str>, Arc<str>, _, _) = match backend {
            ir::Backend::Pods {
                namespace,
                name,
                port,
                ..
            } => (
                namespace.clone(),
                name.clone(),
                port.clone(),
                BackendKind::Pods,
            ),
            ir::Backend::Internal => (
                "".into(),
                "internal".into(),
                no_port(),
                BackendKind::Internal,
            ),
            ir::Backend::External {
                namespace,
                name,
                host,
                port,
            } => (
                namespace.as_str().into(),
                name.as_str().into(),
                no_port(),
                BackendKind::External(host.as_str().into(), *port),
            ),
        };
        let slices = self
            .endpoints
            .get(key)
            .filter(|_| kind == BackendKind::Pods);
        let http2 = slices.is_some_and(|s| crate::table::speaks_http2(s, &port));
        let endpoints = match slices {
            Some(slices) => endpoint_addrs(slices, &port)
                .into_iter()
                .map(|(addr, h2)| Endpoint {
                    addr,
                    h2,
                    state: match self.counters.endpoints.get(&(key, addr)) {
                        Some(state) => Arc::clone(state),
                        // New beside others that served: it warms up.
                        None if self.counters.serving.contains(key) => {
                            Arc::new(EndpointState::new(crate::health::now_millis()))
                        }
                        None => Arc::default(),
                    },
                })
                .collect(),
            _ => Vec::new(),
        };
        let id = self.backends.len() as BackendId;
        self.backends.push(Arc::new(Backend::new(
            namespace,
            name,
            key.into(),
            port,
            kind,
            endpoints,
            http2,
        )));
        self.key = buf;
        self.backend_ids.insert(backend.clone(), id);
        id
    }
}

/// The backend of `table` that `backend` describes, if it has one.
fn find_backend(table: &Table, backend: &ir::Backend) -> Option<BackendId> {
    match backend {
        ir::Backend::Pods { port, .. } => table
            .backends_of(backend.index_key(&mut String::new())?)
            .iter()
            .copied()
            .find(|&id| table.backend(id).port == *port),
        ir::Backend::Internal => table
            .backends
            .iter()
            .position(|b| b.kind == BackendKind::Internal)
            .map(|i| i as BackendId),
        ir::Backend::External { host, port, .. } => table
            .backends
            .iter()
            .position(
                |b| matches!(&b.kind, BackendKind::External(h, p) if **h == **host && p == port),
            )
            .map(|i| i as BackendId),
    }
}

/// Changed KIngresses, with what lowering them needs: the Services they name
/// and those Services' EndpointSlices.
#[derive(Debug, Default)]
pub struct KIngressUpdate {
    /// The new version of each changed KIngress (deletions take a full rebuild).
    pub kingresses: Vec<Arc<KIngress>>,
    /// The Services they name.
    pub services: Vec<Service>,
    /// The EndpointSlices of those Services.
    pub slices: Vec<EndpointSlice>,
}

/// Apply changed KIngresses to the live table without rebuilding it: only
/// they are lowered, and the table is patched where their hosts are. Returns
/// `None` when a patch cannot be exact and a full build is needed: a
/// KIngress whose hosts changed, or a new one naming a host already served.
/// `last_good` is updated only when a table is returned.
pub fn update_kingresses(
    prev: &Table,
    update: KIngressUpdate,
    opts: &BuildOptions,
    last_good: &mut LastGood,
    generation: u64,
) -> Option<Table> {
    let services = service_index(&update.services);
    let lower_opts = opts.lower_options(prev.trust.is_some());
    let mut rejected_now = Vec::new();
    let endpoints = index_endpoints(&update.slices, &mut rejected_now);
    // Lower each; what fails keeps its last good version, as in a full build.
    let mut lowered: Vec<(ObjectKey, Result<Arc<ir::Ingress>, ObjectError>)> = Vec::new();
    for ing in &update.kingresses {
        let key = ing.key();
        let last = last_good
            .routes
            .get(&(Kind::KIngress, Arc::new(key.clone())));
        let result = kingress::lower(ing, &services, &lower_opts)
            .and_then(|valid| hold_for_endpoints(valid, last, |k| endpoints.contains_key(k)))
            .map(Arc::new);
        lowered.push((key, result));
    }
    // Few KIngresses change at a time: a scan beats indexing 10,000 routes.
    let id_of = |key: &ObjectKey| {
        prev.routes
            .iter()
            .position(|r| r.kind == Kind::KIngress && *r.key == *key)
    };
    let ids: Vec<Option<usize>> = lowered.iter().map(|(key, _)| id_of(key)).collect();
    // Check every change can be patched exactly before touching anything.
    for (((key, result), id), source) in lowered.iter().zip(&ids).zip(&update.kingresses) {
        let Ok(ing) = result else { continue };
        match id {
            Some(id) => {
                let Good::KIngress(old) = last_good
                    .routes
                    .get(&(Kind::KIngress, Arc::new(key.clone())))?
                else {
                    return None;
                };
                // The table serves that version (not one from before it).
                if prev.routes[*id].hash.as_ref().map(|h| h.as_bytes()) != Some(old.hash.as_bytes())
                {
                    return None;
                }
                // Certificates come from Secrets, which a patch does not see.
                if old.spec.tls != source.spec.tls {
                    return None;
                }
                let old_hosts = kingress::hosts(old, &opts.cluster_domain).ok()?;
                if host_set(old_hosts.iter()) != host_set(ing.rules.iter().flat_map(|r| &r.hosts)) {
                    return None;
                }
            }
            None => {
                if !source.spec.tls.is_empty() {
                    return None;
                }
                let taken = ing
                    .rules
                    .iter()
                    .flat_map(|r| &r.hosts)
                    .any(|h| prev.lookup(&h.name).is_some());
                if taken {
                    return None;
                }
            }
        }
    }
    let counters = Carried::default();
    let mut rejected: Vec<Rejection> = rejected_now;
    let mut compiler = Compiler {
        hosts: (*prev.hosts).clone(),
        backends: prev.backends.clone(),
        backend_ids: FastMap::default(),
        existing: Some(prev),
        key: String::new(),
        endpoints: &endpoints,
        counters: &counters,
        rejected: &mut rejected,
        owners: Vec::new(),
    };
    let mut routes: Vec<RouteInfo> = (*prev.routes).clone();
    let mut next_good = Vec::new();
    let mut added_hosts = 0;
    let mut changed = Vec::new();
    for (((key, result), id), source) in lowered.iter().zip(&ids).zip(&update.kingresses) {
        changed.push(key.clone());
        let ing = match result {
            Ok(ing) => ing,
            Err(error) => {
                let outcome = if id.is_some() {
                    Outcome::LastGood
                } else {
                    Outcome::LeftOut
                };
                compiler.rejected.push(Rejection {
                    kind: Kind::KIngress,
                    object: key.clone(),
                    error: error.clone(),
                    outcome,
                });
                if let Some(id) = *id {
                    routes[id].last_good = true;
                }
                continue;
            }
        };
        next_good.push(source.clone());
        match *id {
            Some(id) => {
                let (info, dispatches) = compiler.compile(ing, false, Some(&prev.routes[id]));
                // The first rule naming a host owns it.
                let mut done: Vec<&str> = Vec::new();
                for (rule, dispatch) in ing.rules.iter().zip(dispatches) {
                    for host in &rule.hosts {
                        if done.contains(&host.name.as_str()) {
                            continue;
                        }
                        done.push(&host.name);
                        // Hosts lost to an older KIngress stay with it.
                        if let Some(entry) = compiler.hosts.get_mut(host.name.as_str()) {
                            if entry.route == id as u32 {
                                entry.dispatch = dispatch.clone();
                                entry.internal_only = host.internal_only;
                                entry.https_redirect = host.https_redirect;
                            }
                        }
                    }
                }
                routes[id] = info;
            }
            None => {
                let id = routes.len() as u32;
                let (info, dispatches) = compiler.compile(ing, false, None);
                for (rule, dispatch) in ing.rules.iter().zip(dispatches) {
                    for host in &rule.hosts {
                        let entry = HostEntry {
                            route: id,
                            dispatch: dispatch.clone(),
                            internal_only: host.internal_only,
                            cluster_name: host.cluster_name,
                            hashed: ing.hash.is_some(),
                            https_redirect: host.https_redirect,
                        };
                        // The first rule naming a host owns it.
                        if let std::collections::hash_map::Entry::Vacant(v) =
                            compiler.hosts.entry(host.name.as_str().into())
                        {
                            v.insert(entry);
                            added_hosts += 1;
                        }
                    }
                }
                routes.push(info);
            }
        }
    }
    let Compiler {
        hosts, backends, ..
    } = compiler;
    let backend_index = if backends.len() == prev.backends.len() {
        prev.backend_index.clone()
    } else {
        let mut index = (*prev.backend_index).clone();
        for (id, b) in backends.iter().enumerate().skip(prev.backends.len()) {
            if b.kind == BackendKind::Pods {
                index
                    .entry(b.key.clone())
                    .or_default()
                    .push(id as BackendId);
            }
        }
        Arc::new(index)
    };
    // Rejections of the changed KIngresses are replaced, but for host
    // conflicts, which stand while their hosts do, and missing certificate
    // Secrets, which stand while their `spec.tls` does (a patch is only made
    // when it did not change, and it does not read Secrets).
    let kept = prev.rejected.iter().filter(|r| {
        !(r.kind == Kind::KIngress
            && changed.contains(&r.object)
            && !matches!(
                r.error,
                ObjectError::HostConflict { .. } | ObjectError::NoSecret { .. }
            ))
    });
    let rejected = kept.cloned().chain(rejected).collect();
    for ing in next_good {
        last_good
            .routes
            .insert((Kind::KIngress, Arc::new(ing.key())), Good::KIngress(ing));
    }
    Some(Table {
        generation,
        built_at: Some(SystemTime::now()),
        hosts: Arc::new(hosts),
        svc_suffix: prev.svc_suffix.clone(),
        host_count: prev.host_count + added_hosts,
        routes: Arc::new(routes),
        backends,
        backend_index,
        rejected: Arc::new(rejected),
        certs: prev.certs.clone(),
        trust: prev.trust.clone(),
    })
}

/// Hosts with their visibility, in a comparable order.
fn host_set<'h>(hosts: impl Iterator<Item = &'h ir::Host>) -> Vec<(&'h str, bool, bool)> {
    let mut hosts: Vec<(&str, bool, bool)> = hosts
        .map(|h| (h.name.as_str(), h.internal_only, h.cluster_name))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts
}

fn no_port() -> PortSelector {
    PortSelector {
        name: "".into(),
        number: None,
        h2: false,
        tls: false,
        or_http2: false,
    }
}
