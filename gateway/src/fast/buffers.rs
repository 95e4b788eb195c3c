//! The fast path's byte buffers, reused per worker thread: a request takes
//! two and gives them back when it ends, so the same few (already in cache)
//! serve every request instead of two fresh allocations each.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Capacity a new buffer starts with: a request head, or a response head and
/// a small body, in one read (nginx's proxy buffers are 4 or 8 KiB too); a
/// larger head grows it. Every request in flight holds two.
const START: usize = 8 * 1024;
/// A buffer grown past this is let go rather than kept.
const KEEP_AT_MOST: usize = 64 * 1024;
/// Idle buffers kept per thread: as many as two for each request a thread
/// commonly has in flight (64 connections a thread), so that a busy thread
/// allocates none. They are memory its busiest moment held anyway.
const IDLE: usize = 128;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer, returned to its thread's free list on drop.
pub struct Buf(Vec<u8>);

impl Buf {
    /// An empty buffer of at least 8 KiB capacity.
    pub fn take() -> Buf {
        let reused = FREE.with_borrow_mut(|free| free.pop());
        Buf(reused.unwrap_or_else(|| Vec::with_capacity(START)))
    }

    /// An empty buffer with no capacity (nothing allocated, none taken
    /// from the free list), for what has nothing to hold.
    pub const fn none() -> Buf {
        Buf(Vec::new())
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        if v.capacity() < START || v.capacity() > KEEP_AT_MOST {
            return;
        }
        v.clear();
        // try_with: a buffer dropped while the thread exits is just freed.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < IDLE {
                free.push(v);
            }
        });
    }
}

impl Deref for Buf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_empty_and_an_oversized_one_is_let_go() {
        let mut a = Buf::take();
        a.extend_from_slice(b"abc");
        let ptr = a.as_ptr();
        drop(a);
        let b = Buf::take();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr, "the same allocation, reused");
        drop(b);
        let mut big = Buf::take();
        big.reserve(KEEP_AT_MOST * 2);
        let ptr = big.as_ptr();
        drop(big);
        assert_ne!(Buf::take().as_ptr(), ptr);
    }

    #[test]
    fn an_empty_buffer_neither_allocates_nor_joins_the_free_list() {
        let a = Buf::take();
        let ptr = a.as_ptr();
        drop(a);
        let none = Buf::none();
        assert_eq!(none.capacity(), 0);
        drop(none);
        assert_eq!(
            Buf::take().as_ptr(),
            ptr,
            "the free list still holds the real buffer, first"
        );
    }
}
