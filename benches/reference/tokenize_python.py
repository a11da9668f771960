#!/usr/bin/env python3
"""Reference for `cargo bench -p kiln-data --bench tokenize`: tokenize all of tiny-shakespeare
with the GPT-2 tokenizer.json through the Python `tokenizers` package (Rust core, onig regex),
as one call and as a parallel batch of the same line-break chunks kiln's `encode_corpus` uses.

Usage (from the repository root): python benches/reference/tokenize_python.py [--repeats N]
Needs: pip install tokenizers
"""
import argparse
import os
import statistics
import time

from tokenizers import Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def safe_chunks(text, chunk_bytes):
    """Cut after a '\\n' with non-whitespace on both sides, once a chunk holds >= chunk_bytes
    (the same rule as kiln_data::text::corpus::split_chunks; sizes in characters here)."""
    chunks, start, n = [], 0, len(text)
    while start < n:
        i = start + chunk_bytes
        cut = None
        while i < n:
            if text[i - 1] == "\n" and i >= 2 and not text[i - 2].isspace() and not text[i].isspace():
                cut = i
                break
            i += 1
        if cut is None:
            chunks.append(text[start:])
            break
        chunks.append(text[start:cut])
        start = cut
    return chunks


def timed(f, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    tok = Tokenizer.from_file(os.path.join(ROOT, "data/tokenizers/gpt2/tokenizer.json"))
    text = open(os.path.join(ROOT, "data/text/tinyshakespeare.txt"), encoding="utf-8").read()
    ids, med, best = timed(lambda: tok.encode(text, add_special_tokens=False).ids, args.repeats)
    n = len(ids)
    print(f"tiny-shakespeare: {len(text.encode())} bytes, {n} GPT-2 tokens, "
          f"tokenizers {__import__('tokenizers').__version__}, {os.cpu_count()} CPUs")
    print(f"one call:        median {med * 1e3:8.1f} ms  {n / med:12,.0f} tokens/s  (best {n / best:,.0f})")
    chunks = safe_chunks(text, 1 << 16)
    batch, med, best = timed(
        lambda: tok.encode_batch(chunks, add_special_tokens=False), args.repeats)
    flat = [i for e in batch for i in e.ids]
    assert flat == ids, "chunked encoding differs from one call"
    print(f"parallel chunks: median {med * 1e3:8.1f} ms  {n / med:12,.0f} tokens/s  (best {n / best:,.0f}, "
          f"{len(chunks)} chunks)")


if __name__ == "__main__":
    main()
