//! Why an object, or a part of one, is not served: each rejection names the
//! object, what was wrong with it, and what the table did about it. Built by
//! config-sync, carried by the table for logs, metrics, `/debug/routes` and
//! KIngress status.

use serde::Serialize;

use crate::key::{Kind, ObjectKey};

/// Why one object cannot be used. Each rejection names the object it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ObjectError {
    /// Fields of the wrong type or shape.
    #[error("cannot decode {path}: {message}")]
    Decode {
        /// Where in the object (e.g. `status.traffic[0].percent`).
        path: String,
        /// What serde said.
        message: String,
    },
    /// Not a kind the gateway reads.
    #[error("unsupported kind {kind} (expected Route, Ingress, Service or EndpointSlice)")]
    UnsupportedKind {
        /// The kind found.
        kind: String,
    },
    /// The Route controller has not written `status` yet.
    #[error("the Route has no status yet")]
    NoStatus,
    /// `status.url` is missing.
    #[error("status.url is missing")]
    NoUrl,
    /// A URL whose host cannot be routed.
    #[error("{field} {url:?} has no valid host")]
    BadUrl {
        /// Which field (`status.url`, `status.traffic[2].url`).
        field: String,
        /// The value found.
        url: String,
    },
    /// `status.traffic` is missing or empty.
    #[error("status.traffic is empty")]
    NoTraffic,
    /// A traffic entry without a revision.
    #[error("status.traffic[{index}] has no revisionName")]
    MissingRevision {
        /// Index in `status.traffic`.
        index: usize,
    },
    /// A name that is not a DNS-1123 name.
    #[error("{field} {value:?} is not a valid DNS-1123 name")]
    BadName {
        /// Which field.
        field: String,
        /// The value found.
        value: String,
    },
    /// A negative percent.
    #[error("status.traffic[{index}].percent is {percent}, which is negative")]
    NegativePercent {
        /// Index in `status.traffic`.
        index: usize,
        /// The value found.
        percent: i64,
    },
    /// Percents that do not add up.
    #[error("status.traffic percents sum to {sum}, not 100")]
    PercentSum {
        /// The sum found.
        sum: i64,
    },
    /// A host already claimed by another object: among Routes the first by
    /// namespace/name keeps it, among KIngresses the oldest (Knative's `DomainConflict`).
    #[error("host {host} is already served by {owner}")]
    HostConflict {
        /// The contested host.
        host: String,
        /// The object that keeps it, with its kind (`Route ns/name`).
        owner: String,
    },
    /// A KIngress rule without an `http` block.
    #[error("spec.rules[{rule}] has no http block")]
    NoHttp {
        /// Index of the rule.
        rule: usize,
    },
    /// A KIngress rule without hosts.
    #[error("spec.rules[{rule}] has no hosts")]
    NoHosts {
        /// Index of the rule.
        rule: usize,
    },
    /// A host name that cannot be routed.
    #[error("{field} {host:?} is not a valid host")]
    BadHost {
        /// Which field.
        field: String,
        /// The value found.
        host: String,
    },
    /// A visibility other than `ExternalIP` or `ClusterLocal`.
    #[error("{field} {value:?} is not ExternalIP or ClusterLocal")]
    Visibility {
        /// Which field.
        field: String,
        /// The value found.
        value: String,
    },
    /// A path without splits.
    #[error("{field} has no splits")]
    NoSplits {
        /// Which field.
        field: String,
    },
    /// KIngress split percents that do not add up.
    #[error("{field} percents sum to {sum}, not 100")]
    SplitSum {
        /// Which path's splits.
        field: String,
        /// The sum found.
        sum: i64,
    },
    /// A header name or value that HTTP cannot carry.
    #[error("{field} {name:?} is not a valid header name and value")]
    BadHeader {
        /// Which field.
        field: String,
        /// The header name.
        name: String,
    },
    /// A split naming a Service that does not exist (yet): served once it appears.
    #[error("{field} names Service {service}, which does not exist")]
    NoService {
        /// Which split.
        field: String,
        /// `namespace/name` of the Service.
        service: String,
    },
    /// A changed KIngress naming a Service none of whose EndpointSlices has
    /// arrived yet (watches deliver in any order): its last good version is
    /// served until they do, rather than answering 503 meanwhile.
    #[error("Service {service} has no EndpointSlices yet")]
    NoEndpoints {
        /// `namespace/name` of the Service.
        service: String,
    },
    /// A TLS Secret that cannot serve: wrong type, missing or broken data,
    /// or a key that does not match the certificate.
    #[error("{message}")]
    BadTlsSecret {
        /// What is wrong.
        message: String,
    },
    /// A `spec.tls` entry naming a Secret that does not exist (yet): its
    /// hosts get the default certificate until it appears.
    #[error("{field} names Secret {secret}, which does not exist")]
    NoSecret {
        /// Which entry.
        field: String,
        /// `namespace/name` of the Secret.
        secret: String,
    },
    /// `--default-certificate` names a Secret that does not exist (yet).
    #[error("the default certificate's Secret does not exist")]
    NoDefaultSecret,
    /// A split's `servicePort` that matches no port of its Service.
    #[error("{field} servicePort {port} matches no port of Service {service}")]
    NoServicePort {
        /// Which split.
        field: String,
        /// `namespace/name` of the Service.
        service: String,
        /// The port asked for.
        port: String,
    },
    /// A private EndpointSlice without the queue-proxy `http` port.
    #[error("no port named \"http\" with a number in 1..=65535")]
    NoHttpPort,
    /// A `knative-gateway.dev/` annotation with a value the gateway cannot use.
    #[error("annotation {key}: {value:?}: {why}")]
    BadAnnotation {
        /// The annotation.
        key: String,
        /// The value found.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A trust bundle source (the CA Secret, a labelled ConfigMap) that
    /// holds no usable certificate.
    #[error("trust bundle: {message}")]
    BadTrustBundle {
        /// What is wrong.
        message: String,
    },
    /// A split reached over TLS (its Service port is `https`/443) while
    /// nothing is trusted: it is not served, and never in plaintext.
    #[error("{field} is reached over TLS, but there is no trust bundle: Secret {namespace}/routing-serving-certs (ca.crt) and ConfigMaps labelled networking.knative.dev/trust-bundle hold no certificate")]
    NoTrustBundle {
        /// Which split.
        field: String,
        /// The system namespace searched.
        namespace: String,
    },
    /// `FQDN` or an unknown address type.
    #[error("addressType {0:?} is not supported (expected IPv4 or IPv6)")]
    AddressType(String),
    /// An endpoint address that is not an IP address.
    #[error("endpoints[{index}] address {address:?} is not an IP address")]
    BadAddress {
        /// Index in `endpoints`.
        index: usize,
        /// The value found.
        address: String,
    },
}

impl ObjectError {
    /// A short stable label for metrics (`reason="percent_sum"`).
    pub fn reason(&self) -> &'static str {
        match self {
            ObjectError::Decode { .. } => "decode",
            ObjectError::UnsupportedKind { .. } => "unsupported_kind",
            ObjectError::NoStatus => "no_status",
            ObjectError::NoUrl => "no_url",
            ObjectError::BadUrl { .. } => "bad_url",
            ObjectError::NoTraffic => "no_traffic",
            ObjectError::MissingRevision { .. } => "missing_revision",
            ObjectError::BadName { .. } => "bad_name",
            ObjectError::NegativePercent { .. } => "negative_percent",
            ObjectError::PercentSum { .. } => "percent_sum",
            ObjectError::HostConflict { .. } => "host_conflict",
            ObjectError::NoHttp { .. } => "no_http",
            ObjectError::NoHosts { .. } => "no_hosts",
            ObjectError::BadHost { .. } => "bad_host",
            ObjectError::Visibility { .. } => "visibility",
            ObjectError::NoSplits { .. } => "no_splits",
            ObjectError::SplitSum { .. } => "split_sum",
            ObjectError::BadHeader { .. } => "bad_header",
            ObjectError::NoService { .. } => "no_service",
            ObjectError::NoEndpoints { .. } => "no_endpoints",
            ObjectError::BadTlsSecret { .. } => "bad_tls_secret",
            ObjectError::NoSecret { .. } => "no_secret",
            ObjectError::NoDefaultSecret => "no_default_secret",
            ObjectError::NoServicePort { .. } => "no_service_port",
            ObjectError::NoHttpPort => "no_http_port",
            ObjectError::BadAnnotation { .. } => "bad_annotation",
            ObjectError::BadTrustBundle { .. } => "bad_trust_bundle",
            ObjectError::NoTrustBundle { .. } => "no_trust_bundle",
            ObjectError::AddressType(_) => "address_type",
            ObjectError::BadAddress { .. } => "bad_address",
        }
    }
}

/// What the table did about a rejected object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The object is not in the table.
    LeftOut,
    /// The Route's last good version is still served.
    LastGood,
    /// Only the named part (a host, an endpoint) is left out; the rest is served.
    PartlyServed,
}

/// A rejected object with its reason, as shown in logs, metrics and `/debug/routes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rejection {
    /// Kind of the object.
    pub kind: Kind,
    /// `namespace/name`.
    pub object: ObjectKey,
    /// What was wrong.
    pub error: ObjectError,
    /// What the table did about it.
    pub outcome: Outcome,
}

impl Rejection {
    /// A rejection that leaves the object out.
    pub fn new(kind: Kind, object: ObjectKey, error: ObjectError) -> Self {
        Self {
            kind,
            object,
            error,
            outcome: Outcome::LeftOut,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.outcome {
            Outcome::LeftOut => "left out",
            Outcome::LastGood => "serving its last good version",
            Outcome::PartlyServed => "the rest of it is served",
        };
        write!(
            f,
            "{} {}: {} ({outcome})",
            self.kind, self.object, self.error
        )
    }
}
