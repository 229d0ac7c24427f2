//! Encoding an append-entries batch into a pooled buffer, receiving it into
//! a long-lived receive buffer and decoding its entries as slices of that
//! buffer allocates nothing once warmed up (counted by a global allocator).

// A `GlobalAlloc` implementation is `unsafe` by definition; it only counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use dr_codec::frame::{CodecConfig, Frame, decode_frame, encode_messages, peek_header};
use dr_codec::message::{AppendEntries, Entry, EntryKind, Message, MessageBody};
use dr_pool::{BufferPool, BufferPoolConfig};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator unchanged; the
// counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn steady_state_encode_and_decode_allocate_nothing() {
    let config = CodecConfig::default();
    let pool = BufferPool::new(&BufferPoolConfig::default()).expect("valid config");
    let payload = Bytes::from(vec![0xAB; 256]);
    let entries = (1..=64)
        .map(|index| Entry {
            term: 5,
            index,
            kind: EntryKind::Normal,
            payload: payload.clone(),
        })
        .collect();
    let batch = [Message {
        from: 1,
        to: 2,
        term: 5,
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_index: 0,
            prev_log_term: 5,
            leader_commit: 0,
            entries,
        }),
    }];
    // The receive side keeps one buffer: each frame is split off it and
    // frozen (sharing it, no copy), and once every slice of it is gone the
    // next `reserve` reclaims the whole buffer in place.
    let mut receive = BytesMut::with_capacity(64 << 10);

    let mut round = || {
        let mut send = pool.get(32 << 10);
        encode_messages(&batch, &config, &mut send).expect("encodes");
        receive.reserve(send.len());
        receive.extend_from_slice(&send);
        drop(send);
        let header = peek_header(&receive, &config)
            .expect("valid")
            .expect("complete");
        let frame: Bytes = receive.split_to(header.frame_len).freeze();
        let (Frame::Messages(view), _) = decode_frame(&frame, &config).expect("decodes") else {
            panic!("a messages frame");
        };
        let mut decoded_bytes = 0;
        for entry in view.entries_of(0).expect("an append") {
            assert!(
                frame.as_ptr_range().contains(&entry.payload.as_ptr()),
                "payload copied"
            );
            decoded_bytes += entry.payload.len();
        }
        assert_eq!(decoded_bytes, 64 * 256);
    };
    for _ in 0..3 {
        round();
    }
    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..1000 {
        round();
    }
    assert_eq!(
        ALLOCATIONS.load(Relaxed) - before,
        0,
        "steady-state encode/decode allocated"
    );
}
