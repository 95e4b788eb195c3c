//! The trust bundle for Knative's system-internal TLS: `ca.crt` of the
//! Secret `routing-serving-certs` plus every data value of the ConfigMaps
//! labelled `networking.knative.dev/trust-bundle`, all in the system
//! namespace, built into the [`Trust`] the request path connects with
//! (`dataplane::trust`). Each source is parsed once per version of its data;
//! one that breaks keeps its last good certificates.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use base64::Engine;
use dataplane::trust::{fingerprint_of, Trust};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::{parse_or_last_good, ObjectError, Rejection};
use crate::model::{self, ConfigMap, Kind, ObjectKey, Secret};

/// The Secret whose `ca.crt` signs the activator's and queue-proxy's certificates.
pub const CA_SECRET: &str = "routing-serving-certs";
/// The key of the CA in [`CA_SECRET`].
pub const CA_KEY: &str = "ca.crt";
pub use crate::model::TRUST_BUNDLE_LABEL;
/// Knative's system namespace, where the bundle lives, unless configured.
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "knative-serving";

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
        Some(t) if t.fingerprint() == print && t.view().sources == sources => Some(t.clone()),
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
}
