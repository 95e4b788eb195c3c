//! Response counts by status code for one route's revision. They live in the
//! routing table, next to what they count, so the request path records a
//! response with one atomic add: no label hashing, no lock, no map entry per
//! label set (a `prometheus` counter vector keyed by route, revision and code
//! cost 3–15% of throughput and 4–6 MB at 10,000 routes). Like in-flight counts,
//! they carry across table swaps.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;

/// Distinct codes counted lock-free; a route's revision rarely answers more.
const SLOTS: usize = 6;

/// Responses of one route's revision, by status code.
#[derive(Debug, Default)]
pub struct Responses {
    slots: [Slot; SLOTS],
    /// Codes past the first [`SLOTS`] distinct ones: rare, so a lock is fine.
    overflow: Mutex<Vec<(u16, u64)>>,
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
