#!/usr/bin/env bash
# The README's commands, run as a user runs them: from a fresh folder outside the checkout, with
# `lion` on PATH, the models found by Hub id in the Hugging Face cache (scripts/get-minilm.sh
# fills it), nothing relative to the checkout. Every command that needs no external weights
# (official LION, RAM, COCO) is run, at the README's flags where they are cheap and with fewer
# steps or images where the README's would take minutes; the train config is the README's own
# JSON block, read from the README, with the step counts made small.
#
#   scripts/readme-elsewhere.sh [--lion PATH]    # default: $CARGO_TARGET_DIR (or target)/debug/lion,
#                                                #   built if missing
#
# scripts/test.sh runs it. Exit 1 names the command that failed; its log is printed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
lion=${CARGO_TARGET_DIR:-$repo/target}/debug/lion
while [ $# -gt 0 ]; do
  case "$1" in
    --lion) lion=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    *) echo "usage: $0 [--lion PATH]" >&2; exit 2 ;;
  esac
done
if [ ! -x "$lion" ]; then
  (cd "$repo" && cargo build -q -p lion-cli --bin lion)
fi
[ -x "$lion" ] || { echo "no lion binary at $lion" >&2; exit 1; }
case "$lion" in /*) ;; *) lion=$repo/$lion ;; esac
"$repo/scripts/get-minilm.sh" >/dev/null 2>&1  # the checkout's models/ and the Hugging Face cache
work=$(mktemp -d "${TMPDIR:-/tmp}/lion-readme.XXXXXX")
trap 'rm -rf "$work"' EXIT
bin=$work/bin
mkdir -p "$bin" && ln -s "$lion" "$bin/lion"
export PATH=$bin:$PATH
# the checkout's models/ folder must not be what makes a command work
unset LION_MINILM_DIR
cd "$work"
n=0
run() {
  n=$((n + 1))
  if ! "$@" >"$work/log" 2>&1; then
    echo "README command failed in $work: $*" >&2
    tail -30 "$work/log" >&2
    exit 1
  fi
}

# the Quick start
run lion world generate --out w --train 8 --val 8 --test 8
set -- w/images/test/*.png
cp "$1" photo.png && cp "$2" other.png
mkdir photos && cp "$3" "$4" "$5" photos/
run lion caption --preset base --random-weights --max-new-tokens 4 photo.png other.png photos/
grep -q '"image"' "$work/log" || { echo "lion caption printed no JSON lines" >&2; exit 1; }
run lion embed "a red circle" "a blue square"
run lion tag --random-weights --config tiny photo.png
printf '{"image": "photo.png", "question": "what is it?", "tags": ["dog: 0.93"]}\n' > requests.jsonl
run lion vqa --preset tiny --random-weights --max-new-tokens 4 --requests requests.jsonl

# sharded jobs and their merge
for i in 0 1 2; do
  run lion tag --random-weights --config tiny photos/ --out tags.jsonl --shard $i/3
done
run lion merge --out tags.jsonl tags.shard-*-of-3.jsonl
[ "$(wc -l < tags.jsonl)" = 3 ] || { echo "merged tags.jsonl: not 3 lines" >&2; exit 1; }

# evaluation with a model (the README's command; ShapesWorld's val split)
run lion eval --task vqa --gt w/annotations_val.json --questions w/questions_val.json --images w \
    --preset tiny --random-weights --pred-out preds.json --tags w/tags_val.json --json scores.json \
    --num-beams 1 --max-new-tokens 4
[ -s scores.json ] || { echo "lion eval wrote no scores.json" >&2; exit 1; }

# the tag encoder: centroid captions and triplet fine-tuning
python3 - <<'EOF'
import json
caps = json.load(open("w/captions_train.json"))
tags = json.load(open("w/tags_train.json"))
by_image = {}
for a in caps["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a["caption"])
# ShapesWorld's true tags, scored as a tagger would (decreasing with rank)
tag_of = {t["image_id"]: [{"tag": x, "score": round(0.95 - 0.1 * i, 2)}
                          for i, x in enumerate(t["tags"][:6])] for t in tags}
with open("images.jsonl", "w") as f:
    for img, cs in sorted(by_image.items()):
        t = tag_of.get(img) or [{"tag": "shape", "score": 0.5}]
        f.write(json.dumps({"image": img, "captions": cs, "tags": t}) + "\n")
EOF
run lion select-captions --input images.jsonl --out chosen.jsonl
run lion train-tag-encoder --data images.jsonl --chosen chosen.jsonl \
    --out tag-encoder --epochs 1 --batch-size 4 --lr 5e-5 --margin 1.0 --p 2 --val-fraction 0.25 --seed 0
run lion embed --model tag-encoder "dog: 0.93, grass: 0.81"

# training LION: the README's world and its train.json, fewer steps
run lion world generate --out world --train 16 --val 4 --test 4 --size 56
python3 - "$repo/README.md" <<'EOF'
import json, re, sys
readme = open(sys.argv[1]).read()
m = re.search(r"lion train --config train\.json.*?```json\n(.*?)```", readme, re.S)
cfg = json.loads(m.group(1))
cfg.update(steps=2, eval_every=2, eval_max_samples=2, checkpoint_every=1, batch_size=2,
           schedule=dict(cfg["schedule"], warmup_steps=1))
json.dump(cfg, open("train.json", "w"), indent=1)
EOF
run lion train --config train.json
[ -e runs/tiny/latest ] || { echo "lion train left no runs/tiny/latest" >&2; exit 1; }

# the RAM-style tagger stand-in
run lion train-tagger --world w --out tagger --epochs 1 --batch-size 8
run lion tag --model tagger w/images/test/

# reduced formats: quantized blocks, a weight file rewritten in bf16
run lion caption --preset tiny --random-weights --quantize q8_0 --max-new-tokens 4 photo.png
run lion convert --weights tagger/model.safetensors --out tagger-bf16.safetensors --dtype bf16

# the server: bound address printed, health answered
lion serve --preset tiny --random-weights --addr 127.0.0.1:0 >serve.log 2>&1 &
pid=$!
for _ in $(seq 100); do
  addr=$(grep -o '127\.0\.0\.1:[0-9]*' serve.log | head -1 || true)
  [ -n "$addr" ] && break
  sleep 0.2
done
ok=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://$addr/health').status)" 2>/dev/null || true)
kill $pid; wait $pid 2>/dev/null || true
[ "$ok" = 200 ] || { echo "lion serve: /health did not answer 200 (${addr:-no address})" >&2; cat serve.log >&2; exit 1; }
n=$((n + 1))

echo "README commands from $work (outside the checkout): all $n passed"
