"""A short, bounded fuzzing run of every parser that takes bytes from the other side
(``bench/fuzz.py`` runs the long one): no exception but the typed errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fuzz import TARGETS, run_child

# Executions per target: each target takes a few seconds (Noise does X25519 per input).
RUNS = {"stanza": 20_000, "content": 20_000, "signal": 10_000, "jwt": 10_000, "noise": 2_000}


@pytest.mark.parametrize("target", TARGETS)
def test_a_parser_raises_only_its_typed_errors(target: str, tmp_path: Path) -> None:
    executions, crashed, _ = run_child(target, RUNS[target], tmp_path)
    assert not crashed, f"{target}: a crash; the input is in {tmp_path} (replay: bench/fuzz.py --one {target} FILE)"
    assert executions >= RUNS[target], f"{target} ran {executions} inputs"
