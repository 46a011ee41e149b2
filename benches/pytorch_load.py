"""transformers' counterpart of examples/load_checkpoint.rs: loads a Hugging Face causal-LM
folder with `AutoModelForCausalLM.from_pretrained` and reports the load time, the weights' size
in the dtype it loads them as, and the process's peak resident memory, before and after.

usage: python benches/pytorch_load.py MODEL_DIR [DTYPE]

DTYPE is float32 (the default, as burn-lora's f32 backends hold the weights) or bfloat16. Run it
alternately with `cargo run --release --example load_checkpoint -- --model-dir MODEL_DIR`, each
run a fresh process, so that both peaks are the load's own. The peak includes PyTorch's own
runtime (importing torch and transformers), which is printed apart as "before loading".
"""
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(2)
model_dir = sys.argv[1]
dtype = getattr(torch, sys.argv[2] if len(sys.argv) > 2 else "float32")
mib = lambda b: b / 2**20
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(f"{model_dir} with transformers: {sum(p.numel() for p in model.parameters())} parameters, "
      f"{mib(weights):.1f} MiB as {dtype}")
print(f"load time      : {seconds:.2f} s")
print(f"peak RSS       : {mib(peak):.1f} MiB = {peak / weights:.3f}x the weights "
      f"({mib(before):.1f} MiB before loading; {(peak - before) / weights:.3f}x beyond it)")
