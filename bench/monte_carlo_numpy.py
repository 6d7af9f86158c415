#!/usr/bin/env python3
"""The monte_carlo kind in NumPy, for comparison with the Rust CPU twin.

GBM paths under the risk-neutral measure (log-price walk in float32, as the
Rust and CUDA code), European call and put, Asian arithmetic and geometric
calls with standard errors, terminal price percentiles and mean, on the same
cases as kernels/examples/bench_monte_carlo.rs. Paths go in chunks so that
memory stays bounded. The random numbers are NumPy's (PCG64), or CuPy's
(XORWOW) under --cupy, not Philox.

Run with `python3 bench/monte_carlo_numpy.py` (needs only numpy). Prints
`BENCH {...,"impl":"numpy",...}` lines. With `--cupy` the same code runs on
the GPU with CuPy and the lines say `"impl":"cupy"`. Bound by drawing the
normals and the exponentials, not by memory: no "bytes".
"""

import argparse
import json
import sys
import time

import numpy as np

CHUNK_ELEMENTS = 1 << 23  # path steps per chunk: 32 MiB of float32 normals
LEVELS = [5.0, 50.0, 95.0]

# The array module: numpy, or cupy under --cupy (see use_cupy). Every call in
# price() exists in both with the same meaning: default_rng(seed) gives a
# Generator whose standard_normal takes dtype=float32 in both; cumsum and
# mean take dtype=, einsum and percentile are in CuPy too. Scalars stay host
# NumPy. The four sums, the mean and the percentiles come back to the host
# (asnumpy) at the end, inside the timing, as they are the result.
xp = np
IMPL = "numpy"
asnumpy = np.asarray


def sync():
    pass


def use_cupy():
    global xp, IMPL, asnumpy, sync
    import cupy

    xp, IMPL, asnumpy = cupy, "cupy", cupy.asnumpy
    sync = lambda: cupy.cuda.Device().synchronize()


def price(s0, strike, rate, dividend, sigma, maturity, steps, paths, seed):
    rng = xp.random.default_rng(seed)
    dt = maturity / steps
    drift = np.float32((rate - dividend - 0.5 * sigma * sigma) * dt)
    vol = np.float32(sigma * np.sqrt(dt))
    x0 = np.float32(np.log(s0))
    chunk = max(1, CHUNK_ELEMENTS // steps)
    sums = xp.zeros(4)
    squares = xp.zeros(4)
    terminal_all = xp.empty(paths)
    for start in range(0, paths, chunk):
        n = min(chunk, paths - start)
        z = rng.standard_normal((n, steps), dtype=xp.float32)
        z *= vol
        z += drift
        x = xp.cumsum(z, axis=1, dtype=xp.float32)
        x += x0
        average = xp.exp(x).mean(axis=1, dtype=xp.float64)
        geometric = xp.exp(x.mean(axis=1, dtype=xp.float64))
        terminal = xp.exp(x[:, -1]).astype(xp.float64)
        terminal_all[start : start + n] = terminal
        payoffs = xp.stack(
            [
                xp.maximum(terminal - strike, 0.0),
                xp.maximum(strike - terminal, 0.0),
                xp.maximum(average - strike, 0.0),
                xp.maximum(geometric - strike, 0.0),
            ]
        )
        sums += payoffs.sum(axis=1)
        squares += xp.einsum("ij,ij->i", payoffs, payoffs)
    sums, squares = asnumpy(sums), asnumpy(squares)
    discount = np.exp(-rate * maturity)
    mean = sums / paths
    variance = np.maximum((squares - sums * mean) / max(paths - 1, 1), 0.0)
    prices = discount * mean
    errors = discount * np.sqrt(variance / paths)
    names = ["european_call", "european_put", "asian_arithmetic_call", "asian_geometric_call"]
    out = {name: (p, e) for name, p, e in zip(names, prices, errors)}
    out["mean_terminal_price"] = asnumpy(terminal_all.mean())
    out["percentiles"] = asnumpy(xp.percentile(terminal_all, xp.asarray(LEVELS)))
    return out


def main():
    parser = argparse.ArgumentParser(description="The monte_carlo kind in NumPy or CuPy.")
    parser.add_argument("--cupy", action="store_true", help="run on the GPU with CuPy")
    if parser.parse_args().cupy:
        use_cupy()
    cases = [
        ("1M_paths_252_steps", 1_000_000, 252),
        ("10M_paths_1_step", 10_000_000, 1),
    ]
    for case, paths, steps in cases:
        best = float("inf")
        for _ in range(3):
            sync()
            start = time.perf_counter()
            out = price(100.0, 100.0, 0.03, 0.0, 0.2, 1.0, steps, paths, 42)
            sync()
            best = min(best, time.perf_counter() - start)
        call, error = out["european_call"]
        print(f"{case}: {IMPL} call {call:.6f} +- {error:.6f}", file=sys.stderr, flush=True)
        line = {
            "kind": "monte_carlo",
            "case": case,
            "impl": IMPL,
            "items": paths,
            "unit": "paths",
            "seconds": round(best, 6),
        }
        print("BENCH " + json.dumps(line, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
