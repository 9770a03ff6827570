#!/usr/bin/env bash
# Builds the `lion` binary with the `cuda` feature on a machine WITHOUT a GPU, so that it can be
# carried to a GPU machine (scripts/gpu-check.sh runs it there).
#
# nvcc, the CUDA headers and the libraries to link against come from NVIDIA's PyPI wheels of
# CUDA 13.0 (the lowest CUDA 13 release: its PTX loads on any driver that runs CUDA 13), installed
# once into a venv outside the repo (LION_CUDA_VENV, default ~/.cache/lion-rs/cuda-venv). The one
# thing no wheel has is the driver library libcuda.so: a link-time stub (soname libcuda.so.1, one
# empty function per driver-API name that cudarc declares) is made next to the wheels' libraries;
# at run time the GPU machine's own driver library is loaded.
#
# candle's kernels are compiled to PTX for compute capability CUDA_COMPUTE_CAP (default 90: H100 /
# H200). The build goes to its own target dir (LION_CUDA_TARGET, default target/cuda) so that it
# never invalidates the CPU build in target/.
#
# Usage: scripts/build-cuda.sh [--tests] [extra cargo args for the `lion` build]
#   --tests   also build the release test binaries that scripts/gpu-check.sh runs (lion-core's
#             LION / T5 parity and plain-ops tests, lion-train's AdamW step parity) and list them
#             in $LION_CUDA_TARGET/gpu-tests.txt (scripts/gpu-check.sh --pack strips and packs them)
# Prints the path of the built `lion` binary on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
venv=${LION_CUDA_VENV:-$HOME/.cache/lion-rs/cuda-venv}
target=${LION_CUDA_TARGET:-$root/target/cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

tests=0
if [ "${1:-}" = "--tests" ]; then
  tests=1
  shift
fi

# CUDA 13.0 wheels, pinned: nvcc and the crt/cccl headers for candle's kernels, the runtime,
# cuBLAS, cuRAND and NVRTC that candle links against.
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)
stamp="$venv/.lion-cuda-wheels"
if [ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ]; then
  echo "setting up $venv (CUDA 13.0 wheels, ~1.2 GB, a minute the first time)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "${wheels[@]}" >&2
  echo "${wheels[*]}" >"$stamp"
fi
cuda=$("$venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$cuda/bin/nvcc" ] || { echo "error: no nvcc at $cuda/bin/nvcc (wheel layout changed?)" >&2; exit 1; }

# Link-time names: the wheels ship only versioned sonames (libcublas.so.13); the linker wants
# libcublas.so. They go to lib/stubs, one of the places cudarc's build script searches under
# CUDA_ROOT.
stubs="$cuda/lib/stubs"
mkdir -p "$stubs"
for lib in cudart cublas cublasLt curand nvrtc; do
  so=""
  for f in "$cuda/lib/lib$lib.so."*; do
    case ${f##*/} in
      "lib$lib.so."*[!0-9]*) ;; # libnvrtc.so.13.0 etc.: only lib$lib.so.N
      *) [ -f "$f" ] && so=${f##*/} ;;
    esac
  done
  [ -n "$so" ] || { echo "error: lib$lib.so.N not found in $cuda/lib" >&2; exit 1; }
  ln -sfn "../$so" "$stubs/lib$lib.so"
done

# The driver stub: every driver-API function name cudarc declares (a superset of what is linked),
# each returning CUDA_ERROR_NO_DEVICE (100), so that a stub found at run time by mistake says "no
# device" instead of crashing. It is only linked against: NEEDED says libcuda.so.1, the driver's.
if [ ! -f "$stubs/libcuda.so" ] || [ "$(cat "$stubs/.lion-stub" 2>/dev/null)" != 2 ]; then
  (cd "$root" && cargo fetch -q)
  sys=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*/cudarc-0.19.*/src/driver/sys/mod.rs' | sort -V | tail -1)
  [ -n "$sys" ] || { echo "error: cudarc 0.19 source not found in the cargo registry" >&2; exit 1; }
  tmp=$(mktemp -d)
  grep -oE '\bfn cu[A-Z][A-Za-z0-9_]*' "$sys" | sed 's/^fn //' | sort -u |
    sed 's/.*/int &(void) { return 100; }/' >"$tmp/cuda_stub.c"
  [ -s "$tmp/cuda_stub.c" ] || { echo "error: no cu* functions found in $sys" >&2; exit 1; }
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tmp/libcuda.so" "$tmp/cuda_stub.c"
  mv "$tmp/libcuda.so" "$stubs/libcuda.so"
  echo 2 >"$stubs/.lion-stub"
  rm -rf "$tmp"
fi

export CUDA_ROOT="$cuda" CUDA_HOME="$cuda" CUDA_PATH="$cuda"
export NVCC="$cuda/bin/nvcc"
export PATH="$cuda/bin:$PATH"
# cudarc reads the version from `nvcc --version`; pin it so a different nvcc on PATH cannot change
# the bindings.
export CUDARC_CUDA_VERSION=13000

cd "$root"
start=$(date +%s)
CARGO_INCREMENTAL=0 cargo build --release -p lion-cli --features cuda --target-dir "$target" "$@" >&2
if [ "$tests" = 1 ]; then
  # The test binaries the GPU check runs (no cargo there), their paths one a line: lion-core's
  # LION and T5 parity tests and the plain-vs-fused op tests, lion-train's AdamW step parity.
  : >"$target/gpu-tests.txt"
  for spec in "lion-core:lion,t5,plain_ops" "lion-train:step_parity"; do
    pkg=${spec%%:*}
    tests_args=()
    IFS=, read -r -a names <<<"${spec#*:}"
    for n in "${names[@]}"; do tests_args+=(--test "$n"); done
    CARGO_INCREMENTAL=0 cargo test --release --no-run -p "$pkg" --features cuda \
      --target-dir "$target" "${tests_args[@]}" --message-format=json-render-diagnostics |
      "$venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])
' >>"$target/gpu-tests.txt"
  done
  [ -s "$target/gpu-tests.txt" ] || { echo "error: no test binaries built (see cargo test --no-run)" >&2; exit 1; }
fi
echo "cuda build took $(($(date +%s) - start)) s (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)" >&2
echo "$target/release/lion"
