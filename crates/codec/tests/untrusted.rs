//! Bytes from outside: truncated, oversized, corrupted, wrong-version and
//! random input all give a typed error, never a panic; a frame whose
//! checksum was forged over a broken body is caught by archive validation.

use bytes::{Bytes, BytesMut};
use dr_codec::frame::{
    CodecConfig, DecodeError, FORMAT_VERSION, HEADER_LEN, MAGIC, decode_entry, decode_frame,
    decode_messages, encode_entry, encode_messages, peek_header,
};
use dr_codec::message::{AppendEntries, Entry, EntryKind, Message, MessageBody};
use proptest::prelude::*;

fn sample_frame() -> Bytes {
    let entries = (1..=4)
        .map(|index| Entry {
            term: 2,
            index,
            kind: EntryKind::Normal,
            payload: Bytes::from(vec![index as u8; 40]),
        })
        .collect();
    let body = MessageBody::AppendEntries(AppendEntries {
        prev_log_index: 0,
        prev_log_term: 0,
        leader_commit: 0,
        entries,
    });
    let message = Message {
        from: 1,
        to: 2,
        term: 2,
        body,
    };
    let mut buffer = BytesMut::new();
    encode_messages(&[message], &CodecConfig::default(), &mut buffer).expect("encodes");
    buffer.freeze()
}

/// Decodes `bytes` both ways a caller might; the result must be an error.
fn assert_rejected(bytes: &[u8], context: &str) -> DecodeError {
    let bytes = Bytes::copy_from_slice(bytes);
    let config = CodecConfig::default();
    let mut out = Vec::new();
    let error = decode_messages(&bytes, &config, &mut out).expect_err(context);
    assert!(out.is_empty(), "{context}: nothing decoded on error");
    assert!(decode_entry(&bytes, &config).is_err(), "{context}");
    assert!(!error.to_string().is_empty());
    error
}

/// Rewrites the checksum so a deliberately changed frame passes it.
fn forge_checksum(frame: &mut [u8]) {
    let checksum = dr_simd::crc32c::update(dr_simd::crc32c(&frame[..12]), &frame[HEADER_LEN..]);
    frame[12..16].copy_from_slice(&checksum.to_le_bytes());
}

#[test]
fn every_truncation_is_reported() {
    let frame = sample_frame();
    for len in 0..frame.len() {
        let error = assert_rejected(&frame[..len], &format!("truncated to {len}"));
        assert!(
            matches!(error, DecodeError::Truncated { .. }),
            "len {len}: {error}"
        );
    }
}

#[test]
fn every_single_bit_flip_is_caught() {
    let frame = sample_frame();
    for byte in 0..frame.len() {
        for bit in 0..8 {
            let mut corrupted = frame.to_vec();
            corrupted[byte] ^= 1 << bit;
            assert_rejected(&corrupted, &format!("byte {byte} bit {bit}"));
        }
    }
}

#[test]
fn header_fields_are_checked_by_name() {
    let frame = sample_frame();
    let with = |offset: usize, bytes: &[u8]| {
        let mut changed = frame.to_vec();
        changed[offset..offset + bytes.len()].copy_from_slice(bytes);
        changed
    };
    assert_eq!(
        assert_rejected(&with(0, b"HTTP"), "magic"),
        DecodeError::BadMagic(*b"HTTP")
    );
    let next_version = (FORMAT_VERSION + 1).to_le_bytes();
    assert_eq!(
        assert_rejected(&with(4, &next_version), "version"),
        DecodeError::UnsupportedVersion(FORMAT_VERSION + 1)
    );
    assert_eq!(
        assert_rejected(&with(6, &[9]), "kind"),
        DecodeError::UnknownKind(9)
    );
    assert_eq!(
        assert_rejected(&with(7, &[1]), "reserved"),
        DecodeError::ReservedByteSet(1)
    );
    assert!(matches!(
        assert_rejected(&with(12, &[0; 4]), "checksum"),
        DecodeError::ChecksumMismatch { .. }
    ));
}

#[test]
fn an_oversized_length_is_refused_before_waiting_for_it() {
    let config = CodecConfig {
        frame_bytes_max: 1024,
    };
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[6] = 1;
    header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    // Only the header has arrived: the reader learns the frame is too big
    // without reading (or allocating for) the announced 4 GiB.
    let error = peek_header(&header, &config).expect_err("too large");
    assert!(
        matches!(error, DecodeError::TooLarge { max: 1024, .. }),
        "{error}"
    );
    assert!(decode_frame(&Bytes::copy_from_slice(&header), &config).is_err());
    assert_eq!(
        peek_header(&header[..10], &config),
        Ok(None),
        "a partial header is not an error yet"
    );
}

#[test]
fn encoding_past_the_limit_fails_and_leaves_the_buffer_alone() {
    let config = CodecConfig {
        frame_bytes_max: 256,
    };
    let entry = Entry {
        term: 1,
        index: 1,
        kind: EntryKind::Normal,
        payload: Bytes::from(vec![0u8; 1000]),
    };
    let mut buffer = BytesMut::from(&b"already here"[..]);
    let error = encode_entry(&entry, &config, &mut buffer).expect_err("too large");
    assert!(error.to_string().contains("256"), "{error}");
    assert_eq!(&buffer[..], b"already here");
}

#[test]
fn a_forged_checksum_over_a_broken_body_is_malformed() {
    let frame = sample_frame();
    // The archive's root (at the end) points into the body; aim it outside.
    let mut broken = frame.to_vec();
    let last = broken.len() - 1;
    broken[last - 4..=last].fill(0x7F);
    forge_checksum(&mut broken);
    let error = assert_rejected(&broken, "root out of bounds");
    assert!(matches!(error, DecodeError::Malformed(_)), "{error}");
    // A messages frame relabelled as an entry frame, checksum forged: the
    // archive is read as the other type. Whatever it yields (an error, or
    // an entry of nonsense values whose payload still lies inside the
    // frame), it must not panic or read outside the frame. Forgery is not
    // what the checksum defends against; the transport's TLS is.
    let mut relabelled = frame.to_vec();
    relabelled[6] = 2;
    forge_checksum(&mut relabelled);
    let relabelled = Bytes::from(relabelled);
    if let Ok((entry, _)) = decode_entry(&relabelled, &CodecConfig::default()) {
        let range = relabelled.as_ptr_range();
        assert!(entry.payload.is_empty() || range.contains(&entry.payload.as_ptr()));
    }
}

/// Cases per property: 2000 in every test run; set `DR_FUZZ_CASES` for a
/// long fuzzing run (`DR_FUZZ_CASES=1000000 cargo test --release -p
/// dr-codec --test untrusted`).
fn fuzz_cases() -> u32 {
    std::env::var("DR_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let bytes = Bytes::from(bytes);
        let mut out = Vec::new();
        let _ = decode_messages(&bytes, &CodecConfig::default(), &mut out);
        let _ = decode_entry(&bytes, &CodecConfig::default());
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), kind in 1u8..=2) {
        let mut frame = vec![0u8; HEADER_LEN];
        frame[..4].copy_from_slice(&MAGIC);
        frame[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        frame[6] = kind;
        frame[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        forge_checksum(&mut frame);
        let bytes = Bytes::from(frame);
        let mut out = Vec::new();
        let _ = decode_messages(&bytes, &CodecConfig::default(), &mut out);
        let _ = decode_entry(&bytes, &CodecConfig::default());
    }

    #[test]
    fn mutated_frames_with_forged_checksums_never_panic(
        mutations in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut frame = sample_frame().to_vec();
        for (position, value) in mutations {
            let body_position = HEADER_LEN + position % (frame.len() - HEADER_LEN);
            frame[body_position] = value;
        }
        forge_checksum(&mut frame);
        let bytes = Bytes::from(frame);
        let mut out = Vec::new();
        // Either a valid (different) batch or a typed error; never a panic.
        let _ = decode_messages(&bytes, &CodecConfig::default(), &mut out);
    }
}
