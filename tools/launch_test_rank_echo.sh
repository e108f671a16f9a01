#!/usr/bin/env bash
# The tiny program launch_cli_test.sh starts on every rank: one line with this rank's OpenMPI
# rank and world size, its OMP_NUM_THREADS, and each argument it got in brackets (so spaces and
# empty arguments show). A rank given `--exit_code_on_rank R:C` exits with C on rank R.
line="rank=${OMPI_COMM_WORLD_RANK:-unset} size=${OMPI_COMM_WORLD_SIZE:-unset} omp=${OMP_NUM_THREADS:-unset} args="
for arg in "$@"; do line+="[$arg]"; done
echo "$line"
if [[ "${1:-}" == --exit_code_on_rank && "${2%%:*}" == "${OMPI_COMM_WORLD_RANK:-}" ]]; then
  exit "${2#*:}"
fi
