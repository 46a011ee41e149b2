//! [`LoraConfig`]: what the user asks of an adapter (rank, alpha, dropout, rsLoRA, init).

use burn::config::Config;
use burn::module::Initializer;

use crate::error::{LoraError, Result as LoraResult};

/// How the down-projection `A` of a linear or convolution layer's adapter is initialised; `B`
/// starts at zero, so a freshly attached adapter leaves the model's output unchanged (LoRA
/// paper, section 4.1).
///
/// Embedding layers follow PEFT's own rule instead, whatever this says: `A = 0`, `B ~ N(0, 1)`
/// (the update still starts at zero). An embedding therefore accepts only the default,
/// [`KaimingUniform`](Self::KaimingUniform) (PEFT's `init_lora_weights=True`); attaching with
/// any other init to an embedding is [`LoraError::Unsupported`].
#[derive(Config, Debug, PartialEq)]
pub enum LoraInit {
    /// `A ~ N(0, std²)`. The notebook (and the paper) use `std = 1`.
    Gaussian {
        /// Standard deviation of the normal distribution.
        std: f64,
    },
    /// Kaiming-uniform with `a = √5`, i.e. `A ~ U(-1/√d_input, 1/√d_input)`: PEFT's default.
    KaimingUniform,
    /// PiSSA (Meng et al. 2024; PEFT's `init_lora_weights="pissa"` and `"pissa_niter_k"`): `A`
    /// and `B` from the top-`r` singular triplets of the base weight, `W ≈ U_r S_r V_rᵀ`,
    /// `A = U_r √(S_r / s)`, `B = √(S_r / s) V_rᵀ`, and the base becomes the residual
    /// `W − s·A B`, so the layer's output does not change. Linear layers only.
    ///
    /// The trained adapter applies to that residual base; save it with
    /// [`save_adapter_converted`](crate::save_adapter_converted) to get a plain LoRA adapter of
    /// rank `2r` for the original base. [`load_adapter`](crate::load_adapter) rebuilds the
    /// residual from the original base for a file saved as it is (the exact SVD's only).
    Pissa {
        /// `None`: the exact SVD (in `f64`, costly for large weights); `Some(k)`: a randomised
        /// SVD with `k` power iterations (PEFT's `pissa_niter_k`), its probe drawn from the
        /// backend's generator (`B::seed`).
        power_iterations: Option<usize>,
    },
    /// OLoRA (Büyükakyüz 2024; PEFT's `init_lora_weights="olora"`): from the QR factorisation
    /// of PEFT's `Wᵀ = Q R`, `A = R_rᵀ`, `B = Q_rᵀ` (the first `r` rows of `R`, columns of `Q`),
    /// and the base becomes the residual `W − s·A B`. Linear layers only; saved as
    /// [`Pissa`](Self::Pissa) is.
    Olora,
}

impl LoraInit {
    /// The Burn initializer that draws `A`; `None` for PiSSA and OLoRA, whose factors come from
    /// the base weight.
    pub(crate) fn initializer(&self) -> Option<Initializer> {
        match self {
            LoraInit::Gaussian { std } => Some(Initializer::Normal {
                mean: 0.0,
                std: *std,
            }),
            LoraInit::KaimingUniform => Some(Initializer::KaimingUniform {
                gain: 1.0 / 3.0f64.sqrt(),
                fan_out_only: false,
            }),
            LoraInit::Pissa { .. } | LoraInit::Olora => None,
        }
    }

    /// Whether the init rewrites the base weight (PiSSA, OLoRA: the base becomes the residual
    /// of the adapter's first factors).
    pub fn rewrites_base(&self) -> bool {
        matches!(self, LoraInit::Pissa { .. } | LoraInit::Olora)
    }
}

/// Configuration of one LoRA adapter: `ΔW = s · A B` with `A: [d_input, rank]`,
/// `B: [rank, d_output]` and `s = alpha / rank` (`alpha / √rank` with rsLoRA); with
/// [`use_dora`](Self::use_dora), a DoRA adapter that also learns the columns' magnitudes.
///
/// A fresh adapter starts with `ΔW = 0`. On linear and convolution layers `A` is drawn by
/// [`init`](Self::init) and `B = 0`; on embeddings, as in PEFT, `A = 0` and `B ~ N(0, 1)`, so an
/// embedding accepts only the default `init` (another is [`LoraError::Unsupported`]).
///
/// ```
/// use burn_lora::{LoraConfig, LoraInit};
///
/// // The notebook's adapter: rank 1, alpha 1, A ~ N(0, 1).
/// let config = LoraConfig::new(1, 1.0).with_init(LoraInit::Gaussian { std: 1.0 });
/// assert_eq!(config.scale(), 1.0);
/// config.validate_for(784, 1000).unwrap();
/// assert!(LoraConfig::new(0, 1.0).validate().is_err());
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of the factors; `1 ≤ r ≤ min(d_input, d_output)`.
    pub rank: usize,
    /// Scaling numerator `alpha`; finite and `≥ 0`.
    pub alpha: f64,
    /// Dropout probability applied to the adapter's input during training; in `[0, 1)`.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Rank-stabilised LoRA: scale by `alpha / √r` instead of `alpha / r`.
    #[config(default = false)]
    pub use_rslora: bool,
    /// Initialisation of `A` on linear and convolution layers (`B` starts at zero there).
    /// Embeddings initialise as PEFT does (`A = 0`, `B ~ N(0, 1)`) and refuse any value but
    /// this default.
    #[config(default = "LoraInit::KaimingUniform")]
    pub init: LoraInit,
    /// Weight-decomposed LoRA (DoRA, Liu et al. 2024; PEFT's `use_dora`): the adapter also learns
    /// a magnitude `m`, one value per output feature, and the layer computes
    /// `m ⊙ (W + s·A B) / ‖W + s·A B‖` with the column norm (over `d_input`) detached, as PEFT
    /// does. `m` starts at `‖W‖`, so a fresh adapter still leaves the output unchanged.
    #[config(default = false)]
    pub use_dora: bool,
}

impl LoraConfig {
    /// The factor `s` that multiplies `A B`: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        let rank = self.rank.max(1) as f64;
        if self.use_rslora {
            self.alpha / rank.sqrt()
        } else {
            self.alpha / rank
        }
    }

    /// Checks the settings that do not depend on a layer: rank, alpha, dropout and init.
    pub fn validate(&self) -> LoraResult<()> {
        if self.rank == 0 {
            return Err(LoraError::ZeroRank);
        }
        if !self.alpha.is_finite() || self.alpha < 0.0 {
            return Err(LoraError::InvalidAlpha(self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::InvalidDropout(self.dropout));
        }
        if let LoraInit::Gaussian { std } = self.init {
            if !std.is_finite() || std <= 0.0 {
                return Err(LoraError::InvalidInitStd(std));
            }
        }
        if self.use_dora && self.init.rewrites_base() {
            return Err(LoraError::Unsupported(format!(
                "DoRA with the {:?} init (its magnitude would be taken from a residual base)",
                self.init
            )));
        }
        Ok(())
    }

    /// [`validate`](Self::validate), plus `rank ≤ min(d_input, d_output)` for a layer of that size.
    pub fn validate_for(&self, d_input: usize, d_output: usize) -> LoraResult<()> {
        self.validate()?;
        let max = d_input.min(d_output);
        if self.rank > max {
            return Err(LoraError::RankTooLarge {
                rank: self.rank,
                d_input,
                d_output,
                max,
            });
        }
        Ok(())
    }
}
