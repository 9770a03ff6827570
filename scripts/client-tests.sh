#!/usr/bin/env bash
# The client tests of `lion serve`: the real `openai` Python client against the chat API
# (scripts/openai_client_test.py) and headless Chromium against the playground
# (scripts/playground_browser_test.py, screenshots in target/playground-screens).
#
#   scripts/client-tests.sh --install       # CI: installs what is missing, then runs both
#   scripts/client-tests.sh --if-installed  # scripts/test.sh: runs them when everything is there
#
# --install (root, Debian): apt-get installs chromium, chromium-driver and python3-venv when
# missing, and scripts/venv-ci.sh creates the small venv (openai, selenium) once. Both are
# idempotent. Builds lion (into $CARGO_TARGET_DIR or target) and needs models/all-MiniLM-L6-v2.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:---if-installed}
venv=${LION_VENV_CI:-$HOME/.cache/lion-rs/venv-ci}
have_browser() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }
case "$mode" in
  --install)
    if ! have_browser || ! python3 -m venv --help >/dev/null 2>&1; then
      if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "client tests need chromium, chromium-driver and python3-venv (apt-get as root)" >&2
        exit 1
      fi
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q
      apt-get install -y -q --no-install-recommends chromium chromium-driver python3-venv
    fi
    py=$(scripts/venv-ci.sh)
    ;;
  --if-installed)
    if [ -n "${LION_SKIP_CLIENT_TESTS:-}" ]; then
      echo "client tests: skipped here (LION_SKIP_CLIENT_TESTS set; .ci/run runs them next)"
      exit 0
    fi
    if ! cmp -s scripts/requirements-ci.txt "$venv/.lion-requirements" 2>/dev/null || ! have_browser; then
      echo "client tests: SKIPPED (no $venv with scripts/requirements-ci.txt, or no chromium" \
           "+ chromedriver); scripts/client-tests.sh --install sets them up and runs them"
      exit 0
    fi
    py=$venv/bin/python
    ;;
  *) echo "usage: $0 [--install|--if-installed]" >&2; exit 2 ;;
esac
scripts/get-minilm.sh models/all-MiniLM-L6-v2
cargo build -q -p lion-cli --bin lion
lion=${CARGO_TARGET_DIR:-target}/debug/lion
"$py" scripts/openai_client_test.py --lion "$lion" --embed-model models/all-MiniLM-L6-v2
"$py" scripts/playground_browser_test.py --lion "$lion" \
  --embed-model models/all-MiniLM-L6-v2 --screens target/playground-screens
