#!/usr/bin/env bash
# The test suite and the three main examples, shortened, on a GPU backend: one line per test
# binary and per example, then the exit status of the whole (non-zero when any failed).
#
#   scripts/gpu-check.sh            # CUDA (needs an NVIDIA GPU and its driver at run time)
#   scripts/gpu-check.sh wgpu       # wgpu: Vulkan, Metal or DX12 (lavapipe on a CPU-only Linux)
#
# The large-data tests run when their variables are set (MNIST_DIR, MINILM_DIR, FORTUNES_DIR,
# SMOLLM2_GGUF_DIR), as with `cargo test`; mnist_lora runs only with MNIST_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
feature="${1:-cuda}"
log="${GPU_CHECK_LOG:-target/gpu-check-$feature}"
mkdir -p "$log"
failed=0

echo "== building the tests and examples with --features $feature"
cargo build --features "$feature" --examples 2>&1 | tail -1

# Each test binary on its own, from its crate's folder as under cargo (fixtures are found
# relative to it), so that a line says which one failed and how long it took. The build's JSON
# messages name each test binary and its crate.
artifacts="$(cargo test --workspace --features "$feature" --lib --tests --no-run --message-format=json \
  | python3 -c '
import json, os, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable"):
        print(os.path.dirname(message["manifest_path"]), message["executable"])
')" || { echo "the tests did not build with --features $feature"; exit 1; }
while read -r crate binary; do
  [ -n "$binary" ] || continue
  name="$(basename "$binary" | sed 's/-[0-9a-f]*$//')"
  start=$SECONDS
  (cd "$crate" && "$binary" > "$log/$name.log" 2>&1)
  status=$?
  summary="$(grep 'test result' "$log/$name.log" | tail -1)"
  echo "$name: exit $status, $((SECONDS - start)) s, ${summary:-no summary (see $log/$name.log)}"
  [ "$status" -eq 0 ] || failed=1
done <<< "$artifacts"

run_example() {
  local name="$1"; shift
  local start=$SECONDS
  cargo run --features "$feature" --example "$name" -- "$@" > "$log/example-$name.log" 2>&1
  local status=$?
  echo "example $name: exit $status, $((SECONDS - start)) s (log: $log/example-$name.log)"
  [ "$status" -eq 0 ] || failed=1
}
if [ -n "${MNIST_DIR:-}" ]; then
  run_example mnist_lora --steps 100 --out-dir "$log/mnist_lora"
else
  echo "example mnist_lora: skipped (MNIST_DIR unset)"
fi
if [ -n "${FORTUNES_DIR:-}" ]; then
  run_example causal_lm_lora --epochs 1 --train-items 96 --test-items 32 --samples 2 \
    --new-tokens 16 --out-dir "$log/causal_lm_lora"
else
  echo "example causal_lm_lora: skipped (FORTUNES_DIR unset)"
fi
run_example serve_adapters

exit "$failed"
