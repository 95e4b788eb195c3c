//! Writes the status of KIngresses of this gateway's class. Only the Lease
//! holder writes. Ready only once the live table applies the KIngress's
//! current version and every ready replica of the gateway (the endpoints of
//! its internal Service) answers Knative's probe for each rule's host with its
//! hash: the Route turns Ready when the traffic is served everywhere, not
//! before. A KIngress the table leaves out (its Service does not exist yet) or
//! that lost a host to an older one (`DomainConflict`) is marked not ready,
//! with the reason.

use std::collections::{BTreeSet, HashMap};
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
use crate::error::{ObjectError, Outcome, Rejection};
use crate::kingress::{self, KIngress};
use crate::leader::LeaderElector;
use crate::model::{EndpointSlice, Kind, ObjectKey};
use crate::publish::{TableReader, WriterHealth};
use crate::sources::kube::SourceKind;
use crate::table::Table;

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
    /// Where the table comes from: with `Routes`, a KIngress is ready when
    /// the Routes' table serves its split (the probe is answered by the gateway).
    pub source: SourceKind,
}

/// The latest KIngresses of our class, as the kube source sees them.
pub type KIngressFeed = watch::Receiver<Arc<Vec<Arc<KIngress>>>>;

/// Writes KIngress status while leading.
pub struct StatusWriter {
    client: Client,
    options: StatusOptions,
    kingresses: KIngressFeed,
    table: TableReader,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    health: Arc<WriterHealth>,
}

/// What a KIngress's status should say now.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// Served; Ready once every replica answers the probe.
    Ready,
    /// Not served (or not all of it), with a reason and message.
    NotReady(&'static str, String),
}

impl StatusWriter {
    /// A writer using `client`, fed by the kube source, reading the live `table`.
    pub fn new(
        client: Client,
        options: StatusOptions,
        kingresses: KIngressFeed,
        table: TableReader,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        Self {
            client,
            options,
            kingresses,
            table,
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
            health: Arc::default(),
        }
    }

    /// Report refused permissions to `health`.
    pub fn with_health(mut self, health: Arc<WriterHealth>) -> Self {
        self.health = health;
        self
    }

    /// What the live table says of `ing`; `None` while it does not apply the
    /// current version yet.
    fn verdict(&self, ing: &KIngress, table: &Table, rejections: &[&Rejection]) -> Option<Verdict> {
        if self.options.source == SourceKind::Routes {
            return Some(Verdict::Ready);
        }
        let mut conflict = None;
        for r in rejections {
            match &r.error {
                ObjectError::HostConflict { .. } => conflict = Some(r.error.to_string()),
                e @ (ObjectError::NoService { .. } | ObjectError::NoServicePort { .. }) => {
                    return Some(Verdict::NotReady("ServiceNotFound", e.to_string()))
                }
                e @ ObjectError::NoEndpoints { .. } => {
                    return Some(Verdict::NotReady("EndpointsNotFound", e.to_string()))
                }
                e @ ObjectError::NoTrustBundle { .. } => {
                    return Some(Verdict::NotReady("TrustBundleMissing", e.to_string()))
                }
                // Left out, or served from its last good version: either
                // way, not this version.
                e if matches!(r.outcome, Outcome::LastGood | Outcome::LeftOut) => {
                    return Some(Verdict::NotReady("InvalidSpec", e.to_string()))
                }
                _ => {}
            }
        }
        if let Some(message) = conflict {
            return Some(Verdict::NotReady("DomainConflict", message));
        }
        kingress::is_applied(ing, table).then_some(Verdict::Ready)
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
        let lease_permission = format!(
            "get, create and update on leases (coordination.k8s.io) in namespace {}",
            o.lease.namespace
        );
        let status_permission =
            "get, update on ingresses/status (networking.internal.knative.dev)".to_owned();
        loop {
            match elector.try_lead().await {
                Ok(now) => {
                    if now != leading {
                        tracing::info!(identity = %o.identity, leading = now, "KIngress status leadership changed");
                    }
                    leading = now;
                }
                Err(e) => {
                    if !self.health.refused(&e, lease_permission.clone()) {
                        tracing::warn!("cannot renew lease {}: {e}", o.lease);
                    }
                    leading = false;
                }
            }
            let mut clear = leading;
            if leading {
                if let Err(e) = self.mark_ready().await {
                    if self.health.refused(&e, status_permission.clone()) {
                        clear = false;
                    } else {
                        tracing::warn!("KIngress status: {e}");
                    }
                }
            }
            // A round that led and wrote without a refusal: nothing missing.
            if clear {
                self.health.set(None);
            }
            tokio::select! {
                _ = tokio::time::sleep(o.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn mark_ready(&self) -> Result<(), kube::Error> {
        // What each KIngress whose status is not current should say.
        let table = self.table.load();
        // The table's KIngress rejections by object, read once per round.
        let mut rejections: HashMap<&ObjectKey, Vec<&Rejection>> = HashMap::new();
        for r in table.rejected().iter().filter(|r| r.kind == Kind::KIngress) {
            rejections.entry(&r.object).or_default().push(r);
        }
        let pending: Vec<(Arc<KIngress>, Verdict)> = self
            .kingresses
            .borrow()
            .iter()
            .filter_map(|k| {
                let of = rejections.get(&k.key()).map_or(&[][..], Vec::as_slice);
                Some((k.clone(), self.verdict(k, &table, of)?))
            })
            .filter(|(k, verdict)| !says(k, verdict))
            .collect();
        drop(rejections);
        drop(table);
        if pending.is_empty() {
            return Ok(());
        }
        let mut replicas = None;
        for (ing, verdict) in pending {
            if verdict == Verdict::Ready {
                if replicas.is_none() {
                    replicas = Some(self.replicas().await?);
                }
                let replicas = replicas.as_deref().unwrap_or_default();
                if replicas.is_empty() {
                    tracing::warn!(
                        "no ready endpoints for {}: cannot verify any KIngress",
                        self.options.private_service
                    );
                    return Ok(());
                }
                if !self.served_everywhere(&ing, replicas).await {
                    continue;
                }
            }
            self.write(&ing, &verdict).await?;
        }
        Ok(())
    }

    async fn write(&self, ing: &KIngress, verdict: &Verdict) -> Result<(), kube::Error> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("networking.internal.knative.dev", "v1alpha1", "Ingress"),
            "ingresses",
        );
        let key = ing.key();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &key.namespace, &ar);
        let Some(mut obj) = api.get_opt(&key.name).await? else {
            return Ok(());
        };
        obj.data["status"] = self.status(ing, verdict);
        match api
            .replace_status(&key.name, &PostParams::default(), &obj)
            .await
        {
            Ok(_) => match verdict {
                Verdict::Ready => {
                    tracing::info!(kingress = %key, generation = ing.generation(), "KIngress marked Ready")
                }
                Verdict::NotReady(reason, message) => {
                    tracing::warn!(kingress = %key, generation = ing.generation(), reason, "KIngress not ready: {message}")
                }
            },
            // Changed under us: the next round sees the new version.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn status(&self, ing: &KIngress, verdict: &Verdict) -> serde_json::Value {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let o = &self.options;
        let lb = |s: &ObjectKey| json!({"ingress": [{"domainInternal": format!("{}.{}.svc.{}", s.name, s.namespace, o.cluster_domain)}]});
        let ready = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
        let conditions = match verdict {
            Verdict::Ready => json!([
                ready("LoadBalancerReady"),
                ready("NetworkConfigured"),
                ready("Ready")
            ]),
            Verdict::NotReady(reason, message) => {
                let not = |t: &str| json!({"type": t, "status": "False", "reason": reason, "message": message, "lastTransitionTime": now});
                json!([
                    not("LoadBalancerReady"),
                    ready("NetworkConfigured"),
                    not("Ready")
                ])
            }
        };
        let mut status = json!({
            "observedGeneration": ing.generation(),
            "conditions": conditions,
        });
        if *verdict == Verdict::Ready {
            status["publicLoadBalancer"] = lb(&o.public_service);
            status["privateLoadBalancer"] = lb(&o.private_service);
        }
        status
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
            for host in ing.probe_hosts() {
                let req = http::Request::get(format!("http://{replica}/healthz"))
                    .header(http::header::HOST, host)
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

/// Whether the written status of `ing` already says `verdict` for its generation.
fn says(ing: &KIngress, verdict: &Verdict) -> bool {
    match verdict {
        Verdict::Ready => ing.ready_generation() == Some(ing.generation()),
        Verdict::NotReady(reason, _) => {
            ing.status.as_ref().and_then(|s| s.observed_generation) == Some(ing.generation())
                && ing
                    .condition("Ready")
                    .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some(*reason))
        }
    }
}
