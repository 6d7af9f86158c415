"""The `risk` kind in NumPy, for comparison with bench_risk.

Run with `python3 bench/risk_numpy.py` (needs only numpy), or with `--cupy`
to run the same code on the GPU with CuPy (`"impl":"cupy"`).

Same cases as kernels/examples/bench_risk.rs: Monte Carlo, 50 assets x 10^6
scenarios; historical, 500 assets x 10^4 rows; confidence 0.95 and 0.99.
VaR is the k-th largest loss and CVaR the mean of the k largest, with
k = ceil((1 - c) N). The RNG differs from Philox (NumPy's PCG64, or
CuPy's XORWOW under --cupy); the timings include drawing the normals, as
the Rust and CUDA runs do. The historical case is memory-bound: its
"bytes" is the float64 returns matrix and weights read once, for a GB/s
figure (the Monte Carlo case is bound by drawing the normals: no bytes).
"""

import argparse
import json
import math
import time

import numpy as np

REPETITIONS = 3
LEVELS = (0.95, 0.99)

# The array module: numpy, or cupy under --cupy (see use_cupy). Every call
# below exists in both with the same meaning: default_rng(seed) gives a
# Generator whose standard_normal takes dtype=float32 in both, and
# partition, sort, linalg.cholesky are in CuPy too.
xp = np
IMPL = "numpy"


def sync():
    pass


def use_cupy():
    global xp, IMPL, sync
    import cupy

    xp, IMPL = cupy, "cupy"
    sync = lambda: cupy.cuda.Device().synchronize()


def tail_measures(losses, levels):
    """VaR and CVaR per level from one partition of the largest losses."""
    n = losses.size
    ks = [max(1, math.ceil(round((1 - c) * n, 9))) for c in levels]
    k_max = max(ks)
    top = -xp.partition(-losses, k_max - 1)[:k_max]
    top = xp.sort(top)[::-1]
    return [(top[k - 1], top[:k].mean()) for k in ks], losses.mean()


def monte_carlo(weights, mu, cov, scenarios, seed):
    rng = xp.random.default_rng(seed)
    chol = xp.linalg.cholesky(cov)
    # The loss is -w.(mu + L z) = -w.mu - (L^T w).z: n flops per scenario.
    exposure = chol.T @ weights
    z = rng.standard_normal((scenarios, weights.size), dtype=xp.float32)
    losses = -(weights @ mu) - z @ exposure.astype(xp.float32)
    return tail_measures(losses.astype(xp.float64), LEVELS)


def historical(weights, returns):
    return tail_measures(-(returns @ weights), LEVELS)


def best(run):
    seconds = math.inf
    for _ in range(REPETITIONS):
        sync()
        start = time.perf_counter()
        result = run()
        sync()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, result


def report(case, items, seconds, bytes_=None):
    line = {
        "kind": "risk", "case": case, "impl": IMPL, "items": items,
        "unit": "scenarios", "seconds": round(seconds, 6),
    }
    if bytes_ is not None:
        line["bytes"] = bytes_
    print("BENCH " + json.dumps(line, separators=(",", ":")))


def main():
    parser = argparse.ArgumentParser(description="The risk kind in NumPy or CuPy.")
    parser.add_argument("--cupy", action="store_true", help="run on the GPU with CuPy")
    if parser.parse_args().cupy:
        use_cupy()
    # The inputs are built by NumPy on the host and copied once, outside the timing.
    n, scenarios = 50, 1_000_000
    weights = 10_000.0 + 500.0 * np.arange(n)
    mu = 0.0001 * (np.arange(n) % 5)
    vol = 0.01 + 0.0004 * np.arange(n)
    cov = 0.3 * np.outer(vol, vol)
    np.fill_diagonal(cov, vol * vol)
    weights, mu, cov = (xp.asarray(a) for a in (weights, mu, cov))
    seconds, _ = best(lambda: monte_carlo(weights, mu, cov, scenarios, 42))
    report("mc_50x1m", scenarios, seconds)

    n, rows = 500, 10_000
    weights = 1_000.0 + 10.0 * np.arange(n)
    returns = 0.0002 + 0.01 * np.random.default_rng(5).standard_normal((rows, n))
    weights, returns = xp.asarray(weights), xp.asarray(returns)
    seconds, _ = best(lambda: historical(weights, returns))
    report("hist_500x10k", rows, seconds, 8 * (rows * n + n))


if __name__ == "__main__":
    main()
