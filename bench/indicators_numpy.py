"""The `indicators` kind in NumPy, for comparison with the Rust CPU twin.

Run with `python3 bench/indicators_numpy.py` (needs only numpy).

Same cases as `kernels/examples/bench_indicators.rs`: 1000 symbols x 2520
closes and 10 000 symbols x 252 closes, SMA(20), EMA(20), RSI(14),
MACD(12,26,9), Bollinger(20,2) with the same definitions and warm-up NaNs.
Vectorised across symbols (the recurrences step through time with one
array operation per step, the window statistics use cumulative sums and
sliding windows). Prints one BENCH line per case, the best of 5 runs.
"""

import json
import time

import numpy as np

REPETITIONS = 5


def walks(symbols, closes, seed=7):
    rng = np.random.default_rng(seed)
    steps = 1.0 + 0.02 * (rng.random((symbols, closes)) - 0.5)
    return 100.0 * np.cumprod(steps, axis=1)


def sma(x, n):
    out = np.full(x.shape, np.nan)
    c = np.cumsum(x, axis=1)
    out[:, n - 1] = c[:, n - 1]
    out[:, n:] = c[:, n:] - c[:, :-n]
    out[:, n - 1 :] /= n
    return out


def ema(x, n, start=0):
    """EMA(n) of x[:, start:], seeded with the mean of its first n values."""
    out = np.full(x.shape, np.nan)
    seed = start + n - 1
    if seed >= x.shape[1]:
        return out
    alpha = 2.0 / (n + 1.0)
    e = x[:, start : seed + 1].mean(axis=1)
    out[:, seed] = e
    for t in range(seed + 1, x.shape[1]):
        e = alpha * x[:, t] + (1.0 - alpha) * e
        out[:, t] = e
    return out


def rsi(x, n):
    out = np.full(x.shape, np.nan)
    d = np.diff(x, axis=1)
    gains = np.maximum(d, 0.0)
    losses = np.maximum(-d, 0.0)
    g = gains[:, :n].mean(axis=1)
    l = losses[:, :n].mean(axis=1)
    for t in range(n, x.shape[1]):
        if t > n:
            g = (g * (n - 1) + gains[:, t - 1]) / n
            l = (l * (n - 1) + losses[:, t - 1]) / n
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, t] = np.where(l == 0.0, 100.0, 100.0 - 100.0 / (1.0 + g / l))
    return out


def macd(x, fast, slow, signal):
    m = ema(x, fast) - ema(x, slow)
    s = ema(m, signal, start=slow - 1)
    return [m, s, m - s]


def bollinger(x, n, k):
    mid = sma(x, n)
    sd = np.full(x.shape, np.nan)
    sd[:, n - 1 :] = np.lib.stride_tricks.sliding_window_view(x, n, axis=1).std(axis=-1)
    return [mid, mid + k * sd, mid - k * sd]


def all_indicators(x):
    return [sma(x, 20), ema(x, 20), rsi(x, 14), *macd(x, 12, 26, 9), *bollinger(x, 20, 2.0)]


def main():
    for case, symbols, closes in [("1000x2520", 1000, 2520), ("10000x252", 10_000, 252)]:
        x = walks(symbols, closes)
        best = float("inf")
        for _ in range(REPETITIONS):
            start = time.perf_counter()
            all_indicators(x)
            best = min(best, time.perf_counter() - start)
        line = {
            "kind": "indicators",
            "case": case,
            "impl": "numpy",
            "items": symbols * closes,
            "unit": "values",
            "seconds": round(best, 6),
        }
        print("BENCH " + json.dumps(line, separators=(",", ":")))


if __name__ == "__main__":
    main()
