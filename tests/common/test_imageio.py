"""decode_image on real photos in every mode we accept, and on everything hostile we refuse."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageChops

from services.common.contracts import LIP_PALETTE
from services.common.errors import FitroomError, ImageInvalid, ImageTooLarge, UnsupportedMediaType
from services.common.imageio import (
    decode_image,
    decode_image_rgba,
    encode_jpeg,
    encode_label_png,
    encode_png,
    read_image_file,
)
from tests.bad_images import ASTRONAUT, png, png_bomb, save


def _raises(exc: type[FitroomError], code: str, data: bytes, **kwargs) -> FitroomError:
    with pytest.raises(exc) as info:
        decode_image(data, **kwargs)
    assert type(info.value) is exc
    assert info.value.code == code
    assert info.value.message
    return info.value


# --- accepted inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "kwargs"), [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})])
def test_lossless_formats_roundtrip_exactly(fmt: str, kwargs: dict) -> None:
    out = decode_image(save(Image.fromarray(ASTRONAUT), fmt, **kwargs))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ASTRONAUT)


def test_jpeg_decodes_close_to_source() -> None:
    out = decode_image(save(Image.fromarray(ASTRONAUT), "JPEG", quality=95))
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ASTRONAUT).mean() < 3


def test_exif_orientation_6_is_rotated_upright() -> None:
    src = ASTRONAUT[:, :384]  # not square, so a missed rotation shows in the shape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    jpeg = save(Image.fromarray(src), "JPEG", quality=95, exif=exif.tobytes())

    out = decode_image(jpeg)

    assert out.shape == (384, 512, 3)
    raw = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))  # same decoder, no orientation
    np.testing.assert_array_equal(out, np.rot90(raw, k=-1))
    assert np.abs(out.astype(int) - np.rot90(src, k=-1)).mean() < 3
    assert np.abs(out.astype(int) - np.rot90(src, k=1)).mean() > 20  # and not the other way round


def test_rgba_png_is_composited_on_white_and_rgba_keeps_alpha() -> None:
    rgba = np.dstack([ASTRONAUT, np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))])
    png = save(Image.fromarray(rgba), "PNG")

    np.testing.assert_array_equal(decode_image_rgba(png), rgba)
    out = decode_image(png)
    alpha = rgba[..., 3:].astype(float) / 255
    expected = ASTRONAUT * alpha + 255 * (1 - alpha)
    assert np.abs(out - expected).max() <= 1
    np.testing.assert_array_equal(out[:, 0], 255)  # fully transparent column is pure white
    assert np.abs(out[:, -1].astype(int) - ASTRONAUT[:, -1]).max() <= 1  # opaque column untouched


def test_opaque_image_gets_alpha_255() -> None:
    out = decode_image_rgba(save(Image.fromarray(ASTRONAUT), "PNG"))
    assert out.shape == (512, 512, 4)
    np.testing.assert_array_equal(out[..., :3], ASTRONAUT)
    assert (out[..., 3] == 255).all()


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = np.asarray(Image.fromarray(ASTRONAUT).convert("L"))
    out = decode_image(save(Image.fromarray(gray), "PNG"))
    assert out.shape == (512, 512, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_gray_alphapng() -> None:
    la = Image.fromarray(np.array([[[0, 255], [100, 0]]], dtype=np.uint8), "LA")
    np.testing.assert_array_equal(decode_image(save(la, "PNG")), [[[0, 0, 0], [255, 255, 255]]])


def test_adobe_cmyk_jpeg() -> None:
    jpeg = save(Image.fromarray(ASTRONAUT).convert("CMYK"), "JPEG", quality=95)
    assert b"Adobe" in jpeg  # libjpeg writes Adobe's APP14 marker and inverted CMYK
    assert Image.open(io.BytesIO(jpeg)).mode == "CMYK"
    out = decode_image(jpeg)
    assert out.shape == (512, 512, 3)
    assert np.abs(out.astype(int) - ASTRONAUT).mean() < 4


def test_plain_cmyk_jpeg_without_adobe_marker_is_not_inverted() -> None:
    cmyk = Image.fromarray(ASTRONAUT).convert("CMYK")
    # Pillow inverts on save, so pre-invert to get plain CMYK samples, then drop the APP14 marker.
    jpeg = save(ImageChops.invert(cmyk), "JPEG", quality=95)
    at = jpeg.index(b"Adobe") - 4  # APP14 marker, 2-byte length, "Adobe"
    assert jpeg[at : at + 2] == b"\xff\xee"
    length = struct.unpack(">H", jpeg[at + 2 : at + 4])[0]
    plain = jpeg[:at] + jpeg[at + 2 + length :]
    assert b"Adobe" not in plain
    assert np.abs(decode_image(plain).astype(int) - ASTRONAUT).mean() < 4


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_grayscale_is_scaled_not_clipped(mode: str) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype="<u2" if mode == "I;16" else ">u2")
    img = Image.frombytes(mode, (4, 1), values.tobytes())
    for fmt in ("PNG", "TIFF"):
        encoded = save(img, fmt)
        out = decode_image(encoded)
        np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
        np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_32_bit_int_tiff_with_16_bit_values() -> None:
    img = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert img.mode == "I"
    np.testing.assert_array_equal(decode_image(save(img, "TIFF"))[0, :, 0], [0, 128, 255])


def test_16_bit_photo_png_keeps_its_content() -> None:
    gray = np.asarray(Image.fromarray(ASTRONAUT).convert("L")).astype(np.uint16) * 257
    out = decode_image(save(Image.fromarray(gray), "PNG"))
    np.testing.assert_array_equal(out[..., 0], gray // 257)


def test_palette_with_transparency() -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    img.putdata([0, 1, 2])
    png = save(img, "PNG", transparency=0)

    np.testing.assert_array_equal(decode_image(png), [[[255, 255, 255], [255, 0, 0], [0, 0, 255]]])
    np.testing.assert_array_equal(decode_image_rgba(png)[0, :, 3], [0, 255, 255])


def test_palette_photo_without_transparency() -> None:
    pal = Image.fromarray(ASTRONAUT).quantize(64)
    out = decode_image(save(pal, "PNG"))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_rgb_png_with_trns_colour_key() -> None:
    rgb = np.array([[[10, 20, 30], [1, 2, 3]]], dtype=np.uint8)
    png = save(Image.fromarray(rgb), "PNG", transparency=(10, 20, 30))
    np.testing.assert_array_equal(decode_image(png), [[[255, 255, 255], [1, 2, 3]]])


def test_one_bit_image() -> None:
    bits = Image.fromarray(ASTRONAUT).convert("1")  # dithered, really 1-bit
    out = decode_image(save(bits, "PNG"))
    assert set(np.unique(out)) <= {0, 255}
    np.testing.assert_array_equal(out[..., 0], np.asarray(bits.convert("L")))


# --- refused inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        np.random.default_rng(0).bytes(4096),
        b"Hello, this is a plain text file.\n" * 20,
        b"<!DOCTYPE html><html><body><svg width='10' height='10'></svg></body></html>",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
        b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",  # an MP4 video
    ],
    ids=["empty", "random", "text", "html", "pdf", "mp4"],
)
def test_not_an_image(data: bytes) -> None:
    _raises(ImageInvalid, "image_invalid", data)


SVG = b'<?xml version="1.0"?>\n<!-- logo -->\n<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'


@pytest.mark.parametrize(
    "data",
    [
        save(Image.fromarray(ASTRONAUT[:64, :64]).convert("P"), "GIF"),
        SVG,
        b"\xef\xbb\xbf  <svg viewBox='0 0 1 1'></svg>",
        save(Image.fromarray(ASTRONAUT[:32, :32]), "ICO"),
        b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic",
    ],
    ids=["gif", "svg", "bare-svg", "ico", "heic"],
)
def test_real_but_unsupported_image(data: bytes) -> None:
    err = _raises(UnsupportedMediaType, "unsupported_media_type", data)
    assert "JPEG, PNG" in err.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_at_half(fmt: str) -> None:
    encoded = save(Image.fromarray(ASTRONAUT), fmt)
    _raises(ImageInvalid, "image_invalid", encoded[: len(encoded) // 2])


def test_corrupt_png_idat() -> None:
    png = bytearray(save(Image.fromarray(ASTRONAUT), "PNG"))
    start = png.index(b"IDAT") + 4 + 5000
    png[start : start + 64] = bytes(b ^ 0xFF for b in png[start : start + 64])
    err = _raises(ImageInvalid, "image_invalid", bytes(png))
    assert "PNG" in err.message


def test_corrupt_png_header_crc() -> None:
    png = bytearray(save(Image.fromarray(ASTRONAUT), "PNG"))
    png[16] ^= 0x01  # width byte inside IHDR: CRC mismatch
    _raises(ImageInvalid, "image_invalid", bytes(png))


def test_declared_zero_sizepng() -> None:
    _raises(ImageInvalid, "image_invalid", png(0, 0, idat=zlib.compress(b"")))


def test_png_without_pixel_data() -> None:
    _raises(ImageInvalid, "image_invalid", png(100, 100))
    _raises(ImageInvalid, "image_invalid", png(100, 100, idat=b""))


def test_huge_declared_png_without_data() -> None:
    _raises(ImageTooLarge, "image_too_large", png(20000, 20000))
    _raises(ImageTooLarge, "image_too_large", png(2**31 - 1, 2**31 - 1))


def test_png_bomb_is_refused_from_the_header() -> None:
    bomb = png_bomb()
    assert len(bomb) < 100_000
    start = time.perf_counter()
    err = _raises(ImageTooLarge, "image_too_large", bomb)
    assert time.perf_counter() - start < 0.5  # decoding 400 Mpx would take seconds and 1.2 GB
    assert "400000000 pixels" in err.message


def test_pixel_limit_is_exact() -> None:
    png = save(Image.fromarray(ASTRONAUT), "PNG")
    assert decode_image(png, max_pixels=512 * 512).shape == (512, 512, 3)
    _raises(ImageTooLarge, "image_too_large", png, max_pixels=512 * 512 - 1)


def test_pillow_bomb_limits_map_to_image_too_large_and_do_not_leak() -> None:
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    # Our own limit out of the way: Pillow's error (> 2x its limit) and warning (> its limit).
    _raises(ImageTooLarge, "image_too_large", png_bomb(), max_pixels=10**12)
    _raises(ImageTooLarge, "image_too_large", png(10000, 10000), max_pixels=10**12)
    assert warnings.filters == filters_before
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_byte_limit_is_checked_before_anything_else() -> None:
    png = save(Image.fromarray(ASTRONAUT), "PNG")
    assert decode_image(png, max_bytes=len(png)).shape == (512, 512, 3)
    _raises(ImageTooLarge, "image_too_large", png, max_bytes=len(png) - 1)
    _raises(ImageTooLarge, "image_too_large", b"not an image" * 10, max_bytes=100)


def test_limits_default_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common import config

    monkeypatch.setenv("FITROOM_MAX_IMAGE_PIXELS", "1000")
    config.get_settings.cache_clear()
    try:
        _raises(ImageTooLarge, "image_too_large", save(Image.fromarray(ASTRONAUT), "PNG"))
    finally:
        monkeypatch.undo()
        config.get_settings.cache_clear()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow chatters about damaged TIFF tags
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_fuzzed_inputs_raise_only_typed_errors(fmt: str) -> None:
    """Random byte damage must give a clean decode or a FitroomError, never a raw exception."""
    encoded = save(Image.fromarray(ASTRONAUT[:48, :64]), fmt)
    rng = np.random.default_rng(1234)
    for _ in range(150):
        damaged = bytearray(encoded)
        for pos in rng.integers(0, len(damaged), size=rng.integers(1, 8)):
            damaged[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            damaged = damaged[: rng.integers(1, len(damaged))]
        try:
            out = decode_image(bytes(damaged), max_pixels=10_000_000)
        except FitroomError:
            continue
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


# --- files and encoders -------------------------------------------------------------------------


def test_read_image_file(tmp_path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(save(Image.fromarray(ASTRONAUT), "PNG"))
    np.testing.assert_array_equal(read_image_file(path), ASTRONAUT)
    with pytest.raises(ImageTooLarge) as info:
        read_image_file(path, max_bytes=1000)
    assert info.value.code == "image_too_large"


@pytest.mark.parametrize("name", ["missing.jpg", "."])
def test_read_image_file_unreadable(tmp_path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ImageInvalid) as info:
        read_image_file(path)
    assert info.value.code == "image_invalid"
    assert str(path) in info.value.message


def test_encode_png_roundtrips_rgb_rgba_gray() -> None:
    rgba = np.dstack([ASTRONAUT, np.full((512, 512), 7, np.uint8)])
    np.testing.assert_array_equal(decode_image(encode_png(ASTRONAUT)), ASTRONAUT)
    np.testing.assert_array_equal(decode_image_rgba(encode_png(rgba)), rgba)
    gray = ASTRONAUT[..., 0]
    np.testing.assert_array_equal(decode_image(encode_png(gray))[..., 1], gray)
    np.testing.assert_array_equal(decode_image(encode_png(gray[..., None]))[..., 2], gray)


def test_encode_label_png_keeps_the_ids_and_the_palette() -> None:
    labels = np.arange(20, dtype=np.uint8).repeat(30).reshape(24, 25)
    img = Image.open(io.BytesIO(encode_label_png(labels, LIP_PALETTE)))
    assert img.mode == "P" and img.size == (25, 24)
    np.testing.assert_array_equal(np.asarray(img), labels)
    palette = img.getpalette()
    assert palette[:60] == [v for colour in LIP_PALETTE for v in colour] and palette[60:] == [0] * (768 - 60)
    colours = decode_image(encode_label_png(labels, LIP_PALETTE))  # any viewer shows it in colour
    np.testing.assert_array_equal(colours, np.array(LIP_PALETTE, np.uint8)[labels])


@pytest.mark.parametrize(
    ("labels", "palette"),
    [
        (np.full((4, 4), 20, np.uint8), LIP_PALETTE),  # an id without a colour
        (np.zeros((4, 4, 3), np.uint8), LIP_PALETTE),
        (np.zeros((4, 4), np.float32), LIP_PALETTE),
        (np.zeros((4, 4), np.uint8), [(0, 0, 0)] * 257),
        (np.zeros((4, 4), np.uint8), []),
    ],
)
def test_encode_label_png_refuses_bad_input(labels: np.ndarray, palette: list) -> None:
    with pytest.raises(ValueError):
        encode_label_png(labels, palette)


def test_encode_jpeg() -> None:
    jpeg = encode_jpeg(ASTRONAUT)
    assert jpeg.startswith(b"\xff\xd8\xff")
    assert np.abs(decode_image(jpeg).astype(int) - ASTRONAUT).mean() < 3
    assert len(encode_jpeg(ASTRONAUT, quality=30)) < len(jpeg)
    transparent = np.zeros((8, 8, 4), np.uint8)
    assert (decode_image(encode_jpeg(transparent)) >= 250).all()  # flattened onto white


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros(4, np.uint8),
        np.zeros((0, 4), np.uint8),
    ],
)
def test_encoders_refuse_bad_arrays(arr: np.ndarray) -> None:
    for encode in (encode_png, encode_jpeg):
        with pytest.raises(ValueError):
            encode(arr)
