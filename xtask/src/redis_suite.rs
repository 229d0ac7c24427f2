//! `cargo xtask redis-suite`: Redis's own tests for the commands drkv
//! serves (`third_party/redis-tests`, Redis 7.0.15's files), run against
//! a local three-node cluster through a follower. Each test ends up
//! passed, out of scope (it needs a command drkv does not serve: the
//! error names it), or failed; any failure fails the run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::process::{cargo, run_step, succeeds, workspace_root};

/// The files run, as the suite names them.
const FILES: [&str; 6] = [
    "unit/type/string",
    "unit/type/incr",
    "unit/type/hash",
    "unit/expire",
    "unit/multi",
    "unit/keyspace",
];

/// Commands drkv does not serve that the files use (lists, sets, sorted
/// sets, streams, bits, scripting, server internals): a test whose error
/// is one of them being unknown is out of scope.
const OUT_OF_SCOPE: &[&str] = &[
    "lpush",
    "rpush",
    "lrange",
    "llen",
    "sadd",
    "smembers",
    "zadd",
    "xadd",
    "xgroup",
    "setbit",
    "getbit",
    "bitcount",
    "lcs",
    "object",
    "debug",
    "config",
    "sort",
    "save",
    "shutdown",
    "bgrewriteaof",
    "eval",
    "evalsha",
    "script",
    "function",
    "publish",
    "xreadgroup",
    "replicaof",
    "slaveof",
    "sync",
    "psync",
    "wait",
    "hrandfield",
    "hincrbyfloat",
    "move",
    "swapdb",
    "dump",
    "restore",
    "blpop",
    "brpop",
    "brpoplpush",
    "blmove",
    "client",
    "memory",
    "setrange-oom",
    "sintercard",
    "pfadd",
    "georadius",
    "getrange-oom",
    "lmove",
];

/// Tests whose failure follows from a command drkv does not serve used
/// in an earlier test (their own error does not name it), and why.
const OUT_OF_SCOPE_TESTS: &[(&str, &str)] =
    &[("Hash ziplist of various encodings - sanitize dump", "dump")];

const BASE_PORT: u16 = 17_600;

/// What one file gave.
#[derive(Default)]
struct FileResult {
    passed: usize,
    out_of_scope: BTreeMap<String, usize>,
    failed: Vec<String>,
}

pub(crate) fn run() -> Result<(), String> {
    if !succeeds("tclsh", &["/dev/null"]) {
        return Err("tclsh is missing (Redis's test suite is Tcl): apt-get install -y tcl".into());
    }
    run_step(
        "build drkv",
        cargo().args(["build", "--quiet", "--package", "dr-node", "--bin", "drkv"]),
    )?;
    let drkv = crate::bench::target_dir().join("debug").join("drkv");
    let (cluster, leader) = crate::cluster::start_cluster_at(&drkv, false, None, BASE_PORT)?;
    // A follower: every write the files make is forwarded to the leader.
    let node = (1..=3).find(|&id| id != leader).expect("three nodes");
    let port = BASE_PORT + node;
    let suite = workspace_root().join("third_party").join("redis-tests");
    std::fs::create_dir_all(suite.join("tests").join("tmp")).map_err(|e| e.to_string())?;
    let mut results = BTreeMap::new();
    for file in FILES {
        let output = run_file(&suite, port, file)?;
        results.insert(file, classify(&output));
    }
    drop(cluster);
    report(&results, node)
}

fn run_file(suite: &Path, port: u16, file: &str) -> Result<String, String> {
    let output = Command::new("tclsh")
        .current_dir(suite)
        .args(["tests/test_helper.tcl", "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args([
            "--singledb",
            "--durable",
            "--ignore-encoding",
            "--single",
            file,
        ])
        .output()
        .map_err(|e| format!("cannot run tclsh: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    // Colours off.
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    Ok(plain)
}

/// Sorts a file's tests by their `[ok]` / `[err]` / `[exception]` lines
/// and the error text that follows.
fn classify(output: &str) -> FileResult {
    let mut result = FileResult::default();
    let lines: Vec<&str> = output.lines().collect();
    for (at, line) in lines.iter().enumerate() {
        if line.starts_with("[ok]:") {
            result.passed += 1;
            continue;
        }
        if !(line.starts_with("[err]:") || line.starts_with("[exception]:")) {
            continue;
        }
        // The error: this line and those up to the next marker.
        let mut text = line.to_string();
        for next in lines.iter().skip(at + 1).take(6) {
            if next.starts_with('[') {
                break;
            }
            text.push('\n');
            text.push_str(next);
        }
        let named = OUT_OF_SCOPE_TESTS
            .iter()
            .find(|(name, _)| line.contains(&format!(": {name} in ")))
            .map(|(_, command)| (*command).to_owned());
        match named.or_else(|| unknown_command(&text)) {
            Some(command) if OUT_OF_SCOPE.contains(&command.as_str()) => {
                *result.out_of_scope.entry(command).or_default() += 1;
            }
            _ => result.failed.push(text),
        }
    }
    result
}

/// The command named by "unknown command 'X'" in `text`, in lower case.
fn unknown_command(text: &str) -> Option<String> {
    let start = text.find("unknown command '")? + "unknown command '".len();
    let end = text[start..].find('\'')? + start;
    Some(text[start..end].to_ascii_lowercase())
}

fn report(results: &BTreeMap<&str, FileResult>, node: u16) -> Result<(), String> {
    println!("Redis 7.0.15's tests against drkv (through follower node {node}):");
    println!(
        "{:<20} {:>7} {:>13} {:>7}",
        "file", "passed", "out of scope", "failed"
    );
    let mut totals = (0, 0, 0);
    let mut needs: BTreeMap<&str, usize> = BTreeMap::new();
    for (file, result) in results {
        let skipped: usize = result.out_of_scope.values().sum();
        println!(
            "{file:<20} {:>7} {skipped:>13} {:>7}",
            result.passed,
            result.failed.len()
        );
        totals.0 += result.passed;
        totals.1 += skipped;
        totals.2 += result.failed.len();
        for (command, count) in &result.out_of_scope {
            *needs.entry(command).or_default() += count;
        }
    }
    println!(
        "{:<20} {:>7} {:>13} {:>7}",
        "total", totals.0, totals.1, totals.2
    );
    let needs: Vec<String> = needs.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!(
        "out of scope, by the command they need: {}",
        needs.join(", ")
    );
    let failures: Vec<&String> = results.values().flat_map(|r| &r.failed).collect();
    if failures.is_empty() {
        return Ok(());
    }
    for failure in &failures {
        eprintln!("{failure}\n");
    }
    Err(format!(
        "{} of Redis's tests failed against drkv",
        failures.len()
    ))
}
