"""Decode untrusted image uploads into numpy arrays, and encode results.

Uploads come straight from users, so decoding is defensive:
- byte and pixel limits are checked before any pixel is decoded (a 20000x20000 PNG of zeros is a
  few KB on the wire and 1.2 GB in memory);
- the format is sniffed from magic bytes, never taken from a file name or Content-Type, and only
  JPEG, PNG, WebP, BMP and TIFF reach a decoder (Pillow can read ~40 formats, some via external
  programs; none of the others are reachable from here);
- every decoder failure becomes a FitroomError with a stable code, never a raw PIL/zlib error.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageChops, ImageOps

from services.common.config import get_settings
from services.common.errors import FitroomError, ImageInvalid, ImageTooLarge, UnsupportedMediaType

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")

# Magic bytes -> Pillow format name of the formats we decode.
_ACCEPTED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)
# Real images we recognise but refuse: the client gets unsupported_media_type (convert and retry)
# rather than image_invalid (your file is broken).
_REFUSED_MAGIC = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
# An SVG is XML whose root element is <svg>, possibly after a BOM, <?xml?>, comments and a DOCTYPE.
# An HTML page with inline <svg> does not match: its root is <html>.
_SVG_ROOT = re.compile(
    rb"\A(?:\xef\xbb\xbf)?\s*(?:(?:<\?[^>]*>|<!--.*?-->|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>)\s*)*<(?:[\w.-]+:)?svg[\s>/]",
    re.DOTALL | re.IGNORECASE,
)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WHITE = (255, 255, 255)


def decode_image(data: bytes, *, max_bytes: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode an upload to an HxWx3 uint8 RGB array, upright per EXIF.

    Transparency is composited onto white: garment product shots are cut-outs, and white is the
    neutral studio background the models expect. Use decode_image_rgba to keep the alpha.
    Raises ImageInvalid, ImageTooLarge or UnsupportedMediaType; nothing else.
    """
    img = _decode(data, max_bytes, max_pixels)
    return np.array(_flatten_on_white(img))


def decode_image_rgba(data: bytes, *, max_bytes: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Like decode_image but HxWx4, keeping alpha (255 everywhere for opaque formats)."""
    img = _decode(data, max_bytes, max_pixels)
    return np.array(img if img.mode == "RGBA" else img.convert("RGBA"))


def read_image_file(
    path: str | os.PathLike[str], *, max_bytes: int | None = None, max_pixels: int | None = None, rgba: bool = False
) -> np.ndarray:
    """Decode an image file with exactly the limits and errors of an upload (CLI, fixtures);
    `rgba` keeps the alpha channel (decode_image_rgba), as garment cut-outs need."""
    limit = get_settings().max_image_bytes if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # enough to know it is too big, without slurping a huge file
    except OSError as e:
        raise ImageInvalid(f"cannot read image file {os.fspath(path)}: {e.strerror or e}") from e
    decode = decode_image_rgba if rgba else decode_image
    return decode(data, max_bytes=limit, max_pixels=max_pixels)


def encode_png(arr: np.ndarray) -> bytes:
    """Lossless PNG of an HxW, HxWx3 or HxWx4 uint8 array (masks, RGBA garments, debug output)."""
    return _png_bytes(_to_pil(arr))


def encode_label_png(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """Palette ("P" mode) PNG of an HxW uint8 label map: each pixel value is its label id and
    `palette[id]` its (r, g, b) colour, padded with black to 256 entries (VITON's parse maps)."""
    if labels.ndim != 2:
        raise ValueError(f"expected an HxW label map, got shape {labels.shape}")
    if not 0 < len(palette) <= 256:
        raise ValueError(f"a PNG palette has 1 to 256 entries, got {len(palette)}")
    if labels.size and int(labels.max()) >= len(palette):
        raise ValueError(f"label {int(labels.max())} has no palette entry (palette of {len(palette)})")
    img = _to_pil(labels)  # mode L; putpalette makes it P with the same pixel values
    img.putpalette([int(v) for colour in palette for v in colour] + [0] * 3 * (256 - len(palette)))
    return _png_bytes(img)


def encode_jpeg(arr: np.ndarray, quality: int = 92) -> bytes:
    """JPEG of an HxW, HxWx3 or HxWx4 uint8 array; alpha is composited onto white (JPEG has none)."""
    buf = io.BytesIO()
    _flatten_on_white(_to_pil(arr)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _decode(data: bytes, max_bytes: int | None, max_pixels: int | None) -> Image.Image:
    """The one decode path: limits, sniffing, full decode, EXIF orientation; returns RGB or RGBA."""
    settings = get_settings()
    max_bytes = settings.max_image_bytes if max_bytes is None else max_bytes
    max_pixels = settings.max_image_pixels if max_pixels is None else max_pixels
    if not data:
        raise ImageInvalid("the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data):,} bytes, over the limit of {max_bytes:,} bytes")
    fmt = _sniff(data)
    try:
        # Pillow's own bomb check warns above Image.MAX_IMAGE_PIXELS and raises above twice that;
        # make the warning an error too, locally. (catch_warnings swaps process-wide filters, so
        # two threads racing here can at worst leave this one "error" filter installed: harmless.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])  # lazy: reads the header only
            _check_dimensions(img.size, max_pixels)
            img.load()
        img = _upright(img)
        return _to_rgb_or_rgba(img)
    except FitroomError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"the image has too many pixels: {e}") from e
    except MemoryError as e:
        raise ImageTooLarge("not enough memory to decode the image") from e
    except Image.UnidentifiedImageError as e:
        raise ImageInvalid(f"the file starts like a {fmt} but its header is corrupt") from e
    except Exception as e:  # OSError, SyntaxError, ValueError, zlib.error, struct.error ...
        raise ImageInvalid(f"the {fmt} data is corrupt or truncated ({type(e).__name__}: {e})") from e


def _sniff(data: bytes) -> str:
    """Pillow format name from the magic bytes, or the right error for anything we will not decode."""
    for magic, fmt in _ACCEPTED_MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    refused = next((name for magic, name in _REFUSED_MAGIC if data.startswith(magic)), None)
    if refused is None and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        refused = "HEIF/AVIF"
    if refused is None and _SVG_ROOT.match(data[:4096]):
        refused = "SVG"
    if refused:
        raise UnsupportedMediaType(f"{refused} images are not supported; send JPEG, PNG, WebP, BMP or TIFF")
    raise ImageInvalid("the data is not an image (expected JPEG, PNG, WebP, BMP or TIFF)")


def _check_dimensions(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageInvalid(f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )


def _upright(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation: phones store portraits sideways and set a tag instead of rotating."""
    # Malformed EXIF is common and the pixels are still fine, so a bad tag leaves them unrotated.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of a 40 MP image
    return img


def _to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    """Normalise every Pillow mode to RGB, or to RGBA when the image carries any transparency."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        img = _to_8bit_gray(img)
    elif mode == "CMYK" and img.format == "JPEG" and "adobe" not in img.info:
        # Pillow always assumes Adobe's inverted CMYK. Without an Adobe APP14 marker the data is
        # plain CMYK (libjpeg convention), so undo that inversion.
        img = ImageChops.invert(img)
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    target = "RGBA" if has_alpha else "RGB"
    if img.mode == target:
        return img
    try:
        return img.convert(target)  # palette, 1-bit, L, LA, CMYK, YCbCr, tRNS colour keys ...
    except ValueError as e:
        raise UnsupportedMediaType(f"images with pixel mode {mode} are not supported") from e


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int / float) grayscale to 8-bit by scaling: Pillow's convert clips at 255."""
    arr = np.asarray(img)
    if img.mode == "F":  # float images are 0..1 by convention
        gray = np.clip(arr, 0.0, 1.0) * 255.0 + 0.5
    else:  # 16-bit range; "I" is what older Pillow and some TIFFs give for 16-bit data
        gray = (np.clip(arr, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535
    return Image.fromarray(gray.astype(np.uint8))


def _flatten_on_white(img: Image.Image) -> Image.Image:
    if img.mode != "RGBA":
        return img.convert("RGB") if img.mode != "RGB" else img
    return Image.alpha_composite(Image.new("RGBA", img.size, (*_WHITE, 255)), img).convert("RGB")


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _to_pil(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    shape_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))
    if arr.dtype != np.uint8 or not shape_ok or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 uint8 array, got {arr.dtype} {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr))
