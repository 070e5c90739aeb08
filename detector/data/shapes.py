"""Deterministic generator of the bundled ``shapes`` detection dataset.

Six classes that differ only by shape (colours are random per object): rectangle, ellipse,
triangle, cross, ring and star. Each image holds 1-6 objects whose longer side is log-uniform
between 10 px and half the image, on a cluttered background (smooth colour gradient, thin lines,
blobs smaller than any object, Gaussian pixel noise).

Every shape is drawn on its own binary mask at ``SUPERSAMPLE`` times the image resolution; the
mask is box-averaged down to an alpha channel (anti-aliased, soft edges) and the object's colour
is alpha-composited onto the image. The ground-truth box is the tight bound of the
high-resolution mask divided by ``SUPERSAMPLE``, so boxes are exact to a quarter pixel and a
detector is rewarded for sub-pixel localisation, which is what the regression losses compete on.

Layout written by :func:`ensure_shapes`::

    root/train/000000.png ...      root/val/000000.png ...
    root/annotations/instances_train.json, instances_val.json   (COCO instances format)
    root/meta.json                 (the generator's marker and parameters; written last = dataset complete)

A folder is replaced only when its meta.json carries the generator's marker: whatever else is at
``root`` (a user's COCO export, a folder of photos) is refused with a DataError that says what the
folder looks like, and is never touched.

Determinism: each image draws from ``numpy.random.default_rng([seed, split_index, image_index])``,
so the output does not depend on the order in which images are rendered or on the number of
worker processes, and the same parameters always give byte-identical files.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detector.data.errors import DataError
from detector.data.layout import folder_hint

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "cross", "ring", "star")
SPLITS = ("train", "val")  # split_index 0 and 1 in the per-image seeds
# Bump when the rendering changes, so that datasets made by an older generator are rebuilt.
GENERATOR_VERSION = 2
# meta.json's "generator": the mark of a folder this module made, and so may replace.
GENERATOR = "detector.data.shapes"

SUPERSAMPLE = 4  # shapes are rasterised at 4x and box-averaged down: 16 coverage levels per pixel
MIN_LONG_SIDE = 10.0  # px; smallest longer side of an object (below ~10 px the six shapes blur into the same blob)
MIN_SIDE = 7.0  # px; no object is thinner than this, so every class stays recognisable
MAX_OBJECTS = 6
MAX_PLACEMENT_TRIES = 40  # per object; an object that finds no free spot is left out
MAX_IOU = 0.3  # placement rejected above this IoU with an already placed box ...
MAX_COVER = 0.5  # ... or when it would cover more than half of the smaller box
MIN_CONTRAST = 110.0  # minimum RGB distance between an object and the background under it
NOISE_SIGMA = (2.0, 8.0)  # range of the per-image Gaussian noise standard deviation (grey levels)


def ensure_shapes(
    root: str | Path,
    image_size: int = 128,
    num_train: int = 1500,
    num_val: int = 300,
    seed: int = 0,
    *,
    num_workers: int | None = None,
) -> Path:
    """Make sure ``root`` holds the shapes dataset generated with these parameters.

    Does nothing when ``root/meta.json`` records the same parameters. Otherwise the dataset is
    generated into a temporary sibling folder that is renamed into place only once complete,
    so an interrupted run never leaves a folder that looks finished, and concurrent callers
    (e.g. several DDP ranks) end up with one complete copy. ``num_workers`` processes render
    the images (default: the CPUs available to this process). Returns ``root`` as a Path.
    """
    root = Path(root)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "image_size": int(image_size),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
    }
    if image_size < 32:
        raise ValueError(f"shapes image_size must be >= 32, got {image_size}")
    if _is_complete(root, meta):
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"generating shapes dataset ({num_train} train + {num_val} val images, {image_size} px, "
        f"seed {seed}) into {root} ...",
        end=" ",
        file=sys.stderr,
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is ordinary shared data
    try:
        _generate(tmp, meta, num_workers)
        _move_into_place(tmp, root, meta)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return root


def render_image(image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """Render one image: returns uint8 (S, S, 3) and [(label 1..6, [x1, y1, x2, y2]), ...]."""
    size = image_size
    image = _background(size, rng)  # float32 (S, S, 3)
    _draw_clutter(image, rng)

    objects: list[tuple[int, list[float]]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _ in range(MAX_PLACEMENT_TRIES):
            label = int(rng.integers(1, len(CLASS_NAMES) + 1))
            x0, y0, w, h = _sample_box(label, size, rng)
            if not _free(np.array([x0, y0, x0 + w, y0 + h]), [box for _, box in objects]):
                continue
            mask, px0, py0 = _shape_mask(label, x0, y0, w, h, rng)
            box = _tight_box(mask, px0, py0)
            colour = _contrasting_colour(image, box, rng)
            _composite(image, mask, px0, py0, colour)
            objects.append((label, box))
            break

    sigma = rng.uniform(*NOISE_SIGMA)
    image += rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


# ----------------------------------------------------------------------------- generation


def _generate(out: Path, meta: dict, num_workers: int | None) -> None:
    """Render both splits into ``out`` and write the annotation files, meta.json (with the
    generator's marker) last."""
    (out / "annotations").mkdir()
    counts = {"train": meta["num_train"], "val": meta["num_val"]}
    jobs = []
    for split_index, split in enumerate(SPLITS):
        (out / split).mkdir()
        jobs += [(str(out / split), split_index, i, meta["image_size"], meta["seed"]) for i in range(counts[split])]

    workers = num_workers or _available_cpus()
    # A daemonic process (a pool's worker) cannot start processes of its own: it renders alone.
    if workers > 1 and len(jobs) > 64 and not multiprocessing.current_process().daemon:
        # fork: the children only need numpy and PIL, and fork avoids re-importing torch and
        # Lightning in every worker (spawn costs seconds per process).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            results = list(pool.map(_render_to_file, jobs, chunksize=32))
    else:
        results = [_render_to_file(job) for job in jobs]

    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)]
    start = 0
    for split in SPLITS:
        images, annotations = [], []
        for index, objects in enumerate(results[start : start + counts[split]]):
            images.append({"id": index + 1, "file_name": _file_name(index),
                           "width": meta["image_size"], "height": meta["image_size"]})
            for label, (x1, y1, x2, y2) in objects:
                w, h = round(x2 - x1, 2), round(y2 - y1, 2)
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label,
                    "bbox": [x1, y1, w, h],
                    # Box area (not mask area), so COCOeval's small/medium split follows box size.
                    "area": round(w * h, 4),
                    "iscrowd": 0,
                })
        start += counts[split]
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))
    (out / "meta.json").write_text(json.dumps({**meta, "generator": GENERATOR}, indent=1, sort_keys=True))


def _render_to_file(job: tuple[str, int, int, int, int]) -> list[tuple[int, list[float]]]:
    """Render image ``index`` of a split and save it as PNG; returns its objects."""
    folder, split_index, index, image_size, seed = job
    rng = np.random.default_rng([seed, split_index, index])
    pixels, objects = render_image(image_size, rng)
    # compress_level=1: PNG is lossless at any level, and level 1 is several times faster.
    Image.fromarray(pixels).save(os.path.join(folder, _file_name(index)), compress_level=1)
    return objects


def _file_name(index: int) -> str:
    return f"{index:06d}.png"


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _read_meta(root: Path) -> dict | None:
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _made_here(meta: dict | None) -> bool:
    """Whether a meta.json is this generator's: its marker, or the parameter keys alone, which is
    what generator versions before the marker wrote."""
    if meta is None:
        return False
    return meta.get("generator") == GENERATOR or set(meta) == {"generator_version", "image_size", "num_train",
                                                               "num_val", "seed"}


def _is_complete(root: Path, meta: dict) -> bool:
    found = _read_meta(root)
    return _made_here(found) and {k: v for k, v in found.items() if k != "generator"} == meta


def _check_replaceable(root: Path) -> None:
    """Refuse, with a DataError that says what the folder looks like, to replace anything but
    an empty folder or a shapes dataset this generator made (another version or parameters)."""
    if not root.exists() or _made_here(_read_meta(root)):
        return
    if root.is_dir() and not any(root.iterdir()):
        return
    raise DataError(f"data.root {root} is not a shapes dataset made by this project, so it is not replaced: "
                    f"{folder_hint(root)}")


def _move_into_place(tmp: Path, root: Path, meta: dict) -> None:
    """Rename the finished ``tmp`` to ``root``, replacing an empty folder or a stale dataset
    of this generator there."""
    if _is_complete(root, meta):  # another process finished first
        return
    old = None
    if root.exists():
        _check_replaceable(root)
        old = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
        root.rename(old)
    try:
        tmp.rename(root)
    except OSError:
        # A concurrent generator renamed its copy into place between our check and rename.
        if not _is_complete(root, meta):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- drawing


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Bilinear blend of four random corner colours: a smooth gradient, float32 (S, S, 3)."""
    corners = rng.uniform(0, 255, size=(2, 2, 3)).astype(np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    top = corners[0, 0] + t[:, None] * (corners[0, 1] - corners[0, 0])  # (S, 3) along x
    bottom = corners[1, 0] + t[:, None] * (corners[1, 1] - corners[1, 0])
    return top[None] + t[:, None, None] * (bottom - top)[None]  # (S, S, 3)


def _draw_clutter(image: np.ndarray, rng: np.random.Generator) -> None:
    """Thin lines across the image and blobs smaller than any object: distractors, not objects."""
    size = image.shape[0]
    ss = SUPERSAMPLE
    for _ in range(int(rng.integers(0, 4))):
        mask = Image.new("L", (size * ss, size * ss), 0)
        ends = rng.uniform(-0.2, 1.2, size=4) * size * ss
        width = int(rng.integers(2, 2 * ss))  # 0.5-2 px
        ImageDraw.Draw(mask).line(ends.tolist(), fill=255, width=width)
        _composite(image, mask, 0, 0, rng.uniform(0, 255, 3))
    for _ in range(int(rng.integers(0, 7))):
        diameter = rng.uniform(1.5, 3.5) * ss
        cx, cy = rng.uniform(2, size - 2, size=2)
        px0, py0 = int(cx) - 2, int(cy) - 2
        mask = Image.new("L", (4 * ss, 4 * ss), 0)
        ox, oy = (cx - px0) * ss, (cy - py0) * ss
        ImageDraw.Draw(mask).ellipse([ox - diameter / 2, oy - diameter / 2, ox + diameter / 2, oy + diameter / 2], fill=255)
        _composite(image, mask, px0, py0, rng.uniform(0, 255, 3))


def _sample_box(label: int, size: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Design box (x0, y0, w, h) in pixels, on the quarter-pixel grid, inside the image."""
    long_side = math.exp(rng.uniform(math.log(MIN_LONG_SIDE), math.log(size / 2)))
    # Stars stay close to square so their points stay visible; the rest span ratios 1:2 to 2:1.
    max_ratio = 1.33 if CLASS_NAMES[label - 1] == "star" else 2.0
    ratio = math.exp(rng.uniform(-math.log(max_ratio), math.log(max_ratio)))  # w / h
    w, h = (long_side, long_side / ratio) if ratio >= 1 else (long_side * ratio, long_side)
    w, h = (max(MIN_SIDE, round(v * SUPERSAMPLE) / SUPERSAMPLE) for v in (w, h))
    x0 = round(rng.uniform(0, size - w) * SUPERSAMPLE) / SUPERSAMPLE
    y0 = round(rng.uniform(0, size - h) * SUPERSAMPLE) / SUPERSAMPLE
    return x0, y0, w, h


def _free(box: np.ndarray, placed: list[list[float]]) -> bool:
    """Whether ``box`` (xyxy) overlaps every placed box little enough to keep both visible.

    Its own IoU in float64 NumPy rather than ``detector.model.boxes``: the data room does not
    import the model, the rendering workers load NumPy and PIL only (no torch, see
    ``_generate``), and these float64 values decide which objects exist, so computing them
    otherwise would change the bundled dataset's bytes.
    """
    if not placed:
        return True
    others = np.asarray(placed)  # (G, 4)
    wh = np.clip(np.minimum(box[2:], others[:, 2:]) - np.maximum(box[:2], others[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    iou = inter / (area + areas - inter)
    cover = inter / np.minimum(area, areas)
    return bool(np.all(iou <= MAX_IOU) and np.all(cover <= MAX_COVER))


def _shape_mask(label: int, x0: float, y0: float, w: float, h: float,
                rng: np.random.Generator) -> tuple[Image.Image, int, int]:
    """Binary 'L' mask of one shape at SUPERSAMPLE x resolution filling the design box.

    Returns the mask and the image pixel (px0, py0) of its top-left corner; the mask covers
    whole image pixels so that reducing it by SUPERSAMPLE lands exactly on the pixel grid.
    """
    ss = SUPERSAMPLE
    px0, py0 = math.floor(x0), math.floor(y0)
    px1, py1 = math.ceil(x0 + w), math.ceil(y0 + h)
    mask = Image.new("L", ((px1 - px0) * ss, (py1 - py0) * ss), 0)
    draw = ImageDraw.Draw(mask)
    # Design box in mask pixels; PIL includes both end pixels, hence the -1.
    left, top = round((x0 - px0) * ss), round((y0 - py0) * ss)
    right, bottom = left + round(w * ss) - 1, top + round(h * ss) - 1
    bw, bh = right - left, bottom - top
    name = CLASS_NAMES[label - 1]
    if name == "rectangle":
        draw.rectangle([left, top, right, bottom], fill=255)
    elif name == "ellipse":
        draw.ellipse([left, top, right, bottom], fill=255)
    elif name == "ring":
        draw.ellipse([left, top, right, bottom], fill=255)
        # Band at least 1.5 px wide, so the ring does not dissolve into an ellipse outline.
        band = max(1.5 * ss, rng.uniform(0.15, 0.3) * min(bw, bh))
        draw.ellipse([left + band, top + band, right - band, bottom - band], fill=0)
    elif name == "cross":
        arm = max(1.5 * ss, rng.uniform(0.25, 0.4) * min(bw, bh))
        cx, cy = left + bw / 2, top + bh / 2
        draw.rectangle([left, cy - arm / 2, right, cy + arm / 2], fill=255)
        draw.rectangle([cx - arm / 2, top, cx + arm / 2, bottom], fill=255)
    else:  # triangle or star: rotated polygon stretched to fill the design box
        angle = rng.uniform(0, 2 * math.pi)
        if name == "triangle":
            # Irregular triangles: each vertex jitters up to 20 degrees from equilateral.
            angles = angle + np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.35, 0.35, 3)
            radii = np.ones(3)
        else:
            angles = angle + np.arange(10) * math.pi / 5
            radii = np.tile([1.0, rng.uniform(0.4, 0.5)], 5)  # outer and inner points alternate
        xs, ys = radii * np.cos(angles), radii * np.sin(angles)
        xs = left + (xs - xs.min()) / (xs.max() - xs.min()) * bw
        ys = top + (ys - ys.min()) / (ys.max() - ys.min()) * bh
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=255)
    return mask, px0, py0


def _tight_box(mask: Image.Image, px0: int, py0: int) -> list[float]:
    """Exact xyxy image-pixel bounds of the mask's drawn pixels (multiples of 1/SUPERSAMPLE)."""
    drawn = np.asarray(mask) > 0  # (h*ss, w*ss)
    cols, rows = np.flatnonzero(drawn.any(axis=0)), np.flatnonzero(drawn.any(axis=1))
    ss = SUPERSAMPLE
    # Mask pixel j spans [j, j + 1) at high resolution, hence the +1 on the far side.
    return [round(px0 + cols[0] / ss, 2), round(py0 + rows[0] / ss, 2),
            round(px0 + (cols[-1] + 1) / ss, 2), round(py0 + (rows[-1] + 1) / ss, 2)]


def _contrasting_colour(image: np.ndarray, box: list[float], rng: np.random.Generator) -> np.ndarray:
    """A random colour far from the background at the box's centre and corners."""
    size = image.shape[0]
    x1, y1, x2, y2 = box
    points = [((x1 + x2) / 2, (y1 + y2) / 2), (x1, y1), (x2, y1), (x1, y2), (x2, y2)]
    under = np.stack([image[min(int(y), size - 1), min(int(x), size - 1)] for x, y in points])  # (5, 3)
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        distance = float(np.linalg.norm(under - colour, axis=1).min())
        if distance >= MIN_CONTRAST:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _composite(image: np.ndarray, mask: Image.Image, px0: int, py0: int, colour: np.ndarray) -> None:
    """Alpha-blend ``colour`` into ``image`` (in place) through the box-averaged ``mask``."""
    size = image.shape[0]
    alpha = np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0  # (h, w) coverage
    h, w = alpha.shape
    # Crop to the image (clutter masks may hang over the border).
    ys, xs = slice(max(py0, 0), min(py0 + h, size)), slice(max(px0, 0), min(px0 + w, size))
    alpha = alpha[ys.start - py0 : ys.stop - py0, xs.start - px0 : xs.stop - px0, None]
    region = image[ys, xs]
    region += alpha * (colour.astype(np.float32) - region)
