"""Vetting and preparing image bytes: sniff the format, check the size, decode only if needed.

String-input signatures get the encoded bytes (the graph decodes them); float-input signatures
get RGB pixels decoded and resized here with Pillow. Formats the graph cannot decode (WebP) and
animated images are re-encoded as a single-frame PNG first.
"""

from __future__ import annotations

import io
import sys
import warnings
from array import array
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from gateway.errors import PayloadTooLarge, UndecodableImage, UnsupportedMediaType
from gateway.membudget import charge_pixels

# What the bytes start with decides the format; Content-Type and file names are not trusted.
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
# What tf.io.decode_image reliably decodes, by format and Pillow mode; anything else (WebP,
# BMP variants TF rejects, CMYK JPEG, animations) is re-encoded as PNG before it is sent.
GRAPH_SAFE = {
    "jpeg": frozenset({"RGB", "L"}),
    "png": frozenset({"RGB", "RGBA", "L", "LA", "P", "I;16", "I"}),
    "gif": frozenset({"P", "L", "RGB"}),
}


@dataclass(frozen=True)
class CheckedImage:
    """Image bytes whose format and dimensions have been vetted."""

    data: bytes
    format: str
    width: int
    height: int
    mode: str
    animated: bool


def sniff_format(data: bytes) -> str:
    """The image format named by the leading bytes, or UnsupportedMediaType."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise UnsupportedMediaType("not an image in a supported format (JPEG, PNG, GIF, WebP, BMP)")


def check_image(data: bytes, max_pixels: int, tolerant: bool = False) -> CheckedImage:
    """Sniff, read the header only, enforce the pixel cap, then prove the first frame decodes.

    `tolerant`: the model reports each image's failed decode (InputPlan.tolerant), so an image
    sent as is (`sent_as_is`) is not decoded here: the model server's decode is the proof, and
    a failure spoils only its own row. What the gateway decodes itself is always proven first.
    """
    fmt = sniff_format(data)
    with _open(data, fmt) as img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise UndecodableImage("image has no pixels")
        if width * height > max_pixels:
            raise PayloadTooLarge(
                f"image is {width}x{height} pixels; the limit is {max_pixels} pixels"
            )
        animated = bool(getattr(img, "is_animated", False))
        mode = img.mode
        if not (tolerant and sent_as_is(fmt, mode, animated)):
            _prove_first_frame(img, fmt)
    return CheckedImage(data, fmt, width, height, mode, animated)


def sent_as_is(fmt: str, mode: str, animated: bool) -> bool:
    """Whether a string-input signature gets the bytes as received (else a PNG of frame one)."""
    return mode in GRAPH_SAFE.get(fmt, ()) and not animated


def _prove_first_frame(img: Image.Image, fmt: str) -> None:
    width, height = img.size
    if fmt == "jpeg":
        # Decoding at 1/8 scale still parses every byte, so truncation is caught cheaply.
        img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
    else:
        charge_pixels(width, height)  # decoded whole: the request's memory budget counts it
    _load_first_frame(img)


def _open(data: bytes, fmt: str) -> Image.Image:
    try:
        # Only the format we sniffed may decode it: no surprise plugins.
        return Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UndecodableImage(f"cannot read the {fmt.upper()} header") from exc


def _load_first_frame(img: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.seek(0)
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Warning) as exc:
        raise UndecodableImage(f"the image data is corrupt or truncated: {exc}") from exc


def encoded_for_graph(image: CheckedImage) -> bytes:
    """Bytes a string-input signature can decode: as sent, or the first frame as PNG."""
    if sent_as_is(image.format, image.mode, image.animated):
        return image.data
    with _open(image.data, image.format) as img:
        img.seek(0)
        out = io.BytesIO()
        _to_rgb(img).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def pixels_for_graph(image: CheckedImage, height: int, width: int) -> bytes:
    """Little-endian float32 RGB values 0..255 of the first frame resized to height x width."""
    with _open(image.data, image.format) as img:
        img.seek(0)
        if image.format == "jpeg":
            img.draft("RGB", (width, height))  # DCT scaling: decode less than full size
        rgb = _to_rgb(img).resize((width, height), Image.Resampling.BILINEAR)
        values = array("f", iter(rgb.tobytes()))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        # Transparent pixels over white, as browsers show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
