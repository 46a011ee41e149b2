//! Training loops: Adam on cross-entropy over given batches, with a progress bar of the running loss.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use burn_fused_adam::FusedAdamConfig;
use burn_lora::LoraMlp;
use burn_lora_support::mnist::MnistSplit;
use indicatif::{ProgressBar, ProgressStyle};

/// Hyper-parameters of one training run.
pub struct TrainSettings<'a> {
    /// Progress-bar label.
    pub label: &'a str,
    /// Learning rate.
    pub lr: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Epochs over the split (ignored when `max_steps` stops earlier).
    pub epochs: usize,
    /// Stop after this many steps, if set.
    pub max_steps: Option<usize>,
    /// Seed of the batch order.
    pub seed: u64,
}

/// Trains every parameter that requires a gradient (all of them before `attach`, only the
/// adapters after) with Adam (PyTorch's defaults: betas 0.9/0.999, eps 1e-8; burn-lora's fused
/// update) and returns the model
/// and the final running loss.
pub fn train<B: AutodiffBackend>(
    mut model: LoraMlp<B>,
    split: &MnistSplit,
    settings: &TrainSettings,
) -> Result<(LoraMlp<B>, f64), Box<dyn std::error::Error>>
where
    LoraMlp<B>: AutodiffModule<B>,
{
    let device = model.layers()[0].weight().device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = FusedAdamConfig::new().init::<B, LoraMlp<B>>()?;

    let mut batches = Vec::new();
    for epoch in 0..settings.epochs {
        batches.extend(split.epoch_batches(settings.batch_size, settings.seed + epoch as u64)?);
    }
    if let Some(max) = settings.max_steps {
        batches.truncate(max);
    }

    let bar = ProgressBar::new(batches.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {wide_bar} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] loss={prefix}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(settings.label.to_string());
    let mut loss_sum = 0.0;
    let mut printed_tenth = 0;
    for (step, indices) in batches.iter().enumerate() {
        let (x, y) = split.batch::<B>(indices, &device)?;
        let loss = loss_fn.forward(model.forward(x), y);
        loss_sum += loss.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(settings.lr, model, grads);
        if step % 50 == 0 || step + 1 == batches.len() {
            let running = loss_sum / (step + 1) as f64;
            bar.set_prefix(format!("{running:.4}"));
            bar.set_position(step as u64 + 1);
            // Without a terminal (CI logs) the bar is hidden: print a line every tenth instead.
            let tenth = (step + 1) * 10 / batches.len();
            if bar.is_hidden() && tenth > printed_tenth {
                printed_tenth = tenth;
                println!(
                    "{} step {}/{} loss={running:.4}",
                    settings.label,
                    step + 1,
                    batches.len()
                );
            }
        }
    }
    bar.finish();
    Ok((model, loss_sum / batches.len().max(1) as f64))
}
