//! MNIST for the examples and tests: the four IDX files, plain or gzipped, loaded into memory.
//!
//! [`MnistLoader`] finds the files, in this order:
//!
//! 1. a directory given to [`MnistLoader::dir`];
//! 2. the directory in the `MNIST_DIR` environment variable;
//! 3. burn-dataset's cache, `<cache>/burn-dataset/mnist/{train,test}/` (the layout
//!    `burn_dataset::vision::MnistDataset` uses, so data it downloaded is reused);
//! 4. a download of the missing files from burn-dataset's mirror ([`MIRROR_URL`]) into that cache.
//!
//! If all fail, [`DataError::DataNotFound`](crate::DataError::DataNotFound) lists every place
//! searched and says how to supply the files. Malformed files (wrong magic number, wrong image
//! size, truncated or oversized, counts that disagree, labels above 9, broken gzip) are
//! [`DataError::InvalidData`](crate::DataError::InvalidData) naming the file, never a panic.
//!
//! The loaded [`Mnist`] holds a [`MnistSplit`] per split: raw pixels and labels. A split is a
//! burn-dataset `Dataset` of [`MnistItem`]s, which Burn's data loaders batch with
//! [`MnistBatcher`] into normalised tensors.

mod dataset;
mod download;
mod idx;
mod locate;
mod split;

pub use dataset::{MnistBatch, MnistBatcher, MnistItem};
pub use locate::{MnistLoader, MnistSource};
pub use split::{normalize, MnistSplit, MNIST_MEAN, MNIST_STD};

/// Height and width of an MNIST image, in pixels.
pub const IMAGE_SIDE: usize = 28;

/// Pixels per image (28 × 28 = 784), the width of a batch row.
pub const PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;

/// The four files, by their standard names (each may also be stored as `<name>.gz`):
/// training images, training labels, test images, test labels.
pub const FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The environment variable naming a directory that holds the four files.
pub const ENV_VAR: &str = "MNIST_DIR";

/// burn-dataset's MNIST mirror; a file is downloaded from `<MIRROR_URL><name>.gz`.
pub const MIRROR_URL: &str = "https://storage.googleapis.com/cvdf-datasets/mnist/";

/// The MNIST data set in memory: 60,000 training and 10,000 test images for the real files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mnist {
    /// The training split (`train-*` files).
    pub train: MnistSplit,
    /// The test split (`t10k-*` files).
    pub test: MnistSplit,
    /// Where the files were found.
    pub source: MnistSource,
}

impl Mnist {
    /// Loads MNIST with the default search: `MNIST_DIR`, burn-dataset's cache, then a download.
    ///
    /// The same as `MnistLoader::default().load()`; see [`MnistLoader`] to choose the places.
    pub fn load() -> crate::Result<Self> {
        MnistLoader::default().load()
    }
}
