#!/usr/bin/env bash
# The whole test suite: fetches what the tests need (all-MiniLM-L6-v2), then runs every test,
# then the client tests of `lion serve` when their venv and Chromium are installed
# (scripts/client-tests.sh; it says so when it skips them). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/get-minilm.sh models/all-MiniLM-L6-v2
cargo test --workspace "$@"
scripts/client-tests.sh --if-installed
