"""The exceptions this client raises.

Two families: a task this client refuses to send (`InvalidTask`, with the
field at fault), or could not send or read (`RedisUnavailable`,
`TaskNotFound`, `WaitTimeout`); and a task that ran and did not succeed
(`TaskFailed`, one subclass per error code of docs/wire-format.md, so that
``except ModelNotFound:`` reads as it should).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Type

if TYPE_CHECKING:
    from .outcome import Outcome, WorkflowOutcome


class TandemError(Exception):
    """Everything this client raises."""


class InvalidTask(TandemError, ValueError):
    """A task refused before anything was sent: parameters that break the
    kind's schema, an idempotency key or class that is not allowed, a
    payload over `max_payload_bytes`. `field` names the parameter at fault
    (`sigma`, `symbols[1].symbol`) when one is."""

    def __init__(self, message: str, kind: Optional[str] = None, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


class InvalidWorkflow(InvalidTask):
    """A workflow refused before anything was sent: a cycle, a missing
    parent, a bad name, an unknown kind without a class, a placeholder for
    a node that is not a parent, a path the parent kind's result cannot
    hold, a node's bad parameters. `node` names the node at fault (None
    when the problem is the whole workflow's, such as having no nodes)."""

    def __init__(self, message: str, node: Optional[str] = None, kind: Optional[str] = None,
                 field: Optional[str] = None) -> None:
        super().__init__(message, kind=kind, field=field)
        self.node = node


class WorkflowNotFound(TandemError, LookupError):
    """No workflow of that id: never submitted, or expired (`result_ttl_s`)."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id} not found (never submitted, or expired after result_ttl_s)")
        self.workflow_id = workflow_id


class WorkflowFailed(TandemError):
    """The workflow ended `failed` or `cancelled`; `outcome` says how each
    node ended."""

    def __init__(self, outcome: "WorkflowOutcome") -> None:
        ended = ", ".join(
            f"{name} {o.status}" + (f" ({o.error_code}: {o.error_message})" if o.error_code else "")
            for name, o in outcome.nodes.items()
            if not o.succeeded
        )
        super().__init__(f"workflow {outcome.id} ended {outcome.status}: {ended}")
        self.outcome = outcome


class BlobError(TandemError):
    """A blob that is missing (expired, released, never stored), reads back
    damaged, or that the configured `blob_store` cannot hold here."""


class RedisUnavailable(TandemError, ConnectionError):
    """Redis stayed unreachable (or not ready) for `reconnect_timeout`."""


class TaskNotFound(TandemError, LookupError):
    """No record: never submitted, or its record expired (`result_ttl_s`)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found (never submitted, or its record expired)")
        self.task_id = task_id


class WaitTimeout(TandemError, TimeoutError):
    """The task did not finish within the wait's timeout; it goes on."""

    def __init__(self, task_id: str, waited: float) -> None:
        super().__init__(f"task {task_id} did not finish within {waited:g} s")
        self.task_id = task_id
        self.waited = waited


class TaskFailed(TandemError):
    """The task ended `failed`, `cancelled` or `expired`. `code` is the
    stable error code; the subclass says which."""

    code: str = ""

    def __init__(self, outcome: "Outcome") -> None:
        super().__init__(
            f"task {outcome.id} ended {outcome.status}: {outcome.error_code}: {outcome.error_message}"
        )
        self.outcome = outcome
        self.task_id = outcome.id
        self.status = outcome.status
        self.code = outcome.error_code or ""
        self.message = outcome.error_message or ""


class ModelNotFound(TaskFailed):
    code = "MODEL_NOT_FOUND"


class ModelInvalid(TaskFailed):
    code = "MODEL_INVALID"


class BadPayload(TaskFailed):
    code = "BAD_PAYLOAD"


class BadParams(TaskFailed):
    """The worker refused the parameters (rules the schema cannot express,
    such as a covariance that is not n x n)."""

    code = "BAD_PARAMS"


class UnknownKind(TaskFailed):
    code = "UNKNOWN_KIND"


class BadWireVersion(TaskFailed):
    code = "BAD_WIRE_VERSION"


class PayloadTooLarge(TaskFailed):
    code = "PAYLOAD_TOO_LARGE"


class BadSignature(TaskFailed):
    """Workers require signed tasks, and this one was unsigned or signed
    with another key."""

    code = "BAD_SIGNATURE"


class MaxDeliveries(TaskFailed):
    code = "MAX_DELIVERIES"


class Cancelled(TaskFailed):
    code = "CANCELLED"


class Expired(TaskFailed):
    code = "EXPIRED"


class HandlerPanic(TaskFailed):
    code = "HANDLER_PANIC"


class HandlerError(TaskFailed):
    code = "HANDLER_ERROR"


class BadResult(TaskFailed):
    code = "BAD_RESULT"


class InsufficientGpuMemory(TaskFailed):
    code = "INSUFFICIENT_GPU_MEMORY"


class DeviceFailed(TaskFailed):
    code = "DEVICE_FAILED"


class TaskTimedOut(TaskFailed):
    """An attempt ran past its run-time limit (`submit(..., timeout=...)`)
    and no attempts remained."""

    code = "TIMEOUT"


ERRORS: Dict[str, Type[TaskFailed]] = {
    cls.code: cls
    for cls in (
        ModelNotFound,
        ModelInvalid,
        BadPayload,
        BadParams,
        UnknownKind,
        BadWireVersion,
        PayloadTooLarge,
        BadSignature,
        MaxDeliveries,
        Cancelled,
        Expired,
        HandlerPanic,
        HandlerError,
        BadResult,
        InsufficientGpuMemory,
        DeviceFailed,
        TaskTimedOut,
    )
}


def for_outcome(outcome: "Outcome") -> TaskFailed:
    """The exception of a task that did not succeed: by its error code, or
    by its status when the code is a handler's own (`E_QUOTE_STALE`)."""
    cls = ERRORS.get(outcome.error_code or "")
    if cls is None:
        cls = {"cancelled": Cancelled, "expired": Expired}.get(outcome.status, TaskFailed)
    return cls(outcome)
