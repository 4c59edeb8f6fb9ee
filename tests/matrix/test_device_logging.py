"""mautrix's per-message trust warnings are ordinary for a bridge: demoted, not lost."""

from __future__ import annotations

import logging

import pytest

import bridge.matrix.device  # noqa: F401  (installs the filter)


def test_trust_notes_are_debug_and_other_warnings_stay(caplog: pytest.LogCaptureFixture) -> None:
    crypto = logging.getLogger("mau.crypto")
    with caplog.at_level(logging.INFO):
        crypto.warning("Didn't find cross-signing key master of @alice:test")
        crypto.warning("Device @alice:test/ABC isn't cross-signed")
        crypto.warning("Failed to decrypt something that matters")
    assert [r.getMessage() for r in caplog.records] == ["Failed to decrypt something that matters"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        crypto.warning("Device @alice:test/ABC isn't cross-signed")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "Device @alice:test/ABC isn't cross-signed")
    ]
