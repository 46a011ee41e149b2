//! [`MnistLoader`]: where to look for the four files, in order, and what was found where.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::idx::{self, IdxKind};
use super::{download, Mnist, MnistSplit, ENV_VAR, FILE_NAMES, MIRROR_URL};
use crate::error::{DataError, Result};

/// The kind of each entry of [`FILE_NAMES`].
const KINDS: [IdxKind; 4] = [
    IdxKind::Images,
    IdxKind::Labels,
    IdxKind::Images,
    IdxKind::Labels,
];

/// The sub-folder of burn-dataset's MNIST cache holding each entry of [`FILE_NAMES`].
const CACHE_SPLITS: [&str; 4] = ["train", "train", "test", "test"];

/// Where [`MnistLoader::load`] found the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MnistSource {
    /// The directory given to [`MnistLoader::dir`].
    Dir(PathBuf),
    /// The directory named by the `MNIST_DIR` environment variable (or [`MnistLoader::env_dir`]).
    EnvDir(PathBuf),
    /// burn-dataset's cache (the folder holding `train/` and `test/`), already populated.
    Cache(PathBuf),
    /// burn-dataset's cache, after downloading the missing files from `url`.
    Downloaded {
        /// The cache folder the files were written to.
        cache: PathBuf,
        /// The mirror they came from.
        url: String,
    },
}

impl fmt::Display for MnistSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "directory {}", dir.display()),
            Self::EnvDir(dir) => write!(f, "{ENV_VAR}={}", dir.display()),
            Self::Cache(cache) => write!(f, "burn-dataset cache {}", cache.display()),
            Self::Downloaded { cache, url } => write!(
                f,
                "burn-dataset cache {} (missing files downloaded from {url})",
                cache.display()
            ),
        }
    }
}

/// Finds and loads MNIST: an explicit directory, then `MNIST_DIR`, then burn-dataset's cache,
/// then a download into that cache.
///
/// Each directory may hold every file plain or gzipped (`<name>.gz`); a plain file is preferred
/// when both exist. A place that lacks some of the four files is skipped; a file that is found
/// but malformed stops the search with [`DataError::InvalidData`]. When every place fails the
/// error is [`DataError::DataNotFound`], listing what was searched and how to supply the files.
///
/// [`Default`] (and [`new`](Self::new)) reads `MNIST_DIR` once, uses
/// `dirs::cache_dir()/burn-dataset/mnist` and allows the download.
///
/// ```no_run
/// use burn::data::dataloader::DataLoaderBuilder;
/// use burn_lora_support::mnist::{MnistBatcher, MnistLoader};
///
/// type B = burn_lora_support::backend::Inference;
///
/// // `MNIST_DIR`, else burn-dataset's cache, else a download into that cache.
/// let mnist = MnistLoader::new().load()?;
/// println!("MNIST from {}: {} train, {} test images", mnist.source, mnist.train.len(), mnist.test.len());
///
/// // Or only a given folder, no cache, no network:
/// let offline = MnistLoader::new()
///     .dir("data/mnist")
///     .env_dir(None)
///     .cache_dir("/nonexistent")
///     .download(false)
///     .load()?;
///
/// // One shuffled epoch of normalised batches of 10, by Burn's data loader.
/// let loader = DataLoaderBuilder::<B, _, _>::new(MnistBatcher)
///     .batch_size(10)
///     .shuffle(0)
///     .build(mnist.train);
/// for batch in loader.iter() {
///     assert_eq!(batch.images.dims()[1], 784);
/// }
/// # Ok::<(), burn_lora_support::DataError>(())
/// ```
#[derive(Clone, Debug)]
pub struct MnistLoader {
    dir: Option<PathBuf>,
    env_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    download: bool,
    mirror: String,
    timeout: Duration,
}

impl Default for MnistLoader {
    fn default() -> Self {
        Self {
            dir: None,
            env_dir: std::env::var_os(ENV_VAR)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from),
            cache_dir: Self::default_cache_dir(),
            download: true,
            mirror: MIRROR_URL.to_string(),
            timeout: Duration::from_secs(60),
        }
    }
}

impl MnistLoader {
    /// The default search: `MNIST_DIR`, burn-dataset's cache, then a download.
    pub fn new() -> Self {
        Self::default()
    }

    /// burn-dataset's MNIST cache: `dirs::cache_dir()/burn-dataset/mnist` (`None` when the
    /// system has no cache directory).
    pub fn default_cache_dir() -> Option<PathBuf> {
        dirs::cache_dir().map(|cache| cache.join("burn-dataset").join("mnist"))
    }

    /// Looks in `dir` first.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Replaces the value read from `MNIST_DIR`: `Some(dir)` looks there, `None` skips the step.
    pub fn env_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.env_dir = dir;
        self
    }

    /// Uses `cache` as burn-dataset's MNIST cache (the folder holding `train/` and `test/`).
    pub fn cache_dir(mut self, cache: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(cache.into());
        self
    }

    /// Allows or forbids downloading missing files into the cache (allowed by default).
    pub fn download(mut self, allow: bool) -> Self {
        self.download = allow;
        self
    }

    /// Downloads from `base_url` (each file from `<base_url><name>.gz`) instead of
    /// [`MIRROR_URL`].
    pub fn mirror(mut self, base_url: impl Into<String>) -> Self {
        self.mirror = base_url.into();
        self
    }

    /// Time allowed for each file's download, connection included (60 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Searches the places in order and loads both splits from the first that has the files.
    pub fn load(&self) -> Result<Mnist> {
        let mut searched = Vec::new();
        if let Some(dir) = &self.dir {
            match find_in_dir(dir) {
                Ok(paths) => return read_all(paths, MnistSource::Dir(dir.clone())),
                Err(why) => searched.push(format!("directory {}: {why}", dir.display())),
            }
        }
        match &self.env_dir {
            Some(dir) => match find_in_dir(dir) {
                Ok(paths) => return read_all(paths, MnistSource::EnvDir(dir.clone())),
                Err(why) => searched.push(format!("{ENV_VAR}={}: {why}", dir.display())),
            },
            None => searched.push(format!("{ENV_VAR}: not set")),
        }
        let url_pattern = format!("{}<name>.gz", self.mirror);
        let Some(cache) = &self.cache_dir else {
            searched.push("burn-dataset cache: this system has no cache directory".into());
            searched.push(format!(
                "download from {url_pattern}: skipped, no cache directory to download into"
            ));
            return Err(not_found(&searched));
        };
        let found = find_in_cache(cache);
        if let Some(paths) = all_found(&found) {
            return read_all(paths, MnistSource::Cache(cache.clone()));
        }
        searched.push(format!(
            "burn-dataset cache {} (train/ and test/): missing {}",
            cache.display(),
            missing_names(&found)
        ));
        if !self.download {
            searched.push(format!("download from {url_pattern}: disabled"));
            return Err(not_found(&searched));
        }
        match self.download_missing(cache, found) {
            Ok(paths) => read_all(
                paths,
                MnistSource::Downloaded {
                    cache: cache.clone(),
                    url: self.mirror.clone(),
                },
            ),
            Err(why) => {
                searched.push(format!("download from {url_pattern}: {why}"));
                Err(not_found(&searched))
            }
        }
    }

    /// Downloads every file missing from the cache; all four paths, or the first failure (the
    /// others would most likely fail the same way, each after its own timeout).
    fn download_missing(
        &self,
        cache: &Path,
        found: [Option<PathBuf>; 4],
    ) -> std::result::Result<[PathBuf; 4], String> {
        let agent = download::agent(self.timeout);
        let mut paths = Vec::with_capacity(4);
        for (((path, name), kind), split) in found
            .into_iter()
            .zip(FILE_NAMES)
            .zip(KINDS)
            .zip(CACHE_SPLITS)
        {
            let path = match path {
                Some(path) => path,
                None => {
                    let url = format!("{}{name}.gz", self.mirror);
                    download::fetch(&agent, &url, kind, &cache.join(split), name)
                        .map_err(|why| format!("{url}: {why}"))?
                }
            };
            paths.push(path);
        }
        paths
            .try_into()
            .map_err(|_| "internal error: not four files".to_string())
    }
}

/// A directory's file for `name`: `<name>` if it exists, else `<name>.gz`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Some(plain);
    }
    let gzipped = dir.join(format!("{name}.gz"));
    gzipped.is_file().then_some(gzipped)
}

/// All four files in `dir`, or why not.
fn find_in_dir(dir: &Path) -> std::result::Result<[PathBuf; 4], String> {
    if !dir.exists() {
        return Err("does not exist".into());
    }
    if !dir.is_dir() {
        return Err("is not a directory".into());
    }
    let found = FILE_NAMES.map(|name| find_file(dir, name));
    all_found(&found).ok_or_else(|| format!("missing {}", missing_names(&found)))
}

/// Each file in burn-dataset's layout: `train/` for the training files, `test/` for the others.
fn find_in_cache(cache: &Path) -> [Option<PathBuf>; 4] {
    let mut found: [Option<PathBuf>; 4] = Default::default();
    for ((slot, name), split) in found.iter_mut().zip(FILE_NAMES).zip(CACHE_SPLITS) {
        *slot = find_file(&cache.join(split), name);
    }
    found
}

/// The four paths when every file was found.
fn all_found(found: &[Option<PathBuf>; 4]) -> Option<[PathBuf; 4]> {
    let [a, b, c, d] = found;
    Some([a.clone()?, b.clone()?, c.clone()?, d.clone()?])
}

/// The names of the files not found, for messages.
fn missing_names(found: &[Option<PathBuf>; 4]) -> String {
    found
        .iter()
        .zip(FILE_NAMES)
        .filter(|(path, _)| path.is_none())
        .map(|(_, name)| format!("{name}[.gz]"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads and pairs the four files.
fn read_all(paths: [PathBuf; 4], source: MnistSource) -> Result<Mnist> {
    let [train_images, train_labels, test_images, test_labels] = paths;
    Ok(Mnist {
        train: read_split(&train_images, &train_labels)?,
        test: read_split(&test_images, &test_labels)?,
        source,
    })
}

/// Reads an images and a labels file into a split.
fn read_split(images: &Path, labels: &Path) -> Result<MnistSplit> {
    let pixels = idx::read_file(images, IdxKind::Images)?;
    let digits = idx::read_file(labels, IdxKind::Labels)?;
    MnistSplit::from_checked(
        pixels,
        &images.display().to_string(),
        digits,
        &labels.display().to_string(),
    )
}

/// The error when no place had the files.
fn not_found(searched: &[String]) -> DataError {
    let [train_images, train_labels, test_images, test_labels] = FILE_NAMES;
    let mut message = String::from("MNIST data not found. Searched, in order:\n");
    for place in searched {
        message.push_str("  - ");
        message.push_str(place);
        message.push('\n');
    }
    message.push_str(&format!(
        "To fix: set {ENV_VAR} to a folder holding the four files {train_images}, \
         {train_labels}, {test_images} and {test_labels} (each gzipped as <name>.gz or not), \
         or pass that folder to MnistLoader::dir."
    ));
    DataError::DataNotFound(message)
}
