"""The `indicators` kind in NumPy, for comparison with the Rust CPU twin.

Run with `python3 bench/indicators_numpy.py` (needs only numpy), or with
`--cupy` to run the same code on the GPU with CuPy (`"impl":"cupy"`).

Same cases as `kernels/examples/bench_indicators.rs`: 1000 symbols x 2520
closes and 10 000 symbols x 252 closes, SMA(20), EMA(20), RSI(14),
MACD(12,26,9), Bollinger(20,2) with the same definitions and warm-up NaNs.
Vectorised across symbols (the recurrences step through time with one
array operation per step, the window statistics use cumulative sums and
sliding windows). Prints one BENCH line per case, the best of 5 runs;
"bytes" is the least memory traffic of one pass (the closes read once, the
nine output series written once, 8 bytes each), for a GB/s figure.
"""

import argparse
import json
import time

import numpy as np

REPETITIONS = 5
OUTPUTS = 9  # SMA, EMA, RSI, MACD line/signal/histogram, Bollinger mid/upper/lower

# The array module: numpy, or cupy under --cupy (see use_cupy). Every call
# below exists in both with the same meaning (windows() covers a CuPy
# without sliding_window_view); np.errstate stays NumPy's, CuPy raises no
# floating-point warnings. Under CuPy each step of a recurrence is a few
# kernel launches, as each is one array operation under NumPy.
xp = np
IMPL = "numpy"


def sync():
    pass


def use_cupy():
    global xp, IMPL, sync
    import cupy

    xp, IMPL = cupy, "cupy"
    sync = lambda: cupy.cuda.Device().synchronize()


def walks(symbols, closes, seed=7):
    """The closes, drawn by NumPy on the host whatever the module, so that
    both paths see the same input."""
    rng = np.random.default_rng(seed)
    steps = 1.0 + 0.02 * (rng.random((symbols, closes)) - 0.5)
    return xp.asarray(100.0 * np.cumprod(steps, axis=1))


def sma(x, n):
    out = xp.full(x.shape, xp.nan)
    c = xp.cumsum(x, axis=1)
    out[:, n - 1] = c[:, n - 1]
    out[:, n:] = c[:, n:] - c[:, :-n]
    out[:, n - 1 :] /= n
    return out


def ema(x, n, start=0):
    """EMA(n) of x[:, start:], seeded with the mean of its first n values."""
    out = xp.full(x.shape, xp.nan)
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
    out = xp.full(x.shape, xp.nan)
    d = xp.diff(x, axis=1)
    gains = xp.maximum(d, 0.0)
    losses = xp.maximum(-d, 0.0)
    g = gains[:, :n].mean(axis=1)
    l = losses[:, :n].mean(axis=1)
    for t in range(n, x.shape[1]):
        if t > n:
            g = (g * (n - 1) + gains[:, t - 1]) / n
            l = (l * (n - 1) + losses[:, t - 1]) / n
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, t] = xp.where(l == 0.0, 100.0, 100.0 - 100.0 / (1.0 + g / l))
    return out


def macd(x, fast, slow, signal):
    m = ema(x, fast) - ema(x, slow)
    s = ema(m, signal, start=slow - 1)
    return [m, s, m - s]


def windows(x, n):
    """The length-n windows of x along axis 1, as a view (no copy)."""
    tricks = xp.lib.stride_tricks
    if hasattr(tricks, "sliding_window_view"):
        return tricks.sliding_window_view(x, n, axis=1)
    # CuPy releases older than its sliding_window_view: the same view.
    rows, cols = x.shape
    return tricks.as_strided(x, shape=(rows, cols - n + 1, n), strides=x.strides + x.strides[1:])


def bollinger(x, n, k):
    mid = sma(x, n)
    sd = xp.full(x.shape, xp.nan)
    sd[:, n - 1 :] = windows(x, n).std(axis=-1)
    return [mid, mid + k * sd, mid - k * sd]


def all_indicators(x):
    return [sma(x, 20), ema(x, 20), rsi(x, 14), *macd(x, 12, 26, 9), *bollinger(x, 20, 2.0)]


def main():
    parser = argparse.ArgumentParser(description="The indicators kind in NumPy or CuPy.")
    parser.add_argument("--cupy", action="store_true", help="run on the GPU with CuPy")
    if parser.parse_args().cupy:
        use_cupy()
    for case, symbols, closes in [("1000x2520", 1000, 2520), ("10000x252", 10_000, 252)]:
        x = walks(symbols, closes)
        best = float("inf")
        for _ in range(REPETITIONS):
            sync()
            start = time.perf_counter()
            all_indicators(x)
            sync()
            best = min(best, time.perf_counter() - start)
        line = {
            "kind": "indicators",
            "case": case,
            "impl": IMPL,
            "items": symbols * closes,
            "unit": "values",
            "seconds": round(best, 6),
            "bytes": 8 * symbols * closes * (1 + OUTPUTS),
        }
        print("BENCH " + json.dumps(line, separators=(",", ":")))


if __name__ == "__main__":
    main()
