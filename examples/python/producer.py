"""Submits tasks to a Tandem fleet with the `tandem` Python package
(clients/python) and prints their results.

Run with `python examples/python/producer.py` against a running fleet
(`tandem-worker fleet`), after `pip install ./clients/python`.

Settings come from the environment, as for every Tandem producer:
REDIS_URL (default redis://127.0.0.1:6379), TANDEM_PREFIX, and
TANDEM_SIGNING_KEY (when set, every task is signed).

It submits an `echo`, a `sleep`, the same `echo` twice under one
idempotency key, and a `monte_carlo` option price; waits for every result;
prints each outcome; and exits with 1 when any task did not succeed.
"""

import argparse
import math
import os
import sys
import uuid

import tandem
from tandem import Client, Task, kinds

# A European call under geometric Brownian motion converges to
# Black-Scholes, printed beside it.
OPTION = kinds.MonteCarloParams(
    s0=100.0, strike=100.0, rate=0.05, dividend=0.0, sigma=0.2, maturity=1.0,
    steps=64, paths=200_000, seed=42, percentiles=[5.0, 50.0, 95.0],
)


def black_scholes_call(p: kinds.MonteCarloParams) -> float:
    vol = p.sigma * math.sqrt(p.maturity)
    d1 = (math.log(p.s0 / p.strike) + (p.rate - p.dividend + p.sigma**2 / 2) * p.maturity) / vol
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    return p.s0 * math.exp(-p.dividend * p.maturity) * cdf(d1) - p.strike * math.exp(-p.rate * p.maturity) * cdf(d1 - vol)


def report(label: str, outcome: tandem.Outcome) -> bool:
    where = f"device={outcome.device or '-'} worker={outcome.worker or '-'}"
    if not outcome.succeeded:
        print(f"{label}: {outcome.status} {where} error={outcome.error_code}: {outcome.error_message}")
        return False
    print(f"{label}: succeeded {where} run_us={outcome.run_us} result={outcome.raw()}")
    if label == "monte_carlo":
        call = outcome.value().european_call
        print(f"monte_carlo european_call={call.price:.6f} std_error={call.std_error:.6f} "
              f"black_scholes={black_scholes_call(OPTION):.6f}")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout-s", type=float, default=60.0, help="how long to wait for all results")
    args = parser.parse_args()
    client = Client()
    quote = f"quote-{uuid.uuid4()}"
    labels = ["echo", "sleep", "idempotent", "idempotent again", "monte_carlo"]
    ids = client.submit_many([
        Task("echo", {"symbol": "ES", "qty": 3}, priority="high", deadline=60),
        Task("sleep", kinds.SleepParams(ms=100)),
        Task("echo", {"quote": quote}, idempotency_key=quote),
        Task("echo", {"quote": quote}, idempotency_key=quote),
        Task("monte_carlo", OPTION, priority="high"),
    ])
    for label, task_id in zip(labels, ids):
        print(f"submitted {label}: {task_id}")
    if os.environ.get("TANDEM_SIGNING_KEY"):
        print("every task is signed (TANDEM_SIGNING_KEY)")
    ok = True
    outcomes = {}
    try:
        for label, task_id in zip(labels, ids):
            if task_id not in outcomes:
                outcomes[task_id] = client.wait_outcome(task_id, args.timeout_s)
                ok = report(label, outcomes[task_id]) and ok
    except tandem.WaitTimeout as err:
        print(f"no result within {args.timeout_s} s: {err}")
        ok = False
    if ids[2] == ids[3]:
        print(f"idempotent: the second submit returned the same task {ids[2]}")
    else:
        print(f"idempotent: the second submit made a new task {ids[3]}, not {ids[2]}")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except tandem.TandemError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
