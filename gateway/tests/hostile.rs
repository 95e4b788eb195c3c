//! Hostile and malformed clients against the real gateway binary: request
//! smuggling and malformed requests (the cases in `loadtests::hostile`,
//! which the load-test harness also sends to nginx, HAProxy and Envoy),
//! request head limits, the header timeout, and the connection cap.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loadtests::hostile::{self, Recorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "web.ns.example.com";

async fn gateway_to(recorder: &Recorder, extra: &[&str]) -> Gateway {
    let snap =
        route("ns", "web", &[("web-1", 100, None)]) + &slice("ns", "web-1", &[recorder.addr]);
    Gateway::serve_with(&snap, closed(), extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_smuggling_requests_are_refused_or_forwarded_whole() {
    malformed_and_smuggling_cases("true").await;
}

/// The same cases, the same answers, with every request on the general proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_smuggling_requests_without_the_fast_path() {
    malformed_and_smuggling_cases("false").await;
}

async fn malformed_and_smuggling_cases(fast_path: &str) {
    let recorder = Recorder::start().await.unwrap();
    let gw = gateway_to(
        &recorder,
        &["--request-header-timeout", "1s", "--fast-path", fast_path],
    )
    .await;
    let cases = hostile::cases(HOST, Some(Duration::from_secs(5)));
    let outcomes = hostile::run_all(gw.http, &recorder, &cases).await;
    let mut failures = Vec::new();
    for (case, outcome) in cases.iter().zip(&outcomes) {
        if let Err(why) = hostile::verdict(case, outcome) {
            failures.push(format!("{} ({}): {why}", case.name, case.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases unsafe:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Where the cases allow several answers, the gateway's own (as
    // docs/operations.md lists them). 0: closed without an answer.
    let expected = [
        ("cl-te", 200),
        ("te-cl", 200),
        ("cl-differing", 400),
        ("cl-repeated", 200),
        ("cl-list-differing", 400),
        ("cl-plus", 400),
        ("cl-negative", 400),
        ("cl-hex", 400),
        ("cl-overflow", 400),
        ("cl-space-inside", 400),
        ("te-not-last", 400),
        ("te-unknown", 400),
        ("te-xchunked", 400),
        ("te-space-before-colon", 400),
        ("te-vertical-tab", 400),
        ("te-http10", 400),
        ("obs-fold", 400),
        ("bare-lf", 200),
        ("bare-cr", 400),
        ("nul-in-value", 400),
        ("nul-in-path", 200),
        ("cr-in-value", 400),
        ("space-in-name", 400),
        ("chunk-size-invalid", 400),
        ("chunk-size-overflow", 400),
        ("chunk-extension", 200),
        ("chunk-missing-crlf", 400),
        ("body-holds-request", 200),
        ("absolute-form-other-host", 400),
        ("absolute-form", 200),
        ("http09", 400),
        ("version-minor", 400),
        ("version-major", 400),
        ("no-host", 400),
        ("two-hosts", 400),
        ("host-userinfo", 400),
        ("method-invalid", 400),
        ("connect", 405),
        ("header-too-large", 431),
        ("line-too-long", 431),
        ("too-many-headers", 431),
        ("pipelined", 200),
        ("slowloris", 408),
    ];
    let got: Vec<(&str, u16)> = cases
        .iter()
        .zip(&outcomes)
        .map(|(c, o)| (c.name, o.statuses.first().copied().unwrap_or(0)))
        .collect();
    assert_eq!(got, expected);
    // A case's prefix, its outcome, and the paths the backend received for it.
    let case = |name: &str| {
        let i = cases.iter().position(|c| c.name == name).unwrap();
        let paths: Vec<String> = outcomes[i]
            .forwarded
            .iter()
            .map(|s| s.path.clone())
            .collect();
        (cases[i].prefix.as_str(), &outcomes[i], paths)
    };
    // A request whose head was forwarded before its chunked body broke
    // reached the backend cut off, never whole.
    for name in [
        "chunk-size-invalid",
        "chunk-size-overflow",
        "chunk-missing-crlf",
    ] {
        let (_, outcome, _) = case(name);
        assert!(
            outcome.forwarded.iter().all(|s| !s.complete),
            "{name}: {:?}",
            outcome.forwarded
        );
    }
    // pingora percent-encodes bytes no request target may hold, rather
    // than refusing them; the backend sees a well-formed target.
    let (prefix, _, paths) = case("nul-in-path");
    assert_eq!(paths, [format!("{prefix}/a%00b")]);
    // Both pipelined requests were answered, in order.
    let (prefix, outcome, paths) = case("pipelined");
    assert_eq!(outcome.statuses, [200, 200], "{paths:?}");
    assert_eq!(paths, [format!("{prefix}/1"), format!("{prefix}/2")]);
    // Which path served them: the plain ones (no body, HTTP/1.1) the fast
    // path, the rest the general proxy, after the fast path read their head.
    let served = gw.fast_path_requests("served").await;
    let handed_over = gw.fast_path_requests("handed_over").await;
    if fast_path == "true" {
        assert!(served > 0 && handed_over > 0, "{served} {handed_over}");
    } else {
        assert_eq!((served, handed_over), (0, 0));
    }
}

/// One request on `conn` with an extra header of `bytes` bytes; its status.
async fn with_header_of(gw: &Gateway, bytes: usize) -> u16 {
    let mut conn = None;
    let extra = format!("X-Pad: {}\r\n", "p".repeat(bytes));
    raw_get(&mut conn, gw.http, HOST, "/pad", &extra)
        .await
        .map_or(0, |r| r.status)
}

/// An HTTP/2 (h2c) request with one header of `bytes`: the status, or the
/// error that reset its stream.
async fn h2_with_header_of(gw: &Gateway, bytes: usize) -> Result<u16, String> {
    let h2 = H2cClient::connect(gw.http).await;
    let pad = "p".repeat(bytes);
    h2.get_with(HOST, "/h2-pad", &[("x-pad", &pad)])
        .await
        .map(|r| r.status)
}

/// The HTTP/2 header list limit: within it 200, past it 431 (h2 answers it
/// and refuses the stream, so the client may see either).
async fn assert_h2_limit(gw: &Gateway, within: usize, past: usize) {
    assert_eq!(h2_with_header_of(gw, within).await, Ok(200));
    match h2_with_header_of(gw, past).await {
        Ok(431) => {}
        Err(e) if e.contains("REFUSED_STREAM") => {}
        other => panic!("a {past}-byte HTTP/2 header list: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_limits_follow_the_flags() {
    let recorder = Recorder::start().await.unwrap();
    // Defaults: 64 KiB heads, 100 headers.
    let gw = gateway_to(&recorder, &[]).await;
    assert_eq!(with_header_of(&gw, 60 * 1024).await, 200);
    assert_eq!(with_header_of(&gw, 65 * 1024).await, 431);
    let ninety: String = (0..90).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let mut conn = None;
    let r = raw_get(&mut conn, gw.http, HOST, "/many", &ninety)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // HTTP/2 header lists have the same size limit.
    assert_h2_limit(&gw, 60 * 1024, 70 * 1024).await;
    drop(gw);

    let gw = gateway_to(
        &recorder,
        &[
            "--max-request-header-bytes",
            "4096",
            "--max-request-headers",
            "20",
        ],
    )
    .await;
    assert_eq!(with_header_of(&gw, 3000).await, 200);
    assert_eq!(with_header_of(&gw, 5000).await, 431);
    let mut conn = None;
    let r = raw_get(&mut conn, gw.http, HOST, "/many", &ninety)
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert!(r.head.contains("connection: close"), "{}", r.head);
    assert_h2_limit(&gw, 3000, 5000).await;
    // And HTTP/2 header lists the same count.
    let h2 = H2cClient::connect(gw.http).await;
    let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = h2.get_with(HOST, "/h2-many", &many).await.unwrap();
    assert_eq!(r.status, 431);
    let r = h2.get_with(HOST, "/h2-many", &many[..15]).await.unwrap();
    assert_eq!(r.status, 200);
    // A refused head never reached the backend.
    assert_eq!(
        recorder.all().iter().filter(|s| s.path == "/pad").count(),
        2,
        "{:?}",
        recorder.all()
    );
    assert_eq!(
        recorder
            .all()
            .iter()
            .filter(|s| s.path == "/h2-pad")
            .count(),
        2,
        "{:?}",
        recorder.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_closes_silent_clients_but_not_idle_keep_alive() {
    let recorder = Recorder::start().await.unwrap();
    let gw = gateway_to(&recorder, &["--request-header-timeout", "1s"]).await;

    // A connection that never sends a byte is closed, without an answer.
    let start = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("a silent connection was kept past the header timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "answered a client that sent nothing");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the header timeout"
    );

    // A head started and never finished gets 408.
    let mut half = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    half.write_all(format!("GET /half HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut answer))
        .await
        .expect("a half-sent head was kept past the header timeout")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // An idle keep-alive connection between requests is not a slow head:
    // it is still served after longer than the header timeout.
    let mut conn = None;
    let first = raw_get(&mut conn, gw.http, HOST, "/first", "")
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = raw_get(&mut conn, gw.http, HOST, "/second", "")
        .await
        .unwrap();
    assert_eq!(second.status, 200);
    assert!(recorder.all().iter().all(|s| s.path != "/half"));

    // A TLS handshake gets as long, not pingora's 60 s: silent, or stalled
    // after the start of a ClientHello.
    for sent in [&b""[..], b"\x16\x03\x01\x02\x00"] {
        let start = Instant::now();
        let mut stalled = tokio::net::TcpStream::connect(gw.https).await.unwrap();
        stalled.write_all(sent).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
            .await
            .expect("a stalled TLS handshake was kept past the header timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "answered a stalled handshake");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "closed after {waited:?}, before the timeout"
        );
    }
}

/// The value of an unlabelled metric on the gateway's `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    gw.metric(name)
        .await
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_and_counted() {
    let recorder = Recorder::start().await.unwrap();
    let gw = gateway_to(&recorder, &["--max-connections", "3"]).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut conn = None;
        let r = raw_get(&mut conn, gw.http, HOST, &format!("/held-{i}"), "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        held.push(conn);
    }
    assert_eq!(metric(&gw, "gateway_connections_open").await, 3.0);

    // The fourth is closed without an answer; the others keep working.
    let mut fourth = None;
    let refused = raw_get(&mut fourth, gw.http, HOST, "/fourth", "").await;
    assert!(refused.is_err(), "served past the cap: {refused:?}");
    assert_eq!(metric(&gw, "gateway_connections_refused_total").await, 1.0);
    let again = raw_get(&mut held[0], gw.http, HOST, "/held-again", "").await;
    assert_eq!(again.unwrap().status, 200);

    // A slot freed is a slot to take.
    held.pop();
    eventually(5, "a freed slot serves a new connection", || async {
        let mut conn = None;
        raw_get(&mut conn, gw.http, HOST, "/after", "")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(recorder.all().iter().all(|s| s.path != "/fourth"));
}
