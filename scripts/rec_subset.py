"""Writes the REC samples of a ShapesWorld split whose image holds exactly N objects (a LION
`lion_rec_{split}.json` filtered by the world's `instances.json`): the first leg of the shipped
backbone's last pretraining (assets/shapes-backbone/README.md) trains on the one-object images.

    python3 scripts/rec_subset.py WORLD SPLIT N OUT.json

Standard library only.
"""
import collections
import json
import os
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    world, split, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with open(os.path.join(world, "instances.json")) as f:
        inst = json.load(f)
    count = collections.Counter(a["image_id"] for a in inst["annotations"])
    files = {im["file_name"] for im in inst["images"] if count[im["id"]] == n}
    with open(os.path.join(world, f"lion_rec_{split}.json")) as f:
        samples = json.load(f)
    kept = [s for s in samples if s["image"] in files]
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(kept, f)
    os.replace(tmp, out)
    print(f"{out}: {len(kept)} of {len(samples)} samples (the world holds {len(files)} images with {n} objects)")


if __name__ == "__main__":
    main()
