//! CRC32C (Castagnoli): one-shot, incremental and combinable.
//!
//! The CRC follows the iSCSI / RFC 3720 convention used by the `crc32c`
//! crate, ext4 and RocksDB: reflected polynomial `0x82F63B78`, initial
//! register and final XOR `0xFFFFFFFF`. [`update`] continues a finished
//! CRC, so `update(crc32c(a), b) == crc32c(a ++ b)`.

mod gf2;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use crate::cpu::CpuFeatures;

/// One implementation of CRC32C. All produce identical results; they
/// differ in speed and in the CPU features they need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Crc32cKernel {
    /// Portable slicing-by-16 tables. Runs everywhere.
    Scalar,
    /// SSE4.2 `crc32` on three streams fused with `PCLMULQDQ` folding of
    /// 128-bit lanes. Needs SSE4.2 and PCLMULQDQ (x86_64 since 2010).
    Sse42,
    /// SSE4.2 `crc32` on three streams fused with `VPCLMULQDQ` folding of
    /// 256-bit lanes. Needs AVX2 and VPCLMULQDQ (Ice Lake, Zen 3 and later).
    Vpclmul,
}

impl Crc32cKernel {
    /// Every kernel, slowest first.
    pub const ALL: [Self; 3] = [Self::Scalar, Self::Sse42, Self::Vpclmul];

    /// The kernel's short name, as benches and logs print it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Sse42 => "sse42",
            Self::Vpclmul => "vpclmul",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        let cpu = CpuFeatures::get();
        match self {
            Self::Scalar => true,
            Self::Sse42 => cpu.sse42 && cpu.pclmulqdq,
            Self::Vpclmul => cpu.sse42 && cpu.pclmulqdq && cpu.avx2 && cpu.vpclmulqdq,
        }
    }

    /// The kernels this CPU can run, slowest first.
    pub fn available() -> impl Iterator<Item = Self> {
        Self::ALL.into_iter().filter(|kernel| kernel.is_available())
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Self {
        Self::available().last().unwrap_or(Self::Scalar)
    }

    /// [`update`] with this kernel.
    ///
    /// # Panics
    /// If the CPU lacks the kernel's features: calling a kernel that
    /// [`Self::is_available`] rejects is a programming error.
    pub fn update(self, crc: u32, data: &[u8]) -> u32 {
        !self.raw_update_fn()(!crc, data)
    }

    /// The raw-register function of the kernel.
    ///
    /// # Panics
    /// If the CPU lacks the kernel's features; this check is what makes
    /// handing out the `#[target_feature]` wrappers below sound.
    fn raw_update_fn(self) -> RawUpdate {
        assert!(
            self.is_available(),
            "CRC32C kernel {} needs CPU features this machine lacks",
            self.name()
        );
        match self {
            Self::Scalar => scalar::update_raw,
            #[cfg(target_arch = "x86_64")]
            Self::Sse42 => raw_sse42,
            #[cfg(target_arch = "x86_64")]
            Self::Vpclmul => raw_vpclmul,
            #[cfg(not(target_arch = "x86_64"))]
            Self::Sse42 | Self::Vpclmul => unreachable!("x86 kernels are never available here"),
        }
    }
}

/// Advances a raw (not inverted) CRC register.
type RawUpdate = fn(u32, &[u8]) -> u32;

#[cfg(target_arch = "x86_64")]
fn raw_sse42(crc: u32, data: &[u8]) -> u32 {
    debug_assert!(Crc32cKernel::Sse42.is_available());
    // SAFETY: only `raw_update_fn` hands this function out, and only after
    // `is_available` confirmed SSE4.2 and PCLMULQDQ.
    unsafe { x86::update_sse42(crc, data) }
}

#[cfg(target_arch = "x86_64")]
fn raw_vpclmul(crc: u32, data: &[u8]) -> u32 {
    debug_assert!(Crc32cKernel::Vpclmul.is_available());
    // SAFETY: only `raw_update_fn` hands this function out, and only after
    // `is_available` confirmed SSE4.2, PCLMULQDQ, AVX2 and VPCLMULQDQ.
    unsafe { x86::update_vpclmul(crc, data) }
}

/// Picks the kernel once per process; later calls pay one atomic load.
fn dispatched() -> RawUpdate {
    static CHOSEN: OnceLock<RawUpdate> = OnceLock::new();
    *CHOSEN.get_or_init(|| Crc32cKernel::best().raw_update_fn())
}

/// The CRC32C of `data`.
///
/// ```
/// assert_eq!(dr_simd::crc32c(b"123456789"), 0xE306_9283);
/// ```
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    update(0, data)
}

/// Continues `crc` (a finished CRC32C, or 0 to start) over `data`.
///
/// ```
/// let whole = dr_simd::crc32c(b"hello world");
/// let split = dr_simd::crc32c::update(dr_simd::crc32c(b"hello "), b"world");
/// assert_eq!(whole, split);
/// ```
#[inline]
pub fn update(crc: u32, data: &[u8]) -> u32 {
    !dispatched()(!crc, data)
}

/// The CRC32C of `a ++ b` from `crc32c(a)`, `crc32c(b)` and `b.len()`,
/// without touching the bytes: lets independently checksummed pieces (log
/// entries, snapshot chunks) be checked as a whole.
///
/// ```
/// use dr_simd::crc32c::{combine, crc32c};
/// let (a, b) = (b"raft ".as_slice(), b"log".as_slice());
/// assert_eq!(combine(crc32c(a), crc32c(b), b.len() as u64), crc32c(b"raft log"));
/// ```
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    // With pre- and post-inversion the inversions cancel: see the unit
    // test `combine_matches_concatenation` for the identity in action.
    gf2::shift(crc_a, len_b.saturating_mul(8)) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_on_every_kernel() {
        for kernel in Crc32cKernel::available() {
            assert_eq!(kernel.update(0, b"123456789"), 0xE306_9283, "{kernel:?}");
        }
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn combine_matches_concatenation() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 131 + 7) as u8).collect();
        for split in [0, 1, 7, 64, 1000, 2999, 3000] {
            let (a, b) = data.split_at(split);
            assert_eq!(
                combine(crc32c(a), crc32c(b), b.len() as u64),
                crc32c(&data),
                "split {split}"
            );
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_crc32_instruction_matches_the_tables() {
        if !Crc32cKernel::Sse42.is_available() {
            return;
        }
        let data: Vec<u8> = (0..200u32).map(|i| (i * 13) as u8).collect();
        for len in 0..data.len() {
            // SAFETY: SSE4.2 was confirmed just above.
            let hardware = unsafe { x86::update_crc32_instruction(!0, &data[..len]) };
            assert_eq!(hardware, scalar::update_raw(!0, &data[..len]), "len {len}");
        }
    }
}
