"""PyTorch side of the BERT encoder comparison (CPU, 2 threads; never in CI).

Peer of

    cargo xtask bench embed

which starts this script with --serve and alternates rounds with kiln's (kiln, torch, kiln, torch).

- models, random weights (seeded), float32, eval mode, torch.inference_mode():
  minilm: all-MiniLM-L6-v2's shape (vocab 30522, hidden 384, 6 layers, 12 heads, intermediate 1536, 512 positions);
  bert-base: hidden 768, 12 layers, 12 heads, intermediate 3072. Hugging Face's transformers.BertModel(BertConfig(...))
  (its default attention implementation, pooler included) when `transformers` imports, else the plain-torch BERT below
  (post-LN layers, erf GELU, additive attention mask through F.scaled_dot_product_attention, tanh pooler).
  The ready line names which one ran ("impl").
- inputs: the same token ids kiln uses (a fixed linear congruential sequence in 1000..30522, so no special ids),
  token type ids 0, full attention masks.
- workloads: minilm_embed: 32 x 64 tokens, the encoder, mean pooling over the mask and L2 normalisation (the
  sentence-transformers recipe); bert_base_forward: 8 x 128 tokens, the encoder and pooler.
- one round: per workload 1 warm-up forward, then --reps timed forwards; one JSON line per workload:
  {"workload": ..., "times_s": [...], "median_s": ...}.

Run standalone: /tmp/torchvenv/bin/python benches/reference/bert_embed_bench.py [--rounds 1 --reps 5 --threads 2]
[--only minilm_embed bert_base_forward] [--plain]
With --serve it prints {"ready": ...}, then runs one round per "round" line on stdin until "quit" (or end of input).
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MINILM = dict(vocab=30522, hidden=384, layers=6, heads=12, intermediate=1536, positions=512)
BERT_BASE = dict(vocab=30522, hidden=768, layers=12, heads=12, intermediate=3072, positions=512)
# (name, shape, batch, sequence length, sentence embeddings?)
WORKLOADS = [("minilm_embed", MINILM, 32, 64, True), ("bert_base_forward", BERT_BASE, 8, 128, False)]
FIRST_ID = 1000  # below: [PAD] 0, [unused*], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, more [unused*]


def token_ids(batch, length, vocab, salt):
    """The ids `cargo xtask bench embed` feeds kiln: the same LCG, ids in [FIRST_ID, vocab)."""
    s = 0x9E3779B9 ^ salt
    ids = []
    for _ in range(batch * length):
        s = (s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        ids.append(FIRST_ID + (s >> 33) % (vocab - FIRST_ID))
    return torch.tensor(ids, dtype=torch.long).view(batch, length)


class Layer(nn.Module):
    """One post-LN encoder layer with Hugging Face's structure."""

    def __init__(self, d, heads, inter, eps):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out, self.attn_norm = nn.Linear(d, d), nn.LayerNorm(d, eps=eps)
        self.inter, self.out, self.out_norm = nn.Linear(d, inter), nn.Linear(inter, d), nn.LayerNorm(d, eps=eps)

    def forward(self, x, bias):
        b, t, d = x.shape
        split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        ctx = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=bias)
        a = self.attn_norm(x + self.attn_out(ctx.transpose(1, 2).reshape(b, t, d)))
        return self.out_norm(a + self.out(F.gelu(self.inter(a))))


class PlainBert(nn.Module):
    """BERT in plain torch: embeddings (word + position + type, LayerNorm), post-LN layers, tanh pooler."""

    def __init__(self, vocab, hidden, layers, heads, intermediate, positions, eps=1e-12):
        super().__init__()
        self.word, self.pos, self.token_type = nn.Embedding(vocab, hidden), nn.Embedding(positions, hidden), \
            nn.Embedding(2, hidden)
        self.emb_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(Layer(hidden, heads, intermediate, eps) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        for name, p in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, input_ids, attention_mask, token_type_ids):
        t = input_ids.shape[1]
        x = self.emb_norm(self.word(input_ids) + self.token_type(token_type_ids) + self.pos.weight[:t])
        # Hugging Face's additive mask: 0 on real tokens, finfo.min on padding, [B, 1, 1, L].
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        return x, torch.tanh(self.pooler(x[:, 0]))


def build(shape, use_hf):
    if use_hf:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         intermediate_size=shape["intermediate"], max_position_embeddings=shape["positions"],
                         type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)
        model = BertModel(cfg).eval()
        run = lambda ids, mask, types: model(input_ids=ids, attention_mask=mask,  # noqa: E731
                                             token_type_ids=types).last_hidden_state
        attn = getattr(model.config, "_attn_implementation", None) or "default"
        return run, attn
    model = PlainBert(**shape).eval()
    return (lambda ids, mask, types: model(ids, mask, types)[0]), "sdpa"


def sentence_embeddings(hidden, mask):
    """Mean over the real tokens, then L2 normalisation (sentence-transformers)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="rounds to run without --serve")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain", action="store_true", help="the plain-torch BERT even if transformers imports")
    p.add_argument("--serve", action="store_true", help="run one round per 'round' line on stdin")
    p.add_argument("--only", nargs="+", choices=[w[0] for w in WORKLOADS], help="only these workloads")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    use_hf = False
    if not a.plain:
        try:
            import transformers  # noqa: F401

            use_hf = True
        except ImportError:
            pass
    runs = []
    for i, (name, shape, batch, length, embed) in enumerate(WORKLOADS):
        if a.only and name not in a.only:
            continue
        run, attn = build(shape, use_hf)
        ids = token_ids(batch, length, shape["vocab"], i)
        mask = torch.ones(batch, length, dtype=torch.long)
        types = torch.zeros(batch, length, dtype=torch.long)
        if embed:
            forward = lambda run=run, ids=ids, mask=mask, types=types: sentence_embeddings(  # noqa: E731
                run(ids, mask, types), mask)
        else:
            forward = lambda run=run, ids=ids, mask=mask, types=types: run(ids, mask, types)  # noqa: E731
        runs.append((name, batch, length, forward))
    impl = f"transformers {__import__('transformers').__version__} BertModel" if use_hf else "plain torch"
    print(json.dumps({"ready": True, "impl": impl, "attention": attn, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}), flush=True)

    def one_round():
        with torch.inference_mode():
            for name, batch, length, forward in runs:
                out = forward()  # warm-up
                assert torch.isfinite(out).all() and not math.isnan(float(out.sum()))
                times = []
                for _ in range(a.reps):
                    t0 = time.perf_counter()
                    forward()
                    times.append(time.perf_counter() - t0)
                print(json.dumps({"workload": name, "batch": batch, "seq_len": length, "times_s": times,
                                  "median_s": statistics.median(times)}), flush=True)

    if a.serve:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "round":
                one_round()
                print(json.dumps({"round_done": True}), flush=True)
            elif cmd == "quit":
                break
    else:
        for _ in range(a.rounds):
            one_round()


if __name__ == "__main__":
    main()
