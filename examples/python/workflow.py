"""A risk workflow from Python: a returns matrix larger than the payload
limit, sent by reference to the blob store, two VaR methods side by side
(a group), and a report that takes both results (a chord); then prints
where each node ran and how long it waited and ran.

Run with `python examples/python/workflow.py` against a running fleet
(`tandem-worker fleet`), after `pip install ./clients/python[numpy]`.
Settings come from the environment (REDIS_URL, TANDEM_PREFIX, ...).

The nodes:

    historical  risk, historical, on 2,000 days x 100 assets (1.8 MB: by reference)
    parametric  risk, Monte Carlo, with the sample mean and covariance
    report      echo of both 99% VaRs, after historical and parametric

It exits with 1 when the workflow did not succeed.
"""

import argparse
import sys

import numpy as np

from tandem import Client, Workflow, _wire, ref

DAYS, ASSETS = 2_000, 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args()

    rng = np.random.default_rng(14)
    returns = rng.normal(0.0003, 0.012, (DAYS, ASSETS))
    weights = rng.uniform(50_000.0, 150_000.0, ASSETS)
    confidence = [0.99]
    historical = {"method": "historical", "weights": weights, "returns": returns, "confidence": confidence}
    parametric = {"method": "monte_carlo", "weights": weights, "mu": returns.mean(axis=0),
                  "covariance": np.cov(returns, rowvar=False), "scenarios": 20_000, "seed": 7,
                  "confidence": confidence}
    flow = (
        Workflow()
        .node("historical", "risk", historical)
        .node("parametric", "risk", parametric)
        .node("report", "echo", {"historical_var99": ref("historical", "/levels/0/var"),
                                 "parametric_var99": ref("parametric", "/levels/0/var")},
              after=["historical", "parametric"])
    )
    with Client() as client:
        size = len(_wire.pack(historical))
        by_ref = 0 < client.settings.blob_threshold_bytes < size
        print(f"returns matrix: {size:,} bytes of MessagePack ({'by reference' if by_ref else 'inline'})")
        handle = client.submit_workflow(flow)
        print(f"workflow {handle.id}")
        outcome = handle.wait(args.timeout_s)
        for node in outcome.state.nodes:
            ran = f"{node.run_us / 1000:.1f} ms" if node.run_us is not None else "-"
            waited = f"{node.waited_ms} ms" if node.waited_ms is not None else "-"
            print(f"  {node.name:<11} {node.status:<10} on {node.device or '-':<22} waited {waited:<8} ran {ran}")
        if not outcome.succeeded:
            for name, node in outcome.nodes.items():
                if not node.succeeded:
                    print(f"  {name}: {node.error_code}: {node.error_message}", file=sys.stderr)
            return 1
        report = outcome.results["report"]
        print(f"99% VaR: historical {report['historical_var99']:,.0f}, "
              f"parametric {report['parametric_var99']:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
