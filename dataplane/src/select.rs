//! Which endpoint of a backend a request goes to, as plain functions: power
//! of two choices on requests in flight, around excluded, ejected and
//! warming endpoints.

use std::sync::atomic::Ordering;

use rand::Rng;

use crate::health::Policy;
use crate::table::{Backend, Endpoint};

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
    use crate::endpoints::PortSelector;
    use crate::health::{EndpointState, Verdict};
    use crate::table::BackendKind;
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
