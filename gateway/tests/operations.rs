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

    let lines = access_log_lines(&log, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    // A line is written when its request ends, on the thread that served it:
    // lines of requests on different connections may come in any order.
    let find = |method: &str, host: &str| {
        lines
            .iter()
            .find(|l| l["method"] == method && l["host"] == host)
            .unwrap_or_else(|| panic!("no {method} for {host}: {lines:?}"))
    };
    let get = find("GET", "web.ns.example.com");
    let post = find("POST", "web.ns.example.com");
    let miss = find("GET", "nobody.example.com");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_access_log_after_logrotate_moves_it() {
    let b = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let mut gw =
        Gateway::serve_with(&snap, closed(), &["--access-log", log.to_str().unwrap()]).await;
    let client = HttpClient::new();
    let lines = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(
        client
            .get(gw.http, "web.ns.example.com")
            .await
            .unwrap()
            .status,
        200
    );
    eventually(5, "the first line", || std::future::ready(lines(&log) == 1)).await;

    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("HUP");
    // The signal is handled on its own; until then lines still go to the
    // moved file. Each request adds one line to one of the two.
    let mut sent = 1;
    eventually(10, "a line in the reopened file", || {
        let client = client.clone();
        let (http, log) = (gw.http, log.clone());
        sent += 1;
        async move {
            assert_eq!(
                client.get(http, "web.ns.example.com").await.unwrap().status,
                200
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            lines(&log) > 0
        }
    })
    .await;
    eventually(5, "every line in one of the files", || {
        std::future::ready(lines(&log) + lines(&rotated) == sent)
    })
    .await;
    assert_eq!(
        gw.wait_exit(Duration::ZERO).await,
        None,
        "SIGHUP ended the gateway"
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
    let clients: Vec<_> = access_log_lines(&log, 5)
        .await
        .into_iter()
        .map(|l| l["client"].clone())
        .collect();
    // In any order (see the access log test).
    let count = |c: &str| clients.iter().filter(|v| v.as_str() == Some(c)).count();
    assert_eq!(count("203.0.113.7:40000"), 2, "{clients:?}");
    assert_eq!(count("[2001:db8::7]:51000"), 1, "{clients:?}");
    assert_eq!(count("192.0.2.44:1234"), 1, "{clients:?}");
    let internal = clients
        .iter()
        .filter(|v| v.as_str().is_some_and(|c| c.starts_with("127.0.0.1:")))
        .count();
    assert_eq!(internal, 1, "{clients:?}");
}

/// A local OpenTelemetry collector: OTLP/HTTP with protobuf bodies on
/// `/v1/traces`; keeps every span it receives.
struct Collector {
    addr: std::net::SocketAddr,
    spans: std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start() -> Collector {
        use http_body_util::BodyExt;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                let ok = req.uri().path() == "/v1/traces"
                                    && req.headers()["content-type"] == "application/x-protobuf";
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                for rs in export.resource_spans {
                                    for ss in rs.scope_spans {
                                        kept.lock().unwrap().extend(ss.spans);
                                    }
                                }
                                let status = if ok { 200 } else { 400 };
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector { addr, spans, task }
    }

    fn spans(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traced_requests_continue_the_callers_trace_and_reach_the_collector() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let b = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let collector = Collector::start().await;
    let endpoint = format!("http://{}", collector.addr);
    let gw = Gateway::serve_with(&snap, closed(), &["--otlp-endpoint", &endpoint]).await;
    let client = HttpClient::new();
    let host = "web.ns.example.com";
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";

    // A sampled caller: the span continues its trace, and the revision sees
    // this span as its parent.
    let sampled = format!("00-{trace}-{caller}-01");
    let r = client
        .get_with(gw.http, host, &[("traceparent", &sampled)])
        .await
        .unwrap();
    let upstream = r.header("x-echo-traceparent").to_owned();
    let parts: Vec<&str> = upstream.split('-').collect();
    assert_eq!(parts.len(), 4, "{upstream}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace, "01"));
    let span_id = parts[2].to_owned();
    assert_ne!(span_id, caller);

    // A caller that does not sample: nothing recorded, its header passed on as sent.
    let unsampled = format!("00-{trace}-{caller}-00");
    let r = client
        .get_with(gw.http, host, &[("traceparent", &unsampled)])
        .await
        .unwrap();
    assert_eq!(r.header("x-echo-traceparent"), unsampled);

    // No caller: a new trace (sampling defaults to every request).
    let r = client.get(gw.http, host).await.unwrap();
    let fresh = r.header("x-echo-traceparent").to_owned();
    assert!(
        fresh.starts_with("00-") && fresh.ends_with("-01"),
        "{fresh}"
    );
    assert!(!fresh.contains(trace), "{fresh}");

    let mut spans = Vec::new();
    eventually(10, "two spans at the collector", || {
        spans = collector.spans();
        std::future::ready(spans.len() >= 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let spans = collector.spans();
    assert_eq!(
        spans.len(),
        2,
        "the unsampled request was recorded: {spans:?}"
    );
    let first = spans
        .iter()
        .find(|s| hex(&s.span_id) == span_id)
        .expect("the span the revision was told about");
    assert_eq!(hex(&first.trace_id), trace);
    assert_eq!(hex(&first.parent_span_id), caller);
    assert_eq!(first.name, "GET");
    assert!(first.end_time_unix_nano > first.start_time_unix_nano);
    let attr = |k: &str| gateway::otlp::attribute(first, k);
    assert_eq!(
        attr("http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(
        attr("server.address"),
        Some(Value::StringValue(host.into()))
    );
    assert_eq!(
        attr("knative.route"),
        Some(Value::StringValue("ns/web".into()))
    );
    assert_eq!(
        attr("knative.revision"),
        Some(Value::StringValue("rev-a".into()))
    );
    assert_eq!(
        attr("network.peer.port"),
        Some(Value::IntValue(b.addr.port().into()))
    );
    let second = spans.iter().find(|s| hex(&s.span_id) != span_id).unwrap();
    assert!(second.parent_span_id.is_empty());
    assert_eq!(
        fresh,
        format!("00-{}-{}-01", hex(&second.trace_id), hex(&second.span_id))
    );
    let metrics = gw.admin("/metrics").await.body;
    assert!(
        metrics.contains("gateway_trace_export_errors_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_trace_spans_dropped_total 0"),
        "{metrics}"
    );
    drop(gw);

    // With sampling at 0, only a sampled caller's requests are traced.
    let gw = Gateway::serve_with(
        &snap,
        closed(),
        &["--otlp-endpoint", &endpoint, "--trace-sampling", "0"],
    )
    .await;
    let r = client.get(gw.http, host).await.unwrap();
    assert_eq!(r.header("x-echo-traceparent"), "");
    let r = client
        .get_with(gw.http, host, &[("traceparent", &sampled)])
        .await
        .unwrap();
    assert_ne!(r.header("x-echo-traceparent"), sampled);
    eventually(10, "the sampled caller's span", || {
        std::future::ready(collector.spans().len() >= 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(collector.spans().len(), 3);
}

/// `--probes`: a listener for kubelets and scrapers that serves `/metrics`,
/// `/healthz` and `/readyz` and nothing else; the table (`/debug/routes`,
/// every host and endpoint) and `/ui` stay on the admin listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_listener_shows_no_table() {
    let b = Backend::start("rev-1").await;
    let snap = route("ns", "probed", &[("rev-1", 100, None)]) + &slice("ns", "rev-1", &[b.addr]);
    let probes: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gw = Gateway::serve_with(&snap, closed(), &["--probes", &probes.to_string()]).await;
    let client = HttpClient::new();
    let get = |path: &str| {
        let req = http::Request::get(format!("http://{probes}{path}"))
            .body(http_body_util::Full::default())
            .unwrap();
        client.send(req)
    };
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(path).await.unwrap().status, 200, "{path}");
    }
    assert!(get("/metrics")
        .await
        .unwrap()
        .body
        .contains("gateway_routes 1"));
    for path in ["/debug/routes", "/ui", "/ui/data", "/"] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.body.contains("probed"), "{path}: {}", r.body);
    }
    // The admin listener still has everything.
    assert_eq!(gw.debug_routes().await["routes"][0]["name"], "probed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_hops_take_the_client_from_x_forwarded_for_on_both_paths() {
    let b = Backend::start("rev-a").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::serve_with(
        &snap,
        closed(),
        &["--trusted-hops", "1", "--access-log", log.to_str().unwrap()],
    )
    .await;
    // A client forged the first entry; the front proxy appended the real one.
    let sent = [("x-forwarded-for", "6.6.6.6, 203.0.113.7")];
    let h1 = HttpClient::new()
        .get_with(gw.http, "web.ns.example.com", &sent)
        .await
        .unwrap();
    let h2 = H2cClient::connect(gw.http)
        .await
        .get_with("web.ns.example.com", "/h2", &sent)
        .await
        .unwrap();
    // Too few entries for one trusted hop: nothing in the header is believed.
    let direct = HttpClient::new()
        .get(gw.http, "web.ns.example.com")
        .await
        .unwrap();
    for (what, reply) in [("HTTP/1.1, fast path", &h1), ("h2c, general path", &h2)] {
        assert_eq!(reply.status, 200, "{what}");
        // Only the trusted part goes on, with the front proxy (here the test
        // client, 127.0.0.1) appended.
        assert_eq!(
            reply.header("x-echo-x-forwarded-for"),
            "203.0.113.7, 127.0.0.1",
            "{what}"
        );
    }
    assert_eq!(direct.header("x-echo-x-forwarded-for"), "127.0.0.1");

    let lines = access_log_lines(&log, 3).await;
    let forwarded: Vec<_> = lines.iter().filter(|l| l["peer"].is_string()).collect();
    assert_eq!(forwarded.len(), 2, "{lines:?}");
    for line in forwarded {
        assert_eq!(line["client"], "203.0.113.7", "{line}");
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
    }
    let direct_line = lines.iter().find(|l| !l["peer"].is_string()).unwrap();
    assert!(
        direct_line["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{direct_line}"
    );
}
