"""Image vetting and preparation: formats from the bytes, caps from the header, first frames;
header-only vetting for models that report each image's failed decode themselves."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from gateway.errors import PayloadTooLarge, UndecodableImage, UnsupportedMediaType
from gateway.images import check_image, encoded_for_graph, pixels_for_graph, sniff_format
from gateway.membudget import PIXEL_BYTES, MemoryBudget, for_request
from tests.gateway.conftest import animated_gif
from tests.imagehost import image_bytes


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp")],
)
def test_formats_are_sniffed_from_bytes(fmt: str, name: str) -> None:
    data = image_bytes(fmt)
    assert sniff_format(data) == name
    checked = check_image(data, 1000)
    assert (checked.format, checked.width, checked.height) == (name, 8, 8)


@pytest.mark.parametrize(
    "data", [b"", b"hello", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"%PDF-1.7", b"II*\0"]
)
def test_non_images_are_415(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        check_image(data, 1000)


def with_claimed_size(png: bytes, width: int, height: int) -> bytes:
    """A real 8x8 PNG whose header claims another size (the pixel data stays tiny)."""
    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


@pytest.mark.parametrize(("width", "height"), [(10_000, 5_000), (100_000, 100_000)])
def test_pixel_cap_is_read_from_the_header_without_decoding(width: int, height: int) -> None:
    data = with_claimed_size(image_bytes("PNG"), width, height)
    with pytest.raises(PayloadTooLarge):
        check_image(data, 40_000_000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_images_are_422(fmt: str) -> None:
    data = image_bytes(fmt, size=(64, 64), color="purple")
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    out = io.BytesIO()
    noisy.save(out, format=fmt)
    data = out.getvalue()
    with pytest.raises(UndecodableImage):
        check_image(data[: len(data) // 2], 1_000_000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_graph_formats_pass_through_untouched(fmt: str) -> None:
    data = image_bytes(fmt)
    assert encoded_for_graph(check_image(data, 1000)) is data


def cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(out, format="JPEG")
    return out.getvalue()


@pytest.mark.parametrize(
    "data", [image_bytes("WEBP"), animated_gif(), image_bytes("BMP"), cmyk_jpeg()]
)
def test_formats_the_graph_may_reject_become_one_png_frame(data: bytes) -> None:
    converted = encoded_for_graph(check_image(data, 1000))
    with Image.open(io.BytesIO(converted)) as img:
        assert img.format == "PNG"
        assert not getattr(img, "is_animated", False)
        assert img.mode == "RGB"


def test_pixels_are_float32_rgb_resized() -> None:
    data = image_bytes("PNG", size=(50, 20), color=(10, 20, 30))  # type: ignore[arg-type]
    raw = pixels_for_graph(check_image(data, 10_000), 4, 6)
    values = struct.unpack(f"<{4 * 6 * 3}f", raw)
    assert values[:3] == (10.0, 20.0, 30.0)
    assert len(values) == 72


def test_transparency_is_composited_on_white() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(out, format="PNG")
    raw = pixels_for_graph(check_image(out.getvalue(), 100), 2, 2)
    assert struct.unpack("<3f", raw[:12]) == (255.0, 255.0, 255.0)


# --- header-only vetting for models that report failed decodes (InputPlan.tolerant) ----------


def noisy(fmt: str, mode: str = "RGB", size: tuple[int, int] = (64, 64)) -> bytes:
    """Noise compresses badly: half the bytes is well inside the image data."""
    out = io.BytesIO()
    Image.effect_noise(size, 80).convert(mode).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGBA")])
def test_a_tolerant_model_gets_a_truncated_body_it_will_judge_itself(fmt: str, mode: str) -> None:
    data = noisy(fmt, mode)
    cut = data[: len(data) // 2]
    with pytest.raises(UndecodableImage):
        check_image(cut, 1_000_000)
    checked = check_image(cut, 1_000_000, tolerant=True)
    assert (checked.width, checked.height, checked.mode) == (64, 64, mode)
    assert encoded_for_graph(checked) is cut  # sent as received: nothing decoded here


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"GIF90a not a gif", UnsupportedMediaType),
        (b"\xff\xd8\xff" + b"\x00" * 64, UndecodableImage),  # JPEG magic, no header after it
        (image_bytes("PNG")[:20], UndecodableImage),  # cut inside the header
        (with_claimed_size(image_bytes("PNG"), 10_000, 5_000), PayloadTooLarge),
    ],
)
def test_header_only_still_refuses_what_the_header_gives_away(
    data: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        check_image(data, 40_000_000, tolerant=True)


@pytest.mark.parametrize("data", [noisy("BMP"), noisy("JPEG", "CMYK")])
def test_what_the_gateway_re_encodes_is_still_decoded_to_vet(data: bytes) -> None:
    """BMP and CMYK JPEG become a PNG made here (encoded_for_graph): a tolerant model cannot
    judge bytes it never sees, so their truncation is the gateway's 422 as before."""
    with pytest.raises(UndecodableImage, match="corrupt or truncated"):
        check_image(data[: len(data) // 2], 1_000_000, tolerant=True)


def test_header_only_charges_no_pixels_to_the_request() -> None:
    png = image_bytes("PNG", size=(500, 400))
    budget = MemoryBudget(8 * 1024 * 1024)
    with for_request(budget.reserve("a", 0)) as reservation:
        check_image(png, 40_000_000, tolerant=True)
        assert reservation.held == 0
        check_image(png, 40_000_000)
        assert reservation.held == 500 * 400 * PIXEL_BYTES
