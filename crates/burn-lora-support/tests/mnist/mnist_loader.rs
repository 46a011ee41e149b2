//! `burn_lora_support::mnist`: IDX parsing (plain and gzipped), the search order, the in-memory split
//! as a burn-dataset `Dataset`, batching by Burn's data loader, and every malformed-file case. The tests write their own small IDX files
//! and never touch the network, the real cache or the `MNIST_DIR` variable, except the last one,
//! which reads the real files when `MNIST_DIR` points at them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::Dataset;
use burn::tensor::Tensor;
use burn_lora_support::backend::Inference as B;
use burn_lora_support::mnist::{
    normalize, MnistBatch, MnistBatcher, MnistLoader, MnistSource, MnistSplit, FILE_NAMES, PIXELS,
};
use burn_lora_support::DataError;
use flate2::write::GzEncoder;
use flate2::Compression;
use tempfile::TempDir;

const TRAIN_LABELS: [u8; 5] = [0, 1, 2, 9, 1];
const TEST_LABELS: [u8; 3] = [7, 3, 7];

/// A deterministic pixel value for image `image`, pixel `pixel` of a split (`salt` tells the
/// splits apart); pixel 0 of every image is 0 and pixel 1 is 255.
fn pixel(salt: usize, image: usize, pixel: usize) -> u8 {
    match pixel {
        0 => 0,
        1 => 255,
        _ => ((salt * 31 + image * 7 + pixel * 3) % 256) as u8,
    }
}

fn pixels(salt: usize, count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|image| (0..PIXELS).map(move |p| pixel(salt, image, p)))
        .collect()
}

/// An IDX images file: `header_count` in the header, then `payload` as is.
fn idx_images_with(magic: u32, header_count: u32, rows: u32, cols: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for field in [magic, header_count, rows, cols] {
        bytes.extend_from_slice(&field.to_be_bytes());
    }
    bytes.extend_from_slice(payload);
    bytes
}

fn idx_images(payload: &[u8]) -> Vec<u8> {
    idx_images_with(0x803, (payload.len() / PIXELS) as u32, 28, 28, payload)
}

fn idx_labels_with(magic: u32, header_count: u32, labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&magic.to_be_bytes());
    bytes.extend_from_slice(&header_count.to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    idx_labels_with(0x801, labels.len() as u32, labels)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The four valid files' contents, in `FILE_NAMES` order.
fn valid_files() -> [Vec<u8>; 4] {
    [
        idx_images(&pixels(1, TRAIN_LABELS.len())),
        idx_labels(&TRAIN_LABELS),
        idx_images(&pixels(2, TEST_LABELS.len())),
        idx_labels(&TEST_LABELS),
    ]
}

/// Writes `bytes` as `FILE_NAMES[index]` into `dir`, gzipped as `<name>.gz` if `gz`.
fn write_file(dir: &Path, index: usize, bytes: &[u8], gz: bool) {
    fs::create_dir_all(dir).unwrap();
    let name = FILE_NAMES[index];
    if gz {
        fs::write(dir.join(format!("{name}.gz")), gzip(bytes)).unwrap();
    } else {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Writes all four files into `dir`, file `i` gzipped where `gz[i]`.
fn write_files(dir: &Path, contents: &[Vec<u8>; 4], gz: [bool; 4]) {
    for (index, (bytes, gz)) in contents.iter().zip(gz).enumerate() {
        write_file(dir, index, bytes, gz);
    }
}

/// A temporary data dir and an empty temporary cache dir.
struct Fixture {
    data: TempDir,
    cache: TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            data: TempDir::new().unwrap(),
            cache: TempDir::new().unwrap(),
        }
    }

    fn with_files(contents: &[Vec<u8>; 4], gz: [bool; 4]) -> Self {
        let fixture = Self::new();
        write_files(fixture.data.path(), contents, gz);
        fixture
    }

    /// Looks only in the data dir and the (empty) cache; no env, no network.
    fn loader(&self) -> MnistLoader {
        offline_loader(self.cache.path()).dir(self.data.path())
    }

    fn path_of(&self, index: usize, gz: bool) -> PathBuf {
        let name = FILE_NAMES[index];
        self.data.path().join(if gz {
            format!("{name}.gz")
        } else {
            name.to_string()
        })
    }
}

/// A loader that ignores `MNIST_DIR`, uses `cache` and never downloads.
fn offline_loader(cache: &Path) -> MnistLoader {
    MnistLoader::new()
        .env_dir(None)
        .cache_dir(cache)
        .download(false)
}

/// How a bad file is stored.
#[derive(Clone, Copy)]
enum Store {
    /// As `<name>`, the bytes as given.
    Plain,
    /// As `<name>.gz`, the bytes gzip-compressed.
    Gzipped,
    /// As `<name>.gz`, the bytes as given (not necessarily gzip).
    RawAsGz,
}

/// Loads with the file at `index` replaced by `bad` and returns the error's path and reason,
/// and the path the error should name.
fn invalid_data_for(index: usize, bad: Vec<u8>, store: Store) -> (String, String, PathBuf) {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    fs::remove_file(fixture.path_of(index, false)).unwrap();
    let expected_path = fixture.path_of(index, !matches!(store, Store::Plain));
    let bytes = match store {
        Store::Gzipped => gzip(&bad),
        Store::Plain | Store::RawAsGz => bad,
    };
    fs::write(&expected_path, bytes).unwrap();
    match fixture.loader().load() {
        Err(DataError::InvalidData { path, reason }) => (path, reason, expected_path),
        other => panic!("expected InvalidData, got {other:?}"),
    }
}

fn assert_invalid(index: usize, bad: Vec<u8>, store: Store, reason_contains: &str) {
    let (path, reason, expected_path) = invalid_data_for(index, bad, store);
    assert_eq!(
        path,
        expected_path.display().to_string(),
        "path names the file"
    );
    assert!(
        reason.contains(reason_contains),
        "reason {reason:?} should contain {reason_contains:?}"
    );
}

fn floats(tensor: Tensor<B, 2>) -> Vec<f32> {
    tensor.into_data().iter::<f32>().collect()
}

// ---- round trips ----------------------------------------------------------------------------

#[test]
fn plain_files_round_trip_pixels_and_labels_and_report_the_dir() {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    let mnist = fixture.loader().load().unwrap();
    assert_eq!(mnist.train.len(), TRAIN_LABELS.len());
    assert_eq!(mnist.test.len(), TEST_LABELS.len());
    assert_eq!(mnist.train.labels(), &TRAIN_LABELS);
    assert_eq!(mnist.test.labels(), &TEST_LABELS);
    assert_eq!(
        mnist.train.images(),
        pixels(1, TRAIN_LABELS.len()).as_slice()
    );
    assert_eq!(mnist.test.images(), pixels(2, TEST_LABELS.len()).as_slice());
    assert_eq!(
        mnist.test.image(1).unwrap(),
        &pixels(2, 3)[PIXELS..2 * PIXELS]
    );
    assert_eq!(mnist.test.image(3), None);
    assert_eq!(
        mnist.source,
        MnistSource::Dir(fixture.data.path().to_path_buf())
    );
    assert!(mnist
        .source
        .to_string()
        .contains(&fixture.data.path().display().to_string()));
}

#[test]
fn gzipped_files_load_identically_to_plain_files() {
    let plain = Fixture::with_files(&valid_files(), [false; 4]);
    let gzipped = Fixture::with_files(&valid_files(), [true; 4]);
    let (a, b) = (
        plain.loader().load().unwrap(),
        gzipped.loader().load().unwrap(),
    );
    assert_eq!(a.train, b.train);
    assert_eq!(a.test, b.test);
}

#[test]
fn a_dir_mixing_plain_and_gzipped_files_loads() {
    let fixture = Fixture::with_files(&valid_files(), [true, false, false, true]);
    let mnist = fixture.loader().load().unwrap();
    assert_eq!(mnist.train.labels(), &TRAIN_LABELS);
    assert_eq!(mnist.test.labels(), &TEST_LABELS);
}

#[test]
fn a_plain_file_is_preferred_over_its_gz_twin() {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    // A broken .gz beside the valid plain file is never opened.
    fs::write(fixture.path_of(1, true), b"not gzip").unwrap();
    assert_eq!(
        fixture.loader().load().unwrap().train.labels(),
        &TRAIN_LABELS
    );
}

#[test]
fn a_gzipped_file_without_gz_suffix_is_detected_by_its_magic() {
    let contents = valid_files();
    let fixture = Fixture::with_files(&contents, [false; 4]);
    fs::write(fixture.path_of(0, false), gzip(&contents[0])).unwrap();
    assert_eq!(
        fixture.loader().load().unwrap().train.images(),
        pixels(1, 5).as_slice()
    );
}

#[test]
fn from_idx_bytes_accepts_plain_and_gzipped_bytes() {
    let [images, labels, _, _] = valid_files();
    let plain = MnistSplit::from_idx_bytes(&images, &labels).unwrap();
    let gzipped = MnistSplit::from_idx_bytes(&gzip(&images), &gzip(&labels)).unwrap();
    assert_eq!(plain, gzipped);
    assert_eq!(plain.labels(), &TRAIN_LABELS);
}

// ---- search order ---------------------------------------------------------------------------

#[test]
fn env_dir_is_used_and_reported_when_no_dir_is_given() {
    let fixture = Fixture::with_files(&valid_files(), [true; 4]);
    let mnist = offline_loader(fixture.cache.path())
        .env_dir(Some(fixture.data.path().to_path_buf()))
        .load()
        .unwrap();
    assert_eq!(
        mnist.source,
        MnistSource::EnvDir(fixture.data.path().to_path_buf())
    );
    assert!(mnist.source.to_string().starts_with("MNIST_DIR="));
}

#[test]
fn explicit_dir_takes_precedence_over_env_dir() {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    let other = Fixture::with_files(&valid_files(), [false; 4]);
    let mnist = fixture
        .loader()
        .env_dir(Some(other.data.path().to_path_buf()))
        .load()
        .unwrap();
    assert_eq!(
        mnist.source,
        MnistSource::Dir(fixture.data.path().to_path_buf())
    );
}

#[test]
fn a_dir_missing_a_file_falls_through_to_env_dir() {
    let incomplete = Fixture::with_files(&valid_files(), [false; 4]);
    fs::remove_file(incomplete.path_of(3, false)).unwrap();
    let complete = Fixture::with_files(&valid_files(), [false; 4]);
    let mnist = incomplete
        .loader()
        .env_dir(Some(complete.data.path().to_path_buf()))
        .load()
        .unwrap();
    assert_eq!(
        mnist.source,
        MnistSource::EnvDir(complete.data.path().to_path_buf())
    );
}

#[test]
fn burn_dataset_cache_layout_train_and_test_subfolders_is_found() {
    let cache = TempDir::new().unwrap();
    let contents = valid_files();
    // burn-dataset stores them uncompressed; write the train files plain, the test ones gzipped.
    let train = cache.path().join("train");
    let test = cache.path().join("test");
    write_file(&train, 0, &contents[0], false);
    write_file(&train, 1, &contents[1], false);
    write_file(&test, 2, &contents[2], true);
    write_file(&test, 3, &contents[3], true);
    let mnist = offline_loader(cache.path()).load().unwrap();
    assert_eq!(mnist.source, MnistSource::Cache(cache.path().to_path_buf()));
    assert_eq!(mnist.train.labels(), &TRAIN_LABELS);
    assert_eq!(mnist.test.labels(), &TEST_LABELS);
}

#[test]
fn nothing_found_with_download_disabled_is_data_not_found_naming_every_place_and_the_fix() {
    let fixture = Fixture::new(); // empty data dir
    let env = TempDir::new().unwrap();
    let error = fixture
        .loader()
        .env_dir(Some(env.path().to_path_buf()))
        .load()
        .unwrap_err();
    let DataError::DataNotFound(message) = error else {
        panic!("expected DataNotFound, got {error:?}");
    };
    for needle in [
        fixture.data.path().display().to_string(),
        env.path().display().to_string(),
        fixture.cache.path().display().to_string(),
        "MNIST_DIR".to_string(),
        "storage.googleapis.com/cvdf-datasets/mnist/".to_string(),
        "disabled".to_string(),
        "train-images-idx3-ubyte".to_string(),
        "t10k-labels-idx1-ubyte".to_string(),
        "gzipped".to_string(),
        "MnistLoader::dir".to_string(),
    ] {
        assert!(
            message.contains(&needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

#[test]
fn a_nonexistent_dir_and_unset_env_are_reported_as_such() {
    let cache = TempDir::new().unwrap();
    let missing = cache.path().join("no-such-dir");
    let error = offline_loader(cache.path())
        .dir(&missing)
        .load()
        .unwrap_err();
    let DataError::DataNotFound(message) = error else {
        panic!("expected DataNotFound, got {error:?}");
    };
    assert!(message.contains(&format!("{}: does not exist", missing.display())));
    assert!(message.contains("MNIST_DIR: not set"));
}

#[test]
fn a_dir_missing_one_file_names_that_file_in_data_not_found() {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    fs::remove_file(fixture.path_of(2, false)).unwrap();
    let Err(DataError::DataNotFound(message)) = fixture.loader().load() else {
        panic!("expected DataNotFound");
    };
    assert!(
        message.contains("missing t10k-images-idx3-ubyte[.gz]"),
        "{message}"
    );
}

// ---- normalisation, digits, batches ---------------------------------------------------------

#[test]
fn normalize_maps_0_and_255_to_the_notebook_values() {
    let black = (0.0f32 - 0.1307) / 0.3081;
    let white = (1.0f32 - 0.1307) / 0.3081;
    assert!((normalize(0) - black).abs() < 1e-6);
    assert!((normalize(255) - white).abs() < 1e-6);
    assert!((normalize(0) - -0.424_213).abs() < 1e-5);
    assert!((normalize(255) - 2.821_487).abs() < 1e-5);
}

#[test]
fn batcher_makes_n_by_784_normalised_pixels_and_labels_in_item_order() {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    let train = fixture.loader().load().unwrap().train;
    let indices = [3, 0, 3];
    let items = indices.iter().map(|&i| train.get(i).unwrap()).collect();
    let batch: MnistBatch<B> = MnistBatcher.batch(items, &Default::default());
    assert_eq!(batch.images.dims(), [3, PIXELS]);
    assert_eq!(batch.targets.dims(), [3]);
    let labels: Vec<i64> = batch.targets.into_data().iter::<i64>().collect();
    assert_eq!(labels, vec![9, 0, 9]);
    let values = floats(batch.images);
    for (row, &index) in indices.iter().enumerate() {
        for p in 0..PIXELS {
            let expected = normalize(pixel(1, index, p));
            assert_eq!(values[row * PIXELS + p], expected, "row {row} pixel {p}");
        }
        // Pixel 0 is black and pixel 1 white in every image.
        assert!((values[row * PIXELS] - (0.0 - 0.1307) / 0.3081).abs() < 1e-6);
        assert!((values[row * PIXELS + 1] - (1.0 - 0.1307) / 0.3081).abs() < 1e-6);
    }
}

#[test]
fn a_split_is_a_dataset_of_its_images_and_nothing_past_the_end() {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    let test = fixture.loader().load().unwrap().test;
    assert_eq!(Dataset::len(&test), 3);
    let item = test.get(1).unwrap();
    assert_eq!(item.label, 3);
    assert_eq!(&item.image[..], test.image(1).unwrap());
    assert!(test.get(3).is_none());
    assert!(test.get(usize::MAX).is_none());
}

#[test]
fn burns_loader_visits_every_image_once_per_epoch_shuffled_by_seed() {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    let train = fixture.loader().load().unwrap().train;
    let epoch_labels = |seed: u64| -> Vec<Vec<i64>> {
        let loader = DataLoaderBuilder::<B, _, _>::new(MnistBatcher)
            .batch_size(2)
            .shuffle(seed)
            .build(train.clone());
        (0..2)
            .map(|_| {
                loader
                    .iter()
                    .flat_map(|batch| batch.targets.into_data().iter::<i64>().collect::<Vec<_>>())
                    .collect()
            })
            .collect()
    };
    let epochs = epoch_labels(5);
    for labels in &epochs {
        let mut sorted = labels.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 1, 2, 9]);
    }
    assert_eq!(
        epochs,
        epoch_labels(5),
        "the same seed gives the same epochs"
    );
}

#[test]
fn only_digit_keeps_that_digits_images_in_order_and_is_empty_above_9() {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    let train = fixture.loader().load().unwrap().train;
    let ones = train.only_digit(1);
    assert_eq!(ones.labels(), &[1, 1]);
    assert_eq!(ones.image(0), train.image(1));
    assert_eq!(ones.image(1), train.image(4));
    assert!(train.only_digit(5).is_empty());
    assert!(train.only_digit(10).is_empty());
    assert_eq!(train.label_counts(), [1, 2, 1, 0, 0, 0, 0, 0, 0, 1]);
}

#[test]
fn split_new_checks_lengths_and_labels() {
    assert_eq!(
        MnistSplit::new(vec![0; 2 * PIXELS], vec![4, 5])
            .unwrap()
            .len(),
        2
    );
    assert!(MnistSplit::new(vec![], vec![]).unwrap().is_empty());
    for (images, labels) in [
        (vec![0; 2 * PIXELS], vec![4]),
        (vec![0; PIXELS + 1], vec![4]),
        (vec![0; PIXELS], vec![10]),
    ] {
        assert!(matches!(
            MnistSplit::new(images, labels),
            Err(DataError::InvalidData { .. })
        ));
    }
}

// ---- malformed files ------------------------------------------------------------------------

#[test]
fn truncated_images_file_is_invalid_data_naming_the_file() {
    let mut bytes = valid_files()[0].clone();
    bytes.truncate(bytes.len() - 1);
    assert_invalid(0, bytes.clone(), Store::Plain, "truncated");
    assert_invalid(0, bytes, Store::Gzipped, "truncated");
}

#[test]
fn truncated_header_and_empty_file_are_invalid_data() {
    assert_invalid(0, vec![0, 0, 8, 3, 0, 0], Store::Plain, "truncated");
    assert_invalid(1, Vec::new(), Store::Plain, "truncated");
}

#[test]
fn header_announcing_billions_of_images_in_a_small_file_is_truncated_not_allocated() {
    let bad = idx_images_with(0x803, u32::MAX, 28, 28, &pixels(1, 5));
    assert_invalid(0, bad.clone(), Store::Plain, "truncated");
    assert_invalid(0, bad, Store::Gzipped, "truncated");
}

#[test]
fn trailing_bytes_after_the_announced_items_are_invalid_data() {
    let mut images = valid_files()[2].clone();
    images.push(0);
    assert_invalid(2, images.clone(), Store::Plain, "trailing bytes");
    assert_invalid(2, images, Store::Gzipped, "trailing bytes");
    let mut labels = valid_files()[3].clone();
    labels.push(1);
    assert_invalid(3, labels, Store::Plain, "trailing bytes");
}

#[test]
fn wrong_magic_is_invalid_data_and_swapped_files_are_hinted() {
    let payload = pixels(1, 5);
    assert_invalid(
        0,
        idx_images_with(0x804, 5, 28, 28, &payload),
        Store::Plain,
        "wrong magic",
    );
    assert_invalid(
        1,
        idx_labels_with(0x802, 5, &TRAIN_LABELS),
        Store::Gzipped,
        "wrong magic",
    );
    // A labels file where the images file should be.
    assert_invalid(0, idx_labels(&TRAIN_LABELS), Store::Plain, "swapped");
}

#[test]
fn images_that_are_not_28_by_28_are_invalid_data() {
    let payload = pixels(1, 5);
    assert_invalid(
        0,
        idx_images_with(0x803, 5, 28, 27, &payload),
        Store::Plain,
        "28x27",
    );
    assert_invalid(
        0,
        idx_images_with(0x803, 5, 784, 1, &payload),
        Store::Gzipped,
        "784x1",
    );
}

#[test]
fn image_and_label_counts_that_differ_are_invalid_data_naming_the_labels_file() {
    assert_invalid(1, idx_labels(&TRAIN_LABELS[..4]), Store::Plain, "4 labels");
    let (_, reason, _) = invalid_data_for(1, idx_labels(&TRAIN_LABELS[..4]), Store::Plain);
    assert!(reason.contains("train-images-idx3-ubyte"), "{reason}");
    assert!(reason.contains("5 images"), "{reason}");
}

#[test]
fn label_10_is_invalid_data() {
    assert_invalid(
        3,
        idx_labels(&[7, 10, 7]),
        Store::Plain,
        "label 10 at index 1",
    );
    assert_invalid(3, idx_labels(&[7, 3, 255]), Store::Gzipped, "label 255");
}

#[test]
fn garbage_gz_files_are_invalid_data() {
    // Not gzip at all, though named .gz.
    let not_gzip = b"this is not gzip data at all".to_vec();
    assert_invalid(1, not_gzip, Store::RawAsGz, "gzip stream failed to decode");
    // A gzip header followed by garbage, named .gz or not (detected by its magic).
    let mut garbage = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    garbage.extend((0..200u8).map(|b| b.wrapping_mul(37)));
    assert_invalid(
        0,
        garbage.clone(),
        Store::RawAsGz,
        "gzip stream failed to decode",
    );
    assert_invalid(0, garbage, Store::Plain, "gzip stream failed to decode");
    // A gzip stream cut off halfway.
    let mut cut = gzip(&valid_files()[0]);
    cut.truncate(cut.len() / 2);
    assert_invalid(0, cut, Store::RawAsGz, "gzip stream failed to decode");
    // A gzip stream whose checksum is wrong.
    let mut corrupt = gzip(&valid_files()[1]);
    let crc = corrupt.len() - 8;
    corrupt[crc] ^= 0xff;
    assert_invalid(1, corrupt, Store::RawAsGz, "gzip stream failed to decode");
}

#[test]
fn a_directory_named_like_a_file_counts_as_missing() {
    let fixture = Fixture::with_files(&valid_files(), [false; 4]);
    fs::remove_file(fixture.path_of(0, false)).unwrap();
    fs::create_dir(fixture.path_of(0, false)).unwrap();
    assert!(matches!(
        fixture.loader().load(),
        Err(DataError::DataNotFound(_))
    ));
}

/// The real files, when `MNIST_DIR` points at them (CI sets it; skipped, saying so, otherwise).
#[test]
fn real_mnist_from_mnist_dir_has_the_standard_sizes_and_label_counts() {
    let Some(dir) = burn_lora_support::fixtures::large_data(
        "MNIST_DIR",
        "real_mnist_from_mnist_dir_has_the_standard_sizes_and_label_counts",
    ) else {
        return;
    };
    let mnist = MnistLoader::new().dir(dir).download(false).load().unwrap();
    assert_eq!((mnist.train.len(), mnist.test.len()), (60_000, 10_000));
    // The published per-digit counts of the test set.
    assert_eq!(
        mnist.test.label_counts(),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert_eq!(mnist.train.images().len(), 60_000 * 784);
}
