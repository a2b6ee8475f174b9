"""Prefetched: the items of an iterator made ahead by a background thread."""

from __future__ import annotations

import threading
import time

import pytest

from quantkit.runtime.prefetch import Prefetched


def test_items_come_in_order_and_end() -> None:
    with Prefetched(iter(range(100)), depth=2) as items:
        assert list(items) == list(range(100))
        assert next(items, "end") == "end"  # it stays ended


def test_the_producers_error_is_raised_where_it_happened() -> None:
    def source():
        yield 1
        yield 2
        raise ValueError("damaged block")

    with Prefetched(source()) as items:
        assert next(items) == 1
        assert next(items) == 2
        with pytest.raises(ValueError, match="damaged block"):
            next(items)
        assert next(items, "end") == "end"


def test_the_producer_runs_ahead_of_the_consumer() -> None:
    made: list[int] = []

    def source():
        for k in range(3):
            made.append(k)
            yield k

    with Prefetched(source(), depth=1) as items:
        assert next(items) == 0
        deadline = time.monotonic() + 5
        while len(made) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert made == [0, 1]  # the next item was made before it was asked for


def test_leaving_early_stops_the_producer_and_closes_its_source() -> None:
    closed = threading.Event()

    def source():
        try:
            k = 0
            while True:
                yield k
                k += 1
        finally:
            closed.set()

    items = Prefetched(source(), depth=1)
    assert next(items) == 0
    items.close()
    assert closed.is_set()
    assert not any(t.name == "quantkit-prefetch" and t.is_alive() for t in threading.enumerate())
    assert next(items, "end") == "end"
