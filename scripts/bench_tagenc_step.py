"""PyTorch side of the triplet tag-encoder step timing (compare with
`cargo run -p lion-train --example triplet_step_time`): the same tag strings, batch, model
(transformers BertModel + mean pooling + normalize), TripletMarginLoss and AdamW; wall and
process CPU seconds of forward, backward and the optimizer step.

Run: PY=$(scripts/venv.sh); $PY scripts/bench_tagenc_step.py [MODEL_DIR] [BATCH] [STEPS]
"""
import os
import sys
import time

import torch
import torch.nn.functional as F


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    from tokenizers import Tokenizer
    from transformers import BertModel

    torch.set_num_threads(os.cpu_count())
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    model = BertModel.from_pretrained(model_dir)
    model.train()
    words = ["person", "shirt", "table", "cup", "dog", "grass", "sky", "tree", "car", "road",
             "building", "window", "plate", "food", "man", "woman"]
    texts = [", ".join(f"{words[(i * 7 + j * 3) % 16]}: 0.{9999 - (i * 131 + j * 977) % 5000}"
                       for j in range(5 + i % 2)) for i in range(batch)]
    g = torch.Generator().manual_seed(0)
    pos = F.normalize(torch.randn(batch, model.config.hidden_size, generator=g), dim=1)
    neg = F.normalize(torch.randn(batch, model.config.hidden_size, generator=g), dim=1)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    loss_fn = torch.nn.TripletMarginLoss()
    enc0 = tok.encode_batch(texts)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, "
          f"{sum(len(e.ids) for e in enc0) / batch:.1f} tokens per string")
    for step in range(steps + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        enc = tok.encode_batch(texts)
        t = max(len(e.ids) for e in enc)
        ids = torch.zeros(batch, t, dtype=torch.long)
        mask = torch.zeros(batch, t, dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        a = F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)
        loss = loss_fn(a, pos, neg)
        w1, c1 = time.perf_counter(), time.process_time()
        opt.zero_grad()
        loss.backward()
        w2, c2 = time.perf_counter(), time.process_time()
        opt.step()
        w3, c3 = time.perf_counter(), time.process_time()
        label = "warm-up" if step == 0 else f"step {step}"
        print(f"{label}: total {w3 - w0:.2f} s wall / {c3 - c0:.2f} s cpu | forward {w1 - w0:.2f}/{c1 - c0:.2f} "
              f"backward {w2 - w1:.2f}/{c2 - c1:.2f} adamw {w3 - w2:.2f}/{c3 - c2:.2f}")


if __name__ == "__main__":
    main()
