#!/usr/bin/env bash
# The whole test suite: fetches what the tests need (all-MiniLM-L6-v2, libjpeg-turbo's TurboJPEG
# library), then runs every test, the README's commands from another folder
# (scripts/readme-elsewhere.sh), then the client tests of `lion serve` when their venv and
# Chromium are installed (scripts/client-tests.sh; it says so when it skips them). Extra arguments
# go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/get-minilm.sh models/all-MiniLM-L6-v2
# With the library present the Pillow-exact JPEG tests must run (not skip); without it (no
# apt-get, no root) they are skipped with a printed reason and everything else still runs.
if scripts/get-turbojpeg.sh; then
  export LION_REQUIRE_TURBOJPEG=1
fi
cargo test --workspace "$@"
# the README's commands from a folder outside the checkout (`lion` by Hub id, no ./models)
scripts/readme-elsewhere.sh
scripts/client-tests.sh --if-installed
