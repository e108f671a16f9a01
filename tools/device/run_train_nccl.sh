#!/usr/bin/env bash
# run_train_nccl.sh stage|run: //tools:train's plugins over NCCL on one GPU (issue 17), on the
# tiny8b fixture (2 examples, batch 1, 3 steps, lr 1e-2, clipping at 0.5), each run with
# --dump_step_state and a step-3 checkpoint:
#   single   train alone (no MPI: one device, no communicator)
#   dpz1/2   orterun -np 1 train --plugin ep_zero --extra_dp_size 1 --zero_stage 1 / 2 (a world of one:
#            the data-parallel hooks and ZeRO over NCCL, the loss over MPI)
#   epz0/2   orterun -np 1 train --plugin ep --zero_stage 0 / 2 (EP over one rank: the dispatcher's
#            all-to-alls and capacity all-reduce over NCCL; ZeRO-2 over the dense and expert ranges)
# then compares every run's dump with single's (compare_step_dumps.py: bit for bit or the largest
# difference) and dpz1/2 with single as compare_zero_runs.py does (losses, weights, AdamW moments
# exact; grad_norm to 1e-12), and runs NcclCommunicator's test alone and under orterun -np 1.
#
# Here, after `bazel --output_base=... build --config=cuda //tools:train //parallel:nccl_communicator_test`:
#   tools/device/run_train_nccl.sh stage     # -> .device/{bin,lib,ompi}, then .dev/train_nccl.tar.xz
# On the GPU machine (device `run`, carry [".dev"]):
#   tar xJf .dev/train_nccl.tar.xz && tools/device/run_train_nccl.sh run OUTDIR
set -uo pipefail
mode="${1:?usage: run_train_nccl.sh stage | run OUTDIR}"
dev=.device

if [[ $mode == stage ]]; then
  set -e
  tools/device/run_nccl.sh stage              # the NCCL test, OpenMPI under $dev/ompi, their libraries
  tools/device/stage.sh "$dev" tools/train
  # train's own shared libraries outside glibc and CUDA (Abseil, Cairo for the loss curve, ...).
  ldd bazel-bin/tools/train | awk '/=> \// {print $3}' | sort -u \
    | grep -Ev '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so|/usr/local/cuda|libcuda\.so|libnccl' \
    | xargs -r -I{} cp -fL {} "$dev/lib/"
  mkdir -p .dev && tar cJf .dev/train_nccl.tar.xz "$dev/bin/train" "$dev/bin/nccl_communicator_test" "$dev/lib" "$dev/ompi"
  ls -la .dev/train_nccl.tar.xz
  exit 0
fi
[[ $mode == run ]] || { echo "usage: run_train_nccl.sh stage | run OUTDIR" >&2; exit 2; }
out="${2:?usage: run_train_nccl.sh run OUTDIR}"
source tools/device/ompi_env.sh
train=$PWD/$dev/bin/train
[[ -x $train ]] || { echo "run_train_nccl.sh: $train missing (stage here, carry .dev, unpack)" >&2; exit 1; }
work=$(mktemp -d)
export PYTHONPATH=$PWD/tools/reference
status=0
step() { echo "=== $*"; local t0=$SECONDS; timeout -k 10 300 "$@"; local rc=$?; echo "=== rc $rc, $((SECONDS - t0)) s";
         [[ $rc == 0 ]] || { echo "=== FAILED ($rc): $*"; status=1; }; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
data=tests/data/openmoe/tiny8b
python3 tools/compare_dp_grads.py split "$data/expected.safetensors" "$work" || exit 1
common=(--model "$data" --dataset "$work/all.safetensors" --batch_size 1 --shuffle=false --num_epochs 3 --max_steps 3
        --lr 1e-2 --max_grad_norm 0.5 --progress=false)
run() { local name=$1; shift; step "$@" "${common[@]}" --output_path "$work/$name" --dump_step_state "$work/$name.safetensors"; }
mpi1=(orterun -np 1 --bind-to none)  # an array: `step` runs its command under timeout, which cannot run shell functions
run single "$train"
run dpz1 "${mpi1[@]}" "$train" --plugin ep_zero --extra_dp_size 1 --zero_stage 1
run dpz2 "${mpi1[@]}" "$train" --plugin ep_zero --extra_dp_size 1 --zero_stage 2
run epz0 "${mpi1[@]}" "$train" --plugin ep --zero_stage 0
run epz2 "${mpi1[@]}" "$train" --plugin ep --zero_stage 2
for name in single dpz1 dpz2 epz0 epz2; do
  echo "--- $name metrics"; cat "$work/$name/metrics.jsonl" 2>/dev/null | cut -c1-200
done
for name in dpz1 dpz2; do step python3 tools/compare_step_dumps.py "$work/single.safetensors" "$work/$name.safetensors" --exact; done
for name in epz0 epz2; do step python3 tools/compare_step_dumps.py "$work/single.safetensors" "$work/$name.safetensors"; done
step python3 tools/compare_zero_runs.py "$work/single" "$work/dpz1" "$work/dpz2"
step python3 tools/compare_zero_runs.py "$work/epz0" "$work/epz2"
step "$dev/bin/nccl_communicator_test"
step orterun -np 1 --bind-to none "$dev/bin/nccl_communicator_test"
cp "$work"/*.safetensors "$out/" 2>/dev/null; rm -f "$out"/all.safetensors "$out"/example*.safetensors
echo "=== run_train_nccl status $status"
exit $status
