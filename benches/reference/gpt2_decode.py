"""PyTorch side of the GPT-2-small decoding comparison (CPU, 2 threads; never in CI).

Peer of

    cargo xtask bench decode

- model: GPT-2-small shape (12 layers, 12 heads, d = 768, vocab 50257, 1024 positions), pre-LN blocks with a fused
  c_attn Linear(d, 3d), tanh-GELU MLP, ln_f and a head tied to wte; random weights (N(0, 0.02), zero biases,
  seeded), float32, eval mode, torch.inference_mode().
- KV cache: written out here, one preallocated [B, H, 1024, d/H] key and value tensor per layer, written in place;
  each step attends over the filled prefix with F.scaled_dot_product_attention (causal within a prefill). Only the
  last position's logits are computed (greedy decoding needs nothing else).
- measurements (medians over --reps fresh-cache repetitions):
  prefill_ms: a 128-token random prompt; decode_tok_s: the next 128 greedy tokens (argmax of the last logits),
  one forward per token; step_ms_pos10 / step_ms_pos1000: one single-token step at position 10 / 1000 after a
  10- / 1000-token prefill, median over 20 steps (each rewrites the same cache slot); batch8_tok_s: 8 prompts of
  128 decoded together for 128 steps (8 * 128 / decode time); sequential8_tok_s: the same 8 prompts decoded one
  after another (8 * 128 / total decode time). Prefill time is excluded from every tokens/s figure.

Run: /tmp/torchvenv/bin/python benches/reference/gpt2_decode.py [--reps 5 --threads 2 --layers 12 --d 768 ...]
Prints a JSON line with every number.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

N_POSITIONS = 1024


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def attn(self, x, cache_k, cache_v, pos):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.c_attn(x).split(d, dim=2))
        cache_k[:, :, pos:pos + t] = k
        cache_v[:, :, pos:pos + t] = v
        keys, values = cache_k[:, :, :pos + t], cache_v[:, :, :pos + t]
        if t == 1:  # a decode step sees the whole prefix
            y = F.scaled_dot_product_attention(q, keys, values)
        elif pos == 0:  # a prefill into an empty cache
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:  # a chunk after a filled prefix: query i sees keys [0, pos + i]
            mask = torch.ones(t, pos + t, dtype=torch.bool).tril(diagonal=pos)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.attn_proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x, cache_k, cache_v, pos):
        x = x + self.attn(self.ln_1(x), cache_k, cache_v, pos)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(nn.Module):
    def __init__(self, vocab, d, layers, heads):
        super().__init__()
        self.d, self.heads = d, heads
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(N_POSITIONS, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)

    def new_cache(self, batch):
        shape = (batch, self.heads, N_POSITIONS, self.d // self.heads)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in self.blocks]

    def forward(self, idx, cache, pos):
        """Runs tokens idx [B, T] at positions [pos, pos + T); returns the last position's logits [B, vocab]."""
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + idx.shape[1]))
        for blk, (k, v) in zip(self.blocks, cache):
            x = blk(x, k, v, pos)
        return F.linear(self.ln_f(x[:, -1]), self.wte.weight)


def generate(model, prompt, steps):
    """Prefill then `steps` greedy single-token steps on a fresh cache; returns (prefill s, decode s)."""
    cache = model.new_cache(prompt.shape[0])
    t0 = time.perf_counter()
    tok = model(prompt, cache, 0).argmax(-1, keepdim=True)
    t1 = time.perf_counter()
    for i in range(steps):
        tok = model(tok, cache, prompt.shape[1] + i).argmax(-1, keepdim=True)
    return t1 - t0, time.perf_counter() - t1


def step_ms(model, vocab, pos, g, n=20):
    """Median time of one single-token step at position `pos`, after a `pos`-token prefill."""
    cache = model.new_cache(1)
    model(torch.randint(vocab, (1, pos), generator=g), cache, 0)
    tok = torch.randint(vocab, (1, 1), generator=g)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        model(tok, cache, pos).argmax(-1)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    model = Gpt2(a.vocab, a.d, a.layers, a.heads).eval()
    prompt = torch.randint(a.vocab, (1, a.prompt), generator=g)
    prompts8 = torch.randint(a.vocab, (8, a.prompt), generator=g)
    with torch.inference_mode():
        generate(model, prompt[:, :16], 4)  # warm-up
        runs = [generate(model, prompt, a.new_tokens) for _ in range(a.reps)]
        pos10, pos1000 = step_ms(model, a.vocab, 10, g), step_ms(model, a.vocab, 1000, g)
        _, batch_s = generate(model, prompts8, a.new_tokens)
        seq_s = sum(generate(model, prompts8[i:i + 1], a.new_tokens)[1] for i in range(8))
    print(json.dumps({
        "prefill_ms": round(1e3 * statistics.median(r[0] for r in runs), 2),
        "decode_tok_s": round(a.new_tokens / statistics.median(r[1] for r in runs), 2),
        "step_ms_pos10": round(pos10, 2),
        "step_ms_pos1000": round(pos1000, 2),
        "batch8_tok_s": round(8 * a.new_tokens / batch_s, 2),
        "sequential8_tok_s": round(8 * a.new_tokens / seq_s, 2),
        "threads": a.threads, "torch": torch.__version__,
        "shape": {"layers": a.layers, "heads": a.heads, "d": a.d, "vocab": a.vocab}}))


if __name__ == "__main__":
    main()
