"""The MLP in PyTorch, for comparison with bench_mlp (its CUDA path above all).

Run with `python3 bench/mlp_torch.py [--device cuda|cpu]` (needs numpy and
torch; the default is cuda when torch sees a GPU, else cpu).

Same cases as kernels/examples/bench_mlp.rs: an MLP 64-256-256-1 (ReLU,
input normalisation) on 65 536 float32 samples, `torch.nn.Linear` layers
in FP32 (TF32 off, as the Rust path's cuBLAS default math mode).
`infer`: one forward pass under `torch.inference_mode()`, the inputs copied
from the host and the outputs back inside the timing, as `GpuMlp::forward`
does. `train`: one epoch of mini-batches of 512 in a shuffled order, the
mean squared error, autograd and `torch.optim.Adam` (lr 1e-3, betas 0.9
and 0.999, eps 1e-8, PyTorch's default implementation), the training set
copied to the device inside the timing, as `GpuMlp::train` does; the
per-step losses stay on the device until the epoch ends. Then the model
cache's two latencies, one request of one sample each: `cold_load`, a copy
of the model held on the host moved to the device plus its first forward,
and `warm`, a forward on the resident model. The data and weights differ
from the Rust run (NumPy's PCG64); the timings do not depend on the values.
Each line carries `"impl":"torch"` and the device it ran on.
"""

import argparse
import copy
import json
import math
import sys
import time

import numpy as np
import torch

SIZES = (64, 256, 256, 1)
SAMPLES = 65_536
BATCH_SIZE = 512
INFER_CASE = "mlp64x256x256x1_b65536"
TRAIN_CASE = "mlp64x256x256x1_b65536_bs512_adam"


class Mlp(torch.nn.Module):
    """(x - mean) / std, then Linear layers with ReLU between them."""

    def __init__(self, rng):
        super().__init__()
        layers = []
        for inputs, outputs in zip(SIZES[:-1], SIZES[1:]):
            # He-uniform weights, zero biases, as Mlp::random.
            limit = math.sqrt(6.0 / inputs)
            linear = torch.nn.Linear(inputs, outputs)
            weight = rng.uniform(-limit, limit, (outputs, inputs)).astype(np.float32)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(weight))
                linear.bias.zero_()
            layers.append(linear)
            layers.append(torch.nn.ReLU())
        # No activation after the last layer.
        self.layers = torch.nn.Sequential(*layers[:-1])
        self.register_buffer("mean", torch.full((SIZES[0],), 0.1))
        self.register_buffer("std", torch.full((SIZES[0],), 1.2))

    def forward(self, x):
        return self.layers((x - self.mean) / self.std)


def make_sync(device):
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def best(run, repetitions, sync):
    seconds = math.inf
    result = None
    for _ in range(repetitions):
        sync()
        start = time.perf_counter()
        result = run()
        sync()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, result


def infer(net, x_host, device):
    """Host inputs in, host outputs back: one request as a worker serves it."""
    with torch.inference_mode():
        x = torch.from_numpy(x_host).to(device)
        return net(x).cpu().numpy()


def train_epoch(net, x_host, y_host, device, seed):
    """One epoch of Adam on `net`; returns the epoch loss."""
    x = torch.from_numpy(x_host).to(device)
    y = torch.from_numpy(y_host).to(device)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(x.shape[0])).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    total = torch.zeros((), device=device)
    for start in range(0, x.shape[0], BATCH_SIZE):
        idx = order[start:start + BATCH_SIZE]
        loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * idx.shape[0]
    return total.item() / (x.shape[0] * y.shape[1])


def report(kind, case, unit, items, seconds, device):
    line = {
        "kind": kind, "case": case, "impl": "torch", "items": items,
        "unit": unit, "seconds": round(seconds, 6), "device": device.type,
    }
    print("BENCH " + json.dumps(line, separators=(",", ":")), flush=True)


def main():
    parser = argparse.ArgumentParser(description="The MLP in PyTorch.")
    parser.add_argument(
        "--device", choices=("cuda", "cpu"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the model runs (default: cuda when available)",
    )
    device = torch.device(parser.parse_args().device)
    # Plain FP32 GEMMs on the GPU, as cuBLAS's default math mode in Rust.
    torch.backends.cuda.matmul.allow_tf32 = False
    sync = make_sync(device)

    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, (SAMPLES, SIZES[0])).astype(np.float32)
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] ** 2).astype(np.float32)
    host_model = Mlp(rng)
    net = copy.deepcopy(host_model).to(device)

    seconds, out = best(lambda: infer(net, x, device), 5, sync)
    report("infer", INFER_CASE, "samples", SAMPLES, seconds, device)
    print(f"  infer: output[0] {out[0, 0]:.6f}", file=sys.stderr)

    # A fresh copy of the model per repetition, made outside the timing.
    copies = [copy.deepcopy(host_model).to(device) for _ in range(3)]
    seconds, loss = best(lambda: train_epoch(copies.pop(), x, y, device, 1), 3, sync)
    report("train", TRAIN_CASE, "samples", SAMPLES, seconds, device)
    print(f"  train: epoch loss {loss:.5f}", file=sys.stderr)

    request = x[:1]
    seconds, _ = best(lambda: infer(copy.deepcopy(host_model).to(device), request, device), 5, sync)
    report("infer", "cold_load", "requests", 1, seconds, device)
    seconds, _ = best(lambda: infer(net, request, device), 20, sync)
    report("infer", "warm", "requests", 1, seconds, device)


if __name__ == "__main__":
    main()
