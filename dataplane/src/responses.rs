//! Response counts by status code, latencies and activator requests for one
//! route's revision. They live in the
//! routing table, next to what they count, so the request path records a
//! response with one atomic add: no label hashing, no lock, no map entry per
//! label set (a `prometheus` counter vector keyed by route, revision and code
//! cost 3–15% of throughput and 4–6 MB at 10,000 routes). Like in-flight counts,
//! they carry across table swaps.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// Distinct codes counted lock-free; a route's revision rarely answers more.
const SLOTS: usize = 6;

/// Responses of one route's revision, by status code, with their latencies
/// and how many went through the activator.
#[derive(Debug, Default)]
pub struct Responses {
    slots: [Slot; SLOTS],
    /// Codes past the first [`SLOTS`] distinct ones: rare, so a lock is fine.
    overflow: Mutex<Vec<(u16, u64)>>,
    /// Request durations.
    pub latency: Latencies,
    /// Requests sent to the activator (the revision had no ready endpoint).
    pub activator: AtomicU64,
    /// Requests a weighted split sent here (not a tag host, not a one-way
    /// path): what the served split is made of.
    pub split: AtomicU64,
}

/// Latency buckets: the first holds durations under 64 µs, each next one
/// half an octave (a factor of √2) more, the last everything from 33.5 s.
pub const LATENCY_BUCKETS: usize = 40;

/// Request durations in [`LATENCY_BUCKETS`] buckets: one atomic add a
/// request. The counts wrap; a window takes differences (`wrapping_sub`).
#[derive(Debug)]
pub struct Latencies {
    buckets: [AtomicU32; LATENCY_BUCKETS],
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Latencies {
    /// Count one request that took `micros`.
    #[inline]
    pub fn record(&self, micros: u64) {
        self.buckets[latency_bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> [u32; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }
}

/// The bucket of a duration: integer work only (no logarithm per request).
#[inline]
pub fn latency_bucket(micros: u64) -> usize {
    if micros < 64 {
        return 0;
    }
    let octave = 63 - micros.leading_zeros() as usize; // 6 and up
    let half = ((micros >> (octave - 1)) & 1) as usize;
    (1 + 2 * (octave - 6) + half).min(LATENCY_BUCKETS - 1)
}

/// The upper end of bucket `i`, in microseconds (`f64::INFINITY` for the last).
pub fn latency_bucket_end(i: usize) -> f64 {
    match i {
        0 => 64.0,
        _ if i >= LATENCY_BUCKETS - 1 => f64::INFINITY,
        _ => {
            let octave = 6 + (i - 1) / 2;
            let base = (1u64 << octave) as f64;
            if (i - 1) % 2 == 0 {
                base * 1.5
            } else {
                base * 2.0
            }
        }
    }
}

/// The duration under which `q` (0..=1) of the requests counted in
/// `buckets` finished, as the end of the bucket that holds it (in µs);
/// `None` with no request counted.
pub fn latency_quantile(buckets: &[u32; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        seen += u64::from(n);
        if seen >= rank {
            return Some(latency_bucket_end(i));
        }
    }
    Some(f64::INFINITY)
}

#[derive(Debug, Default)]
struct Slot {
    /// The code plus one; 0 marks a free slot (code 0 means "no response").
    code: AtomicU16,
    count: AtomicU64,
}

impl Responses {
    /// Count one response with status `code` (0 when none was written).
    #[inline]
    pub fn record(&self, code: u16) {
        let key = code.saturating_add(1);
        for slot in &self.slots {
            let mut seen = slot.code.load(Ordering::Relaxed);
            if seen == 0 {
                // Claim the free slot; another thread may claim it first.
                seen =
                    match slot
                        .code
                        .compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed)
                    {
                        Ok(_) => key,
                        Err(now) => now,
                    };
            }
            if seen == key {
                slot.count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        match overflow.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => overflow.push((code, 1)),
        }
    }

    /// Every code counted so far and its count, in no particular order.
    pub fn counts(&self) -> Vec<(u16, u64)> {
        let mut out: Vec<(u16, u64)> = self
            .slots
            .iter()
            .filter_map(|s| match s.code.load(Ordering::Relaxed) {
                0 => None,
                key => Some((key - 1, s.count.load(Ordering::Relaxed))),
            })
            .collect();
        out.extend(
            self.overflow
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sorted(r: &Responses) -> Vec<(u16, u64)> {
        let mut c = r.counts();
        c.sort_unstable();
        c
    }

    #[test]
    fn latency_buckets_are_half_octaves_and_quantiles_land_in_them() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(63), 0);
        assert_eq!(latency_bucket(64), 1);
        assert_eq!(latency_bucket(95), 1);
        assert_eq!(latency_bucket(96), 2);
        assert_eq!(latency_bucket(127), 2);
        assert_eq!(latency_bucket(128), 3);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        // Every duration is below its bucket's end and at least the one before.
        for micros in [1u64, 64, 100, 1000, 1500, 123_456, 9_999_999, 30_000_000] {
            let i = latency_bucket(micros);
            assert!((micros as f64) < latency_bucket_end(i), "{micros}");
            if i > 0 {
                assert!((micros as f64) >= latency_bucket_end(i - 1), "{micros}");
            }
        }
        let l = Latencies::default();
        for _ in 0..98 {
            l.record(500); // bucket ending at 512 µs
        }
        l.record(20_000);
        l.record(20_000);
        let b = l.snapshot();
        assert_eq!(latency_quantile(&b, 0.5), Some(512.0));
        assert_eq!(latency_quantile(&b, 0.98), Some(512.0));
        assert_eq!(latency_quantile(&b, 0.99), Some(24_576.0));
        assert_eq!(latency_quantile(&[0; LATENCY_BUCKETS], 0.5), None);
    }

    #[test]
    fn counts_each_code_including_past_the_lock_free_slots() {
        let r = Responses::default();
        assert!(r.counts().is_empty());
        for code in [200, 200, 0, 404, 200] {
            r.record(code);
        }
        assert_eq!(sorted(&r), [(0, 1), (200, 3), (404, 1)]);
        // Ten distinct codes: six slots, the rest in the overflow list.
        let r = Responses::default();
        for code in 500..510u16 {
            for _ in 0..(code - 499) {
                r.record(code);
            }
        }
        let expected: Vec<(u16, u64)> = (500..510u16).map(|c| (c, u64::from(c - 499))).collect();
        assert_eq!(sorted(&r), expected);
    }

    #[test]
    fn concurrent_records_lose_nothing() {
        let r = Arc::new(Responses::default());
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u16 {
                        // Every thread races for the same free slots.
                        r.record(200 + (i + t) % 8);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let counts = sorted(&r);
        assert_eq!(counts.len(), 8, "{counts:?}");
        assert_eq!(counts.iter().map(|c| c.1).sum::<u64>(), 40_000);
        assert!(counts.iter().all(|c| c.1 == 5_000), "{counts:?}");
    }
}
