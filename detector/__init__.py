"""A miniature Faster R-CNN whose box-regression loss is pluggable, to measure why detectors
regress boxes with smooth L1.

Four rooms, every import running down (checked by the import-linter contract in
pyproject.toml):

    detector.lab      comparison matrices, reports, plots, benchmarks
    detector.engine   configuration, building model and data from it, Lightning, training,
                      evaluation, command-line helpers
    detector.model    the detector as nn.Modules; plain constructor arguments, no files
    detector.data     readers, transforms, samplers, the shapes generator, box noise

``model`` and ``data`` import nothing from each other, from ``engine`` or from ``lab``; they
meet only in the engine, through plain tensors and records.

Conventions:
- boxes are ``(x1, y1, x2, y2)`` in absolute pixels of the image the model sees; COCO's
  ``(x, y, w, h)`` appears only at the evaluation boundary (``engine/evaluation.py``);
- class label 0 is background, 1..K are foreground classes, -1 marks an ignored element;
- images enter the model as uint8 ``(3, H, W)`` tensors and are normalised on the device.

Shape letters, used by every module's shape comments:

    N  images in the batch
    C  feature channels
    H, W  height and width (of a feature map unless a comment says image)
    A  anchors per feature-map location (sizes x aspect ratios)
    R  anchors per image, H * W * A
    P  proposals per image (after NMS)
    G  ground-truth boxes per image, padded to the batch's maximum (a mask marks real ones)
    S  sampled RoIs per image (box head); sampled positive anchors per image (RPN)
    K  foreground classes (K + 1 with background)
    Q  RoIAlign output bins per side
    D  detections per image
    E  entries of a sparse list (non-zero anchor/box IoUs)
    M  rows of a flat list of boxes (a loss's input)
"""

__version__ = "0.2.0"


def load_detector(path, **options):
    """A trained detector to call on images (``detector/engine/api.py``): ``load_detector("runs/x")(["a.jpg"])``."""
    from detector.engine.api import load_detector as load  # torch loads here, not with the package

    return load(path, **options)
