"""Fuzzing the parsers that take bytes from the other side, with atheris (libFuzzer).

Targets: the stanza codec and the stanza parsers behind it, the Content protobuf and its
padding, Signal messages (whisper, PreKey, Sender Keys), JWTs (header and full
verification), and the Noise transport (both handshake roles and the transport frames).
A target may raise only its layer's typed errors (GipError, SignalError); anything else
is a crash.

    python bench/fuzz.py [--runs 2000000] [--target NAME ...]   # each target, in turn
    python bench/fuzz.py --one NAME --runs N                    # one target (a child run)

It prints, per target, the executions and whether it crashed, then
``fuzz_executions_total: N`` and ``fuzz_crashes: K``. A crashing input is kept in
``bench/fuzz-crashes/`` (libFuzzer's ``crash-…`` file) to replay with ``--one NAME FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = ("stanza", "content", "signal", "jwt", "noise")


def _load(name: str) -> Callable[[bytes], None]:
    """The target's test function, its modules imported under atheris' coverage
    instrumentation."""
    import atheris

    with atheris.instrument_imports(include=["bridge"]):
        from bridge.gip import groups as gp
        from bridge.gip import stanzas as st
        from bridge.gip.content import decode_content
        from bridge.gip.errors import GipError
        from bridge.gip.noise import StaticKey, XXHandshake
        from bridge.gip.stanza import decode
        from bridge.gip.tokens import SigningKey, issue_partner_token, parse_jwks, token_key_id, verify_token
        from bridge.signal.errors import SignalError
        from bridge.signal.messages import (
            PreKeySignalMessage,
            SenderKeyDistributionMessage,
            SenderKeyMessage,
            SignalMessage,
        )

    def stanza(data: bytes) -> None:
        try:
            node = decode(data)
        except GipError:
            return
        parsers: list[Callable[[], object]] = [
            lambda: st.IncomingMessage.parse(node),
            lambda: st.OutgoingMessage.parse(node),
            lambda: st.Receipt.parse(node, direction="in"),
            lambda: st.Receipt.parse(node, direction="out"),
            lambda: st.parse_bundle_list(node),
            lambda: st.parse_device_lists(node),
            lambda: st.parse_chatstate(node, direction="in"),
            lambda: st.parse_blocklist(node),
            lambda: st.parse_count(node),
            lambda: st.parse_upload_prekeys(node),
            lambda: st.parse_rotate_signed_prekey(node),
            lambda: st.parse_fetch_bundles(node),
            lambda: st.parse_get_devices(node),
            lambda: gp.parse_request(node),
            lambda: gp.GroupResult.parse(node),
            lambda: gp.parse_group_list(node),
            lambda: gp.GroupNotice.parse(node),
            lambda: gp.OutgoingGroupMessage.parse(node),
            lambda: gp.IncomingGroupMessage.parse(node),
        ]
        for parse in parsers:
            with contextlib.suppress(GipError):
                parse()

    def content(data: bytes) -> None:
        with contextlib.suppress(GipError):
            decode_content(data)

    def signal(data: bytes) -> None:
        for parse in (
            SignalMessage.deserialize,
            PreKeySignalMessage.deserialize,
            SenderKeyMessage.deserialize,
            SenderKeyDistributionMessage.deserialize,
        ):
            with contextlib.suppress(SignalError):
                parse(data)

    key = SigningKey.generate("k1")
    keys = parse_jwks({"keys": [key.public_jwk()]})
    valid = issue_partner_token(key, integrator="i", uvid="@a:b", audience="WHATSAPP", country="DE", now=1_800_000_000)
    header, _, signature = valid.split(".")

    def jwt(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        # Raw text, and a forged body between a valid header and signature.
        for token in (text, f"{header}.{text}.{signature}", f"{text}.{signature}"):
            try:
                token_key_id(token)
                verify_token(token, keys, issuer="i", audience="WHATSAPP", max_ttl=600, now=1_800_000_000)
            except GipError:
                pass
        with contextlib.suppress(GipError):
            parse_jwks(data)

    server_key, client_key = StaticKey.generate(), StaticKey.generate()

    def noise(data: bytes) -> None:
        # The responder reading a first message, the initiator reading a second one.
        responder = XXHandshake(initiator=False, static=server_key)
        initiator = XXHandshake(initiator=True, static=client_key)
        first = initiator.write()
        for side, message in ((responder, data), (initiator, data)):
            with contextlib.suppress(GipError):
                side.read(message)
        # A real handshake, then the bytes as a transport frame.
        responder = XXHandshake(initiator=False, static=server_key)
        responder.read(first)
        second = responder.write()
        try:
            initiator.read(second)
        except GipError:
            return
        third = initiator.write(b"{}")
        responder.read(third)
        assert responder.result is not None
        with contextlib.suppress(GipError):
            responder.result.decrypt(data)

    return {"stanza": stanza, "content": content, "signal": signal, "jwt": jwt, "noise": noise}[name]


# Valid inputs to start from: libFuzzer mutates these rather than finding XML or a
# protobuf from nothing.
SEEDS: dict[str, list[bytes]] = {
    "stanza": [
        b'<message from="1-5@interop" to="9.0@native" id="m1" type="text" t="1700000000">'
        b'<enc v="2" type="pkmsg">AAEC</enc></message>',
        b'<receipt from="9.0@native" to="1-5@interop" id="m1" type="read" t="1"><list><item id="m2"/></list></receipt>',
        b'<iq id="q1" type="result"><list><user jid="9.0@native"><registration>AAAA</registration>'
        b"<identity>BQ==</identity><skey><id>1</id><value>BQ==</value><signature>AA==</signature></skey>"
        b"</user></list></iq>",
        b'<chatstate from="9.0@native" to="1-5@interop"><composing/></chatstate>',
        b'<iq type="result" id="q2"><count value="7"/></iq>',
        b'<message from="1200@group" participant="1-5@interop" id="g1" type="text" t="1">'
        b'<enc v="2" type="msg">AAEC</enc><enc v="2" type="skmsg">AAEC</enc></message>',
        b'<notification id="n1" type="group" from="1200@group" participant="1-5@interop" t="1">'
        b'<add><participant jid="9@native"/></add><group jid="1200@group" subject="s" creator="1-5@interop" t="1" '
        b'phash="00"><participant jid="1-5@interop" type="admin"/></group></notification>',
    ],
    "content": [b"\x0a\x05hello\x01", b"\x12\x03\x0a\x01x\x02\x02"],
    "signal": [b"\x33\x0a\x21\x05" + bytes(32) + b"\x10\x01\x18\x00\x22\x04abcd" + bytes(8)],
    "jwt": [b'{"iss":"i","aud":"WHATSAPP","iat":1800000000,"exp":1800000300,"sub":"@a:b"}'],
    "noise": [bytes(32), bytes(96)],
}


def run_one(name: str, runs: int, extra: list[str]) -> None:
    import tempfile

    import atheris

    target = _load(name)
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for index, seed in enumerate(SEEDS[name]):
        (corpus / f"seed-{index}").write_bytes(seed)
    positional = [a for a in extra if not a.startswith("-")]
    flags = [a for a in extra if a.startswith("-")]
    atheris.Setup(
        [sys.argv[0], f"-runs={runs}", "-print_final_stats=1", *flags, *(positional or [str(corpus)])], target
    )
    atheris.Fuzz()


def run_child(name: str, runs: int, workdir: Path) -> tuple[int, bool, float]:
    """One target in its own process (libFuzzer exits at the end): executions, crashed."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, __file__, "--one", name, "--runs", str(runs), f"-artifact_prefix={workdir}/{name}-"],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    found = re.findall(r"stat::number_of_executed_units:\s+(\d+)", done.stderr)
    executions = int(found[-1]) if found else 0
    crashed = done.returncode != 0
    if crashed:
        sys.stderr.write(done.stderr[-4000:])
    return executions, crashed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2_000_000, help="executions per target")
    parser.add_argument("--target", action="append", choices=TARGETS, help="only these targets")
    parser.add_argument("--one", choices=TARGETS, help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    if args.one:
        run_one(args.one, args.runs, extra)
        return
    total = crashes = 0
    for name in args.target or TARGETS:
        executions, crashed, elapsed = run_child(name, args.runs, ROOT / "bench" / "fuzz-crashes")
        total += executions
        crashes += crashed
        print(f"{name}: {executions} executions in {elapsed:.0f} s, {'CRASHED' if crashed else 'no crash'}")
    print(f"fuzz_executions_total: {total}")
    print(f"fuzz_crashes: {crashes}")


if __name__ == "__main__":
    main()
