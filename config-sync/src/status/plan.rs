//! What the status writer should do, as plain data over the live table and the
//! KIngresses: what each status should say ([`verdict`]), which probes must
//! answer before it says Ready ([`targets`]), and in what order the work is
//! taken ([`Arrivals`]). No I/O here.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::error::{ObjectError, Outcome, Rejection};
use crate::model::KIngress;
use crate::model::ObjectKey;
use crate::served;
use crate::sources::kube::SourceKind;
use dataplane::table::Table;

/// What a KIngress's status should say now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Served; Ready once every replica answers every probe.
    Ready,
    /// Not served (or not all of it), with a reason and message.
    NotReady(&'static str, String),
    /// Served, but a replica keeps failing its probe: `Unknown`, with what it
    /// answered, until it passes.
    Probing(String),
}

/// The reason written with [`Verdict::Probing`].
pub(crate) const PROBE_FAILING: &str = "ProbeFailing";

impl Verdict {
    /// The condition's (status, reason), which decide whether a write is new.
    pub(crate) fn tag(&self) -> (&'static str, &'static str) {
        match self {
            Verdict::Ready => ("True", ""),
            Verdict::NotReady(reason, _) => ("False", reason),
            Verdict::Probing(_) => ("Unknown", PROBE_FAILING),
        }
    }
}

/// What the live table says of `ing`; `None` while it does not apply the
/// current version yet. `rejections` are the table's rejections of `ing`.
pub(crate) fn verdict(
    source: SourceKind,
    ing: &KIngress,
    table: &Table,
    rejections: &[&Rejection],
) -> Option<Verdict> {
    if source == SourceKind::Routes {
        return Some(Verdict::Ready);
    }
    let mut conflict = None;
    for r in rejections {
        match &r.error {
            ObjectError::HostConflict { .. } => conflict = Some(r.error.to_string()),
            e @ (ObjectError::NoService { .. } | ObjectError::NoServicePort { .. }) => {
                return Some(Verdict::NotReady("ServiceNotFound", e.to_string()))
            }
            e @ ObjectError::NoEndpoints { .. } => {
                return Some(Verdict::NotReady("EndpointsNotFound", e.to_string()))
            }
            e @ ObjectError::NoTrustBundle { .. } => {
                return Some(Verdict::NotReady("TrustBundleMissing", e.to_string()))
            }
            // Its hosts are served over HTTP, but not with the certificate
            // it asks for: not what was asked.
            e @ ObjectError::NoSecret { .. } => {
                return Some(Verdict::NotReady("SecretNotFound", e.to_string()))
            }
            // Left out, or served from its last good version: either
            // way, not this version.
            e if matches!(r.outcome, Outcome::LastGood | Outcome::LeftOut) => {
                return Some(Verdict::NotReady("InvalidSpec", e.to_string()))
            }
            _ => {}
        }
    }
    if let Some(message) = conflict {
        return Some(Verdict::NotReady("DomainConflict", message));
    }
    served::is_applied(ing, table).then_some(Verdict::Ready)
}

/// Whether the written status of `ing` already says `verdict` for its generation.
pub(crate) fn says(ing: &KIngress, verdict: &Verdict) -> bool {
    if *verdict == Verdict::Ready {
        return ing.ready_generation() == Some(ing.generation());
    }
    let (status, reason) = verdict.tag();
    ing.status.as_ref().and_then(|s| s.observed_generation) == Some(ing.generation())
        && ing
            .condition("Ready")
            .is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason))
}

/// The listeners of this gateway's replicas besides the plain internal one
/// (found in its Service's endpoints): every replica runs the same ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsPorts {
    /// The external HTTPS listener's port, if it listens.
    pub external: Option<u16>,
    /// The internal HTTPS listener's port, if it listens.
    pub internal: Option<u16>,
}

/// A certificate compared by identity: the table holds one parse per
/// Secret version, so a rotated certificate is a new probe.
#[derive(Clone)]
pub(crate) struct Expected(pub Arc<CertifiedKey>);

impl Expected {
    /// The leaf certificate the listener must present.
    pub(crate) fn leaf(&self) -> Option<&[u8]> {
        self.0.cert.first().map(|c| c.as_ref())
    }
}

impl PartialEq for Expected {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Expected {}

impl Hash for Expected {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state)
    }
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Expected(certificate)")
    }
}

/// One probe: a host asked of one replica's listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// The replica's listener.
    pub addr: SocketAddr,
    /// The `Host` (and, over TLS, the SNI) asked for.
    pub host: Arc<str>,
    /// Over TLS, the certificate that must be served for `host`.
    pub tls: Option<Expected>,
}

/// The probes that must all answer `ing`'s hash before it is Ready: every
/// rule's first host on every replica, over HTTPS (on the listener of the
/// rule's visibility, with its SNI) when a `spec.tls` entry covers a rule of
/// that visibility, as Kourier probes. Errs with why a TLS rule cannot be
/// probed: the listener is off, or no certificate is served for the host.
/// With `--source routes` the table holds no KIngress certificates, and
/// every probe is plain.
pub(crate) fn targets(
    ing: &KIngress,
    replicas: &[SocketAddr],
    ports: TlsPorts,
    source: SourceKind,
    table: &Table,
) -> Result<Vec<Target>, Verdict> {
    let tls_for = |local: bool| {
        source == SourceKind::KIngress
            && ing
                .spec
                .tls
                .iter()
                .any(|t| crate::tls::applies(ing, t, local))
    };
    let (external_tls, local_tls) = (tls_for(false), tls_for(true));
    let mut out = Vec::with_capacity(replicas.len() * ing.spec.rules.len());
    for rule in &ing.spec.rules {
        let Some(first) = rule.hosts.first() else {
            continue;
        };
        let host: Arc<str> = first.trim_end_matches('.').to_ascii_lowercase().into();
        let local = rule.visibility == "ClusterLocal";
        if !(if local { local_tls } else { external_tls }) {
            out.extend(replicas.iter().map(|&addr| Target {
                addr,
                host: host.clone(),
                tls: None,
            }));
            continue;
        }
        let (port, flag) = if local {
            (ports.internal, "--internal-https")
        } else {
            (ports.external, "--https")
        };
        let Some(port) = port else {
            return Err(Verdict::NotReady(
                "TLSNotServed",
                format!("spec.tls covers {host}, but the gateway runs with {flag} off"),
            ));
        };
        let certs = table.certs();
        let cert = if local {
            certs.lookup_internal(Some(&host))
        } else {
            certs.lookup(Some(&host))
        };
        let Some(cert) = cert else {
            return Err(Verdict::NotReady(
                "SecretNotFound",
                format!("no certificate is served for {host}"),
            ));
        };
        out.extend(replicas.iter().map(|r| Target {
            addr: SocketAddr::new(r.ip(), port),
            host: host.clone(),
            tls: Some(Expected(cert.clone())),
        }));
    }
    Ok(out)
}

/// The order work is taken in. Each (KIngress, generation) gets a number when
/// first seen: those pending when the writer started (or took the lead) are
/// the backlog, number 0, taken in store order; a change seen later gets the
/// next number and goes before the backlog, oldest change first. So a
/// KIngress changed during a cold start does not wait for the cold start.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    seen: HashMap<ObjectKey, (i64, u64)>,
    next: u64,
    /// Whether the first scan (the backlog) is over.
    scanned: bool,
}

impl Arrivals {
    /// Forget everything: the next scan is a backlog again (a new lead).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    /// End a scan: whatever is seen from now on is a change.
    pub(crate) fn end_scan(&mut self) {
        self.scanned = true;
    }

    /// The number of `key` at `generation`: 0 for the backlog, else its
    /// place among later changes.
    pub(crate) fn rank(&mut self, key: &ObjectKey, generation: i64) -> u64 {
        match self.seen.get_mut(key) {
            Some((g, n)) if *g == generation => *n,
            Some(entry) => {
                self.next += 1;
                *entry = (generation, self.next);
                self.next
            }
            None => {
                let n = if self.scanned {
                    self.next += 1;
                    self.next
                } else {
                    0
                };
                self.seen.insert(key.clone(), (generation, n));
                n
            }
        }
    }

    /// Drop keys no longer present.
    pub(crate) fn retain(&mut self, present: impl Fn(&ObjectKey) -> bool) {
        self.seen.retain(|k, _| present(k));
    }
}

/// Sort key of a pending KIngress: later changes (oldest first), then the
/// backlog in store order (`index`), then KIngresses whose status is
/// already right and are only verified.
pub(crate) fn order(rank: u64, index: usize, verify_only: bool) -> (u8, u64, usize) {
    match (verify_only, rank) {
        (true, _) => (2, 0, index),
        (false, 0) => (1, 0, index),
        (false, n) => (0, n, index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("ns", name)
    }

    fn kingress(tls_hosts: &[&str]) -> KIngress {
        let split = serde_json::json!([{"serviceName": "s", "serviceNamespace": "ns",
                                         "servicePort": 80, "percent": 100}]);
        crate::model::kingress::decode(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "generation": 1},
            "spec": {
                "rules": [
                    {"hosts": ["Web.Example.com."], "visibility": "ExternalIP",
                     "http": {"paths": [{"splits": split}]}},
                    {"hosts": ["web.ns.svc.cluster.local", "web.ns"], "visibility": "ClusterLocal",
                     "http": {"paths": [{"splits": split}]}}],
                "tls": [{"hosts": tls_hosts, "secretName": "cert", "secretNamespace": "ns"}]}}))
        .unwrap()
    }

    #[test]
    fn rules_are_probed_plain_on_every_replica_without_tls() {
        let replicas: Vec<SocketAddr> = vec![
            "10.0.0.1:8081".parse().unwrap(),
            "10.0.0.2:8081".parse().unwrap(),
        ];
        let ports = TlsPorts {
            external: Some(8443),
            internal: Some(8444),
        };
        let ing = kingress(&["other.example.com"]);
        let table = Table::default();
        let t = targets(&ing, &replicas, ports, SourceKind::KIngress, &table).unwrap();
        let got: Vec<(String, &str, bool)> = t
            .iter()
            .map(|t| (t.addr.to_string(), &*t.host, t.tls.is_some()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:8081".to_owned(), "web.example.com", false),
                ("10.0.0.2:8081".to_owned(), "web.example.com", false),
                (
                    "10.0.0.1:8081".to_owned(),
                    "web.ns.svc.cluster.local",
                    false
                ),
                (
                    "10.0.0.2:8081".to_owned(),
                    "web.ns.svc.cluster.local",
                    false
                ),
            ]
        );
    }

    #[test]
    fn a_tls_rule_that_cannot_be_served_says_why() {
        let replicas: Vec<SocketAddr> = vec!["10.0.0.1:8081".parse().unwrap()];
        let table = Table::default();
        let ing = kingress(&["web.example.com"]);
        let off = TlsPorts {
            external: None,
            internal: Some(8444),
        };
        match targets(&ing, &replicas, off, SourceKind::KIngress, &table) {
            Err(Verdict::NotReady("TLSNotServed", m)) => assert!(m.contains("--https off"), "{m}"),
            other => panic!("{other:?}"),
        }
        let on = TlsPorts {
            external: Some(8443),
            internal: Some(8444),
        };
        match targets(&ing, &replicas, on, SourceKind::KIngress, &table) {
            Err(Verdict::NotReady("SecretNotFound", m)) => {
                assert!(m.contains("web.example.com"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // A cluster-local rule with all its hosts covered is probed on the
        // internal HTTPS listener; with one host left out, plainly.
        let local = kingress(&["web.ns.svc.cluster.local", "web.ns"]);
        match targets(&local, &replicas, off, SourceKind::KIngress, &table) {
            Err(Verdict::NotReady("SecretNotFound", m)) => {
                assert!(m.contains("web.ns.svc.cluster.local"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let partly = kingress(&["web.ns.svc.cluster.local"]);
        let plain = targets(&partly, &replicas, off, SourceKind::KIngress, &table).unwrap();
        assert!(plain.iter().all(|t| t.tls.is_none()));
        // With --source routes every probe is plain.
        let routes = targets(&ing, &replicas, off, SourceKind::Routes, &table).unwrap();
        assert!(routes
            .iter()
            .all(|t| t.tls.is_none() && t.addr.port() == 8081));
    }

    #[test]
    fn a_change_during_the_backlog_goes_first_and_changes_keep_their_order() {
        let mut a = Arrivals::default();
        let backlog: Vec<u64> = ["a", "b", "c"].iter().map(|n| a.rank(&key(n), 1)).collect();
        assert_eq!(backlog, [0, 0, 0]);
        a.end_scan();
        // Next scan: "b" changed, then "z" appeared, then "c" changed.
        let b = a.rank(&key("b"), 2);
        let z = a.rank(&key("z"), 1);
        let c = a.rank(&key("c"), 2);
        assert!(0 < b && b < z && z < c, "{b} {z} {c}");
        // Unchanged keys keep their number.
        assert_eq!(a.rank(&key("a"), 1), 0);
        assert_eq!(a.rank(&key("b"), 2), b);
        let mut work = [
            (order(0, 0, false), "a"),
            (order(b, 1, false), "b"),
            (order(c, 2, false), "c"),
            (order(0, 3, true), "verified"),
            (order(z, 4, false), "z"),
        ];
        work.sort();
        let names: Vec<&str> = work.iter().map(|w| w.1).collect();
        assert_eq!(names, ["b", "z", "c", "a", "verified"]);
        a.retain(|k| k.name != "a");
        a.reset();
        assert_eq!(a.rank(&key("b"), 2), 0, "a new lead is a new backlog");
    }
}
