"""Reference fixtures for the world tagger's BatchNorm CNN (`lion_core::convnet`), from PyTorch itself.

    PY=$(scripts/venv.sh); $PY scripts/fixtures_convnet.py

The model is built from `nn.Conv2d(3x3, padding 1)`, `nn.BatchNorm2d` and ReLU in the layout the
Rust code reads (`visual_encoder.stages.{s}.{j}.{conv,bn}.*`; the first convolution of a stage has
stride 2), at a tiny odd-sized config (20 px -> 10 -> 5 -> 3, so padding and odd sides are
exercised). Its output is RAM's visual-encoder output: the final map's pixels as tokens, their
mean token first, (b, 1 + hw, C).

Writes tests/fixtures/convnet/:
  config.json        the sizes (a `ConvNetConfig`).
  model.safetensors  the state dict before any forward, unfiltered (`num_batches_tracked` too),
                     under `visual_encoder.`; the BatchNorm affine weights and running statistics
                     are drawn at random so that neither is the identity.
  io.safetensors     `image` (2, 3, 20, 20); `eval_out` (model.eval()); `train_out`
                     (model.train(): batch statistics); `after.<key>` every running statistic after
                     that one training forward; `probe` R, and for loss = sum(train_out * R) the
                     gradient of every parameter (`grad.<key>`) and of the image (`grad.image`).
"""
import json
import os

import torch
import torch.nn as nn
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "convnet")
CFG = {"img_size": 20, "in_chans": 3, "widths": [4, 6, 5], "bn_eps": 1e-5}


class ConvNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        cin, stages = cfg["in_chans"], []
        for width in cfg["widths"]:
            layers = []
            for j in range(2):
                layers.append(nn.ModuleDict(dict(
                    conv=nn.Conv2d(cin, width, 3, 2 if j == 0 else 1, 1),
                    bn=nn.BatchNorm2d(width, eps=cfg["bn_eps"]))))
                cin = width
            stages.append(nn.ModuleList(layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        for stage in self.stages:
            for layer in stage:
                x = torch.relu(layer["bn"](layer["conv"](x)))
        tokens = x.flatten(2).transpose(1, 2)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], 1)


def main():
    torch.manual_seed(0)
    m = ConvNet(CFG)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if name.endswith("bn.weight"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("bn.bias") or name.endswith("running_mean"):
                t.normal_(0, 0.3)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
    state = {f"visual_encoder.{k}": v.clone().contiguous() for k, v in m.state_dict().items()}
    image = torch.randn(2, CFG["in_chans"], CFG["img_size"], CFG["img_size"])
    m.eval()
    with torch.no_grad():
        eval_out = m(image)
    m.train()
    x = image.clone().requires_grad_(True)
    train_out = m(x)
    probe = torch.randn_like(train_out)
    (train_out * probe).sum().backward()
    io = {"image": image, "eval_out": eval_out, "train_out": train_out.detach(), "probe": probe,
          "grad.image": x.grad}
    for k, v in m.state_dict().items():
        if "running" in k:
            io[f"after.visual_encoder.{k}"] = v.clone()
    for k, p in m.named_parameters():
        io[f"grad.visual_encoder.{k}"] = p.grad
    os.makedirs(OUT, exist_ok=True)
    save_file(state, os.path.join(OUT, "model.safetensors"))
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(OUT, "io.safetensors"))
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CFG, f, indent=2)
        f.write("\n")
    print(f"wrote {OUT}: {len(state)} tensors, output {tuple(eval_out.shape)}")


if __name__ == "__main__":
    main()
