//! Portable CRC32C: slicing-by-16 table lookups.
//!
//! Sixteen 1 KiB tables (16 KiB, inside L1) let one loop iteration consume
//! 16 bytes with 16 independent lookups, so the loop is bound by load
//! throughput rather than by the dependency on the previous CRC value.

use super::gf2::POLY_REFLECTED;

/// How many bytes one iteration consumes; also the number of tables.
const SLICES: usize = 16;

/// `TABLES[k][b]`: the CRC register contribution of byte `b` followed by
/// `k` zero bytes.
static TABLES: [[u32; 256]; SLICES] = build_tables();

const fn build_tables() -> [[u32; 256]; SLICES] {
    let mut tables = [[0u32; 256]; SLICES];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut slice = 1;
    while slice < SLICES {
        let mut byte = 0;
        while byte < 256 {
            let previous = tables[slice - 1][byte];
            tables[slice][byte] = (previous >> 8) ^ tables[0][(previous & 0xFF) as usize];
            byte += 1;
        }
        slice += 1;
    }
    tables
}

/// Advances the raw (not inverted) CRC register over `data`.
pub(crate) fn update_raw(mut crc: u32, data: &[u8]) -> u32 {
    let (blocks, tail) = data.as_chunks::<SLICES>();
    for block in blocks {
        let mut folded = *block;
        let head = u32::from_le_bytes([block[0], block[1], block[2], block[3]]) ^ crc;
        folded[..4].copy_from_slice(&head.to_le_bytes());
        crc = 0;
        for (position, &byte) in folded.iter().enumerate() {
            crc ^= TABLES[SLICES - 1 - position][byte as usize];
        }
    }
    for &byte in tail {
        crc = (crc >> 8) ^ TABLES[0][((crc ^ byte as u32) & 0xFF) as usize];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time CRC, the definition the tables are derived from.
    fn bitwise(mut crc: u32, data: &[u8]) -> u32 {
        for &byte in data {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLY_REFLECTED
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn tables_match_the_bitwise_definition() {
        let data: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(
                update_raw(!0, &data[..len]),
                bitwise(!0, &data[..len]),
                "len {len}"
            );
        }
    }
}
