"""The transformer's forward pass in NumPy: the independent reference the
CPU twin's CI test compares with, and a bench peer.

`python3 bench/transformer_numpy.py reference > kernels/src/transformer/numpy_reference.txt`
writes the outputs of four small models (features 3, window 6, d_model 8,
2 heads, 2 blocks, ff 12, 2 outputs; every combination of causal or not,
last or mean pooling, learned or sinusoidal positions) on 4 windows, with
weights and inputs from closed formulas (no generator to share):
parameter i (in the file's tensor order) is `0.3 sin(0.7 i + 0.1)` except
the normalisation (`mean[k] = 0.1 k`, `std[k] = 1 + 0.25 k`); input j is
`sin(0.37 j) + 0.1 cos(1.3 j)`. One line per model: its name, then the
outputs (`%.9e`). `kernels/src/transformer/tests.rs` rebuilds the same
models and compares within 1e-5 relative.

`python3 bench/transformer_numpy.py bench WINDOWS` times inference of the
bench model (32 features, window 128, d_model 64, 4 heads, 2 blocks, ff
256) over WINDOWS windows in float32: a `BENCH {...}` line.
"""

import math
import sys
import time

import numpy as np

F32 = np.float32


def tensors(f, t, d, layers, ff, outputs, learned):
    names = [("input.mean", (f,)), ("input.std", (f,)), ("embed.weight", (d, f)), ("embed.bias", (d,))]
    if learned:
        names.append(("position.weight", (t, d)))
    for i in range(layers):
        p = f"layer.{i}."
        names += [
            (p + "norm1.weight", (d,)), (p + "norm1.bias", (d,)),
            (p + "attn.in_proj.weight", (3 * d, d)), (p + "attn.in_proj.bias", (3 * d,)),
            (p + "attn.out_proj.weight", (d, d)), (p + "attn.out_proj.bias", (d,)),
            (p + "norm2.weight", (d,)), (p + "norm2.bias", (d,)),
            (p + "ff.linear1.weight", (ff, d)), (p + "ff.linear1.bias", (ff,)),
            (p + "ff.linear2.weight", (d, ff)), (p + "ff.linear2.bias", (d,)),
        ]
    names += [("final_norm.weight", (d,)), ("final_norm.bias", (d,)),
              ("head.weight", (outputs, d)), ("head.bias", (outputs,))]
    return names


def formula_params(names, f):
    out, i = {}, 0
    for name, shape in names:
        n = int(np.prod(shape))
        idx = np.arange(i, i + n, dtype=np.float64)
        values = 0.3 * np.sin(0.7 * idx + 0.1)
        if name == "input.mean":
            values = 0.1 * np.arange(f)
        if name == "input.std":
            values = 1.0 + 0.25 * np.arange(f)
        out[name] = values.astype(F32).reshape(shape)
        i += n
    return out


def layer_norm(x, g, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + F32(1e-5)) * g + b


def gelu(u):
    return F32(0.5) * u * (F32(1) + np.tanh(F32(math.sqrt(2 / math.pi)) * (u + F32(0.044715) * u**3)))


def sinusoidal(t, d):
    pos = np.zeros((t, d))
    for s in range(t):
        for c in range(d):
            angle = s / 10000 ** (2 * (c // 2) / d)
            pos[s, c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
    return pos.astype(F32)


def forward(p, x, heads, causal, pooling, learned, layers):
    b, t, _ = x.shape
    d = p["embed.bias"].shape[0]
    dh = d // heads
    h = ((x - p["input.mean"]) / p["input.std"]) @ p["embed.weight"].T + p["embed.bias"]
    h = h + (p["position.weight"] if learned else sinusoidal(t, d))
    for i in range(layers):
        q = lambda n: p[f"layer.{i}.{n}"]
        y = layer_norm(h, q("norm1.weight"), q("norm1.bias"))
        qkv = y @ q("attn.in_proj.weight").T + q("attn.in_proj.bias")
        qh, kh, vh = (qkv[..., j * d:(j + 1) * d].reshape(b, t, heads, dh).transpose(0, 2, 1, 3) for j in range(3))
        s = qh @ kh.transpose(0, 1, 3, 2) / F32(math.sqrt(dh))
        if causal:
            s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        s = s - s.max(-1, keepdims=True)
        e = np.exp(s)
        a = (e / e.sum(-1, keepdims=True)) @ vh
        a = a.transpose(0, 2, 1, 3).reshape(b, t, d)
        h = h + a @ q("attn.out_proj.weight").T + q("attn.out_proj.bias")
        y = layer_norm(h, q("norm2.weight"), q("norm2.bias"))
        y = gelu(y @ q("ff.linear1.weight").T + q("ff.linear1.bias"))
        h = h + y @ q("ff.linear2.weight").T + q("ff.linear2.bias")
    h = layer_norm(h, p["final_norm.weight"], p["final_norm.bias"])
    pooled = h[:, -1] if pooling == "last" else h.mean(1)
    return pooled @ p["head.weight"].T + p["head.bias"]


def reference():
    f, t, d, heads, layers, ff, outputs, batch = 3, 6, 8, 2, 2, 12, 2, 4
    j = np.arange(batch * t * f, dtype=np.float64)
    x = (np.sin(0.37 * j) + 0.1 * np.cos(1.3 * j)).astype(F32).reshape(batch, t, f)
    for causal in (False, True):
        for pooling in ("last", "mean"):
            for positions in ("learned", "sinusoidal"):
                learned = positions == "learned"
                p = formula_params(tensors(f, t, d, layers, ff, outputs, learned), f)
                y = forward(p, x, heads, causal, pooling, learned, layers)
                name = f"causal={str(causal).lower()},pooling={pooling},positions={positions}"
                print(name + " " + " ".join(f"{v:.9e}" for v in y.reshape(-1)))


def bench(windows):
    f, t, d, heads, layers, ff = 32, 128, 64, 4, 2, 256
    rng = np.random.default_rng(1)
    p = {n: (rng.uniform(-1, 1, s) / math.sqrt(s[-1])).astype(F32) for n, s in tensors(f, t, d, layers, ff, 1, True)}
    p["input.std"] = np.ones(f, F32)
    x = rng.uniform(-1, 1, (windows, t, f)).astype(F32)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        forward(p, x, heads, True, "last", True, layers)
        best = min(best, time.perf_counter() - start)
    print(f'BENCH {{"impl":"numpy","case":"xf_infer_w{windows}","seconds":{best:.4f},"windows_per_s":{windows / best:.1f}}}')


if __name__ == "__main__":
    if sys.argv[1:] == ["reference"]:
        reference()
    elif len(sys.argv) == 3 and sys.argv[1] == "bench":
        bench(int(sys.argv[2]))
    else:
        sys.exit(__doc__)
