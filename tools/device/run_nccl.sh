#!/usr/bin/env bash
# run_nccl.sh: NcclCommunicator's test (//parallel:nccl_communicator_test) on the GPU machine, at
# world size 1 (the binary alone, OpenMPI's singleton init, GPU 0) and, when more than one GPU is
# visible, under `mpirun -np <GPUs>` (one rank per GPU: cuda_mpi_test_main.cc puts rank r on GPU
# local_rank). The GPU machine has no OpenMPI, so `stage` carries Debian's (binaries, libraries,
# plugins, help files; ~20 MB) next to the test, relocated with OPAL_PREFIX and friends.
#
# Here (with --config=cuda built: bazel --output_base=/root/.cache/bazel_cuda_ob build --config=cuda
# //parallel:nccl_communicator_test):
#   tools/device/run_nccl.sh stage            # -> .device/{bin,lib,ompi}, then .dev/nccl.tar.xz
# On the GPU machine (device `run`, carry [".dev"], a kind with 2+ GPUs for the mpirun part):
#   tar xJf .dev/nccl.tar.xz && tools/device/run_nccl.sh run
# Exit status: non-zero when any run fails or times out (300 s each).
set -uo pipefail
mode="${1:?usage: run_nccl.sh stage|run}"
dev=.device
ompi=$dev/ompi
multiarch=usr/lib/x86_64-linux-gnu

if [[ $mode == stage ]]; then
  set -e
  tools/device/stage.sh "$dev" parallel/nccl_communicator_test
  rm -rf "$ompi" && mkdir -p "$ompi"
  # OpenMPI 4.1 (Debian): launcher and daemon, its libdir with the MCA plugins (openmpi3/), PMIx
  # with its plugins, help texts and default parameter files.
  for p in /usr/bin/orterun /usr/bin/orted /$multiarch/openmpi /$multiarch/pmix2 /usr/share/openmpi /usr/share/pmix \
           /etc/openmpi; do
    # (from / with a relative path: GNU cp 9.1 fails to set the attributes of the parent
    # directories it created when given an absolute source with --parents)
    if [[ -e $p ]]; then (cd / && cp -a --parents "${p#/}" "$OLDPWD/$ompi/"); fi
  done
  # The shared libraries the test, the launcher and the daemon load that the GPU machine lacks
  # (anything outside glibc and CUDA).
  { ldd "bazel-bin/parallel/nccl_communicator_test"; ldd /usr/bin/orterun; ldd /usr/bin/orted; } \
    | awk '/=> \// {print $3}' | sort -u \
    | grep -Ev '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so|/usr/local/cuda|libcuda\.so|libnccl' \
    | xargs -r -I{} cp -fL {} "$dev/lib/"
  mkdir -p .dev && tar cJf .dev/nccl.tar.xz "$dev/bin/nccl_communicator_test" "$dev/lib" "$ompi"
  ls -la .dev/nccl.tar.xz
  exit 0
fi
[[ $mode == run ]] || { echo "usage: run_nccl.sh stage|run" >&2; exit 2; }

source tools/device/ompi_env.sh  # the staged OpenMPI, as root, one node, NVLink multicast off
test_binary=$PWD/$dev/bin/nccl_communicator_test
[[ -x $test_binary ]] || { echo "run_nccl.sh: $test_binary missing (run_nccl.sh stage here, carry .dev, unpack)" >&2; exit 1; }

status=0
step() { echo "=== $*"; timeout -k 10 300 "$@"; local rc=$?; [[ $rc == 0 ]] || { echo "=== FAILED ($rc): $*"; status=1; }; }
nvidia-smi --query-gpu=index,name,memory.total --format=csv
gpus=$(nvidia-smi --list-gpus | wc -l)
step "$test_binary"
if ((gpus > 1)); then
  step orterun -np "$gpus" --bind-to none --tag-output "$test_binary"
else
  echo "=== one GPU visible: no mpirun run (a kind with 2+ GPUs runs it)"
fi
echo "=== run_nccl status $status"
exit $status
