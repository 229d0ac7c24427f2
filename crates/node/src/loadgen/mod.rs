//! A closed-loop load generator (`drkv bench`): each connection sends one
//! command, waits for its reply, and sends the next, for a fixed time;
//! latencies go into an HDR histogram. It speaks RESP to drkv (or any
//! Redis server) and, so that the same load can be put on etcd, etcd's
//! gRPC API ([`etcd`]: puts and linearizable gets only).

pub mod etcd;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::resp::{self, Limits, Reply};
use etcd::{EtcdClient, Outcome};

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Client ports; connections are spread over them round-robin.
    pub targets: Vec<SocketAddr>,
    /// Connections (each with one command in flight).
    pub connections: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Per mille of commands that are writes (the rest are `GET`).
    pub writes_per_mille: u32,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Distinct keys.
    pub keys: u64,
    /// What a write is.
    pub workload: Workload,
    /// What the targets speak.
    pub protocol: Protocol,
}

/// What the targets speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// RESP: drkv, Redis.
    Resp,
    /// etcd v3's gRPC API: `Put` for writes, linearizable `Range` for
    /// reads (the [`Workload::Set`] workload only).
    Etcd,
}

impl LoadConfig {
    /// Checks what the protocol can do.
    pub fn check(&self) -> Result<(), String> {
        if self.protocol == Protocol::Etcd {
            if self.workload != Workload::Set {
                return Err("etcd's load is plain puts: use the set workload".into());
            }
            if self.value_bytes + 64 > etcd::MESSAGE_BYTES_MAX {
                return Err(format!(
                    "etcd's load takes values up to {} bytes",
                    etcd::MESSAGE_BYTES_MAX - 64
                ));
            }
        }
        Ok(())
    }
}

/// What the generator's writes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `SET key value`.
    Set,
    /// `SET key value EX seconds`.
    SetEx {
        /// The time to live.
        seconds: u32,
    },
    /// `MULTI`, `INCR` of this many keys, `EXEC`, pipelined: one
    /// operation.
    MultiIncr {
        /// `INCR`s per transaction.
        incrs: u32,
    },
}

/// What it measured.
#[derive(Debug)]
pub struct LoadReport {
    /// Commands answered without an error.
    pub ops: u64,
    /// Error replies (each retried by the generator as a new command).
    pub errors: u64,
    /// Commands per second.
    pub ops_per_second: f64,
    /// Latency percentiles in microseconds: 50, 99, 99.9, max.
    pub latency_us: [u64; 4],
}

/// Writes every key once (so reads find values; with the `SetEx`
/// workload, each with its time to live): over RESP with up to 16
/// pipelined loaders, to etcd with up to 64 loaders of one put at a time.
pub async fn preload(config: &LoadConfig) -> Result<(), String> {
    config.check()?;
    let loaders_max = match config.protocol {
        Protocol::Resp => 16,
        Protocol::Etcd => 64,
    };
    let loaders = config.connections.clamp(1, loaders_max) as u64;
    let mut tasks = Vec::new();
    for loader in 0..loaders {
        let target = config.targets[loader as usize % config.targets.len()];
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let keys = (loader..config.keys).step_by(loaders as usize);
            match config.protocol {
                Protocol::Resp => preload_resp(target, &config, keys).await,
                Protocol::Etcd => preload_etcd(target, &config, keys).await,
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// One RESP loader: `keys`, a pipelined batch per round trip.
async fn preload_resp(
    target: SocketAddr,
    config: &LoadConfig,
    keys: impl Iterator<Item = u64>,
) -> Result<(), String> {
    let mut client = Client::connect(target).await?;
    let value = Bytes::from(vec![b'v'; config.value_bytes]);
    let mut keys = keys.peekable();
    while keys.peek().is_some() {
        let mut batch = Vec::with_capacity(PRELOAD_BATCH);
        for key in keys.by_ref().take(PRELOAD_BATCH) {
            let mut set = vec![Bytes::from_static(b"SET"), key_name(key), value.clone()];
            if let Workload::SetEx { seconds } = config.workload {
                set.push(Bytes::from_static(b"EX"));
                set.push(Bytes::from(seconds.to_string()));
            }
            batch.push(set);
        }
        let replies = client.pipeline(&batch).await?;
        for (set, reply) in batch.iter().zip(replies) {
            // A SET may be sent again: the same key, value and time to
            // live.
            let mut reply = reply;
            let mut tries = 0;
            while let Reply::Error(error) = &reply {
                tries += 1;
                if tries > PRELOAD_RETRIES {
                    return Err(format!("preload: {error}"));
                }
                reply = client.call(set).await?;
            }
        }
    }
    Ok(())
}

/// One etcd loader: `keys`, one put at a time (the client has one call
/// in flight per connection).
async fn preload_etcd(
    target: SocketAddr,
    config: &LoadConfig,
    keys: impl Iterator<Item = u64>,
) -> Result<(), String> {
    let mut client = EtcdClient::connect(target).await?;
    let value = vec![b'v'; config.value_bytes];
    for key in keys {
        let name = key_name(key);
        let mut tries = 0;
        while client.put(&name, &value).await? == Outcome::Failed {
            tries += 1;
            if tries > PRELOAD_RETRIES {
                return Err(format!("preload: etcd refused to put {name:?}"));
            }
        }
    }
    Ok(())
}

/// Writes per round trip when preloading.
const PRELOAD_BATCH: usize = 32;
/// Times a preload write that failed is sent again.
const PRELOAD_RETRIES: u32 = 5;

fn key_name(key: u64) -> Bytes {
    Bytes::from(format!("key:{key:010}"))
}

/// Runs the load and reports.
pub async fn run(config: &LoadConfig) -> Result<LoadReport, String> {
    config.check()?;
    let started = Instant::now();
    let stop = started + config.duration;
    let mut tasks = Vec::new();
    for connection in 0..config.connections {
        let target = config.targets[connection % config.targets.len()];
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            drive(target, &config, connection as u64, stop).await
        }));
    }
    let mut histogram = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut errors = 0;
    for task in tasks {
        let (part, part_errors) = task.await.map_err(|e| e.to_string())??;
        histogram.add(part).map_err(|e| e.to_string())?;
        errors += part_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(LoadReport {
        ops: histogram.len(),
        errors,
        ops_per_second: histogram.len() as f64 / elapsed,
        latency_us: [
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            histogram.max(),
        ],
    })
}

async fn drive(
    target: SocketAddr,
    config: &LoadConfig,
    seed: u64,
    stop: Instant,
) -> Result<(Histogram<u64>, u64), String> {
    if config.protocol == Protocol::Etcd {
        return drive_etcd(target, config, seed, stop).await;
    }
    let mut client = Client::connect(target).await?;
    let mut tally = Tally::new();
    let value = Bytes::from(vec![b'x'; config.value_bytes]);
    let mut mix = Mix::new(seed, config);
    while Instant::now() < stop {
        let (key, write) = mix.next();
        let random = mix.random;
        let sent = Instant::now();
        let failed = if !write {
            let reply = client.call(&[Bytes::from_static(b"GET"), key]).await?;
            matches!(reply, Reply::Error(_))
        } else {
            match config.workload {
                Workload::Set => {
                    let set = [Bytes::from_static(b"SET"), key, value.clone()];
                    matches!(client.call(&set).await?, Reply::Error(_))
                }
                Workload::SetEx { seconds } => {
                    let ttl = Bytes::from(seconds.to_string());
                    let set = [
                        Bytes::from_static(b"SET"),
                        key,
                        value.clone(),
                        Bytes::from_static(b"EX"),
                        ttl,
                    ];
                    matches!(client.call(&set).await?, Reply::Error(_))
                }
                Workload::MultiIncr { incrs } => {
                    let mut commands = vec![vec![Bytes::from_static(b"MULTI")]];
                    for step in 0..u64::from(incrs) {
                        let key =
                            key_name((random >> 3).wrapping_add(step * 7919) % config.keys.max(1));
                        commands.push(vec![Bytes::from_static(b"INCR"), key]);
                    }
                    commands.push(vec![Bytes::from_static(b"EXEC")]);
                    let replies = client.pipeline(&commands).await?;
                    !matches!(replies.last(), Some(Reply::Array(items)) if items.len() == incrs as usize)
                }
            }
        };
        tally.record(sent, failed)?;
    }
    Ok((tally.histogram, tally.errors))
}

/// One connection's keys and read/write mix, from its seed (xorshift).
struct Mix {
    random: u64,
    keys: u64,
    writes_per_mille: u32,
}

impl Mix {
    fn new(seed: u64, config: &LoadConfig) -> Self {
        Self {
            random: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            keys: config.keys.max(1),
            writes_per_mille: config.writes_per_mille,
        }
    }

    /// The next command's key, and whether it is a write.
    fn next(&mut self) -> (Bytes, bool) {
        let random = &mut self.random;
        *random ^= *random << 13;
        *random ^= *random >> 7;
        *random ^= *random << 17;
        let write = (*random >> 40) % 1000 < u64::from(self.writes_per_mille);
        (key_name(*random % self.keys), write)
    }
}

/// What one connection measured: latencies of answered commands, and
/// errors.
struct Tally {
    histogram: Histogram<u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            histogram: Histogram::new(3).expect("3 significant digits is valid"),
            errors: 0,
        }
    }

    /// A command sent at `sent` is answered (an error when `failed`).
    fn record(&mut self, sent: Instant, failed: bool) -> Result<(), String> {
        if failed {
            self.errors += 1;
            return Ok(());
        }
        let micros = sent.elapsed().as_micros() as u64;
        self.histogram
            .record(micros.max(1))
            .map_err(|e| e.to_string())
    }
}

/// Reads what `stream` has into `input`; an error once `peer` closed it.
async fn read_more(stream: &mut TcpStream, input: &mut BytesMut, peer: &str) -> Result<(), String> {
    match stream.read_buf(input).await {
        Ok(0) => Err(format!("{peer} closed the connection")),
        Ok(_) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// A TCP connection with Nagle off (one small request at a time).
async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// [`drive`] against etcd: the same keys, values and mix.
async fn drive_etcd(
    target: SocketAddr,
    config: &LoadConfig,
    seed: u64,
    stop: Instant,
) -> Result<(Histogram<u64>, u64), String> {
    let mut client = EtcdClient::connect(target).await?;
    let mut tally = Tally::new();
    let value = vec![b'x'; config.value_bytes];
    let mut mix = Mix::new(seed, config);
    while Instant::now() < stop {
        let (key, write) = mix.next();
        let sent = Instant::now();
        let outcome = if write {
            client.put(&key, &value).await?
        } else {
            client.get(&key).await?
        };
        tally.record(sent, outcome == Outcome::Failed)?;
    }
    Ok((tally.histogram, tally.errors))
}

/// A minimal RESP client: one command at a time.
pub struct Client {
    stream: TcpStream,
    input: BytesMut,
    output: BytesMut,
}

impl Client {
    /// Connects to a client port.
    pub async fn connect(addr: SocketAddr) -> Result<Self, String> {
        Ok(Self {
            stream: connect(addr).await?,
            input: BytesMut::with_capacity(16 << 10),
            output: BytesMut::with_capacity(1 << 10),
        })
    }

    /// Sends one command and waits for its reply.
    pub async fn call(&mut self, arguments: &[Bytes]) -> Result<Reply, String> {
        self.output.clear();
        resp::encode_request(arguments, &mut self.output);
        self.stream
            .write_all(&self.output)
            .await
            .map_err(|e| e.to_string())?;
        self.reply().await
    }

    /// Sends commands in one write and waits for all their replies.
    pub async fn pipeline(&mut self, commands: &[Vec<Bytes>]) -> Result<Vec<Reply>, String> {
        self.output.clear();
        for arguments in commands {
            resp::encode_request(arguments, &mut self.output);
        }
        self.stream
            .write_all(&self.output)
            .await
            .map_err(|e| e.to_string())?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.reply().await?);
        }
        Ok(replies)
    }

    async fn reply(&mut self) -> Result<Reply, String> {
        loop {
            if let Some(reply) =
                resp::parse_reply(&mut self.input, &Limits::default()).map_err(|e| e.to_string())?
            {
                return Ok(reply);
            }
            read_more(&mut self.stream, &mut self.input, "the server").await?;
        }
    }
}
