//! A corpus fuzzer for burn-lora's file parsers, on proptest.
//!
//! Each target has a folder `tests/fixtures/fuzz/<target>/` with
//! - `corpus/`: seed files beside the ones the test names (the PEFT fixtures), each a valid
//!   file or one near the edge of the format;
//! - `regressions/`: inputs that once broke a property, replayed unmutated on every run. A
//!   failing case is written there (after proptest has shrunk it) and the test fails naming it.
//!
//! A case takes a seed and applies one to four [`Mutation`]s (for JSON and safetensors, half of
//! the cases JSON edits only); the target's check must not panic
//! and returns the outcome's name (tallied and printed) or the property it found broken.
//! `BURN_LORA_FUZZ_CASES=<n>` runs `n` cases instead of the test's count (the long runs outside
//! CI), `BURN_LORA_FUZZ_SEED=<u64>` replays a run; every run prints its seed.

mod mutation;

pub use mutation::{apply, json_edit, json_value, mutation, Format, JsonEdit, Mutation};

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// The words of the safetensors format, for a target's dictionary: the header's fields and the
/// dtype names (valid, unsupported and unknown).
pub const SAFETENSORS_WORDS: &[&str] = &[
    "dtype",
    "shape",
    "data_offsets",
    "__metadata__",
    "format",
    "pt",
    "F32",
    "F16",
    "BF16",
    "F64",
    "I64",
    "I32",
    "U8",
    "BOOL",
    "F8_E4M3",
    "F4",
];

/// The name of an error's variant (`InvalidFile` for `InvalidFile { .. }`), to tally outcomes.
pub fn variant_name(error: &impl std::fmt::Debug) -> String {
    let debug = format!("{error:?}");
    let end = debug.find([' ', '(', '{']).unwrap_or(debug.len());
    debug[..end].to_string()
}

/// The folder of fuzz target `target`: `tests/fixtures/fuzz/<target>`.
pub fn target_dir(target: &str) -> PathBuf {
    crate::fixtures::repository_root()
        .join("tests/fixtures/fuzz")
        .join(target)
}

/// One fuzz target: its seeds, its dictionary and the number of cases.
pub struct Fuzz {
    target: String,
    dir: PathBuf,
    format: Format,
    seeds: Vec<(String, Vec<u8>)>,
    words: Vec<String>,
    cases: u32,
}

/// What a run did: the number of mutated inputs and how often each outcome came.
#[derive(Debug)]
pub struct FuzzReport {
    /// Mutated inputs checked (seeds and regression files not counted).
    pub cases: u32,
    /// Outcome name (as the check returned it) to count.
    pub outcomes: BTreeMap<String, u64>,
    /// The run's seed (`BURN_LORA_FUZZ_SEED` replays it).
    pub seed: u64,
}

impl FuzzReport {
    /// How many inputs gave an outcome other than `ok`.
    pub fn count_except(&self, ok: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|(name, _)| *name != ok)
            .map(|(_, n)| n)
            .sum()
    }
}

impl Fuzz {
    /// Target `target` with the files of its `corpus/` folder as seeds.
    pub fn new(target: &str, format: Format) -> Self {
        let dir = target_dir(target);
        let seeds = read_files(&dir.join("corpus"));
        Self {
            target: target.to_string(),
            dir,
            format,
            seeds,
            words: vec!["__base__".into()],
            cases: 100,
        }
    }

    /// Adds a seed file (one of the repository's fixtures).
    ///
    /// # Panics
    /// When the file cannot be read: the fixtures ship with the repository.
    pub fn seed_file(mut self, path: &Path) -> Self {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("fuzz seed {} unreadable: {e}", path.display()));
        self.seeds.push((path.display().to_string(), bytes));
        self
    }

    /// Adds words the format uses (keys, type names, values) to insert and to write as strings.
    pub fn words(mut self, words: &[&str]) -> Self {
        self.words.extend(words.iter().map(|w| w.to_string()));
        self
    }

    /// Runs `cases` mutated inputs, or `BURN_LORA_FUZZ_CASES` when it is set.
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = std::env::var("BURN_LORA_FUZZ_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases);
        self
    }

    /// Checks the regression files, the seeds and then the mutated inputs with `check`, which
    /// returns the outcome's name or the broken property.
    ///
    /// # Panics
    /// When `check` fails or panics on an input: the message names the input, saved under
    /// `regressions/`.
    pub fn run(self, check: impl Fn(&[u8]) -> Result<String, String>) -> FuzzReport {
        assert!(
            !self.seeds.is_empty(),
            "fuzz target {} has no seed",
            self.target
        );
        let regressions = self.dir.join("regressions");
        let guarded = |bytes: &[u8]| match catch_unwind(AssertUnwindSafe(|| check(bytes))) {
            Ok(result) => result,
            Err(panic) => Err(format!("panicked: {}", panic_message(&*panic))),
        };
        for (name, bytes) in read_files(&regressions).iter().chain(&self.seeds) {
            if let Err(broken) = guarded(bytes) {
                panic!("{}: {name}: {broken}", self.target);
            }
        }

        let seed = std::env::var("BURN_LORA_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(time_seed);
        let mut rng_seed = [0u8; 32];
        for (i, chunk) in rng_seed.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&(seed ^ (i as u64).wrapping_mul(0x9E37_79B9)).to_le_bytes());
        }
        let config = Config {
            cases: self.cases,
            failure_persistence: None,
            max_shrink_iters: 2_000,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &rng_seed));
        let seed_bytes: Vec<Vec<u8>> = self.seeds.iter().map(|(_, b)| b.clone()).collect();
        // Byte edits mostly break a JSON text or header at once, so half of the cases of a
        // format with JSON make JSON edits only: they reach the checks past the syntax.
        let mixed = prop::collection::vec(mutation(self.words.clone(), seed_bytes.len()), 1..=4);
        let structured = prop::collection::vec(
            json_edit(self.words.clone()).prop_map(Mutation::Json),
            1..=4,
        );
        let mutations = if self.format == Format::Bytes {
            mixed.boxed()
        } else {
            prop_oneof![mixed, structured].boxed()
        };
        let strategy = (0..self.seeds.len(), mutations);
        let outcomes = RefCell::new(BTreeMap::<String, u64>::new());
        let last_failure = RefCell::new(None::<(Vec<u8>, String)>);
        let result = runner.run(&strategy, |(index, mutations)| {
            let input = apply(&seed_bytes[index], &mutations, self.format, &seed_bytes);
            match guarded(&input) {
                Ok(outcome) => {
                    *outcomes.borrow_mut().entry(outcome).or_default() += 1;
                    Ok(())
                }
                Err(broken) => {
                    let message = format!("seed {}: {broken}", self.seeds[index].0);
                    *last_failure.borrow_mut() = Some((input, message.clone()));
                    Err(TestCaseError::fail(message))
                }
            }
        });
        if result.is_err() {
            // The last failing input proptest tried is the shrunk one.
            let (input, message) = last_failure
                .into_inner()
                .unwrap_or_else(|| (Vec::new(), format!("{result:?}")));
            let file = regressions.join(format!("{:016x}", fnv1a(&input)));
            let saved = std::fs::create_dir_all(&regressions)
                .and_then(|()| std::fs::write(&file, &input))
                .map_or_else(|e| format!("not saved: {e}"), |()| "saved".to_string());
            panic!(
                "{}: fuzz seed {seed}: {message}\ninput ({} bytes) {saved} as {}",
                self.target,
                input.len(),
                file.display()
            );
        }
        let report = FuzzReport {
            cases: self.cases,
            outcomes: outcomes.into_inner(),
            seed,
        };
        println!(
            "{}: {} mutated inputs (BURN_LORA_FUZZ_SEED={}): {:?}",
            self.target, report.cases, report.seed, report.outcomes
        );
        report
    }
}

/// The files of `dir` (none when it does not exist), by name.
fn read_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            Some((e.path().display().to_string(), bytes))
        })
        .collect();
    files.sort();
    files
}

fn time_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}
