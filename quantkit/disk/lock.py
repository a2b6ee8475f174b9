"""One builder at a time: an exclusive lock on `<target>.lock` across processes.

Two processes that build the same folder (two test workers wanting one fixture, two
`quantkit demo` runs) would otherwise clear each other's `.partial` halfway. The second one
waits, then finds the target built. The lock file stays: removing it would race with a
process about to open it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the lock on building `target` for the block (not POSIX: no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
