//! Knative's KIngress (`networking.internal.knative.dev/v1alpha1` Ingress):
//! its spec as Knative's Go types define it, and the `K-Network-Hash`
//! Knative's prober expects (byte for byte as Go's `encoding/json` writes the
//! spec).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ObjectError;
use crate::model::{self, IntOrString, ObjectKey, ObjectMeta};

pub use super::meta::CLASS_ANNOTATION;
/// The class this gateway implements unless told otherwise.
pub const DEFAULT_CLASS: &str = "knative-gateway.ingress.networking.knative.dev";
/// `apiVersion` of a KIngress.
pub const API_VERSION: &str = "networking.internal.knative.dev/v1alpha1";

/// The class of a KIngress object, if annotated.
pub fn class_of(obj: &serde_json::Value) -> Option<&str> {
    obj.get("metadata")?
        .get("annotations")?
        .get(CLASS_ANNOTATION)?
        .as_str()
}

/// A string-keyed map kept as Go's `encoding/json` writes one, keys sorted,
/// in a vector: a KIngress's two headers cost one small allocation, where
/// a `BTreeMap` takes a node of half a kilobyte (11 MB at 10,000 KIngresses).
#[derive(Debug, Clone, PartialEq)]
pub struct SortedMap<V>(Vec<(String, V)>);

impl<V> Default for SortedMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> SortedMap<V> {
    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries, keys in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<V> FromIterator<(String, V)> for SortedMap<V> {
    /// Sorted by key; of two equal keys the later wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let map: BTreeMap<String, V> = iter.into_iter().collect();
        let mut entries: Vec<(String, V)> = map.into_iter().collect();
        entries.shrink_to_fit();
        Self(entries)
    }
}

impl<V: Serialize> Serialize for SortedMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SortedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, V>::deserialize(d).map(|m| m.into_iter().collect())
    }
}

/// Go's `null` decodes to the zero value; serde's `default` alone rejects it.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

// The spec types below mirror knative/networking's `ingress_types.go`: field
// order, JSON names and `omitempty` are what make the hash match Knative's.

/// `IngressSpec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct IngressSpec {
    /// TLS Secrets by host.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tls: Vec<IngressTls>,
    /// Rules; the first naming a host owns it.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub rules: Vec<IngressRule>,
    /// `Enabled` or `Redirected`.
    #[serde(
        default,
        rename = "httpOption",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub http_option: String,
}

/// `IngressTLS`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    /// Hosts the certificate serves.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hosts: Vec<String>,
    /// Secret name.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub secret_name: String,
    /// Secret namespace.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub secret_namespace: String,
}

/// `IngressRule`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct IngressRule {
    /// Hosts (no ports).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hosts: Vec<String>,
    /// `ExternalIP` (the default) or `ClusterLocal`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub visibility: String,
    /// The paths; shared by rules that have the same (see [`decode`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<std::sync::Arc<HttpRuleValue>>,
}

/// `HTTPIngressRuleValue`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct HttpRuleValue {
    /// Always written; `null` when absent.
    #[serde(default)]
    pub paths: Option<Vec<HttpPath>>,
}

/// `HTTPIngressPath`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPath {
    /// Literal path prefix.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path: String,
    /// Upstream Host replacement.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub rewrite_host: String,
    /// Exact header matches.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "SortedMap::is_empty"
    )]
    pub headers: SortedMap<HeaderMatch>,
    /// Always written; `null` when absent.
    #[serde(default)]
    pub splits: Option<Vec<BackendSplit>>,
    /// Set before the split.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "SortedMap::is_empty"
    )]
    pub append_headers: SortedMap<String>,
}

/// `IngressBackendSplit` (with `IngressBackend` inlined).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendSplit {
    /// Service namespace (always written).
    #[serde(default, deserialize_with = "nullable")]
    pub service_namespace: String,
    /// Service name (always written).
    #[serde(default, deserialize_with = "nullable")]
    pub service_name: String,
    /// Port number or name (always written).
    #[serde(default, deserialize_with = "nullable")]
    pub service_port: IntOrString,
    /// Share of the path's requests.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub percent: i64,
    /// Set after the split.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "SortedMap::is_empty"
    )]
    pub append_headers: SortedMap<String>,
}

/// `HeaderMatch`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct HeaderMatch {
    /// The exact value (always written).
    #[serde(default, deserialize_with = "nullable")]
    pub exact: String,
}

/// The part of `status` the gateway reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressStatus {
    /// Generation the conditions describe.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// The `Ready` condition, if written: the only one the gateway reads
    /// (the others are dropped while decoding; 10,000 KIngresses hold them).
    #[serde(default, deserialize_with = "ready_only")]
    pub conditions: Vec<Condition>,
}

fn ready_only<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Condition>, D::Error> {
    let mut all: Vec<Condition> = nullable(d)?;
    all.retain(|c| c.type_ == "Ready");
    all.shrink_to_fit();
    Ok(all)
}

/// A status condition.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Condition {
    /// `Ready`, `NetworkConfigured`, `LoadBalancerReady`.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// Machine-readable reason.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A KIngress of our class.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct KIngress {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The routing it asks for.
    #[serde(default)]
    pub spec: std::sync::Arc<IngressSpec>,
    /// What was last written about it.
    #[serde(default)]
    pub status: Option<IngressStatus>,
    /// Hex SHA-256 of the spec, namespace and name: the `K-Network-Hash`
    /// value (shared with the status writer's probe records).
    #[serde(skip)]
    pub hash: std::sync::Arc<str>,
    /// Every label (`metadata.labels` keeps only those the table reads),
    /// when asked for ([`crate::model::Snapshot::labels`]): the
    /// authorization server is told them, as Kourier tells it.
    #[serde(skip)]
    pub labels: dataplane::table::Labels,
}

impl KIngress {
    /// `namespace/name`.
    pub fn key(&self) -> ObjectKey {
        model::key(&self.metadata)
    }

    /// `metadata.generation`.
    pub fn generation(&self) -> i64 {
        self.metadata.generation.unwrap_or(0)
    }

    /// `status.observedGeneration` when its Ready condition is True.
    pub fn ready_generation(&self) -> Option<i64> {
        let status = self.status.as_ref()?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then(|| status.observed_generation.unwrap_or(0))
    }

    /// The status condition `type_`, if written.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }

    /// The first host of every rule: what Knative's prober asks for.
    pub fn probe_hosts(&self) -> impl Iterator<Item = &str> {
        self.spec
            .rules
            .iter()
            .filter_map(|r| r.hosts.first().map(String::as_str))
    }
}

/// Decode a KIngress (already known to be of our class) and compute its hash.
pub fn decode(value: serde_json::Value) -> Result<KIngress, ObjectError> {
    let mut ing: KIngress = model::decode(value)?;
    share_paths(std::sync::Arc::make_mut(&mut ing.spec));
    let key = ing.key();
    ing.hash = hash(&ing.spec, &key.namespace, &key.name).into();
    Ok(ing)
}

/// Every string label of `obj`, sorted by key (a value that is not a
/// string fails decoding, naming it).
pub fn all_labels(obj: &serde_json::Value) -> dataplane::table::Labels {
    let Some(labels) = obj.pointer("/metadata/labels").and_then(|l| l.as_object()) else {
        return dataplane::table::Labels::default();
    };
    let mut all: Vec<(&str, &str)> = labels
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
        .collect();
    all.sort_unstable();
    dataplane::table::Labels::new(all)
}

/// Serving writes the same paths under every rule of a KIngress (its
/// cluster-local names and its external host): a rule whose paths equal an
/// earlier rule's shares them, held once.
fn share_paths(spec: &mut IngressSpec) {
    for i in 1..spec.rules.len() {
        let (before, rest) = spec.rules.split_at_mut(i);
        let Some(http) = &rest[0].http else { continue };
        let same = before
            .iter()
            .filter_map(|r| r.http.as_ref())
            .find(|earlier| earlier == &http)
            .cloned();
        if same.is_some() {
            rest[0].http = same;
        }
    }
}

/// `hex(sha256(json.Marshal(spec) ++ namespace ++ name))`, as Knative's
/// `ComputeHash` and `InsertProbe` write it.
pub fn hash(spec: &IngressSpec, namespace: &str, name: &str) -> String {
    let mut bytes = go_json(spec);
    bytes.extend_from_slice(namespace.as_bytes());
    bytes.extend_from_slice(name.as_bytes());
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `value` as Go's `encoding/json` writes it: compact, and `<`, `>`, `&`,
/// U+2028 and U+2029 escaped as `\u003c` and so on. Field order and omitted
/// fields come from the serde attributes of the types.
pub fn go_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value
        .serialize(&mut ser)
        .expect("the spec types serialize without error");
    out
}

/// serde_json's compact output, plus the escapes Go adds for HTML safety.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> IngressSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn rules_with_the_same_paths_share_them_and_hash_as_written() {
        let http = json!({"paths": [{"splits": [{"serviceName": "a", "serviceNamespace": "ns",
            "servicePort": 80, "percent": 100, "appendHeaders": {"K": "v"}}]}]});
        let other = json!({"paths": [{"splits": [{"serviceName": "b", "serviceNamespace": "ns",
            "servicePort": 80, "percent": 100}]}]});
        let value = json!({"apiVersion": API_VERSION, "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"rules": [
                {"hosts": ["web.ns"], "visibility": "ClusterLocal", "http": http},
                {"hosts": ["web.example.com"], "http": http},
                {"hosts": ["b.example.com"], "http": other}]},
            "status": {"observedGeneration": 3, "conditions": [
                {"type": "LoadBalancerReady", "status": "True"},
                {"type": "NetworkConfigured", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "Probing"}]}});
        let ing = decode(value.clone()).unwrap();
        let rules = &ing.spec.rules;
        let shared = |a: usize, b: usize| {
            std::sync::Arc::ptr_eq(
                rules[a].http.as_ref().unwrap(),
                rules[b].http.as_ref().unwrap(),
            )
        };
        assert!(shared(0, 1), "equal paths are held once");
        assert!(!shared(0, 2));
        // Sharing changes nothing written: the hash is the unshared spec's.
        let unshared: IngressSpec = serde_json::from_value(value["spec"].clone()).unwrap();
        assert_eq!(*ing.hash, hash(&unshared, "ns", "web"));
        // Only the Ready condition is kept, and it is what is read.
        let status = ing.status.as_ref().unwrap();
        assert_eq!(status.conditions.len(), 1);
        let ready = ing.condition("Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("Probing"))
        );
        assert_eq!(ing.ready_generation(), None);
    }

    /// Vectors written by hand from the Go struct definitions: field order,
    /// `omitempty`, `null` for nil `paths` and `splits`, sorted map keys,
    /// numbers and strings for `servicePort`, and Go's HTML escapes.
    #[test]
    fn every_label_is_kept_for_the_authorization_server() {
        let value = json!({"apiVersion": API_VERSION, "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "ns", "labels": {
            "team": "payments", "serving.knative.dev/route": "web"},
            "annotations": {CLASS_ANNOTATION: DEFAULT_CLASS}}});
        let labels = all_labels(&value);
        assert!(decode(value.clone()).unwrap().labels.is_empty());
        let ing = match crate::model::decode_object(value, DEFAULT_CLASS, true) {
            crate::model::Decoded::KIngress(ing) => ing,
            other => panic!("{other:?}"),
        };
        assert_eq!(ing.labels, labels);
        let labels: Vec<(&str, &str)> = ing.labels.iter().collect();
        assert_eq!(
            labels,
            [("serving.knative.dev/route", "web"), ("team", "payments")]
        );
        // The metadata the table reads keeps only its own labels.
        assert_eq!(ing.metadata.label("team"), None);
        assert!(all_labels(&json!({"metadata": {"name": "web"}})).is_empty());
        // A label that is not a string is refused, naming it.
        let bad = json!({"metadata": {"name": "web", "labels": {
            "serving.knative.dev/revision": 3}}});
        let e = decode(bad).unwrap_err().to_string();
        assert!(e.contains("metadata.labels"), "{e}");
    }

    #[test]
    fn go_json_matches_encoding_json() {
        assert_eq!(go_json(&IngressSpec::default()), b"{}");
        let s = spec(json!({"rules": [{"hosts": ["a.b"], "http": {}}]}));
        assert_eq!(
            String::from_utf8(go_json(&s)).unwrap(),
            r#"{"rules":[{"hosts":["a.b"],"http":{"paths":null}}]}"#
        );
        let s = spec(json!({
            "httpOption": "Enabled",
            "tls": [{"hosts": ["x"], "secretName": "s"}],
            "rules": [{
                "visibility": "ClusterLocal",
                "hosts": ["h.ns", "h.ns.svc.cluster.local"],
                "http": {"paths": [{
                    "splits": [{"serviceName": "svc", "serviceNamespace": "ns",
                                "servicePort": "http", "percent": 0,
                                "appendHeaders": {"b": "2", "a": "1"}}],
                    "headers": {"Knative-Serving-Tag": {"exact": "t"}},
                    "path": "/p",
                    "rewriteHost": "r.example.com",
                    "appendHeaders": {"X-Y": "<a&b>"}
                }, {"splits": [], "path": ""}]}
            }]
        }));
        let want = concat!(
            r#"{"tls":[{"hosts":["x"],"secretName":"s"}],"#,
            r#""rules":[{"hosts":["h.ns","h.ns.svc.cluster.local"],"visibility":"ClusterLocal","#,
            r#""http":{"paths":[{"path":"/p","rewriteHost":"r.example.com","#,
            r#""headers":{"Knative-Serving-Tag":{"exact":"t"}},"#,
            r#""splits":[{"serviceNamespace":"ns","serviceName":"svc","servicePort":"http","#,
            r#""appendHeaders":{"a":"1","b":"2"}}],"#,
            r#""appendHeaders":{"X-Y":"\u003ca\u0026b\u003e"}},"#,
            r#"{"splits":[]}]}}],"httpOption":"Enabled"}"#
        );
        assert_eq!(String::from_utf8(go_json(&s)).unwrap(), want);
        let s = spec(json!({"rules": [{"http": {"paths": [{"splits": [
            {"serviceName": "a", "serviceNamespace": "n", "servicePort": 80, "percent": 30}
        ]}]}}]}));
        assert_eq!(
            String::from_utf8(go_json(&s)).unwrap(),
            r#"{"rules":[{"http":{"paths":[{"splits":[{"serviceNamespace":"n","serviceName":"a","servicePort":80,"percent":30}]}]}}]}"#
        );
        // Control characters and the line separators Go escapes too.
        let s = spec(json!({"httpOption": "a\u{2028}b\u{2029}\"\\\n\u{1}"}));
        assert_eq!(
            String::from_utf8(go_json(&s)).unwrap(),
            r#"{"httpOption":"a\u2028b\u2029\"\\\n\u0001"}"#
        );
    }

    #[test]
    fn hash_is_sha256_of_json_namespace_and_name() {
        let s = spec(json!({"rules": [{"hosts": ["a.b"], "http": {}}]}));
        // sha256 of `{"rules":[{"hosts":["a.b"],"http":{"paths":null}}]}nsname`,
        // computed independently with sha256sum.
        assert_eq!(
            hash(&s, "ns", "name"),
            "d9c14f951072141b74d0bd8ad427a0ec320c6eaa159c79779e6b53e98430a992"
        );
    }
}
