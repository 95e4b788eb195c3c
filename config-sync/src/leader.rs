//! Leader election on a `coordination.k8s.io/v1` Lease, so exactly one
//! replica writes KIngress status. kube has none built in; this is the
//! client-go protocol: create the Lease, or replace it with its
//! resourceVersion (a 409 means another replica won the race), renewing well
//! within `leaseDurationSeconds`; an expired Lease may be taken over.

use std::time::{Duration, SystemTime};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::Client;
use serde_json::json;

/// Holds (or tries to hold) one Lease.
pub struct LeaderElector {
    api: Api<DynamicObject>,
    ar: ApiResource,
    namespace: String,
    name: String,
    identity: String,
    /// How long a holder that stops renewing keeps the Lease.
    pub duration: Duration,
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// An elector for Lease `namespace/name`, as `identity` (the pod name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"),
            "leases",
        );
        Self {
            api: Api::namespaced_with(client, namespace, &ar),
            ar,
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
        }
    }

    /// Acquire or renew the Lease; `Ok(true)` while this replica leads.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = SystemTime::now();
        let stamp = humantime::format_rfc3339_micros(now).to_string();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = DynamicObject::new(&self.name, &self.ar)
                .within(&self.namespace)
                .data(json!({"spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self.duration.as_secs(),
                    "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}}));
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = &lease.data["spec"];
        let holder = spec["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let expires = spec["renewTime"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map(|t| t + Duration::from_secs(spec["leaseDurationSeconds"].as_u64().unwrap_or(15)));
        let expired = expires.is_none_or(|t| t < now);
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let spec = &mut lease.data["spec"];
        if holder != self.identity {
            spec["acquireTime"] = json!(stamp);
            spec["leaseTransitions"] = json!(spec["leaseTransitions"].as_u64().unwrap_or(0) + 1);
            tracing::info!(lease = %self.name, identity = %self.identity, previous = %holder, "taking the lease");
        }
        spec["holderIdentity"] = json!(self.identity);
        spec["leaseDurationSeconds"] = json!(self.duration.as_secs());
        spec["renewTime"] = json!(stamp);
        // The resourceVersion we read makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
