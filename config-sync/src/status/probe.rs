//! Knative's ingress probe, asked of one replica: `GET /healthz` with
//! `K-Network-Probe: probe` for a host, answered 200 with the KIngress's hash
//! once that replica serves it. Plain probes share keep-alive connections;
//! a TLS probe connects with the host as SNI and checks that the replica
//! presents the certificate the table holds for it before it asks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::plan::Target;

/// How long one probe may take, connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a probe did not pass, for the log and the KIngress's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProbeError {
    /// No connection, or it broke.
    #[error("{addr}: {message}")]
    Connect {
        /// The replica's listener.
        addr: String,
        /// What failed.
        message: String,
    },
    /// No answer in time.
    #[error("{addr}: no answer in {PROBE_TIMEOUT:?}")]
    Timeout {
        /// The replica's listener.
        addr: String,
    },
    /// Another certificate than the one the table holds for the host.
    #[error("{addr} presents another certificate for {host} than the one its Secret holds")]
    WrongCertificate {
        /// The replica's listener.
        addr: String,
        /// The SNI sent.
        host: String,
    },
    /// An answer without the hash (not served yet, or an older version).
    #[error("{addr} answered {status} for {host} without this version's hash")]
    NotServed {
        /// The replica's listener.
        addr: String,
        /// The host asked for.
        host: String,
        /// The HTTP status.
        status: u16,
    },
}

/// Asks replicas for hosts, over plain HTTP or TLS.
pub(crate) struct Prober {
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    tls: tokio_rustls::TlsConnector,
}

impl Prober {
    /// A prober with its own connection pool.
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Presented(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            http: HttpClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// Whether `target` answers `hash`.
    pub(crate) async fn probe(&self, target: &Target, hash: &str) -> Result<(), ProbeError> {
        let addr = target.addr.to_string();
        let timeout = || ProbeError::Timeout { addr: addr.clone() };
        let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
            match &target.tls {
                None => self.plain(target).await,
                Some(expected) => self.over_tls(target, expected.leaf()).await,
            }
        })
        .await
        .map_err(|_| timeout())??;
        let (status, got) = answer;
        if status == 200 && got.as_deref() == Some(hash.as_bytes()) {
            return Ok(());
        }
        Err(ProbeError::NotServed {
            addr,
            host: target.host.to_string(),
            status,
        })
    }

    fn request(target: &Target, uri: String) -> http::Request<Empty<Bytes>> {
        http::Request::get(uri)
            .header(http::header::HOST, &*target.host)
            .header("K-Network-Probe", "probe")
            .header("K-Network-Hash", "override")
            .header(http::header::USER_AGENT, "Knative-Ingress-Probe")
            .body(Empty::new())
            .expect("a probe request is valid")
    }

    async fn plain(&self, target: &Target) -> Result<(u16, Option<Vec<u8>>), ProbeError> {
        let req = Self::request(target, format!("http://{}/healthz", target.addr));
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| connect(target, &e))?;
        Ok(answer(&resp))
    }

    async fn over_tls(
        &self,
        target: &Target,
        expected: Option<&[u8]>,
    ) -> Result<(u16, Option<Vec<u8>>), ProbeError> {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| connect(target, &e))?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(target.host.to_string()).map_err(|e| connect(target, &e))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| connect(target, &e))?;
        let presented = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        if presented.map(|c| c.as_ref()) != expected {
            return Err(ProbeError::WrongCertificate {
                addr: target.addr.to_string(),
                host: target.host.to_string(),
            });
        }
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| connect(target, &e))?;
        let driver = tokio::spawn(conn);
        let uri = format!("https://{}/healthz", target.host);
        let resp = send.send_request(Self::request(target, uri)).await;
        driver.abort();
        let resp = resp.map_err(|e| connect(target, &e))?;
        Ok(answer(&resp))
    }
}

fn answer<B>(resp: &http::Response<B>) -> (u16, Option<Vec<u8>>) {
    let hash = resp
        .headers()
        .get("K-Network-Hash")
        .map(|h| h.as_bytes().to_vec());
    (resp.status().as_u16(), hash)
}

fn connect(target: &Target, e: &dyn std::fmt::Display) -> ProbeError {
    ProbeError::Connect {
        addr: target.addr.to_string(),
        message: e.to_string(),
    }
}

/// Accepts whatever certificate is presented (its signature over the
/// handshake still checked) so that the probe can compare it with the one
/// the table holds: the question is whether the replica serves the KIngress's
/// own certificate, which may chain to no CA this gateway knows.
#[derive(Debug)]
struct Presented(Arc<CryptoProvider>);

impl ServerCertVerifier for Presented {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
