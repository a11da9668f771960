#!/usr/bin/env bash
# The GPU check of the CUDA backend, for a machine with an NVIDIA GPU, its driver and CUDA 12
# libraries (NVRTC, cuBLAS, cuRAND; from the toolkit or the nvidia-*-cu12 wheels on
# LD_LIBRARY_PATH). Builds with `cuda`, runs the device conformance suite and the device
# gradchecks on cuda:0, trains LeNet-5 for 200 steps on cuda:0 and on the CPU and compares the
# losses, and prints a summary. Under 5 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

if [ -z "${NO_PIP:-}" ] && ! ldconfig -p 2>/dev/null | grep -q libnvrtc.so; then
  venv="${TMPDIR:-/tmp}/kiln-gpu-venv"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q nvidia-cuda-nvrtc-cu12 nvidia-cublas-cu12 nvidia-curand-cu12 || true
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia"
  export LD_LIBRARY_PATH="$site/cuda_nvrtc/lib:$site/cublas/lib:$site/curand/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader || true

status=0
run() {
  local name="$1"; shift
  local log; log="$(mktemp)"
  if "$@" >"$log" 2>&1; then
    echo "PASS  $name ($(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}') tests)"
  else
    echo "FAIL  $name"; tail -30 "$log"; status=1
  fi
  if grep -q "skipped" "$log"; then echo "      note: $(grep -m1 skipped "$log")"; status=1; fi
}
run "build with cuda" cargo build --release -p xtask --features cuda
run "kernels compile (NVRTC)" cargo test --release -p kiln-tensor --features cuda --test cuda_kernels
run "conformance on cuda:0" cargo test --release -p kiln-tensor --features cuda --test conformance -- --nocapture
run "gradchecks on cuda:0" cargo test --release -p kiln-autograd --features kiln-tensor/cuda --test device_gradcheck -- --nocapture
./target/release/xtask info

# LeNet-5, 200 SGD steps from the same seed on the CPU and on cuda:0: the losses must agree.
tmp="$(mktemp -d)"
loss_at_200() {
  ./target/release/xtask train --steps 200 --log-every 200 --out "$tmp/$1" --device "$1" 2>&1 |
    grep -o 'step 200/[0-9]* loss [0-9.]*' | awk '{print $4}'
}
cpu_loss="$(loss_at_200 cpu)"
gpu_loss="$(loss_at_200 cuda:0)"
if python3 -c 'import sys; c, g = map(float, sys.argv[1:]); sys.exit(0 if abs(c - g) <= 2e-3 * max(1.0, abs(c)) else 1)' "$cpu_loss" "$gpu_loss" 2>/dev/null; then
  echo "PASS  LeNet-5 200 steps: loss cpu $cpu_loss, cuda:0 $gpu_loss"
else
  echo "FAIL  LeNet-5 200 steps: loss cpu '$cpu_loss', cuda:0 '$gpu_loss'"; status=1
fi
rm -rf "$tmp"
exit $status
