//! Knative's KIngress (`networking.internal.knative.dev/v1alpha1` Ingress):
//! which ones this gateway owns (by class), the hash Knative's prober expects,
//! and whether a routing table already serves what a KIngress asks for.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::model::ObjectKey;
use crate::table::{Table, Target};

/// Annotation naming the ingress class that should implement a KIngress.
pub const CLASS_ANNOTATION: &str = "networking.knative.dev/ingress.class";
/// The class this gateway implements unless told otherwise.
pub const DEFAULT_CLASS: &str = "knative-gateway.ingress.networking.knative.dev";

/// A KIngress reduced to what the gateway checks.
#[derive(Debug, Clone, PartialEq)]
pub struct KIngress {
    /// `namespace/name` (named after its Route).
    pub key: ObjectKey,
    /// `metadata.generation`, echoed as `status.observedGeneration`.
    pub generation: i64,
    /// Hex SHA-256 of the spec, namespace and name: the `K-Network-Hash` value.
    pub hash: String,
    /// Per rule: its hosts and the `(revision, percent)` split of its first path.
    pub rules: Vec<Rule>,
    /// `status.observedGeneration` when its Ready condition is True.
    pub ready_generation: Option<i64>,
}

/// One rule of a KIngress.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Hosts of the rule.
    pub hosts: Vec<String>,
    /// `(serviceName, percent)` of the first path's splits, sorted.
    pub splits: Vec<(String, u32)>,
}

/// The class of a KIngress object, if annotated.
pub fn class_of(obj: &serde_json::Value) -> Option<&str> {
    obj["metadata"]["annotations"][CLASS_ANNOTATION].as_str()
}

/// Decode a KIngress of our class; `None` when it belongs to another class (or none).
pub fn decode(obj: &serde_json::Value, class: &str) -> Option<Result<KIngress, String>> {
    if class_of(obj) != Some(class) {
        return None;
    }
    let meta = &obj["metadata"];
    let key = ObjectKey::new(
        meta["namespace"].as_str().unwrap_or("default"),
        meta["name"].as_str().unwrap_or_default(),
    );
    Some(decode_spec(obj, key))
}

fn decode_spec(obj: &serde_json::Value, key: ObjectKey) -> Result<KIngress, String> {
    let spec = obj.get("spec").ok_or("spec is missing")?;
    // serde_json's maps are ordered by key: the same bytes on every replica.
    let mut bytes = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
    bytes.extend_from_slice(key.namespace.as_bytes());
    bytes.extend_from_slice(key.name.as_bytes());
    let hash = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut rules = Vec::new();
    for (i, rule) in spec["rules"]
        .as_array()
        .ok_or("spec.rules is missing")?
        .iter()
        .enumerate()
    {
        let hosts: Vec<String> = rule["hosts"]
            .as_array()
            .ok_or_else(|| format!("spec.rules[{i}].hosts is missing"))?
            .iter()
            .filter_map(|h| h.as_str().map(str::to_ascii_lowercase))
            .collect();
        let splits = rule["http"]["paths"][0]["splits"]
            .as_array()
            .ok_or_else(|| format!("spec.rules[{i}].http.paths[0].splits is missing"))?;
        let single = splits.len() == 1;
        let mut parsed: Vec<(String, u32)> = splits
            .iter()
            .map(|s| {
                let name = s["serviceName"].as_str().unwrap_or_default().to_owned();
                // A lone split without a percent takes everything.
                let pct = s["percent"]
                    .as_u64()
                    .unwrap_or(if single { 100 } else { 0 }) as u32;
                (name, pct)
            })
            .filter(|(_, p)| *p > 0)
            .collect();
        parsed.sort();
        rules.push(Rule {
            hosts,
            splits: parsed,
        });
    }
    let ready = obj["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    Ok(KIngress {
        key,
        generation: obj["metadata"]["generation"].as_i64().unwrap_or(0),
        hash,
        rules,
        ready_generation: ready.then(|| obj["status"]["observedGeneration"].as_i64().unwrap_or(0)),
    })
}

/// Whether `table` routes every rule of `ing` as it asks: the first host of each
/// rule resolves to exactly the rule's split.
pub fn is_served(ing: &KIngress, table: &Table) -> bool {
    ing.rules.iter().all(|rule| {
        let Some(host) = rule.hosts.first() else {
            return true;
        };
        let Some(entry) = table.lookup(host) else {
            return false;
        };
        let mut served: Vec<(String, u32)> = match &entry.target {
            Target::Revision(r) => vec![(table.revision(*r).name.to_string(), 100)],
            Target::Split(_) => table
                .route(entry.route)
                .traffic
                .iter()
                .map(|&(r, p)| (table.revision(r).name.to_string(), p))
                .collect(),
        };
        served.sort();
        served == rule.splits
    })
}

/// Host → hash for every KIngress `table` serves: what a probe is answered with.
/// A KIngress whose newest version is not served yet keeps the hash of the
/// version that was (from `previous`): that is what this replica has applied.
pub fn probe_map<'a>(
    ingresses: impl Iterator<Item = &'a KIngress>,
    table: &Table,
    previous: &HashMap<String, String>,
) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for ing in ingresses {
        let served = is_served(ing, table);
        for host in ing.rules.iter().flat_map(|r| &r.hosts) {
            let hash = if served {
                Some(&ing.hash)
            } else {
                previous.get(host)
            };
            if let Some(hash) = hash {
                map.insert(host.clone(), hash.clone());
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{build, BuildOptions, LastGood};
    use crate::sources::file::parse;
    use serde_json::json;

    fn kingress(class: &str, splits: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
               "metadata": {"name": "web", "namespace": "ns", "generation": 4,
                            "annotations": {CLASS_ANNOTATION: class}},
               "spec": {"rules": [
                   {"hosts": ["web.ns.example.com"], "visibility": "ExternalIP",
                    "http": {"paths": [{"splits": splits}]}},
                   {"hosts": ["web.ns", "web.ns.svc.cluster.local"], "visibility": "ClusterLocal",
                    "http": {"paths": [{"splits": splits}]}}]}})
    }

    fn table() -> Table {
        let text = "kind: Route\nmetadata: {name: web, namespace: ns}\nstatus:\n  url: http://web.ns.example.com\n  traffic: [{revisionName: web-1, percent: 80}, {revisionName: web-2, percent: 20}]\n";
        build(
            parse(text).unwrap(),
            &BuildOptions::default(),
            &LastGood::default(),
            None,
            1,
        )
        .0
    }

    #[test]
    fn other_classes_are_not_ours() {
        let obj = kingress("kourier.ingress.networking.knative.dev", json!([]));
        assert!(decode(&obj, DEFAULT_CLASS).is_none());
        let mut none = obj.clone();
        none["metadata"]["annotations"] = json!({});
        assert!(decode(&none, DEFAULT_CLASS).is_none());
    }

    #[test]
    fn served_only_when_the_split_matches_and_hash_follows_the_spec() {
        let splits = json!([{"serviceName": "web-1", "percent": 80}, {"serviceName": "web-2", "percent": 20}]);
        let ing = decode(&kingress(DEFAULT_CLASS, splits), DEFAULT_CLASS)
            .unwrap()
            .unwrap();
        assert_eq!(ing.generation, 4);
        assert_eq!(ing.hash.len(), 64);
        let t = table();
        assert!(is_served(&ing, &t));
        let probes = probe_map([&ing].into_iter(), &t, &HashMap::new());
        assert_eq!(probes.get("web.ns.svc.cluster.local"), Some(&ing.hash));

        let newer = json!([{"serviceName": "web-1", "percent": 50}, {"serviceName": "web-2", "percent": 50}]);
        let next = decode(&kingress(DEFAULT_CLASS, newer), DEFAULT_CLASS)
            .unwrap()
            .unwrap();
        assert_ne!(next.hash, ing.hash);
        assert!(!is_served(&next, &t), "the table still has 80/20");
        assert!(probe_map([&next].into_iter(), &t, &HashMap::new()).is_empty());
        // What was applied before stays the answer until the new version is served.
        let kept = probe_map([&next].into_iter(), &t, &probes);
        assert_eq!(kept.get("web.ns.example.com"), Some(&ing.hash));
    }
}
