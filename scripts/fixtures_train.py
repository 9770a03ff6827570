"""Reference for `lion train`'s optimizer step (tests/fixtures/train/step.safetensors).

What it covers: the gradient + optimizer pipeline of the PEFT trainer on LION's T5 part. The model is
the tiny Flan-T5 with LION's mixture of adapters from scripts/fixtures_t5.py (backbone
tests/fixtures/t5/model.safetensors + adapters and router tests/fixtures/t5/lion_adapters.safetensors;
the adapter reference there is written independently after upstream lion_adapters.py). Trainable: every
`.adapter.` tensor (T5 adapters and router), the backbone frozen, no dropout (eval mode). Input: the fixed
padded batch of fixtures_t5.py (3 rows), split into 2 micro-batches (rows 0-1, row 2) for gradient
accumulation; route of step k: [1, 0, 1]. Then 3 AdamW steps (torch.optim.AdamW, betas 0.9/0.999,
eps 1e-8) with two parameter groups as upstream (decay: >= 2-D and no "bias"/"ln"/"bn" in the name,
weight decay 0.05, lr scale 1; no decay: the rest, weight decay 0, lr scale 3), global-norm clipping at
1.0 (torch.nn.utils.clip_grad_norm_), and the LAVIS-style schedule with a real warmup and per-step
cosine: warmup_lr 2e-3 -> init_lr 1e-2 over 1 step, cosine to min_lr 1e-3 over the other steps.

Not covered: the ViT, Q-Former and aggregator gradients (their forwards have their own parity tests), the
data pipeline.

Writes per step k (1-based): step{k}.loss (mean of the micro-batch losses), step{k}.lr,
step{k}.grad_norm, step{k}.grad.{key} (accumulated, before clipping), and step3.param.{key} (after the last update;
the gradients of steps 2 and 3 already depend on the earlier updates).

Run: PY=$(scripts/venv.sh); $PY scripts/fixtures_train.py   (after fixtures_t5.py)
"""
import math
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures_t5 as t5fx  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "train")
T5 = os.path.join(ROOT, "tests", "fixtures", "t5")

INIT_LR, MIN_LR, WARMUP_LR, WARMUP_STEPS, STEPS = 1e-2, 1e-3, 2e-3, 1, 3
WD, NO_DECAY_SCALE, MAX_NORM = 0.05, 3.0, 1.0
ROUTES = [1, 0, 1]


def lr_at(step):
    if step < WARMUP_STEPS:
        return WARMUP_LR + (INIT_LR - WARMUP_LR) * step / WARMUP_STEPS
    t = min((step - WARMUP_STEPS) / max(STEPS - WARMUP_STEPS, 1), 1.0)
    return MIN_LR + (INIT_LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * t))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    model = t5fx.make_model(False)
    model.load_state_dict(load_file(os.path.join(T5, "model.safetensors")), strict=False)
    t5fx.add_adapters(model, 2)
    missing = model.load_state_dict(load_file(os.path.join(T5, "lion_adapters.safetensors")), strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    model.eval()
    named = []
    for n, p in model.named_parameters():
        p.requires_grad_(".adapter." in n)
        if ".adapter." in n:
            named.append((n, p))
    decay = [p for n, p in named if p.ndim >= 2 and not any(s in n for s in ("bias", "ln", "bn"))]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and not any(s in n for s in ("bias", "ln", "bn")))]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WD, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": NO_DECAY_SCALE},
        ],
        lr=INIT_LR,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    ids, mask, labels = t5fx.batch()
    micro = [slice(0, 2), slice(2, 3)]
    out = {}
    for step in range(STEPS):
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        t5fx.set_route(model, ROUTES[step])
        opt.zero_grad()
        total = 0.0
        for s in micro:
            loss = model(input_ids=ids[s], attention_mask=mask[s], labels=labels[s]).loss
            (loss / len(micro)).backward()
            total += loss.item()
        k = step + 1
        for n, p in named:
            out[f"step{k}.grad.{n}"] = p.grad.detach().clone()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], MAX_NORM)
        opt.step()
        if k == STEPS:
            for n, p in named:
                out[f"step{k}.param.{n}"] = p.detach().clone()
        out[f"step{k}.loss"] = torch.tensor([total / len(micro)], dtype=torch.float64)
        out[f"step{k}.lr"] = torch.tensor([lr], dtype=torch.float64)
        out[f"step{k}.grad_norm"] = torch.tensor([float(norm)], dtype=torch.float64)
        print(f"step {k}: loss {total / len(micro):.6f} lr {lr:.3e} grad norm {float(norm):.4f}")
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "step.safetensors"))
    print("train fixtures written to", OUT)


if __name__ == "__main__":
    main()
