"""Writes a backbone folder's weights continued by a `lion train` run that started from it
(`"model_dir"` in the config): the folder's `backbone.safetensors` with every tensor the run's
checkpoint holds put in its place (the checkpoint's `trainable.safetensors` wins, as a model
folder listing both files would load them). Every key of the checkpoint must already be in the
backbone, with the same shape and dtype; nothing else changes.

    PY=$(scripts/venv.sh)
    $PY scripts/export_backbone.py assets/shapes-backbone RUN/checkpoints/step-NNNNNNNN OUT.safetensors

The output is written to a temporary name and renamed. Used for the shipped ShapesWorld
backbone's last leg (assets/shapes-backbone/README.md).
"""
import os
import sys

from safetensors.numpy import load_file, save_file


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    folder, ckpt, out = sys.argv[1:]
    def read(path):
        try:
            return load_file(path)
        except Exception as e:  # missing, truncated or not safetensors: name the file
            sys.exit(f"{path}: cannot read as safetensors ({e})")

    base = read(os.path.join(folder, "backbone.safetensors"))
    trained = read(os.path.join(ckpt, "trainable.safetensors"))
    for k, v in trained.items():
        if k not in base:
            sys.exit(f"{ckpt}: key {k} is not in {folder}/backbone.safetensors")
        if base[k].shape != v.shape or base[k].dtype != v.dtype:
            sys.exit(
                f"{ckpt}: {k} is {v.dtype}{list(v.shape)}, "
                f"the backbone's {base[k].dtype}{list(base[k].shape)}"
            )
    base.update(trained)
    tmp = out + ".tmp"
    save_file(base, tmp)
    os.replace(tmp, out)
    print(f"{out}: {len(base)} tensors, {len(trained)} from {ckpt}")


if __name__ == "__main__":
    main()
