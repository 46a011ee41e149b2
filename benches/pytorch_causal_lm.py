"""PyTorch + transformers + PEFT counterpart of benches/causal_lm.rs, on the same random model.

usage: python benches/pytorch_causal_lm.py [ROUNDS]

A random LlamaForCausalLM of the bench's shape (vocab 4096, hidden 768, intermediate 2048, 12
layers, 12 heads, 4 key/value heads, head dim 64, 1024 positions), float32 on the CPU with
torch.set_num_threads(2), inference mode. Prints the median of ROUNDS (default 5) timings of:

- generate: 32 new greedy tokens after a 16-token prompt (use_cache=True), batch 1 and 8,
  as tokens/s;
- decode step: one cached step of batch 1 after prompts of 16, 128 and 512 tokens;
- PEFT mixed batch: four LoRA adapters (r=8 on all seven projections, non-zero factors),
  a prompt forward of batch 8 x 32 tokens and one cached decode step of batch 8, with one
  adapter for every row against `adapter_names` spreading the rows over the four adapters.
"""
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
torch.set_num_threads(2)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=4096, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=12, num_key_value_heads=4, head_dim=64,
                     max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False)
model = LlamaForCausalLM(config).eval()
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def median_time(body, rounds=ROUNDS):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        body()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prompt(batch, length):
    return torch.randint(3, config.vocab_size, (batch, length))


def prefill(m, ids, **kw):
    cache = DynamicCache()
    out = m(input_ids=ids, past_key_values=cache, use_cache=True, **kw)
    return out.past_key_values, out.logits[:, -1:].argmax(-1)


def decode_step(m, ids, length, **kw):
    """Median time of one cached step after `length` prompt tokens (a fresh cache each round)."""
    times = []
    for _ in range(ROUNDS):
        cache, nxt = prefill(m, ids[:, :length], **kw)
        start = time.perf_counter()
        m(input_ids=nxt, past_key_values=cache, use_cache=True, **kw)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


with torch.inference_mode():
    for batch in (1, 8):
        ids = prompt(batch, 16)
        seconds = median_time(lambda: model.generate(ids, attention_mask=torch.ones_like(ids),
                                                     max_new_tokens=32, min_new_tokens=32,
                                                     do_sample=False, use_cache=True,
                                                     pad_token_id=0))
        print(f"generate batch {batch}: {seconds * 1e3:.1f} ms for {32 * batch} tokens, "
              f"{32 * batch / seconds:.1f} tokens/s")
    ids = prompt(1, 512)
    for length in (16, 128, 512):
        print(f"decode step at position {length}, batch 1: "
              f"{decode_step(model, ids, length) * 1e3:.2f} ms")

    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS),
                          adapter_name="a0")
    for name in ("a1", "a2", "a3"):
        peft.add_adapter(name, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            p.copy_(torch.randn_like(p) * 0.01)
    peft.set_adapter("a0")
    peft.eval()
    one = ["a0"] * 8
    mixed = ["a0", "a0", "a1", "a1", "a2", "a2", "a3", "a3"]
    ids = prompt(8, 32)
    for label, names in (("one adapter", one), ("4 adapters", mixed)):
        forward = median_time(lambda: peft(input_ids=ids, adapter_names=names))
        step = decode_step(peft, ids, 32, adapter_names=names)
        print(f"PEFT batch 8, {label}: prompt forward {forward * 1e3:.1f} ms, "
              f"decode step {step * 1e3:.2f} ms")
