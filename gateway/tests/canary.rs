//! Canary rollouts end to end, through the real gateway binary and real
//! backends on loopback: exact splits, ejection of endpoints whose
//! connections fail, and slow start of new ones.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};

/// The largest difference, over every run of `window` consecutive requests
/// in `seq` and every revision, between its count and its percent's share.
fn worst_window_error(seq: &[usize], percents: &[u32], window: usize) -> f64 {
    let mut worst: f64 = 0.0;
    for (way, &pct) in percents.iter().enumerate() {
        let hits: Vec<i64> = seq.iter().map(|&w| i64::from(w == way)).collect();
        let mut n: i64 = hits[..window].iter().sum();
        for start in 0..=seq.len() - window {
            if start > 0 {
                n += hits[start + window - 1] - hits[start - 1];
            }
            let expected = window as f64 * f64::from(pct) / 100.0;
            worst = worst.max((n as f64 - expected).abs());
        }
    }
    worst
}

/// What a random pick per request (every other Knative ingress) does on
/// the same split: the worst window error of `n` seeded draws.
fn random_pick_error(percents: &[u32], n: usize, window: usize) -> f64 {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let seq: Vec<usize> = (0..n)
        .map(|_| {
            let mut r = rng.random_range(0..100u32);
            percents
                .iter()
                .position(|&p| {
                    let hit = r < p;
                    r = r.saturating_sub(p);
                    hit
                })
                .unwrap()
        })
        .collect();
    worst_window_error(&seq, percents, window)
}

/// A route splitting `percents` over one backend per revision (`rev-0`, ...).
async fn split_route(percents: &[u32]) -> (String, Vec<Backend>) {
    let names: Vec<String> = (0..percents.len()).map(|i| format!("rev-{i}")).collect();
    let traffic: Vec<(&str, i64, Option<&str>)> = names
        .iter()
        .zip(percents)
        .map(|(n, &p)| (n.as_str(), i64::from(p), None))
        .collect();
    let mut snap = route("ns", "web", &traffic);
    let mut backends = Vec::new();
    for name in &names {
        let b = Backend::start(name).await;
        snap += &slice("ns", name, &[b.addr]);
        backends.push(b);
    }
    (snap, backends)
}

/// `n` requests over `conns` keep-alive connections (raw ones: a pooling
/// client may open more), one at a time, taking the connections in turn:
/// the revision index of each, in order.
async fn sequence(gw: SocketAddr, host: &str, n: usize, conns: usize) -> Vec<usize> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut all = Vec::new();
    for _ in 0..conns {
        all.push(BufReader::new(
            tokio::net::TcpStream::connect(gw).await.unwrap(),
        ));
    }
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut seq = Vec::with_capacity(n);
    for i in 0..n {
        let conn = &mut all[i % conns];
        conn.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut length = None;
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            conn.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>().unwrap());
                }
            }
        }
        let mut body = vec![0; length.expect("a length")];
        conn.read_exact(&mut body).await.unwrap();
        let body = String::from_utf8(body).unwrap();
        seq.push(body.trim_start_matches("rev-").parse().unwrap());
    }
    seq
}

const SPLITS: [&[u32]; 3] = [&[1, 99], &[10, 90], &[33, 33, 34]];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_every_window_of_100_is_exact() {
    for percents in SPLITS {
        let (snap, _backends) = split_route(percents).await;
        let gw = Gateway::serve_with(&snap, closed(), &[]).await;
        let seq = sequence(gw.http, "web.ns.example.com", 10_000, 1).await;
        let exact = worst_window_error(&seq, percents, 100);
        let random = random_pick_error(percents, 10_000, 100);
        println!("{percents:?}, one connection: worst window error {exact}, random pick {random}");
        // One connection is served by one worker thread, whose cursor walks
        // the 100 slots: every window of 100 is the split itself.
        assert_eq!(exact, 0.0, "{percents:?}");
        assert!(random >= 2.0, "the random pick is not exact: {random}");
        for window in [10, 50] {
            let err = worst_window_error(&seq, percents, window);
            assert!(err <= 1.0, "{percents:?}, windows of {window}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_connections_on_two_threads_stay_within_a_request_per_thread() {
    for percents in SPLITS {
        let (snap, backends) = split_route(percents).await;
        let gw = Gateway::serve_with(&snap, closed(), &[]).await;
        // In turn over 16 connections, which the two worker threads share:
        // each thread's windows are exact, so the interleaving of two is off
        // by at most a request per thread.
        let seq = sequence(gw.http, "web.ns.example.com", 10_000, 16).await;
        let interleaved = worst_window_error(&seq, percents, 100);
        let random = random_pick_error(percents, 10_000, 100);
        println!(
            "{percents:?}, 16 connections in turn, 2 threads: worst window error {interleaved}, random pick {random}"
        );
        assert!(interleaved <= 2.0, "{percents:?}: {interleaved}");
        let before: Vec<u64> = backends.iter().map(|b| b.hits()).collect();
        let counts = count_bodies(gw.http, "web.ns.example.com", 10_000, 16).await;
        // Each thread's cursor is exact over its own requests; two threads
        // are off by at most a request each, whatever their shares.
        for (i, &pct) in percents.iter().enumerate() {
            let got = counts.get(&format!("rev-{i}")).copied().unwrap_or(0) as i64;
            let expected = i64::from(pct) * 100;
            assert!(
                (got - expected).abs() <= 2,
                "{percents:?}: rev-{i} got {got}, expected {expected}; {counts:?}"
            );
            assert_eq!((backends[i].hits() - before[i]) as i64, got);
        }
        println!("{percents:?}, 16 connections at once, 2 threads: totals {counts:?}");
    }
}

/// A listener that accepts every connection and closes it unanswered (a
/// reset when the request is already in, else a close).
async fn resetting() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    (addr, task)
}

/// `(ejections so far, ejected for ms)` of the endpoint at `addr` in `/debug/routes`.
async fn ejection(gw: &Gateway, addr: SocketAddr) -> (u64, Option<u64>) {
    let d = gw.debug_routes().await;
    let e = d["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["endpoints"].as_array().unwrap())
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not in {d}"))
        .clone();
    (
        e["ejections"].as_u64().unwrap(),
        e["ejected_for_ms"].as_u64(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_and_resetting_endpoints_are_ejected_and_come_back() {
    let good = Backend::start("good").await;
    let refused = closed();
    let (reset, _task) = resetting().await;
    let snap = route("ns", "web", &[("rev", 100, None)])
        + &slice("ns", "rev", &[good.addr, refused, reset]);
    let gw = Gateway::serve_with(
        &snap,
        closed(),
        &[
            "--eject-after",
            "2",
            "--eject-for",
            "1500ms",
            "--fast-path",
            "true",
        ],
    )
    .await;
    let c = HttpClient::new();
    // A refused connection is retried on another endpoint; a reset one
    // fails the request (it may have reached the backend). Both count.
    let mut failed = 0;
    for _ in 0..60 {
        let r = c.get(gw.http, "web.ns.example.com").await.unwrap();
        if r.status != 200 {
            assert_eq!(r.status, 502, "{r:?}");
            failed += 1;
        }
    }
    let (n, left) = ejection(&gw, refused).await;
    assert_eq!(n, 1, "the refusing endpoint is ejected once");
    assert!(left.is_some_and(|ms| ms <= 1500), "{left:?}");
    let (n, left) = ejection(&gw, reset).await;
    assert_eq!(n, 1, "the resetting endpoint is ejected once");
    assert!(left.is_some());
    assert!(
        failed <= 2,
        "at most two resets reach clients before ejection: {failed}"
    );
    // While they are out, every request goes to the good one.
    let before = good.hits();
    for _ in 0..50 {
        let r = c.get(gw.http, "web.ns.example.com").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(good.hits() - before, 50);
    for series in [
        "gateway_endpoint_ejections_total{namespace=\"ns\",revision=\"rev\"}",
        "gateway_endpoints_ejected{namespace=\"ns\",revision=\"rev\"}",
    ] {
        assert_eq!(gw.metric(series).await, Some(2.0), "{series}");
    }
    // Past the ejection they are tried again, fail again, and are ejected
    // for twice as long.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(ejection(&gw, refused).await.1, None, "back in");
    eventually(10, "ejected again", || async {
        let _ = c.get(gw.http, "web.ns.example.com").await;
        ejection(&gw, refused).await.0 == 2
    })
    .await;
    let left = ejection(&gw, refused).await.1.unwrap();
    assert!(left > 1500 && left <= 3000, "doubled: {left} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_endpoint_and_error_responses_are_never_ejected() {
    let refused = closed();
    let failing = Backend::with_status("failing", 503).await;
    let snap = route("ns", "lone", &[("lone", 100, None)])
        + &slice("ns", "lone", &[refused])
        + &route("ns", "errors", &[("errors", 100, None)])
        + &slice("ns", "errors", &[failing.addr]);
    for fast in ["true", "false"] {
        let gw = Gateway::serve_with(
            &snap,
            closed(),
            &["--eject-after", "2", "--fast-path", fast],
        )
        .await;
        let c = HttpClient::new();
        for _ in 0..10 {
            let r = c.get(gw.http, "lone.ns.example.com").await.unwrap();
            assert_eq!(r.status, 502);
            let r = c.get(gw.http, "errors.ns.example.com").await.unwrap();
            assert_eq!(r.status, 503);
        }
        assert_eq!(ejection(&gw, refused).await, (0, None), "fast path {fast}");
        assert_eq!(ejection(&gw, failing.addr).await, (0, None));
        assert!(gw.stderr().contains("last endpoint of its revision"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_general_path_ejects_too() {
    let good = Backend::start("good").await;
    let (reset, _task) = resetting().await;
    let snap = route("ns", "web", &[("rev", 100, None)]) + &slice("ns", "rev", &[good.addr, reset]);
    let gw = Gateway::serve_with(
        &snap,
        closed(),
        &["--eject-after", "2", "--fast-path", "false"],
    )
    .await;
    let c = HttpClient::new();
    for _ in 0..40 {
        let _ = c.get(gw.http, "web.ns.example.com").await.unwrap();
    }
    assert_eq!(ejection(&gw, reset).await.0, 1);
}

/// The share of `n` requests over one connection that `name` answered.
async fn share(gw: SocketAddr, host: &str, n: usize, name: &str) -> f64 {
    let counts: HashMap<String, usize> = count_bodies(gw, host, n, 1).await;
    *counts.get(name).unwrap_or(&0) as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pod_beside_others_ramps_up_and_a_waking_revision_does_not() {
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let one = route("ns", "web", &[("rev", 100, None)]) + &slice("ns", "rev", &[old.addr]);
    let gw = Gateway::serve_with(&one, closed(), &["--slow-start", "4s"]).await;
    let both =
        route("ns", "web", &[("rev", 100, None)]) + &slice("ns", "rev", &[old.addr, new.addr]);
    gw.reload(&both).await;
    // Equal loads: warm, each would take half. Warming, the new pod takes
    // half its warmth (10% rising to 100% over 4 s).
    let early = share(gw.http, "web.ns.example.com", 400, "new").await;
    let d = gw.debug_routes().await;
    assert!(d.to_string().contains("ready_ms_ago"), "{d}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let warm = share(gw.http, "web.ns.example.com", 400, "new").await;
    println!("new pod's share: {early:.3} in its first moments, {warm:.3} once warm");
    assert!(early < 0.2, "{early}");
    assert!(warm > 0.38, "{warm}");

    // A revision waking from zero with two pods: neither is held back.
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let zero = route("ns", "cold", &[("cold", 100, None)]) + &slice("ns", "cold", &[]);
    let gw = Gateway::serve_with(&zero, closed(), &["--slow-start", "30s"]).await;
    let woken =
        route("ns", "cold", &[("cold", 100, None)]) + &slice("ns", "cold", &[a.addr, b.addr]);
    gw.reload(&woken).await;
    let a_share = share(gw.http, "cold.ns.example.com", 400, "a").await;
    assert!((0.38..0.62).contains(&a_share), "{a_share}");
}

/// A Route splitting `traffic` between `rev-a` and `rev-b`, sticky by the
/// cookie `canary` for an hour, with both revisions' endpoints.
fn sticky_route(a: &Backend, b: &Backend, traffic: &[(&str, i64, Option<&str>)]) -> String {
    route("ns", "shop", traffic).replacen(
        "metadata: {name: shop, namespace: ns}",
        "metadata: {name: shop, namespace: ns, annotations: {knative-gateway.dev/affinity: cookie, \
         knative-gateway.dev/affinity-cookie: canary, knative-gateway.dev/affinity-max-age: 1h}}",
        1,
    ) + &slice("ns", "rev-a", &[a.addr])
        + &slice("ns", "rev-b", &[b.addr])
}

/// One request as a client holding `cookie` (if any): the revision that
/// answered and the cookie it was given, if one was set.
async fn visit(gw: SocketAddr, cookie: Option<&str>) -> (String, Option<String>) {
    let c = HttpClient::new();
    let headers: Vec<(&str, &str)> = cookie.map(|v| ("cookie", v)).into_iter().collect();
    let r = c
        .get_with(gw, "shop.ns.example.com", &headers)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let set = r.headers.get("set-cookie").map(|v| {
        let v = v.to_str().unwrap();
        assert!(
            v.ends_with("; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax"),
            "{v}"
        );
        v.split(';').next().unwrap().to_owned()
    });
    (r.body, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_split_by_percent_stay_through_steps_and_move_when_their_revision_goes() {
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    let step = |pa: i64, pb: i64| {
        sticky_route(
            &a,
            &b,
            &[("rev-a", pa, Some("a")), ("rev-b", pb, Some("b"))],
        )
    };
    for fast in ["true", "false"] {
        let gw = Gateway::serve_with(&step(90, 10), closed(), &["--fast-path", fast]).await;
        // 1,000 new users: each is picked by the split and told by cookie.
        let mut users = Vec::new();
        for _ in 0..1000 {
            let (rev, cookie) = visit(gw.http, None).await;
            let cookie = cookie.expect("a new user gets a cookie");
            assert_eq!(cookie, format!("canary={rev}"));
            users.push(cookie);
        }
        let on_b = users.iter().filter(|c| c.ends_with("rev-b")).count();
        assert!(
            (70..=130).contains(&on_b),
            "10% ± 3 points of users: {on_b}"
        );
        // Returning users never flip, and are not told again.
        for cookie in users.iter().step_by(10) {
            for _ in 0..3 {
                let (rev, set) = visit(gw.http, Some(&format!("other=1; {cookie}"))).await;
                assert_eq!(format!("canary={rev}"), *cookie, "fast path {fast}");
                assert_eq!(set, None);
            }
        }
        // A cookie naming a revision this split does not serve is ignored.
        let (rev, set) = visit(gw.http, Some("canary=rev-z")).await;
        assert_eq!(set, Some(format!("canary={rev}")));
        // The next step: both revisions keep a share, so everyone stays.
        gw.reload(&step(50, 50)).await;
        for cookie in users.iter().step_by(10) {
            let (rev, set) = visit(gw.http, Some(cookie)).await;
            assert_eq!(format!("canary={rev}"), *cookie);
            assert_eq!(set, None);
        }
        // Promoted: rev-a has no share left (its tag host still reaches
        // it), and every user lands on rev-b. A one-way route needs no
        // cookie: none is set, and a stale one is ignored.
        gw.reload(&step(0, 100)).await;
        for cookie in users.iter().step_by(10) {
            let (rev, set) = visit(gw.http, Some(cookie)).await;
            assert_eq!(rev, "rev-b", "fast path {fast}");
            assert_eq!(set, None);
        }
        let r = HttpClient::new()
            .get_with(
                gw.http,
                "a-shop.ns.example.com",
                &[("cookie", "canary=rev-b")],
            )
            .await
            .unwrap();
        assert_eq!(r.body, "rev-a", "a tag host ignores the cookie");
        let d = gw.debug_routes().await;
        let shop = d["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "shop")
            .unwrap();
        assert_eq!(shop["affinity"]["cookie"], "canary");
        assert_eq!(shop["affinity"]["max_age_seconds"], 3600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_affinity_annotation_keeps_the_last_good_route_and_says_why() {
    let (a, b) = (Backend::start("rev-a").await, Backend::start("rev-b").await);
    let good = sticky_route(&a, &b, &[("rev-a", 50, None), ("rev-b", 50, None)]);
    let gw = Gateway::start(&good, closed()).await;
    gw.reload(&good.replace("affinity-max-age: 1h", "affinity-max-age: forever"))
        .await;
    let rejected = gw.rejected().await;
    assert_eq!(
        rejected,
        [(
            "ns/shop".to_owned(),
            "bad_annotation".to_owned(),
            "last_good".to_owned()
        )]
    );
    let d = gw.debug_routes().await.to_string();
    assert!(
        d.contains("annotation knative-gateway.dev/affinity-max-age: \\\"forever\\\""),
        "{d}"
    );
    let (_, set) = visit(gw.http, None).await;
    assert!(set.is_some(), "still served, still sticky");
}
