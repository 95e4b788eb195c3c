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

/// The lowest TLS version the HTTPS listeners accept (`--tls-min-version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[value(name = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    Tls13,
}

/// What the HTTPS listeners accept: the lowest version and, if narrowed, the
/// cipher suites (by the names rustls gives them).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    min_version: MinVersion,
    /// Only these suites, in this order of preference; `None`: rustls's own.
    provider: Option<Arc<rustls::crypto::CryptoProvider>>,
}

/// A TLS policy that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A name rustls has no suite for.
    #[error(
        "--tls-cipher-suites: {name:?} is not a cipher suite this gateway offers (one of: {known})"
    )]
    UnknownSuite {
        /// The name given.
        name: String,
        /// Every name accepted.
        known: String,
    },
    /// No suite left for any version allowed.
    #[error("--tls-cipher-suites {suites} has no suite for {versions}")]
    NoSuiteForVersions {
        /// The suites given.
        suites: String,
        /// The versions `--tls-min-version` allows.
        versions: &'static str,
    },
}

/// Every cipher suite the gateway's crypto provider (ring) implements, by name.
pub fn cipher_suite_names() -> Vec<String> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(suite_name)
        .collect()
}

fn suite_name(suite: &rustls::SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite())
}

impl Policy {
    /// Accept `min_version` and up, offering `suites` (every suite when empty).
    pub fn new(min_version: MinVersion, suites: &[String]) -> Result<Self, PolicyError> {
        let versions = match min_version {
            MinVersion::Tls12 => "TLS 1.2 or 1.3",
            MinVersion::Tls13 => "TLS 1.3",
        };
        let all = rustls::crypto::ring::default_provider();
        let provider = if suites.is_empty() {
            None
        } else {
            let mut chosen = Vec::with_capacity(suites.len());
            for name in suites {
                let suite = all
                    .cipher_suites
                    .iter()
                    .find(|s| suite_name(s).eq_ignore_ascii_case(name.trim()))
                    .ok_or_else(|| PolicyError::UnknownSuite {
                        name: name.clone(),
                        known: cipher_suite_names().join(", "),
                    })?;
                chosen.push(*suite);
            }
            Some(Arc::new(rustls::crypto::CryptoProvider {
                cipher_suites: chosen,
                ..all
            }))
        };
        if let Some(provider) = &provider {
            let usable = provider.cipher_suites.iter().any(|s| match s {
                rustls::SupportedCipherSuite::Tls13(_) => true,
                rustls::SupportedCipherSuite::Tls12(_) => min_version == MinVersion::Tls12,
            });
            if !usable {
                return Err(PolicyError::NoSuiteForVersions {
                    suites: suites.join(","),
                    versions,
                });
            }
        }
        Ok(Policy {
            min_version,
            provider,
        })
    }
}

/// ALPN `h2` then `http/1.1`, certificates from `resolver`, versions and
/// cipher suites from `policy` (by default TLS 1.2 and 1.3, every suite).
pub fn settings(resolver: Arc<SniResolver>, policy: &Policy) -> anyhow::Result<TlsSettings> {
    // With a resolver, pingora reads no certificate files.
    let mut settings = TlsSettings::intermediate("", "").context("cannot set up TLS")?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    // vendor/README.md, "TLS policy".
    settings.set_tls13_only(policy.min_version == MinVersion::Tls13);
    if let Some(provider) = &policy.provider {
        settings.set_crypto_provider(provider.clone());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suites_are_named_as_rustls_names_them() {
        let names = cipher_suite_names();
        assert!(
            names.contains(&"TLS13_AES_128_GCM_SHA256".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned()),
            "{names:?}"
        );
        let policy = Policy::new(
            MinVersion::Tls12,
            &[
                "tls13_aes_256_gcm_sha384".into(),
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".into(),
            ],
        )
        .unwrap();
        let chosen: Vec<_> = policy
            .provider
            .unwrap()
            .cipher_suites
            .iter()
            .map(suite_name)
            .collect();
        assert_eq!(
            chosen,
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert!(Policy::new(MinVersion::Tls13, &[])
            .unwrap()
            .provider
            .is_none());
    }

    #[test]
    fn an_unknown_suite_or_none_for_the_versions_is_an_error_naming_it() {
        let e = Policy::new(MinVersion::Tls12, &["TLS_RSA_WITH_RC4_128_MD5".into()]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("\"TLS_RSA_WITH_RC4_128_MD5\""), "{text}");
        assert!(text.contains("TLS13_AES_128_GCM_SHA256"), "{text}");
        let e = Policy::new(
            MinVersion::Tls13,
            &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--tls-cipher-suites TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 has no suite for TLS 1.3"
        );
    }
}
