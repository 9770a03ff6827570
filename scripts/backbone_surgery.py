"""Edits a `lion train` checkpoint in place: the two interventions made while pretraining the
shipped ShapesWorld backbone (assets/shapes-backbone/README.md, "How it was made").

    PY=$(scripts/venv.sh)
    $PY scripts/backbone_surgery.py RUN/checkpoints/step-NNNNNNNN --add-sincos 0.5
    $PY scripts/backbone_surgery.py RUN/checkpoints/step-NNNNNNNN --reset-aggregator RUN/init.safetensors

--add-sincos S       adds S x the 2-D sin-cos position code (rows of the patch grid: first half of
                     the width encodes the patch row, second half its column; the layout of
                     `lion_core::eva_vit::sincos_pos_embed`) to `visual_encoder.pos_embed`'s patch
                     rows, and zeroes its AdamW moments.
--reset-aggregator F puts the vision aggregator (`fusion_adapter.*`, `ln_adapter.*`,
                     `adapter_proj.*`) back to its initial values from F (a run's
                     init.safetensors) and zeroes their AdamW moments.

The checkpoint's manifest.json (sizes and FNV-1a 64 hashes that `lion train --resume` checks) is
rewritten to match. Resume the run afterwards with `lion train --config C --resume`.
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file, save_file

AGGREGATOR = ("fusion_adapter.", "ln_adapter.", "adapter_proj.")


def sincos(grid, dim):
    q = dim // 4
    w = [1.0 / 10000 ** (i / q) for i in range(q)]
    rows = []
    for r in range(grid):
        for c in range(grid):
            row = []
            for p in (r, c):
                row += [math.sin(p * x) for x in w] + [math.cos(p * x) for x in w]
            rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--add-sincos", type=float)
    ap.add_argument("--reset-aggregator", metavar="INIT")
    a = ap.parse_args()
    d = a.checkpoint
    w = load_file(os.path.join(d, "trainable.safetensors"))
    o = load_file(os.path.join(d, "optimizer.safetensors"))

    def zero_moments(k):
        for p in ("exp_avg.", "exp_avg_sq."):
            if p + k in o:
                o[p + k] = torch.zeros_like(o[p + k])

    if a.add_sincos is not None:
        k = "visual_encoder.pos_embed"
        if k not in w:
            sys.exit(f"{d}/trainable.safetensors has no {k} (is the ViT trainable in this run?)")
        p = w[k].clone()
        n, dim = p.shape[1], p.shape[2]
        g = math.isqrt(n - 1)
        p[0, 1:] += a.add_sincos * sincos(g, dim)
        w[k] = p
        zero_moments(k)
        print(f"{k}: added {a.add_sincos} x the {g}x{g} sin-cos code")
    if a.reset_aggregator:
        init = load_file(a.reset_aggregator)
        keys = [k for k in w if k.startswith(AGGREGATOR)]
        missing = [k for k in keys if k not in init]
        if not keys or missing:
            sys.exit(f"aggregator keys: {len(keys)} trainable, not in {a.reset_aggregator}: {missing[:5]}")
        for k in keys:
            w[k] = init[k].clone()
            zero_moments(k)
        print(f"aggregator: {len(keys)} tensors back to their initial values")
    save_file(w, os.path.join(d, "trainable.safetensors"))
    save_file(o, os.path.join(d, "optimizer.safetensors"))
    m = json.load(open(os.path.join(d, "manifest.json")))
    for f in ("trainable.safetensors", "optimizer.safetensors"):
        b = open(os.path.join(d, f), "rb").read()
        m["files"][f] = {"bytes": len(b), "fnv1a64": fnv1a64(b)}
    with open(os.path.join(d, "manifest.json"), "w") as fh:
        json.dump(m, fh, indent=2)


if __name__ == "__main__":
    main()
