#!/usr/bin/env bash
# The whole test suite: fetches what the tests need (all-MiniLM-L6-v2), then runs every test.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/get-minilm.sh models/all-MiniLM-L6-v2
cargo test --workspace "$@"
