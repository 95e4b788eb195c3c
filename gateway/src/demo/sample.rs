//! A sample revision: an HTTP/1.1 server answering every request with its
//! MESSAGE and revision name, like Knative's helloworld sample.

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
use hyper_util::rt::TokioIo;
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
                    let service = service_fn(move |_req: Request<Incoming>| {
                        last.store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                        let resp = Response::builder()
                            .header("x-revision", &*revision)
                            .header(http::header::CONTENT_TYPE, "text/plain")
                            .body(Full::new(body.clone()))
                            .expect("static response parts are valid");
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
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
