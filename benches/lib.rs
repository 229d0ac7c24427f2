//! # dr-benches: the workspace's criterion benchmarks
//!
//! The benchmarks live in `benches/benches/*.rs`, one file per crate or
//! area, and run through `cargo xtask bench [NAME]`, which also prints a
//! summary table of throughput and of ratios between implementations
//! measured in the same run. This library holds what the benchmarks
//! share: the input generator, so every bench measures the same bytes, and
//! the criterion settings.
//!
//! Invariant: inputs are deterministic (a fixed xorshift stream), so two
//! runs measure identical data. Not here: timing assertions of any kind.
//!
//! ```
//! let bytes = dr_benches::pattern(16, 7);
//! assert_eq!(bytes, dr_benches::pattern(16, 7));
//! assert_eq!(bytes.len(), 16);
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// `len` pseudo-random bytes from `seed` (xorshift64), the same on every run.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The criterion settings of a bench file: a short warm-up and a fixed
/// measurement time per benchmark, so a whole file runs in minutes.
pub fn criterion_config(
    warm_up: std::time::Duration,
    measurement: std::time::Duration,
) -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(warm_up)
        .measurement_time(measurement)
}
