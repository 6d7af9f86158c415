"""portfolio_opt in NumPy: the same problems as
kernels/examples/bench_portfolio_opt.rs (three-factor covariance, 100 and 500
assets, both objectives), a random search of 65 536 Dirichlet(1) candidates
evaluated in chunks with matrix products, then FISTA with gradient restart
and the bisection projection, as the Rust refine does. Items are the random
candidates (unit "portfolios"); seconds cover search and refine.

Run with `python3 bench/portfolio_opt_numpy.py` (needs only numpy), or with
`--cupy`: the random search then runs on the GPU with CuPy (its own
Generator, so other candidates), the best candidate comes back to the host
and the refine stays in NumPy, as the Rust GPU path refines on the CPU (a
sequential loop of n-vector steps and bisections); lines say "impl":"cupy".
Compute-bound (matrix products), no "bytes".
"""
import argparse
import json
import time

import numpy as np

SAMPLES = 65_536
REPEATS = 3
CHUNK = 4096
RISK_FREE = 0.01
TOLERANCE = 1e-10
MAX_ITERATIONS = 100_000

# The array module of the search: numpy, or cupy under --cupy (see
# use_cupy). Every call in search() exists in both with the same meaning:
# default_rng(seed) gives a Generator whose standard_exponential takes
# dtype=float32 in both (CuPy draws in float64 and rounds), einsum, where and
# argmax are in CuPy too. The refine below is NumPy in both modes.
xp = np
IMPL = "numpy"
asnumpy = np.asarray


def sync():
    pass


def use_cupy():
    global xp, IMPL, asnumpy, sync
    import cupy

    xp, IMPL, asnumpy = cupy, "cupy", cupy.asnumpy
    sync = lambda: cupy.cuda.Device().synchronize()


def problem_data(n):
    i = np.arange(1, n + 1, dtype=np.float64)
    factor_var = np.array([0.04, 0.01, 0.0025])
    loadings = np.stack([0.5 + 0.5 * np.sin(i * (f + 2) * 0.7) for f in range(3)], axis=1)
    idio = 0.01 + 0.03 * (0.5 + 0.5 * np.cos(i * 1.3))
    cov = (loadings * factor_var) @ loadings.T + np.diag(idio)
    mu = 0.02 + 0.05 * loadings[:, 0] + 0.02 * (0.5 + 0.5 * np.sin(i * 2.1))
    return mu, cov


def search(mu, cov, max_sharpe, rng):
    """The best of the random candidates, as a host float64 vector."""
    n = len(mu)
    excess = xp.asarray((mu - RISK_FREE).astype(np.float32))
    cov32 = xp.asarray(cov.astype(np.float32))
    best, best_w = -np.inf, None
    for start in range(0, SAMPLES, CHUNK):
        e = rng.standard_exponential((min(CHUNK, SAMPLES - start), n), dtype=xp.float32)
        w = e / e.sum(axis=1, keepdims=True)
        var = xp.einsum("ij,ij->i", w @ cov32, w)
        if max_sharpe:
            score = xp.where(var > 0, (w @ excess) / xp.sqrt(xp.maximum(var, 1e-30)), -np.inf)
        else:
            score = -var
        k = int(xp.argmax(score))
        if score[k] > best:
            best, best_w = score[k], w[k].astype(xp.float64)
    return asnumpy(best_w)


def project_simplex(x, u=1.0):
    lo, hi = x.min() - u, x.max()
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if np.clip(x - mid, 0.0, u).sum() >= 1.0:
            lo = mid
        else:
            hi = mid
    mid = 0.5 * (lo + hi)
    d = x - mid
    free = (d > 0) & (d < u)
    upper = d >= u
    tau = (x[free].sum() + upper.sum() * u - 1.0) / free.sum() if free.any() else mid
    return np.clip(x - tau, 0.0, u)


def project_excess(x, a):
    total = lambda lam: (a * np.maximum(x - lam * a, 0.0)).sum()
    lo, hi = -1.0, 1.0
    while total(lo) < 1.0:
        lo *= 2.0
    while total(hi) > 1.0:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if total(mid) >= 1.0:
            lo = mid
        else:
            hi = mid
    mid = 0.5 * (lo + hi)
    free = x - mid * a > 0
    aa = (a[free] ** 2).sum()
    lam = ((a[free] * x[free]).sum() - 1.0) / aa if aa > 0 else mid
    return np.maximum(x - lam * a, 0.0)


def fista(cov, start, project):
    lam = min(np.abs(cov).sum(axis=1).max(), np.sqrt((cov * cov).sum()))
    step = 1.0 / (2.0 * lam)
    x = project(start)
    y, t = x.copy(), 1.0
    for it in range(1, MAX_ITERATIONS + 1):
        nxt = project(y - 2.0 * step * (cov @ y))
        if np.abs(y - nxt).max() / nxt.sum() <= TOLERANCE:
            return nxt, it
        restart = np.dot(y - nxt, nxt - x) > 0
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        momentum = 0.0 if restart else (t - 1.0) / t_next
        t = 1.0 if restart else t_next
        y = nxt + momentum * (nxt - x)
        x = nxt
    return x, MAX_ITERATIONS


def optimize(mu, cov, max_sharpe, seed=42):
    rng = xp.random.default_rng(seed)
    start = search(mu, cov, max_sharpe, rng)
    if max_sharpe:
        a = mu - RISK_FREE
        y, it = fista(cov, start, lambda z: project_excess(z, a))
        return y / y.sum(), it
    return fista(cov, start, project_simplex)


def main():
    parser = argparse.ArgumentParser(description="The portfolio_opt kind in NumPy or CuPy.")
    parser.add_argument("--cupy", action="store_true", help="search on the GPU with CuPy")
    if parser.parse_args().cupy:
        use_cupy()
    for n in (100, 500):
        mu, cov = problem_data(n)
        for name, max_sharpe in (("min_variance", False), ("max_sharpe", True)):
            w, it = optimize(mu, cov, max_sharpe)
            vol = np.sqrt(w @ cov @ w)
            print(f"# n{n}_{name}: return {w @ mu:.6f} volatility {vol:.6f} "
                  f"sharpe {(w @ mu - RISK_FREE) / vol:.6f} iterations {it}")
            best = np.inf
            for _ in range(REPEATS):
                sync()
                t0 = time.perf_counter()
                optimize(mu, cov, max_sharpe)
                sync()
                best = min(best, time.perf_counter() - t0)
            print("BENCH " + json.dumps({
                "kind": "portfolio_opt", "case": f"n{n}_{name}", "impl": IMPL,
                "items": SAMPLES, "unit": "portfolios", "seconds": round(best, 6),
            }, separators=(",", ":")))


if __name__ == "__main__":
    main()
