//! What the gateway learns about an endpoint while using it, kept beside it in
//! the table and carried across table swaps: requests in flight, connection
//! failures in a row and the ejection they lead to, and when it became ready
//! (for slow start). Responses, even 5xx, say nothing of an endpoint's health
//! here: only a refused or reset connection does.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since the process's clock epoch (the first call), for times
/// kept in atomics. 0 is never a time: the epoch reads as 1.
pub fn millis(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_millis(1));
    at.saturating_duration_since(epoch).as_millis() as u64
}

/// Milliseconds since the clock epoch, now.
pub fn now_millis() -> u64 {
    millis(Instant::now())
}

/// How endpoints are ejected and warmed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failed connections in a row that eject an endpoint; 0: never eject.
    pub eject_after: u32,
    /// The first ejection's length; each ejection that follows without a
    /// success in between doubles it, up to [`MAX_EJECTION_DOUBLINGS`] times.
    pub eject_for: Duration,
    /// A newly ready endpoint's share ramps up over this long; zero: off.
    pub slow_start: Duration,
}

/// An ejection lasts at most `eject_for` × 2^this.
pub const MAX_EJECTION_DOUBLINGS: u32 = 5;

/// The share a warming endpoint gets at least, of what it would get warm, so
/// that it is tried at all while it warms.
pub const SLOW_START_FLOOR: f64 = 0.1;

impl Default for Policy {
    fn default() -> Self {
        Self {
            eject_after: 5,
            eject_for: Duration::from_secs(10),
            slow_start: Duration::ZERO,
        }
    }
}

/// The live state of one endpoint, shared by every table that holds it.
/// What every request touches (in flight, failures in a row) is kept small,
/// so that two endpoints' states often share a cache line; what only
/// failures, slow start and views touch is behind a pointer.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests in flight to it.
    pub inflight: AtomicU32,
    /// Connections refused or reset in a row; with [`STREAK_PENDING`] set
    /// after an ejection, until a success ends the streak.
    failures: AtomicU32,
    cold: Box<Cold>,
}

/// Set in `failures` after an ejection: the next success also resets the
/// ejection streak (so a success costs nothing more while all is well).
const STREAK_PENDING: u32 = 1 << 31;

#[derive(Debug, Default)]
struct Cold {
    /// Ejections since the last success (doubles the next one's length).
    streak: AtomicU32,
    /// Ejected until this [`millis`] time; 0 or past: not ejected.
    ejected_until: AtomicU64,
    /// Ejections since it was first seen.
    ejections: AtomicU64,
    /// When it became ready beside others ([`millis`]); 0: it did not warm
    /// up (there when the gateway started, or the first of a revision
    /// waking from zero).
    ready_at: u64,
}

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; the endpoint stays.
    Counted,
    /// The endpoint is ejected for `length`, until `until` ([`millis`]).
    Ejected {
        /// How long.
        length: Duration,
        /// Until when.
        until: u64,
    },
    /// It would have been ejected, but it is the last one of its revision
    /// not ejected.
    Kept,
}

impl EndpointState {
    /// A new endpoint's state; `ready_at` as in [`EndpointState::ready_at`].
    pub fn new(ready_at: u64) -> Self {
        Self {
            cold: Box::new(Cold {
                ready_at,
                ..Cold::default()
            }),
            ..Self::default()
        }
    }

    /// When it became ready beside others ([`millis`]); 0 if it did not warm up.
    pub fn ready_at(&self) -> u64 {
        self.cold.ready_at
    }

    /// Until when ([`millis`]) it is ejected; 0 or past: not ejected.
    pub fn ejected_until(&self) -> u64 {
        self.cold.ejected_until.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    #[inline]
    pub fn load(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether it is ejected at `now` ([`millis`]).
    #[inline]
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until() > now
    }

    /// Milliseconds of ejection left at `now`, if ejected.
    pub fn ejected_for(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until();
        (until > now).then(|| until - now)
    }

    /// Ejections so far.
    pub fn ejections(&self) -> u64 {
        self.cold.ejections.load(Ordering::Relaxed)
    }

    /// Connection failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed) & !STREAK_PENDING
    }

    /// The share of a warm endpoint's traffic it takes at `now`: 1 when warm,
    /// else rising linearly from [`SLOW_START_FLOOR`] over `slow_start`.
    #[inline]
    pub fn warmth(&self, now: u64, slow_start: Duration) -> f64 {
        let span = slow_start.as_millis() as u64;
        let ready_at = self.cold.ready_at;
        if ready_at == 0 || span == 0 || now >= ready_at + span {
            return 1.0;
        }
        let f = (now.saturating_sub(ready_at)) as f64 / span as f64;
        f.max(SLOW_START_FLOOR)
    }

    /// A response came from it: the failure count, and an ejection streak,
    /// start over. Reads first so that a healthy endpoint's line is not
    /// written per request.
    #[inline]
    pub fn succeeded(&self) {
        let failures = self.failures.load(Ordering::Relaxed);
        if failures != 0 {
            self.failures.store(0, Ordering::Relaxed);
            if failures & STREAK_PENDING != 0 {
                self.cold.streak.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A connection to it was refused or reset at `now`. `others_left`: the
    /// endpoints of its revision other than it that are not ejected.
    pub fn failed(&self, now: u64, others_left: usize, policy: &Policy) -> Verdict {
        let failures = (self.failures.fetch_add(1, Ordering::Relaxed) + 1) & !STREAK_PENDING;
        if policy.eject_after == 0 || failures < policy.eject_after || self.ejected(now) {
            return Verdict::Counted;
        }
        if others_left == 0 {
            return Verdict::Kept;
        }
        let cold = &self.cold;
        let streak = cold.streak.fetch_add(1, Ordering::Relaxed);
        let length = policy.eject_for * (1 << streak.min(MAX_EJECTION_DOUBLINGS));
        let until = now + length.as_millis() as u64;
        cold.ejected_until.store(until, Ordering::Relaxed);
        self.failures.store(STREAK_PENDING, Ordering::Relaxed);
        cold.ejections.fetch_add(1, Ordering::Relaxed);
        Verdict::Ejected { length, until }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            eject_after: 3,
            eject_for: Duration::from_secs(1),
            slow_start: Duration::from_secs(10),
        }
    }

    #[test]
    fn ejected_after_failures_in_a_row_and_backoff_doubles() {
        let e = EndpointState::new(0);
        let p = policy();
        assert_eq!(e.failed(100, 1, &p), Verdict::Counted);
        assert_eq!(e.failed(100, 1, &p), Verdict::Counted);
        assert_eq!(
            e.failed(100, 1, &p),
            Verdict::Ejected {
                length: Duration::from_secs(1),
                until: 1100
            }
        );
        assert!(e.ejected(1099) && !e.ejected(1100));
        assert_eq!(e.ejected_for(600), Some(500));
        // Back, and failing again with no success between: twice as long.
        for _ in 0..2 {
            assert_eq!(e.failed(1200, 1, &p), Verdict::Counted);
        }
        assert_eq!(
            e.failed(1200, 1, &p),
            Verdict::Ejected {
                length: Duration::from_secs(2),
                until: 3200
            }
        );
        assert_eq!(e.ejections(), 2);
        e.succeeded();
        for _ in 0..2 {
            e.failed(5000, 1, &p);
        }
        assert_eq!(
            e.failed(5000, 1, &p),
            Verdict::Ejected {
                length: Duration::from_secs(1),
                until: 6000
            }
        );
    }

    #[test]
    fn a_success_resets_the_count_and_the_last_endpoint_stays() {
        let e = EndpointState::new(0);
        let p = policy();
        e.failed(0, 1, &p);
        e.failed(0, 1, &p);
        e.succeeded();
        assert_eq!(e.failures(), 0);
        assert_eq!(e.failed(0, 1, &p), Verdict::Counted);
        let last = EndpointState::new(0);
        for _ in 0..2 {
            last.failed(0, 0, &p);
        }
        assert_eq!(last.failed(0, 0, &p), Verdict::Kept);
        assert!(!last.ejected(0));
        let off = Policy {
            eject_after: 0,
            ..p
        };
        for _ in 0..10 {
            assert_eq!(e.failed(0, 1, &off), Verdict::Counted);
        }
    }

    #[test]
    fn warmth_ramps_from_the_floor_and_is_full_when_not_warming() {
        let p = policy().slow_start;
        assert_eq!(EndpointState::new(0).warmth(5, p), 1.0);
        let e = EndpointState::new(1000);
        assert_eq!(e.warmth(1000, p), SLOW_START_FLOOR);
        assert!((e.warmth(6000, p) - 0.5).abs() < 1e-9);
        assert_eq!(e.warmth(11_000, p), 1.0);
        assert_eq!(e.warmth(2000, Duration::ZERO), 1.0);
    }
}
