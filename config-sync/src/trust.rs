//! Knative's system-internal TLS, the gateway's side: whom to trust on the
//! way to the activator and queue-proxy, and how their certificates are
//! checked. The trust bundle is `ca.crt` of the Secret `routing-serving-certs`
//! plus every data value of the ConfigMaps labelled
//! `networking.knative.dev/trust-bundle`, all in the system namespace. A
//! backend's certificate must chain to it and name `kn-user-<namespace of
//! the split>` (queue-proxy) or `kn-routing` (the activator, which a public
//! Service's endpoints point at while a revision is at zero). TLS 1.3 only,
//! no SNI, as Kourier connects.
//!
//! Each source is parsed once per version of its data; one that breaks keeps
//! its last good certificates. The client configurations are built again
//! only when the set of trusted certificates changes, so their session
//! caches (resumption) live as long as the trust does.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Serialize;

use crate::error::{parse_or_last_good, ObjectError, Rejection};
use crate::model::{self, ConfigMap, Kind, ObjectKey, Secret};

/// The Secret whose `ca.crt` signs the activator's and queue-proxy's certificates.
pub const CA_SECRET: &str = "routing-serving-certs";
/// The key of the CA in [`CA_SECRET`].
pub const CA_KEY: &str = "ca.crt";
pub use crate::model::TRUST_BUNDLE_LABEL;
/// The name in the activator's certificate.
pub const ACTIVATOR_NAME: &str = "kn-routing";
/// Knative's system namespace, where the bundle lives, unless configured.
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "knative-serving";

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

fn fingerprint_of(certs: &[CertificateDer<'_>]) -> u64 {
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

/// A source's certificates, with a fingerprint of the data they came from.
type SourceCerts = (u64, Arc<[CertificateDer<'static>]>);

/// Each source's certificates as last parsed, and the trust built on them.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    sources: HashMap<(Kind, ObjectKey), SourceCerts>,
    trust: Option<Arc<Trust>>,
}

/// A source's PEM text by name: the Secret's `ca.crt`, each ConfigMap value.
type Pems = BTreeMap<String, Vec<u8>>;

fn secret_pems(secret: &Secret) -> Result<Pems, ObjectError> {
    let bad = |message: String| ObjectError::BadTrustBundle { message };
    let pem = if let Some(text) = secret.string_data.get(CA_KEY) {
        text.clone().into_bytes()
    } else {
        let encoded = secret
            .data
            .get(CA_KEY)
            .ok_or_else(|| bad(format!("data has no {CA_KEY}")))?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| bad(format!("data.{CA_KEY} is not base64: {e}")))?
    };
    Ok(Pems::from([(CA_KEY.to_owned(), pem)]))
}

fn config_map_pems(map: &ConfigMap) -> Pems {
    map.data
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect()
}

/// Every certificate of `pems`; each value must hold at least one.
fn parse_pems(pems: &Pems) -> Result<Vec<CertificateDer<'static>>, ObjectError> {
    let mut out = Vec::new();
    for (name, pem) in pems {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ObjectError::BadTrustBundle {
                message: format!("{name}: {e}"),
            })?;
        if certs.is_empty() {
            return Err(ObjectError::BadTrustBundle {
                message: format!("{name} holds no PEM certificate"),
            });
        }
        out.extend(certs);
    }
    Ok(out)
}

fn fingerprint(pems: &Result<Pems, ObjectError>) -> u64 {
    let mut h = DefaultHasher::new();
    match pems {
        Ok(p) => p.hash(&mut h),
        Err(e) => e.to_string().hash(&mut h),
    }
    h.finish()
}

/// The trust bundle of `system_namespace` from `secrets` and `config_maps`
/// (objects elsewhere, or without the label, are not read), reusing
/// `previous` parses. A broken source is rejected, naming it, and keeps its
/// last good certificates. `None` when nothing is trusted: TLS backends are
/// then refused, never reached in plaintext.
pub fn build(
    secrets: &[Secret],
    config_maps: &[ConfigMap],
    system_namespace: &str,
    previous: &Parsed,
    rejected: &mut Vec<Rejection>,
) -> Parsed {
    let in_system = |meta: &model::ObjectMeta| meta.namespace.as_deref() == Some(system_namespace);
    let mut found: Vec<((Kind, ObjectKey), Result<Pems, ObjectError>)> = Vec::new();
    for s in secrets {
        if in_system(&s.metadata) && s.metadata.name.as_deref() == Some(CA_SECRET) {
            found.push(((Kind::Secret, model::key(&s.metadata)), secret_pems(s)));
        }
    }
    for m in config_maps {
        if in_system(&m.metadata) && m.metadata.label(TRUST_BUNDLE_LABEL).is_some() {
            found.push((
                (Kind::ConfigMap, model::key(&m.metadata)),
                Ok(config_map_pems(m)),
            ));
        }
    }
    // The CA Secret may come twice (as a certificate Secret too).
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.dedup_by(|a, b| a.0 == b.0);
    let mut next = Parsed::default();
    let mut all: Vec<CertificateDer<'static>> = Vec::new();
    let mut sources = Vec::new();
    for (key, pems) in found {
        let print = fingerprint(&pems);
        let last = previous.sources.get(&key);
        let parse = || pems.and_then(|p| parse_pems(&p)).map(Arc::from);
        let Some(kept) = parse_or_last_good(key.0, &key.1, print, last, parse, rejected) else {
            continue;
        };
        all.extend(kept.1.iter().cloned());
        next.sources.insert(key.clone(), kept);
        sources.push(format!("{} {}", key.0, key.1));
    }
    if all.is_empty() {
        return next;
    }
    let print = fingerprint_of(&all);
    next.trust = match &previous.trust {
        Some(t) if t.fingerprint == print && t.view.sources == sources => Some(t.clone()),
        _ => match Trust::from_certificates(&all, sources) {
            Ok(t) => Some(Arc::new(t)),
            Err(message) => {
                // Each certificate parsed as PEM, yet rustls cannot use one
                // (not a CA, a bad key): the bundle as a whole is refused.
                rejected.push(Rejection::new(
                    Kind::Secret,
                    ObjectKey::new(system_namespace, CA_SECRET),
                    ObjectError::BadTrustBundle { message },
                ));
                previous.trust.clone()
            }
        },
    };
    next
}

impl Parsed {
    /// The trust built, if anything is trusted.
    pub fn trust(&self) -> Option<&Arc<Trust>> {
        self.trust.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Outcome;

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

    fn secret(ns: &str, pem: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(CA_SECRET.into());
        s.metadata.namespace = Some(ns.into());
        s.string_data.insert(CA_KEY.into(), pem.into());
        s
    }

    fn bundle(ns: &str, name: &str, label: bool, pem: &str) -> ConfigMap {
        let mut m = ConfigMap::default();
        m.metadata.name = Some(name.into());
        m.metadata.namespace = Some(ns.into());
        if label {
            m.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(TRUST_BUNDLE_LABEL, "true");
        }
        m.data.insert("ca.pem".into(), pem.into());
        m
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
    fn the_bundle_is_the_secret_and_the_labelled_config_maps_of_the_system_namespace() {
        let (_, a) = ca("a");
        let (_, b) = ca("b");
        let (_, c) = ca("c");
        let secrets = [secret("knative-serving", &a), secret("elsewhere", &c)];
        let maps = [
            bundle("knative-serving", "extra", true, &b),
            bundle("knative-serving", "unlabelled", false, &c),
            bundle("elsewhere", "extra", true, &c),
        ];
        let mut rejected = Vec::new();
        let parsed = build(
            &secrets,
            &maps,
            "knative-serving",
            &Parsed::default(),
            &mut rejected,
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        let view = parsed.trust().unwrap().view();
        assert_eq!(view.certificates, 2);
        assert_eq!(
            view.sources,
            [
                "Secret knative-serving/routing-serving-certs",
                "ConfigMap knative-serving/extra"
            ]
        );
        // Nothing changed: the same trust, and so the same session caches.
        let again = build(&secrets, &maps, "knative-serving", &parsed, &mut rejected);
        assert!(Arc::ptr_eq(again.trust().unwrap(), parsed.trust().unwrap()));
        // Nothing at all: nothing is trusted.
        let none = build(&[], &[], "knative-serving", &parsed, &mut rejected);
        assert!(none.trust().is_none());
    }

    #[test]
    fn a_broken_source_is_rejected_by_name_and_keeps_its_last_good_certificates() {
        let (_, a) = ca("a");
        let (_, b) = ca("b");
        let maps = [bundle("knative-serving", "extra", true, &b)];
        let mut rejected = Vec::new();
        let good = build(
            &[secret("knative-serving", &a)],
            &maps,
            "knative-serving",
            &Parsed::default(),
            &mut rejected,
        );
        assert!(rejected.is_empty());
        let broken = [secret("knative-serving", "not a certificate")];
        let kept = build(&broken, &maps, "knative-serving", &good, &mut rejected);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(
            rejected[0].object.to_string(),
            "knative-serving/routing-serving-certs"
        );
        assert_eq!(rejected[0].error.reason(), "bad_trust_bundle");
        assert_eq!(rejected[0].outcome, Outcome::LastGood);
        assert_eq!(kept.trust().unwrap().view().certificates, 2);
        // Never parsed: left out, the rest still trusted.
        let mut rejected = Vec::new();
        let fresh = build(
            &broken,
            &maps,
            "knative-serving",
            &Parsed::default(),
            &mut rejected,
        );
        assert_eq!(rejected[0].outcome, Outcome::LeftOut);
        assert_eq!(fresh.trust().unwrap().view().certificates, 1);
    }

    #[test]
    fn a_certificate_must_chain_to_the_bundle_and_name_the_namespace_or_the_activator() {
        let (issuer, pem) = ca("trusted");
        let (stranger, _) = ca("stranger");
        let mut rejected = Vec::new();
        let parsed = build(
            &[secret("knative-serving", &pem)],
            &[],
            "knative-serving",
            &Parsed::default(),
            &mut rejected,
        );
        let trust = parsed.trust().unwrap();
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
