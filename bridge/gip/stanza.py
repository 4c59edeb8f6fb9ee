"""The stanza model and its XML codec (ours: GIP's readable XML instead of binary tokens).

Parsing follows the profile (§3) strictly and fails closed: no DTD (so no entity can be
declared, which rules out billion-laughs and external entities), no processing
instructions, no namespace processing (``xmlns`` is a plain attribute and ``a:b`` a plain
name), depth at most 16, attribute values at most 4 KiB, a stanza at most 1 MiB, valid
UTF-8. Any breach is a ``GipError`` with code 400. Expat is used because it can parse
without namespace processing and lets every DTD construct be refused as it is seen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from xml.parsers import expat

from .errors import GipError, GipErrorCode

MAX_STANZA_BYTES = 1 << 20
MAX_DEPTH = 16
MAX_ATTRIBUTE_BYTES = 4096
_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_PLAIN = re.compile(r"[A-Za-z0-9+/=:@._\- ]*")  # needs no escaping anywhere


@dataclass(slots=True)
class Node:
    """One element: a name, attributes, child elements, and (for leaves) text."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    text: str | None = None

    def child(self, tag: str) -> Node | None:
        for node in self.children:
            if node.tag == tag:
                return node
        return None

    def require_child(self, tag: str) -> Node:
        node = self.child(tag)
        if node is None:
            raise GipError(GipErrorCode.BAD_REQUEST, f"<{self.tag}> lacks <{tag}>")
        return node

    def all(self, tag: str) -> Iterator[Node]:
        return (node for node in self.children if node.tag == tag)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def attr(self, name: str) -> str:
        value = self.attrs.get(name)
        if value is None:
            raise GipError(GipErrorCode.BAD_REQUEST, f"<{self.tag}> lacks attribute {name!r}")
        return value

    def int_attr(self, name: str) -> int:
        value = self.attr(name)
        if not value.isdigit() or len(value) > 12:
            raise GipError(GipErrorCode.BAD_REQUEST, f"<{self.tag} {name}> is not a number")
        return int(value)

    def require_text(self) -> str:
        if self.text is None:
            raise GipError(GipErrorCode.BAD_REQUEST, f"<{self.tag}> has no content")
        return self.text


def _escape(value: str, *, attribute: bool) -> str:
    if _PLAIN.fullmatch(value):
        return value  # ids, numbers, base64: the common case has nothing to escape
    if _INVALID_XML_CHARS.search(value):
        raise GipError(GipErrorCode.BAD_REQUEST, "value has characters XML cannot carry")
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        value = value.replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;")
        value = value.replace("\t", "&#9;")
    return value


def _write(node: Node, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise GipError(GipErrorCode.BAD_REQUEST, "stanza nests too deeply")
    out.append("<" + node.tag)
    for name, value in node.attrs.items():
        out.append(f' {name}="{_escape(value, attribute=True)}"')
    if not node.children and node.text is None:
        out.append("/>")
        return
    out.append(">")
    if node.text is not None:
        out.append(_escape(node.text, attribute=False))
    for child in node.children:
        _write(child, out, depth + 1)
    out.append(f"</{node.tag}>")


def encode(node: Node) -> bytes:
    """Serialize a stanza; raises GipError 400/413 for what the peer would refuse."""
    out: list[str] = []
    _write(node, out, 1)
    data = "".join(out).encode()
    if len(data) > MAX_STANZA_BYTES:
        raise GipError(GipErrorCode.TOO_LARGE, "stanza larger than 1 MiB")
    return data


class _Builder:
    def __init__(self) -> None:
        self.stack: list[Node] = []
        self.root: Node | None = None
        self.text: list[str] = []

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise GipError(GipErrorCode.BAD_REQUEST, "stanza nests deeper than 16")
        for value in attrs.values():
            if len(value.encode()) > MAX_ATTRIBUTE_BYTES:
                raise GipError(GipErrorCode.BAD_REQUEST, "attribute value over 4 KiB")
        node = Node(tag, attrs)
        if self.stack:
            self.stack[-1].children.append(node)
        elif self.root is None:
            self.root = node
        self.stack.append(node)
        self.text = []

    def end(self, tag: str) -> None:
        node = self.stack.pop()
        text = "".join(self.text)
        if not node.children and text:
            node.text = text
        self.text = []

    def data(self, text: str) -> None:
        self.text.append(text)


def _refuse(what: str) -> Callable[..., None]:
    def handler(*_args: object) -> None:
        raise GipError(GipErrorCode.BAD_REQUEST, f"{what} not allowed in a stanza")

    return handler


def decode(data: bytes) -> Node:
    """Parse one stanza under the profile's rules.

    Raises:
        GipError: code 400 for anything malformed or forbidden, 413 if over 1 MiB.
    """
    if len(data) > MAX_STANZA_BYTES:
        raise GipError(GipErrorCode.TOO_LARGE, "stanza larger than 1 MiB")
    builder = _Builder()
    parser = expat.ParserCreate("UTF-8")  # no namespace_separator: no namespace processing
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse("a DTD")
    parser.EntityDeclHandler = _refuse("an entity declaration")
    parser.UnparsedEntityDeclHandler = _refuse("an entity declaration")
    parser.NotationDeclHandler = _refuse("a notation")
    parser.ExternalEntityRefHandler = _refuse("an external entity")
    parser.SkippedEntityHandler = _refuse("an entity reference")
    parser.ProcessingInstructionHandler = _refuse("a processing instruction")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise GipError(GipErrorCode.BAD_REQUEST, f"malformed XML: {expat.errors.messages[exc.code]}") from None
    except RecursionError:
        raise GipError(GipErrorCode.BAD_REQUEST, "stanza nests too deeply") from None
    if builder.root is None:
        raise GipError(GipErrorCode.BAD_REQUEST, "empty stanza")
    return builder.root
