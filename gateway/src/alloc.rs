//! The global allocator: mimalloc, through the calls that are fastest for
//! what Rust asks of it.
//!
//! The `mimalloc` crate sends every allocation through `mi_malloc_aligned`,
//! whose fast path only covers blocks up to 1 KiB; larger ones (header
//! maps, buffers: several per request) take its generic aligned path. Every
//! mimalloc block is aligned to at least 8 bytes, so a request for an
//! alignment of 8 or less is a plain `mi_malloc`: under callgrind, a few
//! thousand fewer instructions per proxied request (docs/performance.md).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_long, c_void};

use libmimalloc_sys as mi;

/// The alignment of every block mimalloc returns.
const MI_MIN_ALIGN: usize = 8;

/// mimalloc as Rust's global allocator.
pub struct Mimalloc;

// SAFETY: each call forwards to mimalloc, which returns blocks of at least
// the size asked for, aligned as asked (checked in `fits`), or null.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if fits(layout.align()) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if fits(layout.align()) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if fits(layout.align()) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

/// mimalloc's `mi_option_arena_eager_commit` (its v3 `mi_option_e`; the
/// test below checks the number against the option's documented default).
const ARENA_EAGER_COMMIT: c_int = 4;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}

/// Let mimalloc give freed memory back to the system. By default it commits
/// its arenas eagerly on Linux, and pages freed there stay resident: a
/// gateway that built its first table at 10,000 KIngresses kept the cold
/// start's peak for good (about 160 MiB, against 138 MiB with this, in one
/// run). The request path allocates from pages in use, so it is unaffected
/// (docs/performance.md). It must run before the first allocation, when
/// mimalloc reserves its first arena: the binary calls it from an ELF
/// constructor (`gateway/src/main.rs`), and it then overrides
/// `MIMALLOC_ARENA_EAGER_COMMIT`.
pub extern "C" fn return_freed_memory() {
    // SAFETY: sets one of mimalloc's options, a plain integer store that
    // needs nothing of mimalloc initialised.
    unsafe { mi_option_set(ARENA_EAGER_COMMIT, 0) }
}

/// Give back at once what the calling thread's heap holds free, rather than
/// after mimalloc's purge delay, which only runs when that thread allocates
/// or frees again. The control plane calls it on its own threads when a
/// burst of work is over (a first sync at 10,000 KIngresses frees tens of
/// MB); never on the request path. (With the `system-alloc` build, whose
/// heap is glibc's, this finds nothing to do.)
pub fn trim() {
    // SAFETY: a mimalloc call with no preconditions.
    unsafe { mi_collect(true) }
}

/// Whether mimalloc's natural alignment covers `align`.
#[inline]
fn fits(align: usize) -> bool {
    align <= MI_MIN_ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_number_is_mimallocs_arena_eager_commit() {
        // Its documented default, 2 ("only where the OS overcommits"), and
        // the purge delay's (1,000 ms) eleven places further on: the
        // numbering this file assumes.
        unsafe {
            assert_eq!(mi_option_get(ARENA_EAGER_COMMIT), 2);
            assert_eq!(mi_option_get(ARENA_EAGER_COMMIT + 11), 1000);
        }
    }

    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 24, 40, 1000, 1025, 5000, 70_000, 1 << 20] {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                    p.write_bytes(0xa5, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc: size {size}, align {align}");
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|b| *b == 0xa5));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed: size {size}, align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
