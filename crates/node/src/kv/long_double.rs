//! `INCRBYFLOAT`'s numbers as Redis computes them: x87 80-bit `long
//! double`s (a 64-bit significand), parsed as `strtold` does, added with
//! one rounding, and printed as `%.17Lf` with the trailing zeros cut.
//! Redis's replies depend on that precision (`0.1` three times is `0.3`
//! there, not `0.30000000000000004`), so drkv computes the same bits, in
//! integer arithmetic, on every node alike.

use num_bigint::BigUint;
use num_traits::{One, ToPrimitive, Zero};

/// The smallest exponent of the significand's last bit (subnormals).
const EXPONENT_MIN: i64 = -16445;
/// The largest: the biggest finite value is `(2^64 - 1) * 2^16320`.
const EXPONENT_MAX: i64 = 16320;
/// Redis refuses longer texts (`MAX_LONG_DOUBLE_CHARS`).
const TEXT_BYTES_MAX: usize = 5 * 1024;
/// Decimal digits after the point that `%.17Lf` prints.
const FRACTION_DIGITS: u32 = 17;

/// A `long double` value (NaN is never kept: it is an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LongDouble {
    /// `(-1)^negative * significand * 2^exponent`.
    Finite {
        /// The sign.
        negative: bool,
        /// At most 64 bits.
        significand: u64,
        /// The power of two of its last bit.
        exponent: i64,
    },
    /// An infinity.
    Infinite {
        /// The sign.
        negative: bool,
    },
}

impl LongDouble {
    /// Zero.
    pub const ZERO: Self = Self::Finite {
        negative: false,
        significand: 0,
        exponent: 0,
    };

    fn zero(negative: bool) -> Self {
        Self::Finite {
            negative,
            significand: 0,
            exponent: 0,
        }
    }

    /// Parses a value as Redis's `string2ld` does: `strtold`'s decimal
    /// syntax or `inf`, the whole text, no leading space, no NaN, no
    /// overflow, no underflow to zero. Hexadecimal floats are not taken.
    pub fn parse(text: &[u8]) -> Option<Self> {
        if text.is_empty() || text.len() >= TEXT_BYTES_MAX {
            return None;
        }
        let (negative, rest) = match text[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let lower = rest.to_ascii_lowercase();
        if lower == b"inf" || lower == b"infinity" {
            return Some(Self::Infinite { negative });
        }
        let (digits, exponent10) = decimal(rest)?;
        if digits.is_zero() {
            return Some(Self::zero(negative));
        }
        let value = from_decimal(negative, &digits, exponent10);
        match value {
            // Overflow and underflow to zero are ERANGE: refused.
            Self::Infinite { .. } => None,
            Self::Finite { significand: 0, .. } => None,
            value => Some(value),
        }
    }

    /// Whether it is finite.
    pub fn is_finite(&self) -> bool {
        matches!(self, Self::Finite { .. })
    }

    /// The sum, rounded once to the nearest (ties to even); `None` for
    /// infinities of both signs (NaN).
    pub fn add(&self, other: &Self) -> Option<Self> {
        match (self, other) {
            (Self::Infinite { negative: a }, Self::Infinite { negative: b }) if a != b => None,
            (infinite @ Self::Infinite { .. }, _) | (_, infinite @ Self::Infinite { .. }) => {
                Some(infinite.clone())
            }
            (
                Self::Finite {
                    negative: a_negative,
                    significand: a,
                    exponent: a_exponent,
                },
                Self::Finite {
                    negative: b_negative,
                    significand: b,
                    exponent: b_exponent,
                },
            ) => {
                let exponent = *a_exponent.min(b_exponent);
                let a = BigUint::from(*a) << (a_exponent - exponent) as usize;
                let b = BigUint::from(*b) << (b_exponent - exponent) as usize;
                let (negative, sum) = if a_negative == b_negative {
                    (*a_negative, a + b)
                } else if a >= b {
                    (*a_negative, a - b)
                } else {
                    (*b_negative, b - a)
                };
                // x + (-x) is +0 when rounding to nearest.
                let negative = negative && !sum.is_zero();
                Some(round(negative, &sum, exponent, false))
            }
        }
    }

    /// `%.17Lf` with the zeros after the point cut (and the point when
    /// nothing is left after it), `-0` written `0`: Redis's
    /// `LD_STR_HUMAN`.
    pub fn to_human(&self) -> String {
        let Self::Finite {
            negative,
            significand,
            exponent,
        } = self
        else {
            return if matches!(self, Self::Infinite { negative: true }) {
                "-inf".into()
            } else {
                "inf".into()
            };
        };
        let scale = BigUint::from(10u32).pow(FRACTION_DIGITS);
        let scaled = if *exponent >= 0 {
            (BigUint::from(*significand) << *exponent as usize) * scale
        } else {
            let shift = (-exponent) as usize;
            let numerator = BigUint::from(*significand) * scale;
            let quotient = &numerator >> shift;
            let remainder = &numerator - (&quotient << shift);
            let twice = remainder << 1;
            let half = BigUint::one() << shift;
            let odd = quotient.bit(0);
            if twice > half || (twice == half && odd) {
                quotient + 1u32
            } else {
                quotient
            }
        };
        let digits = scaled.to_string();
        let digits = format!("{digits:0>18}");
        let (whole, fraction) = digits.split_at(digits.len() - FRACTION_DIGITS as usize);
        let fraction = fraction.trim_end_matches('0');
        let mut text = String::with_capacity(digits.len() + 2);
        if *negative {
            text.push('-');
        }
        text.push_str(whole);
        if !fraction.is_empty() {
            text.push('.');
            text.push_str(fraction);
        }
        if text == "-0" {
            text = "0".into();
        }
        text
    }
}

/// `digits[.digits][(e|E)[+-]digits]` (at least one digit before or
/// after the point): the digits as one integer and the power of ten.
fn decimal(text: &[u8]) -> Option<(BigUint, i64)> {
    let mut digits = Vec::with_capacity(text.len());
    let mut position = 0;
    let mut fraction_digits = 0i64;
    let mut seen_digit = false;
    while position < text.len() && text[position].is_ascii_digit() {
        digits.push(text[position]);
        position += 1;
        seen_digit = true;
    }
    if position < text.len() && text[position] == b'.' {
        position += 1;
        while position < text.len() && text[position].is_ascii_digit() {
            digits.push(text[position]);
            fraction_digits += 1;
            position += 1;
            seen_digit = true;
        }
    }
    if !seen_digit {
        return None;
    }
    let mut exponent = 0i64;
    if position < text.len() && matches!(text[position], b'e' | b'E') {
        position += 1;
        let negative = match text.get(position) {
            Some(b'-') => {
                position += 1;
                true
            }
            Some(b'+') => {
                position += 1;
                false
            }
            _ => false,
        };
        let start = position;
        while position < text.len() && text[position].is_ascii_digit() {
            // Saturates: anything this large over- or underflows.
            exponent = (exponent * 10 + i64::from(text[position] - b'0')).min(1 << 40);
            position += 1;
        }
        if position == start {
            return None;
        }
        if negative {
            exponent = -exponent;
        }
    }
    if position != text.len() {
        return None;
    }
    let digits = BigUint::parse_bytes(&digits, 10)?;
    Some((digits, exponent - fraction_digits))
}

/// `digits * 10^exponent10`, rounded.
fn from_decimal(negative: bool, digits: &BigUint, exponent10: i64) -> LongDouble {
    let magnitude = digits.to_string().len() as i64 + exponent10;
    if magnitude > 4934 {
        return LongDouble::Infinite { negative };
    }
    if magnitude < -4952 {
        return LongDouble::zero(negative);
    }
    if exponent10 >= 0 {
        let value = digits * BigUint::from(10u32).pow(exponent10 as u32);
        return round(negative, &value, 0, false);
    }
    let divisor = BigUint::from(10u32).pow((-exponent10) as u32);
    // Enough quotient bits for 64 of significand and the rounding.
    let shift = (66 + divisor.bits() as i64 - digits.bits() as i64).max(0);
    let numerator = digits << shift as usize;
    let quotient = &numerator / &divisor;
    let inexact = !(numerator - &quotient * &divisor).is_zero();
    round(negative, &quotient, -shift, inexact)
}

/// `value * 2^exponent` (plus less than one unit of its last bit when
/// `sticky`) rounded to a 64-bit significand, to the nearest, ties to
/// even.
fn round(negative: bool, value: &BigUint, exponent: i64, sticky: bool) -> LongDouble {
    if value.is_zero() {
        return LongDouble::zero(negative);
    }
    let bits = value.bits() as i64;
    let mut shift = bits - 64;
    if exponent + shift < EXPONENT_MIN {
        shift = EXPONENT_MIN - exponent;
    }
    let (mut significand, mut exponent) = if shift <= 0 {
        let significand = (value << (-shift) as usize)
            .to_u64()
            .expect("at most 64 bits");
        (significand, exponent + shift)
    } else {
        let shift_bits = shift as u64;
        let kept = value >> shift as usize;
        let half = value.bit(shift_bits - 1);
        let below_half = sticky || (value.trailing_zeros().unwrap_or(0) < shift_bits - 1);
        let mut significand = kept.to_u64().unwrap_or(0);
        let mut carry = false;
        if half && (below_half || significand & 1 == 1) {
            let (sum, overflow) = significand.overflowing_add(1);
            significand = sum;
            carry = overflow;
        }
        let mut exponent = exponent + shift;
        if carry {
            significand = 1 << 63;
            exponent += 1;
        }
        (significand, exponent)
    };
    if significand == 0 {
        exponent = 0;
    }
    if exponent > EXPONENT_MAX {
        return LongDouble::Infinite { negative };
    }
    while significand != 0 && significand & 1 == 0 && exponent < EXPONENT_MAX {
        // A canonical form: the same value, always the same fields.
        significand >>= 1;
        exponent += 1;
    }
    LongDouble::Finite {
        negative,
        significand,
        exponent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(values: &[&str]) -> String {
        let mut total = LongDouble::ZERO;
        for value in values {
            let value = LongDouble::parse(value.as_bytes()).expect("a float");
            total = total.add(&value).expect("a number");
        }
        total.to_human()
    }

    #[test]
    fn sums_print_as_redis_prints_them() {
        // Replies of redis-server 7.0 (x86-64) to the same INCRBYFLOATs.
        assert_eq!(sum(&["123456.789"]), "123456.78900000000000148");
        assert_eq!(sum(&["123456.789", "0.1"]), "123456.8890000000000029");
        assert_eq!(
            sum(&["123456.789", "0.1", "0.1", "0.1"]),
            "123457.08900000000000574"
        );
        assert_eq!(
            sum(&["123456.789", "0.1", "0.1", "0.1", "1e30"]),
            "1000000000000000000024696061952"
        );
        assert_eq!(sum(&["1", "-1.1"]), "-0.1");
        assert_eq!(sum(&["10.5", "0.1"]), "10.6");
        assert_eq!(sum(&["3.0e3"]), "3000");
        assert_eq!(
            sum(&["3.0e3", "1.23456789012345678"]),
            "3001.23456789012345669"
        );
        assert_eq!(sum(&["0.1", "0.1", "0.1"]), "0.3");
        assert_eq!(sum(&["5", "-5"]), "0");
        assert_eq!(sum(&["-0.000000000000000001"]), "0");
    }

    #[test]
    fn only_what_strtold_and_redis_take_parses() {
        for good in [
            "1",
            "-1",
            "+1.5",
            ".5",
            "5.",
            "1e5",
            "1E+5",
            "1e-5",
            "inf",
            "-Infinity",
            "0",
        ] {
            assert!(LongDouble::parse(good.as_bytes()).is_some(), "{good}");
        }
        for bad in [
            "", " 1", "1 ", "abc", "1e", "e5", ".", "-", "nan", "0x10", "1e99999", "1e-99999",
            "1.2.3",
        ] {
            assert!(LongDouble::parse(bad.as_bytes()).is_none(), "{bad}");
        }
        let long = "1".repeat(TEXT_BYTES_MAX);
        assert!(LongDouble::parse(long.as_bytes()).is_none());
        let inf = LongDouble::parse(b"inf").unwrap();
        assert!(inf.add(&LongDouble::parse(b"-inf").unwrap()).is_none());
        assert!(!inf.add(&LongDouble::ZERO).unwrap().is_finite());
    }
}
