//! Truncated SVD: exact reconstruction of low-rank matrices, Eckart–Young optimality of the
//! truncation, singular values, numerical rank, and errors instead of panics.

use burn::tensor::{Tensor, TensorData};
use burn_lora::{numerical_rank, singular_values, truncated_svd, LoraError};
use burn_lora_support::backend::Inference as B;

/// Relative tolerance for anything that went through `f32`.
///
/// The SVD runs in `f64`, so its own error (~1e-15) is negligible; what remains is `f32`
/// rounding: the input matrix, `left` and `right` are each rounded to `f32` (relative error
/// `ε_f32 / 2 ≈ 6e-8` per element), and `left · right` accumulates `r ≤ 8` products in `f32`.
/// That bounds the Frobenius error by a small multiple of `r · ε_f32 · ‖M‖_F ≈ 1e-6 · ‖M‖_F`;
/// 1e-5 leaves a 10x margin while still catching any real error (a wrong or missing singular
/// triple costs at least `σ_r / ‖M‖_F`, orders of magnitude more for these matrices).
const REL_TOL: f64 = 1e-5;

/// A deterministic standard-normal stream (SplitMix64 + Box–Muller), independent of the
/// backend's global RNG so that parallel tests cannot disturb each other's data.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64 // in (0, 1)
    }

    fn sample(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A `rows x cols` row-major matrix of standard-normal values.
    fn matrix(&mut self, rows: usize, cols: usize) -> Vec<f64> {
        (0..rows * cols).map(|_| self.sample()).collect()
    }
}

/// Row-major `[m, k] · [k, n]` in f64.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                out[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    out
}

/// An f32 tensor holding `values` (row-major `[rows, cols]`).
fn tensor(values: &[f64], rows: usize, cols: usize) -> Tensor<B, 2> {
    let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(values, [rows, cols]), &Default::default())
}

/// A tensor's values as f64 (row-major).
fn values(tensor: Tensor<B, 2>) -> Vec<f64> {
    tensor
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float tensor")
}

/// Frobenius norm of `a - b`.
fn frobenius_distance(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

fn frobenius(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// A random `[m, r] · [r, n]` matrix: rank exactly `r` (with probability 1), as f32 values.
fn random_rank_r(normal: &mut Normal, m: usize, n: usize, r: usize) -> Vec<f64> {
    let product = matmul(&normal.matrix(m, r), &normal.matrix(r, n), m, r, n);
    // Round to f32 here, so the f64 reference is exactly the tensor's content.
    product.iter().map(|&v| f64::from(v as f32)).collect()
}

/// (rows, cols, rank) cases: square, tall, wide, full-rank, 1x1 and larger.
const SHAPES: [(usize, usize, usize); 8] = [
    (10, 10, 2),
    (7, 13, 3),
    (20, 5, 4),
    (16, 3, 3),
    (3, 16, 1),
    (1, 1, 1),
    (30, 40, 8),
    (64, 48, 5),
];

#[test]
fn exact_low_rank_matrices_reconstruct_to_float_tolerance() {
    let mut normal = Normal(1);
    for (m, n, r) in SHAPES {
        let w = random_rank_r(&mut normal, m, n, r);
        let factors = truncated_svd(tensor(&w, m, n), r).expect("valid rank");

        assert_eq!(factors.left.dims(), [m, r]);
        assert_eq!(factors.right.dims(), [r, n]);
        assert_eq!(factors.rank(), r);
        assert_eq!(factors.shape(), [m, n]);

        let rebuilt = values(factors.reconstruct());
        let error = frobenius_distance(&rebuilt, &w) / frobenius(&w);
        assert!(
            error < REL_TOL,
            "{m}x{n} rank {r}: relative error {error:e}"
        );

        // The dropped singular values are rounding noise, and so is the predicted error.
        let sigma_max = factors.singular_values[0];
        for s in &factors.singular_values[r..] {
            assert!(*s < REL_TOL * sigma_max, "{m}x{n} rank {r}: σ = {s:e}");
        }
        assert!(factors.truncation_error() < REL_TOL * frobenius(&w));
    }
}

#[test]
fn factors_are_u_s_and_v_transpose() {
    // right = V_rᵀ has orthonormal rows; left = U_r S_r has orthogonal columns of norm σ_i.
    let mut normal = Normal(2);
    for (m, n, r) in SHAPES {
        let w = normal.matrix(m, n);
        let factors = truncated_svd(tensor(&w, m, n), r).expect("valid rank");
        let right_gram = values(
            factors
                .right
                .clone()
                .matmul(factors.right.clone().transpose()),
        );
        let left_gram = values(
            factors
                .left
                .clone()
                .transpose()
                .matmul(factors.left.clone()),
        );
        let sigma_max = factors.singular_values[0];
        for i in 0..r {
            for j in 0..r {
                let identity = if i == j { 1.0 } else { 0.0 };
                let sigma_sq = identity * factors.singular_values[i].powi(2);
                assert!(
                    (right_gram[i * r + j] - identity).abs() < REL_TOL,
                    "{m}x{n}: (V_rᵀ V_r)[{i},{j}] = {}",
                    right_gram[i * r + j]
                );
                assert!(
                    (left_gram[i * r + j] - sigma_sq).abs() < REL_TOL * sigma_max * sigma_max,
                    "{m}x{n}: (S U_rᵀ U_r S)[{i},{j}] = {}",
                    left_gram[i * r + j]
                );
            }
        }
    }
}

#[test]
fn truncation_error_is_the_root_of_the_dropped_squared_singular_values() {
    // Eckart–Young: the rank-r truncation of a full-rank matrix misses it by exactly
    // √(σ_{r+1}² + … + σ_k²) in the Frobenius norm.
    let mut normal = Normal(3);
    for (m, n) in [(10, 10), (12, 7), (6, 15), (40, 30)] {
        let w: Vec<f64> = normal
            .matrix(m, n)
            .iter()
            .map(|&v| f64::from(v as f32))
            .collect();
        let norm = frobenius(&w);
        for r in 1..=m.min(n) {
            let factors = truncated_svd(tensor(&w, m, n), r).expect("valid rank");
            let measured = frobenius_distance(&values(factors.reconstruct()), &w);
            let dropped: f64 = factors.singular_values[r..].iter().map(|s| s * s).sum();
            let predicted = dropped.sqrt();
            // Absolute, relative to ‖M‖: the f32 rounding error does not shrink with the residual.
            assert!(
                (measured - predicted).abs() < REL_TOL * norm,
                "{m}x{n} rank {r}: measured {measured}, predicted {predicted}"
            );
            assert_eq!(factors.truncation_error(), predicted);
        }
    }
}

#[test]
fn truncation_beats_other_rank_r_approximations() {
    // Eckart–Young is about optimality too: nudging either factor in random directions, or
    // keeping the wrong singular triples, gives a worse rank-r approximation.
    let mut normal = Normal(4);
    let (m, n, r) = (12, 9, 3);
    let w: Vec<f64> = normal
        .matrix(m, n)
        .iter()
        .map(|&v| f64::from(v as f32))
        .collect();
    let best = truncated_svd(tensor(&w, m, n), r).expect("valid rank");
    let best_error = frobenius_distance(&values(best.reconstruct()), &w);

    for step in [1e-1, 1e-2] {
        let nudge_left = tensor(&normal.matrix(m, r), m, r).mul_scalar(step);
        let nudge_right = tensor(&normal.matrix(r, n), r, n).mul_scalar(step);
        let left = (best.left.clone() + nudge_left).matmul(best.right.clone());
        let right = best.left.clone().matmul(best.right.clone() + nudge_right);
        for other in [left, right] {
            let error = frobenius_distance(&values(other), &w);
            assert!(best_error < error, "step {step}: {best_error} vs {error}");
        }
    }

    // Keeping σ_2..σ_{r+1} instead of σ_1..σ_r leaves out σ_1², which is larger than σ_{r+1}².
    let wider = truncated_svd(tensor(&w, m, n), r + 1).expect("valid rank");
    let top = truncated_svd(tensor(&w, m, n), 1).expect("valid rank");
    let shifted: Vec<f64> = values(wider.reconstruct())
        .iter()
        .zip(values(top.reconstruct()))
        .map(|(a, b)| a - b)
        .collect();
    assert!(best_error < frobenius_distance(&shifted, &w));
}

#[test]
fn singular_values_are_known_for_a_scaled_permutation() {
    // Rows and columns of diag(5, 3, 2, 0.5) shuffled, signs flipped, plus a zero row.
    let w = [
        0.0, 0.0, 2.0, 0.0, //
        0.0, -5.0, 0.0, 0.0, //
        3.0, 0.0, 0.0, 0.0, //
        0.0, 0.0, 0.0, 0.5, //
        0.0, 0.0, 0.0, 0.0,
    ];
    let expected = [5.0, 3.0, 2.0, 0.5];
    let sigma = singular_values(tensor(&w, 5, 4)).expect("finite matrix");
    assert_eq!(sigma.len(), 4);
    for (s, e) in sigma.iter().zip(expected) {
        assert!((s - e).abs() < 1e-12, "σ {sigma:?}, expected {expected:?}");
    }
    let factors = truncated_svd(tensor(&w, 5, 4), 2).expect("valid rank");
    // The rank-2 truncation keeps the 5 and the 3 and nothing else.
    let kept = values(factors.reconstruct());
    let want = [
        0.0, 0.0, 0.0, 0.0, //
        0.0, -5.0, 0.0, 0.0, //
        3.0, 0.0, 0.0, 0.0, //
        0.0, 0.0, 0.0, 0.0, //
        0.0, 0.0, 0.0, 0.0,
    ];
    assert!(frobenius_distance(&kept, &want) < 1e-6, "{kept:?}");
    assert!((factors.truncation_error() - (4.0f64 + 0.25).sqrt()).abs() < 1e-12);
}

#[test]
fn singular_values_are_descending_non_negative_and_match_the_norm() {
    let mut normal = Normal(5);
    for (m, n, _) in SHAPES {
        let w: Vec<f64> = normal
            .matrix(m, n)
            .iter()
            .map(|&v| f64::from(v as f32))
            .collect();
        let sigma = singular_values(tensor(&w, m, n)).expect("finite matrix");
        assert_eq!(sigma.len(), m.min(n));
        assert!(sigma.iter().all(|&s| s >= 0.0), "{sigma:?}");
        assert!(sigma.windows(2).all(|p| p[0] >= p[1]), "{sigma:?}");
        // ‖M‖_F² = Σ σ_i² (the f64 SVD of the exact f32 values).
        let sum_sq: f64 = sigma.iter().map(|s| s * s).sum();
        let norm_sq = frobenius(&w).powi(2);
        assert!(
            (sum_sq - norm_sq).abs() < 1e-10 * norm_sq,
            "{sum_sq} vs {norm_sq}"
        );
        // The same values come with the factors.
        let with_vectors = truncated_svd(tensor(&w, m, n), 1).expect("valid rank");
        for (a, b) in sigma.iter().zip(&with_vectors.singular_values) {
            assert!((a - b).abs() < 1e-10 * sigma[0], "{a} vs {b}");
        }
    }
}

#[test]
fn singular_values_scale_with_the_matrix_at_extreme_magnitudes() {
    // Multiplying by a power of two is exact in f32, so σ(2^e M) = 2^e σ(M) up to the f64 SVD's
    // own rounding, even where squaring the entries would overflow or underflow f32.
    let mut normal = Normal(10);
    let w = random_rank_r(&mut normal, 9, 6, 3);
    let sigma = singular_values(tensor(&w, 9, 6)).expect("finite matrix");
    for exponent in [100, -100] {
        let factor = 2f64.powi(exponent);
        let scaled: Vec<f64> = w.iter().map(|v| v * factor).collect();
        let factors = truncated_svd(tensor(&scaled, 9, 6), 3).expect("finite matrix");
        for (s, t) in sigma.iter().zip(&factors.singular_values) {
            assert!(
                (s * factor - t).abs() <= 1e-12 * sigma[0] * factor,
                "2^{exponent}: {t:e} vs {:e}",
                s * factor
            );
        }
        let rebuilt = values(factors.reconstruct());
        let error = frobenius_distance(&rebuilt, &scaled) / frobenius(&scaled);
        assert!(error < REL_TOL, "2^{exponent}: relative error {error:e}");
        assert_eq!(factors.numerical_rank(None), Ok(3));
    }
}

#[test]
fn numerical_rank_finds_the_rank_of_low_rank_products() {
    let mut normal = Normal(6);
    for (m, n, r) in SHAPES {
        let w = random_rank_r(&mut normal, m, n, r);
        assert_eq!(numerical_rank(tensor(&w, m, n), None), Ok(r), "{m}x{n}");
        let factors = truncated_svd(tensor(&w, m, n), r).expect("valid rank");
        assert_eq!(factors.numerical_rank(None), Ok(r), "{m}x{n}");
    }
    // A full-rank matrix, the zero matrix and an empty one.
    let w = normal.matrix(8, 5);
    assert_eq!(numerical_rank(tensor(&w, 8, 5), None), Ok(5));
    assert_eq!(numerical_rank(tensor(&[0.0; 12], 3, 4), None), Ok(0));
    assert_eq!(numerical_rank(tensor(&[], 0, 4), None), Ok(0));
}

#[test]
fn numerical_rank_counts_singular_values_strictly_above_a_given_tolerance() {
    // σ = 5, 3, 2, 0.5.
    let w = [
        0.0, 0.0, 2.0, 0.0, //
        0.0, -5.0, 0.0, 0.0, //
        3.0, 0.0, 0.0, 0.0, //
        0.0, 0.0, 0.0, 0.5,
    ];
    let m = || tensor(&w, 4, 4);
    assert_eq!(numerical_rank(m(), None), Ok(4));
    assert_eq!(numerical_rank(m(), Some(0.4)), Ok(4));
    assert_eq!(numerical_rank(m(), Some(1.0)), Ok(3));
    assert_eq!(numerical_rank(m(), Some(2.5)), Ok(2));
    assert_eq!(numerical_rank(m(), Some(4.0)), Ok(1));
    assert_eq!(numerical_rank(m(), Some(f64::INFINITY)), Ok(0));
    assert_eq!(numerical_rank(m(), Some(-1.0)), Ok(4));
    let factors = truncated_svd(m(), 1).expect("valid rank");
    assert_eq!(factors.numerical_rank(Some(2.5)), Ok(2));
    assert!(matches!(
        numerical_rank(m(), Some(f64::NAN)),
        Err(LoraError::NonFinite(_))
    ));
    assert!(matches!(
        factors.numerical_rank(Some(f64::NAN)),
        Err(LoraError::NonFinite(_))
    ));
}

#[test]
fn rank_zero_or_above_the_smaller_side_is_an_svd_rank_error() {
    let w = Normal(7).matrix(6, 4);
    for rank in [0, 5, 6, 100] {
        assert_eq!(
            truncated_svd(tensor(&w, 6, 4), rank).err(),
            Some(LoraError::SvdRank {
                rank,
                rows: 6,
                cols: 4
            })
        );
    }
    assert_eq!(
        truncated_svd(tensor(&w, 4, 6), 5).err(),
        Some(LoraError::SvdRank {
            rank: 5,
            rows: 4,
            cols: 6
        })
    );
    // An empty matrix has no valid rank.
    assert_eq!(
        truncated_svd(tensor(&[], 0, 3), 1).err(),
        Some(LoraError::SvdRank {
            rank: 1,
            rows: 0,
            cols: 3
        })
    );
    let message = LoraError::SvdRank {
        rank: 5,
        rows: 6,
        cols: 4,
    }
    .to_string();
    assert!(message.contains("1..=4"), "{message}");
}

#[test]
fn non_finite_input_is_an_error_not_a_panic() {
    let mut w = Normal(8).matrix(5, 5);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        w[7] = bad;
        let m = || tensor(&w, 5, 5);
        assert!(
            matches!(truncated_svd(m(), 2), Err(LoraError::NonFinite(_))),
            "{bad}"
        );
        assert!(
            matches!(singular_values(m()), Err(LoraError::NonFinite(_))),
            "{bad}"
        );
        assert!(
            matches!(numerical_rank(m(), None), Err(LoraError::NonFinite(_))),
            "{bad}"
        );
    }
}

#[test]
fn factors_act_as_lora_a_and_b_on_a_burn_weight() {
    // A Burn weight W: [d_in, d_out] used as y = x W. Its rank-r factors, taken as LoRA's
    // A = left [d_in, r] and B = right [r, d_out], give the same output through the skinny
    // path x ↦ (x A) B.
    let (d_in, d_out, r, batch) = (12, 7, 3, 4);
    let mut normal = Normal(9);
    let w = random_rank_r(&mut normal, d_in, d_out, r);
    let x = normal.matrix(batch, d_in);
    let factors = truncated_svd(tensor(&w, d_in, d_out), r).expect("valid rank");
    let dense = values(tensor(&x, batch, d_in).matmul(tensor(&w, d_in, d_out)));
    let low_rank = values(
        tensor(&x, batch, d_in)
            .matmul(factors.left.clone())
            .matmul(factors.right.clone()),
    );
    let error = frobenius_distance(&dense, &low_rank) / frobenius(&dense);
    assert!(error < REL_TOL, "relative error {error:e}");
}
