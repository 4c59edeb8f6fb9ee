"""The demo: brings up the stack, logs in through the bot, opens a chat and runs the
conversation of ``demo_script``, printing a transcript; then keeps running for a person to
go on from Element, with the native answering, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from devstack.demo_files import make_files
from devstack.demo_script import Conversation, StepFailed, Transcript, converse, ms
from devstack.demo_stack import INTEGRATOR, MATRIX_USER, NATIVE_UVID, DemoStack, Ports, bring_up
from devstack.element_client import ElementPeer, ElementUser, PeerError, peer_available
from devstack.stack_processes import Processes


def _notice(room: str, *texts: str) -> Any:
    return lambda e: (
        e.get("room_id") == room
        and e.get("type") == "m.room.message"
        and e["content"].get("msgtype") == "m.notice"
        and any(text in e["content"].get("body", "") for text in texts)
    )


async def _command(user: ElementUser, room: str, text: str, *answers: str, timeout: float = 30) -> str:
    """Says ``text`` to the bot; the body of its first answer containing one of ``answers``."""
    mark = await user.mark()
    await user.say(room, text)
    return (await user.wait_for(_notice(room, *answers), timeout, after=mark))["content"]["body"]


async def log_in(user: ElementUser, stack: DemoStack) -> str:
    """The consent dialogue in the management room (kept from an earlier run when there is one)."""
    started = time.time()
    room = stack.saved.management_room
    try:
        if not room:
            raise PeerError("no management room yet")
        answer = await _command(user, room, "login", "Do you agree?", "already logged in")
    except PeerError:
        mark = await user.mark()
        room = await user.create_dm(stack.bot)
        await user.wait_for(_notice(room, "Send `help`"), after=mark)
        stack.saved.management_room = room
        stack.save()
        answer = await _command(user, room, "login", "Do you agree?", "already logged in")
    if "already logged in" in answer:
        return f"already logged in on an earlier run ({ms(time.time() - started)})"
    await _command(user, room, "yes", "European Economic Area")
    await _command(user, room, "yes", "Logged in", "failed", "refused")
    for _ in range(20):
        status = await _command(user, room, "status", "Logged in as", "not logged in")
        if "Connected to the gatekeeper" in status:
            break
        await asyncio.sleep(0.5)
    else:
        raise StepFailed(status)
    return f"terms accepted, EEA declared, enlisted, connected {ms(time.time() - started)}"


async def open_chat(user: ElementUser, stack: DemoStack) -> str:
    started = time.time()
    mark = await user.mark()
    answer = await _command(user, stack.saved.management_room, f"start-chat {NATIVE_UVID}", "Opened a chat", "⚠", "not")
    if "Opened a chat" not in answer:
        raise StepFailed(answer)
    portal = answer.rsplit("/", 1)[1]
    if portal != stack.saved.portal:
        await user.wait_for(
            lambda e: (
                e.get("room_id") == portal
                and e.get("type") == "m.room.member"
                and e.get("state_key") == user.mxid
                and e["content"].get("membership") == "join"
            ),
            60,
            after=mark,
        )
        stack.saved.portal = portal
        stack.save()
    return f"encrypted portal room with the puppet {ms(time.time() - started)}"


async def answer_forever(stack: DemoStack, partner: str) -> None:
    """The native's phone for chatting by hand: it reads, and answers what it receives."""
    sandbox, native = stack.sandbox, stack.saved.native_iid
    await sandbox.control("POST", f"/natives/{native}/opt_in", {"opted_in": True, "read_receipts": True})
    events = await sandbox.events(native)
    seen, answered = (events[-1]["seq"] if events else 0), set()
    while True:
        for event in await sandbox.events(native, after=seen):
            seen = event["seq"]
            if event["event"] != "message" or event["id"] in answered:
                continue
            answered.add(event["id"])  # each of its two devices logs the message
            content = event["content"]
            text = content.get("text") or content.get("extendedText", {}).get("text")
            kind = next((k for k in ("image", "video", "audio", "document") if k in content), None)
            if text:
                reply = f"You said: {text}"
            elif kind:
                reply = f"Got your {kind} ({int(content[kind].get('fileLength', 0)) // 1024} KiB)"
            else:
                continue
            body = {"to": partner, "text": reply, "reply_to": {"id": event["id"]}}
            with contextlib.suppress(AssertionError, aiohttp.ClientError):
                await sandbox.control("POST", f"/natives/{native}/send", body)
        await asyncio.sleep(0.5)


async def demo(directory: Path, ports: Ports, once: bool, out: TextIO, processes: Processes) -> int:
    started = time.time()
    print("matrix-dma-bridge demo: the sandbox gatekeeper, Synapse and the bridge on loopback (SQLite),", file=out)
    print(f"with Element's crypto stack as the Matrix client. Logs: {processes.logs}/\n", file=out, flush=True)
    if not peer_available():
        raise RuntimeError("the Element-stack client is not installed: run scripts/setup.sh")
    async with aiohttp.ClientSession() as http:
        stack = await bring_up(directory, ports, processes, http)
        print(f"  everything up in {ms(time.time() - started)}\n", file=out, flush=True)
        files = make_files(directory / "files")
        peer = await ElementPeer.start(processes.log("element"))
        user: ElementUser | None = None
        try:
            user = await peer.login("demo-script", stack.synapse.base, MATRIX_USER, stack.saved.password)
            transcript = Transcript(out)
            ok = await transcript.step("log in through the bot", lambda: log_in(user, stack))
            ok = ok and await transcript.step("start a chat with " + NATIVE_UVID, lambda: open_chat(user, stack))
            partner = ""
            if ok:
                query = f"/partners?integrator={INTEGRATOR}&uvid={stack.user}"
                partner = (await stack.sandbox.control("GET", query))["iid"]
                scratch = directory / "received"
                scratch.mkdir(exist_ok=True)
                chat = Conversation(
                    user, stack.sandbox, stack.saved.portal, stack.saved.native_iid, partner, files, scratch
                )
                await converse(chat, transcript)
            total = transcript.worked + len(transcript.failed)
            verdict = "every step worked" if not transcript.failed else f"{len(transcript.failed)} did not"
            print(f"\n  {transcript.worked} of {total} steps, {verdict}, in {ms(time.time() - started)}.", file=out)
            if transcript.failed:
                print(f"  The logs say why: {processes.logs}/bridge.log", file=out)
            if once:
                return 0 if not transcript.failed else 1
            print(continue_by_hand(stack), file=out, flush=True)
            if partner:
                await answer_forever(stack, partner)
            else:
                await asyncio.Event().wait()
            return 0
        finally:
            if user is not None:
                with contextlib.suppress(PeerError, TimeoutError):
                    await asyncio.wait_for(user.log_out(), 10)
            await peer.close()


def continue_by_hand(stack: DemoStack) -> str:
    return f"""
The demo keeps running. Go on by hand from Element (or any Matrix client):
  homeserver  {stack.synapse.base}
  user        {MATRIX_USER}
  password    {stack.saved.password}
The chat with {NATIVE_UVID} is in the room list; the simulated WhatsApp user reads and
answers what you send. The bridge bot is {stack.bot} (send it `help`).
Metrics: http://127.0.0.1:{stack.ports.metrics}/metrics    Logs: {stack.processes.logs}/
Ctrl-C stops everything this demo started.
"""


async def main(directory: Path, ports: Ports, once: bool, out: TextIO) -> int:
    """Runs the demo until it ends or a signal comes; stops every process it started."""
    processes = Processes(directory / "logs")
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    work = asyncio.create_task(demo(directory, ports, once, out, processes))
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            print("\nStopping …", file=out, flush=True)
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            return 130
        try:
            return work.result()
        except (RuntimeError, AssertionError, OSError, aiohttp.ClientError) as exc:
            print(f"\nThe demo could not start: {exc}", file=out)
            for name in ("sandbox", "synapse", "bridge"):
                if tail := processes.tail(name, 15):
                    print(f"--- the end of {processes.log(name)}\n{tail}", file=out)
            return 1
    finally:
        stop.cancel()
        stopped = time.time()
        await asyncio.to_thread(processes.stop_all)
        print(f"Stopped everything in {ms(time.time() - stopped)}.", file=out, flush=True)
