//! The Kubernetes objects the routing table is built from, trimmed to the
//! fields the gateway reads. Both sources (snapshot file, API server) decode
//! into these types, one object at a time, so one malformed object is
//! rejected on its own instead of failing the whole list.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ObjectError, Rejection};
use crate::kingress::KIngress;

/// Label carrying the revision name on a revision's Services and EndpointSlices.
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// Label telling a revision's public Service from its private one.
pub const SERVICE_TYPE_LABEL: &str = "networking.internal.knative.dev/serviceType";
/// Label marking a Route as reachable only inside the cluster.
pub const VISIBILITY_LABEL: &str = "networking.knative.dev/visibility";
/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// ConfigMaps with this label (any value) in Knative's system namespace add
/// to the trust bundle of system-internal TLS (see `crate::trust`).
pub const TRUST_BUNDLE_LABEL: &str = "networking.knative.dev/trust-bundle";

/// `namespace/name` of an object: how every message names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The part of `metadata` the gateway reads.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace; `default` when absent, as kubectl does.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The labels the gateway reads (the others are dropped while decoding).
    #[serde(default)]
    pub labels: Option<Labels>,
    /// Server-side version, when the object came from an API server.
    #[serde(default)]
    pub resource_version: Option<String>,
    /// The annotations the gateway reads (the ingress class; the others are dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    /// `metadata.generation`, echoed in KIngress status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339 creation time: the older of two KIngresses claiming a host keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    /// The value of label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key)
    }
}

/// Which keys of a string map the gateway keeps.
pub trait KeySet {
    /// The keys kept; every other one is skipped while decoding.
    const KEYS: &'static [&'static str];
}

/// A string map trimmed to the keys of `K`. Objects in a real cluster carry
/// many labels and annotations, and a 10,000-route snapshot kept them all in
/// a map per object (a third of its memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept<K: KeySet> {
    /// `(index in K::KEYS, value)`, at most one per key.
    values: Vec<(u8, String)>,
    keys: std::marker::PhantomData<K>,
}

impl<K: KeySet> Default for Kept<K> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            keys: std::marker::PhantomData,
        }
    }
}

impl<K: KeySet> Kept<K> {
    fn index(key: &str) -> Option<u8> {
        K::KEYS.iter().position(|k| *k == key).map(|i| i as u8)
    }

    /// The value of `key`, if it is set and one the gateway reads.
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = Self::index(key)?;
        self.values
            .iter()
            .find(|(k, _)| *k == i)
            .map(|(_, v)| v.as_str())
    }

    /// Set `key` if it is one the gateway reads; any other is dropped.
    pub fn insert(&mut self, key: &str, value: impl Into<String>) {
        let Some(i) = Self::index(key) else { return };
        let value = value.into();
        match self.values.iter_mut().find(|(k, _)| *k == i) {
            Some(slot) => slot.1 = value,
            None => self.values.push((i, value)),
        }
    }
}

impl<K: KeySet, Key: AsRef<str>, V: Into<String>> FromIterator<(Key, V)> for Kept<K> {
    fn from_iter<I: IntoIterator<Item = (Key, V)>>(iter: I) -> Self {
        let mut kept = Kept::default();
        for (k, v) in iter {
            kept.insert(k.as_ref(), v);
        }
        kept
    }
}

impl<K: KeySet> Serialize for Kept<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.values.len()))?;
        for (k, v) in &self.values {
            map.serialize_entry(K::KEYS[*k as usize], v)?;
        }
        map.end()
    }
}

impl<'de, K: KeySet> Deserialize<'de> for Kept<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeptVisitor<K>(std::marker::PhantomData<K>);
        impl<'de, K: KeySet> Visitor<'de> for KeptVisitor<K> {
            type Value = Kept<K>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of names to string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kept<K>, A::Error> {
                let mut kept = Kept::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match Kept::<K>::index(&key) {
                        Some(i) => kept.values.push((i, map.next_value()?)),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(kept)
            }
        }
        deserializer.deserialize_map(KeptVisitor(std::marker::PhantomData))
    }
}

/// The labels the table is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelKeys;
impl KeySet for LabelKeys {
    const KEYS: &'static [&'static str] = &[
        REVISION_LABEL,
        SERVICE_TYPE_LABEL,
        VISIBILITY_LABEL,
        SERVICE_NAME_LABEL,
        TRUST_BUNDLE_LABEL,
    ];
}
/// Labels trimmed to the ones the table is built from.
pub type Labels = Kept<LabelKeys>;

/// The annotations the gateway reads: the ingress class and sticky canaries'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationKeys;
impl KeySet for AnnotationKeys {
    const KEYS: &'static [&'static str] = &[
        crate::kingress::CLASS_ANNOTATION,
        crate::affinity::AFFINITY_ANNOTATION,
        crate::affinity::COOKIE_ANNOTATION,
        crate::affinity::MAX_AGE_ANNOTATION,
    ];
}
/// Annotations trimmed to the ones the gateway reads.
pub type Annotations = Kept<AnnotationKeys>;

/// `serving.knative.dev/v1` Route: only its resolved `status` matters, since
/// `spec.traffic` may name configurations and `latestRevision` targets.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Resolved state written by Knative's Route controller.
    #[serde(default)]
    pub status: Option<RouteStatus>,
}

/// `status` of a Route.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// External URL, e.g. `http://hello.default.example.com`.
    #[serde(default)]
    pub url: Option<String>,
    /// Resolved traffic targets.
    #[serde(default)]
    pub traffic: Option<Vec<TrafficTarget>>,
}

/// One entry of `status.traffic`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    /// The revision receiving this share (always resolved in status).
    #[serde(default)]
    pub revision_name: Option<String>,
    /// Share of the route's traffic; absent means 0.
    #[serde(default)]
    pub percent: Option<i64>,
    /// Tag giving the revision a host of its own.
    #[serde(default)]
    pub tag: Option<String>,
    /// URL of the tag's host.
    #[serde(default)]
    pub url: Option<String>,
}

/// `discovery.k8s.io/v1` EndpointSlice, trimmed.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Metadata (labels name the revision and Service type).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    #[serde(default)]
    pub address_type: Option<String>,
    /// Named ports shared by every endpoint of the slice.
    #[serde(default)]
    pub ports: Option<Vec<EndpointPort>>,
    /// The endpoints (pods).
    #[serde(default)]
    pub endpoints: Option<Vec<Endpoint>>,
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// Port name (`http`, `http2`, ...).
    #[serde(default)]
    pub name: Option<String>,
    /// Port number.
    #[serde(default)]
    pub port: Option<i32>,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Addresses; consumers use the first.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Readiness.
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
}

/// Conditions of an endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// Unset counts as ready.
    #[serde(default)]
    pub ready: Option<bool>,
}

impl Endpoint {
    /// An endpoint whose `ready` condition is unset counts as ready.
    pub fn is_ready(&self) -> bool {
        self.conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true)
    }
}

/// Kind of a decoded object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// `serving.knative.dev/v1` Route.
    Route,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `networking.internal.knative.dev/v1alpha1` Ingress (KIngress).
    KIngress,
    /// `v1` Service.
    Service,
    /// `v1` Secret of type `kubernetes.io/tls`, or the trust bundle's CA.
    Secret,
    /// `v1` ConfigMap of the trust bundle.
    ConfigMap,
    /// Something else (or no kind at all).
    Other,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Route => "Route",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::KIngress => "KIngress",
            Kind::Service => "Service",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Other => "object",
        })
    }
}

/// `v1` Secret, trimmed to a TLS certificate and key. `data` values are
/// base64 in the API and in snapshot files alike; `stringData` is accepted in
/// files for hand-written snapshots.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `kubernetes.io/tls` for a certificate.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// `tls.crt` and `tls.key`, base64.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// The same, as plain text.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

/// `v1` ConfigMap, trimmed to its text data: a trust bundle's PEM values
/// (see [`crate::trust`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Text values by key.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// `v1` Service, trimmed to what resolves a KIngress split.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Type, ports and external name.
    #[serde(default)]
    pub spec: Option<ServiceSpec>,
}

/// `spec` of a Service.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (the default), `ExternalName`, ...
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// The DNS name of an `ExternalName` Service.
    #[serde(default)]
    pub external_name: Option<String>,
    /// The Service's ports.
    #[serde(default)]
    pub ports: Option<Vec<ServicePort>>,
}

/// One port of a Service.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name; slices name their ports after it.
    #[serde(default)]
    pub name: Option<String>,
    /// The Service port (what a KIngress `servicePort` number names).
    #[serde(default)]
    pub port: Option<i32>,
    /// The endpoints' port: a number, or the name of a container port.
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    /// `kubernetes.io/h2c` asks for HTTP/2 cleartext.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// Kubernetes' `IntOrString`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name.
    Str(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(n) => write!(f, "{n}"),
            IntOrString::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The objects a table is built from, plus the ones that could not even be
/// decoded (kept so that a broken object can fall back to its last good version).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Decoded Routes.
    pub routes: Vec<Route>,
    /// Decoded EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// Decoded KIngresses of [`Snapshot::class`].
    pub kingresses: Vec<Arc<KIngress>>,
    /// Decoded Services.
    pub services: Vec<Service>,
    /// Decoded TLS Secrets (and the trust bundle's CA Secret).
    pub secrets: Vec<Secret>,
    /// Decoded ConfigMaps (trust bundles).
    pub config_maps: Vec<ConfigMap>,
    /// Objects rejected while decoding.
    pub rejected: Vec<Rejection>,
    /// The KIngress class implemented: KIngresses of any other are skipped unread.
    pub class: Arc<str>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::for_class(crate::kingress::DEFAULT_CLASS)
    }
}

impl Snapshot {
    /// An empty snapshot that keeps the KIngresses of `class`.
    pub fn for_class(class: &str) -> Self {
        Self {
            routes: Vec::new(),
            slices: Vec::new(),
            kingresses: Vec::new(),
            services: Vec::new(),
            secrets: Vec::new(),
            config_maps: Vec::new(),
            rejected: Vec::new(),
            class: class.into(),
        }
    }

    /// Decode one object (a YAML document or an API list item) into the snapshot.
    /// Anything that is not a well-formed object of a kind the gateway reads
    /// becomes a rejection; a KIngress of another class is skipped.
    pub fn push_value(&mut self, value: serde_json::Value) {
        let decoded = decode_object(value, &self.class);
        self.push(decoded);
    }

    /// Add an already decoded object.
    pub fn push(&mut self, decoded: Decoded) {
        match decoded {
            Decoded::Route(r) => self.routes.push(r),
            Decoded::EndpointSlice(s) => self.slices.push(s),
            Decoded::KIngress(k) => self.kingresses.push(k),
            Decoded::Service(s) => self.services.push(s),
            Decoded::Secret(s) => self.secrets.push(s),
            Decoded::ConfigMap(m) => self.config_maps.push(m),
            Decoded::NotOurs => {}
            Decoded::Rejected(r) => self.rejected.push(r),
        }
    }
}

/// One object, decoded or rejected.
#[derive(Debug, Clone)]
pub enum Decoded {
    /// A Route.
    Route(Route),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A KIngress of our class.
    KIngress(Arc<KIngress>),
    /// A Service.
    Service(Service),
    /// A TLS Secret, or the trust bundle's CA Secret.
    Secret(Secret),
    /// A ConfigMap (a trust bundle).
    ConfigMap(ConfigMap),
    /// A KIngress of another class (or none): not ours, never read further.
    NotOurs,
    /// Not usable, with the reason.
    Rejected(Rejection),
}

/// Decode one object by its `kind`; KIngresses only when of `class`.
pub fn decode_object(value: serde_json::Value, class: &str) -> Decoded {
    let kind = match value.get("kind").and_then(|k| k.as_str()) {
        Some("Route") => Kind::Route,
        Some("EndpointSlice") => Kind::EndpointSlice,
        Some("Ingress")
            if value.get("apiVersion").and_then(|v| v.as_str())
                == Some(crate::kingress::API_VERSION) =>
        {
            Kind::KIngress
        }
        Some("Service") => Kind::Service,
        Some("Secret") => Kind::Secret,
        Some("ConfigMap") => Kind::ConfigMap,
        _ => Kind::Other,
    };
    if kind == Kind::KIngress && crate::kingress::class_of(&value) != Some(class) {
        return Decoded::NotOurs;
    }
    let key = key_of(&value);
    let result = match kind {
        Kind::Route => decode::<Route>(value).map(Decoded::Route),
        Kind::EndpointSlice => decode::<EndpointSlice>(value).map(Decoded::EndpointSlice),
        Kind::KIngress => crate::kingress::decode(value).map(|k| Decoded::KIngress(Arc::new(k))),
        Kind::Service => decode::<Service>(value).map(Decoded::Service),
        Kind::Secret => decode::<Secret>(value).map(Decoded::Secret),
        Kind::ConfigMap => decode::<ConfigMap>(value).map(Decoded::ConfigMap),
        Kind::Other => Err(ObjectError::UnsupportedKind {
            kind: value
                .get("kind")
                .map(|k| k.to_string())
                .unwrap_or_else(|| "none".into()),
        }),
    };
    result.unwrap_or_else(|error| Decoded::Rejected(Rejection::new(kind, key, error)))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, ObjectError> {
    serde_path_to_error::deserialize(value).map_err(|e| ObjectError::Decode {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// Best-effort `namespace/name` of an object that may not decode.
fn key_of(value: &serde_json::Value) -> ObjectKey {
    let meta = value.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    ObjectKey::new(
        field("namespace").unwrap_or_else(|| "default".into()),
        field("name").unwrap_or_else(|| "<unnamed>".into()),
    )
}

/// `namespace/name` of a decoded object, with kubectl's `default` namespace.
pub fn key(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_routes_and_slices_and_rejects_the_rest_by_name() {
        let mut s = Snapshot::default();
        s.push_value(
            json!({"kind": "Route", "metadata": {"name": "a", "namespace": "n"},
            "status": {"traffic": [{"revisionName": "a-1", "percent": 100}]}}),
        );
        s.push_value(json!({"kind": "EndpointSlice", "metadata": {"name": "s"}}));
        s.push_value(
            json!({"kind": "Route", "metadata": {"name": "bad", "namespace": "n"},
            "status": {"traffic": [{"revisionName": "a-1", "percent": "lots"}]}}),
        );
        s.push_value(json!({"kind": "Deployment", "metadata": {"name": "cm"}}));
        // A ConfigMap may be a trust bundle (crate::trust).
        s.push_value(json!({"kind": "ConfigMap", "metadata": {"name": "bundle"},
            "data": {"ca.pem": "..."}}));
        assert_eq!(s.routes.len(), 1);
        assert_eq!(s.slices.len(), 1);
        assert_eq!(s.config_maps.len(), 1);
        assert_eq!(s.rejected.len(), 2);
        let bad = &s.rejected[0];
        assert_eq!(bad.object.to_string(), "n/bad");
        let msg = bad.error.to_string();
        assert!(msg.contains("status.traffic[0].percent"), "{msg}");
        assert_eq!(s.rejected[1].error.reason(), "unsupported_kind");
        assert_eq!(s.rejected[1].object.to_string(), "default/cm");
    }

    #[test]
    fn only_the_labels_read_are_kept() {
        let meta: ObjectMeta = serde_json::from_value(json!({"name": "s", "labels": {
            "serving.knative.dev/revision": "a-1",
            "app": "hello",
            "networking.internal.knative.dev/serviceType": "Private",
            "odd": {"not": "a string"}
        }}))
        .unwrap();
        assert_eq!(meta.label(REVISION_LABEL), Some("a-1"));
        assert_eq!(meta.label(SERVICE_TYPE_LABEL), Some("Private"));
        assert_eq!(meta.label(VISIBILITY_LABEL), None);
        assert_eq!(meta.label("app"), None, "unread labels are dropped");
        assert_eq!(
            serde_json::to_value(&meta.labels).unwrap(),
            json!({"serving.knative.dev/revision": "a-1",
                   "networking.internal.knative.dev/serviceType": "Private"})
        );
        // A label the gateway reads must still be a string.
        let bad = serde_json::from_value::<ObjectMeta>(
            json!({"labels": {"serving.knative.dev/revision": 7}}),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn unset_ready_counts_as_ready() {
        let e: Endpoint = serde_json::from_value(json!({"addresses": ["10.0.0.1"]})).unwrap();
        assert!(e.is_ready());
        let e: Endpoint = serde_json::from_value(
            json!({"addresses": ["10.0.0.1"], "conditions": {"ready": false}}),
        )
        .unwrap();
        assert!(!e.is_ready());
    }
}
