//! Just enough of an etcd v3 client for the load generator to put the
//! same load on etcd as on drkv: gRPC over HTTP/2 (cleartext, prior
//! knowledge), one unary call in flight per connection, `KV/Put` and
//! linearizable `KV/Range` of one key.
//!
//! Requests are encoded by hand (protobuf fields 1 and 2, HPACK literals
//! that touch no dynamic table); answers are read as frames only, never
//! HPACK-decoded: a call succeeded when its stream carried a gRPC message
//! before it ended (gRPC answers an error with trailers alone). Frames are
//! checked against the sizes this client allows, and anything it cannot
//! follow ends the connection with an error rather than a guess.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
/// HTTP/2's default largest frame, which this client never raises.
const FRAME_BYTES_MAX: usize = 16_384;
/// The window each new stream gets for the server's answer.
const STREAM_WINDOW_BYTES: u32 = 1 << 24;
/// The window the connection keeps open for answers.
const CONNECTION_WINDOW_BYTES: u32 = 1 << 26;
/// Answer bytes taken in before the connection's window is topped up
/// (well before it closes).
const WINDOW_UPDATE_BYTES: u32 = CONNECTION_WINDOW_BYTES / 4;
/// HTTP/2's initial windows, before any setting or update.
const DEFAULT_WINDOW_BYTES: i64 = 65_535;
/// The gRPC message prefix: compressed flag and length.
const GRPC_PREFIX_BYTES: usize = 5;
/// How long a call may wait for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most answer bytes kept for [`EtcdClient::count`].
const ANSWER_BYTES_MAX: usize = 64 << 10;
/// The largest request message (it must fit one DATA frame).
pub const MESSAGE_BYTES_MAX: usize = FRAME_BYTES_MAX - GRPC_PREFIX_BYTES;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const SETTING_ENABLE_PUSH: u16 = 0x2;
const SETTING_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with a message.
    Answered,
    /// The server ended the call without one (a gRPC error) or reset it.
    Failed,
}

/// One HTTP/2 connection to an etcd member.
#[derive(Debug)]
pub struct EtcdClient {
    stream: TcpStream,
    input: BytesMut,
    output: BytesMut,
    authority: String,
    next_stream: u32,
    /// What the server lets this client send on the connection.
    connection_window: i64,
    /// What it lets a new stream send.
    stream_window: i64,
    /// Answer bytes not yet given back to the server's window.
    unreturned: u32,
    /// The last call's answer (gRPC-framed), up to `ANSWER_BYTES_MAX`.
    answer: BytesMut,
}

/// A frame's header.
#[derive(Clone, Copy, Debug)]
struct Frame {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl EtcdClient {
    /// Connects to an etcd client URL's address and opens HTTP/2.
    pub async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let mut client = Self {
            stream: super::connect(addr).await?,
            input: BytesMut::with_capacity(32 << 10),
            output: BytesMut::with_capacity(4 << 10),
            authority: addr.to_string(),
            next_stream: 1,
            connection_window: DEFAULT_WINDOW_BYTES,
            stream_window: DEFAULT_WINDOW_BYTES,
            unreturned: 0,
            answer: BytesMut::new(),
        };
        client.output.put_slice(PREFACE);
        let settings = [
            (SETTING_ENABLE_PUSH, 0),
            (SETTING_INITIAL_WINDOW_SIZE, STREAM_WINDOW_BYTES),
        ];
        put_frame_header(&mut client.output, settings.len() * 6, SETTINGS, 0, 0);
        for (id, value) in settings {
            client.output.put_u16(id);
            client.output.put_u32(value);
        }
        // The connection's own window starts at 64 KiB whatever the
        // settings say: open it as wide as the streams'.
        put_frame_header(&mut client.output, 4, WINDOW_UPDATE, 0, 0);
        client
            .output
            .put_u32(CONNECTION_WINDOW_BYTES - DEFAULT_WINDOW_BYTES as u32);
        client.flush().await?;
        Ok(client)
    }

    /// `KV/Put`: `key` set to `value`.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Outcome, String> {
        let mut message = BytesMut::with_capacity(key.len() + value.len() + 12);
        put_bytes_field(&mut message, 1, key);
        put_bytes_field(&mut message, 2, value);
        self.call("/etcdserverpb.KV/Put", &message).await
    }

    /// `KV/Range` of one key, linearizable (etcd's default).
    pub async fn get(&mut self, key: &[u8]) -> Result<Outcome, String> {
        let mut message = BytesMut::with_capacity(key.len() + 6);
        put_bytes_field(&mut message, 1, key);
        self.call("/etcdserverpb.KV/Range", &message).await
    }

    /// How many keys `KV/Range` of `key` finds (0 or 1), linearizable:
    /// what the load's puts left behind.
    pub async fn count(&mut self, key: &[u8]) -> Result<u64, String> {
        if self.get(key).await? == Outcome::Failed {
            return Err("etcd refused the range".into());
        }
        let message = self
            .answer
            .get(GRPC_PREFIX_BYTES..)
            .ok_or("a gRPC answer shorter than its prefix")?;
        range_count(message).ok_or_else(|| "an undecodable RangeResponse".to_owned())
    }

    /// One unary call, answered within `CALL_TIMEOUT` or an error (a
    /// stalled server, or windows this client failed to keep open, end the
    /// run rather than hang it).
    async fn call(&mut self, path: &str, message: &[u8]) -> Result<Outcome, String> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_untimed(path, message))
            .await
            .unwrap_or_else(|_| Err(format!("etcd did not answer within {CALL_TIMEOUT:?}")))
    }

    async fn call_untimed(&mut self, path: &str, message: &[u8]) -> Result<Outcome, String> {
        self.answer.clear();
        if message.len() > MESSAGE_BYTES_MAX {
            return Err(format!(
                "an etcd request of {} bytes: at most {MESSAGE_BYTES_MAX}",
                message.len()
            ));
        }
        let id = self.next_stream;
        self.next_stream = id
            .checked_add(2)
            .filter(|&next| next < 1 << 31)
            .ok_or("the HTTP/2 connection ran out of stream ids")?;
        // Frames that came after the last answer (settings, window
        // updates, pings) count before anything is sent.
        while let Some(frame) = self.buffered_frame()? {
            self.handle_idle_frame(frame)?;
        }
        let data_len = GRPC_PREFIX_BYTES + message.len();
        while self.connection_window < data_len as i64 || self.stream_window < data_len as i64 {
            // Wait for the server to open its window (its updates and
            // settings are handled as frames arrive).
            let frame = self.next_frame().await?;
            self.handle_idle_frame(frame)?;
            if !self.output.is_empty() {
                self.flush().await?;
            }
        }
        self.connection_window -= data_len as i64;
        let mut block = BytesMut::with_capacity(128 + path.len());
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority.as_str()),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            put_literal(&mut block, name.as_bytes(), value.as_bytes());
        }
        put_frame_header(&mut self.output, block.len(), HEADERS, END_HEADERS, id);
        self.output.put_slice(&block);
        put_frame_header(&mut self.output, data_len, DATA, END_STREAM, id);
        self.output.put_u8(0);
        self.output.put_u32(message.len() as u32);
        self.output.put_slice(message);
        self.flush().await?;
        self.answer(id).await
    }

    /// Reads frames until stream `id` ends.
    async fn answer(&mut self, id: u32) -> Result<Outcome, String> {
        let mut answered = false;
        // The stream ends with the header block that carried END_STREAM.
        let mut ending = false;
        loop {
            let frame = self.next_frame().await?;
            let mut ended = false;
            if frame.stream == id {
                match frame.kind {
                    DATA => {
                        answered |= frame.len > 0;
                        let room = ANSWER_BYTES_MAX.saturating_sub(self.answer.len());
                        self.answer
                            .extend_from_slice(&self.input[..frame.len.min(room)]);
                        self.take_back(frame.len);
                        ended = frame.flags & END_STREAM != 0;
                    }
                    HEADERS | CONTINUATION => {
                        if frame.kind == HEADERS {
                            ending = frame.flags & END_STREAM != 0;
                        }
                        ended = ending && frame.flags & END_HEADERS != 0;
                    }
                    RST_STREAM => {
                        self.input.advance(frame.len);
                        return Ok(Outcome::Failed);
                    }
                    _ => {}
                }
                self.input.advance(frame.len);
            } else {
                // The connection's, or a stream this client gave up on.
                self.handle_idle_frame(frame)?;
            }
            if !self.output.is_empty() {
                self.flush().await?;
            }
            if ended {
                return Ok(if answered {
                    Outcome::Answered
                } else {
                    Outcome::Failed
                });
            }
        }
    }

    /// A frame that answers no waiting call: the connection's are
    /// handled, a late answer's bytes given back; it is consumed.
    fn handle_idle_frame(&mut self, frame: Frame) -> Result<(), String> {
        if frame.stream == 0 {
            self.handle_connection_frame(frame)?;
        } else if frame.kind == DATA {
            self.take_back(frame.len);
        }
        self.input.advance(frame.len);
        Ok(())
    }

    /// Settings, pings, window updates and goodbyes (the frame's payload
    /// is at the front of the input).
    fn handle_connection_frame(&mut self, frame: Frame) -> Result<(), String> {
        let payload = &self.input[..frame.len];
        match frame.kind {
            SETTINGS if frame.flags & ACK == 0 => {
                if !frame.len.is_multiple_of(6) {
                    return Err("a malformed HTTP/2 SETTINGS frame from etcd".into());
                }
                for setting in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    if id == SETTING_INITIAL_WINDOW_SIZE {
                        self.stream_window = i64::from(value);
                    }
                }
                put_frame_header(&mut self.output, 0, SETTINGS, ACK, 0);
            }
            PING if frame.flags & ACK == 0 => {
                if frame.len != 8 {
                    return Err("a malformed HTTP/2 PING frame from etcd".into());
                }
                let opaque: [u8; 8] = payload.try_into().expect("checked length");
                put_frame_header(&mut self.output, 8, PING, ACK, 0);
                self.output.put_slice(&opaque);
            }
            WINDOW_UPDATE => {
                if frame.len != 4 {
                    return Err("a malformed HTTP/2 WINDOW_UPDATE frame from etcd".into());
                }
                let increment =
                    u32::from_be_bytes(payload.try_into().expect("checked length")) & 0x7FFF_FFFF;
                self.connection_window += i64::from(increment);
            }
            GOAWAY => return Err("etcd closed the connection (HTTP/2 GOAWAY)".into()),
            _ => {}
        }
        Ok(())
    }

    /// Counts answer bytes taken in, and gives them back to the
    /// connection's window once enough have come.
    fn take_back(&mut self, bytes: usize) {
        self.unreturned += bytes as u32;
        if self.unreturned >= WINDOW_UPDATE_BYTES {
            put_frame_header(&mut self.output, 4, WINDOW_UPDATE, 0, 0);
            self.output.put_u32(self.unreturned);
            self.unreturned = 0;
        }
    }

    /// The next whole frame: its header is consumed, its payload is at
    /// the front of the input.
    async fn next_frame(&mut self) -> Result<Frame, String> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(frame);
            }
            super::read_more(&mut self.stream, &mut self.input, "etcd").await?;
        }
    }

    /// The next frame if the input holds all of it (its header then
    /// consumed, its payload at the front of the input).
    fn buffered_frame(&mut self) -> Result<Option<Frame>, String> {
        let Some(head) = self.input.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        let frame = Frame {
            len: usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]),
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7FFF_FFFF,
        };
        if frame.len > FRAME_BYTES_MAX {
            return Err(format!(
                "an HTTP/2 frame of {} bytes from etcd (at most {FRAME_BYTES_MAX}): is the target an etcd client URL?",
                frame.len
            ));
        }
        if self.input.len() < FRAME_HEADER_BYTES + frame.len {
            return Ok(None);
        }
        self.input.advance(FRAME_HEADER_BYTES);
        Ok(Some(frame))
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.stream
            .write_all(&self.output)
            .await
            .map_err(|e| e.to_string())?;
        self.output.clear();
        Ok(())
    }
}

/// `count` (field 4) of a RangeResponse; every other field is skipped.
fn range_count(mut message: &[u8]) -> Option<u64> {
    let mut count = 0;
    while !message.is_empty() {
        let tag = take_varint(&mut message)?;
        match tag & 7 {
            0 => {
                let value = take_varint(&mut message)?;
                if tag >> 3 == 4 {
                    count = value;
                }
            }
            2 => {
                let len = usize::try_from(take_varint(&mut message)?).ok()?;
                message = message.get(len..)?;
            }
            _ => return None,
        }
    }
    Some(count)
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(
        len <= FRAME_BYTES_MAX,
        "frames stay within the default size"
    );
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// An HPACK "literal header field without indexing, new name" (no
/// Huffman): the server's table is never touched.
fn put_literal(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_u8(0);
    put_hpack_length(out, name.len());
    out.put_slice(name);
    put_hpack_length(out, value.len());
    out.put_slice(value);
}

/// An HPACK string length (7-bit prefix, Huffman bit clear).
fn put_hpack_length(out: &mut BytesMut, len: usize) {
    if len < 127 {
        out.put_u8(len as u8);
        return;
    }
    out.put_u8(127);
    let mut rest = len - 127;
    while rest >= 128 {
        out.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.put_u8(rest as u8);
}

/// A protobuf length-delimited field.
fn put_bytes_field(out: &mut BytesMut, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value & 0x7F) as u8 | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_and_hpack_encodings_follow_their_specs() {
        let mut out = BytesMut::new();
        put_bytes_field(&mut out, 2, b"ab");
        assert_eq!(&out[..], [0x12, 2, b'a', b'b']);
        out.clear();
        put_varint(&mut out, 300);
        assert_eq!(&out[..], [0xAC, 0x02], "protobuf's own example");
        out.clear();
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix is 31, 154, 10; with
        // a 7-bit prefix 1337 - 127 = 1210 = 0b1001_0111010.
        put_hpack_length(&mut out, 1337);
        assert_eq!(&out[..], [127, 0xBA, 0x09]);
        out.clear();
        put_literal(&mut out, b"te", b"trailers");
        assert_eq!(&out[..], b"\x00\x02te\x08trailers");
        out.clear();
        put_frame_header(&mut out, 0x1234, HEADERS, END_HEADERS, 7);
        assert_eq!(&out[..], [0x00, 0x12, 0x34, 1, 4, 0, 0, 0, 7]);
    }

    #[test]
    fn a_range_answer_gives_its_count_and_garbage_gives_none() {
        // header {1: 7}, one kv {1: "k"}, count 1.
        let message = [0x0a, 2, 0x08, 7, 0x12, 3, 0x0a, 1, b'k', 0x20, 1];
        assert_eq!(range_count(&message), Some(1));
        assert_eq!(range_count(&[0x0a, 2, 0x08, 7]), Some(0), "no count: 0");
        assert_eq!(range_count(&[0x0a, 9, 0x08]), None, "a field past the end");
        assert_eq!(range_count(&[0x0d, 1, 2, 3, 4]), None, "a 32-bit field");
        assert_eq!(range_count(&[0x20, 0xFF]), None, "a varint cut short");
        let mut out = BytesMut::new();
        put_varint(&mut out, u64::MAX);
        assert_eq!(take_varint(&mut &out[..]), Some(u64::MAX));
    }
}
