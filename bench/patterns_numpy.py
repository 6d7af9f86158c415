"""The `patterns` kind in NumPy, for comparison with the Rust CPU twin.

Run with `python3 bench/patterns_numpy.py` (needs only numpy), or with
`--cupy` to run the same code on the GPU with CuPy (`"impl":"cupy"`).

Same cases as `kernels/examples/bench_patterns.rs`: 1000 symbols x 2520
bars and 10 000 symbols x 252 bars, default thresholds, the same seven
rules and bits (a uint32 mask per bar). Fully vectorised: every rule is a
boolean array over (symbol, bar), the two- and three-bar rules compare
shifted arrays. Prints one BENCH line per case, the best of 5 runs;
"bytes" is the least memory traffic of one pass (open, high, low, close
read once as float64, the uint32 masks written once), for a GB/s figure.
"""

import argparse
import json
import sys
import time

import numpy as np

REPETITIONS = 5
DOJI_BODY, SHADOW_RATIO, SMALL_SHADOW, LONG_BODY, STAR_BODY = 0.1, 2.0, 0.1, 0.5, 0.3
BYTES_PER_BAR = 4 * 8 + 4

# The array module: numpy, or cupy under --cupy (see use_cupy). Every call
# in masks() exists in both with the same meaning.
xp = np
IMPL = "numpy"


def sync():
    pass


def use_cupy():
    global xp, IMPL, sync
    import cupy

    xp, IMPL = cupy, "cupy"
    sync = lambda: cupy.cuda.Device().synchronize()


def random_bars(symbols, length, seed=7):
    """OHLC bars, drawn by NumPy on the host whatever the module (so that
    both paths see the same input and count the same hits)."""
    rng = np.random.default_rng(seed)
    u = rng.random((6, symbols, length))
    close = np.empty((symbols, length))
    open_ = np.empty((symbols, length))
    price = np.full(symbols, 100.0)
    gap = 1.0 + 0.01 * (u[0] - 0.5)
    move = 1.0 + 0.03 * (u[1] - 0.5)
    for t in range(length):
        open_[:, t] = price * gap[:, t]
        close[:, t] = open_[:, t] * move[:, t]
        price = close[:, t]
    high = np.maximum(open_, close) * (1.0 + 0.01 * u[2] * u[3])
    low = np.minimum(open_, close) * (1.0 - 0.01 * u[4] * u[5])
    return tuple(xp.asarray(a) for a in (open_, high, low, close))


def masks(open_, high, low, close):
    top = xp.maximum(open_, close)
    bottom = xp.minimum(open_, close)
    body = top - bottom
    rng = high - low
    upper = high - top
    lower = bottom - low
    bull = close > open_
    bear = close < open_
    out = xp.zeros(close.shape, dtype=xp.uint32)

    doji = (rng > 0) & (body <= DOJI_BODY * rng)
    shaped = (rng > 0) & ~doji
    hammer = shaped & (lower >= SHADOW_RATIO * body) & (upper <= SMALL_SHADOW * rng)
    star = shaped & (upper >= SHADOW_RATIO * body) & (lower <= SMALL_SHADOW * rng)
    out |= doji.astype(xp.uint32)
    out |= hammer.astype(xp.uint32) << 1
    out |= star.astype(xp.uint32) << 2

    # Two bars: p = previous (columns :-1), c = current (columns 1:).
    p, c = slice(None, -1), slice(1, None)
    bull_engulf = bear[:, p] & bull[:, c] & (open_[:, c] <= close[:, p]) & (close[:, c] >= open_[:, p]) & (body[:, c] > body[:, p])
    bear_engulf = bull[:, p] & bear[:, c] & (open_[:, c] >= close[:, p]) & (close[:, c] <= open_[:, p]) & (body[:, c] > body[:, p])
    out[:, 1:] |= bull_engulf.astype(xp.uint32) << 3
    out[:, 1:] |= bear_engulf.astype(xp.uint32) << 4

    # Three bars: a, b, c.
    a, b, c = slice(None, -2), slice(1, -1), slice(2, None)
    long_a = body[:, a] >= LONG_BODY * rng[:, a]
    small_b = body[:, b] <= STAR_BODY * body[:, a]
    mid = 0.5 * (open_[:, a] + close[:, a])
    morning = bear[:, a] & long_a & small_b & (top[:, b] <= close[:, a]) & bull[:, c] & (close[:, c] > mid)
    evening = bull[:, a] & long_a & small_b & (bottom[:, b] >= close[:, a]) & bear[:, c] & (close[:, c] < mid)
    out[:, 2:] |= morning.astype(xp.uint32) << 5
    out[:, 2:] |= evening.astype(xp.uint32) << 6
    return out


def main():
    parser = argparse.ArgumentParser(description="The patterns kind in NumPy or CuPy.")
    parser.add_argument("--cupy", action="store_true", help="run on the GPU with CuPy")
    if parser.parse_args().cupy:
        use_cupy()
    for case, symbols, length in [("1000x2520", 1000, 2520), ("10000x252", 10_000, 252)]:
        bars = random_bars(symbols, length)
        best = float("inf")
        for _ in range(REPETITIONS):
            sync()
            start = time.perf_counter()
            m = masks(*bars)
            sync()
            best = min(best, time.perf_counter() - start)
        hits = [int(((m >> bit) & 1).sum()) for bit in range(7)]
        line = {
            "kind": "patterns",
            "case": case,
            "impl": IMPL,
            "items": symbols * length,
            "unit": "bars",
            "seconds": round(best, 6),
            "bytes": BYTES_PER_BAR * symbols * length,
        }
        print("BENCH " + json.dumps(line, separators=(",", ":")), flush=True)
        print(f"  {case} {IMPL}: hits per pattern {hits}", file=sys.stderr)


if __name__ == "__main__":
    main()
