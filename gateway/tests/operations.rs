//! What an operator sees of each request: the access log, and the real
//! client behind a load balancer (PROXY protocol). The real gateway binary,
//! real backends on loopback.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::Request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_json_line_per_request() {
    let b = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::serve_with(&snap, closed(), &["--access-log", log.to_str().unwrap()]).await;
    let client = HttpClient::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let ok = client
        .get_with(
            gw.http,
            "web.ns.example.com",
            &[("traceparent", &traceparent)],
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let post = Request::post(format!("http://{}/upload?token=secret", gw.http))
        .header("host", "web.ns.example.com")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    assert_eq!(client.send(post).await.unwrap().status, 200);
    let missing = client.get(gw.http, "nobody.example.com").await.unwrap();
    assert_eq!(missing.status, 404);

    let mut lines = Vec::new();
    eventually(5, "three access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>();
        std::future::ready(lines.len() >= 3)
    })
    .await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let (get, post, miss) = (&lines[0], &lines[1], &lines[2]);

    assert_eq!(get["method"], "GET");
    assert_eq!(get["host"], "web.ns.example.com");
    assert_eq!(get["path"], "/");
    assert_eq!(get["status"], 200);
    assert_eq!(get["route"], "ns/web");
    assert_eq!(get["namespace"], "ns");
    assert_eq!(get["revision"], "rev-a");
    assert_eq!(get["upstream"], b.addr.to_string());
    assert_eq!(get["trace_id"], trace);
    assert_eq!(get["bytes_in"], 0);
    assert_eq!(get["bytes_out"], "rev-a".len());
    assert!(
        get["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{get}"
    );
    assert!(get["duration_ms"].as_f64().unwrap() > 0.0, "{get}");
    let time = get["time"].as_str().unwrap();
    let when = humantime::parse_rfc3339(time).unwrap();
    let age = std::time::SystemTime::now().duration_since(when).unwrap();
    assert!(age < Duration::from_secs(60), "{time}");

    // The query is left out: it may carry tokens.
    assert_eq!(post["path"], "/upload");
    assert_eq!(post["method"], "POST");
    assert_eq!(post["bytes_in"], 5);
    assert!(post["trace_id"].is_null(), "{post}");

    assert_eq!(miss["status"], 404);
    assert_eq!(miss["host"], "nobody.example.com");
    for field in ["route", "revision", "upstream"] {
        assert!(miss[field].is_null(), "{field}: {miss}");
    }
    let metrics = gw.admin("/metrics").await.body;
    assert!(
        metrics.contains("gateway_access_log_dropped_total 0"),
        "{metrics}"
    );
}

#[test]
fn an_access_log_that_cannot_be_opened_stops_the_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot.yaml");
    std::fs::write(&snapshot, route("ns", "web", &[("rev-a", 100, None)])).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("serve")
        .args(["--file", snapshot.to_str().unwrap()])
        .args(["--http", "127.0.0.1:0", "--internal-http", "127.0.0.1:0"])
        .args(["--https", "off", "--internal-https", "off"])
        .args(["--admin", "127.0.0.1:0"])
        .args(["--access-log", "/nonexistent/dir/access.log"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the access log /nonexistent/dir/access.log"),
        "{err}"
    );
}

/// A v2 PROXY header for a TCP connection from `source` to `destination`.
fn proxy_v2(source: std::net::SocketAddr, destination: std::net::SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let (family, mut body) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (0x11, [s.octets(), d.octets()].concat()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (0x21, [s.octets(), d.octets()].concat()),
        _ => panic!("one family for both"),
    };
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    h.extend_from_slice(&[0x21, family]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// `GET /` for the test route on a new connection that first sends `preamble`.
async fn get_after(addr: std::net::SocketAddr, preamble: &[u8]) -> Result<RawReply, String> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(preamble).await.map_err(|e| e.to_string())?;
    raw_get(&mut Some(tcp), addr, "web.ns.example.com", "/", "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_gives_the_real_client_on_external_listeners_only() {
    let b = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key, _) = ca.leaf(&["web.ns.example.com"]);
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::serve_with(
        &snap,
        closed(),
        &[
            "--proxy-protocol",
            "--access-log",
            log.to_str().unwrap(),
            "--default-certificate-file",
            cert_file.to_str().unwrap(),
            "--default-key-file",
            key_file.to_str().unwrap(),
            "--request-header-timeout",
            "1s",
        ],
    )
    .await;
    let forwarded_for = |r: &RawReply| {
        r.head
            .lines()
            .find_map(|l| l.strip_prefix("x-echo-x-forwarded-for: "))
            .map(str::to_owned)
    };

    // v1, with what the client sent kept in X-Forwarded-For before the real client.
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n";
    let mut tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, v1)
        .await
        .unwrap();
    let mut conn = Some(tcp);
    let r = raw_get(
        &mut conn,
        gw.http,
        "web.ns.example.com",
        "/",
        "X-Forwarded-For: 198.51.100.1\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        forwarded_for(&r).as_deref(),
        Some("198.51.100.1, 203.0.113.7")
    );
    // The header is read once: the connection's next request needs none.
    let again = raw_get(&mut conn, gw.http, "web.ns.example.com", "/", "")
        .await
        .unwrap();
    assert_eq!(forwarded_for(&again).as_deref(), Some("203.0.113.7"));

    // v2 over IPv6, sent in the same packet as the request.
    let source: std::net::SocketAddr = "[2001:db8::7]:51000".parse().unwrap();
    let v2 = proxy_v2(source, "[2001:db8::1]:80".parse().unwrap());
    let r = get_after(gw.http, &v2).await.unwrap();
    assert_eq!(forwarded_for(&r).as_deref(), Some("2001:db8::7"));

    // HTTPS: the header comes before the TLS handshake.
    let v4: std::net::SocketAddr = "192.0.2.44:1234".parse().unwrap();
    let header = proxy_v2(v4, gw.https);
    let r = https_get_after(gw.https, &header, "web.ns.example.com", "/", &ca.der)
        .await
        .unwrap();
    assert_eq!(r.reply.status, 200);
    assert_eq!(r.reply.header("x-echo-x-forwarded-for"), "192.0.2.44");

    // A connection to an external listener without a header is closed unanswered...
    let missing = get_after(gw.http, b"").await;
    assert!(missing.is_err(), "{missing:?}");
    // ...as is a broken one, and one that sends nothing (after the header timeout).
    let broken = get_after(gw.http, b"PROXY TCP4 not an address\r\n").await;
    assert!(broken.is_err(), "{broken:?}");
    let mut silent = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte),
    )
    .await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");

    // The internal listener takes none: Knative's prober and in-cluster clients.
    let r = get_after(gw.internal, b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(forwarded_for(&r).as_deref(), Some("127.0.0.1"));

    // The access log names the real client.
    let mut clients = Vec::new();
    eventually(5, "the access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        clients = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["client"].clone())
            .collect::<Vec<_>>();
        std::future::ready(clients.len() >= 5)
    })
    .await;
    assert_eq!(clients[0], "203.0.113.7:40000");
    assert_eq!(clients[2], "[2001:db8::7]:51000");
    assert_eq!(clients[3], "192.0.2.44:1234");
}
