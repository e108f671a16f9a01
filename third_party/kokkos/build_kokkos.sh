#!/usr/bin/env bash
# Builds Kokkos 3.4.1 + Kokkos Kernels 3.4.1 (BLAS only) once per machine into a cache folder
# outside the work tree, and prints the install prefix on the last line as `PREFIX=<dir>`.
#
# Usage: build_kokkos.sh --flavour host|cuda [--cache DIR] [--jobs N]
#   host: OpenMP + Serial, g++, C++17, Release.
#   cuda: Cuda + Serial, nvcc_wrapper, sm_90, cuBLAS TPL, C++17, Release.
#
# Sources come from Debian bookworm's `trilinos` source package (packages/kokkos and
# packages/kokkos-kernels of its orig tarball); the mirror is read from this machine's apt
# configuration. Nothing is written into the work tree. A finished build is reused: its folder
# name carries a hash of this script, the patch and the flavour.
set -euo pipefail

flavour=""
cache="${OPENMOE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/openmoe-kokkos}"
jobs="$(nproc)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --flavour) flavour="$2"; shift 2 ;;
    --cache) cache="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build_kokkos.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$flavour" in
  host|cuda) ;;
  *) echo "build_kokkos.sh: --flavour must be 'host' or 'cuda', got '$flavour'" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
patch_file="$here/cuda13_sm90.patch"
tarball_name="trilinos_13.2.0.orig.tar.gz"
tarball_sha256="0ddb47784ba7b8a6b9a07a4822b33be508feb4ccd54301b2a5d10c9e54524b90"
key="$(cat "$0" "$patch_file" | sha256sum | cut -c1-12)"
prefix="$cache/kokkos-3.4.1-$flavour-$key"

log() { echo "[openmoe-kokkos] $*" >&2; }

if [[ -f "$prefix/.complete" ]]; then
  echo "PREFIX=$prefix"
  exit 0
fi

mkdir -p "$cache/downloads"
exec 9>"$cache/.lock-$flavour"
flock 9
if [[ -f "$prefix/.complete" ]]; then  # another process finished it while we waited
  echo "PREFIX=$prefix"
  exit 0
fi

debian_mirror() {
  # First `URIs:` of a deb822 source that is not the security archive, else a sources.list line.
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri="$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
      | grep -v security | head -n1 || true)"
  fi
  if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
    uri="$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
      /etc/apt/sources.list)"
  fi
  [[ -n "$uri" ]] || { log "cannot find a Debian mirror in /etc/apt (sources.list.d/*.sources or sources.list)"; exit 1; }
  echo "${uri%/}"
}

tarball="$cache/downloads/$tarball_name"
if [[ ! -f "$tarball" ]] || ! echo "$tarball_sha256  $tarball" | sha256sum -c --quiet - 2>/dev/null; then
  url="$(debian_mirror)/pool/main/t/trilinos/$tarball_name"
  log "downloading Kokkos sources (Debian trilinos 13.2.0 orig tarball, 166 MB) from $url"
  curl -fL --retry 3 -o "$tarball.part" "$url"
  echo "$tarball_sha256  $tarball.part" | sha256sum -c --quiet - \
    || { log "checksum mismatch for $url"; exit 1; }
  mv "$tarball.part" "$tarball"
fi

work="$(mktemp -d "$cache/build-$flavour-XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "extracting packages/kokkos and packages/kokkos-kernels"
tar -xzf "$tarball" -C "$work" --strip-components=2 \
  --wildcards 'Trilinos-*/packages/kokkos/*' 'Trilinos-*/packages/kokkos-kernels/*'
(cd "$work/kokkos" && patch -s -p1 <"$patch_file")

staging="$prefix.tmp"
rm -rf "$staging"
common=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD=17 -DCMAKE_CXX_EXTENSIONS=OFF
        -DCMAKE_INSTALL_PREFIX="$staging" -DCMAKE_INSTALL_LIBDIR=lib
        -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DBUILD_SHARED_LIBS=OFF)
if [[ "$flavour" == host ]]; then
  kokkos_opts=(-DCMAKE_CXX_COMPILER=g++ -DKokkos_ENABLE_OPENMP=ON -DKokkos_ENABLE_SERIAL=ON)
  kk_opts=(-DCMAKE_CXX_COMPILER=g++)
else
  cuda_home="${CUDA_HOME:-/usr/local/cuda}"
  [[ -x "$cuda_home/bin/nvcc" ]] || { log "nvcc not found under CUDA_HOME=$cuda_home"; exit 1; }
  export PATH="$cuda_home/bin:$PATH" NVCC_WRAPPER_DEFAULT_COMPILER=g++
  wrapper="$work/kokkos/bin/nvcc_wrapper"
  kokkos_opts=(-DCMAKE_CXX_COMPILER="$wrapper" -DCMAKE_CXX_FLAGS=-arch=sm_90
               -DKokkos_ENABLE_CUDA=ON -DKokkos_ENABLE_SERIAL=ON -DKokkos_ENABLE_CUDA_LAMBDA=ON
               -DKokkos_ARCH_AMPERE80=ON -DCUDAToolkit_ROOT="$cuda_home")
  kk_opts=(-DCMAKE_CXX_COMPILER="$wrapper" -DCMAKE_CXX_FLAGS=-arch=sm_90
           -DKokkosKernels_ENABLE_TPL_CUBLAS=ON -DKokkosKernels_ENABLE_TPL_CUSPARSE=OFF
           -DCUBLAS_ROOT="$cuda_home" -DCUDAToolkit_ROOT="$cuda_home")
fi

log "building Kokkos 3.4.1 ($flavour) with $jobs jobs"
cmake -S "$work/kokkos" -B "$work/build-kokkos" "${common[@]}" "${kokkos_opts[@]}" >"$work/kokkos.log" 2>&1 \
  || { tail -n 40 "$work/kokkos.log" >&2; exit 1; }
cmake --build "$work/build-kokkos" -j "$jobs" >>"$work/kokkos.log" 2>&1 \
  && cmake --install "$work/build-kokkos" >>"$work/kokkos.log" 2>&1 \
  || { tail -n 40 "$work/kokkos.log" >&2; exit 1; }

# ETI is kept minimal (float, LayoutLeft, the main execution space, no UVM): every ETI file goes
# through nvcc in the CUDA flavour. Other types and Serial still work, instantiated where used.
log "building Kokkos Kernels 3.4.1 ($flavour, BLAS, ETI float LayoutLeft) with $jobs jobs"
cmake -S "$work/kokkos-kernels" -B "$work/build-kk" "${common[@]}" "${kk_opts[@]}" \
  -DKokkos_ROOT="$staging" -DKokkosKernels_ENABLED_COMPONENTS=BLAS \
  -DKokkosKernels_INST_FLOAT=ON -DKokkosKernels_INST_DOUBLE=OFF \
  -DKokkosKernels_INST_EXECSPACE_SERIAL=OFF -DKokkosKernels_INST_MEMSPACE_CUDAUVMSPACE=OFF \
  -DKokkosKernels_INST_COMPLEX_FLOAT=OFF -DKokkosKernels_INST_COMPLEX_DOUBLE=OFF \
  -DKokkosKernels_INST_LAYOUTLEFT=ON -DKokkosKernels_INST_LAYOUTRIGHT=OFF \
  -DKokkosKernels_INST_ORDINAL_INT=ON -DKokkosKernels_INST_OFFSET_SIZE_T=ON \
  -DKokkosKernels_ENABLE_TESTS=OFF -DKokkosKernels_ENABLE_EXAMPLES=OFF >"$work/kk.log" 2>&1 \
  || { tail -n 40 "$work/kk.log" >&2; exit 1; }
cmake --build "$work/build-kk" -j "$jobs" >>"$work/kk.log" 2>&1 \
  && cmake --install "$work/build-kk" >>"$work/kk.log" 2>&1 \
  || { tail -n 40 "$work/kk.log" >&2; exit 1; }

if [[ "$flavour" == cuda ]]; then
  # nvcc_wrapper is what Bazel compiles Kokkos translation units with.
  install -m 0755 "$work/kokkos/bin/nvcc_wrapper" "$staging/bin/nvcc_wrapper"
fi
touch "$staging/.complete"
rm -rf "$prefix"
mv "$staging" "$prefix"
log "installed into $prefix"
echo "PREFIX=$prefix"
