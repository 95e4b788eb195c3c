//! Whether the table serves a KIngress as it asks: what the status writer
//! and the probe answers of `--source routes` go by.

use std::collections::HashMap;

use dataplane::table::{Dispatch, Table};

use crate::model::{KIngress, Kind};

/// Whether `table` routes every rule of `ing` as it asks (for `--source
/// routes`, where the table comes from Routes): the first host of each rule
/// resolves to exactly the first path's split.
pub fn is_served(ing: &KIngress, table: &Table) -> bool {
    ing.spec.rules.iter().all(|rule| {
        let Some(host) = rule.hosts.first() else {
            return true;
        };
        let Some(entry) = table.lookup(&host.to_ascii_lowercase()) else {
            return false;
        };
        let Some(target) = entry.dispatch.default_target() else {
            return false;
        };
        let mut served: Vec<(String, u32)> = target
            .shares()
            .into_iter()
            .map(|(p, pct)| (table.backend(p.backend).name.to_string(), pct))
            .collect();
        served.sort();
        let splits = rule
            .http
            .as_ref()
            .and_then(|h| h.paths.as_ref()?.first()?.splits.as_ref());
        let lone = splits.is_some_and(|s| s.len() == 1);
        let mut wanted: Vec<(String, u32)> = splits
            .into_iter()
            .flatten()
            .map(|s| {
                let pct = if lone && s.percent == 0 {
                    100
                } else {
                    s.percent
                };
                (s.service_name.clone(), pct.clamp(0, 100) as u32)
            })
            .filter(|(_, p)| *p > 0)
            .collect();
        wanted.sort();
        served == wanted
    })
}

/// Host → hash for every KIngress `table` serves (for `--source routes`): what
/// a probe is answered with. A KIngress whose newest version is not served yet
/// keeps the hash of the version that was (from `previous`).
pub fn probe_map<'a>(
    ingresses: impl Iterator<Item = &'a KIngress>,
    table: &Table,
    previous: &HashMap<String, String>,
) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for ing in ingresses {
        let served = is_served(ing, table);
        for host in ing.spec.rules.iter().flat_map(|r| &r.hosts) {
            let host = host.to_ascii_lowercase();
            let hash = if served {
                Some(&*ing.hash)
            } else {
                previous.get(&host).map(String::as_str)
            };
            if let Some(hash) = hash {
                map.insert(host, hash.to_owned());
            }
        }
    }
    map
}

/// Whether a KIngress's probe hosts all resolve, in `table`, to the KIngress
/// itself with its current hash (for `--source kingress`).
pub fn is_applied(ing: &KIngress, table: &Table) -> bool {
    let key = ing.key();
    ing.probe_hosts().all(|h| {
        table.lookup(&h.to_ascii_lowercase()).is_some_and(|e| {
            let route = table.route(e.route);
            route.kind == Kind::KIngress
                && *route.key == key
                && route.hash.as_ref().map(|v| v.as_bytes()) == Some(ing.hash.as_bytes())
                && matches!(e.dispatch, Dispatch::Paths(_) | Dispatch::Direct(_))
        })
    })
}
