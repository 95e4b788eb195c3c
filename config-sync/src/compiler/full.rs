//! The full build: a pure function from a snapshot, plus the last good
//! version of each routed object, to a table. Routes and KIngresses are
//! validated and lowered into the intermediate form, then compiled.

use std::sync::Arc;
use std::time::SystemTime;

use dataplane::table::{BackendId, BackendKind, HostMap, RouteInfo, Table};

use super::assemble::{Carried, Compiler};
use super::endpoints::{each_slice_key, index_endpoints, FastMap};
use super::last_good::{Good, LastGood};
use super::options::BuildOptions;
use crate::error::{ObjectError, Outcome, Rejection};
use crate::ir;
use crate::lower::kingress::{self, service_index};
use crate::lower::route::{lower_route, validate_route, ValidRoute};
use crate::model::{self, EndpointSlice, KIngress, Kind, ObjectKey, Route, Service, Snapshot};

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
        labels: _,
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
        match validate_route(route, &opts.cluster_domain) {
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
        let result = kingress::lower(ing, &services, &lower_opts).and_then(|valid| {
            hold_for_endpoints(valid, last, |k| sliced.contains(k)).map_err(|w| {
                next_good
                    .waiting
                    .insert(Arc::new(ing.key()), w.endpoint_key.clone());
                ObjectError::from(w)
            })
        });
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

/// A changed KIngress held at its last good version: the endpoint index key
/// whose EndpointSlices it waits for, and that key's Service.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) endpoint_key: Box<str>,
    pub(crate) service: String,
}

impl From<Waiting> for ObjectError {
    fn from(w: Waiting) -> Self {
        ObjectError::NoEndpoints { service: w.service }
    }
}

/// `ing`, or why a changed KIngress should keep serving its last good
/// version: it names a Service whose EndpointSlices have not arrived yet.
/// Serving it now would answer 503 for a backend that is about to be there;
/// Knative marks a KIngress Ready only after the change is served, so the wait
/// costs nothing. A KIngress with no last good version is served at once (503
/// until then).
pub(crate) fn hold_for_endpoints(
    ing: ir::Ingress,
    last_good: Option<&Good>,
    has_slices: impl Fn(&str) -> bool,
) -> Result<ir::Ingress, Waiting> {
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
                return Err(Waiting {
                    endpoint_key: key.into(),
                    service: format!("{namespace}/{name}"),
                });
            }
        }
    }
    Ok(ing)
}
