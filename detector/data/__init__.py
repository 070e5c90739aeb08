"""Datasets for the detector: the generated ``shapes`` set, COCO-format, PASCAL VOC and YOLO readers,
image files without annotations (prediction), image decoding, geometric transforms, the epoch
sampler and box noise. Records and tensors out; nothing here knows of the model, the
configuration or Lightning (the engine builds datasets from the configuration:
``detector/engine/build.py``). See data/README.md for the layouts. Unusable dataset files raise
:class:`DataError` (missing ones FileNotFoundError), naming the file."""

from detector.data.coco import CocoDetection
from detector.data.coco import read_classes as coco_classes
from detector.data.coco import split_files as coco_split_files
from detector.data.dataset import DetectionDataset, Holdout, ImageRecord, collate
from detector.data.errors import DataError, error_message
from detector.data.image_files import ImageFiles, collate_images, find_images, relative_names
from detector.data.images import load_image
from detector.data.noise import corrupt_boxes
from detector.data.sampler import EpochSampler
from detector.data.shapes import ensure_shapes
from detector.data.transforms import DetectionTransform, boxes_to_original
from detector.data.voc import VocDetection
from detector.data.voc import find_split as voc_split
from detector.data.voc import read_classes as voc_classes
from detector.data.yolo import YoloDetection
from detector.data.yolo import read_classes as yolo_classes

__all__ = [
    "CocoDetection",
    "DataError",
    "DetectionDataset",
    "DetectionTransform",
    "EpochSampler",
    "Holdout",
    "ImageFiles",
    "ImageRecord",
    "VocDetection",
    "YoloDetection",
    "boxes_to_original",
    "coco_classes",
    "coco_split_files",
    "collate",
    "collate_images",
    "corrupt_boxes",
    "ensure_shapes",
    "error_message",
    "find_images",
    "load_image",
    "relative_names",
    "voc_classes",
    "voc_split",
    "yolo_classes",
]
