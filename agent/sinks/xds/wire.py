"""Just enough of the protobuf wire format to splice pre-serialized resources into responses.

A message's encoding is the concatenation of its fields' encodings, and parsers merge repeated
occurrences, so a response can be built as `header + resource fields + nonce` from bytes made
once per resource version and shared by every stream.
"""

from __future__ import annotations

_LEN = 2  # wire type of strings, bytes and sub-messages


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One string/bytes/message field: tag, length, payload."""
    return varint(field_number << 3 | _LEN) + varint(len(payload)) + payload


def string_field(field_number: int, value: str) -> bytes:
    return length_delimited(field_number, value.encode("utf-8")) if value else b""
