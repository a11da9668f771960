"""PyTorch (and numpy) side of `cargo xtask bench suite --compare torch`: the same workloads as
kiln's, built once, timed on request so the two sides alternate.

Protocol (with --serve): prints {"ready": ...}; then for every stdin line `run KEY WARMUP ITERS` runs
WARMUP untimed and ITERS timed iterations of workload KEY and prints
{"workload": KEY, "times_s": [...]}; `quit` ends. Without --serve: `--run KEY` once, printed.

Workloads (random data and weights, CPU, float32):
  gemm-N            torch.mm of two N x N matrices          numpy-gemm-N   a @ b in numpy (OpenBLAS)
  lenet-step        LeNet-5 training step, batch 64, SGD (lr 0.01, momentum 0.9)
  resnet20-fwdbwd   CIFAR ResNet-20 forward + backward, batch 32 of 3x32x32
  lstm-fwdbwd       nn.LSTM(256, 256) forward + backward, batch 32 x 64 steps (loss: sum of outputs)
  lstm-lm-step      embedding 128 -> 2x LSTM 256 -> linear 65, batch 32 x 64 characters, Adam 2e-3
  gpt2-fwd          GPT-2 small forward (12 layers, width 768, logits over 50257), 1 x 128 tokens
  bert-base-fwd     BERT-base encoder forward, 8 x 128 tokens (bert_embed_bench.py's model)
  adamw-124m        one AdamW step over GPT-2 small's parameter shapes (124M), gradients given

Run:  python3 benches/reference/suite.py --run lenet-step --threads 2   (needs torch; never in CI)
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def gemm(n):
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    return lambda: torch.mm(a, b)


def numpy_gemm(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return lambda: a @ b


def lenet_step():
    from lenet_train_step import LeNet5

    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 1, 28, 28), torch.arange(64) % 10

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def resnet20_fwdbwd():
    from resnet20 import ResNet20

    model = ResNet20(in_channels=3, classes=10)
    x, y = torch.randn(32, 3, 32, 32), torch.arange(32) % 10

    def step():
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()

    return step


def lstm_fwdbwd():
    lstm = nn.LSTM(256, 256, batch_first=True)
    x = torch.randn(32, 64, 256)

    def step():
        lstm.zero_grad()
        out, _ = lstm(x)
        out.sum().backward()

    return step


class LstmLm(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(65, 128)
        self.lstm = nn.LSTM(128, 256, num_layers=2, batch_first=True)
        self.head = nn.Linear(256, 65)

    def forward(self, ids):
        out, _ = self.lstm(self.emb(ids))
        return self.head(out)


def lstm_lm_step():
    model = LstmLm()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 65, (32, 65), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x).reshape(-1, 65), y.reshape(-1)).backward()
        opt.step()

    return step


class Gpt2Block(nn.Module):
    def __init__(self, d=768, heads=12):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(nn.Module):
    def __init__(self, vocab=50257, positions=1024, d=768, layers=12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(positions, d)
        self.h = nn.ModuleList(Gpt2Block(d) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()


def gpt2_fwd():
    model = Gpt2().eval()
    ids = torch.randint(0, 50257, (1, 128), generator=torch.Generator().manual_seed(0))

    def step():
        with torch.inference_mode():
            model(ids)

    return step


def bert_base_fwd():
    import bert_embed_bench as bert

    use_hf = False
    try:
        import transformers  # noqa: F401

        use_hf = True
    except ImportError:
        pass
    run, _ = bert.build(bert.BERT_BASE, use_hf)
    ids = bert.token_ids(8, 128, bert.BERT_BASE["vocab"], 1)
    mask = torch.ones(8, 128, dtype=torch.long)
    types = torch.zeros(8, 128, dtype=torch.long)

    def step():
        with torch.inference_mode():
            run(ids, mask, types)

    return step


def gpt2_shapes(vocab=50257, positions=1024, d=768, layers=12):
    """GPT-2 small's parameter shapes (124,439,808 values), in Hugging Face's order."""
    shapes = [(vocab, d), (positions, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def adamw_124m():
    g = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in gpt2_shapes()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    return opt.step


BUILDERS = {
    "lenet-step": lenet_step,
    "resnet20-fwdbwd": resnet20_fwdbwd,
    "lstm-fwdbwd": lstm_fwdbwd,
    "lstm-lm-step": lstm_lm_step,
    "gpt2-fwd": gpt2_fwd,
    "bert-base-fwd": bert_base_fwd,
    "adamw-124m": adamw_124m,
}
for _n in (256, 512, 1024, 2048):
    BUILDERS[f"gemm-{_n}"] = lambda n=_n: gemm(n)
    BUILDERS[f"numpy-gemm-{_n}"] = lambda n=_n: numpy_gemm(n)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--serve", action="store_true")
    p.add_argument("--run", choices=sorted(BUILDERS))
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    built = {}

    threads = a.threads

    def run(key, warmup, iters):
        if key not in built:
            built[key] = BUILDERS[key]()
            torch.set_num_threads(threads)  # the imported reference scripts set their own
        step = built[key]
        for _ in range(warmup):
            step()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        assert all(math.isfinite(t) for t in times)
        return {"workload": key, "times_s": times}

    if not a.serve:
        print(json.dumps(run(a.run, 3, a.iters)))
        return
    print(json.dumps({"ready": True, "torch": torch.__version__, "numpy": np.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "run" and len(cmd) == 4 and cmd[1] in BUILDERS:
            print(json.dumps(run(cmd[1], int(cmd[2]), int(cmd[3]))), flush=True)
        elif cmd == ["quit"]:
            break
        else:
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)


if __name__ == "__main__":
    main()
