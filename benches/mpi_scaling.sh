#!/usr/bin/env bash
# Data-parallel scaling over MPI: samples/s of 2 ranks × 1 thread against 1 rank × 1 thread,
# each rank with the same batch (weak scaling, as DDP benchmarks measure), on LeNet-5 / MNIST and
# on a GPT step (nanoGPT's 6-layer, width-384 shakespeare-char model, 10.7M parameters).
# Rounds alternate the two; the medians and their ratio are printed, with the share of the
# all-reduce time hidden behind the backward pass.
#
#   cargo build --release -p xtask --features mpi && benches/mpi_scaling.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
bin=target/release/xtask
[ -x "$bin" ] || { echo "build first: cargo build --release -p xtask --features mpi" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 KILN_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/gpt.json" <<'JSON'
{"model": "gpt-tiny", "dataset": "tinyshakespeare-char",
 "model_config": {"n_embd": 384, "n_layer": 6, "n_head": 6}}
JSON

# run NAME RANKS ARGS...: one training run; prints "samples/s waited busy".
run() {
  local name=$1 np=$2
  shift 2
  local out="$tmp/$name-$np"
  rm -rf "$out"
  mpirun -np "$np" --oversubscribe "$bin" train "$@" --out "$out" --distributed mpi --log-every 1000 >"$out.log" 2>&1 \
    || { cat "$out.log" >&2; exit 1; }
  python3 - "$out/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(m["samples_per_second"], m.get("allreduce_waited_seconds") or 0, m.get("allreduce_busy_seconds") or 0)
PY
}

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

bench() {
  local name=$1
  shift
  local one=() two=() waited=() busy=()
  for r in $(seq "$rounds"); do
    read -r s _ _ < <(run "$name" 1 "$@")
    one+=("$s")
    read -r s w b < <(run "$name" 2 "$@")
    two+=("$s"); waited+=("$w"); busy+=("$b")
    echo "  round $r: 1 rank ${one[-1]} samples/s, 2 ranks ${two[-1]} samples/s (all-reduce busy ${b} s, waited ${w} s)"
  done
  local m1 m2 mw mb
  m1=$(median "${one[@]}"); m2=$(median "${two[@]}"); mw=$(median "${waited[@]}"); mb=$(median "${busy[@]}")
  python3 - "$name" "$m1" "$m2" "$mw" "$mb" <<'PY'
import sys
name, one, two, waited, busy = sys.argv[1], *map(float, sys.argv[2:])
hidden = max(0.0, 1 - waited / busy) if busy > 0 else 0.0
print(f"{name}: 1 rank × 1 thread {one:.0f} samples/s, 2 ranks × 1 thread {two:.0f} samples/s: "
      f"{two / one:.2f}x; all-reduce {busy:.2f} s, {100 * hidden:.0f}% of it hidden behind backward")
PY
}

if [ -z "${SKIP_LENET:-}" ]; then echo "== LeNet-5, MNIST, 64 images per rank, 600 steps"
bench lenet5 --model lenet5 --steps 600 --batch-size 64; fi
echo "== GPT (6 layers, width 384, 10.7M parameters), shakespeare-char, 8 × 64 tokens per rank, 30 steps"
bench gpt --config "$tmp/gpt.json" --steps 30 --batch-size 8
