//! Where a path's traffic goes: one way, or a weighted split, and the way a
//! request takes, as plain functions.
//!
//! A split is exact, not random: its 100 slots are laid out in smooth
//! weighted round-robin order ([`smooth_order`]) and each worker thread walks
//! them with a cursor of its own, so every 100 requests a thread sends
//! through a split take each way exactly its percent, evenly spread (a 1%
//! canary gets 1 in 100, never 0 or 4). A thread's cursors are its own (see
//! [`next_way`]): a pick never writes a line another thread writes.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::affinity::Sticky;

/// Index of a backend in [`Table::backend`].
pub type BackendId = u32;

/// Headers set on the upstream request, shared by every request that uses them.
pub type Headers = Arc<[(HeaderName, HeaderValue)]>;

/// One way out of a split: a backend and what is set on the way.
#[derive(Debug, Clone)]
pub struct Pick {
    /// Where the request goes.
    pub backend: BackendId,
    /// Set on the upstream request after the split (for a revision, its
    /// `Knative-Serving-Revision` and `-Namespace`).
    pub headers: Option<Headers>,
    /// With no ready endpoint: the activator (true, a revision) or 503.
    pub activator: bool,
}

/// Where a path's traffic goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// All of it one way (a tag host, a one-revision route).
    One(Pick),
    /// A weighted split.
    Split(Arc<Split>),
}

impl Target {
    /// Every pick with its percent.
    pub fn shares(&self) -> Vec<(&Pick, u32)> {
        match self {
            Target::One(p) => vec![(p, 100)],
            Target::Split(s) => s
                .picks
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        p,
                        s.slots.iter().filter(|&&x| x as usize == i).count() as u32,
                    )
                })
                .collect(),
        }
    }
}

/// A weighted split precomputed as 100 slots (Knative percents are whole
/// numbers summing to 100) in smooth weighted round-robin order, walked by a
/// cursor each worker thread keeps for it: every 100 requests a thread sends
/// through it take each way exactly its percent, spread evenly (see
/// [`pick`]).
#[derive(Debug)]
pub struct Split {
    pub(crate) picks: Box<[Pick]>,
    pub(crate) slots: [u8; 100],
    pub(crate) id: SplitId,
    /// With affinity: the cookie that keeps a user on one way out.
    pub(crate) sticky: Option<Box<Sticky>>,
}

impl Split {
    /// A split from `(pick, percent)` pairs whose percents sum to 100; at most
    /// 100 of them have a share. `sticky` names the ways with a share, in order.
    pub fn new(weights: Vec<(Pick, u32)>, sticky: Option<Sticky>) -> Self {
        debug_assert_eq!(weights.iter().map(|w| w.1).sum::<u32>(), 100);
        let (picks, percents): (Vec<Pick>, Vec<u32>) =
            weights.into_iter().filter(|w| w.1 > 0).unzip();
        Self {
            picks: picks.into_boxed_slice(),
            id: SplitId::take(),
            slots: smooth_order(&percents),
            sticky: sticky.map(Box::new),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
