//! The last valid version of every routed object, so that a broken update
//! keeps serving what worked.

use std::collections::HashMap;
use std::sync::Arc;

use crate::lower::route::ValidRoute;
use crate::model::{KIngress, Kind, ObjectKey};

/// The last valid version of every Route and KIngress seen, so that a broken
/// update keeps serving what worked.
#[derive(Debug, Clone, Default)]
pub struct LastGood {
    pub(crate) routes: HashMap<(Kind, Arc<ObjectKey>), Good>,
    /// TLS Secrets as last parsed.
    pub(crate) certs: crate::tls::Parsed,
    /// The trust bundle as last parsed.
    pub(crate) trust: crate::trust::Parsed,
    /// KIngresses held at their last good version until the EndpointSlices
    /// behind an endpoint index key arrive, by that key.
    pub(crate) waiting: HashMap<Arc<ObjectKey>, Box<str>>,
}

impl LastGood {
    /// The KIngresses held until slices behind one of `keys` arrive: a
    /// change to those keys is theirs to apply.
    pub fn waiting_on<'a>(
        &'a self,
        keys: &'a std::collections::BTreeSet<String>,
    ) -> impl Iterator<Item = &'a ObjectKey> + 'a {
        self.waiting
            .iter()
            .filter(|(_, key)| keys.contains(&***key))
            .map(|(k, _)| &**k)
    }
}

/// A last good version, in its most compact form: a Route as validated (its
/// lowered form is twice the size), a KIngress as decoded, shared with the
/// source's store while it is current. Either is lowered again only when it
/// has to serve (a KIngress against the Services of that moment).
#[derive(Debug, Clone)]
pub(crate) enum Good {
    Route(Arc<ValidRoute>),
    KIngress(Arc<KIngress>),
}
