//! [`CheckpointSafe`]: an optimizer whose records own their tensors, so that burn-train's
//! checkpointer thread never reads a tensor that the training thread goes on using.

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, LearningRate, MultiGradientsParams, Optimizer};
use burn::record::{DoublePrecisionSettings, Record};
use burn::tensor::backend::{AutodiffBackend, Backend};

/// Wraps an optimizer so that the record it hands to the Learner's checkpointer holds copies of
/// its state's tensors, made on the training thread, rather than clones that share the tensors
/// the next step consumes.
///
/// burn-train 0.21 saves a checkpoint on a thread of its own (`AsyncCheckpointer`), which reads
/// the record's tensors while training goes on. On Burn's fused backends (`wgpu` and `cuda`,
/// whose `Fusion` client counts a tensor's clones to decide which operation may consume it)
/// that read races the next step's update of the same moments, and the run aborts with
/// `Should have handle for tensor` followed by `CallError` and a panic in the checkpointer's
/// destructor ([tracel-ai/burn#4347](https://github.com/tracel-ai/burn/issues/4347)). It
/// happens with Burn's own `Adam` as with `burn-fused-adam`, in about one run in two of this
/// crate's `learner` tests on wgpu. Wrapped, the optimizer's record is read back to the host
/// and uploaded again before the Learner sends it away: its tensors are new ones that no step
/// touches. The copy costs one round trip of the optimizer state per checkpoint (a LoRA run's
/// state is the adapters' moments: kilobytes), and on CPU backends it is only that copy.
///
/// The copy goes through [`DoublePrecisionSettings`], so every float and integer element type
/// up to `f64`/`i64` survives it unchanged; the tensors come back as the backend's element
/// types, as when Burn loads any record.
///
/// Steps and loaded records pass through unchanged. The model's record needs no wrapper when
/// the model is a [`TrainableOnly`](crate::TrainableOnly): its record's values are new tensors
/// (each parameter flattened), not clones of the parameters.
///
/// ```
/// use burn::backend::{Autodiff, Flex};
/// use burn::optim::{AdamConfig, Optimizer};
/// use burn_lora::{LoraMlp, LoraMlpConfig};
/// use burn_lora_train::CheckpointSafe;
///
/// type B = Autodiff<Flex>;
/// let device = Default::default();
/// let optim = CheckpointSafe::new(AdamConfig::new().init::<B, LoraMlp<B>>(), device);
/// // Give `optim` to `Learner::new` in place of the optimizer.
/// let record = Optimizer::<LoraMlp<B>, B>::to_record(&optim);
/// assert!(record.is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct CheckpointSafe<O, D> {
    inner: O,
    device: D,
}

impl<O, D> CheckpointSafe<O, D> {
    /// Wraps `optimizer`; its records' copies are made on `device`.
    pub fn new(optimizer: O, device: D) -> Self {
        Self {
            inner: optimizer,
            device,
        }
    }

    /// The wrapped optimizer.
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// Unwraps the optimizer.
    pub fn into_inner(self) -> O {
        self.inner
    }
}

impl<M, B, O> Optimizer<M, B> for CheckpointSafe<O, B::Device>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    O: Optimizer<M, B>,
{
    type Record = O::Record;

    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        self.inner.step(lr, module, grads)
    }

    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        self.inner.step_multi(lr, module, grads)
    }

    fn to_record(&self) -> Self::Record {
        owned_copy(self.inner.to_record(), &self.device)
    }

    fn load_record(self, record: Self::Record) -> Self {
        Self {
            inner: self.inner.load_record(record),
            device: self.device,
        }
    }
}

/// `record` with every tensor read to the host and uploaded to `device` again: the same values
/// in tensors that share nothing with the original's.
fn owned_copy<B: Backend, R: Record<B>>(record: R, device: &B::Device) -> R {
    R::from_item::<DoublePrecisionSettings>(record.into_item(), device)
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Distribution, Tensor};

    use super::CheckpointSafe;

    type B = Autodiff<Flex>;

    fn step<O: Optimizer<Linear<B>, B>>(optim: &mut O, model: Linear<B>, seed: u64) -> Linear<B> {
        let device = Default::default();
        B::seed(&device, seed);
        let x = Tensor::<B, 2>::random([4, 3], Distribution::Default, &device);
        let grads = GradientsParams::from_grads(model.forward(x).sum().backward(), &model);
        optim.step(1e-2, model, grads)
    }

    fn weights(model: &Linear<B>) -> burn::tensor::TensorData {
        model.weight.val().into_data()
    }

    /// The wrapped optimizer steps as the bare one, and its copied record, loaded into a fresh
    /// optimizer, continues exactly as the bare one does.
    #[test]
    fn steps_and_copied_records_are_the_bare_optimizers() {
        let device = Default::default();
        let model: Linear<B> = LinearConfig::new(3, 2).init(&device);
        let adam = || AdamConfig::new().init::<B, Linear<B>>();
        let mut bare = adam();
        let mut safe = CheckpointSafe::new(adam(), device);
        let (mut a, mut b) = (model.clone(), model);
        for seed in 0..3 {
            a = step(&mut bare, a, seed);
            b = step(&mut safe, b, seed);
        }
        assert_eq!(weights(&a), weights(&b));

        let record = Optimizer::<Linear<B>, B>::to_record(&safe);
        // The weight's and the bias's state.
        assert_eq!(record.len(), 2);
        let mut reloaded = CheckpointSafe::new(adam(), device).load_record(record);
        let a = step(&mut bare, a, 3);
        let b = step(&mut reloaded, b, 3);
        assert_eq!(weights(&a), weights(&b));
        // A fresh optimizer (no state) would have stepped differently.
        let mut fresh = adam();
        let c = step(&mut fresh, b.clone(), 4);
        let b = step(&mut reloaded, b, 4);
        assert_ne!(weights(&b), weights(&c));
    }
}
