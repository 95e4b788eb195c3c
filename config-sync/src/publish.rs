//! The `source → table → swap` seam. A source hands its typed [`Changes`] to
//! [`Publisher::apply`] (or a whole [`Snapshot`] to [`Publisher::publish`]),
//! which builds or patches a table and swaps it in atomically; readers hold
//! [`TableReader`]s and pay one `ArcSwap` load per request.
//! A source that fails reports it with [`Publisher::report_error`], and the
//! last good table keeps serving.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::change::{Changes, Inputs};
use crate::compiler::{build, update_kingresses, BuildOptions, KIngressUpdate, LastGood};
use crate::model::Snapshot;
use dataplane::table::Table;

/// Called on a control-plane thread when a large burst of work is over (at
/// least [`IDLE_BURST`] events or status items): the binary gives back what
/// its allocator kept of that work.
pub type OnIdle = Arc<dyn Fn() + Send + Sync>;

/// The smallest burst after which [`OnIdle`] is called. Giving memory back
/// costs page faults when it is used again (a KIngress patch copies the host
/// map, 13 MB at 10,000 KIngresses): worth it after a first sync or a cold
/// start's status writes, not after each change.
pub const IDLE_BURST: usize = 1_000;

/// Cheap, cloneable read handle on the live table.
#[derive(Clone, Debug)]
pub struct TableReader(Arc<ArcSwap<Table>>);

impl TableReader {
    /// The live table, held for as long as the caller keeps it (one request).
    #[inline]
    pub fn load(&self) -> Arc<Table> {
        self.0.load_full()
    }

    /// A short-lived view for code that does not await while holding it.
    #[inline]
    pub fn peek(&self) -> arc_swap::Guard<Arc<Table>> {
        self.0.load()
    }
}

/// Host → `K-Network-Hash` of the KIngress this replica serves for it.
pub type ProbeMap = std::collections::HashMap<String, String>;

/// Read handle on the probe map, for the request path.
#[derive(Clone, Debug)]
pub struct ProbeReader(Arc<ArcSwap<ProbeMap>>);

impl ProbeReader {
    /// The hash to answer a probe for `host` with, if its KIngress is served.
    pub fn hash(&self, host: &str) -> Option<String> {
        self.0.load().get(host).cloned()
    }

    /// The whole map now.
    pub fn snapshot(&self) -> Arc<ProbeMap> {
        self.0.load_full()
    }
}

/// Health of the source feeding the publisher, for metrics and `/debug/routes`.
#[derive(Debug, Default)]
pub struct SourceStatus {
    /// Source reads that failed (the table was kept).
    pub errors: AtomicU64,
    /// Unix time (seconds) the source was last known in sync.
    pub last_success_unix: AtomicU64,
    /// Full relists after the first sync (watch restarts, 410 Gone).
    pub relists: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SourceStatus {
    /// The last source error, cleared by the next successful publish.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What stops the status writer that an operator must fix: a permission the
/// API server refused (RBAC), for metrics and `/debug/routes`.
#[derive(Debug, Default)]
pub struct WriterHealth {
    /// Requests the API server refused with 403.
    pub forbidden: AtomicU64,
    /// Status writes the API server accepted.
    pub writes: AtomicU64,
    /// Knative probes of replicas that passed.
    pub probes_passed: AtomicU64,
    /// Knative probes of replicas that failed.
    pub probes_failed: AtomicU64,
    missing: Mutex<Option<String>>,
    /// KIngresses whose probe keeps failing, with the last failure.
    probe_failures: Mutex<std::collections::BTreeMap<String, String>>,
}

impl WriterHealth {
    /// The permission last refused, while it still is.
    pub fn missing_permission(&self) -> Option<String> {
        self.missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// KIngresses (`namespace/name`) whose probe keeps failing, with why.
    pub fn probe_failures(&self) -> std::collections::BTreeMap<String, String> {
        self.probe_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_probe_failures(&self, now: std::collections::BTreeMap<String, String>) {
        let mut held = self
            .probe_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *held != now {
            *held = now;
        }
    }

    pub(crate) fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set(&self, missing: Option<String>) {
        *self.missing.lock().unwrap_or_else(|e| e.into_inner()) = missing;
    }

    /// Note `e` if it is a refusal of `permission`; whether it was.
    pub(crate) fn refused(&self, e: &kube::Error, permission: String) -> bool {
        let kube::Error::Api(s) = e else { return false };
        if s.code != 403 {
            return false;
        }
        self.forbidden.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "the API server refused a permission: grant the gateway's ServiceAccount {permission} (deploy/base/rbac.yaml): {}",
            s.message
        );
        self.set(Some(format!("{permission}: {}", s.message)));
        true
    }
}

struct BuilderState {
    last_good: LastGood,
    generation: u64,
}

/// Builds tables from snapshots and swaps them in.
pub struct Publisher {
    table: Arc<ArcSwap<Table>>,
    /// The generation of the live table, for whoever waits for a new one.
    changes: tokio::sync::watch::Sender<u64>,
    probes: Arc<ArcSwap<ProbeMap>>,
    options: BuildOptions,
    state: Mutex<BuilderState>,
    ready: AtomicBool,
    status: SourceStatus,
    writer: Arc<WriterHealth>,
}

impl Publisher {
    /// A publisher serving an empty table until the first publish.
    pub fn new(options: BuildOptions) -> Self {
        Self {
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            changes: tokio::sync::watch::Sender::new(0),
            probes: Arc::new(ArcSwap::from_pointee(ProbeMap::new())),
            options,
            state: Mutex::new(BuilderState {
                last_good: LastGood::default(),
                generation: 0,
            }),
            ready: AtomicBool::new(false),
            status: SourceStatus::default(),
            writer: Arc::default(),
        }
    }

    /// What the KIngress status writer could not do for lack of a permission.
    pub fn writer_health(&self) -> &Arc<WriterHealth> {
        &self.writer
    }

    /// A read handle for the request path.
    pub fn reader(&self) -> TableReader {
        TableReader(self.table.clone())
    }

    /// Told the generation of every table swapped in.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A read handle on the probe map.
    pub fn probes(&self) -> ProbeReader {
        ProbeReader(self.probes.clone())
    }

    /// Replace the probe map (after a table or KIngress change).
    pub fn set_probes(&self, map: ProbeMap) {
        self.probes.store(Arc::new(map));
        // Probes wait for the answers, not only for the table.
        self.changes.send_modify(|_| {});
    }

    /// Build a table from `snapshot` and make it live. Rejections new since the
    /// live table are logged here; the caller gets the new table.
    pub fn publish(&self, snapshot: Snapshot) -> Arc<Table> {
        let (prev, table) = self
            .swap(|prev, state, generation| {
                let (table, last_good) = build(
                    snapshot,
                    &self.options,
                    &state.last_good,
                    Some(prev),
                    generation,
                );
                state.last_good = last_good;
                Some(table)
            })
            .expect("a full build always makes a table");
        log_new_rejections(&prev, &table);
        drop(prev);
        tracing::info!(
            generation = table.generation,
            routes = table.route_count(),
            hosts = table.host_count(),
            rejected = table.rejected().len(),
            "routing table swapped in"
        );
        self.report_healthy();
        self.ready.store(true, Ordering::Release);
        table
    }

    /// Make `changes` live, reading what they need from `inputs`: the one
    /// place that chooses how. Before the first table, or for a change a
    /// patch cannot express, a full build; otherwise the changed KIngresses
    /// (and those held until slices now changed arrive) are patched in, and
    /// the changed endpoints swapped. A patch that cannot be exact (hosts
    /// moved) falls back to a full build. `None` when nothing changed.
    pub fn apply(&self, mut changes: Changes, inputs: &impl Inputs) -> Option<Arc<Table>> {
        if changes.is_empty() {
            return None;
        }
        if changes.full || !self.is_ready() {
            return Some(self.publish(inputs.snapshot()));
        }
        if !changes.endpoints.is_empty() {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let held = state.last_good.waiting_on(&changes.endpoints).cloned();
            changes.kingresses.extend(held);
        }
        let mut table = None;
        if !changes.kingresses.is_empty() {
            match self.publish_kingresses(inputs.kingresses(&changes.kingresses)) {
                Some(patched) => table = Some(patched),
                None => return Some(self.publish(inputs.snapshot())),
            }
        }
        if !changes.endpoints.is_empty() {
            let now = inputs.endpoints(&changes.endpoints);
            table = Some(self.publish_endpoints(&now.updates, &now.slices, now.rejected));
        }
        table
    }

    /// Apply changed KIngresses to the live table without rebuilding it (see
    /// [`update_kingresses`]). `None` when that cannot be done exactly: the
    /// caller then publishes a full snapshot.
    pub fn publish_kingresses(&self, update: KIngressUpdate) -> Option<Arc<Table>> {
        let (prev, table) = self.swap(|prev, state, generation| {
            update_kingresses(
                prev,
                update,
                &self.options,
                &mut state.last_good,
                generation,
            )
        })?;
        log_new_rejections(&prev, &table);
        tracing::debug!(generation = table.generation, "KIngresses patched in");
        Some(table)
    }

    /// Swap in new endpoints for some revisions without rebuilding the routes:
    /// the path for EndpointSlice changes. `slices` are the EndpointSlices that
    /// changed, whose rejections `rejected` replaces.
    pub fn publish_endpoints(
        &self,
        updates: &[dataplane::endpoints::EndpointUpdate],
        slices: &[crate::model::ObjectKey],
        rejected: Vec<crate::error::Rejection>,
    ) -> Arc<Table> {
        for r in &rejected {
            tracing::warn!(reason = r.error.reason(), "{r}");
        }
        let (_, table) = self
            .swap(|prev, _, generation| {
                Some(prev.with_endpoints(updates, slices, rejected, generation))
            })
            .expect("an endpoint update always makes a table");
        tracing::debug!(
            generation = table.generation,
            revisions = updates.len(),
            "endpoints swapped in"
        );
        table
    }

    /// Make a table derived from the live one current. One swap at a time, so
    /// generations and the last-good set stay in order. Returns (previous,
    /// new), or `None` (nothing swapped) when `make` made no table.
    fn swap(
        &self,
        make: impl FnOnce(&Table, &mut BuilderState, u64) -> Option<Table>,
    ) -> Option<(Arc<Table>, Arc<Table>)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = state.generation + 1;
        let prev = self.table.load_full();
        let table = Arc::new(make(&prev, &mut state, generation)?);
        self.table.store(table.clone());
        state.generation = generation;
        drop(state);
        self.changes.send_replace(generation);
        Some((prev, table))
    }

    /// Record that the source is in contact again (an event arrived): clears the
    /// last error without building a table.
    pub fn report_healthy(&self) {
        self.status
            .last_success_unix
            .store(unix_now(), Ordering::Relaxed);
        let mut last = self
            .status
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_some() {
            tracing::info!("source recovered");
            *last = None;
        }
    }

    /// Record a full relist (a restarted watch that listed everything again).
    pub fn report_relist(&self) {
        self.status.relists.fetch_add(1, Ordering::Relaxed);
    }

    /// Record a failed source read: the live table is kept.
    pub fn report_error(&self, error: &dyn std::error::Error) {
        tracing::error!("{error}; keeping the last good routing table");
        self.status.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .status
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }

    /// True once a first table has been published.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Health of the source.
    pub fn status(&self) -> &SourceStatus {
        &self.status
    }
}

/// Log what is newly wrong; a standing rejection was logged when it appeared
/// (and stays visible in metrics and /debug/routes).
fn log_new_rejections(prev: &Table, table: &Table) {
    let known: std::collections::HashSet<&crate::error::Rejection> =
        prev.rejected().iter().collect();
    for rejection in table.rejected().iter().filter(|r| !known.contains(r)) {
        tracing::warn!(reason = rejection.error.reason(), "{rejection}");
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
