//! A Route's `status` validated and lowered into the intermediate form: its
//! host, its split by percent and its tags, each revision a backend.

use std::sync::Arc;

use http::HeaderName;

use dataplane::affinity::Affinity;
use dataplane::endpoints::PortSelector;
use dataplane::host;

use crate::error::ObjectError;
use crate::ir;
use crate::lower::{dns_header, is_dns_name};
use crate::model::{self, Kind, ObjectKey, Route, VISIBILITY_LABEL};

/// `Knative-Serving-Revision`: set on every request sent to a revision.
pub const REVISION_HEADER: HeaderName = HeaderName::from_static("knative-serving-revision");
/// `Knative-Serving-Namespace`: set on every request sent to a revision.
pub const NAMESPACE_HEADER: HeaderName = HeaderName::from_static("knative-serving-namespace");

/// A Route that passed validation, reduced to what the table needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRoute {
    /// `namespace/name`, shared with the table's route entry.
    pub key: Arc<ObjectKey>,
    /// Reachable only inside the cluster.
    pub cluster_local: bool,
    /// Host of `status.url`.
    pub host: String,
    /// `(revision, percent)` with percent > 0, merged per revision; sums to 100.
    pub split: Vec<(String, u32)>,
    /// Tagged targets.
    pub tags: Vec<ValidTag>,
    /// Sticky canary settings, from its annotations.
    pub affinity: Option<Arc<Affinity>>,
    /// Its requests go to the authorization server (`knative-gateway.dev/ext-authz`).
    pub authorize: bool,
}

/// A tagged traffic target.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTag {
    /// The tag.
    pub tag: String,
    /// Its revision.
    pub revision: String,
    /// Host of its `url`, when set.
    pub host: Option<String>,
}

/// Check a Route's status and reduce it to a [`ValidRoute`].
pub fn validate_route(route: &Route, cluster_domain: &str) -> Result<ValidRoute, ObjectError> {
    let key = model::key(&route.metadata);
    super::check_names(&key)?;
    let affinity = super::affinity::of(&route.metadata)?.map(Arc::new);
    let authorize = super::authz::enabled(&route.metadata)?;
    let status = route.status.as_ref().ok_or(ObjectError::NoStatus)?;
    let url = status.url.as_deref().ok_or(ObjectError::NoUrl)?;
    let host = host::of_url(url).ok_or_else(|| ObjectError::BadUrl {
        field: "status.url".into(),
        url: url.into(),
    })?;
    let traffic = status
        .traffic
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or(ObjectError::NoTraffic)?;

    let mut split: Vec<(String, u32)> = Vec::new();
    let mut tags: Vec<ValidTag> = Vec::new();
    let mut sum: i64 = 0;
    for (index, t) in traffic.iter().enumerate() {
        let revision = t
            .revision_name
            .as_deref()
            .filter(|r| !r.is_empty())
            .ok_or(ObjectError::MissingRevision { index })?;
        if !is_dns_name(revision) {
            return Err(ObjectError::BadName {
                field: format!("status.traffic[{index}].revisionName"),
                value: revision.into(),
            });
        }
        let percent = t.percent.unwrap_or(0);
        if percent < 0 {
            return Err(ObjectError::NegativePercent { index, percent });
        }
        sum = sum.saturating_add(percent);
        if percent > 0 && percent <= 100 {
            match split.iter_mut().find(|(r, _)| r == revision) {
                Some((_, p)) => *p += percent as u32,
                None => split.push((revision.to_owned(), percent as u32)),
            }
        }
        if let Some(tag) = t.tag.as_deref().filter(|t| !t.is_empty()) {
            if !is_dns_name(tag) {
                return Err(ObjectError::BadName {
                    field: format!("status.traffic[{index}].tag"),
                    value: tag.into(),
                });
            }
            let host = match t.url.as_deref() {
                Some(url) => Some(host::of_url(url).ok_or_else(|| ObjectError::BadUrl {
                    field: format!("status.traffic[{index}].url"),
                    url: url.into(),
                })?),
                None => None,
            };
            if !tags.iter().any(|x| x.tag == tag) {
                tags.push(ValidTag {
                    tag: tag.to_owned(),
                    revision: revision.to_owned(),
                    host,
                });
            }
        }
    }
    if sum != 100 {
        return Err(ObjectError::PercentSum { sum });
    }
    // Under `.svc.<cluster domain>`, checked without building the suffix per route.
    let under_svc = host
        .strip_suffix(cluster_domain)
        .is_some_and(|h| h.ends_with(".svc."));
    let cluster_local =
        route.metadata.label(VISIBILITY_LABEL) == Some("cluster-local") || under_svc;
    Ok(ValidRoute {
        key: Arc::new(key),
        cluster_local,
        host,
        split,
        tags,
        affinity,
        authorize,
    })
}

/// Lower a validated Route into the intermediate form: its URL's host and its
/// `name.ns` cluster name get the split; each tag's host and cluster name get
/// its revision. Every split sets the revision's Knative headers and goes to
/// the activator when the revision has no ready endpoint.
pub fn lower_route(route: &ValidRoute) -> ir::Ingress {
    let ns = route.key.namespace.as_str();
    let name = route.key.name.as_str();
    let namespace: Arc<str> = ns.into();
    let namespace_value = dns_header(ns);
    // Each revision once: its backend and headers are shared by its split and tag.
    let mut revisions: Vec<(Arc<str>, ir::Backend, ir::SharedHeaders)> = Vec::new();
    let mut revision = |rev: &str| -> (ir::Backend, ir::SharedHeaders) {
        if let Some((_, b, h)) = revisions.iter().find(|r| &*r.0 == rev) {
            return (b.clone(), h.clone());
        }
        let name: Arc<str> = rev.into();
        let backend = ir::Backend::Pods {
            namespace: namespace.clone(),
            name: name.clone(),
            revision: true,
            port: PortSelector {
                name: http_port_name(),
                number: None,
                h2: false,
                tls: false,
                or_http2: true,
            },
        };
        let headers: ir::SharedHeaders = Arc::new([
            (REVISION_HEADER, dns_header(rev)),
            (NAMESPACE_HEADER, namespace_value.clone()),
        ]);
        revisions.push((name, backend.clone(), headers.clone()));
        (backend, headers)
    };
    let mut split = |rev: &str, percent: u32| {
        let (backend, headers) = revision(rev);
        ir::Split {
            backend,
            percent,
            append: Some(headers),
            activator: true,
        }
    };
    let rule = |hosts: Vec<ir::Host>, splits: Vec<ir::Split>| ir::Rule {
        hosts,
        paths: vec![ir::Path {
            prefix: String::new(),
            headers: Vec::new(),
            append: Vec::new(),
            rewrite_host: None,
            splits,
        }],
    };
    let public = |host: &str| ir::Host {
        name: host.to_owned(),
        internal_only: route.cluster_local,
        cluster_name: false,
        https_redirect: false,
    };
    let cluster_name = |short: String| ir::Host {
        name: format!("{short}.{ns}"),
        internal_only: true,
        cluster_name: true,
        https_redirect: false,
    };
    let main: Vec<ir::Split> = route
        .split
        .iter()
        .map(|(rev, pct)| split(rev, *pct))
        .collect();
    let mut rules = Vec::with_capacity(1 + route.tags.len());
    rules.push(rule(
        vec![public(&route.host), cluster_name(name.to_owned())],
        main,
    ));
    let mut tags = Vec::with_capacity(route.tags.len());
    for tag in &route.tags {
        let mut hosts: Vec<ir::Host> = Vec::with_capacity(2);
        hosts.extend(tag.host.as_deref().map(public));
        hosts.push(cluster_name(format!("{}-{name}", tag.tag)));
        let to = split(&tag.revision, 100);
        tags.push((tag.tag.clone(), to.backend.clone()));
        rules.push(rule(hosts, vec![to]));
    }
    ir::Ingress {
        kind: Kind::Route,
        key: route.key.clone(),
        cluster_local: route.cluster_local,
        hash: None,
        rules,
        tags,
        affinity: route.affinity.clone(),
        authorize: route.authorize,
        labels: dataplane::table::Labels::default(),
    }
}

/// `http`, shared by every revision backend instead of a copy each.
fn http_port_name() -> Arc<str> {
    static HTTP: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "http".into());
    HTTP.clone()
}
