"""Reference fixtures for triplet tag-encoder training (lion-train).

Writes tests/fixtures/tagenc/:
  model/  a tiny sentence-transformer folder: the bert-tiny weights and config of
          tests/fixtures/bert-tiny (vocab 99, 2 layers, hidden 32), a 99-token WordPiece
          tokenizer.json, modules.json (Transformer, Pooling, Normalize), 1_Pooling/config.json
          (mean) and sentence_bert_config.json (max_seq_length 40).
  reference.json         the anchor texts of each step and the hyper-parameters.
  reference.safetensors  for steps s = 0, 1, 2: input_ids.s / attention_mask.s (the tokenized
                         anchors), positive.s / negative.s (unit vectors), loss.s and grad.s.<key>
                         for every parameter that gets a gradient; param.<key> after the 3 AdamW
                         steps; loss_p1 / loss_p3: the step-0 loss with p = 1 (margin 0.5) and
                         p = 3 (margin 0.2); loss_sq2 / loss_sq3: the step-0 loss in FaceNet's
                         squared form (distance ** p, margin 1.5 at p = 2 and 0.2 at p = 3,
                         written out from torch.nn.functional.pairwise_distance), and
                         grad_anchor_sq2: the gradient of loss_sq2 on the anchors.

The reference is written independently with transformers building blocks: BertModel (eval mode,
so dropout is off, gradients on) + mean pooling over the attention mask + F.normalize, then
torch.nn.TripletMarginLoss and torch.optim.AdamW over all model parameters (the pooler gets no
gradient, so AdamW skips it).

Run: PY=$(scripts/venv.sh); $PY scripts/fixtures_tagenc.py   (after scripts/fixtures_bert.py)
"""
import json
import os
import shutil

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "tagenc")
MODEL = os.path.join(OUT, "model")

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
DIGITS = list("0123456789")
WORDS = ["dog", "cat", "red", "blue", "sky", "grass", "tree", "car", "circle", "square",
         "shirt", "person", "table", "cup", "road", "park", "ball", "the", "##s", "##ing"]


def vocab():
    toks = SPECIAL + LETTERS + DIGITS + [":", ",", ".", "-"] + ["##" + c for c in LETTERS + DIGITS]
    toks += WORDS
    toks = toks[:99]
    assert len(toks) == 99 and len(set(toks)) == 99, len(toks)
    return toks


def write_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    v = {t: i for i, t in enumerate(vocab())}
    tok = Tokenizer(models.WordPiece(v, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", v["[CLS]"]), ("[SEP]", v["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(path)
    return tok


ANCHORS = [
    ["dog: 0.9311, grass: 0.8125, park: 0.75",
     "red: 0.99, circle: 0.875",
     "person: 0.7, shirt: 0.66, table: 0.61, cup: 0.59, road: 0.52",
     "sky: 1.0"],
    ["blue: 0.95, square: 0.9, ball: 0.51",
     "cat: 0.87",
     "tree: 0.8, road: 0.77, car: 0.76, sky: 0.6",
     "dog: 0.55, cat: 0.54"],
    ["the red car: 0.9",
     "cups: 0.71, tables: 0.7, ringing: 0.6",
     "grass: 0.99, tree: 0.98, park: 0.97, sky: 0.96, person: 0.5",
     "x-ray: 0.5"],
]
HP = dict(lr=1e-3, weight_decay=0.01, beta1=0.9, beta2=0.999, eps=1e-8, margin=1.0, p=2.0)


def squared_triplet(a, pos, neg, margin, p):
    """FaceNet's triplet loss: mean(max(d(a, p)^p - d(a, n)^p + margin, 0)), d as PyTorch's."""
    d_pos = F.pairwise_distance(a, pos, p=p) ** p
    d_neg = F.pairwise_distance(a, neg, p=p) ** p
    return torch.clamp_min(d_pos - d_neg + margin, 0).mean()


def main():
    from transformers import BertConfig, BertModel

    os.makedirs(MODEL, exist_ok=True)
    os.makedirs(os.path.join(MODEL, "1_Pooling"), exist_ok=True)
    tiny = os.path.join(FIX, "bert-tiny")
    shutil.copy(os.path.join(tiny, "config.json"), os.path.join(MODEL, "config.json"))
    shutil.copy(os.path.join(tiny, "model.safetensors"), os.path.join(MODEL, "model.safetensors"))
    tok = write_tokenizer(os.path.join(MODEL, "tokenizer.json"))
    with open(os.path.join(MODEL, "modules.json"), "w") as f:
        json.dump([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ], f, indent=2)
    with open(os.path.join(MODEL, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}, f, indent=2)
    with open(os.path.join(MODEL, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 40, "do_lower_case": False}, f)

    cfg = BertConfig.from_pretrained(MODEL)
    cfg._attn_implementation = "eager"
    model = BertModel(cfg)
    missing, unexpected = model.load_state_dict(load_file(os.path.join(MODEL, "model.safetensors")), strict=False)
    assert not missing and all("position_ids" in k for k in unexpected), (missing, unexpected)
    model.eval()  # dropout off; gradients still flow
    opt = torch.optim.AdamW(model.parameters(), lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]),
                            eps=HP["eps"], weight_decay=HP["weight_decay"])
    loss_fn = torch.nn.TripletMarginLoss(margin=HP["margin"], p=HP["p"])

    def embed(texts):
        enc = tok.encode_batch(texts)
        t = max(len(e.ids) for e in enc)
        ids = torch.zeros(len(texts), t, dtype=torch.long)
        mask = torch.zeros(len(texts), t, dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1), ids, mask

    g = torch.Generator().manual_seed(7)
    out = {}
    for s, texts in enumerate(ANCHORS):
        pos = F.normalize(torch.randn(len(texts), 32, generator=g), dim=1)
        neg = F.normalize(torch.randn(len(texts), 32, generator=g), dim=1)
        a, ids, mask = embed(texts)
        loss = loss_fn(a, pos, neg)
        if s == 0:
            with torch.no_grad():
                out["loss_p1"] = torch.nn.TripletMarginLoss(margin=0.5, p=1)(a, pos, neg).reshape(1)
                out["loss_p3"] = torch.nn.TripletMarginLoss(margin=0.2, p=3)(a, pos, neg).reshape(1)
                out["loss_sq3"] = squared_triplet(a, pos, neg, 0.2, 3).reshape(1)
            a_leaf = a.detach().clone().requires_grad_(True)
            sq = squared_triplet(a_leaf, pos, neg, 1.5, 2)
            sq.backward()
            out["loss_sq2"] = sq.detach().reshape(1)
            out["grad_anchor_sq2"] = a_leaf.grad.detach().clone()
        opt.zero_grad()
        loss.backward()
        out[f"input_ids.{s}"] = ids
        out[f"attention_mask.{s}"] = mask
        out[f"positive.{s}"] = pos
        out[f"negative.{s}"] = neg
        out[f"loss.{s}"] = loss.detach().reshape(1)
        for name, p in model.named_parameters():
            if p.grad is not None:
                out[f"grad.{s}.{name}"] = p.grad.detach().clone()
        opt.step()
        print(f"step {s}: loss {loss.item():.6f}")
    for name, p in model.named_parameters():
        out[f"param.{name}"] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"anchors": ANCHORS, **HP}, f, indent=2)
    print("tagenc fixtures written to", OUT)


if __name__ == "__main__":
    main()
