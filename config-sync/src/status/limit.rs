//! A client-side rate limit on status writes, as client-go's token bucket
//! (`--kube-api-qps`, `--kube-api-burst`): `burst` writes at once, then
//! `qps` a second. Written here because the writer must ask "may I now, and
//! if not, when?" without waiting, so that it keeps choosing the most urgent
//! write; the limiter crates only offer to wait.

use std::time::{Duration, Instant};

/// Tokens refilled at `qps` up to `burst`.
#[derive(Debug)]
pub(crate) struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket. `qps` ≤ 0 means no limit.
    pub(crate) fn new(qps: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.at = now;
    }

    /// Take a token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        if self.qps <= 0.0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there.
    pub(crate) fn next_at(&self, now: Instant) -> Instant {
        if self.qps <= 0.0 {
            return now;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        self.at.max(now) + Duration::from_secs_f64(missing / self.qps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_never_more() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 3, t0);
        let taken = (0..5).filter(|_| b.try_take(t0)).count();
        assert_eq!(taken, 3, "the burst");
        let next = b.next_at(t0);
        assert_eq!(next - t0, Duration::from_millis(100));
        assert!(!b.try_take(t0 + Duration::from_millis(99)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        // Over one second from empty: 10 more, however often it is asked.
        let mut n = 0;
        for ms in 101..=1100 {
            if b.try_take(t0 + Duration::from_millis(ms)) {
                n += 1;
            }
        }
        assert_eq!(n, 10);
        // A long idle refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 3);
    }

    #[test]
    fn zero_qps_is_no_limit() {
        let t0 = Instant::now();
        let mut b = Bucket::new(0.0, 1, t0);
        assert!((0..1000).all(|_| b.try_take(t0)));
        assert_eq!(b.next_at(t0), t0);
    }
}
