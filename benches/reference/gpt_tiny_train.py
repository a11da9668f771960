"""PyTorch side of the `gpt-tiny` on `tinyshakespeare-char` comparison (CPU, 2 threads; never in CI).

Peer of

    cargo xtask train --model gpt-tiny --dataset tinyshakespeare-char

i.e. nanoGPT's CPU shakespeare-char recipe, with the same model, data, optimizer, schedule and step budget:

- data: data/text/tinyshakespeare.txt, characters -> ids by the sorted set of characters (65), the last
  round(10%) of the stream is validation, everything before it is training. Training batches are nanoGPT-style
  random windows: B = 12 windows of T = 64 tokens (inputs) + the next token (targets), starts uniform in
  [0, len(train) - T - 1]. Validation loss = mean next-token cross-entropy over every consecutive non-overlapping
  validation block (block i covers tokens [i*T, i*T + T + 1)), in eval mode, 64 blocks at a time.
- model: nanoGPT GPT: wte(65, 128) + wpe(64, 128), 4 pre-LN blocks (x += attn(ln_1(x)); x += mlp(ln_2(x))) with
  4 heads, fused c_attn Linear(d, 3d), causal scaled_dot_product_attention, c_proj Linear(d, d), mlp
  Linear(d, 4d) -> tanh-GELU -> Linear(4d, d); ln_f; lm_head tied to wte (no bias). LayerNorm with bias,
  eps 1e-5, no dropout. Init N(0, 0.02) for Linear weights and embeddings (c_proj: 0.02 / sqrt(2 * n_layer)),
  zero biases.
- optimizer: AdamW(lr 1e-3, betas (0.9, 0.99), eps 1e-8, weight decay 0.1 on the 2-D Linear weights only: not on
  biases, LayerNorm or wte/wpe), gradient clipping at global norm 1.0; learning rate: nanoGPT's linear warm-up
  lr * (it + 1) / (warmup + 1) for 100 steps, then cosine decay to 1e-4 at step --steps (2000).

Run: /tmp/torchvenv/bin/python benches/reference/gpt_tiny_train.py [--steps 2000 --threads 2 --seed 0]
Prints the validation loss at the end (and every --eval-every steps), the mean training loss of the last 50 steps,
training tokens/s (B * T / median iteration time, and total tokens / total time in training iterations; an
iteration = sampling + forward + backward + clip + step), and a final JSON line.
"""
import argparse
import json
import math
import pathlib
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Block(nn.Module):
    def __init__(self, d, heads, bias=True):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=1e-5, bias=bias), nn.LayerNorm(d, eps=1e-5, bias=bias)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)

    def attn(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.attn_proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, block, d, layers, heads, bias=True):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads, bias) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5, bias=bias)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
            elif p.dim() == 2:  # other Linear weights, wte, wpe
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # lm_head tied to wte


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--beta2", type=float, default=0.99)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--estimates", type=int, default=0,
                   help="also print this many nanoGPT-style validation estimates at the end (each the mean loss of "
                        "20 batches of 12 random windows, nanoGPT's estimate_loss with --eval_iters=20), to show "
                        "their spread around the full-split loss")
    p.add_argument("--no-bias", action="store_true", help="no Linear/LayerNorm biases (nanoGPT's bias=False)")
    p.add_argument("--decay-embeddings", action="store_true",
                   help="weight decay on wte/wpe too (nanoGPT decays every 2-D parameter)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    text = (ROOT / "data/text/tinyshakespeare.txt").read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_val = round(len(ids) * 0.1)
    train_ids, val_ids = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    n_blocks = (len(val_ids) - 1) // a.block
    val_x = torch.stack([val_ids[i * a.block:i * a.block + a.block] for i in range(n_blocks)])
    val_y = torch.stack([val_ids[i * a.block + 1:i * a.block + a.block + 1] for i in range(n_blocks)])

    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    model = Gpt(len(chars), a.block, a.d, a.layers, a.heads, bias=not a.no_bias)
    decay = [m.weight for m in model.modules()
             if isinstance(m, nn.Linear) or (a.decay_embeddings and isinstance(m, nn.Embedding))]
    no_decay = [p for p in model.parameters() if all(p is not q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, a.beta2), eps=1e-8)

    def lr_at(it):  # nanoGPT get_lr with lr_decay_iters = max_iters
        if it < a.warmup:
            return a.lr * (it + 1) / (a.warmup + 1)
        if it > a.steps:
            return a.min_lr
        ratio = (it - a.warmup) / max(1, a.steps - a.warmup)
        return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.lr - a.min_lr)

    def val_loss():
        model.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, n_blocks, 64):
                logits = model(val_x[i:i + 64])
                total += F.cross_entropy(logits.flatten(0, 1), val_y[i:i + 64].flatten(), reduction="sum").item()
        model.train()
        return total / val_y.numel()

    times, losses = [], []
    for it in range(a.steps):
        t0 = time.perf_counter()
        starts = torch.randint(len(train_ids) - a.block, (a.batch,), generator=g)
        x = torch.stack([train_ids[s:s + a.block] for s in starts.tolist()])
        y = torch.stack([train_ids[s + 1:s + a.block + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(it)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
        if a.eval_every and (it + 1) % a.eval_every == 0 and it + 1 < a.steps:
            print(f"step {it + 1}: train loss {losses[-1]:.4f}, val loss {val_loss():.4f}", flush=True)

    tokens = a.batch * a.block
    val = val_loss()
    if a.estimates:
        eg = torch.Generator().manual_seed(a.seed + 1)
        model.eval()
        ests = []
        with torch.no_grad():
            for _ in range(a.estimates):
                batch_losses = []
                for _ in range(20):
                    starts = torch.randint(len(val_ids) - a.block, (a.batch,), generator=eg).tolist()
                    x = torch.stack([val_ids[s:s + a.block] for s in starts])
                    y = torch.stack([val_ids[s + 1:s + a.block + 1] for s in starts])
                    batch_losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
                ests.append(statistics.fmean(batch_losses))
        model.train()
        print(f"nanoGPT-style estimates (20 random batches each, {a.estimates} draws): mean {statistics.fmean(ests):.4f}, "
              f"stdev {statistics.stdev(ests):.4f}, min {min(ests):.4f}, max {max(ests):.4f}; "
              f"share <= 1.88: {sum(e <= 1.88 for e in ests) / len(ests):.2f}")
    train_tail = statistics.fmean(losses[-50:])
    tok_median = tokens / statistics.median(times)
    tok_overall = tokens * a.steps / sum(times)
    print(f"pytorch gpt-tiny: {a.steps} steps, final val loss {val:.4f} nats, train loss (last 50 steps) "
          f"{train_tail:.4f}, {tok_median:.0f} training tokens/s (median step), {tok_overall:.0f} overall "
          f"({sum(times):.1f} s in steps, {a.threads} threads)")
    print(json.dumps({"val_loss": round(val, 4), "train_loss_last50": round(train_tail, 4),
                      "tokens_per_s_median": round(tok_median, 1), "tokens_per_s_overall": round(tok_overall, 1),
                      "steps": a.steps, "threads": a.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
