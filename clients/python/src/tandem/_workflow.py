"""Workflows without I/O (docs/wire-format.md, "Workflows"): the graph a
`Workflow` builds or a spec describes (the shape `tandem flow submit`
reads), its checks (as `shared/src/workflow/`: names, parents that exist,
no cycle, placeholders only for parents, paths the parent kind's result
can hold), the arguments of `workflow_submit.lua`, and the state read
back. The clients (`Client.submit_workflow`) do the I/O.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _wire
from .errors import InvalidWorkflow

# The most nodes one workflow may have (the submit is one script).
MAX_NODES = 20_000
ON_FAILURE = ("fail_fast", "continue")
REF_KEY = "$ref"
PATH_KEY = "path"
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def ref(node: str, path: Optional[str] = None) -> Dict[str, str]:
    """A placeholder for parent `node`'s result, or the part of it at the
    JSON Pointer `path` (`/levels/0/var`): put it anywhere in a node's
    parameters; the worker that runs the node replaces it."""
    placeholder = {REF_KEY: node}
    if path is not None:
        placeholder[PATH_KEY] = path
    return placeholder


@dataclass
class Node:
    """One node: a task (the arguments of `Client.submit`) with a name and
    the parents whose success it waits for."""

    name: str
    kind: str
    params: Any = None
    after: List[str] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)


class Workflow:
    """A graph of tasks submitted as one unit: chains, groups (fan-out),
    chords (fan-in: a node whose parameters take its parents' results).

    >>> from tandem import Workflow, ref
    >>> flow = (Workflow()
    ...     .node("a", "echo", [1, 2])
    ...     .node("b", "echo", {"second": ref("a", "/1")}, after=["a"]))
    >>> [n.name for n in flow.nodes]
    ['a', 'b']

    `on_failure`: `fail_fast` (default: a node that fails for good, after
    its own retries, cancels the rest) or `continue` (only its
    descendants). `id`: the workflow's id (default: a fresh one);
    submitting the same id twice creates it once.
    """

    def __init__(self, on_failure: str = "fail_fast", id: Optional[str] = None) -> None:
        if on_failure not in ON_FAILURE:
            raise InvalidWorkflow(
                f"on_failure is {on_failure!r}; expected fail_fast or continue", field="on_failure"
            )
        self.on_failure = on_failure
        self.id = id or _wire.new_task_id()
        self.nodes: List[Node] = []

    def node(
        self,
        name: str,
        kind: str,
        params: Any = None,
        *,
        after: Sequence[str] = (),
        cls: Optional[str] = None,
        priority: str = "normal",
        max_attempts: Optional[int] = None,
        memory_bytes: Optional[int] = None,
        timeout: Optional[Union[float, int, datetime.timedelta]] = None,
        deadline: Optional[Union[float, int, datetime.timedelta]] = None,
        delay: Optional[Union[float, int, datetime.timedelta]] = None,
        run_at: Optional[datetime.datetime] = None,
    ) -> "Workflow":
        """Adds a node that starts once every node in `after` succeeded (at
        once without). The options are `Client.submit`'s that a node can
        have, all but the idempotency key. `deadline` counts from the
        workflow's submit (from `run_at` when later), so it can pass while
        the node waits for its parents: it then expires unstarted, a
        failure to `on_failure`. `delay` counts from the node's release,
        when its last parent succeeded (from the submit for a node without
        parents); `run_at` is a time it does not start before."""
        if isinstance(after, str):
            after = [after]
        self.nodes.append(
            Node(
                name,
                kind,
                params,
                list(after),
                dict(cls=cls, priority=priority, max_attempts=max_attempts, memory_bytes=memory_bytes,
                     timeout=timeout, deadline=deadline, delay=delay, run_at=run_at, idempotency_key=None),
            )
        )
        return self

    # --- specs -----------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: Any) -> "Workflow":
        """The workflow a spec describes, as `tandem flow submit FILE` reads
        it (`shared/src/workflow/spec.rs`): `{"on_failure": ..., "nodes":
        [{"name", "kind", "params", "after", "class", "priority",
        "max_attempts", "memory_bytes", "timeout_ms", "deadline_ms",
        "delay_ms"}, ...]}`. Unknown
        fields are refused, naming them."""
        if not isinstance(spec, dict):
            raise InvalidWorkflow(f"a workflow spec is a map with `nodes`, got {type(spec).__name__}")
        unknown = sorted(set(spec) - {"on_failure", "nodes"})
        if unknown:
            raise InvalidWorkflow(
                f"workflow spec: unknown field {unknown[0]!r}; the fields are on_failure, nodes", field=unknown[0]
            )
        if "nodes" not in spec:
            raise InvalidWorkflow("workflow spec: required field `nodes` is missing", field="nodes")
        nodes = spec["nodes"]
        if not isinstance(nodes, list):
            raise InvalidWorkflow("workflow spec: `nodes` must be a list of nodes", field="nodes")
        flow = cls(on_failure=spec.get("on_failure") or "fail_fast")
        for i, node in enumerate(nodes):
            flow._spec_node(i, node)
        return flow

    def _spec_node(self, index: int, node: Any) -> None:
        if not isinstance(node, dict):
            raise InvalidWorkflow(f"workflow spec: nodes[{index}] must be a map, got {type(node).__name__}")
        name = node.get("name")
        label = name if isinstance(name, str) else f"nodes[{index}]"

        def bad(problem: str, field_name: str) -> InvalidWorkflow:
            return InvalidWorkflow(f"node {label!r}: {problem}", node=label, field=field_name)

        fields = ("name", "kind", "params", "after", "class", "priority", "max_attempts", "memory_bytes",
                  "timeout_ms", "deadline_ms", "delay_ms")
        for key in node:
            if key not in fields:
                raise bad(f"unknown field {key!r}; the fields are {', '.join(fields)}", str(key))
        for required in ("name", "kind"):
            if not isinstance(node.get(required), str):
                raise bad(f"`{required}` must be a string, got {node.get(required)!r}", required)
        after = node.get("after") or []
        if not isinstance(after, list) or not all(isinstance(p, str) for p in after):
            raise bad(f"`after` must be a list of node names, got {after!r}", "after")
        timeout_ms = node.get("timeout_ms")
        deadline_ms = node.get("deadline_ms")
        delay_ms = node.get("delay_ms")
        for number in ("max_attempts", "memory_bytes", "timeout_ms", "deadline_ms", "delay_ms"):
            value = node.get(number)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise bad(f"`{number}` must be a whole number, 0 or more, got {value!r}", number)
        self.node(
            str(name),
            node["kind"],
            node.get("params"),
            after=after,
            cls=node.get("class"),
            priority=node.get("priority") or "normal",
            max_attempts=node.get("max_attempts"),
            memory_bytes=node.get("memory_bytes"),
            timeout=None if timeout_ms is None else datetime.timedelta(milliseconds=timeout_ms),
            deadline=None if deadline_ms is None else datetime.timedelta(milliseconds=deadline_ms),
            delay=None if delay_ms is None else datetime.timedelta(milliseconds=delay_ms),
        )

    @classmethod
    def from_json(cls, text: str) -> "Workflow":
        try:
            spec = json.loads(text)
        except ValueError as err:
            raise InvalidWorkflow(f"workflow spec: not JSON: {err}") from None
        return cls.from_spec(spec)

    @classmethod
    def from_yaml(cls, text: str) -> "Workflow":
        """Needs PyYAML (`pip install tandem-client[yaml]`)."""
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise InvalidWorkflow(
                "a YAML workflow spec needs PyYAML: pip install pyyaml (or give the spec as JSON or a dict)"
            ) from None
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise InvalidWorkflow(f"workflow spec: not YAML: {err}") from None
        return cls.from_spec(spec)

    @classmethod
    def from_file(cls, path: "Union[str, os.PathLike[str]]") -> "Workflow":
        """A JSON file, or YAML when it ends in .yaml or .yml (as `tandem
        flow submit`)."""
        text = open(path, encoding="utf-8").read()
        if str(path).lower().endswith((".yaml", ".yml")):
            return cls.from_yaml(text)
        return cls.from_json(text)


# --- placeholders and paths ----------------------------------------------------


def _as_ref(value: Dict[Any, Any]) -> Optional[Tuple[str, Optional[str]]]:
    """The placeholder a map stands for (node, path), None when it is none;
    a `ValueError` for a map with `$ref` that is not a good one."""
    if REF_KEY not in value:
        return None
    if len(value) > 1 + (PATH_KEY in value):
        raise ValueError(f'a map with "{REF_KEY}" may hold only "{REF_KEY}" and "{PATH_KEY}"')
    node = value[REF_KEY]
    if not isinstance(node, str):
        raise ValueError(f'"{REF_KEY}" must be a node name (a string)')
    path = value.get(PATH_KEY)
    if PATH_KEY in value:
        if not isinstance(path, str):
            raise ValueError(f'"{PATH_KEY}" must be a JSON Pointer (a string such as "/levels/0")')
        if path and not path.startswith("/"):
            raise ValueError(f'"{PATH_KEY}" {json.dumps(path)} must be empty or start with \'/\' (a JSON Pointer)')
    return node, path


def refs_in(params: Any) -> List[Tuple[str, Optional[str]]]:
    """Every placeholder in the parameters, in the order met."""
    found: List[Tuple[str, Optional[str]]] = []
    stack = [params]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            placeholder = _as_ref(value)
            if placeholder is not None:
                found.append(placeholder)
            else:
                stack.extend(reversed(list(value.values())))
        elif isinstance(value, (list, tuple)):
            stack.extend(reversed(value))
    return found


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def _resolve(root: Dict[str, Any], schema: Any) -> Any:
    """Follows a local `$ref` (`#/$defs/Name`) of a schema."""
    at = schema
    for _ in range(16):
        target = at.get("$ref") if isinstance(at, dict) else None
        if not isinstance(target, str) or not target.startswith("#"):
            return at
        node: Any = root
        for part in [p for p in target[1:].split("/") if p]:
            if not isinstance(node, dict) or _unescape(part) not in node:
                return at
            node = node[_unescape(part)]
        at = node
    return at


def check_path(catalog: Dict[str, Any], kind: str, path: str) -> None:
    """Refuses (`ValueError`) a path that a result of `kind` cannot hold,
    from the kind's result schema (any path passes for a kind not built in,
    and where the schema does not say)."""
    if path and not path.startswith("/"):
        raise ValueError("a JSON Pointer must be empty or start with '/'")
    entry = catalog.get(kind)
    if entry is None or not path:
        return
    root = entry["result"]
    at: Any = root
    for raw in path[1:].split("/"):
        segment = _unescape(raw)
        at = _resolve(root, at)
        props = at.get("properties") if isinstance(at, dict) else None
        if isinstance(props, dict):
            if segment not in props:
                raise ValueError(f"a {kind} result has no field {json.dumps(segment)}; its fields are "
                                 f"{', '.join(sorted(props))}")
            at = props[segment]
        elif isinstance(at, dict) and "items" in at:
            if not segment.isdigit():
                raise ValueError(f"{json.dumps(segment)} must be an index: that part of a {kind} result is an array")
            at = at["items"]
        else:
            return


def check(nodes: Sequence[Node], catalog: Dict[str, Any]) -> Tuple[List[int], List[bool]]:
    """Checks the graph (as `Graph::check`); returns the nodes' indexes,
    parents first, and per node whether its parameters take results."""

    def bad(node: str, problem: str) -> InvalidWorkflow:
        return InvalidWorkflow(f"node {json.dumps(node)}: {problem}", node=node)

    if not nodes:
        raise InvalidWorkflow("workflow: it has no nodes")
    if len(nodes) > MAX_NODES:
        raise InvalidWorkflow(f"workflow: {len(nodes)} nodes; at most {MAX_NODES}")
    index: Dict[str, int] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node.name, str) or not _NAME.fullmatch(node.name):
            raise bad(str(node.name), f"the name {json.dumps(str(node.name))} must be 1-64 letters, digits, "
                                      "'_', '-' or '.'")
        if node.name in index:
            raise bad(node.name, "the name is used by another node too")
        index[node.name] = i
    takes: List[bool] = []
    for node in nodes:
        seen = set()
        for parent in node.after:
            if parent == node.name:
                raise bad(node.name, "it names itself as a parent")
            if parent not in index:
                raise bad(node.name, f"parent {json.dumps(parent)} is not a node of the workflow")
            if parent in seen:
                raise bad(node.name, f"parent {json.dumps(parent)} is named twice")
            seen.add(parent)
        try:
            placeholders = refs_in(node.params)
        except ValueError as err:
            raise bad(node.name, f"params: {err}") from None
        for target, path in placeholders:
            if target not in seen:
                parents = ", ".join(node.after) if node.after else "it has none"
                raise bad(node.name, f"its params take the result of {json.dumps(target)}, which is not one of "
                                     f"its parents ({parents})")
            if path is not None:
                try:
                    check_path(catalog, nodes[index[target]].kind, path)
                except ValueError as err:
                    raise bad(node.name, f"path {json.dumps(path)} into the result of {json.dumps(target)}: "
                                         f"{err}") from None
        takes.append(bool(placeholders))
    # Kahn's algorithm; whatever is left over lies on a cycle.
    waiting = [len(n.after) for n in nodes]
    children: List[List[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for parent in node.after:
            children[index[parent]].append(i)
    order = [i for i in range(len(nodes)) if waiting[i] == 0]
    at = 0
    while at < len(order):
        for child in children[order[at]]:
            waiting[child] -= 1
            if waiting[child] == 0:
                order.append(child)
        at += 1
    if len(order) < len(nodes):
        on_cycle = [nodes[i].name for i in range(len(nodes)) if waiting[i] > 0]
        raise bad(on_cycle[0], f"it is on a cycle (nodes that wait for one another: {', '.join(on_cycle)})")
    return order, takes


# --- the submit script's arguments ----------------------------------------------


def submit_args(
    keys: _wire.Keys,
    workflow_id: str,
    on_failure: str,
    ordered: Sequence[Tuple[str, "_wire.NewTask", List[str]]],
    producer: str,
    reply_to: Callable[[str], str],
) -> Tuple[List[str], List[Any]]:
    """KEYS and ARGV of `workflow_submit.lua` (its header), as
    `Store::submit_workflow` builds them; the hash lives under the first
    node's class."""
    record_of = {name: keys.task(task.cls, task.id) for name, task, _ in ordered}
    children: Dict[str, List[str]] = {}
    for name, _, parents in ordered:
        for parent in parents:
            children.setdefault(parent, []).append(record_of[name])
    graph = [
        {"name": name, "id": task.id, "class": task.cls, "kind": task.kind, "parents": parents}
        for name, task, parents in ordered
    ]
    sinks = [name for name, _, _ in ordered if name not in children]
    args: List[Any] = [
        workflow_id,
        on_failure,
        json.dumps(graph, separators=(",", ":")),
        " ".join(sinks),
        len(ordered),
    ]
    for name, task, parents in ordered:
        metadata = task.metadata(producer, reply_to(task.cls))
        if task.deadline_in_ms > 0:
            # Read by the script (which writes `deadline_ms`), not copied.
            metadata += ["deadline_in_ms", str(task.deadline_in_ms)]
        args += [
            name,
            task.id,
            record_of[name],
            keys.stream(task.cls, task.priority),
            len(parents),
            " ".join(children.get(name, [])),
            task.params,
            len(metadata) // 2,
            *metadata,
        ]
    return [workflow_key(keys, ordered[0][1].cls, workflow_id)], args


def workflow_key(keys: _wire.Keys, cls: str, workflow_id: str) -> str:
    return keys.workflow(cls, workflow_id)


# --- state read back ------------------------------------------------------------


def _number(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@dataclass
class NodeState:
    """One node as Redis has it now: its place in the graph and its
    record (`status` is the record's, `waiting` included, or
    `expired-record` when the record is gone)."""

    name: str
    id: str
    cls: str
    kind: str
    parents: List[str]
    status: str
    record: Dict[str, Any] = field(repr=False)

    @property
    def device(self) -> Optional[str]:
        """Where it ran: `cpu`, or the GPU's UUID."""
        return self.record.get("device")

    @property
    def worker(self) -> Optional[str]:
        return self.record.get("worker")

    @property
    def submitted_at_ms(self) -> Optional[int]:
        return _number(self.record.get("submitted_at_ms"))

    @property
    def released_at_ms(self) -> Optional[int]:
        """When its last parent's commit released it (Redis clock)."""
        return _number(self.record.get("released_at_ms"))

    @property
    def started_at_ms(self) -> Optional[int]:
        return _number(self.record.get("started_at_ms"))

    @property
    def finished_at_ms(self) -> Optional[int]:
        return _number(self.record.get("finished_at_ms"))

    @property
    def run_us(self) -> Optional[int]:
        return _number(self.record.get("run_us"))

    @property
    def waited_ms(self) -> Optional[int]:
        """From becoming ready (released, or submitted without parents) to
        starting, as `tandem flow status` shows it."""
        ready = self.released_at_ms if self.released_at_ms is not None else self.submitted_at_ms
        if ready is None or self.started_at_ms is None:
            return None
        return max(0, self.started_at_ms - ready)

    @property
    def error_code(self) -> Optional[str]:
        return self.record.get("error_code")

    @property
    def error_message(self) -> Optional[str]:
        return self.record.get("error_message")


@dataclass
class WorkflowState:
    """A workflow as Redis has it now: `status` is `running`, `succeeded`,
    `failed` (a node did not succeed) or `cancelled`; `sinks` are the
    nodes no node waits for (their results are the workflow's)."""

    id: str
    status: str
    on_failure: str
    submitted_at_ms: Optional[int]
    finished_at_ms: Optional[int]
    sinks: List[str]
    nodes: List[NodeState]

    @property
    def is_final(self) -> bool:
        return self.status != "running"

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


def parse_graph(fields: Dict[str, Any]) -> List[Dict[str, Any]]:
    try:
        graph = json.loads(fields.get("graph") or "[]")
    except ValueError as err:
        raise _protocol(f"its graph is not JSON: {err}") from None
    if not isinstance(graph, list) or not all(
        isinstance(n, dict) and isinstance(n.get("name"), str) and isinstance(n.get("id"), str)
        and n.get("class") in _wire.CLASSES
        for n in graph
    ):
        raise _protocol("its graph is not a list of {name, id, class, kind, parents}")
    return graph


def state(workflow_id: str, fields: Dict[str, Any], graph: List[Dict[str, Any]],
          records: List[Dict[str, Any]]) -> WorkflowState:
    nodes = [
        NodeState(
            name=entry["name"],
            id=entry["id"],
            cls=entry["class"],
            kind=str(entry.get("kind", "")),
            parents=[str(p) for p in entry.get("parents") or []],
            status=record.get("status") or "expired-record",
            record=record,
        )
        for entry, record in zip(graph, records)
    ]
    return WorkflowState(
        id=workflow_id,
        status=fields.get("status") or "unknown",
        on_failure=fields.get("on_failure") or "",
        submitted_at_ms=_number(fields.get("submitted_at_ms")),
        finished_at_ms=_number(fields.get("finished_at_ms")),
        sinks=(fields.get("sinks") or "").split(),
        nodes=nodes,
    )


def cancel_outcome(reply: Any) -> str:
    """`workflow_cancel.lua`'s reply in words: `not_found`, `finished
    <status>`, or `cancelled <ended now> <asked to stop>`."""
    return " ".join(str(_wire.text(w)) for w in reply)


def _protocol(detail: str) -> Exception:
    from .errors import TandemError

    return TandemError(f"workflow: {detail}")
