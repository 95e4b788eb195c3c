//! The snapshot-file source: a multi-document YAML (or a `kind: List`) of
//! Routes and EndpointSlices, or KIngresses, Services and EndpointSlices (or
//! both), exactly as `kubectl get -o yaml` prints them.
//!
//! The file's directory is watched (inotify), not the file itself, so that
//! atomic renames and Kubernetes ConfigMap symlink swaps are seen; a slow poll
//! backs the watch up. The poll reads the file only when its metadata changed
//! (a 10,000-route snapshot is 17 MB), and content is hashed so a touch
//! without change costs no rebuild.

use std::ffi::OsStr;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::{watch, Notify};

use crate::error::SourceError;
use crate::model::Snapshot;
use crate::publish::Publisher;

/// A YAML syntax error with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What the parser said.
    pub message: String,
}

/// Parse snapshot text. Only YAML syntax errors fail the whole text; an object
/// of the wrong shape becomes a rejection inside the snapshot.
pub fn parse(text: &str) -> Result<Snapshot, SyntaxError> {
    parse_for_class(text, crate::model::kingress::DEFAULT_CLASS)
}

/// [`parse`], keeping the KIngresses of `class`.
pub fn parse_for_class(text: &str, class: &str) -> Result<Snapshot, SyntaxError> {
    parse_into(text, Snapshot::for_class(class))
}

/// [`parse`] into `snapshot` (empty, with its class and what it keeps).
pub fn parse_into(text: &str, mut snapshot: Snapshot) -> Result<Snapshot, SyntaxError> {
    for document in serde_norway::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(document).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            SyntaxError {
                line,
                column,
                message: e.to_string(),
            }
        })?;
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Object(mut o)
                if o.get("kind").and_then(|k| k.as_str()) == Some("List") =>
            {
                // Taken, not cloned: a List holds the whole snapshot.
                if let Some(serde_json::Value::Array(items)) = o.remove("items") {
                    for item in items {
                        snapshot.push_value(item);
                    }
                }
            }
            other => snapshot.push_value(other),
        }
    }
    Ok(snapshot)
}

/// Read and parse a snapshot file; errors name the file (and line and column).
pub fn load(path: &Path, class: &str) -> Result<Snapshot, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_for_class(&text, class).map_err(|e| syntax(path, e))
}

fn syntax(path: &Path, e: SyntaxError) -> SourceError {
    SourceError::Syntax {
        path: path.to_owned(),
        line: e.line,
        column: e.column,
        message: e.message,
    }
}

/// Watches a snapshot file and publishes a new table whenever its content changes.
pub struct FileSource {
    path: PathBuf,
    publisher: Arc<Publisher>,
    /// KIngress class kept from the file.
    class: String,
    /// Keep every label of a KIngress ([`Snapshot::labels`]).
    labels: bool,
    /// Safety-net poll interval, for file systems where inotify says nothing.
    pub poll_interval: Duration,
    /// Quiet time after a change event before reading, to coalesce a burst of writes.
    pub settle: Duration,
    /// Hash of the content last read, good or bad: unchanged content is not re-parsed.
    last_hash: Option<u64>,
    /// Hash of the content the live table was built from.
    served_hash: Option<u64>,
    /// Metadata of the file when it was last read.
    last_stamp: Option<Stamp>,
    last_error: Option<String>,
}

/// What the poll compares to tell whether the file may have changed: any
/// write moves `ctime`, and a rename or symlink swap changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        // metadata() follows symlinks: a ConfigMap's `..data` swap is seen.
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

impl FileSource {
    /// A source for `path` feeding `publisher`.
    pub fn new(path: impl Into<PathBuf>, publisher: Arc<Publisher>) -> Self {
        Self {
            path: path.into(),
            publisher,
            class: crate::model::kingress::DEFAULT_CLASS.into(),
            labels: false,
            poll_interval: Duration::from_secs(1),
            settle: Duration::from_millis(2),
            last_hash: None,
            served_hash: None,
            last_stamp: None,
            last_error: None,
        }
    }

    /// Keep the KIngresses of `class` (default: [`crate::model::kingress::DEFAULT_CLASS`]).
    pub fn with_class(mut self, class: &str) -> Self {
        self.class = class.into();
        self
    }

    /// Keep every label of a KIngress, for the authorization server.
    pub fn with_labels(mut self, labels: bool) -> Self {
        self.labels = labels;
        self
    }

    /// An empty snapshot of what this source keeps.
    fn empty(&self) -> Snapshot {
        Snapshot::for_class(&self.class).keeping_labels(self.labels)
    }

    /// The first load, at start: any error is returned so the caller can refuse to start.
    pub fn load_initial(&mut self) -> Result<(), SourceError> {
        let bytes = self.read()?;
        let snapshot = parse_into(&String::from_utf8_lossy(&bytes), self.empty())
            .map_err(|e| syntax(&self.path, e))?;
        self.last_hash = Some(hash(&bytes));
        self.served_hash = self.last_hash;
        // The text is not needed to build: free it first, it is the peak.
        drop(bytes);
        self.publisher.publish(snapshot);
        Ok(())
    }

    /// Watch until `shutdown` turns true, publishing on every content change.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let changed = Arc::new(Notify::new());
        let _watcher = match self.watch(changed.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                // Polling still picks changes up, only later: a warning, not staleness.
                tracing::warn!(
                    "{e}; falling back to polling every {:?}",
                    self.poll_interval
                );
                None
            }
        };
        loop {
            let notified = tokio::select! {
                _ = changed.notified() => {
                    tokio::time::sleep(self.settle).await;
                    true
                }
                _ = tokio::time::sleep(self.poll_interval) => false,
                _ = shutdown.changed() => return,
            };
            if *shutdown.borrow() {
                return;
            }
            if notified {
                self.reload_if_changed();
            } else {
                self.poll();
            }
        }
    }

    /// The safety-net poll: re-read only when the file's metadata changed (or
    /// cannot be read, so that the error is reported). Returns whether it read.
    pub fn poll(&mut self) -> bool {
        match Stamp::of(&self.path) {
            Some(stamp) if Some(stamp) == self.last_stamp => false,
            _ => {
                self.reload_if_changed();
                true
            }
        }
    }

    /// Read the file and publish it if its content changed since the last read.
    pub fn reload_if_changed(&mut self) {
        let bytes = match self.read() {
            Ok(b) => b,
            Err(e) => return self.fail(e),
        };
        let h = hash(&bytes);
        if self.served_hash == Some(h) {
            // The content already served (again, after the file was briefly missing
            // or broken, say during a ConfigMap update): healthy, nothing to rebuild.
            self.last_hash = Some(h);
            if self.last_error.take().is_some() {
                self.publisher.report_healthy();
            }
            return;
        }
        if self.last_hash == Some(h) {
            // The same broken content as last time: already reported.
            return;
        }
        self.last_hash = Some(h);
        let parsed = parse_into(&String::from_utf8_lossy(&bytes), self.empty());
        drop(bytes);
        match parsed {
            Ok(snapshot) => {
                self.last_error = None;
                self.served_hash = Some(h);
                self.publisher.publish(snapshot);
            }
            Err(e) => self.fail(syntax(&self.path, e)),
        }
    }

    fn fail(&mut self, e: SourceError) {
        // The safety-net poll would repeat a persistent error every second: say it once.
        let text = e.to_string();
        if self.last_error.as_deref() != Some(&text) {
            self.publisher.report_error(&e);
            self.last_error = Some(text);
        }
    }

    fn read(&mut self) -> Result<Vec<u8>, SourceError> {
        // Stamped before reading: a write racing the read moves the stamp, so
        // the next poll reads again.
        self.last_stamp = Stamp::of(&self.path);
        std::fs::read(&self.path).map_err(|source| SourceError::Read {
            path: self.path.clone(),
            source,
        })
    }

    fn watch(&self, changed: Arc<Notify>) -> Result<notify::RecommendedWatcher, SourceError> {
        let err = |e: notify::Error| SourceError::Watch {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let name = self.path.file_name().map(OsStr::to_owned);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| {
                    is_change(&e.kind) && name.as_deref().is_none_or(|n| concerns(&e.paths, n))
                }) {
                    changed.notify_one();
                }
            })
            .map_err(err)?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(err)?;
        Ok(watcher)
    }
}

/// Whether an event in the watched directory may have changed the file.
/// Opens and reads are not changes: our own read of the file raises them, and
/// reacting to those would reload in a loop.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether an event in the watched directory names the file or a ConfigMap
/// volume's `..data` link and `..<timestamp>` directories (its atomic update
/// swaps those). Anything else in the directory, such as a log file written
/// next to the snapshot, would otherwise cost a full read of it per write.
/// An event without paths (an inotify overflow) may hide anything: it counts.
fn concerns(paths: &[PathBuf], name: &OsStr) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|f| f == name || f.as_encoded_bytes().starts_with(b".."))
        })
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Route `n/a` split between `a-1` (`percent_a`) and `a-2` (the rest).
    fn split_route(percent_a: u32) -> String {
        format!(
            "kind: Route\nmetadata: {{name: a, namespace: n}}\nstatus: {{url: http://a.n.example.com, traffic: [{{revisionName: a-1, percent: {percent_a}}}, {{revisionName: a-2, percent: {}}}]}}\n",
            100 - percent_a
        )
    }

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Read)));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(is_change(&EventKind::Remove(RemoveKind::File)));
    }

    #[test]
    fn only_events_naming_the_file_or_a_configmap_swap_concern_it() {
        let name = OsStr::new("snapshot.yaml");
        let at = |names: &[&str]| -> Vec<PathBuf> {
            names.iter().map(|n| Path::new("/etc/gw").join(n)).collect()
        };
        assert!(concerns(&at(&["snapshot.yaml"]), name));
        assert!(concerns(
            &at(&[".snapshot.yaml.swp", "snapshot.yaml"]),
            name
        ));
        assert!(concerns(&at(&["..data_tmp", "..data"]), name));
        assert!(concerns(&at(&["..2026_11_24_10_00_00.123"]), name));
        assert!(concerns(&[], name), "an overflow may hide a change");
        assert!(!concerns(&at(&["proxy.log"]), name));
        assert!(!concerns(&at(&["snapshot.yaml.bak", "other.yaml"]), name));
    }

    /// A ConfigMap volume: `snapshot.yaml -> ..data/snapshot.yaml`, and an
    /// update renames a new `..data` link over the old one. Only inotify can
    /// see it here (the poll is an hour away).
    #[tokio::test]
    async fn a_configmap_style_symlink_swap_is_picked_up() {
        use crate::compiler::BuildOptions;
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let version = |ts: &str, percent_a: u32| {
            std::fs::create_dir(d.join(ts)).unwrap();
            std::fs::write(d.join(ts).join("snapshot.yaml"), split_route(percent_a)).unwrap();
        };
        version("..2026_11_24_01", 90);
        symlink("..2026_11_24_01", d.join("..data")).unwrap();
        symlink("..data/snapshot.yaml", d.join("snapshot.yaml")).unwrap();

        let publisher = Arc::new(Publisher::new(BuildOptions::default()));
        let mut source = FileSource::new(d.join("snapshot.yaml"), publisher.clone());
        source.poll_interval = Duration::from_secs(3600);
        source.load_initial().unwrap();
        let first = publisher.reader().load().generation;
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(source.run(shutdown));
        tokio::time::sleep(Duration::from_millis(100)).await;

        // Noise next to the file changes nothing.
        std::fs::write(d.join("proxy.log"), "a log line\n").unwrap();
        version("..2026_11_24_02", 50);
        symlink("..2026_11_24_02", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while publisher.reader().load().generation == first {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the swap was not seen"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let table = publisher.reader().load();
        let traffic = &table.routes()[0].traffic;
        assert_eq!(traffic.iter().map(|t| t.1).collect::<Vec<_>>(), [50, 50]);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn multi_document_and_list_forms() {
        let docs = "kind: Route\nmetadata: {name: a}\n---\nkind: EndpointSlice\nmetadata: {name: s}\n---\n";
        let s = parse(docs).unwrap();
        assert_eq!((s.routes.len(), s.slices.len()), (1, 1));
        let list = "apiVersion: v1\nkind: List\nitems:\n- kind: Route\n  metadata: {name: a}\n- kind: Route\n  metadata: {name: b}\n";
        let s = parse(list).unwrap();
        assert_eq!(s.routes.len(), 2);
    }

    #[test]
    fn a_file_missing_for_a_moment_recovers_without_a_rebuild() {
        use crate::compiler::BuildOptions;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.yaml");
        let text = "kind: Route\nmetadata: {name: a, namespace: n}\nstatus: {url: http://a.n.example.com, traffic: [{revisionName: a-1, percent: 100}]}\n";
        std::fs::write(&path, text).unwrap();
        let publisher = Arc::new(Publisher::new(BuildOptions::default()));
        let mut source = FileSource::new(&path, publisher.clone());
        source.load_initial().unwrap();
        let generation = publisher.reader().load().generation;

        std::fs::remove_file(&path).unwrap();
        source.reload_if_changed();
        let error = publisher
            .status()
            .last_error()
            .expect("a read error is reported");
        assert!(error.contains("snapshot.yaml"), "{error}");

        std::fs::write(&path, text).unwrap();
        source.reload_if_changed();
        assert_eq!(publisher.status().last_error(), None);
        assert_eq!(
            publisher.reader().load().generation,
            generation,
            "same content, same table"
        );
        assert_eq!(publisher.reader().load().route_count(), 1);
    }

    #[test]
    fn the_poll_reads_only_a_file_whose_metadata_changed() {
        use crate::compiler::BuildOptions;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.yaml");
        std::fs::write(&path, split_route(10)).unwrap();
        let publisher = Arc::new(Publisher::new(BuildOptions::default()));
        let mut source = FileSource::new(&path, publisher.clone());
        source.load_initial().unwrap();
        assert!(!source.poll(), "unchanged metadata: no read");
        assert!(!source.poll());

        // Same length, new content: the write moves ctime, so the poll reads it.
        std::fs::write(&path, split_route(20)).unwrap();
        let generation = publisher.reader().load().generation;
        assert!(source.poll());
        assert!(publisher.reader().load().generation > generation);
        assert!(!source.poll());

        // A missing file is read (to report the error) on every poll.
        std::fs::remove_file(&path).unwrap();
        assert!(source.poll());
        assert!(publisher.status().last_error().is_some());
        assert!(source.poll());
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let text = "kind: Route\nmetadata:\n  name: a\n  labels: {x: [1, 2}\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, 4, "{e:?}");
        assert!(e.column > 1, "{e:?}");
    }
}
