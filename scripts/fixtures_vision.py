"""Reference fixtures for the vision side: EVA ViT, Q-Former, vision aggregator, preprocessing.

Writes tests/fixtures/vision/ (all small, tiny random-init models with upstream key names):
  vit.safetensors, vit_io.safetensors
      EVA ViT at a tiny config (img 32, patch 8, width 16, depth 5, 4 heads, MLP 44). Reference:
      timm's `timm.models.eva.Eva` (an independent implementation of the same model; its state-dict
      keys are exactly LAVIS eva_vit_g.pth's: fused `attn.qkv.weight`, `attn.q_bias`, `attn.v_bias`,
      no k bias), LayerNorm eps 1e-6, no rope, no final norm (block outputs are taken by hooks).
      Also the same checkpoint run at img 48: its pos_embed is interpolated 4x4 -> 6x6 as upstream
      `interpolate_pos_embed` does (torch bicubic, align_corners=False, class token kept).
  vit_official.pth, vit_official_io.safetensors
      vit.safetensors as the official eva_vit_g.pth is stored (a torch.save'd fp16 state dict) with
      one block more than the model uses (EVA-CLIP-g: 40, LAVIS/LION build 39), and the outputs of
      the 4-block model upstream's create_eva_vit_g would build from it (strict=False load).
  qformer.safetensors, qformer_io.safetensors
      InstructBLIP Q-Former + ln_vision + query_tokens + t5_proj at a tiny config. Reference: written
      below in plain torch following LAVIS/LION `Qformer.py` (BertEmbeddings with query_embeds,
      BertLayer with crossattention every cross_attention_freq layers on query rows only,
      intermediate_query/output_query vs intermediate/output, -10000 additive mask) and
      `lion_t5.py` encode_img (ln_vision in f32, last_hidden_state[:, :32] -> t5_proj).
  aggregator.safetensors, aggregator_io.safetensors
      LION's FusionAdapter (two `transformers.BertLayer`s with is_decoder + add_cross_attention,
      eager attention as upstream ran it), ln_adapter and adapter_proj, as `lion_adapters.py` /
      `lion_t5.py` build them; upstream init, then every parameter perturbed so all are tested.
  images/*.png
      Four crops of scikit-image's public-domain sample photos (astronaut 160x200, coffee 300x120,
      chelsea 150x120, rocket 80x60), stored losslessly so both sides read identical pixels.
  resize/*.png, preprocess.json, preprocess.safetensors
      References as uint8 PNG (the resized image before ToTensor): torchvision `F.resize` on PIL
      (PIL `Image.resize`, Pillow 13) at 224x224 bicubic (LION eval; three photos), at 384x384
      bilinear (RAM; rocket), at three other sizes/filters for every photo, and torchvision
      `resized_crop` + `hflip` (RandomResizedCrop's deterministic part) at 112. The full
      torchvision transforms (LION eval, RAM) are checked through a stride-16 subsample of their
      normalised float32 output (preprocess.safetensors) to keep the files small.
  robust/*
      Awkward inputs (CMYK / grayscale / RGB JPEG, palette, LA, RGBA, 16-bit RGB and gray PNG)
      and PIL's `Image.open(f).convert("RGB")` of them.

Run: PY=$(scripts/venv.sh); $PY scripts/fixtures_vision.py [vit] [vit_official] [qformer] [aggregator] [preprocess]
Cross-check against the upstream modules themselves (optional, see upstream()):
     LION_UPSTREAM_MODELS=/path/to/JiuTian-LION/models $PY scripts/fixtures_vision.py upstream
"""
import json
import math
import os
import sys
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "vision")


def perturb(module, scale=0.1):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def save(tensors, name):
    save_file({k: v.detach().contiguous().float() if v.is_floating_point() else v.contiguous()
               for k, v in tensors.items()}, os.path.join(OUT, name))


# ----------------------------------------------------------------------------------------------
# EVA ViT

def make_eva(img, patch, width, depth, heads, mlp_dim, eps=1e-6):
    """timm's Eva as LAVIS's eva_vit: fused qkv with q/v biases, abs positions, no rope, exact
    GELU. Its final `norm` is not part of LAVIS's ViT: take block outputs (hooks or
    `eva_blocks`)."""
    from timm.models.eva import Eva

    return Eva(img_size=img, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
               mlp_ratio=mlp_dim / width, qkv_bias=True, num_classes=0, global_pool="",
               norm_layer=partial(nn.LayerNorm, eps=eps), use_rot_pos_emb=False,
               use_abs_pos_emb=True).eval()


def eva_blocks(model, x, layers):
    """The outputs of the blocks `layers` (0-based, in that order), running no block after the
    deepest one (as lion_core's EvaVit::forward): (b, 3, img, img) -> [(b, n, width)]."""
    h = model.patch_embed(x)
    h, rope = model._pos_embed(h)
    h = model.norm_pre(h)
    assert rope is None
    outs = {}
    for i, blk in enumerate(model.blocks[: max(layers) + 1]):
        h = blk(h)
        outs[i] = h
    return [outs[i] for i in layers]


def vit():
    def make(img):
        return make_eva(img, 8, 16, 5, 4, 44)

    def run(model, x):
        outs = []
        hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model.blocks]
        with torch.no_grad():
            model.forward_features(x)
        for h in hooks:
            h.remove()
        return outs

    torch.manual_seed(0)
    model = make(32)
    perturb(model, 0.05)
    sd = {k: v for k, v in model.state_dict().items()
          if k in ("cls_token", "pos_embed") or k.startswith(("patch_embed.proj", "blocks."))}
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    for i in range(5):
        for s in ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
                  "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                  "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]:
            expected.add(f"blocks.{i}.{s}")
    assert set(sd) == expected, set(sd) ^ expected  # exactly LAVIS eva_vit_g.pth's key set
    save(sd, "vit.safetensors")

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    outs = run(model, x)

    # interpolate_pos_embed (eva_vit.py) semantics, then the same weights at 48 px
    pos = sd["pos_embed"].float()
    cls, grid = pos[:, :1], pos[:, 1:]
    grid = grid.reshape(1, 4, 4, 16).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    pos48 = torch.cat([cls, grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    model48 = make(48)
    sd48 = dict(sd)
    sd48["pos_embed"] = pos48
    missing, unexpected = model48.load_state_dict(sd48, strict=False)
    assert not unexpected and all(k.startswith("norm.") for k in missing), (missing, unexpected)
    model48.norm.load_state_dict(model.norm.state_dict())
    x48 = torch.randn(1, 3, 48, 48, generator=g)
    outs48 = run(model48, x48)
    save({"pixel_values": x, "block1": outs[1], "block3": outs[3], "block4": outs[4],
          "pos_embed_48": pos48, "pixel_values_48": x48, "block4_48": outs48[4]},
         "vit_io.safetensors")
    print("vit written")


def vit_official():
    """vit.safetensors in the official eva_vit_g.pth layout: a torch.save'd fp16 state dict with one
    block more than the model uses (EVA-CLIP-g's 40 blocks, of which LAVIS/LION build 39). The
    reference is create_eva_vit_g's load: a 4-block model, load_state_dict(strict=False) (which
    drops blocks.4.*), the fp16 values widened to f32."""
    from safetensors.torch import load_file

    sd = load_file(os.path.join(OUT, "vit.safetensors"))
    official = {k: v.half() for k, v in sd.items()}
    torch.save(official, os.path.join(OUT, "vit_official.pth"))
    model = make_eva(32, 8, 16, 4, 4, 44)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in official.items()},
                                                strict=False)
    assert all(k.startswith("norm.") for k in missing), missing
    assert unexpected and all(k.startswith("blocks.4.") for k in unexpected), unexpected
    x = load_file(os.path.join(OUT, "vit_io.safetensors"))["pixel_values"]
    with torch.no_grad():
        b1, b3 = eva_blocks(model, x, [1, 3])
    save({"block1": b1, "block3": b3}, "vit_official_io.safetensors")
    print("vit_official written")


# ----------------------------------------------------------------------------------------------
# Q-Former (independent torch code following LAVIS/LION Qformer.py)

QF = dict(vocab=50, hidden=16, layers=4, heads=4, inter=24, max_pos=24, freq=2, queries=6,
          enc_width=20, d_model=12, eps=1e-12)


class Attn(nn.Module):
    def __init__(self, kv_width, cfg=QF):
        super().__init__()
        self.cfg = cfg
        h = cfg["hidden"]
        self.self = nn.Module()
        self.self.query = nn.Linear(h, h)
        self.self.key = nn.Linear(kv_width, h)
        self.self.value = nn.Linear(kv_width, h)
        self.output = nn.Module()
        self.output.dense = nn.Linear(h, h)
        self.output.LayerNorm = nn.LayerNorm(h, eps=cfg["eps"])

    def forward(self, x, kv, mask):
        b, n, h = x.shape
        nh = self.cfg["heads"]
        hd = h // nh
        split = lambda t: t.view(t.shape[0], t.shape[1], nh, hd).permute(0, 2, 1, 3)
        q, k, v = split(self.self.query(x)), split(self.self.key(kv)), split(self.self.value(kv))
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)
        if mask is not None:
            s = s + mask
        ctx = (s.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, n, h)
        return self.output.LayerNorm(self.output.dense(ctx) + x)


class FFN(nn.Module):
    def __init__(self, cfg=QF):
        super().__init__()
        self.dense = nn.Linear(cfg["hidden"], cfg["inter"])


class Out(nn.Module):
    def __init__(self, cfg=QF):
        super().__init__()
        self.dense = nn.Linear(cfg["inter"], cfg["hidden"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden"], eps=cfg["eps"])


class QLayer(nn.Module):
    def __init__(self, i, cfg=QF):
        super().__init__()
        self.attention = Attn(cfg["hidden"], cfg)
        if i % cfg["freq"] == 0:
            self.crossattention = Attn(cfg["enc_width"], cfg)
        self.intermediate, self.output = FFN(cfg), Out(cfg)
        self.intermediate_query, self.output_query = FFN(cfg), Out(cfg)

    def forward(self, x, mask, vision, q):
        a = self.attention(x, x, mask)
        aq = a[:, :q]
        if hasattr(self, "crossattention"):
            aq = self.crossattention(aq, vision, None)  # image mask all ones
        ff = lambda inter, out, t: out.LayerNorm(out.dense(F.gelu(inter.dense(t))) + t)
        yq = ff(self.intermediate_query, self.output_query, aq)
        yt = ff(self.intermediate, self.output, a[:, q:])
        return torch.cat([yq, yt], 1)


class QFormerRef(nn.Module):
    """ln_vision + Q-Former + t5_proj with LION's key names; `cfg`: the dims, as QF (the fixture's
    tiny config by default; `ln_eps` is ln_vision's eps, 1e-5)."""

    def __init__(self, cfg=QF):
        super().__init__()
        self.cfg = cfg
        h = cfg["hidden"]
        self.query_tokens = nn.Parameter(0.02 * torch.randn(1, cfg["queries"], h))
        self.ln_vision = nn.LayerNorm(cfg["enc_width"], eps=cfg.get("ln_eps", 1e-5))
        self.t5_proj = nn.Linear(h, cfg["d_model"])
        self.Qformer = nn.Module()
        self.Qformer.bert = nn.Module()
        e = self.Qformer.bert.embeddings = nn.Module()
        e.word_embeddings = nn.Embedding(cfg["vocab"], h)
        e.position_embeddings = nn.Embedding(cfg["max_pos"], h)
        e.LayerNorm = nn.LayerNorm(h, eps=cfg["eps"])
        e.register_buffer("position_ids", torch.arange(cfg["max_pos"]).expand((1, -1)))
        self.Qformer.bert.encoder = nn.Module()
        self.Qformer.bert.encoder.layer = nn.ModuleList([QLayer(i, cfg)
                                                         for i in range(cfg["layers"])])

    def forward(self, vision, ids, text_mask):
        b = vision.shape[0]
        q = self.cfg["queries"]
        vision = self.ln_vision(vision.float())
        e = self.Qformer.bert.embeddings
        text = e.word_embeddings(ids) + e.position_embeddings(e.position_ids[:, :ids.shape[1]])
        x = e.LayerNorm(torch.cat([self.query_tokens.expand(b, -1, -1), text], 1))
        mask = torch.cat([torch.ones(b, q), text_mask.float()], 1)
        mask = (1.0 - mask[:, None, None, :]) * -10000.0
        for layer in self.Qformer.bert.encoder.layer:
            x = layer(x, mask, vision, q)
        return x, self.t5_proj(x[:, :q])


def qformer():
    torch.manual_seed(2)
    model = QFormerRef().eval()
    perturb(model, 0.1)
    sd = model.state_dict()
    save(sd, "qformer.safetensors")
    g = torch.Generator().manual_seed(3)
    vision = 2.0 * torch.randn(2, 17, QF["enc_width"], generator=g)
    ids = torch.randint(1, QF["vocab"], (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    ids[mask == 0] = 0
    with torch.no_grad():
        hidden, out = model(vision, ids, mask)
        _, out_q_only = model(vision, ids[:, :0], mask[:, :0])
    save({"vision": vision, "input_ids": ids, "attention_mask": mask, "hidden": hidden,
          "output": out, "output_queries_only": out_q_only}, "qformer_io.safetensors")
    print("qformer written")


# ----------------------------------------------------------------------------------------------
# Vision aggregator: transformers.BertLayer, as lion_adapters.FusionAdapter builds it

AG = dict(width=16, heads=4, inter=24, proj=64, d_model=12)


def make_aggregator(width, heads, inter, proj, d_model, blocks=2, eps=1e-12, ln_eps=1e-5):
    """fusion_adapter (two `transformers.BertLayer`s with is_decoder + add_cross_attention, eager
    attention), ln_adapter and adapter_proj under one root with LION's key names, upstream init
    (`lion_adapters.FusionAdapter._init_weights`). Run it with `aggregator_forward`."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer, BertOutput, BertSelfOutput

    cfg = BertConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=inter,
                     layer_norm_eps=eps)
    cfg.add_cross_attention = True
    cfg.is_decoder = True
    # upstream ran eager attention with attention_mask=None: unmasked. (SDPA in transformers 5
    # would turn is_decoder + no mask into causal attention.)
    cfg._attn_implementation = "eager"

    class FusionAdapter(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([BertLayer(cfg) for _ in range(blocks)])

    root = nn.Module()
    root.fusion_adapter = FusionAdapter()
    root.ln_adapter = nn.LayerNorm(width, eps=ln_eps)
    root.adapter_proj = nn.Sequential(nn.Linear(width, proj), nn.GELU(), nn.Linear(proj, d_model))

    def init(m):  # lion_adapters.FusionAdapter._init_weights
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data.normal_(mean=0.0, std=cfg.initializer_range)
        elif isinstance(m, nn.LayerNorm):
            m.bias.data.zero_()
            m.weight.data.fill_(1.0)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data.zero_()
        if isinstance(m, (BertSelfOutput, BertOutput)):
            m.dense.weight.data.zero_()
            m.dense.bias.data.zero_()

    root.fusion_adapter.apply(init)
    root.bert_config = cfg
    return root.eval()


def aggregator_forward(root, x, sources):
    """h = x; h = block_i(h, encoder_hidden_states=sources[i]); ln_adapter(h) -> (fused, output):
    x (b, n, width), sources [(b, n, width)] -> ((b, n, width), (b, n, d_model))."""
    h = x
    for blk, enc in zip(root.fusion_adapter.blocks, sources):
        o = blk(h, encoder_hidden_states=enc)
        h = o[0] if isinstance(o, tuple) else o  # transformers 4 returns a tuple, 5 a tensor
    fused = root.ln_adapter(h)
    return fused, root.adapter_proj(fused)


def aggregator():
    torch.manual_seed(4)
    root = make_aggregator(AG["width"], AG["heads"], AG["inter"], AG["proj"], AG["d_model"])
    cfg = root.bert_config
    perturb(root, 0.05)
    sd = root.state_dict()
    save(sd, "aggregator.safetensors")
    g = torch.Generator().manual_seed(5)
    x38, x28, x18 = (torch.randn(2, 17, AG["width"], generator=g) for _ in range(3))
    with torch.no_grad():
        fused, out = aggregator_forward(root, x38, [x28, x18])
        # the same with the attention made causal, to show the reference is non-causal
        cfg._attn_implementation = "sdpa"
        hc = root.fusion_adapter.blocks[0](x38, encoder_hidden_states=x28)
        hc = hc[0] if isinstance(hc, tuple) else hc
        cfg._attn_implementation = "eager"
        he = root.fusion_adapter.blocks[0](x38, encoder_hidden_states=x28)
        he = he[0] if isinstance(he, tuple) else he
        print("aggregator: eager vs sdpa (causal) block0 max diff", (hc - he).abs().max().item())
    save({"x38": x38, "x28": x28, "x18": x18, "fused": fused, "output": out},
         "aggregator_io.safetensors")
    print("aggregator written")


# ----------------------------------------------------------------------------------------------
# Preprocessing: torchvision transforms on PIL images

# Crops of scikit-image's public-domain sample photographs, of different sizes and aspect ratios
# (kept small so the PNG inputs stay small): (name, rows, cols)
PHOTOS = [
    ("astronaut", slice(30, 230), slice(150, 310)),   # 160x200 portrait
    ("coffee", slice(100, 220), slice(150, 450)),     # 300x120 wide
    ("chelsea", slice(60, 180), slice(130, 280)),     # 150x120
    ("rocket", slice(200, 260), slice(250, 330)),     # 80x60, tiny: upsampled
]


def write_png16(path, arr):
    """A 16-bit PNG (gray (h, w) or RGB (h, w, 3)) written by hand: PIL cannot write RGB;16."""
    import struct
    import zlib

    import numpy as np

    h, w = arr.shape[:2]
    color = 0 if arr.ndim == 2 else 2
    rows = arr.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)

    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def preprocess():
    import numpy as np
    import skimage.data
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    img_dir = os.path.join(OUT, "images")
    ref_dir = os.path.join(OUT, "resize")
    rob_dir = os.path.join(OUT, "robust")
    for d in (img_dir, ref_dir, rob_dir):
        os.makedirs(d, exist_ok=True)

    def png(im, path):
        im.save(path, optimize=True)

    clip = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    imnet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # lion_preprocessors.ImageEvalProcessor and ram/transform.get_transform, as upstream builds them
    lion_eval = T.Compose([T.Resize((224, 224), interpolation=InterpolationMode.BICUBIC),
                           T.ToTensor(), T.Normalize(*clip)])
    ram = T.Compose([lambda im: im.convert("RGB"), T.Resize((384, 384)), T.ToTensor(),
                     T.Normalize(*imnet)])
    cases = {}
    samples = {}
    for name, rows, cols in PHOTOS:
        arr = np.ascontiguousarray(getattr(skimage.data, name)()[rows, cols, :3])
        im = Image.fromarray(arr, "RGB")
        png(im, os.path.join(img_dir, f"{name}.png"))
        im = Image.open(os.path.join(img_dir, f"{name}.png")).convert("RGB")
        out = []
        # the full eval resize (uint8, before ToTensor) for three photos
        if name != "astronaut":
            png(TF.resize(im, [224, 224], InterpolationMode.BICUBIC),
                os.path.join(ref_dir, f"{name}_eval224.png"))
            out.append(["eval224", 224, 224, "bicubic"])
        # other sizes, both filters, shrinking and enlarging
        for (w, h, f) in [(97, 61, "bicubic"), (45, 130, "bilinear"), (150, 33, "bilinear")]:
            mode = InterpolationMode.BICUBIC if f == "bicubic" else InterpolationMode.BILINEAR
            png(TF.resize(im, [h, w], mode), os.path.join(ref_dir, f"{name}_{f}_{w}x{h}.png"))
            out.append([f"{f}_{w}x{h}", w, h, f])
        cases[name] = out
        samples[f"{name}_eval"] = lion_eval(im)[:, ::16, ::16]
        samples[f"{name}_ram"] = ram(im)[:, ::16, ::16]
    # the RAM resize (uint8) for two photos
    for name in ["rocket"]:
        im = Image.open(os.path.join(img_dir, f"{name}.png"))
        png(TF.resize(im.convert("RGB"), [384, 384], InterpolationMode.BILINEAR),
            os.path.join(ref_dir, f"{name}_ram384.png"))
    # RandomResizedCrop's deterministic part: resized_crop + hflip with known parameters
    im = Image.open(os.path.join(img_dir, "chelsea.png")).convert("RGB")
    top, left, height, width = 11, 17, 97, 120
    rc = TF.hflip(TF.resized_crop(im, top, left, height, width, [112, 112],
                                  InterpolationMode.BICUBIC))
    png(rc, os.path.join(ref_dir, "chelsea_crop_flip112.png"))
    save(samples, "preprocess.safetensors")
    with open(os.path.join(OUT, "preprocess.json"), "w") as f:
        json.dump({"cases": cases, "crop_flip": {"top": top, "left": left, "height": height,
                                                 "width": width}}, f, indent=1)

    # robustness inputs and PIL's convert("RGB") of them
    base = Image.open(os.path.join(img_dir, "rocket.png")).convert("RGB")
    base.save(os.path.join(rob_dir, "photo.jpg"), quality=90)
    png(Image.open(os.path.join(rob_dir, "photo.jpg")).convert("RGB"),
        os.path.join(rob_dir, "photo_jpg_pil.png"))
    cmyk = base.convert("CMYK")
    cmyk.save(os.path.join(rob_dir, "cmyk.jpg"), quality=95)
    png(Image.open(os.path.join(rob_dir, "cmyk.jpg")).convert("RGB"), os.path.join(rob_dir, "cmyk_pil.png"))
    gray = base.convert("L")
    png(gray, os.path.join(rob_dir, "gray.png"))
    gray.save(os.path.join(rob_dir, "gray.jpg"), quality=95)
    png(Image.open(os.path.join(rob_dir, "gray.jpg")).convert("RGB"), os.path.join(rob_dir, "gray_jpg_pil.png"))
    la = base.convert("LA")
    png(la, os.path.join(rob_dir, "la.png"))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    png(rgba, os.path.join(rob_dir, "rgba.png"))
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    png(pal, os.path.join(rob_dir, "palette.png"))
    png(pal.convert("RGB"), os.path.join(rob_dir, "palette_pil.png"))
    # 16-bit: RGB (numpy -> PNG via PIL cannot write RGB;16, so write with skimage.io / imageio)
    a16 = (np.asarray(base).astype(np.uint16) * 257 + np.arange(base.size[0], dtype=np.uint16)[None, :, None] % 200)
    write_png16(os.path.join(rob_dir, "rgb16.png"), a16)
    png(Image.open(os.path.join(rob_dir, "rgb16.png")).convert("RGB"), os.path.join(rob_dir, "rgb16_pil.png"))
    g16 = (np.asarray(gray).astype(np.uint16) * 257)
    write_png16(os.path.join(rob_dir, "gray16.png"), g16)
    print("preprocess written")


# ----------------------------------------------------------------------------------------------
# Optional: check the references above against the upstream module code itself

def upstream():
    """Runs JiuTian-LION's own `models/eva_vit.py` and `models/Qformer.py` (the folder given by
    LION_UPSTREAM_MODELS, e.g. a checkout of JiuTian-VL/JiuTian-LION @7578437) on the committed
    fixtures and checks they agree with the references. Qformer.py was written for transformers
    4.x: the few helpers transformers 5 dropped are shimmed below as 4.x defined them (no-ops for
    pruning/chunking, `invert_attention_mask`, `get_head_mask`); nothing numerical is changed.
    Measured 2026-11-26: Q-Former last_hidden_state diff 0.0, ViT block outputs <= 2.4e-7,
    interpolated pos_embed 0.0."""

    import transformers.modeling_utils as mu
    from safetensors.torch import load_file
    from transformers import BertConfig

    path = os.environ["LION_UPSTREAM_MODELS"]
    sys.path.insert(0, path)
    for n in ["apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"]:
        if not hasattr(mu, n):
            setattr(mu, n, (lambda fn, chunk, dim, *xs: fn(*xs)) if n.startswith("apply") else None)
    try:
        import transformers.file_utils  # noqa: F401
    except ImportError:
        import transformers.utils as tu
        sys.modules["transformers.file_utils"] = tu
    import Qformer
    import eva_vit

    sd = load_file(os.path.join(OUT, "vit.safetensors"))
    io = load_file(os.path.join(OUT, "vit_io.safetensors"))

    def make(img):
        return eva_vit.VisionTransformer(
            img_size=img, patch_size=8, use_mean_pooling=False, embed_dim=16, depth=5,
            num_heads=4, mlp_ratio=2.75, qkv_bias=True, drop_path_rate=0.0,
            norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()

    m = make(32)
    m.load_state_dict(sd, strict=True)
    with torch.no_grad():
        _, inter = m(io["pixel_values"], return_intermediate=True)
    for i in [1, 3, 4]:
        d = (inter[i] - io[f"block{i}"]).abs().max().item()
        print(f"upstream eva_vit.py block{i}: max abs diff {d:.2e}")
        assert d < 1e-5
    m48 = make(48)
    sd48 = dict(sd)
    eva_vit.interpolate_pos_embed(m48, sd48)
    m48.load_state_dict(sd48, strict=True)
    assert (sd48["pos_embed"] - io["pos_embed_48"]).abs().max().item() < 1e-6
    with torch.no_grad():
        _, inter = m48(io["pixel_values_48"], return_intermediate=True)
    d = (inter[4] - io["block4_48"]).abs().max().item()
    print(f"upstream eva_vit.py at 48 px: max abs diff {d:.2e}")
    assert d < 1e-5

    sd = load_file(os.path.join(OUT, "qformer.safetensors"))
    io = load_file(os.path.join(OUT, "qformer_io.safetensors"))
    cfg = BertConfig(vocab_size=QF["vocab"], hidden_size=QF["hidden"],
                     num_hidden_layers=QF["layers"], num_attention_heads=QF["heads"],
                     intermediate_size=QF["inter"], max_position_embeddings=QF["max_pos"])
    cfg.encoder_width = QF["enc_width"]
    cfg.add_cross_attention = True
    cfg.cross_attention_freq = QF["freq"]
    cfg.query_length = QF["queries"]

    def invert_attention_mask(self, mask):
        e = mask[:, None, None, :].to(self.dtype)
        return (1.0 - e) * torch.finfo(self.dtype).min

    Qformer.BertModel.init_weights = lambda self: None  # weights are loaded below
    Qformer.BertModel.invert_attention_mask = invert_attention_mask
    Qformer.BertModel.get_head_mask = lambda self, hm, n, *a: [None] * n
    bert = Qformer.BertModel(cfg, add_pooling_layer=False).eval()
    bsd = {k[len("Qformer.bert."):]: v for k, v in sd.items() if k.startswith("Qformer.bert.")}
    bsd["embeddings.position_ids"] = bsd["embeddings.position_ids"].long()
    bert.load_state_dict(bsd, strict=True)
    ln = nn.LayerNorm(QF["enc_width"])
    ln.load_state_dict({"weight": sd["ln_vision.weight"], "bias": sd["ln_vision.bias"]})
    with torch.no_grad():
        img = ln(io["vision"])
        b, q = img.shape[0], QF["queries"]
        att = torch.cat([torch.ones(b, q, dtype=torch.long), io["attention_mask"]], 1)
        out = bert(io["input_ids"], attention_mask=att,
                   query_embeds=sd["query_tokens"].expand(b, -1, -1),
                   encoder_hidden_states=img,
                   encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long),
                   return_dict=True)
    d = (out.last_hidden_state - io["hidden"]).abs().max().item()
    print(f"upstream Qformer.py last_hidden_state: max abs diff {d:.2e}")
    assert d < 1e-5


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    what = sys.argv[1:] or ["vit", "qformer", "aggregator", "preprocess"]
    if "vit" in what:
        vit()
    if "vit" in what or "vit_official" in what:
        vit_official()
    if "qformer" in what:
        qformer()
    if "aggregator" in what:
        aggregator()
    if "preprocess" in what:
        preprocess()
    if "upstream" in what or os.environ.get("LION_UPSTREAM_MODELS"):
        upstream()
