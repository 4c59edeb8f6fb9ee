"""The per-portal serial loop: order, isolation, what counts as an attempt, exact waits."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from bridge.core.errors import Refused, RetryAfter, Unavailable
from bridge.core.portal_loop import LoopPolicy, PortalLoops, Work

FAST = LoopPolicy(max_attempts=3, backoff_base=0.01, backoff_cap=0.02, unavailable_cap=0.02, idle_exit=0.2)


class Step(Work):
    """Records when it ran; fails with the queued errors first."""

    def __init__(self, log: list[str], name: str, errors: list[BaseException] | None = None) -> None:
        self.log = log
        self.name = name
        self.errors = list(errors or [])
        self.counted = 0
        self.told: list[str] = []
        self.given_up: BaseException | None = None

    async def run(self) -> None:
        self.log.append(f"try {self.name}")
        await asyncio.sleep(0)
        if self.errors:
            raise self.errors.pop(0)
        self.log.append(f"done {self.name}")

    async def attempted(self, error: BaseException) -> int:
        self.counted += 1
        return self.counted

    async def waiting(self, error: BaseException) -> None:
        self.told.append(type(error).__name__)

    async def give_up(self, error: BaseException) -> None:
        self.given_up = error
        self.log.append(f"failed {self.name}")


async def test_one_portal_runs_in_order_and_a_failing_head_holds_only_its_own() -> None:
    loops = PortalLoops(FAST)
    log: list[str] = []
    loops.submit("a", Step(log, "a1", [Unavailable("down"), Unavailable("down"), Unavailable("down")]))
    loops.submit("a", Step(log, "a2"))
    loops.submit("b", Step(log, "b1"))
    await loops.settle()
    done = [entry for entry in log if entry.startswith("done")]
    assert done.index("done a1") < done.index("done a2"), "nothing overtakes the head"
    assert done.index("done b1") < done.index("done a1"), "another portal is not held up"
    assert log.index("done a1") < log.index("try a2")


async def test_unavailable_is_waited_out_without_counting_and_refusals_count_to_the_cap() -> None:
    loops = PortalLoops(FAST)
    log: list[str] = []
    patient = Step(log, "patient", [Unavailable("down")] * 10)
    doomed = Step(log, "doomed", [Refused("M_FORBIDDEN", "no")] * 10)
    after = Step(log, "after")
    loops.submit("a", patient)
    loops.submit("b", doomed)
    loops.submit("b", after)
    await loops.settle()
    assert "done patient" in log and patient.counted == 0, "an outage is not the item's fault"
    assert doomed.counted == FAST.max_attempts and isinstance(doomed.given_up, Refused)
    assert "done after" in log, "the loop moves on after a failure for good"
    assert patient.told == ["Unavailable"] and doomed.told == ["Refused"], "the user is told once"


async def test_a_rate_limit_is_honoured_exactly_and_not_cut_short() -> None:
    loops = PortalLoops(FAST)
    log: list[str] = []
    step = Step(log, "limited", [RetryAfter(0.3)])
    started = time.monotonic()
    loops.submit("a", step)
    await asyncio.sleep(0.05)
    loops.wake()  # a reconnect must not spend the allowance early
    await loops.settle()
    assert time.monotonic() - started >= 0.3
    assert step.counted == 0 and log == ["try limited", "try limited", "done limited"]


async def test_a_wake_cuts_an_outage_wait_short() -> None:
    loops = PortalLoops(LoopPolicy(backoff_base=30.0, unavailable_cap=30.0, idle_exit=0.2))
    log: list[str] = []
    loops.submit("a", Step(log, "w", [Unavailable("not connected")]))
    await asyncio.sleep(0.05)
    loops.wake(lambda key: key == "a")
    await asyncio.wait_for(loops.settle(), 2)
    assert log[-1] == "done w"


async def test_an_overflowing_queue_reloads_what_it_dropped_in_order() -> None:
    log: list[str] = []
    stored = [f"m{i}" for i in range(10)]
    done: set[str] = set()

    class Stored(Step):
        async def run(self) -> None:
            if self.name in done:
                return  # idempotent: a reload may bring it again
            await super().run()
            done.add(self.name)

    async def reload(key: object) -> list[Work]:
        return [Stored(log, name) for name in stored if name not in done]

    loops = PortalLoops(LoopPolicy(queue_limit=3, idle_exit=0.2), reload=reload)
    for name in stored:
        loops.submit("a", Stored(log, name))
    await loops.settle()
    assert [entry for entry in log if entry.startswith("done")] == [f"done {n}" for n in stored]


async def test_the_loop_survives_a_failing_failure_path_and_stop_drains_the_head() -> None:
    loops = PortalLoops(FAST)
    log: list[str] = []

    class Broken(Step):
        async def attempted(self, error: BaseException) -> int:
            raise RuntimeError("the database is gone")

        async def waiting(self, error: BaseException) -> None:
            raise RuntimeError("the homeserver is gone")

    loops.submit("a", Broken(log, "broken", [ValueError("bug")] * 2))
    loops.submit("a", Step(log, "next"))
    await loops.settle()
    assert log[-1] == "done next"

    release = asyncio.Event()

    class Slow(Step):
        async def run(self) -> None:
            self.log.append("slow started")
            await release.wait()
            self.log.append("slow finished")

    loops.submit("b", Slow(log, "slow"))
    loops.submit("b", Step(log, "never"))
    await asyncio.sleep(0.02)
    stopping = asyncio.create_task(loops.stop(timeout=2))
    await asyncio.sleep(0.02)
    release.set()
    await stopping
    assert "slow finished" in log and "try never" not in log, "the head finishes, the rest stays stored"
    loops.submit("c", Step(log, "after stop"))
    await asyncio.sleep(0.02)
    assert "try after stop" not in log


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("x"),
        ConnectionResetError(),
        TimeoutError(),
        # What asyncpg says of a connection a Postgres restart left mid-operation.
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    ],
)
async def test_transient_errors_are_recognised(error: BaseException) -> None:
    from bridge.core.errors import is_transient

    assert is_transient(error)
    assert not is_transient(ValueError("a bug"))
    assert not is_transient(Refused("M_FORBIDDEN", "no"))
