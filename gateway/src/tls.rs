//! HTTPS: the certificate for each handshake, by SNI, from the live table
//! (KIngress `spec.tls` Secrets and `--default-certificate`), else the
//! `--default-certificate-file` pair. Read per handshake from the table's
//! `ArcSwap`, so a renewed Secret serves new handshakes without a restart.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use config_sync::TableReader;
use pingora::listeners::tls::TlsSettings;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Picks the certificate of each handshake.
#[derive(Debug)]
pub struct SniResolver {
    table: TableReader,
    /// For names the table has no certificate for.
    fallback: Option<Arc<CertifiedKey>>,
    /// On the internal listener: cluster-local certificates too
    /// (`cluster-local-domain-tls`), which the external one never presents.
    internal: bool,
}

impl SniResolver {
    /// Certificates from `table` (with the cluster-local ones when
    /// `internal`), else `fallback`.
    pub fn new(table: TableReader, fallback: Option<Arc<CertifiedKey>>, internal: bool) -> Self {
        Self {
            table,
            fallback,
            internal,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // None aborts the handshake with an alert: the protocol's own error
        // for a name nothing serves.
        let table = self.table.peek();
        let certs = table.certs();
        let name = hello.server_name();
        if self.internal {
            certs.lookup_internal(name)
        } else {
            certs.lookup(name)
        }
        .or_else(|| self.fallback.clone())
    }
}

/// TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, certificates from `resolver`.
pub fn settings(resolver: Arc<SniResolver>) -> anyhow::Result<TlsSettings> {
    // With a resolver, pingora reads no certificate files.
    let mut settings = TlsSettings::intermediate("", "").context("cannot set up TLS")?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}

/// The `--default-certificate-file` / `--default-key-file` pair.
pub fn load_files(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let (crt, key_pem) = (read(cert)?, read(key)?);
    let names = (cert.display().to_string(), key.display().to_string());
    dataplane::certs::parse_pem(&crt, &key_pem, (&names.0, &names.1))
        .map(Arc::new)
        .map_err(anyhow::Error::msg)
}
