"""Images sent to the service as base64: size- and pixel-checked before anything is decoded.

The bytes are limited by the request body limit; the pixel count is read from the file's header and refused
above ``max_pixels`` before a pixel is decoded (a small PNG can declare gigapixels: a decompression bomb).
Only single-frame PNG, JPEG, TIFF, WebP and BMP are accepted. What passes is converted as ``musk embed``
converts files (EXIF orientation applied, transparency on white, any mode to 8-bit RGB).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, ImageOps

from ..images import to_rgb

__all__ = ["FORMATS", "BadImage", "decode_base64", "open_image"]

FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP")
"""The image formats the service decodes."""

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


class BadImage(ValueError):
    """An image the service will not decode: the message says why, in one line."""


def decode_base64(text: str, what: str = "image") -> bytes:
    """Bytes of a base64 string (standard or URL-safe alphabet, or a ``data:image/...;base64,`` URL)."""
    if not isinstance(text, str) or not text:
        raise BadImage(f"{what} must be a non-empty base64 string")
    text = _DATA_URL.sub("", text, count=1)
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(f"{what} is not valid base64") from None


def open_image(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    """An 8-bit RGB image from encoded bytes; :class:`BadImage` for other formats, several frames, more than
    ``max_pixels`` pixels, or a file that does not decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as src:
                _check_header(src, max_pixels, what)
                src.load()
                return to_rgb(ImageOps.exif_transpose(src))
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"{what} has more pixels than this service decodes ({max_pixels})") from None
    except MemoryError:
        raise BadImage(f"{what} is too large to decode") from None
    except Exception as exc:  # Pillow's plugins raise many types for bad files; none is the caller's bug
        raise BadImage(f"{what} could not be decoded as {', '.join(FORMATS)} ({type(exc).__name__})") from None


def _check_header(src: Image.Image, max_pixels: int, what: str) -> None:
    if src.width * src.height > max_pixels:
        raise BadImage(
            f"{what} is {src.width}x{src.height} = {src.width * src.height} pixels; this service decodes at most "
            f"{max_pixels} (send patches, not whole slides)"
        )
    if getattr(src, "n_frames", 1) > 1:
        raise BadImage(f"{what} has {src.n_frames} frames; send single-frame images")
