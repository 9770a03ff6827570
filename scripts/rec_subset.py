"""Writes the REC samples of a ShapesWorld split whose image holds exactly N objects (a LION
`lion_rec_{split}.json` filtered by the world's `instances.json`): legs of the shipped backbone's
pretraining (assets/shapes-backbone/README.md) train on the one-object, then the two-object images.

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
    world, split, n, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    if not n.isdigit():
        sys.exit(f"N must be a count of objects, got {n!r}")
    n = int(n)

    def read(name):
        path = os.path.join(world, name)
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"{path}: cannot read as JSON ({e})")

    inst = read("instances.json")
    try:
        count = collections.Counter(a["image_id"] for a in inst["annotations"])
        files = {im["file_name"] for im in inst["images"] if count[im["id"]] == n}
    except (KeyError, TypeError) as e:
        sys.exit(f"{world}/instances.json: not a ShapesWorld instances file (missing {e})")
    samples = read(f"lion_rec_{split}.json")
    try:
        kept = [s for s in samples if s["image"] in files]
    except (KeyError, TypeError) as e:
        sys.exit(f"{world}/lion_rec_{split}.json: not a list of LION samples (missing {e})")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(kept, f)
    os.replace(tmp, out)
    print(f"{out}: {len(kept)} of {len(samples)} samples (the world holds {len(files)} images with {n} objects)")


if __name__ == "__main__":
    main()
