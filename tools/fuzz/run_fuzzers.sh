#!/usr/bin/env bash
# Builds the libFuzzer targets of the checkpoint parsers with clang (ASan + UBSan) and runs each
# for SECONDS (default 60), seeded with the fixture files. Not part of CI (it needs clang and
# time); run it after changing openmoe/io.
#   tools/fuzz/run_fuzzers.sh [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
seconds="${1:-60}"
out="${TMPDIR:-/tmp}/openmoe-fuzz"
mkdir -p "$out/corpus_safetensors" "$out/corpus_pickle"
absl="$(pkg-config --libs absl_status absl_statusor absl_strings absl_str_format)"
flags=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -I. -Wno-unknown-pragmas)
clang++ "${flags[@]}" tools/fuzz/safetensors_fuzzer.cc openmoe/io/safetensors.cc openmoe/io/dtype.cc \
  $absl -o "$out/safetensors_fuzzer"
clang++ "${flags[@]}" tools/fuzz/torch_pickle_fuzzer.cc openmoe/io/torch_pickle.cc openmoe/io/dtype.cc \
  $absl -o "$out/torch_pickle_fuzzer"
cp tests/data/openmoe/tinybase/model.safetensors "$out/corpus_safetensors/seed.safetensors"
python3 - "$out/corpus_pickle/seed.pkl" <<'PY'
import sys, zipfile
z = zipfile.ZipFile("tests/data/openmoe/tiny8b/pytorch_model.bin")
open(sys.argv[1], "wb").write(z.read([n for n in z.namelist() if n.endswith("data.pkl")][0]))
PY
"$out/safetensors_fuzzer" -max_total_time="$seconds" -max_len=65536 "$out/corpus_safetensors"
"$out/torch_pickle_fuzzer" -max_total_time="$seconds" -max_len=16384 "$out/corpus_pickle"
