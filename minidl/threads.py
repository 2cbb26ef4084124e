"""Who runs on which thread: minidl's own pool for convolutions, BLAS's pool for
matrix products, and the rules that keep the two from fighting.

Threads: no oversubscription
----------------------------
Two thread pools on one machine fight. BLAS runs one thread per core and,
after a GEMM, keeps them spinning for a while, waiting for more work; a
parallel numba kernel (``prange``) started then brings a second pool, and on 2
cores four busy threads share two. BLAS's threads have a second weakness: a
GEMM with a long inner dimension (the weight gradient sums over every pixel of
the batch) synchronises them hundreds of times, and on a busy machine each
synchronisation waits for a thread the OS has put aside. Measured here on 2
cores with other work running: that weight-gradient GEMM took 2 s instead of
36 ms, and a tiny (64, 1568) x (1568, 10) product 60 ms instead of 0.1 ms.

So minidl keeps one pool of threads, its own, and splits work coarsely:
``parallel_for`` hands out chunks of images to ``num_threads()`` threads (the
calling thread among them); each runs im2col, a single-threaded GEMM and
col2im on its chunk, in cache, independently of the others, and BLAS is
switched to one thread for that time. The numba kernels (``minidl/kernels.py``)
never use ``prange``: they run on whichever thread calls them and release the
GIL (``nogil``), so the threads really run at once. The number of threads
defaults to BLAS's (the count torch gets in the benchmark); ``set_num_threads``
changes it. ``benchmarks/bench_conv.py --threads-check`` measures the
alternatives.

Outside convolutions, ``matmul`` gives a small product (a classifier head, a
small MLP's layers) one BLAS thread: splitting so little work over threads
gains nothing, and BLAS's threads, just switched off and on again by a
convolution, are slow to come back (the 60 ms above). Without it one epoch of
the benchmark's small CNN took 4.4 times as long (``--threads-check``, on an
idle machine). Switching costs a few microseconds.
"""
from __future__ import annotations

import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["num_threads", "set_num_threads", "matmul", "SMALL_MATMUL", "parallel_for",
           "scratch", "thread_report"]


class _Blas:
    """Switch BLAS between its normal thread count and one thread, cheaply
    (threadpoolctl finds the libraries once; each switch is then a C call)."""

    def __init__(self):
        try:
            from threadpoolctl import ThreadpoolController
            self.libs = [lib for lib in ThreadpoolController().lib_controllers
                         if lib.user_api == "blas"]
        except Exception:  # threadpoolctl missing or unable to inspect: no switching
            self.libs = []

    def threads(self):
        return max([lib.num_threads for lib in self.libs], default=os.cpu_count() or 1)

    def single_threaded(self):
        previous = [lib.num_threads for lib in self.libs]
        for lib, count in zip(self.libs, previous):
            if count != 1:  # (a switch costs a microsecond: too much for tiny products)
                lib.set_num_threads(1)
        return previous

    def restore(self, previous):
        for lib, count in zip(self.libs, previous):
            if count != 1:
                lib.set_num_threads(count)


_blas = None
_num_threads = None
_executor = None
_region = threading.Lock()  # one parallel region at a time; also guards the scratch
_local = threading.local()


def _blas_control():
    global _blas
    if _blas is None:
        _blas = _Blas()
    return _blas


def num_threads():
    """Threads minidl's convolutions use: MINIDL_NUM_THREADS, else BLAS's count."""
    global _num_threads
    if _num_threads is None:
        env = os.environ.get("MINIDL_NUM_THREADS")
        _num_threads = max(1, int(env)) if env else _blas_control().threads()
    return _num_threads


def set_num_threads(n):
    """Use ``n`` threads for convolutions (1: everything on the calling thread)."""
    global _num_threads, _executor
    if int(n) < 1:
        raise ValueError(f"set_num_threads needs a positive count, got {n!r}")
    with _region:
        _num_threads = int(n)
        if _executor is not None:
            _executor.shutdown(wait=True)
            _executor = None


# Products with fewer multiply-adds than this run on one BLAS thread (a 64x1568
# by 1568x10 head has 1M; a batch of 128 through a 784x256 layer, 26M, keeps
# BLAS's threads, which pay off there).
SMALL_MATMUL = 1 << 22


def matmul(a, b):
    """``a @ b`` (numpy's matmul); a small product runs on one BLAS thread."""
    if a.ndim < 2 or b.ndim != 2 or a.size * b.shape[1] >= SMALL_MATMUL or num_threads() == 1 \
            or getattr(_local, "worker", None) is not None:  # inside parallel_for: BLAS is single already
        return np.matmul(a, b)  # (with one thread there is no pool to keep quiet)
    blas = _blas_control()
    with _region:
        previous = blas.single_threaded()
        try:
            return np.matmul(a, b)
        finally:
            blas.restore(previous)


def parallel_for(n_tasks, task):
    """Call ``task(worker, i)`` for i in range(n_tasks); ``worker`` in
    [0, num_threads()) names the thread, so that a task can use that thread's
    scratch buffers and accumulators without locks.

    With fewer tasks than threads everything runs on the calling thread as
    worker 0, BLAS keeping all its threads (one big GEMM beats a few small
    ones). Otherwise the threads take tasks from a shared counter (a thread
    the OS delays simply takes fewer) while BLAS runs single-threaded. A task
    that raises stops the others from starting new tasks; the error is raised
    here.
    """
    inside = getattr(_local, "worker", None)
    if inside is not None:  # called from within a task: run here, as that worker
        for i in range(n_tasks):
            task(inside, i)
        return
    threads = num_threads()
    with _region:
        if threads == 1 or n_tasks < threads:
            _run_serially(n_tasks, task)
            return
        global _executor
        if _executor is None:
            _executor = ThreadPoolExecutor(threads - 1, thread_name_prefix="minidl")
        counter = itertools.count()  # next() on it is atomic under the GIL
        failed = []

        def work(worker):
            _local.worker = worker
            try:
                for i in counter:
                    if i >= n_tasks or failed:
                        return
                    task(worker, i)
            except BaseException:
                failed.append(True)
                raise
            finally:
                _local.worker = None

        blas = _blas_control()
        previous = blas.single_threaded()
        try:
            futures = [_executor.submit(work, w) for w in range(1, threads)]
            try:
                work(0)
            finally:
                for future in futures:
                    future.result()  # waits, and re-raises a worker's exception
        finally:
            blas.restore(previous)


def _run_serially(n_tasks, task):
    _local.worker = 0
    try:
        for i in range(n_tasks):
            task(0, i)
    finally:
        _local.worker = None


class Scratch:
    """Per-worker scratch arrays, kept between calls: a worker asks for a named
    buffer of some shape and gets a view of a flat array that only grows. No
    allocation per step, so no page faults (fresh memory costs as much to touch
    as to fill). Only valid inside ``parallel_for`` (which serialises callers)."""

    def __init__(self):
        self._buffers = {}

    def get(self, worker, name, shape, dtype):
        size = math.prod(shape)
        key = (worker, name, dtype)
        flat = self._buffers.get(key)
        if flat is None or flat.size < size:
            flat = np.empty(size, dtype=dtype)
            self._buffers[key] = flat
        return flat[:size].reshape(shape)


scratch = Scratch()


def thread_report():
    """A one-line description of who runs threads."""
    blas = _blas_control()
    names = ", ".join(f"{lib.internal_api} {lib.num_threads}" for lib in blas.libs) or "unknown"
    return (f"minidl: {num_threads()} threads for convolutions (BLAS single-threaded inside "
            f"them), numba kernels without prange; BLAS: {names}")
