//! nginx: one `split_clients` keyed by `$request_id` per route, an upstream
//! per endpoint group with keep-alive, one server block per host.

use std::fmt::Write;
use std::path::Path;

use crate::topology::{upstream_of, upstreams, Topology};

/// `nginx.conf` for `threads` workers listening on `port`, with its files under `dir`.
pub fn config(t: &Topology, threads: usize, port: u16, dir: &Path) -> String {
    let dir = dir.display();
    let mut c = format!(
        "worker_processes {threads};\ndaemon off;\nmaster_process on;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\nworker_rlimit_nofile 65536;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  server_names_hash_max_size 65536;\n  server_names_hash_bucket_size 128;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n"
    );
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
        "  server {{ listen 127.0.0.1:{port} default_server; server_name _; return 404; }}"
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
            "  server {{ listen 127.0.0.1:{port}; server_name {}; location / {{ proxy_pass http://$route{r}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
            route.host()
        );
    }
    c.push_str("}\n");
    c
}
