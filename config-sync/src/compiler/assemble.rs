//! The compiler proper: routed objects in the intermediate form become host
//! entries (each host claimed by the first object to ask), backends with
//! their endpoints, and route entries; shared by full builds and patches.

use std::net::SocketAddr;
use std::sync::Arc;

use dataplane::affinity::{Affinity, Sticky};
use dataplane::endpoints::{endpoint_addrs, PortSelector};
use dataplane::health::EndpointState;
use dataplane::responses::Responses;
use dataplane::table::{
    Backend, BackendId, BackendKind, Dispatch, Endpoint, HostEntry, HostMap, PathRule, Pick,
    RouteInfo, Split, Table, Target,
};

use super::endpoints::{EndpointIndex, FastMap};
use crate::error::{ObjectError, Outcome, Rejection};
use crate::ir;
use crate::model::{Kind, ObjectKey};

/// The live table's counters, which the next table takes over.
#[derive(Default)]
pub(crate) struct Carried<'p> {
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

pub(crate) struct Compiler<'a, 'p> {
    pub(crate) hosts: HostMap,
    pub(crate) backends: Vec<Arc<Backend>>,
    pub(crate) backend_ids: FastMap<ir::Backend, BackendId>,
    /// The live table, when patching it: its backends are reused.
    pub(crate) existing: Option<&'a Table>,
    /// Reused to write endpoint index keys.
    pub(crate) key: String,
    pub(crate) endpoints: &'a EndpointIndex,
    pub(crate) counters: &'a Carried<'p>,
    pub(crate) rejected: &'a mut Vec<Rejection>,
    /// Kind and key of the objects added so far, by id.
    pub(crate) owners: Vec<(Kind, Arc<ObjectKey>)>,
}

impl<'a> Compiler<'a, '_> {
    pub(crate) fn add(&mut self, id: u32, ing: &ir::Ingress, last_good: bool) -> RouteInfo {
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
    pub(crate) fn compile(
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
            authorize: ing.authorize,
            labels: ing.labels.clone(),
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
                acme: p.prefix.starts_with(dataplane::table::ACME_CHALLENGE),
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
                v.insert(host_entry(id, dispatch, host, ing));
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
        let http2 = slices.is_some_and(|s| dataplane::endpoints::speaks_http2(s, &port));
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
                            Arc::new(EndpointState::new(dataplane::health::now_millis()))
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

fn no_port() -> PortSelector {
    PortSelector {
        name: "".into(),
        number: None,
        h2: false,
        tls: false,
        or_http2: false,
    }
}

/// The entry of `host`, a host of `ing` (route `route`), taking `dispatch`.
pub(crate) fn host_entry(
    route: dataplane::table::RouteId,
    dispatch: &Dispatch,
    host: &ir::Host,
    ing: &ir::Ingress,
) -> HostEntry {
    HostEntry {
        route,
        dispatch: dispatch.clone(),
        internal_only: host.internal_only,
        cluster_name: host.cluster_name,
        hashed: ing.hash.is_some(),
        https_redirect: host.https_redirect,
    }
}
