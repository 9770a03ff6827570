"""Reference fixtures for Flan-T5 with LION's mixture of adapters, and for generation.

Writes (all small) to tests/fixtures/t5/:
  config.json, model.safetensors, model.pth
                                            tiny random-init T5ForConditionalGeneration, Flan-T5 style:
                                            gated-gelu FFN, untied lm_head (the exact-erf GELU override
                                            LION applies, `dense_act_fn = "gelu"`, is set by the test)
  config_tied.json, model_tied.safetensors  the same with tie_word_embeddings = true (original T5 head:
                                            lm_head = shared, decoder output scaled by d_model^-0.5)
  (the model files hold every key `state_dict()` writes, the tied aliases of `shared.weight`
  included; model.pth is `torch.save(model.state_dict())`, its aliases sharing one storage)
  lion_adapters.safetensors                 LION adapters (2 adapters + router) for every encoder/decoder FFN of
                                            model.safetensors, with non-trivial (non-zero up_proj) values
  lion1_adapters.safetensors                one adapter per FFN (no router)
  io.safetensors                            a padded batch: input ids/mask, labels (-100 padded, 26 tokens),
                                            and per variant the encoder states, decoder logits and loss
  adapter.safetensors                       a stand-alone AdapterRouter's weights, input and outputs per route
  buckets.safetensors                       relative-position bucket tables (bidirectional/unidirectional)
  generate.json                             greedy and beam-search token ids from transformers' generate

The LION adapter reference below is written independently, following the semantics of upstream
JiuTian-LION `models/lion_adapters.py` (Adapter, AdapterRouter, forward_ffn_t5): the adapter runs on the
PRE-norm FFN input, in parallel with the FFN: out = h + dropout(FFN(RMSNorm(h))) + router(h).

transformers 5.x always ties lm_head to shared; for the untied (Flan-T5) variant the head is untied here
after construction, which reproduces transformers 4.x's untied Flan-T5 (no output scaling).

Run: PY=$(scripts/venv.sh); $PY scripts/fixtures_t5.py
"""
import json
import math
import os
import types

import torch
import torch.nn as nn
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "t5")

VOCAB = 96
EOS = 1
PAD = 0
CFG = dict(
    vocab_size=VOCAB,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    feed_forward_proj="gated-gelu",
    decoder_start_token_id=PAD,
    pad_token_id=PAD,
    eos_token_id=EOS,
)


# ---- LION adapters (reference, after upstream lion_adapters.py semantics) ----
class Adapter(nn.Module):
    def __init__(self, d_model, bottleneck=64):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.down_proj = nn.Linear(d_model, bottleneck)
        self.up_proj = nn.Linear(bottleneck, d_model)
        with torch.no_grad():  # "lora" init
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up_proj.weight)
            nn.init.zeros_(self.down_proj.bias)
            nn.init.zeros_(self.up_proj.bias)

    def forward(self, x):
        return self.up_proj(torch.relu(self.down_proj(x))) * self.scale


class AdapterRouter(nn.Module):
    def __init__(self, d_model, bottleneck=64, num_adapters=2):
        super().__init__()
        self.adapters = nn.ModuleList([Adapter(d_model, bottleneck) for _ in range(num_adapters)])
        if num_adapters > 1:
            self.router_ratio1 = nn.Parameter(torch.tensor([[1.0], [0.0]]).repeat(1, d_model))
            self.router_ratio2 = nn.Parameter(torch.tensor([[0.0], [1.0]]).repeat(1, d_model))
        self.num_adapters = num_adapters
        self.router_idx = None

    def forward(self, x):
        assert self.router_idx in [0, 1]
        out1 = self.adapters[0](x)
        if self.num_adapters == 1:
            return out1
        out2 = self.adapters[1](x)
        return out1 * self.router_ratio1[self.router_idx] + out2 * self.router_ratio2[self.router_idx]


def forward_ffn_lion(self, hidden_states):
    adapted = self.adapter(hidden_states)
    h = self.DenseReluDense(self.layer_norm(hidden_states))
    return hidden_states + self.dropout(h) + adapted


def add_adapters(model, n):
    from transformers.models.t5.modeling_t5 import T5LayerFF

    for m in model.modules():
        if isinstance(m, T5LayerFF):
            m.adapter = AdapterRouter(model.config.d_model, 64, n)
            m.forward = types.MethodType(forward_ffn_lion, m)


def set_route(model, idx):
    for m in model.modules():
        if isinstance(m, AdapterRouter):
            m.router_idx = idx


def perturb_adapters(model, g, up=0.2):
    """Non-trivial adapter values (LoRA init has up_proj = 0, which would test nothing)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter" not in name:
                continue
            if "up_proj" in name or name.endswith("bias"):
                p.copy_(up * torch.randn(p.shape, generator=g))
            elif name.endswith("scale"):
                p.copy_(torch.tensor([0.5 + torch.rand(1, generator=g).item()]))
            elif "router_ratio" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


# ---- models ----
def make_model(tied):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(**{**CFG, "tie_word_embeddings": tied})
    cfg.dense_act_fn = "gelu"  # LION's override (lion_t5.py): exact erf GELU in the gated FFN
    cfg._attn_implementation = "eager"
    model = T5ForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(7 if tied else 3)
    with torch.no_grad():
        if not tied:
            model.lm_head.weight = nn.Parameter(torch.randn(VOCAB, CFG["d_model"], generator=g) * 0.3)
            assert model.lm_head.weight is not model.shared.weight
        # RMSNorm weights are ones at init: perturb so they are tested
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        # bias the model towards EOS so generation finishes at varied lengths
        head = model.shared.weight if tied else model.lm_head.weight
        head[EOS] += 0.6 * model.decoder.final_layer_norm.weight.sign() * (1.0 if not tied else 4.0)
    return model.eval()


def hf_config_json(tied):
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        **CFG,
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "tie_word_embeddings": tied,
    }


def state_dict(model):
    """Everything `state_dict()` writes, tied aliases included (`encoder.` / `decoder.embed_tokens`
    and, when tied, `lm_head` hold `shared.weight`): what real checkpoints carry. Cloned, because
    safetensors stores no shared storage."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (3, 13), generator=g)
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    ids[:, -1] = EOS
    ids[1, 8] = EOS
    ids[2, 4] = EOS
    ids[mask == 0] = PAD
    labels = torch.randint(2, VOCAB, (3, 26), generator=g)
    labels[0, 25] = EOS
    labels[1, 19] = EOS
    labels[1, 20:] = -100
    labels[2, 24] = EOS
    labels[2, 25:] = -100
    return ids, mask, labels


def run(model, ids, mask, labels):
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask, labels=labels)
    return o.encoder_last_hidden_state.contiguous(), o.logits.contiguous(), o.loss.reshape(1)


def buckets():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)[None, :]
    out = {"relative_position": rel[0].to(torch.int64).contiguous()}
    for nb, md in [(32, 128), (8, 20)]:
        for bi in (True, False):
            b = T5Attention._relative_position_bucket(rel, bidirectional=bi, num_buckets=nb, max_distance=md)
            out[f"b{nb}_{md}_{'bi' if bi else 'uni'}"] = b[0].to(torch.int64).contiguous()
    save_file(out, os.path.join(OUT, "buckets.safetensors"))


def adapter_fixture():
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    r = AdapterRouter(16, 64, 2)
    perturb_adapters(nn.ModuleDict({"adapter": r}), g)
    x = torch.randn(2, 5, 16, generator=g)
    out = {f"adapter.{k}": v.detach().contiguous() for k, v in r.state_dict().items()}
    out["x"] = x
    with torch.no_grad():
        for idx in (0, 1):
            r.router_idx = idx
            out[f"out_route{idx}"] = r(x).contiguous()
        r1 = AdapterRouter(16, 64, 1)
        r1.load_state_dict({k: v for k, v in r.state_dict().items() if k.startswith("adapters.0")})
        r1.router_idx = 0
        out["out_single"] = r1(x).contiguous()
    save_file(out, os.path.join(OUT, "adapter.safetensors"))


GEN_INPUTS = [
    [5, 17, 33, 8, 71, 12, 1],
    [44, 3, 90, 27, 1],
    [9, 9, 60, 61, 62, 18, 23, 77, 40, 2, 1],
    [30, 1],
    [88, 14, 52, 6, 39, 70, 1],
    [11, 25, 36, 47, 58, 69, 80, 91, 1],
]
GEN_SETTINGS = [
    ("greedy", dict(num_beams=1, max_new_tokens=20)),
    ("greedy_rep", dict(num_beams=1, max_new_tokens=20, repetition_penalty=1.5, min_length=4)),
    ("beam5_rep", dict(num_beams=5, max_new_tokens=20, repetition_penalty=1.5)),
    ("beam5_rep_lp", dict(num_beams=5, max_new_tokens=16, repetition_penalty=1.5, length_penalty=0.6, min_length=3)),
    ("beam5_rep_early", dict(num_beams=5, max_new_tokens=20, repetition_penalty=1.5, early_stopping=True)),
    ("beam3_never", dict(num_beams=3, max_new_tokens=12, repetition_penalty=1.2, length_penalty=1.5, early_stopping="never")),
]


def generate_cases(model, route=None):
    n = len(GEN_INPUTS)
    t = max(len(x) for x in GEN_INPUTS)
    ids = torch.full((n, t), PAD, dtype=torch.long)
    mask = torch.zeros((n, t), dtype=torch.long)
    for i, x in enumerate(GEN_INPUTS):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    cases = []
    for name, kw in GEN_SETTINGS:
        full = dict(
            do_sample=False,
            use_cache=False,  # transformers 5.24 sizes the cache by num_layers, not num_decoder_layers
            decoder_start_token_id=PAD,
            pad_token_id=PAD,
            eos_token_id=EOS,
            early_stopping=False,
            length_penalty=1.0,
            repetition_penalty=1.0,
            min_length=0,
        )
        full.update(kw)
        with torch.no_grad():
            seqs = model.generate(input_ids=ids, attention_mask=mask, **full)
        outs = []
        for row in seqs.tolist():
            row = row[1:]  # drop decoder_start_token_id
            if EOS in row:
                row = row[: row.index(EOS) + 1]
            outs.append(row)
        ends = sum(1 for o in outs if o and o[-1] == EOS)
        print(f"  {route} {name}: {ends}/{n} end with EOS, lengths {[len(o) for o in outs]}")
        cases.append({"name": name, "route": route, "config": full, "outputs": outs})
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    ids, mask, labels = batch()
    io = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    gen = {"inputs": GEN_INPUTS, "cases": []}
    for tied in (False, True):
        model = make_model(tied)
        suffix = "_tied" if tied else ""
        save_file(state_dict(model), os.path.join(OUT, f"model{suffix}.safetensors"))
        if not tied:
            # as torch.save writes it (an older Flan-T5 pytorch_model.bin): shared storage
            torch.save(model.state_dict(), os.path.join(OUT, "model.pth"))
        with open(os.path.join(OUT, f"config{suffix}.json"), "w") as f:
            json.dump(hf_config_json(tied), f, indent=2)
        enc, logits, loss = run(model, ids, mask, labels)
        io[f"plain{suffix}.encoder"] = enc
        io[f"plain{suffix}.logits"] = logits
        io[f"plain{suffix}.loss"] = loss
        # encoder from embeddings gives the same states
        if not tied:
            io["inputs_embeds"] = model.shared(ids).detach().contiguous()
            gen["cases"] += generate_cases(model)

    for n_adapters, name in ((2, "lion"), (1, "lion1")):
        model = make_model(False)
        add_adapters(model, n_adapters)
        perturb_adapters(model, torch.Generator().manual_seed(5 + n_adapters), up=0.06)
        model.eval()
        # adapters only: the backbone is model.safetensors (as LION loads Flan-T5 + its own checkpoint)
        adapters = {k: v for k, v in state_dict(model).items() if ".adapter." in k}
        save_file(adapters, os.path.join(OUT, f"{name}_adapters.safetensors"))
        routes = (0, 1) if n_adapters == 2 else (0,)
        for r in routes:
            set_route(model, r)
            enc, logits, loss = run(model, ids, mask, labels)
            io[f"{name}.route{r}.encoder"] = enc
            io[f"{name}.route{r}.logits"] = logits
            io[f"{name}.route{r}.loss"] = loss
        if n_adapters == 2:
            set_route(model, 1)
            gen["cases"] += [c for c in generate_cases(model, route=1) if c["name"].startswith("beam5_rep")]

    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(OUT, "io.safetensors"))
    with open(os.path.join(OUT, "generate.json"), "w") as f:
        json.dump(gen, f, indent=1)
    buckets()
    adapter_fixture()
    print("t5 fixtures written to", OUT)


if __name__ == "__main__":
    main()
