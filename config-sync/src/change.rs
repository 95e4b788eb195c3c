//! The typed changes a source emits, and what the publisher reads back from
//! the source to apply them. Sources say what changed; [`Publisher::apply`]
//! alone chooses between a full build, a KIngress patch and an endpoint swap.
//!
//! [`Publisher::apply`]: crate::publish::Publisher::apply

use std::collections::BTreeSet;

use dataplane::endpoints::EndpointUpdate;

use crate::compiler::KIngressUpdate;
use crate::error::Rejection;
use crate::model::{ObjectKey, Snapshot};

/// What changed in a source since it last published.
#[derive(Debug, Default)]
pub struct Changes {
    /// Something a patch cannot express changed (a Route, a Secret, the
    /// trust bundle, a deleted KIngress, a relist): rebuild everything.
    pub full: bool,
    /// KIngresses added or changed, and those naming a changed Service.
    pub kingresses: BTreeSet<ObjectKey>,
    /// Endpoint index keys whose EndpointSlices changed.
    pub endpoints: BTreeSet<String>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.full && self.kingresses.is_empty() && self.endpoints.is_empty()
    }
}

/// The EndpointSlices now behind some endpoint index keys.
#[derive(Debug, Default)]
pub struct EndpointsNow {
    /// The slices behind each key.
    pub updates: Vec<EndpointUpdate>,
    /// The EndpointSlices read, whose rejections `rejected` replaces.
    pub slices: Vec<ObjectKey>,
    /// What was wrong with them.
    pub rejected: Vec<Rejection>,
}

/// What a source holds, read when its changes are applied.
pub trait Inputs {
    /// Everything a full build reads.
    fn snapshot(&self) -> Snapshot;
    /// The KIngresses `keys`, with the Services they name and those
    /// Services' EndpointSlices.
    fn kingresses(&self, keys: &BTreeSet<ObjectKey>) -> KIngressUpdate;
    /// The EndpointSlices behind each of `keys`.
    fn endpoints(&self, keys: &BTreeSet<String>) -> EndpointsNow;
}
