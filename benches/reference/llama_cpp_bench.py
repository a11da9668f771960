#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python) on the benchmark of `cargo xtask bench llama`: process a
128-token prompt, then 128 greedy tokens one at a time; tokens/s as medians.

Setup (never in CI): python3 -m venv /tmp/llamavenv && CMAKE_ARGS="$FLAGS" /tmp/llamavenv/bin/pip install numpy llama-cpp-python
where FLAGS builds for AVX-512 VNNI without AMX (ggml's AMX kernels crash on machines whose kernel
does not grant AMX tile state, and a native build enables them):
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
  -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF
  -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
Usage: llama_cpp_bench.py GGUF [--threads N] [--reps 3] [--prompt 128] [--gen 128]
The prompt ids come from the same fixed sequence as kiln's (xtask/src/bench_llama.rs)."""
import argparse, statistics, time
import numpy as np
import llama_cpp
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--prompt", type=int, default=128)
ap.add_argument("--gen", type=int, default=128)
a = ap.parse_args()

llm = Llama(model_path=a.gguf, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=512, n_batch=512,
            verbose=False)
vocab = llm.n_vocab()
s, ids = 0x9E3779B9, []
for _ in range(a.prompt):
    s = (s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
    ids.append(17 + (s >> 33) % (vocab - 17))


def measure(prompt, gen):
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    pp = len(prompt) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(gen):
        # The last position's logits (llm.scores is only filled with logits_all=True).
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        llm.eval([int(np.argmax(logits))])
    return pp, gen / (time.perf_counter() - t)


measure(ids[:16], 4)
res = [measure(ids, a.gen) for _ in range(a.reps)]
pp, tg = statistics.median(r[0] for r in res), statistics.median(r[1] for r in res)
print(f"llama.cpp {a.threads} threads: prompt {pp:.1f} tok/s, decode {tg:.1f} tok/s")
