"""The client against a real fleet (a simulated GPU and a CPU worker):
every kind round-trips, results agree with the Rust producer's, errors
map to their exceptions, and the sync and asyncio APIs both work."""

import asyncio
import json
import uuid

import msgpack
import numpy as np
import pandas as pd
import pytest
import redis

from conftest import GPU_UUID, ROOT, WAIT, wait_until

import tandem
from tandem import AsyncClient, Client, Task, _core, _estimates, errors, kinds
from tandem._model import WireModel


@pytest.fixture()
def client(fleet):
    with Client(fleet.url) as c:
        yield c


# Kinds whose examples succeed on this fleet (the test kinds too, but for
# `abort`, which kills its worker, and `fail` and `panic`, which the errors
# test covers); the model kinds use the model the fleet fixture uploaded.
ROUND_TRIP = [k for k in _core.CATALOG if k not in ("abort", "fail", "panic")]


@pytest.mark.parametrize("kind", ROUND_TRIP)
def test_every_kind_round_trips_with_a_typed_result(client, kind):
    entry = _core.CATALOG[kind]
    task = client.submit(kind, entry["example"])
    outcome = client.wait_outcome(task, WAIT)
    assert outcome.status == "succeeded", (kind, outcome)
    assert outcome.kind == kind and outcome.cls == entry["class"]
    value = outcome.value()
    model = kinds.RESULTS[kind]
    if isinstance(model, type) and issubclass(model, WireModel):
        assert isinstance(value, model), (kind, value)
        sent_back = {k: v for k, v in outcome.raw().items() if v is not None}
        # Every field decoded, nothing lost (NaN compares equal as text).
        assert json.dumps(value.to_wire(), sort_keys=True, default=bytes.hex) == \
            json.dumps(sent_back, sort_keys=True, default=bytes.hex), kind
    elif kind == "echo":
        assert value == entry["example"]
    else:
        assert value is None


def test_the_parallel_kinds_run_on_the_gpu_and_the_cpu_kinds_on_the_cpu(client):
    mc = client.wait_outcome(client.submit("monte_carlo", _core.CATALOG["monte_carlo"]["example"]), WAIT)
    assert mc.device == GPU_UUID
    echo = client.wait_outcome(client.submit("echo", [1, 2]), WAIT)
    assert echo.device == "cpu"


# The same task through the Rust producer (`tandem submit`) and this client:
# the same record fields, the same result, bit for bit (same device type).
PARITY = ["sleep", "echo", "monte_carlo", "risk", "indicators", "patterns", "portfolio_opt", "infer"]


@pytest.mark.parametrize("kind", PARITY)
def test_results_and_records_agree_with_the_rust_producer(fleet, client, kind):
    params = _core.CATALOG[kind]["example"]
    rust_id = fleet.tandem("submit", kind, "--params", json.dumps(params), "--priority", "high").stdout.strip()
    py_id = client.submit(kind, params, priority="high")
    rust = client.wait_outcome(rust_id, WAIT)
    ours = client.wait_outcome(py_id, WAIT)
    assert rust.status == ours.status == "succeeded", (rust, ours)
    if kind != "sleep":
        assert ours.result_bytes == rust.result_bytes, kind
    conn = fleet.redis.conn()
    cls = _core.CATALOG[kind]["class"]
    rust_record = conn.hgetall(f"tandem:{{{cls}}}:task:{rust_id}")
    py_record = conn.hgetall(f"tandem:{{{cls}}}:task:{py_id}")
    assert sorted(rust_record) == sorted(py_record)
    for field in (b"version", b"kind", b"class", b"priority", b"max_attempts", b"memory_bytes", b"attempt"):
        assert rust_record[field] == py_record[field], (kind, field)


# A small transformer (tandem model new --arch transformer): 3 features, a
# 4-step window, d_model 8, 2 heads, 1 block, ff 32, 1 output.
XF_ARGS = ["--arch", "transformer", "--layers", "1", "--d-model", "8", "--heads", "2", "--window", "4",
           "--features", "3", "--ff", "32", "--upload"]
XF_WINDOW = 4 * 3


def model_tasks(model):
    """An `infer`, `predict_batch` and `train` of `model`, each as the
    Rust CLI's arguments and as this client's submit keywords: the kind's
    memory from the model, also under an explicit class; a caller's memory
    kept. `train`'s mini-batch is larger than its data (its windows)."""
    train = {"model": model, "x": [0.1] * (3 * XF_WINDOW), "y": [0.5, 0.2, 0.1], "samples": 3, "epochs": 1,
             "batch_size": 8, "optimizer": {"type": "sgd", "lr": 0.01}}
    infer = {"model": model, "inputs": [0.1] * (2 * XF_WINDOW), "batch": 2}
    symbols = {"model": model, "symbols": [{"symbol": s, "features": [0.2] * XF_WINDOW} for s in ("A", "B", "C")]}
    return [
        ("infer", infer, [], {}),
        ("infer", infer, ["--class", "light"], {"cls": "light"}),
        ("predict_batch", symbols, [], {}),
        ("train", train, [], {}),
        ("train", {**train, "batch_size": 2}, ["--class", "heavy"], {"cls": "heavy"}),
        ("infer", infer, ["--memory-bytes", "12345"], {"memory_bytes": 12345}),
        ("train", train, ["--memory-bytes", "54321"], {"memory_bytes": 54321}),
    ]


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_a_model_kinds_memory_comes_from_its_registered_transformer_as_with_the_rust_producer(
        fleet, client, positions):
    model = f"xf-{positions}"
    fleet.tandem("model", "new", model, *XF_ARGS, "--positions", positions)
    shape = {"features": 3, "window": 4, "d_model": 8, "heads": 2, "layers": 1, "ff": 32, "outputs": 1,
             "causal": "false", "pooling": "last", "positions": positions}

    async def submit_async(kind, params, options):
        async with AsyncClient(fleet.url) as c:
            return await c.submit(kind, params, **options)

    for i, (kind, params, rust_args, options) in enumerate(model_tasks(model)):
        rust_id = fleet.tandem("submit", kind, "--params", json.dumps(params), *rust_args).stdout.strip()
        py_ids = [client.submit(kind, params, **options), asyncio.run(submit_async(kind, params, options))]
        rust = client.record(rust_id)
        for py_id in py_ids:
            ours = client.record(py_id)
            for field in ("kind", "class", "memory_bytes"):
                assert ours[field] == rust[field], (kind, options, field, ours[field], rust[field])
        memory = int(rust["memory_bytes"])
        if "memory_bytes" in options:
            assert memory == options["memory_bytes"]
        else:
            assert memory == _estimates.memory_for_model(kind, params, shape)
            assert memory != _estimates.memory_estimate(kind, params), "the MLP formula"
        outcomes = [client.wait_outcome(t, WAIT) for t in (rust_id, *py_ids)]
        assert len({o.status for o in outcomes}) == 1, (kind, outcomes)


def test_a_model_kinds_memory_from_a_registered_mlp_is_the_kinds_estimate(fleet, client):
    # `alpha-mlp`, which the fleet fixture uploaded: the plain estimate.
    for kind in ("infer", "predict_batch", "train"):
        params = _core.CATALOG[kind]["example"]
        rust_id = fleet.tandem("submit", kind, "--params", json.dumps(params)).stdout.strip()
        py_id = client.submit(kind, params)
        assert client.record(py_id)["memory_bytes"] == client.record(rust_id)["memory_bytes"]
        assert int(client.record(py_id)["memory_bytes"]) == _estimates.memory_estimate(kind, params)
        client.wait_many([rust_id, py_id], WAIT)


def test_a_pandas_dataframe_of_returns_prices_as_its_lists_do(client):
    rng = np.random.default_rng(7)
    returns = pd.DataFrame(rng.normal(0, 0.01, size=(500, 3)), columns=["ES", "NQ", "ZN"])
    weights = np.array([1_000_000.0, 500_000.0, 250_000.0])
    with_arrays = kinds.RiskParamsHistorical(weights=weights, returns=returns.to_numpy(), confidence=[0.95, 0.99])
    with_lists = {"method": "historical", "weights": weights.tolist(),
                  "returns": returns.to_numpy().reshape(-1).tolist(), "confidence": [0.95, 0.99]}
    a, b = client.submit_many([Task("risk", with_arrays), Task("risk", with_lists)])
    first, second = client.wait_many([a, b], WAIT)
    assert first.result_bytes == second.result_bytes
    result = first.value()
    assert isinstance(result, kinds.RiskResult)
    assert [level.confidence for level in result.levels] == [0.95, 0.99]
    assert result.levels[1].var >= result.levels[0].var > 0


def test_submit_many_is_one_round_trip_and_keeps_the_order(fleet, client, monkeypatch):
    client.submit("echo", None, priority="low")  # scripts loaded, reply stream noted
    sends = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sends.append(command)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    ids = client.submit_many([Task("echo", {"i": i}, priority="low") for i in range(50)])
    monkeypatch.undo()
    assert len(sends) == 1, f"{len(sends)} writes to Redis for one submit_many"
    outcomes = client.wait_many(ids, WAIT)
    assert [o.value() for o in outcomes] == [{"i": i} for i in range(50)]


def test_idempotency_priority_deadline_and_memory_reach_the_record(fleet, client):
    key = f"quote-{uuid.uuid4()}"
    first = client.submit("echo", {"q": 1}, idempotency_key=key, priority="critical", deadline=60,
                          memory_bytes=1 << 20, max_attempts=5)
    again = client.submit("echo", {"q": 2}, idempotency_key=key)
    assert first == again
    record = client.record(first)
    assert record["priority"] == "critical"
    assert record["idempotency_key"] == key
    assert record["memory_bytes"] == str(1 << 20)
    assert record["max_attempts"] == "5"
    assert 59_000 <= int(record["deadline_ms"]) - int(record["submitted_at_ms"]) <= 60_000
    assert client.wait(first, WAIT) == {"q": 1}


def hold_the_cpu_worker(client):
    """Occupies the CPU worker (concurrency 1) until the returned task is
    cancelled; returns once it runs."""
    blocker = client.submit("sleep", {"ms": 600_000})
    wait_until("the blocker to run", lambda: client.status(blocker) == "running")
    return blocker


def test_errors_map_to_their_exceptions(fleet, client):
    # A handler's own code: TaskFailed itself, with the code and message.
    with pytest.raises(errors.TaskFailed) as err:
        client.run("fail", {"code": "E_QUOTE_STALE", "message": "stale"}, timeout=WAIT)
    failed = err.value
    assert type(failed) is errors.TaskFailed
    assert (failed.code, failed.status, failed.message) == ("E_QUOTE_STALE", "failed", "stale")
    with pytest.raises(errors.BadParams, match="covariance"):
        client.run("risk", {"method": "monte_carlo", "weights": [1.0, 2.0], "mu": [0.0, 0.0],
                            "covariance": [0.04], "scenarios": 1000, "seed": 1, "confidence": [0.95]},
                   timeout=WAIT)
    with pytest.raises(errors.UnknownKind):
        client.run("no_such_kind", {}, cls="cpu", timeout=WAIT)
    with pytest.raises(errors.ModelNotFound):
        client.run("infer", {"model": "no-such-model", "inputs": [1.0], "batch": 1}, timeout=WAIT)
    with pytest.raises(errors.HandlerPanic):
        client.run("panic", {"message": "boom"}, timeout=WAIT)
    with pytest.raises(errors.InvalidTask) as invalid:
        client.submit("monte_carlo", {**_core.CATALOG["monte_carlo"]["example"], "sigma": "0.2"})
    assert invalid.value.field == "sigma"
    with pytest.raises(errors.TaskNotFound):
        client.status(str(uuid.uuid4()))
    with pytest.raises(errors.TaskNotFound):
        client.wait(str(uuid.uuid4()), WAIT)

    blocker = hold_the_cpu_worker(client)
    try:
        queued = client.submit("echo", {"x": 1})
        with pytest.raises(errors.WaitTimeout):
            client.wait(queued, timeout=0.2)
        expiring = client.submit("echo", {"x": 2}, deadline=0.001)
        assert client.cancel(queued) == "cancelled"
        with pytest.raises(errors.Cancelled):
            client.wait(queued, WAIT)
    finally:
        assert client.cancel(blocker) == "requested"
    with pytest.raises(errors.Expired):
        client.wait(expiring, WAIT)
    with pytest.raises(errors.Cancelled):
        client.wait(blocker, WAIT)
    assert client.cancel(blocker) == "finished cancelled"


def test_waiting_for_another_producers_task_uses_its_reply_stream(fleet, client):
    task = fleet.tandem("submit", "sleep", "--params", '{"ms": 50}').stdout.strip()
    with Client(fleet.url) as other:
        assert other.wait(task, WAIT).slept_ms == 50
        # Already final: read from the record.
        assert other.wait(task, WAIT).slept_ms == 50


def test_a_task_without_notice_writes_none_and_its_outcome_is_in_the_record(fleet, client):
    quiet, told = client.submit_many([Task("echo", {"q": "quiet"}, notice=False), Task("echo", {"q": "told"})])
    assert client.wait(told, WAIT) == {"q": "told"}
    assert client.wait(quiet, WAIT) == {"q": "quiet"}
    record = client.record(quiet)
    assert "reply_to" not in record, record
    conn = redis.Redis.from_url(fleet.url)
    notices = conn.xrange(client.keys.reply(record["class"], client.producer_id))
    assert [n[b"id"].decode() for _, n in notices] == [told]

    async def main():
        async with AsyncClient(fleet.url) as aclient:
            task = await aclient.submit("echo", {"q": "async"}, notice=False)
            assert await aclient.wait(task, WAIT) == {"q": "async"}
            assert conn.exists(aclient.keys.reply(record["class"], aclient.producer_id)) == 0

    asyncio.run(main())


def test_the_asyncio_api_submits_waits_cancels_and_reads_status(fleet):
    async def main():
        async with AsyncClient(fleet.url) as client:
            ids = await client.submit_many([Task("echo", {"i": i}) for i in range(100)])
            results = await asyncio.gather(*(client.wait(t, WAIT) for t in ids))
            assert results == [{"i": i} for i in range(100)]
            mc = await client.run("monte_carlo", kinds.MonteCarloParams(
                s0=100, strike=100, rate=0.05, sigma=0.2, maturity=1, steps=16, paths=8192, seed=3),
                timeout=WAIT)
            assert isinstance(mc, kinds.MonteCarloResult) and mc.paths == 8192
            blocker = await client.submit("sleep", {"ms": 600_000})
            for _ in range(int(WAIT / 0.02)):
                if await client.status(blocker) == "running":
                    break
                await asyncio.sleep(0.02)
            queued = await client.submit("echo", {"x": 1})
            assert await client.status(queued) == "queued"
            with pytest.raises(tandem.WaitTimeout):
                await client.wait(queued, timeout=0.2)
            assert await client.cancel(queued) == "cancelled"
            assert await client.cancel(blocker) == "requested"
            with pytest.raises(errors.Cancelled):
                await client.wait(blocker, WAIT)
            with pytest.raises(errors.UnknownKind):
                await client.run("no_such_kind", None, cls="cpu", timeout=WAIT)
            # A task submitted elsewhere, waited for here.
            sync_id = Client(fleet.url).submit("echo", "from sync")
            assert await client.wait(sync_id, WAIT) == "from sync"

    asyncio.run(main())


def test_the_readme_quick_start_runs(fleet, monkeypatch, capsys):
    readme = (ROOT / "clients" / "python" / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("REDIS_URL", fleet.url)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("call "), out
    assert "95% VaR " in out and "99% VaR " in out, out
