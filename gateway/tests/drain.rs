//! SIGTERM under load: the real gateway binary, real sockets on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long `GET /slow` takes at the backend.
const SLOW: Duration = Duration::from_secs(5);

/// GET `path` of the test route on `conn` (see [`raw_get`]): the status.
async fn get(conn: &mut Option<TcpStream>, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let reply = raw_get(conn, addr, "web.ns.example.com", path, "").await?;
    Ok(reply.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_with_zero_failed_requests_and_finishes_those_in_flight() {
    let b = RawBackend::start("ok", SLOW).await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let grace = Duration::from_secs(3);
    let mut gw = Gateway::serve_with(
        &snap,
        closed(),
        &["--shutdown-grace", "3s", "--shutdown-timeout", "8s"],
    )
    .await;
    let http = gw.http;

    // Load as a load balancer sends it until it sees /readyz fail: keep-alive
    // connections, and one client opening a new connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for keep_alive in [true, true, true, false] {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            // (failed requests, the first few of them)
            let mut failed = (0u64, Vec::new());
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                let why = match get(&mut conn, http, "/").await {
                    Ok(200) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Ok(status) => Some(format!("status {status}")),
                    Err(e) => {
                        conn = None;
                        Some(e)
                    }
                };
                if let Some(why) = why {
                    failed.0 += 1;
                    if failed.1.len() < 5 {
                        failed.1.push(why);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if !keep_alive {
                    conn = None;
                }
            }
            failed
        }));
    }
    // A keep-alive connection that goes idle before SIGTERM.
    let mut idle = None;
    assert_eq!(get(&mut idle, http, "/").await, Ok(200));
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let reply = raw_get(&mut None, http, "web.ns.example.com", "/slow", "").await;
        (reply, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = ok.load(Ordering::Relaxed);
    gw.signal("TERM");
    let signalled = Instant::now();
    eventually(2, "/readyz to answer 503 after SIGTERM", || async {
        gw.admin("/readyz").await.status == 503
    })
    .await;
    // Every listener still serves during the grace period, new connections too.
    tokio::time::sleep(grace - Duration::from_secs(1) - signalled.elapsed()).await;
    let during = ok.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let (mut failed, mut samples) = (0, Vec::new());
    for c in clients {
        let (n, some) = c.await.unwrap();
        failed += n;
        samples.extend(some);
    }
    assert_eq!(
        failed, 0,
        "failed requests while draining, among them: {samples:?}"
    );
    assert!(
        during > 50,
        "only {during} requests served during the grace period"
    );

    // After the grace period the listeners are closed...
    tokio::time::sleep(grace + Duration::from_millis(700) - signalled.elapsed()).await;
    assert!(
        TcpStream::connect(http).await.is_err(),
        "the proxy listener still accepts after the grace period"
    );
    // ...idle keep-alive connections are closed by the gateway...
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        idle.as_mut().unwrap().read(&mut byte),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "an idle keep-alive connection stays open after the grace period: {read:?}"
    );
    // ...but a request that was in flight all along still completes.
    let (reply, took) = slow.await.unwrap();
    let RawReply { status, head, .. } = reply.expect("the request in flight at SIGTERM");
    assert_eq!(status, 200, "the request in flight at SIGTERM");
    assert!(took >= SLOW, "{took:?}");
    assert!(
        head.contains("connection: close"),
        "the keep-alive client of a response sent while draining is told to close: {head}"
    );
    let exit = gw
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the gateway exits after its shutdown timeout");
    assert!(exit.success(), "{exit:?}");
}
