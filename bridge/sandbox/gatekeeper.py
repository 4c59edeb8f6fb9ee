"""The gatekeeper's behaviour: enlistment, connection checks, routing, natives.

Transport-independent: the HTTP and chat layers (``http.py``, ``chat.py``) call in here.
Every stanza for a Partner user goes through its durable mailbox first and leaves it only
on that user's receipt or ack; a Partner's message is acknowledged only after the
native devices processed it and the result is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from google.protobuf.json_format import MessageToDict

from bridge.gip import stanzas as st
from bridge.gip.content import Content, decode_content, encode_content
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.groups import is_group
from bridge.gip.jid import NATIVE_SERVER, PARTNER_SERVER, Jid
from bridge.gip.media import MEDIA_TYPES, EncryptedMedia, MediaDecryptor, MediaType, encrypt_file, file_chunks
from bridge.gip.noise import StaticKey
from bridge.gip.stanza import Node, decode, encode
from bridge.gip.tokens import (
    PARTNER_TOKEN_MAX_TTL,
    JwksFetcher,
    SigningKey,
    issue_gatekeeper_token,
)
from bridge.signal import PublicKey, SignalError
from bridge.tasks import BackgroundTasks

from .clock import Clock
from .config import SandboxConfig
from .groups import SandboxGroups
from .natives import NativeDevice
from .policy import Faults, RateWindow, valid_native_uvid
from .store import DeviceKeys, SandboxStore, User

log = logging.getLogger(__name__)

DAY = 86400.0
MAX_NATIVE_DEVICES = 5
ENLIST_FIELDS = {
    "authkey": 32,
    "e_keytype": 1,
    "e_regid": 4,
    "e_ident": 32,
    "e_skey_id": 3,
    "e_skey_val": 32,
    "e_skey_sig": 64,
}
MEDIA_KIND = MEDIA_TYPES


class PartnerConnection(Protocol):
    iid: str
    # False until the mailbox was flushed: until then new stanzas wait in the mailbox, so
    # that nothing is sent twice or out of order.
    ready: bool

    async def send_raw(self, stanza: bytes) -> None: ...

    async def kick(self, failure: Node) -> None: ...


@dataclass
class _Runtime:
    connections: dict[str, PartnerConnection] = field(default_factory=dict)  # the current one per user
    live: set[PartnerConnection] = field(default_factory=set)  # every open one, for shutdown
    message_windows: dict[str, RateWindow] = field(default_factory=dict)
    enlist_windows: dict[str, RateWindow] = field(default_factory=dict)
    low_prekey_notified: set[str] = field(default_factory=set)
    tasks: BackgroundTasks = field(default_factory=BackgroundTasks)


def _b64url(value: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


class Gatekeeper:
    def __init__(
        self,
        config: SandboxConfig,
        store: SandboxStore,
        clock: Clock | None = None,
        *,
        http: aiohttp.ClientSession | None = None,
        media_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock or Clock()
        self.faults = Faults()
        self._http = http
        self._rt = _Runtime()
        self._batch: list[tuple[str, bytes]] | None = None
        self._batch_lock = asyncio.Lock()
        self.media_dir = media_dir or Path(config.media_dir)
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self.signing_key = self._load_signing_key()
        self.noise_static = self._load_noise_static()
        self._jwks = {
            i.id: JwksFetcher(self._fetcher(i.jwks_url), clock=lambda: self.clock.now()) for i in config.integrators
        }
        self.groups = SandboxGroups(self)

    @staticmethod
    def new_stanza_id() -> str:
        return secrets.token_hex(10).upper()

    @staticmethod
    def encode(node: Node) -> bytes:
        return encode(node)

    # ------------------------------------------------------------------ set-up

    def _load_signing_key(self) -> SigningKey:
        pem, kid = self.store.get_meta("signing_key"), self.store.get_meta("signing_kid")
        if pem is not None and kid is not None:
            return SigningKey.from_pem(kid.decode(), pem)
        key = SigningKey.generate()
        self.store.set_meta("signing_key", key.private_pem())
        self.store.set_meta("signing_kid", key.kid.encode())
        return key

    def _load_noise_static(self) -> StaticKey:
        private = self.store.get_meta("noise_static")
        if private is None:
            key = StaticKey.generate()
            self.store.set_meta("noise_static", key.private)
            return key
        return StaticKey.from_private(private)

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    def _fetcher(self, url: str) -> Callable[[], Awaitable[bytes]]:
        async def fetch() -> bytes:
            async with self.http.get(url) as response:
                if response.status != 200:
                    raise GipError(GipErrorCode.TOKEN, f"JWKS fetch answered {response.status}")
                return await response.read()

        return fetch

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        """Run in the background with a strong reference; failures are logged."""
        self._rt.tasks.spawn(coro, name)

    async def disconnect_all(self) -> None:
        """Close every chat connection with 503 (shutting down: try later)."""
        for connection in list(self._rt.live):
            await connection.kick(st.failure(GipErrorCode.UNAVAILABLE))
        self._rt.connections.clear()

    async def close(self) -> None:
        self._rt.tasks.cancel()
        if self._http is not None:
            await self._http.close()

    async def settle(self) -> None:
        """Wait for background work (pushes, media fetches) to finish; for tests."""
        await self._rt.tasks.settle()

    # ------------------------------------------------------------------ enlistment (§2)

    async def enlist(self, form: dict[str, str]) -> dict[str, str]:
        """``POST /3p/interop_reg``; always a JSON body for an HTTP 200."""

        def fail(reason: str) -> dict[str, str]:
            return {"status": "fail", "reason": reason}

        if form.get("v") != "1":
            return fail("version")
        token = form.get("token", "")
        if not token or len(token) > 4096:
            return fail("bad_token")
        try:
            issuer = _unverified_issuer(token)
        except GipError:
            return fail("bad_token")
        integrator = self.config.integrator(issuer or "")
        if integrator is None:
            return fail("bad_integrator")
        window = self._rt.enlist_windows.setdefault(
            integrator.id, RateWindow(self.config.policies.rate_limits.enlistments_per_hour, 3600)
        )
        if window.hit(self.clock.now()) is not None:
            return fail("rate_limited")
        try:
            claims = await self._verify_partner_token(token, integrator.id)
        except GipError:
            return fail("bad_token")
        values: dict[str, bytes] = {}
        for name, length in ENLIST_FIELDS.items():
            try:
                value = _b64url(form.get(name, ""))
            except ValueError:
                return fail("bad_signature")
            if len(value) != length:
                return fail("bad_signature")
            values[name] = value
        if values["e_keytype"] != b"\x05":
            return fail("bad_signature")
        identity = PublicKey(values["e_ident"])
        signed = PublicKey(values["e_skey_val"]).serialize()
        if not identity.verify(signed, values["e_skey_sig"]):
            return fail("bad_signature")
        if str(claims.get("loc", "")).upper() not in self.config.policies.eea_countries:
            return fail("not_eea")
        uvid = str(claims["sub"])
        now = self.clock.now()
        existing = self.store.partner_by_uvid(integrator.id, uvid)
        iid = existing.iid if existing else f"1-{secrets.randbelow(10**14):014d}@{PARTNER_SERVER}"
        with self.store.transaction():
            if existing is None:
                self.store.insert_user(
                    iid,
                    "partner",
                    uvid,
                    now,
                    integrator=integrator.id,
                    authkey=values["authkey"],
                    country=str(claims.get("loc")),
                    last_connected_at=now,
                )
            else:
                self.store.update_user(
                    iid, authkey=values["authkey"], country=str(claims.get("loc")), last_connected_at=now
                )
        changed = self.store.put_device(
            DeviceKeys(
                iid,
                iid,
                0,
                int.from_bytes(values["e_regid"], "big"),
                values["e_ident"],
                int.from_bytes(values["e_skey_id"], "big"),
                values["e_skey_val"],
                values["e_skey_sig"],
            )
        )
        if changed:
            # Re-enlisting with new keys replaced the device: every peer must be told.
            old = self._rt.connections.get(iid)
            if old is not None:
                await old.kick(st.failure(GipErrorCode.CONFLICT))
            for contact in self.store.contacts_of(iid):
                self._log_native(contact, "-", {"event": "identity_changed", "peer": iid})
        return {"status": "ok", "login": iid}

    async def _verify_partner_token(self, token: str, integrator: str) -> dict[str, Any]:
        fetcher = self._jwks[integrator]
        claims = await fetcher.verify(
            token,
            issuer=integrator,
            audience=self.config.name,
            max_ttl=PARTNER_TOKEN_MAX_TTL,
            now=self.clock.now(),
            required=("iss", "sub", "aud", "iat", "exp", "jti", "loc"),
        )
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise GipError(GipErrorCode.TOKEN, "token has no subject")
        return claims

    # ------------------------------------------------------------------ connecting (§3)

    async def authenticate(self, payload: dict[str, Any], remote_static: bytes) -> User:
        """Check a chat connection's handshake payload; raises GipError with the failure code."""
        if payload.get("v") != 1:
            raise GipError(GipErrorCode.VERSION, "unsupported protocol version")
        login = payload.get("login")
        user = self.store.user(login) if isinstance(login, str) else None
        if user is None or user.kind != "partner":
            raise GipError(GipErrorCode.NOT_ENLISTED, "not enlisted")
        refusal = self.faults.refuse_next_connect.pop(user.iid, None) or self.faults.refuse_next_connect.pop("*", None)
        if refusal is not None:
            raise GipError(refusal, "refused by the sandbox control API", retry_after=5)
        if user.authkey is None or not secrets.compare_digest(user.authkey, remote_static):
            raise GipError(GipErrorCode.UNAUTHORIZED, "static key does not match the enlisted one")
        token = payload.get("token")
        try:
            claims = await self._verify_partner_token(token if isinstance(token, str) else "", user.integrator)
        except GipError:
            raise GipError(GipErrorCode.UNAUTHORIZED, "bad token") from None
        if claims["sub"] != user.uvid:
            raise GipError(GipErrorCode.UNAUTHORIZED, "token is for another user")
        now = self.clock.now()
        last = user.last_connected_at or user.created_at
        if now - last > self.config.policies.unenlist_after_days * DAY:
            await self.opt_out(user.iid)
            raise GipError(GipErrorCode.UNENLISTED, "un-enlisted after 30 days without a connection")
        if user.suspended:
            raise GipError(GipErrorCode.FORBIDDEN, "suspended")
        country = str(claims.get("loc", "")).upper()
        if user.eea_blocked or country not in self.config.policies.eea_countries:
            raise GipError(GipErrorCode.NOT_IN_EEA, "not located in the EEA")
        if self.config.policies.strict_proxy and not payload.get("client_ip"):
            raise GipError(GipErrorCode.UNAUTHORIZED, "client_ip is required in strict proxy mode")
        return user

    async def attach(self, connection: PartnerConnection) -> int:
        """Register a connection (closing an older one with 409); returns the mailbox size."""
        old = self._rt.connections.get(connection.iid)
        if old is not None and old is not connection and self.config.policies.one_connection_per_device:
            await old.kick(st.failure(GipErrorCode.CONFLICT))
        self._rt.connections[connection.iid] = connection
        self._rt.live.add(connection)
        now = self.clock.now()
        self.store.update_user(connection.iid, last_connected_at=now, pushed=0)
        self.expire(now)
        return self.store.mailbox_count(connection.iid)

    def detach(self, connection: PartnerConnection) -> None:
        self._rt.live.discard(connection)
        if self._rt.connections.get(connection.iid) is connection:
            del self._rt.connections[connection.iid]

    def connection(self, iid: str) -> PartnerConnection | None:
        return self._rt.connections.get(iid)

    async def flush_mailbox(self, connection: PartnerConnection) -> None:
        """Send what waited while the user was away, then let new stanzas through."""
        pending = self.store.pending(connection.iid)
        await connection.send_raw(encode(st.offline_marker(len(pending))))
        last = 0
        while pending:
            for item in pending:
                await connection.send_raw(_mark_offline(item.stanza) if item.kind == "message" else item.stanza)
            last = pending[-1].seq
            pending = self.store.pending(connection.iid, last)
        connection.ready = True

    def expire(self, now: float) -> None:
        days = self.config.policies.mailbox_days
        self.store.expire_mailbox(now - days * DAY)
        for row in self.store.expired_media(now - days * DAY):
            Path(row["path"]).unlink(missing_ok=True)
            self.store.delete_media(row["ref"])

    async def kick(self, iid: str, code: GipErrorCode) -> bool:
        connection = self._rt.connections.pop(iid, None)
        if connection is None:
            return False
        await connection.kick(st.failure(code))
        return True

    # ------------------------------------------------------------------ delivery to Partners

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Group the writes of one stanza into one durable commit (one fsync instead of
        several), and send what they queued only after that commit."""
        if self._batch is not None:
            yield
            return
        async with self._batch_lock:
            self._batch = []
            try:
                with self.store.transaction():
                    yield
                sends = self._batch
            finally:
                self._batch = None
            for recipient, data in sends:
                await self._send_or_push(recipient, data)

    async def deliver(self, recipient: str, kind: str, stanza_id: str, sender: str, node: Node) -> None:
        """Store a stanza in the recipient's mailbox, then (after commit) send it or push."""
        data = encode(node)
        self.store.enqueue(recipient, kind, stanza_id, sender, data, self.clock.now())
        if self._batch is not None:
            self._batch.append((recipient, data))
            return
        await self._send_or_push(recipient, data)

    async def _send_or_push(self, recipient: str, data: bytes) -> None:
        connection = self._rt.connections.get(recipient)
        if connection is not None and not connection.ready:
            return  # the flush in progress will send it
        if connection is not None:
            try:
                await connection.send_raw(data)
                return
            except (GipError, ConnectionError, RuntimeError):
                self.detach(connection)
        user = self.store.user(recipient)
        if user is not None and not user.pushed:
            self.store.update_user(recipient, pushed=1)
            self.spawn(self.push(user), f"push {recipient}")

    async def push(self, user: User) -> None:
        integrator = self.config.integrator(user.integrator)
        if integrator is None:
            return
        token = issue_gatekeeper_token(
            self.signing_key, issuer=self.config.name, audience=integrator.id, now=self.clock.now()
        )
        async with self.http.post(
            integrator.push_url, json={"to": user.uvid}, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            if response.status != 200:
                log.warning("push to %s answered %s", integrator.id, response.status)
                self.store.update_user(user.iid, pushed=0)

    async def notify(self, recipient: str, kind: str, sender: Jid | None, *children: Node) -> None:
        stanza_id = secrets.token_hex(8)
        node = st.notification(stanza_id, kind, sender, *children)
        await self.deliver(recipient, "notification", stanza_id, str(sender or ""), node)

    # ------------------------------------------------------------------ keys (§4)

    def upload_prekeys(self, iid: str, keys: list[st.PreKey]) -> None:
        self.store.add_prekeys(iid, [(k.id, k.public) for k in keys])
        self._rt.low_prekey_notified.discard(iid)

    def bundle_for(self, jid: Jid) -> st.Bundle | st.BundleError:
        device = self.store.device(str(jid))
        if device is None:
            return st.BundleError(jid, GipErrorCode.NOT_FOUND)
        prekey = self.store.take_prekey(str(jid))
        return st.Bundle(
            jid,
            device.registration_id,
            device.identity,
            st.SignedPreKey(device.spk_id, device.spk_pub, device.spk_sig),
            st.PreKey(*prekey) if prekey else None,
        )

    async def fetch_bundles(self, requester: User, jids: list[Jid]) -> list[st.Bundle | st.BundleError]:
        results: list[st.Bundle | st.BundleError] = []
        for jid in jids:
            target = self.store.user(str(jid.bare))
            hidden = target is not None and target.kind == "native" and not self.reachable(requester, target)
            if target is None or (hidden and not self.groups.shares_group(requester.iid, target.iid)):
                results.append(st.BundleError(jid, GipErrorCode.NOT_FOUND))
                continue
            results.append(self.bundle_for(jid))
            if target.kind == "partner":
                await self._check_low_prekeys(target.iid)
        return results

    async def _check_low_prekeys(self, iid: str) -> None:
        count = self.store.count_prekeys(iid)
        if count < self.config.policies.low_prekey_threshold and iid not in self._rt.low_prekey_notified:
            self._rt.low_prekey_notified.add(iid)
            await self.notify(iid, "encrypt", None, st.count_node(count))

    # ------------------------------------------------------------------ reachability and privacy

    def reachable(self, partner: User, native: User) -> bool:
        policies = self.config.policies
        if policies.opt_in_required and not native.opted_in:
            return False
        if partner.integrator in native.restricted:
            return False
        return not self.store.is_blocked(native.iid, partner.iid)

    def lookup(self, partner: User, uvid: str) -> User:
        """The native user behind a UVID; unknown, unreachable and blocked all look alike."""
        if not valid_native_uvid(self.config.profile, uvid):
            raise GipError(GipErrorCode.BAD_REQUEST, "not a valid identifier for this gatekeeper")
        native = self.store.native_by_uvid(uvid)
        if native is None or (self.config.policies.lookup_privacy and not self.reachable(partner, native)):
            raise GipError(GipErrorCode.NOT_FOUND, "not found")
        return native

    def device_list(self, iid: str) -> list[int]:
        return [d.device_id for d in self.store.devices_of(iid)]

    # ------------------------------------------------------------------ Partner → native messages

    async def accept_message(
        self, sender: User, message: st.OutgoingMessage
    ) -> tuple[Node, list[Callable[[], Awaitable[None]]]]:
        """Check, store and hand a Partner's message to the native devices.

        Returns the ack and the follow-ups (receipts from the natives) to run after it.
        """
        now = self.clock.now()

        def nack(code: GipErrorCode, retry_after: int | None = None) -> tuple[Node, list[Any]]:
            return st.ack(message.id, "message", error=code, retry_after=retry_after), []

        refused = self.faults.refuse_next_message.pop(sender.iid, None)
        if refused is not None:
            return nack(refused, 5 if refused is GipErrorCode.RATE_LIMITED else None)
        native = self.store.user(str(message.to))
        if native is not None and native.kind == "partner":
            return await self._route_to_partner(sender, native, message, now), []
        if native is None or native.kind != "native" or not self.reachable(sender, native):
            return nack(GipErrorCode.FORBIDDEN)
        if self.store.is_blocked(sender.iid, native.iid):
            return nack(GipErrorCode.FORBIDDEN)
        device_ids = self.device_list(native.iid)
        if message.phash != st.device_list_hash(device_ids):
            return nack(GipErrorCode.CONFLICT)
        targets = {jid.device for jid, _ in message.participants}
        if any(j.bare != native_jid(native) for j, _ in message.participants) or not targets <= set(device_ids):
            return nack(GipErrorCode.CONFLICT)
        limits = self.config.policies.rate_limits
        window = self._rt.message_windows.setdefault(sender.iid, RateWindow(limits.messages_per_minute, 60))
        retry = window.hit(now)
        if retry is not None:
            return nack(GipErrorCode.RATE_LIMITED, retry)
        first_contact = native.iid not in self.store.contacts_of(sender.iid)
        if first_contact and (self.store.first_contacts_since(sender.iid, now - DAY) >= limits.first_contacts_per_day):
            return nack(GipErrorCode.RATE_LIMITED, int(DAY))
        # Each device gets each id once: a resend (after a 409 or a lost ack) is acknowledged
        # but not delivered again, except to a device whose retry receipt reopened it.
        fresh = [
            (jid, enc)
            for jid, enc in message.participants
            if self.store.mark_seen(sender.iid, f"{message.id}/{jid}", now)
        ]
        if not fresh:
            return st.ack(message.id, "message", t=int(now)), []
        self.store.add_contact(sender.iid, native.iid, now)
        followups: list[Callable[[], Awaitable[None]]] = []
        delivered_by: Jid | None = None
        for jid, enc in fresh:
            ok = await self._native_receive(native, jid, Jid.parse(sender.iid), message, enc, followups)
            if ok and delivered_by is None:
                delivered_by = jid
        if delivered_by is not None:
            receipt_from = delivered_by
            followups.append(lambda: self._send_receipt(sender.iid, receipt_from, message.id, st.ReceiptType.DELIVERED))
            if native.read_receipts:
                followups.append(lambda: self._send_receipt(sender.iid, receipt_from, message.id, st.ReceiptType.READ))
        return st.ack(message.id, "message", t=int(now)), followups

    async def _route_to_partner(self, sender: User, recipient: User, message: st.OutgoingMessage, now: float) -> Node:
        """Partner → Partner (two interop users): the gatekeeper only routes ciphertext."""
        if self.store.is_blocked(recipient.iid, sender.iid) or self.store.is_blocked(sender.iid, recipient.iid):
            return st.ack(message.id, "message", error=GipErrorCode.FORBIDDEN)
        if message.phash != st.device_list_hash(self.device_list(recipient.iid)):
            return st.ack(message.id, "message", error=GipErrorCode.CONFLICT)
        window = self._rt.message_windows.setdefault(
            sender.iid, RateWindow(self.config.policies.rate_limits.messages_per_minute, 60)
        )
        retry = window.hit(now)
        if retry is not None:
            return st.ack(message.id, "message", error=GipErrorCode.RATE_LIMITED, retry_after=retry)
        self.store.add_contact(sender.iid, recipient.iid, now)
        recipient_jid = Jid.parse(recipient.iid)
        for jid, enc in message.participants:
            if jid.bare != recipient_jid or not self.store.mark_seen(sender.iid, f"{message.id}/{jid}", now):
                continue
            node = st.IncomingMessage(
                message.id, Jid.parse(sender.iid), message.type, message.t, enc, sender_uvid=sender.uvid
            ).node()
            await self.deliver(recipient.iid, "message", message.id, sender.iid, node)
        return st.ack(message.id, "message", t=int(now))

    async def _send_receipt(self, partner: str, native_device: Jid, message_id: str, kind: st.ReceiptType) -> None:
        receipt = st.Receipt(message_id, native_device, kind, (message_id,) if kind is st.ReceiptType.READ else ())
        await self.deliver(
            partner,
            f"receipt:{kind.value}",
            message_id,
            str(native_device.bare),
            receipt.node(direction="from"),
        )

    async def _native_receive(
        self,
        native: User,
        device_jid: Jid,
        sender: Jid,
        message: st.OutgoingMessage,
        enc: st.Enc,
        followups: list[Callable[[], Awaitable[None]]],
    ) -> bool:
        device = NativeDevice(self.store, device_jid, self.clock.now_ms)
        try:
            plaintext, identity_changed = await device.decrypt(sender, enc)
            content = decode_content(plaintext)
        except (SignalError, GipError) as exc:
            retry_key = f"{sender}/{message.id}"
            count = int.from_bytes(self.store.signal_get(str(device_jid), "retry", retry_key) or b"\x00", "big") + 1
            self.store.signal_put(str(device_jid), "retry", retry_key, bytes((min(count, 255),)))
            self._log_native(
                native.iid,
                str(device_jid),
                {
                    "event": "undecryptable",
                    "from": str(sender),
                    "id": message.id,
                    "error": type(exc).__name__,
                },
            )
            if count <= st.MAX_RETRY_COUNT:
                followups.append(lambda: self._send_retry(native, device, sender, message.id, count))
            return False
        if identity_changed:
            self._log_native(native.iid, str(device_jid), {"event": "identity_changed", "peer": str(sender)})
        self._log_native(
            native.iid,
            str(device_jid),
            {
                "event": "message",
                "from": str(sender),
                "id": message.id,
                "type": message.type,
                "t": message.t,
                "content": MessageToDict(content),
            },
        )
        media = _media_of(content)
        if media is not None and device_jid.device == 0:
            self.spawn(self._native_fetch_media(native, device_jid, message.id, *media), f"media {message.id}")
        return True

    async def _send_retry(self, native: User, device: NativeDevice, partner: Jid, message_id: str, count: int) -> None:
        keys = await device.fresh_bundle() if count >= 2 else None
        registration = await device.signal.get_local_registration_id()
        self.store.unmark_seen(str(partner.bare), f"{message_id}/{device.jid}")
        receipt = st.Receipt(
            message_id,
            device.jid,
            st.ReceiptType.RETRY,
            retry_count=count,
            retry_t=int(self.clock.now()),
            registration_id=registration,
            keys=keys,
        )
        await self.deliver(str(partner.bare), "receipt:retry", message_id, native.iid, receipt.node(direction="from"))

    async def _native_fetch_media(self, native: User, device: Jid, message_id: str, kind: str, media: Any) -> None:
        """A native downloads Partner media through the gatekeeper's proxy path, checks it
        as a WhatsApp client does (hash, MAC, plaintext hash) and notes what it got; it
        streams, so a 100 MiB video costs the sandbox a chunk at a time."""
        result: dict[str, Any] = {"event": "media", "id": message_id}
        try:
            decryptor = MediaDecryptor(MEDIA_KIND[kind], media.media_key, media.file_enc_sha256, media.file_sha256)
            digest, size = hashlib.sha256(), 0
            async for chunk in self.partner_media_chunks(media.direct_path):
                data = decryptor.update(chunk)
                digest.update(data)
                size += len(data)
            tail = decryptor.finalize()
            digest.update(tail)
            result.update(ok=True, size=size + len(tail), sha256=digest.hexdigest())
        except (GipError, aiohttp.ClientError) as exc:
            result.update(ok=False, error=str(exc))
        self._log_native(native.iid, str(device), result)

    async def partner_media_chunks(self, direct_path: str) -> AsyncIterator[bytes]:
        """``GET /interop/download/{integrator}/{ref}/`` → ``GET {media_base}/{ref}``, with a
        token the gatekeeper signs, streamed."""
        parts = [p for p in direct_path.split("/") if p]
        if len(parts) != 4 or parts[:2] != ["interop", "download"]:
            raise GipError(GipErrorCode.NOT_FOUND, "not a Partner media path")
        integrator = self.config.integrator(parts[2])
        if integrator is None:
            raise GipError(GipErrorCode.NOT_FOUND, "unknown integrator")
        token = issue_gatekeeper_token(
            self.signing_key, issuer=self.config.name, audience=integrator.id, now=self.clock.now()
        )
        async with self.http.get(
            f"{integrator.media_base}/{parts[3]}", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            if response.status != 200:
                raise GipError(GipErrorCode.NOT_FOUND, f"Partner media answered {response.status}")
            async for chunk in response.content.iter_chunked(1 << 20):
                yield chunk

    async def proxy_partner_media(self, direct_path: str) -> bytes:
        """A Partner blob whole (small files, tests)."""
        return b"".join([chunk async for chunk in self.partner_media_chunks(direct_path)])

    # ------------------------------------------------------------------ receipts and acks from Partners

    async def partner_receipt(self, partner: User, receipt: st.Receipt) -> None:
        if is_group(receipt.peer):
            if receipt.type is st.ReceiptType.DELIVERED and receipt.participant is not None:
                self.store.remove_from_mailbox(partner.iid, "message", receipt.id, str(receipt.participant.bare))
            await self.groups.partner_receipt(partner, receipt)
            return
        native_iid = str(receipt.peer.bare)
        if receipt.type is st.ReceiptType.DELIVERED:
            self.store.remove_from_mailbox(partner.iid, "message", receipt.id, native_iid)
        native = self.store.user(native_iid)
        if native is not None and native.kind == "partner":
            # Between two Partner users: forward it as it came.
            if receipt.type is st.ReceiptType.RETRY:
                self.store.unmark_seen(native.iid, f"{receipt.id}/{partner.iid}")
            forwarded = st.Receipt(
                receipt.id,
                Jid.parse(partner.iid),
                receipt.type,
                receipt.message_ids,
                receipt.retry_count,
                receipt.retry_t,
                receipt.registration_id,
                receipt.keys,
            )
            await self.deliver(
                native.iid,
                f"receipt:{receipt.type.value}",
                receipt.id,
                partner.iid,
                forwarded.node(direction="from"),
            )
            return
        if native is None or native.kind != "native":
            return
        event: dict[str, Any] = {
            "event": "receipt",
            "type": receipt.type.value,
            "from": partner.iid,
            "id": receipt.id,
        }
        if receipt.type is st.ReceiptType.READ:
            event["ids"] = list(receipt.message_ids)
        self._log_native(native.iid, str(receipt.peer), event)
        if receipt.type is st.ReceiptType.RETRY:
            await self._native_resend(native, receipt.peer, Jid.parse(partner.iid), receipt)

    def partner_ack(self, partner: User, node: Node) -> None:
        ack_class = node.get("class")
        if ack_class == "receipt":
            kind = f"receipt:{node.get('type') or 'delivered'}"
        elif ack_class == "notification":
            kind = "notification"
        else:
            return
        self.store.remove_from_mailbox(partner.iid, kind, node.attr("id"))

    async def _native_resend(self, native: User, device_jid: Jid, partner: Jid, receipt: st.Receipt) -> None:
        sent = self.store.signal_get(str(device_jid), "sent", receipt.id)
        if sent is None or receipt.retry_count > st.MAX_RETRY_COUNT:
            return
        message_type, plaintext = sent.split(b"\n", 1)
        device = NativeDevice(self.store, device_jid, self.clock.now_ms)
        bundle = receipt.keys
        if bundle is None and receipt.retry_count >= 2:
            fetched = self.bundle_for(partner)
            bundle = fetched if isinstance(fetched, st.Bundle) else None
        enc = await device.encrypt(partner, plaintext, bundle)
        node = st.IncomingMessage(
            receipt.id, device_jid, message_type.decode(), int(self.clock.now()), enc, sender_uvid=native.uvid
        ).node()
        self._log_native(
            native.iid, str(device_jid), {"event": "resent", "id": receipt.id, "count": receipt.retry_count}
        )
        await self.deliver(str(partner.bare), "message", receipt.id, native.iid, node)

    # ------------------------------------------------------------------ natives acting (control API)

    async def native_send(
        self,
        native_iid: str,
        partner_iid: str,
        content: Content,
        message_type: str,
        *,
        device: int = 0,
        message_id: str | None = None,
    ) -> str:
        native, partner = self.store.user(native_iid), self.store.user(partner_iid)
        if native is None or native.kind != "native" or partner is None or partner.kind != "partner":
            raise GipError(GipErrorCode.NOT_FOUND, "unknown native or Partner user")
        if not self.reachable(partner, native) or self.store.is_blocked(partner.iid, native.iid):
            raise GipError(GipErrorCode.FORBIDDEN, "the Partner user cannot be reached from this native user")
        device_jid = native_jid(native).with_device(device)
        if self.store.device(str(device_jid)) is None:
            raise GipError(GipErrorCode.NOT_FOUND, "no such native device")
        stanza_id = message_id or secrets.token_hex(10).upper()
        plaintext = encode_content(content)
        nd = NativeDevice(self.store, device_jid, self.clock.now_ms)
        partner_jid = Jid.parse(partner.iid)
        bundle = None
        if not await nd.has_session(partner_jid):
            fetched = self.bundle_for(partner_jid)
            if isinstance(fetched, st.BundleError):
                raise GipError(GipErrorCode.NOT_FOUND, "the Partner device has no keys")
            bundle = fetched
            await self._check_low_prekeys(partner.iid)
        enc = await nd.encrypt(partner_jid, plaintext, bundle)
        self.store.signal_put(str(device_jid), "sent", stanza_id, message_type.encode() + b"\n" + plaintext)
        if native.iid in self.faults.corrupt_next_from:
            self.faults.corrupt_next_from.discard(native.iid)
            damaged = bytearray(enc.ciphertext)
            damaged[len(damaged) // 2] ^= 0x55
            enc = st.Enc(enc.type, bytes(damaged))
        self.store.add_contact(partner.iid, native.iid, self.clock.now())
        node = st.IncomingMessage(
            stanza_id, device_jid, message_type, int(self.clock.now()), enc, sender_uvid=native.uvid
        ).node()
        self._log_native(
            native.iid,
            str(device_jid),
            {"event": "sent", "to": partner.iid, "id": stanza_id, "content": MessageToDict(content)},
        )
        await self.deliver(partner.iid, "message", stanza_id, native.iid, node)
        return stanza_id

    async def native_chatstate(self, native_iid: str, partner_iid: str, state: st.ChatState) -> None:
        native = self.store.user(native_iid)
        partner = self.store.user(partner_iid)
        if native is None or partner is None or not self.reachable(partner, native):
            raise GipError(GipErrorCode.NOT_FOUND, "unknown or unreachable user")
        connection = self._rt.connections.get(partner_iid)
        if connection is not None:  # typing is transient: never stored
            await connection.send_raw(encode(st.chatstate(native_jid(native), state, direction="from")))

    async def native_retry(
        self, native_iid: str, partner_iid: str, message_id: str, count: int, device: int = 0
    ) -> None:
        native = self.store.user(native_iid)
        if native is None or native.kind != "native" or self.store.user(partner_iid) is None:
            raise GipError(GipErrorCode.NOT_FOUND, "unknown native or Partner user")
        device_jid = native_jid(native).with_device(device)
        if self.store.device(str(device_jid)) is None:
            raise GipError(GipErrorCode.NOT_FOUND, "no such native device")
        nd = NativeDevice(self.store, device_jid, self.clock.now_ms)
        await self._send_retry(native, nd, Jid.parse(partner_iid), message_id, count)

    async def native_read(self, native_iid: str, partner_iid: str, message_ids: list[str]) -> None:
        native = self.store.user(native_iid)
        if native is None:
            raise GipError(GipErrorCode.NOT_FOUND, "unknown native user")
        receipt = st.Receipt(message_ids[0], native_jid(native), st.ReceiptType.READ, tuple(message_ids))
        await self.deliver(partner_iid, "receipt:read", message_ids[0], native.iid, receipt.node(direction="from"))

    async def create_native(
        self, uvid: str, *, opted_in: bool = True, devices: int = 1, read_receipts: bool = True
    ) -> User:
        if not valid_native_uvid(self.config.profile, uvid):
            raise GipError(GipErrorCode.BAD_REQUEST, f"not a valid {self.config.profile} identifier")
        if self.store.native_by_uvid(uvid) is not None:
            raise GipError(GipErrorCode.CONFLICT, "a native user with this identifier exists")
        iid = f"{secrets.randbelow(10**12):012d}@{NATIVE_SERVER}"
        self.store.insert_user(
            iid, "native", uvid, self.clock.now(), opted_in=int(opted_in), read_receipts=int(read_receipts)
        )
        for device_id in range(max(1, min(devices, MAX_NATIVE_DEVICES))):
            await NativeDevice(self.store, Jid.parse(iid).with_device(device_id), self.clock.now_ms).install()
        user = self.store.user(iid)
        assert user is not None
        return user

    async def add_native_device(self, native_iid: str) -> int:
        used = set(self.device_list(native_iid))
        if len(used) >= MAX_NATIVE_DEVICES:
            raise GipError(GipErrorCode.CONFLICT, "a native user has at most 5 devices")
        device_id = next(i for i in range(1, 100) if i not in used)
        await NativeDevice(self.store, Jid.parse(native_iid).with_device(device_id), self.clock.now_ms).install()
        await self._notify_contacts(native_iid, "devices", st.Node("add", {"id": str(device_id)}))
        return device_id

    async def remove_native_device(self, native_iid: str, device_id: int) -> None:
        if device_id == 0:
            raise GipError(GipErrorCode.BAD_REQUEST, "the primary device cannot be removed")
        self.store.remove_device(str(Jid.parse(native_iid).with_device(device_id)))
        await self._notify_contacts(native_iid, "devices", st.Node("remove", {"id": str(device_id)}))

    async def reinstall_native(self, native_iid: str, device_id: int = 0, *, notify: bool = True) -> None:
        """A new install of a native device (new identity key). ``notify=False`` plays a
        gatekeeper that swaps a key without telling anyone: Partners must notice it themselves."""
        await NativeDevice(self.store, Jid.parse(native_iid).with_device(device_id), self.clock.now_ms).install()
        if notify:
            await self._notify_contacts(native_iid, "identity")

    async def _notify_contacts(self, native_iid: str, kind: str, *children: Node) -> None:
        for contact in self.store.contacts_of(native_iid):
            user = self.store.user(contact)
            if user is not None and user.kind == "partner":
                await self.notify(contact, kind, Jid.parse(native_iid), *children)

    async def opt_out(self, iid: str) -> None:
        """Delete an enlistment, its keys, mailbox and media (§4 opt-out, and un-enlistment)."""
        for row in self.store.db.execute("SELECT path FROM media WHERE owner = ?", (iid,)).fetchall():
            Path(row["path"]).unlink(missing_ok=True)
        self.store.delete_user(iid)

    def _log_native(self, iid: str, device: str, event: dict[str, Any]) -> None:
        self.store.log_native(iid, device, event, self.clock.now())

    # ------------------------------------------------------------------ media held by the gatekeeper

    def media_path(self, ref: str) -> Path:
        return self.media_dir / ref

    def new_media_ref(self) -> str:
        return secrets.token_urlsafe(24)

    async def encrypt_native_media(
        self, owner: str, media_type: MediaType, source: Path, *, tamper: bool = False
    ) -> tuple[str, EncryptedMedia]:
        """A native's file, encrypted as its client would, streamed into the store. With
        ``tamper`` one byte of the stored blob is flipped afterwards (a fault to inject)."""
        ref = self.new_media_ref()
        path = self.media_path(ref)
        tmp = path.with_suffix(".partial")

        def encrypt() -> EncryptedMedia:
            with tmp.open("wb") as sink:
                info = encrypt_file(media_type, file_chunks(source), sink)
            if tamper:
                with tmp.open("r+b") as blob:
                    blob.seek(info.file_length // 2)
                    byte = blob.read(1)
                    blob.seek(info.file_length // 2)
                    blob.write(bytes((byte[0] ^ 0x01,)))
            return info

        info = await asyncio.to_thread(encrypt)
        os.replace(tmp, path)
        self.store.add_media(ref, owner, str(path), path.stat().st_size, self.clock.now())
        return f"/v/t{ref}", info

    async def store_native_media(self, owner: str, blob: bytes) -> str:
        ref = self.new_media_ref()
        path = self.media_path(ref)
        tmp = path.with_suffix(".partial")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        self.store.add_media(ref, owner, str(path), len(blob), self.clock.now())
        return f"/v/t{ref}"


def _mark_offline(stanza: bytes) -> bytes:
    node = decode(stanza)
    node.attrs["offline"] = "1"
    return encode(node)


def native_jid(user: User) -> Jid:
    return Jid.parse(user.iid)


def _unverified_issuer(token: str) -> str | None:
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise GipError(GipErrorCode.TOKEN, "malformed token") from None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


def _media_of(content: Content) -> tuple[str, Any] | None:
    kind = content.WhichOneof("body")
    if kind in MEDIA_KIND:
        return kind, getattr(content, kind)
    return None
