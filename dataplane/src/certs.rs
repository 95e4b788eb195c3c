//! TLS certificates by server name (SNI), as the HTTPS listeners look them
//! up during a handshake. config-sync fills a [`Certs`] from the Secrets
//! KIngresses name; it is swapped in with the routing table.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Serialize;

use crate::key::ObjectKey;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Certificates by server name, swapped in with the routing table.
#[derive(Default)]
pub struct Certs {
    /// Exact names.
    exact: FastMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.example.com` entries, by `example.com`: one label deep, as in TLS.
    wildcard: FastMap<Box<str>, Arc<CertifiedKey>>,
    /// For any other name, and for clients that send no SNI.
    default: Option<Arc<CertifiedKey>>,
    /// Entries that apply only to cluster-local rules (`cluster-local-domain-tls`):
    /// served on the internal HTTPS listener alone.
    local: FastMap<Box<str>, Arc<CertifiedKey>>,
    /// `--cluster-cert-secret`: the internal listener's certificate for
    /// names nothing else has one for.
    local_default: Option<Arc<CertifiedKey>>,
    /// Names served, with the Secret serving each, for `/debug/routes`.
    names: Vec<CertView>,
}

/// A served name in `/debug/routes`.
#[derive(Debug, Clone, Serialize)]
pub struct CertView {
    /// Server name (`*.example.com` for a wildcard), or `*` for the default.
    pub name: String,
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// Served on the internal HTTPS listener only (a cluster-local name).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub internal_only: bool,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.names).finish()
    }
}

impl Certs {
    /// The certificate the external HTTPS listener presents for
    /// `server_name` (already lowercase, as rustls gives it): an exact name,
    /// else a wildcard one label up, else the default. Never one meant only
    /// for cluster-local names.
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.named(server_name).or(self.default.as_ref()).cloned()
    }

    /// The certificate the internal HTTPS listener presents: a cluster-local
    /// entry's, else a public one's, else `--cluster-cert-secret`'s, else the
    /// default.
    pub fn lookup_internal(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        server_name
            .and_then(|name| self.local.get(name))
            .or_else(|| self.named(server_name))
            .or(self.local_default.as_ref())
            .or(self.default.as_ref())
            .cloned()
    }

    fn named(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        server_name.and_then(|name| {
            self.exact.get(name).or_else(|| {
                let parent = name.split_once('.')?.1;
                self.wildcard.get(parent)
            })
        })
    }

    /// Names served and their Secrets.
    pub fn names(&self) -> &[CertView] {
        &self.names
    }

    /// Whether there is no certificate at all.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Serve `cert` (from the Secret `secret`) for `name` (lowercase, no
    /// trailing dot; `*.example.com` for every name one label under
    /// `example.com`), on the internal listener alone when `internal_only`.
    /// The first certificate added for a name keeps it; returns whether this
    /// one was taken.
    pub fn add(
        &mut self,
        name: String,
        secret: &ObjectKey,
        cert: Arc<CertifiedKey>,
        internal_only: bool,
    ) -> bool {
        let (map, stored) = match name.strip_prefix("*.") {
            _ if internal_only => (&mut self.local, name.clone()),
            Some(parent) => (&mut self.wildcard, parent.to_owned()),
            None => (&mut self.exact, name.clone()),
        };
        let Entry::Vacant(v) = map.entry(stored.into()) else {
            return false;
        };
        v.insert(cert);
        self.names.push(CertView {
            name,
            secret: secret.to_string(),
            internal_only,
        });
        true
    }

    /// Serve `cert` (from the Secret `secret`) for names nothing else has
    /// one for: on every listener, or on the internal one when `internal_only`.
    pub fn set_default(
        &mut self,
        secret: &ObjectKey,
        cert: Arc<CertifiedKey>,
        internal_only: bool,
    ) {
        let slot = if internal_only {
            &mut self.local_default
        } else {
            &mut self.default
        };
        *slot = Some(cert);
        self.names.push(CertView {
            name: "*".into(),
            secret: secret.to_string(),
            internal_only,
        });
    }
}

fn provider() -> &'static CryptoProvider {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    PROVIDER.get_or_init(rustls::crypto::ring::default_provider)
}

/// A PEM certificate chain and its PEM private key (`names` say what each
/// is called in errors); the key must match the first certificate.
pub fn parse_pem(crt: &[u8], key: &[u8], names: (&str, &str)) -> Result<CertifiedKey, String> {
    let (crt_name, key_name) = names;
    let chain = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{crt_name}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{crt_name} holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("{key_name}: {e}"))?;
    CertifiedKey::from_der(chain, key, provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{key_name} does not match the certificate in {crt_name}")
        }
        e => format!("{crt_name} and {key_name}: {e}"),
    })
}
