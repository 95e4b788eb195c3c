//! Per-request choices, as plain functions: which way out of a split, and
//! which endpoint of a backend.
//!
//! A split is exact, not random: its 100 slots are laid out in smooth
//! weighted round-robin order ([`smooth_order`]) and each worker thread walks
//! them with a cursor of its own, so every 100 requests a thread sends
//! through a split take each way exactly its percent, evenly spread (a 1%
//! canary gets 1 in 100, never 0 or 4). A thread's cursors are its own (see
//! [`next_way`]): a pick never writes a line another thread writes.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use http::{HeaderMap, HeaderValue};
use rand::Rng;

use crate::health::Policy;
use crate::table::{Backend, Endpoint, Pick, Split, Target};

/// The pick a request for `target` takes: O(1), the next slot of this
/// thread's walk through a split.
#[inline]
pub fn pick(target: &Target) -> &Pick {
    match target {
        Target::One(pick) => pick,
        Target::Split(split) => &split.picks[next_way(split)],
    }
}

/// The pick a request with `headers` takes: for a sticky split (see
/// [`crate::affinity`]), the way its cookie names when the split still
/// serves it; else the next slot, and then `set_cookie` gets the cookie
/// naming it.
#[inline]
pub fn pick_for<'t>(
    target: &'t Target,
    headers: &HeaderMap,
    set_cookie: &mut Option<HeaderValue>,
) -> &'t Pick {
    let Target::Split(split) = target else {
        return pick(target);
    };
    let Some(sticky) = &split.sticky else {
        return &split.picks[next_way(split)];
    };
    if let Some(i) = sticky.chosen(headers) {
        return &split.picks[i];
    }
    let way = next_way(split);
    *set_cookie = Some(sticky.set_cookie[way].clone());
    &split.picks[way]
}

/// The way this thread's next request through `split` takes: the slot at
/// this thread's cursor for it, which moves on. The cursors are the
/// thread's own, a byte per split indexed by the split's id (ids of live
/// splits are distinct and dense, see [`SplitId`]): a pick touches no line
/// another thread writes, and the cursors of a thousand splits fit in
/// sixteen cache lines.
#[inline]
fn next_way(split: &Split) -> usize {
    let i = split.id.0 as usize % CURSORS_PER_THREAD;
    let at = CURSORS.with(|cursors| {
        let cursor = &cursors[i];
        let at = cursor.get().min(99);
        cursor.set(if at == 99 { 0 } else { at + 1 });
        at
    });
    split.slots[at as usize] as usize
}

/// Cursors a thread keeps: past this many live splits, two share one (and
/// are each off by the other's requests).
pub const CURSORS_PER_THREAD: usize = 1 << 14;

thread_local! {
    /// This thread's cursor of each split, by split id. Fixed and without a
    /// destructor, so that reaching it is one address computation.
    static CURSORS: [Cell<u8>; CURSORS_PER_THREAD] =
        const { [const { Cell::new(0) }; CURSORS_PER_THREAD] };
}

/// A split's id: distinct among live splits and dense (a split takes a
/// free one, or the next never used, and gives it back when dropped), so
/// that per-thread cursors indexed by it stay small: ids stay below the most
/// splits ever live at once (two tables' worth during a rebuild). An id reused by a new split carries a
/// thread's cursor position over, which only moves where the new split's
/// walk starts.
#[derive(Debug)]
pub struct SplitId(u32);

/// Free ids, and the next never used.
static IDS: Mutex<(Vec<u32>, u32)> = Mutex::new((Vec::new(), 0));

impl SplitId {
    /// A free id.
    pub fn take() -> Self {
        let mut ids = IDS.lock().unwrap_or_else(|e| e.into_inner());
        match ids.0.pop() {
            Some(id) => Self(id),
            None => {
                ids.1 += 1;
                Self(ids.1 - 1)
            }
        }
    }
}

impl Drop for SplitId {
    fn drop(&mut self) {
        IDS.lock().unwrap_or_else(|e| e.into_inner()).0.push(self.0);
    }
}

/// The 100 slots of a split with these percents (summing to 100, none 0),
/// in smooth weighted round-robin order (as nginx spreads weighted
/// servers): each step every way gains its percent, the one furthest ahead
/// (the first on a tie) is taken and pays 100. Each way gets exactly its
/// percent of the slots, and any run of consecutive slots stays close to it.
pub fn smooth_order(percents: &[u32]) -> [u8; 100] {
    debug_assert_eq!(percents.iter().sum::<u32>(), 100);
    let mut current = vec![0i64; percents.len()];
    let mut slots = [0u8; 100];
    for slot in &mut slots {
        for (c, &p) in current.iter_mut().zip(percents) {
            *c += i64::from(p);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .rev()
            .max_by_key(|(_, &c)| c)
            .expect("a split has a way out");
        current[best] -= 100;
        *slot = best as u8;
    }
    slots
}

/// A ready endpoint of `backend` by power of two choices on requests in
/// flight, at `now` ([`crate::health::millis`]). Skipped: endpoints whose
/// index is in `excluded` (connection refused earlier in this request) and
/// ejected ones, unless nothing else is left. Within `policy.slow_start` of
/// an endpoint becoming ready beside others, a warming endpoint the choice
/// falls on is kept only in proportion to its warmth. `None` when nothing is
/// left.
#[inline]
pub fn pick_endpoint<R: Rng + ?Sized>(
    backend: &Backend,
    excluded: &[usize],
    now: u64,
    policy: &Policy,
    rng: &mut R,
) -> Option<usize> {
    let endpoints = &backend.endpoints[..];
    if !excluded.is_empty() {
        return pick_among(endpoints, excluded, now, rng);
    }
    let (a, b) = p2c(endpoints.len(), |i| endpoints[i].load(), rng)?;
    // No endpoint ejected now (the common case): one comparison. Else an
    // ejected endpoint has nothing in flight, so p2c favours it: take the
    // other candidate instead, and look further only if both are out.
    let chosen = if backend.ejected_until.load(Ordering::Relaxed) <= now
        || !endpoints[a].state.ejected(now)
    {
        (a, b)
    } else if a != b && !endpoints[b].state.ejected(now) {
        (b, a)
    } else {
        return pick_among(endpoints, excluded, now, rng);
    };
    // Nobody warming (the common case) costs one comparison.
    if backend.newest_ready_at == 0 {
        return Some(chosen.0);
    }
    let span = policy.slow_start.as_millis() as u64;
    if span == 0 || now >= backend.newest_ready_at + span {
        return Some(chosen.0);
    }
    Some(warm_choice(endpoints, chosen, now, policy, rng))
}

/// The slow path: p2c among the endpoints neither excluded nor ejected (or
/// only not excluded, when every one left is ejected). Rare: a small
/// allocation is fine.
#[cold]
fn pick_among<R: Rng + ?Sized>(
    endpoints: &[Endpoint],
    excluded: &[usize],
    now: u64,
    rng: &mut R,
) -> Option<usize> {
    let open: Vec<usize> = (0..endpoints.len())
        .filter(|i| !excluded.contains(i))
        .collect();
    let healthy: Vec<usize> = open
        .iter()
        .copied()
        .filter(|&i| !endpoints[i].state.ejected(now))
        .collect();
    let left = if healthy.is_empty() { open } else { healthy };
    p2c(left.len(), |i| endpoints[left[i]].load(), rng).map(|(i, _)| left[i])
}

/// Between p2c's choice and the other candidate, while endpoints warm up:
/// a warming choice is kept with probability its warmth, else the other
/// (when it is neither colder nor ejected).
#[cold]
fn warm_choice<R: Rng + ?Sized>(
    endpoints: &[Endpoint],
    (chosen, other): (usize, usize),
    now: u64,
    policy: &Policy,
    rng: &mut R,
) -> usize {
    let warmth = |i: usize| endpoints[i].state.warmth(now, policy.slow_start);
    let w = warmth(chosen);
    if w >= 1.0 || chosen == other || endpoints[other].state.ejected(now) || warmth(other) <= w {
        return chosen;
    }
    if rng.random::<f64>() < w {
        chosen
    } else {
        other
    }
}

/// Power of two choices among `n`: sample two distinct indices and take the
/// less loaded; returns it and the other (the same index when `n` is 1).
#[inline]
fn p2c<R: Rng + ?Sized>(
    n: usize,
    load: impl Fn(usize) -> u32,
    rng: &mut R,
) -> Option<(usize, usize)> {
    match n {
        0 => None,
        1 => Some((0, 0)),
        _ => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            Some(if load(b) < load(a) { (b, a) } else { (a, b) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{EndpointState, Verdict};
    use crate::ir::PortSelector;
    use crate::table::{BackendKind, Split};
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::sync::Arc;
    use std::time::Duration;

    fn backend(endpoints: Vec<Endpoint>) -> Backend {
        Backend::new(
            "ns".into(),
            "rev".into(),
            "ns/rev".into(),
            PortSelector {
                name: "http".into(),
                number: None,
                h2: false,
                tls: false,
                or_http2: false,
            },
            BackendKind::Pods,
            endpoints,
            false,
        )
    }

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::new(format!("10.0.0.{}:8012", i + 1).parse().unwrap()))
            .collect()
    }

    fn to(backend: u32) -> Pick {
        Pick {
            backend,
            headers: None,
            activator: false,
        }
    }

    /// The largest difference, over every run of `window` consecutive picks
    /// in `seq` and every way out, between its count and its percent's share.
    fn worst_window_error(seq: &[u32], percents: &[u32], window: usize) -> f64 {
        let mut worst: f64 = 0.0;
        for (way, &pct) in percents.iter().enumerate() {
            let hits: Vec<u32> = seq.iter().map(|&b| u32::from(b == way as u32)).collect();
            let mut in_window: u32 = hits[..window].iter().sum();
            for start in 0..=seq.len() - window {
                if start > 0 {
                    in_window = in_window - hits[start - 1] + hits[start + window - 1];
                }
                let expected = window as f64 * f64::from(pct) / 100.0;
                worst = worst.max((f64::from(in_window) - expected).abs());
            }
        }
        worst
    }

    fn split(percents: &[u32]) -> Target {
        let picks = percents
            .iter()
            .enumerate()
            .map(|(i, &p)| (to(i as u32), p))
            .collect();
        Target::Split(Arc::new(Split::new(picks, None)))
    }

    #[test]
    fn every_window_of_100_picks_matches_the_percents_exactly() {
        // Seventeen ways.
        let many: Vec<u32> = std::iter::repeat_n(5, 16).chain([20]).collect();
        for percents in [
            &[1, 99][..],
            &[10, 90],
            &[33, 33, 34],
            &[50, 50],
            &[7, 13, 80],
            &many,
        ] {
            let target = split(percents);
            let seq: Vec<u32> = (0..10_000).map(|_| pick(&target).backend).collect();
            assert_eq!(
                worst_window_error(&seq, percents, 100),
                0.0,
                "{percents:?}: one thread's windows of 100 are exact"
            );
            // Shorter runs stay within a request of their share too.
            for window in [10, 25, 50] {
                let err = worst_window_error(&seq, percents, window);
                assert!(err <= 1.0, "{percents:?} window {window}: {err}");
            }
        }
    }

    #[test]
    fn smooth_order_spreads_a_small_share_and_never_takes_zero() {
        let order = smooth_order(&[10, 90]);
        let tens: Vec<usize> = (0..100).filter(|&i| order[i] == 0).collect();
        assert_eq!(tens.len(), 10);
        assert!(tens.windows(2).all(|w| w[1] - w[0] == 10), "{tens:?}");
        let target = Target::Split(Arc::new(Split::new(
            vec![(to(0), 90), (to(2), 0), (to(1), 10)],
            None,
        )));
        let mut counts = [0u32; 3];
        for _ in 0..1000 {
            counts[pick(&target).backend as usize] += 1;
        }
        assert_eq!(counts, [900, 100, 0]);
    }

    #[test]
    fn threads_walk_their_own_cursor() {
        let target = split(&[1, 99]);
        let counts: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| (0..1000).filter(|_| pick(&target).backend == 0).count() as u32)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Each thread walks with a cursor of its own: exactly 10 each.
        assert_eq!(counts, [10, 10, 10]);
    }

    #[test]
    fn single_revision_target() {
        assert_eq!(pick(&Target::One(to(4))).backend, 4);
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let b = backend(endpoints(2));
        b.endpoints[0].state.inflight.store(5, Ordering::Relaxed);
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..100 {
            assert_eq!(
                pick_endpoint(&b, &[], 0, &Policy::default(), &mut rng),
                Some(1)
            );
        }
    }

    #[test]
    fn p2c_spreads_equal_load() {
        let b = backend(endpoints(4));
        let mut rng = SmallRng::seed_from_u64(9);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[pick_endpoint(&b, &[], 0, &Policy::default(), &mut rng).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn exclusions_are_skipped_and_exhaustion_is_none() {
        let b = backend(endpoints(3));
        let p = Policy::default();
        let mut rng = SmallRng::seed_from_u64(5);
        for _ in 0..100 {
            assert_eq!(pick_endpoint(&b, &[0, 2], 0, &p, &mut rng), Some(1));
        }
        assert_eq!(pick_endpoint(&b, &[0, 1, 2], 0, &p, &mut rng), None);
        assert_eq!(pick_endpoint(&backend(vec![]), &[], 0, &p, &mut rng), None);
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_they_return_or_nothing_else_is_left() {
        let b = backend(endpoints(3));
        let p = Policy {
            eject_after: 1,
            ..Policy::default()
        };
        let mut rng = SmallRng::seed_from_u64(11);
        let Verdict::Ejected { until, .. } = b.endpoints[1].state.failed(1000, 2, &p) else {
            panic!("ejected after one failure");
        };
        b.ejected_until.fetch_max(until, Ordering::Relaxed);
        assert!(b.endpoints[1].state.ejected(1000));
        for _ in 0..1000 {
            assert_ne!(pick_endpoint(&b, &[], 1000, &p, &mut rng), Some(1));
        }
        // Past its ejection it is picked again.
        let back = (0..1000)
            .filter(|_| pick_endpoint(&b, &[], 60_000, &p, &mut rng) == Some(1))
            .count();
        assert!(back > 200, "{back}");
        // Every other one excluded: an ejected endpoint beats none.
        assert_eq!(pick_endpoint(&b, &[0, 2], 1000, &p, &mut rng), Some(1));
    }

    #[test]
    fn a_warming_endpoint_takes_a_share_that_grows_to_its_full_one() {
        let now = 100_000;
        let p = Policy {
            slow_start: Duration::from_secs(10),
            ..Policy::default()
        };
        let old = Endpoint::new("10.0.0.1:80".parse().unwrap());
        let new = Endpoint {
            state: Arc::new(EndpointState::new(now)),
            ..Endpoint::new("10.0.0.2:80".parse().unwrap())
        };
        let b = backend(vec![old, new]);
        let mut rng = SmallRng::seed_from_u64(2);
        let share = |at: u64, rng: &mut SmallRng| {
            (0..10_000)
                .filter(|_| pick_endpoint(&b, &[], at, &p, rng) == Some(1))
                .count() as f64
                / 10_000.0
        };
        let start = share(now, &mut rng);
        let half = share(now + 5_000, &mut rng);
        let warm = share(now + 10_000, &mut rng);
        // Equal loads: a warm pair splits 50/50; warming takes warmth × 50%.
        assert!((0.03..0.08).contains(&start), "{start}");
        assert!((0.22..0.28).contains(&half), "{half}");
        assert!((0.47..0.53).contains(&warm), "{warm}");
        let p_off = Policy {
            slow_start: Duration::ZERO,
            ..p
        };
        let off = (0..10_000)
            .filter(|_| pick_endpoint(&b, &[], now, &p_off, &mut rng) == Some(1))
            .count();
        assert!((4_700..5_300).contains(&off), "{off}");
    }
}
