"""How many CPUs this process may use, so that worker pools follow the allocation.

A SLURM job sees every core of its node in ``os.cpu_count()`` but is confined to its allocation
(``--cpus-per-task``, exported as ``SLURM_CPUS_PER_TASK``, and enforced as the CPU affinity mask
by the cgroup). Starting more workers than that only makes them fight over the same cores.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from tqdm import tqdm

_END = object()  # the end of an iterator, for next(it, _END)


def available_cpus() -> int:
    """The CPUs this process may run on: the affinity mask, capped by ``SLURM_CPUS_PER_TASK``
    when set (a positive integer), and at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def worker_count(requested: int | None = None) -> int:
    """``requested`` workers (all available CPUs when None), never more than :func:`available_cpus`."""
    n = available_cpus()
    return n if requested is None else max(1, min(int(requested), n))


def prefetch_map(fn, items, workers: int, ahead: int | None = None):
    """Yield ``(item, fn(item))`` in order while the next items are already computed on
    ``workers`` threads (at most ``ahead`` in flight, default ``2 * workers``): a consumer such
    as a GPU loop never waits on CPU work that could have been done meanwhile. ``workers=0``
    computes inline. An exception from ``fn`` is raised when its item's turn comes, so every
    earlier item has been yielded; leaving the loop early cancels what has not started."""
    if workers <= 0:
        for item in items:
            yield item, fn(item)
        return
    ahead = max(1, ahead or 2 * workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
    queue: deque = deque()
    it = iter(items)
    try:
        for item in it:
            queue.append((item, pool.submit(fn, item)))
            if len(queue) >= ahead:
                break
        while queue:
            item, fut = queue.popleft()
            nxt = next(it, _END)
            if nxt is not _END:
                queue.append((nxt, pool.submit(fn, nxt)))
            yield item, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def parallel_map(fn, jobs: list[tuple], workers: int, desc: str) -> list:
    """``[fn(*job) for job in jobs]`` over ``workers`` processes, in order, with a progress bar."""
    if workers <= 1 or len(jobs) < 8:
        return [fn(*j) for j in tqdm(jobs, desc=desc)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunks = max(1, len(jobs) // (workers * 8))
        return list(tqdm(pool.map(fn, *zip(*jobs), chunksize=chunks), total=len(jobs), desc=desc))
