"""Prediction's parts: finding the input images, reading them, mapping boxes back to the files'
pixels, drawing. The end-to-end equality with evaluate.py is in test_end_to_end.py."""

import io

import pytest
import torch
from matplotlib.colors import to_rgb
from PIL import Image

from detector.data import (
    DataError,
    DetectionTransform,
    ImageFiles,
    boxes_to_original,
    find_images,
    load_image,
    relative_names,
)
from detector.data.transforms import resize
from detector.engine.drawing import CLASS_COLOURS, class_colour, draw_detections, text_colour


def image_bytes(width: int, height: int, fmt: str = "PNG") -> bytes:
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(width), dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def photos(tmp_path):
    """photos/{b.png, a.jpg, notes.txt, sub/c.png} and other/a.jpg."""
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "photos" / "b.png").write_bytes(image_bytes(30, 20))
    (tmp_path / "photos" / "a.jpg").write_bytes(image_bytes(40, 10, "JPEG"))
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / "sub" / "c.png").write_bytes(image_bytes(8, 8))
    (tmp_path / "other" / "a.jpg").write_bytes(image_bytes(16, 12, "JPEG"))
    return tmp_path


def test_inputs_are_files_folders_and_patterns_each_once_sorted(photos):
    found = find_images([photos / "photos", photos / "photos" / "b.png", f"{photos}/**/*.png", photos / "other" / "a.jpg"])
    # The folder gives its own images (not notes.txt, not sub/); b.png twice counts once.
    assert found == sorted([photos / "photos" / "a.jpg", photos / "photos" / "b.png", photos / "photos" / "sub" / "c.png",
                            photos / "other" / "a.jpg"], key=str)
    assert relative_names(found) == ["other/a.jpg", "photos/a.jpg", "photos/b.png", "photos/sub/c.png"]
    assert relative_names(find_images([photos / "photos" / "b.png"])) == ["b.png"]


@pytest.mark.parametrize("item, message", [
    ("missing.jpg", "missing.jpg: no such image file or folder"),
    ("other/*.png", r"other/\*.png: no image file matches this pattern"),
    ("photos/sub/..", None),
])
def test_an_input_without_images_is_named(photos, monkeypatch, item, message):
    monkeypatch.chdir(photos)
    if message is None:  # a folder that has images
        assert [p.name for p in find_images([item])] == ["a.jpg", "b.png"]
        return
    with pytest.raises(FileNotFoundError, match=message):
        find_images(["photos/b.png", item])


def test_a_folder_without_images_is_named(photos):
    (photos / "sub" / "empty").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"sub/empty: a folder without image files \(.jpg, .jpeg, .png, .webp, .gif\)"):
        find_images([photos / "sub" / "empty"])


def test_image_files_resize_as_validation_and_keep_the_file_size(photos):
    paths = find_images([photos / "photos"])  # a.jpg 40x10, b.png 30x20
    dataset = ImageFiles(paths, transform=DetectionTransform(min_size=40, max_size=100))
    image, info = dataset[1]
    reference, _, _ = resize(load_image(str(paths[1])), torch.zeros((0, 4)), 40, 100)
    assert torch.equal(image, reference) and tuple(image.shape) == (3, 40, 60)
    assert info == {"image_id": 2, "path": str(paths[1]), "orig_size": (20, 30)}


def test_a_bad_image_is_named_or_left_out_when_asked(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(image_bytes(8, 8)[:30])
    with pytest.raises(DataError, match=r"bad.png: cannot decode image: the PNG file is truncated .*"
                                        r"\(set data.skip_bad_images=true, --skip-bad-images, to leave out such images\)"):
        ImageFiles([bad], transform=DetectionTransform())[0]
    image, info = ImageFiles([bad], transform=DetectionTransform(), skip_bad_images=True)[0]
    assert image is None and info["image_id"] == 1 and "bad.png: cannot decode image" in info["error"]


def test_boxes_go_back_to_the_file_pixels_per_axis():
    # A 150 x 100 (w x h) file resized to 100 x 50: x scales by 1.5, y by 2.
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 50.0]])
    assert torch.equal(boxes_to_original(boxes, (50, 100), (100, 150)),
                       torch.tensor([[15.0, 40.0, 45.0, 80.0], [0.0, 0.0, 150.0, 100.0]]))
    # The inverse of resize: a box resized with an image comes back where it was.
    image = torch.zeros((3, 97, 131), dtype=torch.uint8)
    box = torch.tensor([[12.25, 7.5, 120.0, 96.0]])
    resized, resized_box, _ = resize(image, box, 800, 1333)
    assert torch.allclose(boxes_to_original(resized_box, resized.shape[-2:], (97, 131)), box, atol=1e-4)


def test_drawn_boxes_take_their_class_colour_at_the_images_size_with_labels_above_them():
    image = torch.zeros((3, 64, 128), dtype=torch.uint8)
    boxes = torch.tensor([[4.0, 30.0, 40.0, 60.0], [60.0, 0.0, 120.0, 60.0]])
    drawn = draw_detections(image, boxes, torch.tensor([1, 3]), torch.tensor([0.9, 0.6]), ["cat", "dog", "bird"])
    assert tuple(drawn.shape) == (3, 64, 128)  # the image's own size
    for (x1, y1, x2, y2), label in ((boxes[0], 1), (boxes[1], 3)):
        colour = [round(255 * c) for c in to_rgb(class_colour(label))]
        assert drawn[:, int(y2), int((x1 + x2) / 2)].tolist() == colour  # the box's bottom edge
    # The first box's label sits above it (its background in the class's colour), the second's,
    # at the image's top, inside it.
    def painted(label, rows, columns):
        colour = torch.tensor([round(255 * c) for c in to_rgb(class_colour(label))], dtype=torch.uint8)
        return (drawn[:, rows, columns] == colour[:, None, None]).all(0).sum().item()

    assert painted(1, slice(18, 29), slice(5, 40)) > 20  # above the first box (y 30)
    assert painted(3, slice(1, 9), slice(61, 119)) > 20  # inside the second, at the top
    larger = draw_detections(image, boxes, torch.tensor([1, 3]), torch.tensor([0.9, 0.6]), ["cat", "dog", "bird"],
                             shorter_side=256)
    assert tuple(larger.shape) == (3, 256, 512)  # --draw-size 256
    assert torch.equal(draw_detections(image, boxes[:0], torch.tensor([]), torch.tensor([]), ["cat"])[:, :8, :8],
                       torch.zeros((3, 8, 8), dtype=torch.uint8))


def test_drawn_files_lie_flat_and_name_clashes_get_a_suffix():
    from detector.engine.predict import drawn_names

    names = ["a/photo.jpg", "b/photo.jpg", "b/scan.png", "c/PHOTO.webp"]
    assert drawn_names(names, [1, 2, 3, 4]) == {1: "photo.jpg", 2: "photo-2.jpg", 3: "scan.png", 4: "PHOTO-3.jpg"}


def test_class_colours_are_distinct_and_labels_readable_on_them():
    assert len(set(CLASS_COLOURS)) == 20 and class_colour(21) == class_colour(1)
    assert text_colour("#ffff00") == "black" and text_colour("#1f77b4") == "white"
