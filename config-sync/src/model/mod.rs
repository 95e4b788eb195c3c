//! The Kubernetes objects the routing table is built from, trimmed to the
//! fields the gateway reads. Both sources (snapshot file, API server) decode
//! into these types, one object at a time, so one malformed object is
//! rejected on its own instead of failing the whole list.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod kingress;
pub mod meta;

pub use dataplane::key::{Kind, ObjectKey};
pub use kingress::KIngress;
pub use meta::{
    decode, key, Annotations, IntOrString, Labels, ObjectMeta, CLASS_ANNOTATION, REVISION_LABEL,
    SERVICE_NAME_LABEL, SERVICE_TYPE_LABEL, TRUST_BUNDLE_LABEL, VISIBILITY_LABEL,
};

use crate::error::{ObjectError, Rejection};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_type: Option<String>,
    /// Named ports shared by every endpoint of the slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<EndpointPort>>,
    /// The endpoints (pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// Port name (`http`, `http2`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<EndpointConditions>,
}

/// Conditions of an endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// Unset counts as ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ServiceSpec>,
}

/// `spec` of a Service.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (the default), `ExternalName`, ...
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub type_: Option<String>,
    /// The DNS name of an `ExternalName` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// The Service's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ServicePort>>,
}

/// One port of a Service.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name; slices name their ports after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Service port (what a KIngress `servicePort` number names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// The endpoints' port: a number, or the name of a container port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// `kubernetes.io/h2c` asks for HTTP/2 cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
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
    /// Keep every label of a KIngress ([`KIngress::labels`]), for the
    /// authorization server; off, only those the table reads.
    pub labels: bool,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::for_class(crate::model::kingress::DEFAULT_CLASS)
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
            labels: false,
        }
    }

    /// [`Snapshot::for_class`], keeping every label of a KIngress when
    /// `labels` is set.
    pub fn keeping_labels(mut self, labels: bool) -> Self {
        self.labels = labels;
        self
    }

    /// Decode one object (a YAML document or an API list item) into the snapshot.
    /// Anything that is not a well-formed object of a kind the gateway reads
    /// becomes a rejection; a KIngress of another class is skipped.
    pub fn push_value(&mut self, value: serde_json::Value) {
        let decoded = decode_object(value, &self.class, self.labels);
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

/// Decode one object by its `kind`; KIngresses only when of `class`, with
/// every label when `labels` is set.
pub fn decode_object(value: serde_json::Value, class: &str, labels: bool) -> Decoded {
    let kind = match value.get("kind").and_then(|k| k.as_str()) {
        Some("Route") => Kind::Route,
        Some("EndpointSlice") => Kind::EndpointSlice,
        Some("Ingress")
            if value.get("apiVersion").and_then(|v| v.as_str())
                == Some(crate::model::kingress::API_VERSION) =>
        {
            Kind::KIngress
        }
        Some("Service") => Kind::Service,
        Some("Secret") => Kind::Secret,
        Some("ConfigMap") => Kind::ConfigMap,
        _ => Kind::Other,
    };
    if kind == Kind::KIngress && crate::model::kingress::class_of(&value) != Some(class) {
        return Decoded::NotOurs;
    }
    let key = key_of(&value);
    let result = match kind {
        Kind::Route => decode::<Route>(value).map(Decoded::Route),
        Kind::EndpointSlice => decode::<EndpointSlice>(value).map(Decoded::EndpointSlice),
        Kind::KIngress => {
            let labels = match labels {
                true => crate::model::kingress::all_labels(&value),
                false => dataplane::table::Labels::NONE,
            };
            crate::model::kingress::decode(value).map(|mut k| {
                k.labels = labels;
                Decoded::KIngress(Arc::new(k))
            })
        }
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
