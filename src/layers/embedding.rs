//! [`LoraEmbedding`]: a frozen `Embedding` base plus named low-rank adapters.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::{embedding, linear};
use burn::tensor::{Distribution, Int, Tensor};

use crate::config::{LoraConfig, LoraInit};
use crate::error::{LoraError, Result as LoraResult};
use crate::layers::adapter::LoraAdapter;
use crate::layers::adapter_batch::{forward_grouped, AdapterBatch};
use crate::layers::dora;
use crate::layers::layer::{shared_layer_methods, LayerKind, LoraLayer};
use crate::layers::linear::replace_value;

/// Configuration to create a fresh [`LoraEmbedding`] (a randomly initialised table, no adapter
/// yet); the fields are those of Burn's [`EmbeddingConfig`].
///
/// To adapt a trained table instead, use [`LoraEmbedding::from_embedding`].
#[derive(Config, Debug)]
pub struct LoraEmbeddingConfig {
    /// The number of embedding vectors (the vocabulary size).
    pub n_embedding: usize,
    /// The size of each vector.
    pub d_model: usize,
    /// Initialisation of the table (Burn's `Embedding` default, `N(0, 1)`).
    #[config(default = "Initializer::Normal{mean:0.0, std:1.0}")]
    pub initializer: Initializer,
}

impl LoraEmbeddingConfig {
    /// Builds the layer; both sizes must be non-zero.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraResult<LoraEmbedding<B>> {
        if self.n_embedding == 0 || self.d_model == 0 {
            return Err(LoraError::InvalidModel(format!(
                "embedding sizes must be non-zero, got [{}, {}]",
                self.n_embedding, self.d_model
            )));
        }
        let base = EmbeddingConfig::new(self.n_embedding, self.d_model)
            .with_initializer(self.initializer.clone())
            .init(device);
        Ok(LoraEmbedding::from_embedding(base))
    }
}

/// An embedding table with a frozen base and low-rank adapters:
/// `y = W[ids] + Σ_active s · (A[ids] B)`.
///
/// Row `i` of the adapted table is `W[i] + s · A[i] B`: each adapter's `A` is itself a small
/// `[n_embedding, r]` table whose rows are gathered like the base's (never a one-hot matmul),
/// then projected to `d_model` by `B`. As in PEFT, embedding adapters apply no dropout (a
/// configured dropout is ignored).
///
/// A fresh adapter is initialised as PEFT initialises embedding adapters, not as
/// [`LoraConfig::init`] says for linear layers: `A = 0` and `B ~ N(0, 1)` (so the update still
/// starts at zero). The config's `init` must therefore be the default
/// ([`LoraInit::KaimingUniform`], PEFT's `init_lora_weights=True`); any other is refused with
/// [`LoraError::Unsupported`] by [`add_adapter`](LoraLayer::add_adapter) and by
/// [`LoraModel::attach`](crate::LoraModel::attach) on a model holding the embedding.
///
/// A lookup is memory-bound: unmerged, each adapter adds a `[batch, seq, d_model]` matmul output
/// and a pass adding it to the gathered rows, about three times the bare lookup's memory
/// traffic. For inference, [`merge`](LoraLayer::merge) the adapters (or merge-and-unload the
/// model): a merged table costs exactly a plain lookup.
///
/// The base is stored exactly as Burn's [`Embedding`] stores it (field `weight`), so a
/// checkpoint of a model built with `Embedding` loads into the same model built with
/// `LoraEmbedding`. Adapters live beside it; attaching one freezes the base. PEFT names the
/// factors `lora_embedding_A [r, n_embedding]` and `lora_embedding_B [d_model, r]` (the
/// transposes of `A` and `B`, without a `.weight` suffix).
///
/// # Shapes
/// - `weight`: `[n_embedding, d_model]`
/// - each adapter: `A [n_embedding, r]`, `B [r, d_model]`
/// - `forward`: ids `[batch, seq]` → `[batch, seq, d_model]`
///
/// ```
/// use burn::backend::Flex as Inference;
/// use burn::tensor::{Distribution, Int, Tensor};
/// use burn_lora::{LoraConfig, LoraEmbeddingConfig, LoraLayer};
///
/// let device = Default::default();
/// let mut table = LoraEmbeddingConfig::new(100, 16).init::<Inference>(&device)?;
/// let ids = Tensor::<Inference, 2, Int>::from_ints([[1, 5, 7], [0, 99, 3]], &device);
/// let before = table.forward(ids.clone());
/// assert_eq!(before.dims(), [2, 3, 16]);
///
/// table.add_adapter("default", &LoraConfig::new(4, 8.0))?;
/// // B starts at zero: attaching changes nothing until the adapter is trained.
/// table.forward(ids.clone()).into_data().assert_eq(&before.into_data(), true);
/// assert_eq!(table.adapter_dims(), [100, 16]);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Module, Debug)]
pub struct LoraEmbedding<B: Backend> {
    /// Base table `W`, shape `[n_embedding, d_model]`; frozen once an adapter is attached.
    weight: Param<Tensor<B, 2>>,
    /// Named adapters; none in a base-only checkpoint, which loads unchanged. A record keeps
    /// their names and configurations (see [`AdapterList`](crate::AdapterList)).
    adapters: crate::AdapterList<B>,
    /// `W + Σ s·A B` of the adapters merged in place, `[n_embedding, d_model]`; `None` when
    /// unmerged. Kept beside `W` (never written into it) so that unmerging is exact; a record
    /// keeps it with the merged adapters' names, and loading takes the record's merged state.
    merged_weight: crate::MergedWeight<B, 2>,
    /// DoRA adapters' norms `‖W + s·A B‖`, kept at inference (never in a record).
    dora_norms: crate::DoraNorms<B>,
    /// When false, `forward` is exactly the base layer.
    #[module(skip)]
    enabled: bool,
}

impl<B: Backend> LoraEmbedding<B> {
    /// Wraps a (trained) [`Embedding`]; its table is moved, not copied.
    pub fn from_embedding(embedding: Embedding<B>) -> Self {
        Self {
            weight: embedding.weight,
            adapters: crate::AdapterList::empty(),
            merged_weight: crate::MergedWeight::none(),
            dora_norms: Default::default(),
            enabled: true,
        }
    }

    /// Looks up the rows of `ids`.
    ///
    /// # Shapes
    /// - input: `[batch, seq]` ids in `0..n_embedding`
    /// - output: `[batch, seq, d_model]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        if !self.enabled {
            return self.forward_base(ids);
        }
        if let Some(merged) = self.merged_weight.tensor() {
            return embedding(merged, ids);
        }
        let mut active = LoraLayer::adapters(self)
            .iter()
            .filter(|a| a.is_active())
            .peekable();
        if active.peek().is_none() {
            return self.forward_base(ids);
        }
        let base = self.forward_base(ids.clone());
        active.fold(base, |output, adapter| {
            let base = adapter.is_dora().then(|| output.clone());
            output + self.adapter_update(adapter, ids.clone(), base)
        })
    }

    /// One adapter's update to the looked-up rows: `s · A[ids] B`, or for a DoRA adapter
    /// `(k - 1) ⊙ W[ids] + k ⊙ s · A[ids] B` with `k = m / ‖W + s·A B‖` (PEFT's
    /// `k ⊙ (W[ids] + s · A[ids] B)`); `base` is `W[ids]` when the caller has it.
    fn adapter_update(
        &self,
        adapter: &LoraAdapter<B>,
        ids: Tensor<B, 2, Int>,
        base: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let Some(scale) = self.dora_scale(adapter) else {
            return adapter_rows(adapter, ids);
        };
        let base = base.unwrap_or_else(|| self.forward_base(ids.clone()));
        dora::update(base, adapter_rows(adapter, ids), scale.unsqueeze())
    }

    /// A forward in which each row of `ids` runs the adapter `batch` names for it, or the base
    /// alone: the lookup once for every row, then each adapter's update on its own rows (see
    /// [`AdapterBatch`]).
    ///
    /// # Shapes
    /// - ids: `[rows, seq]` with `rows = batch.rows()`
    /// - output: `[rows, seq, d_model]`
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] when `ids` does not have `batch.rows()` rows,
    /// [`LoraError::Merged`] while merged.
    pub fn forward_adapters(
        &self,
        ids: Tensor<B, 2, Int>,
        batch: &AdapterBatch,
    ) -> LoraResult<Tensor<B, 3>> {
        let rows = ids.dims()[0];
        forward_grouped(
            self,
            batch,
            rows,
            ids,
            |ids| self.forward_base(ids),
            |ids, rows| ids.select(0, rows),
            |adapter, ids, base| self.adapter_update(adapter, ids, base),
        )
    }

    /// The base table alone, `W[ids]`, whatever the adapters' state (merged ones included).
    pub fn forward_base(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        embedding(self.weight.val(), ids)
    }

    /// The base table `W`, `[n_embedding, d_model]`.
    pub fn weight(&self) -> Tensor<B, 2> {
        self.weight.val()
    }

    /// The table as a matrix, as a tied output head reads it (`h Eᵀ`): the merged table
    /// `W + Σ s·A B` while adapters are merged into it and the layer is enabled, else the base
    /// `W`, `[n_embedding, d_model]`. Unmerged adapters change the lookups only: PEFT's tied
    /// head shares the embedding's weight tensor, which a merge rewrites and nothing else does.
    pub fn tied_weight(&self) -> Tensor<B, 2> {
        match self.merged_weight.tensor() {
            Some(merged) if self.enabled => merged,
            _ => self.weight(),
        }
    }

    /// The number of embedding vectors.
    pub fn n_embedding(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }

    /// The size of each vector.
    pub fn d_model(&self) -> usize {
        self.weight.shape().dims::<2>()[1]
    }

    /// Number of base values.
    pub fn num_base_params(&self) -> usize {
        self.n_embedding() * self.d_model()
    }

    /// The base table parameter (its id and gradient setting included).
    pub fn weight_param(&self) -> &Param<Tensor<B, 2>> {
        &self.weight
    }

    /// Merge-and-unload: a new plain [`Embedding`] computing what this layer's `forward`
    /// computes now (table `W + Σ_active s · A B`). This layer is left as it was.
    ///
    /// Fails with [`LoraError::NonFinite`] if an active adapter or the sum holds NaN or
    /// infinity.
    pub fn merge_to_embedding(&self) -> LoraResult<Embedding<B>> {
        Ok(Embedding {
            weight: Param::from_tensor(self.effective_weight()?),
        })
    }

    /// The table `forward` reads: the merged one while merged, else `W + Σ_active s · A B`
    /// (`W` alone when disabled or nothing is active). Checked to be finite.
    fn effective_weight(&self) -> LoraResult<Tensor<B, 2>> {
        if !self.enabled {
            return Ok(self.weight().detach());
        }
        if let Some(merged) = self.merged_weight.tensor() {
            return Ok(merged.detach());
        }
        Ok(self
            .merged_base()?
            .map_or_else(|| self.weight().detach(), |(weight, _)| weight))
    }

    /// `W + Σ_active s · A B` with the adapters' names; `None` when no adapter is active or the
    /// layer is disabled.
    fn merged_base(&self) -> LoraResult<Option<(Tensor<B, 2>, Vec<String>)>> {
        self.merged_matrix()
    }
}

/// `s · A[ids] B`: the adapter's rows gathered like the base's, scaled at rank width, projected.
fn adapter_rows<B: Backend>(adapter: &LoraAdapter<B>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let hidden = embedding(adapter.lora_a(), ids);
    let scale = adapter.scale();
    let hidden = if scale == 1.0 {
        hidden
    } else {
        hidden.mul_scalar(scale)
    };
    linear(hidden, adapter.lora_b(), None)
}

impl<B: Backend> LoraLayer<B> for LoraEmbedding<B> {
    shared_layer_methods!();

    fn kind(&self) -> LayerKind {
        LayerKind::Embedding
    }

    /// Refuses any `init` but the default: PEFT's embedding rule does not draw `A` at all.
    fn check_fresh_init(&self, config: &LoraConfig) -> LoraResult<()> {
        match &config.init {
            LoraInit::KaimingUniform => Ok(()),
            other => Err(LoraError::Unsupported(format!(
                "LoRA init {other:?} on an embedding layer: embedding adapters are initialised \
                 as PEFT does, A = 0 and B ~ N(0, 1), whatever the init; use the default init \
                 (LoraInit::KaimingUniform) for embeddings, or leave them out of the targets"
            ))),
        }
    }

    /// PEFT's initialisation of an embedding adapter: `A = 0`, `B ~ N(0, 1)` (the update still
    /// starts at zero; the large `B` lets `A`'s gathered rows learn at the linear layers' pace).
    /// Only the default `config.init` is accepted (see
    /// [`check_fresh_init`](LoraLayer::check_fresh_init)).
    fn fresh_adapter(&self, name: &str, config: &LoraConfig) -> LoraResult<LoraAdapter<B>> {
        self.check_fresh_init(config)?;
        let device = self.weight.device();
        let lora_a = Tensor::zeros([self.n_embedding(), config.rank], &device);
        let lora_b = Tensor::random(
            [config.rank, self.d_model()],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        LoraAdapter::checked_factors(name.to_string(), config, lora_a, lora_b)
    }

    fn adapter_dims(&self) -> [usize; 2] {
        [self.n_embedding(), self.d_model()]
    }

    fn base_weight_shape(&self) -> Vec<usize> {
        self.weight.shape().dims::<2>().to_vec()
    }

    fn base_bias_len(&self) -> Option<usize> {
        None
    }

    fn base_matrix(&self) -> Tensor<B, 2> {
        self.weight.val().detach()
    }

    fn peft_factor_keys(&self) -> [&'static str; 2] {
        ["lora_embedding_A", "lora_embedding_B"]
    }

    fn peft_factor_shapes(&self, rank: usize) -> [Vec<usize>; 2] {
        [vec![rank, self.n_embedding()], vec![self.d_model(), rank]]
    }

    fn freeze_base(&mut self) {
        self.weight = self.weight.clone().set_require_grad(false);
    }

    fn merge_and_unload(&mut self) -> LoraResult<()> {
        let weight = self.effective_weight()?;
        self.dora_norms.clear();
        self.weight = replace_value(self.weight.clone(), weight);
        self.merged_weight = crate::MergedWeight::none();
        self.adapters = crate::AdapterList::empty();
        Ok(())
    }
}
