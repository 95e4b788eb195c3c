//! KIngress changes applied to the live table without a full build.

use std::sync::Arc;
use std::time::SystemTime;

use dataplane::table::{BackendId, BackendKind, RouteInfo, Table};

use super::assemble::{host_entry, Carried, Compiler};
use super::endpoints::{index_endpoints, FastMap};
use super::full::hold_for_endpoints;
use super::last_good::{Good, LastGood};
use super::options::BuildOptions;
use crate::error::{ObjectError, Outcome, Rejection};
use crate::ir;
use crate::lower::kingress::{self, service_index};
use crate::model::{EndpointSlice, KIngress, Kind, ObjectKey, Service};

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
    let mut waiting = Vec::new();
    for ing in &update.kingresses {
        let key = ing.key();
        let last = last_good
            .routes
            .get(&(Kind::KIngress, Arc::new(key.clone())));
        let result = kingress::lower(ing, &services, &lower_opts)
            .and_then(|valid| {
                hold_for_endpoints(valid, last, |k| endpoints.contains_key(k)).map_err(|w| {
                    waiting.push((key.clone(), w.endpoint_key.clone()));
                    ObjectError::from(w)
                })
            })
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
                        let entry = host_entry(id, &dispatch, host, ing);
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
    for key in &changed {
        last_good.waiting.remove(key);
    }
    for (key, endpoint_key) in waiting {
        last_good.waiting.insert(Arc::new(key), endpoint_key);
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
