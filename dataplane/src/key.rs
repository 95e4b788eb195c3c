//! How objects are named: `namespace/name` and their kind, in every message,
//! metric and view.

use std::fmt;

use serde::Serialize;

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
