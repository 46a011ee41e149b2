//! [`CausalLm`]: a Llama-family decoder with its language-model head, and its checked forward.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::cache::CausalLmCache;
use super::config::CausalLmConfig;
use crate::error::{LoraError, Result};
use crate::layers::adapter_batch::AdapterBatch;
use crate::layers::embedding::LoraEmbedding;
use crate::model::check_unmerged;
use crate::nn::decoder::mask::DecoderMask;
use crate::nn::decoder::{project, DecoderLayer, RotaryEmbedding};
use crate::nn::ids::{check_ids, host_ints, host_mask};
use crate::{LoraLinear, LoraModel};

/// The decoder of a [`CausalLm`]: token embeddings, the layers, the final RMSNorm (Hugging
/// Face's `LlamaModel`, at the path `model`).
#[derive(Module, Debug, LoraModel)]
pub struct CausalLmModel<B: Backend> {
    /// Token embeddings `[vocab_size, hidden_size]`, LoRA-ready.
    pub embed_tokens: LoraEmbedding<B>,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// RMSNorm after the last layer.
    pub norm: RmsNorm<B>,
}

/// A Llama-family causal language model (Llama, Qwen2, Mistral) as Hugging Face's
/// `*ForCausalLM`, every linear layer a [`LoraLinear`] and the token embeddings a
/// [`LoraEmbedding`].
///
/// Module paths are Hugging Face's (`model.layers.0.self_attn.q_proj`, `lm_head`), so its
/// checkpoints load by their names and PEFT adapter files load and save with
/// [`PathMap::identity`](crate::PathMap::identity). With tied embeddings there is no `lm_head`:
/// the logits are `h Eᵀ` with `E` the embedding matrix ([`LoraEmbedding::tied_weight`]): the
/// base one, or the merged one while adapters are merged into the embeddings, as in PEFT.
///
/// `logits = head(norm(layers(embed(ids))))`
///
/// # Shapes
/// - input ids, attention mask, position ids: `[batch, seq]`
/// - logits: `[batch, seq, vocab_size]` (`[batch, 1, vocab_size]` for the last position only)
///
/// ```
/// use burn::backend::Flex;
/// use burn::tensor::{Int, Tensor};
/// use burn_lora::nn::llama::{CausalLmConfig, CausalLmInput, Family};
/// use burn_lora::{LoraConfig, LoraModel, Targets};
///
/// let device = Default::default();
/// let config = CausalLmConfig::new(Family::Llama, 64, 16, 32, 2, 4, 2, 4, 32);
/// let mut lm = config.init::<Flex>(&device)?;
/// lm.attach("chat", &LoraConfig::new(2, 4.0), &Targets::names(["q_proj", "v_proj"]))?;
///
/// let ids = Tensor::<Flex, 2, Int>::from_ints([[5, 6, 7], [8, 9, 10]], &device);
/// let batch = lm.adapter_batch(&["chat", "__base__"])?; // row 0 with the adapter, row 1 without
/// let logits = lm.forward(CausalLmInput::new(ids).adapters(batch))?;
/// assert_eq!(logits.dims(), [2, 3, 64]);
///
/// let too_large = Tensor::<Flex, 2, Int>::from_ints([[64]], &device);
/// assert!(lm.forward(CausalLmInput::new(too_large)).is_err()); // an error, not a panic
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Module, Debug, LoraModel)]
pub struct CausalLm<B: Backend> {
    /// The decoder.
    pub model: CausalLmModel<B>,
    /// The output head `hidden_size → vocab_size`; `None` with tied embeddings.
    pub lm_head: Option<LoraLinear<B>>,
    /// What the model was built from.
    #[module(skip)]
    config: CausalLmConfig,
    /// The rotary frequencies every layer shares.
    #[module(skip)]
    rope: RotaryEmbedding,
}

/// The input of one [`CausalLm::forward`].
///
/// # Shapes
/// - input ids: `[batch, seq]`
/// - attention mask: `[batch, seq]`, 1 for a token, 0 for padding (default: all tokens)
/// - position ids: `[batch, seq]` (default: Hugging Face's, from the mask and the cache)
#[derive(Clone, Debug)]
pub struct CausalLmInput<B: Backend> {
    input_ids: Tensor<B, 2, Int>,
    attention_mask: Option<Tensor<B, 2, Int>>,
    position_ids: Option<Tensor<B, 2, Int>>,
    adapters: Option<AdapterBatch>,
    last_only: bool,
    /// The ids are known to be in the vocabulary (sampled from the model's own logits), so
    /// the forward does not read them back to check them.
    ids_in_vocabulary: bool,
}

impl<B: Backend> CausalLmInput<B> {
    /// The token ids, `[batch, seq]`.
    pub fn new(input_ids: Tensor<B, 2, Int>) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            position_ids: None,
            adapters: None,
            last_only: false,
            ids_in_vocabulary: false,
        }
    }

    /// Token sequences of different lengths in one batch, left-padded with `pad` (masked, so its
    /// value does not matter) as Hugging Face pads prompts for generation: the attention mask is
    /// 0 on the padding, and the default position ids start at 0 on each row's first token.
    ///
    /// # Shapes
    /// - output ids and mask: `[prompts.len(), longest prompt]`
    pub fn left_padded(prompts: &[Vec<u32>], pad: u32, device: &B::Device) -> Self {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let rows = prompts.len();
        let mut ids = Vec::with_capacity(rows * longest);
        let mut mask = Vec::with_capacity(rows * longest);
        for prompt in prompts {
            let padding = longest - prompt.len();
            ids.extend(std::iter::repeat_n(i64::from(pad), padding));
            ids.extend(prompt.iter().map(|&t| i64::from(t)));
            mask.extend(std::iter::repeat_n(0, padding));
            mask.extend(std::iter::repeat_n(1, prompt.len()));
        }
        Self::new(int_tensor(ids, [rows, longest], device)).attention_mask(int_tensor(
            mask,
            [rows, longest],
            device,
        ))
    }

    /// Which tokens are real (1) and which are padding (0), `[batch, seq]`. With a cache, the
    /// mask of this call's tokens only: the cache remembers the earlier ones.
    pub fn attention_mask(mut self, mask: Tensor<B, 2, Int>) -> Self {
        self.attention_mask = Some(mask);
        self
    }

    /// Explicit position ids, `[batch, seq]`, instead of those the mask implies.
    pub fn position_ids(mut self, positions: Tensor<B, 2, Int>) -> Self {
        self.position_ids = Some(positions);
        self
    }

    /// Runs each row with its own adapter (PEFT's `adapter_names`); see
    /// [`LoraModel::adapter_batch`].
    pub fn adapters(mut self, batch: AdapterBatch) -> Self {
        self.adapters = Some(batch);
        self
    }

    /// Computes the logits of the last position only (what generation needs): the head, whose
    /// cost grows with the vocabulary, runs on one position per row. A row's last position is
    /// its last token by the attention mask: the end of a left-padded row, the position before
    /// the padding of a right-padded one. A row of padding alone is an error.
    pub fn last_position_only(mut self) -> Self {
        self.last_only = true;
        self
    }

    /// Marks the ids as taken from the model's own logits (a generation's new tokens), which
    /// are in the vocabulary: the forward skips their check, a read of the ids to the host.
    pub(crate) fn ids_in_vocabulary(mut self) -> Self {
        self.ids_in_vocabulary = true;
        self
    }
}

impl<B: Backend> CausalLm<B> {
    pub(crate) fn assemble(
        model: CausalLmModel<B>,
        lm_head: Option<LoraLinear<B>>,
        config: CausalLmConfig,
        rope: RotaryEmbedding,
    ) -> Self {
        Self {
            model,
            lm_head,
            config,
            rope,
        }
    }

    /// What the model was built from.
    pub fn config(&self) -> &CausalLmConfig {
        &self.config
    }

    /// The logits of every position of `input` (or of its last one).
    ///
    /// # Errors
    /// Checked before any computation, so that a server can reject a bad request:
    /// [`LoraError::InvalidInput`] for an empty batch, a token id outside the vocabulary, a
    /// sequence longer than `max_position_embeddings`, a mask or position ids of another shape,
    /// a mask value other than 0 and 1, or an adapter batch of another row count;
    /// [`LoraError::UnknownAdapter`] for an adapter no layer holds; [`LoraError::Merged`] for an
    /// adapter batch while adapters are merged.
    pub fn forward(&self, input: CausalLmInput<B>) -> Result<Tensor<B, 3>> {
        self.run(input, None)
    }

    /// [`forward`](Self::forward) continuing the sequences held in `cache`: `input` holds only
    /// the new tokens, which attend to every cached position, and the cache takes their keys
    /// and values.
    ///
    /// # Errors
    /// As [`forward`](Self::forward), counting the cached positions in the length, and
    /// [`LoraError::InvalidInput`] when the batch differs from the cache's or the cache belongs
    /// to a model with another number of layers. On error the cache is unchanged.
    pub fn forward_cache(
        &self,
        input: CausalLmInput<B>,
        cache: &mut CausalLmCache<B>,
    ) -> Result<Tensor<B, 3>> {
        self.run(input, Some(cache))
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> CausalLmCache<B> {
        CausalLmCache::new(self.model.layers.len())
    }

    /// [`run_here`](Self::run_here) inside [`burn_lora_kernels::with_fast_paths`]: on Flex the
    /// products of a few rows (decoding) stream their weights over all threads, and the step
    /// runs on the backend's compute threads, so that its hundreds of small operations do not
    /// each wake them and wait. Products then differ from Burn's by rounding (the order of a
    /// sum); other backends, `Autodiff` included, run Burn's operations.
    fn run(
        &self,
        input: CausalLmInput<B>,
        cache: Option<&mut CausalLmCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        burn_lora_kernels::with_fast_paths::<B, _>(|| self.run_here(input, cache))
    }

    fn run_here(
        &self,
        mut input: CausalLmInput<B>,
        mut cache: Option<&mut CausalLmCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq] = input.input_ids.dims();
        let invalid = |what: String| Err(LoraError::InvalidInput(what));
        if batch == 0 || seq == 0 {
            return invalid(format!("an empty batch of shape [{batch}, {seq}]"));
        }
        let device = input.input_ids.device();
        if !input.ids_in_vocabulary {
            check_ids(
                &input.input_ids,
                self.config.vocab_size,
                "token id",
                "vocabulary",
            )?;
        }
        let mask = match &input.attention_mask {
            Some(mask) => host_mask(mask, [batch, seq])?,
            None => vec![1; batch * seq],
        };
        let last_positions = if input.last_only {
            Some(last_real_positions(&mask, [batch, seq])?)
        } else {
            None
        };
        let past = match cache.as_deref() {
            Some(cache) => {
                cache.check(batch, self.model.layers.len())?;
                cache.len()
            }
            None => 0,
        };
        let max = self.config.max_position_embeddings;
        if past + seq > max {
            return invalid(format!(
                "{} positions ({past} cached, {seq} new) exceed the model's \
                 max_position_embeddings of {max}",
                past + seq
            ));
        }
        if let Some(batch_adapters) = &input.adapters {
            self.check_adapters(batch_adapters, batch)?;
        }
        if let Some(positions) = &input.position_ids {
            check_positions(positions, [batch, seq])?;
        }
        let window = self.config.sliding_window;
        // One new token per row, none of it padding, after cached positions and within the
        // sliding window: the positions and the mask continue from what the cache keeps.
        let step = cache.as_deref().filter(|_| {
            past > 0 && seq == 1 && window.is_none_or(|w| past < w) && mask.iter().all(|&m| m == 1)
        });
        let padding = cache
            .as_deref()
            .and_then(|cache| cache.padding_with(&mask, seq, &device));
        let (positions, attention_mask) = match step {
            Some(cache) => (
                input
                    .position_ids
                    .take()
                    .unwrap_or_else(|| cache.next_positions(&device)),
                padding.clone().map(|p| p.reshape([batch, 1, 1, past + 1])),
            ),
            None => {
                let keys = match cache.as_deref() {
                    Some(cache) => cache.extended_mask(&mask, seq),
                    None => mask.clone(),
                };
                let layout = DecoderMask::new(batch, past, seq, keys);
                let positions = input
                    .position_ids
                    .take()
                    .unwrap_or_else(|| layout.position_ids(&device));
                (positions, Some(layout.attention_mask(window, &device)))
            }
        };
        let rope = self.rope.tables(positions);
        let adapters = input.adapters.as_ref();

        let embed = &self.model.embed_tokens;
        let mut hidden = match adapters {
            Some(batch) => embed.forward_adapters(input.input_ids, batch)?,
            None => embed.forward(input.input_ids),
        };
        let mut layer_caches = cache.as_deref_mut().map(CausalLmCache::layers_mut);
        for (index, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = layer_caches.as_mut().and_then(|c| c.get_mut(index));
            hidden = layer.forward(hidden, &rope, attention_mask.clone(), layer_cache, adapters)?;
        }
        if let Some(cache) = cache {
            cache.commit(&mask, seq, padding);
        }
        let hidden = crate::nn::decoder::rms_norm(&self.model.norm, hidden);
        let hidden = match last_positions {
            Some(last) => select_positions(hidden, &last),
            None => hidden,
        };
        match &self.lm_head {
            Some(head) => project(head, hidden, adapters),
            None => Ok(tied_head(hidden, self.model.embed_tokens.tied_weight())),
        }
    }

    /// Every adapter of `batch` is held by some layer, nothing is merged, one entry per row.
    fn check_adapters(&self, batch: &AdapterBatch, rows: usize) -> Result<()> {
        batch.check_rows(rows)?;
        let layers = self.lora_layers();
        check_unmerged(layers.clone())?;
        match batch
            .adapter_names()
            .into_iter()
            .find(|name| !layers.iter().any(|l| l.adapter(name).is_some()))
        {
            Some(unknown) => Err(LoraError::UnknownAdapter(unknown.to_string())),
            None => Ok(()),
        }
    }
}

/// The index of each row's last token (the last position whose mask is 1), for
/// [`CausalLmInput::last_position_only`]: `seq - 1` in a left-padded batch, earlier in a
/// right-padded row. A row of padding alone has none, and is an error.
fn last_real_positions(mask: &[i64], [batch, seq]: [usize; 2]) -> Result<Vec<usize>> {
    (0..batch)
        .map(|row| {
            // In bounds: `mask` holds `batch · seq` values (`host_mask` checked its shape).
            mask[row * seq..(row + 1) * seq]
                .iter()
                .rposition(|&m| m == 1)
                .ok_or_else(|| {
                    LoraError::InvalidInput(format!(
                        "row {row} of the attention mask is all padding: it has no last \
                         position for last_position_only"
                    ))
                })
        })
        .collect()
}

/// Each row's hidden state at its own position `last[row]`.
///
/// # Shapes
/// - hidden: `[batch, seq, width]`
/// - output: `[batch, 1, width]`
fn select_positions<B: Backend>(hidden: Tensor<B, 3>, last: &[usize]) -> Tensor<B, 3> {
    // `seq ≥ 1`: `run` refuses an empty batch before anything runs.
    let [batch, seq, width] = hidden.dims();
    if last.iter().all(|&position| position == seq - 1) {
        // Every row ends with a token (no padding, or left padding): one slice, no gather.
        return hidden.slice([0..batch, seq - 1..seq, 0..width]);
    }
    let device = hidden.device();
    let index: Vec<i64> = last.iter().map(|&position| position as i64).collect();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [batch]), &device)
        .reshape([batch, 1, 1])
        .repeat_dim(2, width);
    hidden.gather(1, index)
}

/// The logits of tied embeddings, `h Eᵀ`, as one 2-D product with `E` read transposed in place.
///
/// Burn's `linear` would give the transposed `E` a leading batch dimension by a reshape, which
/// copies the whole `[vocab_size, hidden_size]` matrix on a backend whose reshape needs
/// contiguous data (Flex): the largest tensor of the model, copied at every step.
///
/// # Shapes
/// - hidden: `[batch, seq, hidden_size]`
/// - embeddings: `[vocab_size, hidden_size]`
/// - output: `[batch, seq, vocab_size]`
fn tied_head<B: Backend>(hidden: Tensor<B, 3>, embeddings: Tensor<B, 2>) -> Tensor<B, 3> {
    let [batch, seq, width] = hidden.dims();
    let [vocab, _] = embeddings.dims();
    burn_lora_kernels::matmul(hidden.reshape([batch * seq, width]), embeddings.transpose())
        .reshape([batch, seq, vocab])
}

/// Position ids of `shape`, none negative.
fn check_positions<B: Backend>(positions: &Tensor<B, 2, Int>, shape: [usize; 2]) -> Result<()> {
    if positions.dims() != shape {
        return Err(LoraError::InvalidInput(format!(
            "position ids of shape {:?} for input ids of shape {shape:?}",
            positions.dims()
        )));
    }
    if let Some(value) = host_ints(positions, "position ids")?
        .iter()
        .find(|v| **v < 0)
    {
        return Err(LoraError::InvalidInput(format!(
            "negative position id {value}"
        )));
    }
    Ok(())
}

/// An int tensor `[rows, cols]` from row-major values.
pub(crate) fn int_tensor<B: Backend>(
    values: Vec<i64>,
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
