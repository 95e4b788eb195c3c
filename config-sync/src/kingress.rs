//! Knative's KIngress (`networking.internal.knative.dev/v1alpha1` Ingress):
//! its spec as Knative's Go types define it, the `K-Network-Hash` Knative's
//! prober expects (byte for byte as Go's `encoding/json` writes the spec), and
//! the lowering of a KIngress and its Services into the builder's
//! intermediate form ([`crate::ir`]).

use std::collections::{BTreeMap, HashMap};

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ObjectError;
use crate::host;
use crate::ir::{self, Backend, HeaderSet, PortSelector};
use crate::model::{self, IntOrString, Kind, ObjectKey, ObjectMeta, Service};
use crate::table::{Dispatch, Table};

/// Annotation naming the ingress class that should implement a KIngress.
pub const CLASS_ANNOTATION: &str = "networking.knative.dev/ingress.class";
/// The class this gateway implements unless told otherwise.
pub const DEFAULT_CLASS: &str = "knative-gateway.ingress.networking.knative.dev";
/// `apiVersion` of a KIngress.
pub const API_VERSION: &str = "networking.internal.knative.dev/v1alpha1";
/// A split carrying this header is a revision's: with no ready endpoint it
/// goes to the activator.
const REVISION_HEADER: &str = "knative-serving-revision";

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
    /// The paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRuleValue>,
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
    /// Conditions.
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Vec<Condition>,
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
    /// Hex SHA-256 of the spec, namespace and name: the `K-Network-Hash` value.
    #[serde(skip)]
    pub hash: String,
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
    let key = ing.key();
    ing.hash = hash(&ing.spec, &key.namespace, &key.name);
    Ok(ing)
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

/// What lowering needs besides the KIngress.
#[derive(Debug, Clone)]
pub struct LowerOptions<'a> {
    /// Kubernetes cluster domain, for expanding cluster-local hosts.
    pub cluster_domain: &'a str,
    /// The gateway's internal Service: an ExternalName pointing at it is dispatched internally.
    pub internal_service: Option<&'a ObjectKey>,
    /// While nothing is trusted for `https` backends: the system namespace
    /// where the trust bundle was looked for. A split to such a backend is
    /// then refused ([`ObjectError::NoTrustBundle`]), never served in plaintext.
    pub untrusted: Option<&'a str>,
}

/// Services by `(namespace, name)`.
pub type Services<'a> = HashMap<(&'a str, &'a str), &'a Service, foldhash::fast::RandomState>;

/// Lower a KIngress and the Services it names into the intermediate form.
/// A missing Service or port is an error: the KIngress keeps its last good
/// version (or is left out, if it never had one) until it appears.
pub fn lower(
    ing: &KIngress,
    services: &Services<'_>,
    opts: &LowerOptions<'_>,
) -> Result<ir::Ingress, ObjectError> {
    let key = ing.key();
    for (field, value) in [
        ("metadata.namespace", &key.namespace),
        ("metadata.name", &key.name),
    ] {
        if !crate::build::is_dns_name(value) {
            return Err(ObjectError::BadName {
                field: field.into(),
                value: value.clone(),
            });
        }
    }
    let affinity = crate::affinity::of(&ing.metadata)?.map(std::sync::Arc::new);
    let mut rules = Vec::with_capacity(ing.spec.rules.len());
    for (r, rule) in ing.spec.rules.iter().enumerate() {
        let hosts = rule_hosts(rule, r, opts.cluster_domain, redirects(ing))?;
        let http = rule.http.as_ref().ok_or(ObjectError::NoHttp { rule: r })?;
        let mut paths = Vec::new();
        for (p, path) in http.paths.iter().flatten().enumerate() {
            paths.push(lower_path(
                path,
                &format!("spec.rules[{r}].http.paths[{p}]"),
                services,
                opts,
            )?);
        }
        rules.push(ir::Rule { hosts, paths });
    }
    Ok(ir::Ingress {
        kind: Kind::KIngress,
        cluster_local: !rules.is_empty()
            && rules
                .iter()
                .all(|r| r.hosts.iter().all(|h| h.internal_only)),
        key: key.into(),
        hash: Some(HeaderValue::from_str(&ing.hash).expect("a hex digest is a valid header value")),
        rules,
        tags: Vec::new(),
        affinity,
    })
}

/// The hosts of every rule, as [`lower`] makes them (they need no Service).
pub fn hosts(ing: &KIngress, cluster_domain: &str) -> Result<Vec<ir::Host>, ObjectError> {
    let mut all = Vec::new();
    for (r, rule) in ing.spec.rules.iter().enumerate() {
        all.extend(rule_hosts(rule, r, cluster_domain, redirects(ing))?);
    }
    Ok(all)
}

/// The hosts of rule `r`, normalised, expanded, with its visibility.
/// `httpOption: Redirected`: plain HTTP to the public hosts gets a 301 to HTTPS.
fn redirects(ing: &KIngress) -> bool {
    ing.spec.http_option == "Redirected"
}

fn rule_hosts(
    rule: &IngressRule,
    r: usize,
    cluster_domain: &str,
    redirect: bool,
) -> Result<Vec<ir::Host>, ObjectError> {
    let internal_only = match rule.visibility.as_str() {
        "" | "ExternalIP" => false,
        "ClusterLocal" => true,
        other => {
            return Err(ObjectError::Visibility {
                field: format!("spec.rules[{r}].visibility"),
                value: other.into(),
            })
        }
    };
    if rule.hosts.is_empty() {
        return Err(ObjectError::NoHosts { rule: r });
    }
    let mut hosts: Vec<ir::Host> = Vec::new();
    for (h, raw) in rule.hosts.iter().enumerate() {
        let name = host::normalize_owned(raw).ok_or_else(|| ObjectError::BadHost {
            field: format!("spec.rules[{r}].hosts[{h}]"),
            host: raw.clone(),
        })?;
        for name in expanded(&name, cluster_domain) {
            if !hosts.iter().any(|x| x.name == name) {
                hosts.push(ir::Host {
                    name,
                    internal_only,
                    cluster_name: false,
                    https_redirect: redirect && !internal_only,
                });
            }
        }
    }
    Ok(hosts)
}

/// A host and the short forms cluster DNS also resolves, as Knative's
/// `ExpandedHosts`: `x.ns.svc.<domain>` also answers as `x.ns.svc` and `x.ns`.
fn expanded(host: &str, cluster_domain: &str) -> Vec<String> {
    let mut out = vec![host.to_owned()];
    for suffix in [
        format!(".{cluster_domain}"),
        format!(".svc.{cluster_domain}"),
    ] {
        if let Some(short) = host.strip_suffix(suffix.as_str()) {
            // Knative skips forms whose last label is all digits (not a valid TLD).
            let tld = short.rsplit('.').next().unwrap_or_default();
            if !short.is_empty() && !tld.bytes().all(|b| b.is_ascii_digit()) {
                out.push(short.to_owned());
            }
        }
    }
    out
}

fn lower_path(
    path: &HttpPath,
    field: &str,
    services: &Services<'_>,
    opts: &LowerOptions<'_>,
) -> Result<ir::Path, ObjectError> {
    let splits = path
        .splits
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ObjectError::NoSplits {
            field: field.into(),
        })?;
    let lone = splits.len() == 1;
    let mut out = Vec::with_capacity(splits.len());
    let mut sum: i64 = 0;
    for (i, split) in splits.iter().enumerate() {
        let field = format!("{field}.splits[{i}]");
        // Knative's defaulting: a lone split with no percent takes everything.
        let percent = if lone && split.percent == 0 {
            100
        } else {
            split.percent
        };
        if !(0..=100).contains(&percent) {
            return Err(ObjectError::SplitSum {
                field: format!("{field}.percent"),
                sum: percent,
            });
        }
        sum += percent;
        let append = headers(&split.append_headers, &format!("{field}.appendHeaders"))?;
        let activator = append.iter().any(|(n, _)| n.as_str() == REVISION_HEADER);
        out.push(ir::Split {
            // A path that rewrites the Host goes back through the gateway
            // (DomainMapping): never over system-internal TLS, as in Kourier.
            backend: backend(split, &field, services, opts, path.rewrite_host.is_empty())?,
            percent: percent as u32,
            append: (!append.is_empty()).then(|| append.into()),
            activator,
        });
    }
    if sum != 100 {
        return Err(ObjectError::SplitSum {
            field: format!("{field}.splits"),
            sum,
        });
    }
    let matches: HeaderSet = {
        let exact: SortedMap<String> = path
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.exact.clone()))
            .collect();
        headers(&exact, &format!("{field}.headers"))?
    };
    let rewrite_host = match path.rewrite_host.as_str() {
        "" => None,
        raw => Some(
            host::normalize_owned(raw)
                .and_then(|h| HeaderValue::from_str(&h).ok())
                .ok_or_else(|| ObjectError::BadHost {
                    field: format!("{field}.rewriteHost"),
                    host: raw.into(),
                })?,
        ),
    };
    Ok(ir::Path {
        prefix: path.path.clone(),
        headers: matches,
        append: headers(&path.append_headers, &format!("{field}.appendHeaders"))?,
        rewrite_host,
        splits: out,
    })
}

/// Typed headers from a map, each checked.
fn headers(map: &SortedMap<String>, field: &str) -> Result<HeaderSet, ObjectError> {
    map.iter()
        .map(|(name, value)| {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => Ok((n, v)),
                _ => Err(ObjectError::BadHeader {
                    field: field.into(),
                    name: name.clone(),
                }),
            }
        })
        .collect()
}

/// The backend of a split: its Service's endpoints on the port `servicePort`
/// names (over TLS when that is the `https` port and `tls_allowed`), the
/// gateway itself, or an external name.
fn backend(
    split: &BackendSplit,
    field: &str,
    services: &Services<'_>,
    opts: &LowerOptions<'_>,
    tls_allowed: bool,
) -> Result<Backend, ObjectError> {
    let (ns, name) = (
        split.service_namespace.as_str(),
        split.service_name.as_str(),
    );
    let service_key = || format!("{ns}/{name}");
    let service = services
        .get(&(ns, name))
        .ok_or_else(|| ObjectError::NoService {
            field: field.into(),
            service: service_key(),
        })?;
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| match &split.service_port {
            IntOrString::Int(n) => p.port.map(i64::from) == Some(*n),
            IntOrString::Str(s) => p.name.as_deref() == Some(s.as_str()),
        })
        .ok_or_else(|| ObjectError::NoServicePort {
            field: field.into(),
            service: service_key(),
            port: split.service_port.to_string(),
        })?;
    if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec
            .external_name
            .as_deref()
            .and_then(host::normalize_owned)
            .ok_or_else(|| ObjectError::BadHost {
                field: format!("Service {} spec.externalName", service_key()),
                host: spec.external_name.clone().unwrap_or_default(),
            })?;
        if opts.internal_service.is_some_and(|own| {
            expanded(&target, opts.cluster_domain)
                .iter()
                .any(|t| is_cluster_name(t, own))
        }) {
            return Ok(Backend::Internal);
        }
        let number = port.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(80);
        return Ok(Backend::External {
            namespace: ns.into(),
            name: name.into(),
            host: target,
            port: number,
        });
    }
    let number = match &port.target_port {
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::Str(_)) => None,
        None => port.port.and_then(|p| u16::try_from(p).ok()),
    };
    let h2c = |p: &crate::model::ServicePort| {
        ir::is_h2c_port(p.name.as_deref(), p.app_protocol.as_deref())
    };
    let tls = tls_allowed && ir::is_tls_port(port.name.as_deref(), port.port);
    if let Some(namespace) = opts.untrusted.filter(|_| tls) {
        return Err(ObjectError::NoTrustBundle {
            field: field.into(),
            namespace: namespace.into(),
        });
    }
    Ok(Backend::Pods {
        namespace: ns.into(),
        name: name.into(),
        revision: false,
        port: PortSelector {
            name: port.name.as_deref().unwrap_or_default().into(),
            number,
            // The `https` port of an HTTP/2 revision sits beside its `http2`
            // one: ALPN asks for h2 there (Kourier's rule).
            h2: if tls {
                ports.iter().any(h2c)
            } else {
                h2c(port)
            },
            tls,
            or_http2: false,
        },
    })
}

/// Whether `host` is the short `name.ns` form of Service `own`.
fn is_cluster_name(host: &str, own: &ObjectKey) -> bool {
    host.strip_suffix(own.namespace.as_str())
        .and_then(|h| h.strip_suffix('.'))
        == Some(own.name.as_str())
}

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
                Some(&ing.hash)
            } else {
                previous.get(&host)
            };
            if let Some(hash) = hash {
                map.insert(host, hash.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> IngressSpec {
        serde_json::from_value(value).unwrap()
    }

    /// Vectors written by hand from the Go struct definitions: field order,
    /// `omitempty`, `null` for nil `paths` and `splits`, sorted map keys,
    /// numbers and strings for `servicePort`, and Go's HTML escapes.
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

    #[test]
    fn cluster_local_hosts_expand_to_their_short_forms() {
        assert_eq!(
            expanded("web.ns.svc.cluster.local", "cluster.local"),
            ["web.ns.svc.cluster.local", "web.ns.svc", "web.ns"]
        );
        assert_eq!(
            expanded("web.example.com", "cluster.local"),
            ["web.example.com"]
        );
        assert_eq!(expanded("10.0.0.1", "cluster.local"), ["10.0.0.1"]);
    }
}
