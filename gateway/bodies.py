"""Request bodies read and decoded with as few copies alive at once as possible.

A 6 MB base64 JSON body used to be held four times over while its request waited (werkzeug's
cached body, its parsed text, the dict's string, the decoded image). Here the body is read once
into one buffer, freed as soon as its text exists, and each base64 string is dropped from the
parsed object once decoded: at most two copies at any moment, one image's bytes afterwards.
A JSON object that names a key twice is refused: json.loads would keep the last value and drop
the other without a word.
"""

from __future__ import annotations

import binascii
import json
from typing import IO, Any

from gateway.errors import BadRequest, InvalidParameter, PayloadTooLarge, RepeatedParameter

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
    None when it is not JSON (any encoding json.loads would detect, as Flask does). A key given
    twice in one object, at any depth, is a 400 repeated_parameter naming the key and where."""
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
    except (UnicodeDecodeError, LookupError):
        return None
    finally:
        body.clear()
    try:
        return _DECODER.decode(text)
    except _RepeatedKey:
        repeat = _find_repeat(text)
        if repeat is None:  # not JSON after all: the repeat came before the syntax error
            return None
        key, path = repeat
        where = f"{_shown_path(path)} of the JSON body" if path else "the JSON body"
        raise RepeatedParameter(f"repeated key {_shown(key)} in {where}; give it once") from None
    except (ValueError, RecursionError):
        # json gives up on deep nesting (about 1,000 levels) with RecursionError, not ValueError.
        return None


class _RepeatedKey(Exception):
    """Some object in the text names a key twice; _find_repeat says which key and where."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # The fast path: one dict per object, as json.loads builds without a hook.
    obj = dict(pairs)
    if len(obj) < len(pairs):
        raise _RepeatedKey
    return obj


# One decoder for all requests: json.loads(text, object_pairs_hook=...) would build a decoder
# and its scanner per call, which costs more than the parse of a small body. Threads may share
# it: the scanner keeps no state between calls but its key memo, which the GIL guards.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


class _Pairs(list[tuple[str, Any]]):
    """An object as its (key, value) pairs, repeats kept: the slow path, for errors only."""


def _find_repeat(text: str) -> tuple[str, str] | None:
    """A repeated key and the path of its object (`.images[0]`, "" for the top level): the
    first in document order, an outer object's before those inside it; None when `text` is not
    JSON."""
    try:
        tree = json.loads(text, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[Any, str]] = [(tree, "")]  # no recursion: the nesting may be deep
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Pairs):
            seen: set[str] = set()
            for key, _ in node:
                if key in seen:
                    return key, path
                seen.add(key)
            children = [(v, path + _member(k)) for k, v in node if isinstance(v, list)]
        else:
            children = [(v, f"{path}[{i}]") for i, v in enumerate(node) if isinstance(v, list)]
        stack.extend(reversed(children))  # popped in document order
    return None


def _member(key: str) -> str:
    return f".{key}" if key.isidentifier() and len(key) <= _SHOWN_CHARS else f"[{_shown(key)}]"


# Keys are the client's text: a message shows at most this many characters of one, and of a
# path its last _SHOWN_PATH (the object's own place; nesting may be hundreds of levels deep).
_SHOWN_CHARS = 64
_SHOWN_PATH = 200


def _shown_path(path: str) -> str:
    if len(path) > _SHOWN_PATH:
        tail = path[-_SHOWN_PATH:]
        starts = [i for i in (tail.find("["), tail.find(".")) if i >= 0]
        return "..." + tail[min(starts, default=0) :].removeprefix(".")
    return path.removeprefix(".")


def _shown(key: str) -> str:
    if len(key) <= _SHOWN_CHARS:
        return json.dumps(key, ensure_ascii=False)
    return json.dumps(key[:_SHOWN_CHARS], ensure_ascii=False) + "..."


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
