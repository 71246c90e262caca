"""Bytes to upright RGB pixels, refusing what is not an image, too big or too small before decoding it."""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from candor.core import settings
from candor.core.errors import ImageTooLargeError, ImageTooSmallError, InvalidImageError
from candor.core.faces import DetectedFace

# Only formats a camera or a browser produces: every other plugin (EPS calls Ghostscript, for one) is
# attack surface for no gain. Pillow opens the multi-picture JPEGs that phones write as "MPO" through
# its JPEG plugin: we report them as JPEG.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
_FORMAT_NAMES = {"MPO": "JPEG"}
# Image.open(formats=...) only finds plugins already imported: import exactly these, not all of Pillow's.
_PLUGINS = (
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

# EXIF orientations 5..8 rotate by 90 degrees, so the upright image has width and height swapped.
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}

# What Pillow's decoders raise on corrupt or truncated data (none of them is a bug of ours).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image. `pixels` may be a reduced copy of a very large JPEG: multiply its
    coordinates by `scale` to get pixels of the original upright image (`width` x `height`)."""

    pixels: np.ndarray
    format: str
    width: int
    height: int
    scale: float = 1.0

    def to_original(self, face: DetectedFace) -> DetectedFace:
        """The face in the original upright image's pixels."""
        return face if self.scale == 1.0 else face.scaled(self.scale)


def decode_image(
    data: bytes, max_bytes: int, *, draft_long_side: int | None = settings.DECODE_MIN_LONG_SIDE
) -> DecodedImage:
    """Decode image bytes into an upright RGB uint8 array (height x width x 3).

    A JPEG at least twice `draft_long_side` on its longest side is decoded at a reduced size, never
    below it (None: always full size); DecodedImage.scale maps back to the original pixels.

    Raises InvalidImageError (empty, unknown format, truncated or corrupt), ImageTooLargeError (more
    than `max_bytes` bytes or a header claiming more than settings.MAX_IMAGE_PIXELS pixels, both
    checked before any pixel is decoded) and ImageTooSmallError (a side under settings.MIN_IMAGE_SIDE).
    """
    if not data:
        raise InvalidImageError("The image is empty (0 bytes).")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"The image has {len(data):,} bytes; the limit is {max_bytes:,} bytes.")

    image = _open(data)
    width, height = image.size
    if width * height > settings.MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            f"The image is {width}x{height} pixels; the limit is {settings.MAX_IMAGE_PIXELS:,} pixels."
        )
    # A rotation swaps the sides but not the shorter one, so this needs no EXIF (which a PNG may keep
    # after its pixels, where reading it would decode them).
    if min(width, height) < settings.MIN_IMAGE_SIDE:
        raise ImageTooSmallError(
            f"The image is {width}x{height} pixels; both sides must be at least {settings.MIN_IMAGE_SIDE} pixels."
        )

    scale = _draft(image, draft_long_side) if draft_long_side else 1.0
    try:
        image.load()
        orientation = _orientation(image)
        if orientation is not None and orientation != 1:
            ImageOps.exif_transpose(image, in_place=True)
        rgb = _to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"The image has too many pixels: {error}") from error
    except _DECODE_ERRORS as error:
        raise InvalidImageError(f"The {_format_name(image)} image is truncated or corrupt: {error}") from error
    upright_width, upright_height = (height, width) if orientation in _SWAPS_SIDES else (width, height)

    return DecodedImage(
        pixels=rgb,
        format=_format_name(image),
        width=upright_width,
        height=upright_height,
        scale=scale,
    )


def _open(data: bytes) -> ImageFile.ImageFile:
    """Read the header only: Image.open parses size and mode and leaves pixels undecoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        # Pillow refuses headers over twice its own limit at open; ours is lower, so this is ours too.
        raise ImageTooLargeError(f"The image has too many pixels: {error}") from error
    except Image.UnidentifiedImageError as error:
        raise InvalidImageError(
            f"The data is not an image in a supported format ({', '.join(_accepted_names())})."
        ) from error
    except _DECODE_ERRORS as error:
        raise InvalidImageError(f"The image header is corrupt: {error}") from error
    if not isinstance(image, ImageFile.ImageFile):  # pragma: no cover - Image.open always returns one
        raise InvalidImageError("The data is not an image in a supported format.")
    return image


def _accepted_names() -> list[str]:
    return sorted({_FORMAT_NAMES.get(name, name) for name in ACCEPTED_FORMATS})


def _format_name(image: Image.Image) -> str:
    name = image.format or "unknown"
    return _FORMAT_NAMES.get(name, name)


def _orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION)
    except _DECODE_ERRORS:
        # A broken EXIF block should not make an otherwise good photo unusable: treat it as upright.
        return None
    return value if isinstance(value, int) else None


def _draft(image: Image.Image, long_side: int) -> float:
    """Let the JPEG decoder scale a very large photo down by 2, 4 or 8 while it decodes (far cheaper
    in time and memory than decoding full size and resizing). The longest side is kept at or above
    `long_side` (settings.DECODE_MIN_LONG_SIDE, 4096): the detector itself sees 640 pixels, but a face
    spanning 4% of the longest side must still give the embedder a full 160-pixel crop. Returns the
    factor from decoded to original pixels."""
    if image.format not in ("JPEG", "MPO"):
        return 1.0
    width, height = image.size
    longest = max(width, height)
    if longest < 2 * long_side:
        return 1.0
    ratio = long_side / longest
    requested = (max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio)))
    result = image.draft("RGB", requested)
    if result is None:
        return 1.0
    _, box = result
    return width / box[2]


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgb = _composite_on_white(image.convert("RGBA"))
    elif mode == "RGB":
        rgb = image
    elif mode.startswith("I;16") or mode in ("I", "F"):
        rgb = _high_depth_to_rgb(image)
    else:
        # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's own conversions.
        rgb = image.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Transparent pixels become white, as a viewer shows them, rather than the black (or garbage)
    that dropping the alpha channel leaves."""
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) greyscale: Pillow's convert("L") clips at 255 instead of scaling, which
    turns most 16-bit photos white, so scale the full range down here."""
    values = np.asarray(image, dtype=np.float32)
    if image.mode.startswith("I;16") or (image.mode == "I" and float(values.max(initial=0.0)) > 255.0):
        values = values / 257.0
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
