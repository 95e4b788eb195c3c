//! The cluster settings a build needs.

use crate::lower::kingress::LowerOptions;
use crate::model::ObjectKey;

/// Cluster settings the builder needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Kubernetes cluster domain (`cluster.local`), for `x.ns.svc.<domain>` names.
    pub cluster_domain: String,
    /// The gateway's internal Service: an ExternalName Service pointing at it
    /// is dispatched internally, without a network hop (DomainMapping).
    pub internal_service: Option<ObjectKey>,
    /// The Secret of the certificate for names no KIngress has one for.
    pub default_certificate: Option<ObjectKey>,
    /// `--cluster-cert-secret`: the internal HTTPS listener's certificate
    /// for cluster-local names no KIngress has one for.
    pub cluster_certificate: Option<ObjectKey>,
    /// Knative's system namespace: where the trust bundle for `https`
    /// backends lives ([`crate::trust`]).
    pub system_namespace: String,
}

impl BuildOptions {
    /// What lowering a KIngress needs of these options, and whether
    /// anything is `trusted` for `https` backends.
    pub(crate) fn lower_options(&self, trusted: bool) -> LowerOptions<'_> {
        LowerOptions {
            cluster_domain: &self.cluster_domain,
            internal_service: self.internal_service.as_ref(),
            untrusted: (!trusted).then_some(self.system_namespace.as_str()),
        }
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            internal_service: None,
            default_certificate: None,
            cluster_certificate: None,
            system_namespace: crate::trust::DEFAULT_SYSTEM_NAMESPACE.into(),
        }
    }
}
