//! A sample revision: a server answering every request with its MESSAGE and
//! revision name, like Knative's helloworld sample. It speaks HTTP/1.1 and
//! h2c on one port, echoes WebSocket text messages, and answers the gRPC
//! call `demo.Echo/Say` (echo.proto).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A running sample revision; dropping it stops the server and its connections.
pub struct SampleServer {
    /// Where it listens.
    pub addr: SocketAddr,
    started: Instant,
    last_request_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl SampleServer {
    /// Serve `revision` on `listener`.
    pub fn start(listener: TcpListener, revision: &str, message: &str) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let started = Instant::now();
        let last_request_ms = Arc::new(AtomicU64::new(0));
        let body = Bytes::from(format!("{message} from {revision}\n"));
        let revision = Arc::<str>::from(revision);
        let last = last_request_ms.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so stopping the server ends them too.
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("sample revision {revision}: accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let _ = stream.set_nodelay(true);
                let (body, revision, last) = (body.clone(), revision.clone(), last.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        last.store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                        respond(req, body.clone(), revision.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            started,
            last_request_ms,
            task,
        })
    }

    /// Time since the last request (or since start, if none came).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

impl Drop for SampleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One answer: a WebSocket echo, the gRPC call, or the text.
async fn respond(
    req: Request<Incoming>,
    body: Bytes,
    revision: Arc<str>,
) -> Result<Response<tonic::body::Body>, Infallible> {
    let text = |status: u16, body: Bytes| {
        Response::builder()
            .status(status)
            .header("x-revision", &*revision)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(tonic::body::Body::new(Full::new(body)))
            .expect("static response parts are valid")
    };
    if is_websocket(&req) {
        return Ok(accept_websocket(req, revision.clone())
            .unwrap_or_else(|| text(400, Bytes::from_static(b"no Sec-WebSocket-Key\n"))));
    }
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        if req.uri().path() != "/demo.Echo/Say" {
            return Ok(tonic::Status::unimplemented("only demo.Echo/Say").into_http());
        }
        let greeting = String::from_utf8_lossy(&body).trim_end().to_owned();
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
        return Ok(grpc.unary(Say(greeting), req).await);
    }
    Ok(text(200, body))
}

/// Whether `req` asks to upgrade to WebSocket.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Accept the WebSocket upgrade `req` asks for: 101, with [`echo_websocket`]
/// serving the connection once upgraded; `None` without a
/// `Sec-WebSocket-Key`, for the caller to refuse.
pub fn accept_websocket<B: Default>(
    req: Request<Incoming>,
    revision: Arc<str>,
) -> Option<Response<B>> {
    let key = req.headers().get(http::header::SEC_WEBSOCKET_KEY)?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(echo_websocket(req, revision));
    let resp = Response::builder()
        .status(101)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(B::default())
        .expect("static response parts are valid");
    Some(resp)
}

/// Echo the text messages of an upgraded request, prefixed with `revision`,
/// until closed.
pub async fn echo_websocket(req: Request<Incoming>, revision: Arc<str>) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::{Message, Role};
    let Ok(upgraded) = hyper::upgrade::on(req).await else {
        return;
    };
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        None,
    )
    .await;
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(text) => {
                let reply = Message::text(format!("{revision}: {}", text.as_str()));
                if ws.send(reply).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

/// `demo.EchoRequest` and `demo.EchoReply` of echo.proto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoMessage {
    /// The text.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `demo.Echo/Say`: the revision's greeting and the message sent.
struct Say(String);

impl tonic::server::UnaryService<EchoMessage> for Say {
    type Response = EchoMessage;
    type Future = std::future::Ready<Result<tonic::Response<EchoMessage>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<EchoMessage>) -> Self::Future {
        let reply = EchoMessage {
            message: format!("{}: {}", self.0, request.into_inner().message),
        };
        std::future::ready(Ok(tonic::Response::new(reply)))
    }
}
