//! Marks KIngresses of this gateway's class Ready. Only the Lease holder
//! writes, and only once every ready replica of the gateway (the endpoints of
//! its internal Service) answers Knative's probe for each rule's host with the
//! KIngress's current hash: the Route turns Ready when the traffic is served
//! everywhere, not before.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;

use crate::build::{http_port, ready_addresses};
use crate::kingress::KIngress;
use crate::leader::LeaderElector;
use crate::model::{EndpointSlice, ObjectKey};

/// Where the status writer looks and what it writes.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// The Lease deciding the leader.
    pub lease: ObjectKey,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// The gateway's external Service, for `status.publicLoadBalancer`.
    pub public_service: ObjectKey,
    /// The gateway's internal Service, for `status.privateLoadBalancer`; its
    /// endpoints are the replicas that must all serve a KIngress.
    pub private_service: ObjectKey,
    /// Cluster domain, for the load balancers' `domainInternal`.
    pub cluster_domain: String,
    /// How often to renew the Lease and check KIngresses.
    pub interval: Duration,
}

/// The latest KIngresses of our class, as the kube source sees them.
pub type KIngressFeed = watch::Receiver<Arc<Vec<KIngress>>>;

/// Writes KIngress status while leading.
pub struct StatusWriter {
    client: Client,
    options: StatusOptions,
    kingresses: KIngressFeed,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
}

impl StatusWriter {
    /// A writer using `client`, fed by the kube source.
    pub fn new(client: Client, options: StatusOptions, kingresses: KIngressFeed) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        Self {
            client,
            options,
            kingresses,
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Lead (or wait to) and write status until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let o = &self.options;
        let elector = LeaderElector::new(
            self.client.clone(),
            &o.lease.namespace,
            &o.lease.name,
            &o.identity,
        );
        let mut leading = false;
        loop {
            match elector.try_lead().await {
                Ok(now) => {
                    if now != leading {
                        tracing::info!(identity = %o.identity, leading = now, "KIngress status leadership changed");
                    }
                    leading = now;
                }
                Err(e) => {
                    tracing::warn!("cannot renew lease {}: {e}", o.lease);
                    leading = false;
                }
            }
            if leading {
                if let Err(e) = self.mark_ready().await {
                    tracing::warn!("KIngress status: {e}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(o.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn mark_ready(&self) -> Result<(), kube::Error> {
        let pending: Vec<KIngress> = self
            .kingresses
            .borrow()
            .iter()
            .filter(|k| k.ready_generation != Some(k.generation))
            .cloned()
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let replicas = self.replicas().await?;
        if replicas.is_empty() {
            tracing::warn!(
                "no ready endpoints for {}: cannot verify any KIngress",
                self.options.private_service
            );
            return Ok(());
        }
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("networking.internal.knative.dev", "v1alpha1", "Ingress"),
            "ingresses",
        );
        for ing in pending {
            if !self.served_everywhere(&ing, &replicas).await {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &ing.key.namespace, &ar);
            let Some(mut obj) = api.get_opt(&ing.key.name).await? else {
                continue;
            };
            obj.data["status"] = self.ready_status(&ing);
            match api
                .replace_status(&ing.key.name, &PostParams::default(), &obj)
                .await
            {
                Ok(_) => {
                    tracing::info!(kingress = %ing.key, generation = ing.generation, "KIngress marked Ready")
                }
                // Changed under us: the next round sees the new version.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn ready_status(&self, ing: &KIngress) -> serde_json::Value {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let o = &self.options;
        let lb = |s: &ObjectKey| json!({"ingress": [{"domainInternal": format!("{}.{}.svc.{}", s.name, s.namespace, o.cluster_domain)}]});
        let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
        json!({
            "observedGeneration": ing.generation,
            "conditions": [cond("LoadBalancerReady"), cond("NetworkConfigured"), cond("Ready")],
            "publicLoadBalancer": lb(&o.public_service),
            "privateLoadBalancer": lb(&o.private_service),
        })
    }

    /// Ready endpoints of the gateway's internal Service.
    async fn replicas(&self) -> Result<Vec<SocketAddr>, kube::Error> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice"),
            "endpointslices",
        );
        let svc = &self.options.private_service;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &svc.namespace, &ar);
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={}", svc.name));
        let mut out = BTreeSet::new();
        for obj in api.list(&lp).await?.items {
            // The same reading of a slice as the table builder's.
            let Ok(slice) =
                serde_json::to_value(&obj).and_then(serde_json::from_value::<EndpointSlice>)
            else {
                continue;
            };
            // The Service's port is named `http`; an unnamed single port is taken as is.
            let first = || {
                let port = slice.ports.as_ref()?.first()?.port?;
                u16::try_from(port).ok().filter(|&p| p > 0)
            };
            let Some(port) = http_port(&slice).or_else(first) else {
                continue;
            };
            // Addresses that are not IPs are skipped; nothing here reports them.
            out.extend(ready_addresses(&slice, port, &mut Vec::new()));
        }
        Ok(out.into_iter().collect())
    }

    /// Every replica answers the probe of every rule's first host with the hash.
    async fn served_everywhere(&self, ing: &KIngress, replicas: &[SocketAddr]) -> bool {
        for replica in replicas {
            for host in ing.rules.iter().filter_map(|r| r.hosts.first()) {
                let req = http::Request::get(format!("http://{replica}/healthz"))
                    .header(http::header::HOST, host.as_str())
                    .header("K-Network-Probe", "probe")
                    .header("K-Network-Hash", "override")
                    .header(http::header::USER_AGENT, "Knative-Ingress-Probe")
                    .body(Empty::new());
                let Ok(req) = req else { return false };
                let answer =
                    tokio::time::timeout(Duration::from_secs(2), self.http.request(req)).await;
                let hash = match answer {
                    Ok(Ok(resp)) if resp.status() == 200 => {
                        resp.headers().get("K-Network-Hash").cloned()
                    }
                    _ => None,
                };
                if hash.as_ref().map(|h| h.as_bytes()) != Some(ing.hash.as_bytes()) {
                    return false;
                }
            }
        }
        true
    }
}
