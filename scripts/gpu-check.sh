#!/usr/bin/env bash
# The prepared GPU check of issue 25: run on a machine with an NVIDIA GPU (an H200: nvcc 13, a
# driver for CUDA 13, PyTorch with CUDA, transformers and timm; no Rust toolchain, no network),
# from the repository root, with the prebuilt binaries carried in target/gpu-carry/. It must end
# within 8 minutes (LION_GPU_CHECK_BUDGET seconds, default 470), so that it can run twice in a
# 15-minute window: every step has its own `timeout`, cut to what is left of the budget.
#
# On the build machine (no GPU needed), first:
#   scripts/build-cuda.sh --tests      # the `lion` binary and the parity test binaries, --features cuda
#   scripts/gpu-check.sh --pack        # strips them into target/gpu-carry/bundle.tar.xz (each
#                                      # binary is ~75 MiB stripped, mostly candle's PTX; the
#                                      # bundle shares it: < 60 MiB), with the Q-Former tokenizer
#                                      # (all-MiniLM-L6-v2's tokenizer.json)
# then carry target/gpu-carry (the working tree travels as it is: fixtures, scripts).
#
# On the GPU machine:
#   scripts/gpu-check.sh               # prints one table; exit 0 only when every step passed
#
# Steps (each row of the table):
#   env        the GPU (nvidia-smi), the CUDA 13 libraries the binary links (ldd), torch.cuda
#   parity:*   the parity test binaries with LION_TEST_DEVICE=cuda: lion-core's LION and T5
#              fixtures (f32 within 1e-4; the LION gradient test: every trainable variable gets
#              a gradient), the plain-vs-fused op tests, lion-train's AdamW step parity
#   bench      `lion bench --preset base --device cuda --dtype bf16` and
#              `scripts/bench_torch.py --device cuda --dtype bf16` on the same setup, then the
#              per-stage comparison (speedup = torch time / lion time)
#   caption    `lion caption --preset lion-4b --random-weights --dtype bf16 --device cuda`,
#              224 px, beam 5, 20 new tokens: wall time
#   train      one PEFT step of `lion train --device cuda` at lion-4b (random weights, lenient
#              model folder, batch 1): fits in memory, step time from metrics.jsonl
# LION_GPU_CHECK_STEPS=parity,bench,caption,train (the default: all) runs only some of them, e.g.
# a second run for what the first ran out of time on.
# Outputs: target/gpu-check/ (logs, JSON reports, table.txt).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
carry="$root/target/gpu-carry"

die() {
  echo "gpu-check: error: $*" >&2
  exit 2
}

# ------------------------------------------------------------------ --pack (build machine)
if [ "${1:-}" = "--pack" ]; then
  set -e
  target=${LION_CUDA_TARGET:-$root/target/cuda}
  lion="$target/release/lion"
  list="$target/gpu-tests.txt"
  [ -x "$lion" ] || die "no $lion: run scripts/build-cuda.sh --tests first"
  [ -s "$list" ] || die "no $list: run scripts/build-cuda.sh --tests first"
  rm -rf "$carry"
  stage="$root/target/gpu-carry-stage"
  rm -rf "$stage"
  mkdir -p "$carry" "$stage/tests"
  strip -o "$stage/lion" "$lion"
  while read -r bin; do
    [ -x "$bin" ] || die "test binary $bin (listed in $list) is missing"
    name=$(basename "$bin")
    strip -o "$stage/tests/${name%-*}" "$bin"
  done <"$list"
  # One xz stream with a dictionary larger than a binary: the PTX and code the binaries share is
  # stored once.
  tar -C "$stage" -cf - lion tests | xz -T1 --lzma2=preset=6,dict=192MiB >"$carry/bundle.tar.xz"
  rm -rf "$stage"
  # The Q-Former tokenizer of the lion-4b runs (bert-base-uncased's vocabulary).
  tok=""
  for t in "$root/models/all-MiniLM-L6-v2/tokenizer.json" \
    "${HF_HOME:-$HOME/.cache/huggingface}"/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/*/tokenizer.json; do
    [ -f "$t" ] && tok=$t && break
  done
  [ -n "$tok" ] || die "all-MiniLM-L6-v2's tokenizer.json not found: run scripts/get-minilm.sh"
  cp "$tok" "$carry/qformer-tokenizer.json"
  git -C "$root" rev-parse HEAD >"$carry/COMMIT" 2>/dev/null || true
  size=$(du -sb "$carry" | cut -f1)
  echo "packed $(find "$carry" -type f | wc -l) files, $((size / 1048576)) MiB, into $carry:" >&2
  ls -la "$carry" >&2
  xz -dc "$carry/bundle.tar.xz" | tar -tvf - >&2
  [ "$size" -lt $((60 * 1048576)) ] || die "$carry is $((size / 1048576)) MiB: over the 60 MiB carry budget"
  exit 0
fi
[ $# -eq 0 ] || die "usage: scripts/gpu-check.sh [--pack]"

# ------------------------------------------------------------------ the check (GPU machine)
budget=${LION_GPU_CHECK_BUDGET:-470}
start=$(date +%s)
out="$root/target/gpu-check"
mkdir -p "$out"
rm -f "$out"/*.log "$out"/*.json "$out/table.txt"
rows=()
failed=0
steps=",${LION_GPU_CHECK_STEPS:-parity,bench,caption,train},"
want() { [[ $steps == *",$1,"* ]]; }

# row NAME STATUS SECONDS DETAIL
row() {
  rows+=("$(printf '%-22s %-5s %8s  %s' "$1" "$2" "$3" "$4")")
  [ "$2" = "ok" ] || [ "$2" = "skip" ] || failed=$((failed + 1))
  echo "gpu-check: $1: $2 ($3 s) $4" >&2
}

left() { echo $((budget - ($(date +%s) - start))); }

# run_step NAME MAX_SECONDS LOG CMD...: runs CMD under `timeout`, cut to what the budget has
# left (keeping 10 s for the table); sets $step_rc and $step_s.
run_step() {
  local name=$1 max=$2 log=$3
  shift 3
  local t=$(($(left) - 10))
  [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt 5 ]; then
    step_rc=124
    step_s=0
    echo "gpu-check: $name: no time left in the ${budget} s budget" >"$log"
    return
  fi
  local t0
  t0=$(date +%s.%N)
  timeout --kill-after=5 "$t" "$@" >"$log" 2>&1
  step_rc=$?
  step_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$step_rc" = 124 ] || [ "$step_rc" = 137 ]; then
    echo "gpu-check: $name: timed out after ${t} s" >>"$log"
  fi
}

# what went wrong, from a log: the first panic's message (tests), else the last error line
why() {
  local p
  p=$(awk '/panicked at/ { getline; print; exit }' "$1")
  [ -n "$p" ] || p=$(grep -E 'error|FAILED|Error|timed out|not found' "$1" | tail -1)
  echo "$p" | cut -c1-110
}

print_table() {
  {
    echo "gpu-check $(date -u +%FT%TZ) | $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
    echo "commit of the binaries: $(cat "$carry/COMMIT" 2>/dev/null || echo unknown) | total $(($(date +%s) - start)) s of ${budget} s"
    printf '%-22s %-5s %8s  %s\n' step status seconds detail
    printf '%s\n' "${rows[@]}"
    if [ -s "$out/bench-compare.txt" ]; then
      echo
      echo "bench (base, bf16, same GPU; speedup = torch time / lion time):"
      cat "$out/bench-compare.txt"
    fi
  } | tee "$out/table.txt"
}

# -------- env: carried binaries, GPU, libraries
[ -f "$carry/bundle.tar.xz" ] || die "no prebuilt binaries at $carry/bundle.tar.xz: on the build machine run scripts/build-cuda.sh --tests and scripts/gpu-check.sh --pack, and carry target/gpu-carry"
bin="$out/bin"
rm -rf "$bin"
mkdir -p "$bin"
xz -dc "$carry/bundle.tar.xz" | tar -C "$bin" -xf - || die "cannot unpack $carry/bundle.tar.xz"
lion="$bin/lion"
[ -x "$lion" ] || die "$carry/bundle.tar.xz holds no lion binary"
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this is not a GPU machine"
nvidia-smi -L >"$out/env.log" 2>&1 || die "nvidia-smi sees no GPU: $(tail -1 "$out/env.log")"
grep -q '^GPU ' "$out/env.log" || die "nvidia-smi lists no GPU: $(cat "$out/env.log")"
PY=${PYTHON:-python3}
# The CUDA 13 libraries: the toolkit's, or those of PyTorch's pip wheels (nvidia/cu13/lib).
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
  $("$PY" -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null) \
  $("$PY" -c 'import nvidia, glob, os; [print(d) for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))]' 2>/dev/null); do
  [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=$(ldd "$lion" 2>&1 | grep 'not found' | awk '{print $1}' | tr '\n' ' ')
[ -z "$missing" ] || die "libraries the cuda build links are missing: $missing(searched: ${libdirs#:}; libcuda.so.1 is the NVIDIA driver's; the others: the CUDA 13 runtime, cuBLAS, cuRAND, NVRTC)"
"$lion" --version >>"$out/env.log" 2>&1 || die "$lion does not start: $(tail -1 "$out/env.log")"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >>"$out/env.log" 2>&1 ||
  die "PyTorch ($PY) sees no CUDA device"
row env ok 0 "$(head -1 "$out/env.log" | cut -c1-80)"

# -------- parity fixtures on the GPU
export LION_REPO_ROOT="$root" LION_TEST_DEVICE=cuda
want parity || set --
want parity && set -- "$bin"/tests/*
for t in "$@"; do
  name=$(basename "$t")
  log="$out/parity-$name.log"
  run_step "parity:$name" 150 "$log" "$t" --test-threads 1
  if [ "$step_rc" = 0 ]; then
    row "parity:$name" ok "$step_s" "$(grep -E '^test result' "$log" | tail -1 | cut -c1-80)"
  else
    row "parity:$name" FAIL "$step_s" "rc $step_rc: $(why "$log")"
  fi
done
unset LION_TEST_DEVICE

# -------- bench: base, bf16, lion beside PyTorch on the same GPU
bdir="$out/bench"
stages=gemm,t5_encoder,decode_token,caption_beam5,caption_batch,vit,qformer,aggregator,caption_e2e
if want bench; then
  run_step bench:prepare 60 "$out/bench-prepare.log" "$lion" bench --preset base --dir "$bdir" \
    --prepare-only --dtype bf16 --repeats 3 --stages "$stages"
  if [ "$step_rc" = 0 ]; then
    row bench:prepare ok "$step_s" "random base weights and inputs in $bdir"
    run_step bench:lion 90 "$out/bench-lion.log" "$lion" --log warn bench --preset base --dir "$bdir" \
      --dtype bf16 --repeats 3 --stages "$stages" --device cuda --json "$out/lion_1.json"
    if [ "$step_rc" = 0 ]; then row bench:lion ok "$step_s" "$out/lion_1.json"; else row bench:lion FAIL "$step_s" "rc $step_rc: $(why "$out/bench-lion.log")"; fi
    run_step bench:torch 90 "$out/bench-torch.log" "$PY" "$here/bench_torch.py" "$bdir" --device cuda \
      --dtype bf16 --json "$out/torch_1.json"
    if [ "$step_rc" = 0 ]; then row bench:torch ok "$step_s" "$out/torch_1.json"; else row bench:torch FAIL "$step_s" "rc $step_rc: $(why "$out/bench-torch.log")"; fi
    if [ -s "$out/lion_1.json" ] && [ -s "$out/torch_1.json" ]; then
      "$PY" "$here/bench_torch.py" --compare "$out" >"$out/bench-compare.txt" 2>&1 ||
        row bench:compare FAIL 0 "$(tail -1 "$out/bench-compare.txt")"
    fi
  else
    row bench:prepare FAIL "$step_s" "rc $step_rc: $(why "$out/bench-prepare.log")"
  fi
fi

# -------- LION-4B bf16 caption: 224 px, beam 5, 20 new tokens
qtok="$carry/qformer-tokenizer.json"
img="$root/assets/playground.png"
want caption && run_step caption:lion-4b 180 "$out/caption.log" "$lion" caption --preset lion-4b --random-weights \
  --dtype bf16 --device cuda --qformer-tokenizer "$qtok" --num-beams 5 --max-new-tokens 20 \
  --min-length 21 "$img"
if ! want caption; then
  :
elif [ "$step_rc" = 0 ]; then
  row caption:lion-4b ok "$step_s" "wall (random init + load + caption); caption alone: $(sed 's/\x1b\[[0-9;]*m//g' "$out/caption.log" | grep -oE 'seconds="?[0-9.]+' | tail -1 | tr -d '"') s"
else
  row caption:lion-4b FAIL "$step_s" "rc $step_rc: $(why "$out/caption.log")"
fi

# -------- one PEFT step at lion-4b (random init of 4B parameters: most of the time of this step
# and of the caption's)
if want train; then
  tdir="$out/train"
  rm -rf "$tdir"
  mkdir -p "$tdir/model"
  cat >"$tdir/model/lion.json" <<EOF
{"config": "lion-4b", "weights": [], "t5_tokenizer": "$root/crates/lion-core/assets/t5-tokenizer.json",
 "qformer_tokenizer": "$qtok"}
EOF
  run_step train:world 30 "$out/train-world.log" "$lion" world generate --out "$tdir/world" \
    --train 4 --val 1 --test 1 --size 56
  cat >"$tdir/train.json" <<EOF
{"model_dir": "model", "lenient": true, "image_root": "world",
 "tasks": [{"kind": "caption", "train": "world/lion_caption_train.json", "val": "world/lion_caption_val.json"}],
 "schedule": {"init_lr": 1e-4, "min_lr": 0, "warmup_lr": 0, "warmup_steps": 0},
 "batch_size": 1, "grad_accum": 1, "max_grad_norm": 1.0, "steps": 1,
 "eval_every": 1000, "checkpoint_every": 1000, "keep_checkpoints": 1,
 "augment": false, "output_dir": "run", "seed": 0}
EOF
  run_step train:lion-4b 180 "$out/train.log" "$lion" train --config "$tdir/train.json" --device cuda
  if [ "$step_rc" = 0 ]; then
    row train:lion-4b ok "$step_s" "$(grep '"kind":"train"' "$tdir/run/metrics.jsonl" 2>/dev/null | tail -1 | cut -c1-90)"
  else
    row train:lion-4b FAIL "$step_s" "rc $step_rc: $(why "$out/train.log")"
  fi
fi

print_table
[ "$failed" = 0 ] || {
  echo "gpu-check: $failed step(s) failed; logs in $out" >&2
  exit 1
}
