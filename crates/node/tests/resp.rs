//! A pipelined stream of requests parses the same however the network
//! splits it, and random bytes never panic the parser.

use bytes::{Bytes, BytesMut};
use dr_node::resp::{Limits, parse_request};

fn stream() -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..200 {
        let value = "v".repeat(i % 37);
        bytes.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\nkey{i}\r\n${}\r\n{value}\r\n",
                format!("key{i}").len(),
                value.len()
            )
            .as_bytes(),
        );
        if i % 10 == 0 {
            bytes.extend_from_slice(format!("GET key{i}\r\n").as_bytes());
        }
    }
    bytes
}

/// Feeds `input` in pieces of the lengths `sizes` yields, parsing as a
/// server would after each read.
fn parse_in_pieces(input: &[u8], mut sizes: impl FnMut() -> usize) -> Vec<Vec<Bytes>> {
    let limits = Limits::default();
    let mut buffer = BytesMut::new();
    let mut requests = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let take = sizes().clamp(1, input.len() - at);
        buffer.extend_from_slice(&input[at..at + take]);
        at += take;
        while let Some(request) = parse_request(&mut buffer, &limits).expect("valid stream") {
            requests.push(request);
        }
    }
    assert!(buffer.is_empty());
    requests
}

#[test]
fn any_split_of_a_pipeline_parses_the_same() {
    let input = stream();
    let whole = parse_in_pieces(&input, || usize::MAX);
    assert_eq!(whole.len(), 220);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..50 {
        let pieces = parse_in_pieces(&input, || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 64) as usize
        });
        assert_eq!(pieces, whole, "round {round}");
    }
    assert_eq!(parse_in_pieces(&input, || 1), whole, "byte by byte");
}

#[test]
fn random_bytes_give_requests_or_errors_never_panics() {
    let limits = Limits {
        request_bytes_max: 4096,
        arguments_max: 64,
    };
    let mut seed = 7u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"*$\r\n0123456789-+:abc ";
    for _ in 0..20_000 {
        let len = (next() % 48) as usize;
        let input: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let mut buffer = BytesMut::from(&input[..]);
        while let Ok(Some(_)) = parse_request(&mut buffer, &limits) {}
        assert!(buffer.len() <= input.len());
    }
}
