#!/usr/bin/env bash
# Where the time of SmolLM2's decode steps (batch 1 and 8) and LoRA training step goes: a perf
# profile of each, split by kernel and by model context (benches/profile/perf_categories.py).
#
#   SMOLLM2_DIR=/path/to/hf-folder benches/profile/profile_smollm2.sh [OUT_DIR]
#
# SMOLLM2_DIR is the folder `to_hf.py` writes from ../shared/models/SmolLM2-135M-Instruct-Q4_1.
# The runs use one Rayon thread (RAYON_NUM_THREADS=1): a sample taken on one of Rayon's worker
# threads carries no caller frames, so with two threads half of the matmul time could not be
# told apart by context. The shares are of CPU time; with two threads the wall time divides
# between them about as the shares do, the matmuls gaining most. PyTorch's side is
# benches/profile/pytorch_profile_smollm2.py.
set -euo pipefail
: "${SMOLLM2_DIR:?set SMOLLM2_DIR to the SmolLM2 Hugging Face folder}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
adapter="$root/tests/fixtures/gguf/smollm2_adapter"
cd "$root"
cargo build --release --workspace --example serve_adapters --example load_checkpoint
target="${CARGO_TARGET_DIR:-$root/target}/release/examples"

profile() { # name, marker of the first sample to keep, command...
    local name="$1" marker="$2"
    shift 2
    RAYON_NUM_THREADS=1 perf record -q -F 99 --call-graph dwarf,32768 -o "$out/$name.data" -- "$@" \
        > "$out/$name.log" 2>&1
    perf script -i "$out/$name.data" -F tid,time,ip,sym --no-inline 2> /dev/null > "$out/$name.txt"
    python3 "$root/benches/profile/perf_categories.py" "$out/$name.txt" --after "$marker" \
        --title "$name" | tee "$out/$name.md"
    rm -f "$out/$name.data" "$out/$name.txt"
}

for batch in 1 8; do
    profile "decode_b$batch" 'CausalLm<B>>::generate' "$target/serve_adapters" \
        --model-dir "$SMOLLM2_DIR" --adapter "a=$adapter" --prompts "$batch" --new-tokens 64 \
        --repeats 1
done
profile train_b8x96 'CausalLm<B>::run' "$target/load_checkpoint" --model-dir "$SMOLLM2_DIR" \
    --train-steps 2 --batch 8 --seq 96
echo "tables in $out/*.md"
