"""Request bodies read and decoded with as few copies alive at once as possible.

A 6 MB base64 JSON body used to be held four times over while its request waited (werkzeug's
cached body, its parsed text, the dict's string, the decoded image). Here the body is read once
into one buffer, freed as soon as its text exists, and each base64 string is dropped from the
parsed object once decoded: at most two copies at any moment, one image's bytes afterwards.
"""

from __future__ import annotations

import binascii
import json
from typing import IO, Any

from gateway.errors import BadRequest, InvalidParameter, PayloadTooLarge

# Read a body this much at a time: the server's stream may copy each read.
_READ_CHUNK = 1024 * 1024


def read_body(stream: IO[bytes], length: int | None, cap: int) -> bytearray:
    """The whole body: `length` bytes when the client said (Content-Length), else up to `cap`
    (413 past it). A body that ends early is a 400."""
    if length is None:
        return _read_unsized(stream, cap)
    body = bytearray(length)
    got = 0
    with memoryview(body) as view:
        while got < length:
            count = stream.readinto(view[got : got + _READ_CHUNK])  # type: ignore[attr-defined]
            if not count:
                break
            got += count
    if got < length:
        raise BadRequest(
            f"the body ended after {got} of its {length} bytes", code="incomplete_body"
        )
    return body


def _read_unsized(stream: IO[bytes], cap: int) -> bytearray:
    body = bytearray()
    while chunk := stream.read(min(_READ_CHUNK, cap + 1 - len(body))):
        body += chunk
        if len(body) > cap:
            raise PayloadTooLarge(f"the body is larger than {cap} bytes", code="request_too_large")
    return body


def parse_json(body: bytearray) -> Any:
    """The JSON value in `body`, which is emptied (its memory freed) once its text is decoded;
    None when it is not JSON (any encoding json.loads would detect, as Flask does)."""
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
    except (UnicodeDecodeError, LookupError):
        return None
    finally:
        body.clear()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        # json gives up on deep nesting (about 1,000 levels) with RecursionError, not ValueError.
        return None


def decode_b64(text: str, max_bytes: int) -> bytes:
    """Standard base64, with or without a data: URL prefix; decoded straight from the str (an
    ASCII str is read in place: no bytes copy of it is made)."""
    if text.startswith("data:") and "," in text:
        text = text[text.index(",") + 1 :]
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise PayloadTooLarge(f"image is larger than {max_bytes} bytes")
    try:
        # strict_mode: only the base64 alphabet and correct padding, as b64decode(validate=True)
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidParameter("image_b64 is not valid base64", code="invalid_base64") from exc
