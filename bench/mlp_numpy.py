"""The MLP's CPU twin in NumPy, for comparison with bench_mlp.

Run with `python3 bench/mlp_numpy.py` (needs only numpy), or with `--cupy`
to run the same code on the GPU with CuPy (`"impl":"cupy"`).

Same cases as kernels/examples/bench_mlp.rs: an MLP 64-256-256-1 (ReLU,
input normalisation) on 65 536 float32 samples. `infer`: one forward pass,
`x @ W.T + b` per layer. `train`: one epoch of mini-batches of 512 in a
shuffled order, a hand-written backprop of the mean squared error and Adam
(lr 1e-3, betas 0.9 and 0.999, eps 1e-8), as the Rust `train_cpu` does.
The data and weights differ from the Rust run (NumPy's PCG64); the timings
do not depend on the values.
"""

import argparse
import json
import math
import time

import numpy as np

SIZES = (64, 256, 256, 1)
SAMPLES = 65_536
BATCH_SIZE = 512

# The array module: numpy, or cupy under --cupy (see use_cupy). Every call
# below exists in both with the same meaning.
xp = np
IMPL = "numpy"


def sync():
    pass


def use_cupy():
    global xp, IMPL, sync
    import cupy

    xp, IMPL = cupy, "cupy"
    sync = lambda: cupy.cuda.Device().synchronize()


def random_mlp(rng):
    """He-uniform weights (outputs x inputs), zero biases, as Mlp::random."""
    layers = []
    for inputs, outputs in zip(SIZES[:-1], SIZES[1:]):
        limit = math.sqrt(6.0 / inputs)
        w = rng.uniform(-limit, limit, (outputs, inputs)).astype(np.float32)
        layers.append((w, np.zeros(outputs, np.float32)))
    return layers


def forward(layers, mean, std, x):
    h = (x - mean) / std
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = xp.maximum(h, 0)
    return h


def train_epoch(layers, mean, std, x, y, seed):
    """One epoch of Adam on copies of `layers`; returns the epoch loss."""
    params = [p.copy() for layer in layers for p in layer]
    first = [xp.zeros_like(p) for p in params]
    second = [xp.zeros_like(p) for p in params]
    order = xp.asarray(np.random.default_rng(seed).permutation(x.shape[0]))
    lr, beta1, beta2, eps = 1e-3, 0.9, 0.999, 1e-8
    total = 0.0
    for step, start in enumerate(range(0, x.shape[0], BATCH_SIZE), 1):
        idx = order[start:start + BATCH_SIZE]
        acts = [(x[idx] - mean) / std]
        for i in range(0, len(params), 2):
            z = acts[-1] @ params[i].T + params[i + 1]
            acts.append(xp.maximum(z, 0) if i + 2 < len(params) else z)
        diff = acts[-1] - y[idx]
        total += float((diff * diff).sum())
        delta = (2.0 / diff.size) * diff
        grads = [None] * len(params)
        for i in range(len(params) - 2, -1, -2):
            prev = acts[i // 2]
            grads[i] = delta.T @ prev
            grads[i + 1] = delta.sum(axis=0)
            if i > 0:
                delta = (delta @ params[i]) * (prev > 0)
        c1 = 1.0 / (1.0 - beta1 ** step)
        c2 = 1.0 / (1.0 - beta2 ** step)
        for p, m, v, g in zip(params, first, second, grads):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * (g * g)
            p -= lr * (m * c1) / (xp.sqrt(v * c2) + eps)
    return total / (x.shape[0] * y.shape[1])


def best(run, repetitions):
    seconds = math.inf
    for _ in range(repetitions):
        sync()
        start = time.perf_counter()
        result = run()
        sync()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, result


def report(kind, case, seconds):
    line = {
        "kind": kind, "case": case, "impl": IMPL, "items": SAMPLES,
        "unit": "samples", "seconds": round(seconds, 6),
    }
    print("BENCH " + json.dumps(line, separators=(",", ":")))


def main():
    parser = argparse.ArgumentParser(description="The MLP in NumPy or CuPy.")
    parser.add_argument("--cupy", action="store_true", help="run on the GPU with CuPy")
    if parser.parse_args().cupy:
        use_cupy()
    # The inputs are built by NumPy on the host and copied once, outside the timing.
    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, (SAMPLES, SIZES[0])).astype(np.float32)
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] ** 2).astype(np.float32)
    layers = [tuple(xp.asarray(p) for p in layer) for layer in random_mlp(rng)]
    mean = xp.full(SIZES[0], 0.1, dtype=xp.float32)
    std = xp.full(SIZES[0], 1.2, dtype=xp.float32)
    x, y = xp.asarray(x), xp.asarray(y)

    seconds, _ = best(lambda: forward(layers, mean, std, x), 5)
    report("infer", "mlp64x256x256x1_b65536", seconds)
    seconds, _ = best(lambda: train_epoch(layers, mean, std, x, y, 1), 3)
    report("train", "mlp64x256x256x1_b65536_bs512_adam", seconds)


if __name__ == "__main__":
    main()
