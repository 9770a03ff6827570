#!/usr/bin/env bash
# Accuracy of the reduced weight formats against f32 on a trained model: the shipped ShapesWorld
# backbone (assets/shapes-backbone) scored on a fresh test split (caption CIDEr, VQA accuracy,
# REC Acc@0.5) in f32, bf16, q8_0, q4_0 and q4k, and the share of predictions identical to f32's.
#
#   scripts/quant-accuracy.sh [OUT]        # default target/quant-accuracy; needs python3 for the table
#
# Uses target/release/lion (or $LION). Beam 5, 40 new tokens, ground-truth tags (the world's
# tags_test.json), as the demo evaluates. IMAGES=N test images (default 1000: over 200, a
# caption CIDEr difference of 1-2 points is within its own noise); the table gives each
# difference from f32 with a paired bootstrap 95% interval over the items.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lion=${LION:-$root/target/release/lion}
out=${1:-$root/target/quant-accuracy}
images=${IMAGES:-1000}
mkdir -p "$out"
if [ -f "$out/images" ] && [ "$(cat "$out/images")" != "$images" ]; then
  echo "$out was scored on $(cat "$out/images") test images, not $images: choose another OUT" >&2
  exit 1
fi
echo "$images" > "$out/images"
world=$out/world
[ -f "$world/world.json" ] || "$lion" world generate --out "$world" --seed 4242 --train 1 --val 1 --test "$images" --size 96
model=$root/assets/shapes-backbone
for fmt in f32 bf16 q8_0 q4_0 q4k; do
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
import json, sys, os, random
out = sys.argv[1]
def load(fmt, task, kind):
    with open(os.path.join(out, fmt, f"{task}_{kind}.json")) as f:
        return json.load(f)
# (metric, overall score, per-item value) per task; the per-item values average to the overall
# score, so the paired difference of their means is the difference of the scores
def metrics(task):
    if task == "caption":
        return [("CIDEr", lambda o: o["cider"], "image_id", lambda r: r["cider"])]
    if task == "vqa":
        return [("VQA acc", lambda o: o["accuracy"], "question_id", lambda r: r["accuracy"])]
    return [
        ("Acc@0.5", lambda o: o["accuracy"]["0.5"], "id", lambda r: float(r["iou"] >= 0.5)),
        ("Acc@0.1", lambda o: o["accuracy"]["0.1"], "id", lambda r: float(r["iou"] >= 0.1)),
    ]
def preds(fmt, task):
    return [json.dumps(r, sort_keys=True) for r in load(fmt, task, "pred")]
def interval(diffs, reps=2000):
    # paired bootstrap over items, 95%, seeded so a rerun prints the same interval
    rng = random.Random(0)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]
print(f"{'format':<6} {'task':<8} {'metric':<8} {'score':>7} {'vs f32':>7} {'95% interval':>17} {'identical to f32':>17}")
for fmt in ["f32", "bf16", "q8_0", "q4_0", "q4k"]:
    for task in ["caption", "vqa", "rec"]:
        a, b = preds(fmt, task), preds("f32", task)
        same = sum(x == y for x, y in zip(a, b))
        s, ref = load(fmt, task, "scores"), load("f32", task, "scores")
        for name, overall, key, item in metrics(task):
            v, r = 100 * overall(s["overall"]), 100 * overall(ref["overall"])
            mine = {x[key]: item(x) for x in s["per_item"]}
            base = {x[key]: item(x) for x in ref["per_item"]}
            if mine.keys() != base.keys():
                sys.exit(f"{fmt}/{task}: scored items differ from f32's")
            lo, hi = interval([100 * (mine[k] - base[k]) for k in base])
            span = f"[{lo:+.2f}, {hi:+.2f}]"
            print(f"{fmt:<6} {task:<8} {name:<8} {v:>7.2f} {v - r:>+7.2f} {span:>17} {same:>7}/{len(b)}")
PY
