"""Hostile and broken image bytes, shared by every test that feeds images to Fitroom
(decoder, CLI, and later the REST API), each with the error code it must produce."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from skimage import data as skdata

ASTRONAUT = skdata.astronaut()  # 512x512x3 uint8, a real photo


def save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, idat: bytes | None = None) -> bytes:
    """A hand-made PNG, so headers can declare anything the pixel data does not back up."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + (b"" if idat is None else chunk(b"IDAT", idat))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def png_bomb(side: int = 20000) -> bytes:
    """A valid side x side 1-bit PNG of zeros: tens of KB on disk, gigabytes once decoded."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    rows_per_block = 1000
    idat = b"".join(z.compress(row * rows_per_block) for _ in range(side // rows_per_block)) + z.flush()
    return png(side, side, bit_depth=1, color_type=0, idat=idat)


def corrupt_png() -> bytes:
    data = bytearray(save(Image.fromarray(ASTRONAUT), "PNG"))
    start = data.index(b"IDAT") + 4 + 5000
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    return bytes(data)


def corpus() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected error code)."""
    jpeg, png_ = save(Image.fromarray(ASTRONAUT), "JPEG"), save(Image.fromarray(ASTRONAUT), "PNG")
    return {
        "zero_bytes": (b"", "image_invalid"),
        "random_bytes": (np.random.default_rng(0).bytes(4096), "image_invalid"),
        "text": (b"Hello, this is a plain text file.\n" * 20, "image_invalid"),
        "html": (b"<!DOCTYPE html><html><body><p>hi</p></body></html>", "image_invalid"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "image_invalid"),
        "truncated_png": (png_[: len(png_) // 2], "image_invalid"),
        "corrupt_png": (corrupt_png(), "image_invalid"),
        "zero_size_png": (png(0, 0, idat=zlib.compress(b"")), "image_invalid"),
        "svg": (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>',
            "unsupported_media_type",
        ),
        "gif": (save(Image.fromarray(ASTRONAUT[:64, :64]).convert("P"), "GIF"), "unsupported_media_type"),
        "huge_declared_png": (png(2**31 - 1, 2**31 - 1), "image_too_large"),
        "png_bomb_20000": (png_bomb(), "image_too_large"),
    }
