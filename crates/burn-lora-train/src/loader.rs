//! [`EpochDataLoader`]: Burn's `Dataset` and `Batcher`, shuffled per epoch by `(seed, epoch)`.
//!
//! Burn's `DataLoaderBuilder::shuffle(seed)` draws each epoch's order from one random
//! generator that advances with every epoch and is forked when the Learner moves the loader to
//! its device. A run resumed at epoch `k + 1` starts that generator afresh, so it sees epoch 1's
//! order again and ends with a different model than the uninterrupted run. Here epoch `e`'s
//! order is burn-dataset's `ShuffledDataset::new(dataset, seed + e)`: the same in both.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::transform::{PartialDataset, ShuffledDataset};
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;

use crate::error::{Result, TrainError};

/// Builds an [`EpochDataLoader`]; the settings mirror Burn's `DataLoaderBuilder`.
///
/// ```
/// use burn::backend::Flex;
/// use burn::data::dataloader::batcher::Batcher;
/// use burn::data::dataset::InMemDataset;
/// use burn_lora_train::EpochDataLoaderBuilder;
///
/// #[derive(Clone)]
/// struct Sum;
/// impl Batcher<Flex, u32, u32> for Sum {
///     fn batch(&self, items: Vec<u32>, _device: &burn::backend::flex::FlexDevice) -> u32 {
///         items.iter().sum()
///     }
/// }
///
/// let loader = EpochDataLoaderBuilder::<Flex, u32, u32>::new(Sum)
///     .batch_size(4)
///     .shuffle(7)
///     .build(InMemDataset::new((0..10).collect()))?;
/// let epoch_1: Vec<u32> = loader.iter().collect();
/// assert_eq!(epoch_1.len(), 3); // batches of 4, 4 and 2
/// assert_eq!(epoch_1.iter().sum::<u32>(), 45); // every item once
///
/// // Resuming after epoch 1 replays epoch 2's order exactly.
/// let epoch_2: Vec<u32> = loader.iter().collect();
/// let resumed = EpochDataLoaderBuilder::<Flex, u32, u32>::new(Sum)
///     .batch_size(4)
///     .shuffle(7)
///     .resume_after(1)
///     .build(InMemDataset::new((0..10).collect()))?;
/// assert_eq!(resumed.iter().collect::<Vec<u32>>(), epoch_2);
/// # Ok::<(), burn_lora_train::TrainError>(())
/// ```
pub struct EpochDataLoaderBuilder<B: Backend, I, O> {
    batcher: Arc<dyn Batcher<B, I, O>>,
    batch_size: usize,
    seed: Option<u64>,
    epochs_done: usize,
    device: Option<B::Device>,
}

impl<B, I, O> EpochDataLoaderBuilder<B, I, O>
where
    B: Backend,
    I: Send + Sync + Clone + 'static,
    O: Send + 'static,
{
    /// A builder batching items with `batcher`, one item per batch, in dataset order.
    pub fn new(batcher: impl Batcher<B, I, O> + 'static) -> Self {
        Self {
            batcher: Arc::new(batcher),
            batch_size: 1,
            seed: None,
            epochs_done: 0,
            device: None,
        }
    }

    /// Items per batch (the last batch of an epoch may be shorter); at least 1.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Shuffles every epoch: epoch `e` (counted from 1, as the Learner does) visits the items in
    /// the order of `ShuffledDataset::new(dataset, seed + e)`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// For a run resumed from the checkpoint of epoch `epochs_done` (the number given to
    /// `SupervisedTraining::checkpoint`): the first iteration is epoch `epochs_done + 1`.
    pub fn resume_after(mut self, epochs_done: usize) -> Self {
        self.epochs_done = epochs_done;
        self
    }

    /// The device batches are built on (the backend's default otherwise; the Learner moves
    /// the loader to its training device anyway).
    pub fn set_device(mut self, device: B::Device) -> Self {
        self.device = Some(device);
        self
    }

    /// The loader over `dataset`.
    ///
    /// # Errors
    /// [`TrainError::InvalidLoader`] when the batch size is 0.
    pub fn build(self, dataset: impl Dataset<I> + 'static) -> Result<Arc<dyn DataLoader<B, O>>> {
        if self.batch_size == 0 {
            return Err(TrainError::InvalidLoader(
                "the batch size must be at least 1, got 0".into(),
            ));
        }
        let dataset: Arc<dyn Dataset<I>> = Arc::new(dataset);
        let range = (0, dataset.len());
        Ok(Arc::new(EpochDataLoader {
            dataset,
            batcher: self.batcher,
            batch_size: self.batch_size,
            seed: self.seed,
            next_epoch: AtomicUsize::new(self.epochs_done + 1),
            device: self.device.unwrap_or_default(),
            range,
        }))
    }
}

/// A `DataLoader` over a burn-dataset `Dataset`, batched by a Burn `Batcher`, whose epoch `e`
/// order depends only on the seed and `e` (see [`EpochDataLoaderBuilder`]).
///
/// Each call to `iter` is the next epoch. The copies the Learner makes (`to_device`, and
/// `slice` for each device of a multi-device strategy) continue the count from where this
/// loader is, each on its own; the slices of one epoch partition that epoch's order.
pub struct EpochDataLoader<B: Backend, I, O> {
    dataset: Arc<dyn Dataset<I>>,
    batcher: Arc<dyn Batcher<B, I, O>>,
    batch_size: usize,
    seed: Option<u64>,
    next_epoch: AtomicUsize,
    device: B::Device,
    /// The part of each epoch's order this loader serves (all of it unless sliced).
    range: (usize, usize),
}

impl<B: Backend, I, O> EpochDataLoader<B, I, O> {
    fn derived(&self, device: B::Device, range: (usize, usize)) -> Self {
        Self {
            dataset: self.dataset.clone(),
            batcher: self.batcher.clone(),
            batch_size: self.batch_size,
            seed: self.seed,
            next_epoch: AtomicUsize::new(self.next_epoch.load(Ordering::SeqCst)),
            device,
            range,
        }
    }
}

impl<B, I, O> DataLoader<B, O> for EpochDataLoader<B, I, O>
where
    B: Backend,
    I: Send + Sync + Clone + 'static,
    O: Send + 'static,
{
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        let ordered: Arc<dyn Dataset<I>> = match self.seed {
            Some(seed) => Arc::new(ShuffledDataset::new(
                self.dataset.clone(),
                seed.wrapping_add(epoch as u64),
            )),
            None => self.dataset.clone(),
        };
        let (start, end) = self.range;
        Box::new(EpochIterator {
            items: PartialDataset::new(ordered, start, end),
            batcher: self.batcher.clone(),
            batch_size: self.batch_size,
            device: self.device.clone(),
            next: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.range.1 - self.range.0
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, O>> {
        Arc::new(self.derived(device.clone(), self.range))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, O>> {
        let (first, last) = self.range;
        let start = (first + start).min(last);
        let end = (first + end).clamp(start, last);
        Arc::new(self.derived(self.device.clone(), (start, end)))
    }
}

/// One epoch: consecutive runs of `batch_size` items handed to the batcher.
struct EpochIterator<B: Backend, I, O> {
    items: PartialDataset<Arc<dyn Dataset<I>>, I>,
    batcher: Arc<dyn Batcher<B, I, O>>,
    batch_size: usize,
    device: B::Device,
    next: usize,
}

impl<B: Backend, I: Send + Sync + Clone, O> Iterator for EpochIterator<B, I, O> {
    type Item = O;

    fn next(&mut self) -> Option<O> {
        let end = (self.next + self.batch_size).min(self.items.len());
        let batch: Vec<I> = (self.next..end)
            .filter_map(|index| self.items.get(index))
            .collect();
        self.next = end;
        if batch.is_empty() {
            return None;
        }
        Some(self.batcher.batch(batch, &self.device))
    }
}

impl<B: Backend, I: Send + Sync + Clone, O> DataLoaderIterator<O> for EpochIterator<B, I, O> {
    fn progress(&self) -> Progress {
        Progress::new(self.next, self.items.len())
    }
}
