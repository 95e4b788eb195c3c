//! A test activator: what Knative's activator does for a scaled-to-zero
//! revision, minus the waking. It reads `Knative-Serving-Namespace` and
//! `Knative-Serving-Revision`, forwards the request to that revision's pod
//! over a pooled keep-alive client, and counts what it handled.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::backend::Pods;

/// The running activator; stops when dropped.
pub struct Activator {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Activator {
    /// Start one on the pods runtime; `pods` maps (namespace, revision) to the pod's address.
    pub fn start(
        rt: &Pods,
        pods: HashMap<(String, String), SocketAddr>,
    ) -> anyhow::Result<Activator> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let pods = Arc::new(pods);
        let task = rt.handle().spawn(async move {
            let listener = TcpListener::from_std(listener).expect("listener on the pods runtime");
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (pods, client, hits) = (pods.clone(), client.clone(), counter.clone());
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        handle(req, pods.clone(), client.clone(), hits.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Activator { addr, hits, task })
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Activator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    pods: Arc<HashMap<(String, String), SocketAddr>>,
    client: Client<HttpConnector, Empty<Bytes>>,
    hits: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(ns), Some(rev)) = (
        header("knative-serving-namespace"),
        header("knative-serving-revision"),
    ) else {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            "activator: Knative-Serving-Namespace and Knative-Serving-Revision are required",
        ));
    };
    let Some(pod) = pods.get(&(ns.clone(), rev.clone())) else {
        return Ok(answer(
            StatusCode::NOT_FOUND,
            format!("activator: no revision {ns}/{rev}"),
        ));
    };
    let uri = format!(
        "http://{pod}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let forward = Request::get(uri)
        .body(Empty::new())
        .expect("valid forwarded request");
    let resp = match client.request(forward).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_GATEWAY,
                format!("activator: {ns}/{rev} at {pod}: {e}"),
            ))
        }
    };
    let status = resp.status();
    match resp.into_body().collect().await {
        Ok(body) => Ok(answer(status, body.to_bytes())),
        Err(e) => Ok(answer(
            StatusCode::BAD_GATEWAY,
            format!("activator: reading {ns}/{rev}: {e}"),
        )),
    }
}
