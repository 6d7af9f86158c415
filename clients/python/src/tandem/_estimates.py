"""Device memory each built-in kind declares (`memory_bytes`) and the class
a `predict_batch` goes to, as the Rust producer computes them
(`KindSpec::memory_estimate` and `KindSpec::class` in `shared/src/kind/`),
so that a task routes the same whichever producer sent it. A model kind
whose model is registered gets its model's own figure instead
(`model_kinds::memory_for_model`: a transformer's activations from the
registry record's `config`). The parity tests compare the records both
producers write for every kind's example and for a registered transformer.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

# shared/src/kind/model_kinds.rs: ASSUMED_WIDTH, HEAVY_SYMBOLS.
_ASSUMED_WIDTH = 1_024
HEAVY_SYMBOLS = 100
# shared/src/kind/monte_carlo.rs
_MC_BLOCK_PATHS, _MC_SUMS_PER_BLOCK, _MC_HISTOGRAM_LEN = 4096, 9, 4098
# shared/src/kind/risk.rs: GPU_CHUNK
_RISK_GPU_CHUNK = 1 << 22
# shared/src/kind/portfolio_opt.rs
_PO_CANDIDATES_PER_BLOCK, _PO_DEFAULT_SAMPLES = 4, 65_536
_U64 = (1 << 64) - 1


def _activation_bytes(rows: int) -> int:
    return min(rows * _ASSUMED_WIDTH * 8, _U64)


def _len(values: Any) -> int:
    """Elements, as the wire counts them: a NumPy array is sent flattened."""
    size = getattr(values, "size", None)
    return int(size) if isinstance(size, int) else len(values)


def _div_ceil(a: int, b: int) -> int:
    return -(-a // b)


def _monte_carlo(p: Dict[str, Any]) -> int:
    return (_div_ceil(int(p["paths"]), _MC_BLOCK_PATHS) * _MC_SUMS_PER_BLOCK + _MC_HISTOGRAM_LEN) * 8


def _risk(p: Dict[str, Any]) -> int:
    n = _len(p["weights"])
    if p["method"] == "monte_carlo":
        return 8 * (min(int(p["scenarios"]), _RISK_GPU_CHUNK) + n)
    returns = _len(p["returns"])
    scenarios = returns // n if n else 0
    return 8 * (returns + n + scenarios)


def _indicators(p: Dict[str, Any]) -> int:
    closes = sum(_len(s["closes"]) for s in p["series"])
    lines = sum(3 if i.get("type") in ("macd", "bollinger") else 1 for i in p["indicators"])
    return 8 * closes + 8 * (_len(p["series"]) + 1) + 8 * closes * lines + 28 * _len(p["indicators"])


def _patterns(p: Dict[str, Any]) -> int:
    bars = sum(_len(s["close"]) for s in p["series"])
    return 36 * bars + 8 * (_len(p["series"]) + 1) + 40


def _portfolio_opt(p: Dict[str, Any]) -> int:
    # With `returns` (instead of mu and covariance), n is `assets`.
    n = int(p["assets"]) if p.get("returns") is not None and "assets" in p else _len(p.get("mu", []))
    blocks = _div_ceil(int(p.get("samples", _PO_DEFAULT_SAMPLES)), _PO_CANDIDATES_PER_BLOCK)
    return 4 * (n * n + n) + 8 * blocks


def _train(p: Dict[str, Any]) -> int:
    data = 4 * (_len(p["x"]) + _len(p["y"]))
    return min(data + 2 * _activation_bytes(int(p["batch_size"])), _U64)


ESTIMATES: Dict[str, Callable[[Dict[str, Any]], int]] = {
    "monte_carlo": _monte_carlo,
    "risk": _risk,
    "indicators": _indicators,
    "patterns": _patterns,
    "portfolio_opt": _portfolio_opt,
    "infer": lambda p: _activation_bytes(int(p["batch"])),
    "predict_batch": lambda p: _activation_bytes(_len(p["symbols"])),
    "train": _train,
}


def memory_estimate(kind: str, params: Any) -> int:
    """Bytes of device memory the kind's task needs (0: none or unknown)."""
    estimate = ESTIMATES.get(kind)
    if estimate is None or not isinstance(params, dict):
        return 0
    return estimate(params)


def kind_class(kind: str, params: Any, default: str) -> str:
    """The class the parameters decide, else the kind's."""
    if kind == "predict_batch" and isinstance(params, dict) and len(params.get("symbols", ())) > HEAVY_SYMBOLS:
        return "heavy"
    return default


# shared/src/model_format/transformer.rs: MAX_WIDTH, MAX_HEADS, MAX_LAYERS,
# MAX_PARAMETER_BYTES (a record past them is damaged).
_XF_LIMITS = {
    "features": 1 << 16,
    "window": 1 << 16,
    "d_model": 1 << 16,
    "heads": 1024,
    "layers": 256,
    "ff": 1 << 16,
    "outputs": 1 << 16,
}
_XF_MAX_PARAMETER_BYTES = 256 << 30
_XF_CHOICES = {"causal": ("true", "false"), "pooling": ("last", "mean"), "positions": ("learned", "sinusoidal")}


def parse_transformer_config(text: str) -> Dict[str, Any]:
    """A transformer's shape from its registry record's `config` field
    (`features=32 window=128 d_model=256 heads=8 layers=4 ff=1024 outputs=1
    causal=true pooling=last positions=learned`), as the Rust
    `parse_config_text` reads it: every key once, none unknown, within the
    format's bounds. Raises ValueError naming the key and the problem."""
    values: Dict[str, str] = {}
    for pair in text.split():
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r} is not key=value")
        if key in values:
            raise ValueError(f"`{key}` is given twice")
        values[key] = value
    shape: Dict[str, Any] = {}
    for key, limit in _XF_LIMITS.items():
        if key not in values:
            raise ValueError(f"`{key}` is missing")
        value = values.pop(key)
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"`{key}` is {value!r}, not a whole number")
        number = int(value)
        if not 1 <= number <= limit:
            raise ValueError(f"`{key}`: {number} is not within 1..={limit}")
        shape[key] = number
    for key, choices in _XF_CHOICES.items():
        if key not in values:
            raise ValueError(f"`{key}` is missing")
        value = values.pop(key)
        if value not in choices:
            raise ValueError(f"`{key}` is {value!r}, not {' or '.join(choices)}")
        shape[key] = value
    if values:
        raise ValueError(f"`{min(values)}` is not a transformer setting")
    if shape["d_model"] % shape["heads"]:
        raise ValueError(f"`heads`: {shape['heads']} heads do not divide d_model {shape['d_model']}")
    if transformer_parameter_bytes(shape) > _XF_MAX_PARAMETER_BYTES:
        raise ValueError(f"{transformer_parameter_bytes(shape)} parameter bytes, over {_XF_MAX_PARAMETER_BYTES}")
    return shape


def transformer_parameter_bytes(s: Dict[str, Any]) -> int:
    """`TransformerShape::parameter_bytes`: 4 x every tensor's floats."""
    f, d, h, t, o = s["features"], s["d_model"], s["ff"], s["window"], s["outputs"]
    # Two norms, in_proj, out_proj, linear1, linear2 (weights and biases).
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (h * d + h) + (d * h + d)
    positions = t * d if s["positions"] == "learned" else 0
    return 4 * (2 * f + d * f + d + positions + s["layers"] * block + 2 * d + o * d + o)


def _forward_floats_per_window(s: Dict[str, Any]) -> int:
    t, f, d, ff = s["window"], s["features"], s["d_model"], s["ff"]
    return 2 * t * f + 6 * t * d + s["heads"] * t * t + t * ff + d + s["outputs"]


def _train_floats_per_window(s: Dict[str, Any]) -> int:
    t, f, d, ff = s["window"], s["features"], s["d_model"], s["ff"]
    layers, o = s["layers"], s["outputs"]
    scores = s["heads"] * t * t
    kept = 2 * t * f + (layers + 1) * t * d + layers * (4 * t * d + 3 * t * d + scores + 2 * t * ff) + t * d + d + o
    backward = 2 * t + o + d + 3 * t * d + t * ff + 3 * t * d + scores
    return kept + backward


def transformer_forward_bytes(s: Dict[str, Any], windows: int) -> int:
    """`model_kinds::transformer_forward_bytes`: the forward's activations."""
    return min(windows * 4 * _forward_floats_per_window(s), _U64)


def transformer_train_bytes(s: Dict[str, Any], windows: int) -> int:
    """`model_kinds::transformer_train_bytes`: the training copy, Adam's
    moments and the gradient, the sinusoidal table, and per window every
    layer's activations and the backward's buffers."""
    table = 4 * s["window"] * s["d_model"] if s["positions"] == "sinusoidal" else 0
    return min(4 * transformer_parameter_bytes(s) + table + windows * 4 * _train_floats_per_window(s), _U64)


# The kinds whose memory comes from their registered model (the Rust
# producer's MODEL_MEMORY_KINDS).
MODEL_MEMORY_KINDS = ("infer", "predict_batch", "train")


def memory_for_model(kind: str, params: Dict[str, Any], shape: Optional[Dict[str, Any]]) -> int:
    """`model_kinds::memory_for_model`: a model kind's memory once its
    registry record is known; `shape` is a transformer's (from
    `parse_transformer_config`), None for an MLP (the kind's estimate)."""
    if shape is None:
        return memory_estimate(kind, params)
    if kind == "infer":
        return transformer_forward_bytes(shape, int(params["batch"]))
    if kind == "predict_batch":
        return transformer_forward_bytes(shape, _len(params["symbols"]))
    if kind == "train":
        return transformer_train_bytes(shape, min(int(params["batch_size"]), int(params["samples"])))
    raise ValueError(f"kind {kind!r} takes no model's memory")
