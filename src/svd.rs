//! Truncated SVD: the best rank-`r` factorisation `M ≈ left · right` of a matrix (Eckart–Young),
//! computed in `f64` with nalgebra, whatever the backend: the matrix is read back from its device
//! and the factors are written back to it in the matrix's own float type.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use nalgebra::DMatrix;

use crate::error::{LoraError, Result};

/// A rank-`r` factorisation `M ≈ left · right` of a matrix `M: [m, n]` by truncated SVD.
///
/// `left = U_r S_r` and `right = V_rᵀ`, so `M ≈ M_r = left · right = U_r S_r V_rᵀ`, where
/// `M = U S Vᵀ` with `S = diag(σ_1 ≥ … ≥ σ_k ≥ 0)`, `k = min(m, n)`.
///
/// The notebook calls these factors `B = U_r S_r` and `A = V_rᵀ` (`M_r = B A`, PyTorch's
/// `y = W x` orientation). Burn's LoRA uses the same letters the other way round: for a Burn
/// weight `W: [d_input, d_output]` (`y = x W + b`), `left` has the shape of LoRA's
/// `A: [d_input, r]` and `right` that of LoRA's `B: [r, d_output]`, and `A B = left · right`
/// (LoRA scales it by `s = alpha / r`, so `alpha = r` adds exactly `left · right`). Hence the
/// names by side rather than by letter.
///
/// # Shapes
///
/// - `left`: `[m, r]`
/// - `right`: `[r, n]`
/// - `singular_values`: all `min(m, n)` of them, not only the `r` kept
#[derive(Debug, Clone)]
pub struct LowRankFactors<B: Backend> {
    /// `U_r S_r`: the first `r` left singular vectors, column `i` scaled by `σ_i`. Shape `[m, r]`.
    pub left: Tensor<B, 2>,
    /// `V_rᵀ`: the first `r` right singular vectors, as orthonormal rows. Shape `[r, n]`.
    pub right: Tensor<B, 2>,
    /// Every singular value `σ_1 ≥ … ≥ σ_k ≥ 0` of the input, `k = min(m, n)`, in `f64`.
    pub singular_values: Vec<f64>,
}

impl<B: Backend> LowRankFactors<B> {
    /// The rank `r` of the factorisation: the number of singular values kept.
    pub fn rank(&self) -> usize {
        self.left.dims()[1]
    }

    /// The shape `[m, n]` of the factorised matrix.
    pub fn shape(&self) -> [usize; 2] {
        [self.left.dims()[0], self.right.dims()[1]]
    }

    /// The rank-`r` approximation `M_r = left · right = U_r S_r V_rᵀ`.
    ///
    /// # Shapes
    ///
    /// - output: `[m, n]`
    pub fn reconstruct(&self) -> Tensor<B, 2> {
        self.left.clone().matmul(self.right.clone())
    }

    /// The Frobenius error of the truncation, `‖M − M_r‖_F = √(Σ_{i>r} σ_i²)`, from the
    /// singular values dropped (Eckart–Young: no rank-`r` matrix does better). `0` when
    /// `r = min(m, n)`.
    pub fn truncation_error(&self) -> f64 {
        let rank = self.rank();
        self.singular_values
            .iter()
            .skip(rank)
            .fold(0.0, |sum, s| sum + s * s)
            .sqrt()
    }

    /// The numerical rank of the factorised matrix, from its singular values: the count of
    /// `σ_i > tol`, with `tol = max(m, n) · ε · σ_1` by default (as `torch.linalg.matrix_rank`;
    /// `ε` is the machine epsilon of the tensors' float type, `f32::EPSILON` for `f32`), or the
    /// `tolerance` given. See [`numerical_rank`].
    ///
    /// Fails with [`LoraError::NonFinite`] if `tolerance` is NaN.
    pub fn numerical_rank(&self, tolerance: Option<f64>) -> Result<usize> {
        let [rows, cols] = self.shape();
        rank_above(
            &self.singular_values,
            rows,
            cols,
            self.left.dtype(),
            tolerance,
        )
    }
}

/// Factorises `matrix: [m, n]` by truncated SVD into `left = U_r S_r` and `right = V_rᵀ`, so
/// that `matrix ≈ left · right`, the best rank-`rank` approximation in the Frobenius norm.
///
/// `left` and `right` are the notebook's `B` and `A`; for a Burn weight `W: [d_input, d_output]`
/// they have the shapes of LoRA's `A: [d_input, r]` and `B: [r, d_output]` (see
/// [`LowRankFactors`]). The Frobenius error is `‖M − left · right‖_F = √(Σ_{i>r} σ_i²)`
/// ([`LowRankFactors::truncation_error`]). The SVD runs in `f64` (nalgebra); the factors come
/// back on the matrix's device in its float type. A quantized matrix is dequantized first.
///
/// # Shapes
///
/// - `matrix`: `[m, n]`
/// - output: `left: [m, r]`, `right: [r, n]`, `singular_values`: `min(m, n)` values, descending
///
/// # Errors
///
/// - [`LoraError::SvdRank`] if `rank` is 0 or larger than `min(m, n)` (always, for an empty
///   matrix);
/// - [`LoraError::NonFinite`] if `matrix` holds NaN or infinity;
/// - [`LoraError::SvdFailed`] if the matrix cannot be read back or the SVD does not converge.
///
/// # Example
///
/// ```
/// use burn::tensor::Tensor;
/// use burn::backend::Flex as Inference;
/// use burn_lora::truncated_svd;
///
/// let device = Default::default();
/// // A rank-1 matrix: the outer product of [1, 2, 3] and [1, 0, -1, 2].
/// let m = Tensor::<Inference, 2>::from_floats(
///     [[1.0, 0.0, -1.0, 2.0], [2.0, 0.0, -2.0, 4.0], [3.0, 0.0, -3.0, 6.0]],
///     &device,
/// );
/// let factors = truncated_svd(m.clone(), 1)?;
/// assert_eq!(factors.left.dims(), [3, 1]); // the notebook's B = U_r S_r
/// assert_eq!(factors.right.dims(), [1, 4]); // the notebook's A = V_rᵀ
///
/// // One non-zero singular value, ‖u‖·‖v‖ = √14 · √6; the rank-1 factors rebuild m exactly.
/// assert!((factors.singular_values[0] - 84f64.sqrt()).abs() < 1e-5);
/// assert!(factors.singular_values[1..].iter().all(|s| s.abs() < 1e-5));
/// assert_eq!(factors.numerical_rank(None)?, 1);
/// factors
///     .reconstruct()
///     .into_data()
///     .assert_approx_eq::<f32>(&m.into_data(), Default::default());
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
pub fn truncated_svd<B: Backend>(matrix: Tensor<B, 2>, rank: usize) -> Result<LowRankFactors<B>> {
    let [rows, cols] = matrix.dims();
    let k = rows.min(cols);
    if rank == 0 || rank > k {
        return Err(LoraError::SvdRank { rank, rows, cols });
    }
    let matrix = matrix.dequantize();
    let (device, dtype) = (matrix.device(), matrix.dtype());
    let svd = decompose(read_f64(matrix)?, rows, cols, true)?;

    let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
        return Err(LoraError::SvdFailed(
            "nalgebra returned no singular vectors".to_string(),
        ));
    };
    if u.shape() != (rows, k) || v_t.shape() != (k, cols) || svd.singular_values.len() != k {
        return Err(LoraError::SvdFailed(format!(
            "unexpected factor shapes U {:?}, Vᵀ {:?} for a {rows}x{cols} matrix",
            u.shape(),
            v_t.shape()
        )));
    }
    let singular_values: Vec<f64> = svd.singular_values.iter().copied().collect();

    // left = U_r S_r: scale column i of U_r by σ_i.
    let mut left = u.columns(0, rank).into_owned();
    for (mut column, sigma) in left.column_iter_mut().zip(&singular_values) {
        column *= *sigma;
    }
    let right = v_t.rows(0, rank).into_owned();

    Ok(LowRankFactors {
        left: to_tensor(&left, &device, dtype),
        right: to_tensor(&right, &device, dtype),
        singular_values,
    })
}

/// All `min(m, n)` singular values `σ_1 ≥ σ_2 ≥ … ≥ 0` of `matrix: [m, n]`, computed in `f64`
/// (no singular vectors, so cheaper than [`truncated_svd`]). Empty for an empty matrix.
///
/// # Shapes
///
/// - `matrix`: `[m, n]`
/// - output: `min(m, n)` values, descending
///
/// # Errors
///
/// [`LoraError::NonFinite`] if `matrix` holds NaN or infinity; [`LoraError::SvdFailed`] if it
/// cannot be read back or the SVD does not converge.
///
/// # Example
///
/// ```
/// use burn::tensor::Tensor;
/// use burn::backend::Flex as Inference;
///
/// let device = Default::default();
/// let m = Tensor::<Inference, 2>::from_floats([[0.0, 2.0], [-3.0, 0.0], [0.0, 0.0]], &device);
/// let sigma = burn_lora::singular_values(m)?;
/// assert!((sigma[0] - 3.0).abs() < 1e-12 && (sigma[1] - 2.0).abs() < 1e-12);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
pub fn singular_values<B: Backend>(matrix: Tensor<B, 2>) -> Result<Vec<f64>> {
    let [rows, cols] = matrix.dims();
    if rows == 0 || cols == 0 {
        return Ok(Vec::new());
    }
    let values = read_f64(matrix.dequantize())?;
    let svd = decompose(values, rows, cols, false)?;
    Ok(svd.singular_values.iter().copied().collect())
}

/// The numerical rank of `matrix: [m, n]`: the number of singular values `σ_i > tol`, where
/// `tol = max(m, n) · ε · σ_1` by default, as `torch.linalg.matrix_rank` does (`ε` is the machine
/// epsilon of the matrix's float type: `f32::EPSILON` for `f32`, `f64::EPSILON` for `f64`), or
/// the absolute `tolerance` given. A negative tolerance counts every singular value; an empty
/// matrix has rank 0.
///
/// # Shapes
///
/// - `matrix`: `[m, n]`
///
/// # Errors
///
/// [`LoraError::NonFinite`] if `matrix` holds NaN or infinity or `tolerance` is NaN;
/// [`LoraError::SvdFailed`] if the matrix cannot be read back or the SVD does not converge.
///
/// # Example
///
/// ```
/// use burn::tensor::{Distribution, Tensor};
/// use burn::backend::Flex as Inference;
///
/// let device = Default::default();
/// // A 6x5 matrix of rank 2: [6, 2] · [2, 5].
/// let m = Tensor::<Inference, 2>::random([6, 2], Distribution::Normal(0.0, 1.0), &device)
///     .matmul(Tensor::random([2, 5], Distribution::Normal(0.0, 1.0), &device));
/// assert_eq!(burn_lora::numerical_rank(m, None)?, 2);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
pub fn numerical_rank<B: Backend>(matrix: Tensor<B, 2>, tolerance: Option<f64>) -> Result<usize> {
    let [rows, cols] = matrix.dims();
    let dtype = matrix.dtype();
    let sigma = singular_values(matrix)?;
    rank_above(&sigma, rows, cols, dtype, tolerance)
}

/// Counts the singular values above `tolerance`, or above `max(m, n) · ε(dtype) · σ_1`.
fn rank_above(
    singular_values: &[f64],
    rows: usize,
    cols: usize,
    dtype: DType,
    tolerance: Option<f64>,
) -> Result<usize> {
    let tolerance = match tolerance {
        Some(tol) if tol.is_nan() => {
            return Err(LoraError::NonFinite(
                "the numerical-rank tolerance".to_string(),
            ))
        }
        Some(tol) => tol,
        None => {
            let sigma_max = singular_values.iter().copied().fold(0.0, f64::max);
            rows.max(cols) as f64 * epsilon(dtype) * sigma_max
        }
    };
    Ok(singular_values.iter().filter(|&&s| s > tolerance).count())
}

/// The machine epsilon of a float type (that of `f32` for anything else).
fn epsilon(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON,
        DType::F16 => 9.765_625e-4,   // 2^-10
        DType::BF16 => 7.812_5e-3,    // 2^-7
        _ => f64::from(f32::EPSILON), // 2^-23
    }
}

/// The matrix's values in row-major order as `f64`, after checking they are all finite.
pub(crate) fn read_f64<B: Backend>(matrix: Tensor<B, 2>) -> Result<Vec<f64>> {
    let [rows, cols] = matrix.dims();
    let data = matrix
        .try_into_data()
        .map_err(|e| LoraError::SvdFailed(format!("reading the matrix back: {e}")))?;
    let values = data
        .convert::<f64>()
        .into_vec::<f64>()
        .map_err(|e| LoraError::SvdFailed(format!("converting the matrix to f64: {e:?}")))?;
    if values.len() != rows * cols {
        return Err(LoraError::SvdFailed(format!(
            "a {rows}x{cols} matrix came back with {} values",
            values.len()
        )));
    }
    if !values.iter().all(|v| v.is_finite()) {
        return Err(LoraError::NonFinite(format!(
            "the {rows}x{cols} matrix to decompose"
        )));
    }
    Ok(values)
}

/// The SVD of a non-empty, finite row-major matrix, singular values sorted descending.
pub(crate) fn decompose(
    values: Vec<f64>,
    rows: usize,
    cols: usize,
    vectors: bool,
) -> Result<nalgebra::SVD<f64, nalgebra::Dyn, nalgebra::Dyn>> {
    if values.is_empty() || values.len() != rows * cols {
        return Err(LoraError::SvdFailed(format!(
            "{} values for a {rows}x{cols} matrix",
            values.len()
        )));
    }
    // Work on M / max|m_ij|, so that no intermediate can overflow (or underflow) even for f64
    // input near the ends of its range; σ_i scales back linearly, U and V are unchanged.
    let scale = values.iter().fold(0.0, |max: f64, v| max.max(v.abs()));
    let mut matrix = DMatrix::from_row_slice(rows, cols, &values);
    if scale > 0.0 {
        matrix /= scale;
    }
    // nalgebra's default convergence threshold, and an iteration cap well above what the
    // implicit-shift QR needs (LAPACK allows 6 k² sweeps) so it cannot loop forever.
    let k = rows.min(cols);
    let max_iterations = k.saturating_mul(k).saturating_mul(6).max(1000);
    let Some(mut svd) = nalgebra::SVD::try_new_unordered(
        matrix,
        vectors,
        vectors,
        5.0 * f64::EPSILON,
        max_iterations,
    ) else {
        return Err(LoraError::SvdFailed(format!(
            "no convergence within {max_iterations} iterations for a {rows}x{cols} matrix"
        )));
    };
    // Sorting panics on NaN: check first.
    if !svd.singular_values.iter().all(|s| s.is_finite()) {
        return Err(LoraError::SvdFailed(format!(
            "non-finite singular values for a finite {rows}x{cols} matrix"
        )));
    }
    svd.sort_by_singular_values();
    if scale > 0.0 {
        svd.singular_values *= scale;
    }
    Ok(svd)
}

/// A column-major nalgebra matrix as a Burn tensor (row-major) of the given float type.
pub(crate) fn to_tensor<B: Backend>(
    matrix: &DMatrix<f64>,
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, 2> {
    let (rows, cols) = matrix.shape();
    // The transpose's column-major storage is the matrix in row-major order.
    let row_major = matrix.transpose().as_slice().to_vec();
    Tensor::from_data(TensorData::new(row_major, [rows, cols]), (device, dtype))
}
