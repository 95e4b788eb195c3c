//! The Kubernetes source. With [`SourceKind::KIngress`] (what Knative hands
//! an ingress class) it watches the KIngresses of its class, Services, and the
//! EndpointSlices labelled `kubernetes.io/service-name`; with
//! [`SourceKind::Routes`], `routes.serving.knative.dev/v1` and the
//! EndpointSlices labelled with a revision (plus the KIngresses of its class,
//! only to answer Knative's probe). It keeps a store per watch and publishes
//! a table after each burst of changes, and only once every watch has synced.
//!
//! Objects are watched as `DynamicObject`s and decoded one at a time, so a
//! Route with a malformed status is rejected alone instead of failing the
//! whole list. `kube`'s watcher relists after 410 Gone and backs off on
//! errors (at most `max_backoff` apart, plus jitter); the stream is never
//! ended by an error, and the last table keeps serving while the API server
//! is away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{key_of, Change, Held, SliceIndex, Store};
use crate::change::{Changes, EndpointsNow, Inputs};
use crate::compiler::{slice_endpoints, slice_keys, KIngressUpdate};
use crate::error::Rejection;
use crate::model::KIngress;
use crate::model::{
    decode_object, Decoded, Kind, ObjectKey, Snapshot, REVISION_LABEL, SERVICE_NAME_LABEL,
};
use crate::publish::Publisher;
use crate::served;
use dataplane::endpoints::EndpointUpdate;

/// What a burst of events changed: the source's side of [`Changes`], with
/// changed Services still to be turned into the KIngresses naming them.
#[derive(Default)]
struct Pending {
    changes: Changes,
    /// Services added, changed or deleted: the KIngresses naming them are
    /// patched; one no KIngress names costs nothing more.
    services: std::collections::BTreeSet<ObjectKey>,
}

/// Which objects the table is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// KIngresses of the class, their Services and EndpointSlices.
    KIngress,
    /// Route status and revision EndpointSlices.
    Routes,
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Which objects the table is built from.
    pub source: SourceKind,
    /// Namespaces to watch; empty means cluster-wide.
    pub namespaces: Vec<String>,
    /// Quiet time after a change before publishing, so a burst builds one table.
    pub settle: Duration,
    /// KIngress class to implement; with `Routes`, `None` watches no KIngress.
    pub ingress_class: Option<String>,
    /// Longest wait between retries while the API server is unreachable,
    /// before jitter (which adds up to as much again).
    pub max_backoff: Duration,
    /// Knative's system namespace, whose CA Secret and trust-bundle
    /// ConfigMaps are watched ([`crate::trust`]).
    pub system_namespace: String,
    /// A label selector certificate Secrets must also match to be watched
    /// (e.g. `networking.internal.knative.dev/certificate-uid`, which
    /// Knative puts on the certificates it makes): other Secrets never
    /// reach the gateway.
    pub secret_labels: Option<String>,
    /// Keep every label of a KIngress, for the authorization server
    /// ([`crate::model::Snapshot::labels`]).
    pub kingress_labels: bool,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            source: SourceKind::KIngress,
            namespaces: Vec::new(),
            settle: Duration::from_millis(10),
            ingress_class: Some(crate::model::kingress::DEFAULT_CLASS.into()),
            max_backoff: DEFAULT_MAX_BACKOFF,
            system_namespace: crate::trust::DEFAULT_SYSTEM_NAMESPACE.into(),
            secret_labels: None,
            kingress_labels: false,
        }
    }
}

/// kube's default (client-go's reflector: 800 ms doubling to 30 s, plus up to
/// 100% jitter) can leave a gateway a minute behind an API server that came
/// back; stale routes at the edge cost more than a few extra retries.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Retry delays for one watch: 500 ms doubling to `max`, each plus up to 100%
/// jitter so replicas do not retry in step; back to 500 ms once the watch has
/// delivered something or after two quiet minutes.
fn watch_backoff(max: Duration) -> impl Backoff {
    let min = Duration::from_millis(500).min(max);
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(exponential),
        Duration::from_secs(120),
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Resource {
    Route,
    EndpointSlice,
    KIngress,
    Service,
    Secret,
    /// The trust bundle's CA Secret (any type), in the system namespace.
    CaSecret,
    /// Trust-bundle ConfigMaps, in the system namespace.
    TrustBundle,
}

impl Resource {
    fn api_resource(self) -> ApiResource {
        let (g, v, k, plural) = match self {
            Resource::Route => ("serving.knative.dev", "v1", "Route", "routes"),
            Resource::EndpointSlice => {
                ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
            }
            Resource::KIngress => (
                "networking.internal.knative.dev",
                "v1alpha1",
                "Ingress",
                "ingresses",
            ),
            Resource::Service => ("", "v1", "Service", "services"),
            Resource::Secret | Resource::CaSecret => ("", "v1", "Secret", "secrets"),
            Resource::TrustBundle => ("", "v1", "ConfigMap", "configmaps"),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural)
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Route => "Route",
            Resource::EndpointSlice => "EndpointSlice",
            Resource::KIngress => "Ingress",
            Resource::Service => "Service",
            Resource::Secret | Resource::CaSecret => "Secret",
            Resource::TrustBundle => "ConfigMap",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Route => "serving.knative.dev/v1",
            Resource::EndpointSlice => "discovery.k8s.io/v1",
            Resource::KIngress => crate::model::kingress::API_VERSION,
            Resource::Service | Resource::Secret | Resource::CaSecret | Resource::TrustBundle => {
                "v1"
            }
        }
    }
}

/// The store of one watch: objects the table is built from (decoded into the
/// model), or, with `--source routes`, the KIngresses of our class (probes only).
enum Watched {
    Objects(Resource, Store<Held>, SliceIndex),
    KIngresses(Store<Arc<KIngress>>),
}

impl Watched {
    fn synced(&self) -> bool {
        match self {
            Watched::Objects(_, s, _) => s.synced,
            Watched::KIngresses(s) => s.synced,
        }
    }
}

/// Watches the API server and publishes tables.
pub struct KubeSource {
    client: Client,
    publisher: Arc<Publisher>,
    options: KubeOptions,
    feed: Option<watch::Sender<Arc<Vec<Arc<KIngress>>>>>,
    on_idle: Option<crate::publish::OnIdle>,
}

/// Quiet time after the last event before the source counts as idle.
const IDLE_AFTER: Duration = Duration::from_millis(500);

impl KubeSource {
    /// A source reading through `client`.
    pub fn new(client: Client, publisher: Arc<Publisher>, options: KubeOptions) -> Self {
        Self {
            client,
            publisher,
            options,
            feed: None,
            on_idle: None,
        }
    }

    /// Call `f` on the source's thread once events have stopped for a
    /// while after a large burst (the first sync, a cold start's status
    /// writes coming back; see [`crate::publish::IDLE_BURST`]).
    pub fn on_idle(mut self, f: crate::publish::OnIdle) -> Self {
        self.on_idle = Some(f);
        self
    }

    /// Also send every new set of KIngresses of our class to `feed` (the status writer).
    pub fn feed_kingresses(mut self, feed: watch::Sender<Arc<Vec<Arc<KIngress>>>>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Watch until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let scopes: Vec<Option<String>> = if self.options.namespaces.is_empty() {
            vec![None]
        } else {
            self.options.namespaces.iter().cloned().map(Some).collect()
        };
        let mut stores = Vec::new();
        let mut streams = Vec::new();
        let kingress_source = self.options.source == SourceKind::KIngress;
        // The trust bundle lives in the system namespace, whatever the scope.
        let system = Some(self.options.system_namespace.clone());
        let trust = [
            (&system, Resource::CaSecret),
            (&system, Resource::TrustBundle),
        ];
        let mut watches: Vec<(&Option<String>, Resource)> = trust.to_vec();
        for scope in &scopes {
            let resources = match self.options.source {
                SourceKind::KIngress => {
                    vec![
                        Resource::KIngress,
                        Resource::Service,
                        Resource::EndpointSlice,
                        Resource::Secret,
                    ]
                }
                SourceKind::Routes if self.options.ingress_class.is_some() => {
                    vec![Resource::Route, Resource::EndpointSlice, Resource::KIngress]
                }
                SourceKind::Routes => vec![Resource::Route, Resource::EndpointSlice],
            };
            watches.extend(resources.into_iter().map(|r| (scope, r)));
        }
        for (scope, resource) in watches {
            let ar = resource.api_resource();
            let api: Api<DynamicObject> = match scope {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                None => Api::all_with(self.client.clone(), &ar),
            };
            let config = match resource {
                // Server-side selection: only the slices a table can use travel.
                Resource::EndpointSlice if kingress_source => {
                    watcher::Config::default().labels(SERVICE_NAME_LABEL)
                }
                Resource::EndpointSlice => watcher::Config::default().labels(REVISION_LABEL),
                // Certificates only (and with --secret-label-selector, only
                // those labelled): other Secrets never leave the API server.
                Resource::Secret => {
                    let config = watcher::Config::default()
                        .fields(&format!("type={}", crate::tls::TLS_SECRET_TYPE));
                    match &self.options.secret_labels {
                        Some(selector) => config.labels(selector),
                        None => config,
                    }
                }
                Resource::CaSecret => watcher::Config::default()
                    .fields(&format!("metadata.name={}", crate::trust::CA_SECRET)),
                Resource::TrustBundle => {
                    watcher::Config::default().labels(crate::trust::TRUST_BUNDLE_LABEL)
                }
                _ => watcher::Config::default(),
            };
            let index = stores.len();
            stores.push(match resource {
                Resource::KIngress if !kingress_source => Watched::KIngresses(Store::default()),
                other => Watched::Objects(other, Store::default(), SliceIndex::default()),
            });
            streams.push(
                watcher::watcher(api, config)
                    .backoff(watch_backoff(self.options.max_backoff))
                    .map(move |event| (index, event))
                    .boxed(),
            );
        }
        let mut events = futures::stream::select_all(streams);
        let mut publish_at: Option<Instant> = None;
        let mut last_publish: Option<Instant> = None;
        let mut pending = Pending::default();
        let class = self.options.ingress_class.clone().unwrap_or_default();
        let ours = Ours {
            class: &class,
            labels: self.options.kingress_labels,
        };
        let mut idle_at: Option<Instant> = None;
        let mut burst = 0usize;

        loop {
            let wait = async {
                match publish_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let idle = async {
                match idle_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = events.next() => {
                    let Some((index, event)) = next else { return };
                    burst += 1;
                    if self.on_idle.is_some() && burst >= crate::publish::IDLE_BURST {
                        idle_at = Some(Instant::now() + IDLE_AFTER);
                    }
                    let event = match event {
                        Ok(event) => event,
                        // kube backs off and retries; the table stays as it is.
                        Err(e) => {
                            self.publisher.report_error(&e);
                            continue;
                        }
                    };
                    self.publisher.report_healthy();
                    match &mut stores[index] {
                        Watched::Objects(resource, store, index) => {
                            if apply(store, index, *resource, event, ours, &self.publisher, &mut pending) {
                                publish_at.get_or_insert_with(|| next_publish(last_publish, self.options.settle));
                            }
                        }
                        Watched::KIngresses(store) => {
                            if apply_kingress(store, event, ours, &self.publisher) {
                                publish_at.get_or_insert_with(|| next_publish(last_publish, self.options.settle));
                            }
                        }
                    }
                }
                _ = wait, if stores.iter().all(Watched::synced) => {
                    publish_at = None;
                    last_publish = Some(Instant::now());
                    let Pending { mut changes, services } = std::mem::take(&mut pending);
                    // A changed Service matters through the KIngresses that
                    // name it: those are patched, with the Service as it is now.
                    if !changes.full && !services.is_empty() {
                        changes.kingresses.extend(naming(&stores, &services));
                    }
                    self.publisher.apply(changes, &Stores { stores: &stores, class: &class });
                    self.refresh_probes(&stores);
                }
                _ = idle, if publish_at.is_none() => {
                    idle_at = None;
                    burst = 0;
                    if let Some(f) = &self.on_idle {
                        f();
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Send the KIngresses of our class to the status writer; with `--source
    /// routes`, also recompute which of them the live table serves (the probe map).
    fn refresh_probes(&self, stores: &[Watched]) {
        // Shared with the stores, not copied: there may be thousands.
        let mut all: Vec<Arc<KIngress>> = Vec::new();
        for w in stores {
            match w {
                Watched::KIngresses(s) => all.extend(s.objects.values().cloned()),
                Watched::Objects(Resource::KIngress, s, _) => {
                    all.extend(s.objects.values().filter_map(|h| h.kingress().cloned()))
                }
                Watched::Objects(..) => {}
            }
        }
        if self.options.source == SourceKind::Routes && self.options.ingress_class.is_some() {
            let table = self.publisher.reader().load();
            let previous = self.publisher.probes().snapshot();
            self.publisher.set_probes(served::probe_map(
                all.iter().map(|k| &**k),
                &table,
                &previous,
            ));
        }
        if let Some(feed) = &self.feed {
            feed.send_replace(Arc::new(all));
        }
    }
}

/// Apply a KIngress watch event (`--source routes`); true when the set of
/// KIngresses changed. KIngresses of another class are never stored.
fn apply_kingress(
    store: &mut Store<Arc<KIngress>>,
    event: Event<DynamicObject>,
    ours: Ours<'_>,
    publisher: &Publisher,
) -> bool {
    // Here KIngresses only feed the status writer and the probe map: the
    // labels kept for the authorization server are not needed.
    let ours = Ours {
        labels: false,
        ..ours
    };
    let keep = |_: &ObjectKey, obj: DynamicObject| match decode(Resource::KIngress, obj, ours) {
        Decoded::KIngress(k) => Some(k),
        Decoded::Rejected(r) => {
            tracing::warn!("{r}");
            None
        }
        _ => None,
    };
    match store.apply_event(event, publisher, keep) {
        Change::Nothing => false,
        Change::Relisted => true,
        Change::Upserted { key, old } => old.as_ref() != store.objects.get(&key),
        Change::Removed { old, .. } => old.is_some(),
    }
}

/// Which KIngresses are ours, and whether every label of one is kept.
#[derive(Debug, Clone, Copy)]
struct Ours<'a> {
    class: &'a str,
    labels: bool,
}

fn decode(resource: Resource, obj: DynamicObject, ours: Ours<'_>) -> Decoded {
    let mut value = serde_json::to_value(&obj).unwrap_or_default();
    // List items carry no kind; the watch says what they are.
    value["kind"] = resource.kind().into();
    value["apiVersion"] = resource.api_version().into();
    decode_object(value, ours.class, ours.labels)
}

/// The Services (namespace, name) the splits of `k` name.
fn services_named(k: &KIngress) -> impl Iterator<Item = (&str, &str)> + '_ {
    k.spec
        .rules
        .iter()
        .filter_map(|r| r.http.as_ref()?.paths.as_ref())
        .flatten()
        .filter_map(|p| p.splits.as_ref())
        .flatten()
        .map(|split| {
            (
                split.service_namespace.as_str(),
                split.service_name.as_str(),
            )
        })
}

/// When to publish a change seen now: at once after a quiet spell (1 ms,
/// so that what arrived together goes together), else `settle` after the
/// last publish, so that a burst builds one table per `settle`.
fn next_publish(last: Option<Instant>, settle: Duration) -> Instant {
    let soon = Instant::now() + Duration::from_millis(1);
    last.map_or(soon, |at| soon.max(at + settle))
}

/// The KIngresses whose splits name one of `services`.
fn naming(stores: &[Watched], services: &std::collections::BTreeSet<ObjectKey>) -> Vec<ObjectKey> {
    let mut out = Vec::new();
    for w in stores {
        let Watched::Objects(Resource::KIngress, store, _) = w else {
            continue;
        };
        for (key, held) in &store.objects {
            let Some(k) = held.kingress() else {
                continue;
            };
            let names = services_named(k)
                .any(|(ns, name)| services.iter().any(|s| s.name == name && s.namespace == ns));
            if names {
                out.push(key.clone());
            }
        }
    }
    out
}

/// Apply one watch event to a store of objects; true when the table needs
/// rebuilding.
fn apply(
    store: &mut Store<Held>,
    index: &mut SliceIndex,
    resource: Resource,
    event: Event<DynamicObject>,
    ours: Ours<'_>,
    publisher: &Publisher,
    pending: &mut Pending,
) -> bool {
    if resource == Resource::KIngress {
        if let Some(changed) = status_only(store, &event, ours) {
            return changed;
        }
    }
    if resource == Resource::EndpointSlice && matches!(event, Event::Init) {
        index.begin();
    }
    // The index keys of the slice this event brings, read before it is held.
    let mut new_keys = Vec::new();
    // A KIngress of another class is not stored (and one that changed class is dropped).
    let keep = |key: &ObjectKey, obj| match decode(resource, obj, ours) {
        Decoded::NotOurs => None,
        decoded => {
            if let Decoded::EndpointSlice(s) = &decoded {
                new_keys = slice_keys(s);
                // A relist's slices arrive as `Change::Nothing`: indexed here.
                index.add_listed(key, &new_keys);
            }
            Some(Held::new(decoded))
        }
    };
    let change = store.apply_event(event, publisher, keep);
    let old_keys = |key: &ObjectKey, old: &Option<Held>| {
        SliceIndex::keys_of(old.as_ref().map(|h| h.get(key)).as_deref())
    };
    match change {
        Change::Nothing => false,
        Change::Relisted => {
            if resource == Resource::EndpointSlice {
                index.finish();
            }
            pending.changes.full = true;
            true
        }
        Change::Upserted { key, old } => {
            if resource == Resource::KIngress {
                let new = store.objects.get(&key).and_then(Held::kingress);
                if let Some(k) = new {
                    // A status write (ours, mostly) changes neither the spec,
                    // the generation nor the metadata read: the table stays,
                    // only the feed is new.
                    let same = matches!(old.as_ref().and_then(Held::kingress),
                        Some(o) if o.hash == k.hash && o.generation() == k.generation()
                            && o.metadata.labels == k.metadata.labels
                            && o.metadata.annotations == k.metadata.annotations
                            && o.labels == k.labels);
                    if !same {
                        pending.changes.kingresses.insert(key);
                    }
                    return true;
                }
            }
            match resource {
                Resource::Service => {
                    pending.services.insert(key);
                }
                Resource::EndpointSlice => {
                    let old_keys = old_keys(&key, &old);
                    // Out of the keys it fed, into the ones it feeds now.
                    index.remove(&key, &old_keys);
                    index.add(&key, &new_keys);
                    pending.changes.endpoints.extend(old_keys);
                    pending.changes.endpoints.extend(new_keys);
                }
                _ => pending.changes.full = true,
            }
            true
        }
        Change::Removed { key, old } => {
            match resource {
                Resource::Service => {
                    pending.services.insert(key);
                    return old.is_some();
                }
                Resource::EndpointSlice => {
                    let old_keys = old_keys(&key, &old);
                    index.remove(&key, &old_keys);
                    pending.changes.endpoints.extend(old_keys);
                }
                _ if old.is_some() => pending.changes.full = true,
                _ => {}
            }
            old.is_some()
        }
    }
}

/// A KIngress event that changes only its status (its generation and the
/// metadata the gateway reads as stored: Kubernetes bumps the generation on
/// every spec change, not on a label or annotation), taken without decoding
/// the spec or hashing it again: during a cold start these are most events
/// (the leader's own writes), and a change made meanwhile waits behind them
/// in the watch. `None` for any other event. Whether the feed needs
/// refreshing otherwise.
fn status_only(
    store: &mut Store<Held>,
    event: &Event<DynamicObject>,
    ours: Ours<'_>,
) -> Option<bool> {
    let Event::Apply(obj) = event else {
        return None;
    };
    let key = key_of(obj);
    let old = store.objects.get(&key).and_then(Held::kingress)?;
    if obj.metadata.generation != old.metadata.generation
        || !same_metadata(old, &obj.metadata, ours.labels)
    {
        return None;
    }
    let status = obj
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let mut new = KIngress::clone(old);
    new.status = status;
    new.metadata.resource_version = obj.metadata.resource_version.clone();
    store.objects.insert(key, Held::KIngress(Arc::new(new)));
    Some(true)
}

/// Whether `meta`, a KIngress's new metadata, says what `old`'s did in all
/// the gateway reads: the labels and annotations it keeps (the class among
/// them), and every label when they are kept (`all_labels`).
fn same_metadata(old: &KIngress, meta: &kube::api::ObjectMeta, all_labels: bool) -> bool {
    use crate::model::meta::{AnnotationKeys, KeySet, LabelKeys};
    let same = |was: Option<&str>, now: Option<&String>| was == now.map(String::as_str);
    let (labels, annotations) = (meta.labels.as_ref(), meta.annotations.as_ref());
    let old_annotation = |k: &str| old.metadata.annotations.as_ref()?.get(k);
    LabelKeys::KEYS
        .iter()
        .all(|k| same(old.metadata.label(k), labels.and_then(|l| l.get(*k))))
        && AnnotationKeys::KEYS
            .iter()
            .all(|k| same(old_annotation(k), annotations.and_then(|a| a.get(*k))))
        && (!all_labels
            || old.labels.iter().eq(labels
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str()))))
}

/// The stores of one source, read when its changes are applied.
struct Stores<'a> {
    stores: &'a [Watched],
    class: &'a str,
}

impl Inputs for Stores<'_> {
    fn snapshot(&self) -> Snapshot {
        snapshot(self.stores, self.class)
    }

    fn kingresses(&self, keys: &std::collections::BTreeSet<ObjectKey>) -> KIngressUpdate {
        kingress_update(self.stores, keys)
    }

    fn endpoints(&self, keys: &std::collections::BTreeSet<String>) -> EndpointsNow {
        endpoints_of(self.stores, keys)
    }
}

/// The changed KIngresses, the Services they name and those Services'
/// EndpointSlices, from the stores.
fn kingress_update(
    stores: &[Watched],
    keys: &std::collections::BTreeSet<ObjectKey>,
) -> KIngressUpdate {
    let store_of = |resource: Resource| {
        stores.iter().find_map(|w| match w {
            Watched::Objects(r, store, index) if *r == resource => Some((store, index)),
            _ => None,
        })
    };
    let mut update = KIngressUpdate::default();
    let Some((kingresses, _)) = store_of(Resource::KIngress) else {
        return update;
    };
    let mut named = std::collections::BTreeSet::new();
    for key in keys {
        if let Some(k) = kingresses.objects.get(key).and_then(Held::kingress) {
            named.extend(services_named(k).map(|(ns, name)| ObjectKey::new(ns, name)));
            update.kingresses.push(k.clone());
        }
    }
    if let Some((services, _)) = store_of(Resource::Service) {
        for key in &named {
            if let Some(Decoded::Service(svc)) = services.decoded(key) {
                update.services.push(svc);
            }
        }
    }
    if let Some((slices, index)) = store_of(Resource::EndpointSlice) {
        for key in &named {
            let feeding = dataplane::endpoints::service_key(&key.namespace, &key.name);
            for (_, decoded) in slices.slices_behind(index, &feeding) {
                if let Decoded::EndpointSlice(s) = decoded {
                    update.slices.push(s);
                }
            }
        }
    }
    update
}

/// The slices now behind each of `keys` from every slice store, the slices
/// read, and their rejections.
fn endpoints_of(stores: &[Watched], keys: &std::collections::BTreeSet<String>) -> EndpointsNow {
    let mut updates: BTreeMap<&str, EndpointUpdate> = keys
        .iter()
        .map(|k| {
            let update = EndpointUpdate {
                key: k.clone(),
                slices: Vec::new(),
            };
            (k.as_str(), update)
        })
        .collect();
    let mut slices = Vec::new();
    let mut rejected = Vec::new();
    // Only the slices of the changed keys, through each slice watch's index.
    let indexed = stores.iter().filter_map(|w| match w {
        Watched::Objects(Resource::EndpointSlice, store, index) => Some((store, index)),
        _ => None,
    });
    for (store, index) in indexed {
        for key in keys {
            for (slice_key, decoded) in store.slices_behind(index, key) {
                let Decoded::EndpointSlice(slice) = decoded else {
                    continue;
                };
                if !slices.contains(&slice_key) {
                    slices.push(slice_key.clone());
                }
                match slice_endpoints(&slice, &mut rejected) {
                    Ok(Some((_, found))) => {
                        if let Some(u) = updates.get_mut(key.as_str()) {
                            u.slices.push(found);
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        rejected.push(Rejection::new(Kind::EndpointSlice, slice_key, error))
                    }
                }
            }
        }
    }
    // A slice feeding two changed keys was read twice: report it once.
    rejected.dedup();
    EndpointsNow {
        updates: updates.into_values().collect(),
        slices,
        rejected,
    }
}

/// Everything a full build reads, decoded from the stores. With KIngresses
/// watched, only the Services their splits name and those Services'
/// EndpointSlices (found through the slice index) are read; the others stay
/// held, so a KIngress that starts naming one is patched in at once.
fn snapshot(stores: &[Watched], class: &str) -> Snapshot {
    let mut s = Snapshot::for_class(class);
    let named = named_services(stores);
    for w in stores {
        let Watched::Objects(resource, store, index) = w else {
            continue;
        };
        match (resource, &named) {
            (Resource::Service, Some(named)) => {
                for (ns, name) in named {
                    if let Some(decoded) = store.decoded(&ObjectKey::new(*ns, *name)) {
                        s.push(decoded);
                    }
                }
            }
            (Resource::EndpointSlice, Some(named)) => {
                for (ns, name) in named {
                    let feeding = dataplane::endpoints::service_key(ns, name);
                    for (_, decoded) in store.slices_behind(index, &feeding) {
                        s.push(decoded);
                    }
                }
            }
            _ => {
                for (key, held) in &store.objects {
                    s.push(held.get(key).into_owned());
                }
            }
        }
    }
    s
}

/// With KIngresses watched: the Services (namespace, name) their splits
/// name, in order.
fn named_services(stores: &[Watched]) -> Option<std::collections::BTreeSet<(&str, &str)>> {
    let kingresses = stores.iter().find_map(|w| match w {
        Watched::Objects(Resource::KIngress, store, _) => Some(store),
        _ => None,
    })?;
    let mut named = std::collections::BTreeSet::new();
    for held in kingresses.objects.values() {
        if let Some(k) = held.kingress() {
            named.extend(services_named(k));
        }
    }
    Some(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_doubles_up_to_the_cap_with_jitter_and_never_gives_up() {
        let max = Duration::from_secs(5);
        let delays: Vec<Duration> = watch_backoff(max).take(50).collect();
        assert_eq!(delays.len(), 50, "keeps retrying");
        // Each delay is its base plus up to 100% jitter: 0.5, 1, 2, 4, then 5 s.
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(500 * (1 << i.min(4))).min(max);
            assert!(
                *d >= base && *d <= base * 2,
                "retry {i}: {d:?}, base {base:?}"
            );
        }
        let tail = &delays[10..];
        assert!(
            tail.iter().any(|d| *d != tail[0]),
            "jittered, so replicas spread out: {tail:?}"
        );
    }

    #[test]
    fn a_cap_below_the_first_delay_lowers_the_first_delay() {
        let max = Duration::from_millis(100);
        assert!(watch_backoff(max).take(10).all(|d| d <= max * 2));
    }
}
