"""An independent check of the tag encoder's reader frontier (`reader_frontier.json`,
`lion_train::reader_frontier`): the same curve from sentence-transformers in PyTorch.

    PY=$(scripts/venv.sh)
    $PY scripts/reader_frontier_check.py OUT/images.jsonl models/all-MiniLM-L6-v2

For every image of a demo's `images.jsonl` (`{"image", "captions", "tags"}`): its positive is the
caption nearest the centroid of its captions' embeddings (Dynamic LION step 2), the reader's
anchor the mean embedding of its other captions less lambda times the mean positive; each line
printed is lambda, then the mean cos(anchor, positive) and the mean cos(anchor, negative) over
every other image's positive (all pairs, not one drawn negative: the Rust side scores the
validation split with one fixed negative each, so its numbers differ by sampling only).
"""
import json
import sys

import numpy as np
from sentence_transformers import SentenceTransformer


def main(images_jsonl, model_dir):
    rows = [json.loads(line) for line in open(images_jsonl) if line.strip()]
    rows = [r for r in rows if len(r["captions"]) >= 2]
    model = SentenceTransformer(model_dir, device="cpu")
    flat = [c for r in rows for c in r["captions"]]
    emb = model.encode(flat, normalize_embeddings=True, batch_size=64)
    positives, readers, at = [], [], 0
    for r in rows:
        e = emb[at:at + len(r["captions"])]
        at += len(r["captions"])
        centroid = e.mean(0)
        k = int(np.argmax(e @ centroid / np.linalg.norm(centroid)))
        positives.append(e[k])
        readers.append(np.delete(e, k, 0).mean(0))
    p, c = np.array(positives), np.array(readers)
    mu = p.mean(0)
    off = ~np.eye(len(p), dtype=bool)
    print(f"{len(p)} images; mean cosine between different images' positives "
          f"{(p @ p.T)[off].mean():.3f}")
    print("lambda cos_ap cos_an")
    for step in range(21):
        lam = step / 20
        a = c - lam * mu
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        sims = a @ p.T
        print(f"{lam:.2f} {np.diag(sims).mean():.4f} {sims[off].mean():.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
