//! Encoding an append-entries batch into a pooled buffer, receiving it into
//! a long-lived receive buffer and decoding its entries as slices of that
//! buffer allocates nothing once warmed up (counted by a global allocator).

use bytes::{Bytes, BytesMut};
use dr_codec::frame::{CodecConfig, Frame, decode_frame, encode_messages, peek_header};
use dr_codec::message::{AppendEntries, Entry, EntryKind, Message, MessageBody};
use dr_pool::testing::CountingAllocator;
use dr_pool::{BufferPool, BufferPoolConfig};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator::new();

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
        let borrowed: usize = view
            .entry_refs_of(0)
            .expect("an append")
            .map(|entry| entry.payload.len())
            .sum();
        assert_eq!(borrowed, 64 * 256);
    };
    for _ in 0..3 {
        round();
    }
    let allocated = GLOBAL.allocations_during(|| (0..1000).for_each(|_| round()));
    assert_eq!(allocated, 0, "steady-state encode/decode allocated");
}
