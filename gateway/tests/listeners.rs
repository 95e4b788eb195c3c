//! The listeners and TLS policy an operator sets: several addresses per
//! listener (IPv6 and both families on one port), the lowest TLS version and
//! the cipher suites, and the `Server` header. The real gateway binary, real
//! backends and clients on loopback.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn on(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_serves_every_address_given_ipv6_included() {
    let b = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let (v6, internal_v6, both) = (free_port(), free_port(), free_port());
    let extra = [
        format!("--http=[::1]:{v6}"),
        // The two families on one port: `[::]` then listens for IPv6 only,
        // or it would collide with the IPv4 address.
        format!("--http=127.0.0.1:{both},[::]:{both}"),
        format!("--internal-http=[::1]:{internal_v6}"),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let gw = Gateway::serve_with(&snap, closed(), &extra).await;
    let c = HttpClient::new();
    for addr in [
        gw.http,
        on("::1", v6),
        on("127.0.0.1", both),
        on("::1", both),
    ] {
        let public = c.get(addr, "web.ns.example.com").await.unwrap();
        assert_eq!(
            (public.status, public.body.as_str()),
            (200, "rev-a"),
            "{addr}"
        );
        // Every address of the external listener is external.
        let local = c.get(addr, "web.ns.svc.cluster.local").await.unwrap();
        assert_eq!(local.status, 404, "{addr}");
    }
    // And every address of the internal one internal.
    let local = c
        .get(on("::1", internal_v6), "web.ns.svc.cluster.local")
        .await
        .unwrap();
    assert_eq!((local.status, local.body.as_str()), (200, "rev-a"));
}

#[test]
fn two_listeners_on_one_port_or_a_bad_tls_policy_stop_the_start() {
    let port = free_port();
    let err = start_fails(&[
        &format!("--http=127.0.0.1:{port}"),
        &format!("--internal-http=[::1]:{port}"),
        "--admin=127.0.0.1:0",
    ]);
    assert!(
        err.contains(&format!(
            "--http and --internal-http must use different ports (both {port})"
        )),
        "{err}"
    );
    let err = start_fails(&[
        "--tls-cipher-suites",
        "TLS13_AES_128_GCM_SHA256,BOGUS_SUITE",
    ]);
    assert!(
        err.contains("\"BOGUS_SUITE\" is not a cipher suite"),
        "{err}"
    );
    assert!(err.contains("TLS13_AES_256_GCM_SHA384"), "{err}");
    let err = start_fails(&["--tls-min-version", "1.1"]);
    assert!(err.contains("1.1"), "{err}");
}

/// The TLS version and cipher suite of a handshake with `addr` by a client
/// offering only `versions` and `suites` (every suite when empty).
async fn handshake(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[&str],
) -> Result<(rustls::ProtocolVersion, String), String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        provider
            .cipher_suites
            .retain(|s| suites.contains(&format!("{:?}", s.suite()).as_str()));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("web.ns.example.com").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    Ok((
        conn.protocol_version().unwrap(),
        format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite()),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_policy_sets_the_versions_and_suites_a_handshake_may_use() {
    let b = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let flags = default_certificate_flags(dir.path(), &ca, &["web.ns.example.com"]);
    let files: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ca_der = ca.der.clone();
    let (tls12, tls13) = (&rustls::version::TLS12, &rustls::version::TLS13);

    // The default: 1.2 and 1.3, every suite.
    let open = Gateway::serve_with(&snap, closed(), &files).await;
    let (v, _) = handshake(open.https, &ca_der, &[tls12], &[]).await.unwrap();
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_2);
    let (v, _) = handshake(open.https, &ca_der, &[tls13], &[]).await.unwrap();
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);

    let strict = [
        &files[..],
        &[
            "--tls-min-version",
            "1.3",
            "--tls-cipher-suites",
            "TLS13_CHACHA20_POLY1305_SHA256",
        ],
    ]
    .concat();
    let gw = Gateway::serve_with(&snap, closed(), &strict).await;
    for addr in [gw.https, gw.internal_https] {
        // TLS 1.2 only: refused.
        assert!(handshake(addr, &ca_der, &[tls12], &[]).await.is_err());
        // A 1.3 client offering every suite gets the one allowed...
        let (v, suite) = handshake(addr, &ca_der, &[tls12, tls13], &[])
            .await
            .unwrap();
        assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(suite, "TLS13_CHACHA20_POLY1305_SHA256");
        // ...and one offering only others is refused.
        let other = handshake(addr, &ca_der, &[tls13], &["TLS13_AES_128_GCM_SHA256"]).await;
        assert!(other.is_err(), "{other:?}");
    }
    // Requests still flow over the handshake allowed.
    let r = https_get(gw.https, "web.ns.example.com", "/", &ca_der)
        .await
        .unwrap();
    assert_eq!((r.reply.status, r.reply.body.as_str()), (200, "rev-a"));
}

/// A backend answering every request with `Server: app`.
async fn server_app_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .header("server", "app")
                            .body(Full::new(Bytes::from_static(b"app")))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Every `Server` value of each answer: the backend's on the fast path
/// (HTTP/1.1) and the general one (h2c), a 404 of the gateway's own, and a
/// 502 for a backend that is down.
async fn servers_seen(gw: &Gateway) -> Vec<(&'static str, Vec<String>)> {
    let all = |r: &Reply| {
        r.headers
            .get_all("server")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let c = HttpClient::new();
    let h1 = c.get(gw.http, "web.ns.example.com").await.unwrap();
    assert_eq!(h1.status, 200);
    let h2 = H2cClient::connect(gw.http)
        .await
        .get("web.ns.example.com", "/")
        .await
        .unwrap();
    assert_eq!(h2.status, 200);
    let missing = c.get(gw.http, "nobody.example.com").await.unwrap();
    assert_eq!(missing.status, 404);
    let down = c.get(gw.http, "down.ns.example.com").await.unwrap();
    assert_eq!(down.status, 502);
    vec![
        ("fast path", all(&h1)),
        ("general path", all(&h2)),
        ("404", all(&missing)),
        ("502", all(&down)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_header_is_passed_stripped_or_set_on_every_answer() {
    let app = server_app_backend().await;
    let snap = route("ns", "web", &[("rev-a", 100, None)])
        + &slice("ns", "rev-a", &[app])
        + &route("ns", "down", &[("rev-d", 100, None)])
        + &slice("ns", "rev-d", &[closed()]);
    let expect = |fast: &[&str], general: &[&str], own: &[&str]| {
        vec![
            ("fast path", fast.iter().map(|s| s.to_string()).collect()),
            (
                "general path",
                general.iter().map(|s| s.to_string()).collect(),
            ),
            ("404", own.iter().map(|s| s.to_string()).collect()),
            ("502", own.iter().map(|s| s.to_string()).collect()),
        ]
    };
    // pass: the backend's; the gateway names no one (not even pingora).
    let gw = Gateway::serve_with(&snap, closed(), &[]).await;
    assert_eq!(servers_seen(&gw).await, expect(&["app"], &["app"], &[]));
    let gw = Gateway::serve_with(&snap, closed(), &["--server-header", "strip"]).await;
    assert_eq!(servers_seen(&gw).await, expect(&[], &[], &[]));
    let gw = Gateway::serve_with(&snap, closed(), &["--server-header", "edge"]).await;
    assert_eq!(
        servers_seen(&gw).await,
        expect(&["edge"], &["edge"], &["edge"])
    );
}
