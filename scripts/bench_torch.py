"""PyTorch eager side of `lion bench`: the same stages, configs, weights and inputs.

`lion bench --prepare-only --dir DIR` (or a full `lion bench`) writes DIR/setup.json, the random
checkpoint DIR/t5.safetensors (HF T5 keys + LION adapters) and DIR/inputs.safetensors. This script
builds transformers' T5ForConditionalGeneration from the same config (exact-erf gated GELU, untied
head), adds LION's adapters (the reference of scripts/fixtures_t5.py), loads the checkpoint strictly
and times the same stages with the same warm-up/repeat scheme, printing a JSON report of the same
schema as `lion bench --json`. The vision and end-to-end stages (vit, qformer, aggregator,
caption_e2e, caption_e2e_batch) load DIR/vision.safetensors (LION keys) strictly into timm's Eva,
the Q-Former reference of scripts/fixtures_vision.py and transformers BertLayers (the aggregator),
and give T5's generate the same [Q-Former | aggregator | prompt] embeddings as LionModel::generate.
`--compare` also compares both sides' `check` samples (output values, generated token ids).

Run:      PY=$(scripts/venv.sh); $PY scripts/bench_torch.py DIR [--json OUT] [--threads N] [--device cuda]
          (--device: where the models and inputs go, `cpu` by default; on a GPU each timing waits for
          the device, torch.cuda.synchronize, as `lion bench --device cuda` does)
Compare:  $PY scripts/bench_torch.py --compare OUTDIR   (lion_*.json vs torch_*.json in OUTDIR,
          medians over rounds; see scripts/bench.sh)
"""
import argparse
import glob
import json
import os
import statistics
import sys
import time
import warnings

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def load_avg():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return None


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# Where the models and inputs live (--device); a CUDA device is synchronised before every clock read.
DEVICE = "cpu"


def dev():
    import torch
    return torch.device(DEVICE)


def sync():
    if DEVICE.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def time_runs(repeats, f):
    f()  # warm-up
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def stage(name, runs):
    return {"name": name, "runs_s": runs, "median_s": statistics.median(runs), "peak_rss_mib": peak_mib(),
            "parts_s": {}}


def with_flops(st, flop, gemm):
    rate = flop / st["median_s"] / 1e9
    st["gflop"] = flop / 1e9
    st["gflops"] = rate
    if gemm:
        st["frac_of_gemm"] = rate / gemm
    return st


def encoder_flops(c, b, s):
    d, f, inner = c["d_model"], c["d_ff"], c["num_heads"] * c["d_kv"]
    a = c.get("adapter") or {}
    r = a.get("bottleneck", 0) * a.get("num_adapters", 0)
    return c["num_layers"] * (b * s * (8 * d * inner + 6 * d * f + 4 * d * r) + 4 * b * s * s * inner)


def decode_step_flops(c, n, past, s):
    d, f, inner = c["d_model"], c["d_ff"], c["num_heads"] * c["d_kv"]
    a = c.get("adapter") or {}
    r = a.get("bottleneck", 0) * a.get("num_adapters", 0)
    k = past + 1
    per = n * (8 * d * inner + 4 * k * inner + 4 * d * inner + 4 * s * inner + 6 * d * f + 4 * d * r)
    layers = c.get("num_decoder_layers") or c["num_layers"]
    return per * layers + 2 * n * d * c["vocab_size"]


def decode_step_weight_bytes(c, block, dense):
    """Weight bytes one decoder step reads, as the Rust side's `decode_step_weight_bytes`."""
    d, f, inner = c["d_model"], c["d_ff"], c["num_heads"] * c["d_kv"]
    a = c.get("adapter") or {}
    r = a.get("bottleneck", 0) * a.get("num_adapters", 0)
    layers = c.get("num_decoder_layers") or c["num_layers"]
    return ((6 * d * inner + 3 * d * f) * block + 2 * d * r * 4) * layers + d * c["vocab_size"] * dense


def with_bytes(st, nbytes, stream):
    rate = nbytes / st["median_s"] / 1e9
    st["gbytes"] = nbytes / 1e9
    st["gbps"] = rate
    if stream:
        st["frac_of_stream"] = rate / stream
    return st


# transformers >= 5.2x renamed `past_key_values` to `cache` (argument and output)
CACHE_KW = "cache"


def cache_of(out):
    global CACHE_KW
    if getattr(out, "cache", None) is not None:
        return out.cache
    CACHE_KW = "past_key_values"
    return out.past_key_values


def tag_texts(batch):
    words = ["person", "shirt", "table", "cup", "dog", "grass", "sky", "tree", "car", "road",
             "building", "window", "plate", "food", "man", "woman"]
    return [", ".join(f"{words[(i * 7 + j * 3) % 16]}: 0.{9999 - (i * 131 + j * 977) % 5000}"
                      for j in range(5 + i % 2)) for i in range(batch)]


def build_model(setup, path):
    import torch
    import torch.nn as nn
    from safetensors.torch import load_file
    from transformers import T5Config, T5ForConditionalGeneration
    from fixtures_t5 import add_adapters, set_route

    c = setup["t5"]
    cfg = T5Config(vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"],
                   num_layers=c["num_layers"], num_decoder_layers=c.get("num_decoder_layers"),
                   num_heads=c["num_heads"],
                   relative_attention_num_buckets=c["relative_attention_num_buckets"],
                   relative_attention_max_distance=c["relative_attention_max_distance"],
                   dropout_rate=c["dropout_rate"], layer_norm_epsilon=c["layer_norm_epsilon"],
                   feed_forward_proj=c["feed_forward_proj"], tie_word_embeddings=False,
                   decoder_start_token_id=c.get("decoder_start_token_id") or 0,
                   pad_token_id=c["pad_token_id"], eos_token_id=c["eos_token_id"])
    cfg.dense_act_fn = "gelu"  # LION: exact erf GELU in the gated FFN
    model = T5ForConditionalGeneration(cfg)
    # transformers 5 ties lm_head to shared; Flan-T5 has its own head (see fixtures_t5.py)
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    a = c.get("adapter")
    if a:
        add_adapters(model, a["num_adapters"])
    sd = load_file(path)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("embed_tokens.weight")]
    if missing or unexpected:
        raise SystemExit(f"checkpoint mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    set_route(model, 1)
    return model.eval().to(dev())


def build_vision(setup, path, dtype):
    """The LION vision side from `vision.safetensors` (LION keys), loaded strictly into the
    references of scripts/fixtures_vision.py at the setup's sizes: timm's Eva as the EVA ViT, the
    plain-torch Q-Former (after LAVIS/LION Qformer.py), and the aggregator as
    lion_adapters.FusionAdapter builds it (transformers BertLayers, eager, unmasked) + ln_adapter +
    adapter_proj. Returns (vit_layers, layers, qformer, aggregator, sources) as callables."""
    import torch
    from safetensors.torch import load_file

    import fixtures_vision as fv

    lc = setup["lion"]
    v, q, a = lc["vit"], lc["qformer"], lc["aggregator"]
    sd = load_file(path)
    used = set()

    def load(module, prefixes, strip="", ignore=()):
        want = {k[len(strip):]: t for k, t in sd.items() if k.startswith(prefixes)}
        missing, unexpected = module.load_state_dict(want, strict=False)
        missing = [k for k in missing if not k.endswith(ignore)] if ignore else missing
        if missing or unexpected:
            raise SystemExit(f"vision.safetensors {prefixes}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        used.update(strip + k for k in want)
        return module.eval().to(device=dev(), dtype=dtype)

    vit = load(fv.make_eva(v["img_size"], v["patch_size"], v["width"], v["depth"], v["num_heads"], v["mlp_dim"],
                           v["layer_norm_eps"]), ("visual_encoder.",), strip="visual_encoder.",
               ignore=("norm.weight", "norm.bias"))  # timm's final norm is not LAVIS's
    # LionConfig::vit_layers: the last block (Q-Former input), then the aggregator's sources
    layers = [v["depth"] - 1] + [l for l in a["source_layers"] if l != v["depth"] - 1]
    b = q["bert"]
    qcfg = dict(vocab=b["vocab_size"], hidden=b["hidden_size"], layers=b["num_hidden_layers"],
                heads=b["num_attention_heads"], inter=b["intermediate_size"], max_pos=b["max_position_embeddings"],
                freq=q["cross_attention_freq"], queries=q["num_query_token"], enc_width=q["encoder_width"],
                d_model=q["d_model"], eps=b["layer_norm_eps"], ln_eps=q["ln_vision_eps"])
    qf = load(fv.QFormerRef(qcfg), ("Qformer.", "query_tokens", "ln_vision.", "t5_proj."), ignore=("position_ids",))
    qf.ln_vision.float()  # LAVIS's LayerNorm runs in f32 whatever the model's dtype
    agg = load(fv.make_aggregator(a["width"], a["num_heads"], a["intermediate_size"], a["proj_hidden"], a["d_model"],
                                  a["num_blocks"], a["layer_norm_eps"], a["ln_adapter_eps"]),
               ("fusion_adapter.", "ln_adapter.", "adapter_proj."))
    left = set(sd) - used
    if left:
        raise SystemExit(f"vision.safetensors: unused keys {sorted(left)[:5]}")
    no_text = torch.zeros(1, 0, dtype=torch.long, device=dev())

    def qformer(vision):
        n = vision.shape[0]
        # The reference runs ln_vision (f32) on `vision.float()`, as LAVIS does; in bf16 the rest
        # runs under autocast, as upstream's `maybe_autocast` (matmuls in bf16).
        with torch.autocast(device_type=dev().type, dtype=torch.bfloat16,
                            enabled=dtype == torch.bfloat16):
            out = qf(vision, no_text.expand(n, 0), no_text.expand(n, 0))[1]
        return out.to(dtype)

    sources = lambda outs: [outs[layers.index(l)] for l in a["source_layers"]]
    return (lambda px: fv.eva_blocks(vit, px, layers)), layers, qformer, \
        (lambda src: fv.aggregator_forward(agg, src[0], src[1:])[1]), sources


def check_sample(t, n=64):
    """bench.rs check_sample: every (len / n)-th value of the flattened tensor, n of them."""
    v = t.detach().float().flatten()
    stride = max(v.numel() // n, 1)
    return [float(x) for x in v[::stride][:n]]


def vision_stages(setup, dir_, model, inputs, gemm, reps, dtype):
    import torch

    wants = lambda name: not setup.get("stages") or name in setup["stages"]
    names = ["vit", "qformer", "aggregator", "caption_e2e", "caption_e2e_batch"]
    if not setup.get("lion") or not any(wants(n) for n in names):
        return []
    vit_layers, layers, qformer, aggregator, sources = build_vision(setup, os.path.join(dir_, "vision.safetensors"),
                                                                    dtype)
    lc = setup["lion"]
    v, q, a = lc["vit"], lc["qformer"], lc["aggregator"]
    px, prompt_ids = inputs["pixel_values"].to(dtype), inputs["prompt_ids"].long()
    px1 = px[:1]
    n_tok = (v["img_size"] // v["patch_size"]) ** 2 + 1
    out = []
    with torch.inference_mode():
        outs = vit_layers(px1)
        if wants("vit"):
            reset_peak()
            st = with_flops(stage("vit", time_runs(reps, lambda: vit_layers(px1))),
                            vit_flops(v, max(layers) + 1, 1), gemm)
            st["check"] = {f"block{l}": check_sample(t) for l, t in zip(layers, outs)}
            out.append(st)
        if wants("qformer"):
            reset_peak()
            st = with_flops(stage("qformer", time_runs(reps, lambda: qformer(outs[0]))),
                            qformer_flops(q, n_tok, 1), gemm)
            st["check"] = {"output": check_sample(qformer(outs[0]))}
            out.append(st)
        if wants("aggregator"):
            reset_peak()
            src = sources(outs)
            st = with_flops(stage("aggregator", time_runs(reps, lambda: aggregator(src))),
                            aggregator_flops(a, n_tok, 1), gemm)
            st["check"] = {"output": check_sample(aggregator(src))}
            out.append(st)
        # LionModel::generate: [Q-Former queries | aggregator tokens | embedded prompt], mask all ones
        gen = dict(num_beams=setup["beams"], max_new_tokens=setup["new_tokens"], min_new_tokens=setup["new_tokens"],
                   repetition_penalty=setup["repetition_penalty"], length_penalty=1.0, early_stopping=False,
                   do_sample=False)

        def caption(rows):
            o = vit_layers(px[:rows])
            visual = torch.cat([qformer(o[0]), aggregator(sources(o))], 1)
            embeds = torch.cat([visual, model.shared(prompt_ids[:rows])], 1)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=dev())
            ids = model.generate(inputs_embeds=embeds, attention_mask=mask, **gen)
            assert ids.shape[1] == 1 + setup["new_tokens"], ids.shape
            return ids[:, 1:]  # without the decoder start token, as ours

        for name, rows in [("caption_e2e", 1), ("caption_e2e_batch", setup["batch"])]:
            if not wants(name):
                continue
            reset_peak()
            st = stage(name, time_runs(reps, lambda: caption(rows)))
            st["items_per_s"] = rows / st["median_s"]
            st["check"] = {f"tokens{i}": [float(x) for x in row] for i, row in enumerate(caption(rows))}
            o = vit_layers(px[:rows])
            visual = torch.cat([qformer(o[0]), aggregator(sources(o))], 1)
            embeds = torch.cat([visual, model.shared(prompt_ids[:rows])], 1)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=dev())
            st["check"]["encoder"] = check_sample(
                model.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state)
            out.append(st)
    return out


def vit_flops(v, blocks, b):
    """bench.rs vit_flops."""
    n = (v["img_size"] // v["patch_size"]) ** 2 + 1
    d, m = v["width"], v["mlp_dim"]
    patch = 2.0 * (n - 1) * d * v["in_chans"] * v["patch_size"] ** 2
    return b * (patch + blocks * (8.0 * n * d * d + 4.0 * n * n * d + 4.0 * n * d * m))


def qformer_flops(q, n, b):
    """bench.rs qformer_flops."""
    h, i, e = q["bert"]["hidden_size"], q["bert"]["intermediate_size"], q["encoder_width"]
    nq = q["num_query_token"]
    total = 2.0 * nq * h * q["d_model"]
    for l in range(q["bert"]["num_hidden_layers"]):
        total += 8.0 * nq * h * h + 4.0 * nq * nq * h + 4.0 * nq * h * i
        if l % q["cross_attention_freq"] == 0:
            total += 4.0 * nq * h * h + 4.0 * n * e * h + 4.0 * nq * n * h
    return b * total


def aggregator_flops(a, n, b):
    """bench.rs aggregator_flops."""
    w, i = a["width"], a["intermediate_size"]
    per_block = 2.0 * (8.0 * n * w * w + 4.0 * n * n * w) + 4.0 * n * w * i
    proj = 2.0 * n * w * a["proj_hidden"] + 2.0 * n * a["proj_hidden"] * a["d_model"]
    return b * (a["num_blocks"] * per_block + proj)


def run(dir_, threads, dtype_name=None):
    """dtype_name: f32 or bf16 for the inference stages (default: setup.json's `dtype`). bf16 is
    PyTorch's own best: the whole module in bfloat16 (weights and activations; oneDNN / AMX or
    AVX512-BF16 kernels where the CPU has them). The training stages run f32 either way, as ours."""
    import copy

    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    load_before = load_avg()
    setup = json.load(open(os.path.join(dir_, "setup.json")))
    c = setup["t5"]
    dtype_name = dtype_name or setup.get("dtype", "f32")
    dt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = build_model(setup, os.path.join(dir_, "t5.safetensors"))
    # the inference stages' model (the training step keeps the f32 one)
    imodel = model if dt == torch.float32 else copy.deepcopy(model).to(dt)
    inputs = {k: v.to(dev()) for k, v in load_file(os.path.join(dir_, "inputs.safetensors")).items()}
    embeds, labels = inputs["embeds"], inputs["labels"].long()
    iembeds = embeds.to(dt)
    s = setup["visual_tokens"] + setup["text_tokens"]
    reps = setup["repeats"]
    wants = lambda name: not setup.get("stages") or name in setup["stages"]
    stages, gemm = [], None
    gen = dict(num_beams=setup["beams"], max_new_tokens=setup["new_tokens"], min_new_tokens=setup["new_tokens"],
               repetition_penalty=setup["repetition_penalty"], length_penalty=1.0, early_stopping=False,
               do_sample=False)
    x1 = iembeds[:1]
    with torch.inference_mode():
        if wants("gemm"):
            reset_peak()
            n = setup["gemm_n"]
            a, b = torch.randn(n, n, device=dev()).to(dt), torch.randn(n, n, device=dev()).to(dt)
            st = with_flops(stage("gemm", time_runs(max(reps, 5), lambda: a @ b)), 2.0 * n ** 3, None)
            gemm = st["gflops"]
            stages.append(st)
        stream = None
        if wants("stream") and dev().type == "cpu":
            reset_peak()
            n = setup.get("stream_mib", 1024) * (1 << 20) // 4
            buf = (torch.arange(n) % 7).to(torch.float32)
            st = with_bytes(stage("stream", time_runs(max(reps, 5), lambda: buf.sum())), n * 4.0, None)
            stream = st["gbps"]
            del buf
            stages.append(st)
        if wants("t5_encoder"):
            reset_peak()
            runs = time_runs(reps, lambda: imodel.encoder(inputs_embeds=x1))
            stages.append(with_flops(stage("t5_encoder", runs), encoder_flops(c, 1, s), gemm))
        if wants("decode_token"):
            reset_peak()
            states = imodel.encoder(inputs_embeds=x1).last_hidden_state.repeat(setup["beams"], 1, 1)
            ids = torch.zeros(setup["beams"], 1, dtype=torch.long, device=dev())
            steps = setup["new_tokens"]
            per = []
            for rep in range(reps + 1):
                # first step (cache set-up, cross K/V) untimed, as on the Rust side
                out = imodel(encoder_outputs=(states,), decoder_input_ids=ids, use_cache=True)
                pkv = cache_of(out)
                sync()
                t0 = time.perf_counter()
                for _ in range(steps - 1):
                    out = imodel(encoder_outputs=(states,), decoder_input_ids=ids, use_cache=True, **{CACHE_KW: pkv})
                    pkv = cache_of(out)
                assert pkv is not None and pkv.get_seq_length() == steps, "the KV cache was not used"
                sync()

                if rep > 0:
                    per.append((time.perf_counter() - t0) / max(steps - 1, 1))
            flop = sum(decode_step_flops(c, setup["beams"], p, s) for p in range(1, steps)) / max(steps - 1, 1)
            width = 2 if dt == torch.bfloat16 else 4
            stages.append(with_bytes(with_flops(stage("decode_token", per), flop, gemm),
                                     decode_step_weight_bytes(c, width, width), stream))
        if wants("caption_beam5"):
            reset_peak()

            def cap():
                out = imodel.generate(inputs_embeds=x1, **gen)
                assert out.shape[1] == 1 + setup["new_tokens"], out.shape
            st = stage("caption_beam5", time_runs(reps, cap))
            st["items_per_s"] = 1.0 / st["median_s"]
            stages.append(st)
        if wants("caption_batch"):
            reset_peak()
            xb = iembeds[: setup["batch"]]
            st = stage("caption_batch", time_runs(reps, lambda: imodel.generate(inputs_embeds=xb, **gen)))
            st["items_per_s"] = setup["batch"] / st["median_s"]
            stages.append(st)
    # the vision stages before the training step: run after it, PyTorch's ViT / Q-Former /
    # aggregator took twice as long on a 2-core AMD Zen 4 (vit 236.5 ms against 120.5 run alone)
    stages.extend(vision_stages(setup, dir_, imodel, inputs, gemm, reps, dt))
    if wants("train_step"):
        reset_peak()
        model.train()
        for name, p in model.named_parameters():
            p.requires_grad_(".adapter." in name)
        params = [p for p in model.parameters() if p.requires_grad]
        # the steps change the adapters, which later stages share: put them back afterwards
        saved = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
        xt = embeds[: setup["train_batch"]]
        parts = {"forward": [], "backward": [], "adamw": []}

        def step():
            t0 = time.perf_counter()
            loss = model(inputs_embeds=xt, labels=labels).loss
            loss.item()
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sync()
            t2 = time.perf_counter()
            opt.step()
            sync()
            t3 = time.perf_counter()
            parts["forward"].append(t1 - t0)
            parts["backward"].append(t2 - t1)
            parts["adamw"].append(t3 - t2)
        st = stage("train_step", time_runs(reps, step))
        st["parts_s"] = {k: statistics.median(v[1:]) for k, v in parts.items()}
        stages.append(st)
        with torch.no_grad():
            for p, t in zip(params, saved):
                p.copy_(t)
        model.eval()
    tag_dir = setup.get("tagenc_dir")
    if wants("tagenc_triplet") and tag_dir and os.path.exists(os.path.join(tag_dir, "config.json")):
        reset_peak()
        stages.append(tagenc_stage(tag_dir, setup["tagenc_batch"], reps))
    if wants("tagger"):
        st = tagger_stage(dir_, setup)
        if st is not None:
            stages.append(st)
    return {"implementation": f"pytorch {torch.__version__} eager", "dtype": dtype_name, "device": DEVICE,
            "threads": torch.get_num_threads(),
            "load_before": load_before, "load_after": load_avg(), "setup": setup, "stages": stages}


def tagenc_stage(model_dir, batch, reps):
    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer
    from transformers import BertModel

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    model = BertModel.from_pretrained(model_dir).train().to(dev())
    texts = tag_texts(batch)
    g = torch.Generator().manual_seed(0)
    d = model.config.hidden_size
    pos = F.normalize(torch.randn(batch, d, generator=g), dim=1).to(dev())
    neg = F.normalize(torch.randn(batch, d, generator=g), dim=1).to(dev())
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    loss_fn = torch.nn.TripletMarginLoss()

    def step():
        enc = tok.encode_batch(texts)
        t = max(len(e.ids) for e in enc)
        ids = torch.zeros(batch, t, dtype=torch.long)
        mask = torch.zeros(batch, t, dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        ids, mask = ids.to(dev()), mask.to(dev())
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        a = F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)
        loss = loss_fn(a, pos, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return stage("tagenc_triplet", time_runs(reps, step))


# ---- tagger stage (RAM) ----
def build_upstream_ram(cfg):
    """Upstream RAM (`ram.models.ram.RAM`, vit='swin_b', from the checkout at RAM_SRC) at the sizes of
    `cfg` (setup.json `tagger`), with the import shims and config swaps of scripts/fixtures_ram.py:
    the Swin config from `cfg` (RAM accepts image_size 224/384 only, so the upstream SwinTransformer is
    constructed at cfg's img_size with every other argument as RAM passes it), the q2l head config
    from `cfg["head"]`, a stub tokenizer, and a small med config for the unused Tag2Text parts (its
    lowest layers are tied to the head, so it has the head's sizes)."""
    import shutil
    import tempfile
    import torch
    import fixtures_ram as fr

    ram_mod, bert_mod = fr.import_upstream()
    sw, head = cfg["swin"], cfg["head"]
    swin = {"vision_width": sw["embed_dim"] * 2 ** (len(sw["depths"]) - 1), "image_res": 224,
            "window_size": sw["window_size"], "embed_dim": sw["embed_dim"], "depths": sw["depths"],
            "num_heads": sw["num_heads"]}
    q2l = {k: head[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")}
    tmpdir = tempfile.mkdtemp()
    try:
        med = os.path.join(tmpdir, "med_config.json")
        json.dump(dict(architectures=["BertModel"], attention_probs_dropout_prob=0.1, hidden_act="gelu",
                       hidden_dropout_prob=0.1, initializer_range=0.02, layer_norm_eps=head["layer_norm_eps"],
                       max_position_embeddings=16, model_type="bert", pad_token_id=0, type_vocab_size=2,
                       vocab_size=fr.VOCAB, encoder_width=q2l["hidden_size"], add_cross_attention=True, **q2l),
                  open(med, "w"))
        real_from_json = bert_mod.BertConfig.from_json_file

        def from_json(path):
            c = real_from_json(path)
            if str(path).endswith("q2l_config.json"):
                for k, v in q2l.items():
                    setattr(c, k, v)
                c.layer_norm_eps = head["layer_norm_eps"]
            return c
        ram_mod.BertConfig.from_json_file = staticmethod(from_json)
        ram_mod.read_json = lambda path: swin
        swin_cls = ram_mod.SwinTransformer
        ram_mod.SwinTransformer = lambda **kw: swin_cls(**dict(kw, img_size=sw["img_size"]))
        ram_mod.init_tokenizer = lambda *a, **k: fr.StubTokenizer()
        n = cfg["num_tags"]
        tags = os.path.join(tmpdir, "tags.txt")
        with open(tags, "w") as f:
            f.write("\n".join(f"tag{i}" for i in range(n)))
        src = os.path.join(os.environ["RAM_SRC"], "ram")
        os.makedirs(os.path.join(tmpdir, "configs"))
        os.makedirs(os.path.join(tmpdir, "data"))
        shutil.copy(os.path.join(src, "configs", "q2l_config.json"), os.path.join(tmpdir, "configs"))
        thr = open(os.path.join(src, "data", "ram_tag_list_threshold.txt")).read().splitlines()[:n]
        with open(os.path.join(tmpdir, "data", "ram_tag_list_threshold.txt"), "w") as f:
            f.write("\n".join(thr))
        ram_mod.CONFIG_PATH = tmpdir
        model = ram_mod.RAM(med_config=med, image_size=224, vit="swin_b", tag_list=tags,
                            tag_list_chinese=tags).eval()
    finally:
        shutil.rmtree(tmpdir)
    # the Tag2Text parts are not on the tagging path: free them (the head keeps its tied weights)
    del model.tag_encoder, model.text_decoder
    return torch, model


def tagger_stage(dir_, setup):
    """Upstream RAM's tagging path (`generate_tag` up to the probabilities), batch 1, from
    DIR/tagger.safetensors loaded strictly (only the Swin's relative_position_index / attn_mask
    buffers, which upstream computes, may be absent). Skipped (None) when RAM_SRC is unset."""
    cfg = setup.get("tagger")
    if cfg is None:
        print("tagger skipped: setup.json has no tagger config", file=sys.stderr)
        return None
    if not os.environ.get("RAM_SRC"):
        print("tagger skipped: set RAM_SRC to a checkout of xinyu1205/recognize-anything "
              "(the folder holding ram/models/ram.py) for the PyTorch RAM twin", file=sys.stderr)
        return None
    from safetensors.torch import load_file

    torch, model = build_upstream_ram(cfg)
    sd = load_file(os.path.join(dir_, "tagger.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("relative_position_index", "attn_mask"))]
    if missing or unexpected:
        raise SystemExit(f"tagger.safetensors mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    del sd
    model = model.to(dev())
    px = load_file(os.path.join(dir_, "tagger_input.safetensors"))["pixel_values"].to(dev())
    out = {}

    def probs():
        # RAM.generate_tag's computation, stopping at the probabilities it thresholds
        label_embed = torch.nn.functional.relu(model.wordvec_proj(model.label_embed))
        emb = model.image_proj(model.visual_encoder(px))
        atts = torch.ones(emb.size()[:-1], dtype=torch.long, device=dev())
        tagging = model.tagging_head(encoder_embeds=label_embed.unsqueeze(0).repeat(px.shape[0], 1, 1),
                                     encoder_hidden_states=emb, encoder_attention_mask=atts,
                                     return_dict=False, mode="tagging")
        out["probs"] = torch.sigmoid(model.fc(tagging[0]).squeeze(-1))
    with torch.inference_mode():
        reset_peak()
        st = stage("tagger", time_runs(setup["repeats"], probs))
    st["check"] = {"probs": check_sample(out["probs"])}
    return st


def compare(out_dir):
    ours = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out_dir, "lion_*.json")))]
    theirs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out_dir, "torch_*.json")))]
    if not ours or not theirs:
        raise SystemExit(f"no lion_*.json / torch_*.json in {out_dir}")

    def per_stage(reports):
        d = {}
        for r in reports:
            for s in r["stages"]:
                d.setdefault(s["name"], []).append(s)
        return d
    o, t = per_stage(ours), per_stage(theirs)
    med = lambda xs, k: statistics.median([x[k] for x in xs if x.get(k) is not None]) if any(
        x.get(k) is not None for x in xs) else None
    loads = [r[k] for r in ours + theirs for k in ("load_before", "load_after") if r.get(k) is not None]
    setup = ours[0]["setup"]
    print(f"preset {setup['preset']} | seq {setup['visual_tokens'] + setup['text_tokens']} | beams {setup['beams']} "
          f"| {setup['new_tokens']} new tokens | batch {setup['batch']} | train batch {setup['train_batch']} "
          f"| {ours[0]['threads']} threads (lion) / {theirs[0]['threads']} (torch) | {len(ours)} rounds x "
          f"{setup['repeats']} runs | load avg {min(loads):.1f}-{max(loads):.1f}")
    print(f"{theirs[0]['implementation']} ({theirs[0].get('dtype', 'f32')}, {theirs[0].get('device', 'cpu')}) vs "
          f"{ours[0]['implementation']} ({ours[0].get('dtype') or 'f32'}, {ours[0].get('device') or 'cpu'}); "
          f"speedup = torch time / lion time")
    if ours[0].get("cpu"):
        print(f"cpu: {ours[0]['cpu']}")
    # per round: torch's median over lion's median of the same round (the two ran back to back),
    # so a machine whose speed drifts between rounds shows as a spread here, not as a speedup
    def round_ratios(name):
        xs = []
        for ro, rt in zip(ours, theirs):
            lo = next((s["median_s"] for s in ro["stages"] if s["name"] == name), None)
            to = next((s["median_s"] for s in rt["stages"] if s["name"] == name), None)
            if lo and to:
                xs.append(to / lo)
        return xs
    hdr = f"{'stage':<16} {'lion ms':>10} {'torch ms':>10} {'speedup':>8} {'per round':>11} {'lion GF/s':>10} " \
          f"{'torch GF/s':>10} {'lion %GEMM':>10} {'torch %GEMM':>11} {'lion MiB':>9} {'torch MiB':>9}"
    print(hdr)
    rows = []
    fmt = lambda x, p: "-" if x is None else f"{x:.{p}f}"
    for name in o:
        if name not in t:
            continue
        lo, to = med(o[name], "median_s"), med(t[name], "median_s")
        ratios = round_ratios(name)
        row = {"stage": name, "lion_s": lo, "torch_s": to, "speedup": to / lo, "speedup_per_round": ratios,
               "lion_gflops": med(o[name], "gflops"), "torch_gflops": med(t[name], "gflops"),
               "lion_frac_of_gemm": med(o[name], "frac_of_gemm"), "torch_frac_of_gemm": med(t[name], "frac_of_gemm"),
               "lion_peak_mib": med(o[name], "peak_rss_mib"), "torch_peak_mib": med(t[name], "peak_rss_mib")}
        rows.append(row)
        pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"
        spread = "-" if len(ratios) < 2 else f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{name:<16} {lo * 1e3:>10.1f} {to * 1e3:>10.1f} {row['speedup']:>7.2f}x {spread:>11} "
              f"{fmt(row['lion_gflops'], 1):>10} {fmt(row['torch_gflops'], 1):>10} "
              f"{pct(row['lion_frac_of_gemm']):>10} {pct(row['torch_frac_of_gemm']):>11} "
              f"{fmt(row['lion_peak_mib'], 0):>9} {fmt(row['torch_peak_mib'], 0):>9}")
        for part in sorted(set(o[name][0].get("parts_s", {})) & set(t[name][0].get("parts_s", {}))):
            lp = statistics.median([x["parts_s"][part] for x in o[name]])
            tp = statistics.median([x["parts_s"][part] for x in t[name]])
            print(f"  {part:<14} {lp * 1e3:>10.1f} {tp * 1e3:>10.1f} {tp / lp:>7.2f}x")
    if "decode_token" in o and "decode_token" in t:
        for side, xs in (("lion", o["decode_token"]), ("torch", t["decode_token"])):
            if med(xs, "gbps") is not None:
                of = med(xs, "frac_of_stream")
                print(f"decode_token, {side}: reads {med(xs, 'gbytes'):.3f} GB of weights a step at "
                      f"{med(xs, 'gbps'):.1f} GB/s" + ("" if of is None else f" = {100 * of:.0f}% of its stream stage"))
    checks = check_outputs(ours[0], theirs[0])
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump({"setup": setup, "rounds": len(ours), "load_range": [min(loads), max(loads)], "rows": rows,
                   "checks": checks}, f, indent=1)


def check_outputs(ours, theirs):
    """Both sides computed the same thing: the `check` samples of each stage (64 evenly spaced
    output values; generated token ids) of one report per side, compared. Prints and returns
    {stage: {key: max abs diff | "tokens equal" | "tokens differ at ..."}}."""
    t = {s["name"]: s for s in theirs["stages"]}
    res = {}
    for s in ours["stages"]:
        mine, other = s.get("check") or {}, (t.get(s["name"]) or {}).get("check") or {}
        if not mine or not other:
            continue
        row = {}
        for k, v in sorted(mine.items()):
            w = other.get(k)
            if w is None or len(w) != len(v):
                row[k] = "missing or of another length on the torch side"
            elif k.startswith("tokens"):
                bad = [i for i, (a, b) in enumerate(zip(v, w)) if a != b]
                row[k] = "tokens equal" if not bad else f"tokens differ from position {bad[0]}"
            else:
                row[k] = max(abs(a - b) for a, b in zip(v, w))
        res[s["name"]] = row
    if res:
        print("check (ours vs torch, same weights and inputs):")
        for name, row in res.items():
            nums = [x for x in row.values() if isinstance(x, float)]
            toks = [x for x in row.values() if isinstance(x, str)]
            parts = []
            if nums:
                parts.append(f"max abs diff {max(nums):.2e} over {len(nums)} outputs")
            if toks:
                same = sum(x == "tokens equal" for x in toks)
                parts.append(f"{same}/{len(toks)} token rows equal")
                parts.extend(x for x in toks if x != "tokens equal")
            print(f"  {name:<18} " + "; ".join(parts))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--compare")
    ap.add_argument("--device", default="cpu",
                    help="cpu (default), cuda or cuda:N: where the models and inputs go")
    ap.add_argument("--dtype", choices=["f32", "bf16"],
                    help="inference stages' dtype (default: setup.json's, as `lion bench --dtype` wrote it)")
    args = ap.parse_args()
    if args.compare:
        compare(args.compare)
        return
    if not args.dir:
        ap.error("DIR (from `lion bench --prepare-only --dir DIR`) is required")
    global DEVICE
    DEVICE = args.device
    if DEVICE.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {DEVICE}: torch {torch.__version__} sees no CUDA device")
    report = run(args.dir, args.threads, args.dtype)
    text = json.dumps(report, indent=1)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.json)
    print(text)


if __name__ == "__main__":
    main()
