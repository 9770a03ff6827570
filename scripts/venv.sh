#!/usr/bin/env bash
# Creates (once) the Python venv used by the fixture and benchmark scripts, outside the repo,
# and prints its python path. Override the location with LION_VENV.
# Usage: PY=$(scripts/venv.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${LION_VENV:-$HOME/.cache/lion-rs/venv}
stamp="$venv/.lion-requirements"
if ! cmp -s "$here/requirements.txt" "$stamp" 2>/dev/null; then
  echo "setting up $venv (PyTorch etc., a few minutes the first time)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$here/requirements.txt" >&2
  cp "$here/requirements.txt" "$stamp"
fi
echo "$venv/bin/python"
