//! The fortune corpus: one UTF-8 file per category, entries separated by a line holding only `%`.

use std::path::{Path, PathBuf};

use burn::data::dataset::{Dataset, InMemDataset};

use crate::error::{DataError, Result};

/// Every entry whose index within its file is a multiple of this is a test entry (one in five).
pub const TEST_EVERY: usize = 5;

/// One labelled text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FortuneItem {
    /// The entry, trimmed.
    pub text: String,
    /// Index of its category in [`FortuneCorpus::categories`].
    pub label: usize,
}

/// The corpus split into train and test, deterministically: entries are split on `"\n%\n"` and
/// trimmed (empty ones dropped), and entry `i` of a file is a test entry when `i` is a multiple of
/// [`TEST_EVERY`].
pub struct FortuneCorpus {
    /// The category names (file names), in label order.
    pub categories: Vec<String>,
    /// About four fifths of every category.
    pub train: InMemDataset<FortuneItem>,
    /// The rest.
    pub test: InMemDataset<FortuneItem>,
}

impl FortuneCorpus {
    /// Reads the category files of `dir`: those named in `categories`, in that order, or every
    /// file of the folder except `README.md`, sorted by name, when `categories` is empty.
    ///
    /// # Errors
    /// [`DataError::DataNotFound`] if `dir` or a named category file does not exist,
    /// [`DataError::Io`] if one cannot be read, [`DataError::InvalidData`] if a file is not UTF-8,
    /// holds no entry, a category is named twice, or fewer than two categories remain.
    pub fn load(dir: &Path, categories: &[String]) -> Result<Self> {
        if !dir.is_dir() {
            return Err(DataError::DataNotFound(format!(
                "no corpus folder at {}",
                dir.display()
            )));
        }
        let categories = if categories.is_empty() {
            list_categories(dir)?
        } else {
            categories.to_vec()
        };
        if categories.len() < 2 {
            return Err(invalid(
                dir,
                "a classification corpus needs at least two categories",
            ));
        }
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (label, name) in categories.iter().enumerate() {
            if categories[..label].contains(name) {
                return Err(invalid(dir, &format!("category {name:?} is named twice")));
            }
            let path = dir.join(name);
            for (index, text) in read_entries(&path)?.into_iter().enumerate() {
                let item = FortuneItem { text, label };
                if index % TEST_EVERY == 0 {
                    test.push(item);
                } else {
                    train.push(item);
                }
            }
        }
        Ok(Self {
            categories,
            train: InMemDataset::new(train),
            test: InMemDataset::new(test),
        })
    }

    /// Number of categories (classes).
    pub fn num_classes(&self) -> usize {
        self.categories.len()
    }

    /// Entries per category in `split`, in label order.
    pub fn counts(&self, split: &InMemDataset<FortuneItem>) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for item in split.iter() {
            counts[item.label] += 1;
        }
        counts
    }
}

impl std::fmt::Debug for FortuneCorpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FortuneCorpus")
            .field("categories", &self.categories)
            .field("train", &self.train.len())
            .field("test", &self.test.len())
            .finish()
    }
}

/// The file names of `dir` except hidden files and `README*`, sorted.
fn list_categories(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, &e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && !name.starts_with('.') && !name.starts_with("README") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The trimmed, non-empty entries of one category file.
fn read_entries(path: &PathBuf) -> Result<Vec<String>> {
    if !path.is_file() {
        return Err(DataError::DataNotFound(format!(
            "no category file {}",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| io(path, &e))?;
    let text = String::from_utf8(bytes).map_err(|e| invalid(path, &format!("not UTF-8: {e}")))?;
    let entries: Vec<String> = text
        .replace("\r\n", "\n")
        .split("\n%\n")
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(String::from)
        .collect();
    if entries.is_empty() {
        return Err(invalid(path, "holds no entry"));
    }
    Ok(entries)
}

fn io(path: &Path, error: &std::io::Error) -> DataError {
    DataError::Io {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

fn invalid(path: &Path, reason: &str) -> DataError {
    DataError::InvalidData {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn entries_are_split_trimmed_and_every_fifth_is_a_test_entry() {
        let six: String = (0..6)
            .map(|i| format!("  a{i}\n -- someone\n%\n"))
            .collect();
        let dir = corpus_dir(&[
            ("b", &six),
            ("a", "x\n%\ny"),
            ("README.md", "not a category"),
        ]);
        let corpus = FortuneCorpus::load(dir.path(), &[]).unwrap();
        assert_eq!(corpus.categories, ["a", "b"]);
        let texts = |split: &InMemDataset<FortuneItem>| -> Vec<(String, usize)> {
            split.iter().map(|item| (item.text, item.label)).collect()
        };
        assert_eq!(
            texts(&corpus.test),
            [
                ("x".to_string(), 0),
                ("a0\n -- someone".to_string(), 1),
                ("a5\n -- someone".to_string(), 1)
            ]
        );
        assert_eq!(corpus.counts(&corpus.train), [1, 4]);
    }

    #[test]
    fn named_categories_keep_their_order_and_bad_ones_are_errors() {
        let dir = corpus_dir(&[("a", "x"), ("b", "y"), ("empty", " \n%\n "), ("bin", "")]);
        std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let corpus = FortuneCorpus::load(dir.path(), &names(&["b", "a"])).unwrap();
        assert_eq!(corpus.categories, ["b", "a"]);
        assert_eq!(corpus.test.get(0).unwrap().text, "y");

        let err = |list: &[&str]| FortuneCorpus::load(dir.path(), &names(list)).unwrap_err();
        assert!(matches!(err(&["a", "nope"]), DataError::DataNotFound(_)));
        assert!(matches!(
            err(&["a", "empty"]),
            DataError::InvalidData { .. }
        ));
        assert!(matches!(err(&["a", "bin"]), DataError::InvalidData { .. }));
        assert!(matches!(err(&["a", "a"]), DataError::InvalidData { .. }));
        assert!(matches!(err(&["a"]), DataError::InvalidData { .. }));
        let missing = FortuneCorpus::load(&dir.path().join("nowhere"), &[]).unwrap_err();
        assert!(matches!(missing, DataError::DataNotFound(_)));
    }
}
