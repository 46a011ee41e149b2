"""llama.cpp's decoding of SmolLM2-135M in F32, the floor issue 35 compares burn-lora's against.

usage: SMOLLM2_GGUF_DIR=../shared/models/SmolLM2-135M-Instruct-Q4_1 \
       python benches/llama_cpp_smollm2.py [ROUNDS] [OUT_DIR]

Needs `pip install llama-cpp-python` (it builds llama.cpp, ~5 min). The shared file is Q4_1;
`llama_model_quantize` writes it as F32 (`LLAMA_FTYPE_ALL_F32`, requantizing: the weights are
the Q4_1 values dequantized, the same values burn-lora's `from_gguf` reads) into OUT_DIR
(default: a temporary folder), once. Then, with 2 threads, batch 1 and no adapter, as
benches/smollm2.rs' batch-1 generation: a 16-token prompt evaluated, then 64 greedy tokens
(63 evaluations after the prompt's); tokens/s = 64 / the whole time, median of ROUNDS (default
3).
"""
import ctypes
import os
import statistics
import sys
import tempfile
import time

import llama_cpp
import numpy

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
OUT_DIR = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp()
NEW_TOKENS = 64
PROMPT_LEN = 16
THREADS = 2
SOURCE = os.path.join(os.environ["SMOLLM2_GGUF_DIR"], "SmolLM2-135M-Instruct.Q4_1.gguf")


def to_f32(source, target):
    if os.path.exists(target):
        return
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.nthread = THREADS
    status = llama_cpp.llama_model_quantize(
        source.encode(), target.encode(), ctypes.byref(params)
    )
    if status != 0:
        sys.exit(f"llama_model_quantize failed with status {status}")


def tokens_per_second(path):
    llm = llama_cpp.Llama(
        model_path=path, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=256, verbose=False
    )
    prompt = [(7 * i + 11) % 1000 + 100 for i in range(PROMPT_LEN)]
    vocab = llm.n_vocab()

    def last_logits():
        pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return numpy.ctypeslib.as_array(pointer, shape=(vocab,))

    def generate():
        llm.reset()
        llm.eval(prompt)
        for step in range(NEW_TOKENS):
            token = int(last_logits().argmax())
            if step + 1 < NEW_TOKENS:  # the last token needs no forward, as in burn-lora's
                llm.eval([token])

    generate()  # warm-up
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        generate()
        times.append(time.perf_counter() - start)
    return NEW_TOKENS / statistics.median(times)


f32 = os.path.join(OUT_DIR, "SmolLM2-135M-Instruct.F32.gguf")
to_f32(SOURCE, f32)
print(f"llama.cpp F32, batch 1: {tokens_per_second(f32):.1f} tokens/s")
