"""The transformer's CPU twin against PyTorch CPU, same threads, same sitting.

    cargo build --release -p tandem-kernels --example transformer_check
    target/torch-venv/bin/python bench/transformer_bench.py [--windows 1000] [--threads 2] [--rounds 2]

Runs, interleaved (torch, Tandem, torch, Tandem, ...), `bench/transformer_torch.py
bench WINDOWS` and `target/release/examples/transformer_check bench WINDOWS`:
the same model (32 features, window 128, d_model 64, 4 heads, 2 layers, ff
256, causal, learned positions), inference over WINDOWS windows and one
training epoch of Adam in batches of 32, each the best of three inside its
process. Both sides get the same thread count (`RAYON_NUM_THREADS`,
`OMP_NUM_THREADS`, `MKL_NUM_THREADS`). Prints each round's figures and a
table of the seconds and of Tandem's speed as a ratio of torch's within
each round (above 1: Tandem is faster), each as median [min-max].
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, threads):
    env = dict(os.environ)
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    figures = {}
    for line in out.splitlines():
        if line.startswith("BENCH "):
            record = json.loads(line[len("BENCH ") :])
            if record["threads"] != threads:
                sys.exit(f"{cmd[0]} ran on {record['threads']} threads, not {threads}")
            figures[record["case"]] = record["seconds"]
    if not figures:
        sys.exit(f"no BENCH lines from {cmd}:\n{out}")
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--twin", default=str(ROOT / "target/release/examples/transformer_check"))
    args = parser.parse_args()
    twin = Path(args.twin)
    if not twin.exists():
        sys.exit(f"{twin} is missing: cargo build --release -p tandem-kernels --example transformer_check")
    torch_cmd = [sys.executable, str(ROOT / "bench/transformer_torch.py"), "bench", str(args.windows)]
    twin_cmd = [str(twin), "bench", str(args.windows)]
    seconds = {"torch": {}, "tandem": {}}
    for round_ in range(args.rounds):
        for name, cmd in (("torch", torch_cmd), ("tandem", twin_cmd)):
            figures = run(cmd, args.threads)
            for case, s in figures.items():
                seconds[name].setdefault(case, []).append(s)
            print(f"round {round_ + 1} {name}: " + ", ".join(f"{c} {s:.3f}s" for c, s in figures.items()))
    print()
    print(f"{args.windows} windows, {args.threads} threads, {args.rounds} rounds")
    print("| case | PyTorch CPU (s), median [min-max] | Tandem CPU twin (s), median [min-max] | Tandem speed / torch per round, median [min-max] |")
    print("|---|---|---|---|")

    def spread(values, digits):
        return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"

    for case in seconds["torch"]:
        t = seconds["torch"][case]
        r = seconds["tandem"].get(case, [])
        # Each round's ratio (its torch run beside its Tandem run): the
        # machine's load moves single figures, much less a round's ratio.
        ratios = [a / b for a, b in zip(t, r) if b > 0]
        ratio = spread(ratios, 2) if ratios else "-"
        print(f"| {case} | {spread(t, 3)} | {spread(r, 3) if r else '-'} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
