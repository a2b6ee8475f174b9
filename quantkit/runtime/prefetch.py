"""Read ahead: the next items of an iterator made by a background thread while the caller
works on the current one.

Streaming conversions alternate between reading a block (file reads, numpy widening,
which release the GIL) and computing on it (ggml's quantizers on every core). In turn, the
cores idle while a block is read; read one block ahead, they do not. `depth` bounds how many
finished items wait, so memory holds depth + 2 items at most (waiting, being made, being
used).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_ITEM, _END, _ERROR = range(3)
_POLL_S = 0.1  # how often a blocked producer looks whether the consumer has gone


class Prefetched(Generic[T]):
    """Iterate over `source` with its items made `depth` ahead in a background thread.
    The producer's exception is raised to the consumer at the item where it happened.
    close() (or the with block's end) stops the producer, also when the consumer leaves
    early: on an error or a KeyboardInterrupt."""

    def __init__(self, source: Iterable[T], depth: int = 1) -> None:
        self._queue: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, args=(iter(source),),
                                        name="quantkit-prefetch", daemon=True)  # fmt: skip
        self._thread.start()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == _ITEM:
            return value  # type: ignore[return-value]
        self._done = True
        if kind == _ERROR:
            raise value  # type: ignore[misc]
        raise StopIteration

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._done = True

    def __enter__(self) -> Prefetched[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(_ITEM, item):
                    return
            self._put(_END, None)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_ERROR, exc)
        finally:
            if isinstance(items, Generator):
                items.close()  # its open files close in this thread, now

    def _put(self, kind: int, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False
