//! What an operator sees of each request: the access log. The real gateway
//! binary, real backends on loopback.

mod common;

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
