//! Byte-string equality and ordering for keys.
//!
//! [`eq`] and [`compare`] give the same answers as `a == b` and
//! `a.cmp(b)` on slices. Keys of up to 64 bytes are handled inline with
//! overlapping 4-, 8- and 16-byte loads (no call, no loop over bytes);
//! longer keys go to the fastest vector kernel this CPU has, chosen once
//! per process.

mod scalar;
mod short;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cmp::Ordering;
use std::sync::OnceLock;
use std::sync::atomic::AtomicPtr;
use std::sync::atomic::Ordering::Relaxed;

use crate::cpu::CpuFeatures;

/// Keys up to this length never leave the inline path.
const INLINE_LEN_MAX: usize = 64;

/// One implementation of [`eq`] and [`compare`] for keys longer than 64
/// bytes (shorter keys take the same inline path whatever the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BytesKernel {
    /// Portable 8-byte words.
    Scalar,
    /// 16-byte SSE vectors (`pcmpeqb`, `ptest`; SSE4.2 level).
    Sse42,
    /// 32-byte AVX2 vectors.
    Avx2,
}

/// A kernel's pair of functions. Both take slices longer than
/// [`INLINE_LEN_MAX`]; `eq` takes slices of equal length.
///
/// The pointers are `unsafe fn` because the vector ones are
/// `#[target_feature]` functions: calling them is sound only on a CPU with
/// those features. A `KernelFns` is only ever made by [`BytesKernel::fns`],
/// after that check, so holding one proves the features are there.
#[derive(Clone, Copy)]
struct KernelFns {
    eq: unsafe fn(&[u8], &[u8]) -> bool,
    compare: unsafe fn(&[u8], &[u8]) -> Ordering,
}

impl BytesKernel {
    /// Every kernel, slowest first.
    pub const ALL: [Self; 3] = [Self::Scalar, Self::Sse42, Self::Avx2];

    /// The kernel's short name, as benches and logs print it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Sse42 => "sse42",
            Self::Avx2 => "avx2",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        let cpu = CpuFeatures::get();
        match self {
            Self::Scalar => true,
            Self::Sse42 => cpu.sse42,
            Self::Avx2 => cpu.avx2,
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

    /// [`eq`] with this kernel.
    ///
    /// # Panics
    /// If the CPU lacks the kernel's features (a programming error).
    pub fn eq(self, a: &[u8], b: &[u8]) -> bool {
        eq_with(self.fns(), a, b)
    }

    /// [`compare`] with this kernel.
    ///
    /// # Panics
    /// If the CPU lacks the kernel's features (a programming error).
    pub fn compare(self, a: &[u8], b: &[u8]) -> Ordering {
        compare_with(self.fns(), a, b)
    }

    /// The kernel's functions.
    ///
    /// # Panics
    /// If the CPU lacks the kernel's features; this check is what makes
    /// handing out the `#[target_feature]` wrappers sound.
    fn fns(self) -> KernelFns {
        assert!(
            self.is_available(),
            "byte kernel {} needs CPU features this machine lacks",
            self.name()
        );
        match self {
            Self::Scalar => KernelFns {
                eq: scalar::eq,
                compare: scalar::compare,
            },
            #[cfg(target_arch = "x86_64")]
            Self::Sse42 => x86::SSE42,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => x86::AVX2,
            #[cfg(not(target_arch = "x86_64"))]
            Self::Sse42 | Self::Avx2 => unreachable!("x86 kernels are never available here"),
        }
    }
}

/// The dispatched `compare` kernel, or until the first long comparison
/// [`resolve_compare`]. A plain atomic pointer rather than a `OnceLock`:
/// the hot path is then one load and one indirect call, as a call into
/// glibc's `memcmp` through the GOT is.
static COMPARE: AtomicPtr<()> = AtomicPtr::new(resolve_compare as *mut ());
/// The dispatched `eq` kernel, or until the first long comparison
/// [`resolve_eq`].
static EQ: AtomicPtr<()> = AtomicPtr::new(resolve_eq as *mut ());

type CompareFn = unsafe fn(&[u8], &[u8]) -> Ordering;
type EqFn = unsafe fn(&[u8], &[u8]) -> bool;

/// Picks the kernel once per process (racing first calls pick the same one).
fn chosen() -> KernelFns {
    static CHOSEN: OnceLock<KernelFns> = OnceLock::new();
    *CHOSEN.get_or_init(|| BytesKernel::best().fns())
}

/// Stands in [`COMPARE`] until the first call, which stores the chosen
/// kernel there and runs it.
///
/// # Safety
/// None beyond the slices' own validity; `unsafe` only to share
/// [`CompareFn`]'s type.
unsafe fn resolve_compare(a: &[u8], b: &[u8]) -> Ordering {
    let kernel = chosen().compare;
    COMPARE.store(kernel as *mut (), Relaxed);
    // SAFETY: `chosen` returns functions of an available kernel.
    unsafe { kernel(a, b) }
}

/// Stands in [`EQ`] until the first call, as [`resolve_compare`] does.
///
/// # Safety
/// None; `unsafe` only to share [`EqFn`]'s type.
unsafe fn resolve_eq(a: &[u8], b: &[u8]) -> bool {
    let kernel = chosen().eq;
    EQ.store(kernel as *mut (), Relaxed);
    // SAFETY: `chosen` returns functions of an available kernel.
    unsafe { kernel(a, b) }
}

/// Whether `a` and `b` hold the same bytes; same answer as `a == b`.
///
/// ```
/// assert!(dr_simd::eq(b"user:1042", b"user:1042"));
/// assert!(!dr_simd::eq(b"user:1042", b"user:1043"));
/// ```
#[inline]
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= INLINE_LEN_MAX {
        return short::eq_short(a, b);
    }
    eq_dispatched(a, b)
}

/// Lexicographic order of `a` and `b`; same answer as `a.cmp(b)`.
///
/// ```
/// use std::cmp::Ordering;
/// assert_eq!(dr_simd::compare(b"apple", b"apricot"), Ordering::Less);
/// assert_eq!(dr_simd::compare(b"key", b"ke"), Ordering::Greater);
/// ```
#[inline]
pub fn compare(a: &[u8], b: &[u8]) -> Ordering {
    if a.len().min(b.len()) <= INLINE_LEN_MAX {
        return short::compare_short(a, b);
    }
    compare_dispatched(a, b)
}

// The long-key paths are one load and an indirect call: `Relaxed` is
// enough, as every value the pointers ever hold is a complete, valid
// function (there is no data published alongside).

#[inline(always)]
fn eq_dispatched(a: &[u8], b: &[u8]) -> bool {
    // SAFETY: `EQ` only ever holds `resolve_eq` or the `eq` of a kernel
    // `chosen` checked, both `EqFn`s cast to a data pointer.
    let kernel = unsafe { std::mem::transmute::<*mut (), EqFn>(EQ.load(Relaxed)) };
    // SAFETY: as above, the kernel runs on this CPU.
    unsafe { kernel(a, b) }
}

#[inline(always)]
fn compare_dispatched(a: &[u8], b: &[u8]) -> Ordering {
    // SAFETY: `COMPARE` only ever holds `resolve_compare` or the `compare`
    // of a kernel `chosen` checked, both `CompareFn`s cast to a data pointer.
    let kernel = unsafe { std::mem::transmute::<*mut (), CompareFn>(COMPARE.load(Relaxed)) };
    // SAFETY: as above, the kernel runs on this CPU.
    unsafe { kernel(a, b) }
}

fn eq_with(fns: KernelFns, a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= INLINE_LEN_MAX {
        return short::eq_short(a, b);
    }
    // SAFETY: `fns` came from `BytesKernel::fns`, which checked the CPU.
    unsafe { (fns.eq)(a, b) }
}

fn compare_with(fns: KernelFns, a: &[u8], b: &[u8]) -> Ordering {
    if a.len().min(b.len()) <= INLINE_LEN_MAX {
        return short::compare_short(a, b);
    }
    // SAFETY: `fns` came from `BytesKernel::fns`, which checked the CPU.
    unsafe { (fns.compare)(a, b) }
}
