#!/usr/bin/env bash
# Accuracy of the reduced weight formats against f32 on a trained model: the shipped ShapesWorld
# backbone (assets/shapes-backbone) scored on a fresh test split (caption CIDEr, VQA accuracy,
# REC Acc@0.5) in f32, bf16, q8_0 and q4_0, and the share of predictions identical to f32's.
#
#   scripts/quant-accuracy.sh [OUT]        # default target/quant-accuracy; needs python3 for the table
#
# Uses target/release/lion (or $LION). Beam 5, 40 new tokens, ground-truth tags (the world's
# tags_test.json), as the demo evaluates.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lion=${LION:-$root/target/release/lion}
out=${1:-$root/target/quant-accuracy}
images=${IMAGES:-200}
mkdir -p "$out"
world=$out/world
[ -f "$world/world.json" ] || "$lion" world generate --out "$world" --seed 4242 --train 1 --val 1 --test "$images" --size 96
model=$root/assets/shapes-backbone
for fmt in f32 bf16 q8_0 q4_0; do
  case $fmt in
    f32 | bf16) flags=(--dtype "$fmt") ;;
    *) flags=(--dtype f32 --quantize "$fmt") ;;
  esac
  mkdir -p "$out/$fmt"
  for task in caption vqa rec; do
    case $task in
      caption) gt=(--task caption --gt "$world/captions_test.json") ;;
      vqa) gt=(--task vqa --gt "$world/annotations_test.json" --questions "$world/questions_test.json") ;;
      rec) gt=(--task rec --gt "$world/refs.json" --instances "$world/instances.json" --split test) ;;
    esac
    [ -f "$out/$fmt/${task}_scores.json" ] && continue
    "$lion" eval "${gt[@]}" --tags "$world/tags_test.json" --model "$model" --images "$world" \
      --pred-out "$out/$fmt/${task}_pred.json" --json "$out/$fmt/${task}_scores.json" \
      --batch-size 32 --num-beams 5 --max-new-tokens 40 --repetition-penalty 1.0 "${flags[@]}" --log warn
  done
done
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(fmt, task, kind):
    with open(os.path.join(out, fmt, f"{task}_{kind}.json")) as f:
        return json.load(f)
def scores(fmt, task):
    o = load(fmt, task, "scores")["overall"]
    if task == "caption":
        return [("CIDEr", 100 * o["cider"])]
    if task == "vqa":
        return [("VQA acc", 100 * o["accuracy"])]
    return [("Acc@0.5", 100 * o["accuracy"]["0.5"]), ("Acc@0.1", 100 * o["accuracy"]["0.1"])]
def preds(fmt, task):
    return [json.dumps(r, sort_keys=True) for r in load(fmt, task, "pred")]
print(f"{'format':<6} {'task':<8} {'metric':<8} {'score':>7} {'vs f32':>7} {'identical to f32':>17}")
for fmt in ["f32", "bf16", "q8_0", "q4_0"]:
    for task in ["caption", "vqa", "rec"]:
        a, b = preds(fmt, task), preds("f32", task)
        same = sum(x == y for x, y in zip(a, b))
        for (name, v), (_, ref) in zip(scores(fmt, task), scores("f32", task)):
            print(f"{fmt:<6} {task:<8} {name:<8} {v:>7.2f} {v - ref:>+7.2f} {same:>7}/{len(b)}")
PY
