"""The demo's conversation: an Element-stack client (matrix-js-sdk, Rust crypto) and a
native WhatsApp user with two devices exchange every kind of message both ways through
the bridge, encrypted on both legs, and each step prints the time its hops took.

Times are wall-clock on this machine: Element's records carry when it saw an event, the
sandbox logs when a native device decrypted one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from devstack.demo_files import DemoFile
from devstack.element_client import ElementUser
from devstack.sandbox import RemoteSandbox

STATUS = "com.beeper.message_send_status"
NATIVE_DEVICES = 2


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


class StepFailed(Exception):
    pass


@dataclass
class Transcript:
    out: TextIO
    worked: int = 0
    failed: list[str] = field(default_factory=list)

    def line(self, ok: bool, step: str, detail: str) -> None:
        print(f"  {'✓' if ok else '✗'} {step:<36} {detail}", file=self.out, flush=True)
        if ok:
            self.worked += 1
        else:
            self.failed.append(step)

    def skipped(self, step: str) -> None:
        print(f"  - {step:<36} skipped", file=self.out, flush=True)
        self.failed.append(step)

    async def step(self, step: str, action: Callable[[], Awaitable[str]], timeout: float = 90) -> bool:
        """Runs one step; its result is the hops line. A failure is printed, not raised."""
        try:
            self.line(True, step, await asyncio.wait_for(action(), timeout))
            return True
        except TimeoutError:
            self.line(False, step, f"nothing after {timeout:.0f} s")
        except (StepFailed, AssertionError, RuntimeError) as exc:
            self.line(False, step, str(exc) or type(exc).__name__)
        except Exception as exc:  # whatever broke, the transcript says which step and why
            self.line(False, step, f"{type(exc).__name__}: {exc}")
        return False


def _in(room: str, event_type: str = "m.room.message") -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("room_id") == room and e.get("type") == event_type


@dataclass
class Conversation:
    """One portal between the Element user and the native, and the ids on both sides."""

    user: ElementUser
    sandbox: RemoteSandbox
    portal: str
    native: str
    partner: str
    files: dict[str, DemoFile]
    scratch: Path
    # A message's id on the other side: Matrix event id ⇄ the gatekeeper's stanza id.
    stanza_of: dict[str, str] = field(default_factory=dict)
    event_of: dict[str, str] = field(default_factory=dict)
    # The Matrix event ids of what each side sent, in order.
    from_me: list[str] = field(default_factory=list)
    from_them: list[str] = field(default_factory=list)

    async def _native_seq(self) -> int:
        events = await self.sandbox.events(self.native)
        return events[-1]["seq"] if events else 0

    async def _at_native(
        self, after: int, predicate: Callable[[dict[str, Any]], bool], devices: int = NATIVE_DEVICES
    ) -> list[dict[str, Any]]:
        """The native's log entries after ``after`` that match, once ``devices`` devices have one."""
        while True:
            found = [e for e in await self.sandbox.events(self.native, after=after) if predicate(e)]
            if len({e["device"] for e in found}) >= devices:
                return found
            undecryptable = [e for e in await self.sandbox.events(self.native, "undecryptable", after)]
            if undecryptable:
                raise StepFailed(f"a native device could not decrypt it ({undecryptable[0]['error']})")
            await asyncio.sleep(0.05)

    async def _status(self, event_id: str) -> float:
        event = await self.user.wait_for(
            lambda e: e.get("type") == STATUS and e["content"].get("m.relates_to", {}).get("event_id") == event_id
        )
        if event["content"].get("status") != "SUCCESS":
            raise StepFailed(f"the bridge reported {event['content'].get('status')}: {event['content'].get('reason')}")
        return event["received_at"] / 1000

    # ------------------------------------------------------------------ Element → WhatsApp

    async def from_element(
        self,
        event_type: str,
        content: dict[str, Any],
        check: Callable[[dict[str, Any]], bool],
        *,
        file: DemoFile | None = None,
    ) -> str:
        """Sends from Element; waits until both native devices decrypted a Content that
        passes ``check`` (and, for a file, the phone fetched it byte for byte) and the
        bridge's status came back."""
        after = await self._native_seq()
        started = time.time()
        if file is None:
            event_id = await self.user.send(self.portal, event_type, content)
        else:
            event_id = (await self.user.send_file(self.portal, file.path, content))["eventId"]
        sent = time.time()
        messages = await self._at_native(after, lambda e: e["event"] == "message" and check(e["content"]))
        self.stanza_of[event_id] = messages[0]["id"]
        self.event_of[messages[0]["id"]] = event_id
        self.from_me.append(event_id)
        phones = max(e["logged_at"] for e in messages)
        hops = [f"{'encrypted, uploaded, sent' if file else 'to Synapse'} {ms(sent - started)}"]
        hops.append(f"on {NATIVE_DEVICES} WhatsApp devices +{ms(phones - sent)}")
        if file is not None:
            fetched = (await self._at_native(after, lambda e: e["event"] == "media", devices=1))[0]
            if not fetched.get("ok") or fetched.get("sha256") != file.sha256:
                raise StepFailed(f"the phone got a different file: {fetched}")
            hops.append(f"phone fetched it, byte for byte +{ms(fetched['logged_at'] - sent)}")
        status = await self._status(event_id)
        hops.append(f"✓ sent, in Element +{ms(status - sent)}")
        return " · ".join(hops)

    # ------------------------------------------------------------------ WhatsApp → Element

    async def from_native(
        self,
        send: dict[str, Any],
        check: Callable[[dict[str, Any]], bool],
        *,
        event_type: str = "m.room.message",
        device: int = 0,
        file: DemoFile | None = None,
    ) -> str:
        """A native device sends; waits until Element decrypted an event that passes ``check``."""
        mark = await self.user.mark()
        started = time.time()
        stanza = (
            await self.sandbox.control(
                "POST", f"/natives/{self.native}/send", {"to": self.partner, "device": device, **send}
            )
        )["id"]
        sent = time.time()
        event = await self.user.wait_for(lambda e: _in(self.portal, event_type)(e) and check(e), 60, after=mark)
        if not event["encrypted"]:
            raise StepFailed("it arrived unencrypted in an encrypted portal")
        self.event_of[stanza] = event["event_id"]
        self.stanza_of[event["event_id"]] = stanza
        self.from_them.append(event["event_id"])
        arrived = event["received_at"] / 1000
        who = "the second device" if device else "the phone"
        hops = [f"{who} → gatekeeper {ms(sent - started)}", f"→ bridge → Element +{ms(arrived - sent)}"]
        if file is not None:
            got = await self.user.download(event["content"], self.scratch / file.path.name)
            if got["sha256"] != file.sha256:
                raise StepFailed("Element got a different file")
            hops.append(f"downloaded, byte for byte +{ms(time.time() - arrived)}")
        return " · ".join(hops)

    # ------------------------------------------------------------------ read receipts

    async def native_reads(self, event_id: str) -> str:
        mark = await self.user.mark()
        started = time.time()
        body = {"to": self.partner, "ids": [self.stanza_of[event_id]]}
        await self.sandbox.control("POST", f"/natives/{self.native}/read", body)
        receipt = await self.user.wait_for(
            lambda e: _in(self.portal, "m.receipt")(e) and event_id in e["content"], 60, after=mark
        )
        return f"read on the phone → ✓✓ in Element {ms(receipt['received_at'] / 1000 - started)}"

    async def element_reads(self, event_id: str) -> str:
        after = await self._native_seq()
        started = time.time()
        await self.user.read(self.portal, event_id)
        stanza = self.stanza_of[event_id]
        receipts = await self._at_native(
            after,
            lambda e: e["event"] == "receipt" and e.get("type") == "read" and stanza in e.get("ids", [e.get("id")]),
            devices=1,
        )
        return f"read in Element → blue ticks on the phone {ms(receipts[0]['logged_at'] - started)}"


def _text(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


def _relation(event: dict[str, Any]) -> dict[str, Any]:
    return event["content"].get("m.relates_to", {})


def script(chat: Conversation) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
    """Every kind of message once each way, then read receipts both ways. Each step is
    made when it runs: it refers to the ids of the steps before it."""
    photo, document, voice = chat.files["photo"], chat.files["document"], chat.files["voice"]

    def mine() -> str:  # Element's first message, and its id at the gatekeeper
        return chat.from_me[0]

    def theirs() -> str:  # the native's first message
        return chat.from_them[0]

    def stanza(event_id: str) -> str:
        return chat.stanza_of[event_id]

    def key_id(content: dict[str, Any], field_name: str) -> str | None:
        return content.get(field_name, {}).get("key", {}).get("id")

    hello, hi = "Hello from Element 👋", "Hi! Greetings from WhatsApp"
    voice_content = {
        "msgtype": "m.audio",
        "body": "Voice message.ogg",
        "info": {"mimetype": voice.mimetype, "duration": 2000},
        "org.matrix.msc1767.audio": {"duration": 2000, "waveform": [200, 600, 1024, 600, 200] * 8},
        "org.matrix.msc3245.voice": {},
    }
    native_voice = {"kind": "audio", "path": str(voice.path), "mimetype": "audio/ogg; codecs=opus", "ptt": True}
    return [
        (
            "text         Element → WhatsApp",
            lambda: chat.from_element("m.room.message", _text(hello), lambda c: c.get("text") == hello),
        ),
        (
            "text         WhatsApp → Element",
            lambda: chat.from_native({"text": hi}, lambda e: e["content"].get("body") == hi, device=1),
        ),
        (
            "reply        Element → WhatsApp",
            lambda: chat.from_element(
                "m.room.message",
                {**_text("Nice to meet you"), "m.relates_to": {"m.in_reply_to": {"event_id": theirs()}}},
                lambda c: c.get("extendedText", {}).get("contextInfo", {}).get("stanzaId") == stanza(theirs()),
            ),
        ),
        (
            "reply        WhatsApp → Element",
            lambda: chat.from_native(
                {"text": "Likewise!", "reply_to": {"id": stanza(mine())}},
                lambda e: _relation(e).get("m.in_reply_to", {}).get("event_id") == mine(),
            ),
        ),
        (
            "reaction     Element → WhatsApp",
            lambda: chat.from_element(
                "m.reaction",
                {"m.relates_to": {"rel_type": "m.annotation", "event_id": theirs(), "key": "👍"}},
                lambda c: key_id(c, "reaction") == stanza(theirs()),
            ),
        ),
        (
            "reaction     WhatsApp → Element",
            lambda: chat.from_native(
                {"reaction": {"id": stanza(mine()), "emoji": "❤️"}},
                lambda e: _relation(e).get("event_id") == mine(),
                event_type="m.reaction",
            ),
        ),
        (
            "edit         Element → WhatsApp",
            lambda: chat.from_element(
                "m.room.message",
                {
                    **_text(f"* {hello} (edited)"),
                    "m.new_content": _text(f"{hello} (edited)"),
                    "m.relates_to": {"rel_type": "m.replace", "event_id": mine()},
                },
                lambda c: key_id(c, "edit") == stanza(mine()),
            ),
        ),
        (
            "edit         WhatsApp → Element",
            lambda: chat.from_native(
                {"edit": {"id": stanza(theirs()), "text": f"{hi} (edited)"}},
                lambda e: _relation(e) == {"rel_type": "m.replace", "event_id": theirs()},
            ),
        ),
        (
            "image        Element → WhatsApp",
            lambda: chat.from_element(
                "m.room.message",
                {"msgtype": "m.image", "body": "photo.jpg", "info": {"mimetype": photo.mimetype, "w": 800, "h": 600}},
                lambda c: "image" in c,
                file=photo,
            ),
        ),
        (
            "image        WhatsApp → Element",
            lambda: chat.from_native(
                {"media": {"kind": "image", "path": str(photo.path), "mimetype": photo.mimetype, "caption": "sunset"}},
                lambda e: e["content"].get("msgtype") == "m.image",
                file=photo,
            ),
        ),
        (
            "file         Element → WhatsApp",
            lambda: chat.from_element(
                "m.room.message",
                {"msgtype": "m.file", "body": "notes.pdf", "info": {"mimetype": document.mimetype}},
                lambda c: "document" in c,
                file=document,
            ),
        ),
        (
            "file         WhatsApp → Element",
            lambda: chat.from_native(
                {"media": {"kind": "document", "path": str(document.path), "mimetype": document.mimetype}},
                lambda e: e["content"].get("msgtype") == "m.file",
                file=document,
            ),
        ),
        (
            "voice note   Element → WhatsApp",
            lambda: chat.from_element(
                "m.room.message", voice_content, lambda c: c.get("audio", {}).get("ptt") is True, file=voice
            ),
        ),
        (
            "voice note   WhatsApp → Element",
            lambda: chat.from_native(
                {"media": {**native_voice, "seconds": 2}},
                lambda e: "org.matrix.msc3245.voice" in e["content"],
                file=voice,
            ),
        ),
        ("read receipt WhatsApp → Element", lambda: chat.native_reads(chat.from_me[-1])),
        ("read receipt Element → WhatsApp", lambda: chat.element_reads(chat.from_them[-1])),
    ]


async def converse(chat: Conversation, transcript: Transcript) -> None:
    """Runs the script; after a failed step the rest is skipped (each needs the ones before)."""
    steps = script(chat)
    for index, (label, make) in enumerate(steps):
        if not await transcript.step(label, make):
            for later, _ in steps[index + 1 :]:
                transcript.skipped(later)
            return
