"""The bridge killed with SIGKILL at random moments while both directions stream: nothing
lost, nothing twice, nothing out of order (a short run of ``bench/crash_trials.py``; the
long run is the benchmark's)."""

from __future__ import annotations

import argparse
import os

import pytest

from bench.crash_trials import main_async

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.parametrize(
    ("encrypted", "sqlite"),
    [pytest.param(False, True, id="plain-sqlite"), pytest.param(True, False, id="encrypted-postgres")],
)
async def test_killed_bridge_loses_nothing(encrypted: bool, sqlite: bool) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    args = argparse.Namespace(
        trials=3, messages=40, encrypted=encrypted, sqlite=sqlite, seed=seed, settle=120.0, keep=False
    )
    result = await main_async(args)
    faults = {key: result.get(key, 0) for key in ("lost", "duplicated", "reordered", "undecryptable")}
    assert result["starts"] == args.trials + 1, "the bridge was killed and started again each time"
    assert faults == dict.fromkeys(faults, 0), f"seed {seed} (bench/crash_trials.py --seed {seed}): {result}"
