//! `gateway demo`: the whole data plane on loopback with no cluster.
//!
//! The embedded snapshot (`snapshot.yaml`) has a route split 90/10 with tags
//! `v1` and `v2`, a route whose only revision is scaled to zero, and a gRPC
//! route, warm and at zero (the activator stand-in speaks h2c too). Every
//! ready endpoint becomes a sample server on 127.0.0.1; the activator
//! stand-in starts a cold revision's server on its first request, publishes
//! the endpoint (so the next requests go straight to it), and scales it back
//! to zero after `--scale-to-zero-after` without requests.

mod activator;
pub mod sample;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use config_sync::model::{
    Endpoint, EndpointPort, EndpointSlice, ObjectMeta, REVISION_LABEL, SERVICE_TYPE_LABEL,
};
use config_sync::sources::file;
use config_sync::{BuildOptions, ObjectKey, Publisher, Snapshot};
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::cli::DemoArgs;
use crate::server::{self, Task};
use sample::SampleServer;

/// The embedded default snapshot.
pub const SNAPSHOT: &str = include_str!("snapshot.yaml");

/// The demo's stand-in for a cluster: the objects, and the revisions woken from zero.
pub struct DemoCluster {
    publisher: Arc<Publisher>,
    base: Snapshot,
    message: String,
    scale_to_zero_after: Duration,
    woken: Mutex<HashMap<ObjectKey, SampleServer>>,
}

impl DemoCluster {
    fn snapshot(&self, woken: &HashMap<ObjectKey, SampleServer>) -> Snapshot {
        let mut s = self.base.clone();
        s.slices.extend(
            woken
                .iter()
                .map(|(rev, server)| slice_for(rev, server.addr, self.port_of(rev))),
        );
        s
    }

    /// The port name of `rev`'s slices in the snapshot (`http2` for a
    /// revision that speaks h2c), else `http`.
    fn port_of(&self, rev: &ObjectKey) -> &str {
        self.base
            .slices
            .iter()
            .filter(|s| {
                s.metadata.label(REVISION_LABEL) == Some(rev.name.as_str())
                    && s.metadata.namespace.as_deref() == Some(rev.namespace.as_str())
            })
            .find_map(|s| s.ports.iter().flatten().find_map(|p| p.name.as_deref()))
            .unwrap_or("http")
    }

    /// The address of a running server for `ns/rev`, starting it if needed;
    /// `None` when the table has no such revision.
    pub async fn wake(&self, ns: &str, rev: &str) -> Option<SocketAddr> {
        let key = ObjectKey::new(ns, rev);
        let mut woken = self.woken.lock().await;
        if let Some(server) = woken.get(&key) {
            return Some(server.addr);
        }
        let known = self
            .publisher
            .reader()
            .peek()
            .backends()
            .any(|r| &*r.namespace == ns && &*r.name == rev);
        if !known {
            return None;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.ok()?;
        let server = SampleServer::start(listener, rev, &self.message).ok()?;
        let addr = server.addr;
        tracing::info!(revision = %key, %addr, "activator: scaled revision up from zero");
        woken.insert(key, server);
        self.publisher.publish(self.snapshot(&woken));
        Some(addr)
    }

    /// Scale idle woken revisions back to zero until shutdown.
    async fn reap(&self, mut shutdown: ShutdownWatch) {
        let tick =
            (self.scale_to_zero_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
            let mut woken = self.woken.lock().await;
            let idle: Vec<ObjectKey> = woken
                .iter()
                .filter(|(_, s)| s.idle_for() >= self.scale_to_zero_after)
                .map(|(k, _)| k.clone())
                .collect();
            if idle.is_empty() {
                continue;
            }
            let stopped: Vec<SampleServer> = idle.iter().filter_map(|k| woken.remove(k)).collect();
            self.publisher.publish(self.snapshot(&woken));
            drop(woken);
            for k in &idle {
                tracing::info!(revision = %k, "scaled revision to zero after {:?} idle", self.scale_to_zero_after);
            }
            // Requests that picked the endpoint just before the swap still finish.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(stopped);
            });
        }
    }
}

/// A private EndpointSlice of `rev` with one ready endpoint, `addr`, on a
/// port named `port` (`http2` for a revision that speaks h2c).
fn slice_for(rev: &ObjectKey, addr: SocketAddr, port: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-private-{}", rev.name, addr.port())),
            namespace: Some(rev.namespace.clone()),
            labels: Some(
                [
                    (REVISION_LABEL, rev.name.clone()),
                    (SERVICE_TYPE_LABEL, "Private".into()),
                ]
                .into_iter()
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        address_type: Some(if addr.is_ipv4() { "IPv4" } else { "IPv6" }.into()),
        ports: Some(vec![EndpointPort {
            name: Some(port.into()),
            port: Some(addr.port() as i32),
        }]),
        endpoints: Some(vec![Endpoint {
            addresses: vec![addr.ip().to_string()],
            conditions: None,
        }]),
    }
}

/// Run the demo until interrupted.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut snapshot = file::parse(SNAPSHOT)
        .map_err(|e| anyhow::anyhow!("embedded snapshot {}:{}: {}", e.line, e.column, e.message))?;

    // One sample server per ready endpoint, each with a slice of its own.
    let mut warm: Vec<(StdListener, String)> = Vec::new();
    let mut slices = Vec::new();
    for slice in std::mem::take(&mut snapshot.slices) {
        let meta = &slice.metadata;
        let Some(rev) = meta.label(REVISION_LABEL) else {
            continue;
        };
        let key = ObjectKey::new(meta.namespace.as_deref().unwrap_or("default"), rev);
        let port = slice
            .ports
            .iter()
            .flatten()
            .find_map(|p| p.name.clone())
            .unwrap_or_else(|| "http".into());
        let ready = slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.is_ready())
            .count();
        if ready == 0 {
            // A revision at zero: its slice still tells its port's protocol.
            slices.push(slice);
            continue;
        }
        for _ in 0..ready {
            let listener =
                StdListener::bind("127.0.0.1:0").context("cannot bind a sample revision")?;
            slices.push(slice_for(&key, listener.local_addr()?, &port));
            warm.push((listener, rev.to_owned()));
        }
    }
    snapshot.slices = slices;

    let activator_listener =
        StdListener::bind("127.0.0.1:0").context("cannot bind the activator stand-in")?;
    let activator_addr = activator_listener.local_addr()?;

    let publisher = Arc::new(Publisher::new(BuildOptions::default()));
    let table = publisher.publish(snapshot.clone());
    let cluster = Arc::new(DemoCluster {
        publisher: publisher.clone(),
        base: snapshot,
        message: args.message.clone(),
        scale_to_zero_after: args.scale_to_zero_after,
        woken: Mutex::new(HashMap::new()),
    });

    let task = Task::new(move |shutdown| async move {
        let mut servers = Vec::new();
        for (listener, rev) in warm {
            let started = listener
                .set_nonblocking(true)
                .and_then(|_| TcpListener::from_std(listener))
                .and_then(|l| SampleServer::start(l, &rev, &cluster.message));
            match started {
                Ok(s) => servers.push(s),
                Err(e) => tracing::error!("cannot start sample revision {rev}: {e}"),
            }
        }
        let activator = match activator_listener
            .set_nonblocking(true)
            .and_then(|_| TcpListener::from_std(activator_listener))
        {
            Ok(l) => tokio::spawn(activator::serve(l, cluster.clone())),
            Err(e) => return tracing::error!("cannot start the activator stand-in: {e}"),
        };
        cluster.reap(shutdown).await;
        activator.abort();
        drop(servers);
    });

    let ca_file = std::env::temp_dir().join(format!(
        "knative-gateway-demo-ca-{}.pem",
        std::process::id()
    ));
    let mut config = args.tuning.serve_config(crate::cli::Listeners {
        http: std::slice::from_ref(&args.http),
        internal_http: std::slice::from_ref(&args.internal_http),
        https: std::slice::from_ref(&args.https),
        internal_https: std::slice::from_ref(&args.internal_https),
        admin: &args.admin,
    })?;
    if !config.https.is_empty() || !config.internal_https.is_empty() {
        let (ca, cert) = demo_certificate().context("cannot make the demo certificate")?;
        std::fs::write(&ca_file, ca)
            .with_context(|| format!("cannot write {}", ca_file.display()))?;
        config.default_certificate = config.default_certificate.or(Some(cert));
    }
    print_intro(&args, &table.view(), &ca_file);
    // The stand-in speaks HTTP/1.1 and h2c on one port.
    let activator = Arc::new(
        crate::activator::Activator::new(&activator_addr.to_string())
            .with_h2_port(activator_addr.port()),
    );
    server::run(config, publisher, activator, vec![("demo-cluster", task)])
}

/// A demo CA (PEM, for clients to trust) and a certificate it signed for the
/// demo's host names.
fn demo_certificate() -> anyhow::Result<(String, Arc<rustls::sign::CertifiedKey>)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "knative-gateway demo CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let names = [
        "*.default.example.com",
        "*.default.svc.cluster.local",
        "*.default.svc",
        "*.default",
    ];
    let leaf =
        CertificateParams::new(names.map(String::from).to_vec())?.signed_by(&key, &issuer)?;
    let chain = leaf.pem() + &ca_cert.pem();
    let cert = dataplane::certs::parse_pem(
        chain.as_bytes(),
        key.serialize_pem().as_bytes(),
        ("demo certificate", "demo key"),
    )
    .map_err(anyhow::Error::msg)?;
    Ok((ca_cert.pem(), Arc::new(cert)))
}

fn print_intro(args: &DemoArgs, view: &dataplane::table::TableView, ca_file: &std::path::Path) {
    let port = args.http.rsplit(':').next().unwrap_or("8080");
    let gw = format!("localhost:{port}");
    println!(
        "Knative gateway demo: proxy on {} (internal listener {}), admin on {}",
        args.http, args.internal_http, args.admin
    );
    println!();
    for route in &view.routes {
        println!("Route {}/{}:", route.namespace, route.name);
        for t in &route.traffic {
            println!("  {}% -> {}", t.percent, t.revision);
        }
        // External hosts only: the cluster-local names work too, but are noisy here.
        for h in route.hosts.iter().filter(|h| !h.internal_only) {
            let what = h
                .revision
                .as_deref()
                .map_or("the split".to_owned(), |r| format!("-> {r}"));
            println!("  curl -H 'Host: {}' http://{gw}/    # {what}", h.host);
        }
    }
    println!();
    println!(
        "gRPC (demo.Echo in gateway/src/demo/echo.proto), over h2c end to end:\n  grpcurl -plaintext -authority grpc-demo.default.example.com -proto gateway/src/demo/echo.proto -d '{{\"message\": \"hi\"}}' {gw} demo.Echo/Say"
    );
    println!(
        "gRPC to a revision at zero (woken through the activator over h2c):\n  grpcurl -plaintext -authority grpc-cold-demo.default.example.com -proto gateway/src/demo/echo.proto -d '{{\"message\": \"hi\"}}' {gw} demo.Echo/Say"
    );
    println!(
        "WebSocket (each revision echoes text messages):\n  websocat -H 'Host: knative-routing-demo.default.example.com' ws://{gw}/"
    );
    println!(
        "HTTP/2 with prior knowledge (h2c), on the same port:\n  curl --http2-prior-knowledge -H 'Host: knative-routing-demo.default.example.com' http://{gw}/"
    );
    if args.https != "off" {
        let https_port = args.https.rsplit(':').next().unwrap_or("8443");
        let host = "knative-routing-demo.default.example.com";
        println!(
            "HTTPS (HTTP/2 by ALPN), with a demo certificate signed by the CA in {}:\n  curl --http2 --cacert {} --resolve {host}:{https_port}:127.0.0.1 https://{host}:{https_port}/",
            ca_file.display(),
            ca_file.display()
        );
    }
    println!(
        "The cold revision wakes on its first request and scales back to zero after {:?} idle.",
        args.scale_to_zero_after
    );
    let internal_port = args.internal_http.rsplit(':').next().unwrap_or("8081");
    println!(
        "Cluster-local names answer on the internal listener only: \
         curl -H 'Host: knative-routing-demo.default.svc.cluster.local' http://localhost:{internal_port}/"
    );
    println!(
        "Watch the table: curl http://{}/debug/routes   metrics: curl http://{}/metrics",
        args.admin, args.admin
    );
    println!(
        "Watch the splits live, served beside configured: open http://{}/ui in a browser",
        args.admin
    );
}
