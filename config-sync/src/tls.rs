//! TLS certificates by server name (SNI), from the Secrets that KIngresses
//! name in `spec.tls` and the default certificate's Secret. A Secret is
//! parsed once per version of its data; one that breaks keeps serving its
//! last good certificate, and one that never parsed serves nothing.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use base64::Engine;
use dataplane::certs::{parse_pem, Certs};
use rustls::sign::CertifiedKey;

use crate::error::{parse_or_last_good, ObjectError, Outcome, Rejection};
use crate::model::kingress::KIngress;
use crate::model::{self, Kind, ObjectKey, Secret};

/// The Secret type of a certificate and its key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Certificates parsed so far, by Secret, with a fingerprint of the data each
/// came from: a Secret whose data did not change is not parsed again, and a
/// broken one keeps its last good certificate.
#[derive(Debug, Clone, Default)]
pub struct Parsed(HashMap<ObjectKey, (u64, Arc<CertifiedKey>)>);

fn fingerprint(secret: &Secret) -> u64 {
    let mut h = DefaultHasher::new();
    secret.type_.hash(&mut h);
    secret.data.hash(&mut h);
    secret.string_data.hash(&mut h);
    h.finish()
}

/// A Secret's `tls.crt` and `tls.key` as a certificate chain and its key; the
/// key must match the first certificate.
pub fn parse_secret(secret: &Secret) -> Result<CertifiedKey, ObjectError> {
    let bad = |message: String| ObjectError::BadTlsSecret { message };
    let found = secret.type_.as_deref().unwrap_or_default();
    if found != TLS_SECRET_TYPE {
        return Err(bad(format!("type is {found:?}, not \"{TLS_SECRET_TYPE}\"")));
    }
    let field = |key: &str| -> Result<Vec<u8>, ObjectError> {
        if let Some(text) = secret.string_data.get(key) {
            return Ok(text.clone().into_bytes());
        }
        let encoded = secret
            .data
            .get(key)
            .ok_or_else(|| bad(format!("data has no {key}")))?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| bad(format!("data.{key} is not base64: {e}")))
    };
    let (crt, key) = (field("tls.crt")?, field("tls.key")?);
    parse_pem(&crt, &key, ("tls.crt", "tls.key")).map_err(bad)
}

/// The Secrets of the certificates for names no `spec.tls` entry covers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Defaults<'a> {
    /// `--default-certificate`: every listener.
    pub any: Option<&'a ObjectKey>,
    /// `--cluster-cert-secret`: the internal HTTPS listener.
    pub cluster_local: Option<&'a ObjectKey>,
}

/// Whether `tls` applies to a rule of `ing` of visibility `local` (true:
/// `ClusterLocal`): it holds all of that rule's hosts, as Knative's
/// `GetIngressTLSForVisibility` decides.
pub(crate) fn applies(
    ing: &KIngress,
    tls: &crate::model::kingress::IngressTls,
    local: bool,
) -> bool {
    let norm = |h: &String| h.trim_end_matches('.').to_ascii_lowercase();
    let held: Vec<String> = tls.hosts.iter().map(norm).collect();
    ing.spec.rules.iter().any(|rule| {
        (rule.visibility == "ClusterLocal") == local
            && !rule.hosts.is_empty()
            && rule.hosts.iter().all(|h| held.contains(&norm(h)))
    })
}

/// Build the certificates for `kingresses` (oldest first: the first to name
/// a host serves it) from `secrets`, reusing `previous` parses. An entry that
/// applies only to cluster-local rules is served on the internal listener
/// alone. Problems are pushed to `rejected`, each naming its object. Returns
/// the certificates and the parses to keep for the next build.
pub fn build(
    kingresses: &[Arc<KIngress>],
    secrets: &[Secret],
    defaults: Defaults<'_>,
    previous: &Parsed,
    rejected: &mut Vec<Rejection>,
) -> (Certs, Parsed) {
    let by_key: FastMap<ObjectKey, &Secret> = secrets
        .iter()
        .map(|s| (model::key(&s.metadata), s))
        .collect();
    let mut parsed = Parsed::default();
    // Secrets that failed this build: named by several KIngresses, a broken
    // one is still parsed and rejected once.
    let mut failed: Vec<ObjectKey> = Vec::new();
    // The certificate of a Secret, parsed at most once per build.
    let mut cert_of = |key: &ObjectKey, rejected: &mut Vec<Rejection>| {
        if let Some((_, cert)) = parsed.0.get(key) {
            return Some(cert.clone());
        }
        if failed.contains(key) {
            return None;
        }
        let secret = by_key.get(key)?;
        let last = previous.0.get(key);
        let parse = || parse_secret(secret).map(Arc::new);
        let print = fingerprint(secret);
        match parse_or_last_good(Kind::Secret, key, print, last, parse, rejected) {
            Some(kept) => {
                let cert = kept.1.clone();
                parsed.0.insert(key.clone(), kept);
                Some(cert)
            }
            None => {
                failed.push(key.clone());
                None
            }
        }
    };
    let mut certs = Certs::default();
    let mut order: Vec<&Arc<KIngress>> = kingresses
        .iter()
        .filter(|k| !k.spec.tls.is_empty())
        .collect();
    order.sort_by(|a, b| {
        let created = |k: &KIngress| k.metadata.creation_timestamp.clone().unwrap_or_default();
        created(a)
            .cmp(&created(b))
            .then_with(|| a.key().cmp(&b.key()))
    });
    for ing in order {
        for (i, tls) in ing.spec.tls.iter().enumerate() {
            let namespace = match tls.secret_namespace.as_str() {
                "" => ing.metadata.namespace.as_deref().unwrap_or("default"),
                ns => ns,
            };
            let key = ObjectKey::new(namespace, &tls.secret_name);
            let Some(cert) = cert_of(&key, rejected) else {
                if !by_key.contains_key(&key) {
                    rejected.push(Rejection {
                        kind: Kind::KIngress,
                        object: ing.key(),
                        error: ObjectError::NoSecret {
                            field: format!("spec.tls[{i}]"),
                            secret: key.to_string(),
                        },
                        outcome: Outcome::PartlyServed,
                    });
                }
                continue;
            };
            let internal_only = applies(ing, tls, true) && !applies(ing, tls, false);
            for host in &tls.hosts {
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                certs.add(name, &key, cert.clone(), internal_only);
            }
        }
    }
    for (key, internal_only) in [(defaults.any, false), (defaults.cluster_local, true)] {
        let Some(key) = key else { continue };
        match cert_of(key, rejected) {
            Some(cert) => certs.set_default(key, cert, internal_only),
            None if !by_key.contains_key(key) => rejected.push(Rejection {
                kind: Kind::Secret,
                object: key.clone(),
                error: ObjectError::NoDefaultSecret,
                outcome: Outcome::LeftOut,
            }),
            None => {}
        }
    }
    (certs, parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn secret(name: &str, crt: &str, key: &str) -> Secret {
        let mut s = Secret {
            type_: Some(TLS_SECRET_TYPE.into()),
            ..Secret::default()
        };
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("ns".into());
        s.data.insert("tls.crt".into(), STANDARD.encode(crt));
        s.data.insert("tls.key".into(), STANDARD.encode(key));
        s
    }

    fn kingress(name: &str, tls: &[(&[&str], &str)]) -> Arc<KIngress> {
        let tls: Vec<serde_json::Value> = tls
            .iter()
            .map(|(hosts, secret)| serde_json::json!({"hosts": hosts, "secretName": secret, "secretNamespace": "ns"}))
            .collect();
        let value = serde_json::json!({"apiVersion": crate::model::kingress::API_VERSION, "kind": "Ingress",
            "metadata": {"name": name, "namespace": "ns"}, "spec": {"tls": tls}});
        Arc::new(crate::model::kingress::decode(value).unwrap())
    }

    fn leaf(cert: &Arc<CertifiedKey>) -> Vec<u8> {
        cert.cert[0].to_vec()
    }

    #[test]
    fn names_exact_then_wildcard_then_default() {
        let (a_crt, a_key) = pair(&["a.example.com"]);
        let (w_crt, w_key) = pair(&["*.example.com"]);
        let (d_crt, d_key) = pair(&["default"]);
        let secrets = [
            secret("a", &a_crt, &a_key),
            secret("w", &w_crt, &w_key),
            secret("d", &d_crt, &d_key),
        ];
        let ings = [kingress(
            "k",
            &[(&["A.example.com"], "a"), (&["*.example.com"], "w")],
        )];
        let mut rejected = Vec::new();
        let default = ObjectKey::new("ns", "d");
        let (certs, _) = build(
            &ings,
            &secrets,
            Defaults {
                any: Some(&default),
                cluster_local: None,
            },
            &Parsed::default(),
            &mut rejected,
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        let served = |name| leaf(&certs.lookup(name).unwrap());
        let der = |s: &Secret| {
            let pem = STANDARD.decode(&s.data["tls.crt"]).unwrap();
            CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
        };
        assert_eq!(served(Some("a.example.com")), der(&secrets[0]));
        assert_eq!(served(Some("b.example.com")), der(&secrets[1]));
        // A wildcard covers one label only.
        assert_eq!(served(Some("x.b.example.com")), der(&secrets[2]));
        assert_eq!(served(None), der(&secrets[2]));
        let names: Vec<&str> = certs.names().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a.example.com", "*.example.com", "*"]);
    }

    #[test]
    fn broken_secrets_are_rejected_by_name_and_keep_their_last_good_certificate() {
        let (crt, key) = pair(&["a.example.com"]);
        let (_, other_key) = pair(&["b.example.com"]);
        let ings = [kingress("k", &[(&["a.example.com"], "a")])];
        let mut rejected = Vec::new();
        let (_, parsed) = build(
            &ings,
            &[secret("a", &crt, &key)],
            Defaults::default(),
            &Parsed::default(),
            &mut rejected,
        );
        let good = build(
            &ings,
            &[secret("a", &crt, &key)],
            Defaults::default(),
            &parsed,
            &mut rejected,
        )
        .0;
        assert!(rejected.is_empty());
        let first = good.lookup(Some("a.example.com")).unwrap();
        // Unchanged data is not parsed again: the same certificate is shared.
        assert!(Arc::ptr_eq(&first, &parsed.0[&ObjectKey::new("ns", "a")].1));
        let (certs, _) = build(
            &ings,
            &[secret("a", &crt, &other_key)],
            Defaults::default(),
            &parsed,
            &mut rejected,
        );
        assert_eq!(
            leaf(&certs.lookup(Some("a.example.com")).unwrap()),
            leaf(&first)
        );
        let r = &rejected[0];
        assert_eq!(
            (r.kind, r.object.to_string(), r.error.to_string(), r.outcome),
            (
                Kind::Secret,
                "ns/a".into(),
                "tls.key does not match the certificate in tls.crt".into(),
                Outcome::LastGood
            )
        );
        // Never good: nothing serves, and the KIngress's other names are unaffected.
        let mut rejected = Vec::new();
        let mut opaque = secret("a", &crt, &key);
        opaque.type_ = Some("Opaque".into());
        // Named by two KIngresses, it is still rejected once.
        let both = [
            ings[0].clone(),
            kingress("k2", &[(&["b.example.com"], "a")]),
        ];
        let (certs, _) = build(
            &both,
            &[opaque],
            Defaults::default(),
            &Parsed::default(),
            &mut rejected,
        );
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(certs.lookup(Some("a.example.com")).is_none());
        assert_eq!(
            rejected[0].error.to_string(),
            "type is \"Opaque\", not \"kubernetes.io/tls\""
        );
        assert_eq!(rejected[0].outcome, Outcome::LeftOut);
    }

    #[test]
    fn bad_data_and_missing_secrets_name_what_is_wrong() {
        let (crt, key) = pair(&["a.example.com"]);
        let mut s = secret("a", &crt, &key);
        s.data.insert("tls.key".into(), "!!".into());
        assert!(parse_secret(&s)
            .unwrap_err()
            .to_string()
            .starts_with("data.tls.key is not base64"));
        s.data.remove("tls.key");
        assert_eq!(
            parse_secret(&s).unwrap_err().to_string(),
            "data has no tls.key"
        );
        s.data.insert("tls.key".into(), STANDARD.encode(&key));
        s.data.insert("tls.crt".into(), STANDARD.encode("not PEM"));
        assert_eq!(
            parse_secret(&s).unwrap_err().to_string(),
            "tls.crt holds no PEM certificate"
        );
        let mut rejected = Vec::new();
        let ings = [kingress("k", &[(&["a.example.com"], "missing")])];
        build(
            &ings,
            &[],
            Defaults {
                any: Some(&ObjectKey::new("ns", "nope")),
                cluster_local: None,
            },
            &Parsed::default(),
            &mut rejected,
        );
        let found: Vec<String> = rejected
            .iter()
            .map(|r| format!("{} {}: {}", r.kind, r.object, r.error))
            .collect();
        assert_eq!(
            found,
            [
                "KIngress ns/k: spec.tls[0] names Secret ns/missing, which does not exist",
                "Secret ns/nope: the default certificate's Secret does not exist"
            ]
        );
    }
}
