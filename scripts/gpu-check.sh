#!/usr/bin/env bash
# The test suite and the three main examples, shortened, on a GPU backend: one line per test
# binary and per example, then the exit status of the whole (non-zero when any failed).
#
#   scripts/gpu-check.sh            # CUDA (needs an NVIDIA GPU and its driver at run time)
#   scripts/gpu-check.sh wgpu       # wgpu: Vulkan, Metal or DX12 (lavapipe on a CPU-only Linux)
#   scripts/gpu-check.sh wgpu short # as CI runs it on lavapipe: see below
#
# The large-data tests run when their variables are set (MNIST_DIR, MINILM_DIR, FORTUNES_DIR,
# SMOLLM2_GGUF_DIR), as with `cargo test`; mnist_lora runs only with MNIST_DIR, causal_lm_lora
# only with FORTUNES_DIR. With `short`, the tests run on the repository's tiny fixtures only (the
# data variables unset for them: a real model's tests take hours on a CPU's Vulkan device), only
# the libraries' own tests and the binaries that cover every layer kind, the model API, files,
# the causal LM and training (`layers`, `model`, `files`, `transformers`, `training`, `learner`,
# and `fused_adam`: on a GPU backend its updates take the tensor-operation path, counted, and match
# Burn's `Adam` and `AdamW`),
# mnist_lora pretrains on 6,000 images instead of 60,000 and serve_adapters times each way once;
# the examples keep their data.
# `derive-ui`'s `ui` test is left to the CPU run: it checks the derive's compile errors, which
# involve no backend.
set -uo pipefail
cd "$(dirname "$0")/.."
feature="${1:-cuda}"
short="${2:-}"
case "$short" in
  ""|short) ;;
  *) echo "usage: scripts/gpu-check.sh [cuda|wgpu] [short]"; exit 2 ;;
esac
log="${GPU_CHECK_LOG:-target/gpu-check-$feature}"
mkdir -p "$log"
failed=0

# The executables that a build's JSON messages name, as "<crate folder> <executable>" lines.
executables() {
  python3 -c '
import json, os, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable"):
        print(os.path.dirname(message["manifest_path"]), message["executable"])
'
}

echo "== building the tests and examples with --features $feature"
examples="$(cargo build --workspace --features "$feature" --examples --message-format=json | executables)" \
  || { echo "the examples did not build with --features $feature"; exit 1; }

# Each test binary on its own, from its crate's folder as under cargo (fixtures are found
# relative to it), so that a line says which one failed and how long it took. The build's JSON
# messages name each test binary and its crate.
artifacts="$(cargo test --workspace --features "$feature" --lib --tests --no-run --message-format=json \
  | executables)" || { echo "the tests did not build with --features $feature"; exit 1; }
# A proc-macro crate's test binary links Rust's standard library dynamically, as `cargo test`
# arranges when it runs one.
export LD_LIBRARY_PATH="$(rustc --print target-libdir)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
while read -r crate binary; do
  [ -n "$binary" ] || continue
  name="$(basename "$binary" | sed 's/-[0-9a-f]*$//')"
  if [ "$name" = ui ]; then
    echo "ui: skipped (the derive's compile-error tests: no backend involved; run on the CPU)"
    continue
  fi
  if [ -n "$short" ] && [[ "$name" != burn_* ]] \
    && ! [[ " layers model files transformers training learner fused_adam " == *" $name "* ]]; then
    echo "$name: not in the short run (scripts/gpu-check.sh $feature runs it)"
    continue
  fi
  start=$SECONDS
  if [ -n "$short" ]; then
    (cd "$crate" && env -u MNIST_DIR -u MINILM_DIR -u FORTUNES_DIR -u SMOLLM2_GGUF_DIR \
      "$binary" > "$log/$name.log" 2>&1)
  else
    (cd "$crate" && "$binary" > "$log/$name.log" 2>&1)
  fi
  status=$?
  summary="$(grep 'test result' "$log/$name.log" | tail -1)"
  echo "$name: exit $status, $((SECONDS - start)) s, ${summary:-no summary (see $log/$name.log)}"
  [ "$status" -eq 0 ] || { failed=1; tail -n 30 "$log/$name.log"; }
done <<< "$artifacts"

run_example() {
  local name="$1"; shift
  local start=$SECONDS
  # The binary the workspace build made (`cargo run` would resolve the features anew).
  local binary
  binary="$(printf '%s\n' "$examples" | awk -v name="$name" '{ n = $2; sub(".*/", "", n); if (n == name) print $2 }')"
  [ -n "$binary" ] || { echo "example $name: not built"; failed=1; return; }
  "$binary" "$@" > "$log/example-$name.log" 2>&1
  local status=$?
  echo "example $name: exit $status, $((SECONDS - start)) s (log: $log/example-$name.log)"
  [ "$status" -eq 0 ] || { failed=1; tail -n 30 "$log/example-$name.log"; }
}
if [ -n "${MNIST_DIR:-}" ]; then
  pretrain=()
  [ -z "$short" ] || pretrain=(--pretrain-images 6000)
  run_example mnist_lora --steps 100 "${pretrain[@]}" --out-dir "$log/mnist_lora"
else
  echo "example mnist_lora: skipped (MNIST_DIR unset)"
fi
if [ -n "${FORTUNES_DIR:-}" ]; then
  run_example causal_lm_lora --epochs 1 --train-items 96 --test-items 32 --samples 2 \
    --new-tokens 16 --out-dir "$log/causal_lm_lora"
else
  echo "example causal_lm_lora: skipped (FORTUNES_DIR unset)"
fi
serve=()
[ -z "$short" ] || serve=(--repeats 1)
run_example serve_adapters "${serve[@]}"

exit "$failed"
