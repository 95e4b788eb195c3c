//! Where a backend's endpoints come from: the EndpointSlices behind an index
//! key (a revision's, or a Service's), and which of their ports carries it.

use std::net::SocketAddr;
use std::sync::Arc;

/// Which port of an EndpointSlice carries a backend, and how to speak to it:
/// the port named `name`, or else `number`, the Service's numeric `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSelector {
    /// Slice port name: the Service port's name (empty when unnamed), or
    /// queue-proxy's `http` for a revision. Shared: most are the same few names.
    pub name: Arc<str>,
    /// Used when no slice port has that name.
    pub number: Option<u16>,
    /// The port speaks HTTP/2: in cleartext (a Service port named `http2`
    /// or `h2c`, or with `appProtocol: kubernetes.io/h2c`), or, with `tls`,
    /// by ALPN `h2` (the Service has such a port beside its `https` one).
    pub h2: bool,
    /// The port is Knative's `https` port (system-internal TLS): reached over
    /// TLS 1.3 with the trust bundle and Knative's names ([`crate::trust`]).
    pub tls: bool,
    /// A revision's: a slice without the `http` port is served on its port
    /// named `http2` over HTTP/2 cleartext, as Knative names the private port
    /// of a revision whose container asks for h2c.
    pub or_http2: bool,
}

/// Knative's name for a revision port that speaks HTTP/2 cleartext.
pub const HTTP2_PORT: &str = "http2";

impl PortSelector {
    /// The port of a slice with `ports`, if any matches, and whether it
    /// speaks HTTP/2 cleartext.
    pub fn select(&self, ports: &[(Arc<str>, u16)]) -> Option<(u16, bool)> {
        let named = |want: &str| ports.iter().find(|(name, _)| **name == *want).map(|p| p.1);
        if let Some(port) = named(&self.name) {
            return Some((port, self.h2));
        }
        if self.or_http2 {
            if let Some(port) = named(HTTP2_PORT) {
                return Some((port, true));
            }
        }
        self.number.map(|port| (port, self.h2))
    }
}

/// The one writer of endpoint index keys, into `buf`: `r/ns/name` for a
/// revision's private EndpointSlices, `s/ns/name` for a Service's.
pub fn write_key<'b>(buf: &'b mut String, revision: bool, namespace: &str, name: &str) -> &'b str {
    buf.clear();
    for part in [if revision { "r" } else { "s" }, "/", namespace, "/", name] {
        buf.push_str(part);
    }
    buf
}

/// Endpoint index key of a revision's private EndpointSlices.
pub fn revision_key(namespace: &str, revision: &str) -> String {
    write_key(&mut String::new(), true, namespace, revision).to_owned()
}

/// Endpoint index key of a Service's EndpointSlices.
pub fn service_key(namespace: &str, service: &str) -> String {
    write_key(&mut String::new(), false, namespace, service).to_owned()
}

/// The EndpointSlices now behind one endpoint index key.
#[derive(Debug, Clone)]
pub struct EndpointUpdate {
    /// [`revision_key`] or [`service_key`].
    pub key: String,
    /// Each slice's ports and ready addresses.
    pub slices: Vec<SliceEndpoints>,
}

/// What one EndpointSlice contributes: its named ports and ready addresses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliceEndpoints {
    /// `(name, number)` of every port; an unnamed port has an empty name.
    pub ports: Vec<(Arc<str>, u16)>,
    /// Ready addresses.
    pub addrs: Vec<std::net::IpAddr>,
}

/// The endpoints of `slices` on the port `port` selects, each with whether
/// it speaks HTTP/2 cleartext: sorted, deduplicated (a pod can sit in two
/// slices while they are being rebalanced).
pub fn endpoint_addrs(slices: &[SliceEndpoints], port: &PortSelector) -> Vec<(SocketAddr, bool)> {
    let mut out: Vec<(SocketAddr, bool)> = slices
        .iter()
        .filter_map(|s| Some((s, port.select(&s.ports)?)))
        .flat_map(|(s, (p, h2))| s.addrs.iter().map(move |ip| (SocketAddr::new(*ip, p), h2)))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether the port `port` selects in `slices` speaks HTTP/2, known from
/// the slices' ports even while none has a ready address (a revision at zero).
pub fn speaks_http2(slices: &[SliceEndpoints], port: &PortSelector) -> bool {
    slices
        .iter()
        .any(|s| port.select(&s.ports).is_some_and(|(_, h2)| h2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(list: &[(&str, u16)]) -> Vec<(Arc<str>, u16)> {
        list.iter().map(|(n, p)| ((*n).into(), *p)).collect()
    }

    fn selector(name: &str, number: Option<u16>, h2: bool, or_http2: bool) -> PortSelector {
        PortSelector {
            name: name.into(),
            number,
            h2,
            tls: false,
            or_http2,
        }
    }

    #[test]
    fn a_port_is_picked_by_name_then_number_with_its_protocol() {
        let svc = selector("grpc", Some(9000), true, false);
        assert_eq!(
            svc.select(&ports(&[("x", 1), ("grpc", 50051)])),
            Some((50051, true))
        );
        assert_eq!(svc.select(&ports(&[("x", 1)])), Some((9000, true)));
        let unnumbered = selector("web", None, false, false);
        assert_eq!(unnumbered.select(&ports(&[("x", 1)])), None);
    }

    #[test]
    fn a_revision_without_an_http_port_is_served_on_http2_over_h2c() {
        let rev = selector("http", None, false, true);
        assert_eq!(
            rev.select(&ports(&[("http", 8012), ("http2", 8013)])),
            Some((8012, false))
        );
        assert_eq!(
            rev.select(&ports(&[("http-metrics", 9091), ("http2", 8013)])),
            Some((8013, true))
        );
        assert_eq!(rev.select(&ports(&[("http-metrics", 9091)])), None);
        // A Service's port never falls back to another name.
        let svc = selector("http", None, false, false);
        assert_eq!(svc.select(&ports(&[("http2", 8013)])), None);
    }
}
