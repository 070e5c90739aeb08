"""Decoding image files to uint8 RGB tensors, finding the ones that cannot be decoded, and finding
an annotation's image file in a folder.

Every problem is an error naming the file: FileNotFoundError for a missing one, DataError for
anything else. A JPEG cut short, which torchvision refuses, is read as Pillow completes it
(data/preflight.py warns about each such file before training).

Decoding (torchvision.io, the same for every reader): JPEG, PNG, WebP and GIF; greyscale, palette,
grey + alpha, RGBA and CMYK become RGB (alpha is dropped, not composited: PIL's convert("RGB")
gives the same values); 16-bit PNGs become 8 bits by v >> 8. The EXIF orientation is applied, so
the pixels are the photo as viewers, browsers and the annotation tools that show it so (CVAT,
Label Studio, Roboflow's auto-orient) display it, and as detectron2, MMDetection (OpenCV) and
Ultralytics read it; torchvision's ``read_image`` ignores it by default. LabelImg ignores it
too: the dataset reads the stored pixels when the annotation's size is theirs
(``DetectionDataset.__getitem__``).
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import threading
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, ImageOps
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from detector.data.errors import DataError
from detector.data.layout import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# torchvision's errors start with the C++ function and source line: "decode_jpeg, /.../decode_jpeg.cpp:171, ".
_CPP_LOCATION = re.compile(r"^[^,\n]*, \S+\.(?:cpp|h):\d+, ")


def load_image(path: str, exif_orientation: bool = True) -> Tensor:
    """Decode to uint8 (3, H, W) RGB, turned by the EXIF orientation unless ``exif_orientation``
    is False (the pixels as stored). A missing file is a FileNotFoundError, any other problem a
    DataError, both naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, ValueError) as exc:  # a folder, no permission, a NUL in the name
        raise DataError(f"{path}: cannot read image: {getattr(exc, 'strerror', None) or exc}") from None
    image, problem = _decode(data, exif_orientation)
    if image is None and _cut_short_jpeg(data):
        image = _complete_truncated_jpeg(data, exif_orientation)
    if image is None:
        raise DataError(f"{path}: cannot decode image: {problem}")
    return image


def _decode(data: bytes, exif_orientation: bool) -> tuple[Tensor | None, str | None]:
    """torchvision's decoding of a file's bytes: (uint8 (3, H, W), None) or (None, the problem)."""
    problem = "the file is empty" if not data else _png_problem(data) if data.startswith(_PNG_SIGNATURE) else None
    if problem is not None:
        return None, problem
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                             apply_exif_orientation=exif_orientation)
    except RuntimeError as exc:
        return None, _CPP_LOCATION.sub("", str(exc))
    # 16-bit PNGs decode to uint16; the model's normalisation expects 0-255.
    return (image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)), None


_JPEG_SIGNATURE = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_TRUNCATED = threading.Lock()  # LOAD_TRUNCATED_IMAGES is Pillow's global setting


def _cut_short_jpeg(data: bytes) -> bool:
    """A JPEG without its end marker (trailing zero padding aside): a copy cut short, not one
    damaged inside, which stays an error."""
    return data.startswith(_JPEG_SIGNATURE) and not data.rstrip(b"\0").endswith(_JPEG_END)


def _complete_truncated_jpeg(data: bytes, exif_orientation: bool) -> Tensor | None:
    """A JPEG that ends early (a copy cut short), as Pillow finishes it (the missing rows grey):
    libjpeg-turbo in torchvision refuses it even when only the end marker is gone. None when
    Pillow cannot decode it either."""
    with _TRUNCATED:
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = ImageOps.exif_transpose(opened) if exif_orientation else opened
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


# EXIF orientations 5-8 turn the stored image by 90 degrees (with or without a mirror).
_QUARTER_TURNS = (5, 6, 7, 8)


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as decoded (EXIF orientation applied), from the header only.
    OSError for a file PIL cannot identify."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)




class ImageFolder:
    """The image files of one folder, listed once, found by name or by stem.

    Annotation tools do not always name the image file the way it is stored: a VOC ``<filename>``
    written before a conversion to PNG, in another case, or with the annotator's path; a COCO
    ``file_name`` with the export's folder prefix. A stem matches the file of that stem with any
    of IMAGE_SUFFIXES, ignoring case; two such files are an error, since either could be meant.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            raise FileNotFoundError(f"image folder not found: {self.folder}") from None
        except (NotADirectoryError, PermissionError) as exc:
            raise DataError(f"{self.folder}: cannot list the image folder: {exc.strerror}") from None
        self.names = set(names)
        self._by_stem: dict[str, list[str]] = defaultdict(list)
        for name in names:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in IMAGE_SUFFIXES:
                self._by_stem[stem.lower()].append(name)

    def __len__(self) -> int:
        return sum(len(names) for names in self._by_stem.values())

    def stems(self) -> set[str]:
        """The lower-case stems of the folder's image files."""
        return set(self._by_stem)

    def with_stem(self, stem: str, source: str) -> Path | None:
        """The image file whose stem is ``stem`` (any case, any of IMAGE_SUFFIXES); None when
        there is none, DataError naming ``source`` when there are several."""
        found = self._by_stem.get(stem.lower(), [])
        if len(found) > 1:
            raise DataError(f"{source}: several image files match '{stem}' in {self.folder}: {', '.join(found)}; "
                            f"keep one")
        return self.folder / found[0] if found else None

    def named(self, file_name: str, source: str) -> Path | None:
        """The image file of a COCO ``file_name``: the path inside the folder, else its last
        component (an export's folder prefix dropped), else the file of the same stem."""
        if file_name in self.names:
            return self.folder / file_name
        if not os.path.isabs(file_name) and (self.folder / file_name).is_file():
            return self.folder / file_name
        base = base_name(file_name)
        if base in self.names:
            return self.folder / base
        return self.with_stem(os.path.splitext(base)[0], source)


def base_name(file_name: str) -> str:
    """The last component of a file name written on any system ("C:\\a\\b.jpg" -> "b.jpg")."""
    return re.split(r"[\\/]", file_name)[-1]


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


def image_problem(path: Path) -> tuple[str, str | None]:
    """How an image file decodes: ("ok", None), ("truncated", the problem) for a JPEG cut short
    that is used as Pillow completes it, or ("bad", the error) for a missing or undecodable file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "bad", f"image file not found: {path}"
    except (OSError, ValueError) as exc:
        return "bad", f"{path}: cannot read image: {getattr(exc, 'strerror', None) or exc}"
    image, problem = _decode(data, exif_orientation=True)
    if image is not None:
        return "ok", None
    if _cut_short_jpeg(data) and _complete_truncated_jpeg(data, exif_orientation=True) is not None:
        return "truncated", problem
    return "bad", f"{path}: cannot decode image: {problem}"
