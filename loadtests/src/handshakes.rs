//! New TLS connections per second: each client connects, makes a full
//! handshake (no session resumption, as a new client would), sends one
//! HTTP/1.1 request with `Connection: close`, reads the answer, and starts
//! again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one connection may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the clients did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Handshakes {
    /// Connections that got a 200.
    pub ok: u64,
    /// Connections that failed (handshake, I/O, timeout or another status).
    pub failed: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Handshakes {
    /// Successful connections per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `conns` clients on `threads` threads against `addr` for `duration`, with
/// SNI `host`, trusting the CA `ca` (DER).
pub fn run(
    addr: SocketAddr,
    host: &str,
    ca: &[u8],
    conns: usize,
    threads: usize,
    duration: Duration,
) -> Handshakes {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca.to_vec()))
        .expect("the scenario's CA is a valid certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .expect("the scenario's host is a DNS name");
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let threads = threads.clamp(1, conns.max(1));
    let started = Instant::now();
    let deadline = started + duration;
    let totals: Vec<Handshakes> = crate::load::on_threads(threads, |t| {
        let (connector, name, request) = (connector.clone(), name.clone(), request.clone());
        let mine = conns / threads + usize::from(t < conns % threads);
        async move {
            let tasks: Vec<_> = (0..mine)
                .map(|_| {
                    let (connector, name, request) =
                        (connector.clone(), name.clone(), request.clone());
                    tokio::spawn(async move {
                        let mut tally = Handshakes::default();
                        while Instant::now() < deadline {
                            let once = one(&connector, addr, name.clone(), &request);
                            match tokio::time::timeout(TIMEOUT, once).await {
                                Ok(Ok(())) => tally.ok += 1,
                                _ => tally.failed += 1,
                            }
                        }
                        tally
                    })
                })
                .collect();
            let mut sum = Handshakes::default();
            for task in tasks {
                let t = task.await.unwrap_or_default();
                sum.ok += t.ok;
                sum.failed += t.failed;
            }
            sum
        }
    })
    .into_iter()
    .map(|r| r.unwrap_or_default())
    .collect();
    Handshakes {
        ok: totals.iter().map(|t| t.ok).sum(),
        failed: totals.iter().map(|t| t.failed).sum(),
        elapsed: started.elapsed(),
    }
}

/// One connection: handshake, request, a 200 read to the end.
async fn one(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: rustls::pki_types::ServerName<'static>,
    request: &str,
) -> std::io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(512);
    tls.read_to_end(&mut answer).await.or_else(|e| {
        // A peer closing without close_notify still answered.
        if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not a 200"))
    }
}
