//! The Redis protocol (RESP2, and RESP3 after `HELLO 3`) as the server
//! speaks it: requests parsed incrementally from a connection's buffer,
//! replies encoded for the protocol version the client chose.
//!
//! Requests are arrays of bulk strings (what every client library sends)
//! or inline commands (what a person types into `telnet`). Every length
//! is checked against [`Limits`] before anything is allocated or waited
//! for, so a client cannot make the server reserve memory it names.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// Bounds on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes one request may take, all arguments included.
    pub request_bytes_max: usize,
    /// The most arguments one request may have.
    pub arguments_max: usize,
}

impl Default for Limits {
    /// 16 MiB per request, a million arguments (an `MSET` of half a million
    /// pairs).
    fn default() -> Self {
        Self {
            request_bytes_max: 16 << 20,
            arguments_max: 1 << 20,
        }
    }
}

/// A request that cannot be served. The connection is answered with
/// [`ProtocolError::reply`] and closed, as Redis does: after a framing
/// error nothing that follows can be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A byte where a type marker, a digit or CRLF must be.
    Malformed(&'static str),
    /// A length or count beyond the limits.
    TooLarge(&'static str),
}

impl ProtocolError {
    /// The error line sent before closing.
    pub fn reply(&self) -> String {
        format!("ERR Protocol error: {self}")
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) | Self::TooLarge(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Parses the next complete request at the front of `buffer` and removes
/// its bytes. `Ok(None)`: more bytes are needed (and may come, within the
/// limits). Arguments are slices of the buffer's memory, not copies.
pub fn parse_request(
    buffer: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    match buffer.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buffer, limits),
        Some(_) => parse_inline(buffer, limits),
    }
}

/// The position of the CRLF ending the line that starts at `from`.
fn line_end(buffer: &[u8], from: usize) -> Option<usize> {
    buffer
        .get(from..)?
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|at| from + at)
}

fn parse_length(digits: &[u8], what: &'static str) -> Result<i64, ProtocolError> {
    let text = std::str::from_utf8(digits).map_err(|_| ProtocolError::Malformed(what))?;
    if text.is_empty() || text.len() > 19 {
        return Err(ProtocolError::Malformed(what));
    }
    text.parse().map_err(|_| ProtocolError::Malformed(what))
}

fn parse_multibulk(
    buffer: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(end) = line_end(buffer, 1) else {
        return check_pending(buffer, limits);
    };
    let count = parse_length(&buffer[1..end], "invalid multibulk length")?;
    if count > limits.arguments_max as i64 {
        return Err(ProtocolError::TooLarge("invalid multibulk length"));
    }
    let count = count.max(0) as usize;
    let mut at = end + 2;
    // First pass: find where each argument lies, without copying.
    let mut spans = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        if at >= buffer.len() {
            return check_pending(buffer, limits);
        }
        if buffer[at] != b'$' {
            return Err(ProtocolError::Malformed("expected '$'"));
        }
        let Some(end) = line_end(buffer, at + 1) else {
            return check_pending(buffer, limits);
        };
        let len = parse_length(&buffer[at + 1..end], "invalid bulk length")?;
        if len < 0 || len as usize > limits.request_bytes_max {
            return Err(ProtocolError::TooLarge("invalid bulk length"));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if stop + 2 > limits.request_bytes_max {
            return Err(ProtocolError::TooLarge("request too large"));
        }
        if buffer.len() < stop + 2 {
            return Ok(None);
        }
        if &buffer[stop..stop + 2] != b"\r\n" {
            return Err(ProtocolError::Malformed(
                "expected CRLF after a bulk string",
            ));
        }
        spans.push((start, stop));
        at = stop + 2;
    }
    let request = buffer.split_to(at).freeze();
    Ok(Some(
        spans
            .into_iter()
            .map(|(start, stop)| request.slice(start..stop))
            .collect(),
    ))
}

fn parse_inline(
    buffer: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(end) = buffer.iter().position(|&byte| byte == b'\n') else {
        return check_pending(buffer, limits);
    };
    let line = buffer.split_to(end + 1).freeze();
    // CR and LF are ASCII whitespace: splitting drops them with the spaces.
    let arguments: Vec<Bytes> = line
        .split(|byte| byte.is_ascii_whitespace())
        .filter(|word| !word.is_empty())
        .map(|word| line.slice_ref(word))
        .collect();
    if arguments.len() > limits.arguments_max {
        return Err(ProtocolError::TooLarge("too many arguments"));
    }
    Ok(Some(arguments))
}

/// More bytes are needed: fine unless the request already exceeds the
/// limit.
fn check_pending(buffer: &BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buffer.len() > limits.request_bytes_max {
        return Err(ProtocolError::TooLarge("request too large"));
    }
    Ok(None)
}

/// Encodes a request as an array of bulk strings (what a client sends).
pub fn encode_request(arguments: &[Bytes], out: &mut BytesMut) {
    line(out, b'*', arguments.len().to_string().as_bytes());
    for argument in arguments {
        line(out, b'$', argument.len().to_string().as_bytes());
        out.extend_from_slice(argument);
        out.extend_from_slice(b"\r\n");
    }
}

/// The simple strings the server sends (`+OK`, `TYPE`'s names, ...): the
/// reply parser gives them back as [`Reply::Simple`], any other as a bulk
/// string.
pub const SIMPLE_STRINGS: &[&str] = &["OK", "PONG", "QUEUED", "string", "hash", "none"];

/// How deep arrays in a reply may nest.
const REPLY_DEPTH_MAX: usize = 8;

/// Parses the next complete RESP2 reply (what the server sends; also
/// RESP3's `_` null and `%` map) at the front of `buffer` and removes its bytes; the
/// client side, for a follower forwarding to the leader. `Ok(None)`: more
/// bytes are needed.
pub fn parse_reply(buffer: &mut BytesMut, limits: &Limits) -> Result<Option<Reply>, ProtocolError> {
    match reply_at(buffer, 0, limits, 0)? {
        Some((reply, end)) => {
            let _ = buffer.split_to(end);
            Ok(Some(reply))
        }
        None if buffer.len() > limits.request_bytes_max => {
            Err(ProtocolError::TooLarge("reply too large"))
        }
        None => Ok(None),
    }
}

/// The reply starting at `at` and where it ends, if it is complete.
fn reply_at(
    buffer: &[u8],
    at: usize,
    limits: &Limits,
    depth: usize,
) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let Some(&marker) = buffer.get(at) else {
        return Ok(None);
    };
    let Some(end) = line_end(buffer, at + 1) else {
        return Ok(None);
    };
    let text = &buffer[at + 1..end];
    let next = end + 2;
    let reply = match marker {
        b'+' => match SIMPLE_STRINGS
            .iter()
            .find(|simple| simple.as_bytes() == text)
        {
            Some(simple) => Reply::Simple(simple),
            None => Reply::Bulk(Bytes::copy_from_slice(text)),
        },
        b'-' => Reply::Error(String::from_utf8_lossy(text).into_owned()),
        b':' => Reply::Integer(parse_length(text, "invalid integer reply")?),
        b'_' => Reply::Null,
        b'$' => {
            let len = parse_length(text, "invalid bulk length")?;
            if len < 0 {
                return Ok(Some((Reply::Null, next)));
            }
            if len as usize > limits.request_bytes_max {
                return Err(ProtocolError::TooLarge("invalid bulk length"));
            }
            let stop = next + len as usize;
            if buffer.len() < stop + 2 {
                return Ok(None);
            }
            if &buffer[stop..stop + 2] != b"\r\n" {
                return Err(ProtocolError::Malformed(
                    "expected CRLF after a bulk string",
                ));
            }
            return Ok(Some((
                Reply::Bulk(Bytes::copy_from_slice(&buffer[next..stop])),
                stop + 2,
            )));
        }
        b'*' | b'%' => {
            let count = parse_length(text, "invalid multibulk length")?;
            if count < 0 {
                return Ok(Some((Reply::NullArray, next)));
            }
            // A RESP3 map's count is of pairs.
            let per_item = if marker == b'%' { 2 } else { 1 };
            let items_count = (count as usize).saturating_mul(per_item);
            if depth >= REPLY_DEPTH_MAX || items_count > limits.arguments_max {
                return Err(ProtocolError::TooLarge("reply nests or counts too much"));
            }
            let mut items = Vec::with_capacity(items_count.min(1024));
            let mut position = next;
            for _ in 0..items_count {
                let Some((item, item_end)) = reply_at(buffer, position, limits, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                position = item_end;
            }
            let reply = if marker == b'%' {
                let mut items = items.into_iter();
                let mut pairs = Vec::with_capacity(count as usize);
                while let (Some(key), Some(value)) = (items.next(), items.next()) {
                    pairs.push((key, value));
                }
                Reply::Map(pairs)
            } else {
                Reply::Array(items)
            };
            return Ok(Some((reply, position)));
        }
        _ => return Err(ProtocolError::Malformed("unknown reply type")),
    };
    Ok(Some((reply, next)))
}

/// Which protocol the client chose (`HELLO 2` / `HELLO 3`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, every connection's start.
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

impl Protocol {
    /// The version number `HELLO` takes and `CLIENT LIST` shows.
    pub fn version(self) -> i64 {
        match self {
            Self::Resp2 => 2,
            Self::Resp3 => 3,
        }
    }
}

/// A reply, encoded for either protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(&'static str),
    /// `-ERR ...`: the text includes its prefix (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    /// `:42`.
    Integer(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// No value: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// No array (an `EXEC` whose watched keys changed): `*-1` in RESP2,
    /// `_` in RESP3.
    NullArray,
    /// A list of replies.
    Array(Vec<Reply>),
    /// Key-value pairs: a map in RESP3, a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub const OK: Reply = Reply::Simple("OK");

    /// An error reply with the `ERR` prefix.
    pub fn err(text: impl fmt::Display) -> Self {
        Self::Error(format!("ERR {text}"))
    }

    /// A bulk string of these bytes.
    pub fn bulk(bytes: impl Into<Bytes>) -> Self {
        Self::Bulk(bytes.into())
    }

    /// A bulk string of the value, or nil without one (a `GET`'s reply).
    pub fn bulk_or_null(value: Option<impl Into<Bytes>>) -> Self {
        value.map_or(Self::Null, Self::bulk)
    }

    /// Appends the reply's bytes in `protocol` to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        match self {
            Self::Simple(text) => line(out, b'+', text.as_bytes()),
            // An error must stay one line.
            Self::Error(text) => line(out, b'-', text.replace(['\r', '\n'], " ").as_bytes()),
            Self::Integer(value) => line(out, b':', value.to_string().as_bytes()),
            Self::Bulk(bytes) => {
                line(out, b'$', bytes.len().to_string().as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Self::Null => match protocol {
                Protocol::Resp2 => out.extend_from_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
            },
            Self::NullArray => match protocol {
                Protocol::Resp2 => out.extend_from_slice(b"*-1\r\n"),
                Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
            },
            Self::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Self::Map(pairs) => {
                match protocol {
                    Protocol::Resp2 => line(out, b'*', (pairs.len() * 2).to_string().as_bytes()),
                    Protocol::Resp3 => line(out, b'%', pairs.len().to_string().as_bytes()),
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
        }
    }
}

fn line(out: &mut BytesMut, marker: u8, text: &[u8]) {
    out.extend_from_slice(&[marker]);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8], limits: &Limits) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buffer = BytesMut::from(input);
        let mut requests = Vec::new();
        while let Some(request) = parse_request(&mut buffer, limits)? {
            requests.push(request);
        }
        Ok(requests)
    }

    fn words(request: &[Bytes]) -> Vec<&[u8]> {
        request.iter().map(|b| b.as_ref()).collect()
    }

    #[test]
    fn pipelined_multibulk_and_inline_requests_parse_in_order() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nal\r\n*1\r\n$4\r\nPING\r\nGET  k\r\nECHO x\n";
        let requests = parse_all(input, &Limits::default()).unwrap();
        assert_eq!(requests.len(), 4);
        assert_eq!(words(&requests[0]), [&b"SET"[..], b"k", b"v\r\nal"]);
        assert_eq!(words(&requests[1]), [&b"PING"[..]]);
        assert_eq!(words(&requests[2]), [&b"GET"[..], b"k"]);
        assert_eq!(words(&requests[3]), [&b"ECHO"[..], b"x"]);
    }

    #[test]
    fn replies_round_trip_through_the_client_side_parser() {
        let replies = [
            Reply::OK,
            Reply::Error("TRYAGAIN no leader".into()),
            Reply::Integer(-42),
            Reply::bulk("a\r\nb"),
            Reply::Null,
            Reply::Array(vec![
                Reply::bulk("x"),
                Reply::Null,
                Reply::Array(vec![Reply::Integer(1)]),
            ]),
        ];
        let mut encoded = BytesMut::new();
        for reply in &replies {
            reply.encode(Protocol::Resp2, &mut encoded);
        }
        let whole = encoded.clone();
        for cut in 0..whole.len() {
            let mut partial = BytesMut::from(&whole[..cut]);
            while parse_reply(&mut partial, &Limits::default())
                .unwrap()
                .is_some()
            {}
        }
        for expected in &replies {
            assert_eq!(
                parse_reply(&mut encoded, &Limits::default()),
                Ok(Some(expected.clone()))
            );
        }
        assert!(encoded.is_empty());
        let mut deep = BytesMut::from(&b"*1\r\n".repeat(20)[..]);
        assert!(parse_reply(&mut deep, &Limits::default()).is_err());
    }

    #[test]
    fn encoded_requests_parse_back() {
        let arguments = vec![
            Bytes::from_static(b"SET"),
            Bytes::from_static(b"k\r\n"),
            Bytes::new(),
        ];
        let mut out = BytesMut::new();
        encode_request(&arguments, &mut out);
        assert_eq!(
            parse_request(&mut out, &Limits::default()),
            Ok(Some(arguments))
        );
    }

    #[test]
    fn every_prefix_of_a_request_asks_for_more() {
        let input = b"*2\r\n$4\r\nECHO\r\n$11\r\nhello world\r\n";
        for cut in 0..input.len() {
            let mut buffer = BytesMut::from(&input[..cut]);
            assert_eq!(
                parse_request(&mut buffer, &Limits::default()),
                Ok(None),
                "cut {cut}"
            );
            assert_eq!(buffer.len(), cut, "nothing consumed");
        }
        let mut buffer = BytesMut::from(&input[..]);
        let request = parse_request(&mut buffer, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(words(&request), [&b"ECHO"[..], b"hello world"]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn arguments_are_slices_of_the_buffer() {
        let mut buffer = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"[..]);
        let start = buffer.as_ptr() as usize;
        let request = parse_request(&mut buffer, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(request[1].as_ptr() as usize - start, 17);
    }

    #[test]
    fn huge_lengths_and_garbage_are_errors_without_allocation() {
        let limits = Limits {
            request_bytes_max: 1024,
            arguments_max: 8,
        };
        let cases: [&[u8]; 8] = [
            b"*9\r\n",
            b"*1\r\n$2000\r\n",
            b"*1\r\n$99999999999999999999\r\n",
            b"*1\r\n$-5\r\n",
            b"*x\r\n",
            b"*1\r\n+PING\r\n",
            b"*1\r\n$4\r\nPINGxx",
            b"*-\r\n",
        ];
        for case in cases {
            assert!(
                parse_all(case, &limits).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        let endless = vec![b'a'; 2000];
        assert_eq!(
            parse_all(&endless, &limits),
            Err(ProtocolError::TooLarge("request too large"))
        );
        assert!(parse_all(b"*0\r\n", &limits).unwrap()[0].is_empty());
    }

    #[test]
    fn replies_encode_for_both_protocols() {
        let reply = Reply::Array(vec![
            Reply::OK,
            Reply::Integer(-3),
            Reply::bulk(&b"a\r\nb"[..]),
            Reply::Null,
            Reply::Map(vec![(Reply::bulk(&b"k"[..]), Reply::Integer(1))]),
            Reply::err("bad\r\nthing"),
        ]);
        let mut two = BytesMut::new();
        reply.encode(Protocol::Resp2, &mut two);
        assert_eq!(
            &two[..],
            b"*6\r\n+OK\r\n:-3\r\n$4\r\na\r\nb\r\n$-1\r\n*2\r\n$1\r\nk\r\n:1\r\n-ERR bad  thing\r\n"
        );
        let mut three = BytesMut::new();
        reply.encode(Protocol::Resp3, &mut three);
        assert_eq!(
            &three[..],
            b"*6\r\n+OK\r\n:-3\r\n$4\r\na\r\nb\r\n_\r\n%1\r\n$1\r\nk\r\n:1\r\n-ERR bad  thing\r\n"
        );
    }
}
