//! `cargo xtask robustness [ARGS]`: the robustness suite (`dr-robustness`)
//! against `drkv` built optimized (RocksDB at -O3, as the benchmarks are)
//! with its test-only `failpoints` feature (disk and clock faults),
//! with the suite's own flags passed through (`--runs`, `--seed`,
//! `--nodes`, `--secs`, `--read-mode`, `--faults`, `--loopback`).
//!
//! `cargo xtask ci` runs a short pass on the dev build the tests already
//! made (a second, optimized RocksDB build would cost minutes of CI).

use std::path::PathBuf;

use crate::process::{cargo, run_step};

/// How the binaries are built.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Build {
    /// `--release`, RocksDB at -O3.
    Release,
    /// The dev profile `cargo test` uses.
    Dev,
}

/// Builds drkv and the suite, then runs the suite with `args`.
pub(crate) fn run(build: Build, args: &[String]) -> Result<(), String> {
    crate::ci::ensure_libclang()?;
    let mut command = cargo();
    command.args([
        "build",
        "--package",
        "dr-node",
        "--bin",
        "drkv",
        "--features",
        "dr-node/failpoints",
        "--package",
        "dr-robustness",
        "--bin",
        "dr-robustness",
    ]);
    if build == Build::Release {
        command.arg("--release").env("CXXFLAGS", "-O3 -g0");
    }
    run_step("build drkv and dr-robustness", &mut command)?;
    let profile_dir = crate::bench::target_dir().join(match build {
        Build::Release => "release",
        Build::Dev => "debug",
    });
    let drkv: PathBuf = profile_dir.join("drkv");
    let mut suite = std::process::Command::new(profile_dir.join("dr-robustness"));
    suite
        .arg("--drkv")
        .arg(&drkv)
        .arg("--dir")
        .arg(crate::bench::target_dir().join("robustness"))
        .args(args);
    run_step("robustness", &mut suite)
}
