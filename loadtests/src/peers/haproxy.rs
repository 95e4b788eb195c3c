//! HAProxy: a host map to one backend per distinct split, weighted servers
//! carrying the split, `http-reuse always` for upstream keep-alive.

use std::fmt::Write;

use super::TlsFiles;
use crate::topology::{upstream_of, upstreams, Topology};

/// `haproxy.cfg` and the host map it reads (`map_path` is where the map will
/// be written). HTTP/1.1 and h2c share `port` (HAProxy tells them apart); an
/// HTTPS port is added with `tls`.
pub fn config(
    t: &Topology,
    threads: usize,
    port: u16,
    map_path: &str,
    tls: Option<(u16, &TlsFiles)>,
) -> (String, String) {
    let tls_bind = tls.map_or(String::new(), |(p, files)| {
        format!(
            "  bind 127.0.0.1:{p} ssl crt {} alpn h2,http/1.1\n",
            files.combined.display()
        )
    });
    let mut c = format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n  tune.ssl.default-dh-param 2048\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 60s\n  option http-keep-alive\n  http-reuse always\nfrontend fe\n  bind 127.0.0.1:{port}\n{tls_bind}  use_backend %[req.hdr(host),lower,map_str({map_path},notfound)]\n  default_backend notfound\nbackend notfound\n  http-request deny deny_status 404\n"
    );
    let groups = upstreams(t);
    // Routes with the same split over the same endpoints share a backend.
    let mut backends: Vec<Vec<(usize, u32)>> = Vec::new();
    let mut map = String::new();
    for route in &t.routes {
        let sig: Vec<(usize, u32)> = route
            .revisions
            .iter()
            .filter(|v| v.percent > 0 && !v.endpoints.is_empty())
            .map(|v| (upstream_of(&groups, v), v.percent))
            .collect();
        let b = match backends.iter().position(|s| *s == sig) {
            Some(b) => b,
            None => {
                backends.push(sig);
                backends.len() - 1
            }
        };
        let _ = writeln!(map, "{} b{b}", route.host());
    }
    for (b, sig) in backends.iter().enumerate() {
        let _ = writeln!(c, "backend b{b}\n  balance roundrobin");
        for (u, percent) in sig {
            let eps = &groups[*u];
            // Each endpoint's weight is its share of the revision's percent (HAProxy allows 1..256).
            let w = (*percent as f64 * 2.0 / eps.len() as f64)
                .round()
                .clamp(1.0, 256.0);
            for (i, ep) in eps.iter().enumerate() {
                let _ = writeln!(c, "  server u{u}e{i} {ep} weight {w}");
            }
        }
    }
    (c, map)
}
