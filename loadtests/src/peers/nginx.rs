//! nginx: one `split_clients` keyed by `$request_id` per route, an upstream
//! per endpoint group with keep-alive, one server block per host.

use std::fmt::Write;
use std::path::Path;

use super::TlsFiles;
use crate::topology::{upstream_of, upstreams, Topology};

/// Listeners beyond plain HTTP/1.1 on `port`.
pub struct Extra<'a> {
    /// h2c with prior knowledge (nginx 1.22 cannot share a port with HTTP/1.1 for it).
    pub h2c_port: Option<u16>,
    /// HTTPS port and certificate.
    pub tls: Option<(u16, &'a TlsFiles)>,
}

/// `nginx.conf` for `threads` workers listening on `port`, with its files under `dir`.
pub fn config(t: &Topology, threads: usize, port: u16, dir: &Path, extra: &Extra<'_>) -> String {
    let dir = dir.display();
    let mut c = format!(
        "worker_processes {threads};\ndaemon off;\nmaster_process on;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\nworker_rlimit_nofile 65536;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  server_names_hash_max_size 65536;\n  server_names_hash_bucket_size 128;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n"
    );
    // Every server block listens on every port (the first marks the default server).
    let mut listens = vec![format!("listen 127.0.0.1:{port}{{default}};")];
    if let Some(h2c) = extra.h2c_port {
        listens.push(format!("listen 127.0.0.1:{h2c} http2{{default}};"));
    }
    if let Some((tls, files)) = extra.tls {
        listens.push(format!("listen 127.0.0.1:{tls} ssl http2{{default}};"));
        let _ = writeln!(
            c,
            "  ssl_certificate {};\n  ssl_certificate_key {};\n  ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_session_cache shared:SSL:10m;",
            files.cert.display(),
            files.key.display()
        );
    }
    let listen = |default: bool| {
        listens
            .iter()
            .map(|l| l.replace("{default}", if default { " default_server" } else { "" }))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let groups = upstreams(t);
    for (i, g) in groups.iter().enumerate() {
        let _ = writeln!(c, "  upstream u{i} {{");
        for ep in g {
            let _ = writeln!(c, "    server {ep};");
        }
        c.push_str("    keepalive 512;\n    keepalive_requests 100000000;\n  }\n");
    }
    let _ = writeln!(
        c,
        "  server {{ {} server_name _; return 404; }}",
        listen(true)
    );
    for (r, route) in t.routes.iter().enumerate() {
        let live: Vec<_> = route
            .revisions
            .iter()
            .filter(|v| v.percent > 0 && !v.endpoints.is_empty())
            .collect();
        let _ = writeln!(c, "  split_clients \"${{request_id}}\" $route{r} {{");
        for (k, rev) in live.iter().enumerate() {
            let u = upstream_of(&groups, rev);
            if k + 1 == live.len() {
                let _ = writeln!(c, "    * u{u};");
            } else {
                let _ = writeln!(c, "    {}% u{u};", rev.percent);
            }
        }
        c.push_str("  }\n");
        let _ = writeln!(
            c,
            "  server {{ {} server_name {}; location / {{ proxy_pass http://$route{r}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
            listen(false),
            route.host()
        );
    }
    c.push_str("}\n");
    c
}
