//! `cargo xtask bench [NAME]`: run the criterion benches, then summarize
//! what this run measured from criterion's JSON output.
//!
//! The summary groups results by benchmark group and input, and compares
//! every function with the group's `dr` function (the dispatched dr entry
//! point) measured in the same run: `dr speedup` is `time(other) /
//! time(dr)`, so 2.00 means dr took half as long.
//!
//! Times are criterion's median and the *fastest sample* (the least time
//! per iteration among criterion's samples). The machines we run on are
//! shared: other work only ever adds time, so the fastest sample is the
//! least disturbed measurement, and speedups are computed from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

use crate::process::{cargo, run_step, workspace_root};

/// The function every other one in a group is compared with.
const REFERENCE_FUNCTION: &str = "dr";

pub(crate) fn run(name: Option<&str>, filter: Option<&str>) -> Result<(), String> {
    let started = SystemTime::now();
    // The bench crate links dr-storage, so even `bench simd` builds RocksDB.
    crate::ci::ensure_libclang()?;
    let mut command = cargo();
    // `.cargo/config.toml` builds RocksDB's C++ at -O1 to keep test builds
    // short; benches measure it as a release build would ship it. (An
    // environment variable wins over the config's `[env]`.)
    command.env("CXXFLAGS", "-O3 -g0");
    command.args(["bench", "--package", "dr-benches"]);
    if let Some(name) = name {
        command.args(["--bench", name]);
    }
    if let Some(filter) = filter {
        command.args(["--", filter]);
    }
    run_step("bench", &mut command)?;
    let criterion_dir = target_dir().join("criterion");
    let results = collect_results(&criterion_dir, started)?;
    if results.is_empty() {
        return Err(format!(
            "no criterion results newer than this run under {}",
            criterion_dir.display()
        ));
    }
    print!("{}", summary_table(&results));
    println!(
        "\nHTML reports: {}",
        criterion_dir.join("report").join("index.html").display()
    );
    Ok(())
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// One benchmark's result as criterion recorded it.
#[derive(Debug, Clone, PartialEq)]
struct Measurement {
    group: String,
    function: String,
    input: String,
    median_ns: f64,
    fastest_ns: f64,
    throughput: Option<Throughput>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Throughput {
    Bytes(u64),
    Elements(u64),
}

fn collect_results(criterion_dir: &Path, since: SystemTime) -> Result<Vec<Measurement>, String> {
    let mut files = Vec::new();
    find_benchmark_files(criterion_dir, &mut files);
    let mut results = Vec::new();
    for file in files {
        let fresh = std::fs::metadata(&file)
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| modified >= since);
        if fresh {
            results.push(read_measurement(&file)?);
        }
    }
    Ok(results)
}

/// Finds every `new/benchmark.json` (criterion's latest run of a bench).
fn find_benchmark_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        if path.is_dir() {
            find_benchmark_files(&path, files);
        } else if path.ends_with("new/benchmark.json") {
            files.push(path);
        }
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("reading {}: {error}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| format!("parsing {}: {error}", path.display()))
}

fn read_measurement(benchmark_file: &Path) -> Result<Measurement, String> {
    let benchmark = read_json(benchmark_file)?;
    let estimates = read_json(&benchmark_file.with_file_name("estimates.json"))?;
    let text = |key: &str| benchmark[key].as_str().unwrap_or_default().to_owned();
    let median_ns = estimates["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| {
            format!(
                "no median in estimates next to {}",
                benchmark_file.display()
            )
        })?;
    let fastest_ns = fastest_sample_ns(&read_json(&benchmark_file.with_file_name("sample.json"))?)
        .ok_or_else(|| format!("no samples next to {}", benchmark_file.display()))?;
    let throughput = match &benchmark["throughput"] {
        Value::Object(map) => match (map.get("Bytes"), map.get("Elements")) {
            (Some(bytes), _) => bytes.as_u64().map(Throughput::Bytes),
            (_, Some(elements)) => elements.as_u64().map(Throughput::Elements),
            _ => None,
        },
        _ => None,
    };
    Ok(Measurement {
        group: text("group_id"),
        function: text("function_id"),
        input: text("value_str"),
        median_ns,
        fastest_ns,
        throughput,
    })
}

/// The least time per iteration among criterion's samples.
fn fastest_sample_ns(samples: &Value) -> Option<f64> {
    let iterations = samples["iters"].as_array()?;
    let times = samples["times"].as_array()?;
    iterations
        .iter()
        .zip(times)
        .filter_map(|(iterations, time)| Some(time.as_f64()? / iterations.as_f64()?))
        .filter(|per_iteration| per_iteration.is_finite())
        .min_by(f64::total_cmp)
}

/// Orders inputs numerically where they are numbers (`64` before `256`).
fn input_order(input: &str) -> (u64, String) {
    (input.parse().unwrap_or(u64::MAX), input.to_owned())
}

fn summary_table(results: &[Measurement]) -> String {
    let mut groups: BTreeMap<(String, (u64, String)), Vec<&Measurement>> = BTreeMap::new();
    for result in results {
        groups
            .entry((result.group.clone(), input_order(&result.input)))
            .or_default()
            .push(result);
    }
    let mut out = format!(
        "\n{:<18} {:>9}  {:<14} {:>12} {:>12} {:>14} {:>11}\n",
        "group", "input", "function", "median", "fastest", "throughput", "dr speedup"
    );
    for ((group, (_, input)), mut rows) in groups {
        rows.sort_by(|a, b| a.function.cmp(&b.function));
        let reference = rows
            .iter()
            .find(|row| row.function == REFERENCE_FUNCTION)
            .map(|row| row.fastest_ns);
        for row in rows {
            let speedup = reference
                .map(|dr| format!("{:.2}", row.fastest_ns / dr))
                .unwrap_or_default();
            let throughput = row
                .throughput
                .map(|t| format_throughput(t, row.fastest_ns))
                .unwrap_or_default();
            out += &format!(
                "{:<18} {:>9}  {:<14} {:>12} {:>12} {:>14} {:>11}\n",
                group,
                input,
                row.function,
                format_duration(row.median_ns),
                format_duration(row.fastest_ns),
                throughput,
                speedup
            );
        }
    }
    out
}

fn format_duration(ns: f64) -> String {
    match ns {
        ns if ns < 1e3 => format!("{ns:.2} ns"),
        ns if ns < 1e6 => format!("{:.2} µs", ns / 1e3),
        ns if ns < 1e9 => format!("{:.2} ms", ns / 1e6),
        ns => format!("{:.2} s", ns / 1e9),
    }
}

fn format_throughput(throughput: Throughput, ns: f64) -> String {
    match throughput {
        // Bytes per nanosecond is (decimal) gigabytes per second.
        Throughput::Bytes(bytes) => format!("{:.2} GB/s", bytes as f64 / ns),
        Throughput::Elements(elements) => format!("{:.3} Melem/s", elements as f64 / ns * 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(function: &str, input: &str, fastest_ns: f64) -> Measurement {
        Measurement {
            group: "crc32c".into(),
            function: function.into(),
            input: input.into(),
            median_ns: fastest_ns * 1.5,
            fastest_ns,
            throughput: Some(Throughput::Bytes(4096)),
        }
    }

    #[test]
    fn the_fastest_sample_is_the_least_time_per_iteration() {
        let samples =
            serde_json::json!({"iters": [10.0, 20.0, 30.0], "times": [100.0, 150.0, 330.0]});
        assert_eq!(fastest_sample_ns(&samples), Some(7.5));
    }

    #[test]
    fn summary_compares_with_dr_and_orders_inputs_numerically() {
        let table = summary_table(&[
            measurement("other", "4096", 200.0),
            measurement("dr", "4096", 100.0),
            measurement("dr", "64", 10.0),
        ]);
        let lines: Vec<&str> = table
            .lines()
            .filter(|line| line.starts_with("crc32c"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains(" 64 "), "{table}");
        assert!(
            lines[2].contains("other") && lines[2].trim_end().ends_with("2.00"),
            "{table}"
        );
        assert!(lines[1].contains("40.96 GB/s"), "{table}");
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(format_duration(12.345), "12.35 ns");
        assert_eq!(format_duration(12_345.0), "12.35 µs");
        assert_eq!(format_duration(2.5e9), "2.50 s");
    }
}
