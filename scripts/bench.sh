#!/usr/bin/env bash
# lion bench and the same workloads in PyTorch eager, back to back, ROUNDS times alternating, then
# one table of medians with speedups (torch time / lion time).
#
#   scripts/bench.sh [PRESET] [ROUNDS] [extra `lion bench` args...]
#   e.g. scripts/bench.sh base 2 --repeats 3
#
# Outputs in target/bench-out/: lion_R.json, torch_R.json, compare.json. Threads: both sides use
# every CPU this process may run on (candle: rayon's default; torch.set_num_threads the same).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-base}
ROUNDS=${2:-2}
shift $(( $# > 2 ? 2 : $# )) || true
PY=$(scripts/venv.sh)
DIR=target/bench
OUT=target/bench-out
mkdir -p "$OUT"
rm -f "$OUT"/lion_*.json "$OUT"/torch_*.json
cargo build --release -q -p lion-cli
LION=target/release/lion
"$LION" bench --preset "$PRESET" --dir "$DIR" --prepare-only "$@"
for r in $(seq 1 "$ROUNDS"); do
  "$LION" --log warn bench --preset "$PRESET" --dir "$DIR" --json "$OUT/lion_$r.json" "$@"
  "$PY" scripts/bench_torch.py "$DIR" --json "$OUT/torch_$r.json" > /dev/null 2> "$OUT/torch_$r.log"
done
"$PY" scripts/bench_torch.py --compare "$OUT"
