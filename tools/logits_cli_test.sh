#!/usr/bin/env bash
# //tools:logits from the command line: reproduces the fixtures' float64-reference logits
# (eval and train routing, both checkpoints), and refuses bad input with a message naming it.
set -euo pipefail
logits=tools/logits
compare="python3 tools/reference/compare_logits.py"
data=tests/data/openmoe
tmp="${TEST_TMPDIR:-/tmp}"

for case in tiny8b tinybase; do
  for mode in eval train; do
    "$logits" --model "$data/$case" --inputs "$data/$case/expected.safetensors" \
      --output "$tmp/$case.$mode.safetensors" --mode "$mode"
    $compare "$tmp/$case.$mode.safetensors" "$data/$case/expected.safetensors" \
      --golden-key "logits_$mode" --atol 1e-4
  done
done

# bf16: within the bf16 error model of the reference (tests/bf16_parity_test.cc): no exact
# match expected, so compare loosely and only check that it runs and lands near.
"$logits" --model "$data/tiny8b" --inputs "$data/tiny8b/expected.safetensors" \
  --output "$tmp/bf16.safetensors" --dtype bf16
$compare "$tmp/bf16.safetensors" "$data/tiny8b/expected.safetensors" --golden-key logits_eval --atol 0.1 --max-argmax-mismatches 3

expect_error() {  # expect_error "<text the message must contain>" args...
  local want="$1"; shift
  if "$logits" "$@" >"$tmp/out.txt" 2>&1; then
    echo "FAIL: expected an error for: $*"; exit 1
  fi
  grep -qF -- "$want" "$tmp/out.txt" || { echo "FAIL: message lacks '$want':"; cat "$tmp/out.txt"; exit 1; }
  echo "error shown to the user: $(tail -n1 "$tmp/out.txt")"
}

# Token id outside the vocabulary (tiny8b: V = 320) and a sequence longer than the context.
python3 - "$tmp" <<'PY'
import sys
sys.path.insert(0, "tools/reference")
import safetensors_lite as st
tmp = sys.argv[1]
st.write(f"{tmp}/bad_ids.safetensors", {"input_ids": ("I64", [1, 3], [0, 5, 320]),
                                        "attention_mask": ("I64", [1, 3], [1, 1, 1])})
st.write(f"{tmp}/too_long.safetensors", {"input_ids": ("I64", [1, 2049], [0] * 2049)})
PY
expect_error "input_ids[0, 2] = 320 is outside the vocabulary [0, 320)" \
  --model "$data/tiny8b" --inputs "$tmp/bad_ids.safetensors" --output "$tmp/x.safetensors"
expect_error "sequence length 2049 exceeds the model's max_position_embeddings 2048" \
  --model "$data/tiny8b" --inputs "$tmp/too_long.safetensors" --output "$tmp/x.safetensors"
expect_error "--mode must be 'eval' or 'train'" \
  --model "$data/tiny8b" --inputs "$data/tiny8b/expected.safetensors" --output "$tmp/x.safetensors" --mode sideways
expect_error "--dtype must be 'fp32' or 'bf16'" \
  --model "$data/tiny8b" --inputs "$data/tiny8b/expected.safetensors" --output "$tmp/x.safetensors" --dtype fp8
expect_error "cannot open model config" \
  --model "$tmp/nowhere" --inputs "$data/tiny8b/expected.safetensors" --output "$tmp/x.safetensors"
expect_error "--inputs is required" --model "$data/tiny8b" --output "$tmp/x.safetensors"

# A model folder whose checkpoint lacks a tensor and has one of the wrong shape.
python3 - "$tmp" "$data/tiny8b" <<'PY'
import shutil, sys
sys.path.insert(0, "tools/reference")
import safetensors_lite as st
tmp, src = sys.argv[1], sys.argv[2]
import os
os.makedirs(f"{tmp}/broken", exist_ok=True)
shutil.copy(f"{src}/config.json", f"{tmp}/broken/config.json")
t = st.read(f"{src}/model.safetensors")
del t["model.norm.weight"]
dtype, shape, values = t["lm_head.weight"]
t["lm_head.weight"] = (dtype, [shape[0] - 1, shape[1]], values[: (shape[0] - 1) * shape[1]])
st.write(f"{tmp}/broken/model.safetensors", t)
PY
expect_error "missing tensor 'model.norm.weight'" \
  --model "$tmp/broken" --inputs "$data/tiny8b/expected.safetensors" --output "$tmp/x.safetensors"
expect_error "tensor 'lm_head.weight' has shape [319, 64], expected [320, 64]" \
  --model "$tmp/broken" --inputs "$data/tiny8b/expected.safetensors" --output "$tmp/x.safetensors"
mkdir -p "$tmp/noweights" && cp "$data/tiny8b/config.json" "$tmp/noweights/"
expect_error "has no weights: expected model.safetensors" \
  --model "$tmp/noweights" --inputs "$data/tiny8b/expected.safetensors" --output "$tmp/x.safetensors"
echo "logits CLI: all checks passed"
