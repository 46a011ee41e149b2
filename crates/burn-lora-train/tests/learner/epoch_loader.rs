//! `EpochDataLoader`: every epoch visits every item once, epoch `e`'s order depends only on the
//! seed and `e`, and the copies the Learner makes keep that order.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoader;
use burn::data::dataset::InMemDataset;
use burn_lora_support::backend::Inference as B;
use burn_lora_train::{EpochDataLoaderBuilder, TrainError};

#[derive(Clone)]
struct Ids;

impl Batcher<B, usize, Vec<usize>> for Ids {
    fn batch(&self, items: Vec<usize>, _device: &burn::tensor::Device<B>) -> Vec<usize> {
        items
    }
}

fn builder(seed: u64) -> EpochDataLoaderBuilder<B, usize, Vec<usize>> {
    EpochDataLoaderBuilder::new(Ids).batch_size(4).shuffle(seed)
}

fn epoch(loader: &dyn DataLoader<B, Vec<usize>>) -> Vec<Vec<usize>> {
    loader.iter().collect()
}

const ITEMS: usize = 10;

fn dataset() -> InMemDataset<usize> {
    InMemDataset::new((0..ITEMS).collect())
}

#[test]
fn each_epoch_visits_every_item_once_in_its_own_order() {
    let loader = builder(3).build(dataset()).unwrap();
    let epochs: Vec<Vec<Vec<usize>>> = (0..3).map(|_| epoch(&*loader)).collect();
    for batches in &epochs {
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let mut all = batches.concat();
        all.sort_unstable();
        assert_eq!(all, (0..ITEMS).collect::<Vec<_>>());
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(epochs[1], epochs[2]);
    // The same seed replays the same epochs; another seed does not.
    let again = builder(3).build(dataset()).unwrap();
    assert_eq!(epoch(&*again), epochs[0]);
    let other = builder(4).build(dataset()).unwrap();
    assert_ne!(epoch(&*other), epochs[0]);
}

#[test]
fn resuming_after_k_epochs_replays_epoch_k_plus_one() {
    let loader = builder(3).build(dataset()).unwrap();
    let epochs: Vec<_> = (0..3).map(|_| epoch(&*loader)).collect();
    let resumed = builder(3).resume_after(2).build(dataset()).unwrap();
    assert_eq!(epoch(&*resumed), epochs[2]);
}

#[test]
fn device_copies_continue_the_count_and_slices_partition_each_epoch() {
    let loader = builder(3).build(dataset()).unwrap();
    let reference = builder(3).build(dataset()).unwrap();
    let first = epoch(&*reference);
    let second = epoch(&*reference);

    assert_eq!(epoch(&*loader), first);
    let moved = loader.to_device(&Default::default());
    assert_eq!(epoch(&*moved), second);

    // Two devices' slices of the next epoch (the third) cover it exactly once together.
    let (low, high) = (loader.slice(0, 6), loader.slice(6, ITEMS));
    assert_eq!((low.num_items(), high.num_items()), (6, 4));
    let mut all = [epoch(&*low).concat(), epoch(&*high).concat()].concat();
    all.sort_unstable();
    assert_eq!(all, (0..ITEMS).collect::<Vec<_>>());
}

#[test]
fn a_zero_batch_size_is_an_error() {
    let error = EpochDataLoaderBuilder::<B, usize, Vec<usize>>::new(Ids)
        .batch_size(0)
        .build(dataset())
        .err()
        .expect("batch size 0 must fail");
    assert!(matches!(error, TrainError::InvalidLoader(_)), "{error}");
}
