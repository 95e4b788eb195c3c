//! What every object shares: its metadata, trimmed to the labels and
//! annotations the gateway reads, its `namespace/name`, and how one object is
//! decoded on its own.

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ObjectError;
use dataplane::key::ObjectKey;

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
/// Annotation naming the ingress class that should implement a KIngress.
pub const CLASS_ANNOTATION: &str = "networking.knative.dev/ingress.class";
/// Sticky canaries: turns affinity on, with the value `cookie` (the only mode).
pub const AFFINITY_ANNOTATION: &str = "knative-gateway.dev/affinity";
/// Sticky canaries: the cookie's name.
pub const COOKIE_ANNOTATION: &str = "knative-gateway.dev/affinity-cookie";
/// Sticky canaries: the cookie's lifetime (`30m`, `12h`, `7d`).
pub const MAX_AGE_ANNOTATION: &str = "knative-gateway.dev/affinity-max-age";
/// External authorization for the object: `enabled` (the default) or `disabled`.
pub const EXT_AUTHZ_ANNOTATION: &str = "knative-gateway.dev/ext-authz";

/// The part of `metadata` the gateway reads.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace; `default` when absent, as kubectl does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The labels the gateway reads (the others are dropped while decoding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// Server-side version, when the object came from an API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// The annotations the gateway reads: the ingress class, sticky canaries'
/// and external authorization's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationKeys;
impl KeySet for AnnotationKeys {
    const KEYS: &'static [&'static str] = &[
        CLASS_ANNOTATION,
        AFFINITY_ANNOTATION,
        COOKIE_ANNOTATION,
        MAX_AGE_ANNOTATION,
        EXT_AUTHZ_ANNOTATION,
    ];
}
/// Annotations trimmed to the ones the gateway reads.
pub type Annotations = Kept<AnnotationKeys>;

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

/// Decode one object of type `T`, naming the field at fault.
pub fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ObjectError> {
    serde_path_to_error::deserialize(value).map_err(|e| ObjectError::Decode {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// `namespace/name` of a decoded object, with kubectl's `default` namespace.
pub fn key(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>"),
    )
}
