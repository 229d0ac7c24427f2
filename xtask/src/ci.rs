//! `cargo xtask ci`: every check CI runs, in order, stopping at the first
//! failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{cargo, run_step, succeeds, timed, workspace_root};

/// Where Debian and Ubuntu put libclang, which RocksDB's bindgen loads.
const LIBCLANG_DIRS: [&str; 3] = ["/usr/lib", "/usr/lib64", "/usr/local/lib"];
const LIBCLANG_INSTALL: &str = "apt-get update && apt-get install -y libclang-dev";

pub(crate) fn run() -> Result<(), String> {
    timed("prerequisites", || {
        ensure_libclang()?;
        ensure_test_packages()
    })?;
    timed("fmt", || {
        run_step("fmt", cargo().args(["fmt", "--all", "--check"]))
    })?;
    timed("clippy", || {
        let args = [
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ];
        run_step("clippy", cargo().args(args))
    })?;
    timed("test", run_tests)?;
    timed("examples", run_examples)?;
    timed("robustness", || {
        let args = ["--runs", "3", "--secs", "30"].map(String::from);
        crate::robustness::run(crate::robustness::Build::Dev, &args)
    })?;
    timed("redis-suite", crate::redis_suite::run)?;
    timed("doc", || {
        let mut command = cargo();
        command
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings");
        run_step("doc", &mut command)
    })?;
    timed("tidy", tidy)?;
    timed("package", package)?;
    eprintln!("xtask: ci passed");
    Ok(())
}

/// Unit, integration and doc tests; nextest runs the first two when it is
/// installed (it does not run doc tests, so those always go through cargo).
fn run_tests() -> Result<(), String> {
    if succeeds("cargo", &["nextest", "--version"]) {
        let args = ["nextest", "run", "--workspace", "--no-fail-fast"];
        run_step("test", cargo().args(args))?;
        run_step("doctest", cargo().args(["test", "--workspace", "--doc"]))
    } else {
        run_step("test", cargo().args(["test", "--workspace"]))
    }
}

/// The library crates, in layering order: each must package for
/// publishing (metadata, versions of internal dependencies, the files it
/// needs).
const LIBRARIES: [&str; 8] = [
    "dr-simd",
    "dr-pool",
    "dr-codec",
    "dr-raft",
    "dr-engine",
    "dr-transport",
    "dr-storage",
    "dr-node",
];
/// Those whose packaged sources are also built. The others would build
/// RocksDB or ring again from scratch (dr-engine too: its RocksDB-and-TCP
/// example's dev-dependencies are resolved with it), minutes of C for no
/// new check.
const LIBRARIES_VERIFIED: [&str; 4] = ["dr-simd", "dr-pool", "dr-codec", "dr-raft"];

/// `cargo package` for every library crate, together (so each finds the
/// others it depends on), offline; then again with a build of the
/// packaged sources for the light ones.
fn package() -> Result<(), String> {
    let mut command = cargo();
    command.args(["package", "--offline", "--allow-dirty", "--no-verify"]);
    for library in LIBRARIES {
        command.args(["--package", library]);
    }
    run_step("package", &mut command)?;
    let mut command = cargo();
    command.args(["package", "--offline", "--allow-dirty"]);
    for library in LIBRARIES_VERIFIED {
        command.args(["--package", library]);
    }
    run_step("package (verified)", &mut command)
}

/// Runs every example of every crate (`crates/*/examples/*.rs`): each
/// checks what it shows and fails loudly when it stops working.
fn run_examples() -> Result<(), String> {
    for (package, example) in examples(&workspace_root().join("crates")) {
        let args = [
            "run",
            "--quiet",
            "--package",
            &package,
            "--example",
            &example,
        ];
        run_step(&format!("example {package}/{example}"), cargo().args(args))?;
    }
    Ok(())
}

/// (package, example) for every example file under `crates`, in order.
fn examples(crates: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut crate_dirs = read_dir_paths(crates);
    crate_dirs.sort();
    for dir in crate_dirs {
        let mut files = read_dir_paths(&dir.join("examples"));
        files.sort();
        let Some(package) = package_name(&dir.join("Cargo.toml")) else {
            continue;
        };
        for file in files {
            if file.extension().is_some_and(|ext| ext == "rs")
                && let Some(stem) = file.file_stem().and_then(|s| s.to_str())
            {
                found.push((package.clone(), stem.to_owned()));
            }
        }
    }
    found
}

/// The `name = "..."` of a manifest's `[package]`.
fn package_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    text.lines()
        .find_map(|line| line.trim().strip_prefix("name = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .map(str::to_owned)
}

pub(crate) fn ensure_libclang() -> Result<(), String> {
    if libclang_present() {
        return Ok(());
    }
    apt_install(
        "libclang-dev",
        "libclang (needed by RocksDB's bindgen)",
        LIBCLANG_INSTALL,
    )?;
    if libclang_present() {
        Ok(())
    } else {
        Err("libclang-dev was installed but no libclang shared library was found".into())
    }
}

/// A Debian package the tests need, installed when missing: `present`
/// says whether it is there, `what` what it is for.
struct Needed {
    package: &'static str,
    what: &'static str,
    present: fn() -> bool,
}

/// What the tests need besides libclang: `redis-server` (the differential
/// test's oracle), redis-py (the client-library test's Python client),
/// tclsh (Redis's own test suite, `cargo xtask redis-suite`) and etcd
/// (the load generator's etcd client is tested against it).
const NEEDED: [Needed; 4] = [
    Needed {
        package: "redis-server",
        what: "redis-server (the differential test's oracle)",
        present: || succeeds("redis-server", &["--version"]),
    },
    Needed {
        package: "python3-redis",
        what: "redis-py (the client-library test's Python client)",
        // Debian's python3-redis serves Debian's Python: a pyenv or venv
        // `python3` ahead on the path does not see it, so the test (in
        // `crates/node/tests/redis_clients.rs`) tries that one second.
        present: || {
            ["python3", "/usr/bin/python3"]
                .iter()
                .any(|python| succeeds(python, &["-c", "import redis"]))
        },
    },
    Needed {
        package: "tcl",
        what: "tclsh (Redis's test suite is Tcl)",
        present: || succeeds("tclsh", &["/dev/null"]),
    },
    Needed {
        package: "etcd-server",
        what: "etcd (what `drkv bench --protocol etcd` is tested against)",
        present: || succeeds("etcd", &["--version"]),
    },
];

fn ensure_test_packages() -> Result<(), String> {
    for needed in &NEEDED {
        if (needed.present)() {
            continue;
        }
        let install = format!("apt-get update && apt-get install -y {}", needed.package);
        apt_install(needed.package, needed.what, &install)?;
        if !(needed.present)() {
            return Err(format!(
                "{} was installed but is not usable",
                needed.package
            ));
        }
    }
    Ok(())
}

/// Installs a Debian package when root with apt; otherwise says how.
fn apt_install(package: &str, what: &str, command: &str) -> Result<(), String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0");
    let has_apt = succeeds("apt-get", &["--version"]);
    if !(is_root && has_apt) {
        return Err(format!(
            "{what} is missing; install it with:\n  sudo sh -c '{command}'"
        ));
    }
    eprintln!("xtask: {package} missing; installing it: {command}");
    run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    let install = ["install", "-y", "-qq", package];
    run_step(
        "apt-get install",
        Command::new("apt-get")
            .args(install)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn libclang_present() -> bool {
    if let Some(dir) = std::env::var_os("LIBCLANG_PATH") {
        return contains_libclang(Path::new(&dir));
    }
    LIBCLANG_DIRS.iter().any(|root| {
        let root = Path::new(root);
        contains_libclang(root)
            || read_dir_paths(root)
                .iter()
                .any(|dir| contains_libclang(dir) || contains_libclang(&dir.join("lib")))
    })
}

fn contains_libclang(dir: &Path) -> bool {
    read_dir_paths(dir).iter().any(|path| {
        path.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(is_libclang_name)
    })
}

/// `libclang.so`, `libclang.so.14`, `libclang-14.so.1`, but not the C++
/// library `libclang-cpp.so.14`, which bindgen cannot use.
fn is_libclang_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("libclang") else {
        return false;
    };
    let version_then_so = rest
        .strip_prefix('-')
        .map(|versioned| versioned.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.'));
    rest.starts_with(".so") || version_then_so.is_some_and(|tail| tail.starts_with("so"))
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Every Rust file of the workspace (crate roots, modules, tests, benches,
/// examples) opens with a `//!` comment saying what it is for.
fn tidy() -> Result<(), String> {
    let root = workspace_root();
    let mut files = Vec::new();
    for top in ["crates", "xtask", "benches"] {
        collect_rust_files(&root.join(top), &mut files);
    }
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| !opens_with_module_doc(path))
        .map(|path| {
            path.strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string()
        })
        .collect();
    if offenders.is_empty() {
        eprintln!("xtask: tidy checked {} files", files.len());
        Ok(())
    } else {
        Err(format!(
            "tidy: these files do not start with a `//!` doc comment:\n  {}",
            offenders.join("\n  ")
        ))
    }
}

fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for path in read_dir_paths(dir) {
        if path.file_name().is_some_and(|name| name == "target") {
            continue;
        }
        if path.is_dir() {
            collect_rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

fn opens_with_module_doc(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| {
        text.lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .is_some_and(|line| line.starts_with("//!"))
    })
}

#[cfg(test)]
mod tests {
    use super::is_libclang_name;

    #[test]
    fn recognizes_libclang_but_not_libclang_cpp() {
        for name in [
            "libclang.so",
            "libclang.so.1",
            "libclang-14.so.1",
            "libclang-14.0.6.so",
        ] {
            assert!(is_libclang_name(name), "{name}");
        }
        for name in [
            "libclang-cpp.so.14",
            "libclangBasic.a",
            "libclang.a",
            "clang",
        ] {
            assert!(!is_libclang_name(name), "{name}");
        }
    }
}
