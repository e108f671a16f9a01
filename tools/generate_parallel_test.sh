#!/usr/bin/env bash
# //tools:generate on several host ranks (issue 17, "Inference on several devices"):
#  1. `mpirun -np 2 generate --parallel expert --greedy --max_new_tokens 8` on the tiny8b fixture
#     (8 experts, 4 per rank; 2 prompts, so the decode steps of 2 tokens take the grouped-expert path
#     on one device and the dispatch path under expert parallelism) writes the same output_ids as
#     the single-process run, in fp32 and bf16, and those are the fixture's gen_greedy_ids (fp32);
#     and the prompt's logits (--output_logits_file, one forward pass) agree to 1e-5 of their scale;
#     -np 4 (2 experts per rank) too; only rank 0 prints the run and writes the file;
#  2. text mode on the embedded default model (4 experts): a 3-prompt batch (greedy) and a seeded
#     sampled prompt print the same text on 2 ranks as on one;
#  3. 8 experts on 3 ranks, an unknown --parallel value and mpirun without --parallel are refused
#     naming the flag, without hanging; --parallel expert on one process (no mpirun) says it has no
#     effect and gives the single-device ids. (--parallel pipeline: generate_pipeline_test.sh.)
# mpirun setup as train_expert_parallel_test.sh (root-run variables, per-run OpenMPI tmp dir,
# --oversubscribe, OMP_NUM_THREADS=1, a 60 s timeout per mpirun). About 10 s on 2 cores.
set -uo pipefail
gen=tools/generate
data=tests/data/openmoe/tiny8b
default_model=tools/default_model/openmoe-tiny-random

source tools/mpi_test_env.sh generate_parallel

fixture_prompt "$data/expected.safetensors" "$tmp/prompt.safetensors" || fail "prompt file"
common=(--model "$data" --input_ids_file "$tmp/prompt.safetensors" --greedy --max_new_tokens 8)
# Prompt logits (one forward pass of the prompt, the dispatch path): the expert outputs are
# all-gathered and combined by the single-device kernel on the same rows with the same kernels and
# thread count, so they should agree to float rounding at most; 1e-5 of the largest |logit| allows
# for a reduction order that may differ between runs, while a rank's experts missing moves them by
# far more. (The decode steps' grouped-expert path of one device vs. the dispatch path here differ
# in summation order, so only their ids are compared.)
same_logits() {
  py - "$@" <<'PY'
import sys, safetensors_lite as st
a, b = (st.read(p)["prompt_logits"] for p in sys.argv[1:3])
assert a[1] == b[1], (a[1], b[1])
scale = max(abs(v) for v in a[2])
diff = max(abs(x - y) for x, y in zip(a[2], b[2]))
assert diff <= 1e-5 * scale, f"prompt logits differ by {diff} (largest |logit| {scale})"
print(f"prompt logits {a[1]}: max |difference| {diff} (largest |logit| {scale:.3f})")
PY
}
same_ids() {  # same_ids A B [fixture]: output_ids equal (and the fixture's gen_greedy_ids)
  py - "$@" <<'PY'
import sys, safetensors_lite as st
a, b = (st.read(p)["output_ids"] for p in sys.argv[1:3])
assert a == b, f"ids differ: {sys.argv[1]} {a} vs {sys.argv[2]} {b}"
if len(sys.argv) > 3:
    want = st.read(sys.argv[3])["gen_greedy_ids"]
    assert a[1] == want[1] and a[2] == want[2], f"not the fixture's greedy ids: {a} vs {want}"
print(f"same ids ({a[1]}): {a[2]}")
PY
}

# 1. Greedy ids: 2 ranks (and 4) against one process.
for dtype in fp32 bf16; do
  "$gen" "${common[@]}" --dtype "$dtype" --output_ids_file "$tmp/one.$dtype.safetensors" \
    --output_logits_file "$tmp/one.$dtype.logits.safetensors" >"$tmp/one.$dtype.log" 2>&1 \
    || { cat "$tmp/one.$dtype.log"; fail "single process $dtype"; }
  mpi 2 "$gen" "${common[@]}" --dtype "$dtype" --parallel expert --output_ids_file "$tmp/two.$dtype.safetensors" \
    --output_logits_file "$tmp/two.$dtype.logits.safetensors" >"$tmp/two.$dtype.log" 2>&1 || { cat "$tmp/two.$dtype.log"; fail "mpirun -np 2 --parallel expert ($dtype)"; }
  grep -qF "expert parallel: 8 experts over 2 ranks (4 each)" "$tmp/two.$dtype.log" || { cat "$tmp/two.$dtype.log"; fail "no expert-parallel line"; }
  [[ $(grep -c "^model " "$tmp/two.$dtype.log") == 1 && $(grep -c "^wrote output_ids" "$tmp/two.$dtype.log") == 1 ]] \
    || { cat "$tmp/two.$dtype.log"; fail "more than rank 0 printed the run or wrote the ids"; }
  fixture=()
  [[ $dtype == fp32 ]] && fixture=("$data/expected.safetensors")
  same_ids "$tmp/one.$dtype.safetensors" "$tmp/two.$dtype.safetensors" "${fixture[@]}" \
    || fail "mpirun -np 2 --parallel expert ($dtype) is not the single-device generation"
  same_logits "$tmp/one.$dtype.logits.safetensors" "$tmp/two.$dtype.logits.safetensors" \
    || fail "mpirun -np 2 --parallel expert ($dtype): the prompt logits are not the single-device ones"
done
mpi 4 "$gen" "${common[@]}" --dtype fp32 --parallel expert --output_ids_file "$tmp/four.safetensors" \
  --output_logits_file "$tmp/four.logits.safetensors" >"$tmp/four.log" 2>&1 \
  || { cat "$tmp/four.log"; fail "mpirun -np 4 --parallel expert"; }
grep -qF "expert parallel: 8 experts over 4 ranks (2 each)" "$tmp/four.log" || { cat "$tmp/four.log"; fail "no 4-rank line"; }
same_ids "$tmp/one.fp32.safetensors" "$tmp/four.safetensors" || fail "mpirun -np 4 --parallel expert differs"
same_logits "$tmp/one.fp32.logits.safetensors" "$tmp/four.logits.safetensors" || fail "mpirun -np 4: the prompt logits differ"

# 2. Text mode (tokenizer on every rank, prompts from rank 0): batch and seeded sampling.
printf 'first prompt\nsecond prompt, longer than the first one\nthird\n' >"$tmp/batch.txt"
text_runs=("--batch_file $tmp/batch.txt --max_new_tokens 6" "--prompt The_capital_of_France --temperature 0.8 --seed 3 --max_new_tokens 12")
for i in 0 1; do
  read -r -a args <<<"${text_runs[$i]}"
  "$gen" --model "$default_model" "${args[@]}" >"$tmp/text1.$i.txt" 2>"$tmp/text1.$i.err" || { cat "$tmp/text1.$i.err"; fail "text run $i"; }
  mpi 2 "$gen" --model "$default_model" "${args[@]}" --parallel expert >"$tmp/text2.$i.txt" 2>"$tmp/text2.$i.err" \
    || { cat "$tmp/text2.$i.err"; fail "text run $i on 2 ranks"; }
  [[ -s "$tmp/text1.$i.txt" ]] || fail "no text in run $i"
  cmp -s "$tmp/text1.$i.txt" "$tmp/text2.$i.txt" || { diff "$tmp/text1.$i.txt" "$tmp/text2.$i.txt"; fail "text run $i differs on 2 ranks"; }
done
echo "text on 2 ranks = text on one (batch of 3, seeded sampling)"

# 3. Refusals, each naming the flag; none may hang (timeout: rc 124/137).
expect_refused() {  # expect_refused NP "<message>" args...
  local np=$1 want=$2; shift 2
  local rc=0
  mpi "$np" "$gen" "${common[@]}" "$@" >"$tmp/bad.log" 2>&1 || rc=$?
  [[ $rc != 0 ]] || { cat "$tmp/bad.log"; fail "ran: -np $np $*"; }
  [[ $rc != 124 && $rc != 137 ]] || fail "hung: -np $np $*"
  grep -qF -- "$want" "$tmp/bad.log" || { cat "$tmp/bad.log"; fail "message lacks '$want'"; }
  grep -q "^prefill " "$tmp/bad.log" && fail "work started: -np $np $*"
  echo "refused ($rc): $(grep -F -- "$want" "$tmp/bad.log" | head -n1)"
}
expect_refused 3 "--parallel expert splits the experts over the ranks, but the model's 8 experts (num_experts) cannot be split evenly over 3 ranks" --parallel expert
expect_refused 2 "--parallel must be 'expert' or 'pipeline', got 'bogus'" --parallel bogus
expect_refused 2 "this run has 2 ranks (mpirun): give --parallel expert or --parallel pipeline" --dtype fp32
"$gen" "${common[@]}" --parallel expert --output_ids_file "$tmp/single.safetensors" >"$tmp/single.log" 2>&1 \
  || { cat "$tmp/single.log"; fail "--parallel expert without mpirun"; }
grep -qF -- "--parallel expert: one rank (not started by mpirun -np N > 1), no effect" "$tmp/single.log" || fail "no 'no effect' note"
same_ids "$tmp/one.fp32.safetensors" "$tmp/single.safetensors" || fail "--parallel expert on one process differs"
echo "generate --parallel expert: PASS"
