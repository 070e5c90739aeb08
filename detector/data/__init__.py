"""Datasets for the detector: the generated ``shapes`` set, COCO-format, PASCAL VOC and YOLO readers,
image files without annotations (prediction), image decoding, geometric transforms, the epoch
sampler and box noise. Records and tensors out; nothing here knows of the model, the
configuration or Lightning (the engine builds datasets from the configuration:
``detector/engine/build.py``). See data/README.md for the layouts. Unusable dataset files raise
:class:`DataError` (missing ones FileNotFoundError), naming the file.

The names below load on first access (``detector/lazy.py``).
"""

from __future__ import annotations

from detector.lazy import lazy_exports

_EXPORTS = {
    "CocoDetection": ("detector.data.coco", "CocoDetection"),
    "DataError": ("detector.data.errors", "DataError"),
    "DetectionDataset": ("detector.data.dataset", "DetectionDataset"),
    "DetectionTransform": ("detector.data.transforms", "DetectionTransform"),
    "EpochSampler": ("detector.data.sampler", "EpochSampler"),
    "Holdout": ("detector.data.dataset", "Holdout"),
    "ImageFiles": ("detector.data.image_files", "ImageFiles"),
    "ImageRecord": ("detector.data.dataset", "ImageRecord"),
    "VocDetection": ("detector.data.voc", "VocDetection"),
    "YoloDetection": ("detector.data.yolo", "YoloDetection"),
    "boxes_to_original": ("detector.data.transforms", "boxes_to_original"),
    "coco_classes": ("detector.data.coco", "read_classes"),
    "coco_split_files": ("detector.data.coco", "split_files"),
    "collate": ("detector.data.dataset", "collate"),
    "collate_images": ("detector.data.image_files", "collate_images"),
    "corrupt_boxes": ("detector.data.noise", "corrupt_boxes"),
    "ensure_shapes": ("detector.data.shapes", "ensure_shapes"),
    "error_message": ("detector.data.errors", "error_message"),
    "find_images": ("detector.data.image_files", "find_images"),
    "load_image": ("detector.data.images", "load_image"),
    "relative_names": ("detector.data.image_files", "relative_names"),
    "voc_classes": ("detector.data.voc", "read_classes"),
    "voc_split": ("detector.data.voc", "find_split"),
    "yolo_classes": ("detector.data.yolo", "read_classes"),
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
