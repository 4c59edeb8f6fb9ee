"""The sandbox control API (``/_sandbox``, bearer token): natives, policies, clock, faults.

Not part of GIP: it is how tests, the demo and rehearsing admins drive the simulated
side. Every route answers JSON; errors are ``{"error": code, "text": …}``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.gip import groups as gp
from bridge.gip import stanzas as st
from bridge.gip.content import (
    Content,
    ContextInfo,
    Edit,
    ExtendedText,
    Media,
    MessageKey,
    Reaction,
    Revoke,
)
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.gip.media import MediaType

from .gatekeeper import MEDIA_KIND, Gatekeeper
from .store import User

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HTTP_STATUS = {
    GipErrorCode.BAD_REQUEST: 400,
    GipErrorCode.FORBIDDEN: 403,
    GipErrorCode.NOT_FOUND: 404,
    GipErrorCode.CONFLICT: 409,
}


def _error(code: GipErrorCode, text: str) -> web.Response:
    return web.json_response({"error": code.value, "text": text}, status=_HTTP_STATUS.get(code, 400))


def authorized(gatekeeper: Gatekeeper, request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    expected = f"Bearer {gatekeeper.config.control_token}"
    return hmac.compare_digest(header.encode(), expected.encode())


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise GipError(GipErrorCode.BAD_REQUEST, "body must be JSON") from None
    if not isinstance(data, dict):
        raise GipError(GipErrorCode.BAD_REQUEST, "body must be a JSON object")
    return data


def _key(data: dict[str, Any], *, from_me: bool) -> MessageKey:
    message_id = data.get("id")
    if not isinstance(message_id, str) or not message_id:
        raise GipError(GipErrorCode.BAD_REQUEST, "a message id is required")
    return MessageKey(id=message_id, from_me=bool(data.get("from_me", from_me)))


async def _content(gk: Gatekeeper, native_iid: str, data: dict[str, Any]) -> tuple[Content, str]:
    """Build the Content a native sends from the control request."""
    mentioned = data.get("mentioned", [])
    if not isinstance(mentioned, list):
        raise GipError(GipErrorCode.BAD_REQUEST, "mentioned must be a list of IIDs")
    if "text" in data and "reply_to" not in data and not mentioned:
        return Content(text=str(data["text"])), "text"
    if "reply_to" in data or mentioned:
        reply = data.get("reply_to") or {}
        context = ContextInfo(
            stanza_id=str(reply.get("id", "")),
            participant=str(reply.get("participant", "")),
            mentioned=[str(iid) for iid in mentioned],
        )
        if "quoted" in reply:
            context.quoted.CopyFrom(Content(text=str(reply["quoted"])))
        return Content(extended_text=ExtendedText(text=str(data.get("text", "")), context_info=context)), "text"
    if "reaction" in data:
        reaction = data["reaction"]
        return Content(
            reaction=Reaction(
                key=_key(reaction, from_me=False),
                text=str(reaction.get("emoji", "")),
                sender_timestamp_ms=gk.clock.now_ms(),
            )
        ), "reaction"
    if "revoke" in data:
        return Content(revoke=Revoke(key=_key(data["revoke"], from_me=True))), "revoke"
    if "edit" in data:
        edit = data["edit"]
        return Content(
            edit=Edit(key=_key(edit, from_me=True), text=str(edit.get("text", "")), timestamp_ms=gk.clock.now_ms())
        ), "text"
    if "media" in data:
        return await _media_content(gk, native_iid, data["media"]), "media"
    raise GipError(GipErrorCode.BAD_REQUEST, "say what to send: text, reply_to, reaction, revoke, edit or media")


async def _media_content(gk: Gatekeeper, native_iid: str, media: dict[str, Any]) -> Content:
    """A native's file: ``data`` (base64) or ``path`` (a file on the sandbox's machine, for
    large ones), with what its client would say about it. ``tamper`` stores a blob with a
    flipped byte, which the receiver must refuse."""
    kind = media.get("kind")
    if kind not in MEDIA_KIND:
        raise GipError(GipErrorCode.BAD_REQUEST, "media.kind must be image, video, audio or document")
    media_type: MediaType = MEDIA_KIND[kind]
    with tempfile.TemporaryDirectory(prefix="sandbox-send-") as scratch:
        if "path" in media:
            source = Path(str(media["path"]))
            if not source.is_file():
                raise GipError(GipErrorCode.BAD_REQUEST, "media.path is not a file")
        else:
            try:
                plaintext = base64.b64decode(media.get("data", ""), validate=True)
            except (binascii.Error, ValueError):
                raise GipError(GipErrorCode.BAD_REQUEST, "media.data must be base64") from None
            source = Path(scratch) / "file"
            source.write_bytes(plaintext)
        if source.stat().st_size > media_type.max_bytes:
            raise GipError(GipErrorCode.TOO_LARGE, "the file is over the profile's limit")
        path, info = await gk.encrypt_native_media(native_iid, media_type, source, tamper=bool(media.get("tamper")))
    try:
        thumbnail = base64.b64decode(media.get("thumbnail", ""), validate=True)
    except (binascii.Error, ValueError):
        raise GipError(GipErrorCode.BAD_REQUEST, "media.thumbnail must be base64") from None
    waveform = media.get("waveform", [])
    if not isinstance(waveform, list) or not all(isinstance(v, int) and 0 <= v <= 100 for v in waveform):
        raise GipError(GipErrorCode.BAD_REQUEST, "media.waveform must be a list of 0-100")
    body = Media(
        direct_path=path,
        media_key=info.media_key,
        file_sha256=info.file_sha256,
        file_enc_sha256=info.file_enc_sha256,
        file_length=info.file_length,
        mimetype=str(media.get("mimetype", "application/octet-stream")),
        caption=str(media.get("caption", "")),
        file_name=str(media.get("file_name", "")),
        width=int(media.get("width", 0)),
        height=int(media.get("height", 0)),
        seconds=int(media.get("seconds", 0)),
        ptt=bool(media.get("ptt", False)),
        jpeg_thumbnail=thumbnail,
        waveform=bytes(waveform),
    )
    if "reply_to" in media:
        body.context_info.CopyFrom(ContextInfo(stanza_id=str(media["reply_to"])))
    content = Content()
    getattr(content, kind).CopyFrom(body)
    return content


def routes(gk: Gatekeeper) -> list[web.RouteDef]:
    def guarded(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if not authorized(gk, request):
                return web.json_response({"error": "401", "text": "bad control token"}, status=401)
            try:
                return await handler(request)
            except GipError as exc:
                return _error(exc.code, exc.text)
            except (KeyError, TypeError, ValueError) as exc:
                return _error(GipErrorCode.BAD_REQUEST, f"bad request: {type(exc).__name__}")

        return wrapped

    def user_of(request: web.Request, kind: str) -> str:
        """The ``{iid}`` of the path, which must be a user of this kind."""
        iid = request.match_info["iid"]
        user = gk.store.user(iid)
        if user is None or user.kind != kind:
            raise GipError(GipErrorCode.NOT_FOUND, f"no such {'native' if kind == 'native' else 'Partner'} user")
        return iid

    def native(request: web.Request) -> str:
        return user_of(request, "native")

    async def create_native(request: web.Request) -> web.Response:
        data = await _json(request)
        user = await gk.create_native(
            str(data["uvid"]),
            opted_in=bool(data.get("opted_in", True)),
            devices=int(data.get("devices", 1)),
            read_receipts=bool(data.get("read_receipts", True)),
        )
        return web.json_response({"iid": user.iid, "uvid": user.uvid, "devices": gk.device_list(user.iid)})

    async def get_native(request: web.Request) -> web.Response:
        iid = native(request)
        user = gk.store.user(iid)
        assert user is not None
        return web.json_response(
            {
                "iid": iid,
                "uvid": user.uvid,
                "opted_in": user.opted_in,
                "restricted": list(user.restricted),
                "devices": gk.device_list(iid),
                "blocked": gk.store.blocklist(iid),
            }
        )

    async def set_opt_in(request: web.Request) -> web.Response:
        iid, data = native(request), await _json(request)
        fields: dict[str, Any] = {"opted_in": int(bool(data["opted_in"]))}
        if "restricted" in data:
            fields["restricted"] = [str(i) for i in data["restricted"]]
        if "read_receipts" in data:
            fields["read_receipts"] = int(bool(data["read_receipts"]))
        gk.store.update_user(iid, **fields)
        return web.json_response({"ok": True})

    async def send(request: web.Request) -> web.Response:
        iid, data = native(request), await _json(request)
        content, message_type = await _content(gk, iid, data)
        if "group" in data:
            group_id = await gk.groups.native_send(
                iid, str(data["group"]), content, message_type, int(data.get("device", 0)), data.get("id")
            )
            return web.json_response({"id": group_id})
        message_id = await gk.native_send(
            iid,
            str(data["to"]),
            content,
            message_type,
            device=int(data.get("device", 0)),
            message_id=data.get("id"),
        )
        return web.json_response({"id": message_id})

    async def typing(request: web.Request) -> web.Response:
        iid, data = native(request), await _json(request)
        await gk.native_chatstate(iid, str(data["to"]), st.ChatState(data.get("state", "composing")))
        return web.json_response({"ok": True})

    async def read(request: web.Request) -> web.Response:
        iid, data = native(request), await _json(request)
        ids = [str(i) for i in data["ids"]]
        if not ids:
            raise GipError(GipErrorCode.BAD_REQUEST, "ids must not be empty")
        await gk.native_read(iid, str(data["to"]), ids)
        return web.json_response({"ok": True})

    async def retry(request: web.Request) -> web.Response:
        """The native's device asks the Partner to send a message again (as a phone does
        when it cannot decrypt one), at any time: to rehearse retries after a reconnect."""
        iid, data = native(request), await _json(request)
        count = int(data.get("count", 1))
        if not 1 <= count <= st.MAX_RETRY_COUNT:
            raise GipError(GipErrorCode.BAD_REQUEST, "count must be between 1 and 5")
        await gk.native_retry(iid, str(data["to"]), str(data["id"]), count, device=int(data.get("device", 0)))
        return web.json_response({"ok": True})

    async def events(request: web.Request) -> web.Response:
        iid = native(request)
        await gk.settle()
        after = int(request.query.get("after", "0"))
        return web.json_response({"events": gk.store.native_events(iid, after)})

    async def reinstall(request: web.Request) -> web.Response:
        iid, data = native(request), await _json(request)
        await gk.reinstall_native(iid, int(data.get("device", 0)), notify=bool(data.get("notify", True)))
        return web.json_response({"ok": True})

    async def add_device(request: web.Request) -> web.Response:
        device_id = await gk.add_native_device(native(request))
        return web.json_response({"device": device_id})

    async def remove_device(request: web.Request) -> web.Response:
        await gk.remove_native_device(native(request), int(request.match_info["device"]))
        return web.json_response({"ok": True})

    async def block(request: web.Request) -> web.Response:
        iid, data = native(request), await _json(request)
        gk.store.set_block(iid, str(Jid.parse(str(data["jid"])).bare), bool(data.get("blocked", True)))
        return web.json_response({"ok": True})

    async def advance_clock(request: web.Request) -> web.Response:
        data = await _json(request)
        gk.clock.advance(float(data["seconds"]))
        gk.expire(gk.clock.now())
        return web.json_response({"now": gk.clock.now()})

    async def faults(request: web.Request) -> web.Response:
        data = await _json(request)
        result: dict[str, Any] = {}
        if "drop" in data:
            result["dropped"] = await gk.kick(str(data["drop"]), GipErrorCode.UNAVAILABLE)
        if "ack_delay" in data:
            gk.faults.ack_delay = float(data["ack_delay"])
        if "refuse_connect" in data:
            refusal = data["refuse_connect"]
            gk.faults.refuse_next_connect[str(refusal.get("iid", "*"))] = GipErrorCode(str(refusal["code"]))
        if "refuse_message" in data:
            refusal = data["refuse_message"]
            gk.faults.refuse_next_message[str(refusal["iid"])] = GipErrorCode(str(refusal["code"]))
        if "corrupt_next_from" in data:
            gk.faults.corrupt_next_from.add(str(data["corrupt_next_from"]))
        if "media_bytes_per_second" in data:
            gk.faults.media_bytes_per_second = max(0, int(data["media_bytes_per_second"]))
        return web.json_response({"ok": True, **result})

    def partner(request: web.Request) -> str:
        return user_of(request, "partner")

    async def get_partner(request: web.Request) -> web.Response:
        iid = request.match_info["iid"]
        user = gk.store.user(iid)
        return web.json_response(
            {
                "iid": iid,
                "enlisted": user is not None,
                "uvid": user.uvid if user else None,
                "connected": gk.connection(iid) is not None,
                "mailbox": gk.store.mailbox_count(iid),
                "prekeys": gk.store.count_prekeys(iid),
                "suspended": bool(user and user.suspended),
                "rows": gk.store.count_rows_for(iid),
                "blocklist": gk.store.blocklist(iid),
            }
        )

    async def find_partner(request: web.Request) -> web.Response:
        user = gk.store.partner_by_uvid(request.query["integrator"], request.query["uvid"])
        if user is None:
            raise GipError(GipErrorCode.NOT_FOUND, "no such Partner user")
        return web.json_response({"iid": user.iid})

    async def suspend(request: web.Request) -> web.Response:
        iid, data = partner(request), await _json(request)
        fields: dict[str, Any] = {}
        if "suspended" in data:
            fields["suspended"] = int(bool(data["suspended"]))
        if "eea_blocked" in data:
            fields["eea_blocked"] = int(bool(data["eea_blocked"]))
        gk.store.update_user(iid, **fields)
        if fields.get("suspended"):
            await gk.kick(iid, GipErrorCode.FORBIDDEN)
        elif fields.get("eea_blocked"):
            await gk.kick(iid, GipErrorCode.NOT_IN_EEA)
        return web.json_response({"ok": True})

    async def noise_key(request: web.Request) -> web.Response:
        # The key a Partner pins (gatekeeper.static_key); a real gatekeeper's comes with its Reference Offer.
        return web.json_response({"static_key": base64.b64encode(gk.noise_static.public).decode()})

    def group_json(info: gp.GroupInfo) -> dict[str, Any]:
        return {
            "jid": str(info.jid),
            "subject": info.subject,
            "creator": str(info.creator),
            "phash": info.phash,
            "participants": [{"jid": str(p.jid), "admin": p.admin} for p in info.participants],
        }

    def actor(data: dict[str, Any], key: str) -> User:
        user = gk.store.user(str(data[key]))
        if user is None:
            raise GipError(GipErrorCode.NOT_FOUND, f"no such user: {key}")
        return user

    async def create_group(request: web.Request) -> web.Response:
        """A group made by a user (native or Partner), as its app would."""
        data = await _json(request)
        participants = tuple(Jid.parse(str(j)) for j in data.get("participants", []))
        wanted = gp.GroupRequest(gp.GroupAction.CREATE, None, str(data.get("subject", "")), participants)
        async with gk.batch():
            result = await gk.groups.change(actor(data, "creator"), wanted)
        assert result is not None
        return web.json_response({**group_json(result.group), "refused": [str(j) for j in result.refused]})

    async def get_group(request: web.Request) -> web.Response:
        return web.json_response(group_json(gk.groups.info(request.match_info["jid"])))

    async def change_group(request: web.Request) -> web.Response:
        """``{actor, action, participants?, subject?}``: a participant changes the group."""
        data = await _json(request)
        action = gp.GroupAction(str(data["action"]))
        if action is gp.GroupAction.CREATE:
            raise GipError(GipErrorCode.BAD_REQUEST, "create with POST /_sandbox/groups")
        participants = tuple(Jid.parse(str(j)) for j in data.get("participants", []))
        group = Jid.parse(request.match_info["jid"])
        wanted = gp.GroupRequest(action, group, str(data.get("subject", "")), participants)
        async with gk.batch():
            result = await gk.groups.change(actor(data, "actor"), wanted)
        refused = [str(j) for j in result.refused] if result else []
        info = group_json(result.group) if result else {}
        return web.json_response({**info, "refused": refused})

    base = "/_sandbox"
    return [
        web.get(f"{base}/noise_key", guarded(noise_key)),
        web.post(f"{base}/natives", guarded(create_native)),
        web.get(f"{base}/natives/{{iid}}", guarded(get_native)),
        web.post(f"{base}/natives/{{iid}}/opt_in", guarded(set_opt_in)),
        web.post(f"{base}/natives/{{iid}}/send", guarded(send)),
        web.post(f"{base}/natives/{{iid}}/typing", guarded(typing)),
        web.post(f"{base}/natives/{{iid}}/read", guarded(read)),
        web.post(f"{base}/natives/{{iid}}/retry", guarded(retry)),
        web.get(f"{base}/natives/{{iid}}/events", guarded(events)),
        web.post(f"{base}/natives/{{iid}}/reinstall", guarded(reinstall)),
        web.post(f"{base}/natives/{{iid}}/devices", guarded(add_device)),
        web.delete(f"{base}/natives/{{iid}}/devices/{{device}}", guarded(remove_device)),
        web.post(f"{base}/natives/{{iid}}/block", guarded(block)),
        web.post(f"{base}/groups", guarded(create_group)),
        web.get(f"{base}/groups/{{jid}}", guarded(get_group)),
        web.post(f"{base}/groups/{{jid}}/change", guarded(change_group)),
        web.post(f"{base}/clock/advance", guarded(advance_clock)),
        web.post(f"{base}/faults", guarded(faults)),
        web.get(f"{base}/partners", guarded(find_partner)),
        web.get(f"{base}/partners/{{iid}}", guarded(get_partner)),
        web.post(f"{base}/partners/{{iid}}/suspend", guarded(suspend)),
    ]
