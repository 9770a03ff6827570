"""Reference fixtures for the RAM image tagger (`ram_swin_large_14m` architecture, tiny sizes).

The reference is the upstream RAM model code itself (xinyu1205/recognize-anything, checked at
commit 7cb804a): `ram/models/{ram,swin_transformer,bert,utils,vit}.py`. That code is not on PyPI and
is not vendored here: point RAM_SRC at a checkout of the repository (the folder that contains
`ram/models/ram.py`), e.g.

    git clone https://github.com/xinyu1205/recognize-anything /tmp/ram_src
    RAM_SRC=/tmp/ram_src PY=$(scripts/venv.sh); RAM_SRC=/tmp/ram_src $PY scripts/fixtures_ram.py

Only import-time shims are applied (nothing in the model code is changed):
- names the upstream files import from older transformers/timm/fairscale that moved or are absent
  (`transformers.modeling_utils.{apply_chunking_to_forward, find_pruneable_heads_and_indices,
  prune_linear_layer}`, `fairscale...checkpoint_wrapper`, used only by the unused ViT path);
  `BertPreTrainedModel.{init_weights, invert_attention_mask, get_head_mask}` do what transformers
  4.x did where transformers 5 dropped them (the cross-attention mask is all ones: adds 0);
- the configs RAM reads from fixed paths are swapped for tiny ones: `read_json` (the Swin config;
  RAM accepts only image_size 224/384, so the upstream `SwinTransformer` class is constructed with
  `img_size=64` and every other argument exactly as `RAM.__init__` passes it) and `BertConfig.from_json_file` (the q2l tagging-head config) inside `ram.models.ram`; the
  `bert-base-uncased` tokenizer (a download) is replaced by a stub of 50 tokens (it only sizes the
  unused Tag2Text embeddings).
The K/V width 512 of the tagging head, `image_proj` output 512 and `label_embed` width 512 are
hard-coded upstream and stay 512 here.

Writes tests/fixtures/ram/:
  model.pth         {"model": state_dict} of the tiny upstream RAM, with the tagging head stored
                    under `vision_multi.*` (as the official checkpoint) and the Tag2Text parts
                    (tag_encoder, text_decoder) and the relative_position_index / attn_mask buffers
                    kept, so loading exercises the rename and the ignore list.
  config.json       the tiny sizes (read by the Rust test).
  io.safetensors    `image` (2, 3, 64, 64) input, `image_embeds` (visual_encoder output, before
                    image_proj), `logits` (2, num_tags) and `probs` = sigmoid(logits).
  step.safetensors  two training steps on that image (`write_step_fixture`): targets, losses and
                    every parameter's gradient. `--step-only` writes just this file, from the
                    committed model.pth and io.safetensors (the other files stay as they are).
Tiny Swin at 64 px, patch 4, window 4: resolutions 16, 8, 4, 2, so stages 0 and 1 use shifted
windows with attention masks, stage 2 has resolution == window (no shift), stage 3 resolution 2 <
window (window shrinks to 2, bias table 3x3).
"""
import importlib
import json
import os
import shutil
import sys
import tempfile
import types

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "ram")

SWIN = {
    "vision_width": 64,
    "image_res": 64,
    "window_size": 4,
    "embed_dim": 8,
    "depths": [2, 2, 1, 1],
    "num_heads": [2, 2, 4, 4],
}
Q2L = dict(hidden_size=16, num_attention_heads=4, intermediate_size=24, num_hidden_layers=2)
NUM_TAGS = 20
VOCAB = 50


def import_upstream():
    src = os.environ.get("RAM_SRC")
    if not src or not os.path.exists(os.path.join(src, "ram", "models", "ram.py")):
        sys.exit("set RAM_SRC to a checkout of xinyu1205/recognize-anything (holding ram/models/ram.py)")
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for name in ["apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"]:
        if not hasattr(mu, name):
            setattr(mu, name, getattr(pu, name, lambda *a, **k: None))
    fs = types.ModuleType("fairscale.nn.checkpoint.checkpoint_activations")
    fs.checkpoint_wrapper = lambda m, *a, **k: m
    for n in ["fairscale", "fairscale.nn", "fairscale.nn.checkpoint"]:
        sys.modules.setdefault(n, types.ModuleType(n))
    sys.modules["fairscale.nn.checkpoint.checkpoint_activations"] = fs
    # Bare packages, so ram/__init__.py (inference, transforms, RAM++ ...) is not executed.
    for pkg, path in [("ram", os.path.join(src, "ram")), ("ram.models", os.path.join(src, "ram", "models"))]:
        m = types.ModuleType(pkg)
        m.__path__ = [path]
        sys.modules[pkg] = m
    bert = importlib.import_module("ram.models.bert")
    # transformers 5's PreTrainedModel.init_weights needs attributes the old BertPreTrainedModel
    # lacks; do what transformers 4.x init_weights did for these models (the init is random anyway).
    bert.BertPreTrainedModel.init_weights = lambda self: self.apply(self._init_weights)
    P = bert.BertPreTrainedModel
    if not hasattr(P, "invert_attention_mask"):  # transformers 4.x ModuleUtilsMixin semantics
        P.invert_attention_mask = lambda self, m: (1.0 - m[:, None, None, :].to(self.dtype)) * torch.finfo(
            self.dtype
        ).min
    if not hasattr(P, "get_head_mask"):
        P.get_head_mask = lambda self, head_mask, n: [None] * n if head_mask is None else head_mask
    return importlib.import_module("ram.models.ram"), bert


class StubTokenizer:
    """Stands in for bert-base-uncased + [DEC]/[ENC]: RAM uses its length and the prompt length."""

    enc_token_id = 2
    bos_token_id = 1
    pad_token_id = 0

    def __len__(self):
        return VOCAB

    def __call__(self, text, **kw):
        return types.SimpleNamespace(input_ids=[0] * (len(text.split()) + 2))


def ram_logits(model, image):
    """generate_tag's path up to the logits it thresholds (what `Ram::forward` computes)."""
    label_embed = torch.nn.functional.relu(model.wordvec_proj(model.label_embed))
    emb = model.image_proj(model.visual_encoder(image))
    atts = torch.ones(emb.size()[:-1], dtype=torch.long)
    tagging = model.tagging_head(
        encoder_embeds=label_embed.unsqueeze(0).repeat(image.shape[0], 1, 1),
        encoder_hidden_states=emb,
        encoder_attention_mask=atts,
        return_dict=False,
        mode="tagging",
    )
    return model.fc(tagging[0]).squeeze(-1)


def file_key(k):
    return k.replace("tagging_head.", "vision_multi.", 1) if k.startswith("tagging_head.") else k


def write_step_fixture(ram_mod, model, image):
    """Two training steps of the tagger as `lion train-tagger` takes them, on the upstream model:
    eval-mode forward (no dropout / drop-path), upstream's AsymmetricLoss summed over tags and
    images, backward, torch AdamW. Step 1 uses RAM's own loss (`model.tagging_loss_function`:
    gamma_neg 7, clip 0.05), step 2 binary cross-entropy (the same class with gamma_neg 0,
    clip 0: the demo tagger's recipe). Writes step.safetensors: `targets`, `loss{1,2}`, and
    `grad{1,2}.KEY` for every parameter that gets a gradient (file key names)."""
    g = torch.Generator().manual_seed(2)
    targets = (torch.rand(image.shape[0], NUM_TAGS, generator=g) < 0.3).float()
    losses = [model.tagging_loss_function, ram_mod.AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    out = {"targets": targets.contiguous()}
    for step, loss_fn in enumerate(losses, start=1):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ram_logits(model, image), targets)
        loss.backward()
        out[f"loss{step}"] = loss.detach().reshape(1).contiguous()
        # every name of a tied parameter (the head shares tensors with the Tag2Text parts), but
        # not those Tag2Text names themselves (not part of the tagger)
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.grad is not None and not name.startswith(("tag_encoder.", "text_decoder.")):
                out[f"grad{step}.{file_key(name)}"] = p.grad.detach().contiguous().clone()
        opt.step()
    save_file(out, os.path.join(OUT, "step.safetensors"))
    n = sum(1 for k in out if k.startswith("grad1."))
    print("step fixture: losses", [float(out[f"loss{i}"]) for i in (1, 2)], "parameters with gradients", n)


def main():
    step_only = "--step-only" in sys.argv[1:]
    ram_mod, bert_mod = import_upstream()
    os.makedirs(OUT, exist_ok=True)
    tmpdir = tempfile.mkdtemp()
    tmp = os.path.join(tmpdir, "med_config.json")
    med = dict(
        architectures=["BertModel"], attention_probs_dropout_prob=0.1, hidden_act="gelu",
        hidden_dropout_prob=0.1, hidden_size=Q2L["hidden_size"], initializer_range=0.02,
        intermediate_size=Q2L["intermediate_size"], layer_norm_eps=1e-12, max_position_embeddings=16,
        model_type="bert", num_attention_heads=4, num_hidden_layers=2, pad_token_id=0,
        type_vocab_size=2, vocab_size=VOCAB, encoder_width=Q2L["hidden_size"], add_cross_attention=True,
    )
    with open(tmp, "w") as f:
        json.dump(med, f)

    real_from_json = bert_mod.BertConfig.from_json_file

    def from_json(path):
        cfg = real_from_json(path)
        if str(path).endswith("q2l_config.json"):
            for k, v in Q2L.items():
                setattr(cfg, k, v)
        return cfg

    ram_mod.BertConfig.from_json_file = staticmethod(from_json)
    # ram.py only accepts image_size 224/384 (it picks a config file by size); build at 224 and let
    # the upstream SwinTransformer class be constructed at 64 px with every other argument as given.
    ram_mod.read_json = lambda path: dict(SWIN, image_res=224)
    swin_cls = ram_mod.SwinTransformer
    ram_mod.SwinTransformer = lambda **kw: swin_cls(**dict(kw, img_size=SWIN["image_res"]))
    ram_mod.init_tokenizer = lambda *a, **k: StubTokenizer()
    tags = os.path.join(tmpdir, "tags.txt")
    with open(tags, "w") as f:
        f.write("\n".join(f"tag{i}" for i in range(NUM_TAGS)))
    # RAM.__init__ reads configs/q2l_config.json and data/ram_tag_list_threshold.txt under
    # CONFIG_PATH: give it a folder with the real q2l config and the first NUM_TAGS thresholds.
    src = os.path.join(os.environ["RAM_SRC"], "ram")
    os.makedirs(os.path.join(tmpdir, "configs"))
    os.makedirs(os.path.join(tmpdir, "data"))
    shutil.copy(os.path.join(src, "configs", "q2l_config.json"), os.path.join(tmpdir, "configs"))
    with open(os.path.join(src, "data", "ram_tag_list_threshold.txt")) as f:
        thresholds = f.read().splitlines()[:NUM_TAGS]
    with open(os.path.join(tmpdir, "data", "ram_tag_list_threshold.txt"), "w") as f:
        f.write("\n".join(thresholds))
    ram_mod.CONFIG_PATH = tmpdir

    torch.manual_seed(0)
    model = ram_mod.RAM(
        med_config=tmp, image_size=224, vit="swin_l", tag_list=tags, tag_list_chinese=tags
    ).eval()
    shutil.rmtree(tmpdir)
    # Random init leaves zero biases, unit LayerNorms, a near-zero relative-position table and a
    # zero label_embed: perturb them so every parameter is tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(0.1 * torch.randn_like(p))
            if "relative_position_bias_table" in name:
                p.normal_(0.0, 1.0)
            if name == "label_embed":
                p.normal_(0.0, 1.0)
            if "image_proj" in name or "wordvec_proj" in name or name.startswith("fc."):
                p.mul_(20.0)  # larger than trunc-normal(0.02) so the head sees non-trivial inputs

    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, SWIN["image_res"], SWIN["image_res"], generator=g)
    if step_only:
        # the committed weights and image, so the step fixture belongs to the other fixtures
        sd = torch.load(os.path.join(OUT, "model.pth"), map_location="cpu")["model"]
        sd = {(k.replace("vision_multi.", "tagging_head.", 1) if k.startswith("vision_multi.") else k): v
              for k, v in sd.items()}
        model.load_state_dict(sd, strict=True)
        from safetensors.torch import load_file
        image = load_file(os.path.join(OUT, "io.safetensors"))["image"]
        write_step_fixture(ram_mod, model, image)
        return
    with torch.no_grad():
        image_embeds = model.visual_encoder(image)
        logits = ram_logits(model, image)
        upstream_tags, _ = model.generate_tag(image)

    sd = {}
    for k, v in model.state_dict().items():
        sd[file_key(k)] = v.contiguous().clone()
    torch.save({"model": sd, "epoch": 0}, os.path.join(OUT, "model.pth"))
    cfg = {
        "swin": {
            "img_size": SWIN["image_res"], "patch_size": 4, "embed_dim": SWIN["embed_dim"],
            "depths": SWIN["depths"], "num_heads": SWIN["num_heads"], "window_size": SWIN["window_size"],
        },
        "num_tags": NUM_TAGS,
        "head": Q2L,
        "upstream_generate_tag": upstream_tags,
        "class_threshold": model.class_threshold.tolist()[:NUM_TAGS],
    }
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    save_file(
        {
            "image": image.contiguous(),
            "image_embeds": image_embeds.contiguous(),
            "logits": logits.contiguous(),
            "probs": torch.sigmoid(logits).contiguous(),
        },
        os.path.join(OUT, "io.safetensors"),
    )
    write_step_fixture(ram_mod, model, image)
    print("keys:", len(sd), "logits", tuple(logits.shape), "embeds", tuple(image_embeds.shape))
    print("upstream generate_tag:", upstream_tags)
    print("written to", OUT)


if __name__ == "__main__":
    main()
