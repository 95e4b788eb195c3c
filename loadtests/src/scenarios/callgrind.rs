//! Instructions per proxied request: the split scenario's route (90/10 over
//! two revisions, two endpoints each) through the gateway, nginx and HAProxy,
//! each with one worker thread under callgrind (see [`crate::callgrind`]);
//! through the gateway with every request checked by an external
//! authorization server (`gateway authz`), beside the plain request; and,
//! with h2load installed, the gateway's and HAProxy's requests over h2c
//! (`<proxy> h2c`: 8 connections of 32 streams, as `protocols`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::{hello, Ctx, A, B};
use crate::callgrind::{self, Sample};
use crate::load::{self, Spec};
use crate::peers::{Kind, Launch, Listeners};
use crate::report::Instructions;
use crate::topology::Topology;

/// Client connections, as in the figures the performance issue started from.
const CONNS: usize = 64;
/// h2c: connections, and streams on each (as the `protocols` scenario).
const H2C_CONNS: usize = 8;
const H2C_STREAMS: usize = 32;

/// How the load is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// HTTP/1.1 keep-alive, the load generator's.
    Http1,
    /// h2c with prior knowledge, h2load's.
    H2c,
}

/// Run the scenario.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    anyhow::ensure!(
        callgrind::available(),
        "valgrind is not installed (Debian: apt-get install valgrind)"
    );
    let a = ctx.backends(A, 2)?;
    let b = ctx.backends(B, 2)?;
    let topo = Topology {
        routes: vec![hello(&[&a[0], &a[1]], &[&b[0], &b[1]], 90, 10)],
        upstream_tls: None,
        authz: None,
    };
    let host = topo.routes[0].host();
    // Only the gateway's process is counted: the server's work is not.
    let server = crate::authz::start(1)?;
    let checked = Topology {
        authz: Some(server.addr),
        ..topo.clone()
    };
    for (kind, bin) in ctx.proxies() {
        if kind == Kind::Envoy {
            continue; // minutes to start under valgrind, and not in the comparison asked for
        }
        measure(ctx, kind, bin, &topo, &host, kind.name(), Protocol::Http1)?;
        if kind == Kind::Gateway {
            let name = "gateway authz";
            measure(ctx, kind, bin, &checked, &host, name, Protocol::Http1)?;
        }
        // nginx serves h2c on a port of its own, without HTTP/1.1: left out.
        if ctx.bins.h2load.is_some() && kind != Kind::Nginx {
            let name = format!("{} h2c", kind.name());
            measure(ctx, kind, bin, &topo, &host, &name, Protocol::H2c)?;
        }
    }
    Ok(())
}

/// Instructions per request of `kind` serving `topo`, reported as `name`.
fn measure(
    ctx: &mut Ctx,
    kind: Kind,
    bin: &Path,
    topo: &Topology,
    host: &str,
    name: &str,
    protocol: Protocol,
) -> anyhow::Result<()> {
    // The long run lasts three times the short one; both well past warm-up.
    let short = ctx.opts.duration.max(Duration::from_secs(2));
    ctx.progress(format!("callgrind: {name} with 1 thread"));
    let mut samples = Vec::new();
    for (run, duration) in [short, short * 3].into_iter().enumerate() {
        let dir = tempfile::Builder::new()
            .prefix(&format!("callgrind-{}-", kind.name()))
            .tempdir()?;
        // nginx started as root runs its worker as nobody, which writes its counts here too.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let launch = Launch {
            callgrind: Some(dir.path()),
            listeners: Listeners {
                h2c: protocol == Protocol::H2c,
                tls: None,
            },
            ..Launch::plain(kind, bin, topo, 1)
        };
        let proxy = launch.start(host)?;
        let requests = match protocol {
            Protocol::Http1 => {
                let out = load::run(&Spec {
                    duration,
                    ..ctx.spec(proxy.addr, host, CONNS)
                });
                anyhow::ensure!(
                    out.errors == 0,
                    "{name} failed {} requests under callgrind: {:?}",
                    out.errors,
                    out.error_samples
                );
                out.ok
            }
            Protocol::H2c => {
                let h2c = proxy.h2c_addr.context("no h2c listener")?;
                h2load(ctx, h2c, host, duration, name)?
            }
        };
        proxy.stop(Duration::from_secs(120))?;
        samples.push(Sample {
            instructions: callgrind::total(dir.path())?,
            requests,
        });
        if run == 1 {
            keep_profile(dir.path(), &ctx.opts.profiles.join(name.replace(' ', "-")))?;
        }
    }
    let per_request = callgrind::per_request(samples[0], samples[1])?;
    ctx.progress(format!(
        "  {per_request:.0} instructions per request ({} and {} requests)",
        samples[0].requests, samples[1].requests
    ));
    ctx.progress(format!(
        "  profile: callgrind_annotate {}/callgrind.out.*",
        ctx.opts.profiles.join(name.replace(' ', "-")).display()
    ));
    ctx.report.callgrind.push(Instructions {
        proxy: name.into(),
        conns: CONNS,
        requests: samples[1].requests - samples[0].requests,
        per_request,
    });
    Ok(())
}

/// Copy the callgrind outputs of `from` into `to` (emptied first), for
/// `callgrind_annotate`.
fn keep_profile(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("cannot empty {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        if let Some(name) = path
            .file_name()
            .filter(|n| n.to_string_lossy().starts_with("callgrind.out."))
        {
            std::fs::copy(&path, to.join(name))
                .with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}

/// Requests h2load completed over h2c to `addr` for `host` in `duration`;
/// any that failed is an error.
fn h2load(
    ctx: &Ctx,
    addr: std::net::SocketAddr,
    host: &str,
    duration: Duration,
    name: &str,
) -> anyhow::Result<u64> {
    let bin = ctx
        .bins
        .h2load
        .as_deref()
        .context("h2load is not installed")?;
    let out = std::process::Command::new(bin)
        .args(["-t", "1", "-D", &duration.as_secs().max(1).to_string()])
        .args(["-c", &H2C_CONNS.to_string(), "-m", &H2C_STREAMS.to_string()])
        .args(["--connect-to", &addr.to_string()])
        .arg(format!("http://{host}/"))
        .output()
        .context("cannot run h2load")?;
    let (_, ok, failed) = super::protocols::parse_h2load(&String::from_utf8_lossy(&out.stdout))?;
    anyhow::ensure!(
        failed == 0,
        "{name} failed {failed} requests under callgrind"
    );
    Ok(ok)
}
