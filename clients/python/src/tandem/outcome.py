"""`Outcome`: how a task ended, read from its completion notice or record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from . import _wire

if TYPE_CHECKING:
    from ._blob import BlobRef
    from ._workflow import WorkflowState


@dataclass
class Outcome:
    """A finished task. `status` is `succeeded`, `failed`, `cancelled` or
    `expired`; `value()` is the result (typed for built-in kinds) or raises
    the `TaskFailed` subclass of `error_code`."""

    id: str
    status: str
    kind: Optional[str] = None
    cls: Optional[str] = None
    worker: Optional[str] = None
    device: Optional[str] = None
    attempt: Optional[int] = None
    run_us: Optional[int] = None
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    result_bytes: Optional[bytes] = None
    """The result as the worker wrote it (MessagePack)."""
    fields: Dict[str, Any] = field(default_factory=dict, repr=False)
    """Every field of the notice or record, as text (`result` as bytes)."""
    result_blob: Optional["BlobRef"] = None
    """When the result came as a blob reference (above the workers'
    `blob_threshold_bytes`): the reference; `result_bytes` holds the blob's
    bytes, read by the wait."""

    @classmethod
    def from_fields(cls, task_id: str, fields: Dict[str, Any]) -> "Outcome":
        def number(name: str) -> Optional[int]:
            value = fields.get(name)
            try:
                return int(value) if value is not None else None
            except ValueError:
                return None

        return cls(
            id=task_id,
            status=fields.get("status", ""),
            kind=fields.get("kind"),
            cls=fields.get("class"),
            worker=fields.get("worker"),
            device=fields.get("device"),
            attempt=number("attempt"),
            run_us=number("run_us"),
            error_code=fields.get("error_code"),
            error_message=fields.get("error_message"),
            result_bytes=fields.get("result"),
            fields=fields,
        )

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def raw(self) -> Any:
        """The result decoded from MessagePack, as plain Python values."""
        return _wire.unpack(self.result_bytes)

    def value(self) -> Any:
        """The result: an instance of the kind's result class
        (`kinds.MonteCarloResult`) for a built-in kind, else plain values.
        Raises the `TaskFailed` subclass of the error code when the task did
        not succeed."""
        from . import errors, kinds

        if not self.succeeded:
            raise errors.for_outcome(self)
        raw = self.raw()
        model = kinds.RESULTS.get(self.kind or "")
        if isinstance(model, type) and hasattr(model, "from_wire") and isinstance(raw, dict):
            return model.from_wire(raw)
        return raw


@dataclass
class WorkflowOutcome:
    """A finished workflow. `status` is `succeeded`, `failed` (a node did
    not succeed) or `cancelled`; `results` are its sink nodes' results (the
    nodes no node waits for; typed for built-in kinds), by node name, a
    sink that did not succeed left out; `nodes` every node's outcome."""

    id: str
    status: str
    results: Dict[str, Any]
    nodes: Dict[str, Outcome]
    state: "WorkflowState" = field(repr=False)

    @classmethod
    def of(cls, state: "WorkflowState", nodes: Dict[str, Outcome]) -> "WorkflowOutcome":
        results = {
            sink: nodes[sink].value() for sink in state.sinks if sink in nodes and nodes[sink].succeeded
        }
        return cls(id=state.id, status=state.status, results=results, nodes=nodes, state=state)

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def failed_nodes(self) -> List[Outcome]:
        return [o for o in self.nodes.values() if not o.succeeded]

    def value(self) -> Dict[str, Any]:
        """`results`; raises `WorkflowFailed` when the workflow did not
        succeed."""
        from . import errors

        if not self.succeeded:
            raise errors.WorkflowFailed(self)
        return self.results
