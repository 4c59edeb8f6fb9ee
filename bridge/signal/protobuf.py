"""A minimal proto2 codec for the flat messages of the Signal wire format.

The wire messages hold only varints and byte strings, so a hand codec keeps every
malformed input inside :class:`InvalidMessageError` and avoids a generated module.
Unknown fields are skipped, as protobuf requires; groups (wire types 3 and 4) are
refused because no Signal message uses them.
"""

from collections.abc import Iterable, Iterator

from .errors import InvalidMessageError

VARINT = 0
FIXED64 = 1
BYTES = 2
FIXED32 = 5

_MAX_VARINT_BYTES = 10
_MAX_FIELD_NUMBER = (1 << 29) - 1


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(data)
    for _ in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise InvalidMessageError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise InvalidMessageError("varint longer than 10 bytes")


def encode(fields: Iterable[tuple[int, int | bytes | None]]) -> bytes:
    """Encode (field number, value) pairs; ints become varints, bytes length-delimited.

    ``None`` values are left out, as an unset optional field.
    """
    out = bytearray()
    for number, value in fields:
        if value is None:
            continue
        if isinstance(value, int):
            out += encode_varint(number << 3 | VARINT)
            out += encode_varint(value)
        else:
            out += encode_varint(number << 3 | BYTES)
            out += encode_varint(len(value))
            out += value
    return bytes(out)


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes | None]]:
    """Yield (field number, wire type, value) in order; fixed-width values come as None.

    Raises:
        InvalidMessageError: truncated input, a bad field number or a group wire type.
    """
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number = key >> 3
        wire_type = key & 7
        if number == 0 or number > _MAX_FIELD_NUMBER:
            raise InvalidMessageError("invalid protobuf field number")
        value: int | bytes | None = None
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == BYTES:
            length, pos = _read_varint(data, pos)
            if length > end - pos:
                raise InvalidMessageError("truncated length-delimited field")
            value = data[pos : pos + length]
            pos += length
        elif wire_type in (FIXED64, FIXED32):
            pos += 8 if wire_type == FIXED64 else 4
            if pos > end:
                raise InvalidMessageError("truncated fixed-width field")
        else:
            raise InvalidMessageError(f"unsupported protobuf wire type {wire_type}")
        yield number, wire_type, value


def decode(data: bytes) -> dict[int, int | bytes]:
    """Decode a flat message into {field number: last value}, as proto2 does for scalars.

    Varints come back as ``int`` and length-delimited fields as ``bytes``; fixed-width
    fields are skipped since no Signal message defines one.
    """
    return {number: value for number, _, value in iter_fields(data) if value is not None}


def decode_repeated(data: bytes) -> dict[int, list[int | bytes]]:
    """Like :func:`decode`, but keeps every occurrence of a field in order."""
    fields: dict[int, list[int | bytes]] = {}
    for number, _, value in iter_fields(data):
        if value is not None:
            fields.setdefault(number, []).append(value)
    return fields


def get_int(fields: dict[int, int | bytes], number: int, default: int | None = None) -> int | None:
    value = fields.get(number, default)
    if value is not None and not isinstance(value, int):
        raise InvalidMessageError(f"field {number} should be a varint")
    return value


def get_bytes(fields: dict[int, int | bytes], number: int) -> bytes | None:
    value = fields.get(number)
    if value is not None and not isinstance(value, bytes):
        raise InvalidMessageError(f"field {number} should be length-delimited")
    return value
