//! Fuzzing the MNIST IDX reader: whatever is done to an IDX file (plain or gzipped), reading it
//! as images or as labels, from bytes or from a folder, never panics, and a file that reads
//! gives a split whose images, labels and count agree and whose labels are digits.
//!
//! The seeds are the small IDX files under `tests/fixtures/fuzz/mnist_idx/corpus/`.

use burn_lora_support::fuzz::{target_dir, variant_name, Format, Fuzz};
use burn_lora_support::mnist::{MnistLoader, MnistSplit, FILE_NAMES, PIXELS};
use burn_lora_support::DataError;

/// The split's own consistency: `Ok` or the broken property.
fn consistent(split: &MnistSplit, expected: Option<usize>) -> Result<(), String> {
    let n = split.len();
    if split.labels().len() != n || split.images().len() != n * PIXELS {
        return Err(format!(
            "{n} items, {} labels, {} pixels",
            split.labels().len(),
            split.images().len()
        ));
    }
    if let Some(label) = split.labels().iter().find(|l| **l > 9) {
        return Err(format!("label {label} is not a digit"));
    }
    match expected {
        Some(expected) if expected != n => Err(format!("{n} items where the pair has {expected}")),
        _ => Ok(()),
    }
}

fn outcome(
    role: &str,
    result: Result<MnistSplit, DataError>,
    expected: Option<usize>,
) -> Result<String, String> {
    match result {
        Ok(split) => {
            consistent(&split, expected).map_err(|broken| format!("as {role}: {broken}"))?;
            Ok(format!("{role}:Ok"))
        }
        Err(e) if e.to_string().is_empty() => Err(format!("as {role}: an error with no message")),
        Err(e) => Ok(format!("{role}:{}", variant_name(&e))),
    }
}

/// A folder holding the four files, the test split's file `slot` (an index into `FILE_NAMES`)
/// being the mutated one.
struct Folder {
    dir: tempfile::TempDir,
    slot: usize,
}

impl Folder {
    fn new(images: &[u8], labels: &[u8], slot: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in FILE_NAMES.iter().enumerate() {
            let content = if i.is_multiple_of(2) { images } else { labels };
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        Self { dir, slot }
    }

    fn load(&self, bytes: &[u8]) -> Result<String, String> {
        let dir = self.dir.path();
        std::fs::write(dir.join(FILE_NAMES[self.slot]), bytes).map_err(|e| e.to_string())?;
        let loaded = MnistLoader::new()
            .dir(dir)
            .env_dir(None)
            .cache_dir(dir.join("no-cache"))
            .download(false)
            .load();
        let role = if self.slot.is_multiple_of(2) {
            "images"
        } else {
            "labels"
        };
        match loaded {
            Ok(mnist) => {
                consistent(&mnist.train, None).map_err(|b| format!("folder, train: {b}"))?;
                consistent(&mnist.test, None).map_err(|b| format!("folder, test: {b}"))?;
                Ok(format!("folder {role}:Ok"))
            }
            Err(e) => Ok(format!("folder {role}:{}", variant_name(&e))),
        }
    }
}

#[test]
fn mutated_idx_files_never_panic_and_splits_that_read_are_consistent() {
    let corpus = target_dir("mnist_idx").join("corpus");
    let images = std::fs::read(corpus.join("images_2.idx3-ubyte")).unwrap();
    let labels = std::fs::read(corpus.join("labels_2.idx1-ubyte")).unwrap();
    assert_eq!(
        MnistSplit::from_idx_bytes(&images, &labels).unwrap().len(),
        2
    );
    // The test split's images (slot 2) and labels (slot 3).
    let folders = [2, 3].map(|slot| Folder::new(&images, &labels, slot));

    let report = Fuzz::new("mnist_idx", Format::Bytes)
        .cases(300)
        .run(|bytes| {
            let as_images = outcome(
                "images",
                MnistSplit::from_idx_bytes(bytes, &labels),
                Some(2),
            )?;
            let as_labels = outcome(
                "labels",
                MnistSplit::from_idx_bytes(&images, bytes),
                Some(2),
            )?;
            let in_folders = [folders[0].load(bytes)?, folders[1].load(bytes)?];
            Ok(format!("{as_images} {as_labels} {}", in_folders.join(" ")))
        });
    assert!(
        report.outcomes.keys().any(|o| !o.contains("images:Ok")),
        "no mutated file was refused: {report:?}"
    );
}
