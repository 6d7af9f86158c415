"""Device memory each built-in kind declares (`memory_bytes`) and the class
a `predict_batch` goes to, as the Rust producer computes them
(`KindSpec::memory_estimate` and `KindSpec::class` in `shared/src/kind/`),
so that a task routes the same whichever producer sent it. The parity
tests compare the records both producers write for every kind's example.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

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
