#!/usr/bin/env bash
# Runs an MPI GoogleTest binary the ways a job starts: alone (a world of one, OpenMPI's singleton
# init), under `mpirun -np 2` and under `mpirun -np 4` (oversubscribed on CI's 2 cores); then
# checks with the probe that AbortAll on one rank ends every rank, non-zero, naming the rank,
# without hanging (each run has a timeout). Fails when any run fails; mpi_test_main.cc makes a
# run fail when any of its ranks does.
#
#   mpi_test.sh TEST_BINARY ABORT_PROBE MERGE_SCRIPT
#
# Results: every rank of every run writes its own GoogleTest XML, merge_rank_xml.py joins them
# with the probe checks into Bazel's XML_OUTPUT_FILE (suites named np<P>.rank<r>.<suite>), so CI
# counts every rank's cases.
set -uo pipefail

test_binary=$1
probe=$2
merge=$3

# CI runs as root, which mpirun refuses unless told both of these.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# One node: the shared-memory transport and the self loop, no network interfaces probed.
export OMPI_MCA_btl=self,vader
# 4 ranks share 2 cores: one OpenMP thread each, no binding, and no Kokkos warning about the
# oversubscription that is the point here.
export OMP_NUM_THREADS=1 OMP_PROC_BIND=false KOKKOS_DISABLE_WARNINGS=1
# Bazel's premature-exit marker is the wrapper's: every rank's gtest would create and delete it.
unset TEST_PREMATURE_EXIT_FILE

work=${TEST_TMPDIR:-$(mktemp -d)}
# OpenMPI names its session directory (/tmp/ompi.<host>.<uid>/pid.<mpirun's pid>) and its
# shared-memory segments (/dev/shm/vader_segment.<host>.<job id from that pid>.<rank>) after
# mpirun's pid. Every Bazel sandbox has its own pid namespace but shares /tmp and /dev/shm, so two
# of these tests running at once both had pid 43 and broke each other's MPI_Init. Each run gets
# a directory of its own for both (short: PMIx puts unix sockets in it, 108 bytes a path at most).
ompi_dir=$(mktemp -d /tmp/openmoe-mpi.XXXXXX) || exit 1
trap 'rm -rf "$ompi_dir"' EXIT
export TMPDIR=$ompi_dir OMPI_MCA_orte_tmpdir_base=$ompi_dir OMPI_MCA_btl_vader_backing_directory=$ompi_dir

checks=$work/checks.txt  # lines "name PASS|FAIL message" for the merged XML
: > "$checks"
failures=0

check() {  # check NAME PASS|FAIL MESSAGE
  echo "$1 $2 $3" >> "$checks"
  echo "[mpi_test] $2 $1: $3"
  [[ $2 == PASS ]] || failures=$((failures + 1))
}

# launch NP SECONDS PROGRAM: the program alone for NP = 1, else under mpirun; killed after
# SECONDS (a run takes about a second; a rank left waiting in a collective would wait forever).
launch() {
  local np=$1 seconds=$2
  shift 2
  if [[ $np == 1 ]]; then
    timeout -k 5 "$seconds" "$@"
  else
    # Ranks on this node inherit mpirun's environment (no -x needed).
    timeout -k 5 "$seconds" mpirun -np "$np" --oversubscribe --bind-to none --tag-output "$@"
  fi
}

xmls=()
for np in 1 2 4; do
  export OPENMOE_GTEST_XML_PREFIX=$work/np$np
  start=$(date +%s)
  launch "$np" 30 "$test_binary"
  rc=$?
  seconds=$(( $(date +%s) - start ))
  if [[ $rc == 0 ]]; then
    check "tests_np$np" PASS "every rank passed (${seconds} s)"
  elif [[ $rc == 124 || $rc == 137 ]]; then
    check "tests_np$np" FAIL "timed out after ${seconds} s"
  else
    check "tests_np$np" FAIL "exit status $rc (${seconds} s)"
  fi
  for ((r = 0; r < np; r++)); do
    xmls+=("np$np.rank$r=$work/np$np.rank$r.xml")
  done
done
unset OPENMOE_GTEST_XML_PREFIX

for np in 1 2 4; do
  last=$((np - 1))
  out=$work/probe_np$np.out
  before=$failures
  start=$(date +%s)
  launch "$np" 10 "$probe" > "$out" 2>&1
  rc=$?
  seconds=$(( $(date +%s) - start ))
  if [[ $rc == 0 ]]; then
    check "abort_all_np$np" FAIL "exit status 0: the job was not aborted"
  elif [[ $rc == 124 || $rc == 137 ]]; then
    check "abort_all_np$np" FAIL "hung: killed after ${seconds} s"
  elif ! grep -q "rank $last: INTERNAL: deliberate failure to test AbortAll" "$out"; then
    check "abort_all_np$np" FAIL "exit status $rc, but no message naming rank $last"
  elif grep -q "passed a barrier" "$out"; then
    check "abort_all_np$np" FAIL "a rank passed the barrier"
  else
    check "abort_all_np$np" PASS "exit status $rc after ${seconds} s, message names rank $last"
  fi
  if [[ $failures != "$before" ]]; then sed 's/^/  | /' "$out"; fi
done

if [[ -n ${XML_OUTPUT_FILE:-} ]]; then
  python3 "$merge" "$XML_OUTPUT_FILE" "$checks" "${xmls[@]}" || failures=$((failures + 1))
fi
echo "[mpi_test] $failures failed check(s)"
[[ $failures == 0 ]]
