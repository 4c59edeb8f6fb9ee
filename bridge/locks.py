"""Keyed serialisation (Synapse's ``Linearizer``): one holder per key at a time, in the
order they asked, without a global lock; a key's lock is dropped when nobody holds or
awaits it, so that a million keys seen once cost nothing afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from types import TracebackType


class KeyedLock:
    def __init__(self) -> None:
        self._locks: dict[Hashable, list[object]] = {}  # key -> [lock, users]

    def __call__(self, key: Hashable) -> _Held:
        return _Held(self._locks, key)

    def __len__(self) -> int:
        return len(self._locks)


class _Held:
    """``async with keyed(key):`` (a class, not a generator: it runs on every message)."""

    __slots__ = ("_entry", "_key", "_locks")

    def __init__(self, locks: dict[Hashable, list[object]], key: Hashable) -> None:
        self._locks = locks
        self._key = key
        self._entry: list[object] | None = None

    async def __aenter__(self) -> None:
        entry = self._locks.get(self._key)
        if entry is None:
            entry = self._locks[self._key] = [asyncio.Lock(), 0]
        entry[1] = int(entry[1]) + 1  # type: ignore[call-overload]
        self._entry = entry
        try:
            await entry[0].acquire()  # type: ignore[attr-defined]
        except BaseException:
            self._leave()
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._entry is not None
        self._entry[0].release()  # type: ignore[attr-defined]
        self._leave()

    def _leave(self) -> None:
        assert self._entry is not None
        self._entry[1] = int(self._entry[1]) - 1  # type: ignore[call-overload]
        if self._entry[1] == 0 and self._locks.get(self._key) is self._entry:
            del self._locks[self._key]
