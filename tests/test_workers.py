"""Worker counts follow the CPU allocation: the affinity mask and SLURM_CPUS_PER_TASK."""

import os

import pytest

from artsim_lib.io import workers


@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)


def test_the_affinity_mask_bounds_the_count(four_cpus):
    assert workers.available_cpus() == 4
    assert workers.worker_count() == 4
    assert workers.worker_count(8) == 4 and workers.worker_count(2) == 2 and workers.worker_count(0) == 1


@pytest.mark.parametrize("value, expected", [("2", 2), ("16", 4), ("", 4), ("0", 4), ("two", 4)])
def test_slurm_cpus_per_task_caps_it(four_cpus, monkeypatch, value, expected):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", value)
    assert workers.available_cpus() == expected
    assert workers.worker_count(8) == expected


def test_prefetch_map_yields_in_order_with_a_bounded_lead():
    import threading
    import time

    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.001 * (7 - i % 7))  # later items often finish first
        return i * i

    seen = []
    for item, out in workers.prefetch_map(work, range(30), workers=3, ahead=4):
        assert out == item * item
        with lock:
            assert max(started) <= item + 4  # never more than `ahead` items past the consumer
        seen.append(item)
    assert seen == list(range(30))
    assert list(workers.prefetch_map(work, range(5), workers=0)) == [(i, i * i) for i in range(5)]


def test_prefetch_map_raises_in_turn_and_stops_early():
    def work(i):
        if i == 3:
            raise ValueError("bad item 3")
        return i

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for item, _ in workers.prefetch_map(work, range(10), workers=2):
            got.append(item)
    assert got == [0, 1, 2]  # everything before the bad item was delivered

    calls = []
    gen = workers.prefetch_map(lambda i: calls.append(i) or i, range(1000), workers=2, ahead=3)
    assert next(gen) == (0, 0)
    gen.close()
    assert len(calls) <= 5  # what was not started is cancelled
