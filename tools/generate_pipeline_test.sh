#!/usr/bin/env bash
# //tools:generate --parallel pipeline (issue 17): layer stages over host ranks.
#  1. `mpirun -np 2 generate --parallel pipeline --greedy --max_new_tokens 8` on the tiny8b fixture
#     (4 layers: stages of 2 + 2) writes exactly the single-process output_ids, in fp32 and bf16
#     (fp32: also the fixture's gen_greedy_ids), and prompt logits (--output_logits_file, one forward
#     pass through every stage, sent by the last stage to rank 0) equal to the single process's bit
#     for bit; -np 3 (uneven: 1 + 1 + 2 layers) and -np 4 (1 each) too. Each rank reports its stage:
#     the layer ranges are the expected ones and the ranks' weights add up to the same total on 2 and
#     4 ranks with no rank holding all of it (each rank allocates only its own tensors). Only rank 0
#     prints the run and writes the files;
#  2. text mode on the embedded default model (4 layers): a 3-prompt batch (greedy) and a seeded
#     sampled prompt (the last stage samples, every stage gets its tokens) print the same text on 2
#     ranks as on one;
#  3. refused naming the flag, without hanging: more ranks than layers, --parallel pipeline without
#     mpirun; a failure on rank 0 alone (an unreadable --input_ids_file while the other ranks wait
#     for the prompts) ends every rank.
# About 10 s on 2 cores.
set -uo pipefail
gen=tools/generate
data=tests/data/openmoe/tiny8b
default_model=tools/default_model/openmoe-tiny-random

source tools/mpi_test_env.sh generate_pipeline

fixture_prompt "$data/expected.safetensors" "$tmp/prompt.safetensors" || fail "prompt file"
common=(--model "$data" --input_ids_file "$tmp/prompt.safetensors" --greedy --max_new_tokens 8)
# same_run ONE MANY [fixture]: output_ids equal (and the fixture's gen_greedy_ids), prompt logits
# equal bit for bit (the stages run the single device's kernels on the same rows, the hidden state
# crosses ranks in the run dtype, unrounded).
same_run() {
  py - "$@" <<'PY'
import sys, safetensors_lite as st
one, many = sys.argv[1:3]
a, b = (st.read(p + ".ids")["output_ids"] for p in (one, many))
assert a == b, f"ids differ: {a} vs {b}"
if len(sys.argv) > 3:
    want = st.read(sys.argv[3])["gen_greedy_ids"]
    assert a[1] == want[1] and a[2] == want[2], f"not the fixture's greedy ids: {a} vs {want}"
la, lb = (st.read(p + ".logits")["prompt_logits"] for p in (one, many))
assert la[1] == lb[1], (la[1], lb[1])
differ = sum(x != y for x, y in zip(la[2], lb[2]))
assert differ == 0, f"{differ} of {len(la[2])} prompt logits differ"
print(f"same ids {a[1]} {a[2]} and bit-identical prompt logits {la[1]}")
PY
}
run_one() {  # run_one NAME dtype
  "$gen" "${common[@]}" --dtype "$2" --output_ids_file "$tmp/$1.ids" --output_logits_file "$tmp/$1.logits" \
    >"$tmp/$1.log" 2>&1 || { cat "$tmp/$1.log"; fail "single process $2"; }
}
run_pipeline() {  # run_pipeline NAME NP dtype
  mpi "$2" "$gen" "${common[@]}" --dtype "$3" --parallel pipeline --output_ids_file "$tmp/$1.ids" \
    --output_logits_file "$tmp/$1.logits" >"$tmp/$1.log" 2>&1 || { cat "$tmp/$1.log"; fail "mpirun -np $2 --parallel pipeline ($3)"; }
  [[ $(grep -c "^model " "$tmp/$1.log") == 1 && $(grep -c "^wrote output_ids" "$tmp/$1.log") == 1 \
     && $(grep -c "^wrote prompt_logits" "$tmp/$1.log") == 1 ]] \
    || { cat "$tmp/$1.log"; fail "-np $2: more or less than rank 0 printed the run or wrote the files"; }
}
expect_stage() {  # expect_stage LOG "<stage line prefix>"
  grep -qF -- "$2" "$1" || { cat "$1"; fail "no stage line '$2'"; }
}
# The ranks' weight MiB (from their stage lines) summed, and the largest.
stage_mib() { sed -n 's/^pipeline stage .*, \([0-9.]*\) MiB of weights$/\1/p' "$1" | sort -g | awk '{s += $1; m = $1} END {printf "%.3f %.3f", s, m}'; }

# 1. Greedy ids and prompt logits: 2, 3 and 4 stages against one process.
for dtype in fp32 bf16; do
  run_one "one.$dtype" "$dtype"
  run_pipeline "two.$dtype" 2 "$dtype"
  fixture=()
  [[ $dtype == fp32 ]] && fixture=("$data/expected.safetensors")
  same_run "$tmp/one.$dtype" "$tmp/two.$dtype" "${fixture[@]}" || fail "-np 2 --parallel pipeline ($dtype) is not the single-device run"
done
expect_stage "$tmp/two.fp32.log" "pipeline stage 0 of 2: embedding + layers [0, 2),"
expect_stage "$tmp/two.fp32.log" "pipeline stage 1 of 2: layers [2, 4) + final norm + LM head,"
run_pipeline three 3 fp32
same_run "$tmp/one.fp32" "$tmp/three" || fail "-np 3 --parallel pipeline (uneven split) is not the single-device run"
expect_stage "$tmp/three.log" "pipeline stage 0 of 3: embedding + layers [0, 1),"
expect_stage "$tmp/three.log" "pipeline stage 1 of 3: layers [1, 2),"
expect_stage "$tmp/three.log" "pipeline stage 2 of 3: layers [2, 4) + final norm + LM head,"
run_pipeline four 4 fp32
same_run "$tmp/one.fp32" "$tmp/four" || fail "-np 4 --parallel pipeline is not the single-device run"
expect_stage "$tmp/four.log" "pipeline stage 3 of 4: layers [3, 4) + final norm + LM head,"
read -r sum2 max2 <<<"$(stage_mib "$tmp/two.fp32.log")"
read -r sum4 max4 <<<"$(stage_mib "$tmp/four.log")"
[[ $sum2 == "$sum4" ]] || fail "the stages' weights add up to $sum2 MiB on 2 ranks but $sum4 MiB on 4"
awk -v s="$sum4" -v m="$max4" -v m2="$max2" 'BEGIN {exit !(m < 0.5 * s && m2 < 0.6 * s)}' \
  || fail "a rank holds too much of the $sum4 MiB of weights (largest: $max2 MiB on 2 ranks, $max4 MiB on 4)"
echo "weights per rank: largest $max2 of $sum2 MiB on 2 ranks, $max4 MiB on 4"

# 2. Text mode (tokenizer on every rank, prompts from rank 0): batch and seeded sampling.
printf 'first prompt\nsecond prompt, longer than the first one\nthird\n' >"$tmp/batch.txt"
text_runs=("--batch_file $tmp/batch.txt --max_new_tokens 6" "--prompt The_capital_of_France --temperature 0.8 --seed 3 --max_new_tokens 12")
for i in 0 1; do
  read -r -a args <<<"${text_runs[$i]}"
  "$gen" --model "$default_model" "${args[@]}" >"$tmp/text1.$i.txt" 2>"$tmp/text1.$i.err" || { cat "$tmp/text1.$i.err"; fail "text run $i"; }
  mpi 2 "$gen" --model "$default_model" "${args[@]}" --parallel pipeline >"$tmp/text2.$i.txt" 2>"$tmp/text2.$i.err" \
    || { cat "$tmp/text2.$i.err"; fail "text run $i on 2 stages"; }
  [[ -s "$tmp/text1.$i.txt" ]] || fail "no text in run $i"
  cmp -s "$tmp/text1.$i.txt" "$tmp/text2.$i.txt" || { diff "$tmp/text1.$i.txt" "$tmp/text2.$i.txt"; fail "text run $i differs on 2 stages"; }
done
echo "text on 2 stages = text on one (batch of 3, seeded sampling)"

# 3. Refusals and a failing rank; none may hang (timeout: rc 124/137).
expect_refused() {  # expect_refused NP "<message>" args...  (NP 0: without mpirun)
  local np=$1 want=$2; shift 2
  local rc=0
  if [[ $np == 0 ]]; then
    timeout -k 5 60 "$gen" "${common[@]}" "$@" >"$tmp/bad.log" 2>&1 || rc=$?
  else
    mpi "$np" "$gen" "${common[@]}" "$@" >"$tmp/bad.log" 2>&1 || rc=$?
  fi
  [[ $rc != 0 ]] || { cat "$tmp/bad.log"; fail "ran: -np $np $*"; }
  [[ $rc != 124 && $rc != 137 ]] || fail "hung: -np $np $*"
  grep -qF -- "$want" "$tmp/bad.log" || { cat "$tmp/bad.log"; fail "message lacks '$want'"; }
  grep -q "^prefill " "$tmp/bad.log" && fail "work started: -np $np $*"
  echo "refused ($rc): $(grep -F -- "$want" "$tmp/bad.log" | head -n1)"
}
expect_refused 5 "--parallel pipeline puts at least one layer on each rank, but the model has 4 layers (num_hidden_layers) for 5 ranks" \
  --parallel pipeline
expect_refused 0 "--parallel pipeline splits the layers over the ranks of mpirun -np N (N >= 2)" --parallel pipeline
expect_refused 2 "rank 0: NOT_FOUND: cannot open safetensors file '$tmp/missing.safetensors'" \
  --parallel pipeline --input_ids_file "$tmp/missing.safetensors"
echo "generate --parallel pipeline: PASS"
