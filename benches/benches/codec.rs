//! dr-codec against bincode (serde) on the same structs: encoding and
//! decoding (with validation) an append-entries batch of 1, 64 and 1024
//! entries of 16 B, 256 B and 4 KiB.
//!
//! `dr` decodes into owned messages (as bincode does); `dr-view` checks the
//! frame (checksum and rkyv validation) and walks its entries in place
//! (`entry_refs_of`: payloads borrowed from the frame), as rkyv's checked
//! access does.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dr_codec::frame::{CodecConfig, Frame, decode_frame, decode_messages, encode_messages};
use dr_codec::message::{AppendEntries, Entry, EntryKind, Message, MessageBody};

const ENTRY_COUNTS: [usize; 3] = [1, 64, 1024];
const PAYLOAD_SIZES: [usize; 3] = [16, 256, 4096];

fn batch(entries: usize, payload_size: usize) -> Vec<Message> {
    let payload = Bytes::from(dr_benches::pattern(payload_size, 9));
    let entries = (1..=entries as u64)
        .map(|index| Entry {
            term: 7,
            index,
            kind: EntryKind::Normal,
            payload: payload.clone(),
        })
        .collect();
    let append = AppendEntries {
        prev_log_index: 0,
        prev_log_term: 7,
        leader_commit: 0,
        entries,
    };
    vec![Message {
        from: 1,
        to: 2,
        term: 7,
        body: MessageBody::AppendEntries(append),
    }]
}

fn cases() -> impl Iterator<Item = (String, Vec<Message>)> {
    ENTRY_COUNTS.into_iter().flat_map(|entries| {
        PAYLOAD_SIZES
            .into_iter()
            .map(move |size| (format!("{entries}x{size}"), batch(entries, size)))
    })
}

fn encode(c: &mut Criterion) {
    let config = CodecConfig::default();
    let mut group = c.benchmark_group("codec-encode");
    for (name, messages) in cases() {
        let mut frame = BytesMut::new();
        let frame_len = encode_messages(&messages, &config, &mut frame).expect("encodes");
        group.throughput(Throughput::Bytes(frame_len as u64));
        group.bench_with_input(BenchmarkId::new("dr", &name), &messages, |b, messages| {
            b.iter(|| {
                frame.clear();
                encode_messages(black_box(messages), &config, &mut frame).expect("encodes")
            })
        });
        let mut serialized = Vec::new();
        group.bench_with_input(
            BenchmarkId::new("bincode", &name),
            &messages,
            |b, messages| {
                b.iter(|| {
                    serialized.clear();
                    bincode::serialize_into(&mut serialized, black_box(messages))
                        .expect("serializes");
                    serialized.len()
                })
            },
        );
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let config = CodecConfig::default();
    let mut group = c.benchmark_group("codec-decode");
    for (name, messages) in cases() {
        let mut buffer = BytesMut::new();
        encode_messages(&messages, &config, &mut buffer).expect("encodes");
        let frame = buffer.freeze();
        group.throughput(Throughput::Bytes(frame.len() as u64));
        let mut decoded = Vec::new();
        group.bench_with_input(BenchmarkId::new("dr", &name), &frame, |b, frame| {
            b.iter(|| {
                decoded.clear();
                decode_messages(black_box(frame), &config, &mut decoded).expect("decodes")
            })
        });
        group.bench_with_input(BenchmarkId::new("dr-view", &name), &frame, |b, frame| {
            b.iter(|| {
                let (Frame::Messages(view), _) =
                    decode_frame(black_box(frame), &config).expect("decodes")
                else {
                    unreachable!("a messages frame");
                };
                view.entry_refs_of(0)
                    .expect("an append")
                    .map(|entry| entry.payload.len())
                    .sum::<usize>()
            })
        });
        let serialized = bincode::serialize(&messages).expect("serializes");
        group.bench_with_input(
            BenchmarkId::new("bincode", &name),
            &serialized,
            |b, serialized| {
                b.iter(|| {
                    bincode::deserialize::<Vec<Message>>(black_box(serialized))
                        .expect("deserializes")
                })
            },
        );
    }
    group.finish();
}

fn config() -> Criterion {
    dr_benches::criterion_config(Duration::from_millis(300), Duration::from_millis(1200))
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, decode
}
criterion_main!(benches);
