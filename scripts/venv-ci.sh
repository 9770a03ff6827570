#!/usr/bin/env bash
# Creates (once) the small Python venv of the CI client tests (openai, selenium; see
# requirements-ci.txt), outside the repo, and prints its python path. Override the location with
# LION_VENV_CI. Much smaller than the fixture venv (no PyTorch).
# Usage: PY=$(scripts/venv-ci.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${LION_VENV_CI:-$HOME/.cache/lion-rs/venv-ci}
stamp="$venv/.lion-requirements"
if ! cmp -s "$here/requirements-ci.txt" "$stamp" 2>/dev/null; then
  echo "setting up $venv (openai, selenium)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$here/requirements-ci.txt" >&2
  cp "$here/requirements-ci.txt" "$stamp"
fi
echo "$venv/bin/python"
