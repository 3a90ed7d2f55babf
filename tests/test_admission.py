"""The memory budget (vitviz.memory.admission): refusal, first-come waiting, holds released with
their objects, reclaimers, timeouts, and never more admitted than the capacity."""

from __future__ import annotations

import gc
import random
import threading

import pytest

from vitviz.errors import MemoryBusy, MemoryRefused
from vitviz.memory.admission import MemoryBudget, machine_memory, process_rss

MB = 2**20


class Thing:
    """An object a hold can follow (weakref-able)."""


def test_work_that_can_never_fit_is_refused_at_once_with_its_sizes():
    budget = MemoryBudget(1000 * MB, base=200 * MB)
    assert budget.capacity == 800 * MB
    with (
        pytest.raises(MemoryRefused) as err,
        budget.admit(700 * MB, "explanation", alongside=200 * MB),
    ):
        pytest.fail("must not run")
    sizes = (err.value.needed, err.value.available, err.value.total)
    assert sizes == (700 * MB, 600 * MB, 1000 * MB)
    assert "700 MB" in str(err.value) and "600 MB" in str(err.value)
    assert budget.used == 0 and budget.refused == 1
    with budget.admit(600 * MB, "explanation", alongside=200 * MB) as res:  # just fits
        assert budget.used == res.nbytes == 600 * MB
    assert budget.used == 0


def test_waiters_are_served_first_come_and_told_their_place():
    budget = MemoryBudget(100, timeout=60)
    first = budget.admit(60, "a")
    first.__enter__()
    seen: dict[str, list[int]] = {"b": [], "c": []}
    order: list[str] = []
    entered = {"b": threading.Event(), "c": threading.Event()}

    def worker(name: str, size: int) -> None:
        def told(ahead: int, _seconds: float) -> None:
            seen[name].append(ahead)
            entered[name].set()

        with budget.admit(size, name, on_wait=told):
            order.append(name)

    b = threading.Thread(target=worker, args=("b", 60))
    b.start()
    assert entered["b"].wait(10)
    c = threading.Thread(target=worker, args=("c", 10))  # fits now, but b came first
    c.start()
    assert entered["c"].wait(10)
    assert order == [] and budget.waiting == 2
    first.__exit__(None, None, None)
    b.join(10)
    c.join(10)
    assert order == ["b", "c"]
    assert set(seen["b"]) == {0} and 1 in seen["c"]
    assert budget.used == 0 and budget.waits == 2 and budget.peak <= 100


def test_a_kept_result_stays_counted_until_it_is_gone():
    budget = MemoryBudget(100)
    with budget.admit(80, "explanation") as res:
        result = Thing()
        res.keep(result, 50)
    assert budget.used == 50  # the peak's rest came back, the result's part did not
    del result
    gc.collect()
    assert budget.used == 0
    keep = Thing()
    budget.hold(keep, 30)  # a thing that exists already (an answer from a server)
    assert budget.used == 30
    del keep
    gc.collect()
    assert budget.used == 0


def test_waiting_work_asks_the_reclaimers_and_runs_once_they_drop_enough():
    budget = MemoryBudget(100, timeout=30)
    cache: dict[str, Thing] = {}
    with budget.admit(70, "old") as res:
        cache["old"] = Thing()
        res.keep(cache["old"], 70)
    asked: list[int] = []

    def reclaim(need: int) -> int:
        asked.append(need)
        return 70 if cache.pop("old", None) is not None else 0

    budget.add_reclaimer(reclaim)
    with budget.admit(60, "new"):
        assert budget.used == 60
    assert asked and asked[0] == 30  # 70 + 60 − 100


def test_a_long_wait_ends_in_a_clear_busy_error():
    budget = MemoryBudget(100, timeout=0.5)
    with budget.admit(90, "a"), pytest.raises(MemoryBusy) as err, budget.admit(20, "b"):
        pytest.fail("must not run")
    assert err.value.needed == 20 and err.value.waited >= 0.5
    assert budget.used == 0 and budget.waiting == 0


def test_many_threads_never_hold_more_than_the_capacity():
    budget = MemoryBudget(1000, timeout=60)
    live = [0]
    lock = threading.Lock()
    worst = [0]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(20):
                size = rng.randint(50, 600)
                with budget.admit(size, "w"):
                    with lock:
                        live[0] += size
                        worst[0] = max(worst[0], live[0])
                    with lock:
                        live[0] -= size
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    assert worst[0] <= 1000 and budget.peak <= 1000 and budget.used == 0


def test_machine_numbers_are_plausible():
    assert machine_memory() > 256 * MB
    assert 0 < process_rss() < machine_memory()
