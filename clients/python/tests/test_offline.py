"""What needs no fleet: the generated classes and Lua copies against their
sources, the schema checks, the NumPy encoding, the signature."""

import datetime
import json
import subprocess

import msgpack
import numpy as np
import pytest

import tandem
from tandem import _codegen, _core, _estimates, _wire, kinds
from tandem.errors import InvalidTask

from conftest import ROOT, binary

PACKAGE = ROOT / "clients" / "python" / "src" / "tandem"


def test_generated_classes_match_tandem_kinds_json_schema():
    out = subprocess.run([binary("tandem"), "kinds", "--json-schema"], check=True, capture_output=True).stdout
    code, catalog = _codegen.generate(json.loads(out))
    hint = "run `python clients/python/scripts/generate_kinds.py` and commit the result"
    assert (PACKAGE / "kinds.json").read_text() == catalog, f"kinds.json drifted from tandem kinds: {hint}"
    assert (PACKAGE / "kinds.py").read_text() == code, f"kinds.py drifted from tandem kinds: {hint}"


@pytest.mark.parametrize(
    "name", ["common.lua", "submit.lua", "cancel.lua", "find.lua", "workflow_submit.lua", "workflow_cancel.lua", "blob.lua"]
)
def test_lua_scripts_are_the_workers_own(name):
    ours = (PACKAGE / "lua" / name).read_text()
    theirs = (ROOT / "shared" / "lua" / name).read_text()
    assert ours == theirs, f"copy shared/lua/{name} to clients/python/src/tandem/lua/"


def test_every_kind_has_classes_and_an_example_that_passes_the_schema():
    for kind, entry in _core.CATALOG.items():
        assert kind in kinds.PARAMS and kind in kinds.RESULTS, kind
        task, _ = _core.prepare(_core.Settings(), kind, entry["example"], cls=None, priority="normal",
                                max_attempts=None, deadline=None, idempotency_key=None, memory_bytes=None)
        assert task.cls == entry["class"], kind
        assert msgpack.unpackb(task.params) == entry["example"], kind


def check(kind, params):
    return _core.prepare(_core.Settings(), kind, params, cls=None, priority="normal", max_attempts=None,
                         deadline=None, idempotency_key=None, memory_bytes=None)


MC = {"s0": 100.0, "strike": 100.0, "rate": 0.05, "sigma": 0.2, "maturity": 1.0, "steps": 4, "paths": 4096,
      "seed": 1}


@pytest.mark.parametrize(
    "kind, params, field, message",
    [
        ("monte_carlo", {**MC, "sigma": "0.2"}, "sigma", 'sigma: expected a number, got a string ("0.2")'),
        ("monte_carlo", {k: v for k, v in MC.items() if k != "sigma"}, "sigma", "sigma: required field is missing"),
        ("monte_carlo", {**MC, "dividends": 0.1}, "dividends", "dividends: unknown field; the fields are"),
        ("monte_carlo", {**MC, "steps": 0}, "steps", "steps: must be at least 1, got 0"),
        ("monte_carlo", {**MC, "sigma": 0.0}, "sigma", "sigma: must be more than 0, got 0.0"),
        ("sleep", {"ms": -1}, "ms", "ms: must be at least 0, got -1"),
        ("sleep", "ten", "", 'expected a map, got a string ("ten")'),
        ("risk", {"weights": [1.0]}, "method", "method: required field is missing"),
        ("risk", {"method": "parametric"}, "method", 'method: "parametric" is not one of "monte_carlo", "historical"'),
        ("risk", {"method": "historical", "weights": [1.0], "returns": [0.1], "confidence": []}, "confidence",
         "confidence: must hold at least 1 items, got 0"),
        ("predict_batch", {"model": "m", "symbols": [{"symbol": "A", "features": [1.0]},
                                                     {"symbol": 2, "features": [2.0]}]},
         "symbols[1].symbol", "symbols[1].symbol: expected a string, got an integer (2)"),
        ("portfolio_opt", {"mu": [0.1], "covariance": [0.04], "objective": "max_return"}, "objective",
         '"max_return" is not one of "min_variance", "max_sharpe"'),
        ("train", {"model": "m", "x": [1.0], "y": [1.0], "samples": 1, "epochs": 1, "batch_size": 1,
                   "optimizer": {"type": "sgd"}}, "optimizer.lr", "optimizer.lr: required field is missing"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(kind, params, field, message):
    with pytest.raises(InvalidTask) as err:
        check(kind, params)
    assert message in str(err.value)
    assert str(err.value).startswith(f"bad parameters for kind {kind}: ")
    assert (err.value.field or "") == field
    assert err.value.kind == kind


def test_other_bad_tasks_are_refused_naming_the_problem():
    with pytest.raises(InvalidTask, match="its class must be given"):
        check("my_kind", {})
    with pytest.raises(InvalidTask, match="priority: 'urgent' is not one of critical, high, normal, low"):
        _core.prepare(_core.Settings(), "noop", None, cls=None, priority="urgent", max_attempts=None,
                      deadline=None, idempotency_key=None, memory_bytes=None)
    with pytest.raises(InvalidTask, match="idempotency_key"):
        _core.prepare(_core.Settings(), "noop", None, cls=None, priority="normal", max_attempts=None,
                      deadline=None, idempotency_key="two words", memory_bytes=None)
    with pytest.raises(InvalidTask, match="max_attempts: must be at least 1"):
        _core.prepare(_core.Settings(), "noop", None, cls=None, priority="normal", max_attempts=0,
                      deadline=None, idempotency_key=None, memory_bytes=None)
    # Over max_payload_bytes: refused when blobs are off (threshold 0);
    # with the default threshold they travel by reference instead.
    with pytest.raises(InvalidTask, match="the limit is 1048576"):
        _core.prepare(_core.Settings(blob_threshold_bytes=0), "echo", {"blob": b"x" * (1 << 20)}, cls=None,
                      priority="normal", max_attempts=None, deadline=None, idempotency_key=None, memory_bytes=None)
    task, _ = check("echo", {"blob": b"x" * (1 << 20)})
    assert _core.by_reference(_core.Settings(), task.params)


def test_typed_parameters_send_what_plain_ones_do():
    typed = kinds.MonteCarloParams(**MC)
    assert msgpack.unpackb(check("monte_carlo", typed)[0].params) == {**MC, "dividend": 0.0}
    risk = kinds.RiskParamsHistorical(weights=[1.0, 2.0], returns=[0.01, 0.02], confidence=[0.99])
    assert risk.to_wire()["method"] == "historical"
    spec = kinds.IndicatorsParams(
        series=[kinds.IndicatorsSeries(symbol="ES", closes=[1.0, 2.0, 3.0])],
        indicators=[kinds.IndicatorsIndicatorSpecRsi(period=2)],
    )
    assert spec.to_wire()["indicators"] == [{"type": "rsi", "period": 2}]


def test_results_decode_into_their_classes_and_ignore_new_fields():
    est = {"price": 10.0, "std_error": 0.1}
    raw = {"european_call": est, "european_put": est, "asian_arithmetic_call": est, "asian_geometric_call": est,
           "mean_terminal_price": 105.0, "percentiles": [{"level": 5.0, "price": 80.0}], "paths": 4096,
           "added_by_a_newer_worker": 1}
    result = kinds.MonteCarloResult.from_wire(raw)
    assert result.european_call.price == 10.0
    assert result.percentiles[0].level == 5.0
    assert isinstance(result.percentiles[0], kinds.MonteCarloPercentile)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int32, np.uint8, np.bool_])
def test_numpy_arrays_encode_as_msgpack_would_encode_their_lists(dtype):
    array = (np.random.default_rng(1).random((7, 5)) * 100).astype(dtype)
    ours = _wire.pack({"returns": array, "n": 3})
    as_list = msgpack.unpackb(ours)["returns"]
    assert as_list == array.reshape(-1).tolist()
    if dtype in (np.float64, np.bool_):
        # Byte for byte what msgpack writes for the list.
        assert ours == msgpack.packb({"returns": array.reshape(-1).tolist(), "n": 3})


def test_a_large_array_is_encoded_without_a_python_loop_per_element():
    big = np.arange(2_000_000, dtype=np.float64)
    packed = _wire.pack({"returns": big})
    assert len(packed) == 1 + len(b"returns") + 1 + 5 + 9 * big.size
    assert msgpack.unpackb(packed)["returns"][-1] == 1_999_999.0


def test_signature_matches_the_wire_format_example():
    # docs/wire-format.md "Signed tasks", computed by hand the same way.
    sig = _wire.signature(b"k", "id", "echo", "cpu", "high", 3, "r", b"\x80")
    import hashlib
    import hmac

    assert sig == hmac.new(b"k", b"1:2,2:id,4:echo,3:cpu,4:high,1:3,1:r,1:\x80,", hashlib.sha256).hexdigest()


def test_scripts_hash_as_the_rust_store_names_them():
    # shared/src/scripts.rs: `local EVENTS_MAXLEN = N` (0 without events),
    # then common.lua, then the script's own file.
    rust = (ROOT / "shared" / "src" / "scripts.rs").read_text()
    assert f"pub const EVENTS_MAXLEN: u64 = {_core.EVENTS_MAXLEN:_};" in rust
    common = (PACKAGE / "lua" / "common.lua").read_text()
    # blob.lua is loaded alone, as shared/src/blob/ loads it.
    assert _core.BLOB.source == (PACKAGE / "lua" / "blob.lua").read_text()
    for script in _core.SCRIPTS:
        if script is _core.BLOB:
            continue
        assert script.source.startswith(f"local EVENTS_MAXLEN = {_core.EVENTS_MAXLEN}\n{common}")
        assert script.quiet_source.startswith(f"local EVENTS_MAXLEN = 0\n{common}")
        assert f"\n-- {script.name}\n" in script.source
        assert script.variant(True)[1] != script.variant(False)[1]


def test_the_package_exports_its_api():
    for name in tandem.__all__:
        assert hasattr(tandem, name), name
    assert (PACKAGE / "py.typed").exists()


def test_the_package_type_checks():
    """py.typed promises types: mypy finds no error in the package."""
    import sys

    out = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", str(PACKAGE)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_url_the_client_cannot_speak_is_refused_naming_it():
    with pytest.raises(InvalidTask, match="redis_url: 'redis\\+cluster' is not supported") as caught:
        tandem.Client("redis+cluster://n1:7000,n2:7001")
    assert caught.value.field == "redis_url"


@pytest.mark.parametrize(
    "url, words",
    [
        ("redis+sentinel://s1:26379", "a sentinel URL ends with /<master name>"),
        ("redis+sentinel://s1/m", "node 's1' must be host:port"),
        ("redis+sentinel://s1:x/m", "node 's1:x' has a bad port"),
        ("redis+sentinel://:26379/m", "node ':26379' has no host"),
        ("redis+sentinel://s1:1/m/x", "bad database number 'x'"),
    ],
)
def test_a_bad_sentinel_url_is_refused_saying_why(url, words):
    # The same URLs connect.rs's tests refuse.
    with pytest.raises(InvalidTask) as caught:
        tandem.Client(url)
    assert caught.value.field == "redis_url" and words in str(caught.value), str(caught.value)


def test_a_sentinel_url_is_read_as_the_rust_producer_reads_it():
    target = _core.check_url("rediss+sentinel://u:p%40w@s1:26379,[::1]:26380/mymaster/3")
    assert target == _core.SentinelTarget(
        sentinels=[("s1", 26379), ("::1", 26380)], master="mymaster", tls=True, username="u", password="p@w", db=3
    )
    plain = _core.check_url("redis+sentinel://s1:26379/mymaster")
    assert plain is not None and (plain.tls, plain.username, plain.password, plain.db) == (False, None, None, 0)
    assert _core.check_url("redis://127.0.0.1:7000/2") is None


def test_models_nested_in_plain_values_and_timedeltas_are_accepted():
    import datetime

    params = {"series": [kinds.IndicatorsSeries(symbol="ES", closes=np.array([1.0, 2.0, 3.0]))],
              "indicators": [kinds.IndicatorsIndicatorSpecSma(period=2)]}
    task, _ = _core.prepare(_core.Settings(), "indicators", params, cls=None, priority="high", max_attempts=2,
                            deadline=datetime.timedelta(seconds=1.5), idempotency_key="k-1", memory_bytes=None)
    assert msgpack.unpackb(task.params) == {"series": [{"closes": [1.0, 2.0, 3.0], "symbol": "ES"}],
                                            "indicators": [{"period": 2, "type": "sma"}]}
    assert (task.deadline_in_ms, task.max_attempts, task.idempotency_key) == (1500, 2, "k-1")
    # The kind's memory estimate, as the Rust producer computes it.
    assert task.memory_bytes == 8 * 3 + 8 * 2 + 8 * 3 * 1 + 28


XF_CONFIG = "features=3 window=4 d_model=8 heads=2 layers=2 ff=32 outputs=2 causal=false pooling=last positions={}"


# Figures the Rust producer wrote for this shape: `tandem model new xf
# --arch transformer --layers 2 --d-model 8 --heads 2 --window 4 --features 3
# --ff 32 --outputs 2 --positions P --upload` (the record's
# `parameter_bytes`), then `tandem submit` of each task (the record's
# `memory_bytes`). `train` takes min(batch_size, samples) windows.
@pytest.mark.parametrize(
    "positions, infer_3, predict_5, train_4_of_10, train_16_of_10",
    [("learned", 4632, 7720, 54_464, 91_808), ("sinusoidal", 4632, 7720, 54_080, 91_424)],
)
def test_a_transformers_memory_is_the_rust_producers(positions, infer_3, predict_5, train_4_of_10, train_16_of_10):
    shape = _estimates.parse_transformer_config(XF_CONFIG.format(positions))
    if positions == "learned":
        assert _estimates.transformer_parameter_bytes(shape) == 7392
    assert _estimates.memory_for_model("infer", {"batch": 3, "inputs": [], "model": "xf"}, shape) == infer_3
    assert _estimates.memory_for_model("predict_batch", {"symbols": [{}] * 5}, shape) == predict_5
    assert _estimates.memory_for_model("train", {"batch_size": 4, "samples": 10, "x": [], "y": []}, shape) \
        == train_4_of_10
    assert _estimates.memory_for_model("train", {"batch_size": 16, "samples": 10}, shape) == train_16_of_10
    # An MLP (no shape) keeps the kind's estimate.
    train = {"batch_size": 4, "samples": 10, "x": [0.0] * 40, "y": [0.0] * 10}
    assert _estimates.memory_for_model("train", train, None) == _estimates.memory_estimate("train", train)


@pytest.mark.parametrize(
    "config, words",
    [
        (XF_CONFIG.format("learned") + " depth=3", "`depth` is not a transformer setting"),
        (XF_CONFIG.format("learned").replace(" heads=2", ""), "`heads` is missing"),
        (XF_CONFIG.format("learned").replace("heads=2", "heads=3"), "3 heads do not divide d_model 8"),
        (XF_CONFIG.format("learned").replace("ff=32", "ff=-1"), "`ff` is '-1', not a whole number"),
        (XF_CONFIG.format("learned").replace("layers=2", "layers=0"), "`layers`: 0 is not within 1..=256"),
        (XF_CONFIG.format("rotary"), "`positions` is 'rotary', not learned or sinusoidal"),
        (XF_CONFIG.format("learned") + " ff=8", "`ff` is given twice"),
    ],
)
def test_a_damaged_transformer_config_is_named_and_its_model_skipped(config, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(".", r"\.")):
        _estimates.parse_transformer_config(config)
    # The producer treats the record as absent: the kind's class and estimate.
    assert _core.registered_model([b"heavy", b"transformer", config.encode()]) is None


def test_a_registry_record_gives_the_class_and_the_shape():
    config = XF_CONFIG.format("learned")
    assert _core.registered_model([b"heavy", b"transformer", config.encode()]) == (
        "heavy", _estimates.parse_transformer_config(config))
    # A record from before transformers has no `arch`: an MLP.
    assert _core.registered_model([b"light", None, None]) == ("light", None)
    assert _core.registered_model([b"light", b"mlp", None]) == ("light", None)
    assert _core.registered_model([None, None, None]) is None  # not registered
    assert _core.registered_model([b"huge", b"mlp", None]) is None
    assert _core.registered_model([b"light", b"rnn", None]) is None
    assert _core.registered_model([b"light", b"transformer", None]) is None


def test_only_undeclared_model_kinds_wait_on_their_models_memory():
    base = dict(priority="normal", max_attempts=None, deadline=None, idempotency_key=None)
    infer = {"model": "xf", "inputs": [0.1] * 4, "batch": 1}
    _, lookup = _core.prepare(_core.Settings(), "infer", infer, cls=None, memory_bytes=None, **base)
    assert lookup == _core.ModelLookup(class_model="xf", memory_model="xf", params=infer)
    # An explicit class: the memory still comes from the model, as in Rust.
    _, lookup = _core.prepare(_core.Settings(), "infer", infer, cls="light", memory_bytes=None, **base)
    assert lookup is not None and (lookup.class_model, lookup.memory_model) == (None, "xf")
    # A declared memory (even 0: the kind's estimate) is kept.
    for declared in (0, 4096):
        task, lookup = _core.prepare(_core.Settings(), "infer", infer, cls=None, memory_bytes=declared, **base)
        assert lookup is not None and (lookup.class_model, lookup.memory_model) == ("xf", None)
        shape = _estimates.parse_transformer_config(XF_CONFIG.format("learned"))
        _core.apply_models(task, lookup, {"xf": ("heavy", shape)})
        assert task.memory_bytes == (declared or _estimates.memory_estimate("infer", infer))
        assert task.cls == "heavy"
    # `train` on the primary takes no class from its model, but its memory.
    train = dict(_core.CATALOG["train"]["example"], model="xf")
    task, lookup = _core.prepare(_core.Settings(), "train", train, cls=None, memory_bytes=None, **base)
    assert lookup is not None and (lookup.class_model, lookup.memory_model) == (None, "xf")
    shape = _estimates.parse_transformer_config(XF_CONFIG.format("learned"))
    _core.apply_models(task, lookup, {"xf": ("light", shape)})
    assert (task.cls, task.memory_bytes) == ("heavy", _estimates.memory_for_model("train", train, shape))
    assert task.memory_bytes != _estimates.memory_estimate("train", train)
    _, lookup = _core.prepare(_core.Settings(), "echo", {"model": "xf"}, cls=None, memory_bytes=None, **base)
    assert lookup is None


def _prepare(**options):
    base = dict(cls=None, priority="normal", max_attempts=None, deadline=None, idempotency_key=None, memory_bytes=None)
    return _core.prepare(_core.Settings(), "noop", None, **{**base, **options})[0]


@pytest.mark.parametrize(
    "options, field, words",
    [
        (dict(delay=-1), "delay", "is negative; a delay is 0 or more (to run at once, leave it out)"),
        (dict(delay="5s"), "delay", "expected seconds"),
        (dict(delay=float("inf")), "delay", "is too long"),
        (dict(run_at=datetime.datetime(2030, 1, 1)), "run_at", "has no time zone"),
        (dict(run_at=1_900_000_000), "run_at", "expected a datetime with a time zone"),
        (dict(run_at=datetime.datetime(1969, 1, 1, tzinfo=datetime.timezone.utc)), "run_at", "before 1970"),
        (dict(delay=1, run_at=datetime.datetime.now(datetime.timezone.utc)), "delay", "not both"),
        (dict(timeout=0), "timeout", "timeout must be at least 1 ms"),
        (dict(timeout=datetime.timedelta(0)), "timeout", "timeout must be at least 1 ms"),
        (dict(timeout=-2), "timeout", "above 0"),
        (dict(rate_key=""), "rate_key", "must be 1-200 characters, without whitespace or control characters"),
        (dict(rate_key="a b"), "rate_key", "without whitespace"),
        (dict(rate_key="x" * 201), "rate_key", "1-200 characters"),
    ],
)
def test_bad_delays_timeouts_and_rate_keys_are_refused_naming_the_field(options, field, words):
    with pytest.raises(InvalidTask) as caught:
        _prepare(**options)
    assert caught.value.field == field and words in str(caught.value), str(caught.value)


def test_delays_timeouts_and_rate_keys_are_sent_as_the_rust_producer_sends_them():
    # NewTask::metadata's order: ..., reply_to, timeout_ms, signature,
    # rate_key, then the delay pair the submit script reads.
    task = _prepare(delay=datetime.timedelta(seconds=1.5), timeout=0.0004, rate_key="tenant-7")
    task.signature = "sig"
    tail = task.metadata("p-1", "reply")[-10:]
    assert tail == ["reply_to", "reply", "timeout_ms", "1", "signature", "sig", "rate_key", "tenant-7",
                    "delay_ms", "1500"]
    at = datetime.datetime(2027, 1, 2, 3, 4, 5, 678_000, tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))
    timed = _prepare(run_at=at, timeout=datetime.timedelta(minutes=2))
    assert timed.run_at == ("run_at_ms", 1_798_877_045_678) and timed.timeout_ms == 120_000
    assert _prepare().metadata("p", None)[-2:] == ["producer", "p"]
    # Seconds as floats count to the microsecond, then round down to ms.
    assert _prepare(delay=1.001).run_at == ("delay_ms", 1001)
    assert _prepare(delay=0).run_at == ("delay_ms", 0)
    assert _prepare(timeout=0.0299999).timeout_ms == 30
    assert _prepare(timeout=datetime.timedelta(microseconds=1999)).timeout_ms == 1
    assert _prepare(timeout=1e308).timeout_ms == 2**64 - 1
