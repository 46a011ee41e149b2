"""PyTorch's side of benches/profile/profile_smollm2.sh: where the time of SmolLM2's decode steps
and LoRA training step goes in PyTorch + PEFT, by the same categories, and its operations per layer.

usage: SMOLLM2_DIR=/path/to/hf-folder python benches/profile/pytorch_profile_smollm2.py

The same work as the burn-lora runs, set up by benches/pytorch_smollm2.py: PEFT LoRA r=8,
alpha 16 on the seven projections of every layer, float32, torch.set_num_threads(2); greedy
generation of 64 new tokens after 16-token prompts at batch 1 and 8 (the adapter unmerged), and a
training step on 8 x 96 random tokens with AdamW (fused=True). Each is timed, then run once under torch.profiler. Shares are of the self CPU time of
the profiled operators; "operators per layer" counts the top-level aten operators of one decode
step (the profile's total over the generated tokens) divided by the number of layers.
"""
import collections
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

# The model, prompts, generation and training step of the benchmark script beside this folder
# (which also sets 2 threads and the seed).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pytorch_smollm2 import NEW_TOKENS, generate, lora_model, prompts, training_step  # noqa: E402

CATEGORIES = [
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
                "aten::linear", "aten::_scaled_dot_product", "aten::scaled_dot_product")),
    ("copies", ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::_to_copy",
                "aten::to", "aten::index", "aten::index_select", "aten::embedding",
                "aten::repeat", "aten::expand", "aten::_unsafe_view", "aten::reshape")),
    ("allocation / zeroing", ("aten::empty", "aten::zeros", "aten::zero_", "aten::fill_",
                              "aten::ones", "aten::new_", "aten::resize_")),
    ("softmax / loss", ("aten::_softmax", "aten::softmax", "aten::_log_softmax",
                        "aten::nll_loss", "aten::cross_entropy", "aten::_softmax_backward",
                        "aten::_log_softmax_backward", "aten::nll_loss_backward")),
    ("activation", ("aten::silu", "aten::silu_backward", "aten::sigmoid")),
    ("optimizer", ("aten::_fused_adamw", "Optimizer.step", "aten::_foreach")),
]


def category(name):
    for cat, prefixes in CATEGORIES:
        if name.startswith(prefixes):
            return cat
    if name.startswith("aten::"):
        return "element-wise / other"
    return "python / framework"


def report(title, prof, layers, steps):
    events = prof.events()
    total = sum(e.self_cpu_time_total for e in events)
    shares = collections.Counter()
    for e in events:
        shares[category(e.name)] += e.self_cpu_time_total
    top_level = sum(1 for e in events
                    if e.name.startswith("aten::") and (e.cpu_parent is None
                                                        or not e.cpu_parent.name.startswith("aten::")))
    print(f"## PyTorch {title}: {total / 1e3:.0f} ms profiled self CPU time, "
          f"{top_level / steps / layers:.1f} top-level aten operators per layer and step\n")
    print("| category | share |\n| --- | --- |")
    for name, t in shares.most_common():
        print(f"| {name} | {100 * t / total:.1f} % |")
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main():
    model, vocab = lora_model()
    layers = model.base_model.model.config.num_hidden_layers
    model.eval()
    for batch in (1, 8):
        ids = prompts(batch, vocab)
        with torch.inference_mode():
            generate(model, ids)
            start = time.perf_counter()
            generate(model, ids)
            elapsed = time.perf_counter() - start
            print(f"decode batch {batch}: {batch * NEW_TOKENS / elapsed:.1f} tokens/s")
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                generate(model, ids)
        report(f"decode batch {batch}", prof, layers, NEW_TOKENS)

    step = training_step(model, vocab)
    step()
    start = time.perf_counter()
    step()
    print(f"training step 8 x 96: {time.perf_counter() - start:.2f} s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    report("training step 8 x 96", prof, layers, 1)


if __name__ == "__main__":
    main()
