//! The crate's error type.

use thiserror::Error;

/// Everything that can go wrong when configuring, attaching, switching or merging LoRA adapters.
///
/// Every variant names the offending value, so the message alone says what to fix.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum LoraError {
    /// The adapter rank was zero.
    #[error("LoRA rank must be at least 1, got 0")]
    ZeroRank,
    /// The adapter rank is larger than the smaller side of the layer it adapts.
    #[error("LoRA rank {rank} is larger than min(d_input, d_output) = {max} of a [{d_input}, {d_output}] layer")]
    RankTooLarge {
        /// The rank asked for.
        rank: usize,
        /// The layer's input width.
        d_input: usize,
        /// The layer's output width.
        d_output: usize,
        /// `min(d_input, d_output)`.
        max: usize,
    },
    /// `alpha` was negative, NaN or infinite.
    #[error("LoRA alpha must be finite and non-negative, got {0}")]
    InvalidAlpha(f64),
    /// The dropout probability was outside `[0, 1)`.
    #[error("LoRA dropout must be in [0, 1), got {0}")]
    InvalidDropout(f64),
    /// The standard deviation of the gaussian initialisation was not finite and positive.
    #[error("gaussian init std must be finite and positive, got {0}")]
    InvalidInitStd(f64),
    /// A model or layer configuration that cannot be built (a zero width, no layers, ...).
    #[error("invalid model configuration: {0}")]
    InvalidModel(String),
    /// An adapter name was added twice to the same layer or model.
    #[error("an adapter named \"{0}\" already exists")]
    DuplicateAdapter(String),
    /// No adapter has this name.
    #[error("no adapter named \"{0}\"")]
    UnknownAdapter(String),
    /// An adapter name that cannot be used (empty).
    #[error("invalid adapter name {0:?}: names must be non-empty")]
    InvalidAdapterName(String),
    /// A layer index that the model does not have.
    #[error("layer index {index} is out of range: the model has {count} layers")]
    LayerOutOfRange {
        /// The index asked for.
        index: usize,
        /// How many layers the model has.
        count: usize,
    },
    /// A tensor whose shape does not fit the layer or model.
    #[error("{what} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Which tensor.
        what: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape that was given.
        found: Vec<usize>,
    },
    /// A tensor holds NaN or infinite values where only finite ones are allowed.
    #[error("{0} contains non-finite values (NaN or infinity)")]
    NonFinite(String),
    /// The operation needs an unmerged layer, but adapters are merged into its weight.
    #[error("adapters {0:?} are merged into the base weight: unmerge first")]
    Merged(Vec<String>),
    /// `unmerge` was called on a layer with nothing merged.
    #[error("nothing is merged into this layer")]
    NotMerged,
    /// A file or directory could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The path involved.
        path: String,
        /// What the operating system said.
        message: String,
    },
    /// A truncated SVD was asked for a rank the matrix cannot have.
    #[error("truncated SVD to rank {rank} of a {rows}x{cols} matrix: rank must be in 1..={max}", max = rows.min(cols))]
    SvdRank {
        /// The rank asked for.
        rank: usize,
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// An adapter or weight file is not a valid safetensors / JSON file (truncated, garbage).
    #[error("{path}: not a valid {format} file: {reason}")]
    InvalidFile {
        /// The file.
        path: String,
        /// The format expected (`safetensors`, `adapter_config.json`).
        format: String,
        /// What the parser said.
        reason: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path}: missing tensor \"{key}\"")]
    MissingKey {
        /// The file.
        path: String,
        /// The key looked for.
        key: String,
    },
    /// The file holds a tensor that matches nothing in the model.
    #[error("{path}: unexpected tensor \"{key}\" ({reason})")]
    UnexpectedKey {
        /// The file.
        path: String,
        /// The key found.
        key: String,
        /// Why it does not fit.
        reason: String,
    },
    /// A tensor stored in a dtype that cannot be read as float.
    #[error(
        "{path}: tensor \"{key}\" has unsupported dtype {dtype} (expected F32, F64, F16 or BF16)"
    )]
    UnsupportedDtype {
        /// The file.
        path: String,
        /// The tensor.
        key: String,
        /// The dtype found.
        dtype: String,
    },
    /// A 2-D tensor of a PyTorch state dict whose layout is not known: the `weight` of a module
    /// burn-lora cannot tell is a `Linear` (PyTorch's `[out, in]`) or not (Burn's own layout),
    /// or options that state its layout twice or transpose a tensor that is not 2-D. See
    /// [`LoadOptions::with_transposed_pattern`](crate::LoadOptions::with_transposed_pattern).
    #[error("{path}: tensor \"{key}\": {reason}")]
    UnknownLayout {
        /// The file.
        path: String,
        /// The tensor.
        key: String,
        /// Why its layout is unknown, and how to state it.
        reason: String,
    },
    /// A whole-model checkpoint could not be written: a parameter's values could not be read.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A regular expression (a [`PathMap`](crate::PathMap) rule or a key pattern of
    /// [`LoadOptions`](crate::LoadOptions)) that does not compile.
    #[error("invalid regular expression {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What the regex compiler said.
        reason: String,
    },
    /// A feature of the file or config that burn-lora does not implement (DoRA, trained biases…).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A layer selection ([`Targets`](crate::Targets)) that is invalid or selects nothing: a bad
    /// regular expression, no LoRA layer matched, or a match that is not a LoRA layer.
    #[error("invalid targets: {0}")]
    InvalidTargets(String),
    /// The SVD routine failed to converge.
    #[error("SVD failed: {0}")]
    SvdFailed(String),
    /// A base weight that cannot be kept quantized: a scheme burn-lora does not hold (only
    /// Burn's 8- and 4-bit integer schemes with `f32` scales, per tensor or per block of a row,
    /// are), values that are not finite, or a layer whose state needs the float weight
    /// (merged, a DoRA, PiSSA or OLoRA adapter, already quantized).
    #[error("cannot quantize the base weight: {0}")]
    Quantize(String),
    /// A request a model cannot run: an empty batch, a token id outside the vocabulary, a
    /// sequence longer than the model's positions, a row count that does not match.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// `Result` with [`LoraError`] as the error.
pub type Result<T> = core::result::Result<T, LoraError>;
