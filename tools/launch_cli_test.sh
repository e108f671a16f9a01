#!/usr/bin/env bash
# //tools:launch for real: mpirun starts 2 ranks of a tiny program (launch_test_rank_echo.sh),
# each gets the arguments after `--` unchanged and OMP_NUM_THREADS; a rank's exit code comes back
# as the launcher's; --dry_run prints one line with -np, the slots and the train binary's path;
# bad flags and hostfiles stop with a message naming them (file and line). mpirun runs inside
# Bazel's linux-sandbox (checked: no no-sandbox tag needed).
set -euo pipefail
launch=tools/launch
echo_rank="$PWD/tools/launch_test_rank_echo.sh"
tmp="${TEST_TMPDIR:-/tmp}/launch_cli"
rm -rf "$tmp" && mkdir -p "$tmp"
# The launcher itself must supply what mpirun needs as root, and the default OMP_NUM_THREADS.
unset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OMP_NUM_THREADS

fail() { echo "FAIL: $*"; exit 1; }
cores=$(nproc)
omp=$((cores / 2)); ((omp >= 1)) || omp=1

# 1. Two ranks, arguments with a space and an empty one.
"$launch" --nproc_per_node 2 --program "$echo_rank" -- --lr 1e-4 "two words" "" >"$tmp/run.txt" 2>"$tmp/run.err" \
  || { cat "$tmp/run.txt" "$tmp/run.err"; fail "the 2-rank run failed"; }
sort "$tmp/run.txt" | grep '^rank=' >"$tmp/ranks.txt" || true
printf '%s\n' "rank=0 size=2 omp=$omp args=[--lr][1e-4][two words][]" \
              "rank=1 size=2 omp=$omp args=[--lr][1e-4][two words][]" >"$tmp/want.txt"
diff "$tmp/want.txt" "$tmp/ranks.txt" || { cat "$tmp/run.err"; fail "ranks or their arguments differ (above)"; }

# 2. The caller's OMP_NUM_THREADS wins; no program arguments is fine.
OMP_NUM_THREADS=3 "$launch" --nproc_per_node 2 --program "$echo_rank" >"$tmp/omp.txt" 2>&1 || fail "run without --"
[[ $(grep -c '^rank=[01] size=2 omp=3 args=$' "$tmp/omp.txt") == 2 ]] || { cat "$tmp/omp.txt"; fail "OMP_NUM_THREADS=3"; }

# 3. A rank's exit code is the launcher's (execvp: mpirun's status is ours).
set +e
"$launch" --nproc_per_node 2 --program "$echo_rank" -- --exit_code_on_rank 1:3 >"$tmp/exit.txt" 2>&1
code=$?
set -e
[[ $code == 3 ]] || { cat "$tmp/exit.txt"; fail "exit code $code, expected 3"; }

# 4. --dry_run: one line, -np, the slots, root's variables, and a train binary that exists.
"$launch" --nproc_per_node 2 --dry_run -- --lr 1e-5 >"$tmp/dry.txt"
[[ $(wc -l <"$tmp/dry.txt") == 1 ]] || fail "dry run printed more than one line"
line=$(cat "$tmp/dry.txt")
for want in " -np 2 " " --host localhost:2 " " --bind-to none " " -x OMP_NUM_THREADS " "OMP_NUM_THREADS=$omp "; do
  [[ "$line" == *"$want"* ]] || fail "dry run lacks '$want': $line"
done
if [[ $(id -u) == 0 ]]; then
  [[ "$line" == "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "* ]] || fail "root variables missing: $line"
fi
train=$(awk '{print $(NF-2)}' "$tmp/dry.txt")
[[ "$train" == */tools/train && -x "$train" ]] || fail "default program '$train' is not the train binary"
[[ "$line" == *" $train --lr 1e-5" ]] || fail "program arguments not last: $line"

# 5. A hostfile: world = N x hosts, each host N slots.
printf '# two hosts\nnode-a slots=4\n\nnode-b  # second\n' >"$tmp/hosts.txt"
"$launch" --nproc_per_node 2 --hostfile "$tmp/hosts.txt" --program /bin/true --dry_run >"$tmp/dry_hosts.txt"
grep -q -- " -np 4 --host node-a:2,node-b:2 " "$tmp/dry_hosts.txt" || { cat "$tmp/dry_hosts.txt"; fail "hostfile"; }

# 6. Errors.
expect_error() {  # expect_error "<text the message must contain>" args...
  local want="$1"; shift
  if "$launch" "$@" >"$tmp/err.txt" 2>&1; then fail "expected an error for: $*"; fi
  grep -qF -- "$want" "$tmp/err.txt" || { cat "$tmp/err.txt"; fail "message lacks '$want'"; }
}
expect_error "--nproc_per_node is required" --program /bin/true -- x
expect_error "--nproc_per_node must be >= 1, got 0" --nproc_per_node 0 --program /bin/true
expect_error "--nproc_per_node must be >= 1, got -2" --nproc_per_node=-2 --program /bin/true
expect_error "cannot read hostfile '$tmp/none.txt'" --nproc_per_node 1 --hostfile "$tmp/none.txt" --dry_run
printf 'node-a\nnode-b slots=two\n' >"$tmp/bad_hosts.txt"
expect_error "$tmp/bad_hosts.txt:2: 'slots=two' is not \`slots=K\`" --nproc_per_node 1 --hostfile "$tmp/bad_hosts.txt" --dry_run
expect_error "host 'node-a' has slots=4" --nproc_per_node 8 --hostfile "$tmp/hosts.txt" --dry_run
expect_error "unexpected argument 'train.py' before \`--\`" --nproc_per_node 1 train.py
expect_error "cannot run '$tmp/no-mpirun'" --nproc_per_node 1 --mpirun "$tmp/no-mpirun" --program /bin/true
"$launch" --help >"$tmp/help.txt" 2>&1 || true
grep -qF -- "bazel run //tools:launch -- --nproc_per_node 8" "$tmp/help.txt" || { cat "$tmp/help.txt"; fail "--help"; }
echo PASS
