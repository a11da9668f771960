"""PyTorch side of the `lstm-lm` on `tinyshakespeare-char` comparison (CPU, 2 threads; never in CI).

Same model, data, optimizer and step budget as

    cargo xtask train --model lstm-lm --dataset tinyshakespeare-char --steps 1000 --batch-size 32 --lr 2e-3

- data: data/text/tinyshakespeare.txt, characters -> ids by the sorted set of characters (65), the last 10% of the
  stream is validation; training examples are the consecutive blocks of T = 64 tokens (inputs) + the next token
  (targets), shuffled each epoch; validation loss = mean next-token cross-entropy over every validation block.
- model: Embedding(65, 128) -> nn.LSTM(128, 256, num_layers=2, batch_first=True) -> Linear(256, 65).
- optimizer: Adam(lr) with the learning rate decaying to 0 along a cosine over the step budget (kiln's default
  `WarmupCosine { warmup_steps: 0, min_lr: 0 }`).

Run: python3 benches/reference/lstm_lm_shakespeare.py [--steps 1000 --batch 32 --lr 2e-3 --seed 0]
Prints the validation loss at the end (and every --eval-every steps) and training tokens/s.
"""
import argparse
import math
import pathlib
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
ROOT = pathlib.Path(__file__).resolve().parents[2]


class LstmLm(nn.Module):
    def __init__(self, vocab, emb=128, hidden=256, layers=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.lstm(self.embedding(x))
        return self.head(h)


def blocks(ids, t):
    n = (len(ids) - 1) // t
    x = torch.stack([ids[i * t:i * t + t] for i in range(n)])
    y = torch.stack([ids[i * t + 1:i * t + t + 1] for i in range(n)])
    return x, y


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0)
    a = p.parse_args()
    text = (ROOT / "data/text/tinyshakespeare.txt").read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_val = round(len(ids) * 0.1)
    train_ids, val_ids = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    xtr, ytr = blocks(train_ids, a.seq_len)
    xva, yva = blocks(val_ids, a.seq_len)
    torch.manual_seed(a.seed)
    model = LstmLm(len(chars))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    g = torch.Generator().manual_seed(a.seed)

    def val_loss():
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(xva), 256):
                logits = model(xva[i:i + 256])
                total += F.cross_entropy(logits.flatten(0, 1), yva[i:i + 256].flatten(), reduction="sum").item()
                count += yva[i:i + 256].numel()
        model.train()
        return total / count

    step, busy = 0, 0.0
    while step < a.steps:
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm) - a.batch + 1, a.batch):
            if step >= a.steps:
                break
            idx = perm[i:i + a.batch]
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = F.cross_entropy(model(xtr[idx]).flatten(0, 1), ytr[idx].flatten())
            loss.backward()
            opt.step()
            sched.step()
            busy += time.perf_counter() - t0
            step += 1
            if a.eval_every and step % a.eval_every == 0:
                print(f"step {step}: train loss {loss.item():.4f}, val loss {val_loss():.4f}", flush=True)
    tokens = a.steps * a.batch * a.seq_len
    print(f"pytorch lstm-lm: {a.steps} steps, final val loss {val_loss():.4f} nats, "
          f"{tokens / busy:.0f} training tokens/s ({busy:.1f} s in steps)")


if __name__ == "__main__":
    main()
