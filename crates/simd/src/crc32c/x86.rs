//! x86_64 CRC32C kernels: the SSE4.2 `crc32` instruction on three
//! independent streams, fused with carry-less multiply folding
//! (`PCLMULQDQ` on 128-bit lanes, `VPCLMULQDQ` on 256-bit lanes).
//!
//! # Why three streams, and why fused
//!
//! `crc32` has a latency of three cycles and a throughput of one per cycle,
//! so three independent streams keep the unit busy: 8 bytes a cycle. The
//! carry-less multiplier is a separate unit; on the Zen 3 machines we
//! measured it folds about 16 bytes a cycle with 256-bit lanes and 8 with
//! 128-bit lanes, but only after a costly setup and final reduction. So:
//!
//! - short inputs (under a fused block) run [`update_three_streams`]: the
//!   input is cut into three equal streams, each runs its own `crc32`
//!   chain, and the three registers are joined with one carry-less
//!   multiply each (`x^bits mod P`, see [`super::gf2::lane_constant`]);
//! - long inputs run fused blocks: a *vector region* followed by three
//!   equal *stream regions*. One loop walks all four at once: each
//!   iteration folds two vector accumulators over the next piece of the
//!   vector region and runs four `crc32` on each stream. The region sizes
//!   follow the two units' measured throughputs, so both stay busy.
//!
//! Vector accumulators are reduced from 128 to 32 bits with two `crc32`
//! instructions, which reduce modulo the polynomial in hardware, so no
//! Barrett reduction is needed.
//!
//! Every function here is `#[target_feature]`: callers must have checked
//! the features ([`super::Crc32cKernel::is_available`] does).

use core::arch::x86_64::{
    __m128i, __m256i, _mm_clmulepi64_si128, _mm_crc32_u8, _mm_crc32_u16, _mm_crc32_u32,
    _mm_crc32_u64, _mm_cvtsi32_si128, _mm_cvtsi64_si128, _mm_cvtsi128_si64, _mm_extract_epi64,
    _mm_loadu_si128, _mm_set_epi64x, _mm_xor_si128, _mm256_broadcastsi128_si256,
    _mm256_castsi256_si128, _mm256_clmulepi64_epi128, _mm256_extracti128_si256, _mm256_loadu_si256,
    _mm256_xor_si256, _mm256_zextsi128_si256,
};

use super::gf2::lane_constant;

/// Bytes each stream consumes per fused iteration: four `crc32` of 8 bytes.
const STREAM_BYTES_PER_ITERATION: usize = 32;

/// The most iterations one fused block may run; sizes the constant table.
const FUSED_ITERATIONS_MAX: usize = 128;

/// The fewest iterations worth a fused block's setup and merge.
const FUSED_ITERATIONS_MIN: usize = 4;

/// The longest stream [`update_three_streams`] runs, in 8-byte words. Fused
/// blocks take over well before: the longest input left to the three
/// streams is one short of `FUSED_ITERATIONS_MIN` iterations of the wider
/// kernel (160 bytes each).
const THREE_STREAM_WORDS_MAX: usize = 32;
const _: () = assert!(3 * 8 * THREE_STREAM_WORDS_MAX >= FUSED_ITERATIONS_MIN * 160);

/// Inputs shorter than this run one `crc32` chain: splitting them into
/// streams costs more than it saves.
const THREE_STREAM_LEN_MIN: usize = 96;

/// Moves the first two stream registers of [`update_three_streams`] to the
/// streams' end, indexed by the stream length in words: `[first, second]`.
static THREE_STREAM_MERGE_CONSTANTS: [[u64; 2]; THREE_STREAM_WORDS_MAX + 1] = {
    let mut table = [[0u64; 2]; THREE_STREAM_WORDS_MAX + 1];
    let mut words = 1;
    while words <= THREE_STREAM_WORDS_MAX {
        let stream_bits = (words * 64) as u64;
        table[words] = [lane_constant(2 * stream_bits), lane_constant(stream_bits)];
        words += 1;
    }
    table
};

/// Moves the vector region's CRC and the first two streams' CRCs to the end
/// of a fused block, indexed by the block's iteration count:
/// `[vector, stream 0, stream 1]`.
static FUSED_MERGE_CONSTANTS: [[u64; 3]; FUSED_ITERATIONS_MAX + 1] = {
    let mut table = [[0u64; 3]; FUSED_ITERATIONS_MAX + 1];
    let mut iterations = 1;
    while iterations <= FUSED_ITERATIONS_MAX {
        let stream_bits = (STREAM_BYTES_PER_ITERATION * iterations * 8) as u64;
        table[iterations] = [
            lane_constant(3 * stream_bits),
            lane_constant(2 * stream_bits),
            lane_constant(stream_bits),
        ];
        iterations += 1;
    }
    table
};

/// The lane pair that folds a 128-bit accumulator forward by `bits`: the
/// low lane holds the higher-order half (`x^(64 + bits)`), the high lane the
/// lower-order half (`x^bits`).
const fn fold_pair(bits: u64) -> (i64, i64) {
    (lane_constant(bits + 64) as i64, lane_constant(bits) as i64)
}

const FOLD_128: (i64, i64) = fold_pair(128);
const FOLD_256: (i64, i64) = fold_pair(256);
const FOLD_512: (i64, i64) = fold_pair(512);

#[inline]
#[target_feature(enable = "sse4.1")]
fn constant_128((low, high): (i64, i64)) -> __m128i {
    _mm_set_epi64x(high, low)
}

#[inline]
#[target_feature(enable = "avx2")]
fn constant_256(pair: (i64, i64)) -> __m256i {
    _mm256_broadcastsi128_si256(constant_128(pair))
}

#[inline]
#[target_feature(enable = "sse4.1")]
fn load_128(chunk: &[u8; 16]) -> __m128i {
    // SAFETY: the pointer comes from a 16-byte array reference, so all 16
    // bytes are readable; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_256(chunk: &[u8; 32]) -> __m256i {
    // SAFETY: the pointer comes from a 32-byte array reference, so all 32
    // bytes are readable; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
}

/// `accumulator * x^bits`, congruent modulo P, still 128 bits wide.
#[inline]
#[target_feature(enable = "sse4.1,pclmulqdq")]
fn fold_128(accumulator: __m128i, constant: __m128i) -> __m128i {
    _mm_xor_si128(
        _mm_clmulepi64_si128::<0x00>(accumulator, constant),
        _mm_clmulepi64_si128::<0x11>(accumulator, constant),
    )
}

/// Two independent [`fold_128`]s, one per 128-bit half.
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn fold_256(accumulator: __m256i, constant: __m256i) -> __m256i {
    _mm256_xor_si256(
        _mm256_clmulepi64_epi128::<0x00>(accumulator, constant),
        _mm256_clmulepi64_epi128::<0x11>(accumulator, constant),
    )
}

/// Reduces a 128-bit accumulator to the CRC register it stands for.
#[inline]
#[target_feature(enable = "sse4.2")]
fn reduce_128(accumulator: __m128i) -> u32 {
    let low = _mm_crc32_u64(0, _mm_cvtsi128_si64(accumulator) as u64);
    _mm_crc32_u64(low, _mm_extract_epi64::<1>(accumulator) as u64) as u32
}

/// `crc * x^bits mod P` for the `bits` that `constant` was made for, left
/// unreduced in the low 64 bits: XOR several, then reduce once with
/// `_mm_crc32_u64(0, ..)`.
#[inline]
#[target_feature(enable = "sse4.1,pclmulqdq")]
fn shift_unreduced(crc: u64, constant: u64) -> __m128i {
    _mm_clmulepi64_si128::<0x00>(
        _mm_cvtsi64_si128(crc as i64),
        _mm_cvtsi64_si128(constant as i64),
    )
}

/// Advances the register with one `crc32` chain: eight bytes at a time,
/// then at most one step each of four, two and one bytes.
#[inline]
#[target_feature(enable = "sse4.2")]
pub(crate) fn update_crc32_instruction(crc: u32, data: &[u8]) -> u32 {
    let (words, mut tail) = data.as_chunks::<8>();
    let mut register = u64::from(crc);
    for word in words {
        register = _mm_crc32_u64(register, u64::from_le_bytes(*word));
    }
    let mut crc = register as u32;
    if let Some((four, rest)) = tail.split_first_chunk::<4>() {
        crc = _mm_crc32_u32(crc, u32::from_le_bytes(*four));
        tail = rest;
    }
    if let Some((two, rest)) = tail.split_first_chunk::<2>() {
        crc = _mm_crc32_u16(crc, u16::from_le_bytes(*two));
        tail = rest;
    }
    if let Some(&byte) = tail.first() {
        crc = _mm_crc32_u8(crc, byte);
    }
    crc
}

/// Three equal `crc32` streams joined by carry-less multiplies, then one
/// chain for the tail. For inputs too short for a fused block.
#[inline]
#[target_feature(enable = "sse4.2,pclmulqdq")]
fn update_three_streams(crc: u32, data: &[u8]) -> u32 {
    let stream_words = data.len() / 24;
    if data.len() < THREE_STREAM_LEN_MIN || stream_words > THREE_STREAM_WORDS_MAX {
        return update_crc32_instruction(crc, data);
    }
    let (words, _) = data.as_chunks::<8>();
    let (stream0, rest) = words.split_at(stream_words);
    let (stream1, rest) = rest.split_at(stream_words);
    let stream2 = &rest[..stream_words];
    let mut registers = [u64::from(crc), 0, 0];
    for ((word0, word1), word2) in stream0.iter().zip(stream1).zip(stream2) {
        registers[0] = _mm_crc32_u64(registers[0], u64::from_le_bytes(*word0));
        registers[1] = _mm_crc32_u64(registers[1], u64::from_le_bytes(*word1));
        registers[2] = _mm_crc32_u64(registers[2], u64::from_le_bytes(*word2));
    }
    let [to_end_0, to_end_1] = THREE_STREAM_MERGE_CONSTANTS[stream_words];
    let sum = _mm_xor_si128(
        shift_unreduced(registers[0], to_end_0),
        shift_unreduced(registers[1], to_end_1),
    );
    let joined = _mm_crc32_u64(0, _mm_cvtsi128_si64(sum) as u64) ^ registers[2];
    update_crc32_instruction(joined as u32, &data[3 * 8 * stream_words..])
}

/// Moves each CRC register to the end of the fused block and combines
/// them: `vector * x^(3s) + stream0 * x^(2s) + stream1 * x^s + stream2`.
#[inline]
#[target_feature(enable = "sse4.2,pclmulqdq")]
fn merge_fused(iterations: usize, vector: u32, streams: [u64; 3]) -> u32 {
    let [to_end_vector, to_end_0, to_end_1] = FUSED_MERGE_CONSTANTS[iterations];
    let sum = _mm_xor_si128(
        _mm_xor_si128(
            shift_unreduced(u64::from(vector), to_end_vector),
            shift_unreduced(streams[0], to_end_0),
        ),
        shift_unreduced(streams[1], to_end_1),
    );
    (_mm_crc32_u64(0, _mm_cvtsi128_si64(sum) as u64) ^ streams[2]) as u32
}

/// One fused iteration's worth of `crc32` on each of the three streams.
#[inline]
#[target_feature(enable = "sse4.2")]
fn step_streams(
    mut registers: [u64; 3],
    steps: [&[u8; STREAM_BYTES_PER_ITERATION]; 3],
) -> [u64; 3] {
    for word in 0..STREAM_BYTES_PER_ITERATION / 8 {
        for (register, step) in registers.iter_mut().zip(steps) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&step[word * 8..word * 8 + 8]);
            *register = _mm_crc32_u64(*register, u64::from_le_bytes(bytes));
        }
    }
    registers
}

/// A fused block: the vector region as `VECTOR_BYTES`-byte pieces, one per
/// iteration, and the three streams as 32-byte steps, one per iteration.
struct FusedBlock<'a, const VECTOR_BYTES: usize> {
    vector: &'a [[u8; VECTOR_BYTES]],
    streams: [&'a [[u8; STREAM_BYTES_PER_ITERATION]]; 3],
}

impl<'a, const VECTOR_BYTES: usize> FusedBlock<'a, VECTOR_BYTES> {
    const BYTES_PER_ITERATION: usize = VECTOR_BYTES + 3 * STREAM_BYTES_PER_ITERATION;

    /// Splits the next block off the front of `data`, or returns `None`
    /// when too little is left for a fused block to pay off.
    fn split_off(data: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let iterations = (data.len() / Self::BYTES_PER_ITERATION).min(FUSED_ITERATIONS_MAX);
        if iterations < FUSED_ITERATIONS_MIN {
            return None;
        }
        let (vector, rest) = data.split_at(iterations * VECTOR_BYTES);
        let (streams, rest) = rest.split_at(3 * iterations * STREAM_BYTES_PER_ITERATION);
        let (steps, _) = streams.as_chunks::<STREAM_BYTES_PER_ITERATION>();
        let (stream0, steps) = steps.split_at(iterations);
        let (stream1, stream2) = steps.split_at(iterations);
        let block = Self {
            vector: vector.as_chunks().0,
            streams: [stream0, stream1, stream2],
        };
        Some((block, rest))
    }

    fn iterations(&self) -> usize {
        self.vector.len()
    }

    /// Runs the three streams' `crc32` chains (through `step`, so that it
    /// inlines with the caller's target features) alongside `fold_vector`,
    /// which gets every vector piece after the first. Returns the streams'
    /// registers.
    #[inline(always)]
    fn run(
        &self,
        mut fold_vector: impl FnMut(&[u8; VECTOR_BYTES]),
        step: impl Fn([u64; 3], [&[u8; STREAM_BYTES_PER_ITERATION]; 3]) -> [u64; 3],
    ) -> [u64; 3] {
        let [stream0, stream1, stream2] = self.streams;
        let mut registers = [0u64; 3];
        let mut vector_pieces = self.vector.iter().skip(1);
        for ((step0, step1), step2) in stream0.iter().zip(stream1).zip(stream2) {
            if let Some(piece) = vector_pieces.next() {
                fold_vector(piece);
            }
            registers = step(registers, [step0, step1, step2]);
        }
        registers
    }
}

/// The 128-bit kernel: three `crc32` streams fused with `PCLMULQDQ` folding
/// of two 16-byte accumulators.
#[target_feature(enable = "sse4.2,pclmulqdq")]
pub(crate) fn update_sse42(mut crc: u32, mut data: &[u8]) -> u32 {
    if data.len() < THREE_STREAM_LEN_MIN {
        return update_crc32_instruction(crc, data);
    }
    let fold_256 = constant_128(FOLD_256);
    while let Some((block, rest)) = FusedBlock::<32>::split_off(data) {
        let (first, _) = block.vector[0].as_chunks::<16>();
        let initial = _mm_cvtsi32_si128(crc as i32);
        let mut accumulators = [
            _mm_xor_si128(load_128(&first[0]), initial),
            load_128(&first[1]),
        ];
        let registers = block.run(
            |piece| {
                let (chunks, _) = piece.as_chunks::<16>();
                for (accumulator, chunk) in accumulators.iter_mut().zip(chunks) {
                    *accumulator = _mm_xor_si128(fold_128(*accumulator, fold_256), load_128(chunk));
                }
            },
            |registers, steps| step_streams(registers, steps),
        );
        let [front, back] = accumulators;
        let vector = _mm_xor_si128(fold_128(front, constant_128(FOLD_128)), back);
        crc = merge_fused(block.iterations(), reduce_128(vector), registers);
        data = rest;
    }
    update_three_streams(crc, data)
}

/// The 256-bit kernel: three `crc32` streams fused with `VPCLMULQDQ`
/// folding of two 32-byte accumulators.
#[target_feature(enable = "sse4.2,pclmulqdq,avx2,vpclmulqdq")]
pub(crate) fn update_vpclmul(mut crc: u32, mut data: &[u8]) -> u32 {
    if data.len() < THREE_STREAM_LEN_MIN {
        return update_crc32_instruction(crc, data);
    }
    let fold_512 = constant_256(FOLD_512);
    while let Some((block, rest)) = FusedBlock::<64>::split_off(data) {
        let (first, _) = block.vector[0].as_chunks::<32>();
        let initial = _mm256_zextsi128_si256(_mm_cvtsi32_si128(crc as i32));
        let mut accumulators = [
            _mm256_xor_si256(load_256(&first[0]), initial),
            load_256(&first[1]),
        ];
        let registers = block.run(
            |piece| {
                let (chunks, _) = piece.as_chunks::<32>();
                for (accumulator, chunk) in accumulators.iter_mut().zip(chunks) {
                    *accumulator =
                        _mm256_xor_si256(fold_256(*accumulator, fold_512), load_256(chunk));
                }
            },
            |registers, steps| step_streams(registers, steps),
        );
        // Chunks 0..4 of the region sit in [front.low, front.high,
        // back.low, back.high]: fold the front pair onto the back pair,
        // then the low half onto the high half.
        let [front, back] = accumulators;
        let pair = _mm256_xor_si256(fold_256(front, constant_256(FOLD_256)), back);
        let low = _mm256_castsi256_si128(pair);
        let high = _mm256_extracti128_si256::<1>(pair);
        let vector = _mm_xor_si128(fold_128(low, constant_128(FOLD_128)), high);
        crc = merge_fused(block.iterations(), reduce_128(vector), registers);
        data = rest;
    }
    update_three_streams(crc, data)
}
