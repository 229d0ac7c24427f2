//! Redis client libraries as users run them against a three-node cluster:
//! redis-py (Python; its pipeline, transaction and WATCH helpers, client
//! retries off) and the `redis` crate (atomic pipelines, the optimistic
//! `transaction` helper), with expiry, hashes and transactions.

mod support;

use std::process::Command;
use std::time::Duration;

use redis::Commands;
use support::{Cluster, wait_until};

const SETTLE: Duration = Duration::from_secs(20);

/// A program for redis-py: `PORT` and `OTHER_PORT` are two nodes' client
/// ports. Prints `ok` when every check held.
const PYTHON: &str = r#"
import sys, threading
import redis
from redis.retry import Retry
from redis.backoff import NoBackoff

port, other_port = int(sys.argv[1]), int(sys.argv[2])
def client(p):
    # No resending: a write is sent once.
    return redis.Redis(host="127.0.0.1", port=p, socket_timeout=10,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)
r, other = client(port), client(other_port)

r.flushall()
assert r.set("session", "s1", ex=100)
assert 95 <= r.ttl("session") <= 100, r.ttl("session")
assert r.expire("session", 50, gt=True) is False
assert r.expire("session", 50, lt=True) is True
assert r.persist("session") and r.ttl("session") == -1
assert r.getex("session", px=200000) == "s1" and r.pttl("session") > 0
assert r.set("gone", "x", pxat=1000) and r.get("gone") is None

# A pipelined transaction: ten INCRs as one entry.
with r.pipeline(transaction=True) as pipe:
    for _ in range(10):
        pipe.incr("counter")
    assert pipe.execute() == list(range(1, 11))

# WATCH: another client's write in between makes EXEC fail.
with r.pipeline() as pipe:
    pipe.watch("balance")
    before = pipe.get("balance")
    other.set("balance", "100")
    pipe.multi()
    pipe.set("balance", "1")
    try:
        pipe.execute()
        raise AssertionError("EXEC ran though a watched key changed")
    except redis.WatchError:
        pass
assert r.get("balance") == "100"

# The optimistic helper retries until no one interferes.
def add_ten(pipe):
    value = int(pipe.get("balance") or 0)
    pipe.multi()
    pipe.set("balance", value + 10)
assert r.transaction(add_ten, "balance") == [True]
assert r.get("balance") == "110"

# Hashes.
assert r.hset("user:1", mapping={"name": "ada", "visits": "1"}) == 2
assert r.hincrby("user:1", "visits", 4) == 5
assert r.hgetall("user:1") == {"name": "ada", "visits": "5"}, r.hgetall("user:1")
assert dict(r.hscan_iter("user:1")) == {"name": "ada", "visits": "5"}
assert r.type("user:1") == "hash"
try:
    r.get("user:1")
    raise AssertionError("GET of a hash answered")
except redis.ResponseError as e:
    assert str(e).startswith("WRONGTYPE"), e

# Strings.
for _ in range(3):
    r.incrbyfloat("f", 0.1)
assert r.get("f") == "0.3", r.get("f")
assert r.getdel("f") == "0.3" and not r.exists("f")
assert r.msetnx({"a": "1", "b": "2"}) and not r.msetnx({"b": "3", "c": "4"})
assert r.rename("a", "a2") and r.get("a2") == "1"
assert r.copy("a2", "a3") and r.get("a3") == "1"
assert sorted(r.keys("a*")) == ["a2", "a3"]
assert r.setrange("a3", 3, "x") == 4 and r.getrange("a3", 0, -1) == "1\0\0x"
# Seen on the other node too.
assert other.get("a2") == "1" and other.hget("user:1", "name") == "ada"
assert r.flushdb() and r.dbsize() == 0
print("ok")
"#;

/// The first Python that imports redis-py: `python3` on the path, else
/// Debian's own, where `python3-redis` lives (a pyenv or venv Python ahead
/// on the path does not see Debian's packages). `cargo xtask ci` checks
/// the same two.
fn python_with_redis() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|python| {
            Command::new(python)
                .args(["-c", "import redis"])
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .unwrap_or("python3")
}

#[test]
fn redis_py_runs_expiry_hashes_and_transactions() {
    let cluster = Cluster::start("redis-py", 3, &[]);
    cluster.wait_for_leader(SETTLE);
    let script = std::env::temp_dir().join(format!("drkv-redis-py-{}.py", std::process::id()));
    std::fs::write(&script, PYTHON).expect("write the script");
    let output = Command::new(python_with_redis())
        .arg(&script)
        .arg(cluster.node(2).client.port().to_string())
        .arg(cluster.node(3).client.port().to_string())
        .output()
        .expect("python3 runs (with redis-py: Debian's python3-redis; .ci/run installs it)");
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "redis-py failed:\n{stdout}\n{stderr}"
    );
}

#[test]
fn the_redis_crate_runs_pipelines_and_transactions() {
    let cluster = Cluster::start("redis-crate", 3, &[]);
    cluster.wait_for_leader(SETTLE);
    let mut client = cluster.client(2);
    let mut other = cluster.client(3);
    let _: () = redis::cmd("FLUSHALL").query(&mut client).expect("flush");
    let replies: Vec<i64> = redis::pipe()
        .atomic()
        .incr("n", 1)
        .incr("n", 1)
        .incr("n", 5)
        .query(&mut client)
        .expect("an atomic pipeline");
    assert_eq!(replies, [1, 2, 7]);
    // The helper watches, reads, and retries when another client wrote.
    let mut interfered = false;
    let (doubled,): (i64,) = redis::transaction(&mut client, &["n"], |connection, pipe| {
        let n: i64 = connection.get("n")?;
        if !interfered {
            interfered = true;
            let _: () = other.set("n", 100)?;
        }
        pipe.set("n", n * 2).ignore().get("n").query(connection)
    })
    .expect("the transaction commits on its second try");
    assert_eq!(doubled, 200);
    let _: () = client.set_ex("ttl", "v", 100).expect("SET EX");
    let ttl: i64 = client.ttl("ttl").expect("TTL");
    assert!((95..=100).contains(&ttl), "{ttl}");
    let _: () = client
        .hset_multiple("h", &[("a", 1), ("b", 2)])
        .expect("HSET");
    let all: std::collections::HashMap<String, i64> = client.hgetall("h").expect("HGETALL");
    assert_eq!(all.len(), 2);
    wait_until(SETTLE, "the other node sees the hash", || {
        other.hget::<_, _, Option<i64>>("h", "b").ok().flatten() == Some(2)
    });
}
