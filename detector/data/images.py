"""Decoding image files to uint8 RGB tensors, and finding the ones that cannot be decoded.

Every problem is an error naming the file: FileNotFoundError for a missing one, DataError for
anything else.
"""

from __future__ import annotations

import logging
import re
import struct
import time
import zlib
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from detector.data.errors import DataError

logger = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# torchvision's errors start with the C++ function and source line: "decode_jpeg, /.../decode_jpeg.cpp:171, ".
_CPP_LOCATION = re.compile(r"^[^,\n]*, \S+\.(?:cpp|h):\d+, ")


def load_image(path: str) -> Tensor:
    """Decode to uint8 (3, H, W) RGB. A missing file is a FileNotFoundError, any other problem
    a DataError, both naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, ValueError) as exc:  # a folder, no permission, a NUL in the name
        raise DataError(f"{path}: cannot read image: {getattr(exc, 'strerror', None) or exc}") from None
    problem = "the file is empty" if not data else _png_problem(data) if data.startswith(_PNG_SIGNATURE) else None
    if problem is None:
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            # 16-bit PNGs decode to uint16; the model's normalisation expects 0-255.
            return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)
        except RuntimeError as exc:
            problem = _CPP_LOCATION.sub("", str(exc))
    raise DataError(f"{path}: cannot decode image: {problem}")


def _png_problem(data: bytes) -> str | None:
    """What is wrong with a PNG's chunk structure (lengths, types, CRCs, the final IEND), or None.

    torchvision 0.29's decode_png crashes the process (segfault) when libpng reports damage
    inside the pixel data, as one flipped byte causes; the chunk CRCs reveal such damage first.
    A PNG crafted with valid CRCs around a broken zlib stream would still crash it.
    """
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length  # length, type, data, CRC
        if end > len(data):
            break
        if not kind.isalpha():
            return f"invalid PNG chunk type {kind!r} at byte {pos + 4}"
        if zlib.crc32(view[pos + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return f"PNG chunk {kind.decode()} at byte {pos} is corrupt (CRC mismatch)"
        if kind == b"IEND":
            return None
        pos = end
    return "the PNG file is truncated (it ends before its IEND chunk)"


_PROGRESS_EVERY_S = 30.0


def find_bad_images(paths: Sequence[Path], source: str) -> set[str]:
    """Decode every image once; returns the paths of those missing or undecodable, counted in
    one warning that shows the first problem. When none is readable: DataError."""
    problems: dict[str, str] = {}
    reported = time.monotonic()
    for done, path in enumerate(paths, start=1):
        try:
            load_image(str(path))
        except (DataError, FileNotFoundError) as exc:
            problems[str(path)] = str(exc)
        if time.monotonic() - reported > _PROGRESS_EVERY_S:
            logger.info("%s: checked %d of %d images", source, done, len(paths))
            reported = time.monotonic()
    if problems:
        first = next(iter(problems.values()))
        if len(problems) == len(paths):
            raise DataError(f"{source}: none of its {len(paths)} images can be read (first: {first})")
        logger.warning("%s: leaving out %d of %d images whose files are missing or cannot be decoded "
                       "(first: %s)", source, len(problems), len(paths), first)
    return set(problems)
