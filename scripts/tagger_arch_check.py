"""Which tagger architecture learns ShapesWorld's tags, shapes above all: a PyTorch side study.

    PY=$(scripts/venv.sh)
    lion world generate --out tw --seed 2000 --train 6000 --val 300 --test 300 --size 96
    $PY scripts/tagger_arch_check.py --world tw --backbone cnn --norm bn --head max --bs 32 --lr 2e-3 --epochs 12
    $PY scripts/tagger_arch_check.py --world tw --single-label   # one-object images, softmax over shapes

Not a reference for any Rust code (no fixture is written): it trains small taggers from scratch
on a world's training split, with the Rust tagger's recipe around them (AdamW, weight decay
0.05, 5% linear warmup then cosine, horizontal flips, binary cross-entropy summed over tags and
averaged over images, 2 threads), so that backbones and heads can be compared at equal steps in
minutes. Backbones: `swin`, timm's Swin with the shipped tagger's sizes (96 px, patch 4, widths
16-32-64, depths 2-2-2, heads 2-4-8, window 6; no patch norm unless `--patch-norm`), or `cnn`,
four stages of two 3x3 convolutions (the first of each with stride 2; widths 16-32-64-64) with a
norm (`--norm bn|ln|gn|in|none`: BatchNorm, GroupNorm with 1, 4 or one-per-channel groups,
nothing) and ReLU; both end on a 6 x 6 map. Heads: `ram`, RAM's tagging head at the shipped
sizes (label queries from a 512-wide label embedding through `wordvec_proj` and ReLU, two layers
of cross-attention to the image tokens projected to 512 with their mean token prepended, a
feed-forward of 128, LayerNorms, one shared `fc`), or a linear layer over the map's `max` or
`mean`. Every 750 steps it prints, on the test split with per-tag thresholds tuned on the
validation split (grid 0.05..0.95): micro F1, the shape group's F1, shape F1 on one-object
images, top-1 shape accuracy on one-object images (test, and the first 1000 training images),
and the validation loss; at the end, F1 per tag group.
"""
import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", required=True)
    p.add_argument("--backbone", choices=["swin", "cnn"], default="swin")
    p.add_argument("--norm", choices=["bn", "ln", "gn", "in", "none"], default="bn")
    p.add_argument("--head", choices=["ram", "max", "mean"], default="ram")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--patch-norm", action="store_true")
    p.add_argument("--single-label", action="store_true",
                   help="one-object images only, softmax over the shapes (8 epochs, batch 32, lr 2e-3, cnn/bn/max)")
    return p.parse_args()


def images(world, entries):
    x = np.stack([np.asarray(Image.open(f"{world}/{e['file_name']}").convert("RGB")) for e in entries])
    return torch.tensor(((x.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2))


class RamHead(nn.Module):
    def __init__(self, width, num_tags, hidden=64, layers=2, heads=4):
        super().__init__()
        self.image_proj = nn.Linear(width, 512)
        self.label_embed = nn.Parameter(torch.randn(num_tags, 512) * 0.02)
        self.wordvec_proj = nn.Linear(512, hidden)
        self.layers = nn.ModuleList(
            nn.ModuleDict(dict(
                q=nn.Linear(hidden, hidden), k=nn.Linear(512, hidden), v=nn.Linear(512, hidden),
                o=nn.Linear(hidden, hidden), ln1=nn.LayerNorm(hidden, eps=1e-12),
                f1=nn.Linear(hidden, 2 * hidden), f2=nn.Linear(2 * hidden, hidden),
                ln2=nn.LayerNorm(hidden, eps=1e-12)))
            for _ in range(layers))
        self.heads = heads
        self.fc = nn.Linear(hidden, 1)

    def forward(self, feats):  # (B, L, width) -> (B, num_tags)
        img = self.image_proj(torch.cat([feats.mean(1, keepdim=True), feats], 1))
        b = img.shape[0]
        h = F.relu(self.wordvec_proj(self.label_embed)).unsqueeze(0).expand(b, -1, -1)
        split = lambda t: t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)
        for layer in self.layers:
            o = F.scaled_dot_product_attention(split(layer["q"](h)), split(layer["k"](img)), split(layer["v"](img)))
            h = layer["ln1"](h + layer["o"](o.transpose(1, 2).reshape(b, -1, h.shape[-1])))
            h = layer["ln2"](h + layer["f2"](F.gelu(layer["f1"](h))))
        return self.fc(h).squeeze(-1)


def cnn(norm):
    make = {"bn": nn.BatchNorm2d, "ln": lambda c: nn.GroupNorm(1, c), "gn": lambda c: nn.GroupNorm(4, c),
            "in": lambda c: nn.GroupNorm(c, c), "none": lambda c: nn.Identity()}[norm]
    widths, layers = [3, 16, 32, 64, 64], []
    for i in range(4):
        layers += [nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1), make(widths[i + 1]), nn.ReLU(),
                   nn.Conv2d(widths[i + 1], widths[i + 1], 3, 1, 1), make(widths[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers)


class Tagger(nn.Module):
    def __init__(self, a, num_tags):
        super().__init__()
        if a.backbone == "swin":
            import timm
            self.swin = timm.models.swin_transformer.SwinTransformer(
                img_size=96, patch_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 8),
                window_size=6, num_classes=0, global_pool="")
            if not a.patch_norm:
                self.swin.patch_embed.norm = nn.Identity()
            width = 64
        else:
            self.cnn = cnn(a.norm)
            width = 64
        self.kind = a.head
        self.head = RamHead(width, num_tags) if a.head == "ram" else nn.Linear(width, num_tags)

    def forward(self, x):
        if hasattr(self, "swin"):
            f = self.swin.forward_features(x).flatten(1, 2)
        else:
            f = self.cnn(x).flatten(2).transpose(1, 2)
        return {"ram": lambda: self.head(f), "max": lambda: self.head(f.amax(1)),
                "mean": lambda: self.head(f.mean(1))}[self.kind]()


def micro_f1(p, y, th, cols=None):
    if cols is not None:
        p, y, th = p[:, cols], y[:, cols], th[cols]
    pred = (p >= th).float()
    tp = (pred * y).sum()
    return float(2 * tp / (pred.sum() + y.sum() + 1e-9))


def single_label(world, shapes):
    def split(name):
        es = [e for e in json.load(open(f"{world}/tags_{name}.json")) if "one" in e["tags"]]
        y = torch.tensor([[shapes.index(t) for t in e["tags"] if t in shapes][0] for e in es])
        return images(world, es), y
    xtr, ytr = split("train")
    xte, yte = split("test")
    print(f"{len(ytr)} training and {len(yte)} test images with one object", flush=True)
    m = nn.Sequential(cnn("bn"), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, len(shapes)))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.05)
    for epoch in range(8):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr) - 31, 32):
            b = perm[i:i + 32]
            loss = F.cross_entropy(m(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            acc = float((m(xte).argmax(1) == yte).float().mean())
        m.train()
        print(json.dumps({"epoch": epoch + 1, "test_top1": round(acc, 4)}), flush=True)


def main():
    a = parse()
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)
    world = a.world
    tags = [l.strip() for l in open(f"{world}/tag_list.txt") if l.strip()]
    index = {t: i for i, t in enumerate(tags)}
    vocab = json.load(open(f"{world}/world.json"))["vocabulary"]
    if a.single_label:
        return single_label(world, vocab["shapes"])
    t0 = time.time()

    def split(name):
        es = json.load(open(f"{world}/tags_{name}.json"))
        y = torch.zeros(len(es), len(tags))
        for i, e in enumerate(es):
            for t in e["tags"]:
                y[i, index[t]] = 1
        return images(world, es), y

    xtr, ytr = split("train")
    xva, yva = split("val")
    xte, yte = split("test")
    groups = {"shape": [index[s] for s in vocab["shapes"]], "color": [index[s] for s in vocab["colors"]],
              "size": [index[s] for s in vocab["sizes"]], "texture": [index[s] for s in vocab["textures"]],
              "count": [index[s] for s in ["one", "two", "three", "four"]],
              "color_shape": [index[f"{c} {s}"] for c in vocab["colors"] for s in vocab["shapes"] if f"{c} {s}" in index]}
    seen = {i for g in groups.values() for i in g}
    groups["other"] = [i for i in range(len(tags)) if i not in seen]
    sc = groups["shape"]
    m = Tagger(a, len(tags))
    print(json.dumps({"parameters": sum(p.numel() for p in m.parameters()), **vars(a)}), flush=True)
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.05)
    n = len(xtr)
    per_epoch = n // a.bs
    total = int(per_epoch * a.epochs)
    warm = int(0.05 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))

    def probs(x):
        m.eval()
        with torch.no_grad():
            out = torch.cat([torch.sigmoid(m(x[i:i + 64])) for i in range(0, len(x), 64)])
        m.train()
        return out

    def report(step, final):
        pv, pt = probs(xva), probs(xte)
        th = torch.zeros(len(tags))
        for c in range(len(tags)):
            best = (-1.0, 0.5)
            for t in np.linspace(0.05, 0.95, 19):
                pred = (pv[:, c] >= t).float()
                f = float(2 * (pred * yva[:, c]).sum() / (pred.sum() + yva[:, c].sum() + 1e-9))
                if f > best[0]:
                    best = (f, t)
            th[c] = best[1]
        one = yte[:, index["one"]] > 0
        ptr = probs(xtr[:1000])
        one_tr = ytr[:1000, index["one"]] > 0
        r = {"step": step, "f1": micro_f1(pt, yte, th), "shape": micro_f1(pt, yte, th, sc),
             "one_object_shape_f1": micro_f1(pt[one], yte[one], th, sc),
             "one_object_top1": float((pt[one][:, sc].argmax(1) == yte[one][:, sc].argmax(1)).float().mean()),
             "one_object_top1_train": float((ptr[one_tr][:, sc].argmax(1) == ytr[:1000][one_tr][:, sc].argmax(1)).float().mean()),
             "val_loss": float(F.binary_cross_entropy(pv.clamp(1e-7, 1 - 1e-7), yva, reduction="sum") / len(yva))}
        if final:
            r["groups"] = {g: micro_f1(pt, yte, th, cols) for g, cols in groups.items()}
        r["seconds"] = round(time.time() - t0)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)

    step = 0
    g = torch.Generator().manual_seed(0)
    while step < total:
        perm = torch.randperm(n, generator=g)
        for i in range(per_epoch):
            if step >= total:
                break
            b = perm[i * a.bs:(i + 1) * a.bs]
            x, y = xtr[b].clone(), ytr[b]
            flip = torch.rand(len(b), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.binary_cross_entropy_with_logits(m(x), y, reduction="sum") / len(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 750 == 0 or step == total:
                report(step, step == total)


if __name__ == "__main__":
    main()
