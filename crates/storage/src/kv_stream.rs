//! The byte stream of a state-machine snapshot: every key-value pair of
//! the `data` family at one applied index, in key order, each pair
//! checksummed, closed by a trailer that counts them.
//!
//! ```text
//! header   magic "DRKVSNP1" (8 bytes)
//! pair     key_len u32 LE | value_len u32 LE | key | value | crc32c u32 LE
//!          (the checksum covers the lengths, the key and the value)
//! ...
//! trailer  0xFFFF_FFFF u32 | pair count u64 LE | crc32c u32 LE of those 12 bytes
//! ```
//!
//! The stream comes from another node, so the reader trusts nothing: it
//! checks every length against the bytes that remain before allocating,
//! every checksum, the key order (strictly ascending, so a stream has one
//! meaning) and the count.

use std::io::{self, Read};

/// The first bytes of every state-machine snapshot.
pub(crate) const MAGIC: [u8; 8] = *b"DRKVSNP1";
/// The longest key the state machine stores. Bounding keys lets the store
/// clear the whole `data` family with one range delete.
pub const KEY_BYTES_MAX: usize = 64 << 10;
/// The longest value the state machine stores (Redis's own limit).
pub const VALUE_BYTES_MAX: usize = 512 << 20;

const TRAILER_MARK: u32 = u32::MAX;

/// A key and its value, as the state machine holds them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A key strictly greater than every key the `data` family may hold.
pub(crate) fn key_upper_bound() -> Vec<u8> {
    vec![0xFF; KEY_BYTES_MAX + 1]
}

/// Appends the stream header.
pub(crate) fn encode_header(out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
}

/// Appends one pair.
pub(crate) fn encode_pair(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = dr_simd::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Appends the trailer closing a stream of `count` pairs.
pub(crate) fn encode_trailer(count: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&TRAILER_MARK.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    let crc = dr_simd::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The bytes of a stream of `pairs` whose keys and values take
/// `key_value_bytes` in all: what the `encode_` functions write.
pub(crate) fn stream_len(pairs: u64, key_value_bytes: u64) -> u64 {
    const PAIR_FRAMING: u64 = 4 + 4 + 4;
    const TRAILER: u64 = 4 + 8 + 4;
    MAGIC.len() as u64 + pairs * PAIR_FRAMING + key_value_bytes + TRAILER
}

/// What is wrong with a stream, and where.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The bytes could not be read.
    Io(io::Error),
    /// The bytes are not a valid stream.
    Invalid(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(error) => write!(f, "reading the snapshot stream: {error}"),
            Self::Invalid(what) => write!(f, "invalid state-machine snapshot: {what}"),
        }
    }
}

/// Reads the pairs of a stream of known length, checking everything.
pub(crate) struct PairReader<R> {
    reader: R,
    remaining: u64,
    pairs: u64,
    previous_key: Option<Vec<u8>>,
    finished: bool,
}

impl<R: Read> PairReader<R> {
    /// Starts reading a stream of `len` bytes; checks the header.
    pub(crate) fn new(reader: R, len: u64) -> Result<Self, StreamError> {
        let mut stream = Self {
            reader,
            remaining: len,
            pairs: 0,
            previous_key: None,
            finished: false,
        };
        let mut magic = [0u8; 8];
        stream.read_exact(&mut magic, "header")?;
        if magic != MAGIC {
            return Err(StreamError::Invalid(
                "it does not start with the snapshot magic".into(),
            ));
        }
        Ok(stream)
    }

    fn read_exact(&mut self, buffer: &mut [u8], what: &str) -> Result<(), StreamError> {
        if (buffer.len() as u64) > self.remaining {
            return Err(StreamError::Invalid(format!(
                "{what} of {} bytes runs past the end, {} bytes from it",
                buffer.len(),
                self.remaining
            )));
        }
        self.reader.read_exact(buffer).map_err(StreamError::Io)?;
        self.remaining -= buffer.len() as u64;
        Ok(())
    }

    fn read_u32(&mut self, what: &str) -> Result<u32, StreamError> {
        let mut word = [0u8; 4];
        self.read_exact(&mut word, what)?;
        Ok(u32::from_le_bytes(word))
    }

    /// The next pair, or `None` after a valid trailer that ends the stream.
    pub(crate) fn next_pair(&mut self) -> Result<Option<KeyValue>, StreamError> {
        if self.finished {
            return Ok(None);
        }
        let key_len = self.read_u32("pair header")?;
        if key_len == TRAILER_MARK {
            self.read_trailer()?;
            return Ok(None);
        }
        let value_len = self.read_u32("pair header")?;
        let (key_len, value_len) = (key_len as usize, value_len as usize);
        if key_len > KEY_BYTES_MAX || value_len > VALUE_BYTES_MAX {
            return Err(StreamError::Invalid(format!(
                "pair {} has a {key_len}-byte key and a {value_len}-byte value, over the limits",
                self.pairs
            )));
        }
        if (key_len + value_len) as u64 + 4 > self.remaining {
            return Err(StreamError::Invalid(format!(
                "pair {} is longer than the {} bytes left",
                self.pairs, self.remaining
            )));
        }
        let mut record = vec![0u8; 8 + key_len + value_len];
        record[..4].copy_from_slice(&(key_len as u32).to_le_bytes());
        record[4..8].copy_from_slice(&(value_len as u32).to_le_bytes());
        self.read_exact(&mut record[8..], "pair")?;
        let stored = self.read_u32("pair checksum")?;
        if dr_simd::crc32c(&record) != stored {
            return Err(StreamError::Invalid(format!(
                "pair {} fails its checksum",
                self.pairs
            )));
        }
        let value = record.split_off(8 + key_len);
        let key = record.split_off(8);
        if self
            .previous_key
            .as_ref()
            .is_some_and(|previous| *previous >= key)
        {
            return Err(StreamError::Invalid(format!(
                "pair {} is out of key order",
                self.pairs
            )));
        }
        self.previous_key = Some(key.clone());
        self.pairs += 1;
        Ok(Some((key, value)))
    }

    fn read_trailer(&mut self) -> Result<(), StreamError> {
        let mut count = [0u8; 8];
        self.read_exact(&mut count, "trailer")?;
        let stored = self.read_u32("trailer checksum")?;
        let mut body = TRAILER_MARK.to_le_bytes().to_vec();
        body.extend_from_slice(&count);
        if dr_simd::crc32c(&body) != stored {
            return Err(StreamError::Invalid(
                "the trailer fails its checksum".into(),
            ));
        }
        let count = u64::from_le_bytes(count);
        if count != self.pairs {
            return Err(StreamError::Invalid(format!(
                "the trailer counts {count} pairs where the stream holds {}",
                self.pairs
            )));
        }
        if self.remaining != 0 {
            return Err(StreamError::Invalid(format!(
                "{} bytes follow the trailer",
                self.remaining
            )));
        }
        self.finished = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header and trailer of a stream of zero pairs.
    const EMPTY_STREAM_BYTES: u64 = MAGIC.len() as u64 + 16;

    fn pair_bytes(key: &[u8], value: &[u8]) -> u64 {
        12 + (key.len() + value.len()) as u64
    }

    fn stream(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(&mut out);
        for (key, value) in pairs {
            encode_pair(key, value, &mut out);
        }
        encode_trailer(pairs.len() as u64, &mut out);
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<KeyValue>, StreamError> {
        let mut reader = PairReader::new(bytes, bytes.len() as u64)?;
        let mut pairs = Vec::new();
        while let Some(pair) = reader.next_pair()? {
            pairs.push(pair);
        }
        Ok(pairs)
    }

    #[test]
    fn pairs_round_trip() {
        let pairs: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"b", b""), (b"c", b"three")];
        let bytes = stream(&pairs);
        let expected_len =
            EMPTY_STREAM_BYTES + pairs.iter().map(|(k, v)| pair_bytes(k, v)).sum::<u64>();
        assert_eq!(bytes.len() as u64, expected_len);
        let read = read_all(&bytes).expect("valid");
        assert_eq!(read.len(), 3);
        assert_eq!(read[2], (b"c".to_vec(), b"three".to_vec()));
        assert!(read_all(&stream(&[])).expect("valid").is_empty());
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_an_error() {
        let bytes = stream(&[(b"key", b"value"), (b"other", b"x")]);
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert!(read_all(&damaged).is_err(), "flip at {position} accepted");
            assert!(
                read_all(&bytes[..position]).is_err(),
                "cut at {position} accepted"
            );
        }
    }

    #[test]
    fn unordered_keys_miscounts_and_huge_lengths_are_refused() {
        let unordered = stream(&[(b"b", b"1"), (b"a", b"2")]);
        assert!(read_all(&unordered).is_err());
        let mut miscounted = Vec::new();
        encode_header(&mut miscounted);
        encode_pair(b"a", b"1", &mut miscounted);
        encode_trailer(2, &mut miscounted);
        assert!(read_all(&miscounted).is_err());
        let mut huge = Vec::new();
        encode_header(&mut huge);
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
        assert!(matches!(read_all(&huge), Err(StreamError::Invalid(_))));
    }
}
