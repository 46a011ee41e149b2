//! [`FusedAdamConfig`] and [`FusedAdam`]: Adam and AdamW with one fused update pass on CPU backends.

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::error::{InvalidSetting, Result as SettingResult};
use crate::host_tensors::fused_adam_in_place;
use crate::kernel::AdamCoefficients;

/// Configuration of [`FusedAdam`]: Adam (Kingma & Ba) with optional L2 or decoupled (AdamW)
/// weight decay. The defaults are PyTorch's: `β = (0.9, 0.999)`, `ε = 1e-8`, no weight decay.
///
/// A drop-in for Burn's `AdamConfig` in any training loop: [`init`](Self::init) returns Burn's
/// `OptimizerAdaptor`, which implements `burn::optim::Optimizer` for every module. The
/// arithmetic is Burn's Adam, operation for operation; what differs is how it runs. On the NdArray
/// and Flex backends every parameter is updated in one fused pass over its buffers, split across
/// threads, instead of a dozen separate tensor operations, which makes the optimizer step
/// several times faster (see the `train_step` bench). On other backends, and for tensors the
/// fused pass cannot take (not contiguous `f32`), it falls back to the same update as tensor
/// operations, which fusing backends (CUDA) combine themselves. [`UpdateCounts`] tells which
/// path ran.
///
/// One difference from Burn's Adam, on both paths alike: gradients and first moments below
/// `1e-16` in magnitude, and second moments below `1e-32`, are flushed to zero (the limits are
/// lower in the first steps, and far lower for an epsilon so small that they would matter).
/// Flushing changes an update by at most about `lr · 1e-8 / (1 - β₁)` (`lr · 1e-7` with the
/// default `β₁`), below the resolution of an `f32` parameter of size 1; without it, a parameter
/// whose gradient has died out drives its moments into subnormal floats, whose arithmetic slows
/// the fused step several times over. The two paths agree to rounding.
///
/// ```
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::{GradientsParams, Optimizer};
/// use burn_fused_adam::FusedAdamConfig;
/// use burn_lora_support::backend::Train;
///
/// let device = Default::default();
/// let model: Linear<Train> = LinearConfig::new(8, 4).init(&device);
/// let mut optim = FusedAdamConfig::new().with_weight_decay(0.01).init::<Train, Linear<Train>>()?;
///
/// let x = burn::tensor::Tensor::<Train, 2>::ones([3, 8], &device);
/// let loss = model.forward(x).powi_scalar(2).mean();
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// let model = optim.step(1e-3, model, grads);
///
/// // A bad setting is an error, not a panic.
/// assert!(FusedAdamConfig::new().with_beta_1(1.0).init::<Train, Linear<Train>>().is_err());
/// # Ok::<(), burn_fused_adam::InvalidSetting>(())
/// ```
#[derive(Config, Debug)]
pub struct FusedAdamConfig {
    /// Decay rate of the first moment, in `[0, 1)`.
    #[config(default = 0.9)]
    pub beta_1: f32,
    /// Decay rate of the second moment, in `[0, 1)`.
    #[config(default = 0.999)]
    pub beta_2: f32,
    /// Added to the root of the second moment; finite and `> 0`.
    #[config(default = 1e-8)]
    pub epsilon: f32,
    /// Weight decay `λ`, finite and `≥ 0`; 0 turns it off.
    #[config(default = 0.0)]
    pub weight_decay: f32,
    /// `true`: decoupled decay `θ ← θ(1 - lr·λ)` (AdamW). `false`: L2 penalty `g ← g + λθ` (Adam).
    #[config(default = false)]
    pub decoupled_weight_decay: bool,
    /// Gradient clipping, applied before the update.
    pub grad_clipping: Option<GradientClippingConfig>,
}

impl FusedAdamConfig {
    /// AdamW: decoupled weight decay `λ` with the other settings at their defaults.
    pub fn adamw(weight_decay: f32) -> Self {
        Self::new()
            .with_weight_decay(weight_decay)
            .with_decoupled_weight_decay(true)
    }

    /// Checks every setting; [`init`](Self::init) calls this.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first setting out of range.
    pub fn validate(&self) -> SettingResult<()> {
        let check = |name: &str, value: f32, ok: bool, expected: &str| {
            if ok {
                Ok(())
            } else {
                Err(InvalidSetting {
                    name: name.to_string(),
                    value: value as f64,
                    expected: expected.to_string(),
                })
            }
        };
        let beta_ok = |b: f32| (0.0..1.0).contains(&b);
        check("beta_1", self.beta_1, beta_ok(self.beta_1), "in [0, 1)")?;
        check("beta_2", self.beta_2, beta_ok(self.beta_2), "in [0, 1)")?;
        let eps = self.epsilon;
        check(
            "epsilon",
            eps,
            eps.is_finite() && eps > 0.0,
            "finite and > 0",
        )?;
        let wd = self.weight_decay;
        check(
            "weight_decay",
            wd,
            wd.is_finite() && wd >= 0.0,
            "finite and >= 0",
        )
    }

    /// The optimizer itself, for use as a [`SimpleOptimizer`].
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn build(&self) -> SettingResult<FusedAdam> {
        self.validate()?;
        Ok(FusedAdam {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            decoupled: self.decoupled_weight_decay,
        })
    }

    /// The optimizer for module `M` on backend `B`, ready for `Optimizer::step`.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
    ) -> SettingResult<OptimizerAdaptor<FusedAdam, M, B>> {
        let mut optim = OptimizerAdaptor::from(self.build()?);
        if let Some(clipping) = &self.grad_clipping {
            optim = optim.with_grad_clipping(clipping.init());
        }
        Ok(optim)
    }
}

/// Adam / AdamW whose update is one fused pass on CPU backends. Build it with
/// [`FusedAdamConfig`].
///
/// A saved state whose moments do not have the parameter's shape (a record loaded from another
/// model) is ignored for that parameter, which starts again from zero moments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    decoupled: bool,
}

/// The per-parameter state of [`FusedAdam`]: the step count and both moment estimates.
#[derive(Record, Clone)]
pub struct FusedAdamState<B: Backend, const D: usize> {
    /// Steps taken so far.
    pub time: usize,
    /// First-moment (mean) estimate, not bias-corrected.
    pub moment_1: Tensor<B, D>,
    /// Second-moment (uncentred variance) estimate, not bias-corrected.
    pub moment_2: Tensor<B, D>,
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = FusedAdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        // A missing state is the all-zero one: the first step then gives Burn's first step.
        // So is a state whose moments do not have the parameter's shape (a record loaded from
        // another model): starting afresh beats panicking or broadcasting it.
        let shape = tensor.shape();
        let state = state.filter(|s| s.moment_1.shape() == shape && s.moment_2.shape() == shape);
        let (time, moment_1, moment_2) = match state {
            Some(state) => (state.time, state.moment_1, state.moment_2),
            None => (0, tensor.zeros_like(), tensor.zeros_like()),
        };
        let time = time + 1;
        let c = AdamCoefficients::new(
            self.beta_1,
            self.beta_2,
            self.epsilon,
            lr,
            self.weight_decay,
            self.decoupled,
            time,
        );

        let mut param = float_primitive(tensor);
        let mut grad = float_primitive(grad);
        let mut moment_1 = float_primitive(moment_1);
        let mut moment_2 = float_primitive(moment_2);
        let fused = fused_adam_in_place(&mut param, &mut grad, &mut moment_1, &mut moment_2, &c);
        UpdateCounts::count(fused);

        let [param, grad, moment_1, moment_2] = [param, grad, moment_1, moment_2]
            .map(|p| Tensor::from_primitive(TensorPrimitive::Float(p)));
        let (param, moment_1, moment_2) = if fused {
            (param, moment_1, moment_2)
        } else {
            tensor_update(param, grad, moment_1, moment_2, &c)
        };
        let state = FusedAdamState {
            time,
            moment_1,
            moment_2,
        };
        (param, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        FusedAdamState {
            time: state.time,
            moment_1: state.moment_1.to_device(device),
            moment_2: state.moment_2.to_device(device),
        }
    }
}

/// How many parameter updates [`FusedAdam`] has made on the calling thread, by path: each
/// parameter of each `Optimizer::step` is one update, made on the thread that calls `step`.
/// Tells whether a training loop takes the fast path:
///
/// ```
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::{GradientsParams, Optimizer};
/// use burn_fused_adam::{FusedAdamConfig, UpdateCounts};
/// use burn_lora_support::backend::Train;
///
/// let device = Default::default();
/// let model: Linear<Train> = LinearConfig::new(8, 4).init(&device);
/// let mut optim = FusedAdamConfig::new().init::<Train, Linear<Train>>()?;
/// let x = burn::tensor::Tensor::<Train, 2>::ones([3, 8], &device);
/// let grads = GradientsParams::from_grads(model.forward(x).sum().backward(), &model);
///
/// let before = UpdateCounts::on_this_thread();
/// let model = optim.step(1e-3, model, grads);
/// let made = UpdateCounts::on_this_thread().since(before);
/// // The weight and the bias; on Flex or NdArray, both fused.
/// assert_eq!(made.fused + made.tensor_ops, 2);
/// # Ok::<(), burn_fused_adam::InvalidSetting>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateCounts {
    /// Updates made by the fused pass over the tensors' host memory.
    pub fused: u64,
    /// Updates made by tensor operations: on a backend without the fused path, or for tensors
    /// it cannot take.
    pub tensor_ops: u64,
}

thread_local! {
    static UPDATE_COUNTS: core::cell::Cell<UpdateCounts> = const {
        core::cell::Cell::new(UpdateCounts {
            fused: 0,
            tensor_ops: 0,
        })
    };
}

impl UpdateCounts {
    /// The updates made so far on the calling thread.
    pub fn on_this_thread() -> Self {
        UPDATE_COUNTS.with(|counts| counts.get())
    }

    /// The updates made between `earlier` (an earlier reading on the same thread) and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            fused: self.fused.saturating_sub(earlier.fused),
            tensor_ops: self.tensor_ops.saturating_sub(earlier.tensor_ops),
        }
    }

    /// Counts one update on the calling thread.
    fn count(fused: bool) {
        UPDATE_COUNTS.with(|counts| {
            let mut c = counts.get();
            if fused {
                c.fused += 1;
            } else {
                c.tensor_ops += 1;
            }
            counts.set(c);
        });
    }
}

/// The tensor's float primitive (a quantized tensor is dequantized).
fn float_primitive<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> B::FloatTensorPrimitive {
    tensor.into_primitive().tensor()
}

/// The same update as the fused kernel, as tensor operations, for backends without host memory.
fn tensor_update<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moment_1: Tensor<B, D>,
    moment_2: Tensor<B, D>,
    c: &AdamCoefficients,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    let grad = if c.l2_penalty != 0.0 {
        param.clone().mul_scalar(c.l2_penalty).add(grad)
    } else {
        grad
    };
    let grad = flush(grad, c.tiny);
    let moment_1 = flush(
        moment_1
            .mul_scalar(c.beta_1)
            .add(grad.clone().mul_scalar(1.0 - c.beta_1)),
        c.tiny,
    );
    let moment_2 = flush(
        moment_2
            .mul_scalar(c.beta_2)
            .add(grad.square().mul_scalar(1.0 - c.beta_2)),
        c.tiny_square,
    );
    let step = moment_1
        .clone()
        .mul_scalar(c.correction)
        .div(moment_2.clone().sqrt().add_scalar(c.epsilon))
        .mul_scalar(c.lr);
    let param = if c.decay != 1.0 {
        param.mul_scalar(c.decay)
    } else {
        param
    };
    (param.sub(step), moment_1, moment_2)
}

/// `x` with the elements smaller than `tiny` in magnitude set to zero (NaN stays NaN), as the
/// fused kernel does.
///
/// Two comparisons rather than `abs`: NdArray 0.21's `abs` of a shared tensor that is not in
/// standard layout (a transposed gradient) writes its values in memory order into a row-major
/// output, so the mask would land on the wrong elements.
fn flush<B: Backend, const D: usize>(x: Tensor<B, D>, tiny: f32) -> Tensor<B, D> {
    let small = x
        .clone()
        .lower_elem(tiny)
        .bool_and(x.clone().greater_elem(-tiny));
    x.mask_fill(small, 0.0)
}

#[cfg(all(test, any(feature = "ndarray", feature = "flex")))]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::*;
    use crate::kernel::adam_update;
    use burn_lora_support::backend::Inference;

    fn host(t: &Tensor<Inference, 2>) -> Vec<f32> {
        t.to_data().to_vec().unwrap()
    }

    /// A state of the wrong shape is replaced by a fresh one instead of panicking.
    #[test]
    fn mismatched_state_starts_afresh() {
        let device = Default::default();
        let optim = FusedAdamConfig::new().build().unwrap();
        let param = Tensor::<Inference, 2>::ones([3, 4], &device);
        let grad = Tensor::<Inference, 2>::ones([3, 4], &device);
        let (fresh, _) = optim.step(1e-2, param.clone(), grad.clone(), None);
        let wrong = FusedAdamState {
            time: 7,
            moment_1: Tensor::<Inference, 2>::ones([4, 3], &device),
            moment_2: Tensor::<Inference, 2>::ones([4, 3], &device),
        };
        let (updated, state) = optim.step(1e-2, param, grad, Some(wrong));
        assert_eq!(host(&updated), host(&fresh));
        let state = state.unwrap();
        assert_eq!(state.time, 1);
        assert_eq!(state.moment_1.dims(), [3, 4]);
    }

    /// The flush finds the small values of a transposed tensor that another holder shares (a
    /// gradient Burn keeps), where they are, and keeps NaN and infinities.
    #[test]
    fn flush_finds_small_values_of_a_shared_transposed_tensor() {
        let device = Default::default();
        let values = [
            1e-20,
            2.0,
            -5e-17,
            f32::NAN,
            3e-16,
            f32::NEG_INFINITY,
            0.0,
            -4.0,
        ];
        let expected = [0.0, 2.0, 0.0, f32::NAN, 3e-16, f32::NEG_INFINITY, 0.0, -4.0];
        let row_major = Tensor::<Inference, 1>::from_floats(values, &device).reshape([2, 4]);
        let transposed = row_major.clone().transpose();
        for (x, transpose) in [(row_major, false), (transposed, true)] {
            // `x.clone()`: the flushed tensor is shared, as a gradient Burn keeps is.
            let flushed = host(&flush(x.clone(), 1e-16));
            let cols = if transpose { 2 } else { 4 };
            let want: Vec<f32> = (0..8)
                .map(|i| {
                    let (r, c) = (i / cols, i % cols);
                    // The transposed tensor's element (r, c) is the original's (c, r).
                    expected[if transpose { c * 4 + r } else { r * 4 + c }]
                })
                .collect();
            for (got, want) in flushed.iter().zip(&want) {
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{flushed:?} vs {want:?}"
                );
            }
        }
    }

    /// The tensor-operation fallback and the fused kernel compute the same update.
    #[test]
    fn tensor_path_matches_the_fused_kernel() {
        let device = Default::default();
        for (weight_decay, decoupled) in [(0.0, false), (0.1, false), (0.1, true)] {
            let shape = [17, 9];
            let draw =
                || Tensor::<Inference, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let (param, grad, moment_1) = (draw(), draw(), draw());
            let moment_2 = draw().abs();
            let c = AdamCoefficients::new(0.9, 0.999, 1e-8, 1e-2, weight_decay, decoupled, 3);

            let (mut p, mut m, mut v) = (host(&param), host(&moment_1), host(&moment_2));
            adam_update(&mut p, &host(&grad), &mut m, &mut v, &c);

            let (tp, tm, tv) = tensor_update(param, grad, moment_1, moment_2, &c);
            for (name, fused, tensor) in [("param", p, tp), ("m", m, tm), ("v", v, tv)] {
                for (a, b) in fused.iter().zip(host(&tensor)) {
                    assert!(
                        (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                        "{name}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
