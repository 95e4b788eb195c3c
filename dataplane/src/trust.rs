//! Knative's system-internal TLS on the way out: the client configurations
//! for TLS backends (the activator, queue-proxy) and how their certificates
//! are checked. A backend's certificate must chain to the trust bundle and
//! name `kn-user-<namespace of the split>` (queue-proxy) or `kn-routing` (the
//! activator, which a public Service's endpoints point at while a revision is
//! at zero). TLS 1.3 only, no SNI, as Kourier connects. config-sync gathers
//! the bundle (Secrets and ConfigMaps) and builds the [`Trust`] again only
//! when the set of certificates changes, so the configurations' session
//! caches (resumption) live as long as the trust does.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Serialize;

/// The name in the activator's certificate.
pub const ACTIVATOR_NAME: &str = "kn-routing";
/// The name queue-proxy's certificate carries in `namespace`.
pub fn user_name(namespace: &str) -> String {
    format!("kn-user-{namespace}")
}

/// The trusted certificates and the client configurations built on them.
pub struct Trust {
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    fingerprint: u64,
    view: TrustView,
}

/// The trust bundle in `/debug/routes`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrustView {
    /// `Secret ns/name` and `ConfigMap ns/name` of each source used.
    pub sources: Vec<String>,
    /// Certificates trusted, all sources together.
    pub certificates: usize,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.view.fmt(f)
    }
}

impl Trust {
    /// The configuration for a connection speaking HTTP/2 (ALPN `h2`) or
    /// HTTP/1.1 (ALPN `http/1.1`).
    pub fn config(&self, h2: bool) -> &Arc<ClientConfig> {
        if h2 {
            &self.h2
        } else {
            &self.h1
        }
    }

    /// What it trusts, for `/debug/routes`.
    pub fn view(&self) -> &TrustView {
        &self.view
    }

    /// A fingerprint of the certificates trusted: equal for the same set.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Trust in `certs` (DER), listed as coming from `sources`.
    pub fn from_certificates(
        certs: &[CertificateDer<'static>],
        sources: Vec<String>,
    ) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(KnativeNames::new(certs, &provider)?);
        let config = |alpn: &[u8]| -> Result<Arc<ClientConfig>, String> {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            // The name checked is not sent: queue-proxy and the activator
            // serve one certificate whatever the client asks for.
            config.enable_sni = false;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Self {
            h1: config(b"http/1.1")?,
            h2: config(b"h2")?,
            fingerprint: fingerprint_of(certs),
            view: TrustView {
                sources,
                certificates: certs.len(),
            },
        })
    }
}

/// A fingerprint of `certs`, as [`Trust::fingerprint`] reports it.
pub fn fingerprint_of(certs: &[CertificateDer<'_>]) -> u64 {
    let mut h = DefaultHasher::new();
    for c in certs {
        c.as_ref().hash(&mut h);
    }
    h.finish()
}

/// Chain to the bundle, then the name: the one asked for (`kn-user-<ns>`,
/// or `kn-routing` for the activator itself), or else `kn-routing`, since
/// a public Service's endpoints are the activator's while its revision is
/// at zero.
#[derive(Debug)]
struct KnativeNames {
    webpki: Arc<WebPkiServerVerifier>,
}

impl KnativeNames {
    fn new(
        certs: &[CertificateDer<'static>],
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert.clone())
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("cannot verify with these certificates: {e}"))?;
        Ok(Self { webpki })
    }
}

impl ServerCertVerifier for KnativeNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verify = |name: &ServerName<'_>| {
            self.webpki
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        };
        let result = match verify(server_name) {
            Err(rustls::Error::InvalidCertificate(e)) if is_wrong_name(&e) => {
                let activator = ServerName::try_from(ACTIVATOR_NAME).expect("a valid DNS name");
                // Refused for both: the error names the one asked for.
                verify(&activator).map_err(|_| rustls::Error::InvalidCertificate(e))
            }
            other => other,
        };
        if let Err(e) = &result {
            count_failure(e);
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn is_wrong_name(e: &CertificateError) -> bool {
    matches!(
        e,
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
    )
}

/// Why backend certificates were refused, as metric label values.
pub const FAILURE_REASONS: [&str; 5] = [
    "unknown_issuer",
    "wrong_name",
    "expired",
    "not_yet_valid",
    "other",
];

static FAILURES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

fn count_failure(e: &rustls::Error) {
    let reason = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => 0,
            c if is_wrong_name(c) => 1,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => 2,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => 3,
            _ => 4,
        },
        _ => 4,
    };
    FAILURES[reason].fetch_add(1, Ordering::Relaxed);
}

/// Backend certificates refused since start, by [`FAILURE_REASONS`].
pub fn failures() -> [(&'static str, u64); 5] {
    std::array::from_fn(|i| (FAILURE_REASONS[i], FAILURES[i].load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        (rcgen::Issuer::new(params, key), pem)
    }

    fn leaf(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        name: &str,
    ) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn verify(ca_pem: &str, cert: &CertificateDer<'_>, name: &str) -> Result<(), rustls::Error> {
        let roots: Vec<_> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = KnativeNames::new(&roots, &provider).unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn a_certificate_must_chain_to_the_bundle_and_name_the_namespace_or_the_activator() {
        let (issuer, pem) = ca("trusted");
        let (stranger, _) = ca("stranger");
        let roots: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let trust = Trust::from_certificates(&roots, vec!["test".into()]).unwrap();
        let user = user_name("a");
        assert_eq!(user, "kn-user-a");
        assert!(verify(&pem, &leaf(&issuer, "kn-user-a"), &user).is_ok());
        assert!(
            verify(&pem, &leaf(&issuer, ACTIVATOR_NAME), &user).is_ok(),
            "the activator"
        );
        let before = failures();
        let wrong = verify(&pem, &leaf(&issuer, "kn-user-b"), &user).unwrap_err();
        assert!(
            matches!(&wrong, rustls::Error::InvalidCertificate(c) if is_wrong_name(c)),
            "{wrong}"
        );
        assert!(
            wrong.to_string().contains("kn-user-a"),
            "names what was asked: {wrong}"
        );
        let unknown = verify(&pem, &leaf(&stranger, "kn-user-a"), &user).unwrap_err();
        assert!(
            matches!(
                unknown,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{unknown}"
        );
        let after = failures();
        assert!(
            after[1].1 > before[1].1 && after[0].1 > before[0].1,
            "{after:?}"
        );
        // No SNI, ALPN by protocol.
        let (h1, h2) = (trust.config(false), trust.config(true));
        assert!(!h1.enable_sni);
        assert_eq!(h1.alpn_protocols, [b"http/1.1".to_vec()]);
        assert_eq!(h2.alpn_protocols, [b"h2".to_vec()]);
    }
}
