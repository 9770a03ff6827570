#!/usr/bin/env bash
# The main job: builds `lion` (release) and runs `lion demo`. Extra arguments go to `lion demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/get-minilm.sh models/all-MiniLM-L6-v2
cargo run --release -p lion-cli --bin lion -- demo "$@"
