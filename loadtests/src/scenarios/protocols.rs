//! Scenario: the split route of `split` over HTTP/2 cleartext (h2load, many
//! streams per connection) and over TLS (h2load with HTTP/1.1 keep-alive, and
//! full handshakes per second from our own client), for every proxy.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use super::{hello, Ctx, A, B};
use crate::handshakes;
use crate::peers::{Launch, Listeners, TlsFiles};
use crate::report::Run;
use crate::topology::Topology;

/// h2c load: connections, and streams in flight on each.
const H2C_CONNS: usize = 8;
const H2C_STREAMS: usize = 32;

/// Run the scenario.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    // Without h2load (the CI smoke run installs nothing), only the
    // handshake rate is measured.
    let h2load = ctx.bins.h2load.clone();
    if h2load.is_none() {
        ctx.progress("protocols: h2load (Debian's nghttp2-client) is missing: handshakes only");
        ctx.report.missing.push((
            "h2load".into(),
            "not installed: the h2c and HTTPS keep-alive runs were skipped".into(),
        ));
    }
    let a = ctx.backends(A, 2)?;
    let b = ctx.backends(B, 2)?;
    let topo = Topology {
        routes: vec![hello(&[&a[0], &a[1]], &[&b[0], &b[1]], 90, 10)],
        upstream_tls: None,
        authz: None,
    };
    let host = topo.routes[0].host();
    let dir = tempfile::tempdir()?;
    let (tls, ca) = certificate(dir.path())?;
    let threads = ctx.max_threads();
    for (kind, bin) in ctx.proxies() {
        ctx.progress(format!("protocols: {} with {threads} threads", kind.name()));
        let launch = Launch {
            kind,
            bin,
            topology: &topo,
            threads,
            activator: None,
            listeners: Listeners {
                h2c: true,
                tls: Some(&tls),
            },
            callgrind: None,
        };
        let what = format!("protocols: {}", kind.name());
        let Some(proxy) = ctx.start(&launch, &host, &what) else {
            continue;
        };
        let (h2c, tls_addr) = (
            proxy.h2c_addr.expect("h2c asked for"),
            proxy.tls_addr.expect("TLS asked for"),
        );
        let secs = ctx.opts.duration.as_secs().max(1);
        let warm = ctx.opts.warmup.as_secs().max(1);
        let load_threads = ctx.opts.load_threads.to_string();
        let runs = [
            (
                "h2c",
                H2C_CONNS * H2C_STREAMS,
                vec![
                    "-c".to_owned(),
                    H2C_CONNS.to_string(),
                    "-m".into(),
                    H2C_STREAMS.to_string(),
                    "--connect-to".into(),
                    h2c.to_string(),
                    format!("http://{host}/"),
                ],
            ),
            (
                "https",
                ctx.opts.conns[0],
                vec![
                    "--h1".to_owned(),
                    "-c".into(),
                    ctx.opts.conns[0].to_string(),
                    "--connect-to".into(),
                    tls_addr.to_string(),
                    format!("https://{host}/"),
                ],
            ),
        ];
        for (scenario, inflight, args) in runs.into_iter().filter(|_| h2load.is_some()) {
            let h2load = h2load.as_deref().expect("filtered");
            let cpu0 = proxy.cpu_seconds();
            let out = Command::new(h2load)
                .args(["-t", &load_threads, "-D", &secs.to_string()])
                .args(["--warm-up-time", &warm.to_string()])
                .args(&args)
                .output()
                .context("cannot run h2load")?;
            let cpu = proxy.cpu_seconds() - cpu0;
            let text = String::from_utf8_lossy(&out.stdout);
            let (rps, ok, failed) = match parse_h2load(&text) {
                Ok(found) => found,
                Err(e) => {
                    ctx.fail(format!(
                        "protocols: {scenario} through {}: {e:#}",
                        kind.name()
                    ));
                    continue;
                }
            };
            ctx.progress(format!(
                "  {scenario}, {inflight} in flight: {rps:.0} rps, {failed} failed"
            ));
            let run = Run::rate(
                scenario,
                kind.name(),
                Some(threads),
                inflight,
                rps,
                ok,
                failed,
            )
            .usage(
                Some(cpu * secs as f64 / (secs + warm) as f64),
                Some(proxy.peak_rss()),
            );
            ctx.report.runs.push(run);
        }
        let conns = ctx.opts.conns[0];
        let cpu0 = proxy.cpu_seconds();
        let out = handshakes::run(
            tls_addr,
            &host,
            &ca,
            conns,
            ctx.opts.load_threads,
            ctx.opts.duration,
        );
        let cpu = proxy.cpu_seconds() - cpu0;
        ctx.progress(format!(
            "  new TLS connections, {conns} at a time: {:.0} per second, {} failed",
            out.rate(),
            out.failed
        ));
        let run = Run::rate(
            "handshakes",
            kind.name(),
            Some(threads),
            conns,
            out.rate(),
            out.ok,
            out.failed,
        )
        .usage(Some(cpu), Some(proxy.peak_rss()));
        ctx.report.runs.push(run);
    }
    Ok(())
}

/// A certificate for the scenario's hosts signed by a fresh CA, written as
/// PEM files, and the CA (DER) for the handshake client to trust (h2load
/// does not verify certificates).
fn certificate(dir: &Path) -> anyhow::Result<(TlsFiles, Vec<u8>)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["*.default.example.com".to_owned()])?
        .signed_by(&key, &issuer)?;
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        combined: dir.join("combined.pem"),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    std::fs::write(&files.combined, cert.pem() + &key.serialize_pem())?;
    Ok((files, ca_cert.der().to_vec()))
}

/// `(requests per second, succeeded, failed)` from h2load's summary:
/// `finished in 5.00s, 51234.40 req/s, ...` and
/// `requests: N total, N started, N done, N succeeded, F failed, ...`.
pub fn parse_h2load(text: &str) -> anyhow::Result<(f64, u64, u64)> {
    let rps = text
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("finished in ")?;
            let rate = rest.split(", ").nth(1)?.strip_suffix(" req/s")?;
            rate.parse::<f64>().ok()
        })
        .context("no `finished in ..., N req/s` line")?;
    let counts = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests: "))
        .context("no `requests:` line")?;
    let count = |what: &str| -> anyhow::Result<u64> {
        counts
            .split(", ")
            .find_map(|p| p.strip_suffix(what)?.trim().parse().ok())
            .with_context(|| format!("no `{what}` count in `{counts}`"))
    };
    let (ok, failed) = (count(" succeeded")?, count(" failed")?);
    if ok == 0 {
        bail!("no request succeeded:\n{text}");
    }
    Ok((rps, ok, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2loads_summary() {
        let out = "starting benchmark...\nfinished in 5.00s, 51234.40 req/s, 6.12MB/s\nrequests: 256172 total, 256428 started, 256172 done, 256100 succeeded, 72 failed, 0 errored, 0 timeout\n";
        assert_eq!(parse_h2load(out).unwrap(), (51234.4, 256100, 72));
        assert!(parse_h2load("finished in 5.00s, 1.0 req/s\n").is_err());
        let none = "finished in 5.00s, 0.00 req/s, 0B/s\nrequests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout\n";
        assert!(parse_h2load(none).is_err());
    }
}
