"""PyTorch + PEFT counterpart of benches/smollm2.rs, on the same work.

usage: SMOLLM2_DIR=/path/to/hf-folder python benches/pytorch_smollm2.py [ROUNDS] [WORK]

SmolLM2 in float32 on the CPU, torch.set_num_threads(2). Two PEFT LoRA adapters `a` and `b`
(r=8, alpha 16, the seven projections). Prints the median of ROUNDS (default 3) of:
- generate: 64 greedy new tokens after 16-token prompts (no stop token), batch 1 and 8 with `a`
  unmerged, batch 8 with the rows over `a` and `b` (`adapter_names`), and batch 1 with the bare
  model (the peer of burn-lora's merged adapter), as tokens/s;
- train_step: one LoRA step (forward, loss, backward, AdamW with fused=True) on 8 x 96 random
  tokens, in seconds.
WORK (`generate` or `train_step`) runs only that part; both by default.
Run it alternately with `cargo bench --bench smollm2`: this machine drifts by 30 %.
"""
import os
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
WORK = sys.argv[2] if len(sys.argv) > 2 else None
if WORK not in (None, "generate", "train_step"):
    sys.exit(f"WORK is `generate` or `train_step`, not `{WORK}`")
NEW_TOKENS = 64
PROMPT_LEN = 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
torch.set_num_threads(2)
torch.manual_seed(0)
DIR = os.environ["SMOLLM2_DIR"]


def median(body):
    body()
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        body()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prompts(rows, vocab):
    return torch.tensor([[3 + (row * PROMPT_LEN + i) * 7919 % (vocab - 3) for i in range(PROMPT_LEN)]
                         for row in range(rows)])


def generate(model, ids, **kw):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0, **kw)


def lora_model():
    """SmolLM2 with the PEFT adapters `a` (active) and `b`, and its vocabulary size."""
    base = AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS)
    model = get_peft_model(base, config, adapter_name="a")
    model.add_adapter("b", config)
    model.set_adapter("a")
    return model, base.config.vocab_size


def training_step(model, vocab):
    """One LoRA step on 8 x 96 random tokens with AdamW (fused=True), as a function to call."""
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                              fused=True)
    ids = torch.randint(0, vocab, (8, 96))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad()

    return step


def main():
    model, vocab = lora_model()
    model.eval()
    if WORK != "train_step":
        generation(model, vocab)
    if WORK != "generate":
        print(f"train_step/lora_r8_8x96: {median(training_step(model, vocab)):.2f} s")


def generation(model, vocab):
    with torch.inference_mode():
        for name, rows, kw in [("unmerged", 1, {}), ("unmerged", 8, {}),
                               ("mixed", 8, {"adapter_names": ["a", "b"] * 4})]:
            ids = prompts(rows, vocab)
            t = median(lambda: generate(model, ids, **kw))
            print(f"generate/{name}/{rows}: {rows * NEW_TOKENS / t:.1f} tokens/s")
        ids = prompts(1, vocab)
        with model.disable_adapter():
            t = median(lambda: generate(model, ids))
        print(f"generate/bare/1: {NEW_TOKENS / t:.1f} tokens/s")


if __name__ == "__main__":
    main()
