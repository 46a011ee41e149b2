//! MNIST for burn-dataset and Burn's data loaders: [`MnistSplit`] is a `Dataset` of
//! [`MnistItem`]s, and [`MnistBatcher`] turns items into normalised tensors.
//!
//! ```
//! use burn::data::dataloader::DataLoaderBuilder;
//! use burn_lora_support::backend::Inference as B;
//! use burn_lora_support::mnist::{MnistBatcher, MnistSplit};
//!
//! // Three blank images labelled 3, 7 and 1.
//! let split = MnistSplit::new(vec![0; 3 * 784], vec![3, 7, 1])?;
//! let loader = DataLoaderBuilder::<B, _, _>::new(MnistBatcher)
//!     .batch_size(2)
//!     .shuffle(0)
//!     .build(split);
//! let sizes: Vec<usize> = loader.iter().map(|batch| batch.targets.dims()[0]).collect();
//! assert_eq!(sizes, [2, 1]);
//! # Ok::<(), burn_lora_support::DataError>(())
//! ```

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::split::{normalize, MnistSplit};
use super::PIXELS;

/// One image: its 784 raw pixels, row-major, and its label 0–9.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MnistItem {
    /// Raw pixel bytes.
    pub image: [u8; PIXELS],
    /// The digit.
    pub label: u8,
}

impl Dataset<MnistItem> for MnistSplit {
    fn get(&self, index: usize) -> Option<MnistItem> {
        let image = self.image(index)?.try_into().ok()?;
        let label = *self.labels().get(index)?;
        Some(MnistItem { image, label })
    }

    fn len(&self) -> usize {
        MnistSplit::len(self)
    }
}

/// A batch of images: normalised pixels `[n, 784]` ([`normalize`]) and labels `[n]`.
#[derive(Clone, Debug)]
pub struct MnistBatch<B: Backend> {
    /// `[n, 784]`, normalised as the notebook does.
    pub images: Tensor<B, 2>,
    /// `[n]`, the digits.
    pub targets: Tensor<B, 1, Int>,
}

/// Batches [`MnistItem`]s into an [`MnistBatch`] on the given device.
#[derive(Clone, Copy, Debug, Default)]
pub struct MnistBatcher;

impl<B: Backend> Batcher<B, MnistItem, MnistBatch<B>> for MnistBatcher {
    fn batch(&self, items: Vec<MnistItem>, device: &B::Device) -> MnistBatch<B> {
        let count = items.len();
        let pixels: Vec<f32> = items
            .iter()
            .flat_map(|item| item.image.iter().copied().map(normalize))
            .collect();
        let labels: Vec<i64> = items.iter().map(|item| i64::from(item.label)).collect();
        MnistBatch {
            images: Tensor::from_data(TensorData::new(pixels, [count, PIXELS]), device),
            targets: Tensor::from_data(TensorData::new(labels, [count]), device),
        }
    }
}
