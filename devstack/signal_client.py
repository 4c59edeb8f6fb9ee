"""Drives the Node Signal peer (devstack/signal/peer.js) over JSON lines.

Used by the interop tests and by bench/signal_bench.py. The peer wraps official libsignal
(@signalapp/libsignal-client 0.72.1) and libsignal-node 6.0.0; see peer.js.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

from devstack.node import node

PEER_DIR = Path(__file__).parent / "signal"
IMPLEMENTATIONS = ("libsignal-client", "libsignal-node")


class PeerError(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


def peer_available() -> bool:
    return node() is not None and (PEER_DIR / "node_modules").is_dir()


class NodeSignalPeer:
    """One Node process holding any number of named parties."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [node() or "node", str(PEER_DIR / "peer.js")],
            cwd=PEER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._ids = itertools.count(1)

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        request_id = next(self._ids)
        self._proc.stdin.write(json.dumps({"id": request_id, "op": op, **kwargs}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the Node Signal peer exited")
        answer = json.loads(line)
        assert answer["id"] == request_id
        if not answer["ok"]:
            raise PeerError(answer["error"], answer["code"])
        return answer

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()


class RemoteParty:
    """A device living in the Node peer, with the same verbs as the Python test party."""

    def __init__(self, peer: NodeSignalPeer, name: str, impl: str, registration_id: int) -> None:
        self.peer = peer
        self.name = name
        self.impl = impl
        self.registration_id = registration_id
        self.identity_key = unb64(
            peer.call("new_party", party=name, impl=impl, registration_id=registration_id)["identity_key"]
        )
        self._prekey_ids = itertools.count(1)

    def address(self) -> dict[str, Any]:
        return {"name": self.name, "device_id": 1}

    def make_bundle(self, *, one_time: bool) -> dict[str, Any]:
        n = next(self._prekey_ids)
        return self.peer.call("make_bundle", party=self.name, one_time=one_time, signed_pre_key_id=n, pre_key_id=n)[
            "bundle"
        ]

    def process_bundle(self, peer_name: str, bundle: dict[str, Any]) -> None:
        self.peer.call(
            "process_bundle",
            party=self.name,
            peer={"name": peer_name, "device_id": 1},
            bundle=bundle,
        )

    def encrypt(self, peer_name: str, plaintext: bytes) -> tuple[int, bytes]:
        answer = self.peer.call(
            "encrypt",
            party=self.name,
            peer={"name": peer_name, "device_id": 1},
            plaintext=b64(plaintext),
        )
        return answer["type"], unb64(answer["body"])

    def decrypt(self, peer_name: str, message_type: int, body: bytes) -> bytes:
        answer = self.peer.call(
            "decrypt",
            party=self.name,
            peer={"name": peer_name, "device_id": 1},
            type=int(message_type),
            body=b64(body),
        )
        return unb64(answer["plaintext"])

    def sign(self, message: bytes) -> bytes:
        return unb64(self.peer.call("sign", party=self.name, message=b64(message))["signature"])

    def reinstall(self) -> None:
        self.identity_key = unb64(self.peer.call("reinstall", party=self.name)["identity_key"])
