//! The Kubernetes source: watches `routes.serving.knative.dev/v1` and the
//! `discovery.k8s.io/v1` EndpointSlices labelled with a revision, keeps a
//! store per watch, and publishes a table after each burst of changes.
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

use crate::build::{slice_endpoints, slice_revision};
use crate::error::Rejection;
use crate::kingress::{self, KIngress};
use crate::model::{decode_object, Decoded, Kind, ObjectKey, Snapshot, REVISION_LABEL};
use crate::publish::Publisher;
use crate::table::EndpointUpdate;

/// What a burst of events requires.
#[derive(Default)]
struct Pending {
    /// Rebuild everything (a Route changed, or a relist completed).
    full: bool,
    /// Revisions whose endpoints changed.
    revisions: std::collections::BTreeSet<ObjectKey>,
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Namespaces to watch; empty means cluster-wide.
    pub namespaces: Vec<String>,
    /// Quiet time after a change before publishing, so a burst builds one table.
    pub settle: Duration,
    /// KIngress class to implement (probe answers); `None` watches no KIngress.
    pub ingress_class: Option<String>,
    /// Longest wait between retries while the API server is unreachable,
    /// before jitter (which adds up to as much again).
    pub max_backoff: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            settle: Duration::from_millis(10),
            ingress_class: None,
            max_backoff: DEFAULT_MAX_BACKOFF,
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
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural)
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Route => "Route",
            Resource::EndpointSlice => "EndpointSlice",
            Resource::KIngress => "Ingress",
        }
    }
}

/// One watch's objects. A relist is buffered and swapped in whole at
/// `InitDone`, so deletions missed while disconnected disappear there.
struct Store<T> {
    objects: BTreeMap<ObjectKey, T>,
    pending: Option<BTreeMap<ObjectKey, T>>,
    synced: bool,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            pending: None,
            synced: false,
        }
    }
}

/// What one watch event did to a store.
enum Change<T> {
    /// Nothing the table depends on.
    Nothing,
    /// A complete relist was swapped in.
    Relisted,
    /// `key` was added or replaced; `old` is what it replaced.
    Upserted { key: ObjectKey, old: Option<T> },
    /// `key` was deleted; `old` is what was stored, if anything.
    Removed { key: ObjectKey, old: Option<T> },
}

fn key_of(obj: &DynamicObject) -> ObjectKey {
    ObjectKey::new(
        obj.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

impl<T> Store<T> {
    /// Apply one watch event; `decode` turns an object into what is stored, or
    /// `None` to ignore it (a KIngress of another class).
    fn apply_event(
        &mut self,
        event: Event<DynamicObject>,
        publisher: &Publisher,
        decode: impl Fn(DynamicObject) -> Option<T>,
    ) -> Change<T> {
        match event {
            Event::Init => {
                if self.synced {
                    publisher.report_relist();
                }
                self.pending = Some(BTreeMap::new());
                Change::Nothing
            }
            Event::InitApply(obj) => {
                let key = key_of(&obj);
                if let Some(item) = decode(obj) {
                    self.pending
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, item);
                }
                Change::Nothing
            }
            Event::InitDone => {
                self.objects = self.pending.take().unwrap_or_default();
                self.synced = true;
                Change::Relisted
            }
            Event::Apply(obj) => {
                let key = key_of(&obj);
                match decode(obj) {
                    Some(item) => {
                        let old = self.objects.insert(key.clone(), item);
                        Change::Upserted { key, old }
                    }
                    None => {
                        let old = self.objects.remove(&key);
                        Change::Removed { key, old }
                    }
                }
            }
            Event::Delete(obj) => {
                let key = key_of(&obj);
                let old = self.objects.remove(&key);
                Change::Removed { key, old }
            }
        }
    }
}

/// The store of one watch: Routes or EndpointSlices (decoded into the model),
/// or KIngresses of our class.
enum Watched {
    Objects(Resource, Store<Decoded>, SliceIndex),
    KIngresses(Store<KIngress>),
}

/// For an EndpointSlice watch: `namespace/revision` → its slices, so an
/// endpoint change reads only the changed revisions' slices.
#[derive(Default)]
struct SliceIndex(std::collections::HashMap<ObjectKey, std::collections::BTreeSet<ObjectKey>>);

impl SliceIndex {
    fn revision_of(decoded: Option<&Decoded>) -> Option<ObjectKey> {
        match decoded {
            Some(Decoded::EndpointSlice(s)) => slice_revision(s),
            _ => None,
        }
    }

    fn remove(&mut self, slice: &ObjectKey, decoded: Option<&Decoded>) {
        if let Some(rev) = Self::revision_of(decoded) {
            if let Some(set) = self.0.get_mut(&rev) {
                set.remove(slice);
                if set.is_empty() {
                    self.0.remove(&rev);
                }
            }
        }
    }

    fn insert(&mut self, slice: &ObjectKey, decoded: Option<&Decoded>) {
        if let Some(rev) = Self::revision_of(decoded) {
            self.0.entry(rev).or_default().insert(slice.clone());
        }
    }

    fn rebuild(&mut self, objects: &BTreeMap<ObjectKey, Decoded>) {
        self.0.clear();
        for (key, decoded) in objects {
            self.insert(key, Some(decoded));
        }
    }
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
    feed: Option<watch::Sender<Arc<Vec<KIngress>>>>,
}

impl KubeSource {
    /// A source reading through `client`.
    pub fn new(client: Client, publisher: Arc<Publisher>, options: KubeOptions) -> Self {
        Self {
            client,
            publisher,
            options,
            feed: None,
        }
    }

    /// Also send every new set of KIngresses of our class to `feed` (the status writer).
    pub fn feed_kingresses(mut self, feed: watch::Sender<Arc<Vec<KIngress>>>) -> Self {
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
        for scope in &scopes {
            let mut resources = vec![Resource::Route, Resource::EndpointSlice];
            if self.options.ingress_class.is_some() {
                resources.push(Resource::KIngress);
            }
            for resource in resources {
                let ar = resource.api_resource();
                let api: Api<DynamicObject> = match scope {
                    Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                    None => Api::all_with(self.client.clone(), &ar),
                };
                let config = match resource {
                    // Server-side selection: only revision slices travel.
                    Resource::EndpointSlice => watcher::Config::default().labels(REVISION_LABEL),
                    Resource::Route | Resource::KIngress => watcher::Config::default(),
                };
                let index = stores.len();
                stores.push(match resource {
                    Resource::KIngress => Watched::KIngresses(Store::default()),
                    other => Watched::Objects(other, Store::default(), SliceIndex::default()),
                });
                streams.push(
                    watcher::watcher(api, config)
                        .backoff(watch_backoff(self.options.max_backoff))
                        .map(move |event| (index, event))
                        .boxed(),
                );
            }
        }
        let mut events = futures::stream::select_all(streams);
        let mut publish_at: Option<Instant> = None;
        let mut pending = Pending::default();
        let class = self.options.ingress_class.clone().unwrap_or_default();

        loop {
            let wait = async {
                match publish_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = events.next() => {
                    let Some((index, event)) = next else { return };
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
                            if apply(store, index, *resource, event, &self.publisher, &mut pending) {
                                publish_at.get_or_insert_with(|| Instant::now() + self.options.settle);
                            }
                        }
                        Watched::KIngresses(store) => {
                            if apply_kingress(store, event, &class, &self.publisher) {
                                self.refresh_probes(&stores);
                            }
                        }
                    }
                }
                _ = wait, if stores.iter().all(Watched::synced) => {
                    publish_at = None;
                    let done = std::mem::take(&mut pending);
                    if done.full || !self.publisher.is_ready() {
                        self.publisher.publish(snapshot(&stores));
                    } else {
                        // Endpoints only: swap those revisions, share every route.
                        let (updates, slices, rejected) = endpoints_of(&stores, &done.revisions);
                        self.publisher.publish_endpoints(&updates, &slices, rejected);
                    }
                    self.refresh_probes(&stores);
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Recompute which KIngresses the live table serves.
    fn refresh_probes(&self, stores: &[Watched]) {
        if self.options.ingress_class.is_none() {
            return;
        }
        let table = self.publisher.reader().load();
        let all = stores.iter().flat_map(|w| match w {
            Watched::KIngresses(s) => Some(s.objects.values()),
            Watched::Objects(..) => None,
        });
        let all = all.flatten();
        let previous = self.publisher.probes().snapshot();
        self.publisher
            .set_probes(kingress::probe_map(all.clone(), &table, &previous));
        if let Some(feed) = &self.feed {
            feed.send_replace(Arc::new(all.cloned().collect()));
        }
    }
}

/// Apply a KIngress watch event; true when the set of KIngresses changed.
/// KIngresses of another class (or none) are never stored, never touched.
fn apply_kingress(
    store: &mut Store<KIngress>,
    event: Event<DynamicObject>,
    class: &str,
    publisher: &Publisher,
) -> bool {
    let ours = |obj: DynamicObject| {
        let value = serde_json::to_value(&obj).unwrap_or_default();
        match kingress::decode(&value, class)? {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("KIngress {} skipped: {e}", key_of(&obj));
                None
            }
        }
    };
    match store.apply_event(event, publisher, ours) {
        Change::Nothing => false,
        Change::Relisted => true,
        Change::Upserted { key, old } => old.as_ref() != store.objects.get(&key),
        Change::Removed { old, .. } => old.is_some(),
    }
}

fn decode(resource: Resource, obj: DynamicObject) -> Decoded {
    let mut value = serde_json::to_value(&obj).unwrap_or_default();
    // List items carry no kind; the watch says what they are.
    value["kind"] = resource.kind().into();
    decode_object(value)
}

/// Note what a changed object requires: the revisions of a slice (before and
/// after), or a full rebuild for anything else.
fn note(pending: &mut Pending, resource: Resource, decoded: Option<&Decoded>) {
    match (resource, decoded) {
        (Resource::EndpointSlice, Some(Decoded::EndpointSlice(s))) => {
            pending.revisions.extend(slice_revision(s));
        }
        (Resource::EndpointSlice, None) => {}
        _ => pending.full = true,
    }
}

/// Apply one Route or EndpointSlice watch event; true when the table needs rebuilding.
fn apply(
    store: &mut Store<Decoded>,
    index: &mut SliceIndex,
    resource: Resource,
    event: Event<DynamicObject>,
    publisher: &Publisher,
    pending: &mut Pending,
) -> bool {
    match store.apply_event(event, publisher, |obj| Some(decode(resource, obj))) {
        Change::Nothing => false,
        Change::Relisted => {
            if resource == Resource::EndpointSlice {
                index.rebuild(&store.objects);
            }
            pending.full = true;
            true
        }
        Change::Upserted { key, old } => {
            let new = store.objects.get(&key);
            note(pending, resource, new);
            note(pending, resource, old.as_ref());
            if resource == Resource::EndpointSlice {
                index.remove(&key, old.as_ref());
                index.insert(&key, new);
            }
            true
        }
        Change::Removed { key, old } => {
            note(pending, resource, old.as_ref());
            if resource == Resource::EndpointSlice {
                index.remove(&key, old.as_ref());
            }
            old.is_some()
        }
    }
}

/// The objects of every Route and EndpointSlice store.
fn objects(stores: &[Watched]) -> impl Iterator<Item = (&ObjectKey, &Decoded)> {
    stores
        .iter()
        .flat_map(|w| match w {
            Watched::Objects(_, s, _) => Some(s.objects.iter()),
            Watched::KIngresses(_) => None,
        })
        .flatten()
}

/// The endpoints of `revisions` from every slice store, the slices read, and
/// their rejections.
fn endpoints_of(
    stores: &[Watched],
    revisions: &std::collections::BTreeSet<ObjectKey>,
) -> (Vec<EndpointUpdate>, Vec<ObjectKey>, Vec<Rejection>) {
    let mut addrs: BTreeMap<ObjectKey, Vec<std::net::SocketAddr>> =
        revisions.iter().map(|r| (r.clone(), Vec::new())).collect();
    let mut slices = Vec::new();
    let mut rejected = Vec::new();
    // Only the slices of the changed revisions, through each slice watch's index.
    let indexed = stores.iter().filter_map(|w| match w {
        Watched::Objects(Resource::EndpointSlice, store, index) => Some((store, index)),
        _ => None,
    });
    let found = indexed.flat_map(|(store, index)| {
        revisions
            .iter()
            .filter_map(|rev| index.0.get(rev).map(|keys| (rev, keys)))
            .flat_map(move |(rev, keys)| {
                keys.iter()
                    .filter_map(move |k| Some((rev, k, store.objects.get(k)?)))
            })
    });
    for (rev, key, decoded) in found {
        let Decoded::EndpointSlice(slice) = decoded else {
            continue;
        };
        let rev = rev.clone();
        slices.push(key.clone());
        match slice_endpoints(slice, &mut rejected) {
            Ok(Some((_, found))) => addrs.entry(rev).or_default().extend(found),
            Ok(None) => {}
            Err(error) => rejected.push(Rejection::new(Kind::EndpointSlice, key.clone(), error)),
        }
    }
    let updates = addrs
        .into_iter()
        .map(|(revision, mut addrs)| {
            addrs.sort_unstable();
            addrs.dedup();
            EndpointUpdate { revision, addrs }
        })
        .collect();
    (updates, slices, rejected)
}

fn snapshot(stores: &[Watched]) -> Snapshot {
    let mut s = Snapshot::default();
    for (_, decoded) in objects(stores) {
        s.push(decoded.clone());
    }
    s
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
