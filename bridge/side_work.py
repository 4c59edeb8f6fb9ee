"""Hashing beside the cipher: a second core for the stream crypto of media.

A file's crypto is a cipher pass and one or more SHA-256 passes over the same bytes.
hashlib releases the GIL while it hashes, so the hashes of one chunk can run in a worker
thread while the cipher works on the next: on two cores a 100 MiB transfer takes about as
long as its cipher alone. Calls run in the order they were given; ``drain`` waits for all
of them, and must be called before a hash is read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Below this a thread hop costs more than the hash it would move.
MIN_BYTES = 64 * 1024
# Calls waiting at most: each holds its chunk, so this bounds the memory to a few chunks
# when the hashes are slower than the cipher.
DEPTH = 3


class SideWork:
    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[Any]] = deque()

    def run(self, size: int, call: Callable[..., Any], *args: Any) -> None:
        """Run ``call(*args)`` after everything given before: in the worker for large
        inputs, at once (after draining) for small ones."""
        if size < MIN_BYTES:
            self.drain()
            call(*args)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="media-hash")
        while len(self._pending) >= DEPTH:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(call, *args))

    def drain(self) -> None:
        """Wait until everything given has run; raises what a call raised."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def abandon(self) -> None:
        """After a failure: what is queued is dropped, the worker goes, nothing is raised."""
        for pending in self._pending:
            pending.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
