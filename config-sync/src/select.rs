//! Per-request choices, as plain functions: which way out of a split, and
//! which endpoint of a backend.

use rand::Rng;

use crate::table::{Endpoint, Pick, Target};

/// The pick a request for `target` takes: O(1), one random number for a split.
#[inline]
pub fn pick<'t, R: Rng + ?Sized>(target: &'t Target, rng: &mut R) -> &'t Pick {
    match target {
        Target::One(pick) => pick,
        Target::Split(split) => split.slot(rng.random_range(0..100usize)),
    }
}

/// Power of two choices on requests in flight: sample two distinct endpoints
/// and take the less loaded. Endpoints whose index is in `excluded` (connection
/// refused earlier in this request) are skipped. `None` when nothing is left.
#[inline]
pub fn pick_endpoint<R: Rng + ?Sized>(
    endpoints: &[Endpoint],
    excluded: &[usize],
    rng: &mut R,
) -> Option<usize> {
    if excluded.is_empty() {
        return p2c(endpoints.len(), |i| endpoints[i].load(), rng);
    }
    // Retry path only: rare, so a small allocation is fine.
    let left: Vec<usize> = (0..endpoints.len())
        .filter(|i| !excluded.contains(i))
        .collect();
    p2c(left.len(), |i| endpoints[left[i]].load(), rng).map(|i| left[i])
}

#[inline]
fn p2c<R: Rng + ?Sized>(n: usize, load: impl Fn(usize) -> u32, rng: &mut R) -> Option<usize> {
    match n {
        0 => None,
        1 => Some(0),
        _ => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Split;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

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

    #[test]
    fn split_follows_weights_and_never_picks_zero() {
        let split = Target::Split(Arc::new(Split::new(vec![
            (to(0), 90),
            (to(2), 0),
            (to(1), 10),
        ])));
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[pick(&split, &mut rng).backend as usize] += 1;
        }
        assert!((89_000..91_000).contains(&counts[0]), "{counts:?}");
        assert!((9_000..11_000).contains(&counts[1]), "{counts:?}");
        assert_eq!(counts[2], 0);
    }

    #[test]
    fn single_revision_target() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(pick(&Target::One(to(4)), &mut rng).backend, 4);
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let eps = endpoints(2);
        eps[0].inflight.store(5, Ordering::Relaxed);
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..100 {
            assert_eq!(pick_endpoint(&eps, &[], &mut rng), Some(1));
        }
    }

    #[test]
    fn p2c_spreads_equal_load() {
        let eps = endpoints(4);
        let mut rng = SmallRng::seed_from_u64(9);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[pick_endpoint(&eps, &[], &mut rng).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn exclusions_are_skipped_and_exhaustion_is_none() {
        let eps = endpoints(3);
        let mut rng = SmallRng::seed_from_u64(5);
        for _ in 0..100 {
            assert_eq!(pick_endpoint(&eps, &[0, 2], &mut rng), Some(1));
        }
        assert_eq!(pick_endpoint(&eps, &[0, 1, 2], &mut rng), None);
        assert_eq!(pick_endpoint(&[], &[], &mut rng), None);
    }
}
