"""Media throughput through the bridge, both directions, against raw crypto throughput.

Matrix → gatekeeper: a Matrix ``EncryptedFile`` (AES-CTR) is fetched from the homeserver,
checked and decrypted, then encrypted under a fresh media key (AES-CBC + HMAC, two
SHA-256 hashes) into the Partner media store: ``MediaFlow.outgoing``, the bridge's own
code from the download to the Content. Gatekeeper → Matrix: a native's blob is fetched
from the sandbox gatekeeper, its hash, MAC and plaintext hash checked, decrypted, then
encrypted for an encrypted room and uploaded: ``MediaFlow.incoming``.

The homeserver is a small local media repository (files served and stored as they come):
the bench measures the bridge, and Synapse's own speed is not the bridge's (the
integration tests run the same code against Synapse). It and the sandbox gatekeeper run
in a child process, so that this process's time and memory are the bridge's.

The reference is raw AES-256-CBC + HMAC-SHA256 of ``cryptography`` over the same bytes
in memory, 1 MiB at a time, in the same run. Resident memory is sampled every 10 ms
during each transfer. Last line ``media_vs_crypto_ratio: X``: the slower direction's
throughput over the reference's (aim ≥ 0.5).

    python bench/media_bench.py [--mib 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.core.media import MediaFlow
from bridge.db.database import create_database
from bridge.db.sealed import Sealer
from bridge.db.stores import Stores
from bridge.db.upgrade import upgrade
from bridge.gatekeeper.media_store import PartnerMediaStore
from bridge.gatekeeper.side import GatekeeperSide
from bridge.gip.content import Media
from bridge.gip.media import CHUNK, MediaType
from bridge.matrix.attachments import AttachmentEncryptor
from bridge.matrix.media import HomeserverMedia
from devstack.logins import enlisted_login
from devstack.sandbox import free_port, start_sandbox

OWNER = "@bench:localhost"


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Samples resident memory in a thread while the event loop works."""

    def __init__(self) -> None:
        self.baseline = rss()
        self.peak = self.baseline
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss())
            time.sleep(0.01)

    def stop(self) -> int:
        self._running = False
        self._thread.join()
        return self.peak - self.baseline


def reference_mb_s(data: bytes) -> float:
    """Raw AES-256-CBC + HMAC-SHA256 throughput, 1 MiB at a time, in memory."""
    key, mac_key, iv = os.urandom(32), os.urandom(32), os.urandom(16)
    start = time.perf_counter()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    mac = hmac.HMAC(mac_key, hashes.SHA256())
    view = memoryview(data)
    for offset in range(0, len(data), CHUNK):
        mac.update(encryptor.update(view[offset : offset + CHUNK]))
    mac.update(encryptor.finalize())
    mac.finalize()
    return len(data) / (1 << 20) / (time.perf_counter() - start)


async def media_repository(root: Path) -> str:
    """A homeserver's media repository, as little as the bridge needs of one."""
    app = web.Application(client_max_size=1 << 30)
    uploads = root / "uploads"
    uploads.mkdir(exist_ok=True)

    async def download(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(root / request.match_info["media_id"])

    async def upload(request: web.Request) -> web.Response:
        name = f"up{len(list(uploads.iterdir()))}"
        with (uploads / name).open("wb") as out:
            async for chunk in request.content.iter_chunked(CHUNK):
                out.write(chunk)
        return web.json_response({"content_uri": f"mxc://localhost/{name}"})

    async def config(request: web.Request) -> web.Response:
        return web.json_response({"m.upload.size": 1 << 30})

    app.add_routes(
        [
            web.get("/_matrix/client/v1/media/download/{server}/{media_id}", download),
            web.post("/_matrix/media/v3/upload", upload),
            web.get("/_matrix/client/v1/media/config", config),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}"


def other_side(root: Path, plain: Path, answer: Any) -> None:
    """The child process: the media repository and the sandbox, with a native's blob."""

    async def serve() -> None:
        hs_base = await media_repository(root)
        sandbox = await start_sandbox(SimpleNamespace(base=f"http://127.0.0.1:{free_port()}"), media_dir=root / "gk")
        path, info = await sandbox.gatekeeper.encrypt_native_media("1@native", MediaType.DOCUMENT, plain)
        answer.put(
            {
                "hs": hs_base,
                "gk": sandbox.base,
                "media": Media(
                    direct_path=path,
                    media_key=info.media_key,
                    file_sha256=info.file_sha256,
                    file_enc_sha256=info.file_enc_sha256,
                    file_length=info.file_length,
                    mimetype="application/octet-stream",
                    file_name="file.bin",
                ).SerializeToString(),
            }
        )
        await asyncio.Event().wait()

    asyncio.run(serve())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=100, help="file size (at most 100, the profile's limit)")
    parser.add_argument("--rounds", type=int, default=3, help="transfers per direction; the best is kept")
    args = parser.parse_args()
    size = min(args.mib, 100) << 20
    with tempfile.TemporaryDirectory(prefix="media-bench-") as workdir:
        root = Path(workdir)
        plain = root / "file.bin"
        with plain.open("wb") as out:
            for _ in range(size // CHUNK):
                out.write(os.urandom(CHUNK))
        uri = f"sqlite:///{root / 'bridge.db'}"
        await upgrade(uri)
        db = create_database(uri)
        await db.start()
        stores = Stores.create(db, Sealer(bytes(32)))
        await stores.logins.insert(enlisted_login(OWNER, iid="1-1@interop"))
        answers: Any = multiprocessing.get_context("fork").Queue()
        child = multiprocessing.get_context("fork").Process(target=other_side, args=(root, plain, answers), daemon=True)
        child.start()
        started = answers.get(timeout=120)
        hs_base, gk_base = started["hs"], started["gk"]
        media = Media.FromString(started["media"])
        http = aiohttp.ClientSession()

        async def encrypted_room(room_id: str) -> bool:
            return True

        homeserver = HomeserverMedia(http, hs_base, "token", "@bot:localhost", encrypted_room)
        store = PartnerMediaStore(root / "partner", stores.partner_media)
        side = GatekeeperSide(
            None,  # type: ignore[arg-type]  # media needs no connection
            stores,
            tokens=None,  # type: ignore[arg-type]
            base_url=gk_base,
            http=http,
            media=store,
            integrator_id="bench",
        )
        matrix: Any = SimpleNamespace(
            download_media=homeserver.download,
            upload_media=homeserver.upload,
            media_upload_limit=homeserver.upload_limit,
        )
        flow = MediaFlow(SimpleNamespace(matrix=matrix, gatekeeper=side, network="WhatsApp"), root / "scratch")  # type: ignore[arg-type]

        # What Element uploads: the file encrypted for an encrypted room.
        encryptor = AttachmentEncryptor()
        with plain.open("rb") as source, (root / "matrix-file").open("wb") as out:
            while chunk := source.read(CHUNK):
                out.write(encryptor.update(chunk))
        content = {
            "msgtype": "m.file",
            "body": "file.bin",
            "file": encryptor.file("mxc://localhost/matrix-file", "application/octet-stream"),
            "info": {"size": size},
        }

        data = plain.read_bytes()  # the reference's input, held all along (growth is measured from here)

        async def timed(step: Any) -> tuple[float, float, int]:
            """Best throughput, best ratio to the reference measured just before each
            round (this machine's speed drifts between runs), largest memory growth."""
            best, best_ratio, growth = 0.0, 0.0, 0
            for _ in range(args.rounds):
                reference = reference_mb_s(data)
                memory = PeakMemory()
                start = time.perf_counter()
                await step()
                throughput = size / (1 << 20) / (time.perf_counter() - start)
                growth = max(growth, memory.stop())
                best, best_ratio = max(best, throughput), max(best_ratio, throughput / reference)
            return best, best_ratio, growth

        outgoing, out_ratio, out_memory = await timed(lambda: flow.outgoing(OWNER, content, reply_to=None))
        incoming, in_ratio, in_memory = await timed(lambda: flow.incoming(OWNER, "!room:localhost", "document", media))
        reference = max(reference_mb_s(data) for _ in range(3))

        await http.close()
        child.terminate()
        child.join()
        await db.close()

    mib = size >> 20
    print(f"file: {mib} MiB, best of {args.rounds} rounds per direction")
    print(f"reference AES-256-CBC + HMAC-SHA256 (cryptography, in memory): {reference:.0f} MB/s")
    for name, throughput, ratio, memory in (
        ("Matrix -> gatekeeper", outgoing, out_ratio, out_memory),
        ("gatekeeper -> Matrix", incoming, in_ratio, in_memory),
    ):
        print(f"{name}: {throughput:.0f} MB/s, ratio {ratio:.2f}, peak RSS +{memory >> 20} MiB")
    print(f"peak_rss_growth_mib: {max(out_memory, in_memory) >> 20}")
    print(f"media_vs_crypto_ratio: {min(out_ratio, in_ratio):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
