"""JPEG decoding references: Pillow's `Image.open(f).convert("RGB")` of a corpus of small JPEGs.

Writes tests/fixtures/jpeg/:
  NNN_<kinds>.jpg    the JPEGs, saved by Pillow 13 (its bundled libjpeg-turbo) from crops of
                     scikit-image's public-domain sample photographs, resized (Lanczos) to
                     9..48 px a side (odd sizes and sizes that are not whole MCUs included),
                     quality 40..100, some with optimised Huffman tables;
  NNN_<kinds>.png    Pillow's `Image.open(jpg).convert("RGB")` of each (lossless);
  corpus.json        [{"file", "kinds", "size"}] for every JPEG;
  e2e_*.jpg, e2e.safetensors
                     three larger JPEGs and their LION eval `pixel_values` at 56 px (the tiny
                     preset's image size): Pillow open + convert("RGB") + torchvision
                     `Resize((56, 56), BICUBIC)`, `ToTensor`, `Normalize(CLIP)`, as
                     lion_preprocessors.ImageEvalProcessor builds it (at 224 upstream).

Kinds (each has at least 20 files; one file has several kinds):
  baseline / progressive; s444 / s422 / s420 chroma subsampling; restart (restart markers every
  1-4 MCU rows or 2-7 MCUs); cmyk (Pillow writes Adobe-inverted CMYK, decoded to "CMYK" and
  converted by Pillow's own cmyk->rgb); gray (1 component); exif (an EXIF orientation tag 2..8,
  which `Image.open` does not apply: the pixels are returned as stored).

Run: PY=$(scripts/venv.sh); $PY scripts/fixtures_jpeg.py
"""
import io
import json
import os
import random

import numpy as np
import skimage.data
import torch
from PIL import Image, features
from safetensors.torch import save_file
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "jpeg")

COLOUR = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel"]
GRAY = ["camera", "coins", "moon", "page", "text", "brick", "grass", "gravel", "clock", "cell"]
SUBSAMPLING = {"s444": 0, "s422": 1, "s420": 2}


def crop(rng, arr):
    """A random crop of 40..300 px, resized to a random 9..48 px a side (Lanczos)."""
    h, w = arr.shape[:2]
    ch, cw = rng.randint(40, min(300, h)), rng.randint(40, min(300, w))
    top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
    im = Image.fromarray(np.ascontiguousarray(arr[top:top + ch, left:left + cw]))
    return im.resize((rng.randint(9, 48), rng.randint(9, 48)), Image.Resampling.LANCZOS)


def photo(rng, names):
    return getattr(skimage.data, rng.choice(names))()


def encode(im, rng, kinds):
    opts = dict(quality=rng.choice([40, 60, 75, 85, 90, 95, 100]), optimize=rng.random() < 0.3,
                progressive="progressive" in kinds)
    for k, v in SUBSAMPLING.items():
        if k in kinds:
            opts["subsampling"] = v
    if "restart" in kinds:
        if rng.random() < 0.5:
            opts["restart_marker_rows"] = rng.randint(1, 4)
        else:
            opts["restart_marker_blocks"] = rng.randint(2, 7)
    if "exif" in kinds:
        exif = Image.Exif()
        exif[0x0112] = rng.randint(2, 8)
        opts["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, "JPEG", **opts)
    return buf.getvalue()


def main():
    assert features.check_feature("libjpeg_turbo"), "Pillow without libjpeg-turbo"
    print("Pillow's libjpeg-turbo:", features.version("libjpeg_turbo"))
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    rng = random.Random(0)
    plans = []
    # colour: 2 modes x 3 subsamplings x with/without restart markers, 4 each (20 per sampling
    # with the exif ones below), then cmyk, gray and exif-oriented files
    for mode in ["baseline", "progressive"]:
        for sub in SUBSAMPLING:
            for restart in [False, True]:
                for _ in range(4):
                    plans.append([mode, sub] + (["restart"] if restart else []))
    for i in range(24):
        plans.append([["baseline", "progressive"][i % 2], "cmyk"] + (["restart"] if i % 3 == 0 else []))
    for i in range(24):
        plans.append([["baseline", "progressive"][i % 2], "gray"] + (["restart"] if i % 3 == 0 else []))
    for i in range(24):
        plans.append([["baseline", "progressive"][i % 2], list(SUBSAMPLING)[i % 3], "exif"])
    corpus = []
    for n, kinds in enumerate(plans):
        if "gray" in kinds:
            im = crop(rng, photo(rng, GRAY)).convert("L")
        else:
            im = crop(rng, photo(rng, COLOUR)[..., :3])
            if "cmyk" in kinds:
                im = im.convert("CMYK")
        data = encode(im, rng, kinds)
        name = f"{n:03d}_{'_'.join(kinds)}"
        with open(os.path.join(OUT, name + ".jpg"), "wb") as f:
            f.write(data)
        dec = Image.open(os.path.join(OUT, name + ".jpg"))
        want_mode = "CMYK" if "cmyk" in kinds else "L" if "gray" in kinds else "RGB"
        assert dec.mode == want_mode, (name, dec.mode)
        if "progressive" in kinds:
            assert dec.info.get("progressive"), name
        if "exif" in kinds:
            assert dec.getexif().get(0x0112, 1) != 1, name
        if "restart" in kinds:
            assert b"\xff\xdd" in data, name  # a DRI marker
        dec.convert("RGB").save(os.path.join(OUT, name + ".png"), optimize=True)
        corpus.append({"file": name + ".jpg", "kinds": kinds, "size": list(im.size)})
    for kind in ["baseline", "progressive", *SUBSAMPLING, "restart", "cmyk", "gray", "exif"]:
        count = sum(kind in c["kinds"] for c in corpus)
        assert count >= 20, (kind, count)
        print(f"{kind}: {count} files")
    with open(os.path.join(OUT, "corpus.json"), "w") as f:
        json.dump({"pillow_libjpeg_turbo": features.version("libjpeg_turbo"), "files": corpus},
                  f, indent=0)

    # end to end: LION's eval transform on three larger JPEGs
    clip = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    lion_eval = T.Compose([T.Resize((56, 56), interpolation=InterpolationMode.BICUBIC),
                           T.ToTensor(), T.Normalize(*clip)])
    e2e = {}
    for name, src, size, opts in [
        ("e2e_chelsea", "chelsea", (131, 97), dict(quality=90)),
        ("e2e_coffee", "coffee", (120, 80), dict(quality=85, progressive=True, subsampling=1)),
        ("e2e_rocket_cmyk", "rocket", (75, 64), dict(quality=95)),
    ]:
        im = Image.fromarray(getattr(skimage.data, src)()[..., :3]).resize(
            size, Image.Resampling.LANCZOS)
        if "cmyk" in name:
            im = im.convert("CMYK")
        im.save(os.path.join(OUT, name + ".jpg"), "JPEG", **opts)
        rgb = Image.open(os.path.join(OUT, name + ".jpg")).convert("RGB")
        e2e[name] = lion_eval(rgb).contiguous()
    save_file(e2e, os.path.join(OUT, "e2e.safetensors"))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(corpus)} JPEGs + 3 end-to-end, {total / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    main()
