"""The `risk` kind in NumPy, for comparison with bench_risk.

Run with `python3 bench/risk_numpy.py`

Same cases as kernels/examples/bench_risk.rs: Monte Carlo, 50 assets x 10^6
scenarios; historical, 500 assets x 10^4 rows; confidence 0.95 and 0.99.
VaR is the k-th largest loss and CVaR the mean of the k largest, with
k = ceil((1 - c) N). The RNG differs from Philox; the timings include
drawing the normals, as the Rust and CUDA runs do.
"""

import json
import math
import time

import numpy as np

REPETITIONS = 3
LEVELS = (0.95, 0.99)


def tail_measures(losses, levels):
    """VaR and CVaR per level from one partition of the largest losses."""
    n = losses.size
    ks = [max(1, math.ceil(round((1 - c) * n, 9))) for c in levels]
    k_max = max(ks)
    top = -np.partition(-losses, k_max - 1)[:k_max]
    top = np.sort(top)[::-1]
    return [(top[k - 1], top[:k].mean()) for k in ks], losses.mean()


def monte_carlo(weights, mu, cov, scenarios, seed):
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov)
    # The loss is -w.(mu + L z) = -w.mu - (L^T w).z: n flops per scenario.
    exposure = chol.T @ weights
    z = rng.standard_normal((scenarios, weights.size), dtype=np.float32)
    losses = -(weights @ mu) - z @ exposure.astype(np.float32)
    return tail_measures(losses.astype(np.float64), LEVELS)


def historical(weights, returns):
    return tail_measures(-(returns @ weights), LEVELS)


def best(run):
    seconds = math.inf
    for _ in range(REPETITIONS):
        start = time.perf_counter()
        result = run()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, result


def report(case, items, seconds):
    print("BENCH " + json.dumps({
        "kind": "risk", "case": case, "impl": "numpy", "items": items,
        "unit": "scenarios", "seconds": round(seconds, 6),
    }, separators=(",", ":")))


def main():
    n, scenarios = 50, 1_000_000
    weights = 10_000.0 + 500.0 * np.arange(n)
    mu = 0.0001 * (np.arange(n) % 5)
    vol = 0.01 + 0.0004 * np.arange(n)
    cov = 0.3 * np.outer(vol, vol)
    np.fill_diagonal(cov, vol * vol)
    seconds, _ = best(lambda: monte_carlo(weights, mu, cov, scenarios, 42))
    report("mc_50x1m", scenarios, seconds)

    n, rows = 500, 10_000
    weights = 1_000.0 + 10.0 * np.arange(n)
    returns = 0.0002 + 0.01 * np.random.default_rng(5).standard_normal((rows, n))
    seconds, _ = best(lambda: historical(weights, returns))
    report("hist_500x10k", rows, seconds)


if __name__ == "__main__":
    main()
