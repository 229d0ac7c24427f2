//! Running child commands and locating the workspace.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// The workspace root: the parent of this crate's manifest directory.
pub(crate) fn workspace_root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR for the running binary too; prefer
    // it to the compile-time value, which names whichever checkout built
    // the binary last when several share one target directory.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// The cargo that started xtask (so the pinned toolchain is used).
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root());
    command
}

/// Runs `command` to completion with inherited output; an error names the
/// step and its exit status.
pub(crate) fn run_step(step: &str, command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|error| format!("step `{step}` could not start {command:?}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "step `{step}` failed ({status}); command: {command:?}"
        ))
    }
}

/// Whether `program args...` runs and exits successfully (output discarded).
pub(crate) fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Times `work` and prints one line for the step: name, result, duration.
pub(crate) fn timed(step: &str, work: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    eprintln!("xtask: {step} ...");
    let started = Instant::now();
    let result = work();
    let seconds = started.elapsed().as_secs_f64();
    let verdict = if result.is_ok() { "ok" } else { "FAILED" };
    eprintln!("xtask: {step:<14} {verdict:<6} {seconds:>7.1} s");
    result
}
