//! Arithmetic on polynomials over GF(2) modulo the CRC32C polynomial.
//!
//! Every value here is a polynomial of degree below 32 in the *reflected*
//! layout the CRC uses on the wire: bit `i` holds the coefficient of
//! `x^(31 - i)`, so `1 << 31` is the polynomial `1` and `1 << 30` is `x`.
//! The folding constants of the vector kernels and [`super::combine`] are
//! all powers of `x` reduced modulo the polynomial; computing them here (at
//! compile time for the constants) keeps every magic number derivable.

/// The CRC32C (Castagnoli) polynomial `0x1EDC6F41`, bit-reflected.
pub(crate) const POLY_REFLECTED: u32 = 0x82F6_3B78;

/// The polynomial `1` in the reflected layout.
const ONE: u32 = 1 << 31;

/// `a * b mod P`.
pub(crate) const fn mul_mod(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = ONE;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        bit >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ POLY_REFLECTED
        } else {
            b >> 1
        };
    }
    product
}

/// `x^(2^k) mod P` for `k` in `0..64`: squaring tables make any power of `x`
/// a product of at most 64 table entries.
const X_POW_2K: [u32; 64] = {
    let mut table = [0u32; 64];
    let mut value = ONE >> 1; // x
    let mut k = 0;
    while k < 64 {
        table[k] = value;
        value = mul_mod(value, value);
        k += 1;
    }
    table
};

/// `x^n mod P`.
pub(crate) const fn x_pow_mod(mut n: u64) -> u32 {
    let mut result = ONE;
    let mut k = 0;
    while n != 0 {
        if n & 1 != 0 {
            result = mul_mod(result, X_POW_2K[k]);
        }
        n >>= 1;
        k += 1;
    }
    result
}

/// `crc * x^bits mod P`: moves a CRC register `bits` positions further
/// along the message, as if that many zero bits followed it.
pub(crate) const fn shift(crc: u32, bits: u64) -> u32 {
    mul_mod(crc, x_pow_mod(bits))
}

/// The 64-bit lane constant that makes a carry-less multiply of a 64-bit
/// lane by it congruent to multiplying that lane by `x^exponent`.
///
/// A lane holds a 64-bit reflected polynomial `A`; the constant holds a
/// 32-bit reflected polynomial `K` in its low bits, which as a 64-bit lane
/// reads `K * x^32`. `PCLMULQDQ` of the two yields 127 product bits in a
/// 128-bit register; read as a 128-bit reflected polynomial that is one
/// more factor `x`. So the product stands for `A * K * x^33`, and the
/// constant is `x^(exponent - 33) mod P`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const fn lane_constant(exponent: u64) -> u64 {
    assert!(exponent >= 33, "lane constants need exponents of 33 and up");
    x_pow_mod(exponent - 33) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_the_multiplicative_identity() {
        for value in [0, 1, ONE, 0xDEAD_BEEF, POLY_REFLECTED] {
            assert_eq!(mul_mod(ONE, value), value);
            assert_eq!(mul_mod(value, ONE), value);
        }
    }

    #[test]
    fn multiplication_commutes_and_powers_add() {
        let (a, b) = (0x1234_5678, 0x9ABC_DEF0);
        assert_eq!(mul_mod(a, b), mul_mod(b, a));
        for (m, n) in [(0, 5), (7, 9), (31, 33), (1000, 24), (4096, 65_536)] {
            assert_eq!(mul_mod(x_pow_mod(m), x_pow_mod(n)), x_pow_mod(m + n));
        }
    }

    #[test]
    fn small_powers_are_single_bits() {
        for n in 0..32 {
            assert_eq!(x_pow_mod(n), ONE >> n);
        }
        // x^32 wraps around to the polynomial's low terms.
        assert_eq!(x_pow_mod(32), POLY_REFLECTED);
    }
}
