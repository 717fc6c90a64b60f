"""Reading one image file into 8-bit RGB pixels, refusing what has no faithful 8-bit RGB form (the pixel-mode
rules are in ``vitreduce.data.images``'s docstring), and never opening what is not a regular file."""
from __future__ import annotations

import os
import stat

import numpy as np
from PIL import Image, ImageFile

from vitreduce.errors import VitreduceError

# What PIL raises for a file it cannot decode: OSError (unidentified, truncated, missing), SyntaxError
# (broken PNG chunks), ValueError (bad header fields), DecompressionBombError (absurd dimensions).
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO swapped in after the stat cannot block


def kind_of(mode: int) -> str:
    """What a file that is not a regular one is, for a message ("a FIFO", ...)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a special file"


def refuse_gray_fill() -> None:
    """Refuse to load while PIL would gray-fill truncated images instead of failing on them."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise VitreduceError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some imported code): truncated images "
            "would be gray-filled instead of reported. Set it back to False"
        )


class _Refused(Exception):
    """An image that decodes but whose pixels have no faithful 8-bit RGB form (the message says why)."""


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | _NONBLOCK)


def read_rgb(path: str) -> tuple[Image.Image | None, str]:
    """``(the decoded RGB image, "")``, or ``(None, what to report)`` when it cannot be used.

    What to report is the path alone for a file PIL cannot decode (truncated, garbage, empty), and the
    path with the reason for anything else: not a regular file, a refused pixel mode.
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            return None, f"{path} ({kind_of(mode)}, not a regular file)"
        with open(path, "rb", opener=_nonblocking) as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):  # replaced since the stat
                return None, f"{path} ({kind_of(mode)}, not a regular file)"
            return decode_rgb(handle, path)
    except _UNREADABLE:
        return None, path


def decode_rgb(stream, name: str) -> tuple[Image.Image | None, str]:
    """``read_rgb`` for an open binary stream (a file, or a tar shard's member bytes) reported as ``name``."""
    try:
        with Image.open(stream) as image:
            return _to_rgb(image), ""  # decodes every pixel, so truncation is detected here
    except _Refused as err:
        return None, f"{name} ({err})"
    except _UNREADABLE:
        return None, name


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB pixels of ``image``, high bit depths scaled (module docstring); _Refused when impossible."""
    if image.mode in _EIGHT_BIT_MODES:
        return image.convert("RGB")
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        pixels = np.asarray(image)  # (H, W) uint16 (either byte order) or int32
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 65535:
            raise _Refused(f"mode I with values {low}..{high}, outside 0..65535: save it as 8- or 16-bit")
        eight = (pixels.astype(np.uint32) + 128) // 257  # round(value / 257): 65535 -> 255
    elif image.mode == "F":
        pixels = np.asarray(image)  # (H, W) float32
        if not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1):
            raise _Refused("mode F with values outside [0, 1]: save it as 8- or 16-bit, or scale it to [0, 1]")
        eight = np.rint(pixels.astype(np.float64) * 255)
    else:
        raise _Refused(f"mode {image.mode} is not supported: save it as RGB or grayscale")
    return Image.fromarray(eight.astype(np.uint8)).convert("RGB")
