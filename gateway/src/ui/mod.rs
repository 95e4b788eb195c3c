//! `/ui` on the admin listener: one self-contained page (no CDN, works
//! offline) that shows each route's configured split beside the split
//! served in the last minute, and per revision its requests/s, p50/p99
//! latency, error rate, activator share and endpoints (in flight, ejected,
//! warming). The page polls `/ui/data` every second.
//!
//! The data costs the request path nothing new beyond the counts the table
//! already keeps per route and revision (status codes, a latency bucket, the
//! activator's count): `/ui/data` reads them, keeps a snapshot at most once
//! a second for a minute, and answers with the difference from the oldest
//! one. Nobody polling, nothing is kept.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataplane::health::{millis, Policy};
use dataplane::responses::{latency_quantile, Responses, LATENCY_BUCKETS};
use dataplane::table::{BackendKind, RouteInfo};
use dataplane::Table;
use serde::Serialize;

/// The page: HTML, CSS and script in one file.
pub const PAGE: &str = include_str!("page.html");

/// How far back the served split and the rates look.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Routes shown, in table order (by kind, namespace and name); past it the
/// page says how many are left out. Bounds what one snapshot holds.
pub const MAX_ROUTES: usize = 200;

/// Counts of one route's revision at one moment.
#[derive(Debug, Clone, Copy)]
struct Counts {
    requests: u64,
    split: u64,
    errors: u64,
    activator: u64,
    latency: [u32; LATENCY_BUCKETS],
}

impl Counts {
    fn of(r: &Responses) -> Self {
        let (mut requests, mut errors) = (0, 0);
        for (code, n) in r.counts() {
            requests += n;
            // No response at all (0) is an error too.
            if code >= 500 || code == 0 {
                errors += n;
            }
        }
        Counts {
            requests,
            split: r.split.load(Ordering::Relaxed),
            errors,
            activator: r.activator.load(Ordering::Relaxed),
            latency: r.latency.snapshot(),
        }
    }

    /// What happened since `base` (the counts of the same pair earlier).
    fn since(&self, base: Option<&Counts>) -> Counts {
        let Some(base) = base else { return *self };
        // A route removed and added again starts from zero: then all of it.
        if self.requests < base.requests {
            return *self;
        }
        Counts {
            requests: self.requests - base.requests,
            split: self.split.saturating_sub(base.split),
            errors: self.errors.saturating_sub(base.errors),
            activator: self.activator.saturating_sub(base.activator),
            latency: std::array::from_fn(|i| self.latency[i].wrapping_sub(base.latency[i])),
        }
    }
}

/// A snapshot: counts by route key and revision name.
type Snapshot = HashMap<(String, String), Counts>;

/// The `/ui/data` state: snapshots of the last minute.
#[derive(Debug, Default)]
pub struct Ui {
    history: Mutex<VecDeque<(Instant, Snapshot)>>,
}

impl Ui {
    /// `/ui/data` for `table` at `now`, as JSON.
    pub fn data(&self, table: &Table, policy: &Policy, now: Instant) -> Vec<u8> {
        serde_json::to_vec(&self.view(table, policy, now)).unwrap_or_default()
    }

    /// The view of `table` at `now`, against the oldest snapshot of the last
    /// [`WINDOW`]; takes a snapshot when the newest is a second old.
    pub fn view(&self, table: &Table, policy: &Policy, now: Instant) -> UiView {
        let shown = &table.routes()[..table.routes().len().min(MAX_ROUTES)];
        let live: Snapshot = shown
            .iter()
            .flat_map(|r| {
                r.responses.iter().map(move |(b, counts)| {
                    let key = (r.key.to_string(), table.backend(*b).name.to_string());
                    (key, Counts::of(counts))
                })
            })
            .collect();
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        while history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW + Duration::from_secs(1))
        {
            history.pop_front();
        }
        let (window, base) = match history.front() {
            Some((t, snap)) => (now.duration_since(*t).as_secs_f64(), Some(snap)),
            None => (0.0, None),
        };
        let routes = shown
            .iter()
            .map(|r| route_view(table, r, &live, base, window, policy, now))
            .collect();
        let view = UiView {
            generation: table.generation,
            window_seconds: window,
            routes_total: table.routes().len(),
            routes,
        };
        if history
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
        {
            history.push_back((now, live));
        }
        view
    }
}

fn route_view(
    table: &Table,
    r: &RouteInfo,
    live: &Snapshot,
    base: Option<&Snapshot>,
    window: f64,
    policy: &Policy,
    now: Instant,
) -> RouteUi {
    let key = r.key.to_string();
    let now_ms = millis(now);
    let per_second = |n: u64| (window > 0.0).then(|| n as f64 / window);
    let mut revisions: Vec<RevisionUi> = r
        .responses
        .iter()
        .map(|(b, _)| {
            let backend = table.backend(*b);
            let pair = (key.clone(), backend.name.to_string());
            let d = live
                .get(&pair)
                .map(|c| c.since(base.and_then(|s| s.get(&pair))))
                .unwrap_or(Counts {
                    requests: 0,
                    split: 0,
                    errors: 0,
                    activator: 0,
                    latency: [0; LATENCY_BUCKETS],
                });
            let share = |n: u64| (d.requests > 0).then(|| n as f64 / d.requests as f64);
            let ms = |q| latency_quantile(&d.latency, q).map(|us| us / 1000.0);
            RevisionUi {
                name: backend.name.to_string(),
                configured_percent: r
                    .traffic
                    .iter()
                    .find(|(id, _)| id == b)
                    .map_or(0, |(_, p)| *p),
                served_percent: None,
                split_requests: d.split,
                requests: d.requests,
                requests_per_second: per_second(d.requests),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                error_rate: share(d.errors),
                activator_share: share(d.activator),
                cold: backend.kind == BackendKind::Pods && backend.endpoints.is_empty(),
                endpoints: backend
                    .endpoints
                    .iter()
                    .map(|e| EndpointUi {
                        address: e.addr.to_string(),
                        inflight: e.load(),
                        ejected_for_ms: e.state.ejected_for(now_ms),
                        ejections: e.state.ejections(),
                        warmth: e.state.warmth(now_ms, policy.slow_start),
                    })
                    .collect(),
            }
        })
        .collect();
    let total: u64 = revisions.iter().map(|v| v.requests).sum();
    let split: u64 = revisions.iter().map(|v| v.split_requests).sum();
    let activator: f64 = revisions
        .iter()
        .map(|v| v.activator_share.unwrap_or(0.0) * v.requests as f64)
        .sum();
    // A route with one revision has no split to count: what it served
    // through that revision is all of it.
    let one_way = r.traffic.len() == 1;
    let served_one_way = revisions
        .iter()
        .any(|v| v.configured_percent == 100 && v.requests > 0);
    for v in &mut revisions {
        v.served_percent = if split > 0 {
            Some(v.split_requests as f64 * 100.0 / split as f64)
        } else if one_way && served_one_way {
            Some(if v.configured_percent == 100 {
                100.0
            } else {
                0.0
            })
        } else {
            None
        };
    }
    // The split first, largest share first; tagged-only revisions after.
    revisions.sort_by(|a, b| {
        b.configured_percent
            .cmp(&a.configured_percent)
            .then_with(|| a.name.cmp(&b.name))
    });
    RouteUi {
        kind: r.kind.to_string(),
        namespace: r.key.namespace.clone(),
        name: r.key.name.clone(),
        sticky: r.affinity.as_ref().map(|a| a.cookie.clone()),
        requests_per_second: per_second(total),
        activator_share: (total > 0).then(|| activator / total as f64),
        revisions,
    }
}

/// `/ui/data`.
#[derive(Debug, Serialize)]
pub struct UiView {
    /// Generation of the table shown.
    pub generation: u64,
    /// How far back the served split and rates look (up to 60 s; 0 on the
    /// first poll).
    pub window_seconds: f64,
    /// Routes in the table (the first [`MAX_ROUTES`] are shown).
    pub routes_total: usize,
    /// The routes shown.
    pub routes: Vec<RouteUi>,
}

/// A route in [`UiView`].
#[derive(Debug, Serialize)]
pub struct RouteUi {
    /// `Route` or `KIngress`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The sticky canary's cookie, if any.
    pub sticky: Option<String>,
    /// Requests per second over the window.
    pub requests_per_second: Option<f64>,
    /// Share of the window's requests that went to the activator.
    pub activator_share: Option<f64>,
    /// Its revisions: the split's, then tagged ones.
    pub revisions: Vec<RevisionUi>,
}

/// A revision of a route in [`UiView`].
#[derive(Debug, Serialize)]
pub struct RevisionUi {
    /// Revision (or Service) name.
    pub name: String,
    /// Its percent of the route's split (0: reached by tag only).
    pub configured_percent: u32,
    /// Its percent of the requests the route's split sent in the window.
    pub served_percent: Option<f64>,
    /// Requests the split sent it in the window (tag hosts not counted).
    pub split_requests: u64,
    /// Requests in the window, by any host of the route.
    pub requests: u64,
    /// Requests per second over the window.
    pub requests_per_second: Option<f64>,
    /// Median latency in the window (the end of its bucket), ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in the window (the end of its bucket), ms.
    pub p99_ms: Option<f64>,
    /// Share of responses that were 5xx, or none at all.
    pub error_rate: Option<f64>,
    /// Share of requests that went to the activator.
    pub activator_share: Option<f64>,
    /// No ready endpoint.
    pub cold: bool,
    /// Ready endpoints.
    pub endpoints: Vec<EndpointUi>,
}

/// An endpoint in [`RevisionUi`].
#[derive(Debug, Serialize)]
pub struct EndpointUi {
    /// `ip:port`.
    pub address: String,
    /// Requests in flight.
    pub inflight: u32,
    /// Ejection left, ms.
    pub ejected_for_ms: Option<u64>,
    /// Times ejected.
    pub ejections: u64,
    /// Its share of a warm endpoint's traffic (below 1 during slow start).
    pub warmth: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use config_sync::compiler::{build, BuildOptions, LastGood};
    use config_sync::sources::file::parse;

    const SNAPSHOT: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Route
metadata: {name: web, namespace: ns}
status:
  url: http://web.ns.example.com
  traffic:
  - {revisionName: web-1, percent: 90}
  - {revisionName: web-2, percent: 10}
  - {revisionName: web-3, percent: 0, tag: old, url: http://old-web.ns.example.com}
---
apiVersion: serving.knative.dev/v1
kind: Route
metadata: {name: solo, namespace: ns}
status:
  url: http://solo.ns.example.com
  traffic:
  - {revisionName: solo-1, percent: 100}
  - {revisionName: solo-2, percent: 0, tag: next, url: http://next-solo.ns.example.com}
"#;

    #[test]
    fn the_window_is_the_difference_from_the_oldest_snapshot() {
        let (t, _) = build(
            parse(SNAPSHOT).unwrap(),
            &BuildOptions::default(),
            &LastGood::default(),
            None,
            1,
        );
        let route = t.routes().iter().find(|r| r.key.name == "web").unwrap();
        let solo = t.routes().iter().find(|r| r.key.name == "solo").unwrap();
        let counts = |name: &str| {
            route
                .responses
                .iter()
                .find(|(b, _)| &*t.backend(*b).name == name)
                .unwrap()
                .1
                .clone()
        };
        let (one, two, three) = (counts("web-1"), counts("web-2"), counts("web-3"));
        // Before the first snapshot: counted, but outside any window.
        one.record(200);
        let ui = Ui::default();
        let start = Instant::now();
        let first = ui.view(&t, &Policy::default(), start);
        assert_eq!(first.window_seconds, 0.0);
        for _ in 0..90 {
            one.record(200);
            one.latency.record(1_000);
        }
        for _ in 0..9 {
            two.record(200);
            two.latency.record(3_000);
        }
        two.record(503);
        two.latency.record(100_000);
        two.activator.fetch_add(5, Ordering::Relaxed);
        one.split.fetch_add(90, Ordering::Relaxed);
        two.split.fetch_add(10, Ordering::Relaxed);
        // Through a tag host: the route's requests, not its split's.
        for _ in 0..20 {
            three.record(200);
            two.record(200);
        }
        // A one-revision route: what it served is all its revision's.
        for (name, n) in [("solo-1", 5), ("solo-2", 3)] {
            let c = &solo
                .responses
                .iter()
                .find(|(b, _)| &*t.backend(*b).name == name)
                .unwrap()
                .1;
            for _ in 0..n {
                c.record(200);
            }
        }
        let v = ui.view(&t, &Policy::default(), start + Duration::from_secs(10));
        assert_eq!(v.window_seconds, 10.0);
        let by_name = |name: &str| v.routes.iter().find(|r| r.name == name).unwrap();
        let served: Vec<_> = by_name("solo")
            .revisions
            .iter()
            .map(|v| (v.name.as_str(), v.served_percent, v.requests))
            .collect();
        assert_eq!(
            served,
            [("solo-1", Some(100.0), 5), ("solo-2", Some(0.0), 3)]
        );
        let r = by_name("web");
        assert_eq!(r.requests_per_second, Some(14.0));
        let names: Vec<&str> = r.revisions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["web-1", "web-2", "web-3"]);
        let (a, b, c) = (&r.revisions[0], &r.revisions[1], &r.revisions[2]);
        assert_eq!(
            (
                a.configured_percent,
                b.configured_percent,
                c.configured_percent
            ),
            (90, 10, 0)
        );
        assert_eq!(
            (a.served_percent, b.served_percent),
            (Some(90.0), Some(10.0))
        );
        assert_eq!(c.served_percent, Some(0.0));
        assert_eq!(a.p50_ms, Some(1.024));
        assert_eq!(b.p50_ms, Some(3.072));
        assert_eq!(b.p99_ms, Some(131.072));
        assert_eq!(b.error_rate, Some(1.0 / 30.0));
        assert_eq!(a.error_rate, Some(0.0));
        assert_eq!(b.activator_share, Some(5.0 / 30.0));
        assert_eq!(r.activator_share, Some(5.0 / 140.0));
        assert_eq!((b.requests, b.split_requests, c.requests), (30, 10, 20));
        // Past the window the first snapshot is dropped: the next view looks
        // back from the second one.
        let later = ui.view(&t, &Policy::default(), start + Duration::from_secs(65));
        assert_eq!(later.window_seconds, 55.0);
        let web = later.routes.iter().find(|r| r.name == "web").unwrap();
        assert_eq!(web.requests_per_second, Some(0.0));
    }
}
