"""f32 GEMM GFLOP/s of numpy (OpenBLAS) on this machine, 2 threads: the baseline for kiln's GEMM.

Run:  OPENBLAS_NUM_THREADS=2 python3 benches/reference/gemm_numpy.py
(needs `pip install numpy`; never run in CI). Prints the median of several runs per size.
"""
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import numpy as np  # noqa: E402

rng = np.random.default_rng(0)
for n in (256, 512, 1024, 2048):
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm up
    reps = max(3, int(2e9 / (2 * n**3)))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    print(f"numpy gemm_f32 n={n}: {2 * n**3 / med / 1e9:.1f} GFLOP/s (median of {reps})")
