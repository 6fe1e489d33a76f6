//! `max_message_size` is checked before any buffer grows (DESIGN.md: "Frame
//! lengths are checked against a limit before any buffer grows"). This file
//! exists to measure that: it installs a counting global allocator, which is
//! why it is a test binary of its own. Only allocations made on the test's
//! own thread while it is armed are counted.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use duet_core::{Error, Param, Request};
use support::*;

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    LARGEST.with(|l| l.get())
}

#[test]
fn oversized_frames_are_refused_without_allocating() {
    let now = Instant::now();
    // The counter works.
    assert!(largest_allocation(|| drop(std::hint::black_box(vec![1u8; 200_000]))) >= 200_000);
    // (max_message_size, claimed frame length)
    for (limit, claimed) in [
        (256usize << 20, i32::MAX),
        (256 << 20, (1 << 30) + 3),
        (1 << 20, 100 << 20),
        (64, 64),
    ] {
        let mut cfg = config();
        cfg.max_message_size = limit;
        let mut conn = ready_connection(&cfg, now);
        let p: [Param; 1] = [&1i32];
        let t = conn.submit(Request::query("SELECT $1::int4", &p), now).unwrap();
        drain(&mut conn);
        conn.handle_input(
            &Backend::new()
                .parse_complete()
                .bind_complete()
                .row_description(&[Field::int4("v")])
                .build(),
            now,
        )
        .unwrap();
        let mut header = vec![b'D'];
        header.extend_from_slice(&claimed.to_be_bytes());
        let mut result = Ok(());
        let largest = largest_allocation(|| result = conn.handle_input(&header, now));
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        assert!(
            largest < 64 * 1024,
            "a {largest}-byte allocation for a refused {claimed}-byte frame (limit {limit})"
        );
        assert!(matches!(conn.take_result(t), Some(Err(Error::Protocol(_)))));
    }
}

#[test]
fn frames_within_the_limit_allocate_only_what_arrives() {
    // A DataRow header announcing 100 KiB under a 1 MiB limit is accepted;
    // it may reserve the frame (bounded by the limit), nothing more.
    let now = Instant::now();
    let mut cfg = config();
    cfg.max_message_size = 1 << 20;
    let mut conn = ready_connection(&cfg, now);
    let p: [Param; 1] = [&1i32];
    conn.submit(Request::query("SELECT $1::int4", &p), now).unwrap();
    drain(&mut conn);
    let mut header = vec![b'D'];
    header.extend_from_slice(&(100i32 << 10).to_be_bytes());
    let mut result = Ok(());
    let largest = largest_allocation(|| result = conn.handle_input(&header, now));
    result.unwrap();
    assert!(largest <= 1 << 20, "{largest}");
    assert!(conn.closed_reason().is_none());
}
