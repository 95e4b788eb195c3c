//! Writes the status of KIngresses of this gateway's class. Only the Lease
//! holder writes. Ready only once the live table applies the KIngress's
//! current version and every ready replica of the gateway (the endpoints of
//! its internal Service) answers Knative's probe for each rule's host with its
//! hash, over HTTPS with the host's SNI and certificate for rules with TLS:
//! the Route turns Ready when the traffic is served everywhere, as asked, not
//! before. A KIngress the table leaves out (its Service does not exist yet) or
//! that lost a host to an older one (`DomainConflict`) is marked not ready,
//! with the reason.
//!
//! The work is event-driven and ordered ([`plan`]): KIngresses changed after
//! the writer took the lead go before the backlog it found, probes run
//! concurrently (bounded) and are remembered per (hash, replica listener),
//! and writes are one PUT each with the resourceVersion held, under a
//! client-side rate limit ([`limit`]), retried with backoff on 409, 429 and
//! 5xx, never twice for the same generation and verdict.

mod limit;
pub(crate) mod plan;
mod probe;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, PostParams,
};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::compiler::endpoints::{http_port, ready_addresses};
use crate::error::Rejection;
use crate::leader::LeaderElector;
use crate::model::KIngress;
use crate::model::{EndpointSlice, Kind, ObjectKey};
use crate::publish::{TableReader, WriterHealth};
use crate::sources::kube::SourceKind;
use limit::Bucket;
pub use plan::TlsPorts;
use plan::{Arrivals, Target, Verdict};
use probe::{ProbeError, Prober};

/// Where the status writer looks, what it writes, and how fast.
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
    /// How often to renew the Lease and list the replicas.
    pub interval: Duration,
    /// Where the table comes from: with `Routes`, a KIngress is ready when
    /// the Routes' table serves its split (the probe is answered by the gateway).
    pub source: SourceKind,
    /// The replicas' HTTPS listeners, where rules with TLS are probed.
    pub tls_ports: TlsPorts,
    /// Probes in flight at most.
    pub probe_concurrency: usize,
    /// Status writes a second (0: no limit), after `burst` at once.
    pub qps: f64,
    /// Status writes at once before `qps` applies.
    pub burst: u32,
}

/// The latest KIngresses of our class, as the kube source sees them.
pub type KIngressFeed = watch::Receiver<Arc<Vec<Arc<KIngress>>>>;

/// Writes KIngress status while leading.
pub struct StatusWriter {
    client: Client,
    options: StatusOptions,
    kingresses: KIngressFeed,
    table: TableReader,
    changes: Option<watch::Receiver<u64>>,
    prober: Arc<Prober>,
    health: Arc<WriterHealth>,
    on_idle: Option<crate::publish::OnIdle>,
}

/// Mark `item` finished for this plan, counted in `done` (see
/// [`COMPACT_AFTER`]).
fn finish(item: &mut Item, done: &mut usize) {
    item.done = true;
    *done += 1;
}

/// Failures of a probe before its KIngress says why (`ProbeFailing`).
const FAILURES_BEFORE_REPORT: u32 = 3;
/// Status writes in flight at most.
const WRITES_IN_FLIGHT: usize = 32;
/// The shortest time between two full passes over the KIngresses: during a
/// cold start every status write changes the feed.
const REPLAN_EVERY: Duration = Duration::from_millis(50);
/// Finished items dropped from the plan once there are this many.
const COMPACT_AFTER: usize = 256;

/// A write's outcome: the KIngress, its generation and hash, the verdict.
type Written = (ObjectKey, i64, Arc<str>, Verdict, Result<(), kube::Error>);

/// The writer's maps and sets: looked up for every item a step visits, so
/// hashed with foldhash rather than SipHash (keys are the writer's own).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A KIngress whose status is due.
struct Item {
    order: (u8, u64, usize),
    ing: Arc<KIngress>,
    key: ObjectKey,
    verdict: Verdict,
    verify_only: bool,
    /// Every probe it waits for is in flight: nothing to do until one of
    /// them answers.
    waiting: bool,
    /// Every probe it needs has answered: not looked up again.
    probed: bool,
    /// Nothing left to do for it in this plan (written, or verified as its
    /// status stands).
    done: bool,
}

/// A probe: the hash asked for, of whom.
type ProbeKey = (Arc<str>, Target);

/// A probe that keeps failing.
#[derive(Debug)]
struct Failing {
    count: u32,
    retry_at: Instant,
    error: ProbeError,
}

/// What the writer remembers while it leads.
struct Work {
    arrivals: Arrivals,
    /// Probes answered with their hash.
    verified: HashSet<ProbeKey>,
    /// Probes in flight.
    probing: HashSet<ProbeKey>,
    failing: HashMap<ProbeKey, Failing>,
    /// The largest plan since the writer was last idle (0: it is idle).
    busy: usize,
    /// Items of the plan marked done since it was last compacted.
    done_items: usize,
    /// Hashes probed with an answer since the last step: the waiting items
    /// to look at again.
    answered: HashSet<Arc<str>>,
    /// Writes made or in flight: (generation, verdict tag) by KIngress.
    written: HashMap<ObjectKey, (i64, (&'static str, &'static str))>,
    /// Hashes (one per KIngress version) whose Ready status was verified or
    /// written.
    confirmed: HashSet<Arc<str>>,
    /// The plan: KIngresses whose status is due, most urgent first.
    items: Vec<Item>,
    /// The table the plan was made on.
    table: Option<Arc<dataplane::table::Table>>,
    /// When the plan was made.
    planned_at: Option<Instant>,
    /// The feed, the table or the replicas changed since.
    dirty: bool,
    /// KIngresses whose write is retried later (409), and how often it was.
    backoff: HashMap<ObjectKey, (u32, Instant)>,
    /// Writes wait until then (the API server answered 429 or 5xx).
    paused_until: Option<Instant>,
    api_failures: u32,
    /// The last write was refused (403).
    refused: bool,
    probes: JoinSet<(ProbeKey, Result<(), ProbeError>)>,
    writes: JoinSet<Written>,
    bucket: Bucket,
    /// The replicas' plain internal listeners, once listed.
    replicas: Option<Vec<SocketAddr>>,
    warned_no_replicas: bool,
}

impl Work {
    fn new(options: &StatusOptions) -> Self {
        Self {
            arrivals: Arrivals::default(),
            verified: HashSet::default(),
            probing: HashSet::default(),
            failing: HashMap::default(),
            written: HashMap::default(),
            confirmed: HashSet::default(),
            answered: HashSet::default(),
            busy: 0,
            done_items: 0,
            items: Vec::new(),
            table: None,
            planned_at: None,
            dirty: true,
            backoff: HashMap::default(),
            paused_until: None,
            api_failures: 0,
            refused: false,
            probes: JoinSet::new(),
            writes: JoinSet::new(),
            bucket: Bucket::new(options.qps, options.burst, std::time::Instant::now()),
            replicas: None,
            warned_no_replicas: false,
        }
    }

    /// Record a probe's answer.
    fn probed(
        &mut self,
        done: Result<(ProbeKey, Result<(), ProbeError>), tokio::task::JoinError>,
        health: &WriterHealth,
    ) {
        let Ok((key, result)) = done else { return };
        self.probing.remove(&key);
        self.answered.insert(key.0.clone());
        let counter = match result {
            Ok(()) => &health.probes_passed,
            Err(_) => &health.probes_failed,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.failing.remove(&key);
                self.verified.insert(key);
            }
            Err(error) => {
                let count = self.failing.get(&key).map_or(0, |f| f.count) + 1;
                // 50 ms doubling to 5 s: a replica still loading its table
                // answers within a few retries.
                let wait = Duration::from_millis(50 << count.min(7)).min(Duration::from_secs(5));
                if count == FAILURES_BEFORE_REPORT {
                    tracing::warn!(host = %key.1.host, "KIngress probe keeps failing: {error}");
                } else {
                    tracing::debug!(host = %key.1.host, "KIngress probe failed: {error}");
                }
                self.failing.insert(
                    key,
                    Failing {
                        count,
                        retry_at: Instant::now() + wait,
                        error,
                    },
                );
            }
        }
    }

    /// Forget what only the leader needs; in-flight work is dropped.
    fn stop(&mut self) {
        self.probes.abort_all();
        self.writes.abort_all();
        self.probing.clear();
        self.answered.clear();
        self.written.clear();
        self.backoff.clear();
        self.arrivals.reset();
        self.replicas = None;
        self.items.clear();
        self.done_items = 0;
        self.table = None;
        self.planned_at = None;
        self.dirty = true;
    }

    /// Drop what no KIngress or replica needs any more.
    fn prune(&mut self, feed: &[Arc<KIngress>]) {
        let hashes: HashSet<&str> = feed.iter().map(|k| &*k.hash).collect();
        let keys: HashSet<ObjectKey> = feed.iter().map(|k| k.key()).collect();
        let ips: std::collections::HashSet<std::net::IpAddr> =
            self.replicas.iter().flatten().map(|a| a.ip()).collect();
        let live = |k: &ProbeKey| hashes.contains(&*k.0) && ips.contains(&k.1.addr.ip());
        self.verified.retain(|k| live(k));
        self.failing.retain(|k, _| live(k));
        self.written.retain(|k, _| keys.contains(k));
        self.confirmed.retain(|h| hashes.contains(&**h));
        self.backoff.retain(|k, _| keys.contains(k));
        self.arrivals.retain(|k| keys.contains(k));
    }
}

impl StatusWriter {
    /// A writer using `client`, fed by the kube source, reading the live `table`.
    pub fn new(
        client: Client,
        options: StatusOptions,
        kingresses: KIngressFeed,
        table: TableReader,
    ) -> Self {
        Self {
            client,
            options,
            kingresses,
            table,
            changes: None,
            prober: Arc::new(Prober::new()),
            health: Arc::default(),
            on_idle: None,
        }
    }

    /// Call `f` on the writer's thread each time a large plan's work is all
    /// done (a cold start's backlog written; see
    /// [`crate::publish::IDLE_BURST`]).
    pub fn on_idle(mut self, f: crate::publish::OnIdle) -> Self {
        self.on_idle = Some(f);
        self
    }

    /// Report refused permissions and failing probes to `health`.
    pub fn with_health(mut self, health: Arc<WriterHealth>) -> Self {
        self.health = health;
        self
    }

    /// Wake on every new table (`Publisher::subscribe`), not only on the
    /// interval.
    pub fn with_table_changes(mut self, changes: watch::Receiver<u64>) -> Self {
        self.changes = Some(changes);
        self
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
        let lease_permission = format!(
            "get, create and update on leases (coordination.k8s.io) in namespace {}",
            o.lease.namespace
        );
        let mut work = Work::new(o);
        let mut leading = false;
        let mut lease_due = Instant::now();
        let mut feed = self.kingresses.clone();
        let (mut feed_open, mut changes) = (true, self.changes.clone());
        loop {
            if Instant::now() >= lease_due {
                lease_due = Instant::now() + o.interval;
                let lease_ok = match elector.try_lead().await {
                    Ok(now) => {
                        if now != leading {
                            tracing::info!(identity = %o.identity, leading = now, "KIngress status leadership changed");
                        }
                        leading = now;
                        true
                    }
                    Err(e) => {
                        if !self.health.refused(&e, lease_permission.clone()) {
                            tracing::warn!("cannot renew lease {}: {e}", o.lease);
                        }
                        leading = false;
                        false
                    }
                };
                work.dirty = true;
                if leading {
                    match self.replicas().await {
                        Ok(replicas) => work.replicas = Some(replicas),
                        Err(e) => tracing::warn!(
                            "cannot list the endpoints of {}: {e}",
                            o.private_service
                        ),
                    }
                    work.prune(&self.kingresses.borrow());
                } else {
                    work.stop();
                }
                // Leading, or following, with nothing refused: nothing missing.
                if lease_ok && !work.refused {
                    self.health.set(None);
                }
            }
            let mut wake = lease_due;
            if leading {
                if let Some(at) = self.step(&mut work) {
                    wake = wake.min(at);
                }
            }
            let idle = work.items.len() == work.done_items
                && work.probes.is_empty()
                && work.writes.is_empty();
            if idle && std::mem::take(&mut work.busy) >= crate::publish::IDLE_BURST {
                if let Some(f) = &self.on_idle {
                    f();
                }
            }
            if !idle {
                work.busy = work.busy.max(work.items.len());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                Some(done) = work.probes.join_next() => work.probed(done, &self.health),
                Some(done) = work.writes.join_next() => self.wrote(&mut work, done),
                r = feed.changed(), if feed_open => {
                    feed_open = r.is_ok();
                    work.dirty = true;
                }
                r = async { changes.as_mut().expect("checked").changed().await }, if changes.is_some() => {
                    if r.is_err() {
                        changes = None;
                    }
                    work.dirty = true;
                }
                _ = shutdown.changed() => return,
            }
            // Everything else that finished meanwhile, before the next step.
            while let Some(done) = work.probes.try_join_next() {
                work.probed(done, &self.health);
            }
            while let Some(done) = work.writes.try_join_next() {
                self.wrote(&mut work, done);
            }
        }
    }

    /// Order the KIngresses whose status is due (a write, or a verification),
    /// most urgent first. A full pass over the feed: made only after the feed,
    /// the table or the replicas changed, at most every [`REPLAN_EVERY`].
    fn replan(&self, work: &mut Work) {
        let table = self.table.load();
        let mut rejections: HashMap<&ObjectKey, Vec<&Rejection>> = HashMap::default();
        for r in table.rejected().iter().filter(|r| r.kind == Kind::KIngress) {
            rejections.entry(&r.object).or_default().push(r);
        }
        let feed = self.kingresses.borrow().clone();
        let mut items = Vec::new();
        for (index, ing) in feed.iter().enumerate() {
            // Ready for this generation and verified: nothing to do, and
            // nothing allocated to find that out.
            if ing.ready_generation() == Some(ing.generation())
                && work.confirmed.contains(&*ing.hash)
            {
                continue;
            }
            let key = ing.key();
            let of = rejections.get(&key).map_or(&[][..], Vec::as_slice);
            let Some(verdict) = plan::verdict(self.options.source, ing, &table, of) else {
                continue;
            };
            let rank = work.arrivals.rank(&key, ing.generation());
            let verify_only = plan::says(ing, &verdict);
            if verify_only && verdict != Verdict::Ready {
                continue;
            }
            if work.written.get(&key) == Some(&(ing.generation(), verdict.tag())) {
                continue;
            }
            items.push(Item {
                order: plan::order(rank, index, verify_only),
                ing: ing.clone(),
                key,
                verdict,
                verify_only,
                waiting: false,
                probed: false,
                done: false,
            });
        }
        // The backlog is what the first scan that sees the source's
        // KIngresses finds; an empty feed may be one not synced yet.
        if !feed.is_empty() {
            work.arrivals.end_scan();
        }
        items.sort_by_key(|i| i.order);
        work.items = items;
        work.done_items = 0;
        work.table = Some(table);
        work.planned_at = Some(Instant::now());
        work.dirty = false;
    }

    /// Start the probes and writes due now, most urgent first, until the
    /// probe slots and the writes allowed are used up; when to look again if
    /// nothing else happens first.
    fn step(&self, work: &mut Work) -> Option<Instant> {
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        if work.dirty {
            match work.planned_at.map(|at| at + REPLAN_EVERY) {
                Some(due) if due > now => wake = Some(due),
                _ => self.replan(work),
            }
        }
        let Some(table) = work.table.clone() else {
            return wake;
        };
        if work.items.is_empty() {
            work.answered.clear();
            self.health.set_probe_failures(BTreeMap::new());
            return wake;
        }
        let mut items = std::mem::take(&mut work.items);
        let answered = std::mem::take(&mut work.answered);
        let replicas = work.replicas.clone().unwrap_or_default();
        let mut soon = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
        let mut failures = BTreeMap::new();
        let mut tokens = true;
        let probe_slots = self.options.probe_concurrency.max(1);
        // Items verified and due a write that has no slot yet: probing
        // further ahead than the writes can follow only piles up items that
        // every step would pass again.
        let mut awaiting_write = 0;
        for item in items.iter_mut() {
            // Nothing more can start: the rest waits for a slot or a token.
            if work.probes.len() >= probe_slots
                && (!tokens || work.writes.len() >= WRITES_IN_FLIGHT)
            {
                break;
            }
            if awaiting_write >= WRITES_IN_FLIGHT {
                break;
            }
            // Finished for this plan, or its probes are out and none
            // answered: passed without a look.
            if item.done || (item.waiting && !answered.contains(&*item.ing.hash)) {
                continue;
            }
            item.waiting = false;
            let ing = &item.ing;
            let written = |work: &Work, verdict: &Verdict| {
                work.written.get(&item.key) == Some(&(ing.generation(), verdict.tag()))
            };
            if written(work, &item.verdict) {
                finish(item, &mut work.done_items);
                continue;
            }
            let mut verdict = None;
            if item.verdict == Verdict::Ready && !item.probed {
                if replicas.is_empty() {
                    if !work.warned_no_replicas && work.replicas.is_some() {
                        tracing::warn!(
                            "no ready endpoints for {}: cannot verify any KIngress",
                            self.options.private_service
                        );
                        work.warned_no_replicas = true;
                    }
                    continue;
                }
                work.warned_no_replicas = false;
                match plan::targets(
                    ing,
                    &replicas,
                    self.options.tls_ports,
                    self.options.source,
                    &table,
                ) {
                    Ok(targets) => {
                        let hash = ing.hash.clone();
                        let mut all = true;
                        let mut failing = None;
                        let mut no_slot = false;
                        let mut retry = false;
                        for target in targets {
                            let pk = (hash.clone(), target);
                            if work.verified.contains(&pk) {
                                continue;
                            }
                            all = false;
                            if work.probing.contains(&pk) {
                                continue;
                            }
                            if let Some(f) = work.failing.get(&pk) {
                                if f.count >= FAILURES_BEFORE_REPORT {
                                    failing = Some(f.error.to_string());
                                }
                                if f.retry_at > now {
                                    soon(f.retry_at);
                                    retry = true;
                                    continue;
                                }
                            }
                            if work.probes.len() < probe_slots {
                                work.probing.insert(pk.clone());
                                let prober = self.prober.clone();
                                work.probes.spawn(async move {
                                    let result = prober.probe(&pk.1, &pk.0).await;
                                    (pk, result)
                                });
                            } else {
                                no_slot = true;
                            }
                        }
                        // The frontier: this one waits for a probe slot, and
                        // so does everything after it (probes start in order).
                        if no_slot {
                            break;
                        }
                        // A probe due again later keeps it looked at.
                        item.waiting = !all && !retry;
                        item.probed = all;
                        if all {
                            if item.verify_only {
                                work.confirmed.insert(ing.hash.clone());
                                finish(item, &mut work.done_items);
                                continue;
                            }
                        } else {
                            let Some(message) = failing else { continue };
                            failures.insert(item.key.to_string(), message.clone());
                            if item.verify_only {
                                continue;
                            }
                            verdict = Some(Verdict::Probing(message));
                        }
                    }
                    Err(not_ready) => verdict = Some(not_ready),
                }
                let v = verdict.as_ref().unwrap_or(&item.verdict);
                if plan::says(ing, v) || written(work, v) {
                    // A failing probe is retried from here; anything else
                    // stands until the next plan.
                    if !matches!(v, Verdict::Probing(_)) {
                        finish(item, &mut work.done_items);
                    }
                    continue;
                }
            } else if item.verify_only {
                continue;
            }
            // A write is due.
            if let Some(&(_, at)) = work.backoff.get(&item.key) {
                if at > now {
                    soon(at);
                    continue;
                }
            }
            if let Some(at) = work.paused_until.filter(|&at| at > now) {
                soon(at);
                continue;
            }
            if !tokens || work.writes.len() >= WRITES_IN_FLIGHT {
                awaiting_write += 1;
                continue;
            }
            if !work.bucket.try_take(now.into_std()) {
                tokens = false;
                soon(Instant::from_std(work.bucket.next_at(now.into_std())));
                continue;
            }
            let verdict = verdict.unwrap_or_else(|| item.verdict.clone());
            let obj = self.status_object(ing, &verdict);
            let key = item.key.clone();
            work.written
                .insert(key.clone(), (ing.generation(), verdict.tag()));
            let (client, generation) = (self.client.clone(), ing.generation());
            let hash = ing.hash.clone();
            work.writes.spawn(async move {
                let result = put_status(client, &key, &obj).await;
                (key, generation, hash, verdict, result)
            });
        }
        work.items = items;
        // Finished items are dropped now and then, not on every step.
        if work.done_items >= COMPACT_AFTER {
            work.items.retain(|i| !i.done);
            work.done_items = 0;
        }
        self.health.set_probe_failures(failures);
        wake
    }

    /// Record a write's outcome.
    fn wrote(&self, work: &mut Work, done: Result<Written, tokio::task::JoinError>) {
        let Ok((key, generation, hash, verdict, result)) = done else {
            return;
        };
        let now = Instant::now();
        match result {
            Ok(()) => {
                work.api_failures = 0;
                work.refused = false;
                work.backoff.remove(&key);
                self.health.count_write();
                match &verdict {
                    Verdict::Ready => {
                        tracing::info!(kingress = %key, generation, "KIngress marked Ready");
                        work.confirmed.insert(hash);
                    }
                    Verdict::NotReady(reason, message) => {
                        tracing::warn!(kingress = %key, generation, reason, "KIngress not ready: {message}")
                    }
                    Verdict::Probing(message) => {
                        tracing::warn!(kingress = %key, generation, "KIngress probe failing: {message}")
                    }
                }
            }
            // Gone: nothing to write.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            // Changed under us (or our own last write is not seen yet): the
            // feed brings the new version; try again after it.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                work.written.remove(&key);
                // Its item was dropped once written: planned again.
                work.dirty = true;
                let n = work.backoff.get(&key).map_or(0, |b| b.0) + 1;
                let wait = Duration::from_millis(20 << n.min(8)).min(Duration::from_secs(5));
                work.backoff.insert(key, (n, now + wait));
            }
            Err(e) => {
                work.written.remove(&key);
                work.dirty = true;
                let permission =
                    "get, update on ingresses/status (networking.internal.knative.dev)".to_owned();
                if self.health.refused(&e, permission) {
                    work.refused = true;
                    work.paused_until = Some(now + self.options.interval);
                    return;
                }
                // 429, 5xx, a broken connection: every write slows down.
                work.api_failures += 1;
                let wait = Duration::from_millis(100 << work.api_failures.min(7))
                    .min(Duration::from_secs(10));
                work.paused_until = Some(now + wait);
                tracing::warn!(kingress = %key, "KIngress status not written, retrying in {wait:?}: {e}");
            }
        }
    }

    /// The object PUT to `/status`: the status `verdict` calls for, with
    /// the resourceVersion the feed holds, so that a stale write is refused.
    fn status_object(&self, ing: &KIngress, verdict: &Verdict) -> DynamicObject {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let o = &self.options;
        let lb = |s: &ObjectKey| json!({"ingress": [{"domainInternal": format!("{}.{}.svc.{}", s.name, s.namespace, o.cluster_domain)}]});
        let ready = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
        let (status, reason) = verdict.tag();
        let conditions = match verdict {
            Verdict::Ready => json!([
                ready("LoadBalancerReady"),
                ready("NetworkConfigured"),
                ready("Ready")
            ]),
            Verdict::NotReady(_, message) | Verdict::Probing(message) => {
                let not = |t: &str| json!({"type": t, "status": status, "reason": reason, "message": message, "lastTransitionTime": now});
                json!([
                    not("LoadBalancerReady"),
                    ready("NetworkConfigured"),
                    not("Ready")
                ])
            }
        };
        let mut body = json!({
            "observedGeneration": ing.generation(),
            "conditions": conditions,
        });
        if *verdict == Verdict::Ready {
            body["publicLoadBalancer"] = lb(&o.public_service);
            body["privateLoadBalancer"] = lb(&o.private_service);
        }
        let key = ing.key();
        let mut obj = DynamicObject::new(&key.name, &kingress_resource());
        obj.metadata = ObjectMeta {
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            resource_version: ing.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        };
        obj.data = json!({ "status": body });
        obj
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
}

fn kingress_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.internal.knative.dev", "v1alpha1", "Ingress"),
        "ingresses",
    )
}

/// One API call: PUT the status with the resourceVersion held (no GET first).
async fn put_status(
    client: Client,
    key: &ObjectKey,
    obj: &DynamicObject,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, &key.namespace, &kingress_resource());
    api.replace_status(&key.name, &PostParams::default(), obj)
        .await
        .map(drop)
}
