//! Differential test: seeded random sequences of the commands drkv
//! supports — wrong types, wrong arities, bad numbers, expiry in the past
//! among them — sent to a real `redis-server` (Debian's package, started
//! here on a loopback port) and to a three-node `drkv` cluster (each
//! command to the next node, so followers forward); every reply must
//! match byte for byte, except the documented differences in
//! [`Difference`].

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dr_node::resp::{self, Limits, Reply};
use support::{Cluster, free_addr};

/// A `redis-server` on a loopback port, stopped on drop.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl RedisServer {
    fn start() -> Self {
        let addr = free_addr();
        let child = Command::new("redis-server")
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server runs (Debian's redis-server package: the oracle of this test; \
                 .ci/run installs it)",
            );
        let server = Self { child, addr };
        support::wait_until(Duration::from_secs(10), "redis-server listens", || {
            TcpStream::connect(addr).is_ok()
        });
        server
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that sends requests and returns each reply's exact bytes.
struct RawClient {
    stream: TcpStream,
    buffer: BytesMut,
}

impl RawClient {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a timeout");
        Self {
            stream,
            buffer: BytesMut::new(),
        }
    }

    /// Sends `args`, returns the reply's bytes and the reply.
    fn call(&mut self, args: &[Bytes]) -> (Bytes, Reply) {
        let mut out = BytesMut::new();
        resp::encode_request(args, &mut out);
        self.stream.write_all(&out).expect("send");
        let limits = Limits::default();
        loop {
            let before = self.buffer.clone();
            if let Some(reply) = resp::parse_reply(&mut self.buffer, &limits).expect("a reply") {
                let used = before.len() - self.buffer.len();
                return (before.freeze().slice(..used), reply);
            }
            let mut chunk = [0u8; 64 << 10];
            let read = self.stream.read(&mut chunk).expect("a reply in time");
            assert!(read > 0, "the server closed the connection");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Xorshift: the sequence is the seed's.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &["k1", "k2", "k3", "n1", "n2", "{tag}x", "h1", "h2", "h3"];
const HASHES: &[&str] = &["h1", "h2", "h3", "k1"];
const FIELDS: &[&str] = &["f1", "f2", "f3", "n", ""];
const VALUES: &[&str] = &[
    "v",
    "",
    "10",
    "-3",
    "abc",
    "3.5",
    "9223372036854775807",
    "hello world",
];
/// Counts for relative times: long enough that nothing expires while the
/// test runs, or not positive (refused, or the key goes at once).
const RELATIVE: &[&str] = &["1000", "86400", "0", "-1", "abc", "9223372036854775807"];
/// Unix times: far future, past, invalid.
const ABSOLUTE_S: &[&str] = &["4102444800", "1", "0", "-5", "x"];
const ABSOLUTE_MS: &[&str] = &["4102444800000", "1000", "0", "-5", "1.5"];

/// One random command: a third on hashes, a sixth on the keyspace.
fn random_command(rng: &mut Rng) -> Vec<String> {
    match rng.below(6) {
        0 | 1 => random_hash_command(rng),
        2 => random_keyspace_command(rng),
        _ => random_string_command(rng),
    }
}

const FLOATS: &[&str] = &[
    "0.1",
    "-1.1",
    "3.0e3",
    "1e30",
    "10.5",
    "abc",
    "inf",
    "1.23456789012345678",
    "-0.25",
    "5",
];

fn random_keyspace_command(rng: &mut Rng) -> Vec<String> {
    let key = rng.pick(KEYS).to_owned();
    let other = rng.pick(KEYS).to_owned();
    let words: Vec<String> = match rng.below(14) {
        0 => vec![
            "GETRANGE".into(),
            key,
            rng.pick(&["0", "-3", "2", "x"]).into(),
            rng.pick(&["-1", "1", "100", "-10"]).into(),
        ],
        1 => vec![
            "SETRANGE".into(),
            key,
            rng.pick(&["0", "3", "-1", "x"]).into(),
            rng.pick(VALUES).into(),
        ],
        2 | 3 => vec!["INCRBYFLOAT".into(), key, rng.pick(FLOATS).into()],
        4 => vec![
            "MSETNX".into(),
            key,
            rng.pick(VALUES).into(),
            other,
            "m".into(),
        ],
        5 => vec!["RENAME".into(), key, other],
        6 => vec!["RENAMENX".into(), key, other],
        7 => {
            let mut words = vec!["COPY".into(), key, other];
            match rng.below(4) {
                0 => words.push("REPLACE".into()),
                1 => words.extend(["DB".into(), "0".into()]),
                2 => words.push("BAD".into()),
                _ => {}
            }
            words
        }
        8 => vec![
            "KEYS".into(),
            rng.pick(&["*", "k*", "h?", "[kn]1", "nomatch*"]).into(),
        ],
        9 => vec!["TOUCH".into(), key, other],
        10 => vec!["RANDOMKEY".into()],
        11 => vec!["SUBSTR".into(), key, "0".into(), "2".into()],
        12 => vec!["INCRBYFLOAT".into(), key],
        _ => vec!["TYPE".into(), key],
    };
    words
}

fn random_string_command(rng: &mut Rng) -> Vec<String> {
    let key = rng.pick(KEYS).to_owned();
    let other = rng.pick(KEYS).to_owned();
    let value = rng.pick(VALUES).to_owned();
    let words: Vec<String> = match rng.below(30) {
        0 => vec!["GET".into(), key],
        1 => vec!["SET".into(), key, value],
        2 => {
            let mut words = vec!["SET".into(), key, value];
            for _ in 0..rng.below(4) {
                match rng.below(8) {
                    0 => words.push("NX".into()),
                    1 => words.push("XX".into()),
                    2 => words.push("GET".into()),
                    3 => words.push("KEEPTTL".into()),
                    4 => words.extend(["EX".into(), rng.pick(RELATIVE).into()]),
                    5 => words.extend(["PX".into(), rng.pick(RELATIVE).into()]),
                    6 => words.extend(["EXAT".into(), rng.pick(ABSOLUTE_S).into()]),
                    _ => words.extend(["PXAT".into(), rng.pick(ABSOLUTE_MS).into()]),
                }
            }
            words
        }
        3 => vec!["SETEX".into(), key, rng.pick(RELATIVE).into(), value],
        4 => vec!["PSETEX".into(), key, rng.pick(RELATIVE).into(), value],
        5 => {
            let mut words = vec!["GETEX".into(), key];
            match rng.below(6) {
                0 => words.extend(["EX".into(), rng.pick(RELATIVE).into()]),
                1 => words.extend(["PXAT".into(), rng.pick(ABSOLUTE_MS).into()]),
                2 => words.push("PERSIST".into()),
                3 => words.extend(["PERSIST".into(), "EX".into(), "5".into()]),
                _ => {}
            }
            words
        }
        6 => vec!["GETDEL".into(), key],
        7 => {
            let name = rng.pick(&["EXPIRE", "PEXPIRE"]);
            let mut words = vec![name.into(), key, rng.pick(RELATIVE).into()];
            for _ in 0..rng.below(3) {
                words.push(rng.pick(&["NX", "XX", "GT", "LT", "YY"]).into());
            }
            words
        }
        8 => {
            let (name, times) = if rng.below(2) == 0 {
                ("EXPIREAT", ABSOLUTE_S)
            } else {
                ("PEXPIREAT", ABSOLUTE_MS)
            };
            let mut words = vec![name.into(), key, rng.pick(times).into()];
            if rng.below(2) == 0 {
                words.push(rng.pick(&["NX", "XX", "GT", "LT"]).into());
            }
            words
        }
        9 => vec!["PERSIST".into(), key],
        10 => vec![
            rng.pick(&["TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"])
                .into(),
            key,
        ],
        11 => vec!["TYPE".into(), key],
        12 => vec!["DEL".into(), key, other],
        13 => vec!["EXISTS".into(), key.clone(), other, key],
        14 => vec!["INCR".into(), key],
        15 => vec!["INCRBY".into(), key, rng.pick(VALUES).into()],
        16 => vec![
            "DECRBY".into(),
            key,
            rng.pick(&["1", "-9223372036854775808", "x"]).into(),
        ],
        17 => vec!["APPEND".into(), key, value],
        18 => vec!["STRLEN".into(), key],
        19 => vec!["MSET".into(), key, value, other, "m".into()],
        20 => vec!["MGET".into(), key, other, "nokey".into()],
        21 => vec!["SETNX".into(), key, value],
        22 => vec!["GETSET".into(), key, value],
        23 => vec!["UNLINK".into(), key],
        24 => vec!["DBSIZE".into()],
        25 if rng.below(10) == 0 => vec![rng.pick(&["FLUSHDB", "FLUSHALL"]).into()],
        26 => {
            // Wrong arities.
            let name = rng.pick(&[
                "GET", "SET", "SETEX", "EXPIRE", "TTL", "GETDEL", "TYPE", "PERSIST",
            ]);
            let count = rng.below(2);
            let mut words = vec![name.to_owned()];
            words.extend((0..count).map(|_| key.clone()));
            if name == "SET" || name == "EXPIRE" {
                words.truncate(1 + count.min(1));
            }
            words
        }
        27 if rng.below(5) == 0 => vec![
            "FLUSHALL".into(),
            rng.pick(&["ASYNC", "SYNC", "LATER"]).into(),
        ],
        _ => vec!["GET".into(), key],
    };
    words
}

fn random_hash_command(rng: &mut Rng) -> Vec<String> {
    let key = rng.pick(HASHES).to_owned();
    let field = rng.pick(FIELDS).to_owned();
    let value = rng.pick(VALUES).to_owned();
    let mut words: Vec<String> = match rng.below(16) {
        0..=2 => {
            let mut words = vec!["HSET".into(), key, field, value];
            for _ in 0..rng.below(3) {
                words.push(rng.pick(FIELDS).into());
                words.push(rng.pick(VALUES).into());
            }
            words
        }
        3 => vec!["HMSET".into(), key, field, value],
        4 => vec!["HSETNX".into(), key, field, value],
        5 => vec!["HGET".into(), key, field],
        6 => vec!["HMGET".into(), key, field, rng.pick(FIELDS).into()],
        7 => vec!["HDEL".into(), key, field, rng.pick(FIELDS).into()],
        8 => vec!["HLEN".into(), key],
        9 => vec!["HEXISTS".into(), key, field],
        10 => {
            let by = rng.pick(&["1", "-7", "x", "9223372036854775807"]);
            vec!["HINCRBY".into(), key, field, by.into()]
        }
        11 => vec![rng.pick(&["HGETALL", "HKEYS", "HVALS"]).into(), key],
        12 if rng.below(2) == 0 => vec!["HINCRBYFLOAT".into(), key, field, rng.pick(FLOATS).into()],
        12 => vec!["HSTRLEN".into(), key, field],
        13 => vec!["HSCAN".into(), key, "0".into()],
        14 => vec!["TYPE".into(), key],
        _ => {
            let kind = rng.pick(&["hash", "string", "list"]);
            let words = ["SCAN", "0", "COUNT", "100", "TYPE", kind];
            words.map(str::to_owned).to_vec()
        }
    };
    if rng.below(25) == 0 {
        // A wrong arity.
        words.truncate(rng.below(words.len()).max(1));
    }
    words
}

/// A transaction: maybe `WATCH` (and maybe another client's write of a
/// watched key), `MULTI`, a few commands (some refused at queue time,
/// some failing when run), then `EXEC` or `DISCARD`. Each command with
/// the client that sends it (0: the one under test, 1: another).
fn random_transaction(rng: &mut Rng) -> Vec<(usize, Vec<String>)> {
    let mut block = Vec::new();
    let watched = rng.pick(KEYS).to_owned();
    if rng.below(2) == 0 {
        block.push((
            0,
            vec!["WATCH".into(), watched.clone(), rng.pick(KEYS).into()],
        ));
        match rng.below(4) {
            0 => block.push((1, vec!["SET".into(), watched.clone(), "other".into()])),
            1 => block.push((1, vec!["DEL".into(), watched.clone()])),
            2 => block.push((0, vec!["INCR".into(), watched.clone()])),
            _ => {}
        }
        if rng.below(6) == 0 {
            block.push((0, vec!["UNWATCH".into()]));
        }
    }
    block.push((0, vec!["MULTI".into()]));
    for _ in 0..rng.below(6) {
        let words = match rng.below(12) {
            0 => vec!["NOSUCHCOMMAND".into(), "x".into()],
            1 => vec!["GET".into()],
            2 => vec!["MULTI".into()],
            3 => vec!["WATCH".into(), watched.clone()],
            4 => vec!["PING".into()],
            5 => vec!["ECHO".into(), "hi".into()],
            _ => {
                // No DBSIZE inside: its count waits for keys written with
                // a passed time to be touched (see `Difference`).
                let mut words = random_command(rng);
                while words[0] == "DBSIZE" {
                    words = random_command(rng);
                }
                words
            }
        };
        block.push((0, words));
    }
    let end = if rng.below(6) == 0 { "DISCARD" } else { "EXEC" };
    block.push((0, vec![end.into()]));
    if rng.below(8) == 0 {
        block.push((0, vec![end.into()]));
    }
    block
}

/// Replies that may differ, and how much (see also `unordered`).
///
/// Besides these: a key written with an expiry time already passed
/// (`SET ... PXAT 1000`) is removed at once by drkv (as Redis 7.2 does);
/// Redis 7.0 stores it and counts it in `DBSIZE` until something touches
/// it or its expiry cycle removes it. So before each `DBSIZE` the test
/// touches every key of its pool on both servers (`EXISTS`, compared
/// too), after which the counts must agree exactly.
#[derive(Debug)]
enum Difference {
    /// Times left or expiry times: the two servers read their clocks a
    /// moment apart.
    Time { slack: i64 },
    /// `RANDOMKEY`: a key each (nil only when there is none).
    AnyKey,
}

fn difference(args: &[String]) -> Option<Difference> {
    match args[0].as_str() {
        "TTL" | "EXPIRETIME" => Some(Difference::Time { slack: 2 }),
        "PTTL" | "PEXPIRETIME" => Some(Difference::Time { slack: 2_000 }),
        "RANDOMKEY" => Some(Difference::AnyKey),
        _ => None,
    }
}

/// Replies whose order Redis does not define: a hash's fields (Redis
/// answers small hashes in insertion order, drkv in field order), the
/// keys of a `SCAN` page (in hash-table order there). Compared as sorted
/// lists (pairs kept together).
fn unordered(args: &[String], reply: &Reply) -> Option<Vec<Vec<Reply>>> {
    let chunk = match args[0].as_str() {
        "HGETALL" => 2,
        "HKEYS" | "HVALS" | "KEYS" => 1,
        "HSCAN" | "SCAN" => {
            let Reply::Array(parts) = reply else {
                return None;
            };
            let [cursor, Reply::Array(items)] = parts.as_slice() else {
                return None;
            };
            let chunk = if args[0] == "HSCAN" { 2 } else { 1 };
            let mut sorted: Vec<Vec<Reply>> = items.chunks(chunk).map(<[Reply]>::to_vec).collect();
            sorted.sort_by_key(|item| format!("{item:?}"));
            sorted.push(vec![cursor.clone()]);
            return Some(sorted);
        }
        _ => return None,
    };
    let Reply::Array(items) = reply else {
        return None;
    };
    let mut sorted: Vec<Vec<Reply>> = items.chunks(chunk).map(<[Reply]>::to_vec).collect();
    sorted.sort_by_key(|item| format!("{item:?}"));
    Some(sorted)
}

/// Whether the replies match: the same bytes, or within a documented
/// difference. `queued`: for `EXEC`, the commands it ran (each reply in
/// its array is judged as that command's).
fn matches(
    args: &[String],
    queued: &[Vec<String>],
    redis: &(Bytes, Reply),
    drkv: &(Bytes, Reply),
) -> bool {
    redis.0 == drkv.0 || equivalent(args, queued, &redis.1, &drkv.1)
}

fn equivalent(args: &[String], queued: &[Vec<String>], redis: &Reply, drkv: &Reply) -> bool {
    if redis == drkv {
        return true;
    }
    if args[0] == "EXEC" {
        return match (redis, drkv) {
            (Reply::Array(a), Reply::Array(b)) if a.len() == b.len() && a.len() == queued.len() => {
                a.iter()
                    .zip(b)
                    .zip(queued)
                    .all(|((a, b), args)| equivalent(args, &[], a, b))
            }
            _ => false,
        };
    }
    if let (Some(a), Some(b)) = (unordered(args, redis), unordered(args, drkv)) {
        return a == b;
    }
    match (difference(args), redis, drkv) {
        (Some(Difference::Time { slack }), Reply::Integer(a), Reply::Integer(b)) => {
            *a >= 0 && *b >= 0 && (a - b).abs() <= slack
        }
        (Some(Difference::AnyKey), Reply::Bulk(_), Reply::Bulk(_)) => true,
        _ => false,
    }
}

/// Compares `commands` random commands; returns how many replies were
/// compared, per command name.
fn run(seed: u64, commands: usize) -> std::collections::BTreeMap<String, usize> {
    let redis = RedisServer::start();
    let cluster = Cluster::start("differential", 3, &[]);
    cluster.wait_for_leader(Duration::from_secs(20));
    // Two connections each: the client under test, and "another client"
    // that changes watched keys between WATCH and EXEC.
    let mut oracles = [
        RawClient::connect(redis.addr),
        RawClient::connect(redis.addr),
    ];
    let mut nodes: Vec<[RawClient; 2]> = (1..=3)
        .map(|id| {
            let addr = cluster.node(id).client;
            [RawClient::connect(addr), RawClient::connect(addr)]
        })
        .collect();
    let flush = [Bytes::from_static(b"FLUSHALL")];
    oracles[0].call(&flush);
    let mut rng = Rng(seed | 1);
    let mut transcript = Vec::new();
    let mut compared = std::collections::BTreeMap::new();
    // The commands queued since MULTI (by the client under test).
    let mut queued: Vec<Vec<String>> = Vec::new();
    for i in 0..commands {
        let mut batch = Vec::new();
        if rng.below(12) == 0 {
            batch = random_transaction(&mut rng);
        } else {
            let words = random_command(&mut rng);
            if words[0] == "DBSIZE" {
                let touch = std::iter::once("EXISTS").chain(KEYS.iter().copied());
                batch.push((0, touch.map(str::to_owned).collect()));
            }
            batch.push((0, words));
        }
        // A block goes to one node (a transaction lives on a connection).
        for (client, words) in batch {
            let args: Vec<Bytes> = words.iter().map(|w| Bytes::from(w.clone())).collect();
            let expected = oracles[client].call(&args);
            let got = nodes[i % 3][client].call(&args);
            let exec_ran = std::mem::take(&mut queued);
            if expected.1 == Reply::Simple("QUEUED") {
                queued = exec_ran.clone();
                queued.push(words.clone());
            } else if words[0] == "MULTI" && expected.1 == Reply::OK {
                queued.clear();
            } else if words[0] != "EXEC" {
                queued = exec_ran.clone();
            }
            transcript.push(format!(
                "{} -> {:?}",
                words.join(" "),
                String::from_utf8_lossy(&expected.0)
            ));
            if !matches(&words, &exec_ran, &expected, &got) {
                let tail = transcript[transcript.len().saturating_sub(30)..].join("\n  ");
                panic!(
                    "seed {seed}, command {i} ({}) to node {}: redis answered {:?}, drkv {:?}\n\
                     last commands (with redis's replies):\n  {tail}",
                    words.join(" "),
                    i % 3 + 1,
                    String::from_utf8_lossy(&expected.0),
                    String::from_utf8_lossy(&got.0),
                );
            }
            *compared.entry(words[0].clone()).or_insert(0) += 1;
        }
    }
    compared
}

#[test]
fn random_commands_answer_as_redis_does() {
    let seed = std::env::var("DIFFERENTIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0001);
    let started = Instant::now();
    let compared = run(seed, 3000);
    let total: usize = compared.values().sum();
    eprintln!(
        "differential: {total} replies compared with redis-server, seed {seed}, {:?}: {compared:?}",
        started.elapsed()
    );
    assert!(compared.len() >= 60, "every kind of command is sent");
}

/// Keys whose time passes disappear from every node without anyone
/// touching them: the leader removes them through the log.
#[test]
fn expired_keys_are_removed_on_every_node_through_the_log() {
    let cluster = Cluster::start("expiry", 3, &[]);
    cluster.wait_for_leader(Duration::from_secs(20));
    let mut nodes: Vec<RawClient> = (1..=3)
        .map(|id| RawClient::connect(cluster.node(id).client))
        .collect();
    let call = |client: &mut RawClient, words: &[&str]| {
        let args: Vec<Bytes> = words.iter().map(|w| Bytes::from(w.to_string())).collect();
        client.call(&args).1
    };
    let first_set = Instant::now();
    for i in 0..100 {
        let key = format!("key-{i}");
        let reply = if i % 2 == 0 {
            call(&mut nodes[i % 3], &["SET", &key, "v", "PX", "300"])
        } else {
            call(&mut nodes[i % 3], &["SET", &key, "v"])
        };
        assert_eq!(reply, Reply::OK);
    }
    // A follower reports the time left; on a busy machine the 100 writes
    // may outlast it, and then the key is already gone (never sooner).
    let pttl = call(&mut nodes[1], &["PTTL", "key-0"]);
    let gone_in_time =
        pttl == Reply::Integer(-2) && first_set.elapsed() >= Duration::from_millis(300);
    assert!(
        gone_in_time || matches!(pttl, Reply::Integer(left) if (0..=300).contains(&left)),
        "{pttl:?} after {:?}",
        first_set.elapsed()
    );
    for (index, node) in nodes.iter_mut().enumerate() {
        support::wait_until(
            Duration::from_secs(15),
            &format!("node {} counts only the keys without expiry", index + 1),
            || call(node, &["DBSIZE"]) == Reply::Integer(50),
        );
        assert_eq!(call(node, &["GET", "key-0"]), Reply::Null);
        assert_eq!(call(node, &["GET", "key-1"]), Reply::bulk("v"));
        assert_eq!(call(node, &["TTL", "key-1"]), Reply::Integer(-1));
    }
}
