//! A global allocator that survives absurd capacity requests from the protocol decoder.
//!
//! `kafka-protocol` decodes an array by calling `Vec::with_capacity(n)` with the length
//! the client wrote, before reading any element. A 20-byte request claiming 2^31
//! topics therefore asks for ~150 GB; the system allocator refuses, and Rust aborts the
//! process on allocation failure. No error handling can intercept that abort.
//!
//! This allocator serves allocations of [`HUGE_BYTES`] or more with an anonymous
//! `MAP_NORESERVE` mapping: address space only, no memory until a page is touched. The
//! decoder then fails on the missing elements (the frame itself is bounded by
//! `socket.request.max.bytes`), the vector is dropped and the mapping returned. Nothing
//! legitimate in the broker allocates this much in one piece.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are served by `mmap` instead of the system allocator.
pub const HUGE_BYTES: usize = 1 << 32;

pub struct GuardedAllocator;

impl GuardedAllocator {
    unsafe fn map(size: usize) -> *mut u8 {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            ptr.cast()
        }
    }
}

// SAFETY: every block is returned to the allocator that produced it: the size in the
// layout decides, and it is the same at allocation and deallocation. Mappings are page
// aligned, which satisfies any alignment up to the page size; larger alignments go to
// the system allocator.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE_BYTES && layout.align() <= 4096 {
            unsafe { Self::map(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= HUGE_BYTES && layout.align() <= 4096 {
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let huge = |size: usize| size >= HUGE_BYTES && layout.align() <= 4096;
        if !huge(layout.size()) && !huge(new_size) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees new_size is valid for this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_capacity_is_address_space_not_memory() {
        // 2^31 elements of 64 bytes: far more than the machine has. The library's tests run
        // with the system allocator, so the guard is called directly.
        let layout = Layout::from_size_align(64 << 31, 8).unwrap();
        let ptr = unsafe { GuardedAllocator.alloc(layout) };
        assert!(!ptr.is_null());
        unsafe {
            ptr.write(7);
            assert_eq!(ptr.read(), 7);
            GuardedAllocator.dealloc(ptr, layout);
        }
        let small = Layout::from_size_align(16, 8).unwrap();
        let ptr = unsafe { GuardedAllocator.alloc(small) };
        assert!(!ptr.is_null());
        unsafe { GuardedAllocator.dealloc(ptr, small) };
    }
}
