"""Reference fixtures for the whole LION forward (tests/fixtures/lion/), from upstream's own modules.

The reference model is JiuTian-LION's `LIONT5InstructAdapter` (models/lion_t5.py @7578437), built
the way its __init__ composes it, at the dims of lion_core's `tiny` preset, with random weights.
Its own `encode_img`, `_insert_tags`, `_insert_softTagHint` and `forward` run unchanged; the
logits are taken by re-running forward's body step by step (forward returns only the loss; the
two losses are checked equal).

Upstream code is NOT part of this repository: point LION_UPSTREAM at a checkout of
JiuTian-VL/JiuTian-LION (the folder holding `models/`), e.g.
    git -C <mirror> archive HEAD models | tar -x -C /tmp/lion_upstream
    LION_UPSTREAM=/tmp/lion_upstream PY=$(scripts/venv.sh); $PY scripts/fixtures_lion.py

Shims (imports only, or dims; nothing numerical is changed):
  - modules upstream imports but the forward does not use are stubbed: `icecream`,
    `common.registry`, `models.base_model` (BaseModel = nn.Module + `device`), `ram`;
  - `models.modeling_t5` (HF T5 copied from transformers 4.42.4, only adding a `reduction`
    argument) is replaced by transformers 5.24's T5. transformers 5 always ties lm_head to
    shared: the head is untied after construction (Flan-T5), as scripts/fixtures_t5.py does;
    `dense_act_fn = "gelu"` is LION's own override; eager attention;
  - Qformer.py (transformers 4.x): the helpers transformers 5 dropped are shimmed as in
    scripts/fixtures_vision.py (`apply_chunking_to_forward`, pruning, `transformers.file_utils`,
    `invert_attention_mask`, `get_head_mask`);
  - lion_adapters.FusionAdapter: transformers 5's BertLayer returns a tensor where 4.x returned a
    tuple (upstream indexes `[0]`), so BertLayer is wrapped to return a tuple; attention is set to
    "eager" (upstream ran eager with attention_mask=None, i.e. non-causal; SDPA in transformers 5
    would be causal); its BertConfig gets the tiny intermediate size (upstream: BertConfig default
    3072) and 4 heads (upstream default 16);
  - the ViT is upstream's `eva_vit.VisionTransformer` at the tiny dims (56 px, patch 14, width 32,
    depth 4, 4 heads, MLP 64); upstream indexes the block outputs 38, 28, 18 of 39, which the tiny
    preset scales to 3, 2, 1 (presets.rs `source_layers`): the intermediate list is wrapped to map
    those indices;
  - the Q-Former's BertConfig is built directly (upstream: from_pretrained(bert-base-uncased)),
    vocab 1000 instead of 30523 to keep the fixture small (the Rust test sets the same); the BERT
    tokenizer is replaced by fixed token ids per question (saved in io.safetensors);
  - the T5 tokenizer is tests/fixtures/lion/tokenizer.json (T5-style, `<extra_id_0>` = 199).

Parameters are perturbed after upstream init so that zero-initialised ones (adapter up_proj and
biases, FusionAdapter output denses, LayerNorm/RMSNorm weights, router ratios) are tested.

Our own soft prompts (lion_core prompt.rs), on top of the same model (no upstream counterpart):
  dynamic: the `<extra_id_0>` row := dynamic_prompt_projection(tag_embedding) (Linear 384 -> d)
  gated k=2: two placeholders; slot j := [j == 0] soft_prompt_hint
             + dynamic_prompt_gate[j] * dynamic_prompt_projection(tag_embedding)[j*d:(j+1)*d]

Writes: model.safetensors (upstream key names, every key `state_dict()` writes, the tied aliases
of `t5_model.shared.weight` included; static prompt), prompt_dynamic.safetensors,
prompt_gated.safetensors (the extra keys), io.safetensors (inputs and outputs;
`trunc.*`: a long prompt truncated as upstream's tokenizers do).
"""
import os
import sys
import types
from functools import partial

import torch
import torch.nn as nn
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "lion")
TOKENIZER = os.path.join(OUT, "tokenizer.json")

# lion_core::presets::preset("tiny", Some(PromptKind::Static)), except QF_VOCAB (see above)
IMG, PATCH, VIT_W, VIT_DEPTH, VIT_HEADS, VIT_MLP = 56, 14, 32, 4, 4, 64
QF_VOCAB, QF_H, QF_LAYERS, QF_HEADS, QF_FF, QUERIES = 1000, 32, 2, 4, 64, 4
AG_HEADS, AG_FF, AG_PROJ = 4, 48, 128
T5 = dict(vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
          num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
          dropout_rate=0.1, layer_norm_epsilon=1e-6, initializer_factor=1.0,
          feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0,
          eos_token_id=1, tie_word_embeddings=False)
D = T5["d_model"]
TAG_DIM = 384
LAYER_MAP = {38: VIT_DEPTH - 1, 28: 2, 18: 1}  # presets.rs source_layers(4) = [3, 2, 1]


def save(tensors, name):
    # cloned: safetensors stores no shared storage (tied aliases become separate equal tensors)
    save_file({k: (v.detach().float() if v.is_floating_point() else v).contiguous().clone()
               for k, v in tensors.items()}, os.path.join(OUT, name))


def stub(name, **attrs):
    m = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(m, k, v)
    sys.modules[name] = m
    return m


def import_upstream(path):
    import transformers
    import transformers.modeling_utils as mu
    from transformers.models.bert import modeling_bert
    from transformers.models.t5 import modeling_t5

    # transformers 4.x helpers Qformer.py imports (as in fixtures_vision.py)
    for n in ["apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"]:
        if not hasattr(mu, n):
            setattr(mu, n, (lambda fn, chunk, dim, *xs: fn(*xs)) if n.startswith("apply") else None)
    try:
        import transformers.file_utils  # noqa: F401
    except ImportError:
        import transformers.utils as tu
        sys.modules["transformers.file_utils"] = tu

    class TupleBertLayer(modeling_bert.BertLayer):
        def forward(self, *a, **k):
            o = super().forward(*a, **k)
            return o if isinstance(o, tuple) else (o,)

    transformers.BertLayer = TupleBertLayer
    stub("icecream", ic=lambda *a: a)
    stub("common")
    stub("common.registry", registry=types.SimpleNamespace(register_model=lambda n: (lambda c: c)))

    class BaseModel(nn.Module):
        @property
        def device(self):
            return list(self.parameters())[0].device

    pkg = stub("models")
    pkg.__path__ = [os.path.join(path, "models")]
    stub("models.base_model", BaseModel=BaseModel)
    stub("models.modeling_t5", T5Config=modeling_t5.T5Config,
         T5ForConditionalGeneration=modeling_t5.T5ForConditionalGeneration,
         T5LayerFF=modeling_t5.T5LayerFF)
    stub("ram", get_transform=None)
    stub("ram.models", ram=None)
    import models.eva_vit as eva_vit
    import models.lion_adapters as lion_adapters
    import models.lion_t5 as lion_t5
    import models.Qformer as Qformer

    Qformer.BertPreTrainedModel.init_weights = lambda self: None  # re-initialised below

    def invert_attention_mask(self, mask):
        e = mask[:, None, None, :].to(self.dtype)
        return (1.0 - e) * torch.finfo(self.dtype).min

    Qformer.BertModel.invert_attention_mask = invert_attention_mask
    Qformer.BertModel.get_head_mask = lambda self, hm, n, *a: [None] * n
    return eva_vit, lion_adapters, lion_t5, Qformer


class FixedBertTokenizer:
    """Stands in for BertTokenizer(bert-base-uncased): fixed ids per question, padding 'longest'."""

    def __init__(self, table):
        self.table = table

    def __call__(self, texts, **kw):
        from transformers import BatchEncoding

        rows = [self.table[t] for t in texts]
        n = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})


def build(eva_vit, lion_adapters, lion_t5, Qformer):
    import transformers
    from transformers import T5TokenizerFast
    from transformers.models.bert.modeling_bert import BertOutput, BertSelfOutput

    torch.manual_seed(0)
    L = lion_t5.LIONT5InstructAdapter
    m = L.__new__(L)
    nn.Module.__init__(m)
    # __init__'s plain attributes
    m.visual_input = "ALL"
    m.enable_semantic_tags = True
    m.max_txt_len = 128
    m.max_output_txt_len = 128
    m.boost_lr_scale = 1
    m.ram_model = None

    # ViT (create_eva_vit_g at tiny dims); upstream's 38/28/18 map to the tiny blocks
    vit = eva_vit.VisionTransformer(
        img_size=IMG, patch_size=PATCH, use_mean_pooling=False, embed_dim=VIT_W, depth=VIT_DEPTH,
        num_heads=VIT_HEADS, mlp_ratio=VIT_MLP / VIT_W, qkv_bias=True, drop_path_rate=0.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6))

    class Layers(list):
        def __getitem__(self, i):
            return list.__getitem__(self, LAYER_MAP[i])

    orig = vit.forward

    def forward(x, return_intermediate=False):
        out, inter = orig(x, return_intermediate=True)
        return (out, Layers(inter)) if return_intermediate else out

    vit.forward = forward
    m.visual_encoder = vit.eval()

    # _init_llm at tiny dims
    m.t5_tokenizer = T5TokenizerFast(tokenizer_file=TOKENIZER, truncation_side="left")
    m.t5_output_tokenizer = T5TokenizerFast(tokenizer_file=TOKENIZER, truncation_side="right")
    cfg = lion_t5.T5Config(**T5)
    cfg.dense_act_fn = "gelu"
    cfg._attn_implementation = "eager"
    t5 = lion_t5.T5ForConditionalGeneration(cfg)
    t5.lm_head.weight = nn.Parameter(torch.randn(T5["vocab_size"], D) * 0.3)  # untied (Flan-T5)
    lion_adapters.set_adapter_t5(t5, D, n=2, bottleneck=64)
    m.t5_model = t5.eval()

    # Q-Former
    qcfg = Qformer.BertConfig(vocab_size=QF_VOCAB, hidden_size=QF_H, num_hidden_layers=QF_LAYERS,
                              num_attention_heads=QF_HEADS, intermediate_size=QF_FF)
    lion_t5.BertConfig = types.SimpleNamespace(from_pretrained=lambda name: qcfg)
    m.Qformer, m.query_tokens = m._init_Qformer("bert-tiny", QUERIES, VIT_W)
    m.Qformer.cls = None
    m.Qformer.apply(m.Qformer._init_weights)
    m.t5_proj = nn.Linear(QF_H, D)
    m.ln_vision = lion_t5.LayerNorm(VIT_W)

    # vision aggregator
    m.ln_adapter = lion_t5.LayerNorm(VIT_W)
    m.adapter_proj = nn.Sequential(nn.Linear(VIT_W, VIT_W * 4), nn.GELU(),
                                   nn.Linear(VIT_W * 4, D))
    assert VIT_W * 4 == AG_PROJ
    lion_adapters.BertConfig = partial(transformers.BertConfig, intermediate_size=AG_FF)
    m.fusion_adapter = lion_adapters.FusionAdapter(num_blocks=2, dim=VIT_W, num_heads=AG_HEADS)
    m.fusion_adapter.config._attn_implementation = "eager"
    assert isinstance(m.fusion_adapter.blocks[0].output, BertOutput)
    assert isinstance(m.fusion_adapter.blocks[0].attention.output, BertSelfOutput)

    # semantic tags
    m.tag_softPrompt_id = m.t5_tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert m.tag_softPrompt_id == 199
    m.tag_prompt = ("According to <extra_id_0>, you are allowed to use or partially use the "
                    "following tags: [{}]. ")
    m.soft_prompt_hint = nn.Parameter(torch.zeros(D))
    m.soft_prompt_hint.data.normal_(mean=0.0, std=cfg.initializer_factor)
    m.eval()

    # perturb: every parameter moves, zero-initialised ones become non-trivial
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        zero_before = []
        for name, p in m.named_parameters():
            if p.abs().max() == 0:
                zero_before.append(name)
            if "up_proj" in name or ("adapter" in name and name.endswith("bias")):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("adapter.adapters.0.scale") or name.endswith("adapters.1.scale"):
                p.copy_(torch.tensor([0.5 + torch.rand(1, generator=g).item()]))
            elif "router_ratio" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif "fusion_adapter" in name and "output.dense" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        assert any("up_proj" in n for n in zero_before)
        assert any("fusion_adapter" in n and "output.dense" in n for n in zero_before)
        for name, p in m.named_parameters():
            assert p.abs().max() > 0, name
    return m


def reference_forward(m, samples, set_router_idx, prompt_rows=None):
    """forward()'s body (lion_t5.py L303-343) with the outputs kept. `prompt_rows(ids, embeds)`
    replaces `_insert_softTagHint` for our own soft prompts."""
    img_embeds, img_atts = m.encode_img(samples["image"], samples["question"])
    prompt = m._insert_tags(samples, samples["question"])
    input_tokens = m.t5_tokenizer(prompt, padding="longest", truncation=True,
                                  max_length=m.max_txt_len, return_tensors="pt")
    output_tokens = m.t5_output_tokenizer(samples["answer"], padding="longest", truncation=True,
                                          max_length=m.max_output_txt_len, return_tensors="pt")
    targets = output_tokens.input_ids.masked_fill(
        output_tokens.input_ids == m.t5_tokenizer.pad_token_id, -100)
    text_embeds = m.t5_model.encoder.embed_tokens(input_tokens.input_ids)
    if prompt_rows is None:
        text_embeds = m._insert_softTagHint(samples, input_tokens, text_embeds)
    else:
        text_embeds = prompt_rows(input_tokens.input_ids, text_embeds)
    input_embeds = torch.cat([img_embeds, text_embeds], dim=1)
    encoder_atts = torch.cat([img_atts, input_tokens.attention_mask], dim=1)
    set_router_idx(m.t5_model, int(samples["category"][0] != "region_level"))
    out = m.t5_model(inputs_embeds=input_embeds, attention_mask=encoder_atts,
                     decoder_attention_mask=output_tokens.attention_mask, return_dict=True,
                     labels=targets)
    return dict(visual=img_embeds, prompt_ids=input_tokens.input_ids,
                prompt_mask=input_tokens.attention_mask, labels=targets,
                encoder_embeds=input_embeds, encoder_mask=encoder_atts,
                logits=out.logits, loss=out.loss.reshape(1))


def main():
    path = os.environ.get("LION_UPSTREAM")
    if not path:
        sys.exit("set LION_UPSTREAM to a JiuTian-LION checkout (the folder holding models/)")
    eva_vit, lion_adapters, lion_t5, Qformer = import_upstream(path)
    m = build(eva_vit, lion_adapters, lion_t5, Qformer)

    g = torch.Generator().manual_seed(5)
    questions = ["what is in the picture?", "where is the dog?"]
    qf_ids = {q: torch.randint(1, QF_VOCAB, (n,), generator=g).tolist()
              for q, n in zip(questions, [7, 4])}
    m.bert_tokenizer = FixedBertTokenizer(qf_ids)
    pixel_values = torch.randn(2, 3, IMG, IMG, generator=g)
    tag_embedding = torch.randn(2, TAG_DIM, generator=g)
    base = dict(image=pixel_values, question=questions, tags=["cat, dog, sky", "dog"],
                answer=["a cat and a dog under the sky", "in the park"])
    qf = m.bert_tokenizer(questions)
    io = {"pixel_values": pixel_values, "qformer_input_ids": qf["input_ids"],
          "qformer_attention_mask": qf["attention_mask"], "tag_embedding": tag_embedding}

    with torch.no_grad():
        # the Q-Former and aggregator outputs on their own, for the dump / debugging
        x, inter = m.visual_encoder(pixel_values, return_intermediate=True)
        io["vit_block3"], io["vit_block2"], io["vit_block1"] = inter[38], inter[28], inter[18]
        for route in ["region_level", "image_level"]:
            samples = dict(base, category=[route, route])
            ref = reference_forward(m, samples, lion_adapters.set_router_idx)
            up = m.forward(samples)["loss"]  # upstream's own forward
            assert (up - ref["loss"]).abs().item() < 1e-6, (up, ref["loss"])
            for k, v in ref.items():
                if k in ("visual", "prompt_ids", "prompt_mask", "labels") and k in io:
                    assert torch.equal(io[k], v)
                    continue
                io[k if k in ("visual", "prompt_ids", "prompt_mask", "labels")
                   else f"{route}.{k}"] = v
            print(f"{route}: loss {ref['loss'].item():.6f}")
        assert not torch.allclose(io["region_level.logits"], io["image_level.logits"], atol=1e-3)

        # unfiltered, as upstream's state_dict() writes it: t5_model.{encoder,decoder}.
        # embed_tokens.weight are the tied aliases of t5_model.shared.weight
        sd = m.state_dict()
        assert sd["t5_model.encoder.embed_tokens.weight"] is not None
        save(sd, "model.safetensors")

        # our own soft prompts on the same model
        pid = m.tag_softPrompt_id
        dyn = nn.Linear(TAG_DIM, D)
        gated = nn.Linear(TAG_DIM, 2 * D)
        gate = torch.randn(2, generator=g)

        def dynamic_rows(ids, embeds):
            e = embeds.clone()
            rows = dyn(tag_embedding)
            for b in range(ids.shape[0]):
                pos = (ids[b] == pid).nonzero().flatten()
                assert len(pos) == 1
                e[b, pos[0]] = rows[b]
            return e

        def gated_rows(ids, embeds):
            e = embeds.clone()
            proj = gated(tag_embedding).reshape(-1, 2, D)
            for b in range(ids.shape[0]):
                pos = (ids[b] == pid).nonzero().flatten()
                assert len(pos) == 2
                for j, p in enumerate(pos):
                    e[b, p] = (m.soft_prompt_hint if j == 0 else 0) + gate[j] * proj[b, j]
            return e

        samples = dict(base, category=["image_level"] * 2)
        ref = reference_forward(m, samples, lion_adapters.set_router_idx, dynamic_rows)
        io["dynamic.logits"], io["dynamic.loss"] = ref["logits"], ref["loss"]
        save({"dynamic_prompt_projection.weight": dyn.weight,
              "dynamic_prompt_projection.bias": dyn.bias}, "prompt_dynamic.safetensors")

        m.tag_prompt = m.tag_prompt.replace("<extra_id_0>", "<extra_id_0> <extra_id_0>")
        ref = reference_forward(m, samples, lion_adapters.set_router_idx, gated_rows)
        io["gated.prompt_ids"], io["gated.prompt_mask"] = ref["prompt_ids"], ref["prompt_mask"]
        io["gated.logits"], io["gated.loss"] = ref["logits"], ref["loss"]
        save({"dynamic_prompt_projection.weight": gated.weight,
              "dynamic_prompt_projection.bias": gated.bias,
              "dynamic_prompt_gate": gate}, "prompt_gated.safetensors")
        assert not torch.allclose(io["dynamic.logits"], io["image_level.logits"], atol=1e-3)
        assert not torch.allclose(io["gated.logits"], io["image_level.logits"], atol=1e-3)
    # truncation of long texts to 24 tokens: the encoder text loses its head (left), the target
    # its tail (right); `</s>` is kept
    long = [m.tag_prompt.format("cat, dog, sky, grass, tree, a red car") + questions[0]]
    io["trunc.left_ids"] = m.t5_tokenizer(long, truncation=True, max_length=24,
                                          return_tensors="pt").input_ids
    io["trunc.right_ids"] = m.t5_output_tokenizer(long, truncation=True, max_length=24,
                                                  return_tensors="pt").input_ids
    save(io, "io.safetensors")
    print("written:", sorted(io))


if __name__ == "__main__":
    main()
