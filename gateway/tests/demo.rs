//! `gateway demo`: the embedded default, end to end.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SPLIT: &str = "knative-routing-demo.default.example.com";
const COLD: &str = "cold-demo.default.example.com";

async fn cold_endpoints(gw: &Gateway) -> usize {
    let d = gw.debug_routes().await;
    let rev = d["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "cold-demo-00001")
        .unwrap()
        .clone();
    rev["endpoints"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_split_tags_and_wakes_the_cold_revision() {
    let gw = Gateway::demo(&["--scale-to-zero-after", "1s", "--message", "Hi!"]).await;
    let out = gw.stdout();
    for line in [
        &format!(
            "curl -H 'Host: {SPLIT}' http://localhost:{}/",
            gw.http.port()
        ),
        "curl -H 'Host: v1-knative-routing-demo.default.example.com'",
        "curl -H 'Host: v2-knative-routing-demo.default.example.com'",
        &format!("curl -H 'Host: {COLD}'"),
        &format!(
            "curl -H 'Host: knative-routing-demo.default.svc.cluster.local' http://localhost:{}/",
            gw.internal.port()
        ),
    ] {
        assert!(out.contains(line), "{line:?} not printed:\n{out}");
    }

    let counts = count_bodies(gw.http, SPLIT, 2_000, 4).await;
    let v1 = counts
        .get("Hi! from knative-routing-demo-00001\n")
        .copied()
        .unwrap_or(0);
    let v2 = counts
        .get("Hi! from knative-routing-demo-00002\n")
        .copied()
        .unwrap_or(0);
    assert_eq!(v1 + v2, 2_000, "{counts:?}");
    assert!((1_740..=1_860).contains(&v1), "90% ± 3 points: {counts:?}");

    let c = HttpClient::new();
    let r = c
        .get(gw.http, "v2-knative-routing-demo.default.example.com")
        .await
        .unwrap();
    assert_eq!(r.body, "Hi! from knative-routing-demo-00002\n");

    // Cold: the first request wakes the revision through the activator stand-in...
    assert_eq!(cold_endpoints(&gw).await, 0);
    let r = c.get(gw.http, COLD).await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "Hi! from cold-demo-00001\n")
    );
    assert_eq!(
        cold_endpoints(&gw).await,
        1,
        "the woken endpoint is published"
    );
    let r = c.get(gw.http, COLD).await.unwrap();
    assert_eq!(r.status, 200);
    let m = gw.admin("/metrics").await.body;
    assert!(
        m.contains(
            r#"gateway_activator_requests_total{namespace="default",revision="cold-demo-00001"} 1"#
        ),
        "the second request went straight to the pod:\n{m}"
    );

    // ...and after the idle time it is scaled back to zero, and wakes again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cold_endpoints(&gw).await != 0 {
        assert!(Instant::now() < deadline, "not scaled back to zero");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c.get(gw.http, COLD).await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "Hi! from cold-demo-00001\n")
    );
}
