//! A global allocator that can keep freed large blocks for reuse while training.
//!
//! glibc serves every block of 32 MiB or more (the largest mmap threshold it accepts, set by
//! [`crate::util::tune_allocator`]) with a fresh `mmap` and returns it with `munmap` when it is
//! freed. A training step allocates and frees such blocks by the dozen (the tag encoder's
//! feed-forward activations and their gradients are 38 MB each at the bench's batch), so every
//! step page-faults them in again: the kernel zeroes each page (`clear_page_erms`), maps it, and
//! shoots down the other threads' TLB entries when it is unmapped. A `perf` profile of
//! `lion bench --stages tagenc_triplet` on an AMD EPYC Zen 3 had 17.5% of its samples in
//! `clear_page_erms` alone.
//!
//! [`CachingAlloc`] (the `lion` binary's global allocator) passes everything to the system
//! allocator, except that blocks of at least [`LARGE`] bytes are rounded up to a size class
//! (steps of an eighth of a power of two, so at most 12.5% more address space and no more
//! resident memory: the rounding's tail is never touched) and, while a [`KeepLargeBlocks`]
//! guard is alive, freed into a bounded cache that later requests of the same class take from.
//! Inference never enables it, so its memory peaks are the system allocator's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks this large or larger are size-classed and may be cached (smaller ones are reused by
/// glibc's heap).
pub const LARGE: usize = 32 << 20;

/// Alignment of every size-classed block (requests aligned beyond it pass through).
const ALIGN: usize = 64;

/// Most blocks the cache holds.
const SLOTS: usize = 64;

/// Bytes the cache may hold (0: off).
static LIMIT: AtomicUsize = AtomicUsize::new(0);

struct Cache {
    /// (address, class size) of each cached block.
    blocks: [(usize, usize); SLOTS],
    len: usize,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    blocks: [(0, 0); SLOTS],
    len: 0,
    bytes: 0,
});

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The size class of a request of `size >= 8` bytes: `size` rounded up to a multiple of an
/// eighth of the largest power of two not above it (so classes between `2^k` and `2^(k+1)` are
/// `2^k * 8/8, 9/8, ..., 16/8`).
pub fn size_class(size: usize) -> usize {
    debug_assert!(size >= 8);
    let k = usize::BITS - 1 - size.leading_zeros();
    let step = 1usize << (k - 3);
    size.div_ceil(step) * step
}

fn classed(l: Layout) -> bool {
    l.size() >= LARGE && l.align() <= ALIGN
}

fn class_layout(size: usize) -> Layout {
    // a class of a valid layout's size (>= 32 MiB) is a multiple of 4 MiB, far below isize::MAX
    Layout::from_size_align(size_class(size), ALIGN).expect("a size class is a valid layout")
}

/// Takes a cached block of class `c`, if one is there.
fn take(c: usize) -> Option<*mut u8> {
    let mut g = cache();
    let n = g.len;
    let i = g.blocks[..n].iter().position(|&(_, s)| s == c)?;
    let (p, _) = g.blocks[i];
    g.blocks[i] = g.blocks[n - 1];
    g.len -= 1;
    g.bytes -= c;
    Some(p as *mut u8)
}

/// Keeps a freed block of class `c` when the cache is on and has room.
fn put(p: *mut u8, c: usize) -> bool {
    let limit = LIMIT.load(Ordering::Relaxed);
    let mut g = cache();
    if g.len == SLOTS || g.bytes + c > limit {
        return false;
    }
    let n = g.len;
    g.blocks[n] = (p as usize, c);
    g.len += 1;
    g.bytes += c;
    true
}

/// Frees every cached block.
pub fn release_cached() {
    let blocks = {
        let mut g = cache();
        let b = g.blocks;
        let n = g.len;
        g.len = 0;
        g.bytes = 0;
        (b, n)
    };
    for &(p, c) in &blocks.0[..blocks.1] {
        // SAFETY: each cached block came from System with the class layout of `c` (which is
        // its own class) and is owned by the cache alone.
        unsafe { System.dealloc(p as *mut u8, class_layout(c)) }
    }
}

/// Bytes held by the cache now.
pub fn cached_bytes() -> usize {
    cache().bytes
}

/// glibc's trim threshold as last set by [`set_trim_threshold`] (0: never set, glibc's own
/// dynamic one runs).
static TRIM: AtomicUsize = AtomicUsize::new(0);

/// The free heap top glibc keeps while a training run holds [`KeepLargeBlocks`]: all of it
/// (`mallopt` takes an `int`). A tag-encoder step at the bench's batch freed more than the 512 MiB
/// kept otherwise at its end, so glibc gave it back and the next step faulted it in again:
/// 150k page faults a step (600 MB mapped and zeroed) on an AMD EPYC Zen 3.
const TRAINING_TRIM: usize = i32::MAX as usize;

/// Sets glibc's trim threshold (how much free heap top `free` keeps mapped). No-op off glibc.
pub fn set_trim_threshold(bytes: usize) {
    TRIM.store(bytes, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, bytes.min(i32::MAX as usize) as i32);
    }
}

/// While alive, freed large blocks are kept (up to `limit` bytes) for reuse, and glibc keeps
/// its free heap top (if [`crate::util::tune_allocator`] set a threshold, which it then
/// restores); dropped, the previous limit is restored and the cache is emptied. Has an effect
/// only in a program whose global allocator is [`CachingAlloc`] (the `lion` binary).
pub struct KeepLargeBlocks {
    previous: usize,
    previous_trim: usize,
}

impl KeepLargeBlocks {
    pub fn new(limit: usize) -> Self {
        let previous_trim = TRIM.load(Ordering::Relaxed);
        if previous_trim != 0 {
            set_trim_threshold(TRAINING_TRIM);
        }
        Self {
            previous: LIMIT.swap(limit, Ordering::Relaxed),
            previous_trim,
        }
    }
}

impl Drop for KeepLargeBlocks {
    fn drop(&mut self) {
        LIMIT.store(self.previous, Ordering::Relaxed);
        release_cached();
        if self.previous_trim != 0 {
            set_trim_threshold(self.previous_trim);
        }
    }
}

/// The cache a training run keeps: 1 GiB (a base-size training step's large blocks, with room).
pub const TRAINING_CACHE: usize = 1 << 30;

/// The system allocator with size-classed, optionally cached large blocks (see the module).
pub struct CachingAlloc;

// SAFETY: every block handed out is either the system allocator's for the request's own layout
// (small or over-aligned requests, passed through both ways) or a block of the request's size
// class (from the system allocator or the cache), which `dealloc`/`realloc` recompute from the
// layout they are given (same size and alignment as at allocation, as GlobalAlloc requires).
unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !classed(l) {
            return System.alloc(l);
        }
        let c = size_class(l.size());
        take(c).unwrap_or_else(|| System.alloc(class_layout(c)))
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !classed(l) {
            return System.alloc_zeroed(l);
        }
        let c = size_class(l.size());
        match take(c) {
            Some(p) => {
                std::ptr::write_bytes(p, 0, l.size());
                p
            }
            None => System.alloc_zeroed(class_layout(c)),
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if !classed(l) {
            return System.dealloc(p, l);
        }
        let c = size_class(l.size());
        if !put(p, c) {
            System.dealloc(p, class_layout(c));
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, l.align());
        match (classed(l), classed(new)) {
            (false, false) => System.realloc(p, l, new_size),
            (true, true) if size_class(l.size()) == size_class(new_size) => p,
            _ => {
                let q = self.alloc(new);
                if !q.is_null() {
                    std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                    self.dealloc(p, l);
                }
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_by_at_most_an_eighth() {
        for size in [
            LARGE,
            LARGE + 1,
            37_748_736,
            40 << 20,
            (64 << 20) - 1,
            64 << 20,
            1 << 33,
        ] {
            let c = size_class(size);
            assert!(c >= size && c - size <= size / 8, "{size} -> {c}");
            assert_eq!(size_class(c), c, "a class is its own class");
            assert_eq!(c % 4096, 0);
        }
        assert_eq!(size_class(LARGE + 1), LARGE / 8 * 9);
    }

    /// One test touches the global cache (the limit is global), so the steps run in order.
    #[test]
    fn large_blocks_are_reused_only_while_kept() {
        let a = CachingAlloc;
        let l = Layout::from_size_align(LARGE + 100, 4).unwrap();
        let same_class = Layout::from_size_align(LARGE + 4000, 16).unwrap();
        unsafe {
            // off: nothing is kept
            let p = a.alloc(l);
            assert!(!p.is_null());
            p.write_bytes(7, l.size());
            a.dealloc(p, l);
            assert_eq!(cached_bytes(), 0);
            {
                let _keep = KeepLargeBlocks::new(2 * size_class(l.size()));
                let p = a.alloc(l);
                p.write_bytes(7, l.size());
                a.dealloc(p, l);
                assert_eq!(cached_bytes(), size_class(l.size()));
                // the same class takes the block; a zeroed request gets zeros
                let q = a.alloc_zeroed(same_class);
                assert_eq!(q, p);
                assert!(std::slice::from_raw_parts(q, same_class.size())
                    .iter()
                    .all(|&b| b == 0));
                assert_eq!(cached_bytes(), 0);
                // grown within its class, in place; beyond it, moved with its contents
                q.write_bytes(3, 16);
                let r = a.realloc(q, same_class, LARGE + 8000);
                assert_eq!(r, q);
                let grown = Layout::from_size_align(LARGE + 8000, 16).unwrap();
                let s = a.realloc(r, grown, 2 * LARGE);
                assert!(std::slice::from_raw_parts(s, 16).iter().all(|&b| b == 3));
                assert_eq!(
                    cached_bytes(),
                    size_class(grown.size()),
                    "the old block is kept"
                );
                // past the limit, blocks go back to the system
                a.dealloc(s, Layout::from_size_align(2 * LARGE, 16).unwrap());
                assert_eq!(cached_bytes(), size_class(grown.size()));
                // small and over-aligned requests pass through
                let small = Layout::from_size_align(1000, 8).unwrap();
                let t = a.alloc(small);
                a.dealloc(t, small);
                let wide = Layout::from_size_align(LARGE, 4096).unwrap();
                let u = a.alloc(wide);
                assert_eq!(u as usize % 4096, 0);
                a.dealloc(u, wide);
                assert_eq!(cached_bytes(), size_class(grown.size()));
            }
            assert_eq!(cached_bytes(), 0, "the guard's drop empties the cache");
        }
    }
}
