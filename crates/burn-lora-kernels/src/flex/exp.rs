//! `eˣ` in plain arithmetic that the compiler vectorises.
//!
//! `f32::exp` is a library call per value, which no loop around it vectorises: in SwiGLU's
//! backward it is most of the time. [`exp`] is Cephes' `expf` (range reduction by `ln 2`, a
//! degree-5 polynomial, the power of two put in the exponent bits), within 2 ulp of `f32::exp`
//! over the range where neither under- nor overflows, written with operations that have vector
//! forms on every instruction set `macerator::with_simd` compiles for (rounding by the
//! `1.5 · 2²³` trick, not `round`, and the power of two from the rounded value's bits, not a
//! float-to-integer conversion).

/// `ln 2` in two parts, the first exact in few bits: `n · LN2_HI` is exact for the `n` that
/// occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting it rounds an `f32` below `2²²` in magnitude to an integer.
const ROUND: f32 = 12_582_912.0;
/// The arguments whose `eˣ` is a normal `f32`.
const MIN: f32 = -87.336_55;
const MAX: f32 = 88.376_26;

/// `eˣ`, clamped to the normal range of `f32` (a NaN argument gives a finite value: the callers
/// multiply by the argument, which carries the NaN through).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(MIN, MAX);
    let shifted = x * core::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // `2ⁿ` from the integer in `shifted`'s low mantissa bits (`ROUND`'s bits plus `n`, for
    // |n| < 2²²; here −126 ≤ n ≤ 127), in integer operations only: `n as i32`, a saturating
    // conversion, is compiled lane by lane, a scalar conversion and two branches-free fix-ups
    // per value, which was most of a vector loop around `exp`.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// `σ(x) = 1 / (1 + e⁻ˣ)`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `erf(x)` by Abramowitz and Stegun's 7.1.26 (within 1.5e-7 of the exact value), with
/// [`exp`]: plain arithmetic, vectorised in a loop.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let p = 1.061_405_4_f32;
    let p = p * t - 1.453_152_1;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_72;
    let p = p * t + 0.254_829_6;
    let e = 1.0 - p * t * exp(-z * z);
    if x < 0.0 {
        -e
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_library_over_its_range() {
        let mut x = MIN;
        while x < MAX {
            let (ours, libm) = (exp(x), x.exp());
            let ulp = (ours.to_bits() as i64 - libm.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {ours}, library {libm}: {ulp} ulp");
            x += 1.0e-3 * (1.0 + x.abs());
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1.0e4), exp(MIN));
        assert!(exp(1.0e4).is_finite());
    }

    #[test]
    fn erf_is_within_2e_7_of_the_exact_function() {
        // Reference values of erf (Abramowitz and Stegun, table 7.1, to 1e-9).
        for (x, exact) in [
            (0.0f32, 0.0f64),
            (0.1, 0.112_462_916),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (1.5, 0.966_105_146),
            (2.0, 0.995_322_265),
            (3.0, 0.999_977_910),
        ] {
            for (x, exact) in [(x, exact), (-x, -exact)] {
                let ours = f64::from(erf(x));
                assert!(
                    (ours - exact).abs() < 2e-7,
                    "erf({x}) = {ours}, exact {exact}"
                );
            }
        }
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn sigmoid_saturates_without_nan() {
        let low = sigmoid(-1.0e4);
        assert!((0.0..1.0e-37).contains(&low), "{low}");
        assert_eq!(sigmoid(1.0e4), 1.0);
        assert!((sigmoid(0.3) - 1.0 / (1.0 + (-0.3f32).exp())).abs() < 1e-7);
    }
}
