"""Writes a random Llama-shaped checkpoint of about 1.1 B parameters in BF16, as transformers
saves it (TinyLlama-1.1B's shape: hidden 2048, 22 layers, 32 heads, 4 key/value heads,
intermediate 5632, vocabulary 32000, untied head): the checkpoint of the ~1B loading figures of
examples/load_checkpoint.rs and benches/pytorch_load.py.

usage: python benches/random_llama.py OUT_DIR [DTYPE]   (DTYPE: bfloat16, the default, or float32)
"""
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1]
dtype = getattr(torch, sys.argv[2] if len(sys.argv) > 2 else "bfloat16")
torch.manual_seed(0)
config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                     num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                     max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=False)
with torch.device("cpu"):
    model = LlamaForCausalLM(config).to(dtype)
model.save_pretrained(out, safe_serialization=True)
print(out, sum(p.numel() for p in model.parameters()), "parameters as", dtype)
