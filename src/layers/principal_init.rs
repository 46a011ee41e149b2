//! PiSSA and OLoRA: an adapter initialised from the base weight's principal directions, the base
//! left as the residual, so that the layer's output does not change.
//!
//! In Burn's orientation (`W: [d_input, d_output]`, `y = x W`), with `s` the adapter's scale:
//!
//! - PiSSA (Meng et al. 2024): `W ≈ U_r S_r V_rᵀ` (the top `r` singular triplets),
//!   `A = U_r √(S_r / s)`, `B = √(S_r / s) V_rᵀ`, so that `s·A B = U_r S_r V_rᵀ`. The exact SVD,
//!   or a randomised one with `k` power iterations (Halko et al. 2011, as `torch.svd_lowrank`,
//!   which PEFT's `pissa_niter_k` calls) for large weights.
//! - OLoRA (Büyükakyüz 2024): the QR factorisation of PEFT's `Wᵀ = Q R`, `A = R_rᵀ`, `B = Q_rᵀ`
//!   (the first `r` columns of `Q` and rows of `R`).
//!
//! In both the base becomes `W_res = W − s·A B`: `W_res + s·A B = W` up to rounding. The signs of
//! singular vectors (and of `Q`'s columns) are arbitrary; `s·A B` and `W_res` are not.
//!
//! Everything runs on the host in `f64` (nalgebra), whatever the backend, as
//! [`truncated_svd`](crate::truncated_svd) does; the factors and the residual come back in the
//! weight's float type.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use nalgebra::DMatrix;

use crate::config::{LoraConfig, LoraInit};
use crate::error::{LoraError, Result};
use crate::svd::{decompose, read_f64, to_tensor};

/// An adapter's first factors and the base weight that goes with them.
pub(crate) struct PrincipalInit<B: Backend> {
    /// `A`, `[d_input, rank]`.
    pub lora_a: Tensor<B, 2>,
    /// `B`, `[rank, d_output]`.
    pub lora_b: Tensor<B, 2>,
    /// `W − s·A B`, `[d_input, d_output]`.
    pub residual: Tensor<B, 2>,
}

/// The factors `config.init` (PiSSA or OLoRA) takes from `weight: [d_input, d_output]`, and the
/// residual base.
///
/// # Errors
/// [`LoraError::Unsupported`] for another init or a zero scale (`alpha = 0`: PiSSA divides by
/// it, and OLoRA's update would vanish); [`LoraError::RankTooLarge`] for a rank above
/// `min(d_input, d_output)`; [`LoraError::NonFinite`] for a weight with NaN or infinity;
/// [`LoraError::SvdFailed`] if the decomposition fails.
pub(crate) fn principal_init<B: Backend>(
    weight: Tensor<B, 2>,
    config: &LoraConfig,
) -> Result<PrincipalInit<B>> {
    let [d_input, d_output] = weight.dims();
    config.validate_for(d_input, d_output)?;
    let scale = config.scale();
    if scale <= 0.0 {
        return Err(LoraError::Unsupported(format!(
            "{:?} with alpha = {}: the update s·A B must start as the weight's principal part, \
             which a zero scale cannot give",
            config.init, config.alpha
        )));
    }
    let weight = weight.dequantize();
    let (device, dtype) = (weight.device(), weight.dtype());
    let rank = config.rank;
    let (lora_a, lora_b) = match config.init {
        LoraInit::Pissa { power_iterations } => {
            let values = read_f64(weight.clone())?;
            let (u, sigma, v_t) = match power_iterations {
                None => exact_svd(values, d_input, d_output, rank)?,
                Some(iterations) => {
                    let probe = Tensor::<B, 2>::random(
                        [d_output, rank],
                        Distribution::Normal(0.0, 1.0),
                        &device,
                    );
                    let probe = DMatrix::from_row_slice(d_output, rank, &read_f64(probe)?);
                    let matrix = DMatrix::from_row_slice(d_input, d_output, &values);
                    randomized_svd(&matrix, probe, iterations)?
                }
            };
            pissa_factors(u, &sigma, v_t, scale)
        }
        LoraInit::Olora => {
            // PEFT's QR is of its own orientation, Wᵀ: [d_output, d_input].
            let values = read_f64(weight.clone().transpose())?;
            let qr = DMatrix::from_row_slice(d_output, d_input, &values).qr();
            let (q, r) = (qr.q(), qr.r());
            (r.rows(0, rank).transpose(), q.columns(0, rank).transpose())
        }
        _ => {
            return Err(LoraError::Unsupported(format!(
                "{:?} does not take its factors from the weight",
                config.init
            )))
        }
    };
    let lora_a = to_tensor::<B>(&lora_a, &device, dtype);
    let lora_b = to_tensor::<B>(&lora_b, &device, dtype);
    let update = lora_a.clone().matmul(lora_b.clone()).mul_scalar(scale);
    let residual = weight - update;
    crate::layers::adapter::ensure_finite(&residual, || {
        format!("the residual base W − s·A B of {:?}", config.init)
    })?;
    Ok(PrincipalInit {
        lora_a,
        lora_b,
        residual,
    })
}

/// `A = U √(σ / s)`, `B = √(σ / s) Vᵀ`: each singular value split between the two factors.
fn pissa_factors(
    mut u: DMatrix<f64>,
    sigma: &[f64],
    mut v_t: DMatrix<f64>,
    scale: f64,
) -> (DMatrix<f64>, DMatrix<f64>) {
    for (i, sigma) in sigma.iter().enumerate() {
        let root = (sigma / scale).sqrt();
        u.column_mut(i).scale_mut(root);
        v_t.row_mut(i).scale_mut(root);
    }
    (u, v_t)
}

/// The top `rank` singular triplets of a row-major `[rows, cols]` matrix: `U_r [rows, r]`,
/// `σ_1..σ_r` and `V_rᵀ [r, cols]`.
fn exact_svd(
    values: Vec<f64>,
    rows: usize,
    cols: usize,
    rank: usize,
) -> Result<(DMatrix<f64>, Vec<f64>, DMatrix<f64>)> {
    let svd = decompose(values, rows, cols, true)?;
    let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
        return Err(LoraError::SvdFailed(
            "nalgebra returned no singular vectors".to_string(),
        ));
    };
    let sigma = svd.singular_values.iter().take(rank).copied().collect();
    Ok((
        u.columns(0, rank).into_owned(),
        sigma,
        v_t.rows(0, rank).into_owned(),
    ))
}

/// A rank-`r` SVD of `matrix: [m, n]` from a Gaussian probe `[n, r]` (Halko, Martinsson and
/// Tropp 2011, algorithms 4.4 and 5.1; `torch.svd_lowrank` with `q = r`, no oversampling, as
/// PEFT calls it): an orthonormal basis `Q` of `M Ω`, refined by `power_iterations` rounds of
/// `Q ← orth(M orth(Mᵀ Q))`, then the exact SVD of the small `Qᵀ M = Û S Vᵀ`, `U = Q Û`.
fn randomized_svd(
    matrix: &DMatrix<f64>,
    probe: DMatrix<f64>,
    power_iterations: usize,
) -> Result<(DMatrix<f64>, Vec<f64>, DMatrix<f64>)> {
    let rank = probe.ncols();
    let orthonormal = |m: DMatrix<f64>| m.qr().q();
    let mut q = orthonormal(matrix * probe);
    for _ in 0..power_iterations {
        let z = orthonormal(matrix.transpose() * &q);
        q = orthonormal(matrix * z);
    }
    let small = q.transpose() * matrix;
    let (rows, cols) = small.shape();
    let row_major = small.transpose().as_slice().to_vec();
    let (u_small, sigma, v_t) = exact_svd(row_major, rows, cols, rank)?;
    Ok((q * u_small, sigma, v_t))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    fn values(tensor: Tensor<Flex, 2>) -> Vec<f32> {
        tensor.into_data().to_vec::<f32>().unwrap()
    }

    /// A `[rows, cols]` matrix of rank 3 plus a little noise: its top three directions carry
    /// almost everything, which the randomised SVD finds.
    fn low_rank_matrix(rows: usize, cols: usize) -> Tensor<Flex, 2> {
        let device = Default::default();
        let left = Tensor::<Flex, 2>::random([rows, 3], Distribution::Normal(0.0, 1.0), &device);
        let right = Tensor::<Flex, 2>::random([3, cols], Distribution::Normal(0.0, 1.0), &device);
        let noise =
            Tensor::<Flex, 2>::random([rows, cols], Distribution::Normal(0.0, 1e-3), &device);
        left.matmul(right) + noise
    }

    /// `s·A B + W_res = W` for every init; PiSSA's `s·A B` is the best rank-`r` approximation
    /// (the exact SVD's), and the randomised SVD comes within the noise of it.
    #[test]
    fn the_residual_and_the_update_give_back_the_weight() {
        let weight = low_rank_matrix(20, 14);
        let config = |init| LoraConfig::new(3, 6.0).with_init(init);
        let best = crate::truncated_svd(weight.clone(), 3)
            .unwrap()
            .reconstruct();
        for init in [
            LoraInit::Pissa {
                power_iterations: None,
            },
            LoraInit::Pissa {
                power_iterations: Some(2),
            },
            LoraInit::Olora,
        ] {
            let config = config(init);
            let factors = principal_init(weight.clone(), &config).unwrap();
            assert_eq!(factors.lora_a.dims(), [20, 3]);
            assert_eq!(factors.lora_b.dims(), [3, 14]);
            assert_eq!(factors.residual.dims(), [20, 14]);
            let update = factors
                .lora_a
                .matmul(factors.lora_b)
                .mul_scalar(config.scale());
            let rebuilt = values(update.clone() + factors.residual);
            for (r, w) in rebuilt.iter().zip(values(weight.clone())) {
                assert!((r - w).abs() < 1e-5, "{:?}: {r} against {w}", config.init);
            }
            if matches!(config.init, LoraInit::Pissa { .. }) {
                for (u, b) in values(update).iter().zip(values(best.clone())) {
                    assert!((u - b).abs() < 1e-2, "{:?}: {u} against {b}", config.init);
                }
            }
        }
    }

    #[test]
    fn a_zero_scale_a_plain_init_and_a_rank_too_large_are_refused() {
        let weight = low_rank_matrix(6, 4);
        let pissa = LoraInit::Pissa {
            power_iterations: None,
        };
        let zero = LoraConfig::new(2, 0.0).with_init(pissa.clone());
        assert!(matches!(
            principal_init(weight.clone(), &zero),
            Err(LoraError::Unsupported(_))
        ));
        let plain = LoraConfig::new(2, 2.0);
        assert!(matches!(
            principal_init(weight.clone(), &plain),
            Err(LoraError::Unsupported(_))
        ));
        let large = LoraConfig::new(5, 2.0).with_init(pissa);
        assert!(matches!(
            principal_init(weight, &large),
            Err(LoraError::RankTooLarge { .. })
        ));
    }
}
