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
    let load = Load::start(http);
    // A keep-alive connection that goes idle before SIGTERM.
    let mut idle = None;
    assert_eq!(get(&mut idle, http, "/").await, Ok(200));
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let reply = raw_get(&mut None, http, "web.ns.example.com", "/slow", "").await;
        (reply, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = load.ok();
    gw.signal("TERM");
    let signalled = Instant::now();
    eventually(2, "/readyz to answer 503 after SIGTERM", || async {
        gw.admin("/readyz").await.status == 503
    })
    .await;
    // Every listener still serves during the grace period, new connections too.
    tokio::time::sleep(grace - Duration::from_secs(1) - signalled.elapsed()).await;
    let during = load.ok() - before;
    let tally = load.finish().await;
    assert_eq!(
        tally.failed, 0,
        "failed requests while draining, among them: {:?}",
        tally.reasons
    );
    // The listeners still serve and no connection was closed under a client.
    assert_eq!(tally.retried, 0, "requests retried while draining");
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

/// One client's tally under load: requests answered 200, requests retried
/// once on a new connection because a reused one closed before any answer,
/// and failures (with the first few reasons).
#[derive(Default)]
struct Tally {
    retried: u64,
    failed: u64,
    reasons: Vec<String>,
}

/// GET `/` until `stop`, on one keep-alive connection (or a new connection
/// per request), as an HTTP client does: a request whose reused connection
/// was closed before any answer is sent again once on a new connection (RFC
/// 9112 §9.3.1; browsers and client libraries do so for idempotent
/// requests). Anything else that is not a 200 is a failure.
async fn load(
    addr: SocketAddr,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        let reused = conn.is_some();
        let mut result = get(&mut conn, addr, "/").await;
        if result.is_err() && reused {
            tally.retried += 1;
            conn = None;
            result = get(&mut conn, addr, "/").await;
        }
        let why = match result {
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
            tally.failed += 1;
            if tally.reasons.len() < 5 {
                tally.reasons.push(why);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !keep_alive {
            conn = None;
        }
    }
    tally
}

/// Load as a load balancer sends it: three keep-alive clients, and one
/// opening a new connection per request.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let clients = [true, true, true, false]
            .into_iter()
            .map(|keep_alive| tokio::spawn(load(addr, keep_alive, stop.clone(), ok.clone())))
            .collect();
        Load { stop, ok, clients }
    }

    /// Requests answered 200 so far.
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stop every client; their tallies added up.
    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for c in self.clients {
            let t = c.await.unwrap();
            all.retried += t.retried;
            all.failed += t.failed;
            all.reasons.extend(t.reasons);
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigquit_hands_the_listeners_to_an_upgrade_with_zero_failed_requests() {
    let b = RawBackend::start("ok", SLOW).await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let mut old = Gateway::serve_with(
        &snap,
        closed(),
        &[
            "--upgrade-socket",
            socket.to_str().unwrap(),
            "--shutdown-grace",
            "0s",
            "--shutdown-timeout",
            "2s",
        ],
    )
    .await;
    let http = old.http;

    let load = Load::start(http);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A request in flight across the hand-over, served by the old process.
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let reply = raw_get(&mut None, http, "web.ns.example.com", "/slow", "").await;
        (reply, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut new = old.successor();
    // It waits on the socket for the old process's listeners.
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    // pingora's hand-over: both accept for 5 s, then the old one drains.
    let exit = old
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the old gateway exits after handing over");
    assert!(exit.success(), "{exit:?}: {}", old.stderr());
    let at_exit = load.ok();
    // Only the new process serves now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = load.ok() - at_exit;
    let tally = load.finish().await;
    assert_eq!(
        tally.failed, 0,
        "failed requests across the upgrade: {:?}",
        tally.reasons
    );
    // A keep-alive connection to the old process may be closed once, when
    // it drains, as a client sends on it: three keep-alive clients.
    assert!(tally.retried <= 3, "{} requests retried", tally.retried);
    assert!(
        after > 50,
        "only {after} requests served after the old process exited: {}",
        new.stderr()
    );
    assert_eq!(
        new.wait_exit(Duration::ZERO).await,
        None,
        "{}",
        new.stderr()
    );
    assert_eq!(new.admin("/readyz").await.status, 200);

    let (reply, took) = slow.await.unwrap();
    let RawReply { status, .. } = reply.expect("the request in flight at SIGQUIT");
    assert_eq!(status, 200);
    assert!(took >= SLOW, "{took:?}");
}

/// GET `path` of the test route as a new stream on `send`: the status and
/// body, or the error (a GOAWAY shows as one).
async fn h2_get(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
) -> Result<(u16, String), h2::Error> {
    let req = http::Request::get(format!("http://web.ns.example.com{path}"))
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await?;
    let (resp, _) = ready.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_sends_http2_clients_goaway_and_finishes_their_streams() {
    let b = RawBackend::start("ok", SLOW).await;
    let snap = route("ns", "web", &[("rev-a", 100, None)]) + &slice("ns", "rev-a", &[b.addr]);
    let grace = Duration::from_secs(1);
    let mut gw = Gateway::serve_with(
        &snap,
        closed(),
        &["--shutdown-grace", "1s", "--shutdown-timeout", "8s"],
    )
    .await;
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    assert_eq!(h2_get(&mut send, "/").await.unwrap().0, 200);
    // A stream in flight across the whole shutdown.
    let mut slow_send = send.clone();
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        (h2_get(&mut slow_send, "/slow").await, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    gw.signal("TERM");
    let signalled = Instant::now();
    // During the grace period the connection takes new streams.
    tokio::time::sleep(grace / 2).await;
    assert_eq!(h2_get(&mut send, "/").await.unwrap().0, 200);
    // After it, the client is told to go: GOAWAY, not a dropped connection.
    tokio::time::sleep(grace + Duration::from_millis(500) - signalled.elapsed()).await;
    let refused = h2_get(&mut send, "/").await;
    match &refused {
        Err(e) if e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR) => {}
        other => panic!("a new stream after the grace period: {other:?}"),
    }
    // The stream in flight still completes, and the connection then closes cleanly.
    let (reply, took) = slow.await.unwrap();
    assert_eq!(reply.unwrap(), (200, "ok".to_owned()));
    assert!(took >= SLOW, "{took:?}");
    let closed = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection closes once its last stream is done")
        .unwrap();
    assert!(closed.is_ok(), "{closed:?}");
    let exit = gw
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the gateway exits after its shutdown timeout");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_30_second_request_and_a_websocket_in_flight_at_sigterm_finish() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    const LONG: Duration = Duration::from_secs(30);
    let slow = RawBackend::start("ok", LONG).await;
    let ws_backend = Backend::start("ws").await;
    let snap = route("ns", "web", &[("rev-a", 100, None)])
        + &slice("ns", "rev-a", &[slow.addr])
        + &route("ns", "chat", &[("rev-ws", 100, None)])
        + &slice("ns", "rev-ws", &[ws_backend.addr]);
    let gw = Gateway::serve_with(
        &snap,
        closed(),
        &["--shutdown-grace", "1s", "--shutdown-timeout", "32s"],
    )
    .await;
    let http = gw.http;
    let long = tokio::spawn(async move {
        let started = Instant::now();
        let reply = raw_get(&mut None, http, "web.ns.example.com", "/slow", "").await;
        (reply, started.elapsed())
    });
    let mut req = format!("ws://{http}/chat").into_client_request().unwrap();
    req.headers_mut()
        .insert("host", "chat.ns.example.com".parse().unwrap());
    let stream = TcpStream::connect(http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut echo = async |i: usize| {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an echo within 5 s")
            .expect("the WebSocket is open")
            .unwrap();
        reply.into_text().unwrap().to_string()
    };
    assert_eq!(echo(0).await, "ws: ping 0");

    gw.signal("TERM");
    // Past the grace period (1 s) the listeners are closed... (looked for
    // from 2 s on, up to 6 s: a loaded machine may be late to close them)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(4);
    while TcpStream::connect(http).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the proxy listener still accepts 6 s after SIGTERM, 5 s past the grace period"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...while the WebSocket keeps working,
    for i in 1..=5 {
        assert_eq!(echo(i).await, format!("ws: ping {i}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // and the 30 s request in flight at SIGTERM completes.
    let (reply, took) = long.await.unwrap();
    let RawReply { status, body, .. } = reply.expect("the 30 s request in flight at SIGTERM");
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(took >= LONG, "{took:?}");
}
