#!/usr/bin/env bash
# //tools:generate from the command line: greedy ids reproduce the fixtures' gen_greedy_ids
# through --input_ids_file/--output_ids_file, text mode works on the embedded default model
# (single prompt, batch, chat, seeded sampling), and bad input is refused with a clear message.
set -euo pipefail
gen=tools/generate
data=tests/data/openmoe
tmp="${TEST_TMPDIR:-/tmp}"
py() { PYTHONPATH=tools/reference python3 "$@"; }

for case in tiny8b tinybase; do
  py - "$data/$case/expected.safetensors" "$tmp/$case.prompt.safetensors" <<'PY'
import sys, safetensors_lite as st
t = st.read(sys.argv[1])
st.write(sys.argv[2], {"input_ids": t["gen_prompt_ids"], "attention_mask": t["gen_prompt_mask"]})
PY
  "$gen" --model "$data/$case" --input_ids_file "$tmp/$case.prompt.safetensors" \
    --output_ids_file "$tmp/$case.out.safetensors" --max_new_tokens 8
  py - "$tmp/$case.out.safetensors" "$data/$case/expected.safetensors" <<'PY'
import sys, safetensors_lite as st
ours, want = st.read(sys.argv[1])["output_ids"], st.read(sys.argv[2])["gen_greedy_ids"]
assert ours[1] == want[1] and ours[2] == want[2], f"greedy ids differ: {ours} vs {want}"
print("greedy ids match the fixture:", ours[1])
PY
done

# Text mode on the embedded default model: no arguments at all.
"$gen" >"$tmp/default.txt" 2>"$tmp/default.err"
grep -q "prefill .* tokens/s" "$tmp/default.err"
[[ -s "$tmp/default.txt" ]] || { echo "FAIL: no text"; exit 1; }
printf 'first prompt\nsecond prompt, longer than the first one\n' >"$tmp/batch.txt"
"$gen" --batch_file "$tmp/batch.txt" --max_new_tokens 5 >"$tmp/batch.out" 2>/dev/null
grep -q '^\[0\] ' "$tmp/batch.out" && grep -q '^\[1\] ' "$tmp/batch.out"
"$gen" --chat --prompt "How do I kill a process?" --max_new_tokens 4 >/dev/null 2>&1
# Seeded sampling is reproducible (seed 1 twice: the same ids), another seed gives other ids, and
# sampling is not greedy decoding. Fixed names in this test's own folder.
mkdir -p "$tmp/seeds" && rm -f "$tmp/seeds"/*
for run in 1a:1 1b:1 2:2; do
  "$gen" --temperature 0.8 --top_p 0.9 --seed "${run#*:}" --max_new_tokens 12 \
    --output_ids_file "$tmp/seeds/seed${run%%:*}.safetensors" >/dev/null 2>&1
done
"$gen" --greedy --max_new_tokens 12 --output_ids_file "$tmp/seeds/greedy.safetensors" >/dev/null 2>&1
py - "$tmp/seeds" <<'PY'
import sys, safetensors_lite as st
ids = {n: st.read(f"{sys.argv[1]}/{n}.safetensors")["output_ids"] for n in ("seed1a", "seed1b", "seed2", "greedy")}
for n, (dtype, shape, values) in ids.items():
    assert shape[0] == 1 and 1 <= shape[1] <= 12, (n, shape)
a, b, c, g = (ids[n][2] for n in ("seed1a", "seed1b", "seed2", "greedy"))
assert a == b, f"seed 1 twice gave different ids: {a} vs {b}"
assert a != c, f"seeds 1 and 2 gave the same ids: {a}"
assert a != g and c != g, f"sampling gave the greedy ids: {a} / {c} vs {g}"
print(f"seeded sampling reproducible: seed 1 {a}, seed 2 {c}, greedy {g}")
PY
expect_error() {  # expect_error "<text the message must contain>" args...
  local want="$1"; shift
  if "$gen" "$@" >"$tmp/out.txt" 2>&1; then echo "FAIL: expected an error for: $*"; exit 1; fi
  grep -qF -- "$want" "$tmp/out.txt" || { echo "FAIL: message lacks '$want':"; cat "$tmp/out.txt"; exit 1; }
  echo "error shown to the user: $(grep -F -- "$want" "$tmp/out.txt" | head -n1)"
}
expect_error "--greedy contradicts --temperature" --greedy --temperature 0.7
expect_error "the prompt is empty" --prompt ""
expect_error "has no tokenizer" --model "$data/tiny8b" --prompt "hello"
printf 'bad \xff bytes' >"$tmp/bad.txt"
expect_error "not valid UTF-8" --prompt_file "$tmp/bad.txt"
expect_error "exceeds the model's context of 2048 tokens" --max_new_tokens 4000
expect_error "give only one of" --prompt a --batch_file "$tmp/batch.txt"
expect_error "--top_p must be in (0, 1]" --top_p 1.5
expect_error "Unknown command line flag 'frobnicate'" --frobnicate
echo "generate CLI: all checks passed"
