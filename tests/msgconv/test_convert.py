"""Matrix ⇄ GIP content conversion, table-driven."""

from __future__ import annotations

import pytest

from bridge.gip.content import Content, ContextInfo, Edit, ExtendedText, Media, MessageKey, Reaction, Revoke
from bridge.msgconv.convert import (
    Mention,
    Unsupported,
    gip_content,
    matrix_mentions,
    matrix_message,
    matrix_reaction,
    matrix_reaction_removal,
    matrix_redaction,
    mentioned_iids,
)
from bridge.msgconv.formatting import html_to_markup, markup_to_html


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<strong>bold</strong> and <em>it</em>", "*bold* and _it_"),
        ("<del>gone</del> <code>x=1</code>", "~gone~ `x=1`"),
        ("<pre><code>a\nb</code></pre>", "```a\nb```"),
        ("line<br>next", "line\nnext"),
        ("<p>one</p><p>two</p>", "one\ntwo"),
        ('<a href="https://example.org">site</a>', "site (https://example.org)"),
        ('<a href="https://example.org">https://example.org</a>', "https://example.org"),
        ('<a href="https://matrix.to/#/@bob:x">Bob</a>', "Bob"),
        ("<ul><li>a</li><li>b</li></ul>", "• a\n• b"),
        ("<ol><li>a</li><li>b</li></ol>", "1. a\n2. b"),
        ("<mx-reply><blockquote>old</blockquote></mx-reply>new", "new"),
        ("&lt;tag&gt; &amp;", "<tag> &"),
    ],
)
def test_html_to_markup(html: str, text: str) -> None:
    assert html_to_markup(html) == text


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("plain", None),
        ("*bold*", "<strong>bold</strong>"),
        ("a _b_ ~c~ `d`", "a <em>b</em> <del>c</del> <code>d</code>"),
        ("<b>not html</b>", None),
        ("2*3*4", None),
        ("snake_case_name", None),
        ("x\n*y*", "x<br/><strong>y</strong>"),
    ],
)
def test_markup_to_html(text: str, html: str | None) -> None:
    assert markup_to_html(text) == html


def test_text_notice_emote_reply_and_edit() -> None:
    assert matrix_message({"msgtype": "m.text", "body": "hi"}, reply_to=None, edit_of=None).content == Content(
        text="hi"
    )
    assert matrix_message({"msgtype": "m.notice", "body": "n"}, reply_to=None, edit_of=None).content.text == "n"
    assert (
        matrix_message({"msgtype": "m.emote", "body": "waves"}, reply_to=None, edit_of=None).content.text == "/me waves"
    )
    formatted = {
        "msgtype": "m.text",
        "body": "**b**",
        "format": "org.matrix.custom.html",
        "formatted_body": "<strong>b</strong>",
    }
    assert matrix_message(formatted, reply_to=None, edit_of=None).content.text == "*b*"
    reply = {
        "msgtype": "m.text",
        "body": "> <@bob:x> old\n\nnew",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$o"}},
    }
    out = matrix_message(reply, reply_to="G1", edit_of=None)
    assert out.content == Content(extended_text=ExtendedText(text="new", context_info=ContextInfo(stanza_id="G1")))
    edit = {
        "msgtype": "m.text",
        "body": "* fixed",
        "m.new_content": {"msgtype": "m.text", "body": "fixed"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$o"},
    }
    assert matrix_message(edit, reply_to=None, edit_of="G1").content == Content(
        edit=Edit(key=MessageKey(id="G1", from_me=True), text="fixed")
    )


@pytest.mark.parametrize(
    "content",
    [
        {"msgtype": "m.location", "body": "here", "geo_uri": "geo:1,2"},
        {"msgtype": "m.image", "body": "cat.png", "url": "mxc://x/y"},
        {"msgtype": "m.text", "body": "   "},
        {"msgtype": "m.text"},
        {"msgtype": "m.text", "body": "x" * 70000},
    ],
)
def test_what_cannot_be_carried_is_refused_with_a_reason(content: dict) -> None:
    with pytest.raises(Unsupported) as excinfo:
        matrix_message(content, reply_to=None, edit_of=None)
    assert excinfo.value.reason in ("m.event_not_handled", "com.beeper.unsupported_event")
    assert excinfo.value.text


def test_reactions_and_redactions() -> None:
    assert matrix_reaction("👍", "G1", from_me=False).content == Content(
        reaction=Reaction(key=MessageKey(id="G1", from_me=False), text="👍")
    )
    assert matrix_reaction_removal("G1", from_me=True).content.reaction.text == ""
    assert matrix_redaction("G1").content == Content(revoke=Revoke(key=MessageKey(id="G1", from_me=True)))
    assert matrix_redaction("G1").message_type == "revoke"
    with pytest.raises(Unsupported):
        matrix_reaction("x" * 100, "G1", from_me=False)


def test_gip_to_matrix() -> None:
    assert gip_content(Content(text="*hi*")).content == {
        "msgtype": "m.text",
        "body": "*hi*",
        "format": "org.matrix.custom.html",
        "formatted_body": "<strong>hi</strong>",
    }
    reply = gip_content(Content(extended_text=ExtendedText(text="ok", context_info=ContextInfo(stanza_id="G9"))))
    assert reply.kind == "message" and reply.target == "G9"
    reaction = gip_content(Content(reaction=Reaction(key=MessageKey(id="G9", from_me=False), text="❤")))
    assert (reaction.kind, reaction.target, reaction.target_from_me, reaction.emoji) == (
        "reaction",
        "G9",
        True,
        "❤",
    )
    assert gip_content(Content(revoke=Revoke(key=MessageKey(id="G9", from_me=True)))).kind == "revoke"
    edit = gip_content(Content(edit=Edit(key=MessageKey(id="G9", from_me=True), text="new")))
    assert (edit.kind, edit.target, edit.content["body"]) == ("edit", "G9", "new")
    # Media is handed to the core with what it replies to; the content is built from the fetched file.
    photo = gip_content(Content(image=Media(caption="look", context_info=ContextInfo(stanza_id="G1"))))
    assert (photo.kind, photo.target, photo.media[0], photo.media[1].caption) == ("media", "G1", "image", "look")


BOB = Mention("123456789012@native", "@whatsapp_4915112345678:hs", "+49 151 12345678")
ALICE = Mention("1-42@interop", "@alice:hs", "alice")


def test_matrix_mentions_are_the_pills_and_m_mentions_each_once() -> None:
    content = {
        "msgtype": "m.text",
        "body": "+49 151 12345678 and alice: hi",
        "format": "org.matrix.custom.html",
        "formatted_body": '<a href="https://matrix.to/#/%40whatsapp_4915112345678%3Ahs">+49 151 12345678</a> and '
        "<a href='https://matrix.to/#/@alice:hs?via=hs'>alice</a>: hi "
        '<a href="https://matrix.to/#/!room:hs">a room</a>',
        "m.mentions": {"user_ids": ["@alice:hs", 5]},
    }
    assert matrix_mentions(content) == ["@alice:hs", "@whatsapp_4915112345678:hs"]
    assert matrix_mentions({"msgtype": "m.text", "body": "@alice:hs"}) == []


def test_a_pill_becomes_a_token_and_the_iid_is_mentioned() -> None:
    content = {
        "msgtype": "m.text",
        "body": "+49 151 12345678: *look*",
        "format": "org.matrix.custom.html",
        "formatted_body": '<a href="https://matrix.to/#/@whatsapp_4915112345678:hs">+49 151 12345678</a>: '
        "<strong>look</strong> <a href='https://matrix.to/#/@carol:hs'>carol</a>",
    }
    sent = matrix_message(content, reply_to=None, edit_of=None, mentions=[BOB])
    ext = sent.content.extended_text
    assert ext.text == "@123456789012: *look* carol", "an unresolved pill keeps its name"
    assert list(ext.context_info.mentioned) == ["123456789012@native"]
    assert ext.context_info.stanza_id == ""
    reply = matrix_message(content, reply_to="G1", edit_of=None, mentions=[BOB]).content.extended_text
    assert reply.context_info.stanza_id == "G1" and list(reply.context_info.mentioned) == ["123456789012@native"]
    edit = matrix_message(
        {"msgtype": "m.text", "body": "* x", "m.new_content": content}, reply_to=None, edit_of="G2", mentions=[BOB]
    )
    assert edit.content.edit.text.startswith("@123456789012:")


def test_a_token_becomes_a_pill_and_m_mentions() -> None:
    text = "@123456789012 and @1-42, see *this*; not @1234567890123 nor @1-42@x"
    content = Content(
        extended_text=ExtendedText(
            text=text, context_info=ContextInfo(mentioned=["123456789012@native", "1-42@interop"])
        )
    )
    assert mentioned_iids(content) == ["123456789012@native", "1-42@interop"]
    shown = gip_content(content, [BOB, ALICE]).content
    assert shown["body"] == "+49 151 12345678 and alice, see *this*; not @1234567890123 nor @1-42@x"
    assert shown["formatted_body"] == (
        '<a href="https://matrix.to/#/@whatsapp_4915112345678:hs">+49 151 12345678</a> and '
        '<a href="https://matrix.to/#/@alice:hs">alice</a>, see <strong>this</strong>; not @1234567890123 nor @1-42@x'
    )
    assert shown["m.mentions"] == {"user_ids": ["@whatsapp_4915112345678:hs", "@alice:hs"]}
    # A name that looks like HTML stays text; a plain text with a mention gets HTML for its pill.
    odd = Mention("7@native", "@p:hs", "<b>x</b>")
    plain = gip_content(Content(extended_text=ExtendedText(text="hi @7\nbye")), [odd]).content
    assert plain["formatted_body"] == 'hi <a href="https://matrix.to/#/@p:hs">&lt;b&gt;x&lt;/b&gt;</a><br/>bye'
    assert mentioned_iids(Content(text="@7")) == []
    assert mentioned_iids(Content(image=Media(context_info=ContextInfo(mentioned=["7@native"])))) == ["7@native"]
