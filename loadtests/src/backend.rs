//! The revisions' pods: fast hyper HTTP/1.1 servers on loopback, each
//! answering every request with its revision name, so the load generator can
//! count the split. They run on a runtime of their own so that they never
//! share threads with the load generator.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The runtime the backends (and the test activator) run on.
pub struct Pods {
    rt: tokio::runtime::Runtime,
}

impl Pods {
    /// A runtime with `threads` worker threads.
    pub fn new(threads: usize) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("pods")
            .enable_all()
            .build()?;
        Ok(Pods { rt })
    }

    /// The runtime's handle, to spawn other servers on it.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }

    /// Start a backend for `revision` on a fresh loopback port.
    pub fn start(&self, revision: &str) -> anyhow::Result<Backend> {
        self.start_with(revision, None)
    }

    /// A backend for `revision` serving HTTP/1.1 over TLS with `tls`, as
    /// queue-proxy does under Knative's system-internal TLS.
    pub fn start_tls(
        &self,
        revision: &str,
        tls: tokio_rustls::TlsAcceptor,
    ) -> anyhow::Result<Backend> {
        self.start_with(revision, Some(tls))
    }

    fn start_with(
        &self,
        revision: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> anyhow::Result<Backend> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let body = Bytes::from(revision.to_owned());
        let counter = hits.clone();
        let task = self.rt.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("listener on the pods runtime");
            serve(listener, body, counter, tls).await
        });
        Ok(Backend {
            addr,
            revision: revision.to_owned(),
            hits,
            task,
        })
    }
}

/// One running backend; stops when dropped.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The revision it answers with.
    pub revision: String,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    body: Bytes,
    hits: Arc<AtomicU64>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (body, hits, tls) = (body.clone(), hits.clone(), tls.clone());
        // Owned by the set, so aborting the backend closes its connections too.
        conns.spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut resp = Response::new(Full::new(body.clone()));
                // Knative's probe, answered as queue-proxy does (the hash
                // echoed); not traffic, so not a hit.
                if req.headers().contains_key("k-network-probe") {
                    if let Some(hash) = req.headers().get("k-network-hash") {
                        resp.headers_mut().insert("k-network-hash", hash.clone());
                    }
                } else {
                    hits.fetch_add(1, Ordering::Relaxed);
                }
                async move { Ok::<_, Infallible>(resp) }
            });
            let http1 = hyper::server::conn::http1::Builder::new();
            let _ = match tls {
                None => http1.serve_connection(TokioIo::new(stream), service).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => http1.serve_connection(TokioIo::new(stream), service).await,
                    Err(_) => return,
                },
            };
        });
        while conns.try_join_next().is_some() {}
    }
}
