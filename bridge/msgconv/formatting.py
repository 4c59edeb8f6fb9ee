"""Matrix HTML ⇄ WhatsApp-style markup (*bold*, _italic_, ~strike~, `code`, ```block```)."""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Mapping
from html.parser import HTMLParser

_MATRIX_TO = "https://matrix.to/#/"
_BLOCKS = ("p", "div", "blockquote", "ul", "ol")
_MARKS = {"strong": "*", "b": "*", "em": "_", "i": "_", "del": "~", "s": "~", "strike": "~", "code": "`"}


class _ToPlain(HTMLParser):
    def __init__(self, pills: Mapping[str, str]) -> None:
        super().__init__(convert_charrefs=True)
        self.pills = pills  # Matrix ID → the text its pill becomes (a mention's token)
        self.out: list[str] = []
        self._skip = 0  # inside <mx-reply>: the reply fallback, never sent
        self._pre = 0
        self._links: list[str | None] = []
        self._list: list[int | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "mx-reply":
            self._skip += 1
        if self._skip:
            return
        if tag == "pre":
            self._pre += 1
            self.out.append("```")
        elif tag in _MARKS and not self._pre:
            self.out.append(_MARKS[tag])
        elif tag == "br" or (
            tag in ("p", "div", "blockquote", "ul", "ol") and self.out and not self.out[-1].endswith("\n")
        ):
            self.out.append("\n")
        if tag == "blockquote":
            self.out.append("> ")
        elif tag == "ol":
            self._list.append(1)
        elif tag == "ul":
            self._list.append(None)
        elif tag == "li":
            number = self._list[-1] if self._list else None
            self.out.append(f"{number}. " if number is not None else "• ")
            if number is not None:
                self._list[-1] = number + 1
        elif tag == "a":
            self._links.append(dict(attrs).get("href"))
            self.out.append("\x00")  # marks where the link text starts

    def handle_endtag(self, tag: str) -> None:
        if tag == "mx-reply":
            self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
            self.out.append("```")
        elif tag in _MARKS and not self._pre:
            self.out.append(_MARKS[tag])
        elif tag in ("p", "div", "blockquote", "li"):
            self.out.append("\n")
        elif tag in ("ul", "ol") and self._list:
            self._list.pop()
        elif tag == "a" and self._links:
            href = self._links.pop()
            text = "".join(self.out)
            start = text.rfind("\x00")
            label = text[start + 1 :]
            pill = self.pills.get(matrix_to_user(href) or "")
            self.out = [text[:start], pill if pill is not None else label]
            if (
                pill is None
                and href
                and href.removeprefix("mailto:") != label
                and not href.startswith("https://matrix.to/")
            ):
                self.out.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data)


def matrix_to_user(href: str | None) -> str | None:
    """The Matrix ID a ``https://matrix.to/#/@user:server`` link (a pill) points at."""
    if not href or not href.startswith(_MATRIX_TO):
        return None
    target = urllib.parse.unquote(href[len(_MATRIX_TO) :].split("?", 1)[0])
    return target if target.startswith("@") and ":" in target else None


def html_to_markup(formatted: str, pills: Mapping[str, str] | None = None) -> str:
    """Plain markup; the pills of the users in ``pills`` become the text given there."""
    parser = _ToPlain(pills or {})
    parser.feed(formatted)
    parser.close()
    text = "".join(parser.out).replace("\x00", "")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_INLINE = [
    (re.compile(r"```(.+?)```", re.DOTALL), "<pre><code>{}</code></pre>"),
    (re.compile(r"`([^`\n]+)`"), "<code>{}</code>"),
    (re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])"), "<strong>{}</strong>"),
    (re.compile(r"(?<![\w_])_([^_\n]+)_(?![\w_])"), "<em>{}</em>"),
    (re.compile(r"(?<![\w~])~([^~\n]+)~(?![\w~])"), "<del>{}</del>"),
]


def markup_to_html(text: str) -> str | None:
    """HTML for WhatsApp-style markup, or None when the text has none (plain is enough)."""
    escaped = html.escape(text, quote=False)
    formatted = escaped
    for pattern, template in _INLINE:
        formatted = pattern.sub(lambda m, t=template: t.format(m.group(1)), formatted)
    if formatted == escaped:
        return None
    return formatted.replace("\n", "<br/>")
