"""The Partner media store (files, rows, collection) and downloads of peers' files from a
real sandbox: whole and checked, refused when tampered with, gone once expired."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from bridge.db.database import create_database
from bridge.db.sealed import Sealer
from bridge.db.stores import Stores
from bridge.db.upgrade import upgrade
from bridge.gatekeeper.media_download import download, media_url
from bridge.gatekeeper.media_store import ORPHAN_GRACE_S, PartnerMediaStore
from bridge.gip.content import Media
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.media import MAX_IMAGE_BYTES, MediaType, decrypt_bytes
from devstack.logins import enlisted_login
from devstack.sandbox import Sandbox, free_port, start_sandbox, stop_sandbox

OWNER = "@alice:test"
DAY = 86_400


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[PartnerMediaStore]:
    uri = f"sqlite:///{tmp_path / 'bridge.db'}"
    await upgrade(uri)
    db = create_database(uri)
    await db.start()
    stores = Stores.create(db, Sealer(bytes(range(32))))
    login = enlisted_login(OWNER, iid="1-1@interop")
    await stores.logins.insert(login)
    yield PartnerMediaStore(tmp_path / "media", stores.partner_media)
    await db.close()


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    started = await start_sandbox(SimpleNamespace(base=f"http://127.0.0.1:{free_port()}"), media_dir=tmp_path / "gk")
    yield started
    await stop_sandbox(started)


async def test_a_stored_blob_decrypts_to_the_file_and_is_collected_after_keep_days(
    store: PartnerMediaStore, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(300_000))
    ref, info = await store.encrypt_into(OWNER, MediaType.VIDEO, plain)
    blob = await store.blob(ref)
    assert blob is not None and hashlib.sha256(blob.read_bytes()).digest() == info.file_enc_sha256
    decrypted = decrypt_bytes(
        MediaType.VIDEO, blob.read_bytes(), info.media_key, info.file_enc_sha256, info.file_sha256
    )
    assert decrypted == plain.read_bytes() and info.file_length == 300_000
    assert await store.blob("../../etc/passwd") is None and await store.blob("x" * 32) is None

    # Past keep_days it is no longer served, even before the collector came by.
    later = PartnerMediaStore(store.directory, store._rows, clock=lambda: time.time() + 31 * DAY)
    assert await later.blob(ref) is None
    now_ms = int(time.time() * 1000)
    assert await store.collect(now_ms=now_ms + 29 * DAY * 1000) == 0
    assert await store.collect(now_ms=now_ms + 31 * DAY * 1000) == 1
    assert await store.blob(ref) is None and not (store.directory / ref).exists()


async def test_over_the_limit_nothing_is_left_behind(store: PartnerMediaStore, tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as out:
        out.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(GipError) as excinfo:
        await store.encrypt_into(OWNER, MediaType.IMAGE, big)
    assert excinfo.value.code is GipErrorCode.TOO_LARGE
    assert list(store.directory.iterdir()) == []


async def test_the_collector_removes_what_a_crash_left_without_a_row(store: PartnerMediaStore, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"kept")
    kept, _ = await store.encrypt_into(OWNER, MediaType.DOCUMENT, plain)
    old = time.time() - ORPHAN_GRACE_S - 10
    for name in ("A" * 32, "B" * 32 + ".partial"):
        (store.directory / name).write_bytes(b"orphan")
        os.utime(store.directory / name, (old, old))
    (store.directory / ("C" * 32)).write_bytes(b"young: maybe still being written")
    os.utime(store.directory / kept, (old, old))
    assert await store.collect() == 2
    assert sorted(p.name for p in store.directory.iterdir()) == sorted([kept, "C" * 32])


async def test_downloads_are_checked_and_refused_when_tampered_or_expired(sandbox: Sandbox, tmp_path: Path) -> None:
    gk = sandbox.gatekeeper
    plain = tmp_path / "photo"
    plain.write_bytes(os.urandom(2_000_000))

    async def sent(tamper: bool = False) -> Media:
        path, info = await gk.encrypt_native_media("1@native", MediaType.IMAGE, plain, tamper=tamper)
        return Media(
            direct_path=path,
            media_key=info.media_key,
            file_sha256=info.file_sha256,
            file_enc_sha256=info.file_enc_sha256,
            file_length=info.file_length,
        )

    async with aiohttp.ClientSession() as http:
        good = await sent()
        assert await download(http, sandbox.base, "image", good, tmp_path / "got") == 2_000_000
        assert (tmp_path / "got").read_bytes() == plain.read_bytes()

        with pytest.raises(GipError) as excinfo:
            await download(http, sandbox.base, "image", await sent(tamper=True), tmp_path / "bad")
        assert excinfo.value.code is GipErrorCode.MEDIA_HASH and not (tmp_path / "bad").exists()
        assert not (tmp_path / "bad.partial").exists()

        # A length that is not the file's: refused like a failed hash.
        lying = Media()
        lying.CopyFrom(good)
        lying.file_length = good.file_length - 1
        with pytest.raises(GipError) as excinfo:
            await download(http, sandbox.base, "image", lying, tmp_path / "short")
        assert excinfo.value.code is GipErrorCode.MEDIA_HASH and not (tmp_path / "short").exists()

        # Another's key: the hash of the blob matches, the MAC does not.
        wrong_key = Media()
        wrong_key.CopyFrom(good)
        wrong_key.media_key = os.urandom(32)
        with pytest.raises(GipError) as excinfo:
            await download(http, sandbox.base, "image", wrong_key, tmp_path / "bad")
        assert excinfo.value.code is GipErrorCode.MEDIA_MAC

        # The gatekeeper's clock passes its 30 days: the blob is gone.
        gk.clock.advance(31 * DAY)
        gk.expire(gk.clock.now())
        with pytest.raises(GipError) as excinfo:
            await download(http, sandbox.base, "image", good, tmp_path / "late")
        assert excinfo.value.code is GipErrorCode.NOT_FOUND


@pytest.mark.parametrize("path", ["https://evil.example/x", "//evil.example/x", "/v/../../etc", "/v/t x", ""])
def test_a_peer_cannot_point_the_bridge_elsewhere(path: str) -> None:
    with pytest.raises(GipError) as excinfo:
        media_url("https://gk.example", path)
    assert excinfo.value.code is GipErrorCode.BAD_REQUEST
    assert media_url("https://gk.example/", "/v/tAbC_-1") == "https://gk.example/v/tAbC_-1"


async def test_a_users_files_in_the_store_are_held_to_the_quota(store: PartnerMediaStore, tmp_path: Path) -> None:
    quota = PartnerMediaStore(store.directory, store._rows, quota_bytes=1 << 20)
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(600_000))
    await quota.encrypt_into(OWNER, MediaType.DOCUMENT, plain)
    with pytest.raises(GipError) as excinfo:
        await quota.encrypt_into(OWNER, MediaType.DOCUMENT, plain)
    assert excinfo.value.code is GipErrorCode.QUOTA and "at most 1 MiB per person" in excinfo.value.text
    assert len(list(store.directory.iterdir())) == 1  # the refused one left nothing
    # Once the first has left the store, there is room again.
    await quota.collect(now_ms=int(time.time() * 1000) + 31 * DAY * 1000)
    await quota.encrypt_into(OWNER, MediaType.DOCUMENT, plain)
