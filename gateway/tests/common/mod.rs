//! Shared pieces of the end-to-end tests: real backends on loopback, the real
//! gateway binary as a child process, and a keep-alive HTTP client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An address that refuses connections for the rest of the test process: the
/// port is bound but never listened on, so no other socket can take it.
pub fn closed() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Held until the process exits.
    std::mem::forget(socket);
    addr
}

/// A test backend: answers with its name in the body, echoes the Knative
/// headers it received (and every request header as `x-echo-<name>`, the
/// path as `x-seen-path`, the HTTP version as `x-seen-version`), answers
/// Knative's probe as queue-proxy does (echoing `K-Network-Hash`), and counts
/// requests. It speaks HTTP/1.1 and h2c on one port (hyper's auto server),
/// and accepts WebSocket upgrades, answering each text message `m` with
/// `<name>: m` (tokio-tungstenite).
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::with_status(name, 200).await
    }

    /// A backend answering every request with `status`.
    pub async fn with_status(name: &str, status: u16) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let (n, h) = (name.to_owned(), hits.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h) = (n.clone(), h.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        h.fetch_add(1, Ordering::Relaxed);
                        if gateway::demo::sample::is_websocket(&req) {
                            let resp = websocket_echo(req, n.clone());
                            return std::future::ready(Ok::<_, Infallible>(resp));
                        }
                        let seen = |name: &str| {
                            req.headers()
                                .get_all(name)
                                .iter()
                                .map(|v| v.to_str().unwrap_or("?").to_owned())
                                .collect::<Vec<_>>()
                                .join(",")
                        };
                        let probe = req
                            .headers()
                            .get("k-network-probe")
                            .is_some_and(|v| v == "probe");
                        let mut resp = Response::builder()
                            .status(if probe { 200 } else { status })
                            .header("x-seen-revision", seen("knative-serving-revision"))
                            .header("x-seen-namespace", seen("knative-serving-namespace"))
                            .header("x-seen-host", seen("host"))
                            .header("x-seen-path", req.uri().path())
                            .header("x-seen-version", format!("{:?}", req.version()));
                        for (name, value) in req.headers() {
                            resp = resp.header(format!("x-echo-{name}"), value.clone());
                        }
                        if probe {
                            resp = resp.header("k-network-hash", seen("k-network-hash"));
                        }
                        let resp = resp.body(Full::new(Bytes::from(n.clone()))).unwrap();
                        std::future::ready(Ok::<_, Infallible>(resp))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.into(),
            hits,
            task,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// Accept a WebSocket upgrade and echo text messages prefixed with `name`
/// (the demo sample's echo).
fn websocket_echo(req: Request<Incoming>, name: String) -> Response<Full<Bytes>> {
    gateway::demo::sample::accept_websocket(req, name.into()).unwrap_or_else(|| {
        Response::builder()
            .status(400)
            .body(Full::default())
            .unwrap()
    })
}

/// HTTP/2 with prior knowledge (h2c) on one connection: hyper's client.
pub struct H2cClient(hyper::client::conn::http2::SendRequest<Full<Bytes>>);

impl H2cClient {
    pub async fn connect(addr: SocketAddr) -> H2cClient {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2cClient(send)
    }

    /// GET `path` of `host` (the `:authority`).
    pub async fn get(&self, host: &str, path: &str) -> Result<Reply, String> {
        self.get_with(host, path, &[]).await
    }

    /// GET `path` of `host` with `headers`.
    pub async fn get_with(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut req = Request::get(format!("http://{host}{path}")).version(http::Version::HTTP_2);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req.body(Full::default()).unwrap()).await
    }

    /// Send `req` (an HTTP/2 request) and read the whole answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let mut send = self.0.clone();
        send.ready().await.map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| format!("{e:?}"))?;
        read_reply(resp).await
    }
}

/// Read a whole response.
pub async fn read_reply(resp: Response<Incoming>) -> Result<Reply, String> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// What an HTTPS request saw: the reply, the server's leaf certificate, ALPN.
pub struct HttpsReply {
    pub reply: Reply,
    pub cert: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
}

/// GET `path` of `host` over TLS with SNI `host` (rustls, trusting the CA `ca`),
/// HTTP/2 or HTTP/1.1 as ALPN decides (hyper).
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> Result<HttpsReply, String> {
    https_get_after(addr, b"", host, path, ca).await
}

/// [`https_get`], with `preamble` (a PROXY protocol header) sent on the TCP
/// connection before the TLS handshake.
pub async fn https_get_after(
    addr: SocketAddr,
    preamble: &[u8],
    host: &str,
    path: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> Result<HttpsReply, String> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::AsyncWriteExt;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(preamble).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let cert = conn.peer_certificates().unwrap()[0].to_vec();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let io = TokioIo::new(tls);
    let uri = format!("https://{host}{path}");
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(uri)
            .body(Full::<Bytes>::default())
            .unwrap();
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", host)
            .body(Full::<Bytes>::default())
            .unwrap();
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    Ok(HttpsReply {
        reply: read_reply(resp).await?,
        cert,
        alpn,
    })
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// Keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl HttpClient {
    pub fn new() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }

    pub async fn get(&self, addr: SocketAddr, host: &str) -> Result<Reply, String> {
        self.get_with(addr, host, &[]).await
    }

    pub async fn get_with(
        &self,
        addr: SocketAddr,
        host: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut req = Request::get(format!("http://{addr}/")).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::default()).unwrap()).await
    }

    /// Send a request and read the whole response.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let resp = self.0.request(req).await.map_err(|e| format!("{e:?}"))?;
        read_reply(resp).await
    }
}

/// The gateway binary running `serve` on a snapshot file it owns.
pub struct Gateway {
    pub http: SocketAddr,
    pub internal: SocketAddr,
    pub https: SocketAddr,
    pub internal_https: SocketAddr,
    pub admin: SocketAddr,
    pub file: PathBuf,
    child: Child,
    /// Every argument the process was started with.
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write atomically, as a ConfigMap update or a careful editor does.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Gateway {
    /// Start `gateway serve` on `snapshot`, waiting until `/readyz` answers.
    pub async fn start(snapshot: &str, activator: SocketAddr) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snapshot.yaml");
        std::fs::write(&file, snapshot).unwrap();
        let args = vec![
            "serve".to_owned(),
            "--file".to_owned(),
            file.display().to_string(),
            "--activator".to_owned(),
            activator.to_string(),
        ];
        Self::launch(args, dir, file).await
    }

    /// Start `gateway serve` on `snapshot` with `extra` arguments (which may
    /// set `--shutdown-grace` and `--shutdown-timeout`; the default is 0s and 1s).
    pub async fn serve_with(snapshot: &str, activator: SocketAddr, extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snapshot.yaml");
        std::fs::write(&file, snapshot).unwrap();
        let mut args = vec![
            "serve".to_owned(),
            "--file".to_owned(),
            file.display().to_string(),
            "--activator".to_owned(),
            activator.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(args, dir, file).await
    }

    /// Send `signal` (`TERM`, `INT`, ...) to the gateway process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Wait up to `limit` for the process to exit; its exit status, if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Start `gateway demo` with `extra` arguments; its stdout goes to `out.txt` in the temp dir.
    pub async fn demo(extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.txt");
        let mut args = vec!["demo".to_owned()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(args, dir, file).await
    }

    /// Start `gateway serve --kube` against the API server of `kubeconfig`.
    pub async fn kube(kubeconfig: &Path, activator: SocketAddr, extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unused");
        let mut args = vec![
            "serve".to_owned(),
            "--kube".to_owned(),
            "--kubeconfig".to_owned(),
        ];
        args.push(kubeconfig.display().to_string());
        args.extend(["--activator".to_owned(), activator.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(args, dir, file).await
    }

    /// Start the binary on free loopback ports. A port can be taken between
    /// `free_port` and the gateway's bind (ports are picked, not held), so a
    /// gateway that exits during start-up is started again on new ports.
    async fn launch(args: Vec<String>, dir: tempfile::TempDir, file: PathBuf) -> Gateway {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let (http, internal, admin) = (free_port(), free_port(), free_port());
            let (https, internal_https) = (free_port(), free_port());
            let stdout = std::fs::File::create(dir.path().join("out.txt")).unwrap();
            let stderr = std::fs::File::create(dir.path().join("err.txt")).unwrap();
            let mut all = args.clone();
            for (flag, port) in [
                ("--http", http),
                ("--admin", admin),
                ("--internal-http", internal),
                ("--https", https),
                ("--internal-https", internal_https),
            ] {
                all.extend([flag.to_owned(), format!("127.0.0.1:{port}")]);
            }
            all.extend(["--threads", "2", "--log", "warn"].map(String::from));
            if !args.iter().any(|a| a == "--shutdown-grace") {
                all.extend(
                    ["--shutdown-grace", "0s", "--shutdown-timeout", "1s"].map(String::from),
                );
            }
            let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
                .args(&all)
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap();
            let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
            match wait_ready(&mut child, admin_addr).await {
                Ok(()) => {
                    return Gateway {
                        http: ([127, 0, 0, 1], http).into(),
                        internal: ([127, 0, 0, 1], internal).into(),
                        https: ([127, 0, 0, 1], https).into(),
                        internal_https: ([127, 0, 0, 1], internal_https).into(),
                        admin: admin_addr,
                        file,
                        child,
                        args: all,
                        _dir: dir,
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log =
                        std::fs::read_to_string(dir.path().join("err.txt")).unwrap_or_default();
                    failures.push(format!("{e}\n{log}"));
                }
            }
        }
        panic!("gateway did not start:\n{}", failures.join("\n---\n"));
    }

    /// A second gateway with this one's arguments and `--upgrade`: it waits
    /// for this one's listening sockets, which SIGQUIT hands over. Not ready
    /// until then; its logs are in a directory of its own.
    pub fn successor(&self) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let stdout = std::fs::File::create(dir.path().join("out.txt")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("err.txt")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(&self.args)
            .arg("--upgrade")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Gateway {
            http: self.http,
            internal: self.internal,
            https: self.https,
            internal_https: self.internal_https,
            admin: self.admin,
            file: self.file.clone(),
            child,
            args: self.args.clone(),
            _dir: dir,
        }
    }

    /// Another replica of this gateway, as another pod of its Deployment:
    /// the same arguments and listener ports, on loopback address `ip`
    /// (e.g. 127.0.0.2), plus `extra` arguments.
    pub async fn replica_at(&self, ip: std::net::Ipv4Addr, extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let stdout = std::fs::File::create(dir.path().join("out.txt")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("err.txt")).unwrap();
        let mut args: Vec<String> = self
            .args
            .iter()
            .map(|a| a.replace("127.0.0.1:", &format!("{ip}:")))
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(&args)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let at = |a: SocketAddr| SocketAddr::new(ip.into(), a.port());
        if let Err(e) = wait_ready(&mut child, at(self.admin)).await {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("err.txt")).unwrap_or_default();
            panic!("replica at {ip} did not start: {e}\n{log}");
        }
        Gateway {
            http: at(self.http),
            internal: at(self.internal),
            https: at(self.https),
            internal_https: at(self.internal_https),
            admin: at(self.admin),
            file: self.file.clone(),
            child,
            args,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process logged on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("err.txt")).unwrap_or_default()
    }

    /// What the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("out.txt")).unwrap_or_default()
    }

    pub async fn admin(&self, path: &str) -> Reply {
        admin_get(&HttpClient::new(), self.admin, path)
            .await
            .unwrap()
    }

    /// The value of one series on `/metrics`, named as the page writes it
    /// (`name` or `name{label="value",...}`), if it is there.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let page = self.admin("/metrics").await.body;
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    }

    /// Requests the fast path counted as `outcome` (`served`, `handed_over`).
    pub async fn fast_path_requests(&self, outcome: &str) -> u64 {
        let series = format!("gateway_fast_path_requests_total{{outcome=\"{outcome}\"}}");
        self.metric(&series).await.map_or(0, |v| v as u64)
    }

    pub async fn debug_routes(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin("/debug/routes").await.body).unwrap()
    }

    /// `(object, reason, outcome)` of every rejection in `/debug/routes`.
    pub async fn rejected(&self) -> Vec<(String, String, String)> {
        let d = self.debug_routes().await;
        let field = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap().to_owned();
        d["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (field(r, "object"), field(r, "reason"), field(r, "outcome")))
            .collect()
    }

    pub async fn generation(&self) -> u64 {
        self.debug_routes().await["generation"].as_u64().unwrap()
    }

    /// Replace the snapshot and wait until a newer table is live.
    pub async fn reload(&self, snapshot: &str) {
        let before = self.generation().await;
        write_atomic(&self.file, snapshot);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.generation().await == before {
            assert!(Instant::now() < deadline, "snapshot change not picked up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Wait until the source reports an error (a broken reload).
    pub async fn wait_source_error(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.debug_routes().await["source_last_error"].as_str() {
                return e.to_owned();
            }
            assert!(Instant::now() < deadline, "no source error reported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Wait until `/readyz` answers 200; an error if the process exits first or 20 s pass.
async fn wait_ready(child: &mut Child, admin: SocketAddr) -> Result<(), String> {
    let client = HttpClient::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("gateway exited during start-up: {status}"));
        }
        if let Ok(r) = admin_get(&client, admin, "/readyz").await {
            if r.status == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("gateway not ready after 20 s".into())
}

async fn admin_get(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    client.send(req).await
}

/// Poll `check` every 20 ms until it is true, for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Route's YAML: `traffic` is `(revision, percent, tag)`.
pub fn route(ns: &str, name: &str, traffic: &[(&str, i64, Option<&str>)]) -> String {
    let mut s = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {{name: {name}, namespace: {ns}}}\nstatus:\n  url: http://{name}.{ns}.example.com\n  traffic:\n"
    );
    for (rev, pct, tag) in traffic {
        s += &format!("  - {{revisionName: {rev}, percent: {pct}");
        if let Some(tag) = tag {
            s += &format!(", tag: {tag}, url: http://{tag}-{name}.{ns}.example.com");
        }
        s += "}\n";
    }
    s + "---\n"
}

/// A revision's private EndpointSlice with one ready endpoint per address.
pub fn slice(ns: &str, rev: &str, addrs: &[SocketAddr]) -> String {
    // One slice per endpoint: each test backend has its own port.
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {rev}-private-{i}\n  namespace: {ns}\n  labels: {{serving.knative.dev/revision: {rev}, networking.internal.knative.dev/serviceType: Private}}\naddressType: IPv4\nports: [{{name: http-metrics, port: 9091}}, {{name: http, port: {}}}]\nendpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n---\n",
                a.port(),
                a.ip()
            )
        })
        .collect()
}

/// Send `n` requests for `host` over `conns` keep-alive connections; count bodies.
pub async fn count_bodies(
    addr: SocketAddr,
    host: &str,
    n: usize,
    conns: usize,
) -> std::collections::HashMap<String, usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conns {
        let host = host.to_owned();
        let per = n / conns + usize::from(c < n % conns);
        tasks.spawn(async move {
            let client = HttpClient::new();
            let mut counts = std::collections::HashMap::new();
            for _ in 0..per {
                let r = client.get(addr, &host).await.unwrap();
                assert_eq!(r.status, 200, "{r:?}");
                *counts.entry(r.body).or_insert(0) += 1;
            }
            counts
        });
    }
    let mut total = std::collections::HashMap::new();
    while let Some(counts) = tasks.join_next().await {
        for (k, v) in counts.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

/// A bare keep-alive HTTP/1.1 backend, without hyper, so that its
/// connections can be counted and dropped at will. It answers every request
/// with `body`; `GET /slow` first waits `slow`. With `close_idle` set, it
/// closes each connection 50 ms after answering, without a word, as a
/// server's keep-alive timeout does.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
    pub close_idle: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    pub async fn start(body: &'static str, slow: Duration) -> RawBackend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let close_idle = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (n, close) = (accepted.clone(), close_idle.clone());
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                n.fetch_add(1, Ordering::Relaxed);
                let (close, reply) = (close.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        if buf.starts_with(b"GET /slow") {
                            tokio::time::sleep(slow).await;
                        }
                        buf.drain(..end);
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        if close.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            return;
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            accepted,
            close_idle,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// A reply read by [`raw_get`].
#[derive(Debug, PartialEq, Eq)]
pub struct RawReply {
    pub status: u16,
    /// The response head, lower-cased.
    pub head: String,
    /// The body, framed by Content-Length.
    pub body: String,
}

/// One `GET path` for `host` over HTTP/1.1 on `conn`, connecting to `addr`
/// first if it is `None`, with `extra` header lines (each ending in CRLF).
/// The connection is kept for the next request unless the answer says
/// `Connection: close`. Errors say what went wrong, for the caller to count.
pub async fn raw_get(
    conn: &mut Option<tokio::net::TcpStream>,
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra: &str,
) -> Result<RawReply, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if conn.is_none() {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        *conn = Some(s);
    }
    let s = conn.as_mut().expect("connected above");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) => return Err("closed before the response".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    while buf.len() < end + length {
        match s.read(&mut chunk).await {
            Ok(0) => return Err("closed mid-body".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let body = String::from_utf8_lossy(&buf[end..end + length]).into_owned();
    if head.contains("connection: close") {
        *conn = None;
    }
    Ok(RawReply { status, head, body })
}

/// A test certificate authority (rcgen) and the leaf certificates it signs.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub der: rustls::pki_types::CertificateDer<'static>,
    /// The CA certificate as PEM (what a trust bundle holds).
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Each CA its own name, as real ones have: a verifier finds the
        // issuer of a certificate by name.
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("test CA {} {n}", std::process::id()),
        );
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            der: cert.der().clone(),
            pem: cert.pem(),
        }
    }

    /// A leaf for `names` that expired a day ago: (certificate PEM, key PEM).
    pub fn expired_leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf for `names`: (certificate PEM, key PEM, certificate DER).
    pub fn leaf(&self, names: &[&str]) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// The gateway binary's stderr with `args`, which must stop its start.
pub fn start_fails(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.yaml");
    std::fs::write(&file, "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "serve",
            "--https",
            "off",
            "--internal-https",
            "off",
            "--file",
        ])
        .arg(&file)
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A TLS terminator in front of a plaintext backend, as queue-proxy's and
/// the activator's port 8112 are under Knative's system-internal TLS: TLS
/// 1.3, ALPN `h2` and `http/1.1`, bytes relayed to `backend` (whose hyper
/// server speaks HTTP/1.1 and h2c). Its certificate can be swapped; it
/// counts full and resumed handshakes and keeps the SNI of the last one.
pub struct TlsFront {
    pub addr: SocketAddr,
    cert: Arc<FrontCert>,
    /// Handshakes completed: full, resumed.
    pub full: Arc<AtomicU64>,
    pub resumed: Arc<AtomicU64>,
    /// Handshakes that failed (the client refused the certificate).
    pub failed: Arc<AtomicU64>,
    /// The server name the last client sent (`None`: no SNI).
    pub last_sni: Arc<std::sync::Mutex<Option<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct FrontCert(std::sync::Mutex<Arc<rustls::sign::CertifiedKey>>);

impl rustls::server::ResolvesServerCert for FrontCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.lock().unwrap().clone())
    }
}

fn certified(crt: &str, key: &str) -> Arc<rustls::sign::CertifiedKey> {
    Arc::new(dataplane::certs::parse_pem(crt.as_bytes(), key.as_bytes(), ("crt", "key")).unwrap())
}

impl TlsFront {
    /// Serve TLS with the certificate `crt`/`key` (PEM) in front of
    /// `backend` (within a Tokio runtime).
    pub fn start(backend: SocketAddr, crt: &str, key: &str) -> TlsFront {
        let cert = Arc::new(FrontCert(std::sync::Mutex::new(certified(crt, key))));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let (full, resumed, failed): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
            Default::default();
        let last_sni: Arc<std::sync::Mutex<Option<Option<String>>>> = Default::default();
        let counts = (
            Arc::clone(&full),
            Arc::clone(&resumed),
            Arc::clone(&failed),
            Arc::clone(&last_sni),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (full, resumed, failed, last_sni) = counts.clone();
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(stream).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    let conn = tls.get_ref().1;
                    *last_sni.lock().unwrap() = Some(conn.server_name().map(str::to_owned));
                    match conn.handshake_kind() {
                        Some(rustls::HandshakeKind::Resumed) => &resumed,
                        _ => &full,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            addr,
            cert,
            full,
            resumed,
            failed,
            last_sni,
            task,
        }
    }

    /// Serve `crt`/`key` from the next handshake on.
    pub fn set_cert(&self, crt: &str, key: &str) {
        *self.cert.0.lock().unwrap() = certified(crt, key);
    }

    /// Handshakes completed, full and resumed together.
    pub fn handshakes(&self) -> u64 {
        self.full.load(Ordering::Relaxed) + self.resumed.load(Ordering::Relaxed)
    }
}

/// The trust bundle's CA Secret (`routing-serving-certs` in `ns`) holding `ca_pem`.
pub fn ca_secret(ns: &str, ca_pem: &str) -> serde_json::Value {
    use base64::Engine;
    serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "routing-serving-certs", "namespace": ns},
        "data": {"ca.crt": base64::engine::general_purpose::STANDARD.encode(ca_pem)}})
}

/// A ConfigMap `name` in `ns` labelled as a trust bundle, holding `pems`.
pub fn trust_bundle(ns: &str, name: &str, pems: &[&str]) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> = pems
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("ca-{i}.pem"), serde_json::Value::from(*p)))
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"networking.knative.dev/trust-bundle": "true"}},
        "data": data})
}

/// `/test.Echo/Chat`'s message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    #[prost(string, tag = "1")]
    pub msg: String,
}

/// `/test.Echo/Chat`: a bidirectional stream answering each `m` with
/// `<name>: m` (tonic's server codec over hyper's h2c server).
#[derive(Clone)]
pub struct Chat(pub String);

impl tonic::server::StreamingService<Ping> for Chat {
    type Response = Ping;
    type ResponseStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<Ping, tonic::Status>> + Send>>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Ping>>) -> Self::Future {
        use futures::StreamExt;
        let name = self.0.clone();
        let replies = request.into_inner().map(move |m| {
            m.map(|p| Ping {
                msg: format!("{name}: {}", p.msg),
            })
        });
        std::future::ready(Ok(tonic::Response::new(Box::pin(replies))))
    }
}

/// A gRPC backend named `name` on h2c (`/test.Echo/Chat`, [`Chat`]), which
/// answers Knative's probe as queue-proxy does: its address and task.
pub async fn grpc_backend(name: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = name.to_owned();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let name = name.clone();
                        async move {
                            if let Some(hash) = req.headers().get("k-network-hash").filter(|_| {
                                req.headers()
                                    .get("k-network-probe")
                                    .is_some_and(|v| v == "probe")
                            }) {
                                let resp = http::Response::builder()
                                    .header("k-network-hash", hash.clone())
                                    .body(tonic::body::Body::empty())
                                    .unwrap();
                                return Ok::<_, Infallible>(resp);
                            }
                            let mut grpc =
                                tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                            Ok(grpc.streaming(Chat(name), req).await)
                        }
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    (addr, task)
}

/// A bidirectional stream of `n` round trips through the gateway's plain
/// port (h2c) to `host` (tonic's client); returns the backend that answered.
pub async fn grpc_chat(gw: SocketAddr, host: &str, n: usize) -> String {
    use futures::{SinkExt, StreamExt};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gw}"))
        .unwrap()
        .origin(format!("http://{host}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let (mut tx, rx) = futures::channel::mpsc::channel::<Ping>(1);
    let mut replies = client
        .streaming(
            tonic::Request::new(rx),
            http::uri::PathAndQuery::from_static("/test.Echo/Chat"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut answered = String::new();
    for i in 0..n {
        tx.send(Ping {
            msg: format!("ping {i}"),
        })
        .await
        .unwrap();
        let reply: Ping = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("a reply within 5 s")
            .unwrap()
            .unwrap();
        let (name, echoed) = reply.msg.split_once(": ").unwrap();
        assert_eq!(echoed, format!("ping {i}"));
        if answered.is_empty() {
            answered = name.to_owned();
        }
        assert_eq!(name, answered, "one stream, one backend");
    }
    drop(tx);
    // The server ends the stream with grpc-status 0 in the trailers.
    assert!(replies.next().await.is_none(), "a clean end of stream");
    answered
}

/// `n` WebSocket echoes through `gw` to `host` on one upgraded connection;
/// returns the name of the backend that answered.
pub async fn websocket_echoes(gw: SocketAddr, host: &str, n: usize) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut req = format!("ws://{gw}/chat").into_client_request().unwrap();
    req.headers_mut().insert("host", host.parse().unwrap());
    let stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut answered = String::new();
    for i in 0..n {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an echo within 5 s")
            .unwrap()
            .unwrap();
        let text = reply.into_text().unwrap();
        let (name, echoed) = text.as_str().split_once(": ").unwrap();
        assert_eq!(echoed, format!("ping {i}"));
        if answered.is_empty() {
            answered = name.to_owned();
        }
        assert_eq!(name, answered, "one connection, one backend");
    }
    ws.close(None).await.unwrap();
    answered
}

/// The access log's lines at `log`, once there are at least `n` (5 s at most).
pub async fn access_log_lines(log: &Path, n: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    eventually(5, &format!("{n} access log lines"), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>();
        std::future::ready(lines.len() >= n)
    })
    .await;
    lines
}

/// A leaf of `ca` for `names` written under `dir`, as the flags that make it
/// the gateway's default certificate.
pub fn default_certificate_flags(dir: &Path, ca: &TestCa, names: &[&str]) -> [String; 4] {
    let (cert, key, _) = ca.leaf(names);
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    [
        "--default-certificate-file".to_owned(),
        cert_file.display().to_string(),
        "--default-key-file".to_owned(),
        key_file.display().to_string(),
    ]
}
