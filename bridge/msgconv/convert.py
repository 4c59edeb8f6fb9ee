"""Matrix event content ⇄ GIP ``Content``.

Matrix → GIP raises :class:`Unsupported` (with a reason for the message send status) for
what the gatekeeper cannot carry. GIP → Matrix returns the content to post; references to
other messages (replies, edits, reactions) come back as gatekeeper ids, which the core
maps to Matrix event ids.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.gip.content import Content, ContextInfo, Edit, ExtendedText, Media, MessageKey, Reaction, Revoke

from .formatting import html_to_markup, markup_to_html, matrix_to_user

MAX_TEXT = 65536
_REPLY_FALLBACK = re.compile(r"^(> .*\n)+\n", re.MULTILINE)
MEDIA_KINDS = ("image", "video", "audio", "document")


class Unsupported(Exception):
    """The gatekeeper cannot carry this; ``reason`` is the MSS reason, ``text`` for people."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


@dataclass(frozen=True)
class Outgoing:
    """What to send to the gatekeeper for one Matrix event."""

    content: Content = field(repr=False)
    message_type: str  # GIP stanza type: text, reaction, revoke


@dataclass(frozen=True)
class Mention:
    """Someone a group message mentions: their IID, their Matrix ID here, and their name."""

    iid: str
    mxid: str
    name: str

    @property
    def token(self) -> str:
        """How a text names them on the gatekeeper side: ``@`` and the user part of the IID,
        beside the IID in ``ContextInfo.mentioned`` (WhatsApp's form of a mention)."""
        return "@" + self.iid.split("@", 1)[0]


_PILL_HREF = re.compile(r"""href=["']([^"']+)["']""")


def matrix_mentions(content: dict[str, Any]) -> list[str]:
    """The Matrix users a message mentions: its ``m.mentions`` and the pills in its HTML,
    in order, each once."""
    found: dict[str, None] = {}
    mentions = content.get("m.mentions")
    if isinstance(mentions, dict) and isinstance(mentions.get("user_ids"), list):
        found.update((u, None) for u in mentions["user_ids"] if isinstance(u, str))
    formatted = content.get("formatted_body")
    if content.get("format") == "org.matrix.custom.html" and isinstance(formatted, str):
        for href in _PILL_HREF.findall(formatted):
            user = matrix_to_user(html.unescape(href))
            if user is not None:
                found[user] = None
    return list(found)


def _text_of(content: dict[str, Any], mentions: Sequence[Mention] = ()) -> str:
    if content.get("format") == "org.matrix.custom.html" and isinstance(content.get("formatted_body"), str):
        text = html_to_markup(content["formatted_body"], {m.mxid: m.token for m in mentions})
    else:
        body = content.get("body")
        if not isinstance(body, str):
            raise Unsupported("m.event_not_handled", "The message has no text.")
        text = body
        if isinstance(content.get("m.relates_to", {}).get("m.in_reply_to"), dict):
            text = _REPLY_FALLBACK.sub("", text, count=1)
    if not text.strip():
        raise Unsupported("m.event_not_handled", "The message is empty.")
    if len(text) > MAX_TEXT:
        raise Unsupported("com.beeper.unsupported_event", "The message is too long for the gatekeeper.")
    return text


def matrix_message(
    content: dict[str, Any], *, reply_to: str | None, edit_of: str | None, mentions: Sequence[Mention] = ()
) -> Outgoing:
    """An ``m.room.message``: text, notice or emote, possibly a reply or an edit.

    ``reply_to``/``edit_of`` are the gatekeeper ids of the referenced messages (the core
    resolved them), or None; ``mentions`` the people it mentions whom the core could name
    (in a group): their pills become their tokens, their IIDs ``mentioned``.
    """
    msgtype = content.get("msgtype")
    if edit_of is not None:
        new = content.get("m.new_content")
        if not isinstance(new, dict):
            raise Unsupported("m.event_not_handled", "The edit has no new content.")
        # Of a file only the caption can change (MSC2530: a body beside a filename).
        captioned = isinstance(new.get("filename"), str) and new.get("filename") != new.get("body")
        if new.get("msgtype") in ("m.image", "m.video", "m.audio", "m.file") and not captioned:
            raise Unsupported("com.beeper.unsupported_event", "Only the caption of a file can be edited.")
        text = _text_of(new, mentions)
        return Outgoing(Content(edit=Edit(key=MessageKey(id=edit_of, from_me=True), text=text)), "text")
    if msgtype not in ("m.text", "m.notice", "m.emote"):
        raise Unsupported(
            "com.beeper.unsupported_event", f"The gatekeeper cannot carry {msgtype or 'this kind of'} messages."
        )
    text = _text_of(content, mentions)
    if msgtype == "m.emote":
        text = f"/me {text}"
    if reply_to is not None or mentions:
        context = ContextInfo(stanza_id=reply_to or "", mentioned=[m.iid for m in mentions])
        return Outgoing(Content(extended_text=ExtendedText(text=text, context_info=context)), "text")
    return Outgoing(Content(text=text), "text")


def matrix_reaction(key: str, target: str, *, from_me: bool) -> Outgoing:
    if not key or len(key) > 64:
        raise Unsupported("com.beeper.unsupported_event", "The gatekeeper carries emoji reactions only.")
    return Outgoing(Content(reaction=Reaction(key=MessageKey(id=target, from_me=from_me), text=key)), "reaction")


def matrix_reaction_removal(target: str, *, from_me: bool) -> Outgoing:
    return Outgoing(Content(reaction=Reaction(key=MessageKey(id=target, from_me=from_me), text="")), "reaction")


def matrix_redaction(target: str) -> Outgoing:
    return Outgoing(Content(revoke=Revoke(key=MessageKey(id=target, from_me=True))), "revoke")


@dataclass(frozen=True)
class Incoming:
    """What to do in Matrix for one gatekeeper message."""

    kind: str  # message, media, edit, reaction, revoke
    content: dict[str, Any] = field(default_factory=dict)
    target: str | None = None  # gatekeeper id of the message replied to, edited, reacted to or revoked
    target_from_me: bool = False  # the target is ours (the Matrix user's) from the peer's point of view
    emoji: str = ""
    media: tuple[str, Media] | None = field(default=None, repr=False)  # (image|video|audio|document, Media)


def _tokens(mentions: Sequence[Mention]) -> re.Pattern[str]:
    """One pattern for every mention's token (longest first, never the start of a longer one)."""
    tokens = sorted({re.escape(m.token) for m in mentions}, key=len, reverse=True)
    return re.compile("(?:" + "|".join(tokens) + r")(?![\w@])")


def _text_content(text: str, msgtype: str = "m.text", mentions: Sequence[Mention] = ()) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": msgtype, "body": text}
    formatted = markup_to_html(text)
    if mentions:
        # Each token becomes a pill in the HTML and the person's name in the plain body, in
        # one pass (a pill's own text is never read again).
        by_token = {m.token: m for m in mentions}
        pattern = _tokens(mentions)
        if pattern.search(text):
            if formatted is None:
                formatted = html.escape(text, quote=False).replace("\n", "<br/>")

            def pill(match: re.Match[str]) -> str:
                mention = by_token[match.group(0)]
                return f'<a href="https://matrix.to/#/{html.escape(mention.mxid)}">{html.escape(mention.name)}</a>'

            formatted = pattern.sub(pill, formatted)
            content["body"] = pattern.sub(lambda match: by_token[match.group(0)].name, text)
        content["m.mentions"] = {"user_ids": list(dict.fromkeys(m.mxid for m in mentions))}
    if formatted is not None:
        content.update(format="org.matrix.custom.html", formatted_body=formatted)
    return content


def mentioned_iids(content: Content) -> list[str]:
    """The IIDs a gatekeeper message says it mentions (a text's, or a caption's)."""
    body = content.WhichOneof("body")
    if body == "extended_text":
        return list(content.extended_text.context_info.mentioned)
    if body in MEDIA_KINDS:
        return list(getattr(content, body).context_info.mentioned)
    return []


def gip_content(content: Content, mentions: Sequence[Mention] = ()) -> Incoming:
    """``mentions``: the people ``mentioned_iids`` named, as the core resolved them."""
    body = content.WhichOneof("body")
    if body == "text":
        return Incoming("message", _text_content(content.text))
    if body == "extended_text":
        ext = content.extended_text
        target = ext.context_info.stanza_id or None
        return Incoming("message", _text_content(ext.text, mentions=mentions), target=target)
    if body == "reaction":
        key = content.reaction.key
        # The peer's from_me is about the peer: their reaction to "from_me=False" targets our message.
        return Incoming("reaction", target=key.id, target_from_me=not key.from_me, emoji=content.reaction.text)
    if body == "revoke":
        return Incoming("revoke", target=content.revoke.key.id)
    if body == "edit":
        return Incoming("edit", _text_content(content.edit.text), target=content.edit.key.id)
    if body in MEDIA_KINDS:
        media = getattr(content, body)
        # The file is fetched and uploaded by the core; the content is built from it then.
        return Incoming("media", target=media.context_info.stanza_id or None, media=(body, media))
    return Incoming("message", {"msgtype": "m.notice", "body": "Sent a message this bridge cannot show."})
