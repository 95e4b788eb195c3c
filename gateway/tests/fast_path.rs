//! The fast path against the general proxy (docs/fast-path.md): the same
//! requests through a gateway with `--fast-path true` and one with
//! `--fast-path false` give the backend the same bytes and the client the
//! same responses, and the path that served each is known from the metrics.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "web.ns.example.com";

/// The backend's answer to a path: raw bytes, and whether it then closes.
fn answer(path: &str) -> (&'static [u8], bool) {
    match path {
        "/length" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: a\r\nDate: Sun, 29 Nov 2026 00:00:00 GMT\r\n\r\nhello",
            false,
        ),
        "/no-date" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            false,
        ),
        "/until-close" => (b"HTTP/1.1 200 OK\r\nX-App: c\r\n\r\nall of it", true),
        "/no-content" => (b"HTTP/1.1 204 No Content\r\nX-App: d\r\n\r\n", false),
        "/hop-by-hop" => (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: s\r\nContent-Length: 1\r\n\r\n!",
            false,
        ),
        "/error" => (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
            false,
        ),
        "/early-hints" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/malformed" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello", true),
        "/short" => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", true),
        _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
    }
}

/// A backend that records each request (head and body) as received and
/// answers by path.
struct RawRecorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawRecorder {
    async fn start() -> RawRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let log = heads.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let head_end = |b: &[u8]| find(b, b"\r\n\r\n");
                        let Some(end) = read_until(&mut s, &mut buf, head_end).await else {
                            return;
                        };
                        let mut head: Vec<u8> = buf.drain(..end).collect();
                        let text = String::from_utf8_lossy(&head).into_owned();
                        // A body by Content-Length (the only framing sent here).
                        let length = text
                            .lines()
                            .find_map(|l| {
                                let (n, v) = l.split_once(':')?;
                                n.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0usize);
                        let whole = |b: &[u8]| (b.len() >= length).then_some(length);
                        let Some(end) = read_until(&mut s, &mut buf, whole).await else {
                            return;
                        };
                        head.extend(buf.drain(..end));
                        // A chunked body (handed over to the general proxy):
                        // up to its last chunk, simply.
                        if text
                            .to_ascii_lowercase()
                            .contains("transfer-encoding: chunked")
                        {
                            let last = |b: &[u8]| find(b, b"0\r\n\r\n");
                            let Some(end) = read_until(&mut s, &mut buf, last).await else {
                                return;
                            };
                            head.extend(buf.drain(..end));
                        }
                        let target = text.split(' ').nth(1).unwrap_or("");
                        let path = target.split('?').next().unwrap_or("").to_owned();
                        log.lock().unwrap().push(head);
                        let (bytes, close) = answer(&path);
                        if s.write_all(bytes).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        RawRecorder {
            addr,
            heads,
            connections,
            task,
        }
    }

    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.heads.lock().unwrap())
    }
}

/// Where `pattern` ends in `b`, if it is there.
fn find(b: &[u8], pattern: &[u8]) -> Option<usize> {
    b.windows(pattern.len())
        .position(|w| w == pattern)
        .map(|i| i + pattern.len())
}

/// Read from `s` into `buf` until `end` finds where what is wanted ends;
/// `None` if the connection closes first.
async fn read_until(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    end: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    loop {
        if let Some(i) = end(buf) {
            return Some(i);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response as the client can compare it across proxies: status line,
/// header fields with lower-case names in sorted order (the date's value
/// left out: it is the time), and the body.
fn normalise(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    // Each response (1xx ones included) on its own.
    let mut rest: &str = &text;
    while let Some(end) = rest.find("\r\n\r\n") {
        let (head, after) = rest.split_at(end + 4);
        let mut lines = head.trim_end().split("\r\n");
        out += lines.next().unwrap_or("");
        out += "\n";
        let mut fields: Vec<String> = lines
            .map(|l| {
                let (name, value) = l.split_once(':').unwrap_or((l, ""));
                let name = name.to_ascii_lowercase();
                let value = if name == "date" {
                    "<date>"
                } else {
                    value.trim()
                };
                format!("{name}: {value}")
            })
            .collect();
        fields.sort();
        for f in fields {
            out += &f;
            out += "\n";
        }
        if head.starts_with("HTTP/1.1 1") {
            rest = after;
            continue;
        }
        // A chunked body's content, not its chunking: the general proxy
        // chunks anew, the fast path passes the chunks on as they came.
        out += "body: ";
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            out += &dechunk(after);
        } else {
            out += after;
        }
        break;
    }
    out
}

/// The content of a chunked body (extensions and trailers left out).
fn dechunk(mut body: &str) -> String {
    let mut content = String::new();
    while let Some((line, rest)) = body.split_once("\r\n") {
        let size = line.split(';').next().unwrap_or("");
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return format!("<bad chunk {line:?}>");
        };
        if size == 0 || rest.len() < size {
            return content;
        }
        content += &rest[..size];
        body = rest[size..].strip_prefix("\r\n").unwrap_or("");
    }
    content
}

/// Send `request` on a new connection and read until the gateway closes it.
async fn exchange(gw: SocketAddr, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_send_and_answer_the_same_bytes() {
    let backend = RawRecorder::start().await;
    let snap = route("ns", "web", &[("web-1", 100, None)]) + &slice("ns", "web-1", &[backend.addr]);
    let fast = Gateway::serve_with(&snap, closed(), &["--fast-path", "true"]).await;
    let general = Gateway::serve_with(&snap, closed(), &["--fast-path", "false"]).await;
    let paths = [
        "/length",
        "/no-date",
        "/chunked",
        "/until-close",
        "/no-content",
        "/hop-by-hop",
        "/error",
        "/early-hints",
        "/malformed",
        "/short",
    ];
    for path in paths {
        for method in ["GET", "HEAD", "DELETE", "POST"] {
            // A POST carries a body (by Content-Length), sent after the head.
            let body = if method == "POST" { "a=1&b=2" } else { "" };
            let length = if method == "POST" {
                format!("Content-Length: {}\r\n", body.len())
            } else {
                String::new()
            };
            let request = format!(
                "{method} {path}?q=1 HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 10.0.0.1\r\n\
                 Knative-Serving-Revision: forged\r\nUser-Agent: t\r\n{length}Connection: close\r\n\r\n{body}"
            );
            let from_fast = exchange(fast.http, &request).await;
            let fast_heads = backend.take();
            let from_general = exchange(general.http, &request).await;
            let general_heads = backend.take();
            assert_eq!(
                String::from_utf8_lossy(&fast_heads.concat()),
                String::from_utf8_lossy(&general_heads.concat()),
                "{method} {path}: what the backend received"
            );
            assert_eq!(fast_heads.len(), 1, "{method} {path}: sent once");
            if path == "/short" && method != "HEAD" {
                // The body broke off: both paths close after what came.
                assert!(
                    from_fast.ends_with(b"half"),
                    "{method} {path}: {}",
                    String::from_utf8_lossy(&from_fast)
                );
                continue;
            }
            let (mut from_fast, mut from_general) =
                (normalise(&from_fast), normalise(&from_general));
            if path == "/until-close" {
                // The one difference: the general proxy chunks a body that
                // runs to the close, the fast path passes it on as it came
                // (and closes); the content is the same.
                from_fast = from_fast.replace("transfer-encoding: chunked\n", "");
                from_general = from_general.replace("transfer-encoding: chunked\n", "");
            }
            if path == "/hop-by-hop" {
                // And one the fast path does better: the general proxy passes
                // on the backend's Keep-Alive and the field its Connection
                // names, which RFC 9110 §7.6.1 has a proxy remove.
                assert!(!from_fast.contains("keep-alive:") && !from_fast.contains("x-secret"));
                from_general = from_general
                    .replace("keep-alive: timeout=5\n", "")
                    .replace("x-secret: s\n", "");
            }
            assert_eq!(
                from_fast, from_general,
                "{method} {path}: what the client received"
            );
        }
    }
    // Every one of those was the fast path's; the general one served none.
    let requests = (paths.len() * 4) as u64;
    assert_eq!(fast.fast_path_requests("served").await, requests);
    assert_eq!(fast.fast_path_requests("handed_over").await, 0);
    assert_eq!(general.fast_path_requests("served").await, 0);

    // What the fast path does not serve is handed over, and answered alike:
    // a chunked body, a body past 64 KiB, an upgrade, HTTP/1.0.
    let large = "x".repeat(64 * 1024 + 1);
    for request in [
        format!("POST /length HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        format!("POST /length HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{large}", large.len()),
        format!("GET /length HTTP/1.1\r\nHost: {HOST}\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
        format!("GET /length HTTP/1.0\r\nHost: {HOST}\r\n\r\n"),
    ] {
        let from_fast = exchange(fast.http, &request).await;
        let fast_heads = backend.take();
        let from_general = exchange(general.http, &request).await;
        let general_heads = backend.take();
        assert_eq!(fast_heads, general_heads, "{request}");
        assert_eq!(normalise(&from_fast), normalise(&from_general), "{request}");
    }
    assert_eq!(fast.fast_path_requests("handed_over").await, 4);

    // What routing refuses (a miss, the probe, a redirect) is answered alike
    // by both paths, from the same decision; the fast path answers it itself.
    let served = fast.fast_path_requests("served").await;
    let refused = [
        "GET /length HTTP/1.1\r\nHost: nowhere.example.com\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nK-Network-Probe: probe\r\nConnection: close\r\n\r\n"
        ),
    ];
    for request in &refused {
        let from_fast = exchange(fast.http, request).await;
        let from_general = exchange(general.http, request).await;
        assert!(backend.take().is_empty(), "{request}: reaches no backend");
        assert_eq!(normalise(&from_fast), normalise(&from_general), "{request}");
        let status = String::from_utf8_lossy(&from_fast[..12]).into_owned();
        assert_eq!(status, "HTTP/1.1 404", "{request}");
    }
    assert_eq!(
        fast.fast_path_requests("served").await,
        served + refused.len() as u64
    );
    assert_eq!(fast.fast_path_requests("handed_over").await, 4);

    // Keep-alive: requests on one connection, pipelined, answered in order.
    let mut s = TcpStream::connect(fast.http).await.unwrap();
    let one = format!("GET /length HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let last = format!("GET /chunked HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    s.write_all(format!("{one}{one}{last}").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 3, "{got}");
    assert!(
        got.ends_with("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "{got}"
    );
    assert_eq!(backend.take().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_endpoint_is_retried_on_another_and_all_refused_is_502() {
    let backend = RawRecorder::start().await;
    let snap = route("ns", "web", &[("web-1", 100, None)])
        + &slice("ns", "web-1", &[closed(), backend.addr]);
    let gw = Gateway::serve_with(&snap, closed(), &["--fast-path", "true"]).await;
    for _ in 0..10 {
        let got = exchange(
            gw.http,
            &format!("GET /length HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            got.starts_with(b"HTTP/1.1 200 OK"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    let snap = route("ns", "web", &[("web-1", 100, None)]) + &slice("ns", "web-1", &[closed()]);
    gw.reload(&snap).await;
    let got = exchange(
        gw.http,
        &format!("GET /length HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
    )
    .await;
    assert!(
        got.starts_with(b"HTTP/1.1 502"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(gw.fast_path_requests("served").await, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_frees_the_upstream_connection() {
    // A backend that reads a request, never answers, and reports when the
    // gateway closes the connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let head_end = |b: &[u8]| find(b, b"\r\n\r\n");
        let arrived = read_until(&mut s, &mut seen, head_end).await;
        assert!(arrived.is_some(), "the request arrives");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let _ = closed_tx.send(n);
    });
    let snap = route("ns", "web", &[("web-1", 100, None)]) + &slice("ns", "web-1", &[addr]);
    let gw = Gateway::serve_with(&snap, closed(), &["--fast-path", "true"]).await;
    let mut client = TcpStream::connect(gw.http).await.unwrap();
    client
        .write_all(format!("GET /slow HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    let read = tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the gateway let the upstream connection go")
        .unwrap();
    assert_eq!(read, 0, "closed, with nothing more sent");
    backend.await.unwrap();
    assert_eq!(gw.fast_path_requests("served").await, 1);
}

/// One idle pool serves both paths: a connection the general proxy made
/// for a request it was handed carries the fast path's next request, and
/// the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_reuse_the_same_upstream_connections() {
    let backend = RawRecorder::start().await;
    let snap = route("ns", "web", &[("web-1", 100, None)]) + &slice("ns", "web-1", &[backend.addr]);
    let gw = Gateway::serve_with(&snap, closed(), &["--fast-path", "true"]).await;
    // One client connection: one worker thread, whose idle connections
    // these are.
    let mut client = TcpStream::connect(gw.http).await.unwrap();
    let chunked = format!(
        "POST /length HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
    let plain = format!("GET /length HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    for request in [&chunked, &plain, &chunked, &plain] {
        client.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let whole = |b: &[u8]| find(b, b"hello");
        tokio::time::timeout(
            Duration::from_secs(5),
            read_until(&mut client, &mut got, whole),
        )
        .await
        .expect("answered in time")
        .expect("answered before the connection closed");
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(gw.fast_path_requests("handed_over").await, 2);
    assert_eq!(gw.fast_path_requests("served").await, 2);
    assert_eq!(backend.take().len(), 4);
    assert_eq!(
        backend.connections.load(Ordering::Relaxed),
        1,
        "each request took the connection the one before released"
    );
}
