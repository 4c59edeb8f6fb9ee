"""Content protobuf and its padding (§5)."""

from __future__ import annotations

import pytest

from bridge.gip.content import Content, ContextInfo, ExtendedText, decode_content, encode_content, pad, unpad
from bridge.gip.errors import GipError


def test_padding_is_1_to_15_bytes_of_its_length() -> None:
    lengths = set()
    for _ in range(400):
        padded = pad(b"body")
        n = padded[-1]
        lengths.add(n)
        assert padded == b"body" + bytes((n,)) * n
        assert unpad(padded) == b"body"
    assert lengths == set(range(1, 16))


@pytest.mark.parametrize("bad", [b"", b"body\x00", b"body\x10" * 16, b"body\x03\x03", b"\x02"])
def test_bad_padding_refused(bad: bytes) -> None:
    with pytest.raises(GipError):
        unpad(bad)


def test_content_round_trip_and_garbage() -> None:
    content = Content(
        extended_text=ExtendedText(text="re", context_info=ContextInfo(stanza_id="X", quoted=Content(text="q")))
    )
    assert decode_content(encode_content(content)) == content
    with pytest.raises(GipError):
        decode_content(pad(b"\xff\xff\xff"))
    with pytest.raises(GipError):
        decode_content(pad(b""))  # no body


def test_generated_module_matches_proto(tmp_path) -> None:
    """The committed content_pb2.py is what scripts/gen_proto.sh produces."""
    import subprocess
    import sys
    from pathlib import Path

    proto_dir = Path(__file__).resolve().parents[2] / "bridge" / "gip" / "proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={tmp_path}",
            str(proto_dir / "content.proto"),
        ],
        check=True,
    )
    assert (tmp_path / "content_pb2.py").read_text() == (proto_dir / "content_pb2.py").read_text()
