"""Tandem's Python client: submit tasks to a Tandem fleet, wait for their
results, read their status, cancel them. It behaves as the Rust producer
(`tandem-producer`) does: the same Lua scripts, reply streams, signing,
idempotency keys and retries while Redis is away.

- `Client` (blocking) and `AsyncClient` (asyncio), with `Task` for
  `submit_many`.
- `kinds`: typed parameter and result classes of every built-in kind,
  generated from `tandem kinds --json-schema`.
- `errors`: `InvalidTask` (refused before sending, naming the field),
  `RedisUnavailable`, `TaskNotFound`, `WaitTimeout`, and `TaskFailed` with
  one subclass per error code.
- `Outcome`: how a task ended.
- `Workflow` and `ref`: a graph of tasks submitted as one unit
  (`Client.submit_workflow`), whose nodes take their parents' results;
  `WorkflowHandle` to follow it (`status`, `wait`, `result`, `cancel`).
- Blobs: parameters above `blob_threshold_bytes` travel as a reference to
  the blob store by themselves, and results that came as one are read on
  `wait`; `Client.put_blob`, `get_blob`, `read_blob`, `blob_stat` by hand.

Quick start::

    from tandem import Client, kinds

    client = Client("redis://127.0.0.1:6379")
    task = client.submit("monte_carlo", kinds.MonteCarloParams(
        s0=100, strike=100, rate=0.05, sigma=0.2, maturity=1,
        steps=64, paths=200_000, seed=42))
    print(client.wait(task).european_call.price)
"""

from . import errors, kinds
from ._blob import BlobRef, BlobStat
from ._core import Progress, Settings
from ._workflow import NodeState, Workflow, WorkflowState, ref
from .aio import AsyncClient, AsyncWorkflowHandle
from .client import Client, Task, WorkflowHandle
from .errors import (
    BlobError,
    InvalidTask,
    InvalidWorkflow,
    RedisUnavailable,
    TaskFailed,
    TaskNotFound,
    TandemError,
    WaitTimeout,
    WorkflowFailed,
    WorkflowNotFound,
)
from .outcome import Outcome, WorkflowOutcome

__all__ = [
    "AsyncClient",
    "AsyncWorkflowHandle",
    "BlobError",
    "BlobRef",
    "BlobStat",
    "Client",
    "InvalidTask",
    "InvalidWorkflow",
    "NodeState",
    "Outcome",
    "Progress",
    "RedisUnavailable",
    "Settings",
    "Task",
    "TaskFailed",
    "TaskNotFound",
    "TandemError",
    "WaitTimeout",
    "Workflow",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowNotFound",
    "WorkflowOutcome",
    "WorkflowState",
    "errors",
    "ref",
    "kinds",
]
__version__ = "0.1.0"
