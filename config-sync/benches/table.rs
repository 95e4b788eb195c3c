//! Per-request cost of the table (normalise Host, load, look up, pick revision,
//! pick endpoint) at 10 and 10,000 routes, and the cost of building a table.
//! Targets: under 100 ns per request and flat in the number of routes; a build
//! of 10,000 routes × 3 revisions under 50 ms and 50 MB.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use config_sync::compiler::{build, BuildOptions, LastGood};
use config_sync::synth::{cluster, host, Shape};
use config_sync::Publisher;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dataplane::host::{normalize, MAX_HOST_LEN};
use dataplane::resolve::{resolve, Request, Resolved};
use dataplane::select::pick_endpoint;
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// Counts live heap bytes and their peak, to report a table's memory, over
/// mimalloc (the gateway binary's allocator).
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(live, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SHAPE: Shape = Shape {
    routes: 10_000,
    revisions: 3,
    endpoints: 2,
    tags: true,
};

/// A plain `GET /` for `host` on the external listener.
fn get<'r>(host: &'r str, headers: &'r http::HeaderMap) -> Request<'r> {
    Request {
        host,
        path: "/",
        headers,
        internal: false,
        probe: false,
        tls: false,
    }
}

fn per_request(c: &mut Criterion) {
    // (routes, distinct hosts requested): the first two show the cost is flat in
    // the table's size; the third adds cache misses from touching 1,024 routes.
    let mut group = c.benchmark_group("request: host → revision → endpoint");
    for (routes, distinct) in [(10, 10), (10_000, 10), (10_000, 1024)] {
        let publisher = Publisher::new(BuildOptions::default());
        publisher.publish(cluster(Shape { routes, ..SHAPE }));
        let reader = publisher.reader();
        // Mixed case and a port, as clients send them; spread over the routes.
        let hosts: Vec<String> = (0..1024)
            .map(|i| {
                format!("{}:8080", host(i * 7919 % routes % distinct)).replace("route", "Route")
            })
            .collect();
        let mut rng = SmallRng::seed_from_u64(1);
        let headers = http::HeaderMap::new();
        let policy = dataplane::health::Policy::default();
        let now = dataplane::health::now_millis();
        let mut i = 0;
        let id = format!("{routes} routes, {distinct} hosts");
        group.bench_function(id, |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let table = reader.load();
                let mut buf = [0u8; MAX_HOST_LEN];
                let h = normalize(hosts[i].as_bytes(), &mut buf).unwrap();
                let mut to = Resolved::default();
                resolve(&table, get(h, &headers), &mut to).unwrap();
                let backend = table.backend(to.backend);
                black_box(pick_endpoint(backend, &[], now, &policy, &mut rng))
            })
        });
    }
    group.finish();
}

fn hashers(c: &mut Criterion) {
    // Why the host map uses foldhash rather than std's SipHash.
    let hosts: Vec<String> = (0..10_000).map(host).collect();
    let std_map: std::collections::HashMap<Box<str>, u32> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.clone().into_boxed_str(), i as u32))
        .collect();
    let fold_map: std::collections::HashMap<Box<str>, u32, foldhash::fast::RandomState> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.clone().into_boxed_str(), i as u32))
        .collect();
    let mut group = c.benchmark_group("host map lookup, 10,000 hosts");
    let mut i = 0;
    group.bench_function("std SipHash", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(std_map.get(hosts[i].as_str()))
        })
    });
    group.bench_function("foldhash", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(fold_map.get(hosts[i].as_str()))
        })
    });
    group.finish();
}

fn table_build(c: &mut Criterion) {
    let snapshot = cluster(SHAPE);
    let opts = BuildOptions::default();

    // What a reload holds: the decoded snapshot, then the table it becomes.
    let start = LIVE.load(Ordering::Relaxed);
    let decoded = snapshot.clone();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let (table, last_good) = build(decoded, &opts, &LastGood::default(), None, 1);
    // The consumed snapshot is freed on a thread of its own: let it finish,
    // so that what is counted is the table and its last-good set alone.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let bytes = LIVE.load(Ordering::Relaxed) - start;
    let mb = |b: usize| b as f64 / 1e6;
    println!(
        "table memory, 10,000 routes × 3 revisions ({} hosts), with its last-good set: {:.1} MB",
        table.host_count(),
        mb(bytes)
    );
    println!(
        "build peak over the decoded snapshot ({:.1} MB) and the table: {:.1} MB (both at once would be {:.1} MB)",
        mb(before - start),
        mb(PEAK.load(Ordering::Relaxed) - start),
        mb(before - start + bytes)
    );

    let mut group = c.benchmark_group("table build");
    group.sample_size(10);
    let untagged = cluster(Shape {
        tags: false,
        ..SHAPE
    });
    group.bench_function(
        "10,000 routes × 3 revisions, no tags (40,000 hosts)",
        |b| {
            b.iter_batched(
                || untagged.clone(),
                |s| build(s, &opts, &LastGood::default(), None, 1),
                BatchSize::LargeInput,
            )
        },
    );
    // The snapshot is cloned outside the timing; freeing it is inside, as in the gateway.
    group.bench_function("10,000 routes × 3 revisions, cold", |b| {
        b.iter_batched(
            || snapshot.clone(),
            |s| build(s, &opts, &LastGood::default(), None, 1),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("10,000 routes × 3 revisions, over a live table", |b| {
        b.iter_batched(
            || snapshot.clone(),
            |s| build(s, &opts, &last_good, Some(&table), 2),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The Kubernetes source's costs: one endpoint change at 10,000 routes (target
/// under 5 ms), and the initial sync of 10,000 Routes and 30,000 EndpointSlices
/// as an API list delivers them, JSON objects decoded one by one, then built
/// (target under 2 s and 200 MB).
fn kube_source(c: &mut Criterion) {
    use config_sync::model::{decode_object, Snapshot};
    use config_sync::ObjectKey;
    use dataplane::endpoints::EndpointUpdate;

    let shape = Shape {
        tags: false,
        ..SHAPE
    };
    let snapshot = cluster(shape);
    let publisher = Publisher::new(BuildOptions::default());
    let table = publisher.publish(snapshot.clone());
    let update = [EndpointUpdate {
        key: dataplane::endpoints::revision_key("ns-7", "route-7-00001"),
        slices: vec![dataplane::endpoints::SliceEndpoints {
            ports: vec![("http".into(), 8012)],
            addrs: vec!["10.9.9.9".parse().unwrap()],
        }],
    }];
    let slice = [ObjectKey::new("ns-7", "route-7-00001-private-x")];
    let mut group = c.benchmark_group("kube source");
    group.bench_function("one endpoint change, 10,000 routes", |b| {
        b.iter_with_large_drop(|| table.with_endpoints(&update, &slice, Vec::new(), 2))
    });

    // Objects as JSON, as they arrive from the API server.
    let mut objects: Vec<serde_json::Value> = Vec::new();
    for r in &snapshot.routes {
        let mut v = serde_json::to_value(r).unwrap();
        v["kind"] = "Route".into();
        objects.push(v);
    }
    for s in &snapshot.slices {
        let mut v = serde_json::to_value(s).unwrap();
        v["kind"] = "EndpointSlice".into();
        objects.push(v);
    }
    let sync = |objects: Vec<serde_json::Value>| {
        let mut s = Snapshot::default();
        for o in objects {
            s.push(decode_object(
                o,
                config_sync::model::kingress::DEFAULT_CLASS,
                false,
            ));
        }
        build(s, &BuildOptions::default(), &LastGood::default(), None, 1)
    };
    let before = LIVE.load(Ordering::Relaxed);
    let peak_probe = sync(objects.clone());
    println!(
        "initial sync, 10,000 Routes + 30,000 EndpointSlices: table + last-good set {:.1} MB",
        (LIVE.load(Ordering::Relaxed) - before) as f64 / 1e6
    );
    drop(peak_probe);
    group.sample_size(10);
    group.bench_function("initial sync, 10,000 Routes + 30,000 EndpointSlices", |b| {
        b.iter_batched(|| objects.clone(), sync, criterion::BatchSize::LargeInput)
    });
    group.finish();
}

/// Issue targets at 10,000 KIngresses (3 rules each, as Serving writes them)
/// with 30,000 Services and EndpointSlices: build < 2 s and < 200 MB; the
/// per-request resolve (host, path match, pick) < 100 ns and flat.
fn kingresses(c: &mut Criterion) {
    use config_sync::synth::kingress_cluster;
    let mut group = c.benchmark_group("kingress");
    group.sample_size(10);
    let snapshot = kingress_cluster(10_000, 2);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let (table, last_good) = build(
        snapshot.clone(),
        &BuildOptions::default(),
        &LastGood::default(),
        None,
        1,
    );
    assert!(table.rejected().is_empty());
    // The consumed snapshot is freed on a thread of its own: let it finish.
    std::thread::sleep(std::time::Duration::from_millis(500));
    eprintln!(
        "kingress: table {:.1} MB, live peak while building {:.1} MB (decoded snapshot included)",
        (LIVE.load(Ordering::Relaxed) - before) as f64 / 1e6,
        (PEAK.load(Ordering::Relaxed) - before) as f64 / 1e6
    );
    group.bench_function(
        "build, 10,000 KIngresses, 30,000 Services and slices",
        |b| {
            b.iter_batched(
                || snapshot.clone(),
                |s| build(s, &BuildOptions::default(), &LastGood::default(), None, 1),
                BatchSize::PerIteration,
            )
        },
    );
    // One KIngress's split changes (90/10 → 50/50): patched, not rebuilt.
    let mut changed = config_sync::model::kingress::KIngress::clone(&snapshot.kingresses[7]);
    for rule in &mut std::sync::Arc::make_mut(&mut changed.spec).rules {
        for path in rule
            .http
            .iter_mut()
            .flat_map(|h| std::sync::Arc::make_mut(h).paths.iter_mut().flatten())
        {
            for split in path.splits.iter_mut().flatten() {
                if split.percent == 90 || split.percent == 10 {
                    split.percent = 50;
                }
            }
        }
    }
    let changed = std::sync::Arc::new(changed);
    let named: Vec<String> = (0..3).map(|r| format!("route-7-{r:05}")).collect();
    let update = || config_sync::compiler::KIngressUpdate {
        kingresses: vec![changed.clone()],
        services: snapshot
            .services
            .iter()
            .filter(|s| named.contains(s.metadata.name.as_ref().unwrap()))
            .cloned()
            .collect(),
        slices: snapshot
            .slices
            .iter()
            .filter(|s| {
                named
                    .iter()
                    .any(|n| s.metadata.name.as_ref().unwrap().starts_with(n.as_str()))
            })
            .cloned()
            .collect(),
    };
    group.bench_function("one KIngress change patched in, 10,000 KIngresses", |b| {
        b.iter_batched(
            || (update(), last_good.clone()),
            |(u, mut lg)| {
                let t = config_sync::compiler::update_kingresses(
                    &table,
                    u,
                    &BuildOptions::default(),
                    &mut lg,
                    2,
                )
                .expect("a split change is patched");
                // Dropped after the measurement: the live set is updated in place.
                (t, lg)
            },
            BatchSize::PerIteration,
        )
    });
    let endpoint = [dataplane::endpoints::EndpointUpdate {
        key: dataplane::endpoints::service_key("ns-7", "route-7-00001"),
        slices: vec![dataplane::endpoints::SliceEndpoints {
            ports: vec![("http".into(), 8012)],
            addrs: vec!["10.9.9.9".parse().unwrap()],
        }],
    }];
    group.bench_function("one endpoint change, 10,000 KIngresses", |b| {
        b.iter_with_large_drop(|| table.with_endpoints(&endpoint, &[], Vec::new(), 2))
    });
    let headers = http::HeaderMap::new();
    // 10 hosts show the cost of the work; 1,024 add the cache misses.
    for distinct in [10, 1024] {
        let hosts: Vec<String> = (0..1024)
            .map(|i| host(i * 7919 % 10_000 % distinct))
            .collect();
        let mut i = 0;
        let id = format!("resolve: host, two paths, 90/10 pick, {distinct} hosts");
        group.bench_function(id, |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let mut to = Resolved::default();
                resolve(&table, get(&hosts[i], &headers), &mut to).unwrap();
                black_box(to.backend)
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    per_request,
    hashers,
    table_build,
    kube_source,
    kingresses
);
criterion_main!(benches);
