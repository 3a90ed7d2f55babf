"""The byte-bounded, single-flight cache behind the page's shared state."""

from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import in_threads
from vitviz.memory.cache import ByteLRU, nbytes


@pytest.fixture
def busy_switching():
    """Switch threads every microsecond, as a loaded server would at the worst moments."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_nbytes_counts_arrays_images_tensors_and_containers():
    a = np.zeros((10, 10), np.float32)
    assert nbytes(a) == 400
    assert nbytes(Image.new("RGB", (20, 10))) == 600
    assert nbytes(Image.new("L", (20, 10))) == 200
    assert nbytes(torch.zeros(5, dtype=torch.float16)) == 10
    assert nbytes(torch.nn.Linear(3, 2)) == (3 * 2 + 2) * 4

    @dataclass
    class Pair:
        x: np.ndarray
        y: list

    assert nbytes(Pair(a, [a, np.ones(3, np.uint8)])) == 403  # a counted once
    assert nbytes({"k": b"abcd"}) == 5


def test_evicts_least_recently_used_past_the_byte_budget():
    cache = ByteLRU(max_bytes=1000)
    block = lambda: np.zeros(100, np.float32)  # noqa: E731 - 400 bytes
    cache.put("a", block())
    cache.put("b", block())
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", block())  # 1200 > 1000: "b" goes
    assert cache.keys() == ["a", "c"] and cache.nbytes == 800
    cache.put("a", np.zeros(10, np.float32))  # replacing counts the new size
    assert cache.nbytes == 440
    cache.discard(lambda k: k == "c")
    assert cache.keys() == ["a"] and cache.nbytes == 40


def test_a_value_bigger_than_the_budget_is_kept_alone():
    cache = ByteLRU(max_bytes=1000)
    cache.put("small", np.zeros(10, np.float32))
    big = np.zeros(1000, np.float32)  # 4000 bytes
    assert cache.get_or_compute("big", lambda: big) is big
    assert cache.keys() == ["big"] and cache.nbytes == 4000  # not recomputed on every use
    assert cache.get_or_compute("big", lambda: 1 / 0) is big
    cache.put("next", np.zeros(10, np.float32))  # the next one pushes it out
    assert cache.keys() == ["next"] and cache.nbytes == 40


def test_a_failure_while_storing_does_not_leave_waiters_hanging():
    def sizeof(value):
        if value == "unmeasurable":
            raise RuntimeError("cannot measure")
        return 1

    cache: ByteLRU[str] = ByteLRU(max_bytes=10, sizeof=sizeof)
    with pytest.raises(RuntimeError):
        cache.get_or_compute("k", lambda: "unmeasurable")
    done = []
    t = threading.Thread(target=lambda: done.append(cache.get_or_compute("k", lambda: "ok")))
    t.start()
    t.join(5)
    assert done == ["ok"]


def test_concurrent_requests_for_one_key_compute_it_once(busy_switching):
    cache: ByteLRU[object] = ByteLRU(max_bytes=10**6)
    calls = []
    barrier = threading.Barrier(8)
    results = []

    def compute():
        calls.append(1)
        time.sleep(0.05)  # a model run: the others arrive meanwhile
        return object()

    def session(_):
        barrier.wait()
        results.append(cache.get_or_compute("image", compute))

    in_threads(session, 8)
    assert len(calls) == 1 and cache.computations == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_a_failure_reaches_every_waiter_and_is_not_cached():
    cache: ByteLRU[int] = ByteLRU(max_bytes=1000)
    started = threading.Event()
    errors = []

    def failing():
        started.set()
        time.sleep(0.05)
        raise ValueError("bad image")

    def waiter():
        started.wait()
        try:
            cache.get_or_compute("k", lambda: 1)
        except ValueError as err:
            errors.append(str(err))

    t = threading.Thread(target=waiter)
    t.start()
    with pytest.raises(ValueError, match="bad image"):
        cache.get_or_compute("k", failing)
    t.join()
    assert errors == ["bad image"] and "k" not in cache
    assert cache.get_or_compute("k", lambda: 7) == 7  # the next request computes afresh


def test_many_sessions_never_break_the_bound_or_each_other(busy_switching):
    """The old page cache raised KeyError and overran its bound under this load."""
    cache: ByteLRU[np.ndarray] = ByteLRU(max_bytes=20 * 800)
    over, failures = [], []

    def session(seed: int):
        rng = random.Random(seed)
        for _ in range(300):
            key = rng.randrange(40)
            try:
                value = cache.get_or_compute(key, lambda k=key: np.full(100, k, np.float64))
                assert value[0] == key
            except Exception as err:  # any error is a failure of the cache
                failures.append(repr(err))
            if cache.nbytes > cache.max_bytes or len(cache) > 20:
                over.append(cache.nbytes)

    in_threads(session, 8)
    assert failures == [] and over == []
    assert cache.nbytes == sum(nbytes(cache.get(k)) for k in cache)
