//! Runtime CPU feature detection, done once per process.
//!
//! The kernels ask [`CpuFeatures::get`] which instruction sets exist; the
//! answer is computed on first use and cached, so asking is one load.

use std::sync::OnceLock;

/// The instruction-set extensions the kernels of this crate can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// SSE4.2 (`crc32`, and SSE4.1's `ptest` with it).
    pub sse42: bool,
    /// 128-bit carry-less multiply.
    pub pclmulqdq: bool,
    /// 256-bit integer vectors.
    pub avx2: bool,
    /// Carry-less multiply on 256-bit (and 512-bit) vectors.
    pub vpclmulqdq: bool,
}

impl CpuFeatures {
    /// The features of the CPU this process runs on.
    pub fn get() -> Self {
        static DETECTED: OnceLock<CpuFeatures> = OnceLock::new();
        *DETECTED.get_or_init(Self::detect)
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Self {
        Self {
            sse42: std::is_x86_feature_detected!("sse4.2"),
            pclmulqdq: std::is_x86_feature_detected!("pclmulqdq"),
            avx2: std::is_x86_feature_detected!("avx2"),
            vpclmulqdq: std::is_x86_feature_detected!("vpclmulqdq"),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Self {
        Self::default()
    }
}
