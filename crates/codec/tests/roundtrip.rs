//! Every message kind survives encode and decode unchanged; payloads come
//! back as slices of the frame buffer; batches and entries stream back to
//! back through one buffer.

use bytes::{Bytes, BytesMut};
use dr_codec::frame::{
    CodecConfig, EntryRef, Frame, decode_entry, decode_frame, decode_messages, encode_entry,
    encode_messages,
};
use dr_codec::message::{
    AppendEntries, AppendEntriesResponse, ConfState, Entry, EntryKind, ForwardRequest,
    ForwardResponse, ForwardStatus, Heartbeat, HeartbeatResponse, InstallSnapshot,
    InstallSnapshotResponse, Message, MessageBody, ReadIndexRequest, ReadIndexResponse, RejectHint,
    SnapshotMeta, VoteRequest, VoteResponse,
};

fn entry(index: u64, payload: &'static [u8]) -> Entry {
    let kind = match index % 3 {
        0 => EntryKind::Normal,
        1 => EntryKind::ConfChange,
        _ => EntryKind::Noop,
    };
    Entry {
        term: 3,
        index,
        kind,
        payload: Bytes::from_static(payload),
    }
}

/// One message of every kind.
pub fn every_message() -> Vec<Message> {
    let bodies = vec![
        MessageBody::Vote(VoteRequest {
            pre_vote: true,
            last_log_index: 9,
            last_log_term: 2,
            leader_transfer: false,
        }),
        MessageBody::VoteResponse(VoteResponse {
            pre_vote: false,
            granted: true,
        }),
        MessageBody::AppendEntries(AppendEntries {
            prev_log_index: 10,
            prev_log_term: 3,
            leader_commit: 9,
            entries: vec![
                entry(11, b"SET a 1"),
                entry(12, b""),
                entry(13, &[0xFF; 300]),
            ],
        }),
        MessageBody::AppendEntries(AppendEntries {
            prev_log_index: 5,
            prev_log_term: 1,
            leader_commit: 5,
            entries: vec![],
        }),
        MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            index: 13,
            reject: None,
        }),
        MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            index: 40,
            reject: Some(RejectHint {
                last_index: 30,
                conflict_term: 2,
                conflict_index: 21,
            }),
        }),
        MessageBody::Heartbeat(Heartbeat {
            commit: 13,
            read_context: 77,
        }),
        MessageBody::HeartbeatResponse(HeartbeatResponse { read_context: 77 }),
        MessageBody::InstallSnapshot(InstallSnapshot {
            meta: SnapshotMeta {
                index: 1000,
                term: 4,
                conf_state: ConfState {
                    voters: vec![1, 2, 3],
                    voters_outgoing: vec![1, 2, 4],
                    learners: vec![5],
                    learners_next: vec![4],
                },
            },
            offset: 65_536,
            data: Bytes::from(vec![7u8; 4096]),
            done: false,
        }),
        MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
            snapshot_index: 1000,
            next_offset: 69_632,
            rejected: false,
        }),
        MessageBody::TimeoutNow,
        MessageBody::Forward(ForwardRequest {
            request_id: 41,
            payload: Bytes::from_static(b"a forwarded write"),
        }),
        MessageBody::ForwardResponse(ForwardResponse {
            request_id: 41,
            status: ForwardStatus::Uncertain,
            payload: Bytes::from_static(b"why"),
        }),
        MessageBody::ReadIndex(ReadIndexRequest { request_id: 7 }),
        MessageBody::ReadIndexResponse(ReadIndexResponse {
            request_id: 7,
            status: ForwardStatus::Done,
            index: 1234,
        }),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Message {
            from: 1,
            to: 2 + i as u64,
            term: 3,
            body,
        })
        .collect()
}

#[test]
fn every_message_kind_round_trips() {
    let config = CodecConfig::default();
    let messages = every_message();
    let mut buffer = BytesMut::new();
    let frame_len = encode_messages(&messages, &config, &mut buffer).expect("encodes");
    assert_eq!(frame_len, buffer.len());
    let frame = buffer.freeze();
    let mut decoded = Vec::new();
    assert_eq!(
        decode_messages(&frame, &config, &mut decoded),
        Ok(frame_len)
    );
    assert_eq!(decoded, messages);
}

#[test]
fn each_message_alone_round_trips() {
    let config = CodecConfig::default();
    for message in every_message() {
        let mut buffer = BytesMut::new();
        encode_messages(std::slice::from_ref(&message), &config, &mut buffer).expect("encodes");
        let mut decoded = Vec::new();
        decode_messages(&buffer.freeze(), &config, &mut decoded).expect("decodes");
        assert_eq!(decoded, [message]);
    }
}

#[test]
fn payloads_are_slices_of_the_frame_buffer() {
    let config = CodecConfig::default();
    let messages = every_message();
    let mut buffer = BytesMut::new();
    encode_messages(&messages, &config, &mut buffer).expect("encodes");
    let frame = buffer.freeze();
    let frame_range = frame.as_ptr_range();
    let inside = |payload: &Bytes| {
        payload.is_empty()
            || (frame_range.contains(&payload.as_ptr())
                && payload.as_ptr_range().end <= frame_range.end)
    };
    let mut decoded = Vec::new();
    decode_messages(&frame, &config, &mut decoded).expect("decodes");
    let mut payloads = 0;
    for message in &decoded {
        match &message.body {
            MessageBody::AppendEntries(append) => {
                for entry in &append.entries {
                    assert!(
                        inside(&entry.payload),
                        "entry {} payload was copied",
                        entry.index
                    );
                    payloads += 1;
                }
            }
            MessageBody::InstallSnapshot(chunk) => {
                assert!(inside(&chunk.data), "snapshot chunk was copied");
                payloads += 1;
            }
            MessageBody::Forward(request) => {
                assert!(inside(&request.payload), "forwarded request was copied");
                payloads += 1;
            }
            MessageBody::ForwardResponse(response) => {
                assert!(inside(&response.payload), "forwarded answer was copied");
                payloads += 1;
            }
            _ => {}
        }
    }
    assert_eq!(payloads, 6);
}

#[test]
fn frames_stream_back_to_back() {
    let config = CodecConfig::default();
    let messages = every_message();
    let mut buffer = BytesMut::new();
    let first = encode_messages(&messages[..3], &config, &mut buffer).expect("encodes");
    let second = encode_entry(&entry(99, b"log record"), &config, &mut buffer).expect("encodes");
    let third = encode_messages(&messages[3..], &config, &mut buffer).expect("encodes");
    let mut stream = buffer.freeze();
    let mut decoded = Vec::new();
    assert_eq!(decode_messages(&stream, &config, &mut decoded), Ok(first));
    let _ = stream.split_to(first);
    assert_eq!(
        decode_entry(&stream, &config),
        Ok((entry(99, b"log record"), second))
    );
    let _ = stream.split_to(second);
    assert_eq!(decode_messages(&stream, &config, &mut decoded), Ok(third));
    assert_eq!(decoded, messages);
}

#[test]
fn entries_can_be_read_without_collecting_the_message() {
    let config = CodecConfig::default();
    let messages = every_message();
    let mut buffer = BytesMut::new();
    encode_messages(&messages, &config, &mut buffer).expect("encodes");
    let frame = buffer.freeze();
    let (Frame::Messages(view), _) = decode_frame(&frame, &config).expect("decodes") else {
        panic!("a messages frame");
    };
    assert_eq!(view.len(), messages.len());
    let indexes: Vec<u64> = view
        .entries_of(2)
        .expect("an append")
        .map(|entry| entry.index)
        .collect();
    assert_eq!(indexes, [11, 12, 13]);
    assert!(view.entries_of(0).is_none(), "a vote has no entries");
    assert!(view.entries_of(100).is_none());
    // In place: the same entries, payloads inside the frame's bytes.
    let owned: Vec<Entry> = view.entries_of(2).expect("an append").collect();
    let refs: Vec<EntryRef<'_>> = view.entry_refs_of(2).expect("an append").collect();
    assert_eq!(refs.len(), owned.len());
    let frame_bytes = frame.as_ptr_range();
    for (borrowed, entry) in refs.iter().zip(&owned) {
        assert_eq!(borrowed.to_entry(&frame), *entry);
        assert_eq!(
            (borrowed.term, borrowed.index, borrowed.kind),
            (entry.term, entry.index, entry.kind)
        );
        assert!(frame_bytes.contains(&borrowed.payload.as_ptr()) || borrowed.payload.is_empty());
    }
    assert!(view.entry_refs_of(0).is_none() && view.entry_refs_of(100).is_none());
}

#[test]
fn an_empty_batch_round_trips() {
    let config = CodecConfig::default();
    let mut buffer = BytesMut::new();
    encode_messages(&[], &config, &mut buffer).expect("encodes");
    let mut decoded = Vec::new();
    decode_messages(&buffer.freeze(), &config, &mut decoded).expect("decodes");
    assert!(decoded.is_empty());
}
