//! A KIngress and the Services it names, lowered into the builder's
//! intermediate form ([`crate::ir`]).

use std::collections::HashMap;

use http::{HeaderName, HeaderValue};

use dataplane::endpoints::PortSelector;
use dataplane::host;

use crate::error::ObjectError;
use crate::ir::{self, Backend, HeaderSet};
use crate::model::kingress::{BackendSplit, HttpPath, IngressRule, KIngress, SortedMap};
use crate::model::{IntOrString, Kind, ObjectKey, Service};

/// A split carrying this header is a revision's: with no ready endpoint it
/// goes to the activator.
pub(crate) const REVISION_HEADER: &str = "knative-serving-revision";

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
    super::check_names(&key)?;
    let affinity = super::affinity::of(&ing.metadata)?.map(std::sync::Arc::new);
    let authorize = super::authz::enabled(&ing.metadata)?;
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
        authorize,
        labels: ing.labels.clone(),
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

/// Services by `(namespace, name)`, for lowering KIngresses.
pub(crate) fn service_index(services: &[Service]) -> Services<'_> {
    services
        .iter()
        .map(|s| {
            let m = &s.metadata;
            let key = (
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or_default(),
            );
            (key, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
