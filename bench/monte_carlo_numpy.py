#!/usr/bin/env python3
"""The monte_carlo kind in NumPy, for comparison with the Rust CPU twin.

GBM paths under the risk-neutral measure (log-price walk in float32, as the
Rust and CUDA code), European call and put, Asian arithmetic and geometric
calls with standard errors, terminal price percentiles and mean, on the same
cases as kernels/examples/bench_monte_carlo.rs. Paths go in chunks so that
memory stays bounded. The random numbers are NumPy's, not Philox.

Run with `python3 bench/monte_carlo_numpy.py` (needs only numpy). Prints
`BENCH {...,"impl":"numpy",...}` lines.
"""

import json
import sys
import time

import numpy as np

CHUNK_ELEMENTS = 1 << 23  # path steps per chunk: 32 MiB of float32 normals
LEVELS = [5.0, 50.0, 95.0]


def price(s0, strike, rate, dividend, sigma, maturity, steps, paths, seed):
    rng = np.random.default_rng(seed)
    dt = maturity / steps
    drift = np.float32((rate - dividend - 0.5 * sigma * sigma) * dt)
    vol = np.float32(sigma * np.sqrt(dt))
    x0 = np.float32(np.log(s0))
    chunk = max(1, CHUNK_ELEMENTS // steps)
    sums = np.zeros(4)
    squares = np.zeros(4)
    terminal_all = np.empty(paths)
    for start in range(0, paths, chunk):
        n = min(chunk, paths - start)
        z = rng.standard_normal((n, steps), dtype=np.float32)
        z *= vol
        z += drift
        x = np.cumsum(z, axis=1, dtype=np.float32)
        x += x0
        average = np.exp(x).mean(axis=1, dtype=np.float64)
        geometric = np.exp(x.mean(axis=1, dtype=np.float64))
        terminal = np.exp(x[:, -1]).astype(np.float64)
        terminal_all[start : start + n] = terminal
        payoffs = np.stack(
            [
                np.maximum(terminal - strike, 0.0),
                np.maximum(strike - terminal, 0.0),
                np.maximum(average - strike, 0.0),
                np.maximum(geometric - strike, 0.0),
            ]
        )
        sums += payoffs.sum(axis=1)
        squares += np.einsum("ij,ij->i", payoffs, payoffs)
    discount = np.exp(-rate * maturity)
    mean = sums / paths
    variance = np.maximum((squares - sums * mean) / max(paths - 1, 1), 0.0)
    prices = discount * mean
    errors = discount * np.sqrt(variance / paths)
    names = ["european_call", "european_put", "asian_arithmetic_call", "asian_geometric_call"]
    out = {name: (p, e) for name, p, e in zip(names, prices, errors)}
    out["mean_terminal_price"] = terminal_all.mean()
    out["percentiles"] = np.percentile(terminal_all, LEVELS)
    return out


def main():
    cases = [
        ("1M_paths_252_steps", 1_000_000, 252),
        ("10M_paths_1_step", 10_000_000, 1),
    ]
    for case, paths, steps in cases:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            out = price(100.0, 100.0, 0.03, 0.0, 0.2, 1.0, steps, paths, 42)
            best = min(best, time.perf_counter() - start)
        call, error = out["european_call"]
        print(f"{case}: numpy call {call:.6f} +- {error:.6f}", file=sys.stderr, flush=True)
        line = {
            "kind": "monte_carlo",
            "case": case,
            "impl": "numpy",
            "items": paths,
            "unit": "paths",
            "seconds": round(best, 6),
        }
        print("BENCH " + json.dumps(line, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
