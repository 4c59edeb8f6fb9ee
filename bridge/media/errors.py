"""The one error of media processing."""

from __future__ import annotations


class MediaError(Exception):
    """A file could not be processed; ``text`` says why, for the user (no file contents)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
