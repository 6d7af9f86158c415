"""The transformer's CPU twin against PyTorch (issue 17's check and bench).

Check: `cargo run --release -p tandem-kernels --example transformer_check --
check DIR`, then `python3 bench/transformer_torch.py check DIR`. Loads the
twin's safetensors files into an equivalent module written from
`torch.nn.functional` (pre-norm blocks, `F.multi_head_attention_forward`'s
maths spelled out, GELU tanh form, LayerNorm eps 1e-5) and compares:
outputs with and without the causal mask (1e-5 relative), the parameters
after one Adam step (lr 1e-3, `torch.optim.Adam`, 1e-4), and trains the
same series as the twin to show its loss falling too.

Bench: `python3 bench/transformer_torch.py bench WINDOWS` times what the
example's `bench WINDOWS` does (same model, inference over WINDOWS windows
and one epoch of Adam in batches of 32), `BENCH {...}` lines with
`"impl":"torch"`. Set the same thread count on both sides
(`RAYON_NUM_THREADS`, `torch.set_num_threads` follows `OMP_NUM_THREADS`).

GPU peer: `python3 bench/transformer_torch.py price WINDOWS [cuda|cpu]`
times what `kernels/examples/bench_transformer_gpu.rs --gpu` does: the
seed's price model (32 features, window 128, d_model 256, 8 heads, 4
blocks, ff 1024, causal, sinusoidal positions, last-step head), FP32 with
TF32 off (as cuBLAS's default math on the Rust side), each repetition one
forward of WINDOWS windows with the inputs copied from the host and the
outputs back inside the timing, best of 5 after a warm-up; one `BENCH`
line with `"impl":"torch"` and the example's case name.
`scripts/gpu-check` runs it with `cuda` when torch imports; `cpu` is a
dry run of the same code.
"""

import json
import math
import os
import sys
import time
from pathlib import Path

# Deterministic algorithms (below) on CUDA need cuBLAS's fixed workspace,
# set before CUDA starts; the CPU ignores it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import torch
import torch.nn.functional as F

torch.use_deterministic_algorithms(True)


def read_safetensors(path):
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    data = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", name
        start, end = info["data_offsets"]
        tensors[name] = torch.from_numpy(
            np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"]).copy()
        )
    return meta, tensors


class Transformer(torch.nn.Module):
    def __init__(self, meta, tensors):
        super().__init__()
        self.heads = int(meta["heads"])
        self.window = int(meta["window"])
        self.causal = meta["causal"] == "true"
        self.pooling = meta["pooling"]
        self.learned = meta["positions"] == "learned"
        self.register_buffer("mean", tensors["input.mean"])
        self.register_buffer("std", tensors["input.std"])
        self.params = torch.nn.ParameterDict(
            {
                name.replace(".", "__"): torch.nn.Parameter(value.clone())
                for name, value in tensors.items()
                if name not in ("input.mean", "input.std")
            }
        )
        self.layers = 0
        while f"layer__{self.layers}__norm1__weight" in self.params:
            self.layers += 1
        d = tensors["embed.weight"].shape[0]
        if not self.learned:
            pos = torch.zeros(self.window, d, dtype=torch.float64)
            t = torch.arange(self.window, dtype=torch.float64)[:, None]
            pair = torch.arange(d, dtype=torch.float64) // 2
            angle = t / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * pair / d)
            pos[:, 0::2] = torch.sin(angle[:, 0::2])
            pos[:, 1::2] = torch.cos(angle[:, 1::2])
            self.register_buffer("pos", pos.float())

    def p(self, name):
        return self.params[name.replace(".", "__")]

    def forward(self, x):
        b, t, _ = x.shape
        x = (x - self.mean) / self.std
        x = F.linear(x, self.p("embed.weight"), self.p("embed.bias"))
        x = x + (self.p("position.weight") if self.learned else self.pos)
        d = x.shape[-1]
        h, dh = self.heads, d // self.heads
        mask = None
        if self.causal:
            mask = torch.triu(torch.full((t, t), float("-inf"), device=x.device), diagonal=1)
        for i in range(self.layers):
            l = lambda n: self.p(f"layer.{i}.{n}")
            y = F.layer_norm(x, (d,), l("norm1.weight"), l("norm1.bias"), 1e-5)
            q, k, v = F.linear(y, l("attn.in_proj.weight"), l("attn.in_proj.bias")).split(d, -1)
            q, k, v = (z.reshape(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
            s = q @ k.transpose(-1, -2) / math.sqrt(dh)
            if mask is not None:
                s = s + mask
            a = torch.softmax(s, -1) @ v
            a = a.transpose(1, 2).reshape(b, t, d)
            x = x + F.linear(a, l("attn.out_proj.weight"), l("attn.out_proj.bias"))
            y = F.layer_norm(x, (d,), l("norm2.weight"), l("norm2.bias"), 1e-5)
            y = F.gelu(F.linear(y, l("ff.linear1.weight"), l("ff.linear1.bias")), approximate="tanh")
            x = x + F.linear(y, l("ff.linear2.weight"), l("ff.linear2.bias"))
        x = F.layer_norm(x, (d,), self.p("final_norm.weight"), self.p("final_norm.bias"), 1e-5)
        pooled = x[:, -1] if self.pooling == "last" else x.mean(1)
        return F.linear(pooled, self.p("head.weight"), self.p("head.bias"))


def load(path):
    meta, tensors = read_safetensors(path)
    return Transformer(meta, tensors), tensors


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check(dir):
    dir = Path(dir)
    x_flat = np.fromfile(dir / "x.f32", dtype="<f4")
    y = torch.from_numpy(np.fromfile(dir / "y.f32", dtype="<f4")).reshape(-1, 1)
    ok = True
    for variant in ("plain", "causal"):
        model, tensors = load(dir / f"{variant}.safetensors")
        f, w = tensors["embed.weight"].shape[1], model.window
        x = torch.from_numpy(x_flat.copy()).reshape(-1, w, f)
        with torch.no_grad():
            ours = torch.from_numpy(np.fromfile(dir / f"out_{variant}.f32", dtype="<f4")).reshape(-1, 1)
            theirs = model(x)
        r = rel(ours, theirs)
        ok &= r <= 1e-5
        print(f"forward {variant:6}: max |rust - torch| / max |torch| = {r:.2e} (limit 1e-5)")
    # One Adam step from the causal weights.
    model, before = load(dir / "causal.safetensors")
    x = torch.from_numpy(x_flat.copy()).reshape(-1, model.window, before["embed.weight"].shape[1])
    opt = torch.optim.Adam(model.params.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    loss = F.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    _, stepped = read_safetensors(dir / "stepped.safetensors")
    worst, worst_name, worst_update = 0.0, "", 0.0
    for name, value in stepped.items():
        if name in ("input.mean", "input.std"):
            continue
        theirs = model.p(name).detach()
        ours, start = value, before[name]
        if name.endswith("attn.in_proj.bias"):
            # The key bias's gradient is zero in exact arithmetic (softmax
            # does not see a constant added to a row of scores); both sides
            # hold rounding noise there, which Adam's first step turns into
            # +-lr of either sign. Compare the query and value biases.
            d = value.shape[0] // 3
            keep = torch.cat([torch.arange(0, d), torch.arange(2 * d, 3 * d)])
            ours, theirs, start = ours[keep], theirs[keep], start[keep]
        diff = float((ours - theirs).abs().max())
        update = float((theirs - start).abs().max())
        if diff > worst:
            worst, worst_name, worst_update = diff, name, update
    ok &= worst <= 1e-4
    print(
        f"adam step: max |rust - torch| over parameters = {worst:.2e} in {worst_name} "
        f"(largest update there {worst_update:.2e}; limit 1e-4)"
    )
    # Loss falls: torch on the twin's series, and the twin's own losses.
    torch.manual_seed(0)
    meta = dict(heads="4", window=str(model.window), causal="true", pooling="last", positions="learned")
    tensors = {k: v.clone() for k, v in before.items()}
    tensors["input.mean"] = torch.zeros(1)
    tensors["input.std"] = torch.ones(1)
    tensors["embed.weight"] = tensors["embed.weight"][:, :1].clone()
    m = Transformer(meta, tensors)
    sx = torch.tensor(
        [[math.sin(s * 0.37 + 0.4 * t) for t in range(m.window)] for s in range(128)]
    ).reshape(128, m.window, 1)
    sy = torch.tensor([[math.sin(s * 0.37 + 0.4 * m.window)] for s in range(128)])
    opt = torch.optim.Adam(m.params.parameters(), lr=1e-3)
    losses = []
    for epoch in range(20):
        order = torch.randperm(128)
        total = 0.0
        for i in range(0, 128, 16):
            idx = order[i : i + 16]
            loss = F.mse_loss(m(sx[idx]), sy[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / 128)
    twin = [float(v) for v in (dir / "losses.txt").read_text().split()]
    print(f"loss, torch: epoch 1 {losses[0]:.4f} -> epoch 20 {losses[-1]:.4f}")
    print(f"loss, twin : epoch 1 {twin[0]:.4f} -> epoch 20 {twin[-1]:.4f}")
    ok &= losses[-1] < losses[0] / 4 and twin[-1] < twin[0] / 4
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def seeded_tensors(g, d, f, ff, layers, positions):
    """A seeded model's tensors, drawn from `g` in a fixed order: learned
    positions of `positions` steps when given (sinusoidal ones have none)."""

    def lin(o, i):
        return (torch.rand(o, i, generator=g) * 2 - 1) / math.sqrt(i)

    tensors = {"input.mean": torch.zeros(f), "input.std": torch.ones(f)}
    tensors["embed.weight"], tensors["embed.bias"] = lin(d, f), torch.zeros(d)
    if positions is not None:
        tensors["position.weight"] = lin(positions, d) * 0.02
    for i in range(layers):
        p = f"layer.{i}."
        tensors[p + "norm1.weight"], tensors[p + "norm1.bias"] = torch.ones(d), torch.zeros(d)
        tensors[p + "attn.in_proj.weight"], tensors[p + "attn.in_proj.bias"] = lin(3 * d, d), torch.zeros(3 * d)
        tensors[p + "attn.out_proj.weight"], tensors[p + "attn.out_proj.bias"] = lin(d, d), torch.zeros(d)
        tensors[p + "norm2.weight"], tensors[p + "norm2.bias"] = torch.ones(d), torch.zeros(d)
        tensors[p + "ff.linear1.weight"], tensors[p + "ff.linear1.bias"] = lin(ff, d), torch.zeros(ff)
        tensors[p + "ff.linear2.weight"], tensors[p + "ff.linear2.bias"] = lin(d, ff), torch.zeros(d)
    tensors["final_norm.weight"], tensors["final_norm.bias"] = torch.ones(d), torch.zeros(d)
    tensors["head.weight"], tensors["head.bias"] = lin(1, d), torch.zeros(1)
    return tensors


def bench(windows):
    d, f, t, ff, layers, heads = 64, 32, 128, 256, 2, 4
    meta = dict(heads=str(heads), window=str(t), causal="true", pooling="last", positions="learned")
    g = torch.Generator().manual_seed(1)
    tensors = seeded_tensors(g, d, f, ff, layers, positions=t)
    x = torch.rand(windows, t, f, generator=g) * 2 - 1
    y = torch.rand(windows, 1, generator=g) * 2 - 1
    threads = torch.get_num_threads()
    model = Transformer(meta, tensors)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        with torch.inference_mode():
            model(x)
        best = min(best, time.perf_counter() - start)
    print(f'BENCH {{"impl":"torch","case":"xf_infer_w{windows}","threads":{threads},"seconds":{best:.4f},"windows_per_s":{windows / best:.1f}}}')
    best = math.inf
    for _ in range(3):
        m = Transformer(meta, tensors)
        opt = torch.optim.Adam(m.params.parameters(), lr=1e-3)
        start = time.perf_counter()
        order = torch.randperm(windows, generator=g)
        for i in range(0, windows, 32):
            idx = order[i : i + 32]
            loss = F.mse_loss(m(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        best = min(best, time.perf_counter() - start)
    print(f'BENCH {{"impl":"torch","case":"xf_train_epoch_w{windows}_bs32","threads":{threads},"seconds":{best:.4f},"windows_per_s":{windows / best:.1f}}}')
    return 0


def price(windows, device):
    """The seed's price model on `device`, as bench_transformer_gpu times it."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    d, f, t, ff, layers, heads = 256, 32, 128, 1024, 4, 8
    meta = dict(heads=str(heads), window=str(t), causal="true", pooling="last", positions="sinusoidal")
    g = torch.Generator().manual_seed(1)
    tensors = seeded_tensors(g, d, f, ff, layers, positions=None)
    model = Transformer(meta, tensors).to(device)
    x = torch.rand(windows, t, f, generator=g) * 2 - 1

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def once():
        with torch.inference_mode():
            return model(x.to(device)).cpu()

    out = once()  # warm-up: kernels chosen, memory pooled
    assert out.shape == (windows, 1) and bool(torch.isfinite(out).all()), out
    best = math.inf
    for _ in range(5):
        sync()
        start = time.perf_counter()
        once()
        sync()
        best = min(best, time.perf_counter() - start)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(
        f'BENCH {{"kind":"infer","unit":"windows","case":"tf_f32_w128_d256_h8_l4","impl":"torch",'
        f'"device":{json.dumps(name)},"items":{windows},"seconds":{best:.6f},'
        f'"windows_per_s":{windows / best:.1f}}}'
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "price":
        device = sys.argv[3] if len(sys.argv) == 4 else "cuda"
        if device not in ("cuda", "cpu"):
            sys.exit(f"device: cuda or cpu, not {device!r}")
        sys.exit(price(int(sys.argv[2]), device))
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2]))
    if len(sys.argv) == 3 and sys.argv[1] == "bench":
        sys.exit(bench(int(sys.argv[2])))
    sys.exit(__doc__)
