"""Datasets for the detector: the generated ``shapes`` set, COCO-format and PASCAL VOC readers,
geometric transforms, collate and the LightningDataModule. See data/README.md for layouts.
Unusable dataset files raise :class:`DataError` (missing ones FileNotFoundError), naming the file."""

from detector.data.coco import CocoDetection, DetectionDataset
from detector.data.datamodule import DetectionDataModule, build_dataset, collate
from detector.data.errors import DataError
from detector.data.shapes import ensure_shapes
from detector.data.voc import VocDetection

__all__ = [
    "CocoDetection",
    "DataError",
    "DetectionDataModule",
    "DetectionDataset",
    "VocDetection",
    "build_dataset",
    "collate",
    "ensure_shapes",
]
