//! What the Kubernetes source holds of each watch: its objects by key, in a
//! compact form, and for EndpointSlices the index from endpoint keys to the
//! slices feeding them.
//!
//! At the size of large Knative installs most watched objects are Services
//! and EndpointSlices, and most of those no KIngress names. Each is held as
//! its trimmed JSON (one allocation of about 250 bytes), not decoded (a
//! map node share of half a kilobyte plus a dozen small allocations), and
//! decoded when a build reads it: a KIngress that starts naming one is
//! served from it at once.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::api::DynamicObject;
use kube::runtime::watcher::Event;

use crate::compiler::slice_keys;
use crate::error::{ObjectError, Rejection};
use crate::model::{Decoded, KIngress, Kind, ObjectKey, ObjectMeta};
use crate::publish::Publisher;

/// One stored object.
#[derive(Debug)]
pub(super) enum Held {
    /// A Service or an EndpointSlice, as the JSON of its decoded form.
    Text(Kind, Box<str>),
    /// A KIngress of our class, shared with the status writer and the
    /// last-good set.
    KIngress(Arc<KIngress>),
    /// Anything else, decoded.
    Decoded(Box<Decoded>),
}

impl Held {
    /// The held form of `decoded`.
    pub(super) fn new(mut decoded: Decoded) -> Self {
        let text = match &mut decoded {
            Decoded::Service(s) => {
                trim(&mut s.metadata);
                serde_json::to_string(s).map(|t| (Kind::Service, t))
            }
            Decoded::EndpointSlice(s) => {
                trim(&mut s.metadata);
                serde_json::to_string(s).map(|t| (Kind::EndpointSlice, t))
            }
            Decoded::KIngress(k) => return Held::KIngress(k.clone()),
            _ => return Held::Decoded(Box::new(decoded)),
        };
        match text {
            Ok((kind, text)) => Held::Text(kind, text.into_boxed_str()),
            // The model's types always serialize; should one not, it stays decoded.
            Err(_) => Held::Decoded(Box::new(decoded)),
        }
    }

    /// The object `key` as decoded. Text this source wrote decodes; were it
    /// not to, the object is rejected by name rather than lost silently.
    pub(super) fn get(&self, key: &ObjectKey) -> Cow<'_, Decoded> {
        let reject = |kind, e: serde_json::Error| {
            let error = ObjectError::Decode {
                path: "(held form)".into(),
                message: e.to_string(),
            };
            Decoded::Rejected(Rejection::new(kind, key.clone(), error))
        };
        // The key is held once, beside the text, not in it.
        let named = |meta: &mut ObjectMeta| {
            meta.namespace = Some(key.namespace.clone());
            meta.name = Some(key.name.clone());
        };
        match self {
            Held::Text(Kind::Service, text) => Cow::Owned(
                serde_json::from_str(text)
                    .map(|mut s: crate::model::Service| {
                        named(&mut s.metadata);
                        Decoded::Service(s)
                    })
                    .unwrap_or_else(|e| reject(Kind::Service, e)),
            ),
            Held::Text(kind, text) => Cow::Owned(
                serde_json::from_str(text)
                    .map(|mut s: crate::model::EndpointSlice| {
                        named(&mut s.metadata);
                        Decoded::EndpointSlice(s)
                    })
                    .unwrap_or_else(|e| reject(*kind, e)),
            ),
            Held::KIngress(k) => Cow::Owned(Decoded::KIngress(k.clone())),
            Held::Decoded(d) => Cow::Borrowed(d),
        }
    }

    /// The KIngress held, if this is one.
    pub(super) fn kingress(&self) -> Option<&Arc<KIngress>> {
        match self {
            Held::KIngress(k) => Some(k),
            _ => None,
        }
    }
}

/// Drop what no build reads of a Service's or EndpointSlice's metadata:
/// its version, generation, creation time and annotations (KIngresses use
/// those, not the objects they name), and its name and namespace, which the
/// store's key holds.
fn trim(meta: &mut ObjectMeta) {
    meta.name = None;
    meta.namespace = None;
    meta.resource_version = None;
    meta.generation = None;
    meta.creation_timestamp = None;
    meta.annotations = None;
}

/// One watch's objects. A relist is buffered and swapped in whole at
/// `InitDone`, so deletions missed while disconnected disappear there.
pub(super) struct Store<T> {
    /// The objects by key.
    pub(super) objects: BTreeMap<ObjectKey, T>,
    /// A relist under way, in the order it arrives; built into a map whole
    /// at its end, with full nodes (inserted one at a time, in key order,
    /// a B-tree's nodes end up a third empty).
    pending: Option<Vec<(ObjectKey, T)>>,
    /// Whether a complete list has arrived.
    pub(super) synced: bool,
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

impl Store<Held> {
    /// Object `key`, decoded, if held.
    pub(super) fn decoded(&self, key: &ObjectKey) -> Option<Decoded> {
        self.objects.get(key).map(|h| h.get(key).into_owned())
    }

    /// The slices `index` finds behind endpoint key `key`, decoded, with
    /// their keys.
    pub(super) fn slices_behind<'a>(
        &'a self,
        index: &'a SliceIndex,
        key: &'a str,
    ) -> impl Iterator<Item = (ObjectKey, Decoded)> + 'a {
        index.slices_of(key).filter_map(|slice| {
            let decoded = self.decoded(&slice)?;
            Some((slice, decoded))
        })
    }
}

/// What one watch event did to a store.
pub(super) enum Change<T> {
    /// Nothing the table depends on.
    Nothing,
    /// A complete relist was swapped in.
    Relisted,
    /// `key` was added or replaced; `old` is what it replaced.
    Upserted { key: ObjectKey, old: Option<T> },
    /// `key` was deleted; `old` is what was stored, if anything.
    Removed { key: ObjectKey, old: Option<T> },
}

/// `namespace/name` of a watched object, with kubectl's `default` namespace.
pub(super) fn key_of(obj: &DynamicObject) -> ObjectKey {
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
    pub(super) fn apply_event(
        &mut self,
        event: Event<DynamicObject>,
        publisher: &Publisher,
        mut decode: impl FnMut(&ObjectKey, DynamicObject) -> Option<T>,
    ) -> Change<T> {
        match event {
            Event::Init => {
                if self.synced {
                    publisher.report_relist();
                }
                self.pending = Some(Vec::new());
                Change::Nothing
            }
            Event::InitApply(obj) => {
                let key = key_of(&obj);
                if let Some(item) = decode(&key, obj) {
                    self.pending.get_or_insert_with(Vec::new).push((key, item));
                }
                Change::Nothing
            }
            Event::InitDone => {
                // Listed twice (a page boundary moved): the later one wins.
                self.objects = self
                    .pending
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                self.synced = true;
                Change::Relisted
            }
            Event::Apply(obj) => {
                let key = key_of(&obj);
                match decode(&key, obj) {
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

/// For an EndpointSlice watch: endpoint index key → the names of its slices
/// (a slice is in its key's namespace), so an endpoint change reads only the
/// changed keys' slices. Each key's names are a sorted vector: most keys
/// have one. A relist builds a new index beside the old one as its slices
/// arrive, swapped in with them.
#[derive(Default)]
pub(super) struct SliceIndex {
    keys: HashMap<Box<str>, Vec<Box<str>>, foldhash::fast::RandomState>,
    pending: Option<HashMap<Box<str>, Vec<Box<str>>, foldhash::fast::RandomState>>,
}

impl SliceIndex {
    /// The endpoint index keys `decoded` (an EndpointSlice) feeds.
    pub(super) fn keys_of(decoded: Option<&Decoded>) -> Vec<String> {
        match decoded {
            Some(Decoded::EndpointSlice(s)) => slice_keys(s),
            _ => Vec::new(),
        }
    }

    /// The slices feeding `key`.
    pub(super) fn slices_of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = ObjectKey> + 'a {
        // `r/<namespace>/<name>` or `s/<namespace>/<name>`.
        let namespace = key.split('/').nth(1).unwrap_or_default();
        self.keys
            .get(key)
            .into_iter()
            .flatten()
            .map(move |name| ObjectKey::new(namespace, &**name))
    }

    /// Start indexing a relist.
    pub(super) fn begin(&mut self) {
        self.pending = Some(HashMap::default());
    }

    /// Index a slice in the live set.
    pub(super) fn add(&mut self, slice: &ObjectKey, keys: &[String]) {
        insert(&mut self.keys, slice, keys);
    }

    /// Index a slice of the relist under way; nothing without one.
    pub(super) fn add_listed(&mut self, slice: &ObjectKey, keys: &[String]) {
        if let Some(next) = &mut self.pending {
            insert(next, slice, keys);
        }
    }

    /// The relist is complete: its index replaces the live one.
    pub(super) fn finish(&mut self) {
        if let Some(next) = self.pending.take() {
            self.keys = next;
        }
    }

    /// Drop a slice from the live index.
    pub(super) fn remove(&mut self, slice: &ObjectKey, keys: &[String]) {
        for key in keys {
            if let Some(names) = self.keys.get_mut(key.as_str()) {
                if let Ok(i) = names.binary_search_by(|n| (**n).cmp(slice.name.as_str())) {
                    names.remove(i);
                }
                if names.is_empty() {
                    self.keys.remove(key.as_str());
                }
            }
        }
    }
}

/// `slice` under each of `keys` in `map`, once.
fn insert(
    map: &mut HashMap<Box<str>, Vec<Box<str>>, foldhash::fast::RandomState>,
    slice: &ObjectKey,
    keys: &[String],
) {
    for key in keys {
        let names = map.entry(key.as_str().into()).or_default();
        if let Err(i) = names.binary_search_by(|n| (**n).cmp(slice.name.as_str())) {
            names.insert(i, slice.name.as_str().into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decode_object;

    fn decoded(value: serde_json::Value) -> Decoded {
        decode_object(value, crate::model::kingress::DEFAULT_CLASS, false)
    }

    #[test]
    fn services_and_slices_are_held_as_text_and_read_back_the_same() {
        let key = ObjectKey::new("ns", "web");
        let service = decoded(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "7",
                         "creationTimestamp": "2026-12-05T10:00:00Z",
                         "labels": {"serving.knative.dev/revision": "web-1", "other": "x"}},
            "spec": {"type": "ExternalName", "externalName": "gw.svc",
                     "ports": [{"name": "http2", "port": 80, "targetPort": "h2c",
                                "appProtocol": "kubernetes.io/h2c"},
                               {"port": 81, "targetPort": 8081}]}
        }));
        let slice = decoded(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8012}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false}},
                          {"addresses": ["10.0.0.2"]}]
        }));
        let slice_key = ObjectKey::new("ns", "web-x");
        for (key, mut object) in [(key, service), (slice_key, slice)] {
            let held = Held::new(object.clone());
            let keep_key = |meta: &mut ObjectMeta| {
                let (ns, name) = (meta.namespace.take(), meta.name.take());
                trim(meta);
                (meta.namespace, meta.name) = (ns, name);
            };
            match &mut object {
                Decoded::Service(s) => keep_key(&mut s.metadata),
                Decoded::EndpointSlice(s) => keep_key(&mut s.metadata),
                _ => {}
            }
            let Held::Text(_, text) = &held else {
                panic!("not held as text: {held:?}");
            };
            assert!(
                !text.contains("null") && !text.contains("\"ns\""),
                "no nulls, and the key is not repeated: {text}"
            );
            match (&*held.get(&key), &object) {
                (Decoded::Service(a), Decoded::Service(b)) => assert_eq!(a, b),
                (Decoded::EndpointSlice(a), Decoded::EndpointSlice(b)) => assert_eq!(a, b),
                other => panic!("read back as another kind: {other:?}"),
            }
        }
    }

    #[test]
    fn a_relist_replaces_the_objects_whole_and_the_later_of_a_key_listed_twice_wins() {
        let publisher = Publisher::new(Default::default());
        let obj = |name: &str, v: &str| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "ns"}, "data": {"v": v}}))
            .unwrap()
        };
        let mut store: Store<String> = Store::default();
        let value = |_: &ObjectKey, o: DynamicObject| Some(o.data["data"]["v"].to_string());
        store.apply_event(Event::Apply(obj("gone", "0")), &publisher, value);
        store.apply_event(Event::Init, &publisher, value);
        for (name, v) in [("b", "1"), ("a", "1"), ("c", "1"), ("a", "2")] {
            store.apply_event(Event::InitApply(obj(name, v)), &publisher, value);
        }
        assert_eq!(
            store.objects.len(),
            1,
            "the live set stands until the relist is done"
        );
        assert!(matches!(
            store.apply_event(Event::InitDone, &publisher, value),
            Change::Relisted
        ));
        let held: Vec<(String, String)> = store
            .objects
            .iter()
            .map(|(k, v)| (k.name.clone(), v.clone()))
            .collect();
        let want = [("a", "\"2\""), ("b", "\"1\""), ("c", "\"1\"")];
        assert_eq!(held, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn text_that_does_not_decode_is_a_rejection_naming_the_object() {
        let key = ObjectKey::new("ns", "web");
        let held = Held::Text(Kind::Service, "{\"spec\": 1}".into());
        let Decoded::Rejected(r) = &*held.get(&key) else {
            panic!("not rejected");
        };
        assert_eq!(r.object, key);
        assert_eq!(r.kind, Kind::Service);
    }

    #[test]
    fn the_slice_index_names_slices_by_key_and_swaps_a_relist_whole() {
        let mut index = SliceIndex::default();
        let (a, b) = (ObjectKey::new("ns", "web-a"), ObjectKey::new("ns", "web-b"));
        let keys = vec!["s/ns/web".to_owned(), "r/ns/web-1".to_owned()];
        index.add(&b, &keys);
        index.add(&a, &keys);
        index.add(&a, &keys);
        assert_eq!(
            index.slices_of("s/ns/web").collect::<Vec<_>>(),
            [a.clone(), b.clone()]
        );
        index.remove(&a, &keys);
        assert_eq!(
            index.slices_of("r/ns/web-1").collect::<Vec<_>>(),
            [&b].map(Clone::clone)
        );
        // Without a relist under way, a listed slice is not indexed.
        index.add_listed(&a, &keys);
        assert_eq!(index.slices_of("s/ns/web").count(), 1);
        // A relist under way leaves the live index as it is until it is done.
        index.begin();
        index.add_listed(&a, &keys[..1]);
        assert_eq!(index.slices_of("s/ns/web").collect::<Vec<_>>(), [b]);
        index.finish();
        assert_eq!(index.slices_of("s/ns/web").collect::<Vec<_>>(), [a]);
        assert_eq!(index.slices_of("r/ns/web-1").count(), 0);
    }
}
