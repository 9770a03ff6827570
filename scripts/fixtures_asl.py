"""Reference fixture for RAM's tagging loss (lion-train `asymmetric_loss`).

Writes tests/fixtures/asl/reference.safetensors: `logits` (6, 10) and `targets` (6, 10, 0/1),
and for each loss setting `name` in reference.json: `loss.<name>` (scalar) and `grad.<name>`
(d loss / d logits, (6, 10)).

The reference is written independently, following upstream semantics
(recognize-anything `ram/models/utils.py` AsymmetricLoss, `disable_torch_grad_focal_loss=True`:
the focusing weight is computed without gradient), in float32 autograd:
  p = sigmoid(x); p_neg = (1 - p + clip).clamp(max=1)  (when clip > 0)
  l = y log(p.clamp(min=eps)) + (1 - y) log(p_neg.clamp(min=eps))
  w = (1 - (p y + p_neg (1 - y)))^(gamma_pos y + gamma_neg (1 - y))   (no grad)
  loss = -(l w).sum()
Settings: `ram` (RAM's: gamma_neg 7, gamma_pos 0, clip 0.05), `default` (the class defaults:
4, 1, 0.05), `noclip` (7, 0, 0).

Run: PY=$(scripts/venv.sh); $PY scripts/fixtures_asl.py
"""
import json
import os

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "asl")

SETTINGS = {
    "ram": dict(gamma_neg=7.0, gamma_pos=0.0, clip=0.05),
    "default": dict(gamma_neg=4.0, gamma_pos=1.0, clip=0.05),
    "noclip": dict(gamma_neg=7.0, gamma_pos=0.0, clip=0.0),
}


def asl(x, y, gamma_neg, gamma_pos, clip, eps=1e-8):
    p = torch.sigmoid(x)
    p_neg = 1 - p
    if clip > 0:
        p_neg = (p_neg + clip).clamp(max=1)
    loss = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(p_neg.clamp(min=eps))
    with torch.no_grad():
        pt = p * y + p_neg * (1 - y)
        w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -(loss * w).sum()


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=g) * 4.0
    # large magnitudes: the eps clamp (x < -18.4) and saturated sigmoids
    logits[0, :4] = torch.tensor([-25.0, 25.0, -12.0, 12.0])
    targets = (torch.rand(6, 10, generator=g) < 0.3).float()
    targets[0, :4] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = {"logits": logits.contiguous(), "targets": targets.contiguous()}
    for name, s in SETTINGS.items():
        x = logits.clone().requires_grad_(True)
        loss = asl(x, targets, **s)
        loss.backward()
        out[f"loss.{name}"] = loss.detach().reshape(1).contiguous()
        out[f"grad.{name}"] = x.grad.contiguous()
    save_file(out, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"settings": SETTINGS, "torch": torch.__version__}, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
