//! Cross-implementation check of the causal LMs against files written by Hugging Face
//! transformers and PEFT (`tests/fixtures/peft/llama_tiny` and `qwen2_tiny`, see their README):
//! a random `LlamaForCausalLM` / `Qwen2ForCausalLM` (grouped-query attention, Qwen2 with q/k/v
//! biases and tied embeddings), two PEFT adapters, and what PyTorch computed with them: logits
//! with the adapters off, each on, merged, and a mixed batch; greedy generations of a
//! left-padded prompt batch for the base, one adapter, and a mixed batch. burn-lora must
//! reproduce every logit within [`TOLERANCE`] and every generated token exactly, through the
//! public API. `llama_tiny_dora` is the same with a DoRA `task_a` (PEFT's `use_dora`); PEFT
//! mixes no DoRA adapter in a batch, so there a mixed batch is checked row by row against the
//! single-adapter outputs.

use crate::common::safetensors_io::{assert_same_adapter_tensors, raw, read_raw, Raw};
use crate::common::{
    assert_bit_identical, assert_same_up_to_reduction_order, existing_peft_fixture, B,
};
use burn::tensor::{Int, Tensor};
use burn_lora::nn::llama::{CausalLm, CausalLmInput, GenerationConfig};
use burn_lora::{load_adapter, save_adapter, LoraError, LoraModel, PathMap};

/// Largest absolute difference allowed between a logit of burn-lora and PyTorch's.
///
/// The logits of these random models are of order 0.1 to 1 (the adapters move them by up to
/// 0.8, meta.json). Both sides compute in f32 through two layers of 64-wide dot products, a
/// softmax, SiLU, rotary sines and cosines and three RMSNorms, summed in different orders;
/// PyTorch itself saw |merged − unmerged| ≈ 4e-7 from reassociation alone. 1e-5 is ten to twenty
/// times that, while a wrong rotation layout, head grouping, scale or mask moves logits by 1e-2
/// or more.
const TOLERANCE: f32 = 1e-5;

/// New tokens PyTorch generated per prompt.
const NEW_TOKENS: usize = 12;

struct Fixture {
    dir: std::path::PathBuf,
    tensors: Vec<Raw>,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = existing_peft_fixture(name);
        let tensors = read_raw(&dir.join("io.safetensors"));
        Self { dir, tensors }
    }

    fn ints(&self, key: &str) -> Tensor<B, 2, Int> {
        raw(&self.tensors, key).to_int_tensor()
    }

    fn logits(&self, key: &str) -> Tensor<B, 3> {
        raw(&self.tensors, key).to_tensor()
    }

    fn rows(&self, key: &str) -> Vec<Vec<i64>> {
        let tensor = self.ints(key);
        let [_, cols] = tensor.dims();
        let values: Vec<i64> = tensor.into_data().convert::<i64>().to_vec().unwrap();
        values.chunks(cols).map(<[i64]>::to_vec).collect()
    }

    /// The model with both adapters: `task_a` from `adapter_a`, `task_b` from `adapter_b`.
    fn model(&self) -> CausalLm<B> {
        let mut lm = CausalLm::<B>::from_pretrained(&self.dir, &Default::default())
            .expect("the Hugging Face folder loads");
        for (name, folder) in [("task_a", "adapter_a"), ("task_b", "adapter_b")] {
            load_adapter(&mut lm, name, &self.dir.join(folder), &PathMap::identity())
                .expect("PEFT's adapter loads");
        }
        lm
    }

    fn input(&self) -> CausalLmInput<B> {
        CausalLmInput::new(self.ints("input_ids"))
            .attention_mask(self.ints("attention_mask"))
            .position_ids(self.ints("position_ids"))
    }

    fn has(&self, key: &str) -> bool {
        self.tensors.iter().any(|t| t.key == key)
    }

    /// Row `i` of PyTorch's logits `keys[i]`: what a mixed batch running adapter `i` on row `i`
    /// must give.
    fn logits_by_row(&self, keys: &[&str]) -> Tensor<B, 3> {
        let rows = keys
            .iter()
            .enumerate()
            .map(|(row, key)| self.logits(key).narrow(0, row, 1))
            .collect();
        Tensor::cat(rows, 0)
    }

    /// Asserts `ours` matches `key` at every position whose mask is 1.
    fn assert_logits(&self, what: &str, ours: Tensor<B, 3>, key: &str) {
        self.assert_close(what, ours, self.logits(key));
    }

    /// Asserts `ours` matches PyTorch's `torch` at every position whose mask is 1.
    fn assert_close(&self, what: &str, ours: Tensor<B, 3>, torch: Tensor<B, 3>) {
        assert_eq!(ours.dims(), torch.dims(), "{what}: shapes differ");
        let vocab = torch.dims()[2];
        let mask = self.rows("attention_mask").concat();
        let ours: Vec<f32> = ours.into_data().to_vec().unwrap();
        let torch: Vec<f32> = torch.into_data().to_vec().unwrap();
        let mut worst = 0.0f32;
        for (position, &m) in mask.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let span = position * vocab..(position + 1) * vocab;
            for (a, b) in ours[span.clone()].iter().zip(&torch[span]) {
                worst = worst.max((a - b).abs());
            }
        }
        println!("{what}: max |burn - pytorch| = {worst:e}");
        assert!(
            worst <= TOLERANCE,
            "{what}: max |burn - pytorch| = {worst:e} exceeds {TOLERANCE:e}"
        );
    }

    /// The prompts without their left padding.
    fn prompts(&self) -> Vec<Vec<u32>> {
        self.rows("prompt_ids")
            .into_iter()
            .zip(self.rows("prompt_mask"))
            .map(|(ids, mask)| {
                ids.iter()
                    .zip(&mask)
                    .filter(|(_, &m)| m == 1)
                    .map(|(&id, _)| id as u32)
                    .collect()
            })
            .collect()
    }

    /// The new tokens of PyTorch's generation `key`.
    fn generated(&self, key: &str) -> Vec<Vec<u32>> {
        self.rows(key)
            .into_iter()
            .map(|row| {
                row[row.len() - NEW_TOKENS..]
                    .iter()
                    .map(|&t| t as u32)
                    .collect()
            })
            .collect()
    }
}

fn greedy() -> GenerationConfig {
    GenerationConfig::new(NEW_TOKENS).with_stop_tokens(Some(Vec::new()))
}

fn reproduces_logits(name: &str) {
    let fixture = Fixture::new(name);
    let mut lm = fixture.model();
    let forward = |lm: &CausalLm<B>| lm.forward(fixture.input()).expect("the forward runs");

    lm.set_enabled(false);
    let base = forward(&lm);
    fixture.assert_logits(&format!("{name} base"), base.clone(), "logits_base");
    lm.set_enabled(true);

    lm.set_active_adapter("task_a").unwrap();
    let adapted = forward(&lm);
    fixture.assert_logits(&format!("{name} task_a"), adapted.clone(), "logits_a");
    lm.set_active_adapter("task_b").unwrap();
    fixture.assert_logits(&format!("{name} task_b"), forward(&lm), "logits_b");

    let batch = lm.adapter_batch(&["task_a", "task_b", "__base__"]).unwrap();
    let mixed = lm
        .forward(fixture.input().adapters(batch))
        .expect("the mixed batch runs");
    let by_row = fixture.logits_by_row(&["logits_a", "logits_b", "logits_base"]);
    fixture.assert_close(&format!("{name} mixed batch"), mixed.clone(), by_row);
    // PEFT computes no mixed batch with a DoRA adapter: its fixture has none.
    if fixture.has("logits_mixed") {
        fixture.assert_logits(&format!("{name} PEFT's mixed batch"), mixed, "logits_mixed");
    }

    lm.set_active_adapter("task_a").unwrap();
    lm.merge().unwrap();
    fixture.assert_logits(
        &format!("{name} task_a merged"),
        forward(&lm),
        "logits_a_merged",
    );
    lm.unmerge().unwrap();
    assert_same_up_to_reduction_order(forward(&lm), adapted.clone());
    let unloaded = lm.merge_and_unload().unwrap();
    assert!(unloaded.adapter_names().is_empty());
    fixture.assert_logits(
        &format!("{name} merge_and_unload"),
        forward(&unloaded),
        "logits_a_merged",
    );
    lm.set_enabled(false);
    assert_bit_identical(forward(&lm), base);
}

fn reproduces_generations(name: &str) {
    let fixture = Fixture::new(name);
    let mut lm = fixture.model();
    let prompts = fixture.prompts();
    assert_ne!(prompts[0].len(), prompts[1].len(), "one prompt is padded");

    lm.set_enabled(false);
    let base = lm.generate(&prompts, None, &greedy(), |_| {}).unwrap();
    assert_eq!(base.tokens, fixture.generated("gen_base"), "{name} base");
    lm.set_enabled(true);

    lm.set_active_adapter("task_a").unwrap();
    let mut streamed = vec![Vec::new(); prompts.len()];
    let adapted = lm
        .generate(&prompts, None, &greedy(), |event| {
            streamed[event.row].push(event.token)
        })
        .unwrap();
    assert_eq!(adapted.tokens, fixture.generated("gen_a"), "{name} task_a");
    assert_eq!(streamed, adapted.tokens, "the callback saw every token");
    assert_ne!(adapted.tokens, base.tokens);

    // Row 0 with task_a, row 1 with the base: each row generates what it does alone.
    let batch = lm.adapter_batch(&["task_a", "__base__"]).unwrap();
    let mixed = lm
        .generate(&prompts, Some(&batch), &greedy(), |_| {})
        .unwrap();
    let by_row = vec![adapted.tokens[0].clone(), base.tokens[1].clone()];
    assert_eq!(mixed.tokens, by_row, "{name} task_a beside the base");
    if fixture.has("gen_mixed") {
        let batch = lm.adapter_batch(&["task_b", "task_a"]).unwrap();
        let mixed = lm
            .generate(&prompts, Some(&batch), &greedy(), |_| {})
            .unwrap();
        assert_eq!(mixed.tokens, fixture.generated("gen_mixed"), "{name} mixed");
    }
}

/// Saving the loaded adapters gives back PEFT's keys, shapes and values.
fn saves_peft_files(name: &str) {
    let fixture = Fixture::new(name);
    let lm = fixture.model();
    let out = tempfile::tempdir().unwrap();
    for (adapter, folder) in [("task_a", "adapter_a"), ("task_b", "adapter_b")] {
        let dir = out.path().join(folder);
        save_adapter(&lm, adapter, &dir, &PathMap::identity()).unwrap();
        assert_same_adapter_tensors(&fixture.dir.join(folder), &dir);
    }
}

#[test]
fn llama_reproduces_pytorch_logits() {
    reproduces_logits("llama_tiny");
}

#[test]
fn qwen2_reproduces_pytorch_logits() {
    reproduces_logits("qwen2_tiny");
}

#[test]
fn llama_reproduces_greedy_generations() {
    reproduces_generations("llama_tiny");
}

#[test]
fn qwen2_reproduces_greedy_generations() {
    reproduces_generations("qwen2_tiny");
}

#[test]
fn llama_adapters_save_as_peft_wrote_them() {
    saves_peft_files("llama_tiny");
}

#[test]
fn qwen2_adapters_save_as_peft_wrote_them() {
    saves_peft_files("qwen2_tiny");
}

#[test]
fn llama_dora_reproduces_pytorch_logits() {
    reproduces_logits("llama_tiny_dora");
}

#[test]
fn llama_dora_reproduces_greedy_generations() {
    reproduces_generations("llama_tiny_dora");
}

#[test]
fn llama_dora_adapter_saves_as_peft_wrote_it() {
    saves_peft_files("llama_tiny_dora");
}

/// The DoRA fixture's `task_a` is DoRA in every adapted layer, `task_b` plain; a DoRA adapter
/// runs alone, and refuses to be combined (PEFT does neither).
#[test]
fn llama_dora_adapter_is_dora_and_runs_alone() {
    let mut lm = Fixture::new("llama_tiny_dora").model();
    let mut dora_layers = 0;
    for layer in lm.lora_layers() {
        if let Some(adapter) = layer.adapter("task_a") {
            assert!(adapter.is_dora() && adapter.config().use_dora);
            dora_layers += 1;
        }
        if let Some(adapter) = layer.adapter("task_b") {
            assert!(!adapter.is_dora());
        }
    }
    assert_eq!(
        dora_layers,
        2 * 7,
        "seven projections in each of two layers"
    );
    let q_proj = lm
        .lora_layers_mut()
        .into_iter()
        .find(|l| l.adapter("task_b").is_some())
        .unwrap();
    let err = q_proj
        .set_active_adapters(&["task_a", "task_b"])
        .unwrap_err();
    assert!(matches!(err, LoraError::Unsupported(_)), "{err:?}");
    let err = lm
        .combine_adapters("both", &[("task_a", 1.0), ("task_b", 1.0)])
        .unwrap_err();
    assert!(matches!(err, LoraError::Unsupported(_)), "{err:?}");
    assert!(!lm.adapter_names().contains(&"both".to_string()));
}

#[test]
fn qwen2_has_no_lm_head_and_llama_has_one() {
    let qwen = Fixture::new("qwen2_tiny").model();
    assert!(qwen.lm_head.is_none());
    assert!(qwen.config().tie_word_embeddings);
    let llama = Fixture::new("llama_tiny").model();
    assert!(llama.lm_head.is_some());
    let paths = llama.lora_layer_paths().unwrap();
    assert!(paths.contains(&"model.layers.1.self_attn.q_proj".to_string()));
    assert!(paths.contains(&"model.layers.0.mlp.down_proj".to_string()));
    assert!(paths.contains(&"lm_head".to_string()));
}
