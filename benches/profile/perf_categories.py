#!/usr/bin/env python3
"""Where the time of a burn-lora run goes, from a `perf record --call-graph dwarf` profile.

Every sample is put in two categories:
- its *kernel*: what the CPU was doing (matmul, copies, page faults, allocator, transcendental
  functions, other element-wise work, threading), read from the innermost frames;
- its *context*: which part of the model asked for it (projection base, adapter, attention,
  rotary, normalisation, activation, head, loss, backward by operation, optimizer, host work),
  read from the innermost burn-lora / Burn frame that names one.

Samples of Rayon's worker threads carry no caller frames: their context is "parallel worker".

Usage (`benches/profile/profile_smollm2.sh` runs it on SmolLM2):

    perf record -F 99 --call-graph dwarf,32768 -o run.data -- <command>
    perf script -i run.data -F tid,time,ip,sym --no-inline > run.txt
    python3 benches/profile/perf_categories.py run.txt --after 'load_checkpoint::train'

`--after REGEX` drops every sample before the first one whose stack matches REGEX (the load of
the model, say), on every thread.
"""
import argparse
import collections
import re
import sys

# (category, pattern on one frame), tried in order on the innermost frames.
# burn-lora-kernels' few-rows product, whose loops are inlined into macerator's dispatcher (the
# innermost frame), below Rayon's frames: recognised anywhere on the stack.
FEW_ROWS = re.compile(r"burn_lora_kernels::flex::few_rows::")
KERNELS = [
    ("matmul (gemm)", re.compile(r"gemm")),
    ("page faults / zeroing", re.compile(r"page_fault|clear_page|do_anonymous_page|folio")),
    ("allocator", re.compile(r"malloc|_int_free|cfree|realloc|unlink_chunk|\bfree\b")),
    ("copies", re.compile(r"memmove|memcpy|to_contiguous|StridedIter|copy_to_iter|clone")),
    ("exp / erf / tanh", re.compile(r"expf|exp_|erf|tanh|logf")),
    ("threading (rayon)", re.compile(r"rayon|crossbeam|futex|sched_yield|__sched")),
]
# (context, pattern), tried frame by frame from the innermost outwards.
CONTEXTS = [
    ("load", re.compile(r"safetensors_reader|load_hf_weights|from_pretrained|from_gguf")),
    ("optimizer", re.compile(r"burn_fused_adam|optim::|Optimizer")),
    ("backward", re.compile(r"AutodiffServer::execute_steps|Backward.*>::backward")),
    ("loss", re.compile(r"causal_lm_loss|causal_lm_nll|cross_entropy|log_softmax")),
    ("head", re.compile(r"tied_head|lm_head")),
    ("adapter (LoRA A, B)", re.compile(r"adapter_update|LoraAdapter|forward_factors|forward_grouped_delta")),
    ("projection base (x W)", re.compile(r"forward_base|LoraLinear")),
    ("attention (scores, softmax, x V)", re.compile(r"masked_softmax|GroupedQueryAttention<B>::attend")),
    ("rotary", re.compile(r"RopeTables|RotaryEmbedding")),
    ("kv cache", re.compile(r"KvCache|CausalLmCache")),
    ("normalisation", re.compile(r"RmsNorm|LayerNorm")),
    ("activation", re.compile(r"silu|SwiGluMlp|gelu")),
    ("embedding", re.compile(r"LoraEmbedding|embedding")),
    ("host work (mask, ids, positions)", re.compile(r"DecoderMask|host_mask|host_ints|check_ids|int_tensor|left_padded")),
    ("attention glue (heads split/merge, residual)", re.compile(r"GroupedQueryAttention|DecoderLayer")),
    ("sampling", re.compile(r"sampling|Sampling")),
    ("model (other)", re.compile(r"burn_lora::")),
]
BACKWARD_OP = re.compile(r"<(?:burn_autodiff::ops::[\w:]*::)?(\w+) as burn_autodiff::ops::backward::Backward")
BACKWARD_HELPER = re.compile(r"burn_autodiff::ops::backward::(unary|binary)|ModuleOps::(linear_\w+_backward)")


def samples(lines):
    """Yields (tid, time, [frames innermost first]) from `perf script -F tid,time,ip,sym`."""
    head, frames = None, []
    for line in lines:
        if not line.strip():
            if head is not None:
                yield head[0], head[1], frames
            head, frames = None, []
        elif not line[0].isspace() or head is None:
            fields = line.split()
            head = (fields[0], float(fields[1].rstrip(":")) if len(fields) > 1 else 0.0)
        else:
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
    if head is not None:
        yield head[0], head[1], frames


def kernel_of(frames):
    if any(FEW_ROWS.search(frame) for frame in frames):
        return "matmul (few-rows kernel)"
    for frame in frames[:6]:
        for name, pattern in KERNELS:
            if pattern.search(frame):
                return name
    return "element-wise / other ops"


def context_of(frames):
    for frame in frames:
        for name, pattern in CONTEXTS:
            if pattern.search(frame):
                if name == "backward":
                    return "backward: " + backward_op(frames)
                return name
    return "parallel worker (no caller frames)"


def backward_op(frames):
    for frame in frames:
        match = BACKWARD_OP.search(frame)
        if match:
            return match.group(1)
        match = BACKWARD_HELPER.search(frame)
        if match:
            return match.group(1) or match.group(2)
    return "graph"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("script", help="output of perf script -F tid,time,ip,sym")
    parser.add_argument("--after", help="drop the samples before the first matching stack")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    after = re.compile(args.after) if args.after else None
    with open(args.script, errors="replace") as f:
        all_samples = list(samples(f))
    start = None
    if after:
        start = min((t for _, t, fr in all_samples if any(after.search(x) for x in fr)), default=None)
        if start is None:
            sys.exit(f"no sample matches --after {args.after!r}")
    kept = [(tid, fr) for tid, t, fr in all_samples if start is None or t >= start]
    if not kept:
        sys.exit("no samples")
    kernels = collections.Counter(kernel_of(fr) for _, fr in kept)
    contexts = collections.Counter(context_of(fr) for _, fr in kept)
    pairs = collections.Counter((context_of(fr), kernel_of(fr)) for _, fr in kept)
    total = len(kept)
    print(f"## {args.title or args.script}: {total} samples (CPU time of all threads)\n")
    for title, counter in (("kernel", kernels), ("context", contexts)):
        print(f"| {title} | share |\n| --- | --- |")
        for name, count in counter.most_common():
            print(f"| {name} | {100 * count / total:.1f} % |")
        print()
    print("| context | kernel | share |\n| --- | --- | --- |")
    for (context, kernel), count in pairs.most_common(15):
        print(f"| {context} | {kernel} | {100 * count / total:.1f} % |")
    print()


if __name__ == "__main__":
    main()
