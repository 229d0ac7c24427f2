//! dr-simd against the reference crates, side by side in one run.
//!
//! Function names follow one rule the `cargo xtask bench` summary relies
//! on: `dr` is the dispatched entry point, `dr-<kernel>` a kernel called
//! directly, anything else a baseline.

use std::cmp::Ordering;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dr_benches::pattern;
use dr_simd::{BytesKernel, Crc32cKernel};

const CRC_SIZES: [usize; 5] = [64, 256, 4096, 65_536, 1 << 20];
const KEY_SIZES: [usize; 8] = [8, 16, 32, 64, 256, 1024, 4096, 16_384];

fn crc(c: &mut Criterion) {
    let data = pattern(1 << 20, 1);
    let mut group = c.benchmark_group("crc32c");
    for size in CRC_SIZES {
        let input = &data[..size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("dr", size), input, |b, input| {
            b.iter(|| dr_simd::crc32c(black_box(input)))
        });
        for kernel in Crc32cKernel::available() {
            let name = format!("dr-{}", kernel.name());
            group.bench_with_input(BenchmarkId::new(name, size), input, |b, input| {
                b.iter(|| kernel.update(0, black_box(input)))
            });
        }
        group.bench_with_input(BenchmarkId::new("crc32c", size), input, |b, input| {
            b.iter(|| crc32c::crc32c(black_box(input)))
        });
        group.bench_with_input(BenchmarkId::new("crc-fast", size), input, |b, input| {
            b.iter(|| crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, black_box(input)))
        });
    }
    group.finish();
}

/// Keys of up to 64 bytes take the same inline path whatever the kernel,
/// so kernels are benched one by one only above that.
fn kernels_for_key_size(size: usize) -> Vec<BytesKernel> {
    const INLINE_LEN_MAX: usize = 64;
    if size > INLINE_LEN_MAX {
        BytesKernel::available().collect()
    } else {
        Vec::new()
    }
}

/// Two equal keys in separate allocations: the worst case for both
/// functions, which must read every byte.
fn equal_keys(size: usize) -> (Vec<u8>, Vec<u8>) {
    (pattern(size, 2), pattern(size, 2))
}

fn eq(c: &mut Criterion) {
    let mut group = c.benchmark_group("eq");
    for size in KEY_SIZES {
        let (a, b) = equal_keys(size);
        group.throughput(Throughput::Bytes(size as u64));
        let pair = (a.as_slice(), b.as_slice());
        group.bench_with_input(BenchmarkId::new("dr", size), &pair, |bench, (a, b)| {
            bench.iter(|| dr_simd::eq(black_box(a), black_box(b)))
        });
        for kernel in kernels_for_key_size(size) {
            let name = format!("dr-{}", kernel.name());
            group.bench_with_input(BenchmarkId::new(name, size), &pair, |bench, (a, b)| {
                bench.iter(|| kernel.eq(black_box(a), black_box(b)))
            });
        }
        group.bench_with_input(
            BenchmarkId::new("slice-eq", size),
            &pair,
            |bench, (a, b)| bench.iter(|| black_box(a) == black_box(b)),
        );
    }
    group.finish();
}

fn compare(c: &mut Criterion) {
    let mut group = c.benchmark_group("compare");
    for size in KEY_SIZES {
        let (a, mut b) = equal_keys(size);
        // Differ in the last byte so the whole key is read.
        b[size - 1] ^= 1;
        group.throughput(Throughput::Bytes(size as u64));
        let pair = (a.as_slice(), b.as_slice());
        group.bench_with_input(BenchmarkId::new("dr", size), &pair, |bench, (a, b)| {
            bench.iter(|| dr_simd::compare(black_box(a), black_box(b)))
        });
        for kernel in kernels_for_key_size(size) {
            let name = format!("dr-{}", kernel.name());
            group.bench_with_input(BenchmarkId::new(name, size), &pair, |bench, (a, b)| {
                bench.iter(|| kernel.compare(black_box(a), black_box(b)))
            });
        }
        group.bench_with_input(
            BenchmarkId::new("slice-cmp", size),
            &pair,
            |bench, (a, b)| bench.iter(|| -> Ordering { Ord::cmp(black_box(a), black_box(b)) }),
        );
    }
    group.finish();
}

fn config() -> Criterion {
    dr_benches::criterion_config(Duration::from_millis(500), Duration::from_millis(1500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = crc, eq, compare
}
criterion_main!(benches);
