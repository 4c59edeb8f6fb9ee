"""Finding a message's keys in a receiving chain: shared by pairwise sessions and Sender Keys.

A message ahead of the chain advances it, caching the keys it passes over so that late
messages still decrypt; a message behind it takes (and removes) its cached key, or is a
duplicate. Both ratchets keep at most 2,000 cached keys per chain, oldest evicted, and
refuse jumps of more than 2,000, as the WhatsApp-lineage implementations do.
"""

from __future__ import annotations

from typing import Protocol, Self, TypeVar

from .errors import DuplicateMessageError, TooFarInFutureError

MAX_MESSAGE_KEYS = 2000
MAX_FORWARD_JUMPS = 2000


class MessageKeyLike(Protocol):
    @property
    def counter(self) -> int: ...


K = TypeVar("K", bound=MessageKeyLike)


class ChainKeyLike(Protocol[K]):
    @property
    def index(self) -> int: ...

    def next(self) -> Self: ...

    def message_keys(self) -> K: ...


C = TypeVar("C", bound=ChainKeyLike)  # type: ignore[type-arg]


def keys_for_counter(chain_key: C, skipped: tuple[K, ...], counter: int) -> tuple[C, tuple[K, ...], K]:
    """The keys of message ``counter``, and the chain key and cached keys after taking them.

    ``skipped`` is newest first. Nothing is mutated; on error the caller's state is as it was.

    Raises:
        DuplicateMessageError: the message is behind the chain and its key is not cached.
        TooFarInFutureError: the message is more than 2,000 ahead of the chain.
    """
    if chain_key.index > counter:
        for position, keys in enumerate(skipped):
            if keys.counter == counter:
                return chain_key, skipped[:position] + skipped[position + 1 :], keys
        raise DuplicateMessageError(f"message counter {counter} was already received")
    jump = counter - chain_key.index
    if jump > MAX_FORWARD_JUMPS:
        raise TooFarInFutureError(f"message is {jump} ahead, more than {MAX_FORWARD_JUMPS}")
    passed_over: list[K] = []
    while chain_key.index < counter:
        passed_over.append(chain_key.message_keys())
        chain_key = chain_key.next()
    if passed_over:
        passed_over.reverse()
        skipped = (*passed_over, *skipped)[:MAX_MESSAGE_KEYS]
    return chain_key.next(), skipped, chain_key.message_keys()
