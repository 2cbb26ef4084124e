"""One MLP training step (784-256-256-10, ReLU, batch 128, float32, cross-entropy,
SGD with momentum) in minidl and in torch on the CPU, in one run, with the same
number of BLAS/OpenMP threads for both; prints the median time per step of each and
their ratio. A hand-written NumPy step (no autograd at all) is timed as well: it is
the floor that minidl's engine overhead is measured against.

    .venv/bin/python benchmarks/bench_mlp_step.py                # 1 thread
    .venv/bin/python benchmarks/bench_mlp_step.py --threads 4

Targets: minidl / numpy <= 1.05 (the engine adds at most 5 % to the same BLAS
work) and minidl / torch <= 1.0. The GEMMs are the same BLAS work in all three,
so the ratios are set by what each engine does around them. minidl's SGD updates
in one fused pass where the NumPy step takes four, which makes up for part of the
graph's cost; the last line therefore times forward and backward alone, without
the update, to show the graph engine's own overhead.

Times are CPU time (time.thread_time on one thread, time.process_time on more),
after a warm-up: other processes on a busy machine barely change them, where
wall-clock time measures the neighbours. Each round times one step of every engine,
in an order that turns from round to round; a ratio is the median over rounds of
that round's ratio, with a 95 % interval for the median, and the target counts as
met only when the whole interval lies under it ("within noise" when it straddles).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl as md  # noqa: E402
import minidl.nn as nn  # noqa: E402
import minidl.optim  # noqa: E402,F401

SIZES = (784, 256, 256, 10)
BATCH = 128
LR, MOMENTUM = 0.01, 0.9


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], BATCH)
    return x, y


def minidl_step_fn(x, y):
    md.manual_seed(0)
    model = nn.Sequential(nn.Linear(SIZES[0], SIZES[1]), nn.ReLU(), nn.Linear(SIZES[1], SIZES[2]),
                          nn.ReLU(), nn.Linear(SIZES[2], SIZES[3]))
    opt = md.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    xt = md.Tensor(x)

    def step(update=True):
        opt.zero_grad()
        loss = loss_fn(model(xt), y)
        loss.backward()
        if update:
            opt.step()
        return loss.item()

    return step, model


def torch_step_fn(x, y, md_model):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.ReLU(),
                                torch.nn.Linear(SIZES[1], SIZES[2]), torch.nn.ReLU(),
                                torch.nn.Linear(SIZES[2], SIZES[3]))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in md_model.state_dict().items()})
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def numpy_step_fn(x, y, md_model):
    """The same step written out by hand: forward, backward and update in NumPy."""
    params = [md_model.state_dict()[k].copy() for k in md_model.state_dict()]
    (w1, b1, w2, b2, w3, b3) = params
    buffers = [np.zeros_like(p) for p in params]
    rows = np.arange(BATCH)

    def step(update=True):
        h1 = x @ w1.T + b1
        a1 = np.maximum(h1, 0)
        h2 = a1 @ w2.T + b2
        a2 = np.maximum(h2, 0)
        z = a2 @ w3.T + b3
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
        loss = -np.log(p[rows, y]).mean()
        dz = p
        dz[rows, y] -= 1
        dz /= BATCH
        grads = [None] * 6
        grads[4], grads[5] = dz.T @ a2, dz.sum(0)
        da2 = dz @ w3
        da2 *= h2 > 0
        grads[2], grads[3] = da2.T @ a1, da2.sum(0)
        da1 = da2 @ w2
        da1 *= h1 > 0
        grads[0], grads[1] = da1.T @ x, da1.sum(0)
        if not update:
            return float(loss)
        for param, grad, buf in zip(params, grads, buffers):
            buf *= MOMENTUM
            buf += grad
            param -= LR * buf
        return float(loss)

    return step


CLOCK = time.thread_time  # main() switches to process_time when BLAS has several threads

TARGETS = {"minidl / numpy": 1.05, "minidl / torch": 1.0}


def time_step(step):
    start = CLOCK()
    step()
    return CLOCK() - start


def median_interval(values, z=1.96):
    """The median of ``values`` and a distribution-free 95 % interval for it: the order
    statistics n/2 -+ z sqrt(n)/2 (the binomial count of values below the median)."""
    values = sorted(values)
    n = len(values)
    half = z * n ** 0.5 / 2
    low, high = max(0, int(n / 2 - half)), min(n - 1, int(np.ceil(n / 2 + half)))
    return statistics.median(values), values[low], values[high]


def verdict(interval, target):
    value, low, high = interval
    if high <= target:
        return "met"
    if low > target:
        return "NOT met"
    return "within noise of the target"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/OpenMP threads for numpy and torch alike (default 1)")
    parser.add_argument("--rounds", type=int, default=400,
                        help="timed rounds, each one step of every engine (default 400)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 10:
        raise SystemExit(f"--rounds {args.rounds}: give at least 10 rounds, so that the median has an interval")

    import torch

    global CLOCK
    CLOCK = time.thread_time if args.threads == 1 else time.process_time
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        blas = sorted({f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                       for i in threadpool_info() if i["user_api"] == "blas"})
        x, y = make_data()
        md_step, md_model = minidl_step_fn(x, y)
        numpy_step = numpy_step_fn(x, y, md_model)
        # The same without the update: the graph engine's own share, apart from the
        # optimiser's (minidl's SGD updates in one fused pass, the NumPy step in four).
        engines = {"torch": torch_step_fn(x, y, md_model), "numpy": numpy_step, "minidl": md_step,
                   "numpy, no update": lambda: numpy_step(update=False),
                   "minidl, no update": lambda: md_step(update=False)}
        # Same start, same data: the first losses must agree (a check that the two
        # engines really do the same work).
        first = {name: engines[name]() for name in ("torch", "numpy", "minidl")}
        if not np.allclose(first["minidl"], [first["torch"], first["numpy"]], rtol=1e-4):
            raise SystemExit(f"the engines disagree on the first loss: {first}")
        for _ in range(10):  # warm up caches, allocators, lazy imports
            for step in engines.values():
                step()
        # Rounds of one step each, the order turning from round to round: a drifting load
        # or a noisy neighbour hits every engine of a round alike, so that the ratio
        # within a round is far steadier than times taken apart.
        names = list(engines)
        times = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(time_step(engines[name]))

    def ratio(a, b):
        return median_interval([ta / tb for ta, tb in zip(times[a], times[b])])

    ratios = {"minidl / numpy": ratio("minidl", "numpy"), "minidl / torch": ratio("minidl", "torch"),
              "numpy / torch": ratio("numpy", "torch")}
    engine_only = ratio("minidl, no update", "numpy, no update")
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"MLP training step {'-'.join(map(str, SIZES))}, batch {BATCH}, float32, "
          f"SGD(momentum={MOMENTUM}), {args.threads} thread(s), {CLOCK.__name__}, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}; "
          f"numpy BLAS: {', '.join(blas) or 'unknown'}; {os.cpu_count()} CPUs")
    print(f"median CPU time per step over {args.rounds} rounds:")
    for name in names:
        q1, q3 = np.percentile(times[name], [25, 75]) * 1e3
        print(f"  {name:18s} {median[name] * 1e3:8.3f} ms  (quartiles {q1:.3f}, {q3:.3f})")
    print("ratios: the median over rounds of one round's ratio, [95 % interval of that median]")
    for name, interval in ratios.items():
        target = TARGETS.get(name)
        value, low, high = interval
        line = f"{name} = {value:.3f} [{low:.3f}, {high:.3f}]"
        if target is not None:
            line += f"   target <= {target:.2f}: {verdict(interval, target)}"
        print(line)
    print(f"forward and backward only (no update): minidl / numpy = {engine_only[0]:.3f} "
          f"[{engine_only[1]:.3f}, {engine_only[2]:.3f}]")
    if args.threads > 1 and 2 * args.threads > (os.cpu_count() or 1):
        print(f"caution: torch's OpenMP threads and numpy's BLAS threads ({args.threads} each) share this "
              f"process and {os.cpu_count()} CPUs; they spin against each other, which slows torch most, "
              "so this ratio flatters minidl. Compare on one thread, or with more cores than threads.")
    if args.json:
        with open(args.json, "w") as f:
            def interval(median_low_high):
                return dict(zip(("median", "low", "high"), median_low_high))

            json.dump({"threads": args.threads, "rounds": args.rounds,
                       "ms_per_step": {k: v * 1e3 for k, v in median.items()},
                       "minidl_over_torch": interval(ratios["minidl / torch"]),
                       "minidl_over_numpy": interval(ratios["minidl / numpy"]),
                       "minidl_over_numpy_without_update": interval(engine_only)}, f, indent=2)
    return ratios["minidl / torch"][0]


if __name__ == "__main__":
    main()
