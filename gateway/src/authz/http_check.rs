//! The HTTP and HTTPS modes, as Envoy's `ext_authz` HTTP service: the
//! request's method and headers, its path after `--extauthz-path-prefix`,
//! and the start of its body when asked, sent to the server; a 2xx allows,
//! anything else goes back to the client as the server sent it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{Check, CheckError, Config, Decision, Denial, Mutations, Protocol};

/// Largest answer body passed on to a denied client.
const MAX_DENIAL_BODY: usize = 64 * 1024;

type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client of one authorization server.
pub(super) struct HttpClient {
    /// `http://HOST:PORT` or `https://HOST:PORT`, then the path prefix.
    base: String,
    tls: Arc<rustls::ClientConfig>,
}

thread_local! {
    /// Each worker thread's pool of connections ([`super::per_thread`]).
    static POOL: std::cell::RefCell<Option<Pool>> = const { std::cell::RefCell::new(None) };
}

impl HttpClient {
    /// For `config`; fails at start on a target no URI can hold, or CAs
    /// that cannot be read.
    pub(super) fn new(config: &Config) -> anyhow::Result<Self> {
        let scheme = match config.protocol {
            Protocol::Https => "https",
            _ => "http",
        };
        let base = format!("{scheme}://{}{}", config.target, config.path_prefix);
        base.parse::<http::Uri>()
            .map_err(|e| anyhow::anyhow!("--extauthz-host {}: {e}", config.target))?;
        Ok(HttpClient {
            base,
            tls: Arc::new(tls_config(config.ca_file.as_deref())?),
        })
    }

    /// This thread's pool, made on first use.
    fn pool(&self) -> Pool {
        super::per_thread(&POOL, || {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            // The scheme is the HTTPS connector's to check.
            http.enforce_http(false);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((*self.tls).clone())
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            Client::builder(TokioExecutor::new()).build(connector)
        })
    }

    pub(super) async fn check(
        &self,
        config: &Config,
        check: &Check<'_>,
    ) -> Result<Decision, CheckError> {
        let mut request = http::Request::builder()
            .method(check.method)
            .uri(format!("{}{}", self.base, check.path));
        for (name, value) in check.headers {
            if !super::hop_by_hop(name) {
                request = request.header(name, value);
            }
        }
        request = request
            .header(http::header::HOST, check.host)
            .header("client", config.client_name.as_str());
        let body = match check.body {
            Some(body) => {
                request = request.header(super::Body::PARTIAL_HEADER, body.partial_value());
                body.bytes.clone()
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| CheckError::Failed(format!("cannot build the request: {e}")))?;
        let response = self
            .pool()
            .request(request)
            .await
            .map_err(|e| CheckError::Failed(format!("{e:#}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Decision::Allow(Mutations::default()));
        }
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| !super::hop_by_hop(name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let body = http_body_util::Limited::new(response.into_body(), MAX_DENIAL_BODY)
            .collect()
            .await
            .map_err(|e| CheckError::Failed(format!("the answer's body: {e}")))?
            .to_bytes();
        Ok(Decision::Deny(Denial {
            status: status.as_u16(),
            headers,
            body,
        }))
    }
}

/// The TLS client settings of the HTTPS mode: the CAs of `ca_file`, or the
/// system's roots.
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect())
                .map_err(|e| {
                    anyhow::anyhow!("--extauthz-ca-file {}: cannot read it: {e}", path.display())
                })?;
            if certs.is_empty() {
                anyhow::bail!(
                    "--extauthz-ca-file {}: holds no PEM certificate",
                    path.display()
                );
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!(
                        "--extauthz-ca-file {}: not a usable CA certificate: {e}",
                        path.display()
                    )
                })?;
            }
        }
        None => {
            // Unreadable system roots leave an HTTPS check failing per
            // request, with the certificate error in the log.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
