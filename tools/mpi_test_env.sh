# Sourced by the multi-rank sh_tests of //tools (train_*_test.sh, generate_parallel_test.sh):
#   source tools/mpi_test_env.sh NAME   # -> $tmp (empty, per test), the mpirun environment
#   mpi NP PROGRAM ARGS...              # mpirun -np NP, 60 s limit
#   fail MESSAGE; py SCRIPT ARGS...     # exit 1 with a message; python3 with tools/reference
#   fixture_prompt EXPECTED OUT         # a fixture's generation prompt as a --input_ids_file
# The mpirun setup of parallel/mpi_test.sh: root-run variables, shared memory between ranks,
# oversubscribed on CI's 2 cores with one OpenMP thread per rank (single-process runs too, so a
# rank computes exactly like its single-process counterpart), and one short OpenMPI tmp dir per
# run (PMIx sockets; Bazel's sandboxes share /tmp and /dev/shm and may reuse a launcher's pid).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader
export OMP_NUM_THREADS=1 OMP_PROC_BIND=false KOKKOS_DISABLE_WARNINGS=1
unset TEST_PREMATURE_EXIT_FILE
tmp=${TEST_TMPDIR:-$(mktemp -d)}/${1:?usage: source tools/mpi_test_env.sh NAME}
rm -rf "$tmp" && mkdir -p "$tmp"
ompi_dir=$(mktemp -d /tmp/openmoe-mpi.XXXXXX) || exit 1
trap 'rm -rf "$ompi_dir"' EXIT
export TMPDIR=$ompi_dir OMPI_MCA_orte_tmpdir_base=$ompi_dir OMPI_MCA_btl_vader_backing_directory=$ompi_dir

mpi() { local np=$1; shift; timeout -k 5 60 mpirun -np "$np" --oversubscribe --bind-to none "$@"; }
fail() { echo "FAIL: $*"; exit 1; }
py() { PYTHONPATH=tools/reference python3 "$@"; }
# fixture_prompt EXPECTED OUT: a fixture's generation prompt (gen_prompt_ids / gen_prompt_mask) as
# the input_ids / attention_mask file of generate's --input_ids_file.
fixture_prompt() {
  py -c 'import sys, safetensors_lite as st
t = st.read(sys.argv[1])
st.write(sys.argv[2], {"input_ids": t["gen_prompt_ids"], "attention_mask": t["gen_prompt_mask"]})' "$1" "$2"
}
