//! The process allocator: the system allocator, except that one allocation of 1 GiB or
//! more is reserved with `mmap(MAP_NORESERVE)`.
//!
//! Why: kafka-protocol's decoders size a `Vec` from the element count a peer sends
//! before reading any element. A broker response claiming two billion elements asks for
//! hundreds of GiB at once; the system allocator refuses, and a refused allocation
//! aborts the process. Reserved address space costs nothing until touched, and the
//! decoder fails at the first missing element, long before touching it, so such a frame
//! becomes an ordinary decode error that closes one connection. (Client requests never
//! reach those decoders: the Produce reader in `protocol::produce` bounds every count by
//! the bytes that remain.)

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are reserved lazily.
const HUGE: usize = 1 << 30;

pub struct Allocator;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= 4096
}

// SAFETY: every block is released by the same mechanism that produced it: `is_huge`
// depends only on the layout, which the caller passes unchanged to `dealloc`.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_huge(&layout) {
            // SAFETY: forwarded contract.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping; no file descriptor, no fixed address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: anonymous mappings are zero-filled.
            unsafe { self.alloc(layout) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from the mmap above with this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: forwarded contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh block, the overlap copied, the old block freed by its owner.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// Unit tests run with the same allocator as the binary.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: Allocator = Allocator;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_claiming_billions_of_brokers_is_a_decode_error() {
        // Metadata v0: correlation id, then a broker array count of 0x12120004.
        let frame = bytes::Bytes::from_static(&[0, 8, 0x12, 0x12, 0x12, 0x12, 0x12, 0, 4]);
        let frame = bytes::Bytes::from([&[0u8][..], &frame[..]].concat());
        let (_, mut body) = crate::protocol::header::split_response(
            kafka_protocol::messages::ApiKey::Metadata,
            0,
            &frame,
        )
        .expect("header");
        let r = crate::protocol::header::guarded_decode::<kafka_protocol::messages::MetadataResponse>(
            &mut body,
            0,
            "Metadata response",
        );
        assert!(r.is_err());
    }

    #[test]
    fn huge_reservation_is_lazy_and_released() {
        let a = Allocator;
        let layout = Layout::from_size_align(64 << 30, 8).expect("layout");
        // SAFETY: the block is used within its size and freed with its layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(
                !p.is_null(),
                "64 GiB of address space could not be reserved"
            );
            *p = 7;
            assert_eq!(*p, 7);
            a.dealloc(p, layout);
        }
        let small = Layout::from_size_align(64, 8).expect("layout");
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(small);
            assert!(!p.is_null());
            let q = a.realloc(p, small, HUGE);
            assert!(!q.is_null());
            a.dealloc(q, Layout::from_size_align(HUGE, 8).expect("layout"));
        }
    }
}
