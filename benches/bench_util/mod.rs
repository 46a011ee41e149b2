//! Helpers shared by the benches.
#![allow(dead_code)]

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// Waits for an asynchronous backend (CUDA) so the work lands inside the timed region.
pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("backend sync");
}

/// One optimizer step (lr 1e-3) on the model in `slot`: forward and loss by `loss`, backward,
/// update, then [`sync`]. The model lives in an `Option` so criterion's closure can move it.
pub fn step<B, M, O>(
    slot: &mut Option<M>,
    optim: &mut O,
    device: &B::Device,
    loss: impl Fn(&M) -> Tensor<B, 1>,
) where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let model = slot.take().expect("model");
    let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
    *slot = Some(optim.step(1e-3, model, grads));
    sync::<B>(device);
}
