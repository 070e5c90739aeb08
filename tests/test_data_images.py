"""Image decoding (every colour mode and bit depth to uint8 RGB, EXIF orientation, 150 to 4000 px
sides) and finding an annotation's image file in a folder."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from detector.data import DataError, DetectionTransform, load_image
from detector.data.images import ImageFolder, read_image_size

EXIF_ORIENTATION = 0x0112


def _noise(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _pil_rgb(path: Path) -> torch.Tensor:
    """The reference: PIL's decoding with the EXIF orientation applied, converted to RGB."""
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(ImageOps.exif_transpose(image).convert("RGB")).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("mode, channels, suffix", [
    ("L", 1, ".jpg"),  # greyscale JPEG
    ("L", 1, ".png"),
    ("LA", 2, ".png"),  # grey + alpha
    ("RGBA", 4, ".png"),  # alpha dropped, as convert("RGB") does
    ("CMYK", 4, ".jpg"),  # print-ready photos
    ("RGB", 3, ".webp"),
])
def test_colour_modes_decode_to_pils_rgb(tmp_path, mode, channels, suffix):
    path = tmp_path / f"image{suffix}"
    Image.fromarray(_noise(24, 40, channels), mode).save(path, quality=95, lossless=True)  # each format takes its own
    image = load_image(str(path))
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 24, 40)
    assert torch.equal(image, _pil_rgb(path))


def test_palette_png_decodes_to_its_palette_colours(tmp_path):
    palette = Image.fromarray(_noise(24, 40, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png", transparency=0)  # with a transparent entry, as GIF-like PNGs have
    image = load_image(str(tmp_path / "palette.png"))
    assert torch.equal(image, _pil_rgb(tmp_path / "palette.png"))
    assert len(torch.unique(image.reshape(3, -1), dim=1).T) <= 16


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_sixteen_bit_rgb_png_keeps_the_high_byte(tmp_path):
    # Neither PIL nor torchvision writes 16-bit RGB, so the file is put together as the PNG
    # specification lays it out: IHDR (bit depth 16, colour type 2), one row, filter 0.
    values = [0, 255, 256, 32768, 65535, 0x1234]
    row = np.array([[v, v, 65535 - v] for v in values], dtype=">u2").tobytes()
    ihdr = struct.pack(">IIBBBBB", len(values), 1, 16, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" + row)) \
        + _png_chunk(b"IEND", b"")
    (tmp_path / "deep.png").write_bytes(data)
    image = load_image(str(tmp_path / "deep.png"))
    # v >> 8: 0, 255, 256, 32768, 65535, 0x1234 -> 0, 0, 1, 128, 255, 0x12 (blue: 65535 - v).
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 1, 6)
    assert image[:, 0].T.tolist() == [[h, h, 255 - h] for h in (0, 0, 1, 128, 255, 0x12)]


def test_exif_orientation_is_applied(tmp_path):
    pixels = _noise(20, 30, 3)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, displayed turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    image = load_image(str(tmp_path / "phone.jpg"))
    assert tuple(image.shape) == (3, 30, 20)
    assert torch.equal(image, _pil_rgb(tmp_path / "phone.jpg"))
    assert read_image_size(tmp_path / "phone.jpg") == (20, 30)  # (width, height) as displayed
    Image.fromarray(pixels).save(tmp_path / "plain.jpg")
    assert read_image_size(tmp_path / "plain.jpg") == (30, 20)


@pytest.mark.parametrize("width, height, resized", [
    (150, 200, (800, 600)),  # a small crop: shorter side 150 -> 600, scale 4
    (4000, 3000, (600, 800)),  # a 12-megapixel photo: shorter side 3000 -> 600
])
def test_photo_sizes_from_150_to_4000_pixels(tmp_path, width, height, resized):
    path = tmp_path / "photo.jpg"
    Image.fromarray(_noise(height, width, 3)).save(path, quality=80)
    image = load_image(str(path))
    assert tuple(image.shape) == (3, height, width) and image.dtype == torch.uint8
    boxes = torch.tensor([[0.0, 0.0, width / 2, height / 2]])
    out, out_boxes, scale = DetectionTransform(min_size=600, max_size=1000)(image, boxes)
    assert tuple(out.shape[-2:]) == resized and scale == pytest.approx(600 / min(width, height))
    assert out_boxes.tolist() == [[0.0, 0.0, resized[1] / 2, resized[0] / 2]]


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_images_are_found_by_stem_in_any_case_and_suffix(tmp_path):
    folder = ImageFolder(_touch(tmp_path / "images", "a.JPG", "B.png", "c.jpeg", "c.xml", "notes.txt",
                                "a_jpg.rf.0123.jpg"))
    assert folder.with_stem("a", "x.xml") == tmp_path / "images" / "a.JPG"
    assert folder.with_stem("b", "x.xml") == tmp_path / "images" / "B.png"
    assert folder.with_stem("c", "x.xml") == tmp_path / "images" / "c.jpeg"  # not the XML beside it
    assert folder.with_stem("a_jpg.rf.0123", "x.xml") == tmp_path / "images" / "a_jpg.rf.0123.jpg"  # dots in stems
    assert folder.with_stem("notes", "x.xml") is None and folder.with_stem("d", "x.xml") is None
    assert folder.stems() == {"a", "b", "c", "a_jpg.rf.0123"} and len(folder) == 4


def test_two_images_of_one_stem_are_an_error(tmp_path):
    folder = ImageFolder(_touch(tmp_path / "images", "a.jpg", "a.PNG"))
    with pytest.raises(DataError) as info:
        folder.with_stem("A", "ann/a.xml")
    assert str(info.value) == f"ann/a.xml: several image files match 'A' in {tmp_path / 'images'}: a.PNG, a.jpg; keep one"


def test_coco_file_names_with_export_prefixes(tmp_path):
    root = _touch(tmp_path / "images", "a.jpg", "b.png")
    _touch(root / "sub", "c.jpg")
    folder = ImageFolder(root)
    assert folder.named("a.jpg", "f.json") == root / "a.jpg"
    assert folder.named("sub/c.jpg", "f.json") == root / "sub" / "c.jpg"  # CVAT: a task's subfolders
    assert folder.named("images/a.jpg", "f.json") == root / "a.jpg"  # the export's folder prefix
    assert folder.named("/data/upload/1/a.jpg", "f.json") == root / "a.jpg"  # Label Studio's upload path
    assert folder.named("C:\\Users\\me\\b.png", "f.json") == root / "b.png"
    assert folder.named("b.jpg", "f.json") == root / "b.png"  # converted after annotation: by stem
    assert folder.named("d.jpg", "f.json") is None


def test_a_missing_image_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image folder not found: {tmp_path / 'nowhere'}"):
        ImageFolder(tmp_path / "nowhere")


@pytest.mark.parametrize("annotated, decoded", [
    ((20, 30), "displayed"),  # CVAT, Label Studio, Roboflow: the photo as shown, turned by its EXIF tag
    ((30, 20), "stored"),  # LabelImg ignores the tag: its <size> is the stored pixels'
])
def test_the_annotations_size_decides_whether_the_exif_turn_applies(tmp_path, monkeypatch, annotated, decoded):
    import json

    from detector.data import CocoDetection
    from detector.data import dataset as dataset_module

    (tmp_path / "train").mkdir()
    (tmp_path / "annotations").mkdir()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / "train" / "phone.jpg"
    Image.fromarray(_noise(20, 30, 3)).save(path, exif=exif, quality=100)  # stored 30 wide, 20 high
    width, height = annotated
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "phone.jpg", "width": width, "height": height}],
        "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    ds = CocoDetection(tmp_path, "train")
    with Image.open(path) as image:
        expected = ImageOps.exif_transpose(image) if decoded == "displayed" else image.convert("RGB")
        expected = torch.from_numpy(np.asarray(expected.convert("RGB")).copy()).permute(2, 0, 1)
    decoded_with = []
    monkeypatch.setattr(dataset_module, "load_image",
                        lambda path, exif_orientation=True: decoded_with.append(exif_orientation) or load_image(
                            path, exif_orientation))
    for _ in range(2):
        image, target = ds[0]
        assert tuple(image.shape) == (3, height, width) and torch.equal(image, expected)
    # Stored pixels: found on the first read, and read directly from then on.
    assert decoded_with == ([True, True] if decoded == "displayed" else [True, False, False])
