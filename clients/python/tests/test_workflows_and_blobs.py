"""Workflows and blobs from Python (issue 14) against real redis-server and
worker processes: a chain, a group and a chord run by the fleet with the
result read here; a cancel; bad specs refused naming the node, with
nothing written; parameters above the blob threshold sent by reference and
run by a worker, a large result read back; blobs put and read in chunks,
byte for byte, and across `tandem blob put|get` both ways."""

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from conftest import GPU_UUID, WAIT, Fleet, binary, wait_until

from tandem import (
    AsyncClient,
    BlobError,
    BlobRef,
    Client,
    InvalidWorkflow,
    Workflow,
    WorkflowFailed,
    WorkflowNotFound,
    _core,
    _wire,
    errors,
    ref,
)


@pytest.fixture()
def client(fleet):
    with Client(fleet.url) as c:
        yield c


def historical_risk(weights, returns, levels):
    """VaR and CVaR as `shared/src/kind/risk.rs` defines them: losses
    sorted descending, k = ceil((1 - c) N), VaR the k-th largest, CVaR the
    mean of the k largest."""
    losses = np.sort(-(np.asarray(returns).reshape(-1, len(weights)) @ np.asarray(weights)))[::-1]
    out = []
    for c in levels:
        k = math.ceil(round((1 - c) * len(losses), 9))
        out.append((losses[k - 1], losses[:k].mean()))
    return out, losses.mean()


# --- workflows ---------------------------------------------------------------------


def test_a_chain_group_and_chord_run_on_the_fleet_and_the_result_is_read_here(fleet, client):
    weights = [1_000_000.0, 500_000.0]
    returns = [0.01, -0.02, -0.015, 0.005, 0.002, -0.03, 0.012, 0.0, -0.04, 0.01]
    flow = (
        Workflow()
        # A chain: data -> var (on the GPU: `risk` is parallel) -> report.
        .node("data", "echo", {"weights": weights, "returns": returns})
        .node("var", "risk", {"method": "historical", "confidence": [0.9],
                              "weights": ref("data", "/weights"), "returns": ref("data", "/returns")},
              after=["data"])
        # A group: `first` runs beside `var`, from the same parent.
        .node("first", "echo", {"row": ref("data", "/returns/0")}, after=["data"])
        # A chord: `report` waits for both and takes parts of each result.
        .node("report", "echo", {"var90": ref("var", "/levels/0/var"), "first": ref("first", "/row")},
              after=["var", "first"])
    )
    handle = client.submit_workflow(flow)
    assert handle.created and list(handle.nodes) == ["data", "var", "first", "report"]

    outcome = handle.wait(WAIT)
    assert outcome.status == "succeeded", outcome.failed_nodes()
    [(var90, _)], _ = historical_risk(weights, returns, [0.9])
    assert outcome.results == {"report": {"var90": pytest.approx(var90, rel=1e-12), "first": 0.01}}
    assert handle.result(WAIT) == outcome.results
    assert outcome.nodes["var"].value().levels[0].var == pytest.approx(var90, rel=1e-12)

    state = handle.status()
    assert state.status == "succeeded" and state.sinks == ["report"] and state.is_final
    by_name = {n.name: n for n in state.nodes}
    assert by_name["var"].device == GPU_UUID and by_name["data"].device == "cpu"
    assert by_name["report"].parents == ["var", "first"]
    for node in state.nodes:
        assert node.status == "succeeded", node
        assert node.started_at_ms is not None and node.finished_at_ms is not None and node.run_us is not None
        assert node.waited_ms is not None
    # A child is released by its last parent's commit, never before.
    for name in ("var", "first", "report"):
        node = by_name[name]
        assert node.released_at_ms is not None and node.started_at_ms >= node.released_at_ms
    # The Rust CLI reads the workflow Python submitted.
    view = json.loads(fleet.tandem("flow", "status", handle.id, "--json").stdout)
    assert view["status"] == "succeeded", view
    # Waiting by id (another client, say) sees the same.
    with Client(fleet.url) as other:
        assert other.wait_workflow(handle.id, WAIT).results == outcome.results


def test_a_spec_as_json_yaml_or_dict_describes_the_same_workflow(fleet, client):
    spec = {
        "on_failure": "continue",
        "nodes": [
            {"name": "a", "kind": "echo", "params": [1, 2, 3]},
            {"name": "b", "kind": "echo", "after": ["a"], "params": {"x": {"$ref": "a", "path": "/2"}},
             "priority": "high", "max_attempts": 2, "timeout_ms": 30000},
        ],
    }
    handles = [client.submit_workflow(spec), client.submit_workflow(Workflow.from_json(json.dumps(spec)))]
    yaml = pytest.importorskip("yaml")
    handles.append(client.submit_workflow(Workflow.from_yaml(yaml.safe_dump(spec))))
    for handle in handles:
        assert handle.result(WAIT) == {"b": {"x": 3}}
        assert handle.status().on_failure == "continue"
        record = client.record(handle.nodes["b"])
        assert (record["priority"], record["max_attempts"], record["timeout_ms"]) == ("high", "2", "30000")


def test_cancelling_a_workflow_cancels_every_node_not_finished(fleet, client):
    flow = (
        Workflow()
        # Holds the CPU worker (concurrency 1) until cancelled.
        .node("hold", "sleep", {"ms": 600_000})
        .node("after", "echo", {"never": True}, after=["hold"])
    )
    handle = client.submit_workflow(flow)
    wait_until("the first node to run", lambda: handle.status().node("hold").status == "running")
    assert handle.status().node("after").status == "waiting"
    # The waiting node ends now; the running one is asked to stop.
    assert handle.cancel() == "cancelled 1 1"
    outcome = handle.wait(WAIT)
    assert outcome.status == "cancelled" and outcome.results == {}
    assert {name: o.status for name, o in outcome.nodes.items()} == {"hold": "cancelled", "after": "cancelled"}
    assert outcome.nodes["after"].error_message == "its workflow was cancelled"
    assert handle.status().node("after").started_at_ms is None
    with pytest.raises(WorkflowFailed, match="ended cancelled"):
        outcome.value()
    assert handle.cancel() == "finished cancelled"
    with pytest.raises(WorkflowNotFound):
        client.cancel_workflow(_wire.new_task_id())


def test_a_failed_node_fails_the_workflow_fast(fleet, client):
    flow = (
        Workflow()
        .node("bad", "fail", {"code": "E_STALE", "message": "stale quotes"}, max_attempts=1)
        .node("child", "echo", {"x": ref("bad")}, after=["bad"])
    )
    outcome = client.submit_workflow(flow).wait(WAIT)
    assert outcome.status == "failed"
    assert outcome.nodes["bad"].error_code == "E_STALE"
    assert outcome.nodes["child"].status == "cancelled"
    assert "workflow node bad ended failed" in outcome.nodes["child"].error_message


SCHEDULED_SPEC = {"on_failure": "continue", "nodes": [
    {"name": "parent", "kind": "sleep", "params": {"ms": 400}, "class": "light"},
    {"name": "late", "kind": "echo", "params": {"n": 1}, "after": ["parent"], "deadline_ms": 100},
    {"name": "after_late", "kind": "echo", "params": {"n": 2}, "after": ["late"]},
    {"name": "later", "kind": "echo", "params": {"n": 3}, "after": ["parent"], "delay_ms": 300,
     "deadline_ms": 600_000},
]}


@pytest.mark.parametrize("built_by", ["builder", "spec"])
def test_a_nodes_deadline_and_delay_hold(fleet, client, built_by):
    """A node's deadline counts from the submit and passes while its parent
    runs (400 ms, from its start after the submit): released past it, the
    node expires unstarted, a failure to `continue`. A node's delay counts
    from its release: judged on the times Redis recorded. A spec's
    `deadline_ms` and `delay_ms` say the same as the builder's arguments."""
    if built_by == "builder":
        flow = (Workflow(on_failure="continue")
                .node("parent", "sleep", {"ms": 400}, cls="light")
                .node("late", "echo", {"n": 1}, after=["parent"], deadline=0.1)
                .node("after_late", "echo", {"n": 2}, after=["late"])
                .node("later", "echo", {"n": 3}, after=["parent"], delay=0.3, deadline=600))
    else:
        flow = Workflow.from_spec(SCHEDULED_SPEC)
    handle = client.submit_workflow(flow)
    outcome = handle.wait(WAIT)
    assert outcome.status == "failed"
    assert outcome.nodes["late"].status == "expired" and outcome.nodes["late"].error_code == "EXPIRED"
    assert outcome.nodes["after_late"].status == "cancelled"
    assert outcome.nodes["later"].status == "succeeded"
    nodes = {node.name: node for node in handle.status().nodes}
    late = nodes["late"]
    assert late.started_at_ms is None
    assert int(late.record["deadline_ms"]) == late.submitted_at_ms + 100 < nodes["parent"].finished_at_ms
    later = nodes["later"]
    assert later.released_at_ms == nodes["parent"].finished_at_ms
    assert int(later.record["run_at_ms"]) == later.released_at_ms + 300 <= later.started_at_ms
    assert int(later.record["deadline_ms"]) == later.submitted_at_ms + 600_000


BAD_SPECS = [
    # (nodes as (name, kind, params, after), the message's start)
    ([("a", "echo", 1, ["b"]), ("b", "echo", 1, ["a"])],
     'node "a": it is on a cycle (nodes that wait for one another: a, b)'),
    ([("a", "echo", 1, []), ("b", "echo", 1, ["ghost"])], 'node "b": parent "ghost" is not a node of the workflow'),
    ([("a", "echo", 1, []), ("x", "mystery", {}, ["a"])],
     "node \"x\": kind 'mystery' is not built in, so its class must be given"),
    ([("r", "risk", {"method": "historical", "weights": [1.0], "returns": [0.1], "confidence": [0.9]}, []),
      ("c", "echo", {"v": ref("r", "/levels/0/nope")}, ["r"])],
     'node "c": path "/levels/0/nope" into the result of "r": a risk result has no field "nope"; its fields are '
     "confidence, cvar, tail_count, var"),
    ([("a", "echo", 1, []), ("b", "echo", {"v": ref("a")}, [])],
     'node "b": its params take the result of "a", which is not one of its parents (it has none)'),
    ([("mc", "monte_carlo", {**_core.CATALOG["monte_carlo"]["example"], "s0": "100"}, [])],
     'node "mc": bad parameters for kind monte_carlo: s0: expected a number, got a string ("100")'),
    ([("a b", "echo", 1, [])], "node \"a b\": the name \"a b\" must be 1-64 letters"),
    ([("a", "echo", {"$ref": "x", "other": 1}, [])], 'node "a": params: a map with "$ref" may hold only'),
]


@pytest.mark.parametrize("nodes, message", BAD_SPECS)
def test_a_bad_spec_is_refused_naming_the_node_and_nothing_is_written(redis_server, nodes, message):
    flow = Workflow()
    for name, kind, params, after in nodes:
        flow.node(name, kind, params, after=after)
    with Client(redis_server.url) as client:
        with pytest.raises(InvalidWorkflow) as refused:
            client.submit_workflow(flow)
    assert str(refused.value).startswith(message), str(refused.value)
    assert refused.value.node == message.split('"')[1]
    assert redis_server.conn().dbsize() == 0


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"nodes": [], "retries": 1}, "workflow spec: unknown field 'retries'"),
        ({"nodes": [{"name": "a", "kind": "echo", "parents": ["x"]}]}, "node 'a': unknown field 'parents'"),
        ({"nodes": [{"name": "a"}]}, "node 'a': `kind` must be a string"),
        ({"on_failure": "sometimes", "nodes": []}, "on_failure is 'sometimes'; expected fail_fast or continue"),
        ({"nodes": []}, "workflow: it has no nodes"),
        ({"nodes": [{"name": "a", "kind": "echo", "delay_ms": -5}]},
         "node 'a': `delay_ms` must be a whole number, 0 or more, got -5"),
    ],
)
def test_a_malformed_spec_is_refused_naming_the_field(redis_server, spec, message):
    with Client(redis_server.url) as client:
        with pytest.raises(InvalidWorkflow, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
            client.submit_workflow(spec)
    assert redis_server.conn().dbsize() == 0


# --- blobs: large parameters and results ---------------------------------------------


def test_a_large_returns_matrix_travels_by_reference_and_runs_on_the_gpu(fleet, client):
    rng = np.random.default_rng(7)
    weights = rng.uniform(1e4, 1e6, 20)
    returns = rng.normal(0.0, 0.02, (8_000, 20))
    params = {"method": "historical", "weights": weights, "returns": returns, "confidence": [0.95, 0.99]}
    packed = _wire.pack(params)
    assert len(packed) > client.settings.max_payload_bytes
    blob = BlobRef.of(packed)

    # Submitted for later, its entry waits in its retry hash, where the
    # reference can be read: the entry carries it, the blob store the bytes.
    later = client.submit("risk", params, delay=3600)
    held = fleet.redis.conn().hget(f"tandem:{{parallel}}:retry:{later}", "params")
    assert held == blob.encode() and BlobRef.detect(held) == blob
    stat = client.blob_stat(blob.sha256)
    assert (stat.len, stat.refs) == (len(packed), 1)
    assert client.cancel(later) == "cancelled"

    task = client.submit("risk", params)
    outcome = client.wait_outcome(task, WAIT)
    assert outcome.status == "succeeded", outcome
    assert outcome.device == GPU_UUID
    expected, mean_loss = historical_risk(weights, returns, [0.95, 0.99])
    result = outcome.value()
    assert result.scenarios == 8_000
    for level, (var, cvar) in zip(result.levels, expected):
        assert level.var == pytest.approx(var, rel=1e-9) and level.cvar == pytest.approx(cvar, rel=1e-9)
    assert result.mean_loss == pytest.approx(mean_loss, rel=1e-9, abs=1e-6)
    # The worker gave its task's reference back at its commit, and the
    # cancel gave back the cancelled task's (wire 2.16: the cancel pushes it
    # onto the class's release list, which the workers drain): no reference
    # is left, so the blob is gone.
    wait_until("both references to be given back", lambda: client.blob_stat(blob.sha256) is None)


def test_a_large_result_comes_back_as_a_blob_and_is_read_on_wait(fleet, client):
    payload = {"tick": os.urandom(1_500_000), "n": 7}
    task = client.submit("echo", payload)
    outcome = client.wait_outcome(task, WAIT)
    assert outcome.status == "succeeded", outcome
    # The record holds a reference; the wait read the blob behind it.
    record = client.record(task)
    assert BlobRef.detect(record["result"]) == outcome.result_blob is not None
    assert outcome.result_blob.len == len(outcome.result_bytes) > client.settings.blob_threshold_bytes
    assert outcome.value() == payload
    assert client.blob_stat(outcome.result_blob.sha256).refs == 1


def test_parameters_over_max_blob_bytes_are_refused(redis_server):
    with Client(redis_server.url, max_blob_bytes=2 << 20) as client:
        with pytest.raises(errors.InvalidTask, match=r"the largest blob is 2097152 bytes \(max_blob_bytes\)"):
            client.submit("echo", b"x" * (3 << 20))
    assert redis_server.conn().dbsize() == 0


# --- blobs by hand ------------------------------------------------------------------------


def command_calls(conn, name):
    return conn.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0)


def test_a_blob_round_trips_in_chunks_byte_for_byte(redis_server):
    chunk = 64 << 10
    data = os.urandom(3 * chunk + 123)
    conn = redis_server.conn()
    with Client(redis_server.url, blob_chunk_bytes=chunk, blob_ttl_s=600) as client:
        appends = command_calls(conn, "append")
        blob = client.put_blob(data)
        assert blob == BlobRef.of(data) and blob.len == len(data)
        assert command_calls(conn, "append") - appends == 4, "one APPEND per chunk"
        ranges = command_calls(conn, "getrange")
        assert client.get_blob(blob) == data
        assert command_calls(conn, "getrange") - ranges == 4, "one GETRANGE per chunk"
        chunks = list(client.read_blob(blob.sha256))
        assert [len(c) for c in chunks] == [chunk, chunk, chunk, 123] and b"".join(chunks) == data

        stat = client.blob_stat(blob.sha256)
        assert (stat.len, stat.refs, stat.backend) == (len(data), 1, "redis")
        assert 0 < stat.ttl_ms <= 600_000
        # The same bytes again: one more reference, nothing uploaded.
        appends = command_calls(conn, "append")
        assert client.put_blob(data) == blob
        assert command_calls(conn, "append") == appends and client.blob_stat(blob.sha256).refs == 2
        assert client.release_blob(blob) is False
        assert client.release_blob(blob) is True
        assert client.blob_stat(blob.sha256) is None
        with pytest.raises(BlobError, match="is not in the blob store"):
            client.get_blob(blob)
        # The empty blob has no data key, and reads back empty.
        empty = client.put_blob(b"")
        assert client.get_blob(empty) == b"" and client.blob_stat(empty.sha256).len == 0
        assert client.release_blob(empty)
    # Every key went with the last reference (no partial key left either).
    assert conn.dbsize() == 0


def test_damaged_or_malformed_blobs_are_named(redis_server):
    with Client(redis_server.url, blob_chunk_bytes=1000) as client:
        blob = client.put_blob(b"a" * 2500)
        redis_server.conn().setrange(f"tandem:{{blob:{blob.sha256}}}:data", 1200, b"b")
        with pytest.raises(BlobError, match=f"blob {blob.sha256}: read back bytes whose SHA-256 is"):
            client.get_blob(blob)
        with pytest.raises(BlobError, match="must be 64 lowercase hex digits"):
            client.blob_stat("NOT-HEX")
        bad_ref = _wire.msgpack.packb({"tandem_blob": "x" * 64, "len": 1})
        with pytest.raises(BlobError, match="must be 64 lowercase hex digits"):
            BlobRef.detect(bad_ref)
        assert BlobRef.detect(_wire.msgpack.packb({"len": 1, "tandem_blob": "a" * 64})) is None


def tandem_cli(url, *args, env=None):
    full = {"PATH": os.environ.get("PATH", ""), "REDIS_URL": url, **(env or {})}
    return subprocess.run([binary("tandem"), *args], env=full, capture_output=True, timeout=WAIT)


@pytest.mark.parametrize("backend", ["redis", "directory", "s3"])
def test_blobs_interoperate_with_tandem_blob_put_and_get(redis_server, backend, request):
    with tempfile.TemporaryDirectory(prefix="tandem-py-blobs-") as scratch:
        if backend == "s3":
            moto = request.getfixturevalue("moto")
            settings = moto.settings("interop")
        else:
            settings = {"blob_store": "redis" if backend == "redis" else os.path.join(scratch, "store")}
        env = {f"TANDEM_{name.upper()}": value for name, value in settings.items()}
        env["TANDEM_BLOB_CHUNK_BYTES"] = "100000"
        with Client(redis_server.url, blob_chunk_bytes=70_000, **settings) as client:
            # Python puts, the Rust CLI reads.
            ours = os.urandom(1_234_567)
            blob = client.put_blob(ours)
            out = os.path.join(scratch, "out")
            got = tandem_cli(redis_server.url, "blob", "get", blob.sha256, "--out", out, env=env)
            assert got.returncode == 0, got.stderr
            assert open(out, "rb").read() == ours
            stat = tandem_cli(redis_server.url, "blob", "stat", blob.sha256, env=env).stdout.decode()
            assert f"len      {len(ours)}" in stat and "refs     1" in stat

            # The Rust CLI puts, Python reads (the reference is the same JSON).
            theirs = os.urandom(777_777)
            path = os.path.join(scratch, "in")
            with open(path, "wb") as f:
                f.write(theirs)
            put = tandem_cli(redis_server.url, "blob", "put", path, env=env)
            assert put.returncode == 0, put.stderr
            printed = json.loads(put.stdout)
            assert printed == BlobRef.of(theirs).to_json()
            assert client.get_blob(BlobRef(printed["tandem_blob"], printed["len"])) == theirs
            with open(os.path.join(scratch, "copy"), "wb") as f:
                assert client.get_blob_to(printed["tandem_blob"], f) == len(theirs)
            assert open(os.path.join(scratch, "copy"), "rb").read() == theirs
            # A file put by Python streams the same way.
            assert client.put_blob_file(path) == BlobRef.of(theirs)
            assert client.blob_stat(printed["tandem_blob"]).refs == 2
            if backend == "directory":
                assert open(os.path.join(settings["blob_store"], "blobs", blob.sha256), "rb").read() == ours
            if backend == "s3":
                # One object per blob, `<prefix>/<sha256>`, whoever wrote it.
                for sha256, data in ((blob.sha256, ours), (printed["tandem_blob"], theirs)):
                    obj = moto.s3.get_object(Bucket=moto.BUCKET, Key=f"interop/{sha256}")
                    assert obj["Body"].read() == data
                # Nothing of the bytes went to Redis.
                assert redis_server.conn().keys("tandem:{blob:*}:data") == []


def test_the_s3_blob_store_keeps_one_object_per_blob_with_counted_references(redis_server, moto):
    """Put, get, stat and release against a real S3 server (moto): the
    layout, the multipart upload above 5 MiB (parts of max(chunk, 5 MiB)),
    chunked reads, references and TTL kept in Redis as with every backend,
    the object deleted with the last reference; a large blob put by the
    Rust CLI (its own multipart upload) read back here."""
    settings = moto.settings("round-trip")
    with Client(redis_server.url, blob_chunk_bytes=1 << 20, blob_ttl_s=600, **settings) as client:
        big = os.urandom(11 * (1 << 20) + 12_345)
        blob = client.put_blob(big)
        assert blob == BlobRef.of(big)
        key = f"round-trip/{blob.sha256}"
        head = moto.s3.head_object(Bucket=moto.BUCKET, Key=key)
        assert head["ContentLength"] == len(big) and head["Metadata"] == {}
        # Three parts: 5 MiB, 5 MiB and the rest (S3 ETags of multipart
        # uploads end with the part count).
        assert head["ETag"].strip('"').endswith("-3"), head["ETag"]
        stat = client.blob_stat(blob.sha256)
        assert (stat.len, stat.refs, stat.backend) == (len(big), 1, settings["blob_store"])
        assert 0 < stat.ttl_ms <= 600_000
        chunks = list(client.read_blob(blob))
        assert {len(c) for c in chunks[:-1]} == {1 << 20} and b"".join(chunks) == big

        # The same bytes again: a second reference, no second object.
        assert client.put_blob(big) == blob
        assert client.blob_stat(blob.sha256).refs == 2
        listed = moto.s3.list_objects_v2(Bucket=moto.BUCKET, Prefix="round-trip/")
        assert [o["Key"] for o in listed["Contents"]] == [key]

        # A small one goes in one request; the empty blob too.
        small = client.put_blob(b"small")
        assert moto.s3.get_object(Bucket=moto.BUCKET, Key=f"round-trip/{small.sha256}")["Body"].read() == b"small"
        empty = client.put_blob(b"")
        assert client.get_blob(empty) == b""

        # The last release deletes the object and the keys.
        assert not client.release_blob(blob)
        assert client.release_blob(blob)
        with pytest.raises(Exception) as gone:
            moto.s3.head_object(Bucket=moto.BUCKET, Key=key)
        assert gone.value.response["Error"]["Code"] in ("404", "NoSuchKey")
        assert client.blob_stat(blob.sha256) is None
        with pytest.raises(BlobError, match="is not in the blob store"):
            client.get_blob(blob)
        # An object gone while Redis still counts it reads as missing.
        moto.s3.delete_object(Bucket=moto.BUCKET, Key=f"round-trip/{small.sha256}")
        with pytest.raises(BlobError, match=f"blob {small.sha256} is not in the blob store"):
            client.get_blob(small)

        # A 6 MiB file put by the Rust CLI (a multipart upload of its own).
        with tempfile.TemporaryDirectory(prefix="tandem-py-s3-") as scratch:
            theirs = os.urandom(6 * (1 << 20) + 1)
            path = os.path.join(scratch, "in")
            with open(path, "wb") as f:
                f.write(theirs)
            env = {f"TANDEM_{name.upper()}": value for name, value in settings.items()}
            put = tandem_cli(redis_server.url, "blob", "put", path, env=env)
            assert put.returncode == 0, put.stderr
            printed = json.loads(put.stdout)
            assert client.get_blob(printed["tandem_blob"]) == theirs


def test_the_asyncio_client_speaks_s3_too(redis_server, moto):
    async def scenario():
        settings = moto.settings("async")
        async with AsyncClient(redis_server.url, blob_chunk_bytes=2 << 20, **settings) as client:
            data = os.urandom(6 * (1 << 20) + 7)
            blob = await client.put_blob(data)
            head = moto.s3.head_object(Bucket=moto.BUCKET, Key=f"async/{blob.sha256}")
            assert head["ContentLength"] == len(data)
            chunks = [c async for c in client.read_blob(blob)]
            assert [len(c) for c in chunks] == [2 << 20, 2 << 20, 2 << 20, 7]
            assert b"".join(chunks) == data
            assert (await client.blob_stat(blob.sha256)).refs == 1
            assert await client.release_blob(blob)
            assert await client.blob_stat(blob.sha256) is None
            with pytest.raises(BlobError, match="is not in the blob store"):
                await client.get_blob(blob)

    asyncio.run(scenario())


def test_a_workflows_large_parameter_goes_through_s3_to_a_real_worker(moto):
    env = {"TANDEM_TEST_KINDS": "true", **moto.env("flow")}
    fleet = Fleet(env)
    try:
        with Client(fleet.url, **moto.settings("flow")) as client:
            big = os.urandom(1_100_000)
            flow = (Workflow()
                    .node("big", "echo", {"big": big})
                    .node("next", "echo", {"copy": ref("big")}, after=["big"]))
            handle = client.submit_workflow(flow)
            # The parameters, the parent's result and the child's result all
            # went by reference: the bytes are objects in the bucket, none
            # in Redis.
            assert handle.result(WAIT) == {"next": {"copy": {"big": big}}}
            assert fleet.redis.conn().keys("tandem:{blob:*}:data") == []
            # `big`'s parameters are its result too (echo): one object, its
            # task's reference given back and its record's taken; `next`'s
            # result is another object.
            first = BlobRef.of(_wire.pack({"big": big}))
            second = BlobRef.of(_wire.pack({"copy": {"big": big}}))
            listed = moto.s3.list_objects_v2(Bucket=moto.BUCKET, Prefix="flow/")
            assert sorted(o["Key"] for o in listed["Contents"]) == sorted(
                f"flow/{blob.sha256}" for blob in (first, second))
            wait_until("the worker to give the task's reference back",
                       lambda: client.blob_stat(first.sha256).refs == 1)
            assert client.blob_stat(second.sha256).refs == 1
    finally:
        fleet.close()


def test_a_bad_s3_blob_store_is_refused_with_a_clear_error(redis_server, monkeypatch):
    with Client(redis_server.url, blob_store="s3:///prefix") as client:
        assert client.submit("echo", {"small": True})
        with pytest.raises(BlobError, match=r"blob_store: 's3:///prefix' names no bucket \(s3://bucket\[/prefix\]\)"):
            client.put_blob(b"x")
    # boto3 is imported on first use only, with a clear error without it.
    monkeypatch.setitem(sys.modules, "boto3", None)
    with Client(redis_server.url, blob_store="s3://bucket/prefix") as client:
        assert client.submit("echo", {"small": True})
        with pytest.raises(BlobError, match=r"'s3://bucket/prefix' needs boto3, .*pip install 'tandem-client\[s3\]'"):
            client.put_blob(b"x")


def test_the_asyncio_client_runs_workflows_and_blobs(fleet):
    async def scenario():
        async with AsyncClient(fleet.url, blob_chunk_bytes=300_000) as client:
            big = os.urandom(1_100_000)
            flow = (Workflow()
                    .node("big", "echo", {"big": big})
                    .node("small", "echo", {"n": 1})
                    .node("next", "echo", {"n": ref("small", "/n")}, after=["small"]))
            handle = await client.submit_workflow(flow)
            # The sink `big` went by reference and came back as a blob.
            assert await handle.result(WAIT) == {"big": {"big": big}, "next": {"n": 1}}
            assert (await handle.status()).node("next").device == "cpu"
            blob = await client.put_blob(big[:700_001])
            chunks = [c async for c in client.read_blob(blob)]
            assert [len(c) for c in chunks] == [300_000, 300_000, 100_001]
            assert await client.get_blob(blob.sha256) == big[:700_001]
            assert (await client.blob_stat(blob.sha256)).refs == 1
            assert await client.release_blob(blob) and await client.blob_stat(blob.sha256) is None
            held = await client.submit_workflow(
                Workflow().node("hold", "sleep", {"ms": 600_000}, cls="light").node("next", "noop", after=["hold"])
            )
            assert (await client.cancel_workflow(held.id)).startswith("cancelled ")
            assert (await held.wait(WAIT)).status == "cancelled"

    asyncio.run(scenario())


# --- without a fleet: the pieces the Rust unit tests pin ------------------------------


def test_a_reference_round_trips_and_plain_bytes_are_not_one():
    # shared/src/blob/reference.rs's case.
    blob = BlobRef.of(b"hello")
    assert blob.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert blob.encode().startswith(b"\x82\xabtandem_blob") and BlobRef.detect(blob.encode()) == blob
    for plain in (_wire.pack({"n": 1, "len": 2}), b"", b"\xc0"):
        assert BlobRef.detect(plain) is None


def test_placeholders_are_found_in_order_and_paths_checked_against_the_result_schema():
    from tandem import _workflow

    params = {"a": {"$ref": "x"}, "b": [1, {"$ref": "y", "path": "/p/0"}]}
    assert _workflow.refs_in(params) == [("x", None), ("y", "/p/0")]
    assert _workflow.refs_in({"a": 1}) == []
    for value, problem in [
        ({"$ref": 3}, '"$ref" must be a node name (a string)'),
        ({"$ref": "x", "other": 1}, 'a map with "$ref" may hold only "$ref" and "path"'),
        ({"$ref": "x", "path": "a/b"}, '"path" "a/b" must be empty or start with \'/\' (a JSON Pointer)'),
    ]:
        with pytest.raises(ValueError) as err:
            _workflow.refs_in(value)
        assert str(err.value) == problem
    check = lambda kind, path: _workflow.check_path(_core.CATALOG, kind, path)  # noqa: E731
    check("risk", "/levels/0/cvar")
    check("risk", "/mean_loss")
    check("my_own_kind", "/anything")
    check("echo", "/anything/0")
    with pytest.raises(ValueError, match="must be an index"):
        check("risk", "/levels/x")
    with pytest.raises(ValueError, match='has no field "nope"'):
        check("risk", "/nope")


def test_the_submit_script_gets_parents_first_with_children_and_sinks():
    from tandem import _workflow

    flow = Workflow().node("sum", "echo", 1, after=["x", "y"]).node("x", "echo", 1, after=["root"]) \
        .node("y", "echo", 1, after=["root"]).node("root", "echo", 1)
    order, takes = _workflow.check(flow.nodes, _core.CATALOG)
    assert [flow.nodes[i].name for i in order] == ["root", "x", "y", "sum"] and takes == [False] * 4
    keys = _wire.Keys("tandem")
    ordered = []
    for i in order:
        task, _ = _core.prepare(_core.Settings(), "echo", 1, cls=None, priority="normal", max_attempts=None,
                                deadline=None, idempotency_key=None, memory_bytes=None)
        ordered.append((flow.nodes[i].name, task, flow.nodes[i].after))
    call_keys, args = _workflow.submit_args(keys, flow.id, "fail_fast", ordered, "p-1", lambda c: f"r:{c}")
    assert call_keys == [f"tandem:{{cpu}}:workflow:{flow.id}"]
    graph = json.loads(args[2])
    assert [(n["name"], n["parents"]) for n in graph] == [("root", []), ("x", ["root"]), ("y", ["root"]),
                                                          ("sum", ["x", "y"])]
    assert args[3] == "sum" and args[4] == 4
    # root's block: name, id, record, stream, parents, children's records.
    x_record, y_record = (keys.task("cpu", ordered[i][1].id) for i in (1, 2))
    assert args[5:11] == ["root", ordered[0][1].id, keys.task("cpu", ordered[0][1].id),
                          "tandem:{cpu}:stream:normal", 0, f"{x_record} {y_record}"]


def test_the_workflow_example_runs_on_the_fleet(fleet):
    import sys

    from conftest import ROOT

    env = {"PATH": os.environ.get("PATH", ""), "REDIS_URL": fleet.url}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "workflow.py"), "--timeout-s",
                          str(WAIT)], env=env, capture_output=True, text=True, timeout=WAIT + 30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bytes of MessagePack (by reference)" in out.stdout, out.stdout
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    assert set(lines) == {"historical", "parametric", "report"}, out.stdout
    assert all(" succeeded " in line for line in lines.values()), out.stdout
    # Where each ran depends on who was free (the GPU, or the CPU worker
    # taking a parallel task while the GPU is busy): one of the two.
    assert all(f" on {GPU_UUID} " in line or " on cpu " in line for line in lines.values()), out.stdout
    assert "99% VaR: historical" in out.stdout
