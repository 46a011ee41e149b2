//! Helpers shared by the benches.
#![allow(dead_code)]

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use burn_fused_adam::FusedAdamConfig;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId};

/// Waits for an asynchronous backend (CUDA) so the work lands inside the timed region.
pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("backend sync");
}

/// One optimizer step (lr 1e-3) on the model in `slot`: forward and loss by `loss`, backward,
/// update, then [`sync`]. The model lives in an `Option` so criterion's closure can move it.
/// The step runs on the CPU backend's threads (`burn_lora_kernels::on_compute_threads`), as the
/// README advises for training on Flex.
pub fn step<B, M, O>(
    slot: &mut Option<M>,
    optim: &mut O,
    device: &B::Device,
    loss: impl Fn(&M) -> Tensor<B, 1> + Sync,
) where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B> + Send,
{
    let model = slot.take().expect("model");
    let model = burn_lora_kernels::on_compute_threads(|| {
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        optim.step(1e-3, model, grads)
    });
    *slot = Some(model);
    sync::<B>(device);
}

/// Times [`step`] of `model` with `optim` as benchmark `id` of `group`.
pub fn bench_training<B, M, O>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    model: M,
    mut optim: O,
    device: &B::Device,
    loss: impl Fn(&M) -> Tensor<B, 1> + Sync,
) where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B> + Send,
{
    let mut slot = Some(model);
    group.bench_function(id, |bencher| {
        bencher.iter(|| step(&mut slot, &mut optim, device, &loss))
    });
}

/// [`bench_training`] with burn-lora's `FusedAdam` at its default settings.
pub fn bench_fused_adam<B, M>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    model: M,
    device: &B::Device,
    loss: impl Fn(&M) -> Tensor<B, 1> + Sync,
) where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let optim = FusedAdamConfig::new()
        .init::<B, M>()
        .expect("default Adam settings are valid");
    bench_training(group, id, model, optim, device, loss);
}
