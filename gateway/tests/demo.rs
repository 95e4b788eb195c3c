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
        &format!("open http://{}/ui in a browser", gw.admin),
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

/// The `demo.EchoRequest` / `demo.EchoReply` of gateway/src/demo/echo.proto.
#[derive(Clone, PartialEq, prost::Message)]
struct Echo {
    #[prost(string, tag = "1")]
    message: String,
}

/// `demo.Echo/Say` with "hi" to `authority` through `gw` (tonic, over h2c,
/// as grpcurl makes the call); the reply's message.
async fn say(gw: std::net::SocketAddr, authority: &str) -> String {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gw}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let reply: tonic::Response<Echo> = client
        .unary(
            tonic::Request::new(Echo {
                message: "hi".into(),
            }),
            http::uri::PathAndQuery::from_static("/demo.Echo/Say"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap();
    reply.into_inner().message
}

/// The demo's protocol lines work as printed: h2c with prior knowledge on
/// the plain port, HTTPS (h2 by ALPN) trusting the CA file it names, the gRPC
/// call of echo.proto (tonic, as grpcurl would make it), and WebSocket echoes
/// (tokio-tungstenite, as websocat would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_h2c_https_grpc_and_websocket_as_printed() {
    use rustls::pki_types::pem::PemObject;
    let gw = Gateway::demo(&[]).await;
    let out = gw.stdout();
    let h2c_line = format!(
        "curl --http2-prior-knowledge -H 'Host: {SPLIT}' http://localhost:{}/",
        gw.http.port()
    );
    assert!(out.contains(&h2c_line), "{h2c_line:?} not printed:\n{out}");
    let r = H2cClient::connect(gw.http)
        .await
        .get(SPLIT, "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .starts_with("Hello World! from knative-routing-demo-"),
        "{}",
        r.body
    );

    let https_line = out
        .lines()
        .find(|l| l.contains("curl --http2 --cacert"))
        .unwrap_or_else(|| panic!("no HTTPS line:\n{out}"));
    assert!(
        https_line.contains(&format!("--resolve {SPLIT}:{}:127.0.0.1", gw.https.port())),
        "{https_line}"
    );
    let ca_file = https_line.split_whitespace().nth(3).unwrap();
    let ca = rustls::pki_types::CertificateDer::from_pem_file(ca_file).unwrap();
    let r = https_get(gw.https, SPLIT, "/", &ca).await.unwrap();
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.reply.status, 200);
    assert!(r
        .reply
        .body
        .starts_with("Hello World! from knative-routing-demo-"));

    let grpc_line = format!(
        "grpcurl -plaintext -authority grpc-demo.default.example.com -proto gateway/src/demo/echo.proto -d '{{\"message\": \"hi\"}}' localhost:{} demo.Echo/Say",
        gw.http.port()
    );
    assert!(
        out.contains(&grpc_line),
        "{grpc_line:?} not printed:\n{out}"
    );
    assert_eq!(
        say(gw.http, "grpc-demo.default.example.com").await,
        "Hello World! from grpc-demo-00001: hi"
    );
    // The same call to the gRPC revision at zero, as printed: the activator
    // stand-in gets it over h2c and wakes the revision; the second call
    // goes to the woken revision.
    let cold_line = grpc_line.replace("grpc-demo.", "grpc-cold-demo.");
    assert!(
        out.contains(&cold_line),
        "{cold_line:?} not printed:\n{out}"
    );
    for _ in 0..2 {
        assert_eq!(
            say(gw.http, "grpc-cold-demo.default.example.com").await,
            "Hello World! from grpc-cold-demo-00001: hi"
        );
    }

    let ws_line = format!(
        "websocat -H 'Host: {SPLIT}' ws://localhost:{}/",
        gw.http.port()
    );
    assert!(out.contains(&ws_line), "{ws_line:?} not printed:\n{out}");
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/", gw.http).into_client_request().unwrap();
    req.headers_mut().insert("host", SPLIT.parse().unwrap());
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("ping"))
        .await
        .unwrap();
    let echo = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(
        echo.as_str().starts_with("knative-routing-demo-0000") && echo.as_str().ends_with(": ping"),
        "{echo}"
    );
}
