"""`Outcome`: how a task ended, read from its completion notice or record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from . import _wire


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
